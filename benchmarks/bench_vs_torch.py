"""numbarnn against torch.nn.RNN on ``python -m numbarnn bench``'s configurations, one benchmark class per library.

asv runs each benchmark in its own process, so a torch benchmark and a numbarnn benchmark never share one (in one
process, torch's OpenMP threads and OpenBLAS's threads spin against each other and slow both): compare, e.g.,
``TorchForward.time_forward('medium')`` with ``NumbarnnForward.time_forward('medium')``. Both libraries get the same
seeded weights and data and every core this process may use (torch.set_num_threads; numba and BLAS use every core by
default). The configuration names are ``numbarnn.cli.bench.CONFIGS``'s; the first, ``tiny``, is the cheapest.

The torch classes skip themselves (NotImplementedError in setup, asv's convention) where torch is not installed.
"""

import os

import numbarnn
from numbarnn.cli.bench import CONFIGS, STEP_CONFIG

from .common import SEED, random_array

CONFIG_NAMES = list(CONFIGS)
DTYPE = "float32"


def _available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _numbarnn_rnn(config):
    return numbarnn.RNN(
        config.input_size,
        config.hidden_size,
        config.num_layers,
        bidirectional=config.bidirectional,
        dtype=DTYPE,
        seed=SEED,
    )


def _sequence_data(config):
    """(x, grad_output): an (L, N, H_in) input and an (L, N, D*H_out) output gradient, seeded."""
    x = random_array((config.steps, config.batch, config.input_size), DTYPE)
    grad_output = random_array(
        (config.steps, config.batch, config.directions * config.hidden_size), DTYPE, seed=SEED + 1
    )
    return x, grad_output


def _step_data():
    """(x, h_0): one step's (N, H_in) input and a (1, N, H) state for the single-step configuration."""
    return (
        random_array((STEP_CONFIG.batch, STEP_CONFIG.input_size), DTYPE),
        random_array((1, STEP_CONFIG.batch, STEP_CONFIG.hidden_size), DTYPE, seed=SEED + 1),
    )


class _Torch:
    """Imports torch, uses every core, and builds a torch.nn.RNN with a seeded numbarnn.RNN's weights."""

    def _start_torch(self):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed: pip install torch==2.13.0") from None
        self.torch = torch
        self.saved_threads = torch.get_num_threads()
        torch.set_num_threads(_available_cores())
        return torch

    def _torch_rnn(self, config):
        torch = self.torch
        rnn = torch.nn.RNN(
            config.input_size,
            config.hidden_size,
            config.num_layers,
            bidirectional=config.bidirectional,
            dtype=getattr(torch, DTYPE),
        )
        rnn.load_state_dict({key: torch.from_numpy(value) for key, value in _numbarnn_rnn(config).state_dict().items()})
        return rnn

    def teardown(self, *params):
        self.torch.set_num_threads(self.saved_threads)


class TorchForward(_Torch):
    """torch.nn.RNN inference: one forward pass under ``torch.inference_mode``."""

    params = [CONFIG_NAMES]
    param_names = ["config"]

    def setup(self, name):
        torch = self._start_torch()
        self.rnn = self._torch_rnn(CONFIGS[name])
        self.x = torch.from_numpy(_sequence_data(CONFIGS[name])[0])
        self.time_forward(name)

    def time_forward(self, name):
        with self.torch.inference_mode():
            self.rnn(self.x)


class NumbarnnForward:
    """numbarnn.RNN inference: one forward pass in eval mode."""

    params = [CONFIG_NAMES]
    param_names = ["config"]

    def setup(self, name):
        self.rnn = _numbarnn_rnn(CONFIGS[name]).eval()
        self.x = _sequence_data(CONFIGS[name])[0]
        self.time_forward(name)

    def time_forward(self, name):
        self.rnn(self.x)


class TorchTrainingStep(_Torch):
    """torch.nn.RNN training step: zero_grad, forward, backward of a fixed output gradient (input is data)."""

    params = [CONFIG_NAMES]
    param_names = ["config"]

    def setup(self, name):
        torch = self._start_torch()
        self.rnn = self._torch_rnn(CONFIGS[name])
        x, grad_output = _sequence_data(CONFIGS[name])
        self.x, self.grad_output = torch.from_numpy(x), torch.from_numpy(grad_output)  # x.requires_grad is False
        self.time_training_step(name)

    def time_training_step(self, name):
        self.rnn.zero_grad()
        output, _ = self.rnn(self.x)
        output.backward(self.grad_output)


class NumbarnnTrainingStep:
    """numbarnn.RNN training step: zero_grad, forward, backward without the input's gradient (as torch's)."""

    params = [CONFIG_NAMES]
    param_names = ["config"]

    def setup(self, name):
        self.rnn = _numbarnn_rnn(CONFIGS[name])
        self.x, self.grad_output = _sequence_data(CONFIGS[name])
        self.time_training_step(name)

    def time_training_step(self, name):
        self.rnn.zero_grad()
        self.rnn(self.x)
        self.rnn.backward(self.grad_output, need_input_grad=False)


class TorchStep(_Torch):
    """One streaming step of torch.nn.RNN (an L = 1 input; torch has no single-step call), inference mode."""

    def setup(self):
        torch = self._start_torch()
        self.rnn = self._torch_rnn(STEP_CONFIG).eval()
        x, h_0 = _step_data()
        self.x, self.h = torch.from_numpy(x)[None], torch.from_numpy(h_0)
        self.time_step()

    def time_step(self):
        with self.torch.inference_mode():
            _, self.h = self.rnn(self.x, self.h)


class NumbarnnStep:
    """One streaming step of numbarnn.RNN in eval mode: ``rnn.step`` (the sequence call on L = 1 where it lacks one)."""

    def setup(self):
        self.rnn = _numbarnn_rnn(STEP_CONFIG).eval()
        self.x, self.h = _step_data()
        self.x_sequence = self.x[None]
        self.time_step()

    def time_step(self):
        if hasattr(self.rnn, "step"):
            _, self.h = self.rnn.step(self.x, self.h)
        else:
            _, self.h = self.rnn(self.x_sequence, self.h)


class TorchCellStep(_Torch):
    """One torch.nn.RNNCell call (N = 1) under ``torch.inference_mode``, with the step configuration's weights."""

    def setup(self):
        torch = self._start_torch()
        self.cell = torch.nn.RNNCell(STEP_CONFIG.input_size, STEP_CONFIG.hidden_size, dtype=getattr(torch, DTYPE))
        self.cell.load_state_dict(
            {
                key.removesuffix("_l0"): torch.from_numpy(value)
                for key, value in _numbarnn_rnn(STEP_CONFIG).state_dict().items()
            }
        )
        x, h_0 = _step_data()
        self.x, self.h = torch.from_numpy(x), torch.from_numpy(h_0[0])
        self.time_cell_step()

    def time_cell_step(self):
        with self.torch.inference_mode():
            self.h = self.cell(self.x, self.h)


class NumbarnnCellStep:
    """One numbarnn.RNNCell call (N = 1) in eval mode, with the step configuration's weights."""

    def setup(self):
        self.cell = numbarnn.RNNCell(STEP_CONFIG.input_size, STEP_CONFIG.hidden_size, dtype=DTYPE).eval()
        self.cell.load_state_dict(
            {key.removesuffix("_l0"): value for key, value in _numbarnn_rnn(STEP_CONFIG).state_dict().items()}
        )
        x, h_0 = _step_data()
        self.x, self.h = x, h_0[0]
        self.time_cell_step()

    def time_cell_step(self):
        self.h = self.cell(self.x, self.h)
