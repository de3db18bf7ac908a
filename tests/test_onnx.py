"""numbarnn.onnx: exported graphs (RNN, LSTM, GRU) pass onnx.checker and give numbarnn's results in ONNX Runtime,
load reads them (and torch's exporter's RNN, LSTM and GRU graphs) back, and unmappable graphs get errors naming the
node."""

import itertools
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from helpers import assert_close, pairwise_cases
from onnx import helper

import numbarnn
import numbarnn.onnx
from numbarnn.__main__ import main
from numbarnn.onnx import ONNXMappingError

INPUT_SIZE, HIDDEN, OUTPUTS = 3, 5, 4
STEPS, BATCH = 6, 4

# Every option of export that changes the graph or the computation, and its values.
OPTIONS = {
    "nonlinearity": ["tanh", "relu"],
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "bias": [True, False],
    "batch_first": [False, True],
    "lengths": [False, True],
    "h_0": [False, True],
    "head": [False, True],
}


# The gated cells: the same options with the cell in place of the nonlinearity, and hidden sizes that reach the
# panel kernels' full and partial panels (16, 40) besides the small one.
GATED_OPTIONS = {
    "cell": ["LSTM", "GRU"],
    "hidden_size": [5, 16, 40],
    **{name: values for name, values in OPTIONS.items() if name != "nonlinearity"},
}


def _pairs(case, options):
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(options, 2)}


CASES = pairwise_cases(OPTIONS)
GATED_CASES = pairwise_cases(GATED_OPTIONS)


def _case_id(case):
    kind = [case["cell"], f"H{case['hidden_size']}"] if "cell" in case else [case["nonlinearity"]]
    return "-".join(
        kind
        + [f"L{case['num_layers']}"]
        + [name for name in ("bidirectional", "bias", "batch_first", "lengths", "h_0", "head") if case[name]]
    )


def _session(path):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the test machine's cores are shared
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _modules(case, dtype=np.float32):
    """The case's numbarnn.RNN (a case with "cell": LSTM or GRU) in eval mode, and its head or None."""
    cell = case.get("cell", "RNN")
    hidden = case.get("hidden_size", HIDDEN)
    arguments = dict(
        bias=case["bias"],
        batch_first=case["batch_first"],
        bidirectional=case["bidirectional"],
        dropout=case.get("dropout", 0.0),
        dtype=dtype,
        seed=7,
    )
    if cell == "RNN":
        arguments["nonlinearity"] = case["nonlinearity"]
    rnn = getattr(numbarnn, cell)(INPUT_SIZE, hidden, case["num_layers"], **arguments).eval()
    head = (
        numbarnn.Linear(
            rnn.num_directions * hidden, OUTPUTS, bias=case.get("head_bias", True), dtype=dtype, seed=8
        ).eval()
        if case["head"]
        else None
    )
    return rnn, head


def _state_names(rnn, when):
    """The graph's names of the state's parts: h_0 (, c_0) when="0", h_n (, c_n) when="n"."""
    return [f"{part}_{when}" for part in (("h", "c") if isinstance(rnn, numbarnn.LSTM) else ("h",))]


def _inputs(case, rnn, rng):
    shape = (BATCH, STEPS, INPUT_SIZE) if rnn.batch_first else (STEPS, BATCH, INPUT_SIZE)
    feeds = {"input": rng.standard_normal(shape).astype(rnn.dtype)}
    if case["h_0"]:
        for name in _state_names(rnn, "0"):
            feeds[name] = rng.standard_normal((rnn.num_directions * rnn.num_layers, BATCH, rnn.hidden_size)).astype(
                rnn.dtype
            )
    if case["lengths"]:
        feeds["lengths"] = np.array([STEPS, 2, 1, 4], np.int32)  # unsorted, full length and length 1 included
    return feeds


def _initial_state(rnn, feeds):
    """numbarnn's h_0 argument from the graph's feeds: h_0, an LSTM's (h_0, c_0), or None."""
    parts = [feeds[name] for name in _state_names(rnn, "0") if name in feeds]
    return None if not parts else tuple(parts) if len(parts) == 2 else parts[0]


def _parts(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("options, cases, full_product", [(OPTIONS, CASES, 384), (GATED_OPTIONS, GATED_CASES, 1152)])
def test_covering_cases_hold_every_pair_of_options(options, cases, full_product):
    every_pair = {
        ((a, x), (b, y)) for a, b in itertools.combinations(options, 2) for x in options[a] for y in options[b]
    }
    covered = set().union(*(_pairs(case, options) for case in cases))
    assert covered == every_pair
    assert len(cases) < 20 and np.prod([len(values) for values in options.values()]) == full_product


# ORT and numbarnn compute the same float32 sums in different orders, with different tanh approximations: each value
# is a chain of at most 3 layers x 6 steps of O(1) terms, so they agree to a few float32 ulps (measured: 2.5e-7).
# helpers.assert_close's float32 tolerances (rtol 1e-5, atol 5e-6) hold that with a wide margin.
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_onnx_runtime_matches_numbarnn(case, tmp_path, rng):
    _check_onnx_runtime_matches_numbarnn(case, tmp_path, rng)


# The same argument holds for LSTM and GRU: a gate is the same O(1) sum as an RNN's step, through sigmoid and tanh
# (Lipschitz 1/4 and 1), and c_t = f c_{t-1} + i g adds at most one O(1) term per step; the sums grow to H_in + H =
# 43 terms of weights U(-1/sqrt(H), 1/sqrt(H)), so the rounding stays a few ulps of O(1) values (measured over this
# grid with three seeds: 2.4e-7), as in test_lstm.py and test_gru.py, which hold H up to 64 to the same tolerances.
@pytest.mark.parametrize("case", GATED_CASES, ids=_case_id)
def test_onnx_runtime_matches_numbarnn_lstm_and_gru(case, tmp_path, rng):
    _check_onnx_runtime_matches_numbarnn(case, tmp_path, rng)


def _check_onnx_runtime_matches_numbarnn(case, tmp_path, rng):
    rnn, head = _modules(case)
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head, h_0=case["h_0"], lengths=case["lengths"])
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {node.op_type for node in model.graph.node} >= {case.get("cell", "RNN")}
    feeds = _inputs(case, rnn, rng)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(feeds)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    final_names = _state_names(rnn, "n")
    assert list(results) == ["output", *final_names] + ["logits"] * case["head"]
    output, final = rnn(feeds["input"], _initial_state(rnn, feeds), lengths=feeds.get("lengths"))
    assert_close(results["output"], output, np.float32, "output")
    for name, part in zip(final_names, _parts(final), strict=True):
        assert_close(results[name], part, np.float32, name)
    if head is not None:
        assert_close(results["logits"], head(output), np.float32, "logits")
    if case["lengths"]:
        # ONNX Runtime's own semantics, which must be numbarnn's: zeros past each length, and h_n of the last layer
        # is the forward state at each sequence's own last step and the reverse state at its first step.
        time_major = results["output"].transpose(1, 0, 2) if rnn.batch_first else results["output"]
        directions, hidden = rnn.num_directions, rnn.hidden_size
        for n, length in enumerate(feeds["lengths"]):
            assert not time_major[length:, n].any()
            np.testing.assert_array_equal(results["h_n"][-directions, n], time_major[length - 1, n, :hidden])
            if directions == 2:
                np.testing.assert_array_equal(results["h_n"][-1, n], time_major[0, n, hidden:])


def _gated(case, cell, hidden_size=16):
    """``case`` (an RNN case) for ``cell``: the same options, with the gated cases' keys."""
    if cell == "RNN":
        return case
    return dict(
        {key: value for key, value in case.items() if key != "nonlinearity"}, cell=cell, hidden_size=hidden_size
    )


def _run(session, feeds):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_onnx_runtime_takes_any_sequence_length_and_batch(cell, tmp_path, rng):
    rnn, head = _modules(_gated(dict(CASES[0], num_layers=2, bidirectional=True, head=True), cell))
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head)
    session = _session(path)
    for steps, batch in [(1, 1), (9, 2)]:
        x = rng.standard_normal((batch, steps, INPUT_SIZE) if rnn.batch_first else (steps, batch, INPUT_SIZE))
        x = x.astype(np.float32)
        results = _run(session, {"input": x})
        expected_output, expected_final = rnn(x)
        assert_close(results["output"], expected_output, np.float32, "output")
        for name, part in zip(_state_names(rnn, "n"), _parts(expected_final), strict=True):
            assert_close(results[name], part, np.float32, name)
        assert_close(results["logits"], head(expected_output), np.float32, "logits")


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_float64_module_is_exported_in_float32_with_a_warning(cell, tmp_path, rng):
    case = _gated(dict(CASES[0], head=True, h_0=False, lengths=False), cell)
    rnn, head = _modules(case, dtype=np.float64)
    path = tmp_path / "model.onnx"
    with pytest.warns(UserWarning, match="float64; numbarnn.onnx.export writes float32"):
        numbarnn.onnx.export(path, rnn, head)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {t.data_type for t in model.graph.initializer if t.name.startswith(("W", "R", "B", "head"))} == {
        onnx.TensorProto.FLOAT
    }
    x = rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if rnn.batch_first else (STEPS, BATCH, INPUT_SIZE))
    results = _run(_session(path), {"input": x.astype(np.float32)})
    expected_output, _ = rnn(x)
    # float32 parameters and arithmetic against float64: the float32 rounding bounds the difference, as above.
    assert_close(results["output"], expected_output, np.float32, "output")
    assert_close(results["logits"], head(expected_output), np.float32, "logits")


_ROUND_TRIP = dict(h_0=True, lengths=True, head_bias=False)  # a head without bias: load must not invent one


@pytest.mark.parametrize(
    "case",
    [
        dict(
            CASES[0],
            **_ROUND_TRIP,
            num_layers=3,
            bidirectional=True,
            bias=False,
            batch_first=True,
            head=True,
            dropout=0.25,
        ),
        dict(CASES[0], **_ROUND_TRIP, num_layers=1, bidirectional=False, bias=True, batch_first=False, head=False),
        dict(
            CASES[0],
            **_ROUND_TRIP,
            nonlinearity="relu",
            num_layers=2,
            bidirectional=False,
            bias=True,
            head=True,
            dropout=0.25,
        ),
        dict(
            _ROUND_TRIP,
            cell="LSTM",
            hidden_size=16,
            num_layers=3,
            bidirectional=True,
            bias=False,
            batch_first=True,
            head=True,
            dropout=0.25,
        ),
        dict(
            _ROUND_TRIP,
            cell="LSTM",
            hidden_size=5,
            num_layers=1,
            bidirectional=True,
            bias=True,
            batch_first=False,
            head=False,
        ),
        dict(
            _ROUND_TRIP,
            cell="GRU",
            hidden_size=17,
            num_layers=2,
            bidirectional=False,
            bias=True,
            batch_first=False,
            head=True,
            dropout=0.25,
        ),
        dict(
            _ROUND_TRIP,
            cell="GRU",
            hidden_size=40,
            num_layers=1,
            bidirectional=True,
            bias=False,
            batch_first=True,
            head=False,
        ),
    ],
    ids=_case_id,
)
def test_export_then_load_gives_identical_modules(case, tmp_path, rng):
    rnn, head = _modules(case)
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head, h_0=True, lengths=True)
    loaded = numbarnn.onnx.load(path)
    assert set(loaded) == ({"rnn", "head"} if head is not None else {"rnn"})
    restored = loaded["rnn"]
    assert type(restored) is type(rnn)
    names = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "dtype"]
    names += ["nonlinearity"] if isinstance(rnn, numbarnn.RNN) else ["proj_size"] * isinstance(rnn, numbarnn.LSTM)
    for name in names:
        assert getattr(restored, name) == getattr(rnn, name), name
    assert not restored.training
    assert list(restored.params) == list(rnn.params)
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(restored.params[name], value, err_msg=name)
    state_dict = restored.state_dict()
    assert list(state_dict) == list(rnn.state_dict())
    for name, value in rnn.state_dict().items():
        np.testing.assert_array_equal(state_dict[name], value, err_msg=name)
    # the same parameters run by the same kernels: the same outputs, to the bit
    feeds = _inputs(case, rnn, rng)
    arguments = (feeds["input"], _initial_state(rnn, feeds), feeds["lengths"])
    (output, final), (expected_output, expected_final) = restored(*arguments), rnn(*arguments)
    for actual, expected in zip([output, *_parts(final)], [expected_output, *_parts(expected_final)], strict=True):
        np.testing.assert_array_equal(actual, expected)
    if head is not None:
        assert (loaded["head"].in_features, loaded["head"].out_features, loaded["head"].bias_enabled) == (
            head.in_features,
            head.out_features,
            head.bias_enabled,
        )
        np.testing.assert_array_equal(loaded["head"].weight, head.weight)


# -- graphs written by torch.onnx.export ------------------------------------------------------------------------
class _TorchModel(torch.nn.Module):
    def __init__(self, rnn, head):
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x, h_0=None):  # h_0: an LSTM's (h_0, c_0), whose h_n is (h_n, c_n)
        output, h_n = self.rnn(x, h_0)
        return (output if self.head is None else self.head(output)), h_n


def _torch_export(model, args, path, input_names):
    # torch 2.13's default (dynamo) exporter unrolls the recurrence into MatMul and Tanh nodes (and needs
    # onnxscript); the TorchScript exporter writes ONNX RNN nodes, which is what load() maps.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message="Exporting a model to ONNX with a batch_size other than 1", category=UserWarning
        )
        # tracing the shape checks of nn.RNN.forward: they hold for the traced input; the dynamic axes keep L, N free
        warnings.filterwarnings(
            "ignore", message="Converting a tensor to a Python boolean", category=torch.jit.TracerWarning
        )
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=input_names,
            dynamo=False,
            dynamic_axes={name: {0: "dim0", 1: "dim1"} for name in input_names[:1]},
        )


@pytest.mark.parametrize(
    "nonlinearity, num_layers, bidirectional, bias, batch_first, with_h_0, with_head",
    [
        ("relu", 2, True, True, True, True, True),
        ("tanh", 3, False, False, False, False, False),
        ("tanh", 1, True, True, False, False, True),
    ],
)
def test_load_reads_torch_onnx_export_of_an_rnn(
    nonlinearity, num_layers, bidirectional, bias, batch_first, with_h_0, with_head, tmp_path, rng
):
    torch.manual_seed(0)
    reference = torch.nn.RNN(
        INPUT_SIZE,
        HIDDEN,
        num_layers,
        nonlinearity=nonlinearity,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
    )
    directions = 2 if bidirectional else 1
    head = torch.nn.Linear(directions * HIDDEN, OUTPUTS) if with_head else None
    model = _TorchModel(reference, head).eval()
    x = torch.from_numpy(
        rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE)).astype(
            np.float32
        )
    )
    h_0 = torch.from_numpy(rng.standard_normal((directions * num_layers, BATCH, HIDDEN)).astype(np.float32))
    path = tmp_path / "torch.onnx"
    _torch_export(model, (x, h_0) if with_h_0 else (x,), path, ["input", "h_0"] if with_h_0 else ["input"])
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert "RNN" in {node.op_type for node in onnx.load(path).graph.node}

    loaded = numbarnn.onnx.load(path)
    assert set(loaded) == ({"rnn", "head"} if with_head else {"rnn"})
    rnn = loaded["rnn"]
    assert (rnn.nonlinearity, rnn.num_layers, rnn.bidirectional, rnn.bias, rnn.batch_first) == (
        nonlinearity,
        num_layers,
        bidirectional,
        bias,
        batch_first,
    )
    output, h_n = rnn(x.numpy(), h_0.numpy() if with_h_0 else None)
    with torch.no_grad():
        expected, expected_h_n = model(x, h_0 if with_h_0 else None)
    assert_close(loaded["head"](output) if with_head else output, expected, np.float32, "output")
    assert_close(h_n, expected_h_n, np.float32, "h_n")


@pytest.mark.parametrize(
    "cell, hidden, num_layers, bidirectional, bias, batch_first, with_h_0, with_head",
    [
        ("LSTM", 16, 2, True, True, True, True, True),
        ("LSTM", 5, 1, False, False, False, False, False),
        ("LSTM", 17, 3, False, True, False, False, True),
        ("GRU", 16, 3, False, True, False, True, False),
        ("GRU", 5, 2, True, False, True, False, True),
        ("GRU", 40, 1, True, True, False, True, False),
    ],
)
def test_load_reads_torch_onnx_export_of_an_lstm_or_gru(
    cell, hidden, num_layers, bidirectional, bias, batch_first, with_h_0, with_head, tmp_path, rng
):
    torch.manual_seed(0)
    reference = getattr(torch.nn, cell)(
        INPUT_SIZE, hidden, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    )
    directions = 2 if bidirectional else 1
    head = torch.nn.Linear(directions * hidden, OUTPUTS) if with_head else None
    model = _TorchModel(reference, head).eval()
    x = torch.from_numpy(
        rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE)).astype(
            np.float32
        )
    )
    state_names = ["h_0", "c_0"] if cell == "LSTM" else ["h_0"]
    parts = [
        torch.from_numpy(rng.standard_normal((directions * num_layers, BATCH, hidden)).astype(np.float32))
        for _ in state_names
    ]
    state = (tuple(parts) if cell == "LSTM" else parts[0]) if with_h_0 else None
    path = tmp_path / "torch.onnx"
    _torch_export(model, (x, state) if with_h_0 else (x,), path, ["input", *state_names] if with_h_0 else ["input"])
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    assert [node.op_type for node in graph.graph.node].count(cell) == num_layers

    loaded = numbarnn.onnx.load(path)
    assert set(loaded) == ({"rnn", "head"} if with_head else {"rnn"})
    module = loaded["rnn"]
    assert type(module) is getattr(numbarnn, cell)
    assert (module.hidden_size, module.num_layers, module.bidirectional, module.bias, module.batch_first) == (
        hidden,
        num_layers,
        bidirectional,
        bias,
        batch_first,
    )
    # the weights are torch's, gates back in torch's order (a mix-up of gates would still run, but not match)
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(module.params[name], value.numpy(), err_msg=name)
    output, final = module(
        x.numpy(), None if state is None else tuple(p.numpy() for p in state) if cell == "LSTM" else state.numpy()
    )
    with torch.no_grad():
        expected, expected_final = model(x, state)
    assert_close(loaded["head"](output) if with_head else output, expected, np.float32, "output")
    for index, (part, expected_part) in enumerate(zip(_parts(final), _parts(expected_final), strict=True)):
        assert_close(part, expected_part, np.float32, f"final state [{index}]")


def test_load_reads_constant_nodes_and_a_gemm_head(tmp_path):
    # Other exporters store weights as Constant nodes and write a head on 2-D rows as Reshape + Gemm(transB=1).
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, 2, bidirectional=True, seed=7)
    head = numbarnn.Linear(2 * HIDDEN, OUTPUTS, seed=8)
    model = numbarnn.onnx.export(tmp_path / "model.onnx", rnn, head)
    graph = model.graph
    kept = [node for node in graph.node if node.op_type not in ("MatMul", "Add")]
    constants = [
        helper.make_node("Constant", [], [tensor.name], value=tensor)
        for tensor in graph.initializer
        if not tensor.name.startswith("head")
    ]
    rows_shape = onnx.numpy_helper.from_array(np.array([-1, 2 * HIDDEN], np.int64), "rows_shape")
    gemm_head = [
        helper.make_node("Reshape", ["output", "rows_shape"], ["rows"], name="rows"),
        helper.make_node("Gemm", ["rows", "gemm_weight", "gemm_bias"], ["logits"], name="gemm", transB=1),
    ]
    initializers = [
        rows_shape,
        onnx.numpy_helper.from_array(head.weight, "gemm_weight"),
        onnx.numpy_helper.from_array(head.bias, "gemm_bias"),
    ]
    del graph.node[:], graph.initializer[:], model.metadata_props[:]
    graph.node.extend(constants + kept + gemm_head)
    graph.initializer.extend(initializers)
    graph.output[2].CopyFrom(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["rows", OUTPUTS]))
    onnx.checker.check_model(model, full_check=True)
    loaded = numbarnn.onnx.load(model)
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(loaded["rnn"].params[name], value, err_msg=name)
    np.testing.assert_array_equal(loaded["head"].weight, head.weight)
    np.testing.assert_array_equal(loaded["head"].bias, head.bias)


# -- graphs load() cannot map --------------------------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path):
    """A 2-layer bidirectional RNN with a head, exported, as an onnx.ModelProto to modify."""
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, 2, bidirectional=True, seed=7)
    head = numbarnn.Linear(2 * HIDDEN, OUTPUTS, seed=8)
    return numbarnn.onnx.export(tmp_path / "model.onnx", rnn, head)


def _rnn_node(model, layer=0, op="RNN"):
    return [node for node in model.graph.node if node.op_type == op][layer]


def test_load_names_an_operator_it_cannot_map(exported):
    exported.graph.node.append(helper.make_node("Tanh", ["logits"], ["squashed"], name="extra_tanh"))
    with pytest.raises(ONNXMappingError, match=r"cannot map node #\d+ 'extra_tanh' \(Tanh\).*dynamo=False"):
        numbarnn.onnx.load(exported)


def _set_attribute(node, name, value=None):
    """Replace (or with value None, remove) attribute ``name`` of ``node``."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + ([] if value is None else [helper.make_attribute(name, value)]))


def test_load_rejects_a_gru_that_resets_before_the_linear_map(tmp_path):
    model = numbarnn.onnx.export(tmp_path / "model.onnx", numbarnn.GRU(INPUT_SIZE, HIDDEN, seed=7))
    _set_attribute(_rnn_node(model, op="GRU"), "linear_before_reset", 0)
    with pytest.raises(
        ONNXMappingError,
        match=r"'gru_l0' \(GRU\): linear_before_reset=0 \(the reset gate applied "
        r"to h before R.*which is linear_before_reset=1",
    ):
        numbarnn.onnx.load(model)
    # ONNX's default is 0, so a GRU node without the attribute is not torch's GRU either
    _set_attribute(_rnn_node(model, op="GRU"), "linear_before_reset")
    with pytest.raises(ONNXMappingError, match=r"linear_before_reset=0"):
        numbarnn.onnx.load(model)


@pytest.mark.parametrize(
    "attribute, value, message",
    [
        ("input_forget", 1, r"input_forget=1: numbarnn's LSTM is torch's, which is input_forget=0"),
        (
            "activations",
            ["Sigmoid", "Tanh", "Relu"] * 2,
            r"activations=\['Sigmoid', 'Tanh', 'Relu', .*torch's, "
            r"activations \['Sigmoid', 'Tanh', 'Tanh', ",
        ),
        ("clip", 3.0, r"attribute 'clip': numbarnn's LSTM has no clipping"),
        ("direction", "reverse", "direction='reverse': a numbarnn LSTM runs forward or bidirectional"),
    ],
)
def test_load_rejects_lstm_attributes_torch_does_not_have(attribute, value, message, tmp_path):
    model = numbarnn.onnx.export(tmp_path / "model.onnx", numbarnn.LSTM(INPUT_SIZE, HIDDEN, bidirectional=True))
    _set_attribute(_rnn_node(model, op="LSTM"), attribute, value)
    with pytest.raises(ONNXMappingError, match=r"'lstm_l0' \(LSTM\): " + message):
        numbarnn.onnx.load(model)


def test_load_rejects_lstm_peepholes_but_reads_zero_ones(tmp_path):
    lstm = numbarnn.LSTM(INPUT_SIZE, HIDDEN, seed=7)
    model = numbarnn.onnx.export(tmp_path / "model.onnx", lstm)
    node = _rnn_node(model, op="LSTM")
    node.input.extend([""] * (7 - len(node.input)) + ["P"])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 3 * HIDDEN), np.float32), "P"))
    assert numbarnn.onnx.load(model)["rnn"].hidden_size == HIDDEN  # zero peepholes are no peepholes
    model.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(np.full((1, 3 * HIDDEN), 0.5, np.float32), "P"))
    with pytest.raises(ONNXMappingError, match=r"'lstm_l0' \(LSTM\): its P \('P'\) holds peephole weights"):
        numbarnn.onnx.load(model)


def test_load_rejects_layers_of_different_operators(tmp_path):
    # layer 1 of a 2-layer LSTM replaced by layer 1 of a GRU of the same sizes (and its weights)
    lstm_model = numbarnn.onnx.export(tmp_path / "lstm.onnx", numbarnn.LSTM(INPUT_SIZE, HIDDEN, 2, seed=7))
    gru_model = numbarnn.onnx.export(tmp_path / "gru.onnx", numbarnn.GRU(INPUT_SIZE, HIDDEN, 2, seed=7))
    gru_layer = {tensor.name: tensor for tensor in gru_model.graph.initializer if tensor.name.endswith("_l1")}
    for tensor in lstm_model.graph.initializer:
        if tensor.name in gru_layer:
            tensor.CopyFrom(gru_layer[tensor.name])
    _rnn_node(lstm_model, 1, op="LSTM").CopyFrom(_rnn_node(gru_model, 1, op="GRU"))
    with pytest.raises(
        ONNXMappingError,
        match=r"'gru_l1' \(GRU\): its op is GRU, but the first recurrent node's is "
        r"LSTM",
    ):
        numbarnn.onnx.load(lstm_model)


@pytest.mark.parametrize("cell, state", [("LSTM", "c"), ("GRU", "h")])
def test_load_rejects_a_head_applied_to_a_final_state(cell, state, tmp_path):
    module = getattr(numbarnn, cell)(INPUT_SIZE, HIDDEN, 2, bidirectional=True, seed=7)
    model = numbarnn.onnx.export(tmp_path / "model.onnx", module, numbarnn.Linear(2 * HIDDEN, OUTPUTS, seed=8))
    matmul = next(node for node in model.graph.node if node.op_type == "MatMul")
    matmul.input[0] = f"Y_{state}_l1"  # the last layer's final state, straight from its node
    with pytest.raises(ONNXMappingError, match=rf"the head reads the final state Y_{state} \({state}_n\)"):
        numbarnn.onnx.load(model)


@pytest.mark.parametrize(
    "attribute, value, message",
    [
        ("direction", "reverse", "direction='reverse': a numbarnn RNN runs forward or bidirectional"),
        ("clip", 1.0, "attribute 'clip'"),
        ("activations", ["Sigmoid", "Sigmoid"], r"activations=\['Sigmoid', 'Sigmoid'\]"),
        ("layout", 1, "layout=1"),
    ],
)
def test_load_rejects_rnn_attributes_numbarnn_does_not_have(exported, attribute, value, message):
    _set_attribute(_rnn_node(exported), attribute, value)
    with pytest.raises(ONNXMappingError, match=r"cannot map node #\d+ 'rnn_l0' \(RNN\): " + message):
        numbarnn.onnx.load(exported)


def test_load_rejects_a_head_applied_to_h_n(exported):
    matmul = next(node for node in exported.graph.node if node.op_type == "MatMul")
    matmul.input[0] = "h_n"
    with pytest.raises(ONNXMappingError, match=r"'head_matmul' \(MatMul\): the head reads node .*'h_n_concat'"):
        numbarnn.onnx.load(exported)


def test_load_rejects_a_nonzero_constant_initial_state(exported):
    state = np.ones((2, 1, HIDDEN), np.float32)
    exported.graph.initializer.append(onnx.numpy_helper.from_array(state, "stored_state"))
    node = _rnn_node(exported)
    node.input.extend(["", "stored_state"])
    with pytest.raises(ONNXMappingError, match="initial_h is a non-zero constant"):
        numbarnn.onnx.load(exported)


def test_load_rejects_a_graph_without_rnn_nodes():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "empty",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ONNXMappingError, match=r"no recurrent node \(ONNX RNN, LSTM or GRU\)"):
        numbarnn.onnx.load(helper.make_model(graph))


def test_load_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such ONNX file.*missing.onnx"):
        numbarnn.onnx.load(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ((numbarnn.RNNCell(3, 5),), TypeError, "exports a numbarnn.RNN, LSTM or GRU, got RNNCell"),
        ((numbarnn.LSTMCell(3, 5),), TypeError, "exports a numbarnn.RNN, LSTM or GRU, got LSTMCell"),
        ((numbarnn.RNN(3, 5), numbarnn.Linear(4, 2)), ValueError, "head.in_features must equal .* 5, got .*=4"),
        ((numbarnn.RNN(3, 5), "head"), TypeError, "head must be a numbarnn.Linear"),
        (
            (numbarnn.GRU(3, 5, bidirectional=True), numbarnn.Linear(5, 2)),
            ValueError,
            "the GRU's output width D \\* hidden_size = 10, got .*=5",
        ),
    ],
)
def test_export_rejects_bad_arguments(arguments, error, message, tmp_path):
    with pytest.raises(error, match=message):
        numbarnn.onnx.export(tmp_path / "model.onnx", *arguments)


def test_export_rejects_an_lstm_with_a_projection(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(
        ValueError,
        match=r"cannot export an LSTM with proj_size=4: ONNX's LSTM operator has no "
        r"projection .*export an LSTM with proj_size=0",
    ):
        numbarnn.onnx.export(path, numbarnn.LSTM(3, 8, proj_size=4))
    assert not path.exists()


@pytest.mark.parametrize("opset", [13, 1000, "17"])
def test_export_rejects_an_unknown_opset(opset, tmp_path):
    with pytest.raises(ValueError, match=f"opset must be an int from 14 to .*got {opset!r}"):
        numbarnn.onnx.export(tmp_path / "model.onnx", numbarnn.RNN(3, 5), opset=opset)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("opset", [14, onnx.defs.onnx_opset_version()])
def test_export_writes_the_opset_asked_for(opset, cell, tmp_path):
    model = numbarnn.onnx.export(tmp_path / "model.onnx", getattr(numbarnn, cell)(3, 5, seed=0), opset=opset)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    onnx.checker.check_model(onnx.load(tmp_path / "model.onnx"), full_check=True)


# -- command line --------------------------------------------------------------------------------------------------
def test_cli_exports_the_demo_model(tmp_path, capsys, rng):
    checkpoint, exported_path = tmp_path / "demo.npz", tmp_path / "demo.onnx"
    assert (
        main(
            [
                "demo",
                "--steps",
                "2",
                "--hidden",
                "8",
                "--batch",
                "2",
                "--seq-len",
                "5",
                "--samples",
                "0",
                "--save",
                str(checkpoint),
            ]
        )
        == 0
    )
    assert main(["export", str(checkpoint), str(exported_path), "--lengths"]) == 0
    assert f"wrote {exported_path}" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(exported_path), full_check=True)
    saved = numbarnn.load(checkpoint)
    rnn, head = saved["rnn"].eval(), saved["head"].eval()
    x = rng.standard_normal((STEPS, 2, rnn.input_size)).astype(np.float32)
    lengths = np.array([STEPS, 3], np.int32)
    output, h_n, logits = _session(exported_path).run(None, {"input": x, "lengths": lengths})
    expected_output, expected_h_n = rnn(x, lengths=lengths)
    assert_close(output, expected_output, np.float32, "output")
    assert_close(h_n, expected_h_n, np.float32, "h_n")
    assert_close(logits, head(expected_output), np.float32, "logits")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cli_exports_an_lstm_or_gru_checkpoint(cell, tmp_path, capsys, rng):
    checkpoint, exported_path = tmp_path / "model.npz", tmp_path / "model.onnx"
    module = getattr(numbarnn, cell)(INPUT_SIZE, 16, 2, bidirectional=True, seed=7).eval()
    numbarnn.save(checkpoint, rnn=module)
    assert main(["export", str(checkpoint), str(exported_path), "--h0"]) == 0
    state_inputs, state_outputs = _state_names(module, "0"), _state_names(module, "n")
    assert f"inputs input, {', '.join(state_inputs)}; outputs output, {', '.join(state_outputs)}" in (
        capsys.readouterr().out
    )
    feeds = {"input": rng.standard_normal((STEPS, 2, INPUT_SIZE)).astype(np.float32)}
    feeds.update({name: rng.standard_normal((4, 2, 16)).astype(np.float32) for name in state_inputs})
    results = _run(_session(exported_path), feeds)
    expected_output, expected_final = module(feeds["input"], _initial_state(module, feeds))
    assert_close(results["output"], expected_output, np.float32, "output")
    for name, part in zip(state_outputs, _parts(expected_final), strict=True):
        assert_close(results[name], part, np.float32, name)


def test_cli_export_explains_a_checkpoint_it_cannot_export(tmp_path, capsys):
    checkpoint = tmp_path / "cell.npz"
    numbarnn.save(checkpoint, cell=numbarnn.RNNCell(3, 5))
    assert main(["export", str(checkpoint), str(tmp_path / "cell.onnx")]) == 2
    assert "export needs exactly one RNN, LSTM or GRU and at most one Linear head" in capsys.readouterr().err
    numbarnn.save(checkpoint, lstm=numbarnn.LSTM(3, 8, proj_size=4))
    assert main(["export", str(checkpoint), str(tmp_path / "lstm.onnx")]) == 2
    assert "cannot export an LSTM with proj_size=4" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")]) == 2
    assert "No such checkpoint file" in capsys.readouterr().err


def test_numbarnn_and_its_command_line_do_not_import_onnx():
    code = (
        "import sys, numbarnn, numbarnn.__main__, numbarnn.cli.export; "
        "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    )
    root = str(pathlib.Path(__file__).resolve().parents[1])  # this checkout's numbarnn, not an installed one
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_speed_script_times_both_libraries_in_fresh_processes():
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "onnx_vs_numbarnn.py"),
            "--configs",
            "stream",
            "--cells",
            "rnn",
            "lstm",
            "gru",
            "--rounds",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = result.stdout.strip().splitlines()[-3:]
    for cell, row in zip(("rnn", "lstm", "gru"), rows, strict=True):
        name, ort_ms, numbarnn_ms, ratio = (field.strip() for field in row.split("|"))
        assert name.startswith(f"{cell} stream (1, 1,")
        assert float(ort_ms) > 0 and float(numbarnn_ms) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
