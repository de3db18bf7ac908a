"""The private kernels called directly, against the naive NumPy loops of ``naive.py`` and plain NumPy.

The buffers are prepared here from the kernels' docstrings (not through ``numbarnn.RNN``), so a mistake in how
``rnn.py`` drives the kernels and a mistake in the kernels themselves show up in different tests.
"""

import itertools

import naive
import numba
import numpy as np
import pytest
from helpers import DTYPES, assert_close
from numpy.testing import assert_array_equal

from numbarnn._activations import activate, activation_slope
from numbarnn._backward import rnn_backward, rnn_backward_parallel
from numbarnn._forward import rnn_forward, rnn_forward_parallel
from numbarnn._layout import build_layout, named_views
from numbarnn._matmul import SMALL_PRODUCT, matmul
from numbarnn._packing import pack, unpack

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 5, 3, 4, 3
UNSORTED_LENGTHS = np.array([2, 5, 1])  # deliberately not sorted, with a length-1 sequence and one of full length


def sort_by_length(lengths, steps):
    """``(order, step_offsets)``: the batch sorted by decreasing length (stable), and each step's first packed row."""
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    running = np.array([(lengths > t).sum() for t in range(steps)])
    return order, np.concatenate([[0], np.cumsum(running)]).astype(np.int64)


class KernelProblem:
    """Random parameters, inputs and gradients for a stack, in the padded (L, N, ...) layout and packed."""

    def __init__(self, num_layers, bidirectional, bias, dtype, lengths, dropout, rng):
        self.num_layers, self.bidirectional, self.dtype = num_layers, bidirectional, np.dtype(dtype)
        self.directions = 2 if bidirectional else 1
        width = self.directions * HIDDEN_SIZE
        self.width = width
        entries, self.offsets, total = build_layout(INPUT_SIZE, HIDDEN_SIZE, num_layers, self.directions, bias)
        self.params = rng.uniform(-0.8, 0.8, total).astype(dtype)
        self.named = {name: view.astype(np.float64) for name, view in named_views(self.params, entries).items()}
        self.lengths = np.full(BATCH, STEPS) if lengths is None else np.asarray(lengths)
        self.order, self.step_offsets = sort_by_length(self.lengths, STEPS)
        self.rows = int(self.step_offsets[-1])
        self.x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(dtype)
        self.h_0 = rng.standard_normal((num_layers * self.directions, BATCH, HIDDEN_SIZE)).astype(dtype)
        self.grad_output = rng.standard_normal((STEPS, BATCH, width)).astype(dtype)
        self.grad_h_n = rng.standard_normal(self.h_0.shape).astype(dtype)
        if dropout and num_layers > 1:
            keep = rng.random((num_layers - 1, STEPS, BATCH, width)) >= 0.4
            self.masks = (keep / 0.6).astype(dtype)
        else:
            self.masks = None

    def packed(self, padded):
        rows = np.empty((self.rows, padded.shape[-1]), self.dtype)
        pack(padded, self.order, self.step_offsets, rows)
        return rows

    def unpacked(self, rows):
        padded = np.empty((STEPS, BATCH, rows.shape[1]), self.dtype)
        unpack(rows, self.order, self.step_offsets, padded)
        return padded

    def forward(self, relu, training=True, parallel=False):
        """Run the forward kernel (the direction-parallel one if ``parallel``); returns its buffers by name."""
        layers, directions, rows, width = self.num_layers, self.directions, self.rows, self.width
        dropped = layers - 1 if self.masks is not None else 0
        buffers = dict(
            x=self.packed(self.x),
            h_0=np.ascontiguousarray(self.h_0[:, self.order]),
            dropout_scale=np.stack([self.packed(m) for m in self.masks]) if dropped else
            np.empty((0, rows, width), self.dtype),
            layer_in=np.full((dropped, rows, width), np.nan, self.dtype),
            # Inference keeps at most two layer outputs (ping-pong) and no h_prev rows.
            layer_out=np.full((layers - 1 if training else min(layers - 1, 2), rows, width), np.nan, self.dtype),
            h_prev=np.full((layers, directions, rows if training else 0, HIDDEN_SIZE), np.nan, self.dtype),
            z=np.full((directions, rows, HIDDEN_SIZE), np.nan, self.dtype),
            step_tmp=np.full((directions, BATCH, HIDDEN_SIZE), np.nan, self.dtype),
            w_hh_transposed=np.full((directions, HIDDEN_SIZE, HIDDEN_SIZE), np.nan, self.dtype),
            bias_zeros=np.zeros(HIDDEN_SIZE, self.dtype),
            top_out=np.full((rows, width), np.nan, self.dtype),
            h_n=np.full(self.h_0.shape, np.nan, self.dtype),
        )
        b = buffers
        kernel = rnn_forward_parallel if parallel else rnn_forward
        kernel(b["x"], b["h_0"], self.params, self.offsets, self.step_offsets, directions, relu, b["dropout_scale"],
               b["layer_in"], b["layer_out"], b["h_prev"], b["z"], b["step_tmp"], b["w_hh_transposed"],
               b["bias_zeros"], b["top_out"], b["h_n"])
        return buffers

    def naive(self, nonlinearity):
        """The reference results, computed in float64 for both dtypes."""
        masks = None if self.masks is None else [m.astype(np.float64) for m in self.masks]
        output, h_n, cache = naive.rnn_forward(self.x.astype(np.float64), self.h_0.astype(np.float64), self.named,
                                               self.num_layers, self.bidirectional, nonlinearity, self.lengths, masks)
        grad_x, grad_h_0, grads = naive.rnn_backward(cache, self.named, self.num_layers, self.bidirectional,
                                                     nonlinearity, self.grad_output.astype(np.float64),
                                                     self.grad_h_n.astype(np.float64), masks)
        return output, h_n, grad_x, grad_h_0, grads


def unsort(states, order):
    result = np.empty_like(states)
    result[:, order] = states
    return result


# (num_layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout); dropout needs a second layer.
KERNEL_GRID = [case for case in itertools.product([1, 2, 3], [False, True], [True, False], ["tanh", "relu"], DTYPES,
                                                  [None, UNSORTED_LENGTHS], [False, True])
               if case[0] > 1 or not case[6]]


def kernel_id(case):
    layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout = case
    return "-".join([f"L{layers}", "bi" if bidirectional else "uni", "bias" if bias else "nobias", nonlinearity,
                     np.dtype(dtype).name, "lengths" if lengths is not None else "full",
                     "dropout" if dropout else "nodropout"])


# The direction-parallel kernels only differ in how directions are scheduled; check them on the bidirectional cases.
KERNEL_CASES = [(case, False) for case in KERNEL_GRID] + [(case, True) for case in KERNEL_GRID if case[1]]


@pytest.mark.parametrize(("case", "parallel"), KERNEL_CASES,
                         ids=[kernel_id(case) + ("-parallel" if parallel else "") for case, parallel in KERNEL_CASES])
def test_forward_and_backward_kernels_match_naive_loops(case, parallel, rng):
    num_layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout = case
    problem = KernelProblem(num_layers, bidirectional, bias, dtype, lengths, dropout, rng)
    relu = nonlinearity == "relu"
    expected_output, expected_h_n, expected_grad_x, expected_grad_h_0, expected_grads = problem.naive(nonlinearity)

    buffers = problem.forward(relu, parallel=parallel)
    assert_close(problem.unpacked(buffers["top_out"]), expected_output, dtype, "output")
    assert_close(unsort(buffers["h_n"], problem.order), expected_h_n, dtype, "h_n")

    entries = build_layout(INPUT_SIZE, HIDDEN_SIZE, num_layers, problem.directions, bias)[0]
    grads_start = rng.standard_normal(problem.params.size).astype(dtype)  # the kernel must add, not overwrite
    grads = grads_start.copy()
    rows, width = problem.rows, problem.width
    widest = max(INPUT_SIZE, width, HIDDEN_SIZE)
    grad_x = np.full((rows, INPUT_SIZE), np.nan, dtype)
    grad_h_0 = np.full(problem.h_0.shape, np.nan, dtype)
    b = buffers
    kernel = rnn_backward_parallel if parallel else rnn_backward
    kernel(b["x"], problem.params, problem.offsets, problem.step_offsets, problem.directions, relu,
           b["dropout_scale"], b["layer_in"], b["layer_out"], b["h_prev"], b["top_out"],
           problem.packed(problem.grad_output), np.ascontiguousarray(problem.grad_h_n[:, problem.order]),
           grads, grad_x, grad_h_0,
           np.full((rows, width), np.nan, dtype), np.full((problem.directions, rows, HIDDEN_SIZE), np.nan, dtype),
           np.full((problem.directions, rows * widest if problem.directions == 2 else 0), np.nan, dtype),
           np.full((problem.directions, HIDDEN_SIZE * widest), np.nan, dtype))
    padded_grad_x = problem.unpacked(grad_x)
    assert_close(padded_grad_x, expected_grad_x, dtype, "grad_x")
    assert_close(unsort(grad_h_0, problem.order), expected_grad_h_0, dtype, "grad_h_0")
    accumulated = named_views(grads - grads_start, entries)
    assert list(accumulated) == list(expected_grads)
    for name, expected in expected_grads.items():
        assert_close(accumulated[name], expected, dtype, name)


@pytest.mark.parametrize("lengths", [None, UNSORTED_LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("num_layers", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_buffers_give_the_training_result(num_layers, dtype, lengths, rng):
    """Inference keeps only two layer outputs (ping-pong) and no h_prev; the results must not change."""
    problem = KernelProblem(num_layers, True, True, dtype, lengths, False, rng)
    training = problem.forward(relu=False, training=True)
    inference = problem.forward(relu=False, training=False)
    assert_array_equal(inference["top_out"], training["top_out"])
    assert_array_equal(inference["h_n"], training["h_n"])


# -- packing -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [[4, 4, 4], [1, 4, 2], [3, 1, 3], [1, 1, 1]])
def test_pack_and_unpack_follow_their_definition(lengths, rng):
    lengths = np.array(lengths)
    steps, features = 4, 2
    order, step_offsets = sort_by_length(lengths, steps)
    source = rng.standard_normal((steps, lengths.size, features))
    packed = np.full((int(step_offsets[-1]), features), np.nan)
    pack(source, order, step_offsets, packed)
    expected_rows = [source[t, n] for t in range(steps) for n in order if lengths[n] > t]
    assert_array_equal(packed, np.array(expected_rows))
    # batch_first data arrives as a transposed (non-contiguous) view
    batch_first = np.ascontiguousarray(source.transpose(1, 0, 2))
    packed_from_view = np.full_like(packed, np.nan)
    pack(batch_first.transpose(1, 0, 2), order, step_offsets, packed_from_view)
    assert_array_equal(packed_from_view, packed)

    target = np.full_like(source, np.nan)  # every position must be written: data or zero padding
    unpack(packed, order, step_offsets, target)
    valid = np.arange(steps)[:, None] < lengths[None, :]
    assert_array_equal(target[valid], source[valid])
    assert_array_equal(target[~valid], 0)


# -- activations ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def apply_activation(values, relu, out):
    for i in range(values.size):
        out[i] = activate(values[i], relu)


@numba.njit(cache=True)
def apply_activation_slope(outputs, relu, out):
    for i in range(outputs.size):
        out[i] = activation_slope(outputs[i], relu)


def activation(values, relu):
    out = np.empty_like(values)
    apply_activation(values, relu, out)
    return out


def float32_test_points():
    clamp = np.float32(7.90531110763549805)
    small = np.float32(4e-4)
    positive = np.concatenate([
        np.linspace(0, 20, 200_001, dtype=np.float32),
        np.float32(10.0) ** np.arange(-45, 2, 0.01, dtype=np.float32),  # denormals to 100
        [np.float32(1e30), np.finfo(np.float32).max],
        np.nextafter(clamp, np.float32([-np.inf, np.inf])), [clamp],  # both sides of the clamp
        np.nextafter(small, np.float32([-np.inf, np.inf])), [small],  # both sides of the small-argument cut
    ]).astype(np.float32)
    return np.concatenate([positive, -positive])


def test_float32_tanh_is_within_3e7_of_exact_tanh():
    values = float32_test_points()
    result = activation(values, False)
    assert result.dtype == np.float32
    exact = np.tanh(values.astype(np.float64))
    error = np.abs(result.astype(np.float64) - exact)
    # A float32 result cannot be closer than half an ulp (up to 6e-8 near 1); the rational approximation is
    # documented as a few ulp, which near |tanh| = 1 is 3e-7 = 5 ulp of 6e-8 and relative 2.5 float32 eps.
    assert error.max() <= 3e-7, values[error.argmax()]
    nonzero = exact != 0
    relative = error[nonzero] / np.abs(exact[nonzero])
    assert relative.max() <= 3e-7, values[nonzero][relative.argmax()]
    half = values.size // 2
    assert_array_equal(result[half:], -result[:half])  # exactly odd
    assert np.abs(result).max() == 1  # saturates exactly instead of stopping short of +-1
    assert_array_equal(result[np.abs(values) > 7.9053111], np.sign(values[np.abs(values) > 7.9053111]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_non_finite_values(dtype):
    values = np.array([np.nan, np.inf, -np.inf, 0.0], dtype)
    result = activation(values, False)
    assert np.isnan(result[0])
    assert_array_equal(result[1:], [1, -1, 0])


def test_float64_tanh_is_within_two_eps_of_numpy_tanh():
    values = np.concatenate([np.linspace(-25, 25, 100_001), 10.0 ** np.arange(-320, 2, 0.5),
                             np.nextafter(0.625, [0, 1]), np.nextafter(22.0, [0, 100])])  # both branch edges
    values = np.concatenate([values, -values])
    # The float64 approximation is documented as within 2 ulp: below 0.625 Cephes' rational function (1 ulp),
    # above it 1 - 2 / (exp(2|x|) + 1) with the exp correct to 1 ulp, whose error the subtraction does not grow.
    np.testing.assert_allclose(activation(values, False), np.tanh(values), rtol=2 * np.finfo(np.float64).eps,
                               atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    values = np.array([-2.5, -0.0, 0.0, 1e-30, 3.0, np.inf, -np.inf, np.nan], dtype)
    result = activation(values, True)
    assert result.dtype == np.dtype(dtype)
    assert_array_equal(result[:-1], [0, 0, 0, values[3], 3, np.inf, 0])
    assert np.isnan(result[-1]), "relu(NaN) must be NaN, as in torch"


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_slopes_from_outputs(dtype):
    outputs = np.array([-1.0, -0.5, 0.0, 0.25, 1.0, 3.0], dtype)
    slopes = np.empty_like(outputs)
    apply_activation_slope(outputs, False, slopes)
    assert_array_equal(slopes, (1 - outputs.astype(np.float64) ** 2).astype(dtype))
    apply_activation_slope(outputs, True, slopes)
    assert_array_equal(slopes, [0, 0, 0, 1, 1, 1])


# -- matmul --------------------------------------------------------------------------------------------------------

# (M, K, N) on both sides of SMALL_PRODUCT = M * N * K, where the axpy-form loop hands over to BLAS. The small
# shapes exercise every remainder of the 2-row x 4-column blocking: M odd and even, N % 4 in {0, 1, 2, 3}.
SMALL_SHAPES = [(1, 1, 1), (2, 3, 4), (3, 5, 5), (4, 2, 6), (5, 7, 7), (7, 64, 64),
                (32, 64, 64)]  # 32 * 64 * 64 == SMALL_PRODUCT: still the loop
LARGE_SHAPES = [(33, 64, 64), (64, 96, 47)]


def test_shapes_straddle_the_blas_threshold():
    assert all(m * k * n <= SMALL_PRODUCT for m, k, n in SMALL_SHAPES)
    assert all(m * k * n > SMALL_PRODUCT for m, k, n in LARGE_SHAPES)
    assert {n % 4 for _, _, n in SMALL_SHAPES} == {0, 1, 2, 3} and {m % 2 for m, _, _ in SMALL_SHAPES} == {0, 1}


def assert_product_close(result, a, b):
    """Within the classical bound for a dot product of length K: |error| <= K * eps * (|a| @ |b|)."""
    exact = a.astype(np.float64) @ b.astype(np.float64)
    bound = a.shape[1] * np.finfo(a.dtype).eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    error = np.abs(result - exact)
    assert (error <= bound).all(), f"max error {error.max()}, bound there {bound.flat[error.argmax()]}"


@pytest.mark.parametrize("shape", SMALL_SHAPES + LARGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(shape, dtype, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)  # every element must be overwritten, not accumulated into
    matmul(a, b, out)
    assert_product_close(out, a, b)
