"""The one place that holds numba's compilation options.

Every kernel in numbarnn is compiled through :func:`jit`, so caching, the error model, the fast-math flags and the
reference-counting runtime are decided here and nowhere else.
"""

import numba

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
