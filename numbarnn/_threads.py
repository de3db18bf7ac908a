"""Thread control, decided once per process: a pass's independent tasks run on several threads.

Inside a recurrence either all threading comes from a threaded product, or several threads run single-threaded
products: a threaded product per time step makes the threads meet at every step, and a BLAS pool idle-spinning
after a call steals the cores the other threads need (measured 1.7-2x slower). numbarnn therefore splits the batch
into blocks that run independently (see :mod:`numbarnn._workspace`), and multiplies with its own single-threaded
panel kernels (:mod:`numbarnn._panels`): no kernel calls a BLAS, so no BLAS thread pool runs beside numbarnn's
threads. (Until 2026-12-05 the ``Linear`` kernels called scipy's BLAS through numba's ``np.dot``, and numbarnn held
that BLAS to one thread through threadpoolctl, once per process.)

A pass runs in stages (a layer's preparation, then its tasks; :func:`numbarnn._forward.recurrent_forward`), all in
one call on one thread, or each stage split into parts that several threads run at once, with the same compiled
kernel. Whose threads:

- numbarnn's own workers (a :class:`~concurrent.futures.ThreadPoolExecutor` of ``NUMBA_NUM_THREADS - 1``, beside the
  calling thread; the kernels release the GIL), for the NumPy API. numba's ``prange`` would compile a gufunc and two
  wrappers around the stage kernel, each optimising its code again: an RNN's first multi-block inference call
  compiled in 19.7 s of CPU that way, in 10.7 s on the workers (fresh cache, Zen 3). Threads meet between stages as
  numba's sleeping OpenMP workers do, ~100 us each (measured 93 us for a region, 98-107 us for a pool hand-off on a
  2-core virtual machine).
- numba's OpenMP threads (``prange`` over the parts, one region per stage), for :mod:`numbarnn.torch`: torch's
  OpenMP workers spin for milliseconds after each of torch's parallel operations, and on a 2-core machine took half
  the core that a worker of numbarnn's own needed (its part of the small configuration ran 1.5x slower than the
  calling thread's, and the drop-in's whole forward 2.8 -> 4.0 ms); numba's ``omp`` layer runs on the same OpenMP
  runtime as torch, so its regions run on those very threads.

numba's OpenMP workers are started with ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set the variable): between
parallel regions they sleep instead of spinning. Spinning workers took the cores the calling thread needed next:
the small benchmark configuration's forward took 8-16 ms per call in five fresh processes with spinning workers, and
3.1-3.2 ms in three of four with sleeping ones (6.3 ms in the fourth; 2 threads, a 2-core virtual machine).

How many threads a call uses is numba's own setting (``numba.set_num_threads``, per calling thread, or the
``NUMBA_NUM_THREADS`` environment variable). numba's ``workqueue`` threading layer (its fallback where neither TBB
nor OpenMP is installed) aborts the process when two threads enter parallel regions at once; under it a call that
would enter one while another runs runs its stages in one part instead, which gives bitwise the same result.
"""

import contextlib
import numbers
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_CONCURRENT_LAYERS = ("omp", "tbb")
_state_lock = threading.Lock()
_configured = False
_layer_allows_concurrency = None  # unknown until the first parallel call has chosen the threading layer
_parallel_gate = threading.Lock()  # serialises parallel calls while that is unknown, and for ever under workqueue
_workers = None  # numbarnn's ThreadPoolExecutor, made by the first call that needs it


def _start_numba_threads():
    """Start numba's thread pool (its first get_num_threads does), its OpenMP runtime reading a passive wait policy
    from the environment as it loads; the environment is then as it was.

    Starting numba's ``omp`` pool sets OpenMP's thread count to numba's pool size; when torch shares that OpenMP
    runtime, that count is torch's ``get_num_threads()``, which is put back (torch is never imported here).
    """
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if hasattr(torch, "get_num_threads") else None
    set_here = "OMP_WAIT_POLICY" not in os.environ
    if set_here:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.get_num_threads()
    finally:
        if set_here:
            del os.environ["OMP_WAIT_POLICY"]
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def configure_threads_once():
    """Start numba's threads (workers that sleep between regions). Idempotent, thread-safe and cheap after the first
    call; every kernel call goes through it. Call it before your own first ``numba.set_num_threads`` for the passive
    workers to apply."""
    global _configured
    if _configured:
        return
    with _state_lock:
        if _configured:
            return
        _start_numba_threads()
        _configured = True


@contextlib.contextmanager
def numba_threads(count, name="numba_threads"):
    """Context manager: the calling thread runs numbarnn's passes on ``count`` threads, restored on exit.

    The one place numbarnn changes numba's thread count for a block of work (``numbarnn.dask.limit_threads``, the
    demo's ``--threads``).

    Parameters
    ----------
    count : int or None
        Set with ``numba.set_num_threads``, which is per calling thread: other threads keep their own setting.
        Capped at numba's pool size (``NUMBA_NUM_THREADS``). None leaves the setting as it is.
    name : str, default "numba_threads"
        The argument's name in the error for a count that is not a positive int.
    """
    if count is None:
        yield
        return
    if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{name} must be a positive int or None, got {count!r}")
    configure_threads_once()  # before the first set_num_threads starts numba's pool: its workers then sleep
    previous = numba.get_num_threads()
    numba.set_num_threads(min(int(count), numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _pool():
    """numbarnn's worker threads, made once per process (and again in a forked child, which has none of them)."""
    global _workers
    if _workers is None:
        with _state_lock:
            if _workers is None:
                _workers = ThreadPoolExecutor(
                    max(1, numba.config.NUMBA_NUM_THREADS - 1), thread_name_prefix="numbarnn-worker"
                )
    return _workers


def _forget_workers():
    """In a forked child: the parent's workers, and whoever held the lock, are not there."""
    global _workers, _state_lock
    _workers = None
    _state_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_forget_workers)


def run_stages(kernel, parts_kernel, stages, tasks, first_alone, *arguments):
    """Run a pass: ``kernel(first_stage, end_stage, part, parts, *arguments)`` over stages ``0 ... stages - 1``.

    With one task, or one thread allowed to the calling thread, that is one call with every stage and one part.
    Otherwise each stage runs in ``threads = min(tasks, numba.get_num_threads())`` parts at once, and the next stage
    starts when every part has returned: part 0 on the calling thread and the others on numbarnn's workers, or, with
    a ``parts_kernel``, ``parts_kernel(first_stage, end_stage, threads, *arguments)`` runs them on numba's OpenMP
    threads (see the module's notes for which and why). With ``first_alone``, the calling thread runs the first stage
    by itself (one part) first: for a first stage cheaper than the threads' meeting after it (~100 us). The result is
    bitwise the same for any number of parts.
    """
    configure_threads_once()
    threads = 1 if tasks < 2 else min(tasks, numba.get_num_threads())  # numba's per-thread count costs ~2 us
    if threads < 2:
        kernel(0, stages, 0, 1, *arguments)
        return
    start = 0
    if first_alone:
        kernel(0, 1, 0, 1, *arguments)
        start = 1
    if parts_kernel is not None:
        _run_on_numba_threads(kernel, parts_kernel, start, stages, threads, arguments)
        return
    pool = _pool()
    for stage in range(start, stages):
        others = [pool.submit(kernel, stage, stage + 1, part, threads, *arguments) for part in range(1, threads)]
        try:
            kernel(stage, stage + 1, 0, threads, *arguments)
        finally:
            for other in others:  # every part writes into the caller's buffers: none may outlive the call
                other.result()


def _run_on_numba_threads(kernel, parts_kernel, start, stages, threads, arguments):
    """Stages ``start ... stages - 1`` in ``threads`` parts on numba's threads, or in one part on the calling thread
    where the threading layer may not allow this parallel region beside another one running."""
    global _layer_allows_concurrency
    if start == stages:
        return
    if _layer_allows_concurrency:
        parts_kernel(start, stages, threads, *arguments)
        return
    if not _parallel_gate.acquire(blocking=False):
        kernel(start, stages, 0, 1, *arguments)  # another thread is in a parallel region: workqueue would abort
        return
    try:
        parts_kernel(start, stages, threads, *arguments)
        _layer_allows_concurrency = numba.threading_layer() in _CONCURRENT_LAYERS
    finally:
        _parallel_gate.release()
