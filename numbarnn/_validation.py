"""Argument checks shared by the public classes; every message says what was expected, what was given, and the fix."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    """The module dtype as an ``np.dtype``: float32 or float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}") from error
    if resolved not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {resolved}")
    return resolved


def check_size(value: Any, name: str) -> int:
    """A positive integer size, with torch's messages."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero")
    return int(value)


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return nonlinearity


def as_array(value: Any, name: str, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``value`` as an ndarray of ``dtype`` (no copy); any other dtype is an error that names the conversion."""
    array = np.asarray(value)
    if array.dtype != dtype:
        raise dtype_error(value, array, name, dtype)
    return array


def dtype_error(value: Any, array: npt.NDArray[Any], name: str, dtype: np.dtype[Any]) -> ValueError:
    """The error for ``value`` (``array`` is ``np.asarray(value)``), not of ``dtype``: it names the conversion, which
    depends on whether the caller gave an ndarray. For callers that convert once and check the dtype inline (the step
    and cell calls, where a function call is a measurable part of the call)."""
    fix = f"{name}.astype(np.{dtype})" if isinstance(value, np.ndarray) else f"np.asarray({name}, dtype=np.{dtype})"
    return ValueError(f"{name} must have the type {dtype}, got type {array.dtype}; convert it with {fix}")


def check_lengths_type(lengths, batch):
    """An integer array (NumPy, or anything with ``dtype`` and ``shape`` such as a dask array) of shape (N,)."""
    if lengths.dtype.kind not in "iu":
        raise TypeError(
            f"lengths must be an array of integers, got dtype {lengths.dtype}; convert it with lengths.astype(np.int64)"
        )
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have shape ({batch},), one length per sequence of the batch, got shape {lengths.shape}"
        )


def check_lengths_range(lengths, steps):
    """Every length in 1...L, with torch's message for lengths <= 0."""
    if (lengths <= 0).any():
        raise ValueError(
            "Length of all samples has to be greater than 0, but found an element in 'lengths' that is "
            f"<= 0: {lengths.min()}"
        )
    if (lengths > steps).any():
        raise ValueError(f"lengths must be at most the sequence length L={steps}, got {lengths.max()}")
