"""The one place that holds numba's compilation options.

Every kernel in numbarnn is compiled through :func:`jit`, so caching, the error model, the fast-math flags and the
reference-counting runtime are decided here and nowhere else.
"""

import functools
import hashlib
from pathlib import Path

import numba
from numba.core import caching

# `reassoc` lets LLVM vectorise reductions and `contract` lets it fuse multiply-adds; both change results only at the
# rounding level. `nnan`/`ninf` are deliberately absent: NaN and inf must propagate exactly as they do in PyTorch.
FASTMATH_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})

# numba's default ("python") error model guards every float division with a zero check, which blocks SIMD.
#
# `_nrt=False`: the kernels write into arrays their caller owns and keeps alive for the call, so numba's
# reference-counting runtime (NRT) has nothing to manage there, yet with it every array argument is wrapped in a
# MemInfo when unboxed (~30 ns each) and every view or tuple of arrays a kernel forms is counted up and down with
# atomic operations, in its time loops too. Without it (Zen 4, 2 threads): an RNN(32, 64) forward over 100 steps of
# one sequence 34.5 -> 29 us, its training step 93 -> 77 us (LSTM forward 121 -> 109, GRU 91 -> 82); a one-step call
# 9.3 -> 7.6 us; the forward kernel's IR 38,800 -> 16,500 lines, the first inference call on an empty cache
# 7.4-7.8 -> 6.6-6.9 s and the first training step 9.6-9.9 -> 8.5-8.8 s. A kernel that allocates an array, calls
# numba's np.dot, or raises an exception carrying run-time values needs the runtime: `jit(nrt=True)`. (Called from a
# kernel without it, such a kernel receives arrays with no MemInfo, which the runtime skips.)
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH_FLAGS), _nrt=False)


def jit(signature_or_function=None, *, parallel=False, inline=False, nrt=False):
    """Compile with numbarnn's options; usable as ``@jit``, ``@jit(parallel=True)``, ``@jit(inline=True)`` or
    ``@jit(nrt=True)`` (a kernel that allocates, see ``JIT_OPTIONS``).

    ``inline=True`` is for small helpers: numba then inlines them into each caller at its IR level instead of
    compiling, optimising and linking a separate library for each (~0.2-1 s of cold compile time per helper).
    """
    options = dict(JIT_OPTIONS, inline="always" if inline else "never", _nrt=nrt)
    if callable(signature_or_function):
        return numba.njit(**options)(signature_or_function)
    if signature_or_function is None:
        return numba.njit(parallel=parallel, **options)
    return numba.njit(signature_or_function, parallel=parallel, **options)


# -- the cache's freshness ----------------------------------------------------------------------------------------
# numba stamps a cached kernel with a hash of its own source file only, and loads it while that file is unchanged
# (its documentation: "cache invalidation fails to recognize changes in functions defined in a different file"). A
# numbarnn kernel compiles code from several modules into itself (a pass kernel links the cells' epilogues, the
# panel products, the views), so after an edit of, say, _cells.py alone, or an upgrade over an existing cache
# (numba's cache files outlive pip's uninstall), it would load machine code built from the old epilogue. So every
# kernel defined in numbarnn's own modules is stamped with a hash of all of them: a change to any one compiles the
# kernels again. (An edit of a public module, none of which defines kernels, recompiles them too: the price of never
# loading stale code.)
_PACKAGE = Path(__file__).resolve().parent


def kernel_sources_stamp(directory=_PACKAGE):
    """A hash of the contents of every module directly in ``directory`` (numbarnn's package: the modules its kernels
    are compiled from), the same in every process that has the same files."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# Once per process, at the first kernel it loads or saves (~0.5 ms; numba asks at every one): the kernels a process
# compiles come from the modules it imported, whatever the files hold later.
_package_stamp = functools.cache(kernel_sources_stamp)


class _KernelSourcesStamp:
    """Mixin for numba's cache locators: the stamp also covers every numbarnn module (see above), and the locator
    serves only functions defined in numbarnn's own modules (other functions go to numba's locators)."""

    def get_source_stamp(self):
        return super().get_source_stamp(), _package_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != _PACKAGE:
            return None
        return super().from_function(py_func, py_file)


def _locator(name):
    """numba's locator class ``name`` (public in recent numba versions, with a leading underscore in older ones)."""
    return getattr(caching, name, None) or getattr(caching, "_" + name)


# Before numba's own, in numba's order: the NUMBA_CACHE_DIR the user set, else next to the modules, else per user.
# (numba reads the list when a kernel's cache is set up, which every numbarnn module does only after importing this
# one; NUMBA_CACHE_LOCATOR_CLASSES, where set, replaces the list and these with it.)
STAMPED_LOCATORS = tuple(
    type(f"NumbarnnStamped{name}", (_KernelSourcesStamp, _locator(name)), {})
    for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
)
_cache_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
if not any(issubclass(locator, _KernelSourcesStamp) for locator in _cache_impl._locator_classes):
    _cache_impl._locator_classes[:0] = STAMPED_LOCATORS
