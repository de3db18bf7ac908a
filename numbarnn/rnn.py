"""``numbarnn.RNN``: a multi-layer Elman RNN with ``torch.nn.RNN``'s arguments, shapes, names and messages."""

import numbers
import warnings

import numpy as np

from ._backward import rnn_backward
from ._forward import rnn_forward
from ._layout import build_layout
from ._module import Module
from ._packing import pack, unpack
from ._validation import as_array, check_nonlinearity, check_size
from ._workspace import Workspace


class RNN(Module):
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
        Seeds the parameter initialisation U(-1/sqrt(H_out), 1/sqrt(H_out)) and the dropout masks.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        Parameters (``weight_ih_l{k}`` (H_out, H_in or D*H_out), ``weight_hh_l{k}`` (H_out, H_out),
        ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H_out,), with ``_reverse`` for the second direction) and their
        gradients, as views into one flat buffer each. Each parameter is also an attribute.
    training : bool
        Modules start in training mode, as torch's do. In training mode every forward keeps what :meth:`backward`
        needs (in buffers reused across calls of the same shape); call :meth:`eval` for inference.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None):
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=2,
            )
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.num_layers = check_size(num_layers, "num_layers")
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        rng = np.random.default_rng(seed)
        entries, self._offsets, total = build_layout(
            self.input_size, self.hidden_size, self.num_layers, self.num_directions, self.bias
        )
        self._init_parameters(entries, total, dtype, 1.0 / np.sqrt(self.hidden_size), rng)
        self._dropout_rng = rng
        self._workspace = Workspace()
        self._record = None  # what the last training forward left for backward

    def __repr__(self):
        extra = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if self.nonlinearity != "tanh":
            extra += f", nonlinearity='{self.nonlinearity}'"
        if not self.bias:
            extra += ", bias=False"
        if self.batch_first:
            extra += ", batch_first=True"
        if self.dropout != 0:
            extra += f", dropout={self.dropout}"
        if self.bidirectional:
            extra += ", bidirectional=True"
        return f"RNN({extra})"

    # -- forward -----------------------------------------------------------------------------------------------
    def __call__(self, input, h_0=None, lengths=None):
        return self.forward(input, h_0, lengths)

    def forward(self, input, h_0=None, lengths=None):
        """Run the RNN over a sequence.

        Parameters
        ----------
        input : ndarray
            (L, N, H_in), (N, L, H_in) with ``batch_first``, or unbatched (L, H_in); of the module dtype.
        h_0 : ndarray, optional
            (D * num_layers, N, H_out), or (D * num_layers, H_out) for unbatched input; zeros when omitted.
            ``batch_first`` does not apply to it.
        lengths : array of int, optional
            (N,) the length of each sequence of a padded batch, in any order, each in 1...L. The result equals
            torch's ``pack_padded_sequence(enforce_sorted=False)`` -> RNN -> ``pad_packed_sequence(total_length=L)``:
            padded input positions are never read, padded outputs are 0, h_n holds each sequence's state at its own
            last step, and the reverse direction starts at each sequence's own last step.

        Returns
        -------
        output : ndarray
            (L, N, D * H_out) (batch_first: (N, L, D * H_out); unbatched: (L, D * H_out)), the last layer's
            states, forward direction first.
        h_n : ndarray
            Final states, shaped like ``h_0``, ordered layer 0 forward, layer 0 reverse, layer 1 forward, ...
        """
        x, h_0 = self._check_input(input, h_0)
        batched = x.ndim == 3
        if batched and self.batch_first:
            x = x.transpose(1, 0, 2)
        elif not batched:
            x = x[:, None, :]
        steps, batch = x.shape[0], x.shape[1]
        if batched and lengths is not None:
            order, step_offsets = _sort_by_length(lengths, steps, batch)
        elif lengths is not None:
            raise ValueError(
                "lengths needs batched 3-D input, got unbatched 2-D input; add a batch dimension "
                "(input[:, None] or input[None]) or leave lengths out"
            )
        else:
            order, step_offsets = None, self._equal_step_offsets(steps, batch)
        rows = int(step_offsets[-1])
        layers, directions, hidden = self.num_layers, self.num_directions, self.hidden_size
        width = directions * hidden
        training = self.training
        buffers = self._workspace if training else Workspace()
        if order is None and not training and x.flags.c_contiguous:
            x_rows = x.reshape(rows, self.input_size)
        else:
            x_rows = buffers.get("x", (rows, self.input_size), self.dtype)
            pack(x, _identity(batch) if order is None else order, step_offsets, x_rows)
        state_shape = (layers * directions, batch, hidden)
        if h_0 is None:
            h_start = np.zeros(state_shape, self.dtype)
        else:
            h_start = h_0.reshape(state_shape)
            h_start = h_start[:, order] if order is not None else np.ascontiguousarray(h_start)
        apply_dropout = training and self.dropout > 0 and layers > 1
        dropped = layers - 1 if apply_dropout else 0
        dropout_scale = buffers.get("dropout_scale", (dropped, rows, width), self.dtype)
        if apply_dropout:
            self._draw_dropout_masks(dropout_scale)
        layer_in = buffers.get("layer_in", (dropped, rows, width), self.dtype)
        kept_layers = layers - 1 if training else min(layers - 1, 2)
        layer_out = buffers.get("layer_out", (kept_layers, rows, width), self.dtype)
        h_prev = buffers.get("h_prev", (layers, directions, rows if training else 0, hidden), self.dtype)
        z = buffers.get("z", (directions, rows, hidden), self.dtype)
        step_tmp = buffers.get("step_tmp", (directions, batch, hidden), self.dtype)
        top_out = buffers.get("top_out", (rows, width), self.dtype)
        h_n = np.empty(state_shape, self.dtype)
        rnn_forward(x_rows, h_start, self._param_flat, self._offsets, step_offsets, directions,
                    self.nonlinearity == "relu", dropout_scale, layer_in, layer_out, h_prev, z, step_tmp, top_out, h_n)

        if order is None and not training:
            output = top_out.reshape(steps, batch, width)  # this call's own buffer: no copy needed
            if batched and self.batch_first:
                output = np.ascontiguousarray(output.transpose(1, 0, 2))
        else:
            output = np.empty((batch, steps, width) if batched and self.batch_first else (steps, batch, width),
                              self.dtype)
            time_major = output.transpose(1, 0, 2) if batched and self.batch_first else output
            unpack(top_out, _identity(batch) if order is None else order, step_offsets, time_major)
        if order is not None:
            h_n = _unsort(h_n, order)
        if training:
            self._record = _ForwardRecord(x_rows, order, step_offsets, batched, steps, batch, dropout_scale,
                                          layer_in, layer_out, h_prev, top_out)
        else:
            self._record = None
        if not batched:
            return output[:, 0], h_n[:, 0]
        return output, h_n

    # -- backward ----------------------------------------------------------------------------------------------
    def backward(self, grad_output=None, grad_h_n=None):
        """Backpropagate through the most recent training-mode forward pass.

        Parameter gradients are *added* to :attr:`grads` (as torch's ``.grad`` accumulates); call
        :meth:`zero_grad` to clear them.

        Parameters
        ----------
        grad_output : ndarray, optional
            Gradient of the loss with respect to ``output``, same shape; zeros when omitted.
        grad_h_n : ndarray, optional
            Gradient with respect to ``h_n``, same shape; zeros when omitted.

        Returns
        -------
        grad_input : ndarray
            Gradient with respect to ``input``, same shape (zero at padded positions).
        grad_h_0 : ndarray
            Gradient with respect to ``h_0``, shaped like ``h_n`` (also when ``h_0`` was omitted).
        """
        record = self._take_record()
        layers, directions, hidden = self.num_layers, self.num_directions, self.hidden_size
        batch, steps, width = record.batch, record.steps, directions * hidden
        rows = int(record.step_offsets[-1])
        order = _identity(batch) if record.order is None else record.order
        time_major_shape = (steps, batch, width)
        if not record.batched:
            output_shape = (steps, width)
        elif self.batch_first:
            output_shape = (batch, steps, width)
        else:
            output_shape = time_major_shape
        state_shape = (layers * directions, batch, hidden)
        buffers = self._workspace
        grad_rows = buffers.get("grad_output", (rows, width), self.dtype)
        if grad_output is None:
            grad_rows[:] = 0
        else:
            grad_output = _check_gradient(grad_output, "grad_output", output_shape, self.dtype)
            if not record.batched:
                grad_output = grad_output[:, None, :]
            elif self.batch_first:
                grad_output = grad_output.transpose(1, 0, 2)
            pack(grad_output, order, record.step_offsets, grad_rows)
        grad_h_n_sorted = buffers.get("grad_h_n", state_shape, self.dtype)
        if grad_h_n is None:
            grad_h_n_sorted[:] = 0
        else:
            hidden_shape = state_shape if record.batched else (layers * directions, hidden)
            grad_h_n = _check_gradient(grad_h_n, "grad_h_n", hidden_shape, self.dtype).reshape(state_shape)
            grad_h_n_sorted[:] = grad_h_n[:, order]
        grad_x_rows = buffers.get("grad_x", (rows, self.input_size), self.dtype)
        grad_h_0 = np.empty(state_shape, self.dtype)
        widest = max(self.input_size, width, hidden)
        rnn_backward(record.x_rows, self._param_flat, self._offsets, record.step_offsets, directions,
                     self.nonlinearity == "relu", record.dropout_scale, record.layer_in, record.layer_out,
                     record.h_prev, record.top_out, grad_rows, grad_h_n_sorted, self._grad_flat, grad_x_rows, grad_h_0,
                     buffers.get("grad_layer", (rows, width), self.dtype),
                     buffers.get("dz", (directions, rows, hidden), self.dtype),
                     buffers.get("grad_input_tmp", (rows * widest,), self.dtype),
                     buffers.get("weight_tmp", (hidden * widest,), self.dtype))
        grad_input = np.empty(
            (batch, steps, self.input_size) if record.batched and self.batch_first else (steps, batch, self.input_size),
            self.dtype,
        )
        time_major = grad_input.transpose(1, 0, 2) if record.batched and self.batch_first else grad_input
        unpack(grad_x_rows, order, record.step_offsets, time_major)
        if record.order is not None:
            grad_h_0 = _unsort(grad_h_0, record.order)
        if not record.batched:
            return grad_input[:, 0], grad_h_0[:, 0]
        return grad_input, grad_h_0

    # -- helpers -----------------------------------------------------------------------------------------------
    def _check_input(self, input, h_0):
        """torch's checks, in torch's order; returns the input and h_0 as arrays."""
        x = np.asarray(input)
        if x.ndim not in (2, 3):
            raise ValueError(f"RNN: Expected input to be 2D or 3D, got {x.ndim}D tensor instead")
        batched = x.ndim == 3
        if h_0 is not None:
            h_0 = np.asarray(h_0)
            if batched and h_0.ndim != 3:
                raise ValueError(f"For batched 3-D input, hx should also be 3-D but got {h_0.ndim}-D tensor")
            if not batched and h_0.ndim != 2:
                raise ValueError(f"For unbatched 2-D input, hx should also be 2-D but got {h_0.ndim}-D tensor")
        x = as_array(x, "input", self.dtype)
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        if batched:
            batch = x.shape[0] if self.batch_first else x.shape[1]
            expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
        else:
            expected = (self.num_layers * self.num_directions, self.hidden_size)
        if h_0 is not None:
            if h_0.shape != expected:
                raise ValueError(f"Expected hidden size {expected}, got {list(h_0.shape)}")
            h_0 = as_array(h_0, "h_0", self.dtype)
        steps = x.shape[1] if batched and self.batch_first else x.shape[0]
        if steps == 0:
            raise ValueError("Expected sequence length to be larger than 0 in RNN")
        if batched and expected[1] == 0:
            raise ValueError("Expected batch size to be larger than 0 in RNN")
        return x, h_0

    def _equal_step_offsets(self, steps, batch):
        return self._workspace.constant("step_offsets", (steps, batch), lambda: np.arange(steps + 1) * batch)

    def _draw_dropout_masks(self, scale):
        """Fill ``scale`` with 0 or 1 / (1 - p), each kept with probability 1 - p."""
        keep = 1.0 - self.dropout
        if keep == 0:
            scale[:] = 0
            return
        self._dropout_rng.random(out=scale)
        scale += keep  # u + (1 - p) >= 1 exactly when u >= p
        np.floor(scale, out=scale)
        scale *= 1.0 / keep

    def _take_record(self):
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
        record.consumed = True
        return record


class _ForwardRecord:
    """What a training forward leaves for its backward pass (arrays are the module's reused buffers)."""

    def __init__(self, x_rows, order, step_offsets, batched, steps, batch, dropout_scale, layer_in, layer_out, h_prev,
                 top_out):
        self.x_rows, self.order, self.step_offsets = x_rows, order, step_offsets
        self.batched, self.steps, self.batch = batched, steps, batch
        self.dropout_scale, self.layer_in, self.layer_out = dropout_scale, layer_in, layer_out
        self.h_prev, self.top_out = h_prev, top_out
        self.consumed = False


def _check_gradient(value, name, shape, dtype):
    array = as_array(value, name, dtype)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the shape of the forward result), got {array.shape}")
    return array


def _identity(n):
    return np.arange(n, dtype=np.int64)


def _unsort(states, order):
    """Undo the length sort along the batch axis of (layers, N, H) states."""
    unsorted = np.empty_like(states)
    unsorted[:, order] = states
    return unsorted


def _sort_by_length(lengths, steps, batch):
    """``(order, step_offsets)`` for a padded batch: the batch sorted by decreasing length, and where each step's
    rows start once packed."""
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an array of integers, got dtype {lengths.dtype}; "
                        "convert it with lengths.astype(np.int64)")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), one length per sequence of the batch, "
                         f"got shape {lengths.shape}")
    if (lengths <= 0).any():
        raise ValueError("Length of all samples has to be greater than 0, but found an element in 'lengths' that is "
                         f"<= 0: {lengths.min()}")
    if (lengths > steps).any():
        raise ValueError(f"lengths must be at most the sequence length L={steps}, got {lengths.max()}")
    lengths = lengths.astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    batch_sizes = (lengths[None, :] > np.arange(steps)[:, None]).sum(axis=1)
    step_offsets = np.zeros(steps + 1, dtype=np.int64)
    np.cumsum(batch_sizes, out=step_offsets[1:])
    return order, step_offsets
