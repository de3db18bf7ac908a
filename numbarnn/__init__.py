"""numbarnn: vanilla RNNs on the CPU with PyTorch's semantics, compiled with Numba."""

from .cell import RNNCell
from .rnn import RNN

__all__ = ["RNN", "RNNCell"]
__version__ = "0.1.0"
