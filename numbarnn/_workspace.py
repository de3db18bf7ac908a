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
from ._jit import jit
from ._panels import CACHE_LINE_BYTES, chunk_elements, empty_panels, panel_shape
from ._views import pool_views

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
        # the one allocation the fields from dropout_scale to w_hr_panels are views of, and where each lies
        "pool",  # 1-D
        "pool_layout",  # (fields, 1 + MAX_DIMS) int64: each field's offset in the pool, then its shape (see pool)
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
        "pool",  # the allocation the fields from grad_h to weight_panels are views of, as for ForwardBuffers
        "pool_layout",
    ],
)


# -- the kernels' arguments ------------------------------------------------------------------------------------------
# numba types and unboxes each array argument of a call, ~45-70 ns apiece (Zen 4), and a training step passed ~60:
# a forward's packing, its 17 buffers and the backward's 16. So the buffers a pass keeps for itself are views of one
# allocation (the pool), and a kernel receives that pool and a table of where each view lies, and takes the views
# again inside (forward_views, backward_views). Only the arrays a call brings or returns are passed on their own (an
# inference call may read the caller's input in place and hand its output and h_n back as they are; a backward may
# read the caller's grad_output). A kernel call on one step of one sequence (RNN(32, 64), Zen 4, alternating
# processes), numba's dispatch included: forward 2.8 -> 2.3 us, backward 3.7 -> 2.8 us; cold compile within the
# noise (first inference +-0.3 s, first training step 0-0.4 s more, of 6.3 and 7.9 s).
MAX_DIMS = 4  # of any pooled buffer
FORWARD_POOLED = ForwardBuffers._fields[CALL_ARRAYS:-2]
BACKWARD_POOLED = BackwardBuffers._fields[1:-2]  # all but grad_output, which the backward only reads (the caller's)
# each pooled buffer's dimensions, in field order (what forward_views and backward_views take them as)
FORWARD_POOLED_DIMS = (3, 3, 3, 4, 3, 3, 4, 2, 1, 4, 4, 4, 4)
BACKWARD_POOLED_DIMS = (3, 2, 2, 3, 2, 2, 4, 2, 2, 3, 3, 3, 3, 4, 2)


def pool(shapes, dtype):
    """Uninitialised C-contiguous arrays of ``shapes`` (one per pooled field, ``len(shape)`` its dimensions), each a
    view of one 1-D allocation and starting on a cache line (as :func:`numbarnn._panels.empty_panels` starts panels);
    returns ``(arrays, pool, layout)``, ``layout[i]`` being array ``i``'s offset in the pool (in elements) and its
    shape, padded with ones to MAX_DIMS."""
    dtype = np.dtype(dtype)
    line = CACHE_LINE_BYTES // dtype.itemsize
    layout = np.ones((len(shapes), 1 + MAX_DIMS), np.int64)
    offset = 0
    for i, shape in enumerate(shapes):
        layout[i, 0] = offset
        layout[i, 1 : 1 + len(shape)] = shape
        offset += -(-math.prod(shape) // line) * line
    flat = empty_panels((offset,), dtype)
    starts = layout[:, 0].tolist()
    arrays = [
        flat[start : start + math.prod(shape)].reshape(shape) for start, shape in zip(starts, shapes, strict=True)
    ]
    return arrays, flat, layout


def _pooled_buffers(tuple_type, call_arrays, pooled_names, dims, shapes, dtype):
    """``tuple_type`` of the ``call_arrays`` and, for the fields ``pooled_names``, views of one pool shaped by
    ``shapes`` (a dict by name)."""
    ordered = [shapes[name] for name in pooled_names]
    assert tuple(len(shape) for shape in ordered) == dims, "the pooled shapes must match the kernels' views of them"
    arrays, flat, layout = pool(ordered, dtype)
    return tuple_type(*call_arrays, *arrays, flat, layout)


def forward_arguments(buffers):
    """What the forward kernel takes for ``buffers`` (:func:`forward_views` undoes it)."""
    return (*buffers[:CALL_ARRAYS], buffers.pool, buffers.pool_layout)


def backward_arguments(buffers, grad_output=None):
    """What the backward kernel takes for ``buffers`` (:func:`backward_views` undoes it), with ``grad_output`` in
    place of the buffers' own when given."""
    return (buffers.grad_output if grad_output is None else grad_output, buffers.pool, buffers.pool_layout)


_forward_pool_views = pool_views(FORWARD_POOLED_DIMS)
_backward_pool_views = pool_views(BACKWARD_POOLED_DIMS)


@jit(inline=True)
def forward_views(arguments):
    """The :class:`ForwardBuffers` of the forward kernel's ``arguments`` (:func:`forward_arguments`), inside a
    kernel."""
    x_rows, top_out, h_n, c_n, flat, layout = arguments
    return ForwardBuffers(*((x_rows, top_out, h_n, c_n) + _forward_pool_views(flat, layout) + (flat, layout)))


@jit(inline=True)
def backward_views(arguments):
    """The :class:`BackwardBuffers` of the backward kernel's ``arguments`` (:func:`backward_arguments`), inside a
    kernel."""
    grad_output, flat, layout = arguments
    return BackwardBuffers(*((grad_output,) + _backward_pool_views(flat, layout) + (flat, layout)))


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


def forward_buffers(spec, packing, training, dropped, x_rows=None, fused=None):
    """The forward pass's buffers for ``spec`` (the module's sizes) and ``packing``.

    ``training`` keeps every layer's output and the state entering each step for the backward pass; inference
    keeps two layer outputs that ping-pong and no states. ``x_rows`` may be the caller's own packed input (read
    in place); ``dropped`` is the number of layers with a dropout mask (0 or num_layers - 1). ``fused`` (None: as
    :func:`layers_fused` decides) gives the packed weights room for every layer, or for one at a time.
    """
    input_size, hidden, layers, directions, dtype = spec[:5]
    rows, batch = packing_rows(packing), packing.order.size
    state = state_size(spec)
    width = directions * state
    gates = GATES[spec.cell] * hidden
    lstm, projected = spec.cell == "lstm", spec.proj_size > 0
    if fused is None:
        fused = layers_fused(spec, packing, dropped)
    weight_slots = directions * (layers if fused else 1)  # packed weights at once
    saved = SAVED[spec.cell] * hidden
    empty = np.empty
    call_arrays = (
        empty((rows, input_size), dtype) if x_rows is None else x_rows,
        empty((rows, width), dtype),  # top_out
        empty((layers * directions, batch, state), dtype),  # h_n
        empty((layers * directions, batch if lstm else 0, hidden), dtype),  # c_n
    )
    shapes = dict(
        dropout_scale=(dropped, rows, width),
        layer_in=(dropped, rows, width),
        layer_out=(layers - 1 if training else min(layers - 1, 2), rows, width),
        h_prev=(layers, directions, rows if training else 0, state),
        z=(directions, rows, gates),
        step_tmp=(directions, batch, gates),
        w_hh_panels=(weight_slots, *panel_shape(state, gates, dtype)),
        w_ih_panels=(weight_slots, math.prod(panel_shape(max(input_size, width), gates, dtype))),
        bias_zeros=(gates,),
        c_prev=(layers, directions, rows if training and lstm else 0, hidden),
        saved=(layers, directions, rows, saved) if training else (1, directions, batch, saved),
        h_full=(
            (layers if training else 1, directions, rows if training else batch, hidden)
            if projected
            else (1, directions, 0, hidden)
        ),
        w_hr_panels=(weight_slots, *panel_shape(hidden, spec.proj_size, dtype)),
    )
    buffers = _pooled_buffers(ForwardBuffers, call_arrays, FORWARD_POOLED, FORWARD_POOLED_DIMS, shapes, dtype)
    buffers.bias_zeros.fill(0)
    return buffers


def backward_buffers(spec, packing, parameter_count, need_input_grad):
    """The backward pass's buffers for ``spec`` and ``packing``; ``grad_x`` has no rows unless
    ``need_input_grad``."""
    input_size, hidden, layers, directions, dtype = spec[:5]
    rows, batch, blocks = packing_rows(packing), packing.order.size, block_total(packing)
    state = state_size(spec)
    width = directions * state
    gates = GATES[spec.cell] * hidden
    lstm, gated, projected = spec.cell == "lstm", spec.cell != "rnn", spec.proj_size > 0
    shapes = dict(
        grad_h=(layers * directions, batch, state),
        grad_x=(rows if need_input_grad else 0, input_size),
        grad_layer=(rows, width),
        dz=(directions, rows, gates),
        grad_input_tmp=(directions, rows * max(input_size, width) if directions == 2 else 0),
        bias_sums=(blocks * directions, gates),
        w_hh_panels=(directions, *panel_shape(gates, state, dtype)),
        w_ih_panels=(directions, math.prod(panel_shape(gates, max(input_size, width), dtype))),
        grad_partial=(partial_blocks(packing), parameter_count),
        grad_c=(layers * directions, batch if lstm else 0, hidden),
        dz_in=(directions, rows if spec.cell == "gru" else 0, gates),
        step_tmp=(directions, batch if gated else 0, hidden),
        dh_proj=(directions, rows if projected else 0, state),
        w_hr_panels=(directions, *panel_shape(spec.proj_size, hidden, dtype)),
        weight_panels=(
            blocks * directions,
            chunk_elements(max(input_size, width, hidden if projected else 0), dtype),
        ),
    )
    grad_output = np.empty((rows, width), dtype)
    return _pooled_buffers(BackwardBuffers, (grad_output,), BACKWARD_POOLED, BACKWARD_POOLED_DIMS, shapes, dtype)


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
