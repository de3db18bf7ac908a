"""One time step of a stacked unidirectional RNN, for streaming inference and ``RNNCell``: no packing, no
workspace, a handful of arguments, so that a call costs a few microseconds."""

from ._activations import activate
from ._forward import bias_views, weight_views
from ._jit import jit


@jit
def stacked_step(params, offsets, x, h, relu, zeros, out):
    """Advance every layer by one step, in place.

    Parameters
    ----------
    params : (P,) flat parameters; ``offsets`` (num_layers, 4) locates each one.
    x : (N, H_in) the step's input.
    h : (num_layers, N, H) the states before the step on entry, after it on exit.
    relu : bool, else tanh.
    zeros : (H,) zeros, read in place of the biases of a module without them.
    out : (N, H) scratch for the new state of each layer in turn; holds the last layer's on exit.
    """
    hidden = h.shape[2]
    for l in range(offsets.shape[0]):
        inputs = x if l == 0 else h[l - 1]  # layer l - 1 already holds its new state: the input of layer l
        w_ih, w_hh = weight_views(params, offsets, l, inputs.shape[1], hidden)
        b_ih, b_hh = bias_views(params, offsets, l, hidden, zeros)
        state = h[l]
        for i in range(inputs.shape[0]):
            x_i, h_i = inputs[i], state[i]
            for j in range(hidden):
                w_x, w_h = w_ih[j], w_hh[j]
                projected = x_i[0] * w_x[0]
                for k in range(1, x_i.size):
                    projected += x_i[k] * w_x[k]
                recurrent = h_i[0] * w_h[0]
                for k in range(1, hidden):
                    recurrent += h_i[k] * w_h[k]
                out[i, j] = activate((projected + b_ih[j]) + (recurrent + b_hh[j]), relu)
        for i in range(inputs.shape[0]):
            for j in range(hidden):
                state[i, j] = out[i, j]
