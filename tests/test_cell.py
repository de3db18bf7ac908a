"""``numbarnn.RNNCell`` against ``torch.nn.RNNCell``: one step, and the tape that trains a cell over time."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    DTYPES,
    PANEL_HIDDEN_SIZES,
    assert_close,
    panels_of,
    scaled_atols,
    standard_normal,
    torch_dtype,
)

import numbarnn
import numbarnn.cell

INPUT_SIZE, HIDDEN_SIZE, BATCH, STEPS = 3, 4, 3, 5


def make_cell_pair(
    input_size=INPUT_SIZE, hidden_size=HIDDEN_SIZE, bias=True, nonlinearity="tanh", dtype=np.float64, seed=0
):
    torch.manual_seed(seed)
    reference = torch.nn.RNNCell(
        input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=torch_dtype(dtype)
    )
    cell = numbarnn.RNNCell(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=dtype, seed=seed)
    cell.load_state_dict(reference.state_dict())
    return cell, reference


def as_tensor(array, dtype, requires_grad=False):
    return torch.tensor(array, dtype=torch_dtype(dtype), requires_grad=requires_grad)


def parameter_grads(reference):
    return {name: p.grad.numpy() for name, p in reference.named_parameters()}


STEP_GRID = list(itertools.product([True, False], ["tanh", "relu"], [True, False], DTYPES, [True, False]))


@pytest.mark.parametrize(
    "batched,nonlinearity,bias,dtype,hx_given",
    STEP_GRID,
    ids=[
        "-".join(
            ["batched" if b else "unbatched", nl, "bias" if bi else "nobias", np.dtype(d).name, "hx" if h else "nohx"]
        )
        for b, nl, bi, d, h in STEP_GRID
    ],
)
def test_one_step_matches_torch(batched, nonlinearity, bias, dtype, hx_given, rng):
    cell, reference = make_cell_pair(bias=bias, nonlinearity=nonlinearity, dtype=dtype)
    batch_shape = (BATCH,) if batched else ()
    x = standard_normal(rng, batch_shape + (INPUT_SIZE,), dtype)
    hx = standard_normal(rng, batch_shape + (HIDDEN_SIZE,), dtype) if hx_given else None
    grad_h = standard_normal(rng, batch_shape + (HIDDEN_SIZE,), dtype)

    x_t = as_tensor(x, dtype, requires_grad=True)
    # An omitted hx is zeros in torch too; explicit zeros give the gradient numbarnn returns for it.
    hx_t = as_tensor(np.zeros(batch_shape + (HIDDEN_SIZE,)) if hx is None else hx, dtype, requires_grad=True)
    expected = reference(x_t, hx_t)
    (expected * as_tensor(grad_h, dtype)).sum().backward()

    h = cell(x, hx)
    assert h.shape == batch_shape + (HIDDEN_SIZE,) and h.dtype == np.dtype(dtype)
    assert_close(h, expected, dtype, "h'")
    grad_x, grad_hx = cell.backward(grad_h)
    assert grad_x.shape == x.shape and grad_hx.shape == batch_shape + (HIDDEN_SIZE,)
    assert_close(grad_x, x_t.grad, dtype, "grad_x")
    assert_close(grad_hx, hx_t.grad, dtype, "grad_hx")
    expected_grads = parameter_grads(reference)
    assert list(cell.grads) == list(expected_grads)
    for name, value in expected_grads.items():
        assert_close(cell.grads[name], value, dtype, name)


# (input size, hidden size, batch): the small sizes, and hidden sizes past one panel (numbarnn._panels: the backward's
# products run against W_hh and W_ih packed into panels) with a batch of 8, more rows than one register tile. A cell's
# backward is one step of one block: the RNN grids cover several blocks.
CELL_SIZES = [(INPUT_SIZE, HIDDEN_SIZE, BATCH)] + [(24, hidden, 8) for hidden in PANEL_HIDDEN_SIZES]


def test_cell_sizes_reach_partial_panels():
    for dtype in DTYPES:
        panels = [panels_of(hidden, dtype) for _, hidden, _ in CELL_SIZES]
        assert any(full >= 1 and partial == 0 for full, partial in panels), (dtype, panels)
        assert any(full >= 1 and partial == 1 for full, partial in panels), (dtype, panels)


@pytest.mark.parametrize("input_size,hidden_size,batch", CELL_SIZES, ids=[f"I{i}-H{h}-N{n}" for i, h, n in CELL_SIZES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_one_cell_over_time_trained_through_the_tape(nonlinearity, dtype, input_size, hidden_size, batch, rng):
    cell, reference = make_cell_pair(input_size, hidden_size, nonlinearity=nonlinearity, dtype=dtype)
    values_atol, gradients_atol = scaled_atols(dtype, STEPS, batch, input_size, hidden_size)
    xs = standard_normal(rng, (STEPS, batch, input_size), dtype)
    h_0 = standard_normal(rng, (batch, hidden_size), dtype)
    grad_hs = standard_normal(rng, (STEPS, batch, hidden_size), dtype)  # a loss term on every step's state

    xs_t = as_tensor(xs, dtype, requires_grad=True)
    h_0_t = as_tensor(h_0, dtype, requires_grad=True)
    h_t, states_t = h_0_t, []
    for step in range(STEPS):
        h_t = reference(xs_t[step], h_t)
        states_t.append(h_t)
    (torch.stack(states_t) * as_tensor(grad_hs, dtype)).sum().backward()

    h, states = h_0, []
    for step in range(STEPS):
        h = cell(xs[step], h)
        states.append(h)
    assert_close(np.stack(states), torch.stack(states_t), dtype, "states", values_atol)

    grad_xs = np.empty_like(xs)
    carry = np.zeros((batch, hidden_size), dtype)  # gradient reaching h_t from the later steps
    for step in reversed(range(STEPS)):
        grad_xs[step], carry = cell.backward(grad_hs[step] + carry)
    assert_close(grad_xs, xs_t.grad, dtype, "grad_xs", values_atol)
    assert_close(carry, h_0_t.grad, dtype, "grad_h_0", values_atol)
    for name, value in parameter_grads(reference).items():
        assert_close(cell.grads[name], value, dtype, name, gradients_atol)
    with pytest.raises(RuntimeError, match="no recorded call"):
        cell.backward(grad_hs[0])  # every call has been consumed


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_stacked_cells_over_time(dtype, rng):
    lower, lower_reference = make_cell_pair(dtype=dtype, seed=1)
    upper, upper_reference = make_cell_pair(HIDDEN_SIZE, HIDDEN_SIZE, nonlinearity="relu", dtype=dtype, seed=2)
    xs = standard_normal(rng, (STEPS, BATCH, INPUT_SIZE), dtype)
    grad_tops = standard_normal(rng, (STEPS, BATCH, HIDDEN_SIZE), dtype)

    xs_t = as_tensor(xs, dtype, requires_grad=True)
    low_t = top_t = None
    tops_t = []
    for step in range(STEPS):
        low_t = lower_reference(xs_t[step], low_t)
        top_t = upper_reference(low_t, top_t)
        tops_t.append(top_t)
    (torch.stack(tops_t) * as_tensor(grad_tops, dtype)).sum().backward()

    low = top = None
    tops = []
    for step in range(STEPS):
        low = lower(xs[step], low)
        top = upper(low, top)
        tops.append(top)
    assert_close(np.stack(tops), torch.stack(tops_t), dtype, "top states")

    # Reverse time; within a step the upper cell first, since its input gradient feeds the lower cell.
    grad_xs = np.empty_like(xs)
    carry_low = np.zeros((BATCH, HIDDEN_SIZE), dtype)
    carry_top = np.zeros((BATCH, HIDDEN_SIZE), dtype)
    for step in reversed(range(STEPS)):
        grad_low, carry_top = upper.backward(grad_tops[step] + carry_top)
        grad_xs[step], carry_low = lower.backward(grad_low + carry_low)
    assert_close(grad_xs, xs_t.grad, dtype, "grad_xs")
    for cell, reference in ((lower, lower_reference), (upper, upper_reference)):
        for name, value in parameter_grads(reference).items():
            assert_close(cell.grads[name], value, dtype, name)


def test_returned_state_is_not_the_taped_one(rng):
    """Changing a returned h' in place must not change what backward() uses."""
    cell, reference = make_cell_pair()
    x = rng.standard_normal((BATCH, INPUT_SIZE))
    grad_h = rng.standard_normal((BATCH, HIDDEN_SIZE))
    h = cell(x)
    h[:] = 0.5
    grad_x, _ = cell.backward(grad_h)
    x_t = torch.tensor(x, requires_grad=True)
    (reference(x_t) * torch.tensor(grad_h)).sum().backward()
    assert_close(grad_x, x_t.grad, np.float64, "grad_x")


def test_eval_records_nothing(rng):
    cell, reference = make_cell_pair()
    x = rng.standard_normal((BATCH, INPUT_SIZE))
    cell.eval()
    h = cell(x)
    assert_close(h, reference(torch.tensor(x)), np.float64, "h' (eval)")
    with pytest.raises(RuntimeError, match="eval mode"):
        cell.backward(np.ones_like(h))
    cell.train()  # the eval call left nothing behind to backpropagate through
    with pytest.raises(RuntimeError, match="no recorded call"):
        cell.backward(np.ones_like(h))
    assert all(not grad.any() for grad in cell.grads.values())


def test_zero_grad_clears_gradients_only(rng):
    """torch's order -- forward, zero_grad, backward, step -- must work: zero_grad keeps the tape."""
    cell, reference = make_cell_pair()
    x = rng.standard_normal((BATCH, INPUT_SIZE))
    grad_h = rng.standard_normal((BATCH, HIDDEN_SIZE))
    cell.backward(np.ones_like(cell(x)))  # leaves gradients behind
    h = cell(x)
    cell.zero_grad()
    assert all(not grad.any() for grad in cell.grads.values())
    cell.backward(grad_h)  # the call made before zero_grad is still taped
    reference.zero_grad()
    (reference(torch.tensor(x)) * torch.tensor(grad_h)).sum().backward()
    for name, param in reference.named_parameters():
        assert_close(cell.grads[name], param.grad, np.float64, name)
    assert h.shape == (BATCH, HIDDEN_SIZE)


@pytest.mark.parametrize("drop", ["clear_tape", "eval"])
def test_clear_tape_and_eval_drop_the_tape(drop, rng):
    cell, _ = make_cell_pair()
    x = rng.standard_normal((BATCH, INPUT_SIZE))
    h = cell(x)
    cell(x, h)
    getattr(cell, drop)()
    cell.train()
    with pytest.raises(RuntimeError, match="no recorded call"):
        cell.backward(np.ones_like(h))
    assert all(not grad.any() for grad in cell.grads.values())


def test_tape_warning_once_past_the_limit(monkeypatch, rng):
    monkeypatch.setattr(numbarnn.cell, "TAPE_WARNING_LENGTH", 3)
    cell, _ = make_cell_pair()
    x = rng.standard_normal((BATCH, INPUT_SIZE))
    cell(x)
    cell(x)
    with pytest.warns(RuntimeWarning, match=r"recorded 3 calls .*cell\.eval\(\)"):
        cell(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cell(x)  # warned once already: no second warning
        cell.eval()
        for _ in range(5):
            cell(x)  # eval records nothing, so it never warns
