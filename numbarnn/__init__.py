"""numbarnn: vanilla RNNs on the CPU with PyTorch's semantics, compiled with Numba."""

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
__version__ = "0.1.0"
