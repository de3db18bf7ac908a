"""The kernels' calling convention, in one place: how a batch is split into blocks and packed into rows, and every
buffer the forward and backward kernels read and write, with its shape.

``RNN``, ``RNNCell``, the PyTorch integration and the kernel tests all build their kernel arguments here, so a
change of convention is made once.

Packed rows
    The batch is split into B blocks of sequences that the kernels run independently (one thread each when
    several run a pass: sequences never interact, through time or through layers). Block ``b`` owns packed rows
    ``block_rows[b]:block_rows[b + 1]`` and batch positions ``block_batch[b]:block_batch[b + 1]``; inside a block the
    rows are time-major and its sequences are sorted by decreasing length, so the rows of step ``t`` are
    ``block_rows[b] + step_offsets[b, t]`` onwards and the sequences still running form a prefix of the block.
    ``order[p]`` is the user's batch index at batch position ``p``. With one block and equal lengths the packing is
    ``x.reshape(L * N, H_in)``.
"""

import functools
import math
from collections import namedtuple

import numba
import numpy as np

from ._cells import GATES, SAVED
from ._panels import chunk_elements, empty_panels, panel_shape

Packing = namedtuple(
    "Packing",
    [
        "order",  # (N,) the user's batch index at each packed batch position
        "block_batch",  # (B + 1,) each block's first batch position, then N
        "block_rows",  # (B + 1,) each block's first packed row, then R
        "step_offsets",  # (B, L + 1) each step's first row inside its block, then the block's row count
        # what the Python side asks at every call, computed once (a NumPy scalar read costs ~0.1-0.3 us):
        "rows",  # R, the packed rows
        "blocks",  # B
        "in_order",  # the packed batch order is the user's
    ],
)

# What the kernels need to know of a module: sizes, dtype, activation (RNN), cell ("rnn", "gru" or "lstm") and an
# LSTM's projection size (0: none).
Spec = namedtuple(
    "Spec",
    ["input_size", "hidden_size", "num_layers", "num_directions", "dtype", "relu", "cell", "proj_size"],
    defaults=("rnn", 0),
)


def state_size(spec):
    """P, the width of h (and of each direction's output): the projection's size, or H."""
    return spec.proj_size if spec.proj_size > 0 else spec.hidden_size


ForwardBuffers = namedtuple(
    "ForwardBuffers",
    [
        # first, the arrays an inference call brings or returns, which a CallCache never keeps (CALL_ARRAYS):
        "x_rows",  # (R, H_in) packed input
        "top_out",  # (R, D * P) the last layer's output rows
        "h_n",  # (num_layers * D, N, P) h_0 on entry, h_n on exit, batch in packed order
        "c_n",  # (num_layers * D, N, H) an LSTM's c_0 on entry, c_n on exit; (num_layers * D, 0, H) otherwise
        # then what the pool keeps for the next call of the same shape:
        "dropout_scale",  # (num_layers - 1, R, D * P) inter-layer masks divided by 1 - p, or 0 layers without dropout
        "layer_in",  # (num_layers - 1, R, D * P) dropped-out inputs of layers 1..., or 0 layers without dropout
        "layer_out",  # (K, R, D * P) outputs of all but the last layer; layer l writes layer_out[l % K]
        "h_prev",  # (num_layers, D, R, P) state each step starts from (training), or (num_layers, D, 0, P)
        "z",  # (D, R, G * H) input projections
        "step_tmp",  # (D, N, G * H) the per-step product h_{t-1} W_hh^T
        # the packed weights of each direction of one layer (slot d) or, when the layers are fused (layers_fused),
        # of every layer (slot l * D + d):
        "w_hh_panels",  # (S, *panel_shape(P, G * H)) W_hh^T packed into panels (numbarnn._panels)
        "w_ih_panels",  # (S, size of panel_shape(max(H_in, D * P), G * H)) W_ih^T in panels, flat
        "bias_zeros",  # (G * H,) zeros, read in place of the biases of a module without them
        "c_prev",  # (num_layers, D, R, H) an LSTM's c each step starts from (training), else no rows
        "saved",  # (num_layers, D, R, S * H) the gates the backward reads (training), or (1, D, N, S * H) scratch
        "h_full",  # (num_layers or 1, D, R or N, H) an LSTM projection's o * tanh(c), else (1, D, 0, H)
        "w_hr_panels",  # (S, *panel_shape(H, P)) W_hr^T in panels (projection), else no panels
    ],
)
CALL_ARRAYS = 4  # ForwardBuffers[:CALL_ARRAYS] are x_rows, top_out, h_n, c_n

BackwardBuffers = namedtuple(
    "BackwardBuffers",
    [
        "grad_output",  # (R, D * P) gradient of the top output rows
        "grad_h",  # (num_layers * D, N, P) gradient of h_n on entry, of h_0 on exit, batch in packed order
        "grad_x",  # (R, H_in) gradient of the input rows, or (0, H_in) to skip it
        "grad_layer",  # (R, D * P) gradient flowing between layers
        "dz",  # (D, R, G * H) gradient of the pre-activations (of the recurrent side, for the GRU)
        "grad_input_tmp",  # (D, R * max(H_in, D * P)) per-direction partial input gradient (bidirectional) or (D, 0)
        "bias_sums",  # (B * D, G * H) each task's column sums of a pre-activation gradient (the bias gradients)
        "w_hh_panels",  # (D, *panel_shape(G * H, P)) each direction's W_hh packed into panels (numbarnn._panels)
        "w_ih_panels",  # (D, size of panel_shape(G * H, max(H_in, D * P))) each direction's W_ih in panels, flat
        "grad_partial",  # (B, P_total) each block's parameter gradients, summed into the module's after the pass
        "grad_c",  # (num_layers * D, N, H) an LSTM's gradient of c_n on entry, of c_0 on exit; else no rows
        "dz_in",  # (D, R, G * H) the GRU's input-side pre-activation gradient (n differs), else no rows
        "step_tmp",  # (D, N, H) per-step scratch of the gated cells, else no rows
        "dh_proj",  # (D, R, P) an LSTM projection's output gradient, else no rows
        "w_hr_panels",  # (D, *panel_shape(P, H)) each direction's W_hr in panels (projection), else no panels
        "weight_panels",  # (B * D, chunk_elements(max(H_in, D * P, H if projected))) each task's chunk of packed
        # weight-gradient inputs (b of numbarnn._panels.add_transposed_product: a layer's input, h_prev, h_full)
    ],
)

BACKWARD_GRAD_OUTPUT = BackwardBuffers._fields.index("grad_output")  # the backward reads it only: may be the caller's

StepBuffers = namedtuple(
    "StepBuffers",
    [
        # the arguments of the step kernels (numbarnn._step), in their order:
        "x",  # (N, H_in) the step's input, C-contiguous
        "h",  # (num_layers, N, P) the states before the step on entry, after it on exit
        "c",  # (num_layers, N, H) an LSTM's cell states, likewise; for the other cells ``h`` again (never read)
        "out",  # (N, P) the last layer's new state
        "saved",  # (N, S * H) the last layer's gates, for a cell's backward (training), else None
        "h_full",  # (N, H) an LSTM projection's o * tanh(c) (training with a projection), no rows (training), else None
        # what a training cell's backward also reads (numbarnn._engine.step_record):
        "h_prev",  # (N, P) a one-layer cell's state before the step (training), else None
        "c_prev",  # (N, H) an LSTM cell's c before the step (training), no rows (training, other cells), else None
    ],
)

# Below this many multiply-adds per call a second block costs more (a parallel region, smaller products) than it
# saves; the tiny benchmark configuration (L=100, N=1, H=64) is far below it.
MIN_WORK_PER_BLOCK = 1 << 18


# A pass's first stage, which packs a layer's weights (the backward's also zeroes the blocks' partial gradients), runs
# on the calling thread alone below this many elements: ~0.5 MB of float32 at a few GB/s is about what one meeting of
# the threads costs (~100 us, numbarnn._threads), so below it a meeting costs more than sharing the copying saves.
FIRST_STAGE_ALONE_ELEMENTS = 1 << 17


def first_stage_alone(spec, layer_input_sizes, zeroed=0):
    """Whether :func:`numbarnn._threads.run_stages` runs a pass's first stage on the calling thread alone: it packs
    the weights of both directions of one layer or more (their input widths ``layer_input_sizes``) and zeroes
    ``zeroed`` elements."""
    gate_rows = GATES[spec.cell] * spec.hidden_size
    packed = spec.num_directions * gate_rows * sum(width + state_size(spec) for width in layer_input_sizes)
    return packed + zeroed < FIRST_STAGE_ALONE_ELEMENTS


def layer_input_sizes(spec):
    """Each layer's input width: H_in, then D * H_out."""
    return (spec.input_size,) + (spec.num_directions * state_size(spec),) * (spec.num_layers - 1)


def layers_fused(spec, packing, dropped):
    """Whether a forward pass runs each block through every layer without the threads meeting between the layers
    (:func:`numbarnn._forward.recurrent_forward`): with several layers, several blocks and no dropout (whose masks
    apply to a layer's whole input before its tasks). Its buffers then hold every layer's packed weights at once.

    Why: a block's next layer reads only that block's rows, so nothing but the packed weights, one layer's at a
    time, made the threads meet twice per layer, at ~100 us a meeting (:mod:`numbarnn._threads`)."""
    return dropped == 0 and spec.num_layers > 1 and packing.blocks > 1


def forward_stages(spec, packing, dropped):
    """The forward pass's stage count (:func:`numbarnn._forward.recurrent_forward`): two per layer, or two in all
    when its layers are fused (:func:`layers_fused`)."""
    return 2 if layers_fused(spec, packing, dropped) else 2 * spec.num_layers


@functools.lru_cache(maxsize=1)
def max_blocks():
    """How many blocks a batch is split into at most: numba's thread-pool size, fixed per process.

    Fixed, rather than numba's (thread-local) current thread count, so that a call gives bitwise the same result
    whichever thread makes it and whether its blocks then run in parallel or one after the other.
    """
    return max(1, numba.config.NUMBA_NUM_THREADS)


def block_count(batch, steps, input_size, hidden_size, num_layers, num_directions, gates=1):
    """How many independent blocks to split a batch of ``batch`` sequences into, from the multiply-adds of a
    forward pass (roughly: every layer's recurrent product, plus the first layer's input projection, each of
    ``gates`` * H columns).

    Each (block, direction) is a task, so a bidirectional stack needs only half as many blocks to give every thread
    one; fewer blocks mean more rows per step product (medium_bi on 2 threads, one block instead of two: forward
    88 -> 83 ms, training 260 -> 252 ms).
    """
    work = steps * batch * gates * hidden_size * (input_size + hidden_size * num_layers * num_directions)
    if batch < 2 or work < 2 * MIN_WORK_PER_BLOCK:
        return 1
    return int(min(-(-max_blocks() // num_directions), batch, work // MIN_WORK_PER_BLOCK))


@functools.lru_cache(maxsize=64)
def equal_length_packing(steps, batch, blocks):
    """The packing of a batch whose sequences all have length ``steps`` (cached: the kernels only read it)."""
    block_batch = np.linspace(0, batch, blocks + 1).astype(np.int64)
    sizes = np.diff(block_batch)
    step_offsets = np.arange(steps + 1, dtype=np.int64)[None, :] * sizes[:, None]
    block_rows = np.concatenate([[0], np.cumsum(sizes * steps)]).astype(np.int64)
    order = np.arange(batch, dtype=np.int64)
    return Packing(order, block_batch, block_rows, step_offsets, steps * batch, blocks, True)


def length_packing(lengths, steps, blocks):
    """The packing of a padded batch with the given lengths (each in 1...L, already checked).

    The length-sorted batch is dealt to the blocks in turn (the longest to block 0, the next to block 1, ...), so
    each block gets a similar amount of work and its own sequences stay sorted by decreasing length.
    """
    by_length = np.argsort(-lengths, kind="stable")
    members = [by_length[b::blocks] for b in range(blocks)]
    order = np.concatenate(members).astype(np.int64)
    block_batch = np.concatenate([[0], np.cumsum([m.size for m in members])]).astype(np.int64)
    step_offsets = np.zeros((blocks, steps + 1), np.int64)
    for b, member in enumerate(members):
        running = (lengths[member][None, :] > np.arange(steps)[:, None]).sum(axis=1)
        np.cumsum(running, out=step_offsets[b, 1:])
    block_rows = np.concatenate([[0], np.cumsum(step_offsets[:, -1])]).astype(np.int64)
    in_order = bool((order == np.arange(order.size)).all())
    return Packing(order, block_batch, block_rows, step_offsets, int(block_rows[-1]), blocks, in_order)


def packing_rows(packing):
    return packing.rows


def block_total(packing):
    return packing.blocks


def is_single_block(packing, steps):
    """One block, every sequence of full length: the packed rows are the (L, N, F) array reshaped."""
    return packing.blocks == 1 and packing.order.size * steps == packing.rows


def identity_order(packing):
    """The packed batch order is the user's."""
    return packing.in_order


def partial_blocks(packing):
    """Rows of the per-block partial gradients: none with one block, which accumulates into the gradients."""
    blocks = block_total(packing)
    return blocks if blocks > 1 else 0


def forward_buffers(spec, packing, training, dropped, x_rows=None):
    """The forward pass's buffers for ``spec`` (the module's sizes) and ``packing``.

    ``training`` keeps every layer's output and the state entering each step for the backward pass; inference
    keeps two layer outputs that ping-pong and no states. ``x_rows`` may be the caller's own packed input (read
    in place); ``dropped`` is the number of layers with a dropout mask (0 or num_layers - 1).
    """
    input_size, hidden, layers, directions, dtype = spec[:5]
    rows, batch = packing_rows(packing), packing.order.size
    state = state_size(spec)
    width = directions * state
    gates = GATES[spec.cell] * hidden
    lstm, projected = spec.cell == "lstm", spec.proj_size > 0
    weight_slots = directions * (layers if layers_fused(spec, packing, dropped) else 1)  # packed weights at once
    empty = np.empty
    return ForwardBuffers(
        x_rows=empty((rows, input_size), dtype) if x_rows is None else x_rows,
        dropout_scale=empty((dropped, rows, width), dtype),
        layer_in=empty((dropped, rows, width), dtype),
        layer_out=empty((layers - 1 if training else min(layers - 1, 2), rows, width), dtype),
        h_prev=empty((layers, directions, rows if training else 0, state), dtype),
        z=empty((directions, rows, gates), dtype),
        step_tmp=empty((directions, batch, gates), dtype),
        w_hh_panels=empty_panels((weight_slots, *panel_shape(state, gates, dtype)), dtype),
        w_ih_panels=empty_panels((weight_slots, math.prod(panel_shape(max(input_size, width), gates, dtype))), dtype),
        bias_zeros=np.zeros(gates, dtype),
        top_out=empty((rows, width), dtype),
        h_n=empty((layers * directions, batch, state), dtype),
        c_n=empty((layers * directions, batch if lstm else 0, hidden), dtype),
        c_prev=empty((layers, directions, rows if training and lstm else 0, hidden), dtype),
        saved=empty(
            (layers, directions, rows, SAVED[spec.cell] * hidden)
            if training
            else (1, directions, batch, SAVED[spec.cell] * hidden),
            dtype,
        ),
        h_full=empty(
            (layers if training else 1, directions, rows if training else batch, hidden)
            if projected
            else (1, directions, 0, hidden),
            dtype,
        ),
        w_hr_panels=empty_panels((weight_slots, *panel_shape(hidden, spec.proj_size, dtype)), dtype),
    )


def backward_buffers(spec, packing, parameter_count, need_input_grad):
    """The backward pass's buffers for ``spec`` and ``packing``; ``grad_x`` has no rows unless
    ``need_input_grad``."""
    input_size, hidden, layers, directions, dtype = spec[:5]
    rows, batch, blocks = packing_rows(packing), packing.order.size, block_total(packing)
    state = state_size(spec)
    width = directions * state
    gates = GATES[spec.cell] * hidden
    lstm, gated, projected = spec.cell == "lstm", spec.cell != "rnn", spec.proj_size > 0
    empty = np.empty
    return BackwardBuffers(
        grad_output=empty((rows, width), dtype),
        grad_h=empty((layers * directions, batch, state), dtype),
        grad_x=empty((rows if need_input_grad else 0, input_size), dtype),
        grad_layer=empty((rows, width), dtype),
        dz=empty((directions, rows, gates), dtype),
        grad_input_tmp=empty((directions, rows * max(input_size, width) if directions == 2 else 0), dtype),
        bias_sums=empty((blocks * directions, gates), dtype),
        w_hh_panels=empty_panels((directions, *panel_shape(gates, state, dtype)), dtype),
        w_ih_panels=empty_panels((directions, math.prod(panel_shape(gates, max(input_size, width), dtype))), dtype),
        grad_partial=empty((partial_blocks(packing), parameter_count), dtype),
        grad_c=empty((layers * directions, batch if lstm else 0, hidden), dtype),
        dz_in=empty((directions, rows if spec.cell == "gru" else 0, gates), dtype),
        step_tmp=empty((directions, batch if gated else 0, hidden), dtype),
        dh_proj=empty((directions, rows if projected else 0, state), dtype),
        w_hr_panels=empty_panels((directions, *panel_shape(spec.proj_size, hidden, dtype)), dtype),
        weight_panels=empty_panels(
            (blocks * directions, chunk_elements(max(input_size, width, hidden if projected else 0), dtype)), dtype
        ),
    )


new_tuple = tuple.__new__  # a namedtuple from a tuple without its checks: 0.2 µs less per step call


def step_buffers(spec, x, h, c, keep):
    """The arguments of :func:`numbarnn._step.run_step` for ``spec`` and the step input ``x`` (N, H_in): copies of the
    states ``h`` (num_layers, N, P) and an LSTM's ``c`` (num_layers, N, H) (None: zeros; a one-layer cell's may omit
    the layer axis, and an unbatched one the batch axis too), so the caller's arrays are never written. ``keep`` (a
    one-layer cell's training call, for :func:`numbarnn._engine.step_record`) also keeps the gates, a copy of ``x``
    and the states entering the step; otherwise the kernels' scratch is their own.

    On the path of every ``step`` and cell call, so it allocates only what the call returns or keeps (each NumPy
    allocation from Python costs ~0.4 µs of a ~5 µs call).
    """
    dtype, hidden, layers = spec.dtype, spec.hidden_size, spec.num_layers
    batch = x.shape[0]
    state = state_size(spec)
    h = np.zeros((layers, batch, state), dtype) if h is None else np.array(h, dtype, order="C", ndmin=3)  # a copy
    lstm = spec.cell == "lstm"
    if lstm:
        c = np.zeros((layers, batch, hidden), dtype) if c is None else np.array(c, dtype, order="C", ndmin=3)
    else:
        c = h
    out = np.empty((batch, state), dtype)
    if not keep:
        return new_tuple(StepBuffers, (np.ascontiguousarray(x), h, c, out, None, None, None, None))
    empty = np.empty
    return StepBuffers(
        np.array(x, order="C"),
        h,
        c,
        out,
        empty((batch, SAVED[spec.cell] * hidden), dtype),
        empty((batch if spec.proj_size else 0, hidden), dtype),
        h[0].copy(),
        c[0].copy() if lstm else empty((0, hidden), dtype),
    )
