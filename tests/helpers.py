"""Shared helpers for the tests: tolerances, building a numbarnn/torch pair with equal weights, and running
torch's forward + autograd backward the way numbarnn's ``backward`` defines its gradients.

Test modules import them with ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``); fixtures live in
``conftest.py``.
"""

import functools
import io
import itertools
import math
from collections import namedtuple

import numba
import numpy as np
import torch
from numpy.testing import assert_allclose

import numbarnn
import numbarnn._panels
import numbarnn._threads
import numbarnn._workspace

# Tiny problems: torch's intra-op threads only add start-up cost and compete with numba/BLAS for the 2 cores.
torch.set_num_threads(1)

DTYPES = [np.float32, np.float64]
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

# Every compared value is a short chain (T <= 7 steps) of sums of O(1) terms: weights are U(-1/sqrt(H), 1/sqrt(H))
# and inputs standard normal. Two correct implementations differ by their summation order (and, in float32, by the
# rational tanh, within 3e-7 of the exact one), so they agree to a modest multiple of the unit roundoff:
# float32 eps = 1.2e-7, float64 eps = 2.2e-16. rtol is the relative agreement asked for. atol covers entries that
# cancel to near zero, where only the absolute error is meaningful: a parameter gradient sums up to L * N <= 28 rows
# of products whose magnitudes add up to ~10-40, so its rounding error is ~sqrt(28) * eps * 40: 2.5e-5 in the worst
# case and a few 1e-6 in practice for float32 (measured up to 1.9e-6), ~1e-14 for float64 (measured up to 3e-15).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
ATOL = {np.dtype(np.float32): 5e-6, np.dtype(np.float64): 1e-12}
_ATOL_BUDGET = math.sqrt(28) * 40  # sqrt(K) * (sum of the magnitudes) that ATOL is set for, from the model above


Atols = namedtuple("Atols", ["values", "parameter_gradients"])


def scaled_atols(dtype, steps, batch, input_size, hidden_size, num_directions=1):
    """ATOL for larger problems than the one it was set for (the fast-path grids: H up to 64, L * N up to ~150):
    ``values`` for outputs, states and the input and state gradients, ``parameter_gradients`` for the rest.

    The model is the one above: a sum of K products whose magnitudes add up to S is off by ~sqrt(K) * eps * S
    (rounding errors of random sign; the worst case is K * eps * S), and ATOL covers sqrt(K) * S <= sqrt(28) * 40.
    Each is ATOL scaled by how far its values go past that (never below ATOL):

    - a parameter gradient sums K = L * N rows (one per step and sequence) of products dz * h or dz * x of factors
      of O(1), as in the small grids (28 rows add up to <= 40, ~1.4 each): S = 1.4 K, so the error grows as K^1.5;
    - an output or h_n sums K = H_in + H products per step (x W_ih^T + h W_hh^T), and grad_x / grad_h_0 sum
      K = D * H + H (dz W_ih over the directions, dz W_hh), each a weight |w| <= 1/sqrt(H) times an O(1) factor:
      S <= K / sqrt(H). A step's error reaches later steps through the activation (Lipschitz 1) and W_hh (spectral
      norm ~2/sqrt(3) for uniform weights, below 1 once multiplied by tanh' or relu's zeros), so over L steps it
      adds up at most L times: S <= L * K / sqrt(H), with K = H_in + D * H + H covering both passes.

    Measured against torch over the float32 panel grid (L * N up to 144): parameter gradients off by 1.9e-5 at
    most (3.8 x ATOL; this gives 11.7 x at L * N = 144), every other value by 4.8e-7 (0.1 x ATOL; this gives
    ATOL up to 5.6 x at H = 64, bidirectional). float64 stays within 0.03 x ATOL.
    """
    dtype = np.dtype(dtype)
    rows = steps * batch
    gradient = math.sqrt(rows) * rows * 40 / 28
    terms = input_size + (num_directions + 1) * hidden_size
    values = math.sqrt(terms) * steps * terms / math.sqrt(hidden_size)
    return Atols(ATOL[dtype] * max(1.0, values / _ATOL_BUDGET), ATOL[dtype] * max(1.0, gradient / _ATOL_BUDGET))


def assert_close(actual, expected, dtype, name="", atol=None):
    """Compare with the tolerances of ``dtype`` (NaN matches NaN, inf matches inf of the same sign); ``atol``
    replaces ATOL for larger problems (:func:`scaled_atols`)."""
    dtype = np.dtype(dtype)
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    assert np.asarray(actual).shape == np.asarray(expected).shape, (name, np.shape(actual), np.shape(expected))
    assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype] if atol is None else atol, err_msg=name)


def torch_dtype(dtype):
    return TORCH_DTYPES[np.dtype(dtype)]


@functools.lru_cache(maxsize=None)
def _torch_rnn(
    input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout, bidirectional, dtype, seed
):
    # Cached: many tests share a configuration, and torch.manual_seed plus construction cost more than the test.
    # Callers never change the weights (torch_run only reads them and resets .grad).
    torch.manual_seed(seed)
    return torch.nn.RNN(
        input_size,
        hidden_size,
        num_layers,
        nonlinearity=nonlinearity,
        bias=bias,
        batch_first=batch_first,
        dropout=dropout,
        bidirectional=bidirectional,
        dtype=torch_dtype(dtype),
    )


def make_rnn_pair(
    input_size,
    hidden_size,
    num_layers=1,
    nonlinearity="tanh",
    bias=True,
    batch_first=False,
    dropout=0.0,
    bidirectional=False,
    dtype=np.float64,
    seed=0,
):
    """A fresh ``numbarnn.RNN`` and a ``torch.nn.RNN`` (shared between tests, do not modify its weights) built
    with the same arguments, numbarnn holding torch's weights; torch's module is in training mode."""
    reference = _torch_rnn(
        input_size,
        hidden_size,
        num_layers,
        nonlinearity,
        bias,
        batch_first,
        float(dropout),
        bidirectional,
        np.dtype(dtype),
        seed,
    ).train()
    rnn = numbarnn.RNN(
        input_size,
        hidden_size,
        num_layers,
        nonlinearity=nonlinearity,
        bias=bias,
        batch_first=batch_first,
        dropout=dropout,
        bidirectional=bidirectional,
        dtype=dtype,
        seed=seed + 1,
    )
    rnn.load_state_dict(reference.state_dict())
    return rnn, reference


def torch_run(reference, x, h_0=None, grad_output=None, grad_h_n=None, lengths=None):
    """torch's forward and, when a gradient is given, autograd's backward for the loss
    ``sum(grad_output * output) + sum(grad_h_n * h_n)``.

    ``h_0=None`` is run as explicit zeros that require grad, which is what torch does with an omitted h_0, so that
    the gradient numbarnn returns for the implicit zeros can be compared. ``lengths`` runs
    pack_padded_sequence(enforce_sorted=False) -> RNN -> pad_packed_sequence(total_length=L).

    Returns ``(output, h_n, grad_x, grad_h_0, grads)`` as NumPy arrays; ``grads`` maps parameter names to ``.grad``
    (zeros where autograd left None); the gradients are None when no gradient was given.
    """
    dtype = next(reference.parameters()).dtype
    reference.zero_grad(set_to_none=True)
    x_t = torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True)
    batched = x_t.dim() == 3
    if h_0 is None:
        state_shape = [reference.num_layers * (2 if reference.bidirectional else 1), reference.hidden_size]
        if batched:
            state_shape.insert(1, x_t.shape[0] if reference.batch_first else x_t.shape[1])
        h_0 = np.zeros(state_shape)
    h_0_t = torch.tensor(np.asarray(h_0), dtype=dtype, requires_grad=True)
    if lengths is None:
        output_t, h_n_t = reference(x_t, h_0_t)
    else:
        steps = x_t.shape[1] if reference.batch_first else x_t.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.as_tensor(np.asarray(lengths)), batch_first=reference.batch_first, enforce_sorted=False
        )
        packed_output, h_n_t = reference(packed, h_0_t)
        output_t, _ = torch.nn.utils.rnn.pad_packed_sequence(
            packed_output, batch_first=reference.batch_first, total_length=steps
        )
    output, h_n = output_t.detach().numpy(), h_n_t.detach().numpy()
    if grad_output is None and grad_h_n is None:
        return output, h_n, None, None, None
    loss = output_t.sum() * 0
    if grad_output is not None:
        loss = loss + (output_t * torch.tensor(np.asarray(grad_output), dtype=dtype)).sum()
    if grad_h_n is not None:
        loss = loss + (h_n_t * torch.tensor(np.asarray(grad_h_n), dtype=dtype)).sum()
    loss.backward()
    grads = {
        name: (np.zeros(tuple(p.shape), p.detach().numpy().dtype) if p.grad is None else p.grad.numpy())
        for name, p in reference.named_parameters()
    }
    return output, h_n, x_t.grad.numpy(), h_0_t.grad.numpy(), grads


def state_shape(rnn, batch=None):
    """Shape of h_0 / h_n for ``rnn``: (D * num_layers, N, H), or (D * num_layers, H) when ``batch`` is None."""
    rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
    return (rows, rnn.hidden_size) if batch is None else (rows, batch, rnn.hidden_size)


def input_shape(rnn, steps, batch=None):
    """Shape of the input: (L, N, H_in), (N, L, H_in) with batch_first, or (L, H_in) when ``batch`` is None."""
    if batch is None:
        return (steps, rnn.input_size)
    return (batch, steps, rnn.input_size) if rnn.batch_first else (steps, batch, rnn.input_size)


def output_shape(rnn, steps, batch=None):
    width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    if batch is None:
        return (steps, width)
    return (batch, steps, width) if rnn.batch_first else (steps, batch, width)


def standard_normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def assert_bitwise_equal(actual, expected, name=""):
    """Same shape, dtype and bytes: stricter than ``==`` (tells -0.0 from 0.0, and NaN payloads apart)."""
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype), (
        name,
        actual.shape,
        expected.shape,
        actual.dtype,
        expected.dtype,
    )
    if actual.tobytes() != expected.tobytes():
        bits = f"u{actual.itemsize}"
        differ = np.flatnonzero(actual.reshape(-1).view(bits) != expected.reshape(-1).view(bits))
        first = differ[0]
        raise AssertionError(
            f"{name}: {differ.size} of {actual.size} values differ in their bits, the first at flat "
            f"index {first}: {actual.reshape(-1)[first]!r} != {expected.reshape(-1)[first]!r}"
        )


def pairwise_cases(options):
    """A small list of dicts that holds every pair of values of any two of ``options`` (name -> list of values).

    Greedy: add the full-product row that covers the most still-uncovered pairs until none is left. Deterministic.
    """

    def pairs(case):
        return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(options, 2)}

    product = [dict(zip(options, values, strict=True)) for values in itertools.product(*options.values())]
    uncovered = set().union(*(pairs(case) for case in product))
    chosen = []
    while uncovered:
        best = max(product, key=lambda case: len(pairs(case) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def spy_on(monkeypatch, owner, name, record):
    """Wrap ``owner.name`` (for the test's duration) so that every call still runs and appends
    ``record(args, kwargs, result)`` to the list returned."""
    calls = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(record(args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, spy)
    return calls


# -- the fast paths: panels and blocks -------------------------------------------------------------------------------

# Hidden sizes that reach the panel kernels (numbarnn._panels, panels of panel_width(dtype) columns: 16 float32 and
# 8 float64 on AVX2): 16 and 64 fill whole panels, 17 and 40 end in a partial one. The grids that use them assert
# this with the panel width in use, so a change of width cannot silently shrink what they reach.
PANEL_HIDDEN_SIZES = (16, 17, 40, 64)

# The fast-path grids split batches into blocks as a pool of this many numba threads would (see the block_pool
# fixture): a bidirectional stack gets up to 2 blocks, each with two tasks.
BLOCK_POOL = 4


def panels_of(hidden_size, dtype):
    """``(full, partial)`` panels over ``hidden_size`` columns in ``dtype`` with the panel width in use."""
    width = numbarnn._panels.panel_width(dtype)
    return hidden_size // width, int(hidden_size % width > 0)


def blocks_of(batch, steps, input_size, hidden_size, num_layers, num_directions):
    """How many blocks numbarnn splits such a batch into (with the block_pool fixture: as with BLOCK_POOL threads)."""
    return numbarnn._workspace.block_count(batch, steps, input_size, hidden_size, num_layers, num_directions)


def thread_counts(blocks, num_directions):
    """numba thread counts to run a case with: 1 (its blocks one after the other) and, when the case has several
    tasks and the pool several threads, 2 (the tasks shared between two threads)."""
    if blocks * num_directions < 2:
        return [None]
    return sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})


# Run the body with numba's thread count at ``count`` for this thread (None: as it is): numbarnn's own context manager.
numba_threads = numbarnn._threads.numba_threads


def saved_and_loaded(obj):
    """``obj`` through ``torch.save`` and ``torch.load`` in memory (a whole module is not weights: weights_only=False,
    as torch's own module tests load them)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
