"""PyTorch drop-ins: ``numbarnn.torch.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` are
torch's classes of the same names (subclasses: same constructor, Parameters, ``state_dict`` and repr) whose forward
runs numbarnn's kernels, with autograd, and :func:`accelerate` switches an existing model over in place.

Importing this module imports torch; ``import numbarnn`` alone never does.

How it plugs into autograd: one ``torch.autograd.Function`` per call. The kernels read all parameters from one flat
array; the module's Parameters are moved into such a buffer on the first call (see :func:`_parameters_array`), so a
call reads them in place. The Function's forward runs :func:`numbarnn._engine.forward` on zero-copy NumPy views of the
tensors and keeps the engine's per-call ``Record`` (NumPy buffers only, no reference back to the graph) on the
autograd context; the input, ``hx`` and the Parameters themselves are saved with ``ctx.save_for_backward``, so an
in-place change of one of them between forward and backward raises torch's version-counter error. The backward runs
the kernels, except when it must itself be differentiable (``create_graph=True``) or runs under vmap (batched
gradients: ``gradcheck``'s ``check_batched_grad``, ``jacobian(vectorize=True)``, ``torch.func``): then it recomputes
the forward from the saved tensors with torch operations (:func:`_torch_forward`) and differentiates that. Without
grad mode, or when nothing involved requires grad, no Function is created and nothing is kept.

The modules keep per-process state in their ``__dict__`` (the per-dtype plans with their scratch buffers and lock, and
the flat parameter buffer with its address): :class:`_DropIn` leaves it out of copies, pickles and ``torch.save``, so
a copy builds its own on its first call.
"""

import copy
import threading
import warnings

import numba
import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
from torch.nn.utils.rnn import PackedSequence

from . import _engine as engine
from ._cells import GATES
from ._layout import build_layout
from ._step import run_step
from ._threads import configure_threads_once
from ._workspace import Spec, step_buffers

__all__ = ["RNN", "RNNCell", "LSTM", "GRU", "LSTMCell", "GRUCell", "accelerate"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# torch's own classes, captured at import: a user (or a test suite) may rebind torch.nn.RNN / torch.nn.RNNCell to the
# drop-ins, and a fallback reaching torch's forward through those names would then call itself.
_TORCH_RNN = torch.nn.modules.rnn.RNN
_TORCH_RNN_CELL = torch.nn.modules.rnn.RNNCell
_TORCH_LSTM = torch.nn.modules.rnn.LSTM
_TORCH_GRU = torch.nn.modules.rnn.GRU
_TORCH_LSTM_CELL = torch.nn.modules.rnn.LSTMCell
_TORCH_GRU_CELL = torch.nn.modules.rnn.GRUCell
# torch's RNNBase.mode -> numbarnn's cell (Spec.cell)
_CELLS = {"RNN_TANH": "rnn", "RNN_RELU": "rnn", "LSTM": "lstm", "GRU": "gru"}
# What a module keeps in its __dict__ for this process only (see _DropIn).
_PROCESS_STATE = ("_numbarnn_plans", "_numbarnn_flat")


class _Plan:
    """What a call needs of its module besides the tensors: the kernels' spec, the parameter layout, and how to
    split the flat gradient back into one view per Parameter. Built once per (module, dtype)."""

    __slots__ = ("calls", "offsets", "slices", "spare_backward", "spare_records", "spec", "total")

    def __init__(self, spec, bias):
        self.spec = spec
        # Buffers of finished calls, reused by the next calls of the same shape: fresh large buffers cost page faults
        # on every call (measured: a 3-4 ms training step of the demo's model took 2-3 ms more without reuse).
        # Lists, so that taking one (list.pop) is atomic when several threads call the module.
        self.spare_records = []  # forward records whose graphs are gone (at most 2: a loop keeps one alive)
        self.spare_backward = []  # backward scratch buffers (at most 1)
        self.calls = engine.CallCache()  # plans; buffers of calls that keep nothing for a backward (no_grad, ...)
        entries, self.offsets, self.total = build_layout(
            spec.input_size,
            spec.hidden_size,
            spec.num_layers,
            spec.num_directions,
            bias,
            GATES[spec.cell],
            spec.proj_size,
        )
        self.slices = [(offset, offset + int(np.prod(shape)), shape) for _, offset, shape in entries]

    def take(self, spares):
        try:
            return spares.pop()
        except IndexError:
            return None

    def split(self, flat):
        """One tensor per Parameter, shaped like it, viewing the (P,) NumPy array ``flat`` (NumPy slices: cheaper
        than torch's per-view dispatch)."""
        return [torch.from_numpy(flat[start:stop].reshape(shape)) for start, stop, shape in self.slices]


_applied = threading.local()  # the torch thread count this thread last gave numba


def _follow_torch_threads():
    """numba's thread count for this calling thread = torch's intra-op thread count (capped by numba's pool).

    numbarnn's thread setup (:func:`numbarnn._threads.configure_threads_once`) starts numba's pool first, keeping
    torch's count, which the ``omp`` layer's start would otherwise reset.
    """
    torch_threads = torch.get_num_threads()
    if getattr(_applied, "threads", None) == torch_threads:
        return  # numba's count is per thread, and this thread's is already set (about 1 us saved per call)
    configure_threads_once()
    wanted = min(torch_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    _applied.threads = torch_threads


def _plain_autograd():
    """Neither forward-mode AD, nor a torch.func transform (vmap, grad, ...), nor torch.jit.trace is active: those
    need torch's own forward, whose operations they know how to transform or record."""
    if torch.compiler.is_compiling():  # Dynamo (which sees no functorch wrappers here) cannot trace the check
        return True
    return _forward_ad._current_level < 0 and _peek_transform() is None and _tracing_state() is None


_peek_transform = torch._C._functorch.peek_interpreter_stack  # None unless inside a torch.func transform
_tracing_state = torch._C._get_tracing_state  # None unless inside torch.jit.trace (or a tracing ONNX export)
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor  # autograd's is_grads_batched vmap


def _flat_params(weights):
    """The (P,) NumPy array of the kernels: the weights concatenated in torch's order (a copy)."""
    return torch.cat([w.detach().reshape(-1) for w in weights]).numpy()


def _parameters_array(module, plan, weights):
    """The (P,) NumPy array the kernels read, holding ``weights`` in the layout of ``plan``.

    The first call moves the module's Parameters into one flat buffer in that layout (each Parameter object stays
    the same; its ``.data`` becomes a view of the buffer, as cuDNN's ``flatten_parameters`` does), so that later
    calls read them in place instead of concatenating them. Optimiser steps and ``load_state_dict`` write through the
    views. Weights that are not the module's Parameters (``torch.func.functional_call``, parametrizations) are
    concatenated into a copy at each call.
    """
    flat = module.__dict__.get("_numbarnn_flat")
    if flat is not None and flat[0] is plan:  # built for this module's layout in this dtype
        # each weight still is its view of the buffer: its address, shape and contiguity (a ``.data`` assignment
        # or ``.to()`` gives a new address; a same-address view such as ``.t()`` a new shape or strides)
        for weight, (address, shape) in zip(weights, flat[2]):
            if weight.data_ptr() != address or weight.shape != shape or not weight.is_contiguous():
                break
        else:
            return flat[1]
    if not all(type(weight) is torch.nn.Parameter for weight in weights):
        return _flat_params(weights)
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even when called under inference_mode
        tensor = torch.cat([weight.detach().reshape(-1) for weight in weights])
        for weight, (start, stop, shape) in zip(weights, plan.slices):
            weight.data = tensor[start:stop].view(shape)  # the same values; no version bump, no new Parameter
    array = tensor.numpy()
    # (plan, array, each weight's (address, shape)), and the tensor that owns the buffer; the addresses are
    # computed once here rather than from the layout at every call
    expected = tuple((weight.data_ptr(), weight.shape) for weight in weights)
    module.__dict__["_numbarnn_flat"] = (plan, array, expected, tensor)
    return array


def _as_numpy(tensor):
    """A zero-copy NumPy view of ``tensor`` (None for None); ``detach()`` only when it requires grad (``numpy()``
    refuses it then): a detached alias costs ~0.5 us per tensor."""
    if tensor is None:
        return None
    return tensor.detach().numpy() if tensor.requires_grad else tensor.numpy()


def _dropout_drawer(p):
    """A function filling the engine's dropout scale in place from torch's generator: 0 with probability ``p``,
    else 1 / (1 - p); ``torch.manual_seed`` therefore reproduces it."""
    keep = 1.0 - p

    def draw(scale):
        target = torch.from_numpy(scale)  # shares memory: drawn in place, no copy
        if keep == 0:
            target.zero_()
        else:
            target.bernoulli_(keep).div_(keep)

    return draw


class _RecordReturn:
    """Held by an autograd context: when the graph (and so the context) is freed, its record's buffers go back to
    the plan for a later call. A loop's next forward runs while the previous output (and graph) is still alive,
    so up to two are kept."""

    __slots__ = ("plan", "record")

    def __init__(self, record, plan):
        self.record, self.plan = record, plan

    def __del__(self):
        spares = self.plan.spare_records
        if len(spares) < 2 and self.record.buffers is not None:
            spares.append(self.record)


class _NumbaRNNFunction(torch.autograd.Function):
    """Autograd node of one numbarnn forward of any cell; inputs ``(plan, options, x, h_0, c_0, *weights)``, outputs
    ``(output, h_n)``, or an LSTM's ``(output, h_n, c_n)``. ``c_0`` is an LSTM's (None otherwise, and None for zeros
    as ``h_0``). ``options`` = (params, lengths or None, batch_first, dropout p or 0), ``params`` the (P,) NumPy
    array holding ``weights`` (:func:`_parameters_array`)."""

    @staticmethod
    def forward(ctx, plan, options, x, h_0, c_0, *weights):
        params, lengths, batch_first, dropout = options
        lstm = plan.spec.cell == "lstm"
        output, h_n, record = engine.forward(
            plan.spec,
            params,
            plan.offsets,
            _time_major(_as_numpy(x), batch_first),
            (_as_numpy(h_0), _as_numpy(c_0)) if lstm else _as_numpy(h_0),
            lengths,
            training=True,
            batch_first=batch_first,
            draw_dropout=_dropout_drawer(dropout) if dropout else None,
            spare=plan.take(plan.spare_records),
            cache=plan.calls,
            openmp=True,  # numba's OpenMP threads, on torch's OpenMP runtime, run the parts (numbarnn._threads)
        )
        ctx.save_for_backward(x, h_0, c_0, *weights)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the engine reads None as zeros
        ctx.plan, ctx.params, ctx.record, ctx.batch_first, ctx.lengths = plan, params, record, batch_first, lengths
        ctx.record_return = _RecordReturn(record, plan)
        if lstm:
            return torch.from_numpy(output), torch.from_numpy(h_n[0]), torch.from_numpy(h_n[1])
        return torch.from_numpy(output), torch.from_numpy(h_n)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n=None):
        # torch runs a backward in grad mode exactly when it is asked to build a graph (create_graph=True)
        if torch.is_grad_enabled() or _batched(grad_output) or _batched(grad_h_n) or _batched(grad_c_n):
            return (None, None, *_differentiable_backward(ctx, (grad_output, grad_h_n, grad_c_n)))
        _, _, _, *weights = ctx.saved_tensors  # raises if a saved tensor was changed in place since the forward
        plan, batch_first = ctx.plan, ctx.batch_first
        _follow_torch_threads()
        grads = np.zeros(plan.total, plan.spec.dtype)
        if grad_output is not None:
            grad_output = _time_major(grad_output.contiguous().numpy(), batch_first)
        lstm = plan.spec.cell == "lstm"
        grad_state = (_as_numpy(grad_h_n), _as_numpy(grad_c_n)) if lstm else _as_numpy(grad_h_n)
        grad_input, grad_h_0, scratch = engine.backward(
            ctx.params,
            plan.offsets,
            ctx.record,
            grad_output,
            grad_state,
            grads,
            need_input_grad=ctx.needs_input_grad[2],
            batch_first=batch_first,
            spare=plan.take(plan.spare_backward),
            openmp=True,
        )
        if scratch is not None and not plan.spare_backward:
            plan.spare_backward.append(scratch)  # returned arrays are copies: the scratch is free again
        needs = ctx.needs_input_grad
        grad_h_0, grad_c_0 = grad_h_0 if lstm else (grad_h_0, None)
        weight_grads = [g if need else None for g, need in zip(plan.split(grads), needs[5:])]
        del weights
        return (
            None,
            None,
            None if grad_input is None else torch.from_numpy(grad_input),
            torch.from_numpy(grad_h_0) if needs[3] else None,
            torch.from_numpy(grad_c_0) if needs[4] else None,
            *weight_grads,
        )


def _batched(grad):
    """``grad`` is batched by vmap (autograd's ``is_grads_batched`` or a torch.func transform): ``.numpy()`` cannot
    read it."""
    return grad is not None and (_is_legacy_batched(grad) or _is_functorch_wrapped(grad))


def _differentiable_backward(ctx, result_grads):
    """The gradients of ``(x, h_0, c_0, *weights)`` for those of the results (``result_grads``: output, h_n and
    c_n, each None when unused) by torch operations: the forward recomputed from the saved tensors
    (with the call's own dropout masks) by :func:`_torch_forward`, and differentiated by autograd.

    The recomputation starts from the saved tensors themselves (the gradients are taken with respect to them, which
    stops autograd there), so that for a backward that must build a graph (``create_graph=True``: double backward,
    gradient penalties) the gradients returned depend on them as they should. Under vmap the gradients are batched
    and torch's operations batch them (no ``requires_grad_`` on copies: torch.func transforms forbid it). Slower
    than the kernels, and exact.
    """
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[2:]
    record, batch_first = ctx.record, ctx.batch_first
    create_graph = torch.is_grad_enabled()  # torch runs a backward in grad mode exactly when create_graph=True
    with torch.enable_grad():
        x, h_0, c_0, *weights = saved
        output, h_n, c_n = _torch_forward(
            record.spec,
            x.transpose(0, 1) if batch_first else x,
            h_0,
            c_0,
            weights,
            ctx.lengths,
            _dropout_scales(record),
        )
        if batch_first:
            output = output.transpose(0, 1)
        pairs = [(result, grad) for result, grad in zip((output, h_n, c_n), result_grads) if grad is not None]
        wanted = [tensor for tensor, need in zip(saved, needs) if need]
        if not pairs or not wanted:
            return [None] * len(saved)
        grads = iter(
            torch.autograd.grad(
                [result for result, _ in pairs],
                wanted,
                [grad for _, grad in pairs],
                create_graph=create_graph,
                allow_unused=True,
            )
        )
    return [next(grads) if need else None for need in needs]


def _dropout_scales(record):
    """The (num_layers - 1) dropout scales of ``record``'s forward as (L, N, D * H) tensors in the caller's batch
    order, or None without dropout."""
    buffers = record.buffers
    if buffers is None or buffers.dropout_scale.shape[0] == 0:
        return None
    return [
        torch.from_numpy(engine.from_rows(scale, record.packing, record.steps, record.batch, False, False))
        for scale in buffers.dropout_scale
    ]


def _torch_forward(spec, x, h_0, c_0, weights, lengths, scales):
    """What the kernels compute, written with differentiable torch operations: the stack of ``spec.cell`` over
    time-major ``x`` (L, N, H_in) from ``h_0`` ((num_layers * D, N, P) or None for zeros) and an LSTM's ``c_0``
    ((num_layers * D, N, H) or None) with ``weights`` in torch's order; each sequence stops at its length
    (``lengths``: (N,) or None), the output is zero past it; ``scales`` multiply the inputs of layers 1...
    (dropout). Returns ``(output, h_n, c_n)``, c_n None but for an LSTM."""
    steps, batch = x.shape[0], x.shape[1]
    directions, hidden, lstm = spec.num_directions, spec.hidden_size, spec.cell == "lstm"
    state = spec.proj_size if spec.proj_size > 0 else hidden
    per_direction = len(weights) // (spec.num_layers * directions)  # w_ih, w_hh, [b_ih, b_hh], [w_hr]
    has_bias = per_direction - (spec.proj_size > 0) == 4
    cell_step = _TORCH_STEPS[spec.cell]
    running = (
        None if lengths is None else (torch.arange(steps)[:, None] < torch.as_tensor(lengths)[None, :])[:, :, None]
    )  # (L, N, 1)
    layer_input, finals, cells = x, [], []
    for layer in range(spec.num_layers):
        if layer and scales is not None:
            layer_input = layer_input * scales[layer - 1]
        outputs = []
        for direction in range(directions):
            row = layer * directions + direction
            w_ih, w_hh, *rest = weights[row * per_direction : (row + 1) * per_direction]
            b_ih, b_hh = rest[:2] if has_bias else (None, None)
            w_hr = rest[-1] if spec.proj_size > 0 else None
            projected = torch.nn.functional.linear(layer_input, w_ih, b_ih)
            h = x.new_zeros(batch, state) if h_0 is None else h_0[row]
            c = None if not lstm else x.new_zeros(batch, hidden) if c_0 is None else c_0[row]
            step_outputs = [None] * steps
            for t in range(steps) if direction == 0 else range(steps - 1, -1, -1):
                new_h, new_c = cell_step(spec, projected[t], torch.nn.functional.linear(h, w_hh, b_hh), h, c, w_hr)
                if running is None:
                    h = step_outputs[t] = new_h
                    c = new_c
                else:  # a finished (forward) or not yet started (reverse) sequence keeps its state
                    h = torch.where(running[t], new_h, h)
                    c = torch.where(running[t], new_c, c) if lstm else None
                    step_outputs[t] = torch.where(running[t], new_h, 0.0)
            outputs.append(torch.stack(step_outputs))
            finals.append(h)
            cells.append(c)
        layer_input = torch.cat(outputs, 2) if directions == 2 else outputs[0]
    return layer_input, torch.stack(finals), torch.stack(cells) if lstm else None


def _rnn_step(spec, projected, recurrent, h, c, w_hr):
    return (torch.relu if spec.relu else torch.tanh)(projected + recurrent), None


def _gru_step(spec, projected, recurrent, h, c, w_hr):
    """torch's GRU: r, z, n gates; n = tanh(x W_in + b_in + r * (h W_hn + b_hn))."""
    x_r, x_z, x_n = projected.chunk(3, 1)
    h_r, h_z, h_n = recurrent.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, None


def _lstm_step(spec, projected, recurrent, h, c, w_hr):
    """torch's LSTM: i, f, g, o gates; h = o * tanh(c), projected by W_hr with ``proj_size``."""
    i, f, g, o = (projected + recurrent).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w_hr is None else torch.nn.functional.linear(h, w_hr)), c


_TORCH_STEPS = {"rnn": _rnn_step, "gru": _gru_step, "lstm": _lstm_step}


def _any_requires_grad(tensors):
    """Whether one of ``tensors`` requires grad (a loop: a generator in any() costs more per call)."""
    for tensor in tensors:
        if tensor.requires_grad:
            return True
    return False


def _time_major(array, batch_first):
    return array.transpose(1, 0, 2) if batch_first else array


def _run(module, plan, x, hx, weights, lengths, batch_first, dropout):
    """One numbarnn forward over batched ``x`` ((L, N, H_in), or (N, L, H_in) with ``batch_first``) from ``hx``
    (h_0, an LSTM's tuple (h_0, c_0), or None): through the autograd Function when a gradient can flow, else
    straight through the engine keeping nothing. Returns ``(output, h_n)``, an LSTM's ``(output, (h_n, c_n))``."""
    _follow_torch_threads()
    params = _parameters_array(module, plan, weights)
    h_0, c_0 = hx if type(hx) is tuple else (hx, None)
    if torch.is_grad_enabled() and (
        x.requires_grad
        or (h_0 is not None and h_0.requires_grad)
        or (c_0 is not None and c_0.requires_grad)
        or _any_requires_grad(weights)
    ):
        results = _NumbaRNNFunction.apply(plan, (params, lengths, batch_first, dropout), x, h_0, c_0, *weights)
        return (results[0], results[1:]) if len(results) == 3 else results
    lstm = plan.spec.cell == "lstm"
    output, h_n, _ = engine.forward(
        plan.spec,
        params,
        plan.offsets,
        _time_major(_as_numpy(x), batch_first),
        (_as_numpy(h_0), _as_numpy(c_0)) if lstm else _as_numpy(h_0),
        lengths,
        training=False,
        batch_first=batch_first,
        draw_dropout=_dropout_drawer(dropout) if dropout else None,
        cache=plan.calls,
        openmp=True,
    )
    if lstm:
        return torch.from_numpy(output), (torch.from_numpy(h_n[0]), torch.from_numpy(h_n[1]))
    return torch.from_numpy(output), torch.from_numpy(h_n)


def _packed_rows(batch_sizes):
    """For a PackedSequence's ``batch_sizes`` (L,): the index of each packed row in the (L * N) rows of the
    time-major padded batch (in sorted batch order), and each sorted sequence's length (int64, (N,))."""
    batch = int(batch_sizes[0])
    running = torch.arange(batch) < batch_sizes[:, None]  # (L, N): sequence j still running at step t
    return running.reshape(-1).nonzero().squeeze(1), running.sum(0).numpy()


class _DropIn:
    """What the drop-ins share on top of torch's class (``_TORCH_CLASS``, which each names): the plans, one per
    dtype, built on first use; per-process state left out of copies; scripting as torch's own module.

    A subclass says what its kernels need to know of it in ``_numbarnn_spec(dtype)``: the
    :class:`numbarnn._workspace.Spec` and whether it has biases.
    """

    _TORCH_CLASS = None

    def _numbarnn_plan(self, dtype):
        plans = self.__dict__.get("_numbarnn_plans")  # (setdefault's default would be a new dict at every call)
        if plans is None:
            plans = self.__dict__.setdefault("_numbarnn_plans", {})
        plan = plans.get(dtype)
        if plan is None:  # threads racing here all use the plan stored first
            plan = plans.setdefault(dtype, _Plan(*self._numbarnn_spec(_NUMPY_DTYPES[dtype])))
        return plan

    def __getstate__(self):
        """torch's state without this process's: the plans (scratch buffers, a lock) and the flat parameter buffer
        (its address means nothing in a copy), which the copy builds again on its first call. Used by
        ``copy.copy``, ``copy.deepcopy``, ``pickle`` and ``torch.save``."""
        return {name: value for name, value in super().__getstate__().items() if name not in _PROCESS_STATE}

    def __prepare_scriptable__(self):
        """``torch.jit.script`` compiles ``forward``, which runs Python kernels: it scripts torch's own module
        instead, sharing this one's Parameters (TorchScript runs torch's kernels). Called by ``torch.jit.script``,
        which also puts the returned module in place of this one in its parent module.

        A subclass of a drop-in may have a forward of its own, which torch's module would silently drop: it raises.
        """
        if type(self) not in _DROP_INS.values():
            raise TypeError(
                f"torch.jit.script cannot compile {type(self).__name__}, a subclass of numbarnn.torch."
                f"{_DROP_INS[self._TORCH_CLASS].__name__}: its forward runs numbarnn's Python kernels, and numbarnn "
                f"scripts only its own classes (as torch's {self._TORCH_CLASS.__name__}). Derive it from "
                f"torch.nn.{self._TORCH_CLASS.__name__} to script it."
            )
        state = {
            name: copy.copy(value) if isinstance(value, dict) else value for name, value in self.__getstate__().items()
        }
        twin = self._TORCH_CLASS.__new__(self._TORCH_CLASS)
        twin.__setstate__(state)
        return twin


def _states(hx):
    """The state tensors in ``hx``: none, ``hx`` itself, or an LSTM's (h, c)."""
    return () if hx is None else hx if type(hx) is tuple else (hx,)


class _SequenceDropIn(_DropIn):
    """What :class:`RNN`, :class:`LSTM` and :class:`GRU` share: when numbarnn runs (else torch's forward runs), the
    forward, and the spec of their kernels. ``_CELL`` names the cell (:mod:`numbarnn._cells`)."""

    _CELL = None

    def forward(self, input, hx=None):
        if not self._numbarnn_handles(input, hx):
            return super().forward(input, hx)
        return _rnn_forward(self, input, hx)

    def _numbarnn_handles(self, input, hx):
        # (``is_cpu`` rather than ``device.type == "cpu"``, and loops rather than any(): the same test, measured
        # ~0.4 us less per tensor; this runs at every call)
        data = input.data if isinstance(input, PackedSequence) else input
        dtype = data.dtype
        if dtype not in _NUMPY_DTYPES or not data.is_cpu or _CELLS.get(self.mode) != self._CELL:
            return False
        if hx is not None:
            for state in hx if type(hx) is tuple else (hx,):
                if not isinstance(state, torch.Tensor) or state.dtype != dtype or not state.is_cpu:
                    return False
        for weight in self._flat_weights:
            if weight.dtype != dtype or not weight.is_cpu:
                return False
        return _plain_autograd()

    def _numbarnn_spec(self, dtype):
        return Spec(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            2 if self.bidirectional else 1,
            dtype,
            self.mode == "RNN_RELU",
            self._CELL,
            self.proj_size,
        ), self.bias


_AUTOGRAD_DOC = """
    Autograd: gradients of the input, ``hx`` ({state}) and every Parameter, as torch computes them. An input without
    ``requires_grad`` costs no input gradient; under ``no_grad`` / ``inference_mode`` nothing is kept. Each call keeps
    its own saved state on its graph (two forwards then one backward of their sum, ``retain_graph=True``), freed with
    the graph; changing the input, ``hx`` or a weight in place before backward raises torch's usual error. A
    backward that builds a graph (``create_graph=True``: double backward) or runs under vmap (batched gradients)
    differentiates a recomputation of the forward by torch operations: exact, slower. Dropout (training mode,
    between layers) draws from torch's generator, so ``torch.manual_seed`` reproduces it (the masks differ from
    torch's own, which draws in another order).
    """


class RNN(_SequenceDropIn, _TORCH_RNN):
    r"""``torch.nn.RNN`` running numbarnn's kernels: same constructor, Parameters, ``state_dict``, repr, results and
    gradients (to float rounding).

    numbarnn runs the forward (and, through autograd, the backward) when all of these hold: the input is a CPU
    tensor (or a PackedSequence of one) of dtype float32 or float64 and the Parameters and ``hx`` are CPU tensors of
    that dtype. Anything else — another device or dtype, forward-mode AD (dual tensors), a ``torch.func`` transform
    such as ``vmap``, ``torch.jit.trace`` — runs ``torch.nn.RNN``'s own forward, unchanged; ``torch.jit.script``
    scripts ``torch.nn.RNN`` itself (see :class:`_DropIn`). Errors are torch's (its own checks run).

    Threads: each call runs numba's kernels on ``torch.get_num_threads()`` threads (capped by numba's pool,
    ``NUMBA_NUM_THREADS``); numbarnn calls no BLAS. (numba's count is set per calling thread when
    torch's changes; a ``numba.set_num_threads`` of your own in between is not undone.)

    Memory: on the first call the module's Parameters (the same objects) move into one flat buffer in the kernels'
    layout — their ``.data`` becomes a view of it, as cuDNN's ``flatten_parameters`` does — so that calls read them
    in place; arrays aliasing the old ``.data`` no longer see updates. The buffers of the last two training calls
    whose graphs are gone are kept for reuse by the next calls of the same shape. Copies (``copy.deepcopy``, pickle,
    ``torch.save``) leave these buffers out and build their own on their first call.
    """

    _TORCH_CLASS = _TORCH_RNN
    _CELL = "rnn"


class LSTM(_SequenceDropIn, _TORCH_LSTM):
    r"""``torch.nn.LSTM`` running numbarnn's kernels, ``proj_size`` included: same constructor, Parameters,
    ``state_dict``, repr, results and gradients (to float rounding). The state is torch's tuple:
    ``lstm(x, (h_0, c_0))`` returns ``output, (h_n, c_n)``, with gradients for h_0 and c_0.

    When numbarnn runs (float32 / float64 CPU tensors, plain autograd) and what runs otherwise (torch's own
    forward), threads, memory and copies are as for :class:`RNN`.
    """

    _TORCH_CLASS = _TORCH_LSTM
    _CELL = "lstm"


class GRU(_SequenceDropIn, _TORCH_GRU):
    r"""``torch.nn.GRU`` running numbarnn's kernels: same constructor, Parameters, ``state_dict``, repr, results and
    gradients (to float rounding). When numbarnn runs and what runs otherwise, threads, memory and copies are as for
    :class:`RNN`.
    """

    _TORCH_CLASS = _TORCH_GRU
    _CELL = "gru"


for _class, _state in ((RNN, "h_0"), (LSTM, "h_0 and c_0"), (GRU, "h_0")):
    if _class.__doc__:  # None under python -OO; a docstring must be a literal, so the shared part is added here
        _class.__doc__ += _AUTOGRAD_DOC.format(state=_state)
del _class, _state


def _state_dims(hx, dims):
    """Every tensor of ``hx`` (h_0, or an LSTM's (h_0, c_0)) has ``dims`` dimensions."""
    return all(state.dim() == dims for state in _states(hx))


def _unsqueeze_states(hx, dim):
    return tuple(state.unsqueeze(dim) for state in hx) if type(hx) is tuple else hx.unsqueeze(dim)


@torch.compiler.disable
def _rnn_forward(module, input, hx):
    """The numbarnn forward of :class:`RNN`, :class:`LSTM` and :class:`GRU` (kept out of torch.compile's graphs:
    the kernels are not torch operations). Inputs torch would reject go to torch's own forward, which raises its
    own error."""
    if type(module) not in _DROP_IN_CLASSES:  # e.g. parametrize's subclass: the weights are computed on access
        module._update_flat_weights()
    weights = module._flat_weights  # kept current by RNNBase.__setattr__ and _apply (.to(), .double(), ...)
    dropout = module.dropout if module.training and module.num_layers > 1 else 0.0
    if isinstance(input, PackedSequence):
        return _packed_forward(module, input, hx, weights, dropout)
    lstm = module._CELL == "lstm"
    dims = input.dim()
    if (
        dims not in (2, 3)
        or input.size(0 if dims == 2 or not module.batch_first else 1) == 0
        or (
            hx is not None
            and ((type(hx) is tuple) != lstm or len(_states(hx)) != 1 + lstm or not _state_dims(hx, dims))
        )
    ):
        return module._TORCH_CLASS.forward(module, input, hx)  # raises torch's error for what was given
    batched = dims == 3
    batch_first = module.batch_first
    if not batched:  # as torch: a batch of one, on the batch axis of the module's layout
        input = input.unsqueeze(0 if batch_first else 1)
        if hx is not None:
            hx = _unsqueeze_states(hx, 1)
    if hx is None:
        module.check_input(input, None)
    else:
        module.check_forward_args(input, hx, None)
    output, h_n = _run(module, module._numbarnn_plan(input.dtype), input, hx, weights, None, batch_first, dropout)
    if not batched:
        return output.squeeze(0 if batch_first else 1), tuple(
            state.squeeze(1) for state in h_n
        ) if lstm else h_n.squeeze(1)
    return output, h_n


def _packed_forward(module, packed, hx, weights, dropout):
    """A PackedSequence through numbarnn: scattered to a time-major padded batch in the packed (sorted) order with
    each sequence's length, run, gathered back into packed rows; ``hx`` and ``h_n`` in the caller's order, as torch
    does (``sorted_indices`` / ``unsorted_indices``)."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    if hx is not None:
        hx = module.permute_hidden(hx, sorted_indices)
        module.check_forward_args(data, hx, batch_sizes)
    else:
        module.check_input(data, batch_sizes)
    rows, lengths = _packed_rows(batch_sizes)
    padded = data.new_zeros(steps * batch, data.size(1)).index_copy(0, rows, data).view(steps, batch, data.size(1))
    output, h_n = _run(module, module._numbarnn_plan(data.dtype), padded, hx, weights, lengths, False, dropout)
    output = output.reshape(steps * batch, -1).index_select(0, rows)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), module.permute_hidden(
        h_n, unsorted_indices
    )


class _CellDropIn(_DropIn):
    """What :class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell` share: when numbarnn runs (else torch's forward
    runs), the forward (a one-step sequence with autograd, numbarnn's one-step kernel without), the spec."""

    _CELL = None

    def forward(self, input, hx=None):
        dtype = input.dtype
        if (
            dtype not in _NUMPY_DTYPES
            or not input.is_cpu
            or getattr(self, "nonlinearity", "tanh") not in ("tanh", "relu")
            or self.weight_ih.dtype != dtype
            or not self.weight_ih.is_cpu
        ):
            return super().forward(input, hx)
        if hx is not None:
            for state in hx if type(hx) is tuple else (hx,):
                if not isinstance(state, torch.Tensor) or state.dtype != dtype or not state.is_cpu:
                    return super().forward(input, hx)
        if not _plain_autograd():
            return super().forward(input, hx)
        return _cell_forward(self, input, hx)

    def _numbarnn_spec(self, dtype):
        return Spec(
            self.input_size, self.hidden_size, 1, 1, dtype, getattr(self, "nonlinearity", "") == "relu", self._CELL
        ), self.bias


class RNNCell(_CellDropIn, _TORCH_RNN_CELL):
    r"""``torch.nn.RNNCell`` running numbarnn's kernels: same constructor, Parameters, ``state_dict``, repr, results
    and gradients (to float rounding).

    numbarnn runs the step when the input and ``hx`` are CPU tensors of dtype float32 or float64 and the Parameters
    are CPU tensors of that dtype; anything else (as for :class:`RNN`) runs ``torch.nn.RNNCell``'s own forward, which
    also raises torch's errors for inconsistent shapes. A step that needs no gradient runs numbarnn's one-step kernel
    (a few microseconds); one that does goes through the same autograd Function as :class:`RNN` (a one-step
    sequence), with the same guarantees; copies and scripting as for :class:`RNN`.
    """

    _TORCH_CLASS = _TORCH_RNN_CELL
    _CELL = "rnn"


class LSTMCell(_CellDropIn, _TORCH_LSTM_CELL):
    r"""``torch.nn.LSTMCell`` running numbarnn's kernels: ``cell(x, (h, c))`` returns ``(h', c')`` as torch's does,
    with gradients for both states. When numbarnn runs and what runs otherwise as for :class:`RNNCell`."""

    _TORCH_CLASS = _TORCH_LSTM_CELL
    _CELL = "lstm"


class GRUCell(_CellDropIn, _TORCH_GRU_CELL):
    r"""``torch.nn.GRUCell`` running numbarnn's kernels. When numbarnn runs and what runs otherwise as for
    :class:`RNNCell`."""

    _TORCH_CLASS = _TORCH_GRU_CELL
    _CELL = "gru"


def _cell_shapes_fit(cell, input, hx):
    """``input`` and ``hx`` (an LSTMCell's (h, c)) are shapes torch's cell accepts (else its forward raises its own
    error)."""
    dims = input.dim()
    if dims not in (1, 2) or input.size(-1) != cell.input_size:
        return False
    if hx is None:
        return True
    if cell._CELL == "lstm":
        return (
            type(hx) is tuple
            and len(hx) == 2
            and _cell_state_fits(cell, hx[0], input)
            and _cell_state_fits(cell, hx[1], input)
        )
    return type(hx) is not tuple and _cell_state_fits(cell, hx, input)


def _cell_state_fits(cell, state, input):
    return (
        state.dim() == input.dim()
        and state.size(-1) == cell.hidden_size
        and (input.dim() == 1 or state.size(0) == input.size(0))
    )


@torch.compiler.disable
def _cell_forward(cell, input, hx):
    if not _cell_shapes_fit(cell, input, hx):
        return cell._TORCH_CLASS.forward(cell, input, hx)  # raises torch's own error for the shapes given
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    if hx is not None and not batched:
        hx = _unsqueeze_states(hx, 0)
    weights = [getattr(cell, name) for name in (_CELL_NAMES if cell.bias else _CELL_NAMES[:2])]
    plan = cell._numbarnn_plan(x.dtype)
    lstm = cell._CELL == "lstm"
    if torch.is_grad_enabled() and (
        x.requires_grad or (hx is not None and _any_requires_grad(_states(hx))) or _any_requires_grad(weights)
    ):
        _, h_n = _run(
            cell, plan, x.unsqueeze(0), None if hx is None else _unsqueeze_states(hx, 0), weights, None, False, 0.0
        )
        new = tuple(state[0] for state in h_n) if lstm else h_n[0]
    else:
        new = _cell_step(plan, x, hx, _parameters_array(cell, plan, weights))  # serial: no threads to set
    if batched:
        return new
    return tuple(state.squeeze(0) for state in new) if lstm else new.squeeze(0)


def _cell_step(plan, x, hx, params):
    """One step without autograd: numbarnn's one-step kernel, writing the new state in place of a copy of hx (an
    LSTM's new (h, c))."""
    spec = plan.spec
    h, c = (hx, None) if type(hx) is not tuple else hx
    buffers = step_buffers(
        spec,
        _as_numpy(x),
        None if h is None else _as_numpy(h)[None],
        None if c is None else _as_numpy(c)[None],
        False,
    )
    run_step(spec, params, plan.offsets, buffers)
    if spec.cell == "lstm":
        return torch.from_numpy(buffers.out), torch.from_numpy(buffers.c[0])
    return torch.from_numpy(buffers.out)


def accelerate(model):
    """Switch every ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` (exact class)
    inside ``model`` — ``model`` itself included — to its drop-in (:class:`RNN`, :class:`LSTM`, ...), in place, and
    return ``model``.

    The switch changes each module's class and nothing else: it stays the same object, with the same Parameter
    objects (an optimiser built before keeps updating them), buffers, hooks and ``state_dict``. Subclasses of
    torch's modules are left alone (their forward may differ); so are modules already switched. When ``model``
    holds no module of those classes (switched or not), a ``UserWarning`` says so: nothing will run faster.

    Parameters
    ----------
    model : torch.nn.Module
        The model (or a single module) whose modules to switch.

    Returns
    -------
    torch.nn.Module
        ``model``, switched.
    """
    found = False
    for module in model.modules():
        drop_in = _DROP_INS.get(type(module))
        if drop_in is not None:
            module.__class__ = drop_in
            found = True
        elif type(module) in _DROP_IN_CLASSES:
            found = True
    if not found:
        warnings.warn(
            f"numbarnn.torch.accelerate: {type(model).__name__} holds no torch.nn.RNN, LSTM, GRU, RNNCell, "
            "LSTMCell or GRUCell (subclasses are left alone), so nothing was switched and nothing runs "
            "faster; use numbarnn.torch's classes in its definition instead",
            stacklevel=2,
        )
    return model


# torch's class -> its drop-in
_DROP_INS = {
    _TORCH_RNN: RNN,
    _TORCH_RNN_CELL: RNNCell,
    _TORCH_LSTM: LSTM,
    _TORCH_GRU: GRU,
    _TORCH_LSTM_CELL: LSTMCell,
    _TORCH_GRU_CELL: GRUCell,
}
_DROP_IN_CLASSES = frozenset(_DROP_INS.values())
