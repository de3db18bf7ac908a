"""Dropout between layers: off in eval, the expected rate in training, and exact gradients through the masks.

The masks of a training forward are read from ``rnn._record.buffers.dropout_scale`` ((num_layers - 1, R, D * H)
packed rows, laid out by ``rnn._record.packing``, 0 or 1 / (1 - p)); torch is then run layer by layer with the same
masks, so the gradients can be compared exactly.
"""

import numpy as np
import pytest
import torch
from helpers import assert_close, make_rnn_pair, torch_run

import numbarnn
from numbarnn._packing import unpack

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 5, 3, 3, 4


def padded_masks(rnn, steps, batch):
    """The last training forward's dropout masks as (num_layers - 1, L, N, D * H), zero at padded positions."""
    record = rnn._record
    scale = record.buffers.dropout_scale
    masks = np.empty((scale.shape[0], steps, batch, scale.shape[2]), scale.dtype)
    for k in range(scale.shape[0]):
        unpack(scale[k], record.packing, masks[k])
    return masks


def torch_layer_by_layer(rnn, x, h_0, masks, grad_output, grad_h_n, lengths=None):
    """torch, one single-layer nn.RNN per layer, the input of layer k >= 1 multiplied by ``masks[k - 1]``.

    Returns the output, h_n, the gradients of x and h_0 and the parameter gradients under numbarnn's names.
    """
    directions = 2 if rnn.bidirectional else 1
    x_t = torch.tensor(x, requires_grad=True)
    h_0_t = torch.tensor(h_0, requires_grad=True)
    layer_input, final_states, layers = x_t, [], []
    for k in range(rnn.num_layers):
        layer = torch.nn.RNN(
            layer_input.shape[-1],
            rnn.hidden_size,
            nonlinearity=rnn.nonlinearity,
            bias=rnn.bias,
            bidirectional=rnn.bidirectional,
            dtype=torch.float64,
        )
        own = {
            name: name.replace(f"_l{k}", "_l0") for name in rnn.params if name.endswith((f"_l{k}", f"_l{k}_reverse"))
        }
        layer.load_state_dict({short: torch.tensor(rnn.params[name]) for name, short in own.items()})
        layers.append((layer, own))
        if k > 0:
            layer_input = layer_input * torch.tensor(masks[k - 1])
        h_0_k = h_0_t[k * directions : (k + 1) * directions]
        if lengths is None:
            layer_input, h_n_k = layer(layer_input, h_0_k)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(layer_input, torch.tensor(lengths), enforce_sorted=False)
            packed_output, h_n_k = layer(packed, h_0_k)
            layer_input, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_output, total_length=x.shape[0])
        final_states.append(h_n_k)
    output_t, h_n_t = layer_input, torch.cat(final_states)
    loss = (output_t * torch.tensor(grad_output)).sum() + (h_n_t * torch.tensor(grad_h_n)).sum()
    loss.backward()
    grads = {}
    for layer, own in layers:
        for name, short in own.items():
            grads[name] = getattr(layer, short).grad.numpy()
    return output_t.detach().numpy(), h_n_t.detach().numpy(), x_t.grad.numpy(), h_0_t.grad.numpy(), grads


def test_eval_is_deterministic_and_matches_torch_eval(rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 3, dropout=0.5, bidirectional=True)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    rnn.eval()
    reference.eval()
    first, second = rnn(x), rnn(x)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    expected = reference(torch.tensor(x))
    assert_close(first[0], expected[0], np.float64, "output")
    assert_close(first[1], expected[1], np.float64, "h_n")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_training_drops_the_expected_fraction(p, dtype, rng):
    rnn = numbarnn.RNN(INPUT_SIZE, 6, 3, dropout=p, bidirectional=True, dtype=dtype, seed=1)
    x = rng.standard_normal((40, 8, INPUT_SIZE)).astype(dtype)
    rnn(x)
    scale = rnn._record.buffers.dropout_scale.copy()
    assert scale.shape == (2, 40 * 8, 12)
    kept = scale != 0
    np.testing.assert_allclose(scale[kept], dtype(1) / dtype(1 - p), rtol=np.finfo(dtype).eps)
    # Each of the n elements is dropped independently with probability p: the count is Binomial(n, p), with
    # standard deviation sqrt(n p (1 - p)); 5 standard deviations make a false alarm a < 1e-6 event.
    n = scale.size
    dropped = n - kept.sum()
    assert abs(dropped - n * p) < 5 * np.sqrt(n * p * (1 - p)), (dropped, n * p)
    assert not np.array_equal(kept[0], kept[1]), "each layer draws its own mask"
    rnn(x)
    assert not np.array_equal(rnn._record.buffers.dropout_scale != 0, kept), "each call draws new masks"


def test_training_with_dropout_is_random_but_seeded(rng):
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    first = numbarnn.RNN(INPUT_SIZE, HIDDEN_SIZE, 2, dropout=0.5, dtype=np.float64, seed=4)
    second = numbarnn.RNN(INPUT_SIZE, HIDDEN_SIZE, 2, dropout=0.5, dtype=np.float64, seed=4)
    a, b = first(x)[0], first(x)[0]
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(second(x)[0], a)  # same seed, same masks
    np.testing.assert_array_equal(second(x)[0], b)
    eval_output = first.eval()(x)[0]
    assert not np.array_equal(a, eval_output)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_p_equal_to_one_cuts_the_input_off_the_upper_layers(bidirectional, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, dropout=1.0, bidirectional=bidirectional)
    x1, x2 = rng.standard_normal((2, STEPS, BATCH, INPUT_SIZE))
    output_1, _ = rnn(x1)
    output_2, _ = rnn(x2)
    np.testing.assert_array_equal(output_1, output_2)  # the top layer reads zeros whatever the input
    grad_output = rng.standard_normal(output_1.shape)
    grad_x, _ = rnn.backward(grad_output)
    np.testing.assert_array_equal(grad_x, 0)
    # p = 1 is deterministic, so torch in training mode must agree exactly
    expected_output, _, expected_grad_x, _, expected_grads = torch_run(reference, x2, None, grad_output)
    assert_close(output_2, expected_output, np.float64, "output")
    for name, expected in expected_grads.items():
        assert_close(rnn.grads[name], expected, np.float64, name)


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers,bidirectional", [(2, False), (3, True)])
def test_gradients_through_the_masks_match_torch(num_layers, bidirectional, nonlinearity, lengths, rng):
    rnn = numbarnn.RNN(
        INPUT_SIZE,
        HIDDEN_SIZE,
        num_layers,
        nonlinearity,
        dropout=0.4,
        bidirectional=bidirectional,
        dtype=np.float64,
        seed=2,
    )
    directions = 2 if bidirectional else 1
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    h_0 = rng.standard_normal((num_layers * directions, BATCH, HIDDEN_SIZE))
    grad_output = rng.standard_normal((STEPS, BATCH, directions * HIDDEN_SIZE))
    grad_h_n = rng.standard_normal(h_0.shape)
    output, h_n = rnn(x, h_0, lengths=lengths)
    masks = padded_masks(rnn, STEPS, BATCH)
    assert (masks == 0).any() and (masks != 0).any()
    grad_x, grad_h_0 = rnn.backward(grad_output, grad_h_n)

    expected = torch_layer_by_layer(rnn, x, h_0, masks, grad_output, grad_h_n, lengths)
    for name, actual, wanted in zip(
        ["output", "h_n", "grad_x", "grad_h_0"], [output, h_n, grad_x, grad_h_0], expected[:4], strict=True
    ):
        assert_close(actual, wanted, np.float64, name)
    assert sorted(expected[4]) == sorted(rnn.grads)
    for name, wanted in expected[4].items():
        assert_close(rnn.grads[name], wanted, np.float64, name)
