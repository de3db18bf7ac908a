"""Forward kernels: a stack of RNN layers, each in one or two directions, over packed time-major rows.

Rows are *packed*: the rows of time step ``t`` are ``step_offsets[t]:step_offsets[t + 1]``, and the batch is sorted
by decreasing length, so the sequences still running at step ``t`` are always a prefix of the batch. With equal
lengths the packing is simply ``x.reshape(L * N, H_in)``.

Two drivers share every piece: :func:`rnn_forward` runs the directions one after the other (all threading comes from
BLAS), :func:`rnn_forward_parallel` runs the two directions of a bidirectional layer on two threads (BLAS must then be
single-threaded, which the caller arranges).
"""

import numpy as np
from numba import prange

from ._activations import activate
from ._jit import jit
from ._layout import B_HH, B_IH, NO_BIAS, W_HH, W_IH
from ._loops import copy_2d, copy_3d, copy_transposed, multiply_2d
from ._matmul import matmul


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
def layer_output(l, num_layers, layer_out, top_out):
    """Where layer ``l`` writes: ``top_out`` for the last layer, else ``layer_out[l % B]``."""
    if l == num_layers - 1:
        return top_out
    return layer_out[l % layer_out.shape[0]]


@jit(inline=True)
def layer_input(l, x, dropout_scale, layer_in, layer_out):
    """The rows layer ``l`` reads: the packed input, or the previous layer's output (after dropout if any)."""
    if l == 0:
        return x
    if dropout_scale.shape[0] > 0:
        return layer_in[l - 1]
    return layer_out[(l - 1) % layer_out.shape[0]]


@jit(inline=True)
def prepare_layer_input(l, x, dropout_scale, layer_in, layer_out):
    """Apply the dropout mask to the previous layer's output (training only) and return the rows layer ``l`` reads."""
    if l > 0 and dropout_scale.shape[0] > 0:
        multiply_2d(layer_out[(l - 1) % layer_out.shape[0]], dropout_scale[l - 1], layer_in[l - 1])
    return layer_input(l, x, dropout_scale, layer_in, layer_out)


@jit(inline=True)
def direction_forward(inputs, w_ih, w_hh_transposed, b_ih, b_hh, step_offsets, reverse, relu, z, step_tmp, h,
                      h_prev, out, column):
    """Run one direction of one layer.

    ``z`` (R, H) receives the input projection; ``w_hh_transposed`` is a C-contiguous copy of W_hh.T; ``h`` (N, H)
    holds h_0 on entry and h_n on exit; ``h_prev`` (R, H), when it has rows, receives the state each step starts from
    (for the weight gradient); the outputs go to ``out[:, column:column + H]``.
    """
    np.dot(inputs, w_ih.T, z)
    hidden = w_hh_transposed.shape[0]
    keep_h_prev = h_prev.shape[0] > 0
    steps = step_offsets.size - 1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        r0 = step_offsets[t]
        n = step_offsets[t + 1] - r0
        if keep_h_prev:
            copy_2d(h[:n], h_prev[r0 : r0 + n])
        matmul(h[:n], w_hh_transposed, step_tmp[:n])
        for i in range(n):
            for j in range(hidden):
                v = activate((z[r0 + i, j] + b_ih[j]) + (step_tmp[i, j] + b_hh[j]), relu)
                h[i, j] = v
                out[r0 + i, column + j] = v


@jit(inline=True)
def layer_direction_forward(l, d, inputs, params, offsets, step_offsets, num_directions, relu, h_prev, z, step_tmp,
                            w_hh_transposed, bias_zeros, out, h_n):
    """Direction ``d`` of layer ``l``: the body both drivers run, serially or one direction per thread."""
    row = l * num_directions + d
    hidden = h_n.shape[2]
    w_ih, w_hh = weight_views(params, offsets, row, inputs.shape[1], hidden)
    b_ih, b_hh = bias_views(params, offsets, row, hidden, bias_zeros)
    copy_transposed(w_hh, w_hh_transposed[d])
    direction_forward(inputs, w_ih, w_hh_transposed[d], b_ih, b_hh, step_offsets, d == 1, relu, z[d], step_tmp[d],
                      h_n[row], h_prev[l, d], out, d * hidden)


@jit
def rnn_forward(x, h_0, params, offsets, step_offsets, num_directions, relu, dropout_scale, layer_in, layer_out,
                h_prev, z, step_tmp, w_hh_transposed, bias_zeros, top_out, h_n):
    """Forward pass of a stacked (bi)directional RNN over packed rows, one direction after the other.

    Parameters
    ----------
    x : (R, H_in) packed input rows.
    h_0 : (num_layers * D, N, H) initial states, batch sorted by decreasing length (may be ``h_n`` itself).
    params : (P,) flat parameters; ``offsets`` (num_layers * D, 4) locates each one.
    step_offsets : (L + 1,) int64, first row of each time step.
    dropout_scale : (num_layers - 1, R, D * H) mask already divided by 1 - p, or 0 layers for no dropout;
        ``layer_in`` (same shape) receives the dropped-out inputs of layers 1...
    layer_out : (B, R, D * H) outputs of all but the last layer; layer ``l`` writes ``layer_out[l % B]``
        (B = num_layers - 1 keeps every layer for the backward pass; 2 or fewer ping-pong during inference).
    h_prev : (num_layers, D, R, H) states each step starts from, or (num_layers, D, 0, H) to keep none.
    z : (D, R, H), step_tmp : (D, N, H), w_hh_transposed : (D, H, H) workspaces.
    bias_zeros : (H,) zeros, read in place of the biases of a module without them.
    top_out : (R, D * H) output of the last layer (output).
    h_n : (num_layers * D, N, H) final states (output).
    """
    num_layers = offsets.shape[0] // num_directions
    copy_3d(h_0, h_n)
    for l in range(num_layers):
        inputs = prepare_layer_input(l, x, dropout_scale, layer_in, layer_out)
        out = layer_output(l, num_layers, layer_out, top_out)
        for d in range(num_directions):
            layer_direction_forward(l, d, inputs, params, offsets, step_offsets, num_directions, relu, h_prev, z,
                                    step_tmp, w_hh_transposed, bias_zeros, out, h_n)


@jit(parallel=True)
def rnn_forward_parallel(x, h_0, params, offsets, step_offsets, num_directions, relu, dropout_scale, layer_in,
                         layer_out, h_prev, z, step_tmp, w_hh_transposed, bias_zeros, top_out, h_n):
    """:func:`rnn_forward` with the directions of each layer on separate threads (call with single-threaded BLAS)."""
    num_layers = offsets.shape[0] // num_directions
    copy_3d(h_0, h_n)
    for l in range(num_layers):
        inputs = prepare_layer_input(l, x, dropout_scale, layer_in, layer_out)
        out = layer_output(l, num_layers, layer_out, top_out)
        for d in prange(num_directions):
            layer_direction_forward(l, d, inputs, params, offsets, step_offsets, num_directions, relu, h_prev, z,
                                    step_tmp, w_hh_transposed, bias_zeros, out, h_n)
