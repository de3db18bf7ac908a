"""Every error numbarnn raises: the exception type and its message.

Where numbarnn promises torch's wording, the expected text is taken from torch itself at test time (``torch_message``),
so the two cannot drift apart. Where numbarnn words a message its own way (dtype, backward, lengths), the test checks
that the message names what was expected, what was given and the fix.
"""

import re

import numpy as np
import pytest
import torch

import numbarnn


def torch_message(make_error):
    """The message of the exception ``make_error()`` raises in torch, as a regular expression matching it exactly."""
    with pytest.raises(Exception) as error:
        make_error()
    return "^" + re.escape(str(error.value)) + "$"


# -- constructors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", "", None])
def test_unknown_nonlinearity(nonlinearity):
    expected = torch_message(lambda: torch.nn.RNN(3, 4, nonlinearity=nonlinearity))
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNN(3, 4, nonlinearity=nonlinearity)
    # torch's RNNCell only notices at the first call; numbarnn's cell rejects it up front, with the RNN message.
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNNCell(3, 4, nonlinearity=nonlinearity)


@pytest.mark.parametrize("dropout", [-0.1, 1.5, True, False, "0.5", float("nan")])
def test_dropout_out_of_range_or_not_a_number(dropout):
    expected = torch_message(lambda: torch.nn.RNN(3, 4, 2, dropout=dropout))
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNN(3, 4, 2, dropout=dropout)


def test_dropout_none_gets_the_range_message():
    # torch fails inside float() ("float() argument must be ... not 'NoneType'"); numbarnn says what dropout must be
    with pytest.raises(ValueError, match=r"^dropout should be a number in range \[0, 1\]"):
        numbarnn.RNN(3, 4, 2, dropout=None)


@pytest.mark.parametrize("dropout", [0.0, 1.0, 0.5, 1, 0])
def test_dropout_bounds_are_accepted(dropout):
    assert numbarnn.RNN(3, 4, 2, dropout=dropout).dropout == dropout


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning) as torch_warnings:
        torch.nn.RNN(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="^" + re.escape(str(torch_warnings[0].message)) + "$"):
        rnn = numbarnn.RNN(3, 4, dropout=0.5)
    assert rnn.dropout == 0.5  # a warning, not an error


@pytest.mark.parametrize("hidden_size", [4.0, "4", None])
def test_hidden_size_must_be_an_int(hidden_size):
    expected = torch_message(lambda: torch.nn.RNN(3, hidden_size))
    with pytest.raises(TypeError, match=expected):
        numbarnn.RNN(3, hidden_size)
    with pytest.raises(TypeError, match="hidden_size should be of type int"):
        numbarnn.RNNCell(3, hidden_size)


@pytest.mark.parametrize("hidden_size", [0, -2])
def test_hidden_size_must_be_positive(hidden_size):
    expected = torch_message(lambda: torch.nn.RNN(3, hidden_size))
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNN(3, hidden_size)
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNNCell(3, hidden_size)


@pytest.mark.parametrize("num_layers", [0, -1])
def test_num_layers_must_be_positive(num_layers):
    expected = torch_message(lambda: torch.nn.RNN(3, 4, num_layers))
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNN(3, 4, num_layers)


def test_bool_sizes_are_rejected():
    # bool is an int subclass; torch accepts True and fails later inside torch.empty. numbarnn rejects it up front.
    with pytest.raises(TypeError, match="^hidden_size should be of type int, got: bool$"):
        numbarnn.RNN(3, True)
    with pytest.raises(TypeError, match="^num_layers should be of type int, got: bool$"):
        numbarnn.RNN(3, 4, True)


def test_num_layers_and_input_size_must_be_ints():
    # torch fails obscurely here ("'float' object cannot be interpreted as an integer"); numbarnn names the argument
    with pytest.raises(TypeError, match="^num_layers should be of type int, got: float$"):
        numbarnn.RNN(3, 4, 2.0)
    with pytest.raises(TypeError, match="^input_size should be of type int, got: str$"):
        numbarnn.RNN("3", 4)


@pytest.mark.parametrize("input_size", [0, -3])
def test_input_size_must_be_positive(input_size):
    expected = torch_message(lambda: torch.nn.RNN(input_size, 4))
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNN(input_size, 4)
    with pytest.raises(ValueError, match=expected):
        numbarnn.RNNCell(input_size, 4)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.complex64, "float128", object, int])
def test_dtype_must_be_float32_or_float64(dtype):
    with pytest.raises(TypeError, match=r"dtype must be np\.float32 or np\.float64, got "):
        numbarnn.RNN(3, 4, dtype=dtype)
    with pytest.raises(TypeError, match=r"dtype must be np\.float32 or np\.float64, got "):
        numbarnn.RNNCell(3, 4, dtype=dtype)


def test_dtype_error_for_an_unparseable_dtype():
    with pytest.raises(TypeError, match=r"dtype must be np\.float32 or np\.float64, got 'not a dtype'"):
        numbarnn.RNN(3, 4, dtype="not a dtype")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32", "float64", np.dtype("float64")])
def test_dtype_spellings_are_accepted(dtype):
    assert numbarnn.RNN(3, 4, dtype=dtype).weight_ih_l0.dtype == np.dtype(dtype)


# -- RNN.forward ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules():
    """The same two-layer module in numbarnn (float32) and torch, for comparing messages."""
    return numbarnn.RNN(3, 5, 2), torch.nn.RNN(3, 5, 2)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize("shape", [(3,), (1, 4, 2, 3), ()])
def test_input_must_be_2d_or_3d(modules, shape):
    rnn, reference = modules
    expected = torch_message(lambda: reference(torch.zeros(shape)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(*shape))


@pytest.mark.parametrize("input_shape,h_0_shape", [((4, 2, 3), (2, 5)), ((4, 3), (2, 1, 5)), ((4, 2, 3), (2, 2, 1, 5))])
def test_hx_must_match_the_input_rank(modules, input_shape, h_0_shape):
    rnn, reference = modules
    expected = torch_message(lambda: reference(torch.zeros(input_shape), torch.zeros(h_0_shape)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(*input_shape), zeros(*h_0_shape))


@pytest.mark.parametrize("given", [np.float64, np.int64, np.float16])
def test_input_dtype_must_match_and_the_message_names_the_fix(modules, given):
    rnn, _ = modules
    fix = re.escape("convert it with input.astype(np.float32)")
    with pytest.raises(ValueError, match=f"^input must have the type float32, got type {np.dtype(given)}; {fix}$"):
        rnn(np.zeros((4, 2, 3), given))


def test_nested_lists_are_float64_and_rejected_by_a_float32_module(modules):
    rnn, _ = modules
    with pytest.raises(ValueError, match=re.escape("np.asarray(input, dtype=np.float32)")):
        rnn([[[0.0, 0.0, 0.0]]])


def test_h_0_dtype_must_match(modules):
    rnn, _ = modules
    with pytest.raises(
        ValueError,
        match=re.escape("h_0 must have the type float32, got type float64; convert it with h_0.astype(np.float32)"),
    ):
        rnn(zeros(4, 2, 3), np.zeros((2, 2, 5)))


def test_float64_module_names_float64_in_the_fix():
    rnn = numbarnn.RNN(3, 5, dtype=np.float64)
    with pytest.raises(ValueError, match=re.escape("got type float32; convert it with input.astype(np.float64)")):
        rnn(zeros(4, 2, 3))


@pytest.mark.parametrize("shape", [(4, 2, 4), (4, 2), (4, 2, 1)])
def test_input_size_must_match(modules, shape):
    rnn, reference = modules
    expected = torch_message(lambda: reference(torch.zeros(shape)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(*shape))


@pytest.mark.parametrize(
    "input_shape,h_0_shape",
    [
        ((4, 2, 3), (2, 3, 5)),  # batch size
        ((4, 2, 3), (1, 2, 5)),  # layers
        ((4, 2, 3), (2, 2, 4)),  # hidden size
    ],
)
def test_hidden_shape_must_match(modules, input_shape, h_0_shape):
    rnn, reference = modules
    expected = torch_message(lambda: reference(torch.zeros(input_shape), torch.zeros(h_0_shape)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(*input_shape), zeros(*h_0_shape))


@pytest.mark.parametrize("h_0_shape", [(2, 4), (3, 5)])
def test_hidden_shape_must_match_unbatched(modules, h_0_shape):
    # torch reports the shapes after adding the batch axis ("Expected hidden size (2, 1, 5), got [2, 1, 4]");
    # numbarnn reports the shapes the caller used.
    rnn, _ = modules
    with pytest.raises(ValueError, match=re.escape(f"Expected hidden size (2, 5), got {list(h_0_shape)}")):
        rnn(zeros(4, 3), zeros(*h_0_shape))


def test_hidden_shape_uses_the_batch_axis_of_batch_first_input():
    rnn, reference = numbarnn.RNN(3, 5, batch_first=True), torch.nn.RNN(3, 5, batch_first=True)
    expected = torch_message(lambda: reference(torch.zeros(2, 4, 3), torch.zeros(1, 4, 5)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(2, 4, 3), zeros(1, 4, 5))  # h_0 sized with L instead of N


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("batched", [True, False])
def test_empty_sequence(batch_first, batched):
    rnn = numbarnn.RNN(3, 5, batch_first=batch_first)
    reference = torch.nn.RNN(3, 5, batch_first=batch_first)
    shape = ((2, 0, 3) if batch_first else (0, 2, 3)) if batched else (0, 3)
    expected = torch_message(lambda: reference(torch.zeros(shape)))
    with pytest.raises(ValueError, match=expected):
        rnn(zeros(*shape))


# -- RNN lengths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths,match",
    [
        ([4, 2], re.escape("lengths must have shape (3,), one length per sequence of the batch, got shape (2,)")),
        (
            [[4, 2, 1]],
            re.escape("lengths must have shape (3,), one length per sequence of the batch, got shape (1, 3)"),
        ),
        (4, re.escape("lengths must have shape (3,), one length per sequence of the batch, got shape ()")),
        (
            [4, 0, 1],
            "^"
            + re.escape(
                "Length of all samples has to be greater than 0, but found an element in 'lengths' that is <= 0"
            ),
        ),
        ([4, -1, 2], "that is <= 0: -1$"),
        ([5, 2, 1], re.escape("lengths must be at most the sequence length L=4, got 5")),
    ],
)
def test_lengths_values_and_shape(lengths, match):
    with pytest.raises(ValueError, match=match):
        numbarnn.RNN(3, 5)(zeros(4, 3, 3), lengths=lengths)


@pytest.mark.parametrize("lengths", [np.array([4.0, 2.0, 1.0]), [4, 2.5, 1], np.array([True, True, True])])
def test_lengths_must_be_integers(lengths):
    with pytest.raises(
        TypeError,
        match=r"^lengths must be an array of integers, got dtype \w+; convert it with "
        r"lengths\.astype\(np\.int64\)$",
    ):
        numbarnn.RNN(3, 5)(zeros(4, 3, 3), lengths=lengths)


def test_lengths_need_batched_input():
    with pytest.raises(ValueError, match=r"^lengths needs batched 3-D input, got unbatched 2-D input"):
        numbarnn.RNN(3, 5)(zeros(4, 3), lengths=[4])


# -- RNN.backward --------------------------------------------------------------------------------------------------


def trained_rnn(**kwargs):
    rnn = numbarnn.RNN(3, 5, 2, dtype=np.float64, seed=0, **kwargs)
    x = np.ones((4, 2, 3))
    return rnn, x


def test_backward_before_any_forward():
    rnn, _ = trained_rnn()
    with pytest.raises(RuntimeError, match=r"^backward\(\) needs a forward pass in training mode first"):
        rnn.backward(np.ones((4, 2, 5)))


def test_backward_after_an_eval_forward():
    rnn, x = trained_rnn()
    rnn(x)  # a training forward, then an eval forward: the eval one is the most recent
    rnn.eval()(x)
    with pytest.raises(RuntimeError, match=r"eval mode, which keeps nothing for backward; call rnn\.train\(\)"):
        rnn.backward(np.ones((4, 2, 5)))


def test_backward_twice_for_one_forward():
    rnn, x = trained_rnn()
    rnn(x)
    rnn.backward(np.ones((4, 2, 5)))
    with pytest.raises(RuntimeError, match=r"^backward\(\) was already called for the last forward pass"):
        rnn.backward(np.ones((4, 2, 5)))


# Each rejected backward() below gets its own forward pass, so that these tests check the messages only
# (whether a rejected call uses up the forward pass is test_a_rejected_backward_leaves_the_forward_pass_usable).


@pytest.mark.parametrize("batch_first", [False, True])
def test_backward_gradient_shapes(batch_first):
    rnn, _ = trained_rnn(batch_first=batch_first)
    output_shape = (2, 4, 5) if batch_first else (4, 2, 5)
    x = np.ones((2, 4, 3) if batch_first else (4, 2, 3))
    wrong = (4, 2, 5) if batch_first else (2, 4, 5)
    rnn(x)
    with pytest.raises(
        ValueError,
        match=re.escape(f"grad_output must have shape {output_shape} (the shape of the forward result), got {wrong}"),
    ):
        rnn.backward(np.ones(wrong))
    rnn(x)
    with pytest.raises(
        ValueError, match=re.escape("grad_h_n must have shape (2, 2, 5) (the shape of the forward result), got (2, 5)")
    ):
        rnn.backward(None, np.ones((2, 5)))


def test_backward_gradient_shapes_unbatched():
    rnn, _ = trained_rnn()
    rnn(np.ones((4, 3)))
    with pytest.raises(ValueError, match=re.escape("grad_output must have shape (4, 5)")):
        rnn.backward(np.ones((4, 1, 5)))
    rnn(np.ones((4, 3)))
    with pytest.raises(ValueError, match=re.escape("grad_h_n must have shape (2, 5)")):
        rnn.backward(None, np.ones((2, 1, 5)))


def test_backward_gradient_dtypes():
    rnn, x = trained_rnn()
    rnn(x)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "grad_output must have the type float64, got type float32; convert it with grad_output.astype(np.float64)"
        ),
    ):
        rnn.backward(np.ones((4, 2, 5), np.float32))
    rnn(x)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "grad_h_n must have the type float64, got type int64; convert it with grad_h_n.astype(np.float64)"
        ),
    ):
        rnn.backward(None, np.ones((2, 2, 5), np.int64))


def test_a_rejected_backward_leaves_the_forward_pass_usable():
    """A backward() that fails its argument checks must not use up the forward pass it would have consumed."""
    rnn, x = trained_rnn()
    rnn(x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        rnn.backward(np.ones((4, 2, 6)))
    grad_x, _ = rnn.backward(np.ones((4, 2, 5)))  # the corrected call
    assert grad_x.shape == x.shape


def test_a_rejected_forward_keeps_the_previous_record():
    rnn, x = trained_rnn()
    rnn(x)
    with pytest.raises(ValueError):
        rnn(x, lengths=[9, 1])
    with pytest.raises(ValueError):
        rnn(np.ones((4, 2, 7)))
    grad_x, _ = rnn.backward(np.ones((4, 2, 5)))
    assert grad_x.shape == x.shape


# -- RNNCell -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cells():
    return numbarnn.RNNCell(3, 4), torch.nn.RNNCell(3, 4)


@pytest.mark.parametrize(
    "input_shape,hx_shape",
    [
        ((1, 2, 3), None),  # input rank
        ((2, 3), (1, 2, 4)),  # hidden rank
        ((2, 4), None),  # input_size
        ((2, 3), (3, 4)),  # batch size
        ((2, 3), (2, 5)),  # hidden_size
    ],
)
def test_cell_forward_errors_have_torchs_messages(cells, input_shape, hx_shape):
    cell, reference = cells
    hx_t = None if hx_shape is None else torch.zeros(hx_shape)
    expected = torch_message(lambda: reference(torch.zeros(input_shape), hx_t))
    with pytest.raises(ValueError, match=expected):
        cell(zeros(*input_shape), None if hx_shape is None else zeros(*hx_shape))


@pytest.mark.parametrize("input_shape,hx_shape,ranks", [((2, 3), (4,), (2, 1)), ((3,), (1, 4), (1, 2))])
def test_cell_input_and_hx_must_both_be_batched_or_unbatched(cells, input_shape, hx_shape, ranks):
    cell, _ = cells
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"RNNCell: input is {ranks[0]}-D but hx is {ranks[1]}-D; give both batched (N, H) or both unbatched (H,)"
        ),
    ):
        cell(zeros(*input_shape), zeros(*hx_shape))


def test_cell_dtypes(cells):
    cell, _ = cells
    with pytest.raises(
        ValueError,
        match=re.escape("input must have the type float32, got type float64; convert it with input.astype(np.float32)"),
    ):
        cell(np.zeros((2, 3)))
    with pytest.raises(
        ValueError,
        match=re.escape("hx must have the type float32, got type float64; convert it with hx.astype(np.float32)"),
    ):
        cell(zeros(2, 3), np.zeros((2, 4)))


def test_cell_backward_without_a_recorded_call():
    cell = numbarnn.RNNCell(3, 4)
    with pytest.raises(RuntimeError, match=r"^backward\(\) has no recorded call"):
        cell.backward(zeros(2, 4))
    cell.eval()
    cell(zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"the cell is in eval mode, which records nothing; call cell\.train\(\)"):
        cell.backward(zeros(2, 4))


def test_cell_backward_shape_and_dtype_and_a_rejected_call_keeps_the_tape():
    cell = numbarnn.RNNCell(3, 4)
    cell(zeros(2, 3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "grad_h must have shape (2, 4) (the shape of the output of the call being backpropagated), got (4,)"
        ),
    ):
        cell.backward(zeros(4))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "grad_h must have the type float32, got type float64; convert it with grad_h.astype(np.float32)"
        ),
    ):
        cell.backward(np.zeros((2, 4)))
    grad_x, grad_hx = cell.backward(zeros(2, 4))  # the call is still on the tape
    assert grad_x.shape == (2, 3) and grad_hx.shape == (2, 4)


def test_cell_backward_twice_for_one_call():
    cell = numbarnn.RNNCell(3, 4)
    cell(zeros(3))
    cell.backward(zeros(4))
    with pytest.raises(RuntimeError, match="each backward consumes one call"):
        cell.backward(zeros(4))


# -- empty batches -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_empty_batch_gives_empty_results_and_gradients_like_torch(batch_first, bidirectional):
    rnn = numbarnn.RNN(3, 5, num_layers=2, batch_first=batch_first, bidirectional=bidirectional, seed=0)
    reference = torch.nn.RNN(3, 5, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    shape = (0, 4, 3) if batch_first else (4, 0, 3)
    output, h_n = rnn(zeros(*shape))
    expected_output, expected_h_n = reference(torch.zeros(shape))
    assert output.shape == tuple(expected_output.shape) and h_n.shape == tuple(expected_h_n.shape)
    assert output.dtype == h_n.dtype == np.float32
    grad_x, grad_h_0 = rnn.backward(np.zeros_like(output), np.zeros_like(h_n))
    assert grad_x.shape == shape and grad_h_0.shape == h_n.shape
    assert all(not grad.any() for grad in rnn.grads.values())
    output, h_n = rnn(zeros(*shape), lengths=np.zeros(0, np.int64))
    assert output.shape == tuple(expected_output.shape)


def test_an_empty_batch_through_the_cell_like_torch():
    cell = numbarnn.RNNCell(3, 4, seed=0)
    h = cell(zeros(0, 3), zeros(0, 4))
    assert h.shape == tuple(torch.nn.RNNCell(3, 4)(torch.zeros(0, 3)).shape) == (0, 4)
    grad_x, grad_hx = cell.backward(np.zeros((0, 4), np.float32))
    assert grad_x.shape == (0, 3) and grad_hx.shape == (0, 4)
    assert all(not grad.any() for grad in cell.grads.values())
