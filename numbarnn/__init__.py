"""numbarnn: vanilla RNNs on the CPU with PyTorch's semantics, compiled with Numba."""

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic), so that the
# installed metadata and numbarnn.__version__ cannot disagree. Keep it a plain string literal.
__version__ = "0.1.0"

from . import optim
from .cell import RNNCell
from .clip import clip_grad_norm_
from .linear import Linear
from .losses import mse_loss, softmax_cross_entropy
from .optim import SGD, Adagrad, Adam
from .rnn import RNN
from .serialization import CheckpointError, load, load_metadata, save

__all__ = [
    "RNN",
    "RNNCell",
    "Linear",
    "softmax_cross_entropy",
    "mse_loss",
    "optim",
    "SGD",
    "Adam",
    "Adagrad",
    "clip_grad_norm_",
    "save",
    "load",
    "load_metadata",
    "CheckpointError",
]
