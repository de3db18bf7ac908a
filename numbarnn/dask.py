"""Run ``numbarnn.RNN``, ``LSTM`` and ``GRU`` on Dask: inference over arrays larger than memory, long sequences in
time chunks, and thread control for Dask workers.

Import it as ``numbarnn.dask`` (``import numbarnn`` does not import Dask). Needs the ``dask`` extra:
``pip install "numbarnn[dask]"``.

How the work is split
---------------------
:func:`forward` turns each block of a chunked ``dask.array`` input into one task. Blocks along the batch axis are
independent tasks that run in parallel. Blocks along the time axis of one batch block run one after the other, each
starting from the state the previous one ended with (all layers' states, and an LSTM's cell states c too, are
carried, so stacked layers chain exactly as in one call). With ``lengths``, in the time chunk ``[t0, t1)`` sequence
``i`` runs ``clip(lengths[i] - t0, 0, t1 - t0)`` steps: a sequence that has already ended keeps its state and gets
zero outputs, so the result equals one call over the whole input.

Threads
-------
Dask runs tasks on several threads per worker process; numba's own thread pool would multiply that. Each task of
:func:`forward` therefore runs under :func:`limit_threads`: one numba thread, by default (numba's setting is per
calling thread, so it applies to the task's own thread only). BLAS needs nothing here: numbarnn's kernels call none
(see the guide's "Threads and serving", docs/guide/threads.md).

Cold JIT cache
--------------
numba's on-disk cache can race when several processes compile different signatures of one function at the same time
(numba issues #4807, #10128). The first call of each kind (cell, dtype, layout, lengths or not) in a process runs
under an inter-process file lock (``filelock``) next to the cache, so a cluster of workers starting on an empty cache
compiles (or loads) one worker at a time and then runs freely.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import operator
import os
import tempfile
import threading
from typing import TYPE_CHECKING, Any

import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from filelock import FileLock

from . import _threads
from ._validation import check_lengths_range
from .rnn import RecurrentBase

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["forward", "limit_threads"]


def forward(
    rnn: RecurrentBase[Any],
    input: da.Array,
    h_0: npt.ArrayLike | da.Array | tuple[npt.ArrayLike | da.Array, npt.ArrayLike | da.Array] | None = None,
    lengths: npt.ArrayLike | da.Array | None = None,
    *,
    numba_threads: int | None = 1,
) -> tuple[da.Array, da.Array | tuple[da.Array, da.Array]]:
    """Run ``rnn`` over a chunked ``dask.array`` input; lazy, equal to ``rnn(input.compute(), h_0, lengths)``.

    Parameters
    ----------
    rnn : numbarnn.RNN, numbarnn.LSTM or numbarnn.GRU
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
    h_0 : array_like or dask.array.Array, or for an LSTM a tuple (h_0, c_0) of them, optional
        h_0 (D * num_layers, N, H_out) (unbatched: (D * num_layers, H_out)), H_out being ``proj_size`` when set,
        else H; an LSTM's c_0 likewise with H features. Zeros when omitted.
    lengths : array_like or dask.array.Array of int, optional
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
    h_n : dask.array.Array, or for an LSTM a tuple (h_n, c_n) of them
        Shaped like ``h_0`` (and ``c_0``), chunked along N like the input: the state as the module returns it.
    """
    _check_module(rnn)
    x, state, lengths_array = _check_arguments(rnn, input, h_0, lengths)
    batched = x.ndim == 3
    batch_first = rnn.batch_first
    if not batched:
        x = x[None] if batch_first else x[:, None]  # the module reads unbatched input time-major either way
    time_axis, batch_axis = (1, 0) if batch_first else (0, 1)
    steps = x.shape[time_axis]
    x = x.rechunk({2: -1, time_axis: -1} if rnn.bidirectional else {2: -1})
    batch_chunks, time_chunks = x.chunks[batch_axis], x.chunks[time_axis]

    rows, widths = rnn.num_layers * rnn.num_directions, rnn._state_widths()
    if state is not None:
        state = [
            (part if batched else part[:, None]).rechunk((rows, batch_chunks, width))
            for part, width in zip(state, widths, strict=True)
        ]
    if lengths_array is not None:
        lengths_array = lengths_array.rechunk((batch_chunks,))

    module = copy.deepcopy(rnn)
    module_token = tokenize(type(module).__name__, repr(module), module.nonlinearity, module._param_flat)
    module_key = f"numbarnn-{module._CELL}-{module_token}"
    token = tokenize(module_token, x, state, lengths_array, numba_threads)
    run_name, state_name = f"numbarnn-forward-run-{token}", f"numbarnn-forward-state-{token}"
    output_name = f"numbarnn-forward-output-{token}"
    part_names = [f"numbarnn-forward-{name}-{token}" for name in (("h_n", "c_n") if rnn._lstm else ("h_n",))]

    run_layer: dict[Any, Any] = {module_key: module}
    output_layer: dict[Any, Any] = {}
    part_layers: dict[str, dict[Any, Any]] = {name: {} for name in part_names}
    starts = np.concatenate([[0], np.cumsum(time_chunks)[:-1]]).tolist()
    for j in range(len(batch_chunks)):
        state_keys = () if state is None else tuple((part.name, 0, j, 0) for part in state)
        block_lengths = None if lengths_array is None else (lengths_array.name, j)
        for k, start in enumerate(starts):
            x_key = (x.name, j, k, 0) if batch_first else (x.name, k, j, 0)
            run_key = (run_name, k, j)
            # the task returns (output, h_n) or an LSTM's (output, h_n, c_n)
            run_layer[run_key] = (
                _run_block,
                module_key,
                x_key,
                block_lengths,
                start,
                steps,
                numba_threads,
                *state_keys,
            )
            output_index = (j, k, 0) if batch_first else (k, j, 0)
            output_key = (output_name, *output_index)
            output_layer[output_key] = (operator.getitem, run_key, 0)
            if k < len(starts) - 1:  # the state the next time chunk starts from
                state_keys = tuple((state_name, i, k, j) for i in range(len(widths)))
                for i, key in enumerate(state_keys):
                    run_layer[key] = (operator.getitem, run_key, 1 + i)
            else:
                for i, name in enumerate(part_names):
                    part_layers[name][(name, 0, j, 0)] = (operator.getitem, run_key, 1 + i)
    dependencies = [a for a in (x, *(state or ()), lengths_array) if a is not None]
    run_graph = HighLevelGraph.from_collections(run_name, run_layer, dependencies=dependencies)
    # One layer per array named after it, as dask.array expects, each on the run layer.
    layers = {**run_graph.layers, output_name: output_layer, **part_layers}
    graph = HighLevelGraph(
        layers, {**run_graph.dependencies, output_name: {run_name}, **{name: {run_name} for name in part_names}}
    )

    width = rnn.num_directions * rnn._state_size
    output_chunks = (batch_chunks, time_chunks, (width,)) if batch_first else (time_chunks, batch_chunks, (width,))
    output = da.Array(graph, output_name, output_chunks, dtype=rnn.dtype)
    parts = [
        da.Array(graph, name, ((rows,), batch_chunks, (part_width,)), dtype=rnn.dtype)
        for name, part_width in zip(part_names, widths, strict=True)
    ]
    if not batched:
        output = output[0] if batch_first else output[:, 0]
        parts = [part[:, 0] for part in parts]
    return output, rnn._state_result(parts)


def _run_block(rnn, x, lengths, start, total_steps, numba_threads, *state):
    """One task: run ``rnn`` over the block ``x`` (time-major, or batch-first as the module says) from the state
    whose parts are ``state`` (h, or an LSTM's h and c; none: zeros). Returns ``(output, *state parts)`` for the
    block."""
    batch_first = rnn.batch_first
    block_steps, block_batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    x = np.ascontiguousarray(x)  # blocks cut out of a larger array may be views; the module reads C order fastest

    def kind(with_lengths):
        """What decides which kernels a call compiles (or loads from the cache)."""
        return (
            rnn._CELL,
            rnn.nonlinearity,
            rnn.proj_size > 0,
            rnn.bidirectional,
            rnn.dtype.str,
            batch_first,
            with_lengths,
            not state,
        )

    with limit_threads(numba_threads):
        if lengths is not None:
            # Each task sees a slice of the lengths and of time, and could not tell an out-of-range length from a
            # sequence that ends before or after its block: the whole range is checked here, with the module's
            # messages.
            check_lengths_range(lengths, total_steps)
            run = np.clip(lengths - start, 0, block_steps)
        if lengths is None or (run == block_steps).all():
            with _first_call_lock(kind(False)):
                output, h_n = rnn(x, rnn._state_result(state) if state else None)
            return (output, *rnn._state_parts(h_n, "h_n"))
        # Some sequences end inside this block or before it. The module takes lengths in 1...L, so only the rows
        # that still have steps here go through it; the others keep their state and get zero outputs.
        width = rnn.num_directions * rnn._state_size
        output_shape = (block_batch, block_steps, width) if batch_first else (block_steps, block_batch, width)
        output = np.zeros(output_shape, rnn.dtype)
        rows = rnn.num_layers * rnn.num_directions
        parts = (
            [part.copy() for part in state]
            if state
            else [np.zeros((rows, block_batch, part_width), rnn.dtype) for part_width in rnn._state_widths()]
        )
        live = np.flatnonzero(run > 0)
        if live.size:
            live_x = x[live] if batch_first else x[:, live]
            live_state = rnn._state_result([part[:, live] for part in state]) if state else None
            with _first_call_lock(kind(True)):
                live_output, live_h_n = rnn(live_x, live_state, lengths=run[live])
            if batch_first:
                output[live] = live_output
            else:
                output[:, live] = live_output
            for part, live_part in zip(parts, rnn._state_parts(live_h_n, "h_n"), strict=True):
                part[:, live] = live_part
        return (output, *parts)


# -- checks ------------------------------------------------------------------------------------------------------
def _check_module(rnn):
    if not isinstance(rnn, RecurrentBase):
        kind = type(rnn)
        raise TypeError(
            f"numbarnn.dask.forward runs a numbarnn.RNN, LSTM or GRU, got {kind.__module__}.{kind.__qualname__}; "
            "for a torch module, build the numbarnn module with the same arguments and copy its weights with "
            "load_state_dict(module.state_dict())"
        )
    if rnn.training:
        raise ValueError(
            "numbarnn.dask.forward needs the module in eval mode, got a module in training mode (which keeps what "
            "backward needs, and draws dropout masks); call rnn.eval() first"
        )


def _check_arguments(
    rnn: RecurrentBase[Any], input: Any, h_0: Any, lengths: Any
) -> tuple[da.Array, list[da.Array] | None, da.Array | None]:
    """The module's own checks (torch's, in torch's order, with its messages) on stand-ins for the dask arrays:
    read-only zero-strided arrays of their shapes and dtypes, which take no memory and compute nothing.

    Returns the input, the state's parts (None, or a list of dask arrays) and the lengths (None, or an int64 dask
    array); NumPy lengths are range-checked here, dask lengths by each task.
    """
    if not isinstance(input, da.Array):
        raise TypeError(
            f"numbarnn.dask.forward takes a dask.array.Array input, got {type(input).__module__}."
            f"{type(input).__name__}; wrap it with dask.array.from_array(input, chunks=...), or call rnn(input) "
            "for an in-memory array"
        )
    _check_known_shape(input, "input")
    parts = None if h_0 is None else list(rnn._state_parts(h_0, "hx"))
    for part, name in zip(parts or (), ("h_0", "c_0"), strict=False):
        if isinstance(part, da.Array):
            _check_known_shape(part, name)
    standins = None if parts is None else [_stand_in(part) for part in parts]
    x, _ = rnn.check_input(_stand_in(input), None if standins is None else rnn._state_result(standins))
    batched = x.ndim == 3
    if not batched:
        steps, batch = x.shape[0], 1
    else:
        steps, batch = (x.shape[1], x.shape[0]) if rnn.batch_first else (x.shape[0], x.shape[1])
    if batched and batch == 0:
        raise ValueError("Expected batch size to be larger than 0 in RNN")
    if lengths is not None:
        if isinstance(lengths, da.Array):
            _check_known_shape(lengths, "lengths")
            # every check but the range, which the values decide: ones stand in for them
            rnn.check_lengths(np.broadcast_to(np.ones((), lengths.dtype), lengths.shape), steps, batch, batched)
        else:
            lengths = rnn.check_lengths(lengths, steps, batch, batched)
        lengths = da.asarray(lengths).astype(np.int64)
    return input, None if parts is None else [da.asarray(part) for part in parts], lengths


def _stand_in(array):
    """A read-only array of ``array``'s shape and dtype whose elements all share one zero: no memory, no compute
    (NumPy arrays and other values are returned as they are)."""
    if not isinstance(array, da.Array):
        return array
    return np.broadcast_to(np.zeros((), array.dtype), array.shape)


def _check_known_shape(array, name):
    if any(np.isnan(size) for size in array.shape):
        raise ValueError(
            f"{name} must have known chunk sizes, got shape {array.shape}; call {name}.compute_chunk_sizes() first"
        )


# -- threads -----------------------------------------------------------------------------------------------------
def limit_threads(numba_threads: int | None = 1) -> contextlib.AbstractContextManager[None]:
    """Context manager: the calling thread runs numbarnn's kernels on ``numba_threads`` threads, restored on exit.

    Use it in tasks that call numbarnn on a Dask worker (``forward`` does it for its own tasks), e.g. in a function
    given to ``client.map`` for a parameter sweep, so that W worker threads use W cores and not W times numba's pool.

    Parameters
    ----------
    numba_threads : int or None, default 1
        Set with ``numba.set_num_threads``, which is per calling thread: other worker threads keep their own
        setting. Capped at numba's pool size (``NUMBA_NUM_THREADS``). None leaves it as it is.

    Returns
    -------
    contextlib.AbstractContextManager
        Use it in a ``with`` statement: ``with numbarnn.dask.limit_threads(1): rnn(x)``. Entering it sets the
        thread count (a count that is not a positive int raises ``ValueError`` then); leaving it restores the
        previous count.
    """
    return _threads.numba_threads(numba_threads, "numba_threads")


# -- cold-cache compile lock -------------------------------------------------------------------------------------
_seen_lock = threading.Lock()
# kinds of call that have run once in this process: their kernels are compiled or loaded
_seen_kinds: set[tuple[Any, ...]] = set()


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
