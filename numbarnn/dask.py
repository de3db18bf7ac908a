"""Run ``numbarnn.RNN`` on Dask: inference over arrays larger than memory, long sequences in time chunks, and thread
control for Dask workers.

Import it as ``numbarnn.dask`` (``import numbarnn`` does not import Dask). Needs the ``dask`` extra:
``pip install "numbarnn[dask]"``.

How the work is split
---------------------
:func:`forward` turns each block of a chunked ``dask.array`` input into one task. Blocks along the batch axis are
independent tasks that run in parallel. Blocks along the time axis of one batch block run one after the other, each
starting from the state the previous one ended with (all layers' states are carried, so stacked layers chain exactly
as in one call). With ``lengths``, in the time chunk ``[t0, t1)`` sequence ``i`` runs
``clip(lengths[i] - t0, 0, t1 - t0)`` steps: a sequence that has already ended keeps its state and gets zero
outputs, so the result equals one call over the whole input.

Threads
-------
Dask runs tasks on several threads per worker process; numba's own thread pool would multiply that. Each task of
:func:`forward` therefore runs under :func:`limit_threads`: one numba thread, by default (numba's setting is per
calling thread, so it applies to the task's own thread only). BLAS needs nothing here: numbarnn runs the BLAS its
kernels call on one thread in every process (see the README's "Threads and serving").

Cold JIT cache
--------------
numba's on-disk cache can race when several processes compile different signatures of one function at the same time
(numba issues #4807, #10128). The first call of each kind (dtype, layout, lengths or not) in a process runs under an
inter-process file lock (``filelock``) next to the cache, so a cluster of workers starting on an empty cache compiles
(or loads) one worker at a time and then runs freely.
"""

import contextlib
import copy
import hashlib
import numbers
import operator
import os
import tempfile
import threading

import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from filelock import FileLock

from ._validation import check_lengths_range, check_lengths_type
from .rnn import RNN

__all__ = ["forward", "limit_threads"]


def forward(rnn, input, h_0=None, lengths=None, *, numba_threads=1):
    """Run ``rnn`` over a chunked ``dask.array`` input; lazy, equal to ``rnn(input.compute(), h_0, lengths)``.

    Parameters
    ----------
    rnn : numbarnn.RNN
        The module, in eval mode (``rnn.eval()``). A copy is taken now: changing ``rnn`` afterwards does not change
        the result. The copy enters the task graph as a single key that every task depends on, so its weights
        travel to each worker once per computation, not once per task.
    input : dask.array.Array
        (L, N, H_in), or (N, L, H_in) with ``batch_first``, of the module dtype, chunked any way: batch chunks run
        as independent tasks, time chunks run in order, each from the state the previous one ended with. The
        feature axis is rechunked to one chunk. Unbatched (L, H_in) input is supported too (as a batch of one; its
        time chunks still run in order).

        A bidirectional module's reverse direction reads each sequence from its end, so its time chunks are merged
        (the input is rechunked to one chunk along time): each task then holds whole sequences of its batch chunk.
        Chunk the batch axis small enough for that to fit in a worker's memory.
    h_0 : ndarray or dask.array.Array, optional
        (D * num_layers, N, H_out) (unbatched: (D * num_layers, H_out)); zeros when omitted.
    lengths : ndarray or dask.array.Array of int, optional
        (N,) each sequence's length, in 1...L, as for ``rnn``. NumPy lengths are checked now; the range of Dask
        lengths is checked when the tasks run (an out-of-range length then fails the computation).
    numba_threads : int or None, keyword-only, default 1
        Threads each task's numba kernels may use (see :func:`limit_threads`); None leaves the setting as it is.
        One per worker thread avoids oversubscribing the cores.

    Returns
    -------
    output : dask.array.Array
        (L, N, D * H_out) (batch_first: (N, L, D * H_out); unbatched: (L, D * H_out)); the input's chunks along
        L and N (one chunk along L for a bidirectional module), one along the features.
    h_n : dask.array.Array
        (D * num_layers, N, H_out) (unbatched: (D * num_layers, H_out)), chunked along N like the input.
    """
    _check_module(rnn)
    x = _check_input(rnn, input)
    batched = x.ndim == 3
    batch_first = rnn.batch_first
    if not batched:
        if lengths is not None:
            raise ValueError(
                "lengths needs batched 3-D input, got unbatched 2-D input; add a batch dimension "
                "(input[:, None] or input[None]) or leave lengths out"
            )
        x = x[None] if batch_first else x[:, None]  # the module reads unbatched input time-major either way
    time_axis, batch_axis = (1, 0) if batch_first else (0, 1)
    steps, batch = x.shape[time_axis], x.shape[batch_axis]
    x = x.rechunk({2: -1, time_axis: -1} if rnn.bidirectional else {2: -1})
    batch_chunks, time_chunks = x.chunks[batch_axis], x.chunks[time_axis]

    state_shape = (rnn.num_layers * rnn.num_directions, batch, rnn.hidden_size)
    h_0 = _check_h_0(rnn, h_0, state_shape, batched)
    if h_0 is not None:
        h_0 = h_0.rechunk((state_shape[0], batch_chunks, state_shape[2]))
    lengths = _check_lengths(lengths, steps, batch)
    if lengths is not None:
        lengths = lengths.rechunk((batch_chunks,))

    module = copy.deepcopy(rnn)
    module_token = tokenize(type(module).__name__, _config(module), module.state_dict())
    module_key = f"numbarnn-rnn-{module_token}"
    token = tokenize(module_token, x, h_0, lengths, numba_threads)
    run_name, state_name = f"numbarnn-forward-run-{token}", f"numbarnn-forward-state-{token}"
    output_name, h_n_name = f"numbarnn-forward-output-{token}", f"numbarnn-forward-h_n-{token}"

    run_layer, output_layer, h_n_layer = {module_key: module}, {}, {}
    starts = np.concatenate([[0], np.cumsum(time_chunks)[:-1]]).tolist()
    for j in range(len(batch_chunks)):
        state = None if h_0 is None else (h_0.name, 0, j, 0)
        block_lengths = None if lengths is None else (lengths.name, j)
        for k, start in enumerate(starts):
            x_key = (x.name, j, k, 0) if batch_first else (x.name, k, j, 0)
            run_key = (run_name, k, j)
            run_layer[run_key] = (_run_block, module_key, x_key, state, block_lengths, start, steps, numba_threads)
            output_index = (j, k, 0) if batch_first else (k, j, 0)
            output_layer[(output_name, *output_index)] = (operator.getitem, run_key, 0)
            if k < len(starts) - 1:  # the state the next time chunk starts from
                state = (state_name, k, j)
                run_layer[state] = (operator.getitem, run_key, 1)
            else:
                h_n_layer[(h_n_name, 0, j, 0)] = (operator.getitem, run_key, 1)
    dependencies = [a for a in (x, h_0, lengths) if a is not None]
    run_graph = HighLevelGraph.from_collections(run_name, run_layer, dependencies=dependencies)
    # One layer per array named after it, as dask.array expects, both on the run layer.
    layers = {**run_graph.layers, output_name: output_layer, h_n_name: h_n_layer}
    graph = HighLevelGraph(layers, {**run_graph.dependencies, output_name: {run_name}, h_n_name: {run_name}})

    width = rnn.num_directions * rnn.hidden_size
    output_chunks = (batch_chunks, time_chunks, (width,)) if batch_first else (time_chunks, batch_chunks, (width,))
    output = da.Array(graph, output_name, output_chunks, dtype=rnn.dtype)
    h_n = da.Array(graph, h_n_name, ((state_shape[0],), batch_chunks, (state_shape[2],)), dtype=rnn.dtype)
    if not batched:
        output = output[0] if batch_first else output[:, 0]
        h_n = h_n[:, 0]
    return output, h_n


def _run_block(rnn, x, state, lengths, start, total_steps, numba_threads):
    """One task: run ``rnn`` over the block ``x`` (time-major, or batch-first as the module says) from ``state``
    (None: zeros). Returns ``(output, h_n)`` for the block."""
    batch_first = rnn.batch_first
    block_steps, block_batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    x = np.ascontiguousarray(x)  # blocks cut out of a larger array may be views; the module reads C order fastest
    with limit_threads(numba_threads):
        if lengths is None:
            with _first_call_lock((rnn.dtype.str, batch_first, False, state is None)):
                return rnn(x, state)
        # Each task sees a slice of the lengths and of time, and could not tell an out-of-range length from a sequence
        # that ends before or after its block: the whole range is checked here, with numbarnn.RNN's messages.
        check_lengths_range(lengths, total_steps)
        run = np.clip(lengths - start, 0, block_steps)
        if (run == block_steps).all():
            with _first_call_lock((rnn.dtype.str, batch_first, False, state is None)):
                return rnn(x, state)
        # Some sequences end inside this block or before it. numbarnn.RNN takes lengths in 1...L, so only the rows
        # that still have steps here go through the module; the others keep their state and get zero outputs.
        width = rnn.num_directions * rnn.hidden_size
        output_shape = (block_batch, block_steps, width) if batch_first else (block_steps, block_batch, width)
        output = np.zeros(output_shape, rnn.dtype)
        state_shape = (rnn.num_layers * rnn.num_directions, block_batch, rnn.hidden_size)
        h_n = np.zeros(state_shape, rnn.dtype) if state is None else state.copy()
        live = np.flatnonzero(run > 0)
        if live.size:
            live_x = x[live] if batch_first else x[:, live]
            live_state = None if state is None else state[:, live]
            with _first_call_lock((rnn.dtype.str, batch_first, True, state is None)):
                live_output, live_h_n = rnn(live_x, live_state, lengths=run[live])
            if batch_first:
                output[live] = live_output
            else:
                output[:, live] = live_output
            h_n[:, live] = live_h_n
        return output, h_n


# -- checks ------------------------------------------------------------------------------------------------------
def _check_module(rnn):
    if not isinstance(rnn, RNN):
        raise TypeError(f"numbarnn.dask.forward runs a numbarnn.RNN, got {type(rnn).__name__}")
    if rnn.training:
        raise ValueError(
            "numbarnn.dask.forward needs the module in eval mode, got a module in training mode (which keeps what "
            "backward needs, and draws dropout masks); call rnn.eval() first"
        )


def _check_input(rnn, input):
    if not isinstance(input, da.Array):
        raise TypeError(
            f"numbarnn.dask.forward takes a dask.array.Array input, got {type(input).__module__}."
            f"{type(input).__name__}; wrap it with dask.array.from_array(input, chunks=...), or call rnn(input) "
            "for an in-memory array"
        )
    if input.ndim not in (2, 3):
        raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.ndim}D tensor instead")
    if input.dtype != rnn.dtype:
        raise ValueError(f"input must have the type {rnn.dtype}, got type {input.dtype}; "
                         f"convert it with input.astype(np.{rnn.dtype})")
    if input.shape[-1] != rnn.input_size:
        raise ValueError(
            f"input.size(-1) must be equal to input_size. Expected {rnn.input_size}, got {input.shape[-1]}"
        )
    if any(np.isnan(size) for size in input.shape):
        raise ValueError(f"input must have known chunk sizes, got shape {input.shape}; "
                         "call input.compute_chunk_sizes() first")
    steps = input.shape[1] if input.ndim == 3 and rnn.batch_first else input.shape[0]
    if steps == 0:
        raise ValueError("Expected sequence length to be larger than 0 in RNN")
    if input.ndim == 3 and input.shape[0 if rnn.batch_first else 1] == 0:
        raise ValueError("Expected batch size to be larger than 0 in RNN")
    return input


def _check_h_0(rnn, h_0, state_shape, batched):
    """``h_0`` as a batched dask array, or None."""
    if h_0 is None:
        return None
    if not isinstance(h_0, da.Array):
        h_0 = np.asarray(h_0)
    if batched and h_0.ndim != 3:
        raise ValueError(f"For batched 3-D input, hx should also be 3-D but got {h_0.ndim}-D tensor")
    if not batched and h_0.ndim != 2:
        raise ValueError(f"For unbatched 2-D input, hx should also be 2-D but got {h_0.ndim}-D tensor")
    expected = state_shape if batched else (state_shape[0], state_shape[2])
    if h_0.shape != expected:
        raise ValueError(f"Expected hidden size {expected}, got {list(h_0.shape)}")
    if h_0.dtype != rnn.dtype:
        raise ValueError(f"h_0 must have the type {rnn.dtype}, got type {h_0.dtype}; "
                         f"convert it with h_0.astype(np.{rnn.dtype})")
    h_0 = da.asarray(h_0)
    return h_0 if batched else h_0[:, None]


def _check_lengths(lengths, steps, batch):
    """``lengths`` as an int64 dask array, or None; NumPy lengths are range-checked here."""
    if lengths is None:
        return None
    if not isinstance(lengths, da.Array):
        lengths = np.asarray(lengths)
    check_lengths_type(lengths, batch)
    if isinstance(lengths, np.ndarray):
        check_lengths_range(lengths, steps)
    return da.asarray(lengths).astype(np.int64)


def _config(rnn):
    return {"input_size": rnn.input_size, "hidden_size": rnn.hidden_size, "num_layers": rnn.num_layers,
            "nonlinearity": rnn.nonlinearity, "bias": rnn.bias, "batch_first": rnn.batch_first,
            "bidirectional": rnn.bidirectional, "dtype": str(rnn.dtype)}


# -- threads -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def limit_threads(numba_threads=1):
    """Context manager: the calling thread runs numbarnn's kernels on ``numba_threads`` threads, restored on exit.

    Use it in tasks that call numbarnn on a Dask worker (``forward`` does it for its own tasks), e.g. in a function
    given to ``client.map`` for a parameter sweep, so that W worker threads use W cores and not W times numba's pool.

    Parameters
    ----------
    numba_threads : int or None, default 1
        Set with ``numba.set_num_threads``, which is per calling thread: other worker threads keep their own
        setting. Capped at numba's pool size (``NUMBA_NUM_THREADS``). None leaves it as it is.
    """
    if numba_threads is None:
        yield
        return
    if not isinstance(numba_threads, numbers.Integral) or isinstance(numba_threads, bool) or numba_threads < 1:
        raise ValueError(f"numba_threads must be a positive int or None, got {numba_threads!r}")
    previous = numba.get_num_threads()
    numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# -- cold-cache compile lock -------------------------------------------------------------------------------------
_seen_lock = threading.Lock()
_seen_kinds = set()  # kinds of call that have run once in this process: their kernels are compiled or loaded


@contextlib.contextmanager
def _first_call_lock(kind):
    """Hold an inter-process file lock around the first call of each ``kind`` in this process, the call that
    compiles the kernels or loads them from numba's cache."""
    with _seen_lock:
        first = kind not in _seen_kinds
    if not first:
        yield
        return
    with FileLock(_lock_path()):
        yield
        with _seen_lock:
            _seen_kinds.add(kind)


def _lock_path():
    """A lock file shared by the processes that share numba's cache: in ``NUMBA_CACHE_DIR`` when it is set,
    otherwise in the temporary directory, named after the package directory whose ``__pycache__`` holds the cache."""
    cache_dir = numba.config.CACHE_DIR
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        return os.path.join(cache_dir, "numbarnn-compile.lock")
    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(package.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"numbarnn-compile-{digest}.lock")

