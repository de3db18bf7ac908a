"""``python -m numbarnn export MODEL.npz MODEL.onnx``: write a model saved with ``numbarnn.save`` as an ONNX file.

The checkpoint must hold one ``RNN``, ``LSTM`` or ``GRU`` (an LSTM without ``proj_size``, which ONNX cannot express)
and at most one ``Linear`` (the head, applied to its output), e.g. what ``python -m numbarnn demo --save MODEL.npz``
writes. ``numbarnn.onnx`` (and with it the ``onnx`` package) is imported
inside :func:`run`, so that ``python -m numbarnn --help`` works without onnx installed.
"""

import sys
from pathlib import Path

from ..linear import Linear
from ..rnn import RecurrentBase
from ..serialization import CheckpointError, load

INSTALL_HINT = "install it with `pip install 'numbarnn[onnx]'` (or `pip install onnx onnxruntime`)"


class UsageError(Exception):
    """A problem with the command line or the checkpoint: reported in one line, exit code 2."""


def add_arguments(parser):
    parser.add_argument("model", type=Path, metavar="MODEL.npz", help="a checkpoint written by numbarnn.save")
    parser.add_argument("output", type=Path, metavar="MODEL.onnx", help="the ONNX file to write")
    parser.add_argument(
        "--h0",
        action="store_true",
        help="give the graph an input h_0 (D * num_layers, N, H_out), the initial state, and for an "
        "LSTM also c_0, the initial cell state (default: they start at zeros)",
    )
    parser.add_argument(
        "--lengths", action="store_true", help="give the graph an input lengths (N,) int32, each sequence's length"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset to write (default 17)")


def run(args):
    try:
        try:
            from .. import onnx as numbarnn_onnx
        except ImportError as error:
            raise UsageError(f"export needs the onnx package ({error}); {INSTALL_HINT}") from None
        rnn, head = _modules(args.model)
        try:
            model = numbarnn_onnx.export(args.output, rnn, head, opset=args.opset, h_0=args.h0, lengths=args.lengths)
        except (ValueError, OSError) as error:
            raise UsageError(str(error)) from None
    except UsageError as error:
        print(f"numbarnn export: error: {error}", file=sys.stderr)
        return 2
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    print(
        f"wrote {args.output}: {rnn!r}"
        + (f" -> {head!r}" if head is not None else "")
        + f"; inputs {', '.join(inputs)}; outputs {', '.join(outputs)}"
    )
    return 0


def _modules(path):
    """The checkpoint's RNN, LSTM or GRU and its head (None without one)."""
    try:
        modules = load(path)
    except (FileNotFoundError, CheckpointError) as error:
        raise UsageError(str(error)) from None
    rnns = {name: module for name, module in modules.items() if isinstance(module, RecurrentBase)}
    linears = {name: module for name, module in modules.items() if isinstance(module, Linear)}
    others = sorted(set(modules) - set(rnns) - set(linears))
    if len(rnns) != 1 or len(linears) > 1 or others:
        listing = ", ".join(f"{name} ({type(module).__name__})" for name, module in modules.items())
        raise UsageError(
            f"{path} holds {listing}; export needs exactly one RNN, LSTM or GRU and at most one Linear head"
        )
    return next(iter(rnns.values())), next(iter(linears.values()), None)
