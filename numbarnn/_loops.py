"""Element-wise helpers written as explicit loops.

numba compiles slice assignment (``a[i:j] = b``) and in-place array ufuncs (``a += b``) through its generic
broadcasting machinery, which costs several seconds of compile time per call site (measured 4-10 s) for no speed
benefit over a loop that LLVM vectorises. Kernels use these instead.
"""

from ._jit import jit


@jit(inline=True)
def copy_2d(source, target):
    """``target[:] = source`` for 2-D arrays of equal shape (any memory layout)."""
    for i in range(source.shape[0]):
        for j in range(source.shape[1]):
            target[i, j] = source[i, j]


@jit(inline=True)
def add_2d(a, b, out):
    """``out[:] = a + b``."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] + b[i, j]


@jit(inline=True)
def multiply_2d(a, b, out):
    """``out[:] = a * b``."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] * b[i, j]


@jit
def sum_of_squares(vector):
    """Sum of the squares of a 1-D array, accumulated in float64 (not through BLAS: numpy's dot would wake the
    thread pool of numpy's own OpenBLAS, a second pool beside the one the kernels use)."""
    total = 0.0
    for i in range(vector.size):
        total += float(vector[i]) * float(vector[i])
    return total
