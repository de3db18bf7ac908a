"""What every numbarnn module shares: parameters and gradients in two flat buffers, named views onto them,
``state_dict``/``load_state_dict``, ``zero_grad`` and the training/evaluation switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import numpy as np

from ._layout import named_views
from ._validation import check_dtype

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy.typing as npt
    from typing_extensions import Self

    from ._typing import FloatArray

# The state a recurrent module returns: an array h (RNN, GRU and their cells), or for an LSTM the tuple (h, c). The
# type parameter of RecurrentBase and CellBase, for type checkers only: the classes behave the same whatever it is.
State = TypeVar("State")


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` returns, as torch's ``load_state_dict`` does."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class: owns ``params`` and ``grads`` (dicts of named views into one flat buffer each).

    Subclasses call :meth:`_init_parameters` with their layout entries ``(name, offset, shape)``. Parameters are
    reachable as attributes (``module.weight_ih_l0``); assigning to one copies into the existing buffer, so the flat
    buffer, ``params`` and the optimisers always see the same memory.
    """

    training: bool = True
    # Attributes that hold per-call state (buffers, a forward record, a tape): not copied or pickled, reset to these.
    _TRANSIENT: ClassVar[dict[str, Any]] = {}
    # Set by _init_parameters (annotations only: no class attributes).
    params: dict[str, FloatArray]
    grads: dict[str, FloatArray]
    dtype: np.dtype[Any]

    def _init_parameters(self, entries, total, dtype, bound, rng):
        dtype = check_dtype(dtype)
        flat = rng.uniform(-bound, bound, size=total).astype(dtype)
        grad_flat = np.zeros(total, dtype=dtype)
        object.__setattr__(self, "_entries", entries)
        object.__setattr__(self, "_param_flat", flat)
        object.__setattr__(self, "_grad_flat", grad_flat)
        object.__setattr__(self, "dtype", dtype)
        self._attach_views()

    def _attach_views(self):
        """``params`` and ``grads``, views into the flat buffers, and each parameter as an attribute of its own: in
        the instance's dict rather than found by a ``__getattr__``, whose mere presence made every attribute read
        of the module ~20 ns slower (Python 3.11 does not specialise attribute reads on such classes; ~60 reads per
        training step of an RNN)."""
        params = named_views(self._param_flat, self._entries)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "grads", named_views(self._grad_flat, self._entries))
        for name, view in params.items():
            object.__setattr__(self, name, view)

    if TYPE_CHECKING:
        # For type checkers only (the class has no __call__): every module is called as module(input, ...), each
        # subclass with its own signature, so that a module typed only as Module (numbarnn.load's) can be called.
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr``, as torch's ``extra_repr``."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def __getstate__(self):
        # params, grads and the parameters' attributes are views into the flat buffers: rebuilt on unpickling so
        # that they stay views.
        params = self.params
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("params", "grads") and k not in params and k not in self._TRANSIENT
        }

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, default in self._TRANSIENT.items():
            object.__setattr__(self, name, default() if callable(default) else default)
        self._attach_views()

    if TYPE_CHECKING:
        # For type checkers only: the parameters are attributes of each instance (``_attach_views``), named by its
        # layout.
        def __getattr__(self, name: str) -> FloatArray: ...

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("params")
        if params is not None and name in params:
            self._assign(name, value)
        else:
            object.__setattr__(self, name, value)

    def _assign(self, name, value):
        target = self.params[name]
        source = np.asarray(value)
        if source.shape != target.shape:
            raise ValueError(f"cannot assign an array of shape {source.shape} to {name}, of shape {target.shape}")
        target[...] = source  # casts to the module dtype

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, FloatArray]:
        """The parameters, copied, in torch's order and with torch's names.

        Returns
        -------
        dict of str to ndarray
            Copies: changing them does not change the module.
        """
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, npt.ArrayLike], strict: bool = True) -> IncompatibleKeys:
        """Copy parameters in from any mapping of array-likes (numpy arrays, torch tensors, lists).

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Parameter names (torch's) to values, cast to the module dtype; shapes must match.
        strict : bool, default True
            Whether the names must match exactly; otherwise names missing on either side are left alone.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, as torch returns them (both empty after a strict load).
        """
        missing = [name for name in self.params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self.params]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
            if unexpected:
                parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: " + " ".join(parts))
        sources = {}
        for name in self.params:
            if name in state_dict:
                value = state_dict[name]
                if hasattr(value, "detach"):  # a torch tensor that requires grad
                    value = value.detach()
                sources[name] = np.asarray(value)
                if sources[name].shape != self.params[name].shape:
                    raise ValueError(
                        f"size mismatch for {name}: copying a param with shape {sources[name].shape} from "
                        f"checkpoint, the shape in current model is {self.params[name].shape}."
                    )
        for name, value in sources.items():  # checked everything first: a failed load changes nothing
            self.params[name][...] = value
        return IncompatibleKeys(missing, unexpected)

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self._grad_flat[:] = 0

    # -- modes -------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Self:
        """Switch to training mode (the default for a new module), or to eval mode.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for eval mode.

        Returns
        -------
        Module
            The module itself.
        """
        object.__setattr__(self, "training", bool(mode))
        return self

    def eval(self) -> Self:
        """Switch to evaluation mode: no dropout, and nothing is kept for a backward pass.

        Returns
        -------
        Module
            The module itself.
        """
        return self.train(False)

    def parameters(self) -> list[FloatArray]:
        """The parameter arrays, in order.

        Returns
        -------
        list of ndarray
            Views of the parameters: an optimiser updating them in place updates the module.
        """
        return list(self.params.values())
