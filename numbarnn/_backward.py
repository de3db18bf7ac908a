"""Backpropagation through time for the stacked recurrent networks of :mod:`numbarnn._forward`.

The reverse-time loop carries only the pre-activation gradient ``dz_t`` (the cell's derivative,
:func:`numbarnn._cells.backward_epilogue`: for the RNN ``(dy_t + dh_t) * act'(y_t)``) and ``dh_{t-1} = dz_t @ W_hh``
(plus the GRU's direct path, and an LSTM's c gradient). Everything
that does not depend on the previous step — the weight gradients, both bias gradients and the input gradient — is
computed after the loop with large GEMMs and reductions over the task's rows. As in the forward pass each (block,
direction) of a layer is a task: each task owns its rows of every workspace, each block accumulates its own partial
parameter gradients (summed after the pass, as stumpy sums per-thread accumulators), and the two directions' partial
input gradients are added once both are done.
"""

import numpy as np
from numba import prange

from ._cells import backward_epilogue, input_side, marker_of, pack_projection, projection_gradient
from ._forward import layer_input, layer_output, weight_views
from ._jit import jit
from ._layout import B_HH, B_IH, NO_BIAS, W_HH, W_HR, W_IH
from ._loops import add_2d, multiply_2d
from ._panels import add_transposed_product, pack_panels_part, panel_matmul, panels_in
from ._views import row_span, span_view
from ._workspace import Packing, backward_views, forward_views


@jit(inline=True)
def direction_backward(
    cell,
    grad_y,
    y,
    saved,
    h_prev,
    c_prev,
    w_hh_panels,
    w_hr_panels,
    step_offsets,
    reverse,
    column,
    carry,
    carry_c,
    dz,
    dz_in,
    tmp,
    dh_proj,
):
    """Reverse-time loop of one direction over one block's rows.

    ``grad_y``/``y`` (R_b, D * P) are the gradient and value of the layer output (this direction's columns start at
    ``column``); ``saved``, ``h_prev`` and ``c_prev`` are what the forward kept of these rows; ``carry`` (N_b, P)
    holds the gradient of h_n on entry and of h_0 on exit (an LSTM's ``carry_c`` (N_b, H) likewise for c);
    ``dz`` (R_b, G * H) receives the gradient of the pre-activations (the GRU's input side goes to ``dz_in``, an
    LSTM projection's output gradient to ``dh_proj``); ``w_hh_panels`` holds W_hh packed by
    :func:`numbarnn._panels.pack_panels`; ``tmp`` (N_b, H) is the cell's scratch.
    """
    steps = step_offsets.size - 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        r0 = step_offsets[t]
        n = step_offsets[t + 1] - r0
        r1 = r0 + n
        backward_epilogue(
            cell,
            row_span(grad_y, r0, r1),
            row_span(y, r0, r1),
            column,
            row_span(carry, 0, n),
            row_span(carry_c, 0, n),
            row_span(saved, r0, r1),
            row_span(h_prev, r0, r1),
            row_span(c_prev, r0, r1),
            row_span(dz, r0, r1),
            row_span(dz_in, r0, r1),
            row_span(tmp, 0, n),
            row_span(dh_proj, r0, r1),
            w_hh_panels,
            w_hr_panels,
        )


@jit(inline=True)
def column_sums_into(rows, sums):
    for j in range(sums.size):
        sums[j] = 0
    for r in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            sums[j] += rows[r, j]


@jit(inline=True)
def accumulate_bias_gradient(dz_input, dz, separate, grads, offsets, row, column_sums):
    """``b_ih`` receives the column sums of the input side's pre-activation gradient ``dz_input``, ``b_hh`` those
    of the recurrent side's ``dz``; they are the same array unless ``separate`` (the GRU's n gate)."""
    if offsets[row, B_IH] == NO_BIAS:
        return
    o_ih, o_hh = offsets[row, B_IH], offsets[row, B_HH]
    column_sums_into(dz_input, column_sums)
    for j in range(column_sums.size):
        grads[o_ih + j] += column_sums[j]
    if separate:
        column_sums_into(dz, column_sums)
    for j in range(column_sums.size):
        grads[o_hh + j] += column_sums[j]


@jit(inline=True)
def block_gradients(b, grads, buffers):
    """Where block ``b`` accumulates its parameter gradients: the caller's ``grads`` when there is one block, else
    the block's own partial buffer (summed by :func:`between_layers`)."""
    if buffers.grad_partial.shape[0] == 0:
        return grads
    return buffers.grad_partial[b]


@jit(inline=True)
def input_gradient_target(l, d, num_directions, buffers, r0, r1, width):
    """Where direction ``d`` of layer ``l`` writes its part of the input gradient of rows ``r0:r1``.

    With one direction that is the input gradient itself (``grad_x``, or ``grad_layer`` for the layer below, whose
    rows the task has finished reading by then). With two, each writes its own partial buffer, since one direction
    may still read ``grad_layer`` while the other is done; :func:`finish_block_gradient` adds them.
    """
    if num_directions == 2:
        return span_view(buffers.grad_input_tmp[d], r0 * width, (r1 - r0, width))
    return row_span(buffers.grad_x, r0, r1) if l == 0 else row_span(buffers.grad_layer, r0, r1)


@jit(inline=True)
def task_backward(l, task, params, offsets, packing, forward, buffers, num_directions, cell, grads):
    """Every gradient of direction ``task % D`` of layer ``l`` over block ``task // D``. The reverse-time loop first,
    then the weight and bias gradients and this direction's part of the input gradient, each over all the block's
    rows at once."""
    b, d = task // num_directions, task % num_directions
    r0, r1 = packing.block_rows[b], packing.block_rows[b + 1]
    n0, n1 = packing.block_batch[b], packing.block_batch[b + 1]
    num_layers = offsets.shape[0] // num_directions
    row = l * num_directions + d
    state, gates = buffers.grad_h.shape[2], buffers.dz.shape[2]
    inputs = row_span(layer_input(l, forward), r0, r1)
    width = inputs.shape[1]
    grad_y = buffers.grad_output if l == num_layers - 1 else buffers.grad_layer
    dz = row_span(buffers.dz[d], r0, r1)
    dz_input = input_side(cell, dz, row_span(buffers.dz_in[d], r0, r1))  # the GRU's differs in the n gate
    w_hh_panels, w_hr_panels = buffers.w_hh_panels[d], buffers.w_hr_panels[d]
    dh_proj = row_span(buffers.dh_proj[d], r0, r1)
    h_prev = row_span(forward.h_prev[l, d], r0, r1)
    direction_backward(
        cell,
        row_span(grad_y, r0, r1),
        row_span(layer_output(l, num_layers, forward), r0, r1),
        row_span(forward.saved[l, d], r0, r1),
        h_prev,
        row_span(forward.c_prev[l, d], r0, r1),
        w_hh_panels,
        w_hr_panels,
        packing.step_offsets[b],
        d == 1,
        d * state,
        row_span(buffers.grad_h[row], n0, n1),
        row_span(buffers.grad_c[row], n0, n1),
        dz,
        dz_input,
        row_span(buffers.step_tmp[d], n0, n1),
        dh_proj,
    )
    target = block_gradients(b, grads, buffers)
    chunk = buffers.weight_panels[task]
    add_transposed_product(dz, h_prev, target, offsets[row, W_HH], chunk)
    add_transposed_product(dz_input, inputs, target, offsets[row, W_IH], chunk)
    projection_gradient(
        cell,
        dh_proj,
        row_span(forward.h_full[min(l, forward.h_full.shape[0] - 1), d], r0, r1),
        target,
        offsets[row, W_HR],
        chunk,
    )
    accumulate_bias_gradient(dz_input, dz, buffers.dz_in.shape[1] > 0, target, offsets, row, buffers.bias_sums[task])
    if l > 0 or buffers.grad_x.shape[0] > 0:
        w_ih_panels = panels_in(buffers.w_ih_panels[d], gates, width, w_hh_panels.shape[2])
        panel_matmul(dz_input, w_ih_panels, input_gradient_target(l, d, num_directions, buffers, r0, r1, width))


@jit(inline=True)
def pack_direction_part(l, d, part, parts, params, offsets, forward, buffers, num_directions, cell):
    """Pack part ``part`` of ``parts`` of direction ``d`` of layer ``l``'s W_hh (and W_ih when the input gradient is
    needed) into its panels: one copy per direction, which every block task of that direction reads (part 0 also
    packs an LSTM's projection)."""
    row = l * num_directions + d
    hidden, state, gates = buffers.grad_c.shape[2], buffers.grad_h.shape[2], buffers.dz.shape[2]
    width = layer_input(l, forward).shape[1]
    w_ih, w_hh = weight_views(params, offsets, row, gates, width, state)
    w_hh_panels = buffers.w_hh_panels[d]
    pack_panels_part(w_hh, w_hh_panels, part, parts)
    if l > 0 or buffers.grad_x.shape[0] > 0:
        w_ih_panels = panels_in(buffers.w_ih_panels[d], gates, width, w_hh_panels.shape[2])
        pack_panels_part(w_ih, w_ih_panels, part, parts)
    if part == 0:
        pack_projection(cell, params, offsets, row, state, hidden, buffers.w_hr_panels[d], False)


@jit(inline=True)
def finish_block_gradient(l, b, packing, forward, buffers, num_directions):
    """Layer ``l``'s input gradient over block ``b``'s rows: the two directions' partials added (bidirectional),
    then the dropout mask applied (it scaled the forward input)."""
    if l == 0 and buffers.grad_x.shape[0] == 0:
        return
    r0, r1 = packing.block_rows[b], packing.block_rows[b + 1]
    destination = row_span(buffers.grad_x, r0, r1) if l == 0 else row_span(buffers.grad_layer, r0, r1)
    if num_directions == 2:
        width = layer_input(l, forward).shape[1]
        partials = buffers.grad_input_tmp
        add_2d(
            span_view(partials[0], r0 * width, (r1 - r0, width)),
            span_view(partials[1], r0 * width, (r1 - r0, width)),
            destination,
        )
    if l > 0 and forward.dropout_scale.shape[0] > 0:
        multiply_2d(destination, row_span(forward.dropout_scale[l - 1], r0, r1), destination)


@jit(inline=True)
def zero_partial_gradients(b, buffers):
    if buffers.grad_partial.shape[0] > 0:
        partial = buffers.grad_partial[b]
        for k in range(partial.size):
            partial[k] = 0


@jit(inline=True)
def between_layers(above, part, parts, params, offsets, packing, forward, buffers, num_directions, cell, grads):
    """Part ``part`` of ``parts`` of the work between layer ``above``'s tasks and the next layer down's: layer
    ``above``'s input gradient finished (before the top layer, ``above == num_layers``: the blocks' partial
    gradients zeroed), then the layer below's weights packed (one copy per direction, which every block task of that
    direction reads; its panels split between the parts) or, after the first layer, the blocks' partial parameter
    gradients added into ``grads`` (each element summing the blocks in order, whichever part adds it).

    Each piece has one call site: numba inlines a helper at each site, and each copy costs compile time."""
    num_layers = offsets.shape[0] // num_directions
    blocks = packing.block_batch.size - 1
    for b in range(part, blocks, parts):
        if above == num_layers:
            zero_partial_gradients(b, buffers)
        else:
            finish_block_gradient(above, b, packing, forward, buffers, num_directions)
    if above > 0:
        for task in range(part, blocks * num_directions, parts):
            pack_direction_part(
                above - 1,
                task % num_directions,
                task // num_directions,
                blocks,
                params,
                offsets,
                forward,
                buffers,
                num_directions,
                cell,
            )
        return
    partial = buffers.grad_partial
    k0, k1 = grads.size * part // parts, grads.size * (part + 1) // parts
    for b in range(partial.shape[0]):
        for k in range(k0, k1):
            grads[k] += partial[b, k]


@jit
def recurrent_backward(
    first_stage,
    end_stage,
    part,
    parts,
    params,
    offsets,
    packing_fields,
    forward_fields,
    buffer_fields,
    num_directions,
    cell_code,
    grads,
):
    """Backward pass matching :func:`numbarnn._forward.recurrent_forward` run in training mode: stages
    ``first_stage`` to ``end_stage - 1`` of it, part ``part`` of ``parts``, as the forward runs its stages.

    The layers run from the top: stage ``2 k`` is the work between layer ``num_layers - k`` and the layer below
    (:func:`between_layers`), stage ``2 k + 1`` runs layer ``num_layers - 1 - k``'s tasks, and the last stage,
    ``2 * num_layers``, finishes the pass: threads meet twice per layer and once more.

    Parameters
    ----------
    first_stage, end_stage : the stages to run, ``0 <= first_stage < end_stage <= 2 * num_layers + 1``.
    part, parts : ``0 <= part < parts``.
    params, offsets, packing_fields, num_directions, cell_code
        As given to the training forward pass; ``forward_fields`` are its buffers, as the forward takes them
        (:func:`numbarnn._workspace.forward_arguments`).
    buffer_fields : :func:`numbarnn._workspace.backward_arguments` of the
        :class:`~numbarnn._workspace.BackwardBuffers`; ``grad_output`` and ``grad_h`` (holding the gradient of h_n)
        are read; ``grad_x`` (when it has rows) and ``grad_h`` (the gradient of h_0) are the results.
    grads : (P,) flat parameter gradients, accumulated into.
    """
    packing, forward = Packing(*packing_fields), forward_views(forward_fields)
    buffers = backward_views(buffer_fields)
    cell = marker_of(cell_code)
    num_layers = offsets.shape[0] // num_directions
    tasks = (packing.block_batch.size - 1) * num_directions
    for stage in range(first_stage, end_stage):
        if stage % 2 == 0:
            above = num_layers - stage // 2
            between_layers(above, part, parts, params, offsets, packing, forward, buffers, num_directions, cell, grads)
        else:
            l = num_layers - 1 - stage // 2
            for task in range(part, tasks, parts):
                task_backward(l, task, params, offsets, packing, forward, buffers, num_directions, cell, grads)


@jit(parallel=True)
def recurrent_backward_parts(
    first_stage,
    end_stage,
    parts,
    params,
    offsets,
    packing_fields,
    forward_fields,
    buffer_fields,
    num_directions,
    cell_code,
    grads,
):
    """:func:`recurrent_backward`'s stages ``first_stage`` to ``end_stage - 1``, each as ``parts`` parts on numba's
    threads, as :func:`numbarnn._forward.recurrent_forward_parts` runs the forward's."""
    for stage in range(first_stage, end_stage):
        for part in prange(parts):
            recurrent_backward(
                stage,
                stage + 1,
                np.int64(part),
                parts,
                params,
                offsets,
                packing_fields,
                forward_fields,
                buffer_fields,
                num_directions,
                cell_code,
                grads,
            )
