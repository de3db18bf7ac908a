"""Parameters as state: names, shapes and order as torch's, state_dict round trips with torch, loading rules,
attribute write-through, initialisation and seeding, and the printed form."""

import numpy as np
import pytest
import torch
from helpers import assert_close, torch_dtype
from scipy import stats

import numbarnn

CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, bias=False, bidirectional=True),
    dict(nonlinearity="relu", batch_first=True),
    dict(num_layers=2, dropout=0.5, nonlinearity="relu", bias=False, batch_first=True, bidirectional=True),
    dict(num_layers=3, dropout=0.25),
]


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_names_shapes_and_order_equal_torchs(config):
    rnn = numbarnn.RNN(3, 4, **config)
    reference = torch.nn.RNN(3, 4, **config)
    expected = reference.state_dict()
    state = rnn.state_dict()
    assert list(state) == list(expected)
    assert [value.shape for value in state.values()] == [tuple(value.shape) for value in expected.values()]
    assert list(rnn.params) == list(expected) == list(rnn.grads)
    assert [p.shape for p in rnn.parameters()] == [tuple(p.shape) for p in reference.parameters()]
    for name in expected:
        assert getattr(rnn, name) is rnn.params[name]


@pytest.mark.parametrize("bias", [True, False])
def test_cell_names_and_shapes_equal_torchs(bias):
    cell = numbarnn.RNNCell(3, 4, bias=bias)
    expected = torch.nn.RNNCell(3, 4, bias=bias).state_dict()
    assert list(cell.state_dict()) == list(expected)
    assert [v.shape for v in cell.state_dict().values()] == [tuple(v.shape) for v in expected.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS[:4], ids=config_id)
def test_state_dict_round_trip_numbarnn_to_torch_and_back(config, dtype, rng):
    rnn = numbarnn.RNN(3, 4, dtype=dtype, seed=7, **config)
    reference = torch.nn.RNN(3, 4, dtype=torch_dtype(dtype), **config)
    reference.load_state_dict({name: torch.from_numpy(value.copy()) for name, value in rnn.state_dict().items()})
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), rnn.params[name])
    # torch now computes what numbarnn computes
    x = rng.standard_normal((5, 2, 3)).astype(dtype)
    reference.eval()
    rnn.eval()
    assert_close(rnn(x)[0], reference(torch.from_numpy(x))[0], dtype, "output")

    other = numbarnn.RNN(3, 4, dtype=dtype, seed=8, **config)
    other.load_state_dict(reference.state_dict())  # torch tensors go straight in
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(other.params[name], value)


def test_load_torch_parameters_that_require_grad():
    reference = torch.nn.RNN(3, 4, 2, dtype=torch.float64)
    rnn = numbarnn.RNN(3, 4, 2, dtype=np.float64)
    rnn.load_state_dict(dict(reference.named_parameters()))
    for name, parameter in reference.named_parameters():
        np.testing.assert_array_equal(rnn.params[name], parameter.detach().numpy())


def test_state_dict_returns_copies():
    rnn = numbarnn.RNN(3, 4, seed=0)
    state = rnn.state_dict()
    before = rnn.weight_ih_l0.copy()
    state["weight_ih_l0"][:] = 99
    np.testing.assert_array_equal(rnn.weight_ih_l0, before)


@pytest.mark.parametrize("module_dtype,source_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_load_casts_to_the_module_dtype(module_dtype, source_dtype):
    source = numbarnn.RNN(3, 4, 2, dtype=source_dtype, seed=1)
    rnn = numbarnn.RNN(3, 4, 2, dtype=module_dtype, seed=2)
    views = dict(rnn.params)
    rnn.load_state_dict(source.state_dict())
    for name, value in source.params.items():
        assert rnn.params[name].dtype == np.dtype(module_dtype)
        assert rnn.params[name] is views[name]  # loaded in place: views held elsewhere stay valid
        np.testing.assert_array_equal(rnn.params[name], value.astype(module_dtype))
    rnn.load_state_dict({name: value.tolist() for name, value in source.state_dict().items()})  # plain lists


def test_missing_and_unexpected_keys_are_errors_when_strict():
    rnn = numbarnn.RNN(3, 4, 2, seed=0)
    state = rnn.state_dict()
    missing = {k: v for k, v in state.items() if k != "bias_hh_l1"}
    with pytest.raises(ValueError, match=r'Missing key\(s\) in state_dict: "bias_hh_l1"\.'):
        rnn.load_state_dict(missing)
    with pytest.raises(ValueError, match=r'Unexpected key\(s\) in state_dict: "weight_ih_l2"\.'):
        rnn.load_state_dict(dict(state, weight_ih_l2=np.zeros((4, 4))))
    with pytest.raises(ValueError, match=r'Missing key\(s\) in state_dict: "bias_ih_l0", "bias_hh_l0", '):
        rnn.load_state_dict(numbarnn.RNN(3, 4, 2, bias=False).state_dict())


def test_non_strict_load_ignores_unexpected_and_keeps_missing():
    rnn = numbarnn.RNN(3, 4, 2, seed=0)
    before = rnn.state_dict()
    partial = {"weight_hh_l1": np.full((4, 4), 0.5), "not_a_parameter": np.zeros(3)}
    result = rnn.load_state_dict(partial, strict=False)
    assert result.unexpected_keys == ["not_a_parameter"]
    assert result.missing_keys == [name for name in before if name != "weight_hh_l1"]
    np.testing.assert_array_equal(rnn.weight_hh_l1, 0.5)
    for name, value in before.items():
        if name != "weight_hh_l1":
            np.testing.assert_array_equal(rnn.params[name], value)


def test_size_mismatch_is_an_error():
    rnn = numbarnn.RNN(3, 4, 2, seed=0)
    state = rnn.state_dict()
    state["weight_ih_l0"] = np.zeros((4, 2))
    with pytest.raises(
        ValueError,
        match=r"size mismatch for weight_ih_l0: copying a param with shape \(4, 2\) from "
        r"checkpoint, the shape in current model is \(4, 3\)\.",
    ):
        rnn.load_state_dict(state)


@pytest.mark.parametrize("failure", ["size mismatch", "missing key", "unexpected key"])
def test_a_failed_load_changes_nothing(failure):
    rnn = numbarnn.RNN(3, 4, 2, seed=0)
    before = rnn.state_dict()
    state = {name: np.full(value.shape, 0.25) for name, value in before.items()}  # valid values for every key...
    if failure == "size mismatch":
        state["bias_hh_l1"] = np.zeros(5)  # ...but the last one checked is wrong
    elif failure == "missing key":
        del state["bias_hh_l1"]
    else:
        state["extra"] = np.zeros(1)
    with pytest.raises((ValueError, KeyError)):
        rnn.load_state_dict(state)
    for name, value in before.items():
        np.testing.assert_array_equal(rnn.params[name], value)


def test_attribute_assignment_writes_through(rng):
    torch.manual_seed(0)
    reference = torch.nn.RNN(3, 4, 2, dtype=torch.float64)
    rnn = numbarnn.RNN(3, 4, 2, dtype=np.float64, seed=0)
    view = rnn.params["weight_hh_l0"]
    for name, parameter in reference.named_parameters():
        setattr(rnn, name, parameter.detach().numpy())
    assert rnn.params["weight_hh_l0"] is view and rnn.weight_hh_l0 is view
    np.testing.assert_array_equal(view, reference.weight_hh_l0.detach().numpy())
    # the kernels read the flat buffer: the assigned weights are the ones used
    x = rng.standard_normal((5, 2, 3))
    assert_close(rnn(x)[0], reference(torch.from_numpy(x))[0], np.float64, "output")
    expected = r"cannot assign an array of shape \(3, 3\) to weight_hh_l0, of shape \(4, 4\)"
    with pytest.raises(ValueError, match=expected):
        rnn.weight_hh_l0 = np.zeros((3, 3))
    rnn.not_a_parameter = 5  # other attributes are ordinary attributes
    assert rnn.not_a_parameter == 5 and "not_a_parameter" not in rnn.params


def test_assignment_casts_to_the_module_dtype():
    rnn = numbarnn.RNN(3, 4, dtype=np.float32)
    rnn.bias_ih_l0 = np.arange(4, dtype=np.float64) / 3
    assert rnn.bias_ih_l0.dtype == np.float32
    np.testing.assert_array_equal(rnn.bias_ih_l0, (np.arange(4) / 3).astype(np.float32))


# -- initialisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["rnn", "cell"])
@pytest.mark.parametrize("hidden_size", [1, 16, 50])
def test_initialisation_is_uniform_within_one_over_sqrt_hidden(module, hidden_size):
    if module == "rnn":
        model = numbarnn.RNN(200, hidden_size, 2, bidirectional=True, seed=3)
    else:
        model = numbarnn.RNNCell(200, hidden_size, seed=3)
    bound = 1 / np.sqrt(hidden_size)
    values = np.concatenate([p.ravel() for p in model.parameters()])
    assert np.abs(values).max() <= bound
    # n >= 200 draws of U(-b, b): P(max |value| < 0.9 b) = 0.9 ** n < 1e-9, so the draws do reach the bound
    assert values.size >= 200
    assert np.abs(values).max() > 0.9 * bound
    # Kolmogorov-Smirnov against U(-b, b); with a fixed seed this is deterministic, the threshold only says how
    # unusual a sample we would call wrong
    assert stats.kstest(values, stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-4
    for p in model.parameters():
        assert p.dtype == np.float32  # the default dtype


def test_same_seed_same_parameters_and_different_seed_different():
    first = numbarnn.RNN(3, 4, 2, bidirectional=True, seed=11)
    second = numbarnn.RNN(3, 4, 2, bidirectional=True, seed=11)
    third = numbarnn.RNN(3, 4, 2, bidirectional=True, seed=12)
    unseeded = [numbarnn.RNN(3, 4, 2, bidirectional=True) for _ in range(2)]
    from_generator = numbarnn.RNN(3, 4, 2, bidirectional=True, seed=np.random.default_rng(11))
    for name in first.params:
        np.testing.assert_array_equal(first.params[name], second.params[name])
        np.testing.assert_array_equal(first.params[name], from_generator.params[name])
        assert not np.array_equal(first.params[name], third.params[name])
        assert not np.array_equal(unseeded[0].params[name], unseeded[1].params[name])
    cells = [numbarnn.RNNCell(3, 4, seed=5) for _ in range(2)]
    for name in cells[0].params:
        np.testing.assert_array_equal(cells[0].params[name], cells[1].params[name])


def test_new_modules_start_with_zero_gradients_in_training_mode():
    rnn = numbarnn.RNN(3, 4, 2)
    assert rnn.training
    assert all(
        not g.any() and g.shape == p.shape and g.dtype == p.dtype
        for g, p in zip(rnn.grads.values(), rnn.params.values(), strict=True)
    )
    assert rnn.eval() is rnn and not rnn.training
    assert rnn.train() is rnn and rnn.training
    assert rnn.train(False) is rnn and not rnn.training


# -- printed form --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_rnn_repr_equals_torchs(config):
    assert repr(numbarnn.RNN(3, 4, **config)) == repr(torch.nn.RNN(3, 4, **config))


@pytest.mark.parametrize(
    "config",
    [dict(), dict(bias=False), dict(nonlinearity="relu"), dict(bias=False, nonlinearity="relu")],
    ids=config_id,
)
def test_cell_repr_equals_torchs(config):
    assert repr(numbarnn.RNNCell(3, 4, **config)) == repr(torch.nn.RNNCell(3, 4, **config))


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_copied_module_owns_its_parameters_and_stays_consistent(copier):
    import copy
    import pickle

    def duplicate(module):
        return copy.deepcopy(module) if copier == "deepcopy" else pickle.loads(pickle.dumps(module))

    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    rnn = numbarnn.RNN(3, 4, 2, bidirectional=True, seed=0)
    rnn(x)  # leaves training buffers and a forward record behind; neither is copied
    twin = duplicate(rnn)
    for name, view in twin.params.items():  # each parameter's attribute is the copy's own view, as its params entry
        assert getattr(twin, name) is view and np.shares_memory(view, twin._param_flat)
    np.testing.assert_array_equal(twin.eval()(x)[0], rnn.eval()(x)[0])
    twin.load_state_dict({name: np.zeros_like(value) for name, value in twin.state_dict().items()})
    assert np.abs(twin(x)[0]).max() == 0, "the kernels must read the copy's own (zeroed) parameters"
    assert np.abs(rnn(x)[0]).max() > 0, "the original is untouched"
    twin.train()
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        twin.backward()
    cell = numbarnn.RNNCell(3, 4, seed=0)
    cell(x[0])
    cell_twin = duplicate(cell)
    cell_twin.weight_hh = np.zeros((4, 4))
    assert np.abs(cell.weight_hh).max() > 0
    np.testing.assert_array_equal(cell_twin._param_flat[cell_twin._offsets[0, 1] :][:16], 0)
    layer = numbarnn.Linear(3, 2, seed=0)
    layer_twin = duplicate(layer)
    layer_twin.weight[...] = 0
    np.testing.assert_array_equal(layer_twin(x), np.broadcast_to(layer_twin.bias, (4, 2, 2)))
    assert duplicate(numbarnn.Linear(3, 2, bias=False)).bias is None  # torch's attribute for a disabled bias
