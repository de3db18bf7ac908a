"""Backpropagation through time for the stacked RNN of :mod:`numbarnn._forward`.

The reverse-time loop carries only ``dz_t = (dy_t + dh_t) * act'(y_t)`` and ``dh_{t-1} = dz_t @ W_hh``. Everything
that does not depend on the previous step — the weight gradients, both bias gradients and the input gradient — is
computed after the loop with large GEMMs and reductions over all rows. As in the forward pass, one driver runs the
directions in turn and one runs them on two threads; each direction owns its slice of every workspace and of the
gradient buffer, and the two partial input gradients are added after the parallel loop.
"""

import numpy as np
from numba import prange

from ._activations import activation_slope
from ._forward import layer_input, layer_output, weight_views
from ._jit import jit
from ._layout import B_HH, B_IH, NO_BIAS, W_HH, W_IH
from ._loops import add_2d, add_into_flat, copy_3d, multiply_2d
from ._matmul import matmul


@jit(inline=True)
def direction_backward(grad_y, y, w_hh, step_offsets, reverse, relu, column, carry, dz):
    """Reverse-time loop of one direction.

    ``grad_y``/``y`` (R, D * H) are the gradient and value of the layer output (this direction's columns start at
    ``column``); ``carry`` (N, H) holds the gradient of h_n on entry and of h_0 on exit; ``dz`` (R, H) receives the
    gradient of the pre-activations.
    """
    hidden = w_hh.shape[0]
    steps = step_offsets.size - 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        r0 = step_offsets[t]
        n = step_offsets[t + 1] - r0
        for i in range(n):
            for j in range(hidden):
                r = r0 + i
                dz[r, j] = (grad_y[r, column + j] + carry[i, j]) * activation_slope(y[r, column + j], relu)
        matmul(dz[r0 : r0 + n], w_hh, carry[:n])


@jit(inline=True)
def accumulate_weight_gradient(dz, inputs, grads, offset, product):
    """``grads[offset:...] += dz.T @ inputs`` through the (H, width) workspace ``product``."""
    np.dot(dz.T, inputs, product)
    add_into_flat(grads, offset, product)


@jit(inline=True)
def accumulate_bias_gradient(dz, grads, offsets, row, column_sums):
    """Both bias gradients receive the column sums of ``dz`` (the biases enter the pre-activation identically)."""
    if offsets[row, B_IH] == NO_BIAS:
        return
    column_sums[:] = 0
    for r in range(dz.shape[0]):
        for j in range(dz.shape[1]):
            column_sums[j] += dz[r, j]
    o_ih, o_hh = offsets[row, B_IH], offsets[row, B_HH]
    for j in range(column_sums.size):
        grads[o_ih + j] += column_sums[j]
        grads[o_hh + j] += column_sums[j]


@jit(inline=True)
def input_gradient_target(l, d, num_directions, grad_x, grad_layer, grad_input_tmp, rows, width):
    """Where direction ``d`` of layer ``l`` writes its part of the input gradient.

    With one direction that is the input gradient itself (``grad_x``, or ``grad_layer`` for the layer below, which
    the direction has finished reading by then). With two, each writes its own partial buffer, since one direction
    may still read ``grad_layer`` while the other is done; :func:`finish_layer_gradient` adds them.
    """
    if num_directions == 2:
        return grad_input_tmp[d, : rows * width].reshape((rows, width))
    return grad_x if l == 0 else grad_layer


@jit(inline=True)
def finish_layer_gradient(l, num_directions, dropout_scale, grad_x, grad_layer, grad_input_tmp, rows, width):
    if l == 0 and grad_x.shape[0] == 0:
        return
    destination = grad_x if l == 0 else grad_layer
    if num_directions == 2:
        partial_0 = grad_input_tmp[0, : rows * width].reshape((rows, width))
        partial_1 = grad_input_tmp[1, : rows * width].reshape((rows, width))
        add_2d(partial_0, partial_1, destination)
    if l > 0 and dropout_scale.shape[0] > 0:
        multiply_2d(destination, dropout_scale[l - 1], destination)


@jit(inline=True)
def layer_direction_backward(l, d, inputs, y, grad_y, params, offsets, step_offsets, num_directions, relu, h_prev,
                             grads, grad_x, grad_h_0, grad_layer, dz, grad_input_tmp, weight_tmp):
    """Every gradient of direction ``d`` of layer ``l``: the body both drivers run, serially or one direction per
    thread. The reverse-time loop first, then the weight and bias gradients and this direction's part of the input
    gradient, each over all rows at once."""
    row = l * num_directions + d
    hidden = grad_h_0.shape[2]
    rows, width = inputs.shape
    w_ih, w_hh = weight_views(params, offsets, row, width, hidden)
    scratch = weight_tmp[d]
    direction_backward(grad_y, y, w_hh, step_offsets, d == 1, relu, d * hidden, grad_h_0[row], dz[d])
    accumulate_weight_gradient(dz[d], h_prev[l, d], grads, offsets[row, W_HH],
                               scratch[: hidden * hidden].reshape((hidden, hidden)))
    accumulate_weight_gradient(dz[d], inputs, grads, offsets[row, W_IH],
                               scratch[: hidden * width].reshape((hidden, width)))
    accumulate_bias_gradient(dz[d], grads, offsets, row, scratch[:hidden])
    if l > 0 or grad_x.shape[0] > 0:
        destination = input_gradient_target(l, d, num_directions, grad_x, grad_layer, grad_input_tmp, rows, width)
        np.dot(dz[d], w_ih, destination)


@jit
def rnn_backward(x, params, offsets, step_offsets, num_directions, relu, dropout_scale, layer_in, layer_out, h_prev,
                 top_out, grad_output, grad_h_n, grads, grad_x, grad_h_0, grad_layer, dz, grad_input_tmp, weight_tmp):
    """Backward pass matching :func:`numbarnn._forward.rnn_forward` run with every layer kept.

    Parameters
    ----------
    x, params, offsets, step_offsets, num_directions, relu, dropout_scale, layer_in, layer_out, h_prev, top_out
        As given to (and filled by) the training forward pass (``layer_out`` holding all num_layers - 1 layers).
    grad_output : (R, D * H) gradient of the top layer's output rows.
    grad_h_n : (num_layers * D, N, H) gradient of the final states.
    grads : (P,) flat parameter gradients, accumulated into.
    grad_x : (R, H_in) gradient of the input rows (output), or (0, H_in) to skip computing it.
    grad_h_0 : (num_layers * D, N, H) (output).
    grad_layer : (R, D * H), dz : (D, R, H), grad_input_tmp : (D, R * max(H_in, D * H)) (bidirectional; (D, 0)
    otherwise) and weight_tmp : (D, H * max(H_in, D * H, H)) workspaces.
    """
    rows = step_offsets[-1]
    num_layers = offsets.shape[0] // num_directions
    copy_3d(grad_h_n, grad_h_0)
    for l in range(num_layers - 1, -1, -1):
        inputs = layer_input(l, x, dropout_scale, layer_in, layer_out)
        y = layer_output(l, num_layers, layer_out, top_out)
        grad_y = grad_output if l == num_layers - 1 else grad_layer
        width = inputs.shape[1]
        for d in range(num_directions):
            layer_direction_backward(l, d, inputs, y, grad_y, params, offsets, step_offsets, num_directions, relu,
                                     h_prev, grads, grad_x, grad_h_0, grad_layer, dz, grad_input_tmp, weight_tmp)
        finish_layer_gradient(l, num_directions, dropout_scale, grad_x, grad_layer, grad_input_tmp, rows, width)


@jit(parallel=True)
def rnn_backward_parallel(x, params, offsets, step_offsets, num_directions, relu, dropout_scale, layer_in, layer_out,
                          h_prev, top_out, grad_output, grad_h_n, grads, grad_x, grad_h_0, grad_layer, dz,
                          grad_input_tmp, weight_tmp):
    """:func:`rnn_backward` with the directions of each layer on separate threads (call with single-threaded BLAS)."""
    rows = step_offsets[-1]
    num_layers = offsets.shape[0] // num_directions
    copy_3d(grad_h_n, grad_h_0)
    for l in range(num_layers - 1, -1, -1):
        inputs = layer_input(l, x, dropout_scale, layer_in, layer_out)
        y = layer_output(l, num_layers, layer_out, top_out)
        grad_y = grad_output if l == num_layers - 1 else grad_layer
        width = inputs.shape[1]
        for d in prange(num_directions):
            layer_direction_backward(l, d, inputs, y, grad_y, params, offsets, step_offsets, num_directions, relu,
                                     h_prev, grads, grad_x, grad_h_0, grad_layer, dz, grad_input_tmp, weight_tmp)
        finish_layer_gradient(l, num_directions, dropout_scale, grad_x, grad_layer, grad_input_tmp, rows, width)
