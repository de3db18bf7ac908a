"""``python -m numbarnn bench``: time numbarnn.RNN and torch.nn.RNN side by side, alternating, in one process.

Both libraries get the same weights (``load_state_dict``), the same input and the same thread count. Each
configuration is warmed up first (numba's JIT, torch's allocator), then the repeats interleave the two libraries,
alternating which goes first, so that noise from a shared machine hits both alike; the table shows medians.

torch and threadpoolctl are imported inside :func:`run` so that ``python -m numbarnn --help`` stays fast.
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Config:
    """One benchmark problem: input (L, N, H_in), an RNN of ``num_layers`` layers of width H_out."""

    steps: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool

    def describe(self):
        return (f"({self.steps}, {self.batch}, {self.input_size}, {self.hidden_size}, {self.num_layers}, "
                f"{'yes' if self.bidirectional else 'no'})")


CONFIGS = {
    "tiny": Config(100, 1, 32, 64, 1, False),
    "small": Config(100, 32, 64, 128, 2, False),
    "medium": Config(200, 64, 256, 256, 2, False),
    "medium_bi": Config(200, 64, 256, 256, 2, True),
    "large": Config(100, 64, 512, 1024, 1, False),
}

# The project's speed targets, as torch time / numbarnn time: (inference forward, training step).
TARGETS = {
    "tiny": (15.0, 50.0),
    "small": (2.0, 3.0),
    "medium": (1.3, 1.4),
    "medium_bi": (1.5, 1.5),
    "large": (1.1, 1.2),
}

SEED = 0
WARMUP_CALLS = 3
# Each sample times enough back-to-back calls to last this long, so that timer resolution and per-sample overhead
# do not matter for the tiny configuration; the reported figure is the time per call.
MIN_SAMPLE_SECONDS = 0.02
CUSTOM_NAME = "custom"
INSTALL_HINT = 'install it with `pip install {requirement}`, or install the benchmark extras: pip install -e ".[bench]"'


def add_arguments(parser):
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument("--configs", type=_config_names, nargs="+", action=_ExtendNames, metavar="NAME",
                        help=f"configurations to run, separated by spaces or commas (default: all of "
                             f"{', '.join(CONFIGS)})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of parameters and data (default: float32)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads for torch, BLAS and numba (default: every core this process may use, "
                             f"{_available_cores()} here)")
    parser.add_argument("--repeats", type=_positive_int, default=10,
                        help="timed samples per library and configuration; the table shows medians (default: 10)")
    parser.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh",
                        help="activation of both RNNs (default: tanh)")
    # For tests and quick experiments: one extra configuration "L,N,H_in,H_out,layers,bidirectional" (no target).
    parser.add_argument("--custom-config", type=_custom_config, default=None, help=argparse.SUPPRESS)


def run(args):
    """Run the benchmark described by parsed ``args``; prints the report and returns the exit code (0 or 2)."""
    try:
        import torch
    except ImportError:
        print("numbarnn bench compares against PyTorch, which is not installed; "
              + INSTALL_HINT.format(requirement="torch==2.13.0"), file=sys.stderr)
        return 2
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        print("numbarnn bench sets the BLAS thread count with threadpoolctl, which is not installed; "
              + INSTALL_HINT.format(requirement="threadpoolctl"), file=sys.stderr)
        return 2
    import numba
    import scipy.linalg  # noqa: F401  loads scipy's BLAS (numba's np.dot uses it) so threadpoolctl can limit it

    threads = args.threads or _available_cores()
    if threads > numba.config.NUMBA_NUM_THREADS:
        print(f"--threads {threads} is more than numba's thread pool holds (NUMBA_NUM_THREADS="
              f"{numba.config.NUMBA_NUM_THREADS}); use --threads {numba.config.NUMBA_NUM_THREADS} or less, or set "
              f"the environment variable NUMBA_NUM_THREADS={threads}", file=sys.stderr)
        return 2
    configs = _selected_configs(args)
    previous_torch_threads, previous_numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            blas = [library for library in threadpool_info() if library["user_api"] == "blas"]
            progress = _Progress(sys.stderr)
            results = {}
            for index, (name, config) in enumerate(configs.items()):
                progress.prefix = f"[{index + 1}/{len(configs)}] {name}"
                results[name] = measure(config, args.dtype, args.nonlinearity, args.repeats, torch, progress)
            progress.done()
        print(format_header(args, threads, torch, numba, blas, configs))
        print(format_table(results))
    finally:
        torch.set_num_threads(previous_torch_threads)
        numba.set_num_threads(previous_numba_threads)
    return 0


# -- measurement -------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """Median seconds per call of each library and task, and how closely the forward outputs agree."""

    torch_forward: float
    numbarnn_forward: float
    torch_training: float
    numbarnn_training: float
    forward_relative_error: float


def measure(config, dtype, nonlinearity, repeats, torch, progress):
    """Time both libraries on ``config``: warm up, calibrate, then ``repeats`` interleaved samples of each task."""
    import numbarnn

    torch.manual_seed(SEED)
    reference = torch.nn.RNN(config.input_size, config.hidden_size, config.num_layers, nonlinearity=nonlinearity,
                             bidirectional=config.bidirectional, dtype=getattr(torch, dtype))
    options = dict(nonlinearity=nonlinearity, bidirectional=config.bidirectional, dtype=dtype)
    inference = numbarnn.RNN(config.input_size, config.hidden_size, config.num_layers, **options).eval()
    training = numbarnn.RNN(config.input_size, config.hidden_size, config.num_layers, **options)
    inference.load_state_dict(reference.state_dict())
    training.load_state_dict(reference.state_dict())

    rng = np.random.default_rng(SEED)
    directions = 2 if config.bidirectional else 1
    x = rng.standard_normal((config.steps, config.batch, config.input_size)).astype(dtype)
    grad_output = rng.standard_normal((config.steps, config.batch, directions * config.hidden_size)).astype(dtype)
    x_torch, grad_output_torch = torch.from_numpy(x), torch.from_numpy(grad_output)

    def torch_forward():
        reference(x_torch)

    def torch_training_step():
        reference.zero_grad()
        output, _ = reference(x_torch)
        output.backward(grad_output_torch)

    def numbarnn_forward():
        inference(x)

    def numbarnn_training_step():
        training.zero_grad()
        training(x)
        # The input is data: like torch's input without requires_grad, it needs no gradient.
        training.backward(grad_output, need_input_grad=False)

    # (task, library) -> (function, whether it runs under torch.inference_mode)
    tasks = {
        ("forward", "torch"): (torch_forward, True),
        ("forward", "numbarnn"): (numbarnn_forward, False),
        ("training", "torch"): (torch_training_step, False),
        ("training", "numbarnn"): (numbarnn_training_step, False),
    }

    def sample(key, number):
        function, inference_mode = tasks[key]
        with torch.inference_mode(inference_mode):
            start = time.perf_counter()
            for _ in range(number):
                function()
            return (time.perf_counter() - start) / number

    progress.update("warming up (with a cold JIT cache numbarnn compiles its kernels first: up to a minute)")
    calls_per_sample = {}
    for key in tasks:
        for _ in range(WARMUP_CALLS - 1):
            sample(key, 1)
        calls_per_sample[key] = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(sample(key, 1), 1e-9)))

    with torch.inference_mode():
        expected = reference(x_torch)[0].numpy()
    relative_error = float(np.max(np.abs(inference(x)[0] - expected)) / max(np.max(np.abs(expected)), 1e-30))

    samples = {key: [] for key in tasks}
    libraries = ("torch", "numbarnn")
    for repeat in range(repeats):
        progress.update(f"repeat {repeat + 1}/{repeats}")
        order = libraries if repeat % 2 == 0 else libraries[::-1]
        for task in ("forward", "training"):
            for library in order:
                samples[task, library].append(sample((task, library), calls_per_sample[task, library]))
    median = {key: statistics.median(values) for key, values in samples.items()}
    return Result(median["forward", "torch"], median["forward", "numbarnn"], median["training", "torch"],
                  median["training", "numbarnn"], relative_error)


# -- report ------------------------------------------------------------------------------------------------------
TABLE_COLUMNS = ("config", "torch fwd ms", "numbarnn fwd ms", "fwd ratio", "fwd target", "fwd met",
                 "torch train ms", "numbarnn train ms", "train ratio", "train target", "train met", "fwd rel err")


def format_header(args, threads, torch, numba, blas, configs):
    """The lines above the table: what was run, library versions and thread settings."""
    import scipy

    import numbarnn

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel numba function has run in this process
        layer = "not started"
    blas_text = ", ".join(f"{lib['internal_api']} {lib['version']} ({lib['prefix']}) {lib['num_threads']}"
                          for lib in blas) or "none found"
    lines = [
        f"numbarnn bench: numbarnn.RNN vs torch.nn.RNN, {args.dtype}, nonlinearity={args.nonlinearity}, "
        f"median of {args.repeats} interleaved samples per cell",
        f"versions: numbarnn {numbarnn.__version__}, numba {numba.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, torch {torch.__version__}, python {platform.python_version()}",
        f"cpu: {_cpu_name()}, {_available_cores()} cores available",
        f"threads: {threads}; torch.get_num_threads()={torch.get_num_threads()}, "
        f"numba.get_num_threads()={numba.get_num_threads()} (threading layer: {layer}), BLAS via threadpoolctl: "
        f"{blas_text}",
        "configs (L, N, H_in, H_out, layers, bidirectional): "
        + ", ".join(f"{name} {config.describe()}" for name, config in configs.items()),
        "ratio = torch ms / numbarnn ms (above 1: numbarnn is faster). forward: torch under inference_mode, numbarnn "
        "in eval mode. train: zero_grad + forward + backward of a fixed random grad_output; both compute the parameter "
        "gradients (and h_0's), not the input's (the input is data, torch's requires_grad=False).",
        "",
    ]
    return "\n".join(lines)


def format_table(results):
    """A Markdown table, one row per configuration, then how many targets were met."""
    rows = []
    met = {"fwd": [], "train": []}
    for name, result in results.items():
        forward_target, training_target = TARGETS.get(name, (None, None))
        row = [name]
        for task, torch_time, numbarnn_time, target in (
                ("fwd", result.torch_forward, result.numbarnn_forward, forward_target),
                ("train", result.torch_training, result.numbarnn_training, training_target)):
            ratio = torch_time / numbarnn_time
            row += [_format_ms(torch_time * 1e3), _format_ms(numbarnn_time * 1e3), f"{ratio:.2f}x"]
            if target is None:
                row += ["-", "-"]
            else:
                met[task].append(ratio >= target)
                row += [f">= {target:g}x", "yes" if ratio >= target else "NO"]
        row.append(f"{result.forward_relative_error:.1e}")
        rows.append(row)
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(TABLE_COLUMNS)]

    def line(cells):  # names left-aligned, numbers right-aligned
        return "| " + " | ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                                 for index, (cell, width) in enumerate(zip(cells, widths, strict=True))) + " |"

    separator = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (width + 1) + ":" for width in widths[1:]) + "|"
    lines = [line(TABLE_COLUMNS), separator]
    lines += [line(row) for row in rows]
    if met["fwd"] or met["train"]:
        lines += ["", f"targets met: forward {sum(met['fwd'])}/{len(met['fwd'])}, "
                      f"training {sum(met['train'])}/{len(met['train'])}"]
    return "\n".join(lines)


# -- helpers -----------------------------------------------------------------------------------------------------
class _Progress:
    """One status line on ``stream``: rewritten in place on a terminal, one line per update otherwise."""

    def __init__(self, stream):
        self.stream = stream
        self.interactive = stream.isatty()
        self.prefix = ""
        self.width = 0

    def update(self, message):
        text = f"{self.prefix}: {message}"
        if self.interactive:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self):
        if self.interactive:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


class _ExtendNames(argparse.Action):
    """Collect the names of every ``--configs`` occurrence, each given as space- or comma-separated names."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = list(getattr(namespace, self.dest) or [])
        for group in values:
            names.extend(group)
        setattr(namespace, self.dest, names)


def _selected_configs(args):
    names = list(dict.fromkeys(args.configs)) if args.configs else []
    if not names and args.custom_config is None:
        names = list(CONFIGS)
    configs = {name: CONFIGS[name] for name in names}
    if args.custom_config is not None:
        configs[CUSTOM_NAME] = args.custom_config
    return configs


def _config_names(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown configuration {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(CONFIGS)}")
    return names


def _custom_config(text):
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 6:
        raise argparse.ArgumentTypeError(f"expected L,N,H_in,H_out,layers,bidirectional (six values), got {text!r}")
    try:
        sizes = [int(part) for part in parts[:5]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"the first five values must be integers, got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    bidirectional = parts[5].lower()
    if bidirectional not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"bidirectional must be yes or no, got {parts[5]!r}")
    return Config(*sizes, bidirectional in ("yes", "true", "1"))


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _available_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _format_ms(milliseconds):
    if milliseconds >= 100:
        return f"{milliseconds:.0f}"
    if milliseconds >= 10:
        return f"{milliseconds:.1f}"
    if milliseconds >= 1:
        return f"{milliseconds:.2f}"
    return f"{milliseconds:.3f}"
