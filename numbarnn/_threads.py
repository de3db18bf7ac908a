"""Thread control: numbarnn's own worker threads run a pass's independent tasks, BLAS runs on one thread.

Inside a recurrence either all threading comes from BLAS, or a pass's tasks run on several threads with
single-threaded BLAS: an OpenBLAS pool that is idle-spinning after a call steals the cores the other threads need
(measured 1.7-2x slower), and a threaded product per time step makes the threads meet at every step. numbarnn
therefore splits the batch into blocks that run independently (see :mod:`numbarnn._workspace`), and runs the BLAS
that numba's ``np.dot`` calls — scipy's — on one thread. That limit is set once, the first time a kernel runs,
through threadpoolctl, and never changed per call: nothing process-wide moves while threads are serving requests.

A pass runs in stages (a layer's preparation, then its tasks; :func:`numbarnn._forward.recurrent_forward`): one
call of the kernel with every stage on one thread, or each stage split into parts that the calling thread and
numbarnn's workers (a :class:`~concurrent.futures.ThreadPoolExecutor`) run at once, the kernels releasing the GIL.
Both are the one compiled kernel, which is why there are no ``parallel=True`` kernels: numba compiles a ``prange``
loop into a gufunc and two wrappers, each optimising the loop body's code again (a first parallel inference call
compiled in 22.5-25.6 s of CPU, on this design 10.4-14.0 s; Zen 3, 2 cores). Threads meet between stages as
numba's did between its parallel regions: ~100 us per meeting either way on a 2-core virtual machine (a sleeping
OpenMP worker's wake-up, measured 93 us, a pool worker's 98-107 us). Being plain Python threads, they also work under
every threading layer, so two threads may run parallel passes at once (numba's ``workqueue`` layer aborted the
process when they did).

How many threads a call uses is numba's own setting (``numba.set_num_threads``, per calling thread, or the
``NUMBA_NUM_THREADS`` environment variable, which also sizes the pool: ``NUMBA_NUM_THREADS - 1`` workers besides
the calling thread).
"""

import contextlib
import numbers
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_state_lock = threading.Lock()
_configured = False
_workers = None  # the ThreadPoolExecutor, made by the first call that needs it


def _scipy_blas_controllers(controller):
    """threadpoolctl's controllers of the BLAS that numba's ``np.dot`` calls: scipy's.

    A wheel install bundles scipy's own copy beside the package (numpy's wheel bundles a separate one, which is left
    alone); elsewhere (conda, distribution packages) scipy and numpy share one BLAS, which is then the one limited.
    """
    import scipy

    scipy_root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    bundled = [
        lib
        for lib in blas
        if os.path.basename(os.path.dirname(lib.filepath)) in ("scipy.libs", ".dylibs")
        and os.path.abspath(lib.filepath).startswith(scipy_root)
    ]
    return bundled or blas


def _start_numba_threads():
    """Start numba's threading layer, whose per-thread setting (``numba.set_num_threads``) says how many threads a
    call uses; numbarnn runs no parallel region on it.

    Starting numba's ``omp`` layer sets OpenMP's thread count to numba's pool size; when torch shares that OpenMP
    runtime, that count is torch's ``get_num_threads()``, which is put back (torch is never imported here).
    """
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if hasattr(torch, "get_num_threads") else None
    numba.get_num_threads()
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def configure_threads_once():
    """Start numba's threading layer (whose setting says how many threads a call uses) and run scipy's BLAS on one
    thread from now on. Idempotent, thread-safe and cheap after the first call; every kernel call goes through it."""
    global _configured
    if _configured:
        return
    with _state_lock:
        if _configured:
            return
        _start_numba_threads()
        import scipy.linalg.cython_blas  # noqa: F401  (loaded now: threadpoolctl sees only libraries already loaded)
        from threadpoolctl import OpenBLASController, ThreadpoolController

        for library in _scipy_blas_controllers(ThreadpoolController()):
            library.set_num_threads(1)
            if library.get_num_threads() != 1:
                # threadpoolctl lets one "controlling" thread at a time change OpenBLAS and silently ignores the
                # others: another thread holds that role (the user's threadpool_limits, say). This one setting is
                # numbarnn's to make, once, so it takes the role.
                OpenBLASController.clear_controlling_thread(force=True)
                library.set_num_threads(1)
        OpenBLASController.clear_controlling_thread()  # give the role back: later threadpool_limits calls work
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
    configure_threads_once()  # starts numba's layer as numbarnn does, keeping torch's thread count
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


os.register_at_fork(after_in_child=_forget_workers)


def run_stages(kernel, stages, tasks, first_alone, *arguments):
    """Run a pass: ``kernel(first_stage, end_stage, part, parts, *arguments)`` over stages ``0 ... stages - 1``.

    With one task, or one thread allowed to the calling thread, that is one call with every stage and one part.
    Otherwise each stage runs in ``threads = min(tasks, numba.get_num_threads())`` parts at once, part 0 on the
    calling thread and the others on numbarnn's workers; the next stage starts when every part has returned.
    With ``first_alone``, the calling thread runs the first stage by itself (as one part) before the others start:
    for a first stage cheaper than the threads' meeting after it (~100 us; see the module's notes). The kernel gives
    bitwise the same result for any number of parts.
    """
    configure_threads_once()
    threads = 1 if tasks < 2 else min(tasks, numba.get_num_threads())  # numba's per-thread count costs ~2 us
    if threads < 2:
        kernel(0, stages, 0, 1, *arguments)
        return
    pool = _pool()
    if first_alone:
        kernel(0, 1, 0, 1, *arguments)
    for stage in range(1 if first_alone else 0, stages):
        others = [pool.submit(kernel, stage, stage + 1, part, threads, *arguments) for part in range(1, threads)]
        try:
            kernel(stage, stage + 1, 0, threads, *arguments)
        finally:
            for other in others:  # every part writes into the caller's buffers: none may outlive the call
                other.result()
