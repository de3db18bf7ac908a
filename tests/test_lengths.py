"""``lengths=`` against torch's pack_padded_sequence(enforce_sorted=False) -> RNN ->
pad_packed_sequence(total_length=L), for the output, h_n and every gradient; and the padding is neither read nor
written through."""

import itertools

import numpy as np
import pytest
import torch
from helpers import (
    DTYPES,
    PANEL_HIDDEN_SIZES,
    assert_close,
    blocks_of,
    input_shape,
    make_rnn_pair,
    numba_threads,
    output_shape,
    panels_of,
    scaled_atols,
    standard_normal,
    thread_counts,
    torch_run,
)

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 6, 4, 3, 4

LENGTH_PATTERNS = {
    "all-full": [6, 6, 6, 6],
    "all-equal-short": [3, 3, 3, 3],  # max(lengths) < L: the last steps are padding for everyone
    "unsorted-with-1": [2, 6, 1, 4],
    "ties-max-short": [5, 1, 5, 2],  # max(lengths) < L, with ties the stable sort must keep apart
}

GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], DTYPES, ["tanh", "relu"]))
# Each configuration gets one length pattern instead of all four. A plain cycle of 4 would lock onto the two
# fastest-varying axes, so the index is mixed with its quotient; every pattern still meets every value of every
# argument (test_grid_pairs_every_pattern_with_every_value).
PATTERN_NAMES = list(LENGTH_PATTERNS)
CASES = [config + (PATTERN_NAMES[(i + i // 4) % 4],) for i, config in enumerate(GRID)]


def case_id(case):
    layers, bidirectional, batch_first, dtype, nonlinearity, pattern = case
    return "-".join(
        [
            f"L{layers}",
            "bi" if bidirectional else "uni",
            "bf" if batch_first else "tm",
            np.dtype(dtype).name,
            nonlinearity,
            pattern,
        ]
    )


def test_grid_pairs_every_pattern_with_every_value():
    for axis in range(5):
        for value in {case[axis] for case in CASES}:
            assert {case[5] for case in CASES if case[axis] == value} == set(LENGTH_PATTERNS), (axis, value)


def run_and_compare(rnn, reference, x, h_0, lengths, grad_output, grad_h_n, dtype, atols=(None, None)):
    """Eval and training forward, and the backward, against torch; ``atols``: helpers.scaled_atols for a larger
    problem."""
    expected_output, expected_h_n, expected_grad_x, expected_grad_h_0, expected_grads = torch_run(
        reference, x, h_0, grad_output, grad_h_n, lengths
    )
    values_atol, gradients_atol = atols
    rnn.eval()
    output, h_n = rnn(x, h_0, lengths=lengths)
    assert_close(output, expected_output, dtype, "output (eval)", values_atol)
    assert_close(h_n, expected_h_n, dtype, "h_n (eval)", values_atol)
    rnn.train()
    output, h_n = rnn(x, h_0, lengths=lengths)
    assert_close(output, expected_output, dtype, "output", values_atol)
    assert_close(h_n, expected_h_n, dtype, "h_n", values_atol)
    grad_x, grad_h_0 = rnn.backward(grad_output, grad_h_n)
    assert_close(grad_x, expected_grad_x, dtype, "grad_x", values_atol)
    assert_close(grad_h_0, expected_grad_h_0, dtype, "grad_h_0", values_atol)
    for name, expected in expected_grads.items():
        assert_close(rnn.grads[name], expected, dtype, name, gradients_atol)
    return output, grad_x


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_lengths_match_torch_packed_sequences(case, rng):
    num_layers, bidirectional, batch_first, dtype, nonlinearity, pattern = case
    rnn, reference = make_rnn_pair(
        INPUT_SIZE,
        HIDDEN_SIZE,
        num_layers,
        nonlinearity,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=dtype,
    )
    lengths = np.array(LENGTH_PATTERNS[pattern])
    x = standard_normal(rng, input_shape(rnn, STEPS, BATCH), dtype)
    h_0 = standard_normal(rng, (num_layers * (2 if bidirectional else 1), BATCH, HIDDEN_SIZE), dtype)
    grad_output = standard_normal(rng, output_shape(rnn, STEPS, BATCH), dtype)
    grad_h_n = standard_normal(rng, h_0.shape, dtype)
    run_and_compare(rnn, reference, x, h_0, lengths, grad_output, grad_h_n, dtype)


# The fast paths with lengths: hidden sizes past one panel, and a batch of 48 split into blocks (with the block_pool
# fixture, as 4 threads would split it), each block's sequences of decreasing length. The other arguments vary with
# the hidden size; test_panel_cases_reach_partial_panels_and_blocks checks what the cases reach.
PANEL_STEPS, PANEL_BATCH, PANEL_INPUT_SIZE = 4, 48, 24
PANEL_STACKS = {16: (1, True, "tanh"), 17: (1, False, "relu"), 40: (2, False, "tanh"), 64: (2, True, "relu")}
PANEL_CASES = [(hidden, dtype) for hidden in PANEL_HIDDEN_SIZES for dtype in DTYPES]
# Unsorted, every length from 1 to L, and two sequences of full length: with 3 blocks, one block has none (the
# sorted batch is dealt to the blocks in turn), so its last step has no rows.
PANEL_LENGTHS = np.random.default_rng(17).integers(1, PANEL_STEPS, PANEL_BATCH)
PANEL_LENGTHS[[5, 30]] = PANEL_STEPS


def panel_case_blocks(hidden):
    num_layers, bidirectional, _ = PANEL_STACKS[hidden]
    return blocks_of(PANEL_BATCH, PANEL_STEPS, PANEL_INPUT_SIZE, hidden, num_layers, 2 if bidirectional else 1)


def test_panel_cases_reach_partial_panels_and_blocks(block_pool):
    assert set(PANEL_LENGTHS) == set(range(1, PANEL_STEPS + 1)) and (PANEL_LENGTHS == PANEL_STEPS).sum() == 2
    assert (np.diff(PANEL_LENGTHS) > 0).any(), "the lengths must be unsorted"
    for dtype in DTYPES:
        hiddens = [hidden for hidden, case_dtype in PANEL_CASES if case_dtype == dtype]
        panels = [panels_of(hidden, dtype) for hidden in hiddens]
        assert any(full >= 1 and partial == 1 for full, partial in panels), (dtype, panels)
        blocked = [hidden for hidden in hiddens if panel_case_blocks(hidden) >= 2]
        assert any(PANEL_STACKS[hidden][1] and PANEL_STACKS[hidden][0] > 1 for hidden in blocked), dtype
        assert any(not PANEL_STACKS[hidden][1] for hidden in blocked), dtype
        full_length = (PANEL_LENGTHS == PANEL_STEPS).sum()
        assert any(panel_case_blocks(hidden) > full_length for hidden in blocked), dtype  # a block ends early


@pytest.mark.parametrize("hidden,dtype", PANEL_CASES, ids=[f"H{h}-{np.dtype(d).name}" for h, d in PANEL_CASES])
def test_lengths_match_torch_at_panel_and_block_sizes(hidden, dtype, block_pool, rng):
    num_layers, bidirectional, nonlinearity = PANEL_STACKS[hidden]
    directions = 2 if bidirectional else 1
    rnn, reference = make_rnn_pair(
        PANEL_INPUT_SIZE, hidden, num_layers, nonlinearity, bidirectional=bidirectional, dtype=dtype
    )
    x = standard_normal(rng, input_shape(rnn, PANEL_STEPS, PANEL_BATCH), dtype)
    h_0 = standard_normal(rng, (num_layers * directions, PANEL_BATCH, hidden), dtype)
    grad_output = standard_normal(rng, output_shape(rnn, PANEL_STEPS, PANEL_BATCH), dtype)
    grad_h_n = standard_normal(rng, h_0.shape, dtype)
    atols = scaled_atols(dtype, PANEL_STEPS, PANEL_BATCH, PANEL_INPUT_SIZE, hidden, directions)
    for threads in thread_counts(panel_case_blocks(hidden), directions):
        with numba_threads(threads):
            rnn.zero_grad()
            run_and_compare(rnn, reference, x, h_0, PANEL_LENGTHS, grad_output, grad_h_n, dtype, atols)


@pytest.mark.parametrize("pattern", LENGTH_PATTERNS)
@pytest.mark.parametrize("bias", [True, False])
def test_every_pattern_on_a_deep_bidirectional_stack(pattern, bias, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 3, bias=bias, bidirectional=True)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    h_0 = rng.standard_normal((6, BATCH, HIDDEN_SIZE))
    run_and_compare(
        rnn,
        reference,
        x,
        h_0,
        np.array(LENGTH_PATTERNS[pattern]),
        rng.standard_normal((STEPS, BATCH, 2 * HIDDEN_SIZE)),
        rng.standard_normal(h_0.shape),
        np.float64,
    )


def test_full_lengths_equal_no_lengths(rng):
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    grad_output = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN_SIZE))
    output, h_n = rnn(x)
    grad_x, grad_h_0 = rnn.backward(grad_output)
    packed_output, packed_h_n = rnn(x, lengths=[STEPS] * BATCH)
    packed_grad_x, packed_grad_h_0 = rnn.backward(grad_output)
    for name, a, b in [
        ("output", packed_output, output),
        ("h_n", packed_h_n, h_n),
        ("grad_x", packed_grad_x, grad_x),
        ("grad_h_0", packed_grad_h_0, grad_h_0),
    ]:
        assert_close(a, b, np.float64, name)


@pytest.mark.parametrize("batch_first", [False, True])
def test_padding_is_never_read_and_gets_zero_gradient(batch_first, rng):
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, batch_first=batch_first, bidirectional=True)
    lengths = np.array([2, 6, 1, 4])
    valid = np.arange(STEPS)[:, None] < lengths[None, :]  # (L, N)
    if batch_first:
        valid = valid.T
    clean = rng.standard_normal(input_shape(rnn, STEPS, BATCH))
    clean[~valid] = 0
    poisoned = clean.copy()
    poisoned[~valid] = np.nan
    grad_output = rng.standard_normal(output_shape(rnn, STEPS, BATCH))

    output, h_n = rnn(clean, lengths=lengths)
    grad_x, grad_h_0 = rnn.backward(grad_output)
    clean_grads = {name: grad.copy() for name, grad in rnn.grads.items()}
    rnn.zero_grad()

    poisoned_output, poisoned_h_n = rnn(poisoned, lengths=lengths)
    poisoned_grad_x, poisoned_grad_h_0 = rnn.backward(grad_output)
    assert np.isfinite(poisoned_output).all() and np.isfinite(poisoned_h_n).all()
    np.testing.assert_array_equal(poisoned_output, output)
    np.testing.assert_array_equal(poisoned_h_n, h_n)
    np.testing.assert_array_equal(poisoned_output[~valid], 0)  # padded outputs are zeros
    np.testing.assert_array_equal(poisoned_grad_x, grad_x)
    np.testing.assert_array_equal(poisoned_grad_x[~valid], 0)
    np.testing.assert_array_equal(poisoned_grad_h_0, grad_h_0)
    for name, grad in rnn.grads.items():
        np.testing.assert_array_equal(grad, clean_grads[name])


def test_gradient_at_padded_outputs_is_ignored(rng):
    rnn, _ = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
    lengths = np.array([2, 6, 1, 4])
    valid = np.arange(STEPS)[:, None] < lengths[None, :]
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    grad_output = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN_SIZE))
    masked = grad_output.copy()
    masked[~valid] = 0
    results = []
    for gradient in (grad_output, masked):
        rnn.zero_grad()
        rnn(x, lengths=lengths)
        results.append((rnn.backward(gradient), {name: g.copy() for name, g in rnn.grads.items()}))
    (grad_x, grad_h_0), grads = results[0]
    (masked_grad_x, masked_grad_h_0), masked_grads = results[1]
    np.testing.assert_array_equal(grad_x, masked_grad_x)
    np.testing.assert_array_equal(grad_h_0, masked_grad_h_0)
    for name in grads:
        np.testing.assert_array_equal(grads[name], masked_grads[name])


@pytest.mark.parametrize(
    "lengths",
    [
        [2, 6, 1, 4],
        (2, 6, 1, 4),
        np.array([2, 6, 1, 4], np.int32),
        np.array([2, 6, 1, 4], np.uint8),
        torch.tensor([2, 6, 1, 4]),
    ],
    ids=["list", "tuple", "int32", "uint8", "torch"],
)
def test_lengths_accept_any_integer_sequence(lengths, rng):
    rnn, reference = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, 1)
    rnn.eval()
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    expected_output, expected_h_n, *_ = torch_run(reference, x, lengths=[2, 6, 1, 4])
    output, h_n = rnn(x, lengths=lengths)
    assert_close(output, expected_output, np.float64, "output")
    assert_close(h_n, expected_h_n, np.float64, "h_n")
