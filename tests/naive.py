"""A plain NumPy reference for the stacked (bi)directional Elman RNN: forward and backpropagation through time.

Written for obviousness, not speed: explicit loops over layers, directions, sequences and time steps, one vector
operation per step. The kernels in :mod:`numbarnn._forward` / :mod:`numbarnn._backward` are compared with it, so it
shares no code with them.

Conventions (time-major, like torch with ``batch_first=False``):

- ``x`` (L, N, H_in); ``h_0`` / ``h_n`` (num_layers * D, N, H) ordered layer 0 forward, layer 0 reverse, ...
- ``params`` maps torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse`` ...) to arrays; no ``bias_*`` entries
  means no bias.
- ``lengths`` (N,) optional: sequence n covers steps ``0 .. lengths[n] - 1``; padded outputs are 0 and padded inputs
  are never read; the reverse direction starts at each sequence's own last step.
- ``dropout_masks`` optional: ``dropout_masks[k - 1]`` (L, N, D * H) multiplies the input of layer k >= 1
  (already scaled by 1 / (1 - p)).
"""

import numpy as np


def activate(pre_activation, nonlinearity):
    if nonlinearity == "tanh":
        return np.tanh(pre_activation)
    return np.where(pre_activation < 0, 0.0, pre_activation)  # keeps NaN, like torch.relu


def activation_backward(grad, output, nonlinearity):
    """The gradient before the activation from the one after it and its output y: grad * (1 - y^2) for tanh; for
    relu grad where y > 0 and 0 elsewhere (a select, as torch's, so a NaN gradient at a clamped unit gives 0)."""
    if nonlinearity == "tanh":
        return grad * (1.0 - output * output)
    return np.where(output <= 0, 0.0, grad)


def parameter_name(stem, layer, direction):
    return f"{stem}_l{layer}" + ("_reverse" if direction == 1 else "")


def _time_steps(length, reverse):
    return range(length - 1, -1, -1) if reverse else range(length)


def _layer_parameters(params, layer, direction, hidden_size):
    w_ih = params[parameter_name("weight_ih", layer, direction)]
    w_hh = params[parameter_name("weight_hh", layer, direction)]
    if parameter_name("bias_ih", layer, direction) in params:
        b_ih = params[parameter_name("bias_ih", layer, direction)]
        b_hh = params[parameter_name("bias_hh", layer, direction)]
    else:
        b_ih = b_hh = np.zeros(hidden_size, w_ih.dtype)
    return w_ih, w_hh, b_ih, b_hh


def rnn_forward(x, h_0, params, num_layers, bidirectional, nonlinearity, lengths=None, dropout_masks=None):
    """Forward pass.

    Returns
    -------
    output : (L, N, D * H)
    h_n : (num_layers * D, N, H)
    cache : dict
        ``layer_inputs[k]`` (L, N, width_k) what layer k read (after dropout), ``layer_outputs[k]`` (L, N, D * H)
        what it wrote; :func:`rnn_backward` needs it.
    """
    steps, batch, _ = x.shape
    directions = 2 if bidirectional else 1
    hidden = h_0.shape[2]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    h_n = np.zeros_like(h_0)
    layer_inputs, layer_outputs = [], []
    inputs = x
    for layer in range(num_layers):
        if layer > 0 and dropout_masks is not None:
            inputs = inputs * dropout_masks[layer - 1]
        layer_inputs.append(inputs)
        outputs = np.zeros((steps, batch, directions * hidden), x.dtype)
        for direction in range(directions):
            w_ih, w_hh, b_ih, b_hh = _layer_parameters(params, layer, direction, hidden)
            row = layer * directions + direction
            columns = slice(direction * hidden, (direction + 1) * hidden)
            for n in range(batch):
                h = h_0[row, n].copy()
                for t in _time_steps(lengths[n], reverse=direction == 1):
                    h = activate(w_ih @ inputs[t, n] + b_ih + w_hh @ h + b_hh, nonlinearity)
                    outputs[t, n, columns] = h
                h_n[row, n] = h
        layer_outputs.append(outputs)
        inputs = outputs
    cache = dict(layer_inputs=layer_inputs, layer_outputs=layer_outputs, h_0=h_0, lengths=lengths)
    return inputs, h_n, cache


def rnn_backward(cache, params, num_layers, bidirectional, nonlinearity, grad_output, grad_h_n, dropout_masks=None):
    """Backpropagation through time for :func:`rnn_forward`.

    Returns
    -------
    grad_x : (L, N, H_in)
    grad_h_0 : (num_layers * D, N, H)
    grads : dict
        Gradient of every entry of ``params``, same names and shapes.
    """
    directions = 2 if bidirectional else 1
    h_0, lengths = cache["h_0"], cache["lengths"]
    hidden = h_0.shape[2]
    batch = h_0.shape[1]
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    grad_h_0 = np.zeros_like(h_0)
    grad_outputs = grad_output
    for layer in range(num_layers - 1, -1, -1):
        inputs = cache["layer_inputs"][layer]
        outputs = cache["layer_outputs"][layer]
        grad_inputs = np.zeros_like(inputs)
        for direction in range(directions):
            w_ih, w_hh, _, _ = _layer_parameters(params, layer, direction, hidden)
            row = layer * directions + direction
            columns = slice(direction * hidden, (direction + 1) * hidden)
            has_bias = parameter_name("bias_ih", layer, direction) in params
            for n in range(batch):
                grad_h = grad_h_n[row, n].copy()  # gradient reaching the state the step being undone produced
                # Undo the steps in the opposite order to the forward pass.
                for t in _time_steps(lengths[n], reverse=direction != 1):
                    y = outputs[t, n, columns]
                    grad_pre = activation_backward(grad_outputs[t, n, columns] + grad_h, y, nonlinearity)
                    previous_step = t + 1 if direction == 1 else t - 1
                    previous_state = (
                        h_0[row, n] if previous_step in (-1, lengths[n]) else outputs[previous_step, n, columns]
                    )
                    grads[parameter_name("weight_ih", layer, direction)] += np.outer(grad_pre, inputs[t, n])
                    grads[parameter_name("weight_hh", layer, direction)] += np.outer(grad_pre, previous_state)
                    if has_bias:
                        grads[parameter_name("bias_ih", layer, direction)] += grad_pre
                        grads[parameter_name("bias_hh", layer, direction)] += grad_pre
                    grad_inputs[t, n] += w_ih.T @ grad_pre
                    grad_h = w_hh.T @ grad_pre
                grad_h_0[row, n] = grad_h
        if layer > 0 and dropout_masks is not None:
            grad_inputs = grad_inputs * dropout_masks[layer - 1]
        grad_outputs = grad_inputs
    return grad_outputs, grad_h_0, grads
