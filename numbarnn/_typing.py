"""The type aliases of numbarnn's annotations, for type checkers only.

The public modules import this module under ``typing.TYPE_CHECKING`` and write their annotations as strings
(``from __future__ import annotations``), so that nothing here, nor ``numpy.typing``, is imported at run time:
annotations cost ``import numbarnn`` nothing.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

#: What a module returns: a new array (or a view of one) of the module's dtype, float32 or float64.
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]

#: A recurrent state argument: an array-like h, or for an LSTM the tuple (h, c) of two.
StateLike: TypeAlias = npt.ArrayLike | tuple[npt.ArrayLike, npt.ArrayLike]

#: A gradient of a state: an array-like, or for an LSTM a tuple (grad_h, grad_c) whose parts may be None (zeros).
StateGradLike: TypeAlias = npt.ArrayLike | tuple[npt.ArrayLike | None, npt.ArrayLike | None]

#: A path to a file to read or write.
PathLike: TypeAlias = str | os.PathLike[str]
