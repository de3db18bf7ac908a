"""Shared helpers for the asv benchmarks: seeded data and a JIT warm-up.

Every benchmark builds its data from a fixed seed so that successive runs (and commits) time the same work.
"""

import numpy as np

SEED = 1234

# Benchmarks that build sequences use this length and batch unless a parameter says otherwise: long enough that the
# per-step cost dominates, short enough that ``asv run`` stays in the minutes on two cores.
STEPS = 50
BATCH = 16
INPUT_SIZE = 64


def random_array(shape, dtype, seed=SEED):
    """A standard-normal array of ``shape`` and ``dtype`` from a fixed seed."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def train_step(rnn, x, grad_output, lengths=None):
    """One training step of ``numbarnn.RNN``: clear the gradients, forward, backward."""
    rnn.zero_grad()
    rnn(x, lengths=lengths)
    rnn.backward(grad_output)


def half_average_lengths(steps, batch):
    """(N,) lengths spread evenly over 1...L (mean about L / 2), in a seeded shuffled order.

    A padded batch with these lengths holds half the rows of the full (L, N) batch, so an implementation that skips
    padding should take about half the time of the full batch.
    """
    lengths = 1 + (np.arange(batch) * (steps - 1)) // max(batch - 1, 1)
    return np.random.default_rng(SEED).permutation(lengths).astype(np.int64)
