"""Matrix products used inside the kernels.

Large products go to BLAS through ``np.dot``; for the per-step recurrence of small problems a BLAS call costs about
a microsecond of overhead, more than the arithmetic, so a plain loop (which LLVM vectorises) is used instead.
"""

import numpy as np

from ._jit import jit

# Below this many multiply-adds a hand loop beats a BLAS call's fixed overhead.
_SMALL_PRODUCT = 1 << 17
# Widens to float64 when added to float64, stays float32 with float32: one accumulator type per dtype.
_ZERO = np.float32(0)


@jit
def matmul_transposed_b(a, b, out):
    """``out[:] = a @ b.T`` for C-contiguous ``a`` (M, K), ``b`` (N, K) and ``out`` (M, N)."""
    m, k = a.shape
    n = b.shape[0]
    if m * n * k > _SMALL_PRODUCT:
        np.dot(a, b.T, out)
        return
    for i in range(m):
        for j in range(n):
            acc = _ZERO
            for p in range(k):
                acc += a[i, p] * b[j, p]
            out[i, j] = acc


@jit
def matmul(a, b, out):
    """``out[:] = a @ b`` for C-contiguous ``a`` (M, K), ``b`` (K, N) and ``out`` (M, N)."""
    m, k = a.shape
    n = b.shape[1]
    if m * n * k > _SMALL_PRODUCT:
        np.dot(a, b, out)
        return
    for i in range(m):
        for j in range(n):
            out[i, j] = 0
        for p in range(k):
            a_ip = a[i, p]
            for j in range(n):
                out[i, j] += a_ip * b[p, j]
