"""Where each parameter of a stacked recurrent network lives inside one flat buffer.

All parameters of a module live in one contiguous 1-D array (and all gradients in a second one of the same layout), so
the kernels receive one array plus an offset table, ``zero_grad`` is one fill, and optimisers and gradient clipping
work on a single vector. The named arrays users see (``weight_ih_l0`` ...) are views into that buffer.

A cell with G gates (1 for RNN, 3 for GRU, 4 for LSTM) stacks its gates' rows in each weight and bias, in torch's
order: ``weight_ih`` is (G * H, H_in), ``weight_hh`` (G * H, P), the biases (G * H,), where P is the width of the
state h: ``proj_size`` for an LSTM with a projection (which adds ``weight_hr`` (P, H)), else H.
"""

import numpy as np

# Columns of the offset table: one row per (layer, direction), in torch's order l0, l0_reverse, l1, ...
W_IH, W_HH, B_IH, B_HH, W_HR = range(5)
NO_BIAS = -1  # in the B_IH and B_HH columns of a module without biases, and in W_HR without a projection


def layer_input_size(layer, input_size, hidden_size, num_directions):
    """Width of the input that layer ``layer`` reads (``hidden_size``: the width of each direction's output)."""
    return input_size if layer == 0 else num_directions * hidden_size


def build_layout(input_size, hidden_size, num_layers, num_directions, bias, gates=1, proj_size=0):
    """Return ``(entries, offsets, total)`` for a stack of recurrent layers of ``gates`` gates.

    ``entries`` lists ``(name, offset, shape)`` in torch's parameter order; ``offsets`` is the ``(L*D, 5)`` int64
    table the kernels read (``NO_BIAS`` where there is no bias or projection); ``total`` is the length of the flat
    buffer.
    """
    entries = []
    offsets = np.full((num_layers * num_directions, 5), NO_BIAS, dtype=np.int64)
    state = proj_size if proj_size > 0 else hidden_size
    rows = gates * hidden_size
    position = 0
    for layer in range(num_layers):
        width = layer_input_size(layer, input_size, state, num_directions)
        for direction in range(num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            row = layer * num_directions + direction
            shapes = [("weight_ih", W_IH, (rows, width)), ("weight_hh", W_HH, (rows, state))]
            if bias:
                shapes += [("bias_ih", B_IH, (rows,)), ("bias_hh", B_HH, (rows,))]
            if proj_size > 0:
                shapes.append(("weight_hr", W_HR, (proj_size, hidden_size)))
            for stem, column, shape in shapes:
                offsets[row, column] = position
                entries.append((stem + suffix, position, shape))
                position += int(np.prod(shape))
    return entries, offsets, position


def named_views(flat, entries):
    """Views of ``flat`` named as in ``entries``; writing to a view writes to ``flat``."""
    return {name: flat[offset : offset + int(np.prod(shape))].reshape(shape) for name, offset, shape in entries}
