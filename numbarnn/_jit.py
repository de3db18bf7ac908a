"""The one place that holds numba's compilation options.

Every kernel in numbarnn is compiled through :func:`jit`, so caching, the error model and the fast-math flags are
decided here and nowhere else.
"""

import numba

# `reassoc` lets LLVM vectorise reductions and `contract` lets it fuse multiply-adds; both change results only at the
# rounding level. `nnan`/`ninf` are deliberately absent: NaN and inf must propagate exactly as they do in PyTorch.
FASTMATH_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})

# numba's default ("python") error model guards every float division with a zero check, which blocks SIMD.
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH_FLAGS))


def jit(signature_or_function=None, *, parallel=False, inline=False):
    """Compile with numbarnn's options; usable as ``@jit``, ``@jit(parallel=True)`` or ``@jit(inline=True)``.

    ``inline=True`` is for small helpers: numba then inlines them into each caller at its IR level instead of
    compiling, optimising and linking a separate library for each (~0.2-1 s of cold compile time per helper).
    """
    options = dict(JIT_OPTIONS, inline="always" if inline else "never")
    if callable(signature_or_function):
        return numba.njit(**options)(signature_or_function)
    if signature_or_function is None:
        return numba.njit(parallel=parallel, **options)
    return numba.njit(signature_or_function, parallel=parallel, **options)
