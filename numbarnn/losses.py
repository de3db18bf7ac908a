"""Loss functions that return the loss together with its gradient, matching ``torch.nn.functional``.

Each function returns ``(loss, grad)`` where ``grad`` is the gradient of the returned loss with respect to the first
argument (for ``reduction='none'``, the gradient of the sum of the per-element losses), ready for a module's
``backward``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import SUPPORTED_DTYPES

if TYPE_CHECKING:
    import numpy.typing as npt

    from ._typing import FloatArray

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum' or 'none', got {reduction!r}")


def _check_float_array(value: npt.ArrayLike, name: str) -> npt.NDArray[np.floating[Any]]:
    array = np.asarray(value)
    if array.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {array.dtype}; convert it with "
            f"{name}.astype(np.float32)"
        )
    return array


def softmax_cross_entropy(
    logits: npt.ArrayLike, targets: npt.ArrayLike, reduction: str = "mean", ignore_index: int = -100
) -> tuple[np.floating[Any] | FloatArray, FloatArray]:
    r"""Cross-entropy of a softmax over the last axis against class indices, and its gradient.

    Equals ``torch.nn.functional.cross_entropy(logits.moveaxis(-1, 1), targets, reduction=reduction,
    ignore_index=ignore_index)`` (torch wants the class axis at position 1; here it is the last axis, the layout an
    output ``Linear`` produces). The loss of row i is :math:`\log\sum_c e^{z_{ic}} - z_{i,t_i}`, computed with the
    row maximum subtracted first, so large logits do not overflow.

    Parameters
    ----------
    logits : array_like
        (..., C) unnormalised scores, float32 or float64; (C,) for a single example.
    targets : array_like of int
        (...) class indices in [0, C), or ``ignore_index`` for positions that do not count; shape
        ``logits.shape[:-1]``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' divides the sum by the number of targets that are not ``ignore_index`` (NaN when there are none, as
        in torch); 'none' returns the per-position losses (0 at ignored positions).
    ignore_index : int, default -100
        Target value whose positions contribute neither loss nor gradient.

    Returns
    -------
    loss : scalar of the logits' dtype, or ndarray (...) for ``reduction='none'``
        The cross-entropy in nats.
    grad_logits : ndarray
        (..., C), the gradient of ``loss`` (of ``loss.sum()`` for 'none') with respect to ``logits``: softmax minus
        the one-hot target, zero in ignored rows, divided by the count for 'mean'.
    """
    _check_reduction(reduction)
    logits = _check_float_array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have shape (..., C) with the classes on the last axis, got a 0-d array")
    classes = logits.shape[-1]
    if classes == 0:
        raise ValueError(f"logits must have at least one class on its last axis, got shape {logits.shape}")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(
            f"targets must be integer class indices, got dtype {targets.dtype}; convert it with "
            "targets.astype(np.int64)"
        )
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape logits.shape[:-1] = {logits.shape[:-1]} (one class index per row of logits "
            f"(..., C)), got shape {targets.shape}"
        )
    target_rows = targets.reshape(-1)
    kept = target_rows != ignore_index
    out_of_range = kept & ((target_rows < 0) | (target_rows >= classes))
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        position = np.unravel_index(first, targets.shape) if targets.ndim else ()
        raise IndexError(
            f"targets must be class indices in [0, {classes}) or ignore_index={ignore_index}; found "
            f"{target_rows[first]} at position {tuple(int(i) for i in position)}"
        )

    rows = logits.reshape(-1, classes)
    row_index = np.arange(rows.shape[0])
    safe_targets = np.where(kept, target_rows, 0)  # ignored rows read class 0, then get zeroed
    grad = rows - rows.max(axis=1, keepdims=True)  # shifted logits, turned into the softmax in place below
    losses = -grad[row_index, safe_targets]
    np.exp(grad, out=grad)
    totals = grad.sum(axis=1)
    losses += np.log(totals)
    grad /= totals[:, None]
    grad[row_index, safe_targets] -= 1
    grad[~kept] = 0
    losses[~kept] = 0

    if reduction == "none":
        loss = losses.reshape(targets.shape)
    elif reduction == "sum":
        loss = losses.sum()
    else:
        count = int(kept.sum())
        loss = losses.sum() / logits.dtype.type(count) if count else logits.dtype.type(np.nan)
        if count:  # with nothing counted torch returns a NaN loss but a zero gradient
            grad *= logits.dtype.type(1.0 / count)
    return loss, grad.reshape(logits.shape)


def mse_loss(
    pred: npt.ArrayLike, target: npt.ArrayLike, reduction: str = "mean"
) -> tuple[np.floating[Any] | FloatArray, FloatArray]:
    r"""Mean squared error :math:`(p - y)^2` and its gradient with respect to ``pred``, like
    ``torch.nn.functional.mse_loss``.

    Parameters
    ----------
    pred : array_like
        Any shape, float32 or float64.
    target : array_like
        Same shape and dtype as ``pred`` (no broadcasting: a shape mismatch is almost always a bug).
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    loss : scalar of ``pred``'s dtype, or ndarray shaped like ``pred`` for ``reduction='none'``
        The squared error, reduced.
    grad_pred : ndarray
        Shaped like ``pred``: :math:`2 (p - y)`, divided by the element count for 'mean'.
    """
    _check_reduction(reduction)
    pred = _check_float_array(pred, "pred")
    target = np.asarray(target)
    if target.dtype != pred.dtype:
        raise TypeError(
            f"target must have the dtype of pred ({pred.dtype}), got {target.dtype}; convert it with "
            f"target.astype(np.{pred.dtype})"
        )
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target
    squared = diff * diff
    grad = diff
    grad *= pred.dtype.type(2)
    if reduction == "none":
        return squared, grad
    if reduction == "sum":
        return squared.sum(), grad
    if pred.size == 0:
        return pred.dtype.type(np.nan), grad
    grad *= pred.dtype.type(1.0 / pred.size)
    return squared.sum() / pred.dtype.type(pred.size), grad
