"""PyTorch drop-ins: ``numbarnn.torch.RNN`` and ``numbarnn.torch.RNNCell`` are ``torch.nn.RNN`` /
``torch.nn.RNNCell`` (subclasses: same constructor, Parameters, ``state_dict`` and repr) whose forward runs numbarnn's
kernels, with autograd, and :func:`accelerate` switches an existing model over in place.

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

import numba
import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
from torch.nn.utils.rnn import PackedSequence

from . import _engine as engine
from ._layout import build_layout
from ._step import stacked_step
from ._threads import configure_threads_once
from ._workspace import ScratchPool, Spec

__all__ = ["RNN", "RNNCell", "accelerate"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# torch's own classes, captured at import: a user (or a test suite) may rebind torch.nn.RNN / torch.nn.RNNCell to the
# drop-ins, and a fallback reaching torch's forward through those names would then call itself.
_TORCH_RNN = torch.nn.modules.rnn.RNN
_TORCH_RNN_CELL = torch.nn.modules.rnn.RNNCell
# What a module keeps in its __dict__ for this process only (see _DropIn).
_PROCESS_STATE = ("_numbarnn_plans", "_numbarnn_flat")


class _Plan:
    """What a call needs of its module besides the tensors: the kernels' spec, the parameter layout, and how to
    split the flat gradient back into one view per Parameter. Built once per (module, dtype)."""

    __slots__ = ("offsets", "scratch", "slices", "spare_backward", "spare_records", "spec", "total")

    def __init__(self, input_size, hidden_size, num_layers, num_directions, bias, dtype, relu):
        self.spec = Spec(input_size, hidden_size, num_layers, num_directions, dtype, relu)
        # Buffers of finished calls, reused by the next calls of the same shape: fresh large buffers cost page faults
        # on every call (measured: a 3-4 ms training step of the demo's model took 2-3 ms more without reuse).
        # Lists, so that taking one (list.pop) is atomic when several threads call the module.
        self.spare_records = []   # forward records whose graphs are gone (at most 2: a loop keeps one alive)
        self.spare_backward = []  # backward scratch buffers (at most 1)
        self.scratch = ScratchPool()  # for calls that keep nothing for a backward (no_grad, inference_mode)
        entries, self.offsets, self.total = build_layout(input_size, hidden_size, num_layers, num_directions, bias)
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
    if flat is not None and flat[1].dtype == plan.spec.dtype:
        tensor, array, base, itemsize = flat
        for weight, (start, _, shape) in zip(weights, plan.slices):
            if weight.data_ptr() != base + start * itemsize or weight.shape != shape or not weight.is_contiguous():
                break
        else:
            return array
    if not all(type(weight) is torch.nn.Parameter for weight in weights):
        return _flat_params(weights)
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even when called under inference_mode
        tensor = torch.cat([weight.detach().reshape(-1) for weight in weights])
        for weight, (start, stop, shape) in zip(weights, plan.slices):
            weight.data = tensor[start:stop].view(shape)  # the same values; no version bump, no new Parameter
    array = tensor.numpy()
    module.__dict__["_numbarnn_flat"] = (tensor, array, tensor.data_ptr(), tensor.element_size())
    return array


def _as_numpy(tensor):
    return None if tensor is None else tensor.detach().numpy()


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
    """Autograd node of one numbarnn forward; inputs ``(plan, options, x, h_0, *weights)``, outputs
    ``(output, h_n)``. ``options`` = (params, lengths or None, batch_first, dropout p or 0), ``params`` the (P,)
    NumPy array holding ``weights`` (:func:`_parameters_array`)."""

    @staticmethod
    def forward(ctx, plan, options, x, h_0, *weights):
        params, lengths, batch_first, dropout = options
        output, h_n, record = engine.forward(
            plan.spec, params, plan.offsets, _time_major(x.detach().numpy(), batch_first), _as_numpy(h_0), lengths,
            training=True, batch_first=batch_first, draw_dropout=_dropout_drawer(dropout) if dropout else None,
            spare=plan.take(plan.spare_records))
        ctx.save_for_backward(x, h_0, *weights)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the engine reads None as zeros
        ctx.plan, ctx.params, ctx.record, ctx.batch_first, ctx.lengths = plan, params, record, batch_first, lengths
        ctx.record_return = _RecordReturn(record, plan)
        return torch.from_numpy(output), torch.from_numpy(h_n)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        # torch runs a backward in grad mode exactly when it is asked to build a graph (create_graph=True)
        if torch.is_grad_enabled() or _batched(grad_output) or _batched(grad_h_n):
            return (None, None, *_differentiable_backward(ctx, grad_output, grad_h_n))
        _, _, *weights = ctx.saved_tensors  # raises if a saved tensor was changed in place since the forward
        plan, batch_first = ctx.plan, ctx.batch_first
        _follow_torch_threads()
        grads = np.zeros(plan.total, plan.spec.dtype)
        if grad_output is not None:
            grad_output = _time_major(grad_output.contiguous().numpy(), batch_first)
        grad_input, grad_h_0, scratch = engine.backward(
            ctx.params, plan.offsets, ctx.record, grad_output, _as_numpy(grad_h_n), grads,
            need_input_grad=ctx.needs_input_grad[2], batch_first=batch_first,
            spare=plan.take(plan.spare_backward))
        if scratch is not None and not plan.spare_backward:
            plan.spare_backward.append(scratch)  # returned arrays are copies: the scratch is free again
        needs = ctx.needs_input_grad
        weight_grads = [g if need else None for g, need in zip(plan.split(grads), needs[4:])]
        del weights
        return (None, None, None if grad_input is None else torch.from_numpy(grad_input),
                torch.from_numpy(grad_h_0) if needs[3] else None, *weight_grads)


def _batched(grad):
    """``grad`` is batched by vmap (autograd's ``is_grads_batched`` or a torch.func transform): ``.numpy()`` cannot
    read it."""
    return grad is not None and (_is_legacy_batched(grad) or _is_functorch_wrapped(grad))


def _differentiable_backward(ctx, grad_output, grad_h_n):
    """The gradients of ``(x, h_0, *weights)`` by torch operations: the forward recomputed from the saved tensors
    (with the call's own dropout masks) by :func:`_torch_forward`, and differentiated by autograd.

    For a backward that must build a graph (``create_graph=True``: double backward, gradient penalties) the
    recomputation starts from the saved tensors themselves, so the gradients returned depend on them as they should;
    under vmap it starts from detached copies. Slower than the kernels, and exact.
    """
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[2:]
    create_graph = torch.is_grad_enabled()
    record, batch_first = ctx.record, ctx.batch_first
    with torch.enable_grad():
        leaves = [tensor if tensor is None or (create_graph and tensor.requires_grad)
                  else tensor.detach().requires_grad_(need) for tensor, need in zip(saved, needs)]
        x, h_0, *weights = leaves
        output, h_n = _torch_forward(record.spec, x.transpose(0, 1) if batch_first else x, h_0, weights, ctx.lengths,
                                     _dropout_scales(record))
        if batch_first:
            output = output.transpose(0, 1)
        pairs = [(result, grad) for result, grad in ((output, grad_output), (h_n, grad_h_n)) if grad is not None]
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        if not pairs or not wanted:
            return [None] * len(leaves)
        grads = iter(torch.autograd.grad([result for result, _ in pairs], wanted, [grad for _, grad in pairs],
                                         create_graph=create_graph, allow_unused=True))
    return [next(grads) if need else None for need in needs]


def _dropout_scales(record):
    """The (num_layers - 1) dropout scales of ``record``'s forward as (L, N, D * H) tensors in the caller's batch
    order, or None without dropout."""
    buffers = record.buffers
    if buffers is None or buffers.dropout_scale.shape[0] == 0:
        return None
    return [torch.from_numpy(engine.from_rows(scale, record.packing, record.steps, record.batch, False, False))
            for scale in buffers.dropout_scale]


def _torch_forward(spec, x, h_0, weights, lengths, scales):
    """What the kernels compute, written with differentiable torch operations: the stack over time-major ``x``
    (L, N, H_in) from ``h_0`` ((num_layers * D, N, H) or None for zeros) with ``weights`` in torch's order; each
    sequence stops at its length (``lengths``: (N,) or None), the output is zero past it; ``scales`` multiply the
    inputs of layers 1... (dropout). Returns ``(output, h_n)``."""
    steps, batch = x.shape[0], x.shape[1]
    directions, hidden = spec.num_directions, spec.hidden_size
    per_direction = len(weights) // (spec.num_layers * directions)  # 4 with biases, 2 without
    activation = torch.relu if spec.relu else torch.tanh
    running = None if lengths is None else \
        (torch.arange(steps)[:, None] < torch.as_tensor(lengths)[None, :])[:, :, None]  # (L, N, 1)
    layer_input, finals = x, []
    for layer in range(spec.num_layers):
        if layer and scales is not None:
            layer_input = layer_input * scales[layer - 1]
        outputs = []
        for direction in range(directions):
            row = layer * directions + direction
            w_ih, w_hh, *biases = weights[row * per_direction:(row + 1) * per_direction]
            projected = torch.nn.functional.linear(layer_input, w_ih, biases[0] if biases else None)
            h = x.new_zeros(batch, hidden) if h_0 is None else h_0[row]
            step_outputs = [None] * steps
            for t in (range(steps) if direction == 0 else range(steps - 1, -1, -1)):
                new = activation(projected[t] + torch.nn.functional.linear(h, w_hh, biases[1] if biases else None))
                if running is None:
                    h = step_outputs[t] = new
                else:  # a finished (forward) or not yet started (reverse) sequence keeps its state
                    h = torch.where(running[t], new, h)
                    step_outputs[t] = torch.where(running[t], new, 0.0)
            outputs.append(torch.stack(step_outputs))
            finals.append(h)
        layer_input = torch.cat(outputs, 2) if directions == 2 else outputs[0]
    return layer_input, torch.stack(finals)


def _time_major(array, batch_first):
    return array.transpose(1, 0, 2) if batch_first else array


def _run(module, plan, x, h_0, weights, lengths, batch_first, dropout):
    """One numbarnn forward over batched ``x`` ((L, N, H_in), or (N, L, H_in) with ``batch_first``): through the
    autograd Function when a gradient can flow, else straight through the engine keeping nothing."""
    _follow_torch_threads()
    params = _parameters_array(module, plan, weights)
    if torch.is_grad_enabled() and (x.requires_grad or (h_0 is not None and h_0.requires_grad)
                                    or any(w.requires_grad for w in weights)):
        return _NumbaRNNFunction.apply(plan, (params, lengths, batch_first, dropout), x, h_0, *weights)
    output, h_n, _ = engine.forward(
        plan.spec, params, plan.offsets, _time_major(x.detach().numpy(), batch_first),
        _as_numpy(h_0), lengths, training=False, batch_first=batch_first,
        draw_dropout=_dropout_drawer(dropout) if dropout else None, pool=plan.scratch)
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

    A subclass says what its kernels need to know of it in ``_numbarnn_sizes()``: (input_size, hidden_size,
    num_layers, num_directions, bias, relu).
    """

    _TORCH_CLASS = None

    def _numbarnn_plan(self, dtype):
        plans = self.__dict__.setdefault("_numbarnn_plans", {})
        plan = plans.get(dtype)
        if plan is None:
            input_size, hidden_size, num_layers, num_directions, bias, relu = self._numbarnn_sizes()
            plan = plans[dtype] = _Plan(input_size, hidden_size, num_layers, num_directions, bias,
                                        _NUMPY_DTYPES[dtype], relu)
        return plan

    def __getstate__(self):
        """torch's state without this process's: the plans (scratch buffers, a lock) and the flat parameter buffer
        (its address means nothing in a copy), which the copy builds again on its first call. Used by
        ``copy.copy``, ``copy.deepcopy``, ``pickle`` and ``torch.save``."""
        return {name: value for name, value in super().__getstate__().items() if name not in _PROCESS_STATE}

    def __prepare_scriptable__(self):
        """``torch.jit.script`` compiles ``forward``, which runs Python kernels: it scripts torch's own module
        instead, sharing this one's Parameters (TorchScript runs torch's kernels). Called by ``torch.jit.script``,
        which also puts the returned module in place of this one in its parent module."""
        state = {name: copy.copy(value) if isinstance(value, dict) else value
                 for name, value in self.__getstate__().items()}
        twin = self._TORCH_CLASS.__new__(self._TORCH_CLASS)
        twin.__setstate__(state)
        return twin


class RNN(_DropIn, _TORCH_RNN):
    r"""``torch.nn.RNN`` running numbarnn's kernels: same constructor, Parameters, ``state_dict``, repr, results and
    gradients (to float rounding).

    numbarnn runs the forward (and, through autograd, the backward) when all of these hold: the input is a CPU
    tensor (or a PackedSequence of one) of dtype float32 or float64 and the Parameters and ``hx`` are CPU tensors of
    that dtype. Anything else — another device or dtype, forward-mode AD (dual tensors), a ``torch.func`` transform
    such as ``vmap``, ``torch.jit.trace`` — runs ``torch.nn.RNN``'s own forward, unchanged; ``torch.jit.script``
    scripts ``torch.nn.RNN`` itself (see :class:`_DropIn`). Errors are torch's (its own checks run).

    Threads: each call runs numba's kernels on ``torch.get_num_threads()`` threads (capped by numba's pool,
    ``NUMBA_NUM_THREADS``); the BLAS numba calls runs on one thread. (numba's count is set per calling thread when
    torch's changes; a ``numba.set_num_threads`` of your own in between is not undone.)

    Memory: on the first call the module's Parameters (the same objects) move into one flat buffer in the kernels'
    layout — their ``.data`` becomes a view of it, as cuDNN's ``flatten_parameters`` does — so that calls read them
    in place; arrays aliasing the old ``.data`` no longer see updates. The buffers of the last two training calls
    whose graphs are gone are kept for reuse by the next calls of the same shape. Copies (``copy.deepcopy``, pickle,
    ``torch.save``) leave these buffers out and build their own on their first call.

    Autograd: gradients of the input, ``hx`` and every Parameter, as torch computes them. An input without
    ``requires_grad`` costs no input gradient; under ``no_grad`` / ``inference_mode`` nothing is kept. Each call keeps
    its own saved state on its graph (two forwards then one backward of their sum, ``retain_graph=True``), freed with
    the graph; changing the input, ``hx`` or a weight in place before backward raises torch's usual error. A
    backward that builds a graph (``create_graph=True``: double backward) or runs under vmap (batched gradients)
    differentiates a recomputation of the forward by torch operations: exact, slower. Dropout (training mode,
    between layers) draws from torch's generator, so ``torch.manual_seed`` reproduces it (the masks differ from
    torch.nn.RNN's own, which draws in another order).
    """

    _TORCH_CLASS = _TORCH_RNN

    def forward(self, input, hx=None):
        if not self._numbarnn_handles(input, hx):
            return super().forward(input, hx)
        return _rnn_forward(self, input, hx)

    def _numbarnn_handles(self, input, hx):
        data = input.data if isinstance(input, PackedSequence) else input
        dtype = data.dtype
        if (dtype not in _NUMPY_DTYPES or data.device.type != "cpu" or self.proj_size != 0
                or self.mode not in ("RNN_TANH", "RNN_RELU")
                or (hx is not None and (hx.dtype != dtype or hx.device.type != "cpu"))):
            return False
        if any(w.dtype != dtype or w.device.type != "cpu" for w in self._flat_weights):
            return False
        return _plain_autograd()

    def _numbarnn_sizes(self):
        return (self.input_size, self.hidden_size, self.num_layers, 2 if self.bidirectional else 1, self.bias,
                self.mode == "RNN_RELU")


@torch.compiler.disable
def _rnn_forward(module, input, hx):
    """The numbarnn forward of :class:`RNN` (kept out of torch.compile's graphs: the kernels are not torch
    operations)."""
    if type(module) is not RNN:  # e.g. torch.nn.utils.parametrize's subclass: the weights are computed on access
        module._update_flat_weights()
    weights = module._flat_weights  # kept current by RNNBase.__setattr__ and _apply (.to(), .double(), ...)
    dropout = module.dropout if module.training and module.num_layers > 1 else 0.0
    if isinstance(input, PackedSequence):
        return _packed_forward(module, input, hx, weights, dropout)
    if input.dim() not in (2, 3):
        raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
    batched = input.dim() == 3
    batch_first = module.batch_first
    if not batched:  # as torch: a batch of one, on the batch axis of the module's layout
        input = input.unsqueeze(0 if batch_first else 1)
        if hx is not None:
            if hx.dim() != 2:
                raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
    elif hx is not None and hx.dim() != 3:
        raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
    if hx is None:
        module.check_input(input, None)
    else:
        module.check_forward_args(input, hx, None)
    if input.size(1 if batch_first else 0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    output, h_n = _run(module, module._numbarnn_plan(input.dtype), input, hx, weights, None, batch_first, dropout)
    if not batched:
        return output.squeeze(0 if batch_first else 1), h_n.squeeze(1)
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
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), \
        module.permute_hidden(h_n, unsorted_indices)


class RNNCell(_DropIn, _TORCH_RNN_CELL):
    r"""``torch.nn.RNNCell`` running numbarnn's kernels: same constructor, Parameters, ``state_dict``, repr, results
    and gradients (to float rounding).

    numbarnn runs the step when the input and ``hx`` are CPU tensors of dtype float32 or float64 and the Parameters
    are CPU tensors of that dtype; anything else (as for :class:`RNN`) runs ``torch.nn.RNNCell``'s own forward, which
    also raises torch's errors for inconsistent shapes. A step that needs no gradient runs numbarnn's one-step kernel
    (a few microseconds); one that does goes through the same autograd Function as :class:`RNN` (a one-step
    sequence), with the same guarantees; copies and scripting as for :class:`RNN`.
    """

    _TORCH_CLASS = _TORCH_RNN_CELL

    def forward(self, input, hx=None):
        dtype = input.dtype
        if (dtype not in _NUMPY_DTYPES or input.device.type != "cpu" or self.nonlinearity not in ("tanh", "relu")
                or (hx is not None and (hx.dtype != dtype or hx.device.type != "cpu"))
                or self.weight_ih.dtype != dtype or self.weight_ih.device.type != "cpu"
                or not _plain_autograd()):
            return super().forward(input, hx)
        return _cell_forward(self, input, hx)

    def _numbarnn_sizes(self):
        return self.input_size, self.hidden_size, 1, 1, self.bias, self.nonlinearity == "relu"


@torch.compiler.disable
def _cell_forward(cell, input, hx):
    batched = input.dim() == 2
    if not (input.dim() in (1, 2) and input.size(-1) == cell.input_size
            and (hx is None or (hx.dim() == input.dim() and hx.size(-1) == cell.hidden_size
                                and (not batched or hx.size(0) == input.size(0))))):
        return _TORCH_RNN_CELL.forward(cell, input, hx)  # raises torch's own error for the shapes given
    x = input if batched else input.unsqueeze(0)
    if hx is not None and not batched:
        hx = hx.unsqueeze(0)
    weights = [getattr(cell, name) for name in (_CELL_NAMES if cell.bias else _CELL_NAMES[:2])]
    plan = cell._numbarnn_plan(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or (hx is not None and hx.requires_grad)
                                    or any(w.requires_grad for w in weights)):
        output, _ = _run(cell, plan, x.unsqueeze(0), None if hx is None else hx.unsqueeze(0), weights, None, False,
                         0.0)
        output = output[0]
    else:
        output = _cell_step(plan, x, hx, _parameters_array(cell, plan, weights))  # serial: no threads to set
    return output if batched else output.squeeze(0)


def _cell_step(plan, x, hx, params):
    """One step without autograd: numbarnn's one-step kernel, writing the new state in place of a copy of hx."""
    spec = plan.spec
    batch = x.size(0)
    state = np.zeros((1, batch, spec.hidden_size), spec.dtype)
    if hx is not None:
        state[0] = hx.detach().numpy()
    output = np.empty((batch, spec.hidden_size), spec.dtype)  # the kernel leaves the new state here
    stacked_step(params, plan.offsets, np.ascontiguousarray(x.detach().numpy()), state, spec.relu,
                 np.zeros(spec.hidden_size, spec.dtype), output)
    return torch.from_numpy(output)


def accelerate(model):
    """Switch every ``torch.nn.RNN`` and ``torch.nn.RNNCell`` (exact class) inside ``model`` — ``model`` itself
    included — to :class:`RNN` / :class:`RNNCell`, in place, and return ``model``.

    The switch changes each module's class and nothing else: it stays the same object, with the same Parameter
    objects (an optimiser built before keeps updating them), buffers, hooks and ``state_dict``. Subclasses of
    torch's modules are left alone (their forward may differ); so are modules already switched.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        ``model``, switched.
    """
    for module in model.modules():
        drop_in = _DROP_INS.get(type(module))
        if drop_in is not None:
            module.__class__ = drop_in
    return model


_DROP_INS = {_TORCH_RNN: RNN, _TORCH_RNN_CELL: RNNCell}  # torch's class -> its drop-in
