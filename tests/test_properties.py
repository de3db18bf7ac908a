"""Property-based tests (hypothesis) against torch: random shapes, options and values -- NaN, +-inf, huge and
subnormal values included -- through ``RNN`` forward and backward, ``RNN.step`` and ``RNNCell``; inputs are never
modified; bad arguments raise only the documented exception types, with messages that name what was expected, what
was given, or the fix.

``derandomize=True``: the examples are a fixed function of the test, so CI sees the same ones on every run.
"""

import numpy as np
import pytest
import torch
from helpers import ATOL, DTYPES, RTOL, make_rnn_pair, torch_dtype, torch_run
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import numbarnn

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)

ARRAYS = ("x", "h_0", "grad_output", "grad_h_n")
SPECIAL_NAMES = ("nan", "+inf", "-inf", "huge", "-huge", "subnormal", "-subnormal")
HUGE = 1e30
# N = 0...4, or None for unbatched input: each about as likely (st.one_of would make half the examples unbatched).
BATCHES = st.sampled_from([None, 0, 1, 2, 3, 4])


def special_value(name, dtype):
    subnormal = np.finfo(dtype).tiny / 8  # below the smallest normal number: a subnormal of this dtype
    return {
        "nan": np.nan,
        "+inf": np.inf,
        "-inf": -np.inf,
        "huge": HUGE,
        "-huge": -HUGE,
        "subnormal": subnormal,
        "-subnormal": -subnormal,
    }[name]


# Special values written at random positions: (which array, a position taken modulo its size, which value).
# NaN twice as likely as each other value: it is the one with the most ways to go wrong (masks, selects, NaN * 0).
specials_strategy = st.lists(
    st.tuples(st.sampled_from(ARRAYS), st.integers(0, 10_000), st.sampled_from(("nan", *SPECIAL_NAMES))), max_size=4
)


def inject(arrays, specials, dtype):
    for target, position, name in specials:
        array = arrays.get(target)
        if array is not None and array.size:
            array.reshape(-1)[position % array.size] = special_value(name, dtype)


def magnitude(*arrays):
    """The largest finite magnitude among ``arrays``, at least 1: the scale of the terms every sum adds up."""
    values = [np.abs(a[np.isfinite(a)]).max(initial=0.0) for a in arrays if a is not None]
    return max([1.0, *(float(v) for v in values)])


def assert_matches_torch(actual, expected, dtype, scale, name):
    """Non-finite entries exactly where torch has them (NaN where NaN, inf of the same sign where inf), the finite
    ones within helpers' tolerances with ``atol`` scaled by ``scale``.

    helpers.ATOL bounds the rounding error of sums of O(1) terms (inputs standard normal, weights < 1). With a huge
    value among the inputs every term, and so the error, grows by its magnitude (the relative error of a sum is
    bounded relative to the sum of the terms' magnitudes, not to the result, which may cancel): ``scale`` is the
    largest finite magnitude fed into the sums (at least 1), so the tolerance is unchanged for ordinary values.
    """
    dtype = np.dtype(dtype)
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    for kind in (np.isnan, np.isposinf, np.isneginf):
        differ = kind(actual) != kind(expected)
        assert not differ.any(), (
            f"{name}: {kind.__name__} differs from torch at {np.argwhere(differ)[:4].tolist()}: "
            f"numbarnn {actual[differ][:4]}, torch {expected[differ][:4]}"
        )
    finite = np.isfinite(expected)
    # In float64: the scaled atol of a float32 comparison may exceed float32's range (huge input times huge gradient).
    assert_allclose(
        actual[finite].astype(np.float64),
        expected[finite].astype(np.float64),
        rtol=RTOL[dtype],
        atol=ATOL[dtype] * scale,
        err_msg=name,
    )


@st.composite
def rnn_cases(draw):
    """Module options, shapes, arrays (normal values, some positions replaced by special ones) and lengths."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    options = dict(
        num_layers=draw(st.integers(1, 3)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        input_size=draw(st.integers(1, 5)),
        hidden_size=draw(st.integers(1, 5)),
        dtype=dtype,
    )
    steps = draw(st.integers(1, 6))
    batch = draw(BATCHES)  # None: unbatched (L, H_in) input
    directions = 2 if options["bidirectional"] else 1
    rows, hidden = directions * options["num_layers"], options["hidden_size"]
    state_shape = (rows, hidden) if batch is None else (rows, batch, hidden)
    if batch is None:
        input_shape, output_shape = (steps, options["input_size"]), (steps, directions * hidden)
    elif options["batch_first"]:
        input_shape, output_shape = (batch, steps, options["input_size"]), (batch, steps, directions * hidden)
    else:
        input_shape, output_shape = (steps, batch, options["input_size"]), (steps, batch, directions * hidden)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = {
        "x": rng.standard_normal(input_shape).astype(dtype),
        "h_0": rng.standard_normal(state_shape).astype(dtype) if draw(st.booleans()) else None,
        "grad_output": rng.standard_normal(output_shape).astype(dtype) if draw(st.booleans()) else None,
        "grad_h_n": rng.standard_normal(state_shape).astype(dtype),
    }
    if draw(st.booleans()):  # grad_output only, else both, or grad_h_n only
        arrays["grad_h_n"] = None if arrays["grad_output"] is not None else arrays["grad_h_n"]
    inject(arrays, draw(specials_strategy), dtype)
    lengths = None
    if batch and draw(st.booleans()):
        lengths = np.array(draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)), np.int64)
    return options, arrays, lengths


@SETTINGS
@given(rnn_cases())
def test_rnn_forward_and_backward_match_torch(case):
    options, arrays, lengths = case
    dtype = options["dtype"]
    rnn, reference = make_rnn_pair(**options)
    originals = {name: None if a is None else a.copy() for name, a in {**arrays, "lengths": lengths}.items()}
    x, h_0, grad_output, grad_h_n = (arrays[name] for name in ARRAYS)

    output, h_n = rnn(x, h_0, lengths)
    grad_input, grad_h_0 = rnn.backward(grad_output, grad_h_n)
    expected = torch_run(reference, x, h_0, grad_output, grad_h_n, lengths)

    forward_scale = magnitude(x, h_0)
    gradient_scale = magnitude(grad_output, grad_h_n)
    assert_matches_torch(output, expected[0], dtype, forward_scale, "output")
    assert_matches_torch(h_n, expected[1], dtype, forward_scale, "h_n")
    # The input and state gradients are sums of gradient terms times weights (and activation slopes in [0, 1]); the
    # parameter gradients multiply them by inputs and states, so their terms grow by both scales.
    assert_matches_torch(grad_input, expected[2], dtype, gradient_scale, "grad_input")
    assert_matches_torch(grad_h_0, expected[3], dtype, gradient_scale, "grad_h_0")
    for name, grad in expected[4].items():
        assert_matches_torch(rnn.grads[name], grad, dtype, forward_scale * gradient_scale, name)
    for name, original in originals.items():  # nothing the caller passed was written to
        current = lengths if name == "lengths" else arrays[name]
        if original is not None:
            assert original.tobytes() == current.tobytes(), f"{name} was modified"


@st.composite
def step_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    options = dict(
        num_layers=draw(st.integers(1, 3)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        input_size=draw(st.integers(1, 5)),
        hidden_size=draw(st.integers(1, 5)),
        dtype=dtype,
    )
    batch = draw(BATCHES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = () if batch is None else (batch,)
    arrays = {
        "x": rng.standard_normal((*rows, options["input_size"])).astype(dtype),
        "h_0": (
            rng.standard_normal((options["num_layers"], *rows, options["hidden_size"])).astype(dtype)
            if draw(st.booleans())
            else None
        ),
    }
    inject(arrays, draw(specials_strategy), dtype)
    return options, arrays


@SETTINGS
@given(step_cases())
def test_step_matches_torch_on_one_step(case):
    """``rnn.step(x, h)`` is torch's ``rnn(x[None], h)`` (eval mode; the step has no backward)."""
    options, arrays = case
    dtype = options["dtype"]
    rnn, reference = make_rnn_pair(**options)
    rnn.eval()
    x, h = arrays["x"], arrays["h_0"]
    originals = [None if a is None else a.copy() for a in (x, h)]
    output, h_n = rnn.step(x, h)
    expected_output, expected_h_n, *_ = torch_run(reference, x[None], h)
    scale = magnitude(x, h)
    assert_matches_torch(output, expected_output[0], dtype, scale, "output")
    assert_matches_torch(h_n, expected_h_n, dtype, scale, "h_n")
    for original, current in zip(originals, (x, h), strict=True):
        assert original is None or original.tobytes() == current.tobytes()


@SETTINGS
@given(
    st.sampled_from(DTYPES),
    st.sampled_from(["tanh", "relu"]),
    st.booleans(),
    st.integers(1, 5),
    st.integers(1, 5),
    BATCHES,
    st.booleans(),
    st.integers(0, 2**32 - 1),
    specials_strategy,
)
def test_rnn_cell_forward_and_backward_match_torch(
    dtype, nonlinearity, bias, input_size, hidden_size, batch, hx_given, seed, specials
):
    dtype = np.dtype(dtype)
    torch.manual_seed(seed % 1000)
    reference = torch.nn.RNNCell(
        input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=torch_dtype(dtype)
    )
    cell = numbarnn.RNNCell(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=dtype)
    cell.load_state_dict(reference.state_dict())
    rng = np.random.default_rng(seed)
    rows = () if batch is None else (batch,)
    arrays = {
        "x": rng.standard_normal((*rows, input_size)).astype(dtype),
        "h_0": rng.standard_normal((*rows, hidden_size)).astype(dtype) if hx_given else None,
        "grad_output": rng.standard_normal((*rows, hidden_size)).astype(dtype),
    }
    inject(arrays, specials, dtype)
    x, hx, grad = arrays["x"], arrays["h_0"], arrays["grad_output"]
    originals = [None if a is None else a.copy() for a in (x, hx, grad)]

    h = cell(x, hx)
    grad_x, grad_hx = cell.backward(grad)

    x_t = torch.tensor(x, requires_grad=True)
    hx_t = torch.tensor(np.zeros(h.shape, dtype) if hx is None else hx, requires_grad=True)
    h_t = reference(x_t, hx_t)
    (h_t * torch.tensor(grad)).sum().backward()
    forward_scale, gradient_scale = magnitude(x, hx), magnitude(grad)
    assert_matches_torch(h, h_t.detach().numpy(), dtype, forward_scale, "h'")
    assert_matches_torch(grad_x, x_t.grad.numpy(), dtype, gradient_scale, "grad_input")
    assert_matches_torch(grad_hx, hx_t.grad.numpy(), dtype, gradient_scale, "grad_hx")
    for name, parameter in reference.named_parameters():
        assert_matches_torch(cell.grads[name], parameter.grad.numpy(), dtype, forward_scale * gradient_scale, name)
    for original, current in zip(originals, (x, hx, grad), strict=True):
        assert original is None or original.tobytes() == current.tobytes()


def test_relu_gradient_is_zero_where_the_output_was_clamped_even_for_a_nan_gradient():
    """Found by test_rnn_forward_and_backward_match_torch: torch's relu backward *selects* (``threshold_backward``:
    0 where the output is <= 0, else the gradient), so a NaN gradient reaching a clamped unit stops there; a
    multiplication by the slope 0 would give NaN * 0 = NaN and spread it to every gradient."""
    rnn = numbarnn.RNN(1, 1, nonlinearity="relu", bias=False)
    rnn.weight_ih_l0, rnn.weight_hh_l0 = [[-1.0]], [[0.5]]
    reference = torch.nn.RNN(1, 1, nonlinearity="relu", bias=False)
    reference.load_state_dict({name: torch.tensor(value) for name, value in rnn.state_dict().items()})
    x = np.ones((1, 1, 1), np.float32)
    grad_h_n = np.full((1, 1, 1), np.nan, np.float32)  # relu(-1) = 0: the unit is clamped

    output, _ = rnn(x)
    grad_input, grad_h_0 = rnn.backward(None, grad_h_n)
    expected = torch_run(reference, x, None, None, grad_h_n)
    assert output.item() == 0 and expected[0].item() == 0
    assert_matches_torch(grad_input, expected[2], np.float32, 1.0, "grad_input")
    assert_matches_torch(grad_h_0, expected[3], np.float32, 1.0, "grad_h_0")
    assert_matches_torch(rnn.grads["weight_ih_l0"], expected[4]["weight_ih_l0"], np.float32, 1.0, "weight_ih_l0")


# -- bad arguments -------------------------------------------------------------------------------------------------

DOCUMENTED_ERRORS = (ValueError, TypeError, RuntimeError)
BAD_DTYPES = [np.float16, np.int32, np.int64, np.complex64, np.bool_]


def _other_float(dtype):
    return np.float64 if np.dtype(dtype) == np.float32 else np.float32


def _corruptions(rnn, x, h_0, batch, steps, draw):
    """Every way to break a valid call ``rnn(x, h_0)``: name -> (call, regex the message must match). Each regex
    holds what was expected and what was given, or the fix."""
    dtype = rnn.dtype.name
    bad_dtype = np.dtype(draw(st.sampled_from([*BAD_DTYPES, _other_float(rnn.dtype)])))
    rows = rnn.num_layers * rnn.num_directions
    wrong_size = rnn.input_size + draw(st.sampled_from([-1, 1, 2])) if rnn.input_size > 1 else 2
    batched = x.ndim == 3
    corruptions = {
        "input_dtype": (
            lambda: rnn(x.astype(bad_dtype)),
            (
                rf"input must have the type {dtype}, got type {bad_dtype.name}; convert it with "
                rf"input\.astype\(np\.{dtype}\)"
            ),
        ),
        "input_ndim": (
            lambda: rnn(x.reshape(-1) if draw(st.booleans()) else x.reshape((1,) * (4 - x.ndim) + x.shape)),
            r"Expected input to be 2D or 3D, got [14]D tensor instead",
        ),
        "input_size": (
            lambda: rnn(np.zeros((*x.shape[:-1], wrong_size), rnn.dtype)),
            rf"input\.size\(-1\) must be equal to input_size\. Expected {rnn.input_size}, got {wrong_size}",
        ),
        "h_0_dtype": (
            lambda: rnn(x, np.zeros(((rows, batch) if batched else (rows,)) + (rnn.hidden_size,), bad_dtype)),
            rf"h_0 must have the type {dtype}, got type {bad_dtype.name}; convert it with h_0\.astype",
        ),
        "h_0_ndim": (
            lambda: rnn(x, np.zeros((rows, rnn.hidden_size) if batched else (rows, 1, rnn.hidden_size), rnn.dtype)),
            r"hx should also be [23]-D but got [23]-D tensor",
        ),
        "h_0_shape": (
            lambda: rnn(x, np.zeros(((rows + 1, batch) if batched else (rows + 1,)) + (rnn.hidden_size,), rnn.dtype)),
            r"Expected hidden size \(.*\), got \[.*\]",
        ),
        "no_steps": (
            lambda: rnn(
                np.zeros(
                    x.shape[:-2] + (0, rnn.input_size)
                    if rnn.batch_first or not batched
                    else (0, batch, rnn.input_size),
                    rnn.dtype,
                )
            ),
            r"Expected sequence length to be larger than 0",
        ),
        "backward_shape": (
            lambda: (rnn.train(), rnn(x), rnn.backward(np.zeros((1, 2, 3, 4), rnn.dtype))),
            (
                r"grad_output must have shape \(.*\) \(the shape of the forward result\), "
                r"got \(1, 2, 3, 4\)"
            ),
        ),
        "backward_in_eval": (
            lambda: (rnn.eval(), rnn(x), rnn.backward()),
            r"the module is in eval mode.*call rnn\.train\(\)",
        ),
    }
    if rnn.dtype == np.float32 and x.size:  # a nested list is float64: a float32 module names the conversion
        # (an empty one loses its empty axes, and gets the dimension error instead)
        corruptions["input_list"] = (
            lambda: rnn(x.tolist()),
            r"got type float64; convert it with np\.asarray\(input, dtype=np\.float32\)",
        )
    if batched and batch:
        bad_length = draw(st.sampled_from([0, -1, steps + 1]))
        corruptions["lengths_value"] = (
            lambda: rnn(x, lengths=np.full(batch, bad_length)),
            "greater than 0"
            if bad_length <= 0
            else rf"lengths must be at most the sequence length L={steps}, got {steps + 1}",
        )
        corruptions["lengths_shape"] = (
            lambda: rnn(x, lengths=np.ones(batch + 1, np.int64)),
            rf"lengths must have shape \({batch},\).*got shape \({batch + 1},\)",
        )
        corruptions["lengths_dtype"] = (
            lambda: rnn(x, lengths=np.ones(batch)),
            (
                r"lengths must be an array of integers, got dtype float64.*"
                r"lengths\.astype\(np\.int64\)"
            ),
        )
    if not batched:
        corruptions["lengths_unbatched"] = (lambda: rnn(x, lengths=[1]), r"lengths needs batched 3-D input")
    if rnn.bidirectional:
        corruptions["step_bidirectional"] = (
            lambda: rnn.step(x.reshape(-1, rnn.input_size)[:1]),
            r"bidirectional.*call rnn\(input\) on the full sequence",
        )
    else:
        corruptions["step_h_shape"] = (
            lambda: rnn.step(
                np.zeros((2, rnn.input_size), rnn.dtype), np.zeros((rnn.num_layers, 3, rnn.hidden_size), rnn.dtype)
            ),
            (
                rf"Expected hidden size \({rnn.num_layers}, 2, {rnn.hidden_size}\), got "
                rf"\[{rnn.num_layers}, 3, {rnn.hidden_size}\]"
            ),
        )
        corruptions["step_input_size"] = (
            lambda: rnn.step(np.zeros(wrong_size, rnn.dtype)),
            rf"Expected {rnn.input_size}, got {wrong_size}",
        )
    return corruptions


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(rnn_cases(), st.data())
def test_bad_arguments_raise_documented_errors_that_name_the_fix(case, data):
    options, arrays, _ = case
    rnn, _ = make_rnn_pair(**options)
    x = arrays["x"]
    batched = x.ndim == 3
    batch = (x.shape[0] if rnn.batch_first else x.shape[1]) if batched else None
    steps = (x.shape[1] if rnn.batch_first else x.shape[0]) if batched else x.shape[0]
    corruptions = _corruptions(rnn, x, arrays["h_0"], batch, steps, data.draw)
    name = data.draw(st.sampled_from(sorted(corruptions)), label="corruption")
    call, message = corruptions[name]
    original = x.copy()
    with pytest.raises(DOCUMENTED_ERRORS, match=message):
        call()
    assert original.tobytes() == x.tobytes()


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(DTYPES), st.integers(1, 5), st.integers(1, 5), st.integers(0, 4), st.data())
def test_bad_cell_arguments_raise_documented_errors(dtype, input_size, hidden_size, batch, data):
    cell = numbarnn.RNNCell(input_size, hidden_size, dtype=dtype)
    name = np.dtype(dtype).name
    x = np.zeros((batch, input_size), dtype)
    corruptions = {
        "input_ndim": (lambda: cell(x[None]), r"RNNCell: Expected input to be 1D or 2D, got 3D instead"),
        "input_size": (
            lambda: cell(np.zeros((batch, input_size + 1), dtype)),
            rf"input has inconsistent input_size: got {input_size + 1} expected {input_size}",
        ),
        "batch": (
            lambda: cell(x, np.zeros((batch + 1, hidden_size), dtype)),
            rf"Input batch size {batch} doesn't match hidden0 batch size {batch + 1}",
        ),
        "hidden_size": (
            lambda: cell(x, np.zeros((batch, hidden_size + 1), dtype)),
            rf"hidden0 has inconsistent hidden_size: got {hidden_size + 1}, expected {hidden_size}",
        ),
        "dtype": (
            lambda: cell(x.astype(_other_float(dtype))),
            rf"input must have the type {name}, got type .*; convert it with input\.astype\(np\.{name}\)",
        ),
        "backward_without_call": (
            lambda: cell.backward(np.zeros((batch, hidden_size), dtype)),
            r"backward\(\) has no recorded call.*run the forward steps again",
        ),
    }
    call, message = corruptions[data.draw(st.sampled_from(sorted(corruptions)), label="corruption")]
    with pytest.raises(DOCUMENTED_ERRORS, match=message):
        call()
