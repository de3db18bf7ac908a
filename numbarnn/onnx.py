"""Deploy through ONNX: write a numbarnn ``RNN`` (and an optional ``Linear`` head) as an ONNX graph, and read ONNX
``RNN`` graphs back into numbarnn modules.

Import it as ``numbarnn.onnx`` (``import numbarnn`` does not import it, nor the ``onnx`` package); it needs the
``onnx`` package (``pip install 'numbarnn[onnx]'``, which also installs ``onnxruntime`` to run the files).

The graph :func:`export` writes, for an RNN of ``num_layers`` layers and D directions:

- inputs ``input`` (L, N, H_in), or (N, L, H_in) for a ``batch_first`` module; optionally ``h_0``
  (D * num_layers, N, H_out) and ``lengths`` (N,) int32. L and N are dynamic.
- one ONNX ``RNN`` node per layer (W = ``weight_ih`` [D, H, I], R = ``weight_hh`` [D, H, H], B = ``bias_ih`` ‖
  ``bias_hh`` [D, 2H], zeros for a module without bias); a layer's Y [L, D, N, H] becomes numbarnn's (L, N, D * H)
  with a Squeeze (D = 1) or a Transpose + Reshape (D = 2) before the next layer. ``batch_first`` goes through
  Transpose nodes, since ONNX Runtime does not run the RNN operator's ``layout = 1``.
- outputs ``output`` (the module's layout), ``h_n`` (D * num_layers, N, H_out) and, with a head, ``logits`` =
  ``head(output)``.
"""

import json
import os
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .linear import Linear
from .rnn import RNN

# Opset 17 is run by every ONNX Runtime from 1.12 on and by onnxruntime-web; the RNN operator is the same from
# opset 14 (which added ``layout``) to 21, and opset 13 is the first with Squeeze's axes as an input.
DEFAULT_OPSET = 17
MIN_OPSET = 14
# Where export records the module arguments a graph cannot show (bias=False versus zero biases, dropout).
METADATA_KEY = "numbarnn"

_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}
_NONLINEARITIES = {value: key for key, value in _ACTIVATIONS.items()}
_DTYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}

# Nodes load() accepts around the RNN nodes: they reshape, slice, build shapes or zeros, or copy.
_GLUE_OPS = {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Slice", "Gather", "Shape", "Constant",
             "ConstantOfShape", "Expand", "Identity", "Cast", "Split", "Flatten"}
# Nodes that only move data along one path (the data is their first input): load() follows RNN inputs through them.
_PASS_THROUGH_OPS = {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast", "Flatten"}
_HEAD_OPS = {"MatMul", "Gemm", "Add"}


class ONNXMappingError(ValueError):
    """An ONNX graph that :func:`load` cannot express as a numbarnn ``RNN`` (plus ``Linear`` head)."""


# -- export ------------------------------------------------------------------------------------------------------
def export(path, rnn, head=None, *, opset=None, h_0=False, lengths=False):
    """Write ``rnn`` (and ``head`` applied to its output) to the ONNX file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file to write (replaced if it exists).
    rnn : numbarnn.RNN
        The module to export, tanh or relu, any number of layers, uni- or bidirectional, with or without bias,
        ``batch_first`` or not. Dropout acts only in training, so the graph has none.
    head : numbarnn.Linear, optional
        A layer applied to every step of the output: in_features must be D * H_out. Adds the output ``logits``.
    opset : int, keyword-only, optional
        ONNX opset to write, from 14 up to what the installed ``onnx`` knows (default 17).
    h_0 : bool, keyword-only, default False
        Give the graph an input ``h_0`` (D * num_layers, N, H_out), the initial state; without it the state starts
        at zeros.
    lengths : bool, keyword-only, default False
        Give the graph an input ``lengths`` (N,) of dtype int32, each sequence's length (ONNX's ``sequence_lens``).
        As in numbarnn, outputs past a sequence's length are 0, ``h_n`` holds each sequence's state at its own last
        step, and the reverse direction starts there.

    Returns
    -------
    onnx.ModelProto
        The model written (checked with ``onnx.checker``).

    Warns
    -----
    UserWarning
        For a float64 module: the graph is float32 (what ONNX runtimes run RNNs in), so its parameters are rounded.

    Examples
    --------
    >>> numbarnn.onnx.export("model.onnx", rnn, head, lengths=True)
    >>> session = onnxruntime.InferenceSession("model.onnx")
    >>> output, h_n, logits = session.run(None, {"input": x, "lengths": lengths.astype(np.int32)})
    """
    if not isinstance(rnn, RNN):
        raise TypeError(f"export() exports a numbarnn.RNN, got {type(rnn).__name__}")
    if head is not None:
        if not isinstance(head, Linear):
            raise TypeError(f"head must be a numbarnn.Linear (or None), got {type(head).__name__}")
        if head.in_features != rnn.num_directions * rnn.hidden_size:
            raise ValueError(
                f"head.in_features must equal the RNN's output width D * hidden_size = "
                f"{rnn.num_directions * rnn.hidden_size}, got a head with in_features={head.in_features}"
            )
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the newest this onnx {onnx.__version__}"
                         f" knows), got {opset!r}")
    float64 = [m for m in (rnn, head) if m is not None and m.dtype == np.float64]
    if float64:
        names = " and ".join(type(m).__name__ for m in float64)
        warnings.warn(f"the {names} is float64; numbarnn.onnx.export writes float32 (what ONNX runtimes run RNNs "
                      "in), so its parameters are rounded to float32", UserWarning, stacklevel=2)
    model = _build_model(rnn, head, int(opset), bool(h_0), bool(lengths))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.fspath(path))
    return model


def _build_model(rnn, head, opset, with_h_0, with_lengths):
    directions, hidden, layers = rnn.num_directions, rnn.hidden_size, rnn.num_layers
    suffixes = ["", "_reverse"][:directions]
    params = rnn.params
    batch_dims = ["N", "L"] if rnn.batch_first else ["L", "N"]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, batch_dims + [rnn.input_size])]
    state_shape = [directions * layers, "N", hidden]
    if with_h_0:
        inputs.append(helper.make_tensor_value_info("h_0", TensorProto.FLOAT, state_shape))
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))
    initializers, nodes = [], []

    def constant(name, value, dtype=np.float32):
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, node_inputs, node_outputs, name, **attributes):
        nodes.append(helper.make_node(op, node_inputs, node_outputs, name=name, **attributes))
        return node_outputs[0]

    x = "input"
    if rnn.batch_first:  # (N, L, H_in) -> (L, N, H_in): ONNX Runtime's RNN runs only layout 0
        x = node("Transpose", [x], ["input_time_major"], "input_to_time_major", perm=[1, 0, 2])
    if directions == 1:
        squeeze_axes = constant("direction_axis", [1], np.int64)
    else:
        merged_shape = constant("merged_directions_shape", [0, 0, -1], np.int64)
    state_axis = constant("state_axis", [0], np.int64) if with_h_0 and layers > 1 else None
    final_states = []
    for layer in range(layers):
        weights = [np.stack([params[f"weight_{kind}_l{layer}{s}"] for s in suffixes]) for kind in ("ih", "hh")]
        if rnn.bias:
            biases = np.stack([np.concatenate([params[f"bias_ih_l{layer}{s}"], params[f"bias_hh_l{layer}{s}"]])
                               for s in suffixes])
        else:  # ONNX's B is optional, but zeros keep every file alike; load() reads bias=False from the metadata
            biases = np.zeros((directions, 2 * hidden))
        initial = ""
        if with_h_0:
            if layers == 1:
                initial = "h_0"
            else:
                starts = constant(f"h_0_l{layer}_start", [layer * directions], np.int64)
                ends = constant(f"h_0_l{layer}_end", [(layer + 1) * directions], np.int64)
                initial = node("Slice", ["h_0", starts, ends, state_axis], [f"h_0_l{layer}"], f"h_0_l{layer}_slice")
        rnn_inputs = [x, constant(f"W_l{layer}", weights[0]), constant(f"R_l{layer}", weights[1]),
                      constant(f"B_l{layer}", biases), "lengths" if with_lengths else "", initial]
        while rnn_inputs[-1] == "":  # trailing optional inputs are left out rather than named ""
            rnn_inputs.pop()
        y, y_h = f"Y_l{layer}", f"Y_h_l{layer}"
        node("RNN", rnn_inputs, [y, y_h], f"rnn_l{layer}", hidden_size=hidden,
             activations=[_ACTIVATIONS[rnn.nonlinearity]] * directions,
             direction="bidirectional" if directions == 2 else "forward")
        final_states.append(y_h)
        # Y is (L, D, N, H); numbarnn's output is (L, N, D * H), the forward direction first.
        if directions == 1:
            x = node("Squeeze", [y, squeeze_axes], [f"output_l{layer}"], f"output_l{layer}_squeeze")
        else:
            swapped = node("Transpose", [y], [f"Y_l{layer}_time_batch_direction"], f"Y_l{layer}_transpose",
                           perm=[0, 2, 1, 3])
            x = node("Reshape", [swapped, merged_shape], [f"output_l{layer}"], f"output_l{layer}_reshape")
    if rnn.batch_first:
        node("Transpose", [x], ["output"], "output_to_batch_first", perm=[1, 0, 2])
    else:
        node("Identity", [x], ["output"], "output_identity")
    if layers == 1:
        node("Identity", final_states, ["h_n"], "h_n_identity")
    else:
        node("Concat", final_states, ["h_n"], "h_n_concat", axis=0)
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, batch_dims + [directions * hidden]),
               helper.make_tensor_value_info("h_n", TensorProto.FLOAT, state_shape)]
    if head is not None:
        # logits = output @ weight.T + bias over the last axis (Gemm takes 2-D input only)
        product = node("MatMul", ["output", constant("head_weight_t", head.weight.T)], ["head_product"],
                       "head_matmul")
        if head.bias_enabled:
            node("Add", [product, constant("head_bias", head.bias)], ["logits"], "head_add")
        else:
            node("Identity", [product], ["logits"], "head_identity")
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                     batch_dims + [head.out_features]))
    graph = helper.make_graph(nodes, "numbarnn_rnn", inputs, outputs, initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="numbarnn",
                              ir_version=helper.find_min_ir_version_for(opset_ids))
    description = {"rnn": dict(input_size=rnn.input_size, hidden_size=hidden, num_layers=layers,
                               nonlinearity=rnn.nonlinearity, bias=rnn.bias, batch_first=rnn.batch_first,
                               dropout=rnn.dropout, bidirectional=rnn.bidirectional)}
    if head is not None:
        description["head"] = dict(in_features=head.in_features, out_features=head.out_features,
                                   bias=head.bias_enabled)
    helper.set_model_props(model, {METADATA_KEY: json.dumps(description)})
    return model
