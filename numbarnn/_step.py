"""One time step of a stacked unidirectional recurrent network, for streaming inference and the cells: no packing,
no workspace, a handful of array arguments, so that a call costs a few microseconds. The gates are the cell's own
(:mod:`numbarnn._cells`), the same epilogue the sequence kernels run.

:func:`run_step` is the one call site of the kernels; :func:`numbarnn._workspace.step_buffers` builds its arguments.
The kernels allocate their own scratch (NRT allocations cost tens of nanoseconds, a NumPy ``empty`` from Python a few
hundred) and take plain arrays: a namedtuple of arrays costs numba ~0.3 µs per field to type at every call (a
12-field one made a 64-unit step 4x slower than the arithmetic it dispatched), and the cell comes as its code
(:func:`numbarnn._cells.cell_code`), which numba types in C.
"""

import numpy as np

from ._cells import cell_blocks, cell_code, forward_epilogue, marker_of, pack_projection
from ._forward import bias_views, weight_views
from ._jit import jit
from ._layout import NO_BIAS, W_HR
from ._panels import new_panels


@jit(inline=True)
def row_products(a, w, out):
    """``out[:] = a @ w.T`` for a few rows ``a`` (N, K) and weights ``w`` (J, K) as they are stored (no packing).

    Four of w's rows at a time, each of a's elements read once for four sums: one sum at a time, LLVM vectorised each
    K-long sum over 16 x 4 elements, which rows of K = 32 never fill, and the rest ran scalar (the 32 -> 64 RNN cell's
    two products took 0.8 of its 1.0 us step; four at a time, 64 x 32: 266 -> 79 ns, 64 x 64: 364 -> 132-193 ns;
    eight at a time was no faster; Zen 4). Packing the weights for :mod:`numbarnn._panels`' product cost more than
    it saved at these sizes (the whole step 1.0 -> 1.2 us).
    """
    zero = a.dtype.type(0)
    size, count = a.shape[1], w.shape[0]
    whole = count - count % 4
    for i in range(a.shape[0]):
        a_i, out_i = a[i], out[i]
        for j in range(0, whole, 4):
            w_0, w_1, w_2, w_3 = w[j], w[j + 1], w[j + 2], w[j + 3]
            s_0 = s_1 = s_2 = s_3 = zero
            for k in range(size):
                value = a_i[k]
                s_0 += value * w_0[k]
                s_1 += value * w_1[k]
                s_2 += value * w_2[k]
                s_3 += value * w_3[k]
            out_i[j], out_i[j + 1], out_i[j + 2], out_i[j + 3] = s_0, s_1, s_2, s_3
        for j in range(whole, count):
            w_j, s = w[j], zero
            for k in range(size):
                s += a_i[k] * w_j[k]
            out_i[j] = s


@jit(inline=True)
def layers_step(params, offsets, cell, x, h, c, out, saved, h_full):
    """Advance every layer by one step, in place.

    Parameters
    ----------
    params : (P,) flat parameters; ``offsets`` (num_layers, 5) locates each one.
    cell : the cell marker (:mod:`numbarnn._cells`).
    x : (N, H_in) the step's input.
    h : (num_layers, N, H_out) the states before the step on entry, after it on exit.
    c : (num_layers, N, H) an LSTM's cell states, likewise; ``h`` for the other cells (never read).
    out : (N, H_out) the last layer's new state, on exit.
    saved : (N, S * H) the last layer's gates, on exit, for a backward; or None (inference: scratch).
    h_full : (N, H) an LSTM projection's last ``o * tanh(c)``, likewise, or no rows without a projection; or None
        (inference).

    Inference passes None for ``saved`` and ``h_full``: typed ``none``, which numba compiles as its own
    specialisation without the branches below, and costs nothing to pass (an empty array costs a lookup or an
    allocation per call).
    """
    batch, state, hidden = x.shape[0], h.shape[2], c.shape[2]
    gate_blocks, saved_blocks = cell_blocks(cell)
    columns = gate_blocks * hidden
    projected = offsets[0, W_HR] != NO_BIAS
    z = np.empty((batch, columns), x.dtype)
    tmp = np.empty((batch, columns), x.dtype)
    zeros = np.zeros(columns, x.dtype)
    if saved is None:
        gates = np.empty((batch, saved_blocks * hidden), x.dtype)
    else:
        gates = saved
    if h_full is None:
        full = np.empty((batch if projected else 0, hidden), x.dtype)
    else:
        full = h_full
    w_hr_panels = new_panels(hidden, state if projected else 0, x)
    for l in range(offsets.shape[0]):
        inputs = x if l == 0 else h[l - 1]  # layer l - 1 already holds its new state: the input of layer l
        w_ih, w_hh = weight_views(params, offsets, l, columns, inputs.shape[1], state)
        b_ih, b_hh = bias_views(params, offsets, l, columns, zeros)
        row_products(inputs, w_ih, z)
        row_products(h[l], w_hh, tmp)
        pack_projection(cell, params, offsets, l, state, hidden, w_hr_panels, True)
        forward_epilogue(cell, z, tmp, b_ih, b_hh, h[l], c[l], gates, full, 0, w_hr_panels, out, 0)


@jit(nrt=True)  # it allocates its scratch
def stacked_step(params, offsets, cell_code, x, h, c, out, saved, h_full):
    """:func:`layers_step` of the cell ``cell_code`` names (:func:`numbarnn._cells.cell_code`): each cell is its own
    specialisation, compiled only when used."""
    layers_step(params, offsets, marker_of(cell_code), x, h, c, out, saved, h_full)


def run_step(spec, params, offsets, buffers):
    """Advance every layer of a ``spec`` module by one step: ``buffers`` (:class:`numbarnn._workspace.StepBuffers`)
    hold the input and the states on entry, the new states, the last layer's output (and, when kept, its gates) on
    exit."""
    stacked_step(params, offsets, cell_code(spec), *buffers[:6])
