"""One forward and one backward pass of a stacked recurrent network (RNN, GRU or LSTM, ``Spec.cell``) on
already-validated arrays: packing, buffers, the kernel call and unpacking. The modules (which own their parameters)
and the PyTorch integration (whose parameters are torch's) all drive the kernels through here.

An LSTM's state is torch's tuple: ``h_0`` is ``(h_0, c_0)`` (either may be None for zeros), ``h_n`` is returned as
``(h_n, c_n)``, and the backward's state gradients likewise.

A training forward returns a :class:`Record` that owns everything its backward reads, so several forwards may be
waiting for their backwards at once; a consumed record can hand its buffers to the next forward of the same shape.
"""

import threading

import numpy as np

from ._backward import recurrent_backward, recurrent_backward_parts
from ._cells import GATES, cell_code
from ._forward import recurrent_forward, recurrent_forward_parts
from ._packing import pack, unpack
from ._threads import run_stages
from ._workspace import (
    CALL_ARRAYS,
    ForwardBuffers,
    Spec,
    backward_arguments,
    backward_buffers,
    block_count,
    block_total,
    equal_length_packing,
    first_stage_alone,
    forward_arguments,
    forward_buffers,
    forward_stages,
    identity_order,
    is_single_block,
    layer_input_sizes,
    layers_fused,
    length_packing,
    new_tuple,
    packing_rows,
    partial_blocks,
    state_size,
)

__all__ = ["Spec", "CallPlan", "CallCache", "Record", "forward", "backward", "step_record"]


class CallPlan:
    """The constants of a call over one batch layout: its packing, and what the kernel call and the code around it
    ask of it. A module's :class:`CallCache` keeps one per (L, N) of the equal-length batches it ran: computed at each
    call, they cost ~2-3 us of Python, of a ~17 us inference call on one step of a batch of one."""

    __slots__ = (
        "spec",
        "packing",
        "packing_fields",
        "single_block",
        "tasks",
        "forward_schedules",
        "key",
        "code",
        "rows",
        "top_width",
        "h_shape",
        "c_shape",
        "no_cells",
        "_backward_alone",
    )

    def __init__(self, spec, packing, steps):
        self.spec, self.packing = spec, packing
        self.packing_fields = tuple(packing)  # the kernels take plain tuples
        self.single_block = is_single_block(packing, steps)
        self.tasks = block_total(packing) * spec.num_directions
        # a forward's (stage count, first stage alone), without dropout and with it
        self.forward_schedules = tuple(self._forward_schedule(dropped) for dropped in (0, spec.num_layers - 1))
        self.code = cell_code(spec)
        batch, states = packing.order.size, spec.num_layers * spec.num_directions
        self.rows, self.top_width = packing_rows(packing), spec.num_directions * state_size(spec)
        self.h_shape = (states, batch, state_size(spec))
        self.c_shape = (states, batch if spec.cell == "lstm" else 0, spec.hidden_size)
        self.no_cells = np.empty(self.c_shape, spec.dtype) if spec.cell != "lstm" else None  # no rows: never written
        self.key = self.rows, batch, block_total(packing)  # of the buffers that fit it
        self._backward_alone = None

    def _forward_schedule(self, dropped):
        spec, fused = self.spec, layers_fused(self.spec, self.packing, dropped)
        prepared = layer_input_sizes(spec) if fused else (spec.input_size,)  # what the first stage packs
        return forward_stages(spec, self.packing, dropped), first_stage_alone(spec, prepared)

    def backward_alone(self, zeroed):
        """Whether the backward's first stage, which also zeroes ``zeroed`` partial gradients, runs on the calling
        thread alone (the same for every backward of a module)."""
        if self._backward_alone is None:
            spec = self.spec
            top_input_size = spec.input_size if spec.num_layers == 1 else spec.num_directions * state_size(spec)
            self._backward_alone = first_stage_alone(spec, (top_input_size,), zeroed)
        return self._backward_alone

    def buffer_key(self, dropped):
        """Forward buffers can be reused by a call with the same key."""
        return self.key if dropped == 0 else (*self.key, dropped)


class CallCache:
    """What a module keeps between its calls: the :class:`CallPlan` of each (L, N) of its equal-length batches, and the
    forward buffers of its finished inference calls for the next calls of the same shape.

    Fresh buffers of a few MiB cost a page fault per 4 KiB page whenever the C allocator has handed the previous
    call's memory back to the system, which it does or not depending on the process's allocation history (measured on
    the small benchmark configuration: 1768 faults and 2.5 ms of a 5.6 ms forward in such a process, none in
    another). Each call takes buffers of its own (a call in another thread finds them gone and builds its own), so
    one cache serves any number of threads. Buffers returned to the caller are never kept.
    """

    # Shapes kept, and buffer sets kept per shape: a caller alternating two shapes (say, training-size and last
    # batches) reuses both, and two threads calling with one shape reuse theirs.
    KEEP = 2
    PLANS = 64  # plans kept; past that they are dropped and made again as calls need them

    def __init__(self):
        self._plans = {}
        self._free = {}  # key -> [buffers, ...], shapes in the order they were first kept
        self._lock = threading.Lock()  # for a new shape's list only: taking and giving back need none

    def plan(self, spec, steps, batch, lengths):
        """The plan of a (L, N) batch with ``lengths`` (None, or already checked: each in 1...L)."""
        if lengths is not None:  # a packing of its own
            return CallPlan(spec, make_packing(spec, steps, batch, lengths), steps)
        plan = self._plans.get((steps, batch))
        if plan is None or plan.spec is not spec:
            plan = CallPlan(spec, make_packing(spec, steps, batch, None), steps)
            if len(self._plans) >= self.PLANS:
                self._plans.clear()
            self._plans[steps, batch] = plan
        return plan

    def take(self, key):
        """Buffers of shape ``key`` given back earlier, or None. ``list.pop`` is atomic, so no two calls get the same
        buffers; without a lock, a take and a give cost ~0.3 us instead of ~0.8 (of a ~10 us call on L = 1)."""
        free = self._free.get(key)
        if free:
            try:
                return free.pop()
            except IndexError:  # another thread took the last set since
                pass
        return None

    def give(self, key, buffers):
        """Keep ``buffers`` (without any array the call returned or read from its caller) for a later call: at most
        KEEP sets of KEEP shapes, a new shape's list replacing the oldest shape's. A set given back to a list that
        another thread has just dropped is dropped with it."""
        free = self._free.get(key)
        if free is None:
            with self._lock:
                free = self._free.get(key)
                if free is None:
                    if len(self._free) >= self.KEEP:
                        del self._free[next(iter(self._free))]
                    free = self._free[key] = []
        if len(free) < self.KEEP:
            free.append(buffers)

    def clear(self):
        """Drop every kept buffer."""
        with self._lock:
            self._free.clear()


class Record:
    """What a training forward leaves for its backward: the plan (the packing), the forward buffers (inputs, every
    layer's output and the states entering each step, dropout masks) and the shape of the call."""

    __slots__ = ("spec", "plan", "buffers", "steps", "batch", "dropped", "consumed", "batched")

    def __init__(self, spec, plan, buffers, steps, batch, dropped=0):
        self.spec, self.plan, self.buffers = spec, plan, buffers
        self.steps, self.batch, self.dropped = steps, batch, dropped
        self.consumed = False
        self.batched = True  # the caller's input had a batch axis (the caller sets it)

    @property
    def packing(self):
        return self.plan.packing

    def key(self):
        return self.plan.buffer_key(self.dropped)


def make_packing(spec, steps, batch, lengths):
    """The packing of a (L, N) batch; ``lengths`` is None or already checked (each in 1...L)."""
    blocks = block_count(
        batch, steps, spec.input_size, spec.hidden_size, spec.num_layers, spec.num_directions, GATES[spec.cell]
    )
    if lengths is None or (lengths == steps).all():
        return equal_length_packing(steps, batch, blocks)
    return length_packing(lengths, steps, blocks)


def forward(
    spec,
    params,
    offsets,
    x,
    h_0,
    lengths,
    *,
    training,
    batch_first,
    draw_dropout=None,
    spare=None,
    cache=None,
    openmp=False,
):
    """Run the stack over ``x``.

    Parameters
    ----------
    spec : Spec
    params, offsets : the flat parameters and their offset table (:mod:`numbarnn._layout`).
    x : (L, N, H_in) time-major input (a batch_first input as its transposed view), of ``spec.dtype``.
    h_0 : (num_layers * D, N, H_out) or None for zeros; an LSTM's ``(h_0, c_0)``, c_0 (num_layers * D, N, H), either
        None for zeros (or None for both).
    lengths : (N,) int64 or None.
    training : keep what the backward pass needs and return it as a :class:`Record`.
    batch_first : lay the output out as (N, L, D * H_out).
    draw_dropout : None, or a function filling the (num_layers - 1, R, D * H_out) dropout scale (training only).
    spare : a consumed :class:`Record` whose buffers may be reused, or None.
    cache : the caller's :class:`CallCache` (its plans, and buffers an inference call takes and gives back), or None.
    openmp : run a multi-threaded pass on numba's OpenMP threads rather than numbarnn's workers (for callers in a
        process where torch runs OpenMP regions: :mod:`numbarnn._threads`).

    Returns
    -------
    output : (L, N, D * H_out), or (N, L, D * H_out) with ``batch_first``; zero past each sequence's length.
    h_n : (num_layers * D, N, H_out); an LSTM's ``(h_n, c_n)``.
    record : :class:`Record` or None.
    """
    steps, batch = x.shape[0], x.shape[1]
    lstm = spec.cell == "lstm"
    h_0, c_0 = h_0 if lstm and h_0 is not None else (h_0, None)
    if batch == 0:  # nothing to compute; torch returns empty results too
        layers_directions, width = spec.num_layers * spec.num_directions, spec.num_directions * state_size(spec)
        output = np.zeros((0, steps, width) if batch_first else (steps, 0, width), spec.dtype)
        h_n = np.zeros((layers_directions, 0, state_size(spec)), spec.dtype)
        if lstm:
            h_n = h_n, np.zeros((layers_directions, 0, spec.hidden_size), spec.dtype)
        return output, h_n, Record(spec, None, None, steps, 0) if training else None
    plan = (CallCache() if cache is None else cache).plan(spec, steps, batch, lengths)
    packing, in_place = plan.packing, plan.single_block
    dropped = spec.num_layers - 1 if draw_dropout is not None else 0
    # Inference reads a contiguous single-block input in place; training copies it (the record must own it).
    reads_input = in_place and not training and x.flags.c_contiguous
    x_rows = x.reshape(plan.rows, spec.input_size) if reads_input else None
    # an inference output that is the top layer's rows as they are must be a new array each call
    output_is_rows = in_place and not training and not batch_first
    key = plan.buffer_key(dropped)
    zeroed = False  # h_n already holds zeros for a missing h_0
    if spare is not None and spare.buffers is not None and spare.key() == key:
        buffers = spare.buffers
    elif cache is not None and not training:
        zeroed = h_0 is None
        buffers = take_scratch(cache, key, spec, plan, dropped, x_rows, output_is_rows, zeroed)
    else:
        buffers = forward_buffers(spec, packing, training, dropped, x_rows)
    if not reads_input:
        to_rows(x, packing, buffers.x_rows, in_place)
    if not zeroed:
        sort_states(h_0, packing, buffers.h_n)
    if lstm:
        sort_states(c_0, packing, buffers.c_n)
    if dropped:
        draw_dropout(buffers.dropout_scale)
    stages, first_alone = plan.forward_schedules[1 if dropped else 0]
    run_stages(
        recurrent_forward,
        recurrent_forward_parts if openmp else None,
        stages,
        plan.tasks,
        first_alone,
        params,
        offsets,
        plan.packing_fields,
        forward_arguments(buffers),
        spec.num_directions,
        plan.code,
    )
    if output_is_rows:  # the rows as they are: a new array of this call's
        output = buffers.top_out.reshape(steps, batch, plan.top_width)
    else:
        output = from_rows(buffers.top_out, packing, steps, batch, batch_first, False)
    h_n = buffers.h_n if packing.in_order and not training else unsort_states(buffers.h_n, packing, copy=training)
    if lstm:
        h_n = h_n, unsort_states(buffers.c_n, packing, copy=training)
    if training:
        return output, h_n, Record(spec, plan, buffers, steps, batch, dropped)
    if cache is not None:
        give_scratch(cache, key, buffers, reads_input, output_is_rows)
    return output, h_n, None


def take_scratch(cache, key, spec, plan, dropped, x_rows, output_is_rows, zero_state):
    """Inference buffers from ``cache``'s scratch of shape ``key`` when it has some, else new; the arrays the call
    returns (``h_n`` and ``c_n``, and ``top_out`` when it is the output) are always new (``h_n`` zeros when
    ``zero_state``), and ``x_rows`` is the caller's input when given."""
    scratch = cache.take(key)
    if scratch is None:
        buffers = forward_buffers(spec, plan.packing, False, dropped, x_rows)
        if zero_state:
            buffers.h_n.fill(0)
        return buffers
    own_x_rows, own_top_out, kept = scratch
    if x_rows is None:
        x_rows = own_x_rows if own_x_rows is not None else np.empty((plan.rows, spec.input_size), spec.dtype)
    top_out = own_top_out
    if output_is_rows or top_out is None:
        top_out = np.empty((plan.rows, plan.top_width), spec.dtype)
    h_n = (np.zeros if zero_state else np.empty)(plan.h_shape, spec.dtype)
    c_n = np.empty(plan.c_shape, spec.dtype) if plan.no_cells is None else plan.no_cells
    # positionally, without _replace's checks: ~1 us less per call
    return new_tuple(ForwardBuffers, (x_rows, top_out, h_n, c_n, *kept))


def give_scratch(cache, key, buffers, reads_input, output_is_rows):
    """Give an inference call's buffers back to ``cache``, without the arrays it returned or read from its caller."""
    own_x_rows = None if reads_input else buffers.x_rows
    own_top_out = None if output_is_rows else buffers.top_out
    cache.give(key, (own_x_rows, own_top_out, buffers[CALL_ARRAYS:]))


def backward(
    params, offsets, record, grad_output, grad_h_n, grads, *, need_input_grad, batch_first, spare=None, openmp=False
):
    """Backpropagate through ``record``'s forward.

    Parameters
    ----------
    params, offsets : as given to :func:`forward` (read as they are now).
    record : the training forward's :class:`Record` (not consumed here: the caller marks it).
    grad_output : (L, N, D * H_out) time-major view of the output gradient, or None for zeros.
    grad_h_n : (num_layers * D, N, H_out) or None for zeros; an LSTM's ``(grad_h_n, grad_c_n)``, either None.
    grads : (P,) flat parameter gradients, accumulated into.
    need_input_grad : compute the input gradient (else None is returned for it).
    batch_first : lay the input gradient out as (N, L, H_in).
    spare : :class:`numbarnn._workspace.BackwardBuffers` of an earlier call that may be reused, or None.
    openmp : as for :func:`forward`.

    Returns
    -------
    grad_input : (L, N, H_in) or (N, L, H_in), or None; grad_h_0 : (num_layers * D, N, H_out) (an LSTM's
    ``(grad_h_0, grad_c_0)``); buffers : the backward buffers used (to pass as ``spare`` next time).
    """
    spec, plan, forward_buffers_ = record.spec, record.plan, record.buffers
    steps, batch = record.steps, record.batch
    shape = (batch, steps, spec.input_size) if batch_first else (steps, batch, spec.input_size)
    lstm = spec.cell == "lstm"
    grad_h_n, grad_c_n = grad_h_n if lstm and grad_h_n is not None else (grad_h_n, None)
    if batch == 0:
        grad_h_0 = np.zeros((spec.num_layers * spec.num_directions, 0, state_size(spec)), spec.dtype)
        if lstm:
            grad_h_0 = grad_h_0, np.zeros((spec.num_layers * spec.num_directions, 0, spec.hidden_size), spec.dtype)
        return (np.zeros(shape, spec.dtype) if need_input_grad else None), grad_h_0, spare
    packing = plan.packing
    buffers = spare
    if (
        buffers is None
        or buffers.grad_output.shape[0] != packing_rows(packing)
        or buffers.grad_h.shape[1] != batch
        or buffers.grad_partial.shape[0] != partial_blocks(packing)
        or (buffers.grad_x.shape[0] > 0) != need_input_grad
    ):
        buffers = backward_buffers(spec, packing, params.size, need_input_grad)
    if plan.single_block and grad_output is not None and grad_output.flags.c_contiguous:
        # Read in place, as an inference forward reads its input: the kernels only read it, and copying it is one pass
        # over L * N * D * H_out floats per training step (1.6 MiB at the small configuration; one thread, the step's
        # 15 ms moved within the noise). The kept buffers stay the backward's own.
        fields = backward_arguments(buffers, grad_output.reshape(plan.rows, -1))
    else:
        if grad_output is None:
            buffers.grad_output.fill(0)
        else:
            to_rows(grad_output, packing, buffers.grad_output, plan.single_block)
        fields = backward_arguments(buffers)
    sort_states(grad_h_n, packing, buffers.grad_h)
    if lstm:
        sort_states(grad_c_n, packing, buffers.grad_c)
    run_stages(
        recurrent_backward,
        recurrent_backward_parts if openmp else None,
        2 * spec.num_layers + 1,
        plan.tasks,
        plan.backward_alone(buffers.grad_partial.size),
        params,
        offsets,
        plan.packing_fields,
        forward_arguments(forward_buffers_),
        fields,
        spec.num_directions,
        plan.code,
        grads,
    )
    grad_input = from_rows(buffers.grad_x, packing, steps, batch, batch_first, False) if need_input_grad else None
    grad_h_0 = unsort_states(buffers.grad_h, packing, copy=True)
    if lstm:
        grad_h_0 = grad_h_0, unsort_states(buffers.grad_c, packing, copy=True)
    return grad_input, grad_h_0, buffers


def step_record(spec, step):
    """The :class:`Record` of one training-mode step of a one-layer cell (:func:`numbarnn._step.stacked_step` with
    saving :class:`numbarnn._workspace.StepBuffers` ``step``), for :func:`backward` to backpropagate through."""
    batch = step.x.shape[0]
    packing = equal_length_packing(1, batch, 1)
    buffers = forward_buffers(spec, packing, training=True, dropped=0, x_rows=step.x)
    buffers.h_prev[0, 0] = step.h_prev
    buffers.c_prev[0, 0] = step.c_prev
    buffers.saved[0, 0] = step.saved
    buffers.h_full[0, 0] = step.h_full
    buffers.top_out[...] = step.out
    return Record(spec, CallPlan(spec, packing, 1), buffers, 1, batch)


def to_rows(source, packing, rows, in_place):
    """Copy time-major (L, N, F) ``source`` into packed ``rows``."""
    if in_place and source.flags.c_contiguous:
        rows[...] = source.reshape(rows.shape)
    else:
        pack(source, packing, rows)


def from_rows(rows, packing, steps, batch, batch_first, own):
    """(L, N, F), or (N, L, F) with ``batch_first``, from packed ``rows``; zero where padded. ``own``: ``rows``
    belong to this call alone and may be returned as they are."""
    features = rows.shape[1]
    if is_single_block(packing, steps) and not batch_first:
        padded = rows.reshape(steps, batch, features)
        return padded if own else padded.copy()
    result = np.empty((batch, steps, features) if batch_first else (steps, batch, features), rows.dtype)
    unpack(rows, packing, result.transpose(1, 0, 2) if batch_first else result)
    return result


def sort_states(states, packing, out):
    """(layers, N, H) ``states`` (None: zeros) into ``out`` in the packed batch order; :func:`unsort_states` undoes
    it."""
    if states is None:
        out.fill(0)
    elif identity_order(packing):
        out[...] = states
    else:
        np.take(states, packing.order, axis=1, out=out)


def unsort_states(states, packing, copy):
    """(layers, N, H) states in the user's batch order (always a new array when ``copy``)."""
    if identity_order(packing):
        return states.copy() if copy else states
    unsorted = np.empty_like(states)
    unsorted[:, packing.order] = states
    return unsorted
