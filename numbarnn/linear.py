"""``numbarnn.Linear``: an affine layer, ``y = x W^T + b``, with ``torch.nn.Linear``'s names and initialisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._dense import dense_backward, dense_forward
from ._module import Module
from ._validation import SUPPORTED_DTYPES, as_array, check_size

if TYPE_CHECKING:
    import numpy.typing as npt

    from ._typing import FloatArray

# What the kernels receive in place of a bias when there is none.
_NO_BIAS = {dtype: np.empty(0, dtype) for dtype in SUPPORTED_DTYPES}


class Linear(Module):
    r"""Affine map over the last axis, :math:`y = x W^T + b`, like ``torch.nn.Linear``.

    Parameters
    ----------
    in_features : int
        H_in, the width of the input's last axis.
    out_features : int
        H_out, the width of the output's last axis.
    bias : bool, default True
        Whether to add a learned ``bias``.
    dtype : np.float32 or np.float64, keyword-only, default np.float32
        dtype of the parameters, and the dtype every input must have.
    seed : int or np.random.Generator, keyword-only, optional
        Seeds the initialisation: ``weight`` and ``bias`` are drawn from U(-1/sqrt(H_in), 1/sqrt(H_in)), which is
        what torch's ``kaiming_uniform_(a=sqrt(5))`` and its bias rule amount to.

    Attributes
    ----------
    weight (H_out, H_in), bias (H_out,) : ndarray
        Also in ``params``; their gradients in ``grads`` (views into one flat buffer each).
    training : bool
        In training mode (the default) a forward keeps a reference to its input (not a copy: do not modify the
        input in place before :meth:`backward`) for the weight gradient; in eval mode nothing is kept.
    """

    _TRANSIENT = {"_saved_input": None}
    # Set by the constructor (annotations only: no class attributes); ``bias`` is None without one, as in torch.
    in_features: int
    out_features: int
    bias_enabled: bool
    weight: FloatArray
    bias: FloatArray | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: npt.DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.in_features = check_size(in_features, "in_features")
        self.out_features = check_size(out_features, "out_features")
        self.bias_enabled = bool(bias)
        weight_size = self.out_features * self.in_features
        entries: list[tuple[str, int, tuple[int, ...]]] = [("weight", 0, (self.out_features, self.in_features))]
        if self.bias_enabled:
            entries.append(("bias", weight_size, (self.out_features,)))
        total = weight_size + (self.out_features if self.bias_enabled else 0)
        self._init_parameters(entries, total, dtype, 1.0 / np.sqrt(self.in_features), np.random.default_rng(seed))
        if not self.bias_enabled:
            self.bias = None  # as in torch: a layer without a bias has the attribute, None
        # (input as (rows, H_in), shape of the output) from the last training forward
        self._saved_input: tuple[npt.NDArray[Any], tuple[int, ...]] | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_enabled}"

    def __call__(self, input: npt.ArrayLike) -> FloatArray:
        return self.forward(input)

    def forward(self, input: npt.ArrayLike) -> FloatArray:
        """Apply the layer.

        Parameters
        ----------
        input : array_like
            (..., H_in): any number of leading dimensions (also none), of the module dtype.

        Returns
        -------
        ndarray
            (..., H_out), a new array.
        """
        x = as_array(input, "input", self.dtype)
        if x.ndim == 0:
            raise ValueError(f"Linear: expected input of shape (..., {self.in_features}), got a 0-d array")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: input.shape[-1] must equal in_features={self.in_features}, got input of shape {x.shape}"
            )
        leading = x.shape[:-1]
        x_rows = np.ascontiguousarray(x.reshape(-1, self.in_features))
        out = np.empty((x_rows.shape[0], self.out_features), self.dtype)
        bias = self.params["bias"] if self.bias_enabled else _NO_BIAS[self.dtype]
        dense_forward(x_rows, self.params["weight"], bias, out)
        out_shape = leading + (self.out_features,)
        self._saved_input = (x_rows, out_shape) if self.training else None
        return out.reshape(out_shape)

    def backward(self, grad_output: npt.ArrayLike) -> FloatArray:
        """Backpropagate through the most recent training-mode forward pass.

        ``weight`` and ``bias`` gradients are *added* to :attr:`grads` (as torch's ``.grad`` accumulates); call
        :meth:`zero_grad` to clear them.

        Parameters
        ----------
        grad_output : array_like
            (..., H_out), gradient of the loss with respect to that forward's output, same shape.

        Returns
        -------
        ndarray
            (..., H_in), gradient with respect to that forward's input.
        """
        if self._saved_input is None:
            if self.training:
                raise RuntimeError(
                    "backward() needs a forward pass in training mode first; run the forward pass, then backward() "
                    "(once per forward)"
                )
            raise RuntimeError(
                "backward() needs a forward pass in training mode, but the module is in eval mode, which keeps "
                "nothing for backward; call linear.train() and run the forward pass again"
            )
        x_rows, out_shape = self._saved_input
        grad = as_array(grad_output, "grad_output", self.dtype)
        if grad.shape != out_shape:
            raise ValueError(
                f"grad_output must have shape {out_shape} (the shape of the forward result), got {grad.shape}"
            )
        self._saved_input = None
        grad_rows = np.ascontiguousarray(grad.reshape(-1, self.out_features))
        weight = self.params["weight"]
        grad_input = np.empty((grad_rows.shape[0], self.in_features), self.dtype)
        dense_backward(
            x_rows,
            grad_rows,
            weight,
            self.grads["weight"],
            self.grads["bias"] if self.bias_enabled else _NO_BIAS[self.dtype],
            grad_input,
        )
        return grad_input.reshape(out_shape[:-1] + (self.in_features,))
