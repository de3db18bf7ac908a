"""``numbarnn.RNNCell``, ``LSTMCell`` and ``GRUCell``: one step with torch's cells' surface, and a tape for BPTT."""

from __future__ import annotations

import functools
import threading
import warnings
from typing import TYPE_CHECKING, Generic

import numpy as np

from . import _engine as engine
from ._cells import GATES
from ._layout import build_layout
from ._module import Module, State
from ._step import run_step
from ._validation import as_array, check_nonlinearity, check_size, dtype_error
from ._workspace import Spec, step_buffers

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Self

    from ._typing import FloatArray, StateGradLike, StateLike

# A training-mode cell records every call until backward() consumes it; past this many unconsumed calls it warns
# once, since a cell used for inference without eval() would otherwise grow memory without bound.
TAPE_WARNING_LENGTH = 10_000

_HX_NAMES = {False: ("hx",), True: ("hx[0]", "hx[1]")}  # what the messages call hx's parts (by _lstm)

_TORCH_NAMES = {
    "weight_ih_l0": "weight_ih",
    "weight_hh_l0": "weight_hh",
    "bias_ih_l0": "bias_ih",
    "bias_hh_l0": "bias_hh",
}


class CellBase(Module, Generic[State]):
    """What RNNCell, LSTMCell and GRUCell share: parameters, argument checks, the one-step kernel and the tape.

    Subclasses set ``_CELL`` and ``_NAME``; an LSTM cell's state is the tuple (h, c).
    """

    _CELL = "rnn"
    _NAME = "RNNCell"
    _TRANSIENT = {"_tape": list, "_warned_tape": False, "_tape_owner": None, "_tape_lock": threading.Lock}
    nonlinearity: str = "tanh"
    # Set by _setup from the constructor's arguments (annotations only: no class attributes).
    input_size: int
    hidden_size: int
    bias: bool

    def _setup(self, input_size, hidden_size, bias, dtype, seed):
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.bias = bool(bias)
        entries, self._offsets, total = build_layout(
            self.input_size, self.hidden_size, 1, 1, self.bias, GATES[self._CELL]
        )
        entries = [(_TORCH_NAMES[name], offset, shape) for name, offset, shape in entries]
        self._init_parameters(entries, total, dtype, 1.0 / np.sqrt(self.hidden_size), np.random.default_rng(seed))
        self._tape = []
        self._warned_tape = False
        self._tape_owner = None  # the thread whose calls the tape holds: one thread trains a cell at a time
        self._tape_lock = threading.Lock()

    _lstm = False  # an LSTM's state is the tuple (h, c): set from ``_CELL`` for each subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._lstm = cls._CELL == "lstm"  # a class attribute: a property cost ~0.2 µs per use on the step path

    @functools.cached_property
    def _spec(self):
        """What the kernels need to know of the module, built on first use: its sizes and nonlinearity are fixed at
        construction (as torch's ``mode`` is), and building it at each ``step`` cost ~1 µs of a ~5 µs call."""
        return Spec(self.input_size, self.hidden_size, 1, 1, self.dtype, self.nonlinearity == "relu", self._CELL)

    def extra_repr(self) -> str:
        extra = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            extra += ", bias=False"
        if self.nonlinearity != "tanh":
            extra += f", nonlinearity={self.nonlinearity}"
        return extra

    def __call__(self, input: npt.ArrayLike, hx: StateLike | None = None) -> State:
        return self.forward(input, hx)

    def forward(self, input: npt.ArrayLike, hx: StateLike | None = None) -> State:
        """One step.

        Parameters
        ----------
        input : array_like
            (N, H_in) or unbatched (H_in,), of the module dtype.
        hx : array_like, or for an LSTM cell a tuple (h, c) of them, optional
            (N, H_out) or (H_out,) (each part); zeros when omitted.

        Returns
        -------
        ndarray, or for an LSTM cell a tuple (h', c')
            The next state h', (N, H_out) or (H_out,) (each part of an LSTM cell's).
        """
        x = np.asarray(input)  # converted once, checked in torch's order (each step of the checks costs ~0.1 us)
        if x.ndim not in (1, 2):
            raise ValueError(f"{self._NAME}: Expected input to be 1D or 2D, got {x.ndim}D instead")
        parts = None if hx is None else self._hx_parts(hx)
        if x.dtype != self.dtype:
            raise dtype_error(input, x, "input", self.dtype)  # the original object: the fix it names depends on it
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has inconsistent input_size: got {x.shape[-1]} expected {self.input_size}")
        batched = x.ndim == 2
        rows = x if batched else x[None]
        if parts is None:
            h = c = None
        else:
            expected = (rows.shape[0], self.hidden_size) if batched else (self.hidden_size,)
            for index, (given, part) in enumerate(parts):
                if part.dtype != self.dtype or part.shape != expected:  # one test on the way of every call
                    self._state_error(given, part, index, rows.shape[0], batched)
            h, c = parts[0][1], parts[1][1] if self._lstm else None
        spec = self._spec
        step = step_buffers(spec, rows, h, c, keep=self.training)
        run_step(spec, self._param_flat, self._offsets, step)
        if self.training:
            # the tape keeps what the backward reads (its own copies: the caller may change the arrays it gets)
            self._record(step._replace(h=None, c=None, out=step.out.copy()), batched)
        if self._lstm:  # State is the tuple (h, c) then, which a type checker cannot tell from _lstm
            return (step.out, step.c[0]) if batched else (step.out[0], step.c[0, 0])  # type: ignore[return-value]
        return step.out if batched else step.out[0]

    def _hx_parts(self, hx):
        """``hx`` as the tuple of its parts, each as ``(given, np.asarray(given))`` and checked to be 1-D or 2-D
        (torch's first checks)."""
        if not self._lstm:
            array = np.asarray(hx)
            if array.ndim not in (1, 2):
                raise ValueError(f"{self._NAME}: Expected hidden to be 1D or 2D, got {array.ndim}D instead")
            return ((hx, array),)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"LSTMCell: hx must be a tuple (h, c) of two arrays, as for torch.nn.LSTMCell, got {type(hx).__name__}"
            )
        parts = tuple((part, np.asarray(part)) for part in hx)
        for index, (_, array) in enumerate(parts):
            if array.ndim not in (1, 2):
                raise ValueError(f"{self._NAME}: Expected hx[{index}] to be 1D or 2D, got {array.ndim}D instead")
        return parts

    def _state_error(self, given, part, index, batch, batched):
        """Raise the error for part ``index`` of ``hx`` (``part``: ``given`` as an array), whose dtype or shape is
        not the input's: (N, H), or (H,) for an unbatched input."""
        if part.dtype != self.dtype:
            raise dtype_error(given, part, _HX_NAMES[self._lstm][index], self.dtype)
        if part.ndim != (2 if batched else 1):
            raise ValueError(
                f"{self._NAME}: input is {2 if batched else 1}-D but {_HX_NAMES[self._lstm][index]} is "
                f"{part.ndim}-D; give both batched (N, H) or both unbatched (H,)"
            )
        rows = part.shape[0] if batched else 1
        if rows != batch:
            raise ValueError(f"Input batch size {batch} doesn't match hidden{index} batch size {rows}")
        if part.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden{index} has inconsistent hidden_size: got {part.shape[-1]}, expected {self.hidden_size}"
            )
        raise AssertionError(f"hx part {index} of shape {part.shape} and dtype {part.dtype} passed every check")

    def backward(self, grad_h: StateGradLike) -> tuple[FloatArray, State]:
        """Backpropagate through the most recent unconsumed call.

        Parameters
        ----------
        grad_h : array_like, or for an LSTM cell a tuple (grad_h, grad_c) of them
            Gradient with respect to that call's output h' (and c'), same shape (either part of an LSTM cell's tuple
            may be None for zeros).

        Returns
        -------
        grad_input : ndarray
            Gradient with respect to that call's input, same shape.
        grad_hx : ndarray, or for an LSTM cell a tuple
            Gradient with respect to that call's hx (also when hx was omitted), shaped like h' (and c').
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
        step, batched = self._tape[-1]
        batch, hidden = step.out.shape
        if self._lstm:
            if not isinstance(grad_h, (tuple, list)) or len(grad_h) != 2:
                raise TypeError(
                    "LSTMCell.backward takes the tuple (grad_h, grad_c) of the gradients of h' and c', "
                    f"got {type(grad_h).__name__}"
                )
            names: tuple[str, ...] = ("grad_h", "grad_c")
            parts = list(grad_h)
        else:
            names, parts = ("grad_h",), [grad_h]
        expected = (batch, hidden) if batched else (hidden,)
        for index, (name, part) in enumerate(zip(names, parts, strict=True)):
            if part is None:
                continue
            part = as_array(part, name, self.dtype)
            if part.shape != expected:
                raise ValueError(
                    f"{name} must have shape {expected} (the shape of the output of the call being backpropagated), "
                    f"got {part.shape}"
                )
            parts[index] = part.reshape(1, batch, hidden)
        with self._tape_lock:
            self._tape.pop()
            if not self._tape:
                self._tape_owner = None
        record = engine.step_record(self._spec, step)
        grad_h_n = (None, parts[1]) if self._lstm else None
        grad_x, grad_hx, _ = engine.backward(
            self._param_flat,
            self._offsets,
            record,
            parts[0],
            grad_h_n,
            self._grad_flat,
            need_input_grad=True,
            batch_first=False,
        )
        grad_hx = tuple(p[0] if batched else p[0, 0] for p in (grad_hx if self._lstm else (grad_hx,)))
        grad_x = grad_x[0] if batched else grad_x[0, 0]
        # State: (h, c) for an LSTM cell, else h (a type checker cannot tell from _lstm)
        return grad_x, (grad_hx if self._lstm else grad_hx[0])  # type: ignore[return-value]

    def clear_tape(self) -> None:
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

    def train(self, mode: bool = True) -> Self:
        """Switch to training mode (the default), or to eval mode, which records nothing and drops the tape.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for eval mode.

        Returns
        -------
        Module
            The module itself.
        """
        if not mode:
            self.clear_tape()
        return super().train(mode)

    def _record(self, step, batched):
        with self._tape_lock:
            self._check_tape_owner("forward")
            self._tape_owner = threading.get_ident()
            self._tape.append((step, batched))
        if len(self._tape) >= TAPE_WARNING_LENGTH and not self._warned_tape:
            self._warned_tape = True
            warnings.warn(
                f"{self._NAME} in training mode has recorded {len(self._tape)} calls that no backward() consumed; "
                "for inference call cell.eval() (which records nothing), or call cell.clear_tape() to drop the tape",
                RuntimeWarning,
                stacklevel=3,
            )


_TRAINING_DOC = """    training : bool
        In training mode (the default) each call is recorded on a tape, and each :meth:`backward` consumes the most
        recent unconsumed call (last in, first out), so ``for x_t in X: h = cell(x_t, h)`` is trained by calling
        ``backward`` for the steps in reverse order. In eval mode nothing is recorded. :meth:`zero_grad` clears the
        gradients only (so torch's order forward, ``zero_grad``, backward, step works); the tape is dropped by the
        backwards consuming it, by :meth:`eval` or by :meth:`clear_tape`. A warning is issued once the tape holds
        ``TAPE_WARNING_LENGTH`` unconsumed calls.
"""


class RNNCell(CellBase["FloatArray"]):
    __doc__ = (
        r"""One Elman RNN step, :math:`h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`, like
    ``torch.nn.RNNCell``.

    Parameters
    ----------
    input_size : int
        H_in, features of the input.
    hidden_size : int
        H_out, features of the hidden state.
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
        Checked here, in the constructor (torch checks it only at the first call).
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        The dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the initialisation U(-1/sqrt(H_out), 1/sqrt(H_out)).

    Attributes
    ----------
    weight_ih (H_out, H_in), weight_hh (H_out, H_out), bias_ih, bias_hh (H_out,) : ndarray
        Also in ``params``; their gradients in ``grads``.
"""
        + _TRAINING_DOC
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self._setup(input_size, hidden_size, bias, dtype, seed)


class LSTMCell(CellBase["tuple[FloatArray, FloatArray]"]):
    __doc__ = (
        r"""One LSTM step, like ``torch.nn.LSTMCell``: gates i, f, g, o of
    :math:`x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh}`, :math:`c' = f c + i g`, :math:`h' = o \tanh(c')`.
    ``cell(x, (h, c))`` returns ``(h', c')``; ``cell.backward((grad_h, grad_c))`` returns
    ``grad_x, (grad_h, grad_c)``.

    Parameters
    ----------
    input_size : int
        H_in.
    hidden_size : int
        H, features of h and c.
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        The dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the initialisation U(-1/sqrt(H), 1/sqrt(H)).

    Attributes
    ----------
    weight_ih (4H, H_in), weight_hh (4H, H), bias_ih, bias_hh (4H,) : ndarray
        Also in ``params``; their gradients in ``grads``.
"""
        + _TRAINING_DOC
    )

    _CELL = "lstm"
    _NAME = "LSTMCell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self._setup(input_size, hidden_size, bias, dtype, seed)


class GRUCell(CellBase["FloatArray"]):
    __doc__ = (
        r"""One GRU step, like ``torch.nn.GRUCell``: gates r, z, n with
    :math:`n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))`, :math:`h' = (1 - z) n + z h`.

    Parameters
    ----------
    input_size : int
        H_in.
    hidden_size : int
        H.
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        The dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the initialisation U(-1/sqrt(H), 1/sqrt(H)).

    Attributes
    ----------
    weight_ih (3H, H_in), weight_hh (3H, H), bias_ih, bias_hh (3H,) : ndarray
        Also in ``params``; their gradients in ``grads``.
"""
        + _TRAINING_DOC
    )

    _CELL = "gru"
    _NAME = "GRUCell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self._setup(input_size, hidden_size, bias, dtype, seed)
