"""``numbarnn.RNN``, ``numbarnn.LSTM`` and ``numbarnn.GRU``: multi-layer recurrent networks with torch's arguments,
shapes, names and messages, on one engine (:mod:`numbarnn._engine`) and one base class that owns what they share:
argument checks, the parameter layout, the training slot and its lock, ``step``, ``backward``."""

from __future__ import annotations

import functools
import numbers
import threading
import warnings
from typing import TYPE_CHECKING, Any, Generic

import numpy as np

from . import _engine as engine
from ._cells import GATES
from ._layout import build_layout
from ._module import Module, State
from ._step import run_step
from ._validation import (
    as_array,
    check_lengths_range,
    check_lengths_type,
    check_nonlinearity,
    check_size,
    dtype_error,
)
from ._workspace import Spec, step_buffers

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Self

    from ._typing import FloatArray, StateGradLike, StateLike


class RecurrentBase(Module, Generic[State]):
    """What RNN, LSTM and GRU share (torch's ``RNNBase``). Subclasses set ``_CELL`` and ``_NAME`` and call
    :meth:`_setup`; an LSTM's state is the tuple (h, c) everywhere (``_STATE_PARTS`` = 2)."""

    _CELL = "rnn"
    _NAME = "RNN"
    _TRANSIENT = {
        "_record": None,
        "_spare_backward": None,
        "_training_lock": threading.Lock,
        "_calls": engine.CallCache,
    }
    nonlinearity: str = "tanh"
    proj_size: int = 0
    # Set by _setup from the constructor's arguments (annotations only: no class attributes).
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    num_directions: int

    def _setup(
        self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, dtype, seed
    ):
        self.check_dropout(dropout, num_layers)
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.num_layers = check_size(num_layers, "num_layers")
        self.proj_size = self.check_proj_size(proj_size, self.hidden_size)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        rng = np.random.default_rng(seed)
        entries, self._offsets, total = build_layout(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.num_directions,
            self.bias,
            GATES[self._CELL],
            self.proj_size,
        )
        self._init_parameters(entries, total, dtype, 1.0 / np.sqrt(self.hidden_size), rng)
        self._dropout_rng = rng
        self._record = None  # what the last training forward left for backward (it owns its buffers)
        self._spare_backward = None  # the last backward's buffers, reused while the shape stays the same
        self._training_lock = threading.Lock()
        self._calls = engine.CallCache()  # plans of the shapes it ran, inference buffers of its last calls

    @functools.cached_property
    def _spec(self):
        """What the kernels need to know of the module, built on first use: its sizes and nonlinearity are fixed at
        construction (as torch's ``mode`` is), and building it at each ``step`` cost ~1 µs of a ~5 µs call."""
        return Spec(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.num_directions,
            self.dtype,
            self.nonlinearity == "relu",
            self._CELL,
            self.proj_size,
        )

    @property
    def _state_size(self):
        """P, the width of h: ``proj_size`` when set, else H."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    _lstm = False  # an LSTM's state is the tuple (h, c): set from ``_CELL`` for each subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._lstm = cls._CELL == "lstm"  # a class attribute: a property cost ~0.2 µs per use on the step path

    def extra_repr(self) -> str:
        extra = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            extra += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if not self.bias:
            extra += ", bias=False"
        if self.batch_first:
            extra += ", batch_first=True"
        if self.dropout != 0:
            extra += f", dropout={self.dropout}"
        if self.bidirectional:
            extra += ", bidirectional=True"
        return extra

    def train(self, mode: bool = True) -> Self:
        """Switch to training mode (releasing the inference scratch buffers), or to eval mode.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for eval mode.

        Returns
        -------
        Module
            The module itself.
        """
        if mode:
            self._calls.clear()
        return super().train(mode)

    # -- the state: h, or an LSTM's (h, c) -----------------------------------------------------------------------
    def _state_widths(self):
        return (self._state_size, self.hidden_size) if self._lstm else (self.hidden_size,)

    def _state_parts(self, state, name):
        """The parts of a state argument: (h,), or an LSTM's (h, c) from its tuple (a part may be None only where
        ``name`` is a gradient)."""
        if not self._lstm:
            return (state,)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(
                f"{self._NAME}: {name} must be a tuple (h, c) of two arrays, as for torch.nn.LSTM, "
                f"got {type(state).__name__}"
            )
        return tuple(state)

    def _state_result(self, parts):
        return tuple(parts) if self._lstm else parts[0]

    # -- forward -----------------------------------------------------------------------------------------------
    def __call__(
        self,
        input: npt.ArrayLike,
        h_0: StateLike | None = None,
        lengths: npt.ArrayLike | None = None,
        *,
        hx: StateLike | None = None,
    ) -> tuple[FloatArray, State]:
        return self.forward(input, h_0, lengths, hx=hx)

    def forward(
        self,
        input: npt.ArrayLike,
        h_0: StateLike | None = None,
        lengths: npt.ArrayLike | None = None,
        *,
        hx: StateLike | None = None,
    ) -> tuple[FloatArray, State]:
        """Run the network over a sequence.

        Parameters
        ----------
        input : array_like
            (L, N, H_in), (N, L, H_in) with ``batch_first``, or unbatched (L, H_in); of the module dtype.
        h_0 : array_like, or for an LSTM a tuple (h_0, c_0) of them, optional
            h_0 (D * num_layers, N, H_out), or (D * num_layers, H_out) for unbatched input (H_out: ``proj_size`` when
            set, else H); an LSTM's c_0 (D * num_layers, N, H) likewise; zeros when omitted. ``batch_first`` does not
            apply to it. ``hx=`` (torch's name for it) is accepted too.
        lengths : array_like of int, optional
            (N,) the length of each sequence of a padded batch, in any order, each in 1...L. The result equals
            torch's ``pack_padded_sequence(enforce_sorted=False)`` -> module -> ``pad_packed_sequence(total_length=L)``:
            padded input positions are never read, padded outputs are 0, h_n holds each sequence's state at its own
            last step, and the reverse direction starts at each sequence's own last step.
        hx : array_like, or for an LSTM a tuple (h_0, c_0) of them, keyword-only, optional
            torch's name for ``h_0``; give one or the other.

        Returns
        -------
        output : ndarray
            (L, N, D * H_out) (batch_first: (N, L, D * H_out); unbatched: (L, D * H_out)), the last layer's
            states, forward direction first.
        h_n : ndarray, or for an LSTM a tuple (h_n, c_n)
            Final states, shaped like ``h_0``, ordered layer 0 forward, layer 0 reverse, layer 1 forward, ...

        Notes
        -----
        An eval-mode module may be called from any number of threads at once. A training-mode forward keeps a
        record for :meth:`backward`, so one module trains in one thread at a time (a second thread gets an error).
        """
        h_0 = self.resolve_hx(h_0, hx)
        x, state = self.check_input(input, h_0)
        batched = x.ndim == 3
        x = self.time_major(x)
        steps, batch = x.shape[0], x.shape[1]
        if lengths is not None:
            lengths = self.check_lengths(lengths, steps, batch, batched)
        if state is not None:
            if not batched:  # (D * num_layers, H) -> (D * num_layers, 1, H)
                state = [part[:, None] for part in state]
            state = self._state_result(state)
        batch_first = batched and self.batch_first
        if not self.training:
            if self._record is not None:
                self._record = None  # the most recent forward keeps nothing: a backward now would be a mistake
            output, h_n, _ = engine.forward(
                self._spec,
                self._param_flat,
                self._offsets,
                x,
                state,
                lengths,
                training=False,
                batch_first=batch_first,
                cache=self._calls,
            )
        else:
            self._enter_training("forward")
            try:
                dropout = self._draw_dropout_masks if self.dropout > 0 and self.num_layers > 1 else None
                spare = self._record if self._record is not None and self._record.consumed else None
                output, h_n, record = engine.forward(
                    self._spec,
                    self._param_flat,
                    self._offsets,
                    x,
                    state,
                    lengths,
                    training=True,
                    batch_first=batch_first,
                    draw_dropout=dropout,
                    spare=spare,
                    cache=self._calls,
                )
                record.batched = batched
                self._record = record
            finally:
                self._training_lock.release()
        if not batched:
            parts = h_n if self._lstm else (h_n,)
            return output[:, 0], self._state_result([part[:, 0] for part in parts])
        return output, h_n

    def step(self, input: npt.ArrayLike, h: StateLike | None = None) -> tuple[FloatArray, State]:
        """One time step of a unidirectional stack, for streaming inference: equal (to float rounding) to
        ``module(input[None], h)`` in eval mode, at a few microseconds per call.

        Parameters
        ----------
        input : array_like
            (N, H_in), or unbatched (H_in,).
        h : array_like, or for an LSTM a tuple (h, c) of them, optional
            (num_layers, N, H_out), or (num_layers, H_out) (an LSTM's c: H features); zeros when omitted.

        Returns
        -------
        output : ndarray
            (N, H_out) or (H_out,): the last layer's new state.
        h_n : ndarray, or for an LSTM a tuple (h_n, c_n)
            Every layer's new state, to pass as ``h`` next time.

        Notes
        -----
        Inference only: nothing is kept for :meth:`backward` and no dropout is applied, in either mode (train with
        :meth:`forward`). Safe to call from several threads at once.
        """
        if self.bidirectional:
            raise ValueError(
                f"step() runs one time step forward, but a bidirectional {self._NAME}'s reverse "
                f"direction needs the whole sequence; call {self._NAME.lower()}(input) on the full "
                "sequence instead"
            )
        x = as_array(input, "input", self.dtype)
        if x.ndim not in (1, 2):
            raise ValueError(f"step: Expected input to be 1D (H_in,) or 2D (N, H_in), got {x.ndim}D instead")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        batched = x.ndim == 2
        rows = x if batched else x[None]
        if h is None:
            c = None
        elif self._lstm:
            h, c = self._step_states(h, rows.shape[0], batched)
        else:
            h, c = self._step_state(h, "h", "hidden", self.hidden_size, rows.shape[0], batched), None
        spec = self._spec
        buffers = step_buffers(spec, rows, h, c, keep=False)
        run_step(spec, self._param_flat, self._offsets, buffers)  # the caller's h is never written
        if self._lstm:  # State is the tuple (h, c) then, which a type checker cannot tell from _lstm
            if not batched:
                return buffers.out[0], (buffers.h[:, 0], buffers.c[:, 0])  # type: ignore[return-value]
            return buffers.out, (buffers.h, buffers.c)  # type: ignore[return-value]
        return (buffers.out, buffers.h) if batched else (buffers.out[0], buffers.h[:, 0])

    def _step_states(self, h, batch, batched):
        """An LSTM ``step``'s ``h``, the tuple (h, c), checked, each part as (num_layers, N, width)."""
        h, c = self._state_parts(h, "h")
        return (
            self._step_state(h, "h[0]", "hidden[0]", self._state_size, batch, batched),
            self._step_state(c, "h[1]", "hidden[1]", self.hidden_size, batch, batched),
        )

    def _step_state(self, part, name, label, width, batch, batched):
        part = as_array(part, name, self.dtype)
        expected = (self.num_layers, batch, width) if batched else (self.num_layers, width)
        if part.shape != expected:
            raise ValueError(f"Expected {label} size {expected}, got {list(part.shape)}")
        return part if batched else part[:, None]

    # -- backward ----------------------------------------------------------------------------------------------
    def backward(
        self,
        grad_output: npt.ArrayLike | None = None,
        grad_h_n: StateGradLike | None = None,
        *,
        need_input_grad: bool = True,
    ) -> tuple[FloatArray | None, State]:
        """Backpropagate through the most recent training-mode forward pass.

        Parameter gradients are *added* to :attr:`grads` (as torch's ``.grad`` accumulates); call
        :meth:`zero_grad` to clear them.

        Parameters
        ----------
        grad_output : array_like, optional
            Gradient of the loss with respect to ``output``, same shape; zeros when omitted.
        grad_h_n : array_like, or for an LSTM a tuple (grad_h_n, grad_c_n) of them, optional
            Gradient with respect to ``h_n`` (and ``c_n``), same shape; zeros when omitted (either part of an
            LSTM's tuple may be None).
        need_input_grad : bool, keyword-only, default True
            False when the input is data that needs no gradient (torch's ``requires_grad=False``): skips layer 0's
            input-gradient GEMM, the largest product of the backward pass when H_in is large.

        Returns
        -------
        grad_input : ndarray or None
            Gradient with respect to ``input``, same shape (zero at padded positions); None if not
            ``need_input_grad``.
        grad_h_0 : ndarray, or for an LSTM a tuple (grad_h_0, grad_c_0)
            Gradient with respect to ``h_0`` (and ``c_0``), shaped like ``h_n`` (also when ``h_0`` was omitted).
        """
        self._enter_training("backward")
        try:
            record = self._unconsumed_record()
            layers, directions = self.num_layers, self.num_directions
            batch, steps = record.batch, record.steps
            width = directions * self._state_size
            time_major = (steps, batch, width)
            output_shape: tuple[int, ...]
            if not record.batched:
                output_shape = (steps, width)
            elif self.batch_first:
                output_shape = (batch, steps, width)
            else:
                output_shape = time_major
            if grad_output is not None:
                gradient = _check_gradient(grad_output, "grad_output", output_shape, self.dtype)
                if self.batch_first and record.batched:
                    gradient = gradient.transpose(1, 0, 2)
                grad_output = gradient.reshape(time_major)
            if grad_h_n is not None:
                parts = []
                names = ("grad_h_n[0]", "grad_h_n[1]") if self._lstm else ("grad_h_n",)
                for part, size, name in zip(
                    self._state_parts(grad_h_n, "grad_h_n"), self._state_widths(), names, strict=True
                ):
                    if part is not None:
                        state_shape = (layers * directions, batch, size)
                        shape = state_shape if record.batched else (layers * directions, size)
                        part = _check_gradient(part, name, shape, self.dtype).reshape(state_shape)
                    parts.append(part)
                grad_h_n = self._state_result(parts)
            record.consumed = True  # only now: a backward rejected for a bad gradient leaves the pass usable
            grad_input, grad_h_0, self._spare_backward = engine.backward(
                self._param_flat,
                self._offsets,
                record,
                grad_output,
                grad_h_n,
                self._grad_flat,
                need_input_grad=need_input_grad,
                batch_first=record.batched and self.batch_first,
                spare=self._spare_backward,
            )
        finally:
            self._training_lock.release()
        if not record.batched:
            grad_parts = grad_h_0 if self._lstm else (grad_h_0,)
            grad_input = None if grad_input is None else grad_input[:, 0]
            return grad_input, self._state_result([part[:, 0] for part in grad_parts])
        return grad_input, grad_h_0

    # -- checks, in torch's order ------------------------------------------------------------------------------
    @staticmethod
    def check_dropout(dropout: float, num_layers: int) -> None:
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=4,
            )

    @staticmethod
    def check_proj_size(proj_size: int, hidden_size: int) -> int:
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        return int(proj_size)

    @staticmethod
    def resolve_hx(h_0: StateLike | None, hx: StateLike | None) -> StateLike | None:
        if hx is None:
            return h_0
        if h_0 is not None:
            raise TypeError("give the initial state once, as h_0 or as hx (torch's name), not both")
        return hx

    def check_input(self, input: npt.ArrayLike, h_0: StateLike | None) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """torch's checks, in torch's order; returns the input as an array and the state's parts as arrays (or
        None)."""
        x = np.asarray(input)
        if x.ndim not in (2, 3):
            raise ValueError(
                f"{self._NAME}: Expected input to be 2D or 3D, got {x.ndim}D"
                + (" tensor instead" if self._CELL == "rnn" else " instead")
            )
        batched = x.ndim == 3
        parts = None
        if h_0 is not None:  # plain loops, no generator or zip(strict=...): this is on the way of every call
            given = self._state_parts(h_0, "hx")
            parts = [np.asarray(part) for part in given]
            dims = 3 if batched else 2
            if parts[0].ndim != dims or parts[-1].ndim != dims:
                kind = "batched 3-D" if batched else "unbatched 2-D"
                if self._lstm:
                    raise ValueError(
                        f"For {kind} input, hx and cx should also be {dims}-D but got "
                        f"({parts[0].ndim}-D, {parts[1].ndim}-D) tensors"
                    )
                raise ValueError(f"For {kind} input, hx should also be {dims}-D but got {parts[0].ndim}-D tensor")
        if x.dtype != self.dtype:
            raise dtype_error(input, x, "input", self.dtype)  # the fix it names depends on the original object
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        if parts is not None:
            self.check_hidden_size(parts, x)
            for index, part in enumerate(parts):
                if part.dtype != self.dtype:
                    raise dtype_error(given[index], part, ("h_0", "c_0")[index], self.dtype)
        steps = x.shape[1] if batched and self.batch_first else x.shape[0]
        if steps == 0:
            raise ValueError("Expected sequence length to be larger than 0 in RNN")
        return x, parts

    def check_hidden_size(self, parts: list[np.ndarray], x: np.ndarray) -> None:
        rows = self.num_layers * self.num_directions
        batch = (x.shape[0] if self.batch_first else x.shape[1]) if x.ndim == 3 else None
        for index, part in enumerate(parts):
            width = self.hidden_size if index else self._state_size  # an LSTM's c_0 is H wide, its h_0 H_out
            expected = (rows, width) if batch is None else (rows, batch, width)
            if part.shape != expected:
                label = f"hidden[{index}]" if self._lstm else "hidden"
                raise ValueError(f"Expected {label} size {expected}, got {list(part.shape)}")

    def time_major(self, x: np.ndarray) -> np.ndarray:
        """(L, N, H_in) view of a checked input: batch_first transposed, unbatched given a batch of one."""
        if x.ndim == 2:
            return x[:, None, :]
        return x.transpose(1, 0, 2) if self.batch_first else x

    @staticmethod
    def check_lengths(lengths: npt.ArrayLike, steps: int, batch: int, batched: bool) -> npt.NDArray[np.int64]:
        """``lengths`` as int64 (N,), each in 1...L."""
        if not batched:
            raise ValueError(
                "lengths needs batched 3-D input, got unbatched 2-D input; add a batch dimension "
                "(input[:, None] or input[None]) or leave lengths out"
            )
        lengths = np.asarray(lengths)
        check_lengths_type(lengths, batch)
        check_lengths_range(lengths, steps)
        return lengths.astype(np.int64)

    # -- training state ----------------------------------------------------------------------------------------
    def _enter_training(self, what):
        """One thread at a time may run a training forward or backward of a module: they share its record. Takes the
        module's training lock (the caller releases it), or raises at once when another thread holds it. A plain
        acquire and the caller's try/finally rather than a context manager: ~1 us less per training step."""
        if not self._training_lock.acquire(blocking=False):
            raise RuntimeError(
                f"{what}() in training mode while another thread is training this module: a training module "
                "keeps one record for backward, so train it from one thread (or give each thread its own copy, "
                "copy.deepcopy(rnn)); for concurrent inference call rnn.eval()"
            )

    def _draw_dropout_masks(self, scale):
        """Fill ``scale`` with 0 or 1 / (1 - p), each kept with probability 1 - p."""
        keep = 1.0 - self.dropout
        if keep == 0:
            scale[:] = 0
            return
        self._dropout_rng.random(out=scale, dtype=scale.dtype)
        scale += keep  # u + (1 - p) >= 1 exactly when u >= p
        np.floor(scale, out=scale)
        scale *= 1.0 / keep

    def _unconsumed_record(self):
        record = self._record
        if record is None:
            if self.training:
                raise RuntimeError(
                    "backward() needs a forward pass in training mode first; run the forward pass, then backward()"
                )
            raise RuntimeError(
                "backward() needs a forward pass in training mode, but the module is in eval mode, which keeps "
                "nothing for backward; call rnn.train() and run the forward pass again"
            )
        if record.consumed:
            raise RuntimeError(
                "backward() was already called for the last forward pass; run the forward pass again before the "
                "next backward() (sum the gradients of both losses first if they come from one forward pass)"
            )
        return record


class RNN(RecurrentBase["FloatArray"]):
    r"""Multi-layer Elman RNN, :math:`h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})`.

    Same arguments, shapes, parameter names, initialisation and error messages as ``torch.nn.RNN``; arrays are
    NumPy arrays.

    Parameters
    ----------
    input_size : int
        H_in, the number of features of each input step.
    hidden_size : int
        H_out, the number of features of the hidden state.
    num_layers : int, default 1
        Number of stacked layers; layer k > 0 reads the output of layer k - 1.
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
    bias : bool, default True
        Whether the layers have ``bias_ih`` and ``bias_hh``.
    batch_first : bool, default False
        Input and output are (N, L, H) instead of (L, N, H). Does not apply to the hidden states.
    dropout : float, default 0
        Probability of zeroing each input element of layers 1... during training (never after the last layer).
    bidirectional : bool, default False
        Add a second direction that reads time backwards; D = 2.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the parameter initialisation U(-1/sqrt(H), 1/sqrt(H)) and the dropout masks.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        Parameters (``weight_ih_l{k}`` (H_out, H_in or D*H_out), ``weight_hh_l{k}`` (H_out, H_out),
        ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H_out,), with ``_reverse`` for the second direction) and their
        gradients, as views into one flat buffer each. Each parameter is also an attribute.
    training : bool
        Modules start in training mode, as torch's do. In training mode every forward keeps what :meth:`backward`
        needs (in buffers reused across calls of the same shape); call :meth:`eval` for inference, which keeps
        nothing for a backward pass and may run from many threads at once. Inference keeps the scratch buffers of
        its last two input shapes for the next calls (new buffers of a few MiB can cost more in page faults than the
        arithmetic); :meth:`train` releases them.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, dtype, seed)


class LSTM(RecurrentBase["tuple[FloatArray, FloatArray]"]):
    r"""Multi-layer long short-term memory network, as ``torch.nn.LSTM``:

    .. math::
        i, f, g, o = \sigma, \sigma, \tanh, \sigma\,(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),\quad
        c_t = f \odot c_{t-1} + i \odot g,\quad h_t = o \odot \tanh(c_t)

    (and :math:`h_t \leftarrow h_t W_{hr}^T` with ``proj_size``). Same arguments, shapes, parameter names, gate
    order (i, f, g, o), initialisation and error messages as torch's; the state is the tuple (h, c) everywhere:
    ``lstm(x, (h_0, c_0))`` returns ``output, (h_n, c_n)``, ``lstm.backward(grad_output, (grad_h_n, grad_c_n))``
    returns ``grad_input, (grad_h_0, grad_c_0)``.

    Parameters
    ----------
    input_size : int
        H_in.
    hidden_size : int
        H, the features of the cell state c (and of h without a projection).
    num_layers : int, default 1
        Stacked layers, each reading the previous one's output.
    bias : bool, default True
        Whether the layers have ``bias_ih`` and ``bias_hh``.
    batch_first : bool, default False
        Input and output are (N, L, H) instead of (L, N, H). Does not apply to the hidden states.
    dropout : float, default 0
        Probability of zeroing each input element of layers 1... during training (never after the last layer).
    bidirectional : bool, default False
        Add a second direction that reads time backwards; D = 2.
    proj_size : int, default 0
        If > 0 (and < H), h has H_out = ``proj_size`` features: h_t = (o * tanh(c_t)) W_hr^T.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the parameter initialisation U(-1/sqrt(H), 1/sqrt(H)) and the dropout masks.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        ``weight_ih_l{k}`` (4H, H_in or D*H_out), ``weight_hh_l{k}`` (4H, H_out), ``bias_ih_l{k}``,
        ``bias_hh_l{k}`` (4H,), ``weight_hr_l{k}`` (H_out, H) with ``proj_size``, ``_reverse`` for the second
        direction; views into one flat buffer each.
    training : bool
        Modules start in training mode, as torch's do. In training mode every forward keeps what :meth:`backward`
        needs (in buffers reused across calls of the same shape); call :meth:`eval` for inference, which keeps
        nothing for a backward pass and may run from many threads at once. Inference keeps the scratch buffers of
        its last two input shapes for the next calls (new buffers of a few MiB can cost more in page faults than the
        arithmetic); :meth:`train` releases them.
    """

    _CELL = "lstm"
    _NAME = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self._setup(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, dtype, seed
        )


class GRU(RecurrentBase["FloatArray"]):
    r"""Multi-layer gated recurrent unit network, as ``torch.nn.GRU``:

    .. math::
        r, z = \sigma(x_t W_{ir,iz}^T + b_{ir,iz} + h_{t-1} W_{hr,hz}^T + b_{hr,hz}),\quad
        n = \tanh(x_t W_{in}^T + b_{in} + r \odot (h_{t-1} W_{hn}^T + b_{hn})),\quad
        h_t = (1 - z) \odot n + z \odot h_{t-1}

    Same arguments, shapes, parameter names, gate order (r, z, n), initialisation and error messages as torch's; used
    exactly as :class:`RNN`.

    Parameters
    ----------
    input_size : int
        H_in.
    hidden_size : int
        H_out.
    num_layers : int, default 1
        Stacked layers, each reading the previous one's output.
    bias : bool, default True
        Whether the layers have ``bias_ih`` and ``bias_hh``.
    batch_first : bool, default False
        Input and output are (N, L, H) instead of (L, N, H). Does not apply to the hidden states.
    dropout : float, default 0
        Probability of zeroing each input element of layers 1... during training (never after the last layer).
    bidirectional : bool, default False
        Add a second direction that reads time backwards; D = 2.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the parameter initialisation U(-1/sqrt(H), 1/sqrt(H)) and the dropout masks.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        ``weight_ih_l{k}`` (3H, H_in or D*H), ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}``
        (3H,), ``_reverse`` for the second direction; views into one flat buffer each.
    training : bool
        Modules start in training mode, as torch's do. In training mode every forward keeps what :meth:`backward`
        needs (in buffers reused across calls of the same shape); call :meth:`eval` for inference, which keeps
        nothing for a backward pass and may run from many threads at once. Inference keeps the scratch buffers of
        its last two input shapes for the next calls (new buffers of a few MiB can cost more in page faults than the
        arithmetic); :meth:`train` releases them.
    """

    _CELL = "gru"
    _NAME = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, dtype, seed)


def _check_gradient(value: npt.ArrayLike, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    array = as_array(value, name, dtype)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the shape of the forward result), got {array.shape}")
    return array
