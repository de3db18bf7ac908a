"""Deploy through ONNX: write a numbarnn ``RNN``, ``LSTM`` or ``GRU`` (and an optional ``Linear`` head) as an ONNX
graph, and read ONNX ``RNN``, ``LSTM`` and ``GRU`` graphs back into numbarnn modules.

Import it as ``numbarnn.onnx`` (``import numbarnn`` does not import it, nor the ``onnx`` package); it needs the
``onnx`` package (``pip install 'numbarnn[onnx]'``, which also installs ``onnxruntime`` to run the files).

The graph :func:`export` writes, for a module of ``num_layers`` layers, D directions and G gates (1 for RNN, 4 for
LSTM, 3 for GRU):

- inputs ``input`` (L, N, H_in), or (N, L, H_in) for a ``batch_first`` module; optionally ``h_0``
  (D * num_layers, N, H_out) (and for an LSTM ``c_0``, same shape) and ``lengths`` (N,) int32. L and N are dynamic.
- one ONNX ``RNN``, ``LSTM`` or ``GRU`` node per layer: W = ``weight_ih`` [D, G * H, I], R = ``weight_hh``
  [D, G * H, H], B = ``bias_ih`` ‖ ``bias_hh`` [D, 2 * G * H] (zeros for a module without bias), their gate blocks
  in ONNX's order (:data:`_OPERATORS`); a GRU node has ``linear_before_reset = 1``, which is torch's GRU (the reset
  gate multiplies ``h W_hn^T + b_hn``). A layer's Y [L, D, N, H] becomes numbarnn's (L, N, D * H) with a Squeeze
  (D = 1) or a Transpose + Reshape (D = 2) before the next layer. ``batch_first`` goes through Transpose nodes, since
  ONNX Runtime does not run the recurrent operators' ``layout = 1``.
- outputs ``output`` (the module's layout), ``h_n`` (D * num_layers, N, H_out), for an LSTM ``c_n`` (same shape),
  and, with a head, ``logits`` = ``head(output)``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import namedtuple
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._validation import SUPPORTED_DTYPES
from .linear import Linear
from .rnn import GRU, LSTM, RNN, RecurrentBase
from .serialization import _CONSTRUCTORS

if TYPE_CHECKING:
    from ._typing import PathLike

# Opset 17 is run by every ONNX Runtime from 1.12 on and by onnxruntime-web; the RNN, LSTM and GRU operators are the
# same from opset 14 (which added ``layout``) to 21, and opset 13 is the first with Squeeze's axes as an input.
DEFAULT_OPSET = 17
MIN_OPSET = 14
# Where export records the module arguments a graph cannot show (bias=False versus zero biases, dropout).
METADATA_KEY = "numbarnn"


# How each numbarnn module maps to its ONNX operator (the one owner of the gate orders). ``gates[k]`` is torch's gate
# block (of H rows of W, R and each half of B) that ONNX's block k holds: ONNX's LSTM is i, o, f, c where torch's is
# i, f, g, o, and ONNX's GRU is z, r, h where torch's is r, z, n. ``states`` name the recurrent state's parts (inputs
# initial_h, initial_c at node inputs 5, 6; outputs Y_h, Y_c at node outputs 1, 2). ``activations`` are the ONNX
# activations per direction that are torch's cell (the operator's defaults for LSTM and GRU, which export leaves
# implicit), and ``attributes`` what else the node needs to be torch's cell.
_Operator = namedtuple("_Operator", "module gates states activations attributes")
_OPERATORS = {
    "RNN": _Operator(RNN, (0,), ("h",), None, {}),
    "LSTM": _Operator(LSTM, (0, 3, 1, 2), ("h", "c"), ("Sigmoid", "Tanh", "Tanh"), {"input_forget": 0}),
    "GRU": _Operator(GRU, (1, 0, 2), ("h",), ("Sigmoid", "Tanh"), {"linear_before_reset": 1}),
}

_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}  # an RNN's nonlinearity -> its ONNX activation
_NONLINEARITIES = {value: key for key, value in _ACTIVATIONS.items()}

# Nodes load() accepts around the recurrent nodes: they reshape, slice, build shapes or zeros, or copy.
_GLUE_OPS = {
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Concat",
    "Slice",
    "Gather",
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Expand",
    "Identity",
    "Cast",
    "Split",
    "Flatten",
}
# Nodes that only move data along one path (the data is their first input): load() follows RNN inputs through them.
_PASS_THROUGH_OPS = {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast", "Flatten"}
_HEAD_OPS = {"MatMul", "Gemm", "Add"}


def _permute_gates(array, order):
    """``array`` (G * H, ...) with its G blocks of H rows reordered: block k of the result is block ``order[k]``."""
    blocks = array.reshape(len(order), -1, *array.shape[1:])
    return blocks[list(order)].reshape(array.shape)


class ONNXMappingError(ValueError):
    """An ONNX graph that :func:`load` cannot express as a numbarnn ``RNN``, ``LSTM`` or ``GRU`` (plus ``Linear``
    head)."""


# -- export ------------------------------------------------------------------------------------------------------
def export(
    path: PathLike,
    rnn: RecurrentBase[Any],
    head: Linear | None = None,
    *,
    opset: int | None = None,
    h_0: bool = False,
    lengths: bool = False,
) -> onnx.ModelProto:
    """Write ``rnn`` (and ``head`` applied to its output) to the ONNX file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file to write (replaced if it exists).
    rnn : numbarnn.RNN, numbarnn.LSTM or numbarnn.GRU
        The module to export: any number of layers, uni- or bidirectional, with or without bias, ``batch_first``
        or not; an RNN tanh or relu; an LSTM without ``proj_size`` (ONNX's LSTM has no projection). Dropout acts
        only in training, so the graph has none.
    head : numbarnn.Linear, optional
        A layer applied to every step of the output: in_features must be D * H_out. Adds the output ``logits``.
    opset : int, keyword-only, optional
        ONNX opset to write, from 14 up to what the installed ``onnx`` knows (default 17).
    h_0 : bool, keyword-only, default False
        Give the graph an input ``h_0`` (D * num_layers, N, H_out), the initial state, and for an LSTM also
        ``c_0`` (D * num_layers, N, H), the initial cell state; without it the state starts at zeros.
    lengths : bool, keyword-only, default False
        Give the graph an input ``lengths`` (N,) of dtype int32, each sequence's length (ONNX's ``sequence_lens``).
        As in numbarnn, outputs past a sequence's length are 0, ``h_n`` (and ``c_n``) hold each sequence's state at
        its own last step, and the reverse direction starts there.

    Returns
    -------
    onnx.ModelProto
        The model written (checked with ``onnx.checker``).

    Raises
    ------
    ValueError
        For an LSTM with ``proj_size > 0``, which no ONNX operator expresses.

    Warns
    -----
    UserWarning
        For a float64 module: the graph is float32 (what ONNX runtimes run RNNs in), so its parameters are rounded.

    Examples
    --------
    >>> numbarnn.onnx.export("model.onnx", lstm, head, h_0=True, lengths=True)
    >>> session = onnxruntime.InferenceSession("model.onnx")
    >>> output, h_n, c_n, logits = session.run(None, {"input": x, "h_0": h_0, "c_0": c_0,
    ...                                               "lengths": lengths.astype(np.int32)})
    """
    if not isinstance(rnn, RecurrentBase):
        raise TypeError(f"export() exports a numbarnn.RNN, LSTM or GRU, got {type(rnn).__name__}")
    if rnn.proj_size > 0:
        raise ValueError(
            f"cannot export an LSTM with proj_size={rnn.proj_size}: ONNX's LSTM operator has no projection "
            "(weight_hr), so no ONNX graph of LSTM nodes computes it; export an LSTM with proj_size=0, or keep this "
            "model in numbarnn (numbarnn.save / numbarnn.load) or torch"
        )
    if head is not None:
        if not isinstance(head, Linear):
            raise TypeError(f"head must be a numbarnn.Linear (or None), got {type(head).__name__}")
        if head.in_features != rnn.num_directions * rnn.hidden_size:
            raise ValueError(
                f"head.in_features must equal the {rnn._NAME}'s output width D * hidden_size = "
                f"{rnn.num_directions * rnn.hidden_size}, got a head with in_features={head.in_features}"
            )
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be an int from {MIN_OPSET} to {newest} (the newest this onnx {onnx.__version__}"
            f" knows), got {opset!r}"
        )
    float64 = [m for m in (rnn, head) if m is not None and m.dtype == np.float64]
    if float64:
        names = " and ".join(type(m).__name__ for m in float64)
        warnings.warn(
            f"the {names} is float64; numbarnn.onnx.export writes float32 (what ONNX runtimes run RNNs "
            "in), so its parameters are rounded to float32",
            UserWarning,
            stacklevel=2,
        )
    model = _build_model(rnn, head, int(opset), bool(h_0), bool(lengths))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.fspath(path))
    return model


def _build_model(rnn, head, opset, with_h_0, with_lengths):
    op = rnn._NAME
    operator = _OPERATORS[op]
    directions, hidden, layers = rnn.num_directions, rnn.hidden_size, rnn.num_layers
    suffixes = ["", "_reverse"][:directions]
    params = rnn.params
    batch_dims = ["N", "L"] if rnn.batch_first else ["L", "N"]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, batch_dims + [rnn.input_size])]
    state_shape = [directions * layers, "N", hidden]
    initial_names = [f"{part}_0" for part in operator.states]  # h_0 (, c_0)
    final_names = [f"{part}_n" for part in operator.states]  # h_n (, c_n)
    if with_h_0:
        inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in initial_names]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))
    initializers, nodes = [], []

    def constant(name, value, dtype=np.float32):
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op_type, node_inputs, node_outputs, name, **attributes):
        nodes.append(helper.make_node(op_type, node_inputs, node_outputs, name=name, **attributes))
        return node_outputs[0]

    def stacked(kind, layer):
        """Parameter ``kind`` ("weight_ih", "weight_hh", "bias_ih", "bias_hh") of both directions, gates in ONNX's
        order: [D, G * H, ...]."""
        return np.stack([_permute_gates(params[f"{kind}_l{layer}{s}"], operator.gates) for s in suffixes])

    attributes = dict(
        operator.attributes, hidden_size=hidden, direction="bidirectional" if directions == 2 else "forward"
    )
    if op == "RNN":
        attributes["activations"] = [_ACTIVATIONS[rnn.nonlinearity]] * directions
    x = "input"
    if rnn.batch_first:  # (N, L, H_in) -> (L, N, H_in): ONNX Runtime's recurrent operators run only layout 0
        x = node("Transpose", [x], ["input_time_major"], "input_to_time_major", perm=[1, 0, 2])
    if directions == 1:
        squeeze_axes = constant("direction_axis", [1], np.int64)
    else:
        merged_shape = constant("merged_directions_shape", [0, 0, -1], np.int64)
    state_axis = constant("state_axis", [0], np.int64) if with_h_0 and layers > 1 else None
    final_states = [[] for _ in operator.states]  # per state part, each layer's Y_h (Y_c)
    for layer in range(layers):
        if rnn.bias:
            biases = np.concatenate([stacked("bias_ih", layer), stacked("bias_hh", layer)], axis=1)
        else:  # ONNX's B is optional, but zeros keep every file alike; load() reads bias=False from the metadata
            biases = np.zeros((directions, 2 * len(operator.gates) * hidden))
        initial = [""] * len(operator.states)
        if with_h_0:
            for index, name in enumerate(initial_names):
                if layers == 1:
                    initial[index] = name
                    continue
                starts = constant(f"{name}_l{layer}_start", [layer * directions], np.int64)
                ends = constant(f"{name}_l{layer}_end", [(layer + 1) * directions], np.int64)
                initial[index] = node(
                    "Slice", [name, starts, ends, state_axis], [f"{name}_l{layer}"], f"{name}_l{layer}_slice"
                )
        node_inputs = [
            x,
            constant(f"W_l{layer}", stacked("weight_ih", layer)),
            constant(f"R_l{layer}", stacked("weight_hh", layer)),
            constant(f"B_l{layer}", biases),
            "lengths" if with_lengths else "",
            *initial,
        ]
        while node_inputs[-1] == "":  # trailing optional inputs are left out rather than named ""
            node_inputs.pop()
        y = f"Y_l{layer}"
        state_outputs = [f"Y_{part}_l{layer}" for part in operator.states]  # Y_h (, Y_c)
        node(op, node_inputs, [y, *state_outputs], f"{op.lower()}_l{layer}", **attributes)
        for finals, name in zip(final_states, state_outputs, strict=True):
            finals.append(name)
        # Y is (L, D, N, H); numbarnn's output is (L, N, D * H), the forward direction first.
        if directions == 1:
            x = node("Squeeze", [y, squeeze_axes], [f"output_l{layer}"], f"output_l{layer}_squeeze")
        else:
            swapped = node(
                "Transpose", [y], [f"Y_l{layer}_time_batch_direction"], f"Y_l{layer}_transpose", perm=[0, 2, 1, 3]
            )
            x = node("Reshape", [swapped, merged_shape], [f"output_l{layer}"], f"output_l{layer}_reshape")
    if rnn.batch_first:
        node("Transpose", [x], ["output"], "output_to_batch_first", perm=[1, 0, 2])
    else:
        node("Identity", [x], ["output"], "output_identity")
    for finals, name in zip(final_states, final_names, strict=True):
        if layers == 1:
            node("Identity", finals, [name], f"{name}_identity")
        else:
            node("Concat", finals, [name], f"{name}_concat", axis=0)
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, batch_dims + [directions * hidden])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in final_names]
    if head is not None:
        # logits = output @ weight.T + bias over the last axis (Gemm takes 2-D input only)
        product = node("MatMul", ["output", constant("head_weight_t", head.weight.T)], ["head_product"], "head_matmul")
        if head.bias_enabled:
            node("Add", [product, constant("head_bias", head.bias)], ["logits"], "head_add")
        else:
            node("Identity", [product], ["logits"], "head_identity")
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, batch_dims + [head.out_features]))
    graph = helper.make_graph(nodes, f"numbarnn_{op.lower()}", inputs, outputs, initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph, opset_imports=opset_ids, producer_name="numbarnn", ir_version=helper.find_min_ir_version_for(opset_ids)
    )
    # The constructor arguments, as numbarnn.save records them ("rnn" for the RNN, LSTM or GRU alike: the graph's
    # operator says which).
    description = {"rnn": _CONSTRUCTORS[op][1](rnn)}
    if head is not None:
        description["head"] = _CONSTRUCTORS["Linear"][1](head)
    helper.set_model_props(model, {METADATA_KEY: json.dumps(description)})
    return model


# -- load --------------------------------------------------------------------------------------------------------
def load(path: PathLike | onnx.ModelProto) -> dict[str, RecurrentBase[Any] | Linear]:
    """Rebuild a numbarnn ``RNN``, ``LSTM`` or ``GRU`` (and ``Linear`` head) from an ONNX graph of ``RNN``,
    ``LSTM`` or ``GRU`` nodes.

    Reads what :func:`export` writes, and the graphs other exporters write for these modules (e.g.
    ``torch.onnx.export`` of a ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU`` with ``dynamo=False``): one
    node per layer, all of one operator (forward or bidirectional, layout 0, constant W / R / B; an RNN tanh or
    relu; an LSTM with its default activations, no peepholes and ``input_forget = 0``; a GRU with
    ``linear_before_reset = 1``, torch's GRU), chained through Transpose / Squeeze / Unsqueeze / Reshape nodes, an
    initial state (h, and c for an LSTM) that is a graph input or zeros (built with Shape, Gather, Concat, Slice,
    ConstantOfShape, Expand, Constant...), and optionally one head on the output: MatMul (+ Add) or Gemm with
    constant weights.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
        The ``.onnx`` file to read, or a model already in memory (as :func:`export` returns it).

    Returns
    -------
    dict of str to module
        ``{"rnn": module}`` (a ``numbarnn.RNN``, ``LSTM`` or ``GRU``, after the graph's operator), plus
        ``"head": Linear`` when the graph applies one to the module's output. The modules are in eval mode (the
        graph is an inference graph; call ``.train()`` to train them further) and have the dtype of the graph's
        weights (float32 or float64). ``batch_first`` is True when the graph transposes a (N, L, H_in) input into
        the first recurrent node.

    Raises
    ------
    ONNXMappingError
        (a ``ValueError``) for a graph numbarnn cannot express, naming the node it cannot map and why: another
        operator (e.g. an unrolled loop of MatMul and Tanh as torch's dynamo exporter writes), layers of different
        operators, a reverse-only or clipped layer, activations other than torch's, LSTM peepholes, a GRU with
        ``linear_before_reset = 0`` (the reset gate applied before R, which is not torch's GRU), weights computed at
        run time, a non-zero constant initial state, or a head applied to something other than every step of the
        output.
    """
    if isinstance(path, onnx.ModelProto):
        model, where = path, "ONNX model"
    else:
        where = os.fspath(path)
        if not os.path.exists(where):
            raise FileNotFoundError(f"No such ONNX file: {where!r}")
        model = onnx.load(where)
    return _GraphReader(model, where).modules()


def _describe(node, index):
    return f"node #{index} {node.name or '(unnamed)'!r} ({node.op_type})"


class _GraphReader:
    def __init__(self, model, where):
        self.where = where
        self.model = model
        graph = model.graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.graph_inputs = [value.name for value in graph.input if value.name not in self.initializers]
        self.nodes = list(graph.node)
        self.index = {id(node): i for i, node in enumerate(self.nodes)}
        self.producers = {}
        self.consumers = {}
        for node in self.nodes:
            for position, name in enumerate(node.output):
                if name:
                    self.producers[name] = (node, position)
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    # helpers
    def fail(self, message, node=None):
        prefix = f"{self.where}: " if node is None else f"{self.where}: cannot map {self.describe(node)}: "
        raise ONNXMappingError(prefix + message)

    def describe(self, node):
        return _describe(node, self.index[id(node)])

    def constant(self, name):
        """The value of tensor ``name`` when it is fixed in the file (initializer, Constant, Identity/Cast of one)."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        producer = self.producers.get(name)
        if producer is None:
            return None
        node = producer[0]
        if node.op_type == "Constant":
            attribute = node.attribute[0]
            value = helper.get_attribute_value(attribute)
            return numpy_helper.to_array(value) if attribute.name in ("value", "sparse_value") else np.asarray(value)
        if node.op_type in ("Identity", "Cast"):
            value = self.constant(node.input[0])
            if value is not None and node.op_type == "Cast":
                to = helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))
                value = value.astype(helper.tensor_dtype_to_np_dtype(to))
            return value
        return None

    def trace(self, name):
        """Follow ``name`` back through data-moving nodes: (kind, what, transpose perms on the way).

        kind is "input" (what: graph input name), "rnn" (what: (recurrent node, output position)), or
        "node"/"constant".
        """
        perms = []
        while True:
            if name in self.graph_inputs:
                return "input", name, perms
            producer = self.producers.get(name)
            if producer is None:
                return "constant", name, perms
            node, position = producer
            if node.op_type in _OPERATORS:
                return "rnn", (node, position), perms
            if node.op_type not in _PASS_THROUGH_OPS or self.constant(name) is not None:
                return "node", node, perms
            if node.op_type == "Transpose":
                perm = next((a for a in node.attribute if a.name == "perm"), None)
                perms.append(tuple(helper.get_attribute_value(perm)) if perm is not None else None)
            name = node.input[0]

    def ancestors(self, name):
        """The graph inputs, tensor names and nodes ``name`` is computed from (``name`` included)."""
        inputs, tensors, nodes, stack = set(), set(), [], [name]
        while stack:
            current = stack.pop()
            if current in tensors or not current:
                continue
            tensors.add(current)
            if current in self.graph_inputs:
                inputs.add(current)
            producer = self.producers.get(current)
            if producer is not None:
                nodes.append(producer[0])
                stack.extend(producer[0].input)
        return inputs, tensors, nodes

    # the mapping
    def modules(self):
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx"):
                self.fail(f"operator domain {node.domain!r}: numbarnn.onnx.load reads standard ONNX operators", node)
            if node.op_type not in _GLUE_OPS | _HEAD_OPS | set(_OPERATORS):
                hint = (
                    " (an unrolled recurrence, as torch.onnx.export's dynamo exporter writes; export with "
                    "dynamo=False to get ONNX RNN, LSTM or GRU nodes)"
                    if node.op_type in ("Tanh", "Relu", "Sigmoid")
                    else ""
                )
                self.fail(
                    f"numbarnn.onnx.load maps ONNX RNN, LSTM and GRU nodes, the glue around them "
                    f"({', '.join(sorted(_GLUE_OPS))}) and a MatMul + Add or Gemm head{hint}",
                    node,
                )
        rnn_nodes = [node for node in self.nodes if node.op_type in _OPERATORS]
        if not rnn_nodes:
            self.fail(
                "the graph has no recurrent node (ONNX RNN, LSTM or GRU); numbarnn.onnx.load reads graphs of those"
            )
        layers = [self.read_layer(node) for node in rnn_nodes]
        first = layers[0]
        op = first["op"]
        operator = _OPERATORS[op]
        for layer in layers[1:]:
            for key in ("op", "nonlinearity", "directions", "hidden_size", "dtype"):
                if layer[key] != first[key]:
                    self.fail(
                        f"its {key} is {layer[key]}, but the first recurrent node's is {first[key]}; a numbarnn "
                        f"{op} has one value for all layers",
                        layer["node"],
                    )
        directions, hidden = first["directions"], first["hidden_size"]
        main_input, batch_first = self.check_chain(rnn_nodes, directions)
        for layer in layers:
            expected = first["input_size"] if layer is first else directions * hidden
            if layer["input_size"] != expected:
                self.fail(
                    f"its W has input size {layer['input_size']}, but the layer below gives {expected}", layer["node"]
                )
            self.check_initial_state(layer["node"], main_input)
        description = self.metadata()
        rnn_description = description.get("rnn", {})
        any_bias = any(layer["B"] is not None and np.any(layer["B"]) for layer in layers)
        bias = any(layer["B"] is not None for layer in layers)
        if bias and not any_bias and rnn_description.get("bias") is False:
            bias = False  # export writes zeros for a module without bias
        dropout = rnn_description.get("dropout", 0.0) if isinstance(rnn_description.get("dropout"), float) else 0.0
        arguments = dict(
            bias=bias,
            batch_first=batch_first,
            dropout=dropout if len(layers) > 1 else 0.0,
            bidirectional=directions == 2,
            dtype=first["dtype"],
        )
        if op == "RNN":
            arguments["nonlinearity"] = first["nonlinearity"]
        rnn = operator.module(first["input_size"], hidden, len(layers), **arguments)
        params = rnn.params
        to_torch = tuple(np.argsort(operator.gates))  # the inverse of export's reordering
        for number, layer in enumerate(layers):
            b = layer["B"] if layer["B"] is not None else np.zeros((directions, 2 * len(operator.gates) * hidden))
            bias_ih, bias_hh = np.split(b, 2, axis=1)  # ONNX's B is Wb ‖ Rb
            values = {"weight_ih": layer["W"], "weight_hh": layer["R"]}
            if bias:
                values.update(bias_ih=bias_ih, bias_hh=bias_hh)
            for direction, suffix in enumerate(["", "_reverse"][:directions]):
                for kind, value in values.items():
                    params[f"{kind}_l{number}{suffix}"][...] = _permute_gates(value[direction], to_torch)
        result = {"rnn": rnn.eval()}
        head = self.read_head(
            rnn_nodes[-1], directions * hidden, first["dtype"], directions, description.get("head", {})
        )
        if head is not None:
            result["head"] = head.eval()
        return result

    def metadata(self):
        for prop in self.model.metadata_props:
            if prop.key == METADATA_KEY:
                try:
                    description = json.loads(prop.value)
                except ValueError:
                    return {}
                return description if isinstance(description, dict) else {}
        return {}

    def read_layer(self, node):
        op = node.op_type
        operator = _OPERATORS[op]
        gates = len(operator.gates)
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name in ("clip", "activation_alpha", "activation_beta"):
            if name in attributes:
                self.fail(f"attribute {name!r}: numbarnn's {op} has no clipping or activation parameters", node)
        if attributes.get("layout", 0) != 0:
            self.fail(
                f"layout=1 (batch-major {op}): numbarnn.onnx.load reads layout=0 nodes, with any batch_first "
                "Transpose around them (what exporters write, as ONNX Runtime runs only layout 0)",
                node,
            )
        for name, expected in operator.attributes.items():
            given = attributes.get(name, 0)  # 0 is the ONNX default of input_forget and linear_before_reset
            if given != expected:
                why = (
                    " (the reset gate applied to h before R, where torch's GRU applies it to h R^T + b_hn)"
                    if name == "linear_before_reset"
                    else ""
                )
                self.fail(f"{name}={given}{why}: numbarnn's {op} is torch's, which is {name}={expected}", node)
        direction = attributes.get("direction", b"forward").decode()
        if direction not in ("forward", "bidirectional"):
            self.fail(f"direction={direction!r}: a numbarnn {op} runs forward or bidirectional layers", node)
        directions = 2 if direction == "bidirectional" else 1
        nonlinearity = None
        if op == "RNN":
            activations = [a.decode() for a in attributes.get("activations", [b"Tanh"] * directions)]
            if len(set(activations)) != 1 or activations[0] not in _NONLINEARITIES:
                self.fail(
                    f"activations={activations}: numbarnn applies one nonlinearity, Tanh or Relu, to every direction",
                    node,
                )
            nonlinearity = _NONLINEARITIES[activations[0]]
        elif "activations" in attributes:
            activations = [a.decode() for a in attributes["activations"]]
            if activations != list(operator.activations) * directions:
                self.fail(
                    f"activations={activations}: numbarnn's {op} is torch's, activations "
                    f"{list(operator.activations) * directions}",
                    node,
                )
        inputs = list(node.input) + [""] * (8 - len(node.input))
        values = {}
        for key, name in zip("WRB", inputs[1:4]):
            if not name:
                values[key] = None
                continue
            values[key] = self.constant(name)
            if values[key] is None:
                self.fail(
                    f"its {key} ({name!r}) is computed at run time; numbarnn.onnx.load needs constant weights "
                    "(initializers or Constant nodes)",
                    node,
                )
        if op == "LSTM" and inputs[7]:
            peepholes = self.constant(inputs[7])
            if peepholes is None or np.any(peepholes):
                self.fail(f"its P ({inputs[7]!r}) holds peephole weights; torch's and numbarnn's LSTM have none", node)
        weight, recurrent, bias = values["W"], values["R"], values["B"]
        if weight is None or recurrent is None:
            self.fail("it has no W or R input", node)
        if weight.ndim != 3 or weight.shape[0] != directions or weight.shape[1] % gates:
            self.fail(f"W has shape {weight.shape}, expected [{directions}, {gates} * hidden_size, input_size]", node)
        hidden = int(attributes.get("hidden_size", weight.shape[1] // gates))
        if weight.shape[1] != gates * hidden or recurrent.shape != (directions, gates * hidden, hidden):
            self.fail(
                f"W {weight.shape} and R {recurrent.shape} do not fit hidden_size={hidden} "
                f"({gates} gate{'s' * (gates > 1)})",
                node,
            )
        if bias is not None and bias.shape != (directions, 2 * gates * hidden):
            self.fail(f"B has shape {bias.shape}, expected [{directions}, {2 * gates * hidden}]", node)
        dtype = weight.dtype
        if dtype not in SUPPORTED_DTYPES or recurrent.dtype != dtype:
            self.fail(f"weights of dtype {dtype}: numbarnn runs {' and '.join(map(str, SUPPORTED_DTYPES))}", node)
        return {
            "node": node,
            "op": op,
            "nonlinearity": nonlinearity,
            "directions": directions,
            "hidden_size": hidden,
            "input_size": int(weight.shape[2]),
            "dtype": np.dtype(dtype),
            "W": weight,
            "R": recurrent,
            "B": bias,
        }

    def check_chain(self, rnn_nodes, directions):
        """Each recurrent node reads the one before it (layout-converted as numbarnn does); the first reads the
        input."""
        kind, what, perms = self.trace(rnn_nodes[0].input[0])
        if kind != "input":
            source = self.describe(what) if kind == "node" else repr(what)
            self.fail(
                f"its input X comes from {source}, not from a graph input; numbarnn.onnx.load maps an RNN "
                "whose first layer reads the graph's input",
                rnn_nodes[0],
            )
        if perms not in ([], [(1, 0, 2)]):
            self.fail(
                f"its input reaches it through Transpose perms {perms}; numbarnn maps none (time-major input) "
                "or [1, 0, 2] (batch_first)",
                rnn_nodes[0],
            )
        main_input, batch_first = what, perms == [(1, 0, 2)]
        for below, node in zip(rnn_nodes, rnn_nodes[1:]):
            kind, what, perms = self.trace(node.input[0])
            if kind != "rnn" or what != (below, 0):
                source = self.describe(what[0] if kind == "rnn" else what) if kind in ("rnn", "node") else repr(what)
                self.fail(
                    f"its input X comes from {source}, not from the Y output of the node before it, "
                    f"{self.describe(below)}",
                    node,
                )
            self.check_output_perms(perms, directions, node, allowed=set())
        return main_input, batch_first

    def check_output_perms(self, perms, directions, node, allowed):
        # Y is (L, D, N, H): the layers (and numbarnn's output) need (L, N, D * H), i.e. a [0, 2, 1, 3] Transpose
        # before merging the last two axes when D = 2 (with D = 1 a Squeeze or Reshape suffices).
        merged = [p for p in perms if p == (0, 2, 1, 3)]
        other = [p for p in perms if p != (0, 2, 1, 3) and p not in allowed]
        if other or len(merged) > 1 or (directions == 2 and not merged):
            self.fail(
                f"the RNN's Y reaches it through Transpose perms {perms}; numbarnn's layout needs "
                "Y [L, D, N, H] -> Transpose [0, 2, 1, 3] -> Reshape to (L, N, D * H)",
                node,
            )

    def check_initial_state(self, node, main_input):
        # initial_h is input 5, an LSTM's initial_c input 6
        for position, state in enumerate(_OPERATORS[node.op_type].states, start=5):
            if len(node.input) <= position or not node.input[position]:
                continue
            inputs, tensors, ancestors = self.ancestors(node.input[position])
            if inputs - {main_input}:
                continue  # fed at run time: the caller's h_0 (c_0)
            # Otherwise it is built from constants (and the input's shape): every float constant in it must be zero.
            constants = [(name, self.constant(name)) for name in tensors if name in self.initializers]
            constants += [
                (ancestor.output[0], self.constant(ancestor.output[0]))
                for ancestor in ancestors
                if ancestor.op_type == "Constant"
            ]
            constants += [
                (ancestor.output[0], numpy_helper.to_array(helper.get_attribute_value(attribute)))
                for ancestor in ancestors
                if ancestor.op_type == "ConstantOfShape"
                for attribute in ancestor.attribute
                if attribute.name == "value"
            ]
            for name, value in constants:
                if value is not None and value.dtype.kind == "f" and np.any(value):
                    self.fail(
                        f"its initial_{state} is a non-zero constant (from {name!r}); numbarnn's "
                        f"{node.op_type} starts from zeros or from the {state}_0 given at call time",
                        node,
                    )

    def read_head(self, last_rnn, width, dtype, directions, head_description):
        products = [node for node in self.nodes if node.op_type in ("MatMul", "Gemm")]
        adds = [node for node in self.nodes if node.op_type == "Add"]
        if not products:
            if adds:
                self.fail(
                    "an Add without a MatMul before it; numbarnn.onnx.load maps Add only as a head's bias", adds[0]
                )
            return None
        if len(products) > 1:
            self.fail("a second MatMul/Gemm: numbarnn.onnx.load maps one Linear head on the RNN's output", products[1])
        product = products[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in product.attribute}
        data, weight_name = product.input[0], product.input[1]
        weight = self.constant(weight_name)
        if weight is None or weight.ndim != 2:
            self.fail(
                "its second input is not a constant matrix; numbarnn.onnx.load maps a Linear head with fixed weights",
                product,
            )
        bias = None
        if product.op_type == "Gemm":
            if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
                self.fail("Gemm with transA, alpha or beta: a Linear head is x @ weight.T + bias", product)
            weight = weight if attributes.get("transB", 0) else weight.T
            if len(product.input) > 2 and product.input[2]:
                bias = self.constant(product.input[2])
                if bias is None:
                    self.fail("its C (the bias) is computed at run time", product)
        else:
            weight = weight.T  # MatMul's matrix is (in, out); Linear's weight is (out, in)
        bias_adds = []
        for add in adds:
            if product.output[0] not in add.input:
                self.fail("an Add that is not the head's bias (after its MatMul)", add)
            other = [name for name in add.input if name != product.output[0]]
            value = self.constant(other[0]) if len(other) == 1 else None
            if value is None or bias is not None or value.size != weight.shape[0]:
                self.fail(
                    f"an Add of something other than a bias of {weight.shape[0]} values to the head's product", add
                )
            bias = value.reshape(-1)
            bias_adds.append(add)
        kind, what, perms = self.trace(data)
        if kind != "rnn" or what != (last_rnn, 0):
            if kind == "rnn" and what[1] >= 1:
                state = _OPERATORS[what[0].op_type].states[what[1] - 1]
                where = f"the final state Y_{state} ({state}_n)"
            elif kind == "rnn":
                where = f"the output of {self.describe(what[0])}, which is not the last layer"
            else:
                where = self.describe(what) if kind == "node" else repr(what)
            self.fail(
                f"the head reads {where}; numbarnn.onnx.load maps a head applied to every step of the last "
                "RNN layer's output",
                product,
            )
        self.check_output_perms(perms, directions, product, allowed={(1, 0, 2)})
        if weight.shape[1] != width:
            self.fail(f"its weight takes {weight.shape[1]} features, but the RNN's output has {width}", product)
        has_bias = bias is not None and (np.any(bias) or head_description.get("bias") is not False)
        head = Linear(width, weight.shape[0], bias=has_bias, dtype=dtype)
        head.params["weight"][...] = weight
        if has_bias:
            head.params["bias"][...] = bias
        return head
