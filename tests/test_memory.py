"""Steady-state training and inference allocate only the arrays they return; eval mode keeps nothing for a backward
pass, and its reused scratch holds neither the caller's arrays nor what it returned.

numpy reports its data buffers to tracemalloc, so the traced peak of one call bounds every array it allocated.
"""

import tracemalloc
import weakref

import numpy as np
import pytest

import numbarnn
from numbarnn._engine import CallCache
from numbarnn._workspace import block_count, length_packing

STEPS, BATCH, INPUT_SIZE, HIDDEN = 20, 8, 16, 32
# Python objects (tuples, the record, small index arrays) allocated per call; far below any buffer of these sizes.
SMALL_OBJECTS = 8 * 1024


def traced(fn, repeats=5):
    """``(peak bytes above the start, bytes still held at the end)`` over ``repeats`` calls of ``fn``."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(repeats):
            fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, current - start


@pytest.mark.parametrize("bidirectional", [False, True])
def test_training_step_allocates_only_its_results(bidirectional):
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, num_layers=2, bidirectional=bidirectional, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    directions = 2 if bidirectional else 1
    grad = rng.standard_normal((STEPS, BATCH, directions * HIDDEN)).astype(np.float32)

    def step():
        rnn.zero_grad()
        rnn(x)
        rnn.backward(grad)

    # The first call compiles and allocates the module's workspaces; numba's dispatcher also fills small caches of
    # its own during the first few hundred calls of a process (about 4 KiB here, then nothing: measured over
    # 18,000 calls), which a test run first in its process would otherwise count as growth.
    for _ in range(300):
        step()
    states = np.zeros((2 * directions, BATCH, HIDDEN), np.float32).nbytes
    # output and grad_input, h_n and grad_h_0: any reallocated workspace (each at least L*N*H floats = 20 KiB) on
    # top of these breaks the bound.
    results = grad.nbytes + x.nbytes + 2 * states
    peak, held = traced(step)
    assert held < SMALL_OBJECTS, "memory grows from one training step to the next"
    assert peak < results + SMALL_OBJECTS, (peak, results)


@pytest.mark.parametrize("module_class", [numbarnn.RNN, numbarnn.GRU, numbarnn.LSTM])
def test_backward_reads_the_callers_gradient_in_place_and_never_writes_it(module_class):
    module = module_class(INPUT_SIZE, HIDDEN, num_layers=2, seed=0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    grad = rng.standard_normal((STEPS, BATCH, HIDDEN)).astype(np.float32)
    original = grad.copy()
    results = []
    # C-contiguous (read in place when the batch is one block), then the same values laid out otherwise (copied in)
    for gradient in (grad, np.asfortranarray(grad), grad):
        module.zero_grad()
        module(x)
        grad_input, _ = module.backward(gradient)
        results.append((grad_input, module._grad_flat.copy()))
    np.testing.assert_array_equal(grad, original)
    for grad_input, grads in results[1:]:
        np.testing.assert_array_equal(grad_input, results[0][0])
        np.testing.assert_array_equal(grads, results[0][1])


def test_eval_forward_keeps_nothing():
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, num_layers=3, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    rnn(x)
    _, held = traced(lambda: rnn(x))
    assert held < SMALL_OBJECTS
    assert rnn._record is None


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_eval_forward_allocates_only_its_results(batch_first, with_lengths):
    # large enough for two blocks where numba has two threads, so the packed, unpacked and in-place paths all run
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, num_layers=3, batch_first=batch_first, seed=0).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE))
    x = x.astype(np.float32)
    lengths = rng.integers(1, STEPS + 1, BATCH) if with_lengths else None
    for _ in range(300):  # numba's dispatcher caches, as above
        rnn(x, lengths=lengths)
    output_bytes = STEPS * BATCH * HIDDEN * 4
    states = 3 * BATCH * HIDDEN * 4
    # with lengths each call also sorts them into a packing of its own: small index arrays, measured here
    packing = 0
    if with_lengths:
        blocks = block_count(BATCH, STEPS, INPUT_SIZE, HIDDEN, 3, 1)
        packing, _ = traced(lambda: length_packing(lengths, STEPS, blocks))
    # a new scratch buffer (z alone is L*N*H floats = 20 KiB) on top of the output and h_n breaks the bound
    peak, held = traced(lambda: rnn(x, lengths=lengths))
    assert held < SMALL_OBJECTS
    assert peak < output_bytes + states + packing + SMALL_OBJECTS, (peak, output_bytes + states, packing)


def test_eval_results_are_new_arrays_and_the_input_is_not_kept():
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, num_layers=2, seed=0).eval()
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32) for _ in range(2))
    output1, h_n1 = rnn(x1)
    expected = output1.copy(), h_n1.copy()
    output2, h_n2 = rnn(x2)  # same shape: runs on the first call's scratch
    np.testing.assert_array_equal(output1, expected[0])
    np.testing.assert_array_equal(h_n1, expected[1])
    assert not np.shares_memory(output1, output2) and not np.shares_memory(h_n1, h_n2)
    alive = weakref.ref(x1)
    del x1
    assert alive() is None, "the scratch pool keeps the caller's input alive"


def test_train_releases_the_inference_scratch():
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, seed=0).eval()
    x = np.zeros((STEPS, BATCH, INPUT_SIZE), np.float32)
    rnn(x)
    assert rnn._calls._free, "an eval call left no scratch for the next call"
    rnn.train()
    assert not rnn._calls._free


def test_the_scratch_pool_keeps_at_most_keep_sets_of_keep_shapes():
    cache = CallCache()
    for shape in range(CallCache.KEEP + 2):
        for copy in range(CallCache.KEEP + 1):
            cache.give(shape, (shape, copy))
    kept = {shape: list(sets) for shape, sets in cache._free.items()}
    newest = range(2, CallCache.KEEP + 2)  # the oldest shapes' lists were dropped for the newer ones
    assert kept == {shape: [(shape, copy) for copy in range(CallCache.KEEP)] for shape in newest}
    last = CallCache.KEEP + 1
    assert [cache.take(last) for _ in range(CallCache.KEEP + 1)] == [(last, 1), (last, 0), None]
    assert cache.take(0) is None


@pytest.mark.parametrize("module_class", [numbarnn.RNN, numbarnn.GRU, numbarnn.LSTM])
def test_a_call_without_h_0_on_reused_scratch_starts_from_zeros(module_class):
    module = module_class(INPUT_SIZE, HIDDEN, num_layers=2, seed=0).eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    state = rng.standard_normal((2, BATCH, HIDDEN)).astype(np.float32)
    zeros = np.zeros_like(state)
    with_state = (state, state) if module_class is numbarnn.LSTM else state
    with_zeros = (zeros, zeros) if module_class is numbarnn.LSTM else zeros
    expected_output, expected_h_n = module(x, with_zeros)
    module(x, with_state)  # leaves its buffers, which held that state, for the next call
    output, h_n = module(x)
    np.testing.assert_array_equal(output, expected_output)
    np.testing.assert_array_equal(np.asarray(h_n), np.asarray(expected_h_n))  # an LSTM's (h_n, c_n) stacked


def test_plans_are_kept_per_shape_and_bounded():
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, seed=0).eval()
    plans = rnn._calls._plans
    x = np.zeros((STEPS, BATCH, INPUT_SIZE), np.float32)
    rnn(x)
    plan = plans[STEPS, BATCH]
    rnn(x)
    assert plans[STEPS, BATCH] is plan, "a second call of the same shape planned it again"
    rnn(x, lengths=np.arange(1, BATCH + 1))
    assert list(plans) == [(STEPS, BATCH)], "a batch's own lengths were kept as a plan"
    for steps in range(1, CallCache.PLANS + 2):
        rnn(x[:steps])
    assert 0 < len(plans) <= CallCache.PLANS


def test_eval_cell_records_nothing():
    cell = numbarnn.RNNCell(INPUT_SIZE, HIDDEN, seed=0).eval()
    x = np.ones((BATCH, INPUT_SIZE), np.float32)
    h = cell(x)
    _, held = traced(lambda: cell(x, h), repeats=50)
    assert held < SMALL_OBJECTS
