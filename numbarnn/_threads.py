"""Thread control: one pool at a time.

Inside a recurrence either all threading comes from BLAS, or numba's threads run with single-threaded BLAS: an
OpenBLAS pool that is idle-spinning after a call steals the cores numba's workers need (measured 1.7-2x slower).
numba's ``np.dot`` calls the BLAS that ``scipy.linalg.cython_blas`` loads, so that is the library whose thread count is
switched here. Where it cannot be found (another BLAS vendor), the parallel kernels are simply not used.
"""

import ctypes
import os

import numba

_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_")


def _scipy_blas_paths():
    """Paths of the OpenBLAS that ``scipy.linalg.cython_blas`` uses (numpy's wheel bundles a separate copy)."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library so that it appears in the process maps)

    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    paths = sorted(p for p in paths if os.path.isfile(p))
    wheel_libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    bundled = [p for p in paths if os.path.dirname(p) == wheel_libs]
    # A wheel install bundles scipy's own copy; elsewhere (conda, distro packages) one shared library is expected.
    return bundled if bundled else paths if len(paths) == 1 else []


def _find_scipy_blas():
    """``(set_num_threads, get_num_threads)`` of the BLAS numba calls, or None."""
    try:
        paths = _scipy_blas_paths()
    except (ImportError, OSError):
        return None
    for path in paths:
        library = ctypes.CDLL(path)
        for setter in _SETTERS:
            getter = setter.replace("set_", "get_")
            if hasattr(library, setter) and hasattr(library, getter):
                set_threads, get_threads = getattr(library, setter), getattr(library, getter)
                set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
                get_threads.argtypes, get_threads.restype = [], ctypes.c_int
                return set_threads, get_threads
    return None


class _SingleThreadedBlas:
    """Context manager: BLAS runs on one thread inside, and gets its previous thread count back after."""

    def __init__(self, functions):
        self._set, self._get = functions
        self._saved = None

    def __enter__(self):
        self._saved = self._get()
        if self._saved != 1:
            self._set(1)
        return self

    def __exit__(self, *exc_info):
        if self._saved != 1:
            self._set(self._saved)
        return False


_blas = None  # resolved on first use, so `import numbarnn` stays fast


def parallel_directions_context():
    """A context under which the direction-parallel kernels may run, or None when they should not be used
    (a single numba thread, or a BLAS whose thread count cannot be controlled)."""
    global _blas
    if numba.get_num_threads() < 2:
        return None
    if _blas is None:
        functions = _find_scipy_blas()
        _blas = _SingleThreadedBlas(functions) if functions is not None else False
    return _blas or None
