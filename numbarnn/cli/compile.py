"""``python -m numbarnn compile``: fill numba's cache ahead of time, for container images, Dask workers and CI.

numbarnn compiles its kernels on first use and keeps them in numba's on-disk cache (``cache=True``): a fresh
environment pays the compile time once per kernel, and every later process loads the kernels in well under a second.
This command makes those first calls now, for the cells and dtypes given: for each, an inference forward, a training
forward and backward (of one sequence, and of a batch that splits into blocks: the same recurrent kernels, which run
on one thread or several, and the packing of the batch's rows), ``step`` and a cell's call and backward; for the
LSTM, the same again with a projection (``proj_size``), whose kernels are a specialisation of their own. The cache
is valid for the CPU it was compiled for (numba keys it by the target CPU name and features), for this numba
version and for numbarnn's modules as they are (:mod:`numbarnn._jit`: a change to any of them compiles again).

Where the cache goes: next to numbarnn's modules (``__pycache__``) when that directory is writable; otherwise (a
read-only install) numba's per-user cache directory; or wherever ``NUMBA_CACHE_DIR`` points, which must be set the
same in the processes that are to use it.
"""

import os
import time

import numpy as np

CELLS = ("rnn", "lstm", "gru")
DTYPES = ("float32", "float64")

# Sizes of the calls that compile the kernels: the batch splits into two blocks where numba has two threads or more
# (numbarnn._workspace.block_count); small enough to run in milliseconds.
STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 16, 4, 64, 64


def add_arguments(parser):
    parser.add_argument(
        "--cells", nargs="+", choices=CELLS, default=list(CELLS), help="the cells to compile (default: all)"
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="the dtypes to compile (default: both)"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a progress bar on a terminal (auto), always, or plain lines",
    )


def cache_location():
    """Where numba keeps numbarnn's compiled kernels, in words."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return f"NUMBA_CACHE_DIR={configured}"
    import numbarnn

    package = os.path.dirname(os.path.abspath(numbarnn.__file__))
    if os.access(package, os.W_OK):
        return os.path.join(package, "__pycache__")
    return "numba's per-user cache directory (numbarnn's own directory is read-only); set NUMBA_CACHE_DIR to choose"


def compile_cell(cell, dtype):
    """Make every first call that compiles ``cell``'s kernels in ``dtype``."""
    import numbarnn

    dtype = np.dtype(dtype)
    recurrent = {"rnn": numbarnn.RNN, "lstm": numbarnn.LSTM, "gru": numbarnn.GRU}[cell]
    one_step = {"rnn": numbarnn.RNNCell, "lstm": numbarnn.LSTMCell, "gru": numbarnn.GRUCell}[cell]
    x = np.random.default_rng(0).standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(dtype)
    exercise(recurrent(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, seed=0), x)
    if cell == "lstm":  # an LSTM with a projection is a specialisation of its own (numbarnn._cells)
        exercise(recurrent(INPUT_SIZE, HIDDEN_SIZE, proj_size=HIDDEN_SIZE // 2, dtype=dtype, seed=0), x)
    unit = one_step(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, seed=0)
    state = unit(x[0])  # a training call: the tape's own kernel variant
    unit.backward(tuple(np.ones_like(part) for part in state) if isinstance(state, tuple) else np.ones_like(state))
    unit.eval()
    unit(x[0])


def exercise(module, x):
    """A sequence module's training and inference calls and its ``step``."""
    for batch in (1, BATCH):  # one block, the rows read in place; two (with two threads or more), the rows packed
        output, _ = module.train()(x[:, :batch])
        module.backward(np.ones_like(output))
        module.eval()(x[:, :batch])
    module.step(x[0])


def run(args):
    from .._threads import configure_threads_once
    from ._progress import Progress

    configure_threads_once()
    work = [(cell, dtype) for cell in args.cells for dtype in args.dtypes]
    progress = Progress(len(work), "kernel set", mode=args.progress)
    started = time.perf_counter()
    for done, (cell, dtype) in enumerate(work, 1):
        progress.update(done - 1, f"compiling {cell} {dtype}")
        tick = time.perf_counter()
        compile_cell(cell, dtype)
        progress.update(done, f"{cell} {dtype}: {time.perf_counter() - tick:.1f} s")
    progress.close()
    print(
        f"numbarnn compile: {', '.join(args.cells)} in {', '.join(args.dtypes)} ready in "
        f"{time.perf_counter() - started:.1f} s"
    )
    print(f"cache: {cache_location()}")
    return 0
