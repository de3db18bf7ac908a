"""numbarnn: vanilla RNNs on the CPU with PyTorch's semantics, compiled with Numba."""

from .rnn import RNN

__all__ = ["RNN"]
__version__ = "0.1.0"
