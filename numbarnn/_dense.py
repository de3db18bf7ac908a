"""Kernels of the fully connected layer.

They exist so that ``Linear`` multiplies through the same BLAS as the RNN kernels (scipy's, which numba's ``np.dot``
calls): numpy's wheel bundles a second OpenBLAS with its own thread pool, and two pools spinning on the same cores
made a training step 4x slower when the machine was busy.
"""

import numpy as np

from ._jit import jit


@jit(nrt=True)  # numba's np.dot needs its runtime
def dense_forward(x_rows, weight, bias, out):
    """``out[:] = x_rows @ weight.T + bias`` for (M, H_in) rows; ``bias`` is (H_out,) or empty for none."""
    np.dot(x_rows, weight.T, out)
    if bias.size > 0:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += bias[j]


@jit(nrt=True)
def dense_backward(x_rows, grad_rows, weight, grad_weight, grad_bias, weight_step, grad_input):
    """Add ``grad_rows.T @ x_rows`` to ``grad_weight`` (through the workspace ``weight_step``) and the column sums of
    ``grad_rows`` to ``grad_bias`` (when not empty); write ``grad_rows @ weight`` to ``grad_input``."""
    np.dot(grad_rows.T, x_rows, weight_step)
    for i in range(weight_step.shape[0]):
        for j in range(weight_step.shape[1]):
            grad_weight[i, j] += weight_step[i, j]
    if grad_bias.size > 0:
        for i in range(grad_rows.shape[0]):
            for j in range(grad_rows.shape[1]):
                grad_bias[j] += grad_rows[i, j]
    np.dot(grad_rows, weight, grad_input)
