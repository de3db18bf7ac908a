"""Forward kernels: a stack of recurrent layers (RNN, GRU or LSTM), each in one or two directions, over the packed
rows of :mod:`numbarnn._workspace`.

The batch is split into blocks of sequences, and each (block, direction) is an independent *task* within a layer:
its rows' input projection (one product over all its steps, G * H columns), then every time step (``h_{t-1} W_hh^T``
and the cell's fused epilogue, :mod:`numbarnn._cells`); the products run against weights packed once per call
(:mod:`numbarnn._panels`). :func:`recurrent_forward` is the one driver: it runs a range of a pass's stages (each
layer's preparation, then its tasks) as one of several parts, so the same compiled kernel runs a pass on one thread
or on several (:func:`numbarnn._threads.run_stages`), with single-threaded products inside. The cell code argument
selects the cell at typing time: each cell is its own compiled (and cached) specialisation.
"""

import numpy as np
from numba import prange

from ._cells import forward_epilogue, marker_of, pack_projection, save_state
from ._jit import jit
from ._layout import B_HH, B_IH, NO_BIAS, W_HH, W_IH
from ._loops import multiply_2d
from ._panels import pack_panels_part, panel_matmul, panels_in
from ._views import row_span, span_view
from ._workspace import Packing, forward_views


@jit(inline=True)
def weight_views(params, offsets, row, gate_rows, input_width, state_width):
    """``(w_ih, w_hh)`` of one (layer, direction) row of the offset table, as (G * H, width) and (G * H, P) views."""
    o_ih, o_hh = offsets[row, W_IH], offsets[row, W_HH]
    return (
        span_view(params, o_ih, (gate_rows, input_width)),
        span_view(params, o_hh, (gate_rows, state_width)),
    )


@jit(inline=True)
def bias_views(params, offsets, row, gate_rows, zeros):
    """``(b_ih, b_hh)`` of one (layer, direction) row; ``zeros`` (G * H,) stands in for both when there is no
    bias."""
    if offsets[row, B_IH] == NO_BIAS:
        return zeros, zeros
    o_ih, o_hh = offsets[row, B_IH], offsets[row, B_HH]
    return row_span(params, o_ih, o_ih + gate_rows), row_span(params, o_hh, o_hh + gate_rows)


@jit(inline=True)
def task_rows(per_layer, l, d, training, r0, r1, n0, n1):
    """A task's rows of a buffer the forward keeps per layer in training, ``(num_layers, D, R, F)``, or uses as
    per-step scratch in inference, ``(1, D, N, F)``."""
    if training and per_layer.shape[0] > l:
        return row_span(per_layer[l, d], r0, r1)
    return row_span(per_layer[0, d], n0, n1)


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
        multiply_2d(
            row_span(previous, r0, r1),
            row_span(buffers.dropout_scale[l - 1], r0, r1),
            row_span(buffers.layer_in[l - 1], r0, r1),
        )


@jit(inline=True)
def direction_forward(
    cell,
    inputs,
    w_ih_panels,
    w_hh_panels,
    w_hr_panels,
    b_ih,
    b_hh,
    step_offsets,
    reverse,
    z,
    step_tmp,
    h,
    c,
    h_prev,
    c_prev,
    saved,
    h_full,
    out,
    column,
):
    """Run one direction of one layer over one block's rows.

    ``z`` receives the input projection; ``w_ih_panels`` and ``w_hh_panels`` hold W_ih.T and W_hh.T packed by
    :func:`numbarnn._panels.pack_panels`; ``h`` (N_b, P) holds h_0 on entry and h_n on exit (an LSTM's ``c``
    (N_b, H) likewise c_0 and c_n); ``h_prev`` (and ``c_prev``), when they have rows, receive the state each step
    starts from (for the weight gradient), ``saved`` what the cell's backward reads (in training its rows are the
    block's rows, else a step's scratch); the outputs go to ``out[:, column:column + P]``.
    """
    panel_matmul(inputs, w_ih_panels, z)
    training = h_prev.shape[0] > 0
    steps = step_offsets.size - 1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        r0 = step_offsets[t]
        n = step_offsets[t + 1] - r0
        # the state of the step's n sequences (the longest first) and the scratch of their recurrent product
        h_t, c_t, recurrent = row_span(h, 0, n), row_span(c, 0, n), row_span(step_tmp, 0, n)
        if training:
            save_state(cell, h_t, c_t, row_span(h_prev, r0, r0 + n), row_span(c_prev, r0, r0 + n))
        panel_matmul(h_t, w_hh_panels, recurrent)
        # in training the saved gates are kept at the step's rows, in inference the scratch's first rows serve
        forward_epilogue(
            cell,
            row_span(z, r0, r0 + n),
            recurrent,
            b_ih,
            b_hh,
            h_t,
            c_t,
            saved,
            h_full,
            r0 if training else 0,
            w_hr_panels,
            row_span(out, r0, r0 + n),
            column,
        )


@jit(inline=True)
def direction_panels(l, d, buffers):
    """Direction ``d`` of layer ``l``'s packed ``(w_ih_panels, w_hh_panels, w_hr_panels)``: one copy per direction
    (of this layer, or of every layer when the layers are fused), which every block task of it reads."""
    directions, gates, width = buffers.z.shape[0], buffers.z.shape[2], layer_input(l, buffers).shape[1]
    slot = l % (buffers.w_hh_panels.shape[0] // directions) * directions + d
    w_hh_panels = buffers.w_hh_panels[slot]
    w_ih_panels = panels_in(buffers.w_ih_panels[slot], width, gates, w_hh_panels.shape[2])
    return w_ih_panels, w_hh_panels, buffers.w_hr_panels[slot]


@jit(inline=True)
def pack_direction_part(l, d, part, parts, params, offsets, buffers, num_directions, cell):
    """Pack part ``part`` of ``parts`` of direction ``d`` of layer ``l``'s weights into its panels: the parts split
    the panels of W_ih^T and W_hh^T into nearly equal ranges (part 0 also packs an LSTM's projection)."""
    row = l * num_directions + d
    state, gates = buffers.h_n.shape[2], buffers.z.shape[2]
    inputs = layer_input(l, buffers)
    w_ih, w_hh = weight_views(params, offsets, row, gates, inputs.shape[1], state)
    w_ih_panels, w_hh_panels, w_hr_panels = direction_panels(l, d, buffers)
    pack_panels_part(w_ih.T, w_ih_panels, part, parts)
    pack_panels_part(w_hh.T, w_hh_panels, part, parts)
    if part == 0:
        pack_projection(cell, params, offsets, row, state, buffers.c_n.shape[2], w_hr_panels, True)


@jit(inline=True)
def task_forward(l, task, params, offsets, packing, buffers, num_directions, cell):
    """Direction ``task % D`` of layer ``l`` over block ``task // D``, once the direction's weights are packed
    (:func:`pack_direction_part`)."""
    b, d = task // num_directions, task % num_directions
    r0, r1 = packing.block_rows[b], packing.block_rows[b + 1]
    n0, n1 = packing.block_batch[b], packing.block_batch[b + 1]
    row = l * num_directions + d
    state, gates = buffers.h_n.shape[2], buffers.z.shape[2]
    training = buffers.h_prev.shape[2] > 0
    inputs = layer_input(l, buffers)
    b_ih, b_hh = bias_views(params, offsets, row, gates, buffers.bias_zeros)
    w_ih_panels, w_hh_panels, w_hr_panels = direction_panels(l, d, buffers)
    out = layer_output(l, offsets.shape[0] // num_directions, buffers)
    # h_prev and c_prev have no rows in inference, and slicing keeps them empty
    direction_forward(
        cell,
        row_span(inputs, r0, r1),
        w_ih_panels,
        w_hh_panels,
        w_hr_panels,
        b_ih,
        b_hh,
        packing.step_offsets[b],
        d == 1,
        row_span(buffers.z[d], r0, r1),
        row_span(buffers.step_tmp[d], n0, n1),
        row_span(buffers.h_n[row], n0, n1),
        row_span(buffers.c_n[row], n0, n1),
        row_span(buffers.h_prev[l, d], r0, r1),
        row_span(buffers.c_prev[l, d], r0, r1),
        task_rows(buffers.saved, l, d, training, r0, r1, n0, n1),
        task_rows(buffers.h_full, l, d, training, r0, r1, n0, n1),
        row_span(out, r0, r1),
        d * state,
    )


@jit(inline=True)
def prepare_layer(l, part, parts, params, offsets, packing, buffers, num_directions, cell):
    """Part ``part`` of ``parts`` of what layer ``l``'s tasks need first: its input's dropout (training, over
    blocks) and each direction's packed weights (one copy per direction, which every block task of that direction
    reads; its panels split between the parts)."""
    blocks = packing.block_batch.size - 1
    tasks = blocks * num_directions
    for b in range(part, blocks, parts):
        apply_dropout(l, buffers, packing.block_rows[b], packing.block_rows[b + 1])
    for task in range(part, tasks, parts):
        pack_direction_part(
            l, task % num_directions, task // num_directions, blocks, params, offsets, buffers, num_directions, cell
        )


@jit
def recurrent_forward(
    first_stage, end_stage, part, parts, params, offsets, packing_fields, buffer_fields, num_directions, cell_code
):
    """Forward pass of a stacked (bi)directional recurrent network over packed rows: stages ``first_stage`` to
    ``end_stage - 1`` of it, part ``part`` of ``parts``.

    Stage ``2 l`` prepares layer ``l`` (:func:`prepare_layer`), stage ``2 l + 1`` runs its tasks (block ``b`` and
    direction ``d`` are task ``b * D + d``; part ``p`` runs tasks ``p, p + parts, ...``). One call with every stage
    and one part is the whole pass; :func:`numbarnn._threads.run_stages` runs each stage's parts on as many threads,
    which meet between stages (twice per layer), never per step. When the buffers hold every layer's packed weights
    (:func:`numbarnn._workspace.layers_fused`), there are two stages: stage 0 prepares every layer, stage 1 runs
    the blocks (part ``p`` runs blocks ``p, p + parts, ...``), each through every layer, both directions of a layer
    before the next layer, which reads only that block's rows. Each task computes the same values whichever part
    runs it and in either order, so the result is bitwise the same for any ``parts``, fused or not.

    Parameters
    ----------
    first_stage, end_stage : the stages to run, ``0 <= first_stage < end_stage <= 2 * num_layers``.
    part, parts : ``0 <= part < parts``.
    params : (P,) flat parameters; ``offsets`` (num_layers * D, 5) locates each one (:mod:`numbarnn._layout`).
    packing_fields : the fields of the batch's :class:`numbarnn._workspace.Packing`, as a plain tuple.
    buffer_fields : :func:`numbarnn._workspace.forward_arguments` of the
        :class:`~numbarnn._workspace.ForwardBuffers`; ``x_rows``, ``h_n`` (holding h_0), an LSTM's ``c_n`` (holding
        c_0) and, with dropout, ``dropout_scale`` are read; ``top_out``, ``h_n`` and ``c_n`` are the results.
    num_directions : 1 or 2; cell_code : the cell's code (:func:`numbarnn._cells.cell_code`).

    Plain tuples, named again here: numba types a namedtuple argument field by field in Python at every call, a
    plain tuple in C (a forward's 21 arrays: ~5 us as namedtuples, ~3 us as tuples); and the buffers the pass keeps
    for itself come as one pool (:mod:`numbarnn._workspace`).
    """
    packing, buffers = Packing(*packing_fields), forward_views(buffer_fields)
    cell = marker_of(cell_code)
    blocks, layers = packing.block_batch.size - 1, offsets.shape[0] // num_directions
    fused = buffers.w_hh_panels.shape[0] > num_directions
    # a unit of a stage's work: a task (one layer), or a block of the fused layers (every layer, both directions)
    units, tasks_per_unit = (blocks, num_directions) if fused else (blocks * num_directions, 1)
    for stage in range(first_stage, end_stage):
        first_layer, end_layer = (0, layers) if fused else (stage // 2, stage // 2 + 1)
        if stage % 2 == 0:
            for l in range(first_layer, end_layer):
                prepare_layer(l, part, parts, params, offsets, packing, buffers, num_directions, cell)
        else:
            for unit in range(part, units, parts):
                for l in range(first_layer, end_layer):
                    for k in range(tasks_per_unit):
                        task_forward(
                            l, unit * tasks_per_unit + k, params, offsets, packing, buffers, num_directions, cell
                        )


@jit(parallel=True)
def recurrent_forward_parts(
    first_stage, end_stage, parts, params, offsets, packing_fields, buffer_fields, num_directions, cell_code
):
    """:func:`recurrent_forward`'s stages ``first_stage`` to ``end_stage - 1``, each as ``parts`` parts on numba's
    threads: one parallel region per stage. Nothing but the loops: every part is a call of the one compiled stage
    kernel, which runs on one thread as it is."""
    for stage in range(first_stage, end_stage):
        for part in prange(parts):
            # a prange index is unsigned: as int64, the call's signature is the one-thread call's
            recurrent_forward(
                stage,
                stage + 1,
                np.int64(part),
                parts,
                params,
                offsets,
                packing_fields,
                buffer_fields,
                num_directions,
                cell_code,
            )
