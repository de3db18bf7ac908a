"""``numbarnn.Linear`` against ``torch.nn.Linear``: forward, backward, initialisation, state dicts, repr, errors."""

import numpy as np
import pytest
import torch
from helpers import DTYPES, assert_close, torch_dtype

from numbarnn.linear import Linear

IN, OUT = 5, 4
# leading shapes: unbatched, a batch, (L, N) as after an RNN, three leading axes, and rows for several tiles
LEADING_SHAPES = [(), (3,), (6, 2), (2, 1, 3), (30,)]
# (in, out): under one panel, and several panels with a partial one in both directions of the products (the forward
# multiplies by W.T, H_out columns; the input gradient by W, H_in columns)
FEATURES = [(IN, OUT), (40, 33)]


def make_pair(bias, dtype, seed=0, features=(IN, OUT)):
    """A numbarnn Linear holding the weights of a freshly seeded torch Linear."""
    torch.manual_seed(seed)
    reference = torch.nn.Linear(*features, bias=bias, dtype=torch_dtype(dtype))
    layer = Linear(*features, bias=bias, dtype=dtype, seed=seed + 1)
    layer.load_state_dict(reference.state_dict())
    return layer, reference


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("features", FEATURES, ids=lambda f: f"{f[0]}to{f[1]}")
def test_forward_and_backward_match_torch(features, leading, bias, dtype, rng):
    layer, reference = make_pair(bias, dtype, features=features)
    x = rng.standard_normal(leading + (features[0],)).astype(dtype)
    grad_y = rng.standard_normal(leading + (features[1],)).astype(dtype)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = reference(x_t)
    (y_t * torch.tensor(grad_y)).sum().backward()

    y = layer(x)
    assert y.dtype == dtype
    assert_close(y, y_t, dtype, "output")
    grad_x = layer.backward(grad_y)
    assert_close(grad_x, x_t.grad, dtype, "grad_input")
    assert_close(layer.grads["weight"], reference.weight.grad, dtype, "weight")
    if bias:
        assert_close(layer.grads["bias"], reference.bias.grad, dtype, "bias")


def test_gradients_accumulate_over_backward_calls(rng):
    layer, reference = make_pair(True, np.float64)
    inputs = [rng.standard_normal((3, IN)) for _ in range(2)]
    grads = [rng.standard_normal((3, OUT)) for _ in range(2)]
    for x, grad_y in zip(inputs, grads, strict=True):
        layer(x)
        layer.backward(grad_y)
        (reference(torch.tensor(x)) * torch.tensor(grad_y)).sum().backward()  # torch's .grad accumulates too
    assert_close(layer.grads["weight"], reference.weight.grad, np.float64, "weight")
    assert_close(layer.grads["bias"], reference.bias.grad, np.float64, "bias")
    layer.zero_grad()
    assert not layer._grad_flat.any()


def test_initialisation_is_torchs_uniform_bound():
    # torch: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in)) for the weight; the bias uses the same bound.
    in_features, out_features = 50, 40
    bound = 1 / np.sqrt(in_features)
    layer = Linear(in_features, out_features, seed=3)
    torch.manual_seed(3)
    reference = torch.nn.Linear(in_features, out_features)
    for name in ("weight", "bias"):
        ours, theirs = layer.params[name], getattr(reference, name).detach().numpy()
        assert np.abs(ours).max() <= bound
        assert np.abs(theirs).max() <= bound  # the same bound holds for torch
        # both fill the interval: the extremes of 40+ uniform draws come close to the bound
        assert np.abs(ours).max() > 0.85 * bound
    assert np.abs(layer.params["weight"]).mean() == pytest.approx(bound / 2, rel=0.05)  # mean |U(-b, b)| = b / 2


def test_seed_reproduces_parameters():
    assert np.array_equal(Linear(IN, OUT, seed=7).weight, Linear(IN, OUT, seed=7).weight)
    assert not np.array_equal(Linear(IN, OUT, seed=7).weight, Linear(IN, OUT, seed=8).weight)


def test_state_dict_round_trip_with_torch(rng):
    layer, reference = make_pair(True, np.float32)
    assert list(layer.state_dict()) == list(reference.state_dict()) == ["weight", "bias"]
    other = torch.nn.Linear(IN, OUT)
    other.load_state_dict({name: torch.tensor(value) for name, value in layer.state_dict().items()})
    x = rng.standard_normal((2, IN)).astype(np.float32)
    assert_close(layer(x), other(torch.tensor(x)), np.float32, "output after loading into torch")
    state = layer.state_dict()
    state["weight"][...] = 0  # a copy: changing it leaves the layer alone
    assert layer.weight.any()


def test_parameters_are_views_of_the_flat_buffer():
    layer = Linear(IN, OUT)
    assert np.shares_memory(layer.weight, layer._param_flat) and np.shares_memory(layer.bias, layer._param_flat)
    assert layer._param_flat.size == IN * OUT + OUT
    layer.weight = np.ones((OUT, IN))  # assignment copies into the buffer
    assert (layer._param_flat[: IN * OUT] == 1).all()


def test_repr_and_no_bias_attribute():
    assert repr(Linear(3, 4)) == repr(torch.nn.Linear(3, 4)) == "Linear(in_features=3, out_features=4, bias=True)"
    assert repr(Linear(3, 4, bias=False)) == repr(torch.nn.Linear(3, 4, bias=False))
    layer = Linear(3, 4, bias=False)
    assert layer.bias is None and list(layer.params) == ["weight"]


def test_eval_mode_keeps_nothing_for_backward(rng):
    layer = Linear(IN, OUT).eval()
    layer(rng.standard_normal((2, IN)).astype(np.float32))
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward(np.zeros((2, OUT), np.float32))


def test_errors():
    layer = Linear(IN, OUT)
    with pytest.raises(ValueError, match=r"astype\(np.float32\)"):
        layer(np.zeros((2, IN)))  # float64 input into a float32 layer
    with pytest.raises(ValueError, match="in_features=5"):
        layer(np.zeros((2, IN + 1), np.float32))
    with pytest.raises(RuntimeError, match="forward pass"):
        layer.backward(np.zeros((2, OUT), np.float32))
    layer(np.zeros((2, IN), np.float32))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 4\)"):
        layer.backward(np.zeros((3, OUT), np.float32))
    layer.backward(np.zeros((2, OUT), np.float32))
    with pytest.raises(RuntimeError, match="forward pass"):  # one backward per forward
        layer.backward(np.zeros((2, OUT), np.float32))
    with pytest.raises(ValueError, match="in_features must be greater than zero"):
        Linear(0, 3)
    with pytest.raises(TypeError, match="out_features should be of type int"):
        Linear(3, 2.0)
