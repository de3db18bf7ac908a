"""Matrix products used inside the kernels.

Large products go to BLAS through ``np.dot``. For the per-step recurrence of small problems a BLAS call costs about a
microsecond of fixed overhead, more than the arithmetic, so a register-blocked loop (2 rows x 4 outputs of dot
products, which LLVM vectorises along the shared dimension) is used instead.
"""

import numpy as np

from ._jit import jit

# Below this many multiply-adds the blocked loop beats a BLAS call (measured on AVX2, see benchmarks/).
SMALL_PRODUCT = 1 << 17
# Typed zero: stays float32 with float32 operands and widens to float64 with float64 ones.
_ZERO = np.float32(0)


@jit
def _dot_rows_2x4(a, b, out, i, j, k):
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = _ZERO
    for p in range(k):
        a0, a1 = a[i, p], a[i + 1, p]
        b0, b1, b2, b3 = b[j, p], b[j + 1, p], b[j + 2, p], b[j + 3, p]
        s00 += a0 * b0
        s01 += a0 * b1
        s02 += a0 * b2
        s03 += a0 * b3
        s10 += a1 * b0
        s11 += a1 * b1
        s12 += a1 * b2
        s13 += a1 * b3
    out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s00, s01, s02, s03
    out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = s10, s11, s12, s13


@jit
def _dot_row_4(a, b, out, i, j, k):
    s0 = s1 = s2 = s3 = _ZERO
    for p in range(k):
        a0 = a[i, p]
        s0 += a0 * b[j, p]
        s1 += a0 * b[j + 1, p]
        s2 += a0 * b[j + 2, p]
        s3 += a0 * b[j + 3, p]
    out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s0, s1, s2, s3


@jit
def _dot_one(a, b, out, i, j, k):
    s = _ZERO
    for p in range(k):
        s += a[i, p] * b[j, p]
    out[i, j] = s


@jit
def matmul_transposed_b(a, b, out):
    """``out[:] = a @ b.T`` for C-contiguous ``a`` (M, K), ``b`` (N, K) and ``out`` (M, N)."""
    m, k = a.shape
    n = b.shape[0]
    if m * n * k > SMALL_PRODUCT:
        np.dot(a, b.T, out)
        return
    n4 = n - n % 4
    for i in range(0, m - 1, 2):
        for j in range(0, n4, 4):
            _dot_rows_2x4(a, b, out, i, j, k)
        for j in range(n4, n):
            _dot_one(a, b, out, i, j, k)
            _dot_one(a, b, out, i + 1, j, k)
    if m % 2 == 1:
        i = m - 1
        for j in range(0, n4, 4):
            _dot_row_4(a, b, out, i, j, k)
        for j in range(n4, n):
            _dot_one(a, b, out, i, j, k)
