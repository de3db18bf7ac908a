"""The private kernels called directly, against the naive NumPy loops of ``naive.py`` and plain NumPy.

The buffers come from the convention's owner, :mod:`numbarnn._workspace` (not through ``numbarnn.RNN``), so a
mistake in how ``rnn.py`` drives the kernels and a mistake in the kernels themselves show up in different tests.
"""

import itertools
import json
import os
import pathlib
import re
import subprocess
import sys

import naive
import numba
import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise_equal, assert_close, numba_threads, pairwise_cases
from numpy.testing import assert_array_equal

from numbarnn import _isa, _panels
from numbarnn._activations import activate, activation_backward
from numbarnn._backward import recurrent_backward, recurrent_backward_parts
from numbarnn._cells import GATES, cell_code
from numbarnn._forward import recurrent_forward, recurrent_forward_parts
from numbarnn._jit import JIT_OPTIONS, STAMPED_LOCATORS, kernel_sources_stamp
from numbarnn._layout import build_layout, named_views
from numbarnn._packing import pack, unpack
from numbarnn._panels import (
    add_transposed_product,
    CACHE_LINE_BYTES,
    ROW_PANELS,
    TILE_ROWS,
    empty_panels,
    pack_panels,
    panel_matmul,
    panel_matmul_transposed,
    panel_shape,
    panel_width,
    rows_per_block,
)
from numbarnn._step import row_products, stacked_step
from numbarnn._threads import run_stages
from numbarnn._workspace import (
    BACKWARD_POOLED,
    FORWARD_POOLED,
    Spec,
    backward_arguments,
    backward_buffers,
    backward_views,
    equal_length_packing,
    forward_arguments,
    forward_buffers,
    forward_stages,
    forward_views,
    layers_fused,
    length_packing,
    packing_rows,
)

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE = 5, 5, 4, 3
# Deliberately not sorted, with a length-1 sequence, two of full length, and blocks of unequal size when dealt out.
UNSORTED_LENGTHS = np.array([2, 5, 1, 4, 5])


def make_packing(lengths, blocks):
    return equal_length_packing(STEPS, BATCH, blocks) if lengths is None else length_packing(lengths, STEPS, blocks)


PARTS_KERNELS = {recurrent_forward: recurrent_forward_parts, recurrent_backward: recurrent_backward_parts}


def one_part(kernel, stages, tasks, *arguments):
    """Run a pass as one call: every stage, one part (as numbarnn does on one thread)."""
    kernel(0, stages, 0, 1, *arguments)


def three_parts_backwards(kernel, stages, tasks, *arguments):
    """Run a pass as three threads would, each stage's parts in the reverse order: a part must compute only its own
    tasks, and every task the same values whichever part runs it."""
    for stage in range(stages):
        for part in reversed(range(3)):
            kernel(stage, stage + 1, part, 3, *arguments)


def on_two_threads(kernel, stages, tasks, *arguments, first_alone=False, openmp=False):
    """Run a pass as numbarnn does with two threads: each stage's parts on the calling thread and a worker (or on
    numba's OpenMP threads, as for numbarnn.torch)."""
    parts_kernel = PARTS_KERNELS[kernel] if openmp else None
    with numba_threads(2):
        assert numba.get_num_threads() == 2, "the pool has one thread: NUMBA_NUM_THREADS=1"
        run_stages(kernel, parts_kernel, stages, tasks, first_alone, *arguments)


def on_two_threads_after_the_first_stage(kernel, stages, tasks, *arguments):
    """As :func:`on_two_threads`, the first stage on the calling thread alone."""
    on_two_threads(kernel, stages, tasks, *arguments, first_alone=True)


def on_two_openmp_threads(kernel, stages, tasks, *arguments):
    """As :func:`on_two_threads`, on numba's OpenMP threads."""
    on_two_threads(kernel, stages, tasks, *arguments, openmp=True)


def filled(buffers, value=np.nan):
    """The same buffers, each filled with ``value`` (all but the pool's layout): the kernels must write everything
    they later read."""
    for name, array in zip(buffers._fields, buffers, strict=True):
        if name != "pool_layout":
            array.fill(value)
    return buffers


class KernelProblem:
    """Random parameters, inputs and gradients for a stack of ``cell`` ("rnn", "gru" or "lstm", an LSTM with a
    projection of ``proj_size``), in the padded (L, N, ...) layout and packed."""

    def __init__(self, num_layers, bidirectional, bias, dtype, lengths, dropout, blocks, rng, cell="rnn", proj_size=0):
        self.num_layers, self.bidirectional, self.dtype = num_layers, bidirectional, np.dtype(dtype)
        self.cell, self.proj_size = cell, proj_size
        self.directions = 2 if bidirectional else 1
        state = proj_size or HIDDEN_SIZE
        self.width = self.directions * state
        entries, self.offsets, total = build_layout(
            INPUT_SIZE, HIDDEN_SIZE, num_layers, self.directions, bias, GATES[cell], proj_size
        )
        self.entries = entries
        self.params = rng.uniform(-0.8, 0.8, total).astype(dtype)
        self.named = {name: view.astype(np.float64) for name, view in named_views(self.params, entries).items()}
        self.lengths = np.full(BATCH, STEPS) if lengths is None else np.asarray(lengths)
        self.packing = make_packing(lengths, blocks)
        self.order = self.packing.order
        self.rows = packing_rows(self.packing)
        self.x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(dtype)
        self.h_0 = rng.standard_normal((num_layers * self.directions, BATCH, state)).astype(dtype)
        self.grad_output = rng.standard_normal((STEPS, BATCH, self.width)).astype(dtype)
        self.grad_h_n = rng.standard_normal(self.h_0.shape).astype(dtype)
        if cell == "lstm":  # its c_0 and the gradient of its c_n
            self.c_0 = rng.standard_normal((num_layers * self.directions, BATCH, HIDDEN_SIZE)).astype(dtype)
            self.grad_c_n = rng.standard_normal(self.c_0.shape).astype(dtype)
        if dropout and num_layers > 1:
            keep = rng.random((num_layers - 1, STEPS, BATCH, self.width)) >= 0.4
            self.masks = (keep / 0.6).astype(dtype)
        else:
            self.masks = None

    def spec(self, relu):
        return Spec(
            INPUT_SIZE, HIDDEN_SIZE, self.num_layers, self.directions, self.dtype, relu, self.cell, self.proj_size
        )

    def packed(self, padded):
        rows = np.empty((self.rows, padded.shape[-1]), self.dtype)
        pack(padded, self.packing, rows)
        return rows

    def unpacked(self, rows):
        padded = np.empty((STEPS, BATCH, rows.shape[1]), self.dtype)
        unpack(rows, self.packing, padded)
        return padded

    def forward(self, relu, training=True, run=one_part, fused=True):
        """Run the forward kernel as ``run`` runs a pass's stages (:func:`numbarnn._threads.run_stages`'s
        arguments); returns its buffers. ``fused=False`` runs layers that would be fused (``layers_fused``) one at a
        time, as the kernel does for buffers with room for one layer's packed weights."""
        dropped = self.num_layers - 1 if self.masks is not None else 0
        stages = forward_stages(self.spec(relu), self.packing, dropped)
        if not fused:  # room for one layer's packed weights (as many slots as directions)
            stages = 2 * self.num_layers
        buffers = filled(
            forward_buffers(self.spec(relu), self.packing, training, dropped, fused=None if fused else False)
        )
        buffers.bias_zeros.fill(0)
        buffers.x_rows[...] = self.packed(self.x)
        buffers.h_n[...] = self.h_0[:, self.order]
        if self.cell == "lstm":
            buffers.c_n[...] = self.c_0[:, self.order]
        for k in range(dropped):
            buffers.dropout_scale[k] = self.packed(self.masks[k])
        # as numbarnn._engine passes them: the specialisation the library runs
        code = cell_code(self.spec(relu))
        arrays = tuple(self.packing), forward_arguments(buffers)
        run(
            recurrent_forward,
            stages,
            self.tasks(),
            self.params,
            self.offsets,
            *arrays,
            self.directions,
            code,
        )
        return buffers

    def tasks(self):
        return (self.packing.block_batch.size - 1) * self.directions

    def backward(self, forward, relu, grads, run=one_part):
        buffers = filled(backward_buffers(self.spec(relu), self.packing, self.params.size, True))
        buffers.grad_output[...] = self.packed(self.grad_output)
        buffers.grad_h[...] = self.grad_h_n[:, self.order]
        if self.cell == "lstm":
            buffers.grad_c[...] = self.grad_c_n[:, self.order]
        code = cell_code(self.spec(relu))
        arrays = tuple(self.packing), forward_arguments(forward), backward_arguments(buffers)
        stages = 2 * self.num_layers + 1
        run(recurrent_backward, stages, self.tasks(), self.params, self.offsets, *arrays, self.directions, code, grads)
        return buffers

    def naive(self, nonlinearity):
        """The reference results, computed in float64 for both dtypes."""
        masks = None if self.masks is None else [m.astype(np.float64) for m in self.masks]
        output, h_n, cache = naive.rnn_forward(
            self.x.astype(np.float64),
            self.h_0.astype(np.float64),
            self.named,
            self.num_layers,
            self.bidirectional,
            nonlinearity,
            self.lengths,
            masks,
        )
        grad_x, grad_h_0, grads = naive.rnn_backward(
            cache,
            self.named,
            self.num_layers,
            self.bidirectional,
            nonlinearity,
            self.grad_output.astype(np.float64),
            self.grad_h_n.astype(np.float64),
            masks,
        )
        return output, h_n, grad_x, grad_h_0, grads


def unsort(states, order):
    result = np.empty_like(states)
    result[:, order] = states
    return result


# (num_layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout, blocks); dropout needs a second layer.
KERNEL_GRID = [
    case
    for case in itertools.product(
        [1, 2, 3],
        [False, True],
        [True, False],
        ["tanh", "relu"],
        DTYPES,
        [None, UNSORTED_LENGTHS],
        [False, True],
        [1, 2],
    )
    if case[0] > 1 or not case[6]
]


def kernel_id(case):
    layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout, blocks = case
    return "-".join(
        [
            f"L{layers}",
            "bi" if bidirectional else "uni",
            "bias" if bias else "nobias",
            nonlinearity,
            np.dtype(dtype).name,
            "lengths" if lengths is not None else "full",
            "dropout" if dropout else "nodropout",
            f"B{blocks}",
        ]
    )


def test_the_grid_covers_every_option_with_both_block_counts():
    for position, values in enumerate([[1, 2, 3], [False, True], [True, False], ["tanh", "relu"]]):
        for value in values:
            assert {case[7] for case in KERNEL_GRID if case[position] == value} == {1, 2}
    assert {(case[6], case[7]) for case in KERNEL_GRID} == {(False, 1), (False, 2), (True, 1), (True, 2)}


@pytest.mark.parametrize("case", KERNEL_GRID, ids=[kernel_id(case) for case in KERNEL_GRID])
def test_forward_and_backward_kernels_match_naive_loops(case, rng):
    num_layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout, blocks = case
    problem = KernelProblem(num_layers, bidirectional, bias, dtype, lengths, dropout, blocks, rng)
    relu = nonlinearity == "relu"
    expected_output, expected_h_n, expected_grad_x, expected_grad_h_0, expected_grads = problem.naive(nonlinearity)

    forward = problem.forward(relu)
    assert_close(problem.unpacked(forward.top_out), expected_output, dtype, "output")
    assert_close(unsort(forward.h_n, problem.order), expected_h_n, dtype, "h_n")

    grads_start = rng.standard_normal(problem.params.size).astype(dtype)  # the kernel must add, not overwrite
    grads = grads_start.copy()
    backward = problem.backward(forward, relu, grads)
    assert_close(problem.unpacked(backward.grad_x), expected_grad_x, dtype, "grad_x")
    assert_close(unsort(backward.grad_h, problem.order), expected_grad_h_0, dtype, "grad_h_0")
    accumulated = named_views(grads - grads_start, problem.entries)
    assert list(accumulated) == list(expected_grads)
    for name, expected in expected_grads.items():
        assert_close(accumulated[name], expected, dtype, name)


# Every float64 two-block case of the grid for the RNN; for the gated cells (the same drivers with another epilogue,
# and an LSTM's c and projection), two-layer stacks with every pair of directions, lengths and dropout. float64 and
# two blocks of a tiny batch: the gated specialisations the module tests' batches split into blocks compile already
# (test_lstm.py, test_gru.py), so these add no compile time; the sizes do not change what compiles.
GATED_CELLS = {"gru": ("gru", 0), "lstm": ("lstm", 0), "lstm_proj": ("lstm", 2)}  # name: (cell, proj_size < H)
GATED_OPTIONS = dict(bidirectional=[False, True], lengths=[False, True], dropout=[False, True])


def gated_case(bidirectional, lengths, dropout):
    """A two-layer, two-block float64 case of the kernel grid's form."""
    return (2, bidirectional, True, "tanh", np.float64, UNSORTED_LENGTHS if lengths else None, dropout, 2)


PARALLEL_CASES = [("rnn", case) for case in KERNEL_GRID if case[7] == 2 and case[4] == np.float64 and case[2]] + [
    (name, gated_case(**option)) for name in GATED_CELLS for option in pairwise_cases(GATED_OPTIONS)
]


def parallel_id(cell_case):
    name, case = cell_case
    return f"{name}-{kernel_id(case)}"


def test_parallel_cases_cover_each_cell_with_lengths_directions_and_dropout():
    for name in ("rnn", *GATED_CELLS):
        cases = [case for cell, case in PARALLEL_CASES if cell == name]
        for position in (1, 6):  # bidirectional, dropout
            assert {case[position] for case in cases} == {False, True}, (name, position)
        assert {case[5] is None for case in cases} == {False, True}, name  # with and without lengths
        assert all(case[7] >= 2 for case in cases), name  # several blocks: several tasks to share between threads


@pytest.mark.parametrize("cell_case", PARALLEL_CASES, ids=[parallel_id(cell_case) for cell_case in PARALLEL_CASES])
def test_a_pass_in_parts_and_on_threads_gives_bitwise_the_one_part_result(cell_case, rng):
    """Each stage's tasks shared between parts (three, run backwards; two, on two of numbarnn's threads, the first
    stage shared or not, and on two OpenMP threads): every result (the outputs, final states and every gradient)
    must be bitwise the one-part pass's, for every cell."""
    name, case = cell_case
    num_layers, bidirectional, bias, nonlinearity, dtype, lengths, dropout, blocks = case
    cell, proj_size = GATED_CELLS.get(name, (name, 0))
    problem = KernelProblem(num_layers, bidirectional, bias, dtype, lengths, dropout, blocks, rng, cell, proj_size)
    relu = nonlinearity == "relu"
    results = []
    runs = (
        one_part,
        three_parts_backwards,
        on_two_threads,
        on_two_threads_after_the_first_stage,
        on_two_openmp_threads,
    )
    for run in runs:
        forward = problem.forward(relu, run=run)
        grads = np.zeros_like(problem.params)
        backward = problem.backward(forward, relu, grads, run=run)
        results.append(
            {
                "output": forward.top_out,
                "h_n": forward.h_n,
                "c_n": forward.c_n,
                "grad_x": backward.grad_x,
                "grad_h_0": backward.grad_h,
                "grad_c_0": backward.grad_c,
                **named_views(grads, problem.entries),
            }
        )
    serial = results[0]
    for key, value in serial.items():
        assert np.isfinite(value).all(), f"{key}: the one-part pass read a buffer it never wrote (NaN-filled)"
    for parts in results[1:]:
        assert list(parts) == list(serial)
        for key, value in serial.items():
            assert_bitwise_equal(parts[key], value, key)
    assert (serial["c_n"].size > 0) == (cell == "lstm")
    assert any(key.startswith("weight_hr") for key in serial) == (proj_size > 0)


@pytest.mark.parametrize("lengths", [None, UNSORTED_LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("num_layers", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_buffers_give_the_training_result(num_layers, dtype, lengths, rng):
    """Inference keeps only two layer outputs (ping-pong) and no h_prev; the results must not change."""
    problem = KernelProblem(num_layers, True, True, dtype, lengths, False, 2, rng)
    training = problem.forward(relu=False, training=True)
    inference = problem.forward(relu=False, training=False)
    assert_array_equal(inference.top_out, training.top_out)
    assert_array_equal(inference.h_n, training.h_n)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("lengths", [None, UNSORTED_LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", ["rnn", *GATED_CELLS])
def test_fused_layers_give_bitwise_the_layer_by_layer_result(name, bidirectional, lengths, training, rng):
    """Three layers, two blocks, no dropout: each block runs through every layer (on two threads, the blocks at
    once) with every layer's weights packed first; the results must be bitwise those of running the layers one at
    a time (inference ping-pongs two layer outputs, so layer 2 writes over layer 0's rows: a block's own only)."""
    cell, proj_size = GATED_CELLS.get(name, (name, 0))
    problem = KernelProblem(3, bidirectional, True, np.float64, lengths, False, 2, rng, cell, proj_size)
    spec = problem.spec(relu=False)
    assert layers_fused(spec, problem.packing, 0) and forward_stages(spec, problem.packing, 0) == 2
    fused = problem.forward(relu=False, training=training, run=on_two_threads)
    assert fused.w_hh_panels.shape[0] == 3 * problem.directions  # every layer's weights, packed at once
    layer_by_layer = problem.forward(relu=False, training=training, fused=False)
    for key in ("top_out", "h_n", "c_n", "h_prev", "saved"):
        assert_bitwise_equal(getattr(fused, key), getattr(layer_by_layer, key), key)
    assert np.isfinite(fused.top_out).all()


def test_dropout_or_one_layer_or_one_block_keeps_the_layers_apart(rng):
    """Dropout's masks apply to a layer's whole input before its tasks: no fusing with them, nor for one layer or
    one block, where there is nothing to gain."""
    for layers, dropout, blocks in ((2, True, 2), (1, False, 2), (2, False, 1)):
        problem = KernelProblem(layers, False, True, np.float64, None, dropout, blocks, rng)
        dropped = layers - 1 if dropout else 0
        assert not layers_fused(problem.spec(False), problem.packing, dropped), (layers, dropout, blocks)
        assert forward_stages(problem.spec(False), problem.packing, dropped) == 2 * layers


def test_each_cell_and_a_projected_lstm_have_a_kernel_code_of_their_own():
    # The code's type selects the kernels' specialisation (numbarnn._cells): a plain LSTM compiles no projection.
    def code(cell, relu=False, proj_size=0):
        return cell_code(Spec(8, 4, 1, 1, np.float32, relu, cell, proj_size))

    codes = [code("rnn"), code("rnn", relu=True), code("gru"), code("lstm"), code("lstm", proj_size=2)]
    assert [type(c) for c in codes] == [np.uint8, np.uint8, np.uint16, np.uint32, np.uint64]
    assert [int(c) for c in codes] == [0, 1, 0, 0, 0]
    assert code("gru", relu=True) == code("gru") and type(code("lstm", proj_size=3)) is np.uint64


# -- packing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("lengths", [[4, 4, 4], [1, 4, 2], [3, 1, 3], [1, 1, 1]])
def test_pack_and_unpack_follow_their_definition(lengths, blocks, rng):
    lengths = np.array(lengths)
    steps, features = 4, 2
    packing = length_packing(lengths, steps, blocks)
    source = rng.standard_normal((steps, lengths.size, features))
    packed = np.full((packing_rows(packing), features), np.nan)
    pack(source, packing, packed)
    # Block by block, time-major inside a block, each block's sequences by decreasing length.
    expected_rows = []
    for b in range(blocks):
        members = packing.order[packing.block_batch[b] : packing.block_batch[b + 1]]
        assert (np.diff(lengths[members]) <= 0).all()
        expected_rows += [source[t, n] for t in range(steps) for n in members if lengths[n] > t]
    assert_array_equal(packed, np.array(expected_rows))
    assert sorted(packing.order) == list(range(lengths.size))
    # batch_first data arrives as a transposed (non-contiguous) view
    batch_first = np.ascontiguousarray(source.transpose(1, 0, 2))
    packed_from_view = np.full_like(packed, np.nan)
    pack(batch_first.transpose(1, 0, 2), packing, packed_from_view)
    assert_array_equal(packed_from_view, packed)

    target = np.full_like(source, np.nan)  # every position must be written: data or zero padding
    unpack(packed, packing, target)
    valid = np.arange(steps)[:, None] < lengths[None, :]
    assert_array_equal(target[valid], source[valid])
    assert_array_equal(target[~valid], 0)


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("lengths", [None, [4, 4, 4], [1, 4, 2], [4, 3, 1], [1, 1, 1]])
def test_packing_sizes_agree_with_its_arrays(lengths, blocks):
    """The sizes a packing carries for the Python side (computed once) are what its arrays say."""
    packing = equal_length_packing(4, 3, blocks) if lengths is None else length_packing(np.array(lengths), 4, blocks)
    assert packing.rows == packing.block_rows[-1] == packing.step_offsets[:, -1].sum()
    assert packing.blocks == packing.block_batch.size - 1 == packing.step_offsets.shape[0]
    assert packing.in_order == bool((packing.order == np.arange(packing.order.size)).all())
    assert isinstance(packing.rows, int) and isinstance(packing.in_order, bool)


# -- activations ---------------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def apply_activation(values, relu, out):
    for i in range(values.size):
        out[i] = activate(values[i], relu)


@numba.njit(cache=True)
def apply_activation_backward(grads, outputs, relu, out):
    for i in range(outputs.size):
        out[i] = activation_backward(grads[i], outputs[i], relu)


def activation(values, relu):
    out = np.empty_like(values)
    apply_activation(values, relu, out)
    return out


def float32_test_points():
    clamp = np.float32(7.90531110763549805)
    small = np.float32(4e-4)
    positive = np.concatenate(
        [
            np.linspace(0, 20, 200_001, dtype=np.float32),
            np.float32(10.0) ** np.arange(-45, 2, 0.01, dtype=np.float32),  # denormals to 100
            [np.float32(1e30), np.finfo(np.float32).max],
            np.nextafter(clamp, np.float32([-np.inf, np.inf])),
            [clamp],  # both sides of the clamp
            np.nextafter(small, np.float32([-np.inf, np.inf])),
            [small],  # both sides of the small-argument cut
        ]
    ).astype(np.float32)
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
    values = np.concatenate(
        [
            np.linspace(-25, 25, 100_001),
            10.0 ** np.arange(-320, 2, 0.5),
            np.nextafter(0.625, [0, 1]),
            np.nextafter(22.0, [0, 100]),
        ]
    )  # both branch edges
    values = np.concatenate([values, -values])
    # The float64 approximation is documented as within 2 ulp: below 0.625 Cephes' rational function (1 ulp),
    # above it 1 - 2 / (exp(2|x|) + 1) with the exp correct to 1 ulp, whose error the subtraction does not grow.
    np.testing.assert_allclose(activation(values, False), np.tanh(values), rtol=2 * np.finfo(np.float64).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    values = np.array([-2.5, -0.0, 0.0, 1e-30, 3.0, np.inf, -np.inf, np.nan], dtype)
    result = activation(values, True)
    assert result.dtype == np.dtype(dtype)
    assert_array_equal(result[:-1], [0, 0, 0, values[3], 3, np.inf, 0])
    assert np.isnan(result[-1]), "relu(NaN) must be NaN, as in torch"


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward_from_outputs(dtype):
    outputs = np.array([-1.0, -0.5, 0.0, 0.25, 1.0, 3.0, np.nan, 0.0], dtype)
    grads = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, np.nan], dtype)
    result = np.empty_like(outputs)
    apply_activation_backward(grads, outputs, False, result)
    assert_array_equal(result, (grads * (1 - outputs.astype(np.float64) ** 2)).astype(dtype))
    apply_activation_backward(grads, outputs, True, result)
    # relu selects, as torch does: 0 where the output is <= 0 even for a NaN gradient, which a NaN output passes
    assert_array_equal(result, [0, 0, 0, 2, 2, 2, 2, 0])


# -- the per-step product against packed panels -------------------------------------------------------------------

# (M, K, N): M covers every remainder of every tile height (6 rows with 16 vector registers, 12 with 32: M % 12 in
# 0..11, M below and above the tile) and spans several row blocks at K = 256; N covers full panels only, a partial
# last panel, and fewer columns than one panel, for every panel width (8 to 32 float32, 4 to 16 float64); one row
# (whole panels up to ROW_PANELS at a time) with whole groups only, with further panels after them, and with every
# count of whole panels left after the groups (0 to ROW_PANELS - 1).
PANEL_SHAPES = [
    (1, 1, 1),
    (2, 3, 5),
    (3, 7, 8),
    (4, 16, 16),
    (5, 9, 17),
    (6, 33, 24),
    (7, 64, 64),
    (8, 5, 40),
    (9, 20, 33),
    (10, 3, 7),
    (11, 12, 3),
    (13, 128, 130),
    (32, 256, 256),
    (0, 4, 4),
    (131, 256, 20),
    (1, 3, 16),
    (1, 5, 32),
    (1, 17, 64),
    (1, 40, 128),
    (1, 64, 133),
    (1, 9, 60),
    (1, 6, 96),
    (1, 11, 72),
]
TILE_HEIGHTS = sorted(set(_isa.ROWS_BY_REGISTERS.values()))
PANEL_WIDTHS = {
    dtype: sorted({_isa.VECTORS_PER_PANEL * bits // 8 // np.dtype(dtype).itemsize for bits in (128, 256, 512)})
    for dtype in DTYPES
}


def test_panel_shapes_cover_every_tile_and_panel_remainder():
    assert TILE_ROWS in TILE_HEIGHTS and all(panel_width(dtype) in PANEL_WIDTHS[dtype] for dtype in DTYPES)
    for rows in TILE_HEIGHTS:
        assert {m % rows for m, _, _ in PANEL_SHAPES} == set(range(rows))
    for dtype in DTYPES:
        for width in PANEL_WIDTHS[dtype]:
            remainders = {n % width for _, _, n in PANEL_SHAPES}
            assert 0 in remainders and len(remainders) > 3 and any(n < width for _, _, n in PANEL_SHAPES)
            one_row = [n for m, _, n in PANEL_SHAPES if m == 1]
            assert any(n == width * ROW_PANELS for n in one_row), width  # whole groups only
            assert any(n > width * ROW_PANELS and n % (width * ROW_PANELS) for n in one_row), width  # and more
            left_after_groups = {n // width % ROW_PANELS for n in one_row if n >= width}
            assert left_after_groups == set(range(ROW_PANELS)), width
        # several row blocks, the last one partial and ending in a partial tile
        block = rows_per_block(256, np.dtype(dtype).itemsize)
        assert any(k == 256 and m > block and m % block % TILE_ROWS for m, k, _ in PANEL_SHAPES), block


def assert_product_close(result, a, b):
    """Within the classical bound for a dot product of length K: |error| <= K * eps * (|a| @ |b|)."""
    exact = a.astype(np.float64) @ b.astype(np.float64)
    bound = a.shape[1] * np.finfo(a.dtype).eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    error = np.abs(result - exact)
    assert (error <= bound).all(), f"max error {error.max()}, bound there {bound.flat[error.argmax()]}"


@pytest.mark.parametrize("shape", PANEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True], ids=["b", "w.T"])
def test_panel_matmul(shape, dtype, transposed, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    # the forward packs W_hh.T (a transposed view), the backward W_hh itself
    b = rng.standard_normal((n, k)).astype(dtype).T if transposed else rng.standard_normal((k, n)).astype(dtype)
    panels = np.full(panel_shape(k, n, dtype), np.nan, dtype)  # packing must write every element, padding too
    pack_panels(b, panels)
    assert not np.isnan(panels).any()
    # every element must be overwritten, not accumulated into; a sentinel past the end must stay as it is (a stray
    # store past a row's last column lands in the next row, which the product check catches, or in the sentinel)
    memory = np.full(m * n + panel_width(dtype), np.nan, dtype)
    out = memory[: m * n].reshape(m, n)
    panel_matmul(a, panels, out)
    assert_product_close(out, a, b)
    assert np.isnan(memory[m * n :]).all()


@numba.njit(cache=True)
def row_products_of(a, w, out):
    row_products(a, w, out)


# (N, K, J): the step's products, J with and without a remainder of the four rows summed together, K = 1 and longer
ROW_PRODUCT_SHAPES = [(1, 32, 64), (1, 64, 256), (3, 1, 5), (2, 17, 6), (4, 40, 7), (1, 3, 3)]


def test_row_product_shapes_cover_every_remainder_of_four():
    assert {j % 4 for _, _, j in ROW_PRODUCT_SHAPES} == {0, 1, 2, 3}
    assert any(n > 1 for n, _, _ in ROW_PRODUCT_SHAPES) and any(j < 4 for _, _, j in ROW_PRODUCT_SHAPES)


@pytest.mark.parametrize("shape", ROW_PRODUCT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_products(shape, dtype, rng):
    """The step's unpacked product ``a @ w.T``, every output element written (NaN-filled out) and none past it."""
    n, k, j = shape
    a = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((j, k)).astype(dtype)
    memory = np.full(n * j + 4, np.nan, dtype)
    out = memory[: n * j].reshape(n, j)
    row_products_of(a, w, out)
    assert_product_close(out, a, w.T)
    assert np.isnan(memory[n * j :]).all()


@pytest.mark.parametrize("shape", PANEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_panel_matmul_transposed_adds_bitwise_the_product_of_the_copied_transpose(shape, dtype, rng):
    """``out += a.T @ B`` read from ``a`` (K, M) as it is (the backward's ``dz.T @ inputs``): each element the same
    K-long sum in the same order as :func:`panel_matmul` of the transposed copy, added once to what ``out`` held, on
    every tile height and row block; nothing past ``out`` is touched."""
    m, k, n = shape
    a = rng.standard_normal((k, m)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    panels = np.empty(panel_shape(k, n, dtype), dtype)
    pack_panels(b, panels)
    held = rng.standard_normal((m, n)).astype(dtype)
    memory = np.full(m * n + panel_width(dtype), np.nan, dtype)
    out = memory[: m * n].reshape(m, n)
    out[:] = held
    panel_matmul_transposed(a, panels, out)  # adds into out
    product = np.empty((m, n), dtype)
    panel_matmul(np.ascontiguousarray(a.T), panels, product)
    assert_bitwise_equal(out, held + product)
    assert_product_close(product, a.T, b)
    assert np.isnan(memory[m * n :]).all()


def test_panel_matmul_transposed_checks_its_operands(rng):
    dtype = np.float32
    a = rng.standard_normal((5, 7)).astype(dtype)  # A = a.T is 7 x 5
    panels = np.zeros(panel_shape(5, 20, dtype), dtype)
    with pytest.raises(ValueError, match=r"a is A.T, \(K, M\), with K = 6 but the panels hold 5 rows"):
        panel_matmul_transposed(np.zeros((6, 7), dtype), panels, np.empty((7, 20), dtype))
    with pytest.raises(ValueError, match="out must have A's 7 rows, got 5"):
        panel_matmul_transposed(a, panels, np.empty((5, 20), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_rows", [1, 2, 36, 37, 50])
def test_add_transposed_product_adds_chunk_by_chunk_into_the_flat_gradient(dtype, chunk_rows, rng):
    """A weight gradient ``dz.T @ inputs`` added into its span of the flat gradients with ``inputs`` packed a chunk of
    rows at a time (the backward's chunks fill the L2: thousands of rows, which no small problem reaches): the chunk
    holding one row, several with a remainder, exactly all K = 37, more than K. Bitwise the sum of each chunk's
    :func:`panel_matmul_transposed`, in order; within a K-long dot product's bound of ``a.T @ b``; nothing outside the
    span touched."""
    k, m, offset = 37, 5, 3
    for n in (1, panel_width(dtype) - 1, 2 * panel_width(dtype) + 3):
        a = rng.standard_normal((k, m)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        padded = -(-n // panel_width(dtype)) * panel_width(dtype)
        chunk = empty_panels((chunk_rows * padded,), dtype)
        target = np.full(offset + m * n + 4, np.nan, dtype)
        target[offset : offset + m * n] = 0
        add_transposed_product(a, b, target, offset, chunk)
        expected = np.zeros((m, n), dtype)
        for r0 in range(0, k, chunk_rows):
            panels = np.empty(panel_shape(min(k, r0 + chunk_rows) - r0, n, dtype), dtype)
            pack_panels(b[r0 : r0 + chunk_rows], panels)
            panel_matmul_transposed(np.ascontiguousarray(a[r0 : r0 + chunk_rows]), panels, expected)
        assert_bitwise_equal(target[offset : offset + m * n].reshape(m, n), expected)
        assert_product_close(expected, a.T, b)
        assert np.isnan(target[:offset]).all() and np.isnan(target[offset + m * n :]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kn", [(8, 16), (17, 40), (64, 64), (5, 33), (24, 136)], ids=lambda kn: f"{kn[0]}x{kn[1]}")
@pytest.mark.parametrize("layout", ["w.T", "strided w.T", "b"])
def test_pack_panels_copies_every_element_exactly(dtype, kn, layout, rng):
    """The panels hold the source's columns W at a time, zero past its last column, exactly (a copy): for ``w.T`` of
    a C-contiguous ``w`` (Fortran layout: 8 x 8 blocks, transposed in registers in float32), for a transposed view
    of another layout, and for a C-contiguous source (both row by row); K and N with and without remainders of 8 and
    of the panel width."""
    k, n = kn
    w = rng.standard_normal((n, 2 * k if layout == "strided w.T" else k)).astype(dtype)
    source = {"w.T": w.T, "strided w.T": w[:, ::2].T, "b": np.ascontiguousarray(w.T)}[layout]
    assert source.shape == (k, n)
    panels = np.full(panel_shape(k, n, dtype), np.nan, dtype)
    pack_panels(source, panels)
    width = panel_width(dtype)
    expected = np.zeros((k, panels.shape[0] * width), dtype)
    expected[:, :n] = source
    assert_array_equal(panels, expected.reshape(k, -1, width).transpose(1, 0, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [37, 100, 137])
def test_panel_matmul_rows_do_not_depend_on_tiles_or_blocks(dtype, n, rng):
    """Every row is the same K-long sum whatever tile and row block it falls in: the product of many rows equals,
    bitwise, that of each row alone (one row multiplies up to ROW_PANELS whole panels at once: with panels of 8, 16
    and 32 columns, n = 137 makes one or more whole groups, and 37, 100 and 137 leave 1, 2 or 3 panels after them)."""
    m, k = 3 * rows_per_block(200, np.dtype(dtype).itemsize) + 5, 200
    a = rng.standard_normal((m, k)).astype(dtype)
    panels = np.empty(panel_shape(k, n, dtype), dtype)
    pack_panels(rng.standard_normal((k, n)).astype(dtype), panels)
    whole = np.empty((m, n), dtype)
    panel_matmul(a, panels, whole)
    row = np.empty((1, n), dtype)
    for i in range(m):
        panel_matmul(a[i : i + 1], panels, row)
        assert_array_equal(whole[i], row[0])


@numba.njit(cache=True)
def tile_product(rows, a, panels, out, stream):
    """One tile of ``rows`` rows by the first panel (a whole one), its stores streamed or not."""
    _panels._tile(rows, a, 0, a.shape[1], panels, 0, out, 0, out.shape[1], a.shape[1], out.shape[1], 0, 0, stream, None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_tiles_store_bitwise_what_cached_stores_do(dtype, rng):
    """The non-temporal stores of a large product's tiles (the whole-panel branch of every tile height) write the
    very values the ordinary stores write, into every element of the tile and nowhere else."""
    width, k = panel_width(dtype), 37
    panels = empty_panels(panel_shape(k, width, dtype), dtype)
    pack_panels(rng.standard_normal((k, width)).astype(dtype), panels)
    for rows in range(1, TILE_ROWS + 1):
        a = rng.standard_normal((rows, k)).astype(dtype)
        cached, streamed = empty_panels((rows + 1, width), dtype), empty_panels((rows + 1, width), dtype)
        cached[:] = streamed[:] = np.nan  # the row past the tile must stay untouched
        tile_product(rows, a, panels, cached[:rows], False)
        tile_product(rows, a, panels, streamed[:rows], True)
        assert_product_close(cached[:rows], a, panels[0])
        assert_bitwise_equal(streamed, cached)


def test_a_product_streams_only_an_aligned_output_larger_than_the_last_level_cache(monkeypatch):
    """Non-temporal stores need each row on a vector boundary, and pay only where the output would not stay in the
    caches for its reader anyway; a host that does not report its last-level cache never streams."""
    vector = _isa.tile().vector_bits // 8
    streams = _panels._streams.py_func
    monkeypatch.setattr(_panels, "_STREAM_OUTPUT_BYTES", 1 << 20)
    rows_bytes = vector * 8  # a row width that keeps every row on a vector boundary
    large = empty_panels((2 * (1 << 20) // rows_bytes, rows_bytes // 4), np.float32)
    assert streams(large)
    assert not streams(large[: (1 << 20) // rows_bytes])  # exactly the cache's size: not larger
    assert not streams(empty_panels((large.size + 4,), np.float32)[1 : large.size + 1].reshape(large.shape))
    odd = empty_panels((large.shape[0], large.shape[1] + 1), np.float32)  # rows off the boundary after the first
    assert not streams(odd)
    monkeypatch.setattr(_panels, "_STREAM_OUTPUT_BYTES", 0)
    assert not streams(large)


@pytest.mark.skipif(
    not _isa.caches().last_level or _isa.caches().last_level > 64 * 1024**2,
    reason="needs a product larger than a last-level cache the host reports, of at most 64 MiB",
)
def test_a_product_larger_than_the_last_level_cache_equals_the_cached_products(rng):
    """The streamed path end to end: a product whose aligned output outgrows the last-level cache equals, bitwise,
    the same rows computed block by block into a small output."""
    dtype = np.float32
    k, n = 64, 1024
    m = _isa.caches().last_level // (n * 4) + 2 * TILE_ROWS + 1  # a partial last tile too
    a = rng.standard_normal((m, k)).astype(dtype)
    panels = empty_panels(panel_shape(k, n, dtype), dtype)
    pack_panels(rng.standard_normal((k, n)).astype(dtype), panels)
    streamed = empty_panels((m, n), dtype)
    assert _panels._streams.py_func(streamed)
    panel_matmul(a, panels, streamed)
    part = np.empty((4096, n), dtype)
    for i in range(0, m, len(part)):
        rows = min(len(part), m - i)
        panel_matmul(a[i : i + rows], panels, part[:rows])
        assert_bitwise_equal(streamed[i : i + rows], part[:rows])


def test_the_pass_kernels_are_compiled_without_numbas_reference_counting():
    """The recurrence kernels only write into arrays their caller keeps alive: compiled without numba's runtime
    (``_jit.JIT_OPTIONS``), they count no references (a sixth of a tiny forward's time) and unbox their arrays
    faster. The option is numba's private ``_nrt`` (an unknown option is an error at import): numba must still honour
    it (a function compiled with the options calls nothing of the runtime, not even to unbox its arrays), and the
    kernels that allocate keep the runtime (``jit(nrt=True)``)."""

    def views(a, out):
        for i in range(a.shape[0]):
            row, target = a[i], out[i]
            for j in range(row.size):
                target[j] = row[j]

    options = {key: value for key, value in JIT_OPTIONS.items() if key != "cache"}
    counted = {}
    for nrt in (True, False):
        kernel = numba.njit(**dict(options, _nrt=nrt))(views)
        kernel(np.ones((2, 3)), np.empty((2, 3)))
        counted[nrt] = "NRT_" in kernel.inspect_llvm(kernel.signatures[0])  # unboxing into a MemInfo, decref
    assert counted == {True: True, False: False}
    for kernel in (recurrent_forward, recurrent_forward_parts, recurrent_backward, recurrent_backward_parts):
        assert kernel.targetoptions["_nrt"] is False, kernel
    for kernel in (stacked_step, panel_matmul, panel_matmul_transposed):
        assert kernel.targetoptions["_nrt"] is True, kernel


def test_the_cache_stamp_covers_every_module_of_the_package(tmp_path):
    """numba stamps a cached kernel with its own file only; numbarnn's kernels compile code from several modules, so
    their stamp covers all of them (numbarnn._jit): a change to any module's contents changes it, and the same
    contents give the same stamp whatever the files' times."""
    for name, text in (("_a.py", "x = 1\n"), ("b.py", "y = 2\n"), ("notes.txt", "not a module\n")):
        (tmp_path / name).write_text(text)
    stamp = kernel_sources_stamp(tmp_path)
    (tmp_path / "notes.txt").write_text("still not a module\n")
    assert kernel_sources_stamp(tmp_path) == stamp
    (tmp_path / "b.py").write_text("y = 3\n")  # the same size, other contents
    assert kernel_sources_stamp(tmp_path) != stamp
    (tmp_path / "b.py").write_text("y = 2\n")
    os.utime(tmp_path / "b.py", (1, 1))
    assert kernel_sources_stamp(tmp_path) == stamp
    (tmp_path / "c.py").write_text("")
    assert kernel_sources_stamp(tmp_path) != stamp


def test_numbarnn_kernels_and_only_they_are_cached_with_the_package_stamp():
    def twice(x):
        return 2 * x

    for kernel in (recurrent_forward, recurrent_backward, panel_matmul, stacked_step):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, STAMPED_LOCATORS), (kernel, type(locator))
        own_file_stamp, package_stamp = locator.get_source_stamp()
        assert package_stamp == kernel_sources_stamp() and own_file_stamp
    outside = numba.njit(cache=True)(twice)  # a function of this test module: numba's own locator and stamp
    assert not isinstance(outside._cache._impl.locator, STAMPED_LOCATORS)


@numba.njit  # with numba's runtime, to return the views as arrays
def kernel_views(forward_fields, backward_fields):
    return forward_views(forward_fields), backward_views(backward_fields)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_kernels_see_the_pooled_buffers_as_the_caller_made_them(cell, dtype):
    """The buffers a pass keeps for itself reach the kernels as one pool and a table (numbarnn._workspace): the
    views a kernel takes of them are the caller's arrays, every field's memory and shape, and the pooled fields do not
    overlap."""
    spec = Spec(INPUT_SIZE, HIDDEN_SIZE, 2, 2, np.dtype(dtype), False, cell, 2 if cell == "lstm" else 0)
    packing = length_packing(UNSORTED_LENGTHS, STEPS, 2)
    for training, dropped in ((True, 1), (False, 0)):
        buffers = forward_buffers(spec, packing, training, dropped), backward_buffers(spec, packing, 100, True)
        arguments = forward_arguments(buffers[0]), backward_arguments(buffers[1])
        for made, seen, pooled in zip(
            buffers, kernel_views(*arguments), (FORWARD_POOLED, BACKWARD_POOLED), strict=True
        ):
            assert made._fields == seen._fields and made._fields[-2:] == ("pool", "pool_layout")
            for name in made._fields[:-2]:
                ours, theirs = getattr(made, name), getattr(seen, name)
                assert theirs.shape == ours.shape and theirs.dtype == ours.dtype, name
                assert theirs.ctypes.data == ours.ctypes.data or ours.size == 0, name
            spans = sorted(
                (a.ctypes.data, a.ctypes.data + a.nbytes) for a in (getattr(made, n) for n in pooled) if a.size
            )
            assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), "pooled fields overlap"
            assert spans[0][0] >= made.pool.ctypes.data and spans[-1][1] <= made.pool.ctypes.data + made.pool.nbytes
    grad_output = np.empty_like(buffers[1].grad_output)
    assert backward_arguments(buffers[1], grad_output)[0] is grad_output


@pytest.mark.parametrize("dtype", DTYPES)
def test_panel_buffers_start_on_a_cache_line(dtype):
    """Panels start on a cache line, so that no vector load of a panel spans two lines (NumPy aligns to 16 bytes):
    those empty_panels makes, and every panel buffer of the forward's and the backward's workspace."""
    for shape in [(1, 1, 8), (3, 5, 16), (2, 7)]:
        panels = empty_panels(shape, dtype)
        assert panels.shape == shape and panels.dtype == dtype and panels.flags.c_contiguous
        assert panels.ctypes.data % CACHE_LINE_BYTES == 0, shape
    spec = Spec(INPUT_SIZE, HIDDEN_SIZE, 2, 2, np.dtype(dtype), False, "lstm", 2)
    packing = equal_length_packing(STEPS, BATCH, 2)
    workspaces = forward_buffers(spec, packing, True, 1), backward_buffers(spec, packing, 100, True)
    for buffers, count in zip(workspaces, (3, 4), strict=True):
        panel_buffers = [name for name in buffers._fields if name.endswith("_panels")]
        assert len(panel_buffers) == count
        for name in panel_buffers:
            assert getattr(buffers, name).ctypes.data % CACHE_LINE_BYTES == 0, name


def test_panel_matmul_checks_its_operands(rng):
    """A mismatch is a clear error, never an out-of-bounds read or write."""
    dtype = np.float32
    m, k, n = 7, 5, 20
    a = rng.standard_normal((m, k)).astype(dtype)
    panels = np.zeros(panel_shape(k, n, dtype), dtype)
    out = np.empty((m, n), dtype)
    width = panel_width(dtype)
    with pytest.raises(ValueError, match=r"a is \(M, K\) with K = 6 but the panels hold 5 rows"):
        panel_matmul(np.zeros((m, k + 1), dtype), panels, out)
    with pytest.raises(ValueError, match="out must have A's 7 rows, got 8"):
        panel_matmul(a, panels, np.empty((m + 1, n), dtype))
    given, needed = len(panels), -(-(n + width) // width)  # one more panel than given, on any panel width
    with pytest.raises(ValueError, match=f"out has {n + width} columns, which need {needed} panels, got {given}"):
        panel_matmul(a, panels, np.empty((m, n + width), dtype))
    with pytest.raises(ValueError, match=f"panels must be {width} columns wide .* got {2 * width}"):
        panel_matmul(a, np.zeros((1, k, 2 * width), dtype), out)
    # Strided operands are refused while numba types the call, before anything compiles: no specialisation of
    # panel_matmul is added for their layouts.
    compiled = list(panel_matmul.signatures)
    strided_a = np.zeros((m, 2 * k), dtype)[:, ::2]
    every_other_row = np.zeros((2 * m, k), dtype)[::2]
    strided_panels = np.zeros((2, k, 2 * width), dtype)[:, :, ::2]
    strided_out = np.empty((m, n + 3), dtype)[:, :n]
    for name, given, operands in [
        ("a", strided_a, (strided_a, panels, out)),
        ("a", every_other_row, (every_other_row, panels, out)),
        ("panels", strided_panels, (a, strided_panels, out)),
        ("out", strided_out, (a, panels, strided_out)),
    ]:
        expected = (
            f"panel_matmul: {name} must be a C-contiguous array (copy a strided view first: np.ascontiguousarray), "
            f"got {numba.typeof(given)}"
        )
        with pytest.raises(ValueError, match=re.escape(expected)):
            panel_matmul(*operands)
    assert list(panel_matmul.signatures) == compiled
    panel_matmul(a, panels, out)  # the same operands, well formed
    assert_array_equal(out, 0)


def test_isa_target_is_numbas():
    """The tile is chosen for exactly the target numba's code generator uses (and keys its cache on)."""
    from numba.core.registry import cpu_target

    target = _isa.target()
    assert (target.triple, target.cpu_name, target.features) == cpu_target.target_context.codegen().magic_tuple()
    tile = _isa.tile()
    assert tile.rows == TILE_ROWS == _isa.ROWS_BY_REGISTERS[tile.registers]
    assert panel_width(np.float32) == tile.vectors * tile.vector_bits // 32


def test_cache_sizes_are_read_from_linux_sysfs(tmp_path):
    """Each level's data or unified cache, never an instruction cache; a level the host does not list is None."""
    for index, (level, kind, size) in enumerate(
        [(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"), (3, "Unified", "32768K")]
    ):
        directory = tmp_path / f"index{index}"
        directory.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (directory / name).write_text(f"{value}\n")
    assert _isa._linux_cache(1, tmp_path) == 32 * 1024
    assert _isa._linux_cache(2, tmp_path) == 1024**2
    assert _isa._linux_cache(3, tmp_path) == 32 * 1024**2
    assert _isa._linux_cache(4, tmp_path) is None
    assert _isa._linux_cache(2, tmp_path / "missing") is None


# Each target's kernels built in a fresh process: (environment, expected tile, instructions its assembly must hold,
# on x86 the non-temporal stores of a large product's tiles among them; run the product too). Code for AVX-512 cannot
# run on every host, so it is only compiled; generic x86-64 code runs on any x86-64 and is run (the host's own tile
# runs in the tests above; haswell's is that tile on AVX2 hosts). The AArch64 build is LLVM IR compiled through
# llvmlite for an AArch64 triple.
TARGET_BUILDS = {
    "generic": ({"NUMBA_CPU_NAME": "generic"}, ("sse2", 128, 6), ("mulps", "addps", "movntps"), True),
    "haswell": (
        {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""},
        ("avx2", 256, 6),
        ("ymm", "vfmadd", "movntps"),
        False,
    ),
    "skylake-avx512": (
        {"NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": ""},
        ("avx512", 512, 12),
        ("zmm", "vfmadd", "movntps"),
        False,
    ),
    "znver4": (
        {"NUMBA_CPU_NAME": "znver4", "NUMBA_CPU_FEATURES": ""},
        ("avx512", 512, 12),
        ("zmm", "vfmadd", "movntps"),
        False,
    ),
    "aarch64": ({"NUMBA_OPT": "0"}, ("neon", 128, 12), ("fmla",), False),
}


def build_every_target(directory, environ):
    """Build the panel kernels for every target of TARGET_BUILDS side by side, each in a fresh process with a cache
    of its own under ``directory``, in ``environ`` otherwise: ``{name: (exit code, stdout, stderr)}``. Started early
    (conftest.py): it runs in the background while the session runs other tests."""
    script = pathlib.Path(__file__).with_name("panel_target.py")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    processes = {}
    for name, (environment, _, _, run) in TARGET_BUILDS.items():
        env = {key: value for key, value in environ.items() if not key.startswith("NUMBA_CPU")}
        # a cache of its own: code for another target must never reach the project's cache
        env.update(
            environment,
            NUMBA_CACHE_DIR=str(directory / name),
            PYTHONPATH=os.pathsep.join(filter(None, [root, environ.get("PYTHONPATH")])),
        )
        command = [sys.executable, "-W", "ignore", str(script)]
        command += ["--aarch64"] if name == "aarch64" else ["--run", json.dumps(PANEL_SHAPES)] if run else []
        processes[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = {name: process.communicate(timeout=600) for name, process in processes.items()}
    return {name: (processes[name].returncode, stdout, stderr) for name, (stdout, stderr) in outcomes.items()}


TILE_NAME = re.compile(r"_(\d+)x(\d+)x\d+(?:_at)?(?:_(\d+)_panels)?$")  # _at: the transposed product's


def assert_tiles_store_with_masked_moves(instructions):
    """Every micro-kernel of a target with masked vector moves stores a partial panel with them: per accumulator,
    two multiply-adds (the prefetching loop and the other one), a zeroing, a store and a masked store; per row a
    broadcast in each loop and the row's pointers; ~100 more for the loops and the prefetches. Stored lane by lane
    (a compare, a branch and a scalar store per output element), the 6-row AVX2 tile had 675 instructions and the
    12-row AVX-512 one 3,165, which every kernel linking them optimised again on a cold compile (the first
    inference on Zen 4 took 19.5 s instead of 7.7)."""
    assert instructions
    for function, count in instructions.items():
        rows, vectors, panels = TILE_NAME.search(function).groups()
        accumulators = int(rows) * int(vectors) * int(panels or 1)
        assert count <= 8 * accumulators + 8 * int(rows) + 100, (function, count)


@pytest.mark.slow  # five processes of ~10 s of compiling each, side by side
@pytest.mark.skipif(_isa.target().triple.split("-")[0] != "x86_64", reason="builds x86-64 code in subprocesses")
@pytest.mark.early(work=build_every_target)
def test_panel_kernels_for_every_target(early_work):
    """Each target gets its tile, and its assembly has vector multiply-adds and no call to libm's fma/fmaf (which
    llvm.fma on a vector becomes where there is no FMA); generic x86-64 code also computes the right product.
    The builds run side by side: each is a fresh process (several seconds of compiling)."""
    reports = {}
    for name, (returncode, stdout, stderr) in early_work.result().items():
        assert returncode == 0, f"{name}: {stderr[-3000:]}"
        reports[name] = json.loads(stdout)
    for name, (_, (isa, bits, rows), instructions, run) in TARGET_BUILDS.items():
        report = reports[name]
        tile = report["tile"]
        assert (tile["isa"], tile["vector_bits"], tile["rows"]) == (isa, bits, rows), name
        assert report["libm_fma_calls"] == [], name
        # every micro-kernel (1 to `rows` rows, and one row by 1 to ROW_PANELS panels; both dtypes; both products)
        # keeps its loops in registers: unrolled on znver4, the AVX-512 loops spilled zmm registers at every step
        # (77-95 against 100-116 GFLOP/s without)
        loops = report["tile_loop_stack_accesses"]
        assert len(loops) == 2 * 2 * (rows + ROW_PANELS), (name, loops)  # dtypes; panel_matmul(_transposed)
        assert all(f"_{isa}_" in function for function in loops), (name, loops)
        assert not any(loops.values()), (name, loops)
        # one row by fewer than ROW_PANELS panels of 512-bit vectors: 256-bit vectors, twice as many chains
        for count in range(1, ROW_PANELS + 1):
            narrow = bits == 512 and count < ROW_PANELS
            vectors, lanes = (4, 256 // 32) if narrow else (2, bits // 32)
            assert any(f"_{isa}_f32_1x{vectors}x{lanes}_{count}_panels" in function for function in loops), name
        assert all(report["instructions"][instruction] for instruction in instructions), (name, report)
        if name in ("haswell", "skylake-avx512", "znver4"):  # masked moves: no per-lane code when storing
            assert_tiles_store_with_masked_moves(report["tile_instructions"])
        if name != "aarch64":
            assert report["matches_numba"], name
        if run:
            assert len(report["worst_error_over_bound"]) == 2 * 2 * len(PANEL_SHAPES)  # dtypes, b and w.T
            assert max(report["worst_error_over_bound"].values()) <= 1, (name, report["worst_error_over_bound"])
    assert not reports["generic"]["instructions"]["vfmadd"]  # no FMA there: a multiply and an add
