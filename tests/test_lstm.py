"""``numbarnn.LSTM`` and ``numbarnn.LSTMCell`` against ``torch.nn.LSTM`` / ``torch.nn.LSTMCell``: every output and
gradient (input, h_0, c_0, every parameter, weight_hr), with lengths, directions, layers, projections, dropout, at
hidden sizes that reach the panel kernels' partial and full panels (16, 17, 40, 64), and in batches split into blocks.

Tolerances are helpers.py's (RTOL / ATOL): an LSTM step is the same short chain of O(1) sums as an RNN's, with
sigmoid = (1 + tanh(x / 2)) / 2 through the project's tanh (a few ulp, like the RNN's activation), so the
argument given there holds: float64 ~1e-14 measured, float32 a few 1e-7.
"""

import copy
import pickle

import numba
import numpy as np
import pytest
import torch
from gated import compare, make_pair, random_problem, torch_reference
from helpers import assert_close, pairwise_cases, torch_dtype

import numbarnn
from numbarnn._workspace import block_count

# torch's float32 LSTM runs oneDNN, which has no projection and says so each call: torch's own kernel is the reference
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")

STEPS, BATCH = 5, 3

OPTIONS = dict(
    hidden_size=[16, 17, 40, 64],
    num_layers=[1, 2],
    bidirectional=[False, True],
    batch_first=[False, True],
    proj_size=[0, 5],
    bias=[True, False],
    lengths=[False, True],
    batched=[True, False],
    state_given=[True, False],
)
CASES = pairwise_cases(OPTIONS)


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def build(case, rng, dtype=np.float64, batch=BATCH, steps=STEPS):
    lstm, reference = make_pair(
        "LSTM",
        7,
        case["hidden_size"],
        case["num_layers"],
        case["bias"],
        case["batch_first"],
        0.0,
        case["bidirectional"],
        case["proj_size"],
        dtype=dtype,
    )
    batched = case["batched"] or case["lengths"]  # lengths need a batch axis
    problem = random_problem(lstm, rng, steps, batch if batched else None, dtype, case["state_given"])
    lengths = rng.integers(1, steps + 1, batch) if case["lengths"] and batched else None
    if lengths is not None:
        lengths[0] = steps  # at least one full-length sequence, so torch's padded output has all L steps
    return lstm, reference, problem, lengths


def test_the_grid_pairs_every_option():
    for a in OPTIONS:
        for b in OPTIONS:
            if a < b:
                pairs = {(case[a], case[b]) for case in CASES}
                assert len(pairs) == len(OPTIONS[a]) * len(OPTIONS[b]), (a, b)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_float64(case, rng):
    lstm, reference, problem, lengths = build(case, rng)
    compare(lstm, reference, *problem, np.float64, lengths=lengths)


@pytest.mark.parametrize("proj_size", [0, 5])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_matches_torch_float32(proj_size, lengths, rng):
    # One block, one direction: float32 runs on one thread (several threads run the same kernel: covered in float64).
    case = dict(
        hidden_size=17,
        num_layers=2,
        bidirectional=False,
        batch_first=False,
        proj_size=proj_size,
        bias=True,
        lengths=False,
        batched=True,
        state_given=True,
    )
    lstm, reference, problem, _ = build(case, rng, np.float32)
    compare(lstm, reference, *problem, np.float32, lengths=None if lengths is None else np.array(lengths))


def test_batch_split_into_blocks_matches_torch(rng):
    """A batch large enough to be split into blocks (its tasks shared between threads), with lengths, two layers and a
    projection (a bidirectional stack gets half as many blocks: one on 2 threads; the directions are its tasks)."""
    steps, batch, hidden = 12, 9, 64
    case = dict(
        hidden_size=hidden,
        num_layers=2,
        bidirectional=False,
        batch_first=True,
        proj_size=24,
        bias=True,
        lengths=True,
        batched=True,
        state_given=True,
    )
    lstm, reference, problem, lengths = build(case, rng, batch=batch, steps=steps)
    if numba.config.NUMBA_NUM_THREADS > 1:  # the test exercises what it is meant to: several blocks
        assert block_count(batch, steps, 7, hidden, 2, 1, gates=4) >= 2
    compare(lstm, reference, *problem, np.float64, lengths=lengths)


def test_dropout_matches_torch_through_the_same_masks(rng):
    """Dropout between layers: numbarnn's masks (read back from its record) applied to torch's layers one by one."""
    lstm, reference = make_pair("LSTM", 6, 16, num_layers=3, dropout=0.5, proj_size=4, dtype=np.float64)
    x, state, grad_output, grad_state = random_problem(lstm, rng, STEPS, BATCH, np.float64)
    output, final = lstm(x, state)
    grad_x, grad_state_0 = lstm.backward(grad_output, grad_state)
    masks = lstm._record.buffers.dropout_scale.reshape(2, STEPS, BATCH, 4)  # one block: the rows are (L, N)
    assert 0 < (masks == 0).mean() < 1
    # torch: the same layers, one at a time, the masks between them
    x_t = torch.tensor(x, requires_grad=True)
    h_0, c_0 = (torch.tensor(p, requires_grad=True) for p in state)
    layer_input, finals = x_t, []
    for k in range(3):
        layer = torch.nn.LSTM(6 if k == 0 else 4, 16, proj_size=4, dtype=torch.float64)
        layer.load_state_dict(
            {
                name.replace(f"_l{k}", "_l0"): value
                for name, value in reference.state_dict().items()
                if name.endswith(f"_l{k}")
            }
        )
        layer_output, (h_n, c_n) = layer(layer_input, (h_0[k : k + 1], c_0[k : k + 1]))
        finals.append((h_n, c_n, layer))
        layer_input = layer_output * torch.tensor(masks[k]) if k < 2 else layer_output
    assert_close(output, layer_input, np.float64, "output")
    assert_close(final[0], torch.cat([f[0] for f in finals]), np.float64, "h_n")
    assert_close(final[1], torch.cat([f[1] for f in finals]), np.float64, "c_n")
    loss = (layer_input * torch.tensor(grad_output)).sum()
    loss = loss + (torch.cat([f[0] for f in finals]) * torch.tensor(grad_state[0])).sum()
    loss = loss + (torch.cat([f[1] for f in finals]) * torch.tensor(grad_state[1])).sum()
    loss.backward()
    assert_close(grad_x, x_t.grad, np.float64, "grad_input")
    assert_close(grad_state_0[0], h_0.grad, np.float64, "grad_h_0")
    assert_close(grad_state_0[1], c_0.grad, np.float64, "grad_c_0")
    for k, (_, _, layer) in enumerate(finals):
        for name, parameter in layer.named_parameters():
            assert_close(lstm.grads[name.replace("_l0", f"_l{k}")], parameter.grad, np.float64, name)


def test_dropout_one_and_eval_match_torch(rng):
    lstm, reference = make_pair("LSTM", 6, 16, num_layers=2, dropout=1.0, dtype=np.float64)
    x, state, grad_output, grad_state = random_problem(lstm, rng, STEPS, BATCH, np.float64)
    # p = 1: zero masks, and layer 1's input weights get no gradient
    compare(lstm, reference, x, state, grad_output, grad_state, np.float64, eval_too=False, nonzero=False)
    lstm.eval()
    reference.eval()
    output, (h_n, c_n) = lstm(x, state)
    expected, (h_e, c_e) = reference(torch.tensor(x), tuple(torch.tensor(p) for p in state))
    assert_close(output, expected, np.float64, "eval output")
    assert_close(c_n, c_e, np.float64, "eval c_n")
    reference.train()


def test_state_gradients_may_be_none_and_accumulate(rng):
    lstm, reference = make_pair("LSTM", 5, 16, proj_size=3, dtype=np.float64)
    x, state, grad_output, grad_state = random_problem(lstm, rng, STEPS, BATCH, np.float64)
    for grad_h_n, grad_c_n in [(None, grad_state[1]), (grad_state[0], None)]:
        zeros = [np.zeros_like(p) if g is None else g for p, g in zip(state, (grad_h_n, grad_c_n), strict=True)]
        _, _, grad_x_e, grad_state_e, grads_e = torch_reference(reference, x, state, grad_output, tuple(zeros))
        lstm.zero_grad()
        for _ in range(2):  # gradients accumulate, as torch's .grad does
            lstm(x, state)
            grad_x, (grad_h_0, grad_c_0) = lstm.backward(grad_output, (grad_h_n, grad_c_n))
        assert_close(grad_x, grad_x_e, np.float64, "grad_input")
        assert_close(grad_c_0, grad_state_e[1], np.float64, "grad_c_0")
        for name, expected in grads_e.items():
            assert_close(lstm.grads[name], 2 * expected, np.float64, name)
    lstm(x, state)
    grad_x, (grad_h_0, grad_c_0) = lstm.backward(grad_output, None, need_input_grad=False)
    assert grad_x is None and grad_h_0.shape == state[0].shape and grad_c_0.shape == state[1].shape


def test_hx_keyword_and_zero_batch(rng):
    lstm, _ = make_pair("LSTM", 5, 16, num_layers=2, proj_size=3, dtype=np.float64)
    x, state, _, _ = random_problem(lstm, rng, STEPS, BATCH, np.float64)
    output, (h_n, c_n) = lstm(x, hx=state)
    again, (h_again, _) = lstm(x, state)
    np.testing.assert_array_equal(output, again)
    np.testing.assert_array_equal(h_n, h_again)
    output, (h_n, c_n) = lstm(np.zeros((STEPS, 0, 5)))
    assert output.shape == (STEPS, 0, 3) and h_n.shape == (2, 0, 3) and c_n.shape == (2, 0, 16)
    grad_x, (grad_h_0, grad_c_0) = lstm.backward(np.zeros((STEPS, 0, 3)))
    assert grad_x.shape == (STEPS, 0, 5) and grad_h_0.shape == (2, 0, 3) and grad_c_0.shape == (2, 0, 16)


@pytest.mark.parametrize("proj_size", [0, 3])
def test_step_equals_a_one_step_forward(proj_size, rng):
    lstm = numbarnn.LSTM(5, 16, num_layers=2, proj_size=proj_size, dtype=np.float64, seed=1).eval()
    x = rng.standard_normal((4, 5))
    h = (rng.standard_normal((2, 4, proj_size or 16)), rng.standard_normal((2, 4, 16)))
    output, (h_n, c_n) = lstm.step(x, h)
    expected, (h_e, c_e) = lstm(x[None], h)
    assert_close(output, expected[0], np.float64, "output")
    assert_close(h_n, h_e, np.float64, "h_n")
    assert_close(c_n, c_e, np.float64, "c_n")
    output, (h_n, c_n) = lstm.step(x[0], (h[0][:, 0], h[1][:, 0]))  # unbatched
    assert_close(c_n, c_e[:, 0], np.float64, "c_n unbatched")
    with pytest.raises(ValueError, match=r"Expected hidden\[1\] size \(2, 4, 16\), got \[2, 4, 15\]"):
        lstm.step(x, (h[0], h[1][..., :15]))


def test_parameters_and_state_dict_are_torchs():
    lstm = numbarnn.LSTM(5, 16, num_layers=2, bidirectional=True, proj_size=3, seed=0)
    reference = torch.nn.LSTM(5, 16, num_layers=2, bidirectional=True, proj_size=3)
    assert list(lstm.state_dict()) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert lstm.state_dict()[name].shape == tuple(value.shape), name
    bound = 1 / np.sqrt(16)
    flat = np.concatenate([v.ravel() for v in lstm.params.values()])
    assert np.abs(flat).max() <= bound and np.abs(flat).max() > 0.95 * bound
    assert repr(lstm) == repr(reference)
    assert repr(numbarnn.LSTM(5, 16, 1, bias=False, batch_first=True)) == repr(
        torch.nn.LSTM(5, 16, 1, bias=False, batch_first=True)
    )


def test_save_load_copy_and_pickle_round_trip(tmp_path, rng):
    lstm = numbarnn.LSTM(5, 16, num_layers=2, proj_size=3, dtype=np.float64, seed=2).eval()
    cell = numbarnn.LSTMCell(5, 16, bias=False, dtype=np.float64, seed=3)
    numbarnn.save(tmp_path / "model.npz", lstm=lstm, cell=cell)
    loaded = numbarnn.load(tmp_path / "model.npz")
    x = rng.standard_normal((STEPS, 2, 5))
    for twin in (loaded["lstm"], copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm))):
        assert type(twin) is numbarnn.LSTM and twin.proj_size == 3
        np.testing.assert_array_equal(twin(x)[0], lstm(x)[0])
    assert type(loaded["cell"]) is numbarnn.LSTMCell and not loaded["cell"].bias
    for name in cell.params:
        np.testing.assert_array_equal(loaded["cell"].params[name], cell.params[name])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: numbarnn.LSTM(5, 16, proj_size=16), "proj_size has to be smaller than hidden_size"),
        (lambda: numbarnn.LSTM(5, 16, proj_size=-1), "proj_size should be a positive integer or zero"),
        (lambda: numbarnn.LSTM(5, 0), "hidden_size must be greater than zero"),
        (lambda: numbarnn.LSTM(5, 16, dropout=1.5), "dropout should be a number in range"),
    ],
)
def test_constructor_errors_are_torchs(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_forward_errors_are_torchs():
    lstm = numbarnn.LSTM(5, 16, num_layers=2, proj_size=3, dtype=np.float64)
    x = np.zeros((4, 2, 5))
    h, c = np.zeros((2, 2, 3)), np.zeros((2, 2, 16))
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D instead"):
        lstm(x[None])
    with pytest.raises(ValueError, match=r"For batched 3-D input, hx and cx should also be 3-D but got \(3-D, 2-D\)"):
        lstm(x, (h, c[0]))
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] size \(2, 2, 3\), got \[2, 2, 16\]"):
        lstm(x, (c, c))
    with pytest.raises(ValueError, match=r"Expected hidden\[1\] size \(2, 2, 16\), got \[2, 2, 3\]"):
        lstm(x, (h, h))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        lstm(x, h)
    with pytest.raises(ValueError, match=r"input must have the type float64, got type float32"):
        lstm(x.astype(np.float32))
    lstm(x, (h, c))
    with pytest.raises(ValueError, match=r"grad_h_n\[1\] must have shape \(2, 2, 16\)"):
        lstm.backward(None, (h, h))


# -- LSTMCell --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("hx_given", [True, False])
def test_cell_bptt_matches_torch(dtype, batched, hx_given, rng):
    """Three steps through the cell's tape against autograd through torch.nn.LSTMCell."""
    torch.manual_seed(4)
    reference = torch.nn.LSTMCell(6, 17, dtype=torch_dtype(dtype))
    cell = numbarnn.LSTMCell(6, 17, dtype=dtype)
    cell.load_state_dict(reference.state_dict())
    shape = (3, 6) if batched else (6,)
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    state_shape = (3, 17) if batched else (17,)
    hx = (rng.standard_normal(state_shape).astype(dtype), rng.standard_normal(state_shape).astype(dtype))
    grads = [
        (rng.standard_normal(state_shape).astype(dtype), rng.standard_normal(state_shape).astype(dtype))
        for _ in range(3)
    ]
    xs_t = [torch.tensor(x, requires_grad=True) for x in xs]
    hx_t = tuple(torch.tensor(p if hx_given else np.zeros_like(p), requires_grad=True) for p in hx)
    state_t, state, loss = hx_t, hx if hx_given else None, 0
    for x, x_t, (g_h, g_c) in zip(xs, xs_t, grads, strict=True):
        state_t = reference(x_t, state_t)
        state = cell(x, state)
        assert_close(state[0], state_t[0], dtype, "h'")
        assert_close(state[1], state_t[1], dtype, "c'")
        loss = loss + (state_t[0] * torch.tensor(g_h)).sum() + (state_t[1] * torch.tensor(g_c)).sum()
    loss.backward()
    carry = (np.zeros(state_shape, dtype), np.zeros(state_shape, dtype))
    for k in (2, 1, 0):
        grad_x, carry = cell.backward((grads[k][0] + carry[0], grads[k][1] + carry[1]))
        assert_close(grad_x, xs_t[k].grad, dtype, f"grad_x[{k}]")
    assert_close(carry[0], hx_t[0].grad, dtype, "grad_h")
    assert_close(carry[1], hx_t[1].grad, dtype, "grad_c")
    for name, parameter in reference.named_parameters():
        assert_close(cell.grads[name], parameter.grad, dtype, name)
    assert cell._tape == []


def test_cell_errors_and_tape():
    cell = numbarnn.LSTMCell(4, 6, dtype=np.float64)
    with pytest.raises(ValueError, match=r"LSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D instead"):
        cell(np.zeros((2, 4)), (np.zeros((2, 6)), np.zeros((1, 2, 6))))
    with pytest.raises(ValueError, match="hidden1 has inconsistent hidden_size: got 5, expected 6"):
        cell(np.zeros((2, 4)), (np.zeros((2, 6)), np.zeros((2, 5))))
    with pytest.raises(ValueError, match="Input batch size 2 doesn't match hidden0 batch size 3"):
        cell(np.zeros((2, 4)), (np.zeros((3, 6)), np.zeros((2, 6))))
    h, c = cell(np.ones((2, 4)))
    with pytest.raises(TypeError, match=r"takes the tuple \(grad_h, grad_c\)"):
        cell.backward(np.ones((2, 6)))
    grad_x, (grad_h, grad_c) = cell.backward((None, np.ones((2, 6))))
    assert grad_x.shape == (2, 4) and grad_h.shape == grad_c.shape == (2, 6)
    cell(np.ones(4))
    cell.clear_tape()
    with pytest.raises(RuntimeError, match="no recorded call"):
        cell.backward((np.ones(6), None))
    assert repr(cell) == repr(torch.nn.LSTMCell(4, 6))


def test_every_gradient_matches_central_differences():
    """No torch: every scalar of every parameter (weight_hr included), of x, h_0 and c_0 perturbed by +-1e-6 in
    float64; the tolerance is test_gradcheck.py's (truncation ~1e-12 plus rounding ~1e-8 for these O(1) losses)."""
    rng = np.random.default_rng(7)
    lstm = numbarnn.LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=3)
    for value in lstm.params.values():  # larger than the default init, so that every term matters
        value[...] = rng.uniform(-1, 1, value.shape)
    lengths = np.array([3, 1])
    x = rng.standard_normal((3, 2, 2))
    state = (rng.standard_normal((4, 2, 2)), rng.standard_normal((4, 2, 3)))
    grad_output, grad_state = rng.standard_normal((3, 2, 4)), tuple(rng.standard_normal(p.shape) for p in state)
    lstm.train()
    lstm(x, state, lengths=lengths)
    analytic_x, analytic_state = lstm.backward(grad_output, grad_state)
    analytic = {name: grad.copy() for name, grad in lstm.grads.items()}
    lstm.eval()

    def loss():
        output, (h_n, c_n) = lstm(x, state, lengths=lengths)
        return float(np.sum(grad_output * output) + np.sum(grad_state[0] * h_n) + np.sum(grad_state[1] * c_n))

    def central_difference(array):
        gradient = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + 1e-6
            upper = loss()
            array[index] = original - 1e-6
            gradient[index] = (upper - loss()) / 2e-6
            array[index] = original
        return gradient

    for name in lstm.params:
        np.testing.assert_allclose(
            analytic[name], central_difference(lstm.params[name]), rtol=0, atol=2e-7, err_msg=name
        )
        assert np.abs(analytic[name]).max() > 1e-3, name
    np.testing.assert_allclose(analytic_x, central_difference(x), rtol=0, atol=2e-7, err_msg="input")
    for index in range(2):
        np.testing.assert_allclose(
            analytic_state[index], central_difference(state[index]), rtol=0, atol=2e-7, err_msg=f"state[{index}]"
        )
