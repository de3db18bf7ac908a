"""The matrix product of the per-step recurrence, ``out = a @ b``.

Large products go to BLAS through ``np.dot``. For small ones a BLAS call's fixed overhead is more than the
arithmetic, so a loop in "axpy" form is used instead: each output row accumulates scaled rows of ``b``, four at a
time, along the contiguous output dimension, which LLVM vectorises without horizontal reductions (measured ~2x the
dot-product form at H=64, N=1).
"""

import numpy as np

from ._jit import jit

# Up to this many multiply-adds the loop beats a BLAS call (measured on AVX2 at N=1..8, H=64..128).
SMALL_PRODUCT = 1 << 17
# Typed zero: stays float32 with float32 operands and widens to float64 with float64 ones.
_ZERO = np.float32(0)


@jit(inline=True)
def matmul(a, b, out):
    """``out[:] = a @ b`` for C-contiguous ``a`` (M, K), ``b`` (K, N) and ``out`` (M, N); ``out`` must not overlap
    ``a`` or ``b``."""
    m, k = a.shape
    n = b.shape[1]
    if m * n * k > SMALL_PRODUCT:
        np.dot(a, b, out)
        return
    k4 = k - k % 4
    for i in range(m):
        row, x = out[i], a[i]
        for j in range(n):
            row[j] = _ZERO
        for p in range(0, k4, 4):
            x0, x1, x2, x3 = x[p], x[p + 1], x[p + 2], x[p + 3]
            b0, b1, b2, b3 = b[p], b[p + 1], b[p + 2], b[p + 3]
            for j in range(n):
                row[j] += (x0 * b0[j] + x1 * b1[j]) + (x2 * b2[j] + x3 * b3[j])
        for p in range(k4, k):
            x0, b0 = x[p], b[p]
            for j in range(n):
                row[j] += x0 * b0[j]
