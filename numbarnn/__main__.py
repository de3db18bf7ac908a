"""Command line: ``python -m numbarnn {demo,check,bench,export,compile}`` and ``python -m numbarnn --version`` (also
installed as the ``numbarnn`` command)."""

import argparse
import importlib
import sys

from . import __version__

# subcommand -> (module that implements it, one-line help); each module has add_arguments(parser) and run(args).
COMMANDS = {
    "demo": ("numbarnn.cli.demo", "train a character-level language model on the bundled corpus (the main job)"),
    "check": (
        "numbarnn.cli.check",
        "compare outputs and gradients with torch.nn's RNN, LSTM, GRU and their cells over a grid of settings",
    ),
    "bench": (
        "numbarnn.cli.bench",
        "time numbarnn and torch.nn.RNN fairly, each in its own process (forward, training step, one step)",
    ),
    "export": (
        "numbarnn.cli.export",
        "write a model saved with numbarnn.save (RNN, LSTM or GRU + optional Linear head) as ONNX",
    ),
    "compile": (
        "numbarnn.cli.compile",
        "fill numba's cache ahead of time (container images, Dask workers, CI): the kernels of the cells "
        "and dtypes given",
    ),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="numbarnn",
        description="numbarnn: RNN, LSTM and GRU on the CPU with PyTorch's semantics, compiled with Numba.",
    )
    parser.add_argument("--version", action="version", version=f"numbarnn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
