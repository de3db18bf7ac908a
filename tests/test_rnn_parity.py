"""``numbarnn.RNN`` against ``torch.nn.RNN``: forward results and every gradient, over the argument grid."""

import itertools

import numpy as np
import pytest
from helpers import (
    DTYPES,
    PANEL_HIDDEN_SIZES,
    assert_close,
    blocks_of,
    input_shape,
    make_rnn_pair,
    numba_threads,
    output_shape,
    pairwise_cases,
    panels_of,
    scaled_atols,
    standard_normal,
    state_shape,
    thread_counts,
    torch_run,
)

import numbarnn

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 4, 3, 3, 5

GRID_AXES = dict(
    nonlinearity=["tanh", "relu"],
    num_layers=[1, 2, 3],
    bidirectional=[False, True],
    bias=[True, False],
    batch_first=[False, True],
    batched=[True, False],
    dtype=DTYPES,
    h_0_given=[True, False],
)
FULL_GRID = [dict(zip(GRID_AXES, values, strict=True)) for values in itertools.product(*GRID_AXES.values())]


def grid_id(case):
    return "-".join(
        [
            case["nonlinearity"],
            f"L{case['num_layers']}",
            "bi" if case["bidirectional"] else "uni",
            "bias" if case["bias"] else "nobias",
            "bf" if case["batch_first"] else "tm",
            "batched" if case["batched"] else "unbatched",
            np.dtype(case["dtype"]).name,
            "h0" if case["h_0_given"] else "noh0",
        ]
        + ([case["gradient"]] if "gradient" in case else [])
    )


def build_case(case, rng, steps=STEPS, batch=BATCH):
    """The pair of modules and the arrays for one grid case."""
    rnn, reference = make_rnn_pair(
        INPUT_SIZE,
        HIDDEN_SIZE,
        case["num_layers"],
        case["nonlinearity"],
        case["bias"],
        case["batch_first"],
        bidirectional=case["bidirectional"],
        dtype=case["dtype"],
    )
    batch = batch if case["batched"] else None
    x = standard_normal(rng, input_shape(rnn, steps, batch), case["dtype"])
    h_0 = standard_normal(rng, state_shape(rnn, batch), case["dtype"]) if case["h_0_given"] else None
    return rnn, reference, x, h_0, batch


def check_against_torch(rnn, reference, x, h_0, grad_output, grad_h_n, dtype, atols=(None, None)):
    """Forward and backward against torch; ``atols``: helpers.scaled_atols for a larger problem."""
    output, h_n = rnn(x, h_0)
    expected_output, expected_h_n, expected_grad_x, expected_grad_h_0, expected_grads = torch_run(
        reference, x, h_0, grad_output, grad_h_n
    )
    values_atol, gradients_atol = atols
    assert_close(output, expected_output, dtype, "output", values_atol)
    assert_close(h_n, expected_h_n, dtype, "h_n", values_atol)
    grad_x, grad_h_0 = rnn.backward(grad_output, grad_h_n)
    assert_close(grad_x, expected_grad_x, dtype, "grad_x", values_atol)
    assert_close(grad_h_0, expected_grad_h_0, dtype, "grad_h_0", values_atol)
    assert list(rnn.grads) == list(expected_grads)
    for name, expected in expected_grads.items():
        assert_close(rnn.grads[name], expected, dtype, name, gradients_atol)


@pytest.mark.parametrize("case", FULL_GRID, ids=grid_id)
def test_forward_matches_torch(case, rng):
    rnn, reference, x, h_0, batch = build_case(case, rng)
    expected_output, expected_h_n, *_ = torch_run(reference, x, h_0)
    for mode in ("train", "eval"):  # the two modes take different buffer paths through the forward pass
        getattr(rnn, mode)()
        output, h_n = rnn(x, h_0)
        assert output.dtype == np.dtype(case["dtype"]) and h_n.dtype == np.dtype(case["dtype"])
        assert output.shape == output_shape(rnn, STEPS, batch)
        assert h_n.shape == state_shape(rnn, batch)
        assert_close(output, expected_output, case["dtype"], f"output ({mode})")
        assert_close(h_n, expected_h_n, case["dtype"], f"h_n ({mode})")


# Gradients for the full argument grid. Which gradients are given (grad_output only, grad_h_n only, both) cycles
# through the grid instead of multiplying it by 3; every mode still meets every value of every argument
# (test_gradient_grid_covers_every_pair checks that).
GRADIENT_MODES = ("output", "h_n", "both")
GRADIENT_GRID = [dict(case, gradient=GRADIENT_MODES[index % 3]) for index, case in enumerate(FULL_GRID)]


def test_gradient_grid_covers_every_pair():
    for axis, values in GRID_AXES.items():
        for value in values:
            modes = {case["gradient"] for case in GRADIENT_GRID if case[axis] == value}
            assert modes == set(GRADIENT_MODES), (axis, value, modes)


@pytest.mark.parametrize("case", GRADIENT_GRID, ids=grid_id)
def test_gradients_match_torch(case, rng):
    rnn, reference, x, h_0, batch = build_case(case, rng)
    grad_output = grad_h_n = None
    if case["gradient"] in ("output", "both"):
        grad_output = standard_normal(rng, output_shape(rnn, STEPS, batch), case["dtype"])
    if case["gradient"] in ("h_n", "both"):
        grad_h_n = standard_normal(rng, state_shape(rnn, batch), case["dtype"])
    check_against_torch(rnn, reference, x, h_0, grad_output, grad_h_n, case["dtype"])


EDGE_CASES = [
    dict(steps=1, batch=3),
    dict(steps=4, batch=1),
    dict(steps=1, batch=1),
    dict(steps=7, batch=4),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("edge", EDGE_CASES, ids=lambda e: f"T{e['steps']}-N{e['batch']}")
def test_edge_sizes_match_torch(edge, nonlinearity, num_layers, bidirectional, dtype, rng):
    case = dict(
        nonlinearity=nonlinearity,
        num_layers=num_layers,
        bidirectional=bidirectional,
        bias=True,
        batch_first=False,
        batched=True,
        dtype=dtype,
        h_0_given=True,
    )
    rnn, reference, x, h_0, batch = build_case(case, rng, edge["steps"], edge["batch"])
    grad_output = standard_normal(rng, output_shape(rnn, edge["steps"], batch), dtype)
    grad_h_n = standard_normal(rng, state_shape(rnn, batch), dtype)
    check_against_torch(rnn, reference, x, h_0, grad_output, grad_h_n, dtype)


# -- the fast paths: whole and partial panels, several blocks ---------------------------------------------------------

# Hidden sizes past one panel, and batches split into blocks (with the block_pool fixture, as 4 threads would split
# them): the grids above all use H = 5, less than a panel, and too little work for a second block. Every pair of
# values meets in some case, and each dtype adds a unidirectional and a bidirectional stack of several blocks;
# h_0 and grad_h_n are always given. An input size of 24 ends W_ih's panels in the backward (over H_in columns) in
# a partial float32 panel. L is kept small: the blocks come from the batch.
PANEL_STEPS, PANEL_INPUT_SIZE = 3, 24
PANEL_GRID = pairwise_cases(
    dict(
        hidden_size=list(PANEL_HIDDEN_SIZES),
        dtype=DTYPES,
        num_layers=[1, 2],
        bidirectional=[False, True],
        nonlinearity=["tanh", "relu"],
        batch=[3, 48],
    )
) + [
    dict(
        hidden_size=hidden, dtype=dtype, num_layers=2, bidirectional=bidirectional, nonlinearity=nonlinearity, batch=48
    )
    for dtype in DTYPES
    for hidden, bidirectional, nonlinearity in [(64, False, "tanh"), (40, True, "relu")]
]


def panel_id(case):
    return "-".join(
        [
            f"H{case['hidden_size']}",
            np.dtype(case["dtype"]).name,
            f"L{case['num_layers']}",
            "bi" if case["bidirectional"] else "uni",
            case["nonlinearity"],
            f"N{case['batch']}",
        ]
    )


def panel_case_blocks(case):
    return blocks_of(
        case["batch"],
        PANEL_STEPS,
        PANEL_INPUT_SIZE,
        case["hidden_size"],
        case["num_layers"],
        2 if case["bidirectional"] else 1,
    )


def test_panel_grid_reaches_partial_panels_and_blocks(block_pool):
    """In each dtype, with the panel width and block sizes in use: whole panels only, whole panels and a partial
    one, and batches of several blocks, unidirectional and bidirectional multi-layer."""
    for dtype in DTYPES:
        cases = [case for case in PANEL_GRID if case["dtype"] == dtype]
        assert {case["hidden_size"] for case in cases} == set(PANEL_HIDDEN_SIZES)
        panels = [panels_of(case["hidden_size"], dtype) for case in cases]
        assert any(full >= 1 and partial == 0 for full, partial in panels), (dtype, panels)
        assert any(full >= 1 and partial == 1 for full, partial in panels), (dtype, panels)
        blocked = [case for case in cases if panel_case_blocks(case) >= 2]
        assert any(not case["bidirectional"] for case in blocked), dtype
        assert any(case["bidirectional"] and case["num_layers"] > 1 for case in blocked), dtype


@pytest.mark.parametrize("case", PANEL_GRID, ids=panel_id)
def test_panel_and_block_sizes_match_torch(case, block_pool, rng):
    dtype, hidden, batch = case["dtype"], case["hidden_size"], case["batch"]
    directions = 2 if case["bidirectional"] else 1
    rnn, reference = make_rnn_pair(
        PANEL_INPUT_SIZE,
        hidden,
        case["num_layers"],
        case["nonlinearity"],
        bidirectional=case["bidirectional"],
        dtype=dtype,
    )
    x = standard_normal(rng, input_shape(rnn, PANEL_STEPS, batch), dtype)
    h_0 = standard_normal(rng, state_shape(rnn, batch), dtype)
    grad_output = standard_normal(rng, output_shape(rnn, PANEL_STEPS, batch), dtype)
    grad_h_n = standard_normal(rng, state_shape(rnn, batch), dtype)
    atols = scaled_atols(dtype, PANEL_STEPS, batch, PANEL_INPUT_SIZE, hidden, directions)
    expected_output, expected_h_n, *_ = torch_run(reference, x, h_0)
    for threads in thread_counts(panel_case_blocks(case), directions):
        with numba_threads(threads):
            rnn.eval()  # inference takes its own buffer paths (scratch pool, output in place)
            output, h_n = rnn(x, h_0)
            assert_close(output, expected_output, dtype, f"output (eval, numba threads: {threads})", atols.values)
            assert_close(h_n, expected_h_n, dtype, f"h_n (eval, numba threads: {threads})", atols.values)
            rnn.train()
            rnn.zero_grad()
            check_against_torch(rnn, reference, x, h_0, grad_output, grad_h_n, dtype, atols)


def test_default_gradients_are_zero_when_none_given(rng):
    """backward() with no argument is the gradient of a zero loss: everything stays zero."""
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
    x = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), np.float64)
    rnn(x)
    grad_x, grad_h_0 = rnn.backward()
    assert not grad_x.any() and not grad_h_0.any()
    assert all(not grad.any() for grad in rnn.grads.values())


# -- memory layout and side effects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_arrays(batch_first, dtype, mode, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, batch_first=batch_first, bidirectional=True, dtype=dtype)
    getattr(rnn, mode)()
    # Every other element along each of the first two axes, and a Fortran-ordered h_0 / grad_h_n.
    x = standard_normal(rng, input_shape(rnn, 2 * STEPS, 2 * BATCH), dtype)[::2, ::2]
    h_0 = np.asfortranarray(standard_normal(rng, state_shape(rnn, BATCH), dtype))
    grad_output = standard_normal(rng, output_shape(rnn, STEPS, BATCH) + (2,), dtype)[..., 0]
    grad_h_n = np.asfortranarray(standard_normal(rng, state_shape(rnn, BATCH), dtype))
    assert not x.flags.c_contiguous and not h_0.flags.c_contiguous and not grad_output.flags.c_contiguous
    if mode == "eval":
        output, h_n = rnn(x, h_0)
        expected_output, expected_h_n, *_ = torch_run(reference, x, h_0)
        assert_close(output, expected_output, dtype, "output")
        assert_close(h_n, expected_h_n, dtype, "h_n")
    else:
        check_against_torch(rnn, reference, x, h_0, grad_output, grad_h_n, dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_arguments_are_not_modified(mode, batch_first, rng):
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 3, batch_first=batch_first, bidirectional=True)
    getattr(rnn, mode)()
    x = standard_normal(rng, input_shape(rnn, STEPS, BATCH), np.float64)
    h_0 = standard_normal(rng, state_shape(rnn, BATCH), np.float64)
    grad_output = standard_normal(rng, output_shape(rnn, STEPS, BATCH), np.float64)
    grad_h_n = standard_normal(rng, state_shape(rnn, BATCH), np.float64)
    lengths = np.array([2, 4, 1])
    originals = [array.copy() for array in (x, h_0, grad_output, grad_h_n, lengths)]
    for call_lengths in (None, lengths):
        rnn(x, h_0, lengths=call_lengths)
        if mode == "train":
            rnn.backward(grad_output, grad_h_n)
    for original, array in zip(originals, (x, h_0, grad_output, grad_h_n, lengths), strict=True):
        np.testing.assert_array_equal(array, original)


def test_results_do_not_alias_module_buffers(rng):
    """Arrays returned by one call must survive the next call (training mode reuses internal buffers)."""
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
    x1, x2 = (standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), np.float64) for _ in range(2))
    grad = standard_normal(rng, (STEPS, BATCH, 2 * HIDDEN_SIZE), np.float64)
    output_1, h_n_1 = rnn(x1)
    grad_x_1, grad_h_0_1 = rnn.backward(grad)
    kept = [a.copy() for a in (output_1, h_n_1, grad_x_1, grad_h_0_1)]
    rnn(x2)
    rnn.backward(-grad)
    for before, after in zip(kept, (output_1, h_n_1, grad_x_1, grad_h_0_1), strict=True):
        np.testing.assert_array_equal(after, before)


# -- NaN and inf ---------------------------------------------------------------------------------------------------


def nan_inf_case(special, nonlinearity, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, nonlinearity, bidirectional=True)
    x = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), np.float64)
    x[1, 0, 0] = special  # one element of one sequence; the other sequences must stay finite
    x[2, 1, 2] = -special
    return rnn, reference, x


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("special", [np.nan, np.inf])
def test_nan_and_inf_propagate_in_forward_as_in_torch(special, nonlinearity, rng):
    rnn, reference, x = nan_inf_case(special, nonlinearity, rng)
    expected_output, expected_h_n, *_ = torch_run(reference, x)
    output, h_n = rnn(x)
    # assert_allclose treats NaN == NaN and inf == inf, so this also checks where the non-finite values are.
    assert_close(output, expected_output, np.float64, "output")
    assert_close(h_n, expected_h_n, np.float64, "h_n")
    assert np.isfinite(output[:, 2]).all(), "a sequence without NaN/inf must stay finite"
    if special is np.nan or nonlinearity == "relu":
        assert not np.isfinite(output[:, :2]).all(), "the non-finite input must reach the output"


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("special", [np.nan, np.inf])
def test_nan_and_inf_propagate_in_backward_as_in_torch(special, nonlinearity, rng):
    rnn, reference, x = nan_inf_case(special, nonlinearity, rng)
    grad_output = standard_normal(rng, (STEPS, BATCH, 2 * HIDDEN_SIZE), np.float64)
    _, _, expected_grad_x, expected_grad_h_0, expected_grads = torch_run(reference, x, None, grad_output)
    rnn(x)
    grad_x, grad_h_0 = rnn.backward(grad_output)
    assert_close(grad_x, expected_grad_x, np.float64, "grad_x")
    assert_close(grad_h_0, expected_grad_h_0, np.float64, "grad_h_0")
    for name, expected in expected_grads.items():
        assert_close(rnn.grads[name], expected, np.float64, name)


# -- gradient accumulation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_accumulate_over_backward_calls(dtype, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True, dtype=dtype)
    runs = []
    for _ in range(2):
        x = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), dtype)
        grad_output = standard_normal(rng, (STEPS, BATCH, 2 * HIDDEN_SIZE), dtype)
        runs.append((x, grad_output))
        rnn(x)
        rnn.backward(grad_output)
    expected = [torch_run(reference, x, None, grad_output)[4] for x, grad_output in runs]
    for name in rnn.grads:
        assert_close(rnn.grads[name], expected[0][name] + expected[1][name], dtype, name)


def test_zero_grad_clears_every_gradient(rng):
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
    x = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), np.float64)
    output, _ = rnn(x)
    rnn.backward(np.ones_like(output))
    assert all(grad.any() for grad in rnn.grads.values())
    grad_views = dict(rnn.grads)
    rnn.zero_grad()
    assert all(not grad.any() for grad in rnn.grads.values())
    # zero_grad clears in place: views taken before (e.g. by an optimiser) see the zeros and stay connected
    assert all(rnn.grads[name] is view for name, view in grad_views.items())
    rnn(x)
    rnn.backward(np.ones_like(output))
    assert all(view.any() for view in grad_views.values())


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_backward_without_input_gradient_gives_the_same_parameter_gradients(num_layers, bidirectional, rng):
    rnn = numbarnn.RNN(3, 4, num_layers, bidirectional=bidirectional, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    grad_output = rng.standard_normal((5, 2, 4 * (2 if bidirectional else 1)))
    rnn(x)
    _, grad_h_0 = rnn.backward(grad_output)
    expected = {name: grad.copy() for name, grad in rnn.grads.items()}
    rnn.zero_grad()
    rnn(x)
    grad_input, grad_h_0_again = rnn.backward(grad_output, need_input_grad=False)
    assert grad_input is None
    np.testing.assert_array_equal(grad_h_0_again, grad_h_0)
    for name, grad in rnn.grads.items():
        np.testing.assert_array_equal(grad, expected[name], err_msg=name)


def test_initial_state_can_be_passed_as_hx_like_torch(rng):
    rnn = numbarnn.RNN(3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    h_0 = rng.standard_normal((1, 2, 4))
    np.testing.assert_array_equal(rnn(x, hx=h_0)[0], rnn(x, h_0)[0])
    with pytest.raises(TypeError, match="not both"):
        rnn(x, h_0, hx=h_0)
