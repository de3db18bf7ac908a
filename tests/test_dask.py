"""numbarnn.dask: chunked inference equals one local call for RNN, LSTM (with and without proj_size) and GRU, the
task graph holds the module once, thread limits, and the errors; on Dask's synchronous scheduler (fast) and on a real
two-process cluster (slow)."""

import itertools
import pathlib
import threading

import dask
import dask.array as da
import distributed
import numba
import numpy as np
import pytest
from helpers import standard_normal

import numbarnn
import numbarnn.dask
from numbarnn.rnn import RecurrentBase

INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS = 3, 8, 2
STEPS, BATCH = 10, 6
# Time chunks start at 0, 4 and 7; the lengths end at the start, inside and at the end of chunks, and cover 1 and L.
TIME_CHUNKS = (4, 3, 3)
BATCH_CHUNKS = (2, 3, 1)
LENGTHS = np.array([10, 1, 4, 7, 5, 9])
PROJ_SIZE = 5
# (module class, proj_size) of the gated cells; an LSTM's state (h, c) is carried across time chunks as a tuple
GATED = [("LSTM", 0), ("LSTM", PROJ_SIZE), ("GRU", 0)]
GATED_IDS = ["lstm", "lstm-proj", "gru"]


def tolerance(dtype):
    """How far a chunked run may be from one local call.

    Both run the same kernels on the same rows; only the summation order inside the matrix products may differ,
    because BLAS blocking and numbarnn's choice between BLAS and its own loop depend on the batch size of a block. A
    pre-activation sums K = H_in + H_out + 2 terms, so two orders differ by at most ~2 K eps sum|terms|, with
    |W| <= 1/sqrt(H_out), |h| <= 1 (|relu states| stay O(1) at these sizes) and |x| <= ~4:
    sum|terms| <= (4 H_in + H_out) / sqrt(H_out). An error carried into the next step is multiplied by W_hh, whose
    spectral norm is ~1/sqrt(3) for U(-1/sqrt(H), 1/sqrt(H)) weights, so errors add up to at most 1 / (1 - 0.6) =
    2.5x the per-step error; the second layer adds its own on top of the first's. float64: ~2e-13, float32: ~1e-4.
    """
    eps = np.finfo(dtype).eps
    terms = INPUT_SIZE + HIDDEN_SIZE + 2
    magnitude = (4 * INPUT_SIZE + HIDDEN_SIZE) / np.sqrt(HIDDEN_SIZE)
    bound = NUM_LAYERS * 2.5 * 2 * terms * eps * magnitude
    assert np.dtype(dtype) != np.float64 or bound <= 1e-12  # the issue asks for 1e-12 in float64
    return bound


def gated_tolerance(dtype, cell, proj_size=0):
    """How far a chunked run of an LSTM or GRU may be from one local call: as for the RNN (:func:`tolerance`), only
    the summation order inside the products may differ.

    Each gate's pre-activation sums K = H_in' + H_out + 2 terms, H_in' <= max(H_in, D * H_out) = 16 for either
    layer, of |x|, |h| <= 4 (standard normal inputs and states, and a GRU's h stays a convex combination of its
    previous h and of n, |n| <= 1) times |W| <= 1/sqrt(H): sum|terms| <= S = 4 (H_in' + H_out) / sqrt(H), and two
    orders differ by at most delta = 2 K eps S in every pre-activation of a step. Through the gates (sigma' <= 1/4,
    tanh' <= 1) that moves the new state by at most gain * delta:

    * GRU, h' = n + z (h - n), n = tanh(a_n + r b), |b| = |W_hn h + b_hn| <= S: dn <= (1 + 1 + S / 4) delta, and
      z's share |h - n| delta / 4 <= 5 delta / 4;
    * LSTM, c' = f c + i g: dc' <= (|c| / 4 + 1 / 4 + 1) delta with |c| <= 4 + L (each step adds |i g| <= 1), and
      h' = o tanh(c'): dh' <= delta / 4 + dc'; a projection h = W_hr h' (H terms of |W_hr| <= 1/sqrt(H)) scales that
      by sqrt(H).

    An error carried into the next step is damped by f or z (< 1) on the direct path and by |W_hh| ~ 1/sqrt(3) per
    gate on the recurrent one; bounding each step's carry by 1, the errors add up to at most L steps' worth per
    layer: num_layers * L * gain * delta. float64: 4e-11 to 1.1e-10 (the issue asks for 1e-9), float32: 2e-2 to
    6e-2 (a state chunk carried wrongly is off by O(0.1-1)).
    """
    eps = np.finfo(dtype).eps
    layer_input = max(INPUT_SIZE, 2 * HIDDEN_SIZE)
    terms = layer_input + HIDDEN_SIZE + 2
    magnitude = 4 * (layer_input + HIDDEN_SIZE) / np.sqrt(HIDDEN_SIZE)
    delta = 2 * terms * eps * magnitude
    if cell == "GRU":
        gain = 2 + magnitude / 4 + 5 / 4
    else:
        gain = 1 / 4 + ((4 + STEPS) / 4 + 1 / 4 + 1)
        if proj_size:
            gain *= np.sqrt(HIDDEN_SIZE)
    bound = NUM_LAYERS * STEPS * gain * delta
    assert np.dtype(dtype) != np.float64 or bound <= 1e-9  # the issue asks for 1e-9 in float64
    return bound


def make_case(
    rng,
    *,
    cell="RNN",
    proj_size=0,
    dtype=np.float64,
    batch_first=False,
    bidirectional=False,
    nonlinearity="tanh",
    time_chunks=TIME_CHUNKS,
    batch_chunks=BATCH_CHUNKS,
    with_h_0=True,
    with_lengths=False,
):
    """A module (``cell``: "RNN", "LSTM" or "GRU") in eval mode, a NumPy input and its dask.array with the given
    chunks, h_0 (an LSTM's tuple (h_0, c_0)) and lengths (NumPy)."""
    options = {"nonlinearity": nonlinearity} if cell == "RNN" else {"proj_size": proj_size} if proj_size else {}
    rnn = getattr(numbarnn, cell)(
        INPUT_SIZE,
        HIDDEN_SIZE,
        NUM_LAYERS,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=dtype,
        seed=int(rng.integers(1 << 30)),
        **options,
    ).eval()
    shape = (BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE)
    chunks = (batch_chunks, time_chunks, (INPUT_SIZE,)) if batch_first else (time_chunks, batch_chunks, (INPUT_SIZE,))
    x = standard_normal(rng, shape, dtype)
    h_0 = None
    if with_h_0:
        widths = (proj_size or HIDDEN_SIZE, HIDDEN_SIZE) if cell == "LSTM" else (HIDDEN_SIZE,)
        parts = [standard_normal(rng, (NUM_LAYERS * rnn.num_directions, BATCH, width), dtype) for width in widths]
        h_0 = tuple(parts) if cell == "LSTM" else parts[0]
    lengths = LENGTHS.copy() if with_lengths else None
    return rnn, x, da.from_array(x, chunks=chunks), h_0, lengths


def state_parts(state):
    """(h,) or an LSTM's (h, c)."""
    return state if isinstance(state, tuple) else (state,)


def max_errors(rnn, x, h_0, lengths, output, h_n):
    """``(output error, h_n error)``: the computed dask results against one local call (the h_n error is the
    largest of h_n's and c_n's for an LSTM)."""
    expected_output, expected_h_n = rnn(x, h_0, lengths)
    assert output.shape == expected_output.shape
    assert len(state_parts(h_n)) == len(state_parts(expected_h_n))
    assert all(
        part.shape == expected.shape for part, expected in zip(state_parts(h_n), state_parts(expected_h_n), strict=True)
    )
    return np.abs(output - expected_output).max(), max(
        np.abs(part - expected).max()
        for part, expected in zip(state_parts(h_n), state_parts(expected_h_n), strict=True)
    )


def compute_sync(*arrays):
    return dask.compute(*arrays, scheduler="synchronous")


# -- equality on the synchronous scheduler -----------------------------------------------------------------------
CHUNKINGS = {"batch": ((STEPS,), BATCH_CHUNKS), "time": (TIME_CHUNKS, (BATCH,)), "both": (TIME_CHUNKS, BATCH_CHUNKS)}


@pytest.mark.parametrize(
    ("chunking", "batch_first", "with_lengths"), list(itertools.product(CHUNKINGS, [False, True], [False, True]))
)
def test_chunked_forward_equals_one_call(rng, chunking, batch_first, with_lengths):
    time_chunks, batch_chunks = CHUNKINGS[chunking]
    rnn, x, x_dask, h_0, lengths = make_case(
        rng, batch_first=batch_first, time_chunks=time_chunks, batch_chunks=batch_chunks, with_lengths=with_lengths
    )
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    assert isinstance(output, da.Array) and isinstance(h_n, da.Array)
    sequence_chunks = (batch_chunks, time_chunks) if batch_first else (time_chunks, batch_chunks)
    assert output.chunks == (*sequence_chunks, (HIDDEN_SIZE,))
    assert h_n.chunks == ((NUM_LAYERS,), batch_chunks, (HIDDEN_SIZE,))
    errors = max_errors(rnn, x, h_0, lengths, *compute_sync(output, h_n))
    assert max(errors) <= tolerance(np.float64), errors


@pytest.mark.parametrize(
    ("dtype", "nonlinearity", "bidirectional"),
    [(np.float32, "tanh", False), (np.float32, "relu", True), (np.float64, "relu", False), (np.float64, "tanh", True)],
)
def test_dtypes_nonlinearities_and_directions(rng, dtype, nonlinearity, bidirectional):
    rnn, x, x_dask, h_0, lengths = make_case(
        rng, dtype=dtype, nonlinearity=nonlinearity, bidirectional=bidirectional, with_lengths=True
    )
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    if bidirectional:  # the reverse direction needs whole sequences: time chunks are merged
        assert output.chunks[0] == (STEPS,)
    errors = max_errors(rnn, x, h_0, lengths, *compute_sync(output, h_n))
    assert max(errors) <= tolerance(dtype), errors


def test_h_0_and_lengths_as_dask_arrays_with_other_chunks(rng):
    rnn, x, x_dask, h_0, lengths = make_case(rng, with_lengths=True)
    output, h_n = numbarnn.dask.forward(
        rnn, x_dask, da.from_array(h_0, chunks=(1, 4, 5)), da.from_array(lengths, chunks=4)
    )
    errors = max_errors(rnn, x, h_0, lengths, *compute_sync(output, h_n))
    assert max(errors) <= tolerance(np.float64), errors


def test_no_h_0_and_feature_chunks_are_merged(rng):
    rnn, x, _, _, _ = make_case(rng, with_h_0=False)
    output, h_n = numbarnn.dask.forward(rnn, da.from_array(x, chunks=(4, 2, 2)))
    errors = max_errors(rnn, x, None, None, *compute_sync(output, h_n))
    assert max(errors) <= tolerance(np.float64), errors


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_runs_as_a_batch_of_one(rng, batch_first):
    rnn, x, _, h_0, _ = make_case(rng, batch_first=batch_first)
    x, h_0 = x[0] if batch_first else x[:, 0], h_0[:, 0]  # (L, H_in) and (num_layers, H_out)
    output, h_n = numbarnn.dask.forward(rnn, da.from_array(x, chunks=(4, INPUT_SIZE)), h_0)
    assert output.shape == (STEPS, HIDDEN_SIZE) and h_n.shape == (NUM_LAYERS, HIDDEN_SIZE)
    errors = max_errors(rnn, x, h_0, None, *compute_sync(output, h_n))
    assert max(errors) <= tolerance(np.float64), errors


# -- the gated cells ------------------------------------------------------------------------------------------------
GATED_CHUNKINGS = [
    ("batch", False, True),
    ("time", True, False),
    ("time", False, True),
    ("both", False, True),
    ("both", True, True),
    ("both", False, False),
]


@pytest.mark.parametrize(("cell", "proj_size"), GATED, ids=GATED_IDS)
@pytest.mark.parametrize(("chunking", "batch_first", "with_lengths"), GATED_CHUNKINGS)
def test_gated_chunked_forward_equals_one_call(rng, cell, proj_size, chunking, batch_first, with_lengths):
    """Time chunks carry the whole state (an LSTM's h and c) from one task to the next."""
    time_chunks, batch_chunks = CHUNKINGS[chunking]
    rnn, x, x_dask, h_0, lengths = make_case(
        rng,
        cell=cell,
        proj_size=proj_size,
        batch_first=batch_first,
        time_chunks=time_chunks,
        batch_chunks=batch_chunks,
        with_lengths=with_lengths,
    )
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    assert isinstance(output, da.Array)
    assert isinstance(h_n, tuple) == (cell == "LSTM")  # the state as the module returns it
    assert all(isinstance(part, da.Array) for part in state_parts(h_n))
    width = proj_size or HIDDEN_SIZE
    sequence_chunks = (batch_chunks, time_chunks) if batch_first else (time_chunks, batch_chunks)
    assert output.chunks == (*sequence_chunks, (width,))
    part_widths = (width, HIDDEN_SIZE) if cell == "LSTM" else (width,)
    assert [part.chunks for part in state_parts(h_n)] == [((NUM_LAYERS,), batch_chunks, (w,)) for w in part_widths]
    errors = max_errors(rnn, x, h_0, lengths, *compute_sync(output, h_n))
    assert max(errors) <= gated_tolerance(np.float64, cell, proj_size), errors


@pytest.mark.parametrize(("cell", "proj_size"), GATED, ids=GATED_IDS)
@pytest.mark.parametrize(
    ("dtype", "bidirectional", "with_h_0"),
    [(np.float32, False, False), (np.float32, True, True), (np.float64, True, False)],
)
def test_gated_dtypes_directions_and_default_state(rng, cell, proj_size, dtype, bidirectional, with_h_0):
    rnn, x, x_dask, h_0, lengths = make_case(
        rng,
        cell=cell,
        proj_size=proj_size,
        dtype=dtype,
        bidirectional=bidirectional,
        with_h_0=with_h_0,
        with_lengths=True,
    )
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    if bidirectional:  # the reverse direction needs whole sequences: time chunks are merged
        assert output.chunks[0] == (STEPS,)
        assert output.shape[-1] == 2 * (proj_size or HIDDEN_SIZE)
    assert all(part.dtype == dtype for part in (output, *state_parts(h_n)))
    errors = max_errors(rnn, x, h_0, lengths, *compute_sync(output, h_n))
    assert max(errors) <= gated_tolerance(dtype, cell, proj_size), errors


def test_lstm_state_and_lengths_as_dask_arrays_with_other_chunks(rng):
    rnn, x, x_dask, (h_0, c_0), lengths = make_case(rng, cell="LSTM", proj_size=PROJ_SIZE, with_lengths=True)
    state = (da.from_array(h_0, chunks=(1, 4, 2)), c_0)  # one part as a dask array, the other as NumPy
    output, (h_n, c_n) = numbarnn.dask.forward(rnn, x_dask, state, da.from_array(lengths, chunks=4))
    errors = max_errors(rnn, x, (h_0, c_0), lengths, *compute_sync(output, (h_n, c_n)))
    assert max(errors) <= gated_tolerance(np.float64, "LSTM", PROJ_SIZE), errors


@pytest.mark.parametrize(("cell", "proj_size"), GATED, ids=GATED_IDS)
def test_gated_unbatched_input_runs_as_a_batch_of_one(rng, cell, proj_size):
    rnn, x, _, h_0, _ = make_case(rng, cell=cell, proj_size=proj_size)
    x = x[:, 0]
    h_0 = tuple(part[:, 0] for part in h_0) if cell == "LSTM" else h_0[:, 0]
    output, h_n = numbarnn.dask.forward(rnn, da.from_array(x, chunks=(4, INPUT_SIZE)), h_0)
    assert output.shape == (STEPS, proj_size or HIDDEN_SIZE)
    assert [part.shape for part in state_parts(h_n)] == [part.shape for part in state_parts(h_0)]
    errors = max_errors(rnn, x, h_0, None, *compute_sync(output, h_n))
    assert max(errors) <= gated_tolerance(np.float64, cell, proj_size), errors


def test_result_is_lazy_and_keeps_the_weights_of_the_call(rng):
    rnn, x, x_dask, h_0, _ = make_case(rng)
    expected_output, _ = rnn(x, h_0)
    output, _ = numbarnn.dask.forward(rnn, x_dask, h_0)
    rnn.weight_hh_l0[:] = 0  # changing the module after the call does not change the lazy result
    (computed,) = compute_sync(output)
    assert np.abs(computed - expected_output).max() <= tolerance(np.float64)


def _module_keys(graph):
    """The keys whose value is a numbarnn module (newer dask wraps literal values in a DataNode)."""
    return [key for key, value in dict(graph).items() if isinstance(getattr(value, "value", value), RecurrentBase)]


@pytest.mark.parametrize("cell", ["RNN", "LSTM"])
def test_module_is_one_key_that_every_block_task_depends_on(rng, cell):
    rnn, _, x_dask, h_0, lengths = make_case(rng, cell=cell, with_lengths=True)
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    graph = output.__dask_graph__()
    assert all(part.__dask_graph__() is graph for part in state_parts(h_n))
    (module_key,) = _module_keys(graph)
    dependents = [key for key, deps in graph.get_all_dependencies().items() if module_key in deps]
    assert len(dependents) == len(TIME_CHUNKS) * len(BATCH_CHUNKS)  # one task per block, all on the one key
    (optimized,) = dask.optimize(output)  # what a scheduler receives
    assert len(_module_keys(optimized.__dask_graph__())) == 1


# -- thread limits ------------------------------------------------------------------------------------------------
def test_limit_threads_sets_and_restores_numbas_thread_count():
    before = numba.get_num_threads()
    with numbarnn.dask.limit_threads():
        assert numba.get_num_threads() == 1
        with numbarnn.dask.limit_threads(numba_threads=None):
            assert numba.get_num_threads() == 1  # None leaves the setting alone
    assert numba.get_num_threads() == before


def test_forward_tasks_run_with_one_numba_thread(rng):
    class RecordingRNN(numbarnn.RNN):
        def forward(self, *args, **kwargs):
            result = super().forward(*args, **kwargs)
            seen.append(numba.get_num_threads())
            return result

    seen = []
    rnn = RecordingRNN(INPUT_SIZE, HIDDEN_SIZE, dtype=np.float64, seed=0).eval()
    x = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), np.float64)
    # Two threads share the one copy of the module, as the threads of a Dask worker do.
    output, h_n = dask.compute(
        *numbarnn.dask.forward(rnn, da.from_array(x, chunks=(5, 3, INPUT_SIZE))), scheduler="threads", num_workers=2
    )
    assert seen == [1] * 4
    errors = max_errors(rnn, x, None, None, output, h_n)
    assert max(errors) <= tolerance(np.float64), errors


# -- errors ---------------------------------------------------------------------------------------------------------
def test_module_in_training_mode_is_refused(rng):
    rnn, _, x_dask, _, _ = make_case(rng)
    with pytest.raises(ValueError, match=r"eval mode, got a module in training mode.*call rnn.eval\(\) first"):
        numbarnn.dask.forward(rnn.train(), x_dask)


def test_other_modules_and_numpy_input_are_refused(rng):
    import torch

    rnn, x, x_dask, _, _ = make_case(rng)
    with pytest.raises(TypeError, match=r"runs a numbarnn.RNN, LSTM or GRU, got numbarnn.cell.RNNCell"):
        numbarnn.dask.forward(numbarnn.RNNCell(INPUT_SIZE, HIDDEN_SIZE).eval(), x_dask)
    with pytest.raises(
        TypeError,
        match=r"got torch.nn.modules.rnn.LSTM; for a torch module, build the numbarnn "
        r"module with the same arguments and copy its weights with load_state_dict",
    ):
        numbarnn.dask.forward(torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE).eval(), x_dask)
    with pytest.raises(
        TypeError,
        match=r"dask.array.Array input, got numpy.ndarray; wrap it with "
        r"dask.array.from_array\(input, chunks=...\)",
    ):
        numbarnn.dask.forward(rnn, x)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            lambda x, h, n: (x.astype(np.float32), h, n),
            ValueError,
            r"input must have the type float64, got type float32; convert it with input.astype\(np.float64\)",
        ),
        (lambda x, h, n: (x[..., :2], h, n), ValueError, "input_size. Expected 3, got 2"),
        (lambda x, h, n: (x[0], h, None), ValueError, "For unbatched 2-D input, hx should also be 2-D but got 3-D"),
        (lambda x, h, n: (x[None], h, n), ValueError, "Expected input to be 2D or 3D, got 4D"),
        (lambda x, h, n: (x, h[:, :2], n), ValueError, r"Expected hidden size \(2, 6, 8\), got \[2, 2, 8\]"),
        (lambda x, h, n: (x, h.astype(np.float32), n), ValueError, "h_0 must have the type float64, got type float32"),
        (lambda x, h, n: (x, h, n.astype(float)), TypeError, "lengths must be an array of integers, got dtype float64"),
        (lambda x, h, n: (x, h, n[:2]), ValueError, r"lengths must have shape \(6,\), one length per sequence"),
        (lambda x, h, n: (x, h, n - 1), ValueError, "Length of all samples has to be greater than 0"),
        (lambda x, h, n: (x, h, n + 1), ValueError, "lengths must be at most the sequence length L=10, got 11"),
        (lambda x, h, n: (x[:, 0], h[:, 0], n), ValueError, "lengths needs batched 3-D input, got unbatched 2-D input"),
    ],
)
def test_bad_arguments_are_refused_when_the_graph_is_built(rng, change, error, match):
    rnn, _, x_dask, h_0, lengths = make_case(rng, with_lengths=True)
    with pytest.raises(error, match=match):
        numbarnn.dask.forward(rnn, *change(x_dask, h_0, lengths))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            lambda h, c: h,
            TypeError,
            r"LSTM: hx must be a tuple \(h, c\) of two arrays, as for torch.nn.LSTM, got ndarray",
        ),
        (lambda h, c: (h, c[..., :3]), ValueError, r"Expected hidden\[1\] size \(2, 6, 8\), got \[2, 6, 3\]"),
        (lambda h, c: (h[..., :3], c), ValueError, r"Expected hidden\[0\] size \(2, 6, 5\), got \[2, 6, 3\]"),
        (lambda h, c: (h, c.astype(np.float32)), ValueError, "c_0 must have the type float64, got type float32"),
        (lambda h, c: (h, c[0]), ValueError, r"hx and cx should also be 3-D but got \(3-D, 2-D\) tensors"),
        (
            lambda h, c: (h, da.from_array(c[..., :3])),
            ValueError,
            r"Expected hidden\[1\] size \(2, 6, 8\), got \[2, 6, 3\]",
        ),
    ],
)
def test_bad_lstm_states_are_refused_with_the_modules_messages(rng, change, error, match):
    rnn, _, x_dask, (h_0, c_0), _ = make_case(rng, cell="LSTM", proj_size=PROJ_SIZE)
    state = change(h_0, c_0)
    with pytest.raises(error, match=match):
        numbarnn.dask.forward(rnn, x_dask, state)
    if isinstance(state, tuple):
        state = tuple(part.compute() if isinstance(part, da.Array) else part for part in state)
    with pytest.raises(error, match=match):  # the module's own forward says the same
        rnn(x_dask.compute(), state)


def test_dask_lengths_out_of_range_fail_the_computation(rng):
    rnn, _, x_dask, h_0, lengths = make_case(rng, with_lengths=True)
    output, _ = numbarnn.dask.forward(rnn, x_dask, h_0, da.from_array(lengths + 1, chunks=3))
    with pytest.raises(ValueError, match="lengths must be at most the sequence length L=10, got 11"):
        compute_sync(output)


def test_thread_counts_must_be_positive_ints(rng):
    with (
        pytest.raises(ValueError, match="numba_threads must be a positive int or None, got 0"),
        numbarnn.dask.limit_threads(numba_threads=0),
    ):
        pass
    with (
        pytest.raises(ValueError, match=r"numba_threads must be a positive int or None, got 1.5"),
        numbarnn.dask.limit_threads(numba_threads=1.5),
    ):
        pass


def test_import_numbarnn_does_not_import_dask():
    import subprocess
    import sys

    code = "import sys, numbarnn; print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    root = pathlib.Path(__file__).resolve().parents[1]  # the child imports this checkout's numbarnn
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "[]"


# -- a real cluster: 2 worker processes, 1 thread each, starting on an empty numba cache ----------------------------
@pytest.mark.slow
def test_cluster_results_equal_local_on_a_cold_cache(dask_client, rng):
    client, cache_dir = dask_client
    cases = [  # (name, make_case arguments, (h_0, lengths) as dask arrays?)
        ("time and batch chunks, lengths, h_0, tanh, float64", {"with_lengths": True}, True),
        ("time chunks only, no lengths, float64", {"time_chunks": TIME_CHUNKS, "batch_chunks": (BATCH,)}, False),
        (
            "batch chunks, batch_first, relu, float32",
            {"dtype": np.float32, "batch_first": True, "nonlinearity": "relu", "time_chunks": (STEPS,)},
            False,
        ),
        (
            "LSTM with proj_size: (h, c) across time chunks and processes, lengths, float64",
            {"cell": "LSTM", "proj_size": PROJ_SIZE, "with_lengths": True},
            True,
        ),
    ]
    built = []
    for name, arguments, as_dask in cases:
        rnn, x, x_dask, h_0, lengths = make_case(rng, **arguments)
        h_0_arg, lengths_arg = h_0, lengths
        if as_dask:
            parts = tuple(da.from_array(part, chunks=(1, 3, part.shape[-1])) for part in state_parts(h_0))
            h_0_arg, lengths_arg = parts if isinstance(h_0, tuple) else parts[0], da.from_array(lengths, chunks=3)
        built.append((name, rnn, x, h_0, lengths, numbarnn.dask.forward(rnn, x_dask, h_0_arg, lengths_arg)))
    # One computation: both workers start on the empty cache at once, with float64 and float32 signatures.
    results = client.compute([result for *_, result in built], sync=True)
    for (name, rnn, x, h_0, lengths, _), (output, h_n) in zip(built, results, strict=True):
        errors = max_errors(rnn, x, h_0, lengths, output, h_n)
        bound = (
            tolerance(rnn.dtype)
            if isinstance(rnn, numbarnn.RNN)
            else gated_tolerance(rnn.dtype, type(rnn).__name__, rnn.proj_size)
        )
        assert max(errors) <= bound, (name, errors)
    # Both workers ran tasks, and compiled into the fresh cache directory rather than somewhere else.
    kinds = client.run(lambda: len(__import__("numbarnn.dask").dask._seen_kinds))
    assert len(kinds) == 2 and all(count > 0 for count in kinds.values()), kinds
    assert list(cache_dir.rglob("*.nbi"))
    paths = set(client.run(lambda: __import__("numbarnn").__file__).values())
    assert paths == {numbarnn.__file__}  # the workers ran this checkout's numbarnn


@pytest.mark.slow
def test_cluster_bidirectional_merges_time_chunks(dask_client, rng):
    client, _ = dask_client
    rnn, x, x_dask, h_0, lengths = make_case(rng, bidirectional=True, with_lengths=True)
    output, h_n = numbarnn.dask.forward(rnn, x_dask, h_0, lengths)
    assert output.chunks == ((STEPS,), BATCH_CHUNKS, (2 * HIDDEN_SIZE,))
    with distributed.get_task_stream(client=client) as task_stream:
        results = client.compute([output, h_n], sync=True)
    errors = max_errors(rnn, x, h_0, lengths, *results)
    assert max(errors) <= tolerance(np.float64), errors
    # The scheduler made the module once, for all the block tasks (workers fetch it from there).
    keys = [record["key"] for record in task_stream.data]
    assert sum(isinstance(key, str) and key.startswith("numbarnn-rnn-") for key in keys) == 1, keys
