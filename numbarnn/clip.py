"""Gradient clipping by total norm, as ``torch.nn.utils.clip_grad_norm_``, on each module's flat gradient buffer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ._loops import sum_of_squares
from .optim import _as_module_list

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._module import Module


def _vector_norm(vector, norm_type):
    """``torch.linalg.vector_norm(vector, norm_type)`` for a 1-D array."""
    if vector.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(np.max(np.abs(vector)))
    if norm_type == 2.0:
        return math.sqrt(sum_of_squares(vector))
    if norm_type == 1.0:
        return float(np.sum(np.abs(vector)))
    return float(np.sum(np.abs(vector) ** norm_type) ** (1.0 / norm_type))


def clip_grad_norm_(
    modules: Module | Iterable[Module], max_norm: float, norm_type: float | str = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients of ``modules`` in place so that their total norm is at most ``max_norm``.

    The total norm is the norm of all gradients seen as one vector. As in torch, every gradient is multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))`` (so a NaN or infinite norm turns the gradients into NaN or zeros
    unless ``error_if_nonfinite``).

    Parameters
    ----------
    modules : Module or iterable of Module
        Whose ``grads`` to clip (each module's flat gradient buffer).
    max_norm : float
        Largest allowed total norm.
    norm_type : float or str, default 2.0
        Order p > 0 of the norm; ``float('inf')`` (or ``'inf'``) for the largest absolute value.
    error_if_nonfinite : bool, default False
        Raise instead of scaling when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping.
    """
    modules = _as_module_list(modules)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type}")
    max_norm = float(max_norm)
    norms = [_vector_norm(module._grad_flat, norm_type) for module in modules]
    if norm_type == math.inf:
        total_norm = max(norms)
    else:
        total_norm = float(np.sum(np.asarray(norms) ** norm_type) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `modules` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    clip_coef = min(max_norm / (total_norm + 1e-6), 1.0) if not math.isnan(total_norm) else math.nan
    if clip_coef != 1.0:
        for module in modules:
            module._grad_flat *= clip_coef
    return total_norm
