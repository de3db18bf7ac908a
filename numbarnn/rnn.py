"""``numbarnn.RNN``: a multi-layer Elman RNN with ``torch.nn.RNN``'s arguments, shapes, names and messages."""

import functools
import numbers
import warnings

import numpy as np

from ._backward import rnn_backward, rnn_backward_parallel
from ._forward import rnn_forward, rnn_forward_parallel
from ._layout import build_layout
from ._module import Module
from ._packing import pack, unpack
from ._threads import parallel_directions_context
from ._validation import as_array, check_nonlinearity, check_size


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

    _TRANSIENT = {"_workspace": None, "_record": None, "_step_offsets": None}

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
        self._workspace = None  # the training forward's buffers, reused while the shape stays the same
        self._record = None  # what the last training forward left for backward
        self._step_offsets = None

    def __repr__(self):
        extra = f"{self.input_size}, {self.hidden_size}"
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
        return f"RNN({extra})"

    # -- forward -----------------------------------------------------------------------------------------------
    def __call__(self, input, h_0=None, lengths=None, *, hx=None):
        return self.forward(input, h_0, lengths, hx=hx)

    def forward(self, input, h_0=None, lengths=None, *, hx=None):
        """Run the RNN over a sequence.

        Parameters
        ----------
        input : ndarray
            (L, N, H_in), (N, L, H_in) with ``batch_first``, or unbatched (L, H_in); of the module dtype.
        h_0 : ndarray, optional
            (D * num_layers, N, H_out), or (D * num_layers, H_out) for unbatched input; zeros when omitted.
            ``batch_first`` does not apply to it. ``hx=`` (torch's name for it) is accepted too.
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
        if hx is not None:
            if h_0 is not None:
                raise TypeError("give the initial state once, as h_0 or as hx (torch's name), not both")
            h_0 = hx
        x, h_0 = self._check_input(input, h_0)
        batched = x.ndim == 3
        if batched and self.batch_first:
            x = x.transpose(1, 0, 2)
        elif not batched:
            x = x[:, None, :]
        steps, batch = x.shape[0], x.shape[1]
        if lengths is None:
            order, step_offsets = None, self._equal_step_offsets(steps, batch)
        elif batched:
            order, step_offsets = _sort_by_length(lengths, steps, batch)
        else:
            raise ValueError(
                "lengths needs batched 3-D input, got unbatched 2-D input; add a batch dimension "
                "(input[:, None] or input[None]) or leave lengths out"
            )
        training = self.training
        buffers = self._forward_buffers(int(step_offsets[-1]), batch, training)
        if order is None and not training and x.flags.c_contiguous:
            x_rows = x.reshape(-1, self.input_size)  # read in place: nothing outlives this call
        else:
            x_rows = buffers.x_rows
            _to_rows(x, order, step_offsets, x_rows)
        h_n = np.empty(buffers.state_shape, self.dtype)
        if h_0 is None:
            h_n.fill(0)
        else:
            h_0 = h_0.reshape(buffers.state_shape)
            h_n[:] = h_0 if order is None else h_0[:, order]
        if buffers.dropout_scale.shape[0]:
            self._draw_dropout_masks(buffers.dropout_scale)
        # h_n holds h_0 on entry: the kernel starts each direction from its row and leaves the final state there.
        self._run(rnn_forward, rnn_forward_parallel, x_rows, h_n, self._param_flat, self._offsets, step_offsets,
                  self.num_directions, self.nonlinearity == "relu", buffers.dropout_scale, buffers.layer_in,
                  buffers.layer_out, buffers.h_prev, buffers.z, buffers.step_tmp, buffers.w_hh_transposed,
                  buffers.bias_zeros, buffers.top_out, h_n)
        if order is None and not training and not (batched and self.batch_first):
            output = buffers.top_out.reshape(steps, batch, -1)  # this call's own buffer: no copy needed
        else:
            output = _from_rows(buffers.top_out, order, step_offsets, steps, batch, batched and self.batch_first)
        if order is not None:
            h_n = _unsort(h_n, order)
        self._record = _ForwardRecord(buffers, x_rows, order, step_offsets, batched) if training else None
        if not batched:
            return output[:, 0], h_n[:, 0]
        return output, h_n

    def _forward_buffers(self, rows, batch, training):
        """The forward workspaces for ``rows`` packed rows: the module's own, reused, in training mode; new ones
        (released after the call) in eval mode."""
        dropped = self.num_layers - 1 if training and self.dropout > 0 else 0
        key = (rows, batch, dropped)
        if training and self._workspace is not None and self._workspace.key == key:
            return self._workspace
        buffers = _ForwardBuffers(key, self.input_size, self.hidden_size, self.num_layers, self.num_directions,
                                  training, self.dtype)
        if training:
            self._workspace = buffers
        return buffers

    def _run(self, serial_kernel, parallel_kernel, *arguments):
        """Call the kernel; a bidirectional module runs its two directions on two threads when it can."""
        parallel = parallel_directions_context() if self.num_directions == 2 else None
        if parallel is None:
            serial_kernel(*arguments)
        else:
            with parallel:
                parallel_kernel(*arguments)

    # -- backward ----------------------------------------------------------------------------------------------
    def backward(self, grad_output=None, grad_h_n=None, *, need_input_grad=True):
        """Backpropagate through the most recent training-mode forward pass.

        Parameter gradients are *added* to :attr:`grads` (as torch's ``.grad`` accumulates); call
        :meth:`zero_grad` to clear them.

        Parameters
        ----------
        grad_output : ndarray, optional
            Gradient of the loss with respect to ``output``, same shape; zeros when omitted.
        grad_h_n : ndarray, optional
            Gradient with respect to ``h_n``, same shape; zeros when omitted.
        need_input_grad : bool, keyword-only, default True
            False when the input is data that needs no gradient (torch's ``requires_grad=False``): skips layer 0's
            input-gradient GEMM, the largest product of the backward pass when H_in is large.

        Returns
        -------
        grad_input : ndarray or None
            Gradient with respect to ``input``, same shape (zero at padded positions); None if not
            ``need_input_grad``.
        grad_h_0 : ndarray
            Gradient with respect to ``h_0``, shaped like ``h_n`` (also when ``h_0`` was omitted).
        """
        record = self._unconsumed_record()
        buffers = record.buffers
        layers, directions, hidden = self.num_layers, self.num_directions, self.hidden_size
        batch, steps = buffers.batch, record.steps
        time_major = (steps, batch, directions * hidden)
        if not record.batched:
            output_shape = (steps, directions * hidden)
        elif self.batch_first:
            output_shape = (batch, steps, directions * hidden)
        else:
            output_shape = time_major
        if grad_output is None:
            buffers.grad_output.fill(0)
        else:
            grad_output = _check_gradient(grad_output, "grad_output", output_shape, self.dtype)
            if self.batch_first and record.batched:
                grad_output = grad_output.transpose(1, 0, 2)
            _to_rows(grad_output.reshape(time_major), record.order, record.step_offsets, buffers.grad_output)
        if grad_h_n is None:
            buffers.grad_h_n.fill(0)
        else:
            hidden_shape = buffers.state_shape if record.batched else (layers * directions, hidden)
            grad_h_n = _check_gradient(grad_h_n, "grad_h_n", hidden_shape, self.dtype).reshape(buffers.state_shape)
            buffers.grad_h_n[:] = grad_h_n if record.order is None else grad_h_n[:, record.order]
        record.consumed = True  # only now: a backward rejected for a bad gradient leaves the pass usable
        grad_h_0 = np.empty(buffers.state_shape, self.dtype)
        self._run(rnn_backward, rnn_backward_parallel, record.x_rows, self._param_flat, self._offsets,
                  record.step_offsets, directions, self.nonlinearity == "relu", buffers.dropout_scale,
                  buffers.layer_in, buffers.layer_out, buffers.h_prev, buffers.top_out, buffers.grad_output,
                  buffers.grad_h_n, self._grad_flat, buffers.grad_x if need_input_grad else buffers.no_grad_x,
                  grad_h_0, buffers.grad_layer, buffers.dz,
                  buffers.grad_input_tmp, buffers.weight_tmp)
        if need_input_grad:
            grad_input = _from_rows(buffers.grad_x, record.order, record.step_offsets, steps, batch,
                                    record.batched and self.batch_first)
            if not record.batched:
                grad_input = grad_input[:, 0]
        else:
            grad_input = None
        if record.order is not None:
            grad_h_0 = _unsort(grad_h_0, record.order)
        if not record.batched:
            return grad_input, grad_h_0[:, 0]
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
        x = as_array(input, "input", self.dtype)  # the original object: the fix it names depends on it
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
        cached = self._step_offsets
        if cached is None or cached.size != steps + 1 or cached[1] != batch:
            cached = np.arange(steps + 1, dtype=np.int64) * batch
            object.__setattr__(self, "_step_offsets", cached)
        return cached

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


class _ForwardBuffers:
    """Every array the forward pass writes and the backward pass reads or writes, for one (rows, N) shape.

    In training mode all layers' outputs and the states entering each step are kept for the backward pass; in eval
    mode only two layer outputs ping-pong and no states are kept. The packed input and the backward pass's own
    workspaces are allocated the first time they are used.
    """

    def __init__(self, key, input_size, hidden, layers, directions, training, dtype):
        rows, batch, dropped = key
        width = directions * hidden
        self.key, self.batch, self.dtype = key, batch, dtype
        self.state_shape = (layers * directions, batch, hidden)
        self.dropout_scale = np.empty((dropped, rows, width), dtype)
        self.layer_in = np.empty((dropped, rows, width), dtype)
        self.layer_out = np.empty((layers - 1 if training else min(layers - 1, 2), rows, width), dtype)
        self.h_prev = np.empty((layers, directions, rows if training else 0, hidden), dtype)
        self.z = np.empty((directions, rows, hidden), dtype)
        self.step_tmp = np.empty((directions, batch, hidden), dtype)
        self.w_hh_transposed = np.empty((directions, hidden, hidden), dtype)
        self.bias_zeros = np.zeros(hidden, dtype)
        self.top_out = np.empty((rows, width), dtype)
        # Allocated on first use (see __getattr__): the packed input (not needed when eval reads a contiguous input
        # in place) and the backward pass's workspaces.
        self._lazy_shapes = {
            "x_rows": (rows, input_size),
            "grad_output": (rows, width),
            "grad_h_n": self.state_shape,
            "grad_x": (rows, input_size),
            "no_grad_x": (0, input_size),  # tells the kernel to skip the input gradient
            "grad_layer": (rows, width),
            "dz": (directions, rows, hidden),
            # each direction's partial input gradient (bidirectional only) and weight-gradient scratch
            "grad_input_tmp": (directions, rows * max(input_size, width) if directions == 2 else 0),
            "weight_tmp": (directions, hidden * max(input_size, width, hidden)),
        }

    def __getattr__(self, name):
        shape = self.__dict__.get("_lazy_shapes", {}).get(name)
        if shape is None:
            raise AttributeError(name)
        array = np.empty(shape, self.dtype)
        setattr(self, name, array)  # allocated once, then found as an ordinary attribute
        return array


class _ForwardRecord:
    """What a training forward leaves for its backward pass."""

    def __init__(self, buffers, x_rows, order, step_offsets, batched):
        self.buffers, self.x_rows, self.order, self.step_offsets = buffers, x_rows, order, step_offsets
        self.batched = batched
        self.steps = step_offsets.size - 1
        self.consumed = False


def _to_rows(source, order, step_offsets, rows):
    """Copy time-major (L, N, F) ``source`` into packed ``rows``."""
    if order is None and source.flags.c_contiguous:
        rows[:] = source.reshape(rows.shape)
    else:
        pack(source, _identity(source.shape[1]) if order is None else order, step_offsets, rows)


def _from_rows(rows, order, step_offsets, steps, batch, batch_first):
    """A new (L, N, F) array (or (N, L, F) with ``batch_first``) from packed ``rows``; zero where padded."""
    features = rows.shape[1]
    if order is None and not batch_first:
        return rows.reshape(steps, batch, features).copy()
    result = np.empty((batch, steps, features) if batch_first else (steps, batch, features), rows.dtype)
    unpack(rows, _identity(batch) if order is None else order, step_offsets,
           result.transpose(1, 0, 2) if batch_first else result)
    return result


def _check_gradient(value, name, shape, dtype):
    array = as_array(value, name, dtype)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the shape of the forward result), got {array.shape}")
    return array


@functools.lru_cache(maxsize=16)
def _identity(n):
    """The batch order 0...n-1 for the pack kernels; shared across calls (the kernels only read it; left writeable so
    that it has the same numba type as a length-sorted order and needs no second compile)."""
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
