"""Speed of ``numbarnn.torch.RNN`` in PyTorch code: inference under ``inference_mode`` and a training step
``out, h = rnn(x); (out * g).sum().backward()`` (``x`` without ``requires_grad``), so that asv tracks the drop-in's
own overhead over time. torch's own module is timed by ``benchmarks/torch_dropin_vs_torch.py``, in separate
processes (asv runs both in one process, where their thread pools would disturb each other).
"""

import torch

import numbarnn.torch

from .common import SEED

# (L, N, H_in, H_out, layers): the bench's tiny and small configurations.
SHAPES = {"tiny": (100, 1, 32, 64, 1), "small": (100, 32, 64, 128, 2)}


class TorchDropIn:
    params = [list(SHAPES)]
    param_names = ["config"]

    def setup(self, config):
        steps, batch, input_size, hidden, layers = SHAPES[config]
        torch.manual_seed(SEED)
        self.rnn = numbarnn.torch.RNN(input_size, hidden, layers)
        self.x = torch.randn(steps, batch, input_size)
        self.g = torch.randn(steps, batch, hidden)
        self.time_training_step(config)  # compiles (or loads) the kernels before the clock starts
        self.time_inference(config)

    def time_inference(self, config):
        with torch.inference_mode():
            self.rnn(self.x)

    def time_training_step(self, config):
        out, _h = self.rnn(self.x)
        (out * self.g).sum().backward()
