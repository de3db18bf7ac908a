"""numbarnn: recurrent networks (RNN, LSTM, GRU) on the CPU with PyTorch's semantics, compiled with Numba."""

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic), so that the
# installed metadata and numbarnn.__version__ cannot disagree. Keep it a plain string literal.
__version__ = "0.1.0"

from . import optim
from .cell import GRUCell, LSTMCell, RNNCell
from .clip import clip_grad_norm_
from .linear import Linear
from .losses import mse_loss, softmax_cross_entropy
from .optim import SGD, Adagrad, Adam
from .rnn import GRU, LSTM, RNN
from .serialization import CheckpointError, load, load_metadata, save

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
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
