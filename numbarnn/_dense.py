"""The fully connected layer's products, on the panel kernels the recurrence kernels use (:mod:`numbarnn._panels`).

Through numba's ``np.dot`` they called scipy's BLAS, the one BLAS left in numbarnn: with it went scipy as a
dependency, the BLAS thread pool numbarnn had to hold to one thread beside its own threads, and the 0.16 s a warm
start spent importing ``scipy.linalg`` when numba looked for that BLAS. They call the panel kernels from Python, with
the argument types the recurrence kernels compile them for, so a Linear beside a recurrent layer compiles nothing of
its own. Compiled kernels wrapping the same calls linked the panel kernels in again: the demo's first update (an RNN
and a Linear head, cold cache, Zen 4) compiled for 17.3 s that way, 15.6 s with ``np.dot``, 14.7 s now. A kernel
call from Python costs a few microseconds, nothing beside the layer's own work.
"""

import numpy as np

from ._panels import empty_panels, pack_panels, panel_matmul, panel_matmul_transposed, panel_shape


def _packed(source):
    """``source`` (K, N) packed into panels of its own (each call's: calls from several threads share nothing)."""
    panels = empty_panels(panel_shape(*source.shape, source.dtype), source.dtype)
    pack_panels(source, panels, 0, -1)  # the run-time (first, last) the recurrence kernels compile pack_panels with
    return panels


def dense_forward(x_rows, weight, bias, out):
    """``out[:] = x_rows @ weight.T + bias`` for C-contiguous (M, H_in) rows; ``bias`` is (H_out,) or empty for
    none."""
    panel_matmul(x_rows, _packed(weight.T), out)
    if bias.size > 0:
        np.add(out, bias, out=out)


def dense_backward(x_rows, grad_rows, weight, grad_weight, grad_bias, grad_input):
    """Add ``grad_rows.T @ x_rows`` to ``grad_weight`` (C-contiguous, (H_out, H_in)) and the column sums of
    ``grad_rows`` to ``grad_bias`` (when not empty); write ``grad_rows @ weight`` to ``grad_input``."""
    panel_matmul_transposed(grad_rows, _packed(x_rows), grad_weight)
    if grad_bias.size > 0:
        np.add(grad_bias, grad_rows.sum(axis=0), out=grad_bias)
    panel_matmul(grad_rows, _packed(weight), grad_input)
