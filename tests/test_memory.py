"""Steady-state training allocates only the arrays it returns; eval mode keeps nothing.

numpy reports its data buffers to tracemalloc, so the traced peak of one call bounds every array it allocated.
"""

import tracemalloc

import numpy as np
import pytest

import numbarnn

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


def test_eval_forward_keeps_nothing():
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, num_layers=3, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    rnn(x)
    _, held = traced(lambda: rnn(x))
    assert held < SMALL_OBJECTS
    assert rnn._record is None


def test_eval_cell_records_nothing():
    cell = numbarnn.RNNCell(INPUT_SIZE, HIDDEN, seed=0).eval()
    x = np.ones((BATCH, INPUT_SIZE), np.float32)
    h = cell(x)
    _, held = traced(lambda: cell(x, h), repeats=50)
    assert held < SMALL_OBJECTS
