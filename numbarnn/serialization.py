"""Save modules to one ``.npz`` file and rebuild them from it.

The file holds one array per parameter (``"{module name}/{parameter name}"``) and, under the key ``__numbarnn__``, a
JSON text describing every module: its class, its constructor arguments, its dtype and its parameter names and
shapes. Nothing is pickled, so loading a file never runs code from it.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import SUPPORTED_DTYPES
from .cell import GRUCell, LSTMCell, RNNCell
from .linear import Linear
from .rnn import GRU, LSTM, RNN

if TYPE_CHECKING:
    from ._module import Module
    from ._typing import PathLike

FORMAT_NAME = "numbarnn"
FORMAT_VERSION = 1
HEADER_KEY = "__numbarnn__"
ZIP_MAGIC = b"PK\x03\x04"  # every .npz numpy writes starts with a local file header


class CheckpointError(ValueError):
    """A file that is not a readable numbarnn checkpoint, or whose contents do not match its own description."""


# class -> its constructor arguments, read back from the attributes the constructor sets
_CONSTRUCTORS = {
    "RNN": (
        RNN,
        lambda m: dict(
            input_size=m.input_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            nonlinearity=m.nonlinearity,
            bias=m.bias,
            batch_first=m.batch_first,
            dropout=m.dropout,
            bidirectional=m.bidirectional,
        ),
    ),
    "LSTM": (
        LSTM,
        lambda m: dict(
            input_size=m.input_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            bias=m.bias,
            batch_first=m.batch_first,
            dropout=m.dropout,
            bidirectional=m.bidirectional,
            proj_size=m.proj_size,
        ),
    ),
    "GRU": (
        GRU,
        lambda m: dict(
            input_size=m.input_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            bias=m.bias,
            batch_first=m.batch_first,
            dropout=m.dropout,
            bidirectional=m.bidirectional,
        ),
    ),
    "RNNCell": (
        RNNCell,
        lambda m: dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias, nonlinearity=m.nonlinearity),
    ),
    "LSTMCell": (LSTMCell, lambda m: dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)),
    "GRUCell": (GRUCell, lambda m: dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)),
    "Linear": (Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias_enabled)),
}


def save(path: PathLike, *, metadata: Any = None, **modules: Module) -> None:
    """Write ``modules`` (keyword name -> module) to the ``.npz`` file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Written exactly as given (no ``.npz`` suffix is added); replaced atomically if it exists.
    metadata : object, keyword-only, optional
        Anything JSON can hold (e.g. a model's vocabulary); read it back with :func:`load_metadata`.
    **modules : RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell or Linear
        The modules to store, under the keyword names :func:`load` will return them by.

    Examples
    --------
    >>> numbarnn.save("model.npz", rnn=rnn, head=linear)
    >>> numbarnn.load("model.npz")["head"]
    Linear(in_features=..., out_features=..., bias=True)
    """
    if not modules:
        raise ValueError("save() needs at least one module, given by name: save(path, rnn=rnn, head=linear)")
    header: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "modules": {}}
    if metadata is not None:
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise TypeError(f"metadata must be JSON-serialisable (dicts, lists, str, numbers): {error}") from None
        header["metadata"] = metadata
    arrays: dict[str, Any] = {}
    for name, module in modules.items():
        class_name = type(module).__name__
        if class_name not in _CONSTRUCTORS or type(module) is not _CONSTRUCTORS[class_name][0]:
            supported = ", ".join(_CONSTRUCTORS)
            raise TypeError(f"save() can store {supported}; {name!r} is a {type(module).__name__}")
        header["modules"][name] = {
            "class": class_name,
            "arguments": _CONSTRUCTORS[class_name][1](module),
            "dtype": module.dtype.name,
            "training": bool(module.training),
            "parameters": {key: list(value.shape) for key, value in module.params.items()},
        }
        for key, value in module.params.items():
            arrays[f"{name}/{key}"] = value
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    path = os.fspath(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load(path: PathLike) -> dict[str, Module]:
    """Rebuild the modules stored by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    dict of str to module
        Each saved name mapped to a new module of the saved class, arguments and dtype, with the saved parameters
        (and training/eval mode).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    CheckpointError
        (a ``ValueError``) if the file is not a numbarnn checkpoint, is truncated or corrupt, names an unknown class,
        or holds parameters that do not match its description. The message names the file and the problem.
    """
    path = os.fspath(path)
    header, arrays = _read(path)
    modules = {}
    for name, entry in header["modules"].items():
        modules[name] = _rebuild(path, name, entry, arrays)
    extra = sorted(
        set(arrays) - {f"{name}/{key}" for name, entry in header["modules"].items() for key in entry["parameters"]}
    )
    if extra:
        raise CheckpointError(f"{path}: holds arrays its description does not list: {', '.join(extra)}")
    return modules


def load_metadata(path: PathLike) -> Any:
    """The ``metadata`` given to :func:`save`, without rebuilding the modules.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    object or None
        The ``metadata`` as saved (anything JSON can hold), or ``None`` when none was.
    """
    header, _ = _read(os.fspath(path))
    return header.get("metadata")


def _read(path):
    """The header dict and every array of the file, all read eagerly so that damage shows up here."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such checkpoint file: {path!r}")
    with open(path, "rb") as file:  # our own file object: np.load leaks the one it opens on a bad zip directory
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise CheckpointError(
                f"{path}: not a numbarnn checkpoint: it does not start like the .npz (zip) archive numbarnn.save writes"
            )
        file.seek(0)
        try:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{path}: not a readable numbarnn checkpoint: the .npz file is corrupt or truncated "
                f"({type(error).__name__}: {error})"
            ) from error
    if HEADER_KEY not in arrays:
        raise CheckpointError(
            f"{path}: an .npz file without the {HEADER_KEY!r} entry numbarnn.save writes; it was not written by "
            "numbarnn.save"
        )
    text = arrays.pop(HEADER_KEY)
    try:
        header = json.loads(str(text[()]))
    except (ValueError, TypeError, IndexError) as error:
        raise CheckpointError(f"{path}: the {HEADER_KEY!r} entry is not valid JSON ({error})") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: the {HEADER_KEY!r} entry does not describe a numbarnn checkpoint")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('version')!r}; this numbarnn reads version "
            f"{FORMAT_VERSION} (save it again with a matching numbarnn)"
        )
    if not isinstance(header.get("modules"), dict) or not header["modules"]:
        raise CheckpointError(f"{path}: the checkpoint describes no modules")
    return header, arrays


def _rebuild(path, name, entry, arrays):
    where = f"{path}: module {name!r}"
    try:
        class_name, arguments, dtype, shapes = entry["class"], entry["arguments"], entry["dtype"], entry["parameters"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{where}: incomplete description (missing {error})") from error
    if class_name not in _CONSTRUCTORS:
        raise CheckpointError(
            f"{where}: unknown class {class_name!r}; this numbarnn can load {', '.join(_CONSTRUCTORS)}"
        )
    if dtype not in [supported.name for supported in SUPPORTED_DTYPES]:
        raise CheckpointError(f"{where}: unsupported dtype {dtype!r}; expected 'float32' or 'float64'")
    try:
        module = _CONSTRUCTORS[class_name][0](**arguments, dtype=np.dtype(dtype))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: cannot build {class_name}(**{arguments}): {error}") from error
    if list(shapes) != list(module.params):
        raise CheckpointError(
            f"{where}: lists parameters {list(shapes)}, but {class_name}(**{arguments}) has {list(module.params)}"
        )
    for key, target in module.params.items():
        stored = arrays.get(f"{name}/{key}")
        if stored is None:
            raise CheckpointError(f"{where}: the array for parameter {key!r} is missing")
        if stored.shape != target.shape or list(shapes[key]) != list(target.shape):
            raise CheckpointError(
                f"{where}: parameter {key!r} has shape {stored.shape} in the file, but {class_name}(**{arguments}) "
                f"needs {target.shape}"
            )
        if stored.dtype != module.dtype:
            raise CheckpointError(
                f"{where}: parameter {key!r} is stored as {stored.dtype}, but the module's dtype is {dtype}"
            )
        target[...] = stored
    module.train(bool(entry.get("training", True)))
    return module
