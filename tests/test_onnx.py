"""numbarnn.onnx: exported graphs pass onnx.checker and give numbarnn's results in ONNX Runtime, load reads them
(and torch's exporter's RNN graphs) back, and unmappable graphs get errors naming the node."""

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


def _pairs(case):
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(OPTIONS, 2)}


CASES = pairwise_cases(OPTIONS)


def _case_id(case):
    return "-".join([case["nonlinearity"], f"L{case['num_layers']}"]
                    + [name for name in ("bidirectional", "bias", "batch_first", "lengths", "h_0", "head")
                       if case[name]])


def _session(path):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the test machine's cores are shared
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _modules(case, dtype=np.float32):
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, case["num_layers"], nonlinearity=case["nonlinearity"], bias=case["bias"],
                       batch_first=case["batch_first"], bidirectional=case["bidirectional"], dtype=dtype,
                       seed=7).eval()
    head = numbarnn.Linear(rnn.num_directions * HIDDEN, OUTPUTS, dtype=dtype, seed=8).eval() if case["head"] else None
    return rnn, head


def _inputs(case, rnn, rng):
    shape = (BATCH, STEPS, INPUT_SIZE) if rnn.batch_first else (STEPS, BATCH, INPUT_SIZE)
    feeds = {"input": rng.standard_normal(shape).astype(rnn.dtype)}
    if case["h_0"]:
        feeds["h_0"] = rng.standard_normal((rnn.num_directions * rnn.num_layers, BATCH, HIDDEN)).astype(rnn.dtype)
    if case["lengths"]:
        feeds["lengths"] = np.array([STEPS, 2, 1, 4], np.int32)  # unsorted, full length and length 1 included
    return feeds


def test_covering_cases_hold_every_pair_of_options():
    every_pair = {((a, x), (b, y)) for a, b in itertools.combinations(OPTIONS, 2)
                  for x in OPTIONS[a] for y in OPTIONS[b]}
    covered = set().union(*(_pairs(case) for case in CASES))
    assert covered == every_pair
    assert len(CASES) < 20  # far fewer than the 384 rows of the full product


# ORT and numbarnn compute the same float32 sums in different orders, with different tanh approximations: each value
# is a chain of at most 3 layers x 6 steps of O(1) terms, so they agree to a few float32 ulps (measured: 2.5e-7).
# helpers.assert_close's float32 tolerances (rtol 1e-5, atol 5e-6) hold that with a wide margin.
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_onnx_runtime_matches_numbarnn(case, tmp_path, rng):
    rnn, head = _modules(case)
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head, h_0=case["h_0"], lengths=case["lengths"])
    onnx.checker.check_model(onnx.load(path), full_check=True)
    feeds = _inputs(case, rnn, rng)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(feeds)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert list(results) == ["output", "h_n"] + ["logits"] * case["head"]
    output, h_n = rnn(feeds["input"], feeds.get("h_0"), lengths=feeds.get("lengths"))
    assert_close(results["output"], output, np.float32, "output")
    assert_close(results["h_n"], h_n, np.float32, "h_n")
    if head is not None:
        assert_close(results["logits"], head(output), np.float32, "logits")
    if case["lengths"]:
        # ONNX Runtime's own semantics, which must be numbarnn's: zeros past each length, and h_n of the last layer
        # is the forward state at each sequence's own last step and the reverse state at its first step.
        time_major = results["output"].transpose(1, 0, 2) if rnn.batch_first else results["output"]
        directions = rnn.num_directions
        for n, length in enumerate(feeds["lengths"]):
            assert not time_major[length:, n].any()
            np.testing.assert_array_equal(results["h_n"][-directions, n], time_major[length - 1, n, :HIDDEN])
            if directions == 2:
                np.testing.assert_array_equal(results["h_n"][-1, n], time_major[0, n, HIDDEN:])


def test_onnx_runtime_takes_any_sequence_length_and_batch(tmp_path, rng):
    rnn, head = _modules(dict(CASES[0], num_layers=2, bidirectional=True, head=True))
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head)
    session = _session(path)
    for steps, batch in [(1, 1), (9, 2)]:
        x = rng.standard_normal((batch, steps, INPUT_SIZE) if rnn.batch_first else (steps, batch, INPUT_SIZE))
        x = x.astype(np.float32)
        output, h_n, logits = session.run(None, {"input": x})
        expected_output, expected_h_n = rnn(x)
        assert_close(output, expected_output, np.float32, "output")
        assert_close(h_n, expected_h_n, np.float32, "h_n")
        assert_close(logits, head(expected_output), np.float32, "logits")


def test_float64_module_is_exported_in_float32_with_a_warning(tmp_path, rng):
    case = dict(CASES[0], head=True, h_0=False, lengths=False)
    rnn, head = _modules(case, dtype=np.float64)
    path = tmp_path / "model.onnx"
    with pytest.warns(UserWarning, match="float64; numbarnn.onnx.export writes float32"):
        numbarnn.onnx.export(path, rnn, head)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {t.data_type for t in model.graph.initializer if t.name.startswith(("W", "R", "B", "head"))} == {
        onnx.TensorProto.FLOAT}
    x = rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if rnn.batch_first else (STEPS, BATCH, INPUT_SIZE))
    output, h_n, logits = _session(path).run(None, {"input": x.astype(np.float32)})
    expected_output, expected_h_n = rnn(x)
    # float32 parameters and arithmetic against float64: the float32 rounding bounds the difference, as above.
    assert_close(output, expected_output, np.float32, "output")
    assert_close(logits, head(expected_output), np.float32, "logits")


@pytest.mark.parametrize("case", [
    dict(CASES[0], num_layers=3, bidirectional=True, bias=False, batch_first=True, head=True),
    dict(CASES[0], num_layers=1, bidirectional=False, bias=True, batch_first=False, head=False),
    dict(CASES[0], nonlinearity="relu", num_layers=2, bidirectional=False, bias=True, head=True),
], ids=_case_id)
def test_export_then_load_gives_identical_modules(case, tmp_path):
    rnn, head = _modules(case)
    if rnn.num_layers > 1:
        rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, rnn.num_layers, nonlinearity=rnn.nonlinearity, bias=rnn.bias,
                           batch_first=rnn.batch_first, bidirectional=rnn.bidirectional, dropout=0.25, seed=7)
    if head is not None:
        head = numbarnn.Linear(head.in_features, OUTPUTS, bias=False, seed=8)
    path = tmp_path / "model.onnx"
    numbarnn.onnx.export(path, rnn, head, h_0=True, lengths=True)
    loaded = numbarnn.onnx.load(path)
    assert set(loaded) == ({"rnn", "head"} if head is not None else {"rnn"})
    restored = loaded["rnn"]
    for name in ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                 "bidirectional", "dtype"):
        assert getattr(restored, name) == getattr(rnn, name), name
    assert not restored.training
    assert list(restored.params) == list(rnn.params)
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(restored.params[name], value, err_msg=name)
    if head is not None:
        assert (loaded["head"].in_features, loaded["head"].out_features, loaded["head"].bias_enabled) == (
            head.in_features, head.out_features, head.bias_enabled)
        np.testing.assert_array_equal(loaded["head"].weight, head.weight)


# -- graphs written by torch.onnx.export ------------------------------------------------------------------------
class _TorchModel(torch.nn.Module):
    def __init__(self, rnn, head):
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x, h_0=None):
        output, h_n = self.rnn(x, h_0)
        return (output if self.head is None else self.head(output)), h_n


def _torch_export(model, args, path, input_names):
    # torch 2.13's default (dynamo) exporter unrolls the recurrence into MatMul and Tanh nodes (and needs
    # onnxscript); the TorchScript exporter writes ONNX RNN nodes, which is what load() maps.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1",
                                category=UserWarning)
        # tracing the shape checks of nn.RNN.forward: they hold for the traced input; the dynamic axes keep L, N free
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean",
                                category=torch.jit.TracerWarning)
        torch.onnx.export(model, args, str(path), input_names=input_names, dynamo=False,
                          dynamic_axes={name: {0: "dim0", 1: "dim1"} for name in input_names[:1]})


@pytest.mark.parametrize("nonlinearity, num_layers, bidirectional, bias, batch_first, with_h_0, with_head", [
    ("relu", 2, True, True, True, True, True),
    ("tanh", 3, False, False, False, False, False),
    ("tanh", 1, True, True, False, False, True),
])
def test_load_reads_torch_onnx_export_of_an_rnn(nonlinearity, num_layers, bidirectional, bias, batch_first,
                                                with_h_0, with_head, tmp_path, rng):
    torch.manual_seed(0)
    reference = torch.nn.RNN(INPUT_SIZE, HIDDEN, num_layers, nonlinearity=nonlinearity, bias=bias,
                             batch_first=batch_first, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    head = torch.nn.Linear(directions * HIDDEN, OUTPUTS) if with_head else None
    model = _TorchModel(reference, head).eval()
    x = torch.from_numpy(rng.standard_normal((BATCH, STEPS, INPUT_SIZE) if batch_first else
                                             (STEPS, BATCH, INPUT_SIZE)).astype(np.float32))
    h_0 = torch.from_numpy(rng.standard_normal((directions * num_layers, BATCH, HIDDEN)).astype(np.float32))
    path = tmp_path / "torch.onnx"
    _torch_export(model, (x, h_0) if with_h_0 else (x,), path, ["input", "h_0"] if with_h_0 else ["input"])
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert "RNN" in {node.op_type for node in onnx.load(path).graph.node}

    loaded = numbarnn.onnx.load(path)
    assert set(loaded) == ({"rnn", "head"} if with_head else {"rnn"})
    rnn = loaded["rnn"]
    assert (rnn.nonlinearity, rnn.num_layers, rnn.bidirectional, rnn.bias, rnn.batch_first) == (
        nonlinearity, num_layers, bidirectional, bias, batch_first)
    output, h_n = rnn(x.numpy(), h_0.numpy() if with_h_0 else None)
    with torch.no_grad():
        expected, expected_h_n = model(x, h_0 if with_h_0 else None)
    assert_close(loaded["head"](output) if with_head else output, expected, np.float32, "output")
    assert_close(h_n, expected_h_n, np.float32, "h_n")


def test_load_reads_constant_nodes_and_a_gemm_head(tmp_path):
    # Other exporters store weights as Constant nodes and write a head on 2-D rows as Reshape + Gemm(transB=1).
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, 2, bidirectional=True, seed=7)
    head = numbarnn.Linear(2 * HIDDEN, OUTPUTS, seed=8)
    model = numbarnn.onnx.export(tmp_path / "model.onnx", rnn, head)
    graph = model.graph
    kept = [node for node in graph.node if node.op_type not in ("MatMul", "Add")]
    constants = [helper.make_node("Constant", [], [tensor.name], value=tensor) for tensor in graph.initializer
                 if not tensor.name.startswith("head")]
    rows_shape = onnx.numpy_helper.from_array(np.array([-1, 2 * HIDDEN], np.int64), "rows_shape")
    gemm_head = [helper.make_node("Reshape", ["output", "rows_shape"], ["rows"], name="rows"),
                 helper.make_node("Gemm", ["rows", "gemm_weight", "gemm_bias"], ["logits"], name="gemm", transB=1)]
    initializers = [rows_shape, onnx.numpy_helper.from_array(head.weight, "gemm_weight"),
                    onnx.numpy_helper.from_array(head.bias, "gemm_bias")]
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


def _rnn_node(model, layer=0):
    return [node for node in model.graph.node if node.op_type == "RNN"][layer]


def test_load_names_an_operator_it_cannot_map(exported):
    exported.graph.node.append(helper.make_node("Tanh", ["logits"], ["squashed"], name="extra_tanh"))
    with pytest.raises(ONNXMappingError, match=r"cannot map node #\d+ 'extra_tanh' \(Tanh\).*dynamo=False"):
        numbarnn.onnx.load(exported)


def test_load_rejects_an_lstm_graph():
    weights = [helper.make_tensor(name, onnx.TensorProto.FLOAT, shape, np.zeros(shape).ravel())
               for name, shape in (("W", [1, 4 * HIDDEN, INPUT_SIZE]), ("R", [1, 4 * HIDDEN, HIDDEN]))]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=HIDDEN)], "lstm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["L", "N", INPUT_SIZE])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], weights)
    with pytest.raises(ONNXMappingError, match=r"cannot map node #0 'lstm' \(LSTM\)"):
        numbarnn.onnx.load(helper.make_model(graph))


@pytest.mark.parametrize("attribute, value, message", [
    ("direction", "reverse", "direction='reverse': a numbarnn RNN runs forward or bidirectional"),
    ("clip", 1.0, "attribute 'clip'"),
    ("activations", ["Sigmoid", "Sigmoid"], r"activations=\['Sigmoid', 'Sigmoid'\]"),
    ("layout", 1, "layout=1"),
])
def test_load_rejects_rnn_attributes_numbarnn_does_not_have(exported, attribute, value, message):
    node = _rnn_node(exported)
    kept = [a for a in node.attribute if a.name != attribute]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(attribute, value)])
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
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ONNXMappingError, match="no ONNX RNN node"):
        numbarnn.onnx.load(helper.make_model(graph))


def test_load_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such ONNX file.*missing.onnx"):
        numbarnn.onnx.load(tmp_path / "missing.onnx")


@pytest.mark.parametrize("arguments, error, message", [
    ((numbarnn.RNNCell(3, 5),), TypeError, "exports a numbarnn.RNN, got RNNCell"),
    ((numbarnn.RNN(3, 5), numbarnn.Linear(4, 2)), ValueError, "head.in_features must equal .* 5, got .*=4"),
    ((numbarnn.RNN(3, 5), "head"), TypeError, "head must be a numbarnn.Linear"),
])
def test_export_rejects_bad_arguments(arguments, error, message, tmp_path):
    with pytest.raises(error, match=message):
        numbarnn.onnx.export(tmp_path / "model.onnx", *arguments)


@pytest.mark.parametrize("opset", [13, 1000, "17"])
def test_export_rejects_an_unknown_opset(opset, tmp_path):
    with pytest.raises(ValueError, match=f"opset must be an int from 14 to .*got {opset!r}"):
        numbarnn.onnx.export(tmp_path / "model.onnx", numbarnn.RNN(3, 5), opset=opset)


@pytest.mark.parametrize("opset", [14, onnx.defs.onnx_opset_version()])
def test_export_writes_the_opset_asked_for(opset, tmp_path):
    model = numbarnn.onnx.export(tmp_path / "model.onnx", numbarnn.RNN(3, 5, seed=0), opset=opset)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    onnx.checker.check_model(onnx.load(tmp_path / "model.onnx"), full_check=True)


# -- command line --------------------------------------------------------------------------------------------------
def test_cli_exports_the_demo_model(tmp_path, capsys, rng):
    checkpoint, exported_path = tmp_path / "demo.npz", tmp_path / "demo.onnx"
    assert main(["demo", "--steps", "2", "--hidden", "8", "--batch", "2", "--seq-len", "5", "--samples", "0",
                 "--save", str(checkpoint)]) == 0
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


def test_cli_export_explains_a_checkpoint_it_cannot_export(tmp_path, capsys):
    checkpoint = tmp_path / "cell.npz"
    numbarnn.save(checkpoint, cell=numbarnn.RNNCell(3, 5))
    assert main(["export", str(checkpoint), str(tmp_path / "cell.onnx")]) == 2
    assert "export needs exactly one RNN and at most one Linear head" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")]) == 2
    assert "No such checkpoint file" in capsys.readouterr().err


def test_numbarnn_and_its_command_line_do_not_import_onnx():
    code = ("import sys, numbarnn, numbarnn.__main__, numbarnn.cli.export; "
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    root = str(pathlib.Path(__file__).resolve().parents[1])  # this checkout's numbarnn, not an installed one
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=environment)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_speed_script_times_both_libraries_in_fresh_processes():
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "onnx_vs_numbarnn.py"), "--configs", "stream",
                             "--rounds", "2", "--repeats", "1"], capture_output=True, text=True, check=True)
    row = result.stdout.strip().splitlines()[-1]
    name, ort_ms, numbarnn_ms, ratio = (field.strip() for field in row.split("|"))
    assert name.startswith("stream (1, 1,")
    assert float(ort_ms) > 0 and float(numbarnn_ms) > 0
    assert ratio.endswith("x") and float(ratio[:-1]) > 0
