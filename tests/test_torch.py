"""``numbarnn.torch``: the torch.nn.RNN / RNNCell drop-ins against torch's own modules — results and every gradient
over a pairwise-covering grid, gradcheck, the autograd idioms (packed sequences, no_grad, two forwards one backward,
retain_graph, freed graphs, in-place weight changes, double backward, dropout), fallbacks, accelerate, threads,
torch.compile and DistributedDataParallel."""

import copy
import datetime
import gc
import io
import itertools
import os
import pickle
import re
import socket
import subprocess
import sys
import time
import weakref

import numba
import numpy as np
import pytest
import torch
from helpers import ATOL, RTOL, pairwise_cases, saved_and_loaded, spy_on
from numpy.testing import assert_allclose
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import numbarnn.torch as nt
from numbarnn import _engine

INPUT_SIZE, HIDDEN_SIZE, STEPS, BATCH = 3, 5, 4, 3
NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

GRID_OPTIONS = {
    "nonlinearity": ["tanh", "relu"],
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "bias": [True, False],
    "batch_first": [False, True],
    "form": ["batched", "unbatched", "packed_sorted", "packed_unsorted"],
    "dtype": [torch.float32, torch.float64],
    "hx": [False, True],
    "input_grad": [False, True],
    "gradient": ["output", "h_n", "both"],
}
GRID = pairwise_cases(GRID_OPTIONS)


def case_id(case):
    return "-".join(
        [
            case["nonlinearity"],
            f"L{case['num_layers']}",
            "bi" if case["bidirectional"] else "uni",
            "bias" if case["bias"] else "nobias",
            "bf" if case["batch_first"] else "tm",
            case["form"],
            str(case["dtype"]).removeprefix("torch."),
            "hx" if case["hx"] else "nohx",
            "xgrad" if case["input_grad"] else "noxgrad",
            case["gradient"],
        ]
    )


def test_grid_covers_every_pair_of_options():
    every_pair = {
        ((a, x), (b, y))
        for a, b in itertools.combinations(GRID_OPTIONS, 2)
        for x in GRID_OPTIONS[a]
        for y in GRID_OPTIONS[b]
    }
    covered = {((a, case[a]), (b, case[b])) for case in GRID for a, b in itertools.combinations(GRID_OPTIONS, 2)}
    assert covered == every_pair
    assert len(GRID) < 30  # the full product has 4608 rows


def assert_close(actual, expected, dtype, name):
    """helpers' tolerances (derived there from the float32 / float64 unit roundoff) on two tensors."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    np_dtype = np.dtype(NP_DTYPES[dtype])
    assert_allclose(
        actual.detach().numpy(), expected.detach().numpy(), rtol=RTOL[np_dtype], atol=ATOL[np_dtype], err_msg=name
    )


def module_pair(case, dropout=0.0):
    """torch.nn.RNN and numbarnn.torch.RNN with the same constructor arguments and weights."""
    arguments = {
        "nonlinearity": case["nonlinearity"],
        "bias": case["bias"],
        "batch_first": case["batch_first"],
        "bidirectional": case["bidirectional"],
        "dropout": dropout,
        "dtype": case["dtype"],
    }
    torch.manual_seed(0)
    reference = torch.nn.RNN(INPUT_SIZE, HIDDEN_SIZE, case["num_layers"], **arguments)
    ours = nt.RNN(INPUT_SIZE, HIDDEN_SIZE, case["num_layers"], **arguments)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def case_inputs(case, reference, generator):
    """A function making the input (a tensor or a PackedSequence built from the leaf ``x``), hx and ``x``."""
    dtype, rows = case["dtype"], reference.num_layers * (2 if reference.bidirectional else 1)
    form = case["form"]
    if form.startswith("packed"):
        lengths = [STEPS, STEPS - 1, 1] if form == "packed_sorted" else [2, STEPS, 1, STEPS]
        x = torch.randn(sum(lengths), INPUT_SIZE, dtype=dtype, generator=generator)
        x.requires_grad_(case["input_grad"])

        def make_input():  # a fresh graph from x for each module
            return pack_sequence(list(torch.split(x, lengths)), enforce_sorted=form == "packed_sorted")

        state_shape = (rows, len(lengths), HIDDEN_SIZE)
    else:
        shape = (
            (STEPS, INPUT_SIZE)
            if form == "unbatched"
            else (BATCH, STEPS, INPUT_SIZE)
            if case["batch_first"]
            else (STEPS, BATCH, INPUT_SIZE)
        )
        x = torch.randn(shape, dtype=dtype, generator=generator).requires_grad_(case["input_grad"])

        def make_input():
            return x

        state_shape = (rows, HIDDEN_SIZE) if form == "unbatched" else (rows, BATCH, HIDDEN_SIZE)
    hx = torch.randn(state_shape, dtype=dtype, generator=generator).requires_grad_() if case["hx"] else None
    return make_input, hx, x


def loss_of(output, h_n, weights, gradient):
    """sum(g_out * output) + sum(g_h * h_n) with fixed random weights: every output element gets its own gradient."""
    data = output.data if isinstance(output, PackedSequence) else output
    loss = 0
    if gradient in ("output", "both"):
        loss = loss + (data * weights[0][: data.numel()].view(data.shape)).sum()
    if gradient in ("h_n", "both"):
        loss = loss + (h_n * weights[1][: h_n.numel()].view(h_n.shape)).sum()
    return loss


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_results_and_gradients_match_torch(case):
    reference, ours = module_pair(case)
    generator = torch.Generator().manual_seed(1)
    make_input, hx, x = case_inputs(case, reference, generator)
    loss_weights = [torch.randn(1000, dtype=case["dtype"], generator=generator) for _ in range(2)]
    results = {}
    for name, module in (("torch", reference), ("numbarnn", ours)):
        for leaf in (x, hx, *module.parameters()):
            if leaf is not None:
                leaf.grad = None
        output, h_n = module(make_input(), hx)
        loss_of(output, h_n, loss_weights, case["gradient"]).backward()
        results[name] = (output, h_n, x.grad, None if hx is None else hx.grad, [p.grad for p in module.parameters()])
    (output, h_n, grad_x, grad_hx, grads), expected = results["numbarnn"], results["torch"]
    dtype = case["dtype"]
    if isinstance(expected[0], PackedSequence):
        assert isinstance(output, PackedSequence)
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert (
                torch.equal(getattr(output, field), getattr(expected[0], field))
                if getattr(expected[0], field) is not None
                else getattr(output, field) is None
            )
        output, expected = output.data, (expected[0].data, *expected[1:])
    assert_close(output, expected[0], dtype, "output")
    assert_close(h_n, expected[1], dtype, "h_n")
    assert (grad_x is None) == (not case["input_grad"])
    if grad_x is not None:
        assert_close(grad_x, expected[2], dtype, "grad_x")
    if grad_hx is not None:
        assert_close(grad_hx, expected[3], dtype, "grad_hx")
    for (name, _), grad, expected_grad in zip(reference.named_parameters(), grads, expected[4], strict=True):
        assert_close(grad, expected_grad, dtype, name)
    with torch.no_grad():  # the inference path (no autograd Function, nothing kept) gives the same results
        output, h_n = ours(make_input(), None if hx is None else hx.detach())
        assert not h_n.requires_grad
    assert_close(
        output.data if isinstance(output, PackedSequence) else output,
        results["torch"][0].data if isinstance(output, PackedSequence) else results["torch"][0],
        dtype,
        "no_grad output",
    )


GRADCHECK_CASES = [
    {"num_layers": 2, "bidirectional": True, "batch_first": True, "nonlinearity": "tanh", "bias": True},
    {"num_layers": 1, "bidirectional": False, "batch_first": False, "nonlinearity": "relu", "bias": False},
]


@pytest.mark.parametrize("arguments", GRADCHECK_CASES, ids=["bi-2layers-bf", "relu-nobias"])
def test_gradcheck(arguments):
    torch.manual_seed(0)
    rnn = nt.RNN(2, 3, dtype=torch.float64, **arguments)
    batch_shape = (2, 3, 2) if arguments["batch_first"] else (3, 2, 2)
    x = torch.randn(batch_shape, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), 2, 3, dtype=torch.float64, requires_grad=True)
    if arguments["nonlinearity"] == "relu":
        x = (x.detach() + 0.5).requires_grad_()  # away from relu's kink, where finite differences are meaningless
    names = [name for name, _ in rnn.named_parameters()]

    def function(x, hx, *params):
        return torch.func.functional_call(rnn, dict(zip(names, params, strict=True)), (x, hx))

    inputs = (x, hx, *rnn.parameters())
    assert torch.autograd.gradcheck(function, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(function, inputs, check_batched_grad=True, fast_mode=True)


def test_gradcheck_packed_sequence():
    torch.manual_seed(0)
    rnn = nt.RNN(2, 3, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)

    def function(x, *params):
        output, h_n = rnn(pack_sequence(list(torch.split(x, [1, 3, 2])), enforce_sorted=False))
        return output.data, h_n

    inputs = (x, *rnn.parameters())  # through the module's own Parameters this time
    assert torch.autograd.gradcheck(function, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(function, inputs, check_batched_grad=True)


def test_gradcheck_with_dropout_under_a_fixed_seed():
    # Dropout's masks come from torch's generator: reseeding inside the function fixes them, so gradcheck's repeated
    # forwards see the same masks and the backward through the dropped-out layer inputs is checked too.
    torch.manual_seed(0)
    rnn = nt.RNN(2, 3, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def function(x, *params):
        torch.manual_seed(123)
        return rnn(x)

    inputs = (x, *rnn.parameters())
    assert torch.autograd.gradcheck(function, inputs, check_batched_grad=True)
    # the double backward recomputes the forward with torch operations, and the same masks
    assert torch.autograd.gradgradcheck(function, inputs, check_batched_grad=True, fast_mode=True)


def test_dropout_follows_torch_manual_seed():
    torch.manual_seed(0)
    rnn = nt.RNN(4, 6, num_layers=2, dropout=0.5)
    x = torch.randn(5, 3, 4)
    torch.manual_seed(7)
    first = rnn(x)[0]
    torch.manual_seed(7)
    again = rnn(x)[0]
    torch.manual_seed(8)
    other = rnn(x)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    torch.manual_seed(7)
    with torch.no_grad():  # a training-mode module drops out without grad too (as torch's does)
        assert torch.equal(rnn(x)[0], first)
    assert not torch.equal(rnn.eval()(x)[0], first)


def test_dropout_one_drops_everything_like_torch():
    # With p = 1 every mask is zero in both libraries, so their results must agree exactly.
    case = {
        "nonlinearity": "tanh",
        "bias": True,
        "batch_first": False,
        "bidirectional": True,
        "dtype": torch.float64,
        "num_layers": 2,
    }
    reference, ours = module_pair(case, dropout=1.0)
    x = torch.randn(STEPS, BATCH, INPUT_SIZE, dtype=torch.float64)
    expected, actual = reference(x), ours(x)
    for a, e, name in zip(actual, expected, ("output", "h_n"), strict=True):
        assert_close(a, e, torch.float64, name)


def test_an_input_without_requires_grad_costs_no_input_gradient(monkeypatch):
    calls = spy_on(monkeypatch, _engine, "backward", lambda args, kwargs, result: kwargs["need_input_grad"])
    rnn = nt.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    rnn(x)[0].sum().backward()
    assert calls == [False] and x.grad is None
    assert all(p.grad is not None for p in rnn.parameters())


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_no_grad_and_inference_mode_keep_nothing(context, monkeypatch):
    training_flags = spy_on(monkeypatch, _engine, "forward", lambda args, kwargs, result: kwargs["training"])
    rnn = nt.RNN(3, 4)
    with context():
        output, _h_n = rnn(torch.randn(5, 2, 3, requires_grad=True))
    assert training_flags == [False]
    assert output.grad_fn is None and not output.requires_grad


def test_nothing_requiring_grad_keeps_nothing(monkeypatch):
    training_flags = spy_on(monkeypatch, _engine, "forward", lambda args, kwargs, result: kwargs["training"])
    rnn = nt.RNN(3, 4).requires_grad_(False)
    output, _ = rnn(torch.randn(5, 2, 3))
    assert training_flags == [False] and output.grad_fn is None


def test_two_forwards_then_one_backward_of_their_sum():
    case = {
        "nonlinearity": "tanh",
        "bias": True,
        "batch_first": False,
        "bidirectional": False,
        "dtype": torch.float64,
        "num_layers": 2,
    }
    reference, ours = module_pair(case)
    x1, x2 = (
        torch.randn(STEPS, BATCH, INPUT_SIZE, dtype=torch.float64),
        torch.randn(6, 1, INPUT_SIZE, dtype=torch.float64),
    )
    for module in (reference, ours):
        (module(x1)[0].sum() + module(x2)[1].pow(2).sum()).backward()
    for (name, expected), actual in zip(reference.named_parameters(), ours.parameters(), strict=True):
        assert_close(actual.grad, expected.grad, torch.float64, name)


def test_retain_graph_backward_twice_accumulates_twice():
    case = {
        "nonlinearity": "relu",
        "bias": True,
        "batch_first": True,
        "bidirectional": True,
        "dtype": torch.float64,
        "num_layers": 2,
    }
    reference, ours = module_pair(case)
    x = torch.randn(BATCH, STEPS, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    grads = {}
    for name, module in (("torch", reference), ("numbarnn", ours)):
        x.grad = None
        loss = module(x)[0].pow(2).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        grads[name] = [x.grad] + [p.grad for p in module.parameters()]
    for actual, expected in zip(grads["numbarnn"], grads["torch"], strict=True):
        assert_close(actual, expected, torch.float64, "gradient after two backwards")


def test_dropped_graphs_free_their_saved_state(monkeypatch):
    # A graph's saved state lives as long as the graph. Once it is gone its buffers may serve a later call of the
    # same module: the module keeps at most two such sets, however many graphs are dropped, and none once it goes.
    # a NumPy buffer each call's record owns
    records = spy_on(monkeypatch, _engine, "forward", lambda args, kwargs, result: weakref.ref(result[2].buffers.z))
    rnn = nt.RNN(3, 4, num_layers=2)
    graphs = [rnn(torch.randn(5, 2, 3)) for _ in range(5)]  # five graphs alive at once: five sets of buffers
    gc.collect()
    assert len({id(ref()) for ref in records if ref() is not None}) == 5
    del graphs
    gc.collect()
    assert sum(ref() is not None for ref in records) <= 2
    del rnn
    gc.collect()
    assert all(ref() is None for ref in records)


def test_buffers_of_finished_calls_are_reused(monkeypatch):
    allocated = spy_on(monkeypatch, _engine, "forward_buffers", lambda args, kwargs, result: None)  # counted
    rnn = nt.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    outputs = []
    for _ in range(4):  # a training loop: each new forward runs while the previous output is still referenced
        output, _ = rnn(x)
        output.sum().backward()
        outputs.append(output.detach().clone())
    assert len(allocated) == 2
    assert all(torch.equal(output, outputs[0]) for output in outputs)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_inference_reuses_its_scratch_and_returns_new_tensors(context, monkeypatch):
    allocated = spy_on(monkeypatch, _engine, "forward_buffers", lambda args, kwargs, result: None)  # counted
    rnn = nt.RNN(3, 4, num_layers=2)
    x1, x2 = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    with context():
        output1, h_n1 = rnn(x1)
        expected = output1.clone(), h_n1.clone()
        output2, h_n2 = rnn(x2)  # runs on the first call's scratch
    assert len(allocated) == 1
    assert torch.equal(output1, expected[0]) and torch.equal(h_n1, expected[1])
    assert output1.data_ptr() != output2.data_ptr() and h_n1.data_ptr() != h_n2.data_ptr()


def test_an_in_place_weight_change_before_backward_raises():
    rnn = nt.RNN(3, 4)
    output, _ = rnn(torch.randn(5, 2, 3))
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


@pytest.mark.parametrize("changed", ["x", "hx"])
def test_an_in_place_change_of_the_input_before_backward_raises_like_torch(changed):
    # the input and hx are saved for the backward (a backward that builds a graph recomputes from them), as torch's
    # RNN saves them: changing one in place in between is torch's version-counter error in both
    for cls in (torch.nn.modules.rnn.RNN, nt.RNN):
        rnn = cls(3, 4, dtype=torch.float64)
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        hx = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
        inputs = {"x": x * 1, "hx": hx * 1}  # non-leaf tensors, which may be changed in place
        output, _ = rnn(inputs["x"], inputs["hx"])
        with torch.no_grad():
            inputs[changed].mul_(2)
        # (torch's own words for hx, which its RNN unbinds into views, differ a little)
        with pytest.raises(RuntimeError, match="modified (by an )?inplace"):
            output.sum().backward()


# float64: second-order gradients sum many more terms (values here up to ~100) than helpers' tolerances are derived
# for; in float64 those tolerances still hold by orders of magnitude, and the recomputation is the same for both dtypes.
DOUBLE_BACKWARD_CASES = [
    {
        "nonlinearity": "tanh",
        "num_layers": 2,
        "bidirectional": True,
        "bias": True,
        "batch_first": True,
        "form": "batched",
        "dtype": torch.float64,
        "hx": True,
        "input_grad": True,
        "gradient": "both",
    },
    {
        "nonlinearity": "relu",
        "num_layers": 1,
        "bidirectional": False,
        "bias": False,
        "batch_first": False,
        "form": "packed_unsorted",
        "dtype": torch.float64,
        "hx": False,
        "input_grad": True,
        "gradient": "output",
    },
    {
        "nonlinearity": "tanh",
        "num_layers": 3,
        "bidirectional": True,
        "bias": True,
        "batch_first": False,
        "form": "packed_sorted",
        "dtype": torch.float64,
        "hx": True,
        "input_grad": True,
        "gradient": "h_n",
    },
    {
        "nonlinearity": "tanh",
        "num_layers": 1,
        "bidirectional": False,
        "bias": True,
        "batch_first": True,
        "form": "unbatched",
        "dtype": torch.float64,
        "hx": True,
        "input_grad": True,
        "gradient": "both",
    },
]


@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=case_id)
def test_a_gradient_penalty_matches_torch(case):
    # create_graph=True: the first-order gradients are themselves differentiable (they require grad), and a penalty
    # on them reaches the Parameters as it does in torch
    reference, ours = module_pair(case)
    generator = torch.Generator().manual_seed(1)
    make_input, hx, x = case_inputs(case, reference, generator)
    loss_weights = [torch.randn(1000, dtype=case["dtype"], generator=generator) for _ in range(2)]
    results = {}
    for name, module in (("torch", reference), ("numbarnn", ours)):
        output, h_n = module(make_input(), hx)
        loss = loss_of(output, h_n, loss_weights, case["gradient"])
        leaves = [leaf for leaf in (x, hx, *module.parameters()) if leaf is not None]
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        assert all(g.requires_grad for g in grads)
        penalty = sum(g.pow(2).sum() for g in grads)
        second = torch.autograd.grad(penalty, leaves)
        results[name] = grads + second
    for actual, expected in zip(results["numbarnn"], results["torch"], strict=True):
        assert_close(actual, expected, case["dtype"], "gradient and penalty gradient")


def test_create_graph_gives_the_kernels_first_order_gradients():
    case = {
        "nonlinearity": "tanh",
        "bias": True,
        "batch_first": False,
        "bidirectional": True,
        "dtype": torch.float64,
        "num_layers": 2,
    }
    _, ours = module_pair(case)
    x = torch.randn(STEPS, BATCH, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    plain = torch.autograd.grad(ours(x)[0].pow(2).sum(), (x, *ours.parameters()))
    graphed = torch.autograd.grad(ours(x)[0].pow(2).sum(), (x, *ours.parameters()), create_graph=True)
    for a, b in zip(graphed, plain, strict=True):
        assert_close(a, b, torch.float64, "create_graph=True against the kernels' backward")


def test_the_cell_supports_double_backward():
    torch.manual_seed(0)
    cell = nt.RNNCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, h, *p: cell(x, h), (x, h, *cell.parameters()), check_batched_grad=True
    )


def test_batched_gradients_match_torch():
    # vmap over the backward: jacobian(vectorize=True) feeds the backward batched gradients
    torch.manual_seed(0)
    reference = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = nt.RNN(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for vectorize in (True, False):
        expected = torch.autograd.functional.jacobian(lambda x: reference(x)[0], x, vectorize=vectorize)
        actual = torch.autograd.functional.jacobian(lambda x: ours(x)[0], x, vectorize=vectorize)
        assert_close(actual, expected, torch.float64, f"jacobian, vectorize={vectorize}")
    # torch.func.vmap over a backward through a graph built outside it
    x.requires_grad_()
    cotangents = torch.randn(5, 4, 2, 8, dtype=torch.float64)
    results = []
    for module in (reference, ours):
        output = module(x)[0]
        leaves = (x, *module.parameters())
        results.append(
            torch.func.vmap(
                lambda v, output=output, leaves=leaves: torch.autograd.grad(output, leaves, v, retain_graph=True)
            )(cotangents)
        )
    for actual, expected in zip(results[1], results[0], strict=True):
        assert_close(actual, expected, torch.float64, "vmap over autograd.grad")


def test_torch_func_transforms_match_torch():
    torch.manual_seed(0)
    reference, ours = torch.nn.RNN(3, 4, dtype=torch.float64), nt.RNN(3, 4, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    xs, hx = torch.randn(5, 6, 2, 3, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)
    # under a transform the drop-in runs torch's forward: results, and errors, are torch's
    for name, transform in (
        ("grad of hx", lambda m: torch.func.grad(lambda h: m(xs[0], h)[0].sum())(hx)),
        ("jacrev", lambda m: torch.func.jacrev(lambda x: m(x)[1])(xs[0])),
    ):
        assert_close(transform(ours), transform(reference), torch.float64, name)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::rnn_tanh") as expected:
        torch.func.vmap(lambda x: reference(x)[0])(xs)
    with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
        torch.func.vmap(lambda x: ours(x)[0])(xs)


def test_empty_batch_like_torch():
    case = {
        "nonlinearity": "tanh",
        "bias": True,
        "batch_first": False,
        "bidirectional": True,
        "dtype": torch.float32,
        "num_layers": 2,
    }
    reference, ours = module_pair(case)
    x = torch.randn(STEPS, 0, INPUT_SIZE, requires_grad=True)
    for actual, expected in zip(ours(x), reference(x), strict=True):
        assert actual.shape == expected.shape
    ours(x)[0].sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: torch.randn(5, 2, 7), "input.size(-1) must be equal to input_size. Expected 3, got 7"),
        (lambda: torch.randn(5, 2, 3, 1), "Expected input to be 2D or 3D, got 4D tensor instead"),
        (
            lambda: torch.randn(5, 2, 3, dtype=torch.float64),
            "RNN input dtype (torch.float64) does not match weight dtype (torch.float32)",
        ),
    ],
)
def test_errors_are_torchs(make_input, message):
    x = make_input()
    with pytest.raises((RuntimeError, ValueError), match=re.escape(message)) as expected:
        torch.nn.RNN(3, 4)(x)
    with pytest.raises(expected.type, match=re.escape(message)):
        nt.RNN(3, 4)(x)


def test_a_wrong_hidden_shape_is_torchs_error():
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\), got \[1, 3, 4\]"):
        nt.RNN(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 3, 4))


def run_both(reference, ours, make_arguments):
    """Forward and backward of ``sum(outputs)`` through each module on equal inputs: the outputs and every gradient
    (inputs first, then the Parameters), one list per module."""
    results = []
    for module in (reference, ours):
        arguments = make_arguments()
        outputs = module(*arguments)
        outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
        grads = torch.autograd.grad(
            sum(o.float().sum() for o in outputs), [a for a in arguments if a.requires_grad] + list(module.parameters())
        )
        results.append(outputs + list(grads))
    return results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
def test_other_dtypes_fall_back_to_torch(monkeypatch, kind, dtype):
    monkeypatch.setattr(_engine, "forward", lambda *a, **k: pytest.fail("numbarnn ran"))
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(3, 4, dtype=dtype)
    ours = getattr(nt, kind)(3, 4, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    shape = (5, 2, 3) if kind == "RNN" else (2, 3)
    x, hx = torch.randn(shape, dtype=dtype), torch.randn((1, 2, 4) if kind == "RNN" else (2, 4), dtype=dtype)
    expected, actual = run_both(reference, ours, lambda: (x.clone().requires_grad_(), hx.clone().requires_grad_()))
    for a, e in zip(actual, expected, strict=True):  # torch's own code ran on both: bitwise the same
        assert a.dtype == dtype and torch.equal(a, e)


@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
def test_other_devices_fall_back_to_torch(monkeypatch, kind):
    # meta tensors hold no values: the results' shapes, dtypes and devices are torch's
    monkeypatch.setattr(_engine, "forward", lambda *a, **k: pytest.fail("numbarnn ran"))
    shape = (5, 2, 3) if kind == "RNN" else (2, 3)
    x = torch.randn(shape, device="meta")
    expected = getattr(torch.nn, kind)(3, 4, device="meta")(x)
    actual = getattr(nt, kind)(3, 4, device="meta")(x)
    for a, e in zip(actual if kind == "RNN" else [actual], expected if kind == "RNN" else [expected], strict=True):
        assert (a.device.type, a.dtype, a.shape) == ("meta", e.dtype, e.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_matches_torch_through_a_loop(dtype, batched):
    torch.manual_seed(0)
    reference = torch.nn.RNNCell(3, 5, nonlinearity="relu" if batched else "tanh", dtype=dtype)
    ours = nt.RNNCell(3, 5, nonlinearity=reference.nonlinearity, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    shape = (6, 2, 3) if batched else (6, 3)
    xs = torch.randn(shape, dtype=dtype, requires_grad=True)
    h0 = torch.randn(shape[1:-1] + (5,), dtype=dtype, requires_grad=True)
    results = {}
    for name, cell in (("torch", reference), ("numbarnn", ours)):
        xs.grad = h0.grad = None
        h, states = h0, []
        for x_t in xs:
            h = cell(x_t, h)
            states.append(h)
        torch.stack(states).pow(2).sum().backward()
        with torch.no_grad():
            step = cell(xs[0])  # hx omitted, no autograd: the one-step kernel
        results[name] = [torch.stack(states), xs.grad, h0.grad, step] + [p.grad for p in cell.parameters()]
    for actual, expected in zip(results["numbarnn"], results["torch"], strict=True):
        assert_close(actual, expected, dtype, "cell")


@pytest.mark.parametrize(
    "input_shape, hx_shape",
    [((2, 7), None), ((2, 3), (3, 4)), ((2, 3), (2, 5)), ((3,), (2, 4)), ((2, 3), (4,)), ((2, 2, 3), None)],
)
def test_cell_errors_are_torchs(input_shape, hx_shape):
    x = torch.randn(input_shape)
    hx = None if hx_shape is None else torch.randn(hx_shape)
    with pytest.raises((RuntimeError, ValueError)) as expected:
        torch.nn.RNNCell(3, 4)(x, hx)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        nt.RNNCell(3, 4)(x, hx)


def test_forward_mode_ad_runs_torchs_forward():
    torch.manual_seed(0)
    reference, ours = torch.nn.RNN(3, 4, dtype=torch.float64), nt.RNN(3, 4, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x, tangent = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    _, expected = torch.func.jvp(lambda x: reference(x)[0], (x,), (tangent,))
    _, actual = torch.func.jvp(lambda x: ours(x)[0], (x,), (tangent,))
    assert_close(actual, expected, torch.float64, "jvp")


def test_modules_are_torchs():
    rnn = nt.RNN(3, 4, num_layers=2, bidirectional=True)
    reference = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True)
    assert isinstance(rnn, torch.nn.RNN) and isinstance(nt.RNNCell(3, 4), torch.nn.RNNCell)
    assert repr(rnn) == repr(reference)
    assert list(rnn.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(rnn.state_dict())


class Tagger(torch.nn.Module):
    """Embedding -> RNN -> Linear, plus an RNNCell, as a user's model would hold them."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.rnn = torch.nn.RNN(4, 6, num_layers=2, batch_first=True)
        self.cell = torch.nn.RNNCell(6, 6)
        self.head = torch.nn.Linear(6, 10)

    def forward(self, tokens):
        output, h_n = self.rnn(self.embedding(tokens))
        return self.head(output + self.cell(output[:, -1], h_n[-1])[:, None])


def test_accelerate_keeps_the_parameters_an_optimiser_holds():
    torch.manual_seed(0)
    model, reference = Tagger(), Tagger()
    reference.load_state_dict(model.state_dict())
    # Plain SGD, so that the parameters' agreement follows from the gradients': after k steps of learning rate lr
    # they differ by lr * (the sum of k gradient differences) plus a rounding of the parameters themselves. The
    # gradients agree to helpers' float32 tolerances (the grid test above), so with lr * k = 0.2 < 1 the parameters
    # do too. (Adam's first step is lr * sign(gradient) per element: a rounding-level difference in a gradient near
    # zero could move a parameter by 2 * lr, which no tolerance derived from rounding covers.)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    parameters = list(model.parameters())
    initial = [p.detach().clone() for p in parameters]
    assert nt.accelerate(model) is model
    assert type(model.rnn) is nt.RNN and type(model.cell) is nt.RNNCell
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    tokens = torch.randint(0, 10, (3, 7))
    for _ in range(2):
        for module, opt in ((model, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(tokens).flatten(0, 1), tokens.flatten()).backward()
            opt.step()
    for (name, expected), actual, before in zip(reference.named_parameters(), model.parameters(), initial, strict=True):
        assert not torch.equal(actual, before), name  # the optimiser did update the switched module's Parameters
        assert_close(actual, expected, torch.float32, name)


def test_accelerate_switches_a_bare_module_and_leaves_subclasses():
    class MyRNN(torch.nn.RNN):
        pass

    bare, custom = torch.nn.RNN(3, 4), MyRNN(3, 4)
    assert type(nt.accelerate(bare)) is nt.RNN
    with pytest.warns(UserWarning, match="holds no torch.nn.RNN"):  # nothing it can switch
        assert type(nt.accelerate(custom)) is MyRNN


def test_threads_follow_torch():
    previous = torch.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            torch.set_num_threads(threads)
            nt.RNN(3, 4)(torch.randn(5, 2, 3))
            assert numba.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)


# Dynamo reads .grad of the non-leaf tensors a graph break hands to the next graph (the RNN's output) and torch warns;
# torch's own code, not ours, and harmless.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = nt.accelerate(Tagger())
    tokens = torch.randint(0, 10, (3, 7))
    compiled = torch.compile(model)
    expected = model(tokens)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    actual = compiled(tokens)
    actual.sum().backward()
    assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    for actual_grad, expected_grad in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        assert_allclose(actual_grad.numpy(), expected_grad.numpy(), rtol=1e-5, atol=1e-6)


def test_import_numbarnn_does_not_import_torch():
    code = "import sys, numbarnn; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- several processes -------------------------------------------------------------------------------------------

DDP_BATCH = 6
DDP_SECONDS = 240  # start-up of two torch processes and a cold numba cache included


def _ddp_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(nt.RNN(3, 5, num_layers=2, batch_first=True), _First(), torch.nn.Linear(5, 2))


class _First(torch.nn.Module):
    def forward(self, pair):
        return pair[0]


def _ddp_data():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(DDP_BATCH, 4, 3, generator=generator), torch.randn(DDP_BATCH, 4, 2, generator=generator)


def _ddp_worker(rank, world_size, port, directory):
    import faulthandler

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # a worker that hangs prints every thread's Python stack and exits, before the test gives up on it
    faulthandler.dump_traceback_later(DDP_SECONDS - 30, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a bounded wait: a lost peer fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    model = None
    try:
        model = DistributedDataParallel(_ddp_model())
        x, target = _ddp_data()
        shard = slice(rank * DDP_BATCH // world_size, (rank + 1) * DDP_BATCH // world_size)
        # mean over this shard; DDP averages the shards' gradients: the gradient of the mean over the whole batch
        torch.nn.functional.mse_loss(model(x[shard]), target[shard]).backward()
        torch.save(
            {name: p.grad for name, p in model.module.named_parameters()}, os.path.join(directory, f"grads{rank}.pt")
        )
    finally:
        # The model goes first. Freed after the group, DDP's reducer drops the group's last reference with the GIL
        # held, and the group's destructor waits for gloo's thread, which may need the GIL to free a finished
        # allreduce: a deadlock in torch (pytorch/pytorch#56297). It hung a CI run; a loop of this teardown hung
        # within 10 rounds that way, and ran 200 rounds twice with the model freed first.
        model = None
        gc.collect()  # in case the module sits in a reference cycle
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_data_parallel_gradients_equal_the_whole_batch(tmp_path):
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workers = torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + DDP_SECONDS
    while not workers.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.terminate()
            pytest.fail(f"the DDP workers did not finish within {DDP_SECONDS} s")
    model = _ddp_model()
    x, target = _ddp_data()
    torch.nn.functional.mse_loss(model(x), target).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, parameter in model.named_parameters():
            # float32; the two sums differ in order only (shard means averaged vs one mean): a few unit roundoffs
            assert_allclose(grads[name].numpy(), parameter.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_first_call_keeps_torchs_thread_count():
    # numba's omp threading layer sets OpenMP's thread count (which is torch's) when its pool starts: undone.
    code = (
        "import torch; torch.set_num_threads(1); import numbarnn.torch as nt; "
        "nt.RNN(3, 4)(torch.randn(5, 2, 3)); print(torch.get_num_threads())"
    )
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    assert result.stdout.strip() == "1"


def test_a_parametrized_weight_is_read_at_each_call():
    class Doubled(torch.nn.Module):
        def forward(self, weight):
            return 2 * weight

    torch.manual_seed(0)
    reference, ours = torch.nn.RNN(3, 4, dtype=torch.float64), nt.RNN(3, 4, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    for module in (reference, ours):
        torch.nn.utils.parametrize.register_parametrization(module, "weight_hh_l0", Doubled())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_close(ours(x)[0], reference(x)[0], torch.float64, "parametrized output")


def test_parameters_move_into_one_buffer_and_stay_torchs():
    # The first call moves the Parameters (same objects) into one flat buffer that later calls read in place; every
    # way of changing them afterwards must still be seen: load_state_dict, an in-place update, .double(), tying.
    torch.manual_seed(0)
    reference, ours = torch.nn.RNN(3, 4, num_layers=2), nt.RNN(3, 4, num_layers=2)
    ours.load_state_dict(reference.state_dict())
    parameters = list(ours.parameters())
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():  # first call under inference_mode: the buffer must still serve autograd later
        ours(x)
    assert [p for p in ours.parameters()] == parameters
    pointers = [p.data_ptr() for p in parameters]
    assert pointers == sorted(pointers) and pointers[1] - pointers[0] == 4 * 3 * 4  # adjacent, in layout order
    ours(x)[0].sum().backward()  # autograd through the moved Parameters
    torch.manual_seed(1)
    reference.load_state_dict(torch.nn.RNN(3, 4, num_layers=2).state_dict())
    ours.load_state_dict(reference.state_dict())
    assert_close(ours(x)[0], reference(x)[0], torch.float32, "after load_state_dict")
    with torch.no_grad():
        for p, q in zip(reference.parameters(), ours.parameters(), strict=True):
            p.mul_(0.5)
            q.mul_(0.5)
    assert_close(ours(x)[0], reference(x)[0], torch.float32, "after an in-place update")
    reference.double()
    ours.double()
    assert_close(ours(x.double())[0], reference(x.double())[0], torch.float64, "after .double()")
    twin = nt.RNN(3, 4, num_layers=2, dtype=torch.float64)
    twin.weight_hh_l0 = ours.weight_hh_l0  # tied: each module moves it into its own buffer in turn
    twin_reference = torch.nn.RNN(3, 4, num_layers=2, dtype=torch.float64)
    twin_reference.load_state_dict(twin.state_dict())
    for _ in range(2):
        assert_close(ours(x.double())[0], reference(x.double())[0], torch.float64, "tied, first module")
        assert_close(twin(x.double())[0], twin_reference(x.double())[0], torch.float64, "tied, second module")


@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_a_weight_whose_data_is_replaced_after_the_first_call_is_seen(kind, grad):
    # Each call checks, cheaply, that every weight still is its view of the flat buffer moved in by the first call.
    # A `.data` assignment keeps the Parameter object (and torch's list of weights) and bumps no version counter:
    # a new tensor has a new address; a transposed view of the same memory has the buffer's address but not its
    # layout (the weight is square, so only the strides tell). Both must be read as they are now.
    torch.manual_seed(0)
    reference, ours = getattr(torch.nn, kind)(4, 4), getattr(nt, kind)(4, 4)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 4) if kind == "RNN" else torch.randn(2, 4)

    def check(name):
        with torch.set_grad_enabled(grad):
            actual, expected = ours(x), reference(x)
        actual, expected = (actual[0], expected[0]) if kind == "RNN" else (actual, expected)
        assert_close(actual, expected, torch.float32, name)

    check("first call")
    name = "weight_ih_l0" if kind == "RNN" else "weight_ih"  # square: input_size == hidden_size
    replacement = torch.randn(4, 4)
    for module in (reference, ours):
        getattr(module, name).data = replacement.clone()
    check("after .data = a new tensor")
    for module in (reference, ours):
        weight = getattr(module, name)
        weight.data = weight.data.t()
    assert not getattr(ours, name).is_contiguous()
    check("after .data = its own transpose")
    check("again, once moved back into a buffer")


# -- copies, scripting, tracing, rebinding torch's classes, idioms after a forward -------------------------------


def test_copies_taken_before_during_and_after_training_compute_like_the_original():
    # best-model snapshots, EMA copies and checkpoints: deepcopy, pickle and torch.save of a model whose modules have
    # run (their Parameters live in one buffer, their plans hold locks and scratch), even while a graph is alive
    torch.manual_seed(0)
    model = nt.accelerate(Tagger())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 10, (3, 7))
    copies = [copy.deepcopy(model)]  # before any forward
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(tokens)
        copies += [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), saved_and_loaded(model)]  # graph alive
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        optimizer.step()
    copies.append(copy.deepcopy(model))
    with torch.no_grad():
        expected = model(tokens)
    for duplicate in copies:
        assert type(duplicate.rnn) is nt.RNN and type(duplicate.cell) is nt.RNNCell
        reference = Tagger()
        reference.load_state_dict(duplicate.state_dict())
        with torch.no_grad():
            assert_close(duplicate(tokens), reference(tokens), torch.float32, "a copy against torch")
    with torch.no_grad():
        assert_close(copies[-1](tokens), expected, torch.float32, "the last copy against the original")


def test_an_ema_copy_sees_its_in_place_updates():
    torch.manual_seed(0)
    model = nt.RNN(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    model(x)[0].sum().backward()
    ema = copy.deepcopy(model)
    ema(x)  # its Parameters move into its own buffer
    for _ in range(2):
        with torch.no_grad():
            for average, current in zip(ema.parameters(), model.parameters(), strict=True):
                average.mul_(0.5).add_(current + 0.1, alpha=0.5)
        reference = torch.nn.RNN(3, 4, num_layers=2)
        reference.load_state_dict(ema.state_dict())
        assert_close(ema(x)[0], reference(x)[0], torch.float32, "EMA copy")
    assert not torch.equal(ema(x)[0], model(x)[0])  # and the original is not the copy


class Stacked(torch.nn.Module):
    """An RNN and an RNNCell inside a module, the way TorchScript scripts torch's RNN (its forward is compiled only
    when called from a scripted method)."""

    def __init__(self, rnn, cell):
        super().__init__()
        self.rnn, self.cell = rnn, cell

    def forward(self, x):
        output, h_n = self.rnn(x)
        return self.cell(output[-1], h_n[-1])


def test_torch_jit_script_scripts_torchs_modules_sharing_the_parameters():
    torch.manual_seed(0)
    model = Stacked(nt.RNN(3, 4, num_layers=2), nt.RNNCell(4, 4))
    x = torch.randn(5, 2, 3)
    expected = model(x)
    scripted = torch.jit.script(model)
    assert_close(scripted(x), expected, torch.float32, "scripted")
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    assert_close(torch.jit.load(buffer)(x), expected, torch.float32, "scripted, saved and loaded")
    assert {id(p) for p in scripted.parameters()} == {id(p) for p in model.parameters()}
    # torch.jit.script puts the modules it scripted in the model's place (its __prepare_scriptable__ protocol):
    # torch's own, with the same Parameters; accelerate switches them back
    assert type(model.rnn) is torch.nn.modules.rnn.RNN
    nt.accelerate(model)
    assert type(model.rnn) is nt.RNN and torch.equal(model(x), expected)
    cell = nt.RNNCell(3, 4)  # torch scripts a bare RNNCell (not a bare RNN): so does the drop-in
    assert_close(torch.jit.script(cell)(x[0]), cell(x[0]), torch.float32, "scripted cell")


def test_scripting_a_subclass_of_a_drop_in_names_the_cause_and_the_way_out():
    class Scaled(nt.RNNCell):  # scripting torch's class in its place would drop this forward
        def forward(self, input, hx=None):
            return 2 * super().forward(input, hx)

    with pytest.raises(
        TypeError,
        match=r"subclass of numbarnn\.torch\.RNNCell: its forward runs numbarnn's Python "
        r"kernels.*Derive it from torch\.nn\.RNNCell to script it",
    ):
        torch.jit.script(Scaled(3, 4))


# torch's own RNN forward warns, under the tracer, that its shape checks turn tensors into Python booleans
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torch_jit_trace_records_torchs_forward():
    # tracing records torch operations: under the tracer the drop-in runs torch's forward (numbarnn's would be
    # recorded as constants), so the trace computes the right thing for new inputs
    torch.manual_seed(0)
    model = Stacked(nt.RNN(3, 4, num_layers=2), nt.RNNCell(4, 4))
    reference = Stacked(torch.nn.RNN(3, 4, num_layers=2), torch.nn.RNNCell(4, 4))
    reference.load_state_dict(model.state_dict())
    traced = torch.jit.trace(model, (torch.randn(5, 2, 3),))  # checks the trace against eager on its input
    x = torch.randn(6, 3, 3)
    assert_close(traced(x), reference(x), torch.float32, "traced")


def test_rebinding_torchs_classes_to_the_drop_ins_does_not_recurse(monkeypatch):
    # how some users and test suites apply a drop-in: torch.nn.RNN = numbarnn.torch.RNN. The fallbacks reach
    # torch's own forward, and accelerate still switches modules of torch's own classes made before.
    torch.manual_seed(0)
    made_before = Stacked(torch.nn.RNN(3, 4), torch.nn.RNNCell(4, 4)).to(torch.bfloat16)
    for owner in (torch.nn, torch.nn.modules.rnn, torch.nn.modules):
        monkeypatch.setattr(owner, "RNN", nt.RNN)
        monkeypatch.setattr(owner, "RNNCell", nt.RNNCell)
    assert type(torch.nn.RNNCell(3, 4)) is nt.RNNCell
    model = Stacked(torch.nn.RNN(3, 4), torch.nn.RNNCell(4, 4))
    model.load_state_dict(made_before.state_dict())
    x = torch.randn(5, 2, 3)
    expected = made_before(x.bfloat16())  # torch's own modules, in bfloat16
    assert torch.equal(model.to(torch.bfloat16)(x.bfloat16()), expected)  # the drop-ins' fallback to torch
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 7 expected 4"):
        model.cell(torch.randn(2, 7))  # the cell's error path is torch's forward too
    nt.accelerate(made_before)
    assert type(made_before.rnn) is nt.RNN and type(made_before.cell) is nt.RNNCell


@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
def test_idioms_after_a_forward_keep_matching_torch(kind):
    # flatten_parameters(), load_state_dict, .to(dtype) / .double() / .float() and a parametrization registered
    # once the Parameters live in numbarnn's buffer
    torch.manual_seed(0)
    reference, ours = getattr(torch.nn, kind)(3, 4), getattr(nt, kind)(3, 4)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn((5, 2, 3) if kind == "RNN" else (2, 3))

    def check(name, dtype=torch.float32):
        expected, actual = run_both(reference, ours, lambda: (x.to(dtype).requires_grad_(),))
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e, dtype, name)

    check("first call")
    if kind == "RNN":
        ours.flatten_parameters()
        reference.flatten_parameters()
        check("after flatten_parameters()")
    reference.load_state_dict(getattr(torch.nn, kind)(3, 4).state_dict())
    ours.load_state_dict(reference.state_dict())
    check("after load_state_dict")
    for convert in (lambda m: m.to(torch.float64), lambda m: m.float(), lambda m: m.double()):
        convert(reference)
        convert(ours)
        check("after a conversion", next(ours.parameters()).dtype)
    name = "weight_hh_l0" if kind == "RNN" else "weight_hh"
    for module in (reference, ours):
        torch.nn.utils.parametrize.register_parametrization(module, name, Doubled())
    check("parametrized", torch.float64)


class Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("hidden_size", [16, 17, 40, 64])
def test_hidden_sizes_of_the_panel_kernels_match_torch(hidden_size, dtype):
    # The per-step products run against W_hh packed in panels of 16 (float32) or 8 (float64) columns: one panel
    # exactly, one and a remainder of 1, several with a remainder, several exactly. Forward and backward, through a
    # bidirectional two-layer stack and a cell, against torch.
    torch.manual_seed(0)
    pairs = [
        (
            torch.nn.RNN(7, hidden_size, num_layers=2, bidirectional=True, dtype=dtype),
            nt.RNN(7, hidden_size, num_layers=2, bidirectional=True, dtype=dtype),
            (5, 3, 7),
        ),
        (torch.nn.RNNCell(7, hidden_size, dtype=dtype), nt.RNNCell(7, hidden_size, dtype=dtype), (3, 7)),
    ]
    for reference, ours, shape in pairs:
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(shape, dtype=dtype)
        hx = torch.randn(((4, 3) if len(shape) == 3 else (3,)) + (hidden_size,), dtype=dtype)
        expected, actual = run_both(
            reference, ours, lambda x=x, hx=hx: (x.clone().requires_grad_(), hx.clone().requires_grad_())
        )
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e, dtype, f"{type(ours).__name__}, hidden size {hidden_size}")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_changing_dropout_and_pickling_behave_as_torchs(train):
    # torch's test_nn RNN dropout tests (test_RNN_change_dropout, test_RNN_dropout_state), on both classes
    for cls in (torch.nn.modules.rnn.RNN, nt.RNN):
        torch.manual_seed(0)
        rnn = cls(10, 10, 2, dropout=0, nonlinearity="relu").train(train)
        x = torch.rand(3, 2, 10)
        for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
            rnn.dropout = p
            output1, h1 = rnn(x)
            output2, h2 = rnn(x)
            output3, h3 = pickle.loads(pickle.dumps(rnn))(x)
            deterministic = p in (0, 1) or not train
            for a, b in ((output1, output2), (h1, h2), (output1, output3), (h1, h3)):
                assert torch.equal(a, b) == deterministic, (cls.__module__, p)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1:UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # torch's own shape checks, traced
def test_a_tracing_onnx_export_of_a_drop_in_records_torchs_rnn():
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nt.RNN(3, 4, num_layers=2, bidirectional=True).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.randn(5, 2, 3),),
        buffer,
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "steps", 1: "batch"}},
    )
    session = onnxruntime.InferenceSession(buffer.getvalue())
    x = torch.randn(7, 3, 3)  # another shape: nothing of the traced call is baked in
    with torch.no_grad():
        expected = model(x)
    for actual, wanted in zip(session.run(None, {"x": x.numpy()}), expected, strict=True):
        assert_close(torch.from_numpy(actual), wanted, torch.float32, "ONNX Runtime against the module")
