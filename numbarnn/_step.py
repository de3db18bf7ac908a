"""One time step of a stacked unidirectional recurrent network, for streaming inference and the cells: no packing,
no workspace, a handful of arguments, so that a call costs a few microseconds. Its arguments are built by
:func:`numbarnn._workspace.step_buffers`; the gates are the cell's own (:mod:`numbarnn._cells`), the same epilogue
the sequence kernels run."""

import numpy as np

from ._cells import RnnCell, forward_epilogue
from ._forward import bias_views, projection_view, weight_views
from ._jit import jit
from ._layout import NO_BIAS, W_HR
from ._panels import pack_panels, panel_shape
from ._workspace import StepBuffers


@jit
def cell_step(params, offsets, cell, buffers):
    """Advance every layer by one step, in place.

    Parameters
    ----------
    params : (P,) flat parameters; ``offsets`` (num_layers, 5) locates each one.
    cell : the cell marker (:mod:`numbarnn._cells`).
    buffers : :class:`numbarnn._workspace.StepBuffers`; ``x``, ``h`` (and an LSTM's ``c``) are read, ``h``, ``c``,
        ``out`` (the last layer's new state) and ``saved`` (the last layer's gates) are the results.
    """
    x, h, c, z, tmp = buffers.x, buffers.h, buffers.c, buffers.z, buffers.tmp
    hidden, state, gates = c.shape[2], h.shape[2], z.shape[1]
    for l in range(offsets.shape[0]):
        inputs = x if l == 0 else h[l - 1]  # layer l - 1 already holds its new state: the input of layer l
        w_ih, w_hh = weight_views(params, offsets, l, gates, inputs.shape[1], state)
        b_ih, b_hh = bias_views(params, offsets, l, gates, buffers.zeros)
        for i in range(inputs.shape[0]):
            x_i, h_i = inputs[i], h[l, i]
            for j in range(gates):
                w_x, w_h = w_ih[j], w_hh[j]
                projected = x_i[0] * w_x[0]
                for k in range(1, x_i.size):
                    projected += x_i[k] * w_x[k]
                recurrent = h_i[0] * w_h[0]
                for k in range(1, state):
                    recurrent += h_i[k] * w_h[k]
                z[i, j] = projected
                tmp[i, j] = recurrent
        if offsets[l, W_HR] != NO_BIAS:
            pack_panels(projection_view(params, offsets, l, state, hidden).T, buffers.w_hr_panels)
        forward_epilogue(cell, z, tmp, b_ih, b_hh, h[l], c[l], buffers.saved, buffers.h_full, buffers.w_hr_panels,
                         buffers.out, 0)


def stacked_step(params, offsets, x, h, relu, zeros, out):
    """An Elman RNN's step (the interface :mod:`numbarnn.torch` calls): advances ``h`` (num_layers, N, H) in place
    from the C-contiguous input ``x`` (N, H_in) and leaves the last layer's new state in ``out`` (N, H)."""
    batch, hidden = out.shape
    dtype = out.dtype
    empty = np.empty
    buffers = StepBuffers(x=x, h=h, c=empty((h.shape[0], 0, hidden), dtype), z=empty((batch, hidden), dtype),
                          tmp=empty((batch, hidden), dtype), saved=empty((batch, 0), dtype),
                          h_full=empty((0, hidden), dtype), w_hr_panels=empty(panel_shape(hidden, 0, dtype), dtype),
                          zeros=zeros, out=out, h_prev=empty((0, hidden), dtype), c_prev=empty((0, hidden), dtype))
    cell_step(params, offsets, RnnCell(bool(relu)), buffers)
