"""``numbarnn.RNNCell``: one step of an Elman RNN with ``torch.nn.RNNCell``'s surface, and a tape for BPTT."""

import threading
import warnings

import numpy as np

from . import _engine as engine
from ._engine import Record
from ._layout import build_layout
from ._module import Module
from ._step import stacked_step
from ._validation import as_array, check_nonlinearity, check_size
from ._workspace import Spec, equal_length_packing, forward_buffers
from .rnn import _zeros

# A training-mode cell records every call until backward() consumes it; past this many unconsumed calls it warns
# once, since a cell used for inference without eval() would otherwise grow memory without bound.
TAPE_WARNING_LENGTH = 10_000

_TORCH_NAMES = {"weight_ih_l0": "weight_ih", "weight_hh_l0": "weight_hh", "bias_ih_l0": "bias_ih",
                "bias_hh_l0": "bias_hh"}


class RNNCell(Module):
    r"""One Elman RNN step, :math:`h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`, like ``torch.nn.RNNCell``.

    Parameters
    ----------
    input_size : int
        H_in, features of the input.
    hidden_size : int
        H_out, features of the hidden state.
    bias : bool, default True
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
        Checked here, in the constructor (torch checks it only at the first call).
    dtype : np.float32 or np.float64, keyword-only, default np.float32
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the initialisation U(-1/sqrt(H_out), 1/sqrt(H_out)).

    Attributes
    ----------
    weight_ih (H_out, H_in), weight_hh (H_out, H_out), bias_ih, bias_hh (H_out,) : ndarray
        Also in ``params``; their gradients in ``grads``.
    training : bool
        In training mode (the default) each call is recorded on a tape, and each :meth:`backward` consumes the most
        recent unconsumed call (last in, first out), so ``for x_t in X: h = cell(x_t, h)`` is trained by calling
        ``backward`` for the steps in reverse order. In eval mode nothing is recorded. :meth:`zero_grad` clears the
        gradients only (so torch's order forward, ``zero_grad``, backward, step works); the tape is dropped by the
        backwards consuming it, by :meth:`eval` or by :meth:`clear_tape`. A warning is issued once the tape holds
        ``TAPE_WARNING_LENGTH`` unconsumed calls.
    """

    _TRANSIENT = {"_tape": list, "_warned_tape": False, "_tape_owner": None, "_tape_lock": threading.Lock}

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *, dtype=np.float32, seed=None):
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.bias = bool(bias)
        self.nonlinearity = check_nonlinearity(nonlinearity)
        entries, self._offsets, total = build_layout(self.input_size, self.hidden_size, 1, 1, self.bias)
        entries = [(_TORCH_NAMES[name], offset, shape) for name, offset, shape in entries]
        self._init_parameters(entries, total, dtype, 1.0 / np.sqrt(self.hidden_size), np.random.default_rng(seed))
        self._tape = []
        self._warned_tape = False
        self._tape_owner = None  # the thread whose calls the tape holds: one thread trains a cell at a time
        self._tape_lock = threading.Lock()

    def extra_repr(self):
        extra = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            extra += ", bias=False"
        if self.nonlinearity != "tanh":
            extra += f", nonlinearity={self.nonlinearity}"
        return extra

    def __call__(self, input, hx=None):
        return self.forward(input, hx)

    def forward(self, input, hx=None):
        """One step.

        Parameters
        ----------
        input : ndarray
            (N, H_in) or unbatched (H_in,), of the module dtype.
        hx : ndarray, optional
            (N, H_out) or (H_out,); zeros when omitted.

        Returns
        -------
        h' : ndarray
            (N, H_out) or (H_out,).
        """
        x = np.asarray(input)
        if x.ndim not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {x.ndim}D instead")
        if hx is not None:
            hx = np.asarray(hx)
            if hx.ndim not in (1, 2):
                raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.ndim}D instead")
        x = as_array(input, "input", self.dtype)  # the original object: the fix it names depends on it
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has inconsistent input_size: got {x.shape[-1]} expected {self.input_size}")
        batched = x.ndim == 2
        x = x if batched else x[None]
        batch = x.shape[0]
        if hx is not None:
            hx = as_array(hx, "hx", self.dtype)
            if hx.ndim != (2 if batched else 1):
                raise ValueError(
                    f"RNNCell: input is {2 if batched else 1}-D but hx is {hx.ndim}-D; give both batched "
                    "(N, H) or both unbatched (H,)"
                )
            hx = hx if batched else hx[None]
            if hx.shape[0] != batch:
                raise ValueError(f"Input batch size {batch} doesn't match hidden0 batch size {hx.shape[0]}")
            if hx.shape[1] != self.hidden_size:
                raise ValueError(
                    f"hidden0 has inconsistent hidden_size: got {hx.shape[1]}, expected {self.hidden_size}"
                )
        hidden = self.hidden_size
        state = np.zeros((1, batch, hidden), self.dtype) if hx is None else hx.reshape(1, batch, hidden).copy()
        x_rows = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        output = np.empty((batch, hidden), self.dtype)  # the kernel leaves h' here
        # The tape keeps its own copies: the caller may reuse or modify its arrays before backward().
        h_start = state[0].copy() if self.training else None  # the kernel advances `state` in place
        stacked_step(self._param_flat, self._offsets, x_rows, state, self.nonlinearity == "relu",
                     _zeros(hidden, self.dtype), output)
        if self.training:
            self._record(x_rows.copy() if x_rows is x else x_rows, h_start, output.copy(), batched)
        return output if batched else output[0]

    def backward(self, grad_h):
        """Backpropagate through the most recent unconsumed call.

        Parameters
        ----------
        grad_h : ndarray
            Gradient with respect to that call's output h', same shape.

        Returns
        -------
        grad_input : ndarray
            Gradient with respect to that call's input, same shape.
        grad_hx : ndarray
            Gradient with respect to that call's hx (also when hx was omitted), shaped like h'.
        """
        self._check_tape_owner("backward")
        if not self._tape:
            if not self.training:
                raise RuntimeError(
                    "backward() has no recorded call: the cell is in eval mode, which records nothing; call "
                    "cell.train() and run the forward steps again"
                )
            raise RuntimeError(
                "backward() has no recorded call to backpropagate through: the cell has not been called in training "
                "mode since its tape was last emptied (each backward consumes one call, most recent first); run the "
                "forward steps again"
            )
        x_rows, h_prev, top_out, batched = self._tape[-1]
        batch, hidden = top_out.shape
        grad = as_array(grad_h, "grad_h", self.dtype)
        expected = (batch, hidden) if batched else (hidden,)
        if grad.shape != expected:
            raise ValueError(
                f"grad_h must have shape {expected} (the shape of the output of the call being backpropagated), "
                f"got {grad.shape}"
            )
        with self._tape_lock:
            self._tape.pop()
            if not self._tape:
                self._tape_owner = None
        spec = Spec(self.input_size, hidden, 1, 1, self.dtype, self.nonlinearity == "relu")
        packing = equal_length_packing(1, batch, 1)
        forward = forward_buffers(spec, packing, training=True, dropped=0, x_rows=x_rows)
        forward.h_prev[0, 0] = h_prev
        forward.top_out[...] = top_out
        record = Record(spec, packing, forward, 1, batch)
        grad_x, grad_hx, _ = engine.backward(self._param_flat, self._offsets, record, grad.reshape(1, batch, hidden),
                                             None, self._grad_flat, need_input_grad=True, batch_first=False)
        if not batched:
            return grad_x[0, 0], grad_hx[0, 0]
        return grad_x[0], grad_hx[0]

    def clear_tape(self):
        """Drop every recorded call that no :meth:`backward` has consumed (a truncated BPTT window, say)."""
        with self._tape_lock:
            self._tape.clear()
            self._tape_owner = None

    def _check_tape_owner(self, what):
        """A training cell's tape belongs to the thread that made its calls; another thread's call would interleave
        with them and a backward would consume the wrong one."""
        owner = self._tape_owner
        if owner is not None and owner != threading.get_ident() and self._tape:
            raise RuntimeError(
                f"{what}() in training mode from a thread other than the one whose calls the cell's tape holds: "
                "another thread is training this cell, and interleaved calls would give wrong gradients; train it "
                "from one thread (or give each thread its own copy.deepcopy(cell)), call cell.clear_tape() to drop "
                "the other thread's calls, or cell.eval() for inference"
            )

    def train(self, mode=True):
        """Switch to training mode (the default), or to eval mode, which records nothing and drops the tape."""
        if not mode:
            self.clear_tape()
        return super().train(mode)

    def _record(self, x_rows, h_prev, top_out, batched):
        with self._tape_lock:
            self._check_tape_owner("forward")
            self._tape_owner = threading.get_ident()
            self._tape.append((x_rows, h_prev, top_out, batched))
        if len(self._tape) >= TAPE_WARNING_LENGTH and not self._warned_tape:
            self._warned_tape = True
            warnings.warn(
                f"RNNCell in training mode has recorded {len(self._tape)} calls that no backward() consumed; for "
                "inference call cell.eval() (which records nothing), or call cell.clear_tape() to drop the tape",
                RuntimeWarning,
                stacklevel=3,
            )
