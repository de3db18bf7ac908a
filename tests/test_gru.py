"""``numbarnn.GRU`` and ``numbarnn.GRUCell`` against ``torch.nn.GRU`` / ``torch.nn.GRUCell``: every output and
gradient, with lengths, directions, layers and dropout, at hidden sizes that reach the panel kernels' partial and full
panels (16, 17, 40, 64), and in batches split into blocks. The n gate's ``r * (W_hn h + b_hn)`` makes the input
side's and the recurrent side's gradients differ, which the bias and weight gradients check.

Tolerances are helpers.py's (RTOL / ATOL): a GRU step is the same short chain of O(1) sums as an RNN's, with
sigmoid = (1 + tanh(x / 2)) / 2 through the project's tanh (a few ulp), so the argument given there holds.
"""

import copy
import pickle
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
import torch
from gated import compare, make_pair, random_problem
from helpers import assert_close, pairwise_cases, torch_dtype

import numbarnn
from numbarnn._workspace import block_count

STEPS, BATCH = 5, 3

OPTIONS = dict(
    hidden_size=[16, 17, 40, 64],
    num_layers=[1, 2],
    bidirectional=[False, True],
    batch_first=[False, True],
    bias=[True, False],
    lengths=[False, True],
    batched=[True, False],
    state_given=[True, False],
)
CASES = pairwise_cases(OPTIONS)


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def build(case, rng, dtype=np.float64, batch=BATCH, steps=STEPS, dropout=0.0):
    gru, reference = make_pair(
        "GRU",
        7,
        case["hidden_size"],
        case["num_layers"],
        case["bias"],
        case["batch_first"],
        dropout,
        case["bidirectional"],
        dtype=dtype,
    )
    batched = case["batched"] or case["lengths"]  # lengths need a batch axis
    problem = random_problem(gru, rng, steps, batch if batched else None, dtype, case["state_given"])
    lengths = rng.integers(1, steps + 1, batch) if case["lengths"] and batched else None
    if lengths is not None:
        lengths[0] = steps  # at least one full-length sequence, so torch's padded output has all L steps
    return gru, reference, problem, lengths


def test_the_grid_pairs_every_option():
    for a in OPTIONS:
        for b in OPTIONS:
            if a < b:
                assert len({(case[a], case[b]) for case in CASES}) == len(OPTIONS[a]) * len(OPTIONS[b]), (a, b)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_float64(case, rng):
    gru, reference, problem, lengths = build(case, rng)
    compare(gru, reference, *problem, np.float64, lengths=lengths)


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_matches_torch_float32(lengths, rng):
    # One block, one direction: float32 runs on one thread (several threads run the same kernel: covered in float64).
    case = dict(
        hidden_size=17,
        num_layers=2,
        bidirectional=False,
        batch_first=False,
        bias=True,
        lengths=False,
        batched=True,
        state_given=True,
    )
    gru, reference, problem, _ = build(case, rng, np.float32)
    compare(gru, reference, *problem, np.float32, lengths=None if lengths is None else np.array(lengths))


def test_batch_split_into_blocks_matches_torch(rng):
    """A batch large enough to be split into blocks (its tasks shared between threads), with lengths and two layers."""
    steps, batch, hidden = 12, 9, 64
    case = dict(
        hidden_size=hidden,
        num_layers=2,
        bidirectional=False,
        batch_first=False,
        bias=True,
        lengths=True,
        batched=True,
        state_given=False,
    )
    gru, reference, problem, lengths = build(case, rng, batch=batch, steps=steps)
    if numba.config.NUMBA_NUM_THREADS > 1:  # the test exercises what it is meant to: several blocks
        assert block_count(batch, steps, 7, hidden, 2, 1, gates=3) >= 2
    compare(gru, reference, *problem, np.float64, lengths=lengths)


def test_dropout_matches_torch_through_the_same_masks(rng):
    """Dropout between layers: numbarnn's masks (read back from its record) applied to torch's layers one by one."""
    gru, reference = make_pair("GRU", 6, 16, num_layers=2, dropout=0.5, bidirectional=True, dtype=np.float64)
    x, h_0, grad_output, grad_h_n = random_problem(gru, rng, STEPS, BATCH, np.float64)
    output, h_n = gru(x, h_0)
    grad_x, grad_h_0 = gru.backward(grad_output, grad_h_n)
    mask = gru._record.buffers.dropout_scale.reshape(STEPS, BATCH, 32)  # one block: the rows are (L, N)
    assert 0 < (mask == 0).mean() < 1
    x_t, h_0_t = torch.tensor(x, requires_grad=True), torch.tensor(h_0, requires_grad=True)
    layers = []
    for k in range(2):
        layer = torch.nn.GRU(6 if k == 0 else 32, 16, bidirectional=True, dtype=torch.float64)
        layer.load_state_dict(
            {name.replace(f"_l{k}", "_l0"): value for name, value in reference.state_dict().items() if f"_l{k}" in name}
        )
        layers.append(layer)
    middle, h_a = layers[0](x_t, h_0_t[:2])
    top, h_b = layers[1](middle * torch.tensor(mask), h_0_t[2:])
    assert_close(output, top, np.float64, "output")
    assert_close(h_n, torch.cat([h_a, h_b]), np.float64, "h_n")
    ((top * torch.tensor(grad_output)).sum() + (torch.cat([h_a, h_b]) * torch.tensor(grad_h_n)).sum()).backward()
    assert_close(grad_x, x_t.grad, np.float64, "grad_input")
    assert_close(grad_h_0, h_0_t.grad, np.float64, "grad_h_0")
    for k, layer in enumerate(layers):
        for name, parameter in layer.named_parameters():
            assert_close(gru.grads[name.replace("_l0", f"_l{k}")], parameter.grad, np.float64, name)


def test_gradients_accumulate_and_zero_batch(rng):
    case = dict(
        hidden_size=16,
        num_layers=1,
        bidirectional=False,
        batch_first=False,
        bias=True,
        lengths=False,
        batched=True,
        state_given=True,
    )
    gru, _, (x, h_0, grad_output, grad_h_n), _ = build(case, rng)
    gru(x, h_0)
    gru.backward(grad_output, grad_h_n)
    once = {name: grad.copy() for name, grad in gru.grads.items()}
    gru(x, hx=h_0)
    assert gru.backward(grad_output, grad_h_n, need_input_grad=False)[0] is None
    for name, grad in gru.grads.items():
        assert_close(grad, 2 * once[name], np.float64, name)
    output, h_n = gru(np.zeros((STEPS, 0, 7)))
    assert output.shape == (STEPS, 0, 16) and h_n.shape == (1, 0, 16)


def test_step_equals_a_one_step_forward(rng):
    gru = numbarnn.GRU(5, 17, num_layers=2, dtype=np.float64, seed=1).eval()
    x, h = rng.standard_normal((4, 5)), rng.standard_normal((2, 4, 17))
    output, h_n = gru.step(x, h)
    expected, h_e = gru(x[None], h)
    assert_close(output, expected[0], np.float64, "output")
    assert_close(h_n, h_e, np.float64, "h_n")
    output, h_n = gru.step(x[1])
    assert_close(output, gru(x[None, 1])[0][0], np.float64, "unbatched, zero state")


def test_eval_gru_from_threads_equals_serial_calls(rng):
    gru = numbarnn.GRU(7, 40, num_layers=2, dtype=np.float64, seed=2).eval()
    xs = rng.standard_normal((8, STEPS, BATCH, 7))
    serial = [gru(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(gru, xs))
    for (output, h_n), (expected, h_e) in zip(threaded, serial, strict=True):
        np.testing.assert_array_equal(output, expected)
        np.testing.assert_array_equal(h_n, h_e)


def test_parameters_state_dict_repr_save_and_copies(tmp_path, rng):
    gru = numbarnn.GRU(5, 16, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    reference = torch.nn.GRU(5, 16, num_layers=2, bidirectional=True, batch_first=True)
    assert list(gru.state_dict()) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert gru.state_dict()[name].shape == tuple(value.shape), name
    assert repr(gru) == repr(reference)
    flat = np.concatenate([v.ravel() for v in gru.params.values()])
    assert 0.95 / 4 < np.abs(flat).max() <= 1 / 4  # U(-1/sqrt(H), 1/sqrt(H))
    gru.eval()
    numbarnn.save(tmp_path / "gru.npz", gru=gru, cell=numbarnn.GRUCell(3, 4))
    loaded = numbarnn.load(tmp_path / "gru.npz")
    x = rng.standard_normal((2, STEPS, 5)).astype(np.float32)
    for twin in (loaded["gru"], copy.deepcopy(gru), pickle.loads(pickle.dumps(gru))):
        assert type(twin) is numbarnn.GRU
        np.testing.assert_array_equal(twin(x)[0], gru(x)[0])
    assert type(loaded["cell"]) is numbarnn.GRUCell


def test_errors_are_torchs():
    gru = numbarnn.GRU(5, 16, num_layers=2, dtype=np.float64)
    x = np.zeros((4, 2, 5))
    with pytest.raises(ValueError, match="GRU: Expected input to be 2D or 3D, got 4D instead"):
        gru(x[None])
    with pytest.raises(ValueError, match="For batched 3-D input, hx should also be 3-D but got 2-D tensor"):
        gru(x, np.zeros((2, 16)))
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 16\), got \[2, 2, 15\]"):
        gru(x, np.zeros((2, 2, 15)))
    with pytest.raises(TypeError, match="unexpected keyword argument 'proj_size'"):
        numbarnn.GRU(5, 16, proj_size=2)
    cell = numbarnn.GRUCell(4, 6, dtype=np.float64)
    with pytest.raises(ValueError, match="GRUCell: Expected hidden to be 1D or 2D, got 3D instead"):
        cell(np.zeros((2, 4)), np.zeros((1, 2, 6)))
    with pytest.raises(ValueError, match="hidden0 has inconsistent hidden_size: got 5, expected 6"):
        cell(np.zeros((2, 4)), np.zeros((2, 5)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_bptt_matches_torch(dtype, batched, rng):
    """Three steps through the cell's tape against autograd through torch.nn.GRUCell."""
    torch.manual_seed(5)
    reference = torch.nn.GRUCell(6, 17, dtype=torch_dtype(dtype))
    cell = numbarnn.GRUCell(6, 17, dtype=dtype)
    cell.load_state_dict(reference.state_dict())
    shape, state_shape = ((3, 6), (3, 17)) if batched else ((6,), (17,))
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    grads = [rng.standard_normal(state_shape).astype(dtype) for _ in range(3)]
    h_0 = rng.standard_normal(state_shape).astype(dtype)
    xs_t = [torch.tensor(x, requires_grad=True) for x in xs]
    h_0_t = torch.tensor(h_0, requires_grad=True)
    h_t, h, loss = h_0_t, h_0, 0
    for x, x_t, g in zip(xs, xs_t, grads, strict=True):
        h_t, h = reference(x_t, h_t), cell(x, h)
        assert_close(h, h_t, dtype, "h'")
        loss = loss + (h_t * torch.tensor(g)).sum()
    loss.backward()
    carry = np.zeros(state_shape, dtype)
    for k in (2, 1, 0):
        grad_x, carry = cell.backward(grads[k] + carry)
        assert_close(grad_x, xs_t[k].grad, dtype, f"grad_x[{k}]")
    assert_close(carry, h_0_t.grad, dtype, "grad_h")
    for name, parameter in reference.named_parameters():
        assert_close(cell.grads[name], parameter.grad, dtype, name)
    assert repr(cell) == repr(reference)
