"""Time and memory of ``numbarnn.RNN`` and ``numbarnn.RNNCell``: inference, training steps, cell loops, padded batches.

Every ``setup`` runs the timed call once, so the JIT compiles (or loads from its cache) the kernels for exactly the
dtypes and layouts being timed before asv starts the clock.
"""

import numpy as np

import numbarnn

from .common import BATCH, INPUT_SIZE, SEED, STEPS, half_average_lengths, random_array, train_step


class Forward:
    """Inference: one forward pass in eval mode over an (L, N, H_in) batch."""

    params = [[1, 2], [False, True], [32, 256], ["float32", "float64"]]
    param_names = ["num_layers", "bidirectional", "hidden_size", "dtype"]

    def setup(self, num_layers, bidirectional, hidden_size, dtype):
        self.rnn = numbarnn.RNN(
            INPUT_SIZE, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype, seed=SEED
        ).eval()
        self.x = random_array((STEPS, BATCH, INPUT_SIZE), dtype)
        self.rnn(self.x)

    def time_forward(self, num_layers, bidirectional, hidden_size, dtype):
        self.rnn(self.x)


class TrainingStep:
    """A training step: zero_grad, forward in training mode, backward with a fixed gradient of the output."""

    params = [[1, 2], [False, True], [32, 256], ["float32", "float64"]]
    param_names = ["num_layers", "bidirectional", "hidden_size", "dtype"]

    def setup(self, num_layers, bidirectional, hidden_size, dtype):
        self.rnn = numbarnn.RNN(
            INPUT_SIZE, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype, seed=SEED
        )
        directions = 2 if bidirectional else 1
        self.x = random_array((STEPS, BATCH, INPUT_SIZE), dtype)
        self.grad_output = random_array((STEPS, BATCH, directions * hidden_size), dtype, seed=SEED + 1)
        train_step(self.rnn, self.x, self.grad_output)

    def time_training_step(self, num_layers, bidirectional, hidden_size, dtype):
        train_step(self.rnn, self.x, self.grad_output)


class TrainingMemory:
    """Peak resident memory of a process that runs a training step.

    asv reports the peak RSS of the whole benchmark process (Python, NumPy, numba and, with a cold JIT cache, the
    compiler), so the problem is made large enough (tens of MB of activations) for the buffers of the training step
    to show above that baseline.
    """

    params = [[False, True]]
    param_names = ["bidirectional"]
    steps, batch, input_size, hidden_size, num_layers = 100, 64, 256, 512, 2

    def setup(self, bidirectional):
        self.rnn = numbarnn.RNN(
            self.input_size, self.hidden_size, self.num_layers, bidirectional=bidirectional, seed=SEED
        )
        directions = 2 if bidirectional else 1
        self.x = random_array((self.steps, self.batch, self.input_size), np.float32)
        self.grad_output = random_array(
            (self.steps, self.batch, directions * self.hidden_size), np.float32, seed=SEED + 1
        )
        # Warm the JIT on a tiny problem with the same layer structure so the timed-size buffers are first
        # allocated inside the measured call.
        small = numbarnn.RNN(4, 3, self.num_layers, bidirectional=bidirectional, seed=SEED)
        train_step(small, random_array((2, 2, 4), np.float32), random_array((2, 2, 3 * directions), np.float32))

    def peakmem_training_step(self, bidirectional):
        train_step(self.rnn, self.x, self.grad_output)


class CellLoop:
    """A Python loop of ``RNNCell`` calls over L steps: inference, and forward + reverse-order backward (BPTT)."""

    params = [[1, 16], [64, 256]]
    param_names = ["batch", "hidden_size"]

    def setup(self, batch, hidden_size):
        self.inference_cell = numbarnn.RNNCell(INPUT_SIZE, hidden_size, seed=SEED).eval()
        self.training_cell = numbarnn.RNNCell(INPUT_SIZE, hidden_size, seed=SEED)
        self.xs = random_array((STEPS, batch, INPUT_SIZE), np.float32)
        self.grad_hs = random_array((STEPS, batch, hidden_size), np.float32, seed=SEED + 1)
        self.time_forward_loop(batch, hidden_size)
        self.time_training_loop(batch, hidden_size)

    def time_forward_loop(self, batch, hidden_size):
        h = None
        for x_t in self.xs:
            h = self.inference_cell(x_t, h)

    def time_training_loop(self, batch, hidden_size):
        cell = self.training_cell
        cell.zero_grad()
        h = None
        for x_t in self.xs:
            h = cell(x_t, h)
        grad_carried = np.zeros_like(self.grad_hs[0])
        for grad_h in self.grad_hs[::-1]:  # the tape is last in, first out
            _, grad_carried = cell.backward(grad_h + grad_carried)


class Lengths:
    """A padded batch: no ``lengths``, every length equal to L, and lengths averaging about L / 2.

    With ``half_average`` half the rows are padding; an implementation that skips padding takes about half the time
    of ``none``. ``all_full`` against ``none`` shows the cost of the packing path itself.
    """

    params = [["none", "all_full", "half_average"]]
    param_names = ["lengths"]
    steps, batch, input_size, hidden_size = 100, 32, 64, 128

    def setup(self, lengths):
        self.lengths = {
            "none": None,
            "all_full": np.full(self.batch, self.steps, dtype=np.int64),
            "half_average": half_average_lengths(self.steps, self.batch),
        }[lengths]
        self.x = random_array((self.steps, self.batch, self.input_size), np.float32)
        self.grad_output = random_array((self.steps, self.batch, 2 * self.hidden_size), np.float32, seed=SEED + 1)
        self.inference_rnn = numbarnn.RNN(self.input_size, self.hidden_size, bidirectional=True, seed=SEED).eval()
        self.training_rnn = numbarnn.RNN(self.input_size, self.hidden_size, bidirectional=True, seed=SEED)
        self.time_forward(lengths)
        self.time_training_step(lengths)

    def time_forward(self, lengths):
        self.inference_rnn(self.x, lengths=self.lengths)

    def time_training_step(self, lengths):
        train_step(self.training_rnn, self.x, self.grad_output, self.lengths)
