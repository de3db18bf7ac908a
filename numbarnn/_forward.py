"""Forward kernels: a stack of RNN layers, each in one or two directions, over the packed rows of
:mod:`numbarnn._workspace`.

The batch is split into blocks of sequences, and each (block, direction) is an independent *task* within a layer:
its rows' input projection (one product over all its steps), then every time step (``h_{t-1} W_hh^T`` and a fused
bias + activation epilogue); both products run against weights packed once per call (:mod:`numbarnn._panels`).
:func:`rnn_forward` runs the tasks one after the other; :func:`rnn_forward_parallel` runs each layer's tasks on
numba's threads, with single-threaded products inside, so threads meet once per layer, never per step.
"""

from numba import prange

from ._activations import activate
from ._jit import jit
from ._layout import B_HH, B_IH, NO_BIAS, W_HH, W_IH
from ._loops import copy_2d, multiply_2d
from ._panels import pack_panels, panel_matmul, panels_in


@jit(inline=True)
def weight_views(params, offsets, row, input_width, hidden_size):
    """``(w_ih, w_hh)`` of one (layer, direction) row of the offset table, as (H, width) and (H, H) views."""
    h = hidden_size
    o_ih, o_hh = offsets[row, W_IH], offsets[row, W_HH]
    return params[o_ih : o_ih + h * input_width].reshape((h, input_width)), params[o_hh : o_hh + h * h].reshape((h, h))


@jit(inline=True)
def bias_views(params, offsets, row, hidden_size, zeros):
    """``(b_ih, b_hh)`` of one (layer, direction) row; ``zeros`` (H,) stands in for both when there is no bias."""
    if offsets[row, B_IH] == NO_BIAS:
        return zeros, zeros
    o_ih, o_hh = offsets[row, B_IH], offsets[row, B_HH]
    return params[o_ih : o_ih + hidden_size], params[o_hh : o_hh + hidden_size]


@jit(inline=True)
def layer_output(l, num_layers, buffers):
    """Where layer ``l`` writes: ``top_out`` for the last layer, else ``layer_out[l % K]``."""
    if l == num_layers - 1:
        return buffers.top_out
    return buffers.layer_out[l % buffers.layer_out.shape[0]]


@jit(inline=True)
def layer_input(l, buffers):
    """The rows layer ``l`` reads: the packed input, or the previous layer's output (after dropout if any)."""
    if l == 0:
        return buffers.x_rows
    if buffers.dropout_scale.shape[0] > 0:
        return buffers.layer_in[l - 1]
    return buffers.layer_out[(l - 1) % buffers.layer_out.shape[0]]


@jit(inline=True)
def apply_dropout(l, buffers, r0, r1):
    """Rows ``r0:r1`` of layer ``l``'s input: the previous layer's output times the dropout mask (training only)."""
    if l > 0 and buffers.dropout_scale.shape[0] > 0:
        previous = buffers.layer_out[(l - 1) % buffers.layer_out.shape[0]]
        multiply_2d(previous[r0:r1], buffers.dropout_scale[l - 1][r0:r1], buffers.layer_in[l - 1][r0:r1])


@jit(inline=True)
def direction_forward(inputs, w_ih_panels, w_hh_panels, b_ih, b_hh, step_offsets, reverse, relu, z, step_tmp, h,
                      h_prev, out, column):
    """Run one direction of one layer over one block's rows.

    ``z`` receives the input projection; ``w_ih_panels`` and ``w_hh_panels`` hold W_ih.T and W_hh.T packed by
    :func:`numbarnn._panels.pack_panels`; ``h`` (N_b, H) holds h_0 on entry and h_n on exit; ``h_prev``, when it
    has rows, receives the state each step starts from (for the weight gradient); the outputs go to
    ``out[:, column:column + H]``.
    """
    panel_matmul(inputs, w_ih_panels, z)
    hidden = h.shape[1]
    keep_h_prev = h_prev.shape[0] > 0
    steps = step_offsets.size - 1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        r0 = step_offsets[t]
        n = step_offsets[t + 1] - r0
        if keep_h_prev:
            copy_2d(h[:n], h_prev[r0 : r0 + n])
        panel_matmul(h[:n], w_hh_panels, step_tmp[:n])
        for i in range(n):
            for j in range(hidden):
                v = activate((z[r0 + i, j] + b_ih[j]) + (step_tmp[i, j] + b_hh[j]), relu)
                h[i, j] = v
                out[r0 + i, column + j] = v


@jit(inline=True)
def task_forward(l, task, params, offsets, packing, buffers, num_directions, relu):
    """Direction ``task % D`` of layer ``l`` over block ``task // D``: the body both drivers run."""
    b, d = task // num_directions, task % num_directions
    r0, r1 = packing.block_rows[b], packing.block_rows[b + 1]
    n0, n1 = packing.block_batch[b], packing.block_batch[b + 1]
    row = l * num_directions + d
    hidden = buffers.h_n.shape[2]
    inputs = layer_input(l, buffers)
    w_ih, w_hh = weight_views(params, offsets, row, inputs.shape[1], hidden)
    b_ih, b_hh = bias_views(params, offsets, row, hidden, buffers.bias_zeros)
    w_hh_panels = buffers.w_hh_panels[task]
    pack_panels(w_hh.T, w_hh_panels)
    w_ih_panels = panels_in(buffers.w_ih_panels[task], inputs.shape[1], hidden, w_hh_panels.shape[2])
    pack_panels(w_ih.T, w_ih_panels)
    out = layer_output(l, offsets.shape[0] // num_directions, buffers)
    # h_prev has no rows in inference, and slicing keeps it empty
    direction_forward(inputs[r0:r1], w_ih_panels, w_hh_panels, b_ih, b_hh, packing.step_offsets[b], d == 1, relu,
                      buffers.z[d][r0:r1], buffers.step_tmp[d][n0:n1], buffers.h_n[row][n0:n1],
                      buffers.h_prev[l, d][r0:r1], out[r0:r1], d * hidden)


@jit
def rnn_forward(params, offsets, packing, buffers, num_directions, relu):
    """Forward pass of a stacked (bi)directional RNN over packed rows, one task after the other.

    Parameters
    ----------
    params : (P,) flat parameters; ``offsets`` (num_layers * D, 4) locates each one (:mod:`numbarnn._layout`).
    packing : :class:`numbarnn._workspace.Packing` of the batch.
    buffers : :class:`numbarnn._workspace.ForwardBuffers`; ``x_rows``, ``h_n`` (holding h_0) and, with dropout,
        ``dropout_scale`` are read; ``top_out`` and ``h_n`` are the results.
    num_directions : 1 or 2; relu : bool, else tanh.
    """
    num_layers = offsets.shape[0] // num_directions
    tasks = (packing.block_batch.size - 1) * num_directions
    for l in range(num_layers):
        for b in range(packing.block_batch.size - 1):
            apply_dropout(l, buffers, packing.block_rows[b], packing.block_rows[b + 1])
        for task in range(tasks):
            task_forward(l, task, params, offsets, packing, buffers, num_directions, relu)


@jit(parallel=True)
def rnn_forward_parallel(params, offsets, packing, buffers, num_directions, relu):
    """:func:`rnn_forward` with each layer's tasks on numba's threads (call with single-threaded BLAS)."""
    num_layers = offsets.shape[0] // num_directions
    blocks = packing.block_batch.size - 1
    tasks = blocks * num_directions
    for l in range(num_layers):
        if l > 0 and buffers.dropout_scale.shape[0] > 0:
            for b in prange(blocks):
                apply_dropout(l, buffers, packing.block_rows[b], packing.block_rows[b + 1])
        for task in prange(tasks):
            task_forward(l, task, params, offsets, packing, buffers, num_directions, relu)
