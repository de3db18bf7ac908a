"""Thread control, decided once per process: numba's threads parallelise, BLAS runs on one thread.

Inside a recurrence either all threading comes from BLAS, or numba's threads run with single-threaded BLAS: an
OpenBLAS pool that is idle-spinning after a call steals the cores numba's workers need (measured 1.7-2x slower), and
a threaded product per time step makes the threads meet at every step. numbarnn therefore splits the batch into
blocks that numba's threads run independently (see :mod:`numbarnn._workspace`), and runs the BLAS that numba's
``np.dot`` calls — scipy's — on one thread. That limit is set once, the first time a kernel runs, through
threadpoolctl, and never changed per call: nothing process-wide moves while threads are serving requests.

numba's OpenMP workers are started with ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set the variable): between
parallel regions they sleep instead of spinning. Spinning workers took the cores the calling thread needed next:
the small benchmark configuration's forward took 8-16 ms per call in five fresh processes with spinning workers, and
3.1-3.2 ms in three of four with sleeping ones (6.3 ms in the fourth; 2 threads, a 2-core virtual machine).

How many threads a call uses is numba's own setting (``numba.set_num_threads``, per calling thread, or the
``NUMBA_NUM_THREADS`` environment variable). numba's ``workqueue`` threading layer (its fallback where neither TBB
nor OpenMP is installed) aborts the process when two threads enter parallel kernels at once; under it a call that
finds another parallel call running uses the serial kernel instead, which computes the same blocks in the same order
and so gives bitwise the same result.
"""

import contextlib
import numbers
import os
import sys
import threading

import numba

_CONCURRENT_LAYERS = ("omp", "tbb")
_state_lock = threading.Lock()
_configured = False
_layer_allows_concurrency = None  # unknown until the first parallel call has chosen the threading layer
_parallel_gate = threading.Lock()  # serialises parallel calls while that is unknown, and for ever under workqueue


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
    """Start numba's threads (workers that sleep between regions) and run scipy's BLAS on one thread from now on.
    Idempotent, thread-safe and cheap after the first call; every kernel call goes through it. Call it before your
    own first ``numba.set_num_threads`` for the passive workers to apply."""
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
    """Context manager: the calling thread runs numbarnn's parallel kernels on ``count`` threads, restored on exit.

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


def run_kernel(serial_kernel, parallel_kernel, tasks, *arguments):
    """Call ``parallel_kernel(*arguments)`` when there are several independent tasks, the calling thread allows
    several numba threads and the threading layer allows the call; ``serial_kernel`` (same result) otherwise."""
    global _layer_allows_concurrency
    configure_threads_once()
    if tasks < 2 or numba.get_num_threads() < 2:
        serial_kernel(*arguments)
        return
    if _layer_allows_concurrency:
        parallel_kernel(*arguments)
        return
    if not _parallel_gate.acquire(blocking=False):
        serial_kernel(*arguments)  # another thread is in a parallel kernel and the layer may not allow a second
        return
    try:
        parallel_kernel(*arguments)
        _layer_allows_concurrency = numba.threading_layer() in _CONCURRENT_LAYERS
    finally:
        _parallel_gate.release()
