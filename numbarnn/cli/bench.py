"""``python -m numbarnn bench``: time numbarnn's RNN, LSTM and GRU against torch.nn's fairly, each library in its own
process (``--cell rnn lstm gru`` or ``--cell all``; the vanilla RNN by default).

Interleaving the two libraries in one process is unfair: torch's OpenMP threads and OpenBLAS's threads keep spinning
after their calls and steal the cores from the other library (torch's small forward measured 12.4 ms alone and
28.7 ms interleaved). So each library is timed alone, in a fresh interpreter (:mod:`numbarnn.cli.bench_worker`):

* every round starts one process per library, alternating which goes first (torch, numbarnn; numbarnn, torch; ...),
  with the same thread count for both (environment variables for every runtime, then each library's own call and
  threadpoolctl);
* each process warms every task up (numba compiles or loads its cache there), then takes ``--repeats`` samples;
* the table shows, per library and task, the median over the rounds' processes of each process's median, and the
  ratio torch ÷ numbarnn of those;
* one more process per round measures the machine's large-GEMM throughput with scipy's BLAS (through numba's
  ``np.dot``), the ceiling each configuration's forward GFLOP/s is compared with.

Both libraries load the same weights and data, written once by this process (seeded), and their forward outputs are
compared. The parent imports neither torch, scipy nor threadpoolctl: it only checks that they are installed.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._cells import GATES
from . import bench_kernels, bench_startup
from ._progress import Progress
from .bench_worker import MODULES

LIBRARIES = ("torch", "numbarnn")
CELLS = tuple(MODULES)  # rnn, lstm, gru
ALL_CELLS = "all"


@dataclass(frozen=True)
class Config:
    """One benchmark problem: input (L, N, H_in), an RNN of ``num_layers`` layers of width H_out."""

    steps: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def describe(self):
        return (
            f"({self.steps}, {self.batch}, {self.input_size}, {self.hidden_size}, {self.num_layers}, "
            f"{'yes' if self.bidirectional else 'no'})"
        )

    def forward_flops(self, gates=1):
        """The forward's matrix-product flops: sum over layers and directions of 2·L·N·G·(H_in·H + H·H), G the
        cell's gate count (numbarnn._cells.GATES: RNN 1, GRU 3, LSTM 4)."""
        flops = 0
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.directions * self.hidden_size
            flops += (
                self.directions
                * 2
                * self.steps
                * self.batch
                * gates
                * (layer_input * self.hidden_size + self.hidden_size * self.hidden_size)
            )
        return flops


CONFIGS = {
    "tiny": Config(100, 1, 32, 64, 1, False),
    "small": Config(100, 32, 64, 128, 2, False),
    "medium": Config(200, 64, 256, 256, 2, False),
    "medium_bi": Config(200, 64, 256, 256, 2, True),
    "large": Config(100, 64, 512, 1024, 1, False),
}
# One time step of a streaming model (L = 1, N = 1, one layer), in eval mode: numbarnn's ``step`` (or the sequence
# call on L = 1 where there is no ``step``) against torch's module on L = 1, and each cell class against torch's.
STEP_NAME = "step"
STEP_CONFIG = Config(1, 1, 32, 64, 1, False)
CONFIG_NAMES = (*CONFIGS, STEP_NAME)
CUSTOM_NAME = "custom"

SEED = 0
GEMM_SIZE = 2048
INSTALL_HINT = 'install it with `pip install {requirement}`, or install the benchmark extras: pip install -e ".[bench]"'
# every runtime that could start a thread pool reads one of these when it starts
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# The vector instruction sets the report names when the CPU has them (LLVM's feature names, x86 and Arm): the widths
# and instructions numba's kernels and the BLAS can use, which decide most of the figures.
VECTOR_EXTENSIONS = (
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
    "amx-tile",
    "neon",
    "sve",
    "sve2",
)


def add_arguments(parser):
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument(
        "--cell",
        type=_cell_names,
        nargs="+",
        action=_ExtendNames,
        metavar="CELL",
        help=f"the cells to time, each against its torch counterpart (torch.nn.RNN, LSTM, GRU), "
        f"separated by spaces or commas: {', '.join(CELLS)} or {ALL_CELLS} (default: rnn)",
    )
    parser.add_argument(
        "--configs",
        type=_config_names,
        nargs="+",
        action=_ExtendNames,
        metavar="NAME",
        help=f"configurations to run, separated by spaces or commas (default: all of {', '.join(CONFIG_NAMES)})",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of parameters and data (default: float32)",
    )
    parser.add_argument(
        "--nonlinearity",
        choices=("tanh", "relu"),
        default="tanh",
        help="activation of the vanilla RNNs (--cell rnn) in both libraries (default: tanh)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="threads for torch, BLAS and numba alike (default: every core this process may use, "
        f"{_available_cores()} here)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="processes per library: each round runs one fresh process per library, alternating "
        "which goes first (default: 3)",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=10, help="timed samples per task in each process (default: 10)"
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="instead: the panel product's GFLOP/s over row counts beside BLAS, on one thread, with "
        "the CPU, instruction set and tile in use (numbarnn.cli.bench_kernels)",
    )
    bench_kernels.add_arguments(parser)
    parser.add_argument(
        "--startup",
        action="store_true",
        help="instead: the start-up cost in fresh processes with a cold and a warm JIT cache (import, "
        "first inference call, first training step per --cell; the demo's first update)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every process's samples and the summary to PATH as JSON",
    )
    # For tests and quick experiments: one extra configuration "L,N,H_in,H_out,layers,bidirectional", and
    # a smaller GEMM for the ceiling.
    parser.add_argument("--custom-config", type=_custom_config, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gemm-size", type=_positive_int, default=GEMM_SIZE, help=argparse.SUPPRESS)


def run(args):
    """Run the benchmark described by parsed ``args``; prints the report and returns the exit code (0, 1 or 2)."""
    if args.kernels:
        return bench_kernels.run(args)
    if args.startup:
        return bench_startup.run(args)
    for module, requirement, role in (
        ("torch", "torch==2.13.0", "compares against PyTorch"),
        ("threadpoolctl", "threadpoolctl", "sets the BLAS thread count with threadpoolctl"),
        ("scipy", "scipy", "measures the GEMM ceiling with scipy's BLAS"),
    ):
        if importlib.util.find_spec(module) is None:
            print(
                f"numbarnn bench {role}, which is not installed; " + INSTALL_HINT.format(requirement=requirement),
                file=sys.stderr,
            )
            return 2
    threads = args.threads or _available_cores()
    configs = _selected_configs(args)
    cells = selected_cells(args)
    measure_ceiling = any(name != STEP_NAME for name in configs)
    processes = args.rounds * (len(LIBRARIES) + measure_ceiling)
    progress = Progress(processes, "process", file=sys.stderr, leave=False)
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="numbarnn-bench-") as data_dir:
        spec_path = write_inputs(Path(data_dir), configs, args, threads, cells)
        try:
            reports = run_rounds(spec_path, args.rounds, progress, measure_ceiling)
        except WorkerError as error:
            progress.close()
            print(f"numbarnn bench: {error}", file=sys.stderr)
            return 1
        progress.close()
        errors = output_errors(Path(data_dir), configs, cells)
    summary = summarize(reports, configs, cells)
    summary["load_average"] = {"before": load_before, "after": _load_average()}
    text = format_report(args, threads, configs, reports, summary, errors, cells)
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        "cells": cells,
                        "dtype": args.dtype,
                        "nonlinearity": args.nonlinearity,
                        "threads": threads,
                        "rounds": args.rounds,
                        "repeats": args.repeats,
                    },
                    "configs": {name: vars(config) for name, config in configs.items()},
                    "processes": reports,
                    "summary": summary,
                    "forward_relative_error": errors,
                    "report": text,
                },
                indent=1,
            )
        )
    return 0


# -- inputs ----------------------------------------------------------------------------------------------------------
def config_key(cell, name):
    """The key of one cell's configuration in the workers' spec, their timings, the summary and the saved files."""
    return f"{cell}-{name}"


def write_inputs(data_dir, configs, args, threads, cells=("rnn",)):
    """Write each cell's and configuration's weights and data (seeded) and the workers' settings; return the settings'
    path.

    The weights are a seeded numbarnn module's (torch's initialisation, torch's names); both workers load them.
    """
    import numbarnn

    rng = np.random.default_rng(SEED)
    spec_configs = {}
    for cell in cells:
        options = {"nonlinearity": args.nonlinearity} if cell == "rnn" else {}
        module_class = getattr(numbarnn, MODULES[cell][0])
        for name, config in configs.items():
            module = module_class(
                config.input_size,
                config.hidden_size,
                config.num_layers,
                bidirectional=config.bidirectional,
                dtype=args.dtype,
                seed=SEED,
                **options,
            )
            arrays = {f"param.{key}": value for key, value in module.state_dict().items()}
            if name == STEP_NAME:
                # the cell gets the layer's weights: the cell's names are the layer's without the "_l0" suffix
                arrays.update({f"cell.{key[: -len('_l0')]}": value for key, value in module.state_dict().items()})
                arrays["x"] = rng.standard_normal((config.batch, config.input_size)).astype(args.dtype)
                state_names = ("h_0", "c_0") if cell == "lstm" else ("h_0",)
                for state_name in state_names:
                    arrays[state_name] = rng.standard_normal((1, config.batch, config.hidden_size)).astype(args.dtype)
            else:
                arrays["x"] = rng.standard_normal((config.steps, config.batch, config.input_size)).astype(args.dtype)
                arrays["grad_output"] = rng.standard_normal(
                    (config.steps, config.batch, config.directions * config.hidden_size)
                ).astype(args.dtype)
            np.savez(data_dir / f"{config_key(cell, name)}.npz", **arrays)
            spec_configs[config_key(cell, name)] = dict(
                vars(config), kind="step" if name == STEP_NAME else "sequence", cell=cell
            )
    spec = {
        "threads": threads,
        "dtype": args.dtype,
        "nonlinearity": args.nonlinearity,
        "repeats": args.repeats,
        "gemm_size": args.gemm_size,
        "data_dir": os.fspath(data_dir),
        "configs": spec_configs,
    }
    spec_path = data_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return spec_path


# -- processes -------------------------------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    """A worker process failed: the message holds its exit code and the end of its stderr."""


def run_rounds(spec_path, rounds, progress, measure_ceiling=True):
    """Run ``rounds`` rounds (the GEMM ceiling if asked, then both libraries alternating who goes first); return
    every worker's report. ``progress`` (a :class:`Progress`) counts the processes started."""
    reports = []
    for round_index in range(rounds):
        order = LIBRARIES if round_index % 2 == 0 else LIBRARIES[::-1]
        for library in ("gemm", *order) if measure_ceiling else order:
            label = f"round {round_index + 1}/{rounds}, {library}"
            progress.update(
                len(reports) + 1,
                f"{label}: starting (with a cold JIT cache numbarnn first compiles its kernels: up to a minute)",
            )
            report = run_worker(library, spec_path, save_outputs=round_index == 0, progress=progress, label=label)
            report["round"] = round_index
            reports.append(report)
    return reports


# torch's profiler (kineto), which the torch worker runs once to see which kernels torch uses, logs its start and stop
# on stderr in torch 2.13 ("USDT:<date> <time> <pid>:<tid> SyncActivityProfilerHandler.cpp:52] profiler_start"):
# kept for an error message like the rest of the worker's stderr, but not shown as the worker's progress.
_PROFILER_LOG = re.compile(r"USDT:.*\] profiler_(start|stop)")


def worker_status(line):
    """What a line of a worker's stderr shows as its progress: the line, or None for torch's profiler log."""
    line = line.strip()
    return None if _PROFILER_LOG.fullmatch(line) else line


def run_worker(library, spec_path, save_outputs, progress, label):
    """Run one worker process to completion; return its JSON report (raises WorkerError if it fails)."""
    spec = json.loads(spec_path.read_text())
    environment = dict(os.environ)
    environment.update({variable: str(spec["threads"]) for variable in THREAD_VARIABLES})
    # the worker must import this very numbarnn (a worktree or checkout), not another installed copy
    package_root = os.fspath(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "numbarnn.cli.bench_worker", library, os.fspath(spec_path)]
    if save_outputs:
        command.append("--save-outputs")
    tail = deque(maxlen=40)  # the end of the worker's stderr, for the error message
    with tempfile.TemporaryFile(mode="w+") as stdout:
        # stdout goes to a file: reading stderr line by line from a pipe while stdout also filled a pipe could block
        with subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=environment) as process:
            for line in process.stderr:
                tail.append(line.rstrip("\n"))
                status = worker_status(line)
                if status is not None:
                    progress.set_status(f"{label} (pid {process.pid}): {status}")
            returncode = process.wait()
        stdout.seek(0)
        output = stdout.read()
    if returncode != 0:
        raise WorkerError(
            f"the {library} worker ({label}) failed with exit code {returncode}; command: "
            f"{' '.join(command)}; the end of its stderr:\n" + "\n".join(tail)
        )
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise WorkerError(
            f"the {library} worker ({label}) printed no JSON report; its stdout:\n{output[-2000:]}"
        ) from None


# -- results ---------------------------------------------------------------------------------------------------------
def process_medians(reports, library, config_name, task):
    """Each of ``library``'s processes' median sample (seconds per call), in round order."""
    return [
        statistics.median(report["timings"][config_name][task]) for report in reports if report["library"] == library
    ]


def median_of_medians(reports, library, config_name, task):
    """The median over ``library``'s processes of each process's median sample (seconds per call)."""
    return statistics.median(process_medians(reports, library, config_name, task))


def summarize(reports, configs, cells=("rnn",)):
    """{config key: {task: {library: seconds per call, "ratio": torch ÷ numbarnn}}} (keys from :func:`config_key`)
    and the GEMM ceiling in GFLOP/s."""
    summary = {"configs": {}, "gemm_gflops": None}
    gemm = [report for report in reports if report["library"] == "gemm"]
    if gemm:
        ceiling_seconds = median_of_medians(gemm, "gemm", "gemm", "seconds")
        summary["gemm_gflops"] = gemm[0]["gemm_flops"] / ceiling_seconds / 1e9
    for cell in cells:
        for name, config in configs.items():
            entry_key = config_key(cell, name)
            tasks = ("step", "cell") if name == STEP_NAME else ("fwd", "train")
            entry = {}
            for task in tasks:
                times = {library: median_of_medians(reports, library, entry_key, task) for library in LIBRARIES}
                # slowest ÷ fastest process median: how much the processes disagreed (a busy machine shows here)
                spread = {
                    f"{library}_spread": max(medians) / min(medians)
                    for library in LIBRARIES
                    for medians in [process_medians(reports, library, entry_key, task)]
                }
                entry[task] = dict(times, ratio=times["torch"] / times["numbarnn"], **spread)
            if name != STEP_NAME:
                entry["fwd"]["numbarnn_gflops"] = config.forward_flops(GATES[cell]) / entry["fwd"]["numbarnn"] / 1e9
                entry["fwd"]["ceiling_fraction"] = entry["fwd"]["numbarnn_gflops"] / summary["gemm_gflops"]
            summary["configs"][entry_key] = entry
    return summary


def output_errors(data_dir, configs, cells=("rnn",)):
    """Max |numbarnn - torch| / max |torch| of each configuration's saved outputs (the same weights must agree)."""
    errors = {}
    for cell in cells:
        for name in configs:
            entry_key = config_key(cell, name)
            for output in ("step", "cell") if name == STEP_NAME else ("forward",):
                expected = np.load(data_dir / f"output-torch-{entry_key}-{output}.npy")
                actual = np.load(data_dir / f"output-numbarnn-{entry_key}-{output}.npy")
                scale = max(float(np.max(np.abs(expected))), 1e-30)
                errors[f"{entry_key}.{output}"] = float(np.max(np.abs(actual - expected))) / scale
    return errors


# -- report ----------------------------------------------------------------------------------------------------------
TABLE_COLUMNS = (
    "config",
    "torch fwd ms",
    "numbarnn fwd ms",
    "fwd ratio",
    "torch train ms",
    "numbarnn train ms",
    "train ratio",
    "numbarnn fwd GFLOP/s",
    "% of GEMM ceiling",
    "fwd rel err",
)


def step_columns(cell="rnn"):
    """The single-step table's columns for ``cell``: its module on L = 1 and step(), its cell class against torch's."""
    module, cell_class = MODULES[cell]
    return (
        "config",
        f"torch {module} (L=1) us",
        "numbarnn step us",
        "step ratio",
        f"torch {cell_class} us",
        f"numbarnn {cell_class} us",
        "cell ratio",
        "rel err",
    )


STEP_COLUMNS = step_columns()


def cell_title(cell, args):
    """The line above a cell's tables: which modules they compare."""
    module = MODULES[cell][0]
    activation = f" (nonlinearity={args.nonlinearity})" if cell == "rnn" else ""
    return f"{module}: numbarnn.{module} vs torch.nn.{module}{activation}"


def format_report(args, threads, configs, reports, summary, errors, cells=("rnn",)):
    """The whole printed report: header, then for each cell its title, its configurations' table and its step
    table, then the spread between processes."""
    lines = [format_header(args, threads, configs, reports, summary, cells), ""]
    sequence_names = [name for name in configs if name != STEP_NAME]
    for cell in cells:
        lines += [cell_title(cell, args), ""]
        if sequence_names:
            lines += [format_table(summary, cell, sequence_names, errors), ""]
        if STEP_NAME in configs:
            lines += [format_step_table(summary, cell, errors, step_call(reports, cell)), ""]
    spreads = [
        (value, f"{library.removesuffix('_spread')} {name} {task}")
        for name, entry in summary["configs"].items()
        for task, values in entry.items()
        for library, value in values.items()
        if library.endswith("_spread")
    ]
    if args.rounds > 1 and spreads:
        value, where = max(spreads)
        lines.append(
            f"spread between processes (slowest / fastest process median): at most {value:.2f}x "
            f"({where}); above ~1.2x the machine was probably busy"
        )
    return "\n".join(lines).rstrip("\n")


def torch_kernels_line(args, configs, reports, cells):
    """What the torch worker reports about the kernels its LSTM ran, or None: torch's float32 CPU LSTM runs oneDNN
    (aten::mkldnn_rnn_layer) when torch was built with it and it is enabled; the line says so only when the worker's
    torch reports it available and enabled and the profiled forward ran it."""
    if "lstm" not in cells:
        return None
    notes = next(report for report in reports if report["library"] == "torch")["notes"]
    lstm_notes = [notes[config_key("lstm", name)] for name in configs if name != STEP_NAME]
    if not lstm_notes:
        return None
    available = all(
        note["torch.backends.mkldnn.is_available()"] and note["torch.backends.mkldnn.enabled"] for note in lstm_notes
    )
    ran = all("aten::mkldnn_rnn_layer" in note["forward ops"] for note in lstm_notes)
    if available and ran:
        return (
            f"torch's {args.dtype} CPU LSTM runs oneDNN: torch.backends.mkldnn.is_available() and "
            "torch.backends.mkldnn.enabled are True in the torch worker, and its profiled forward ran "
            "aten::mkldnn_rnn_layer (torch's RNN and GRU run torch's own kernels)."
        )
    ops = sorted({op for note in lstm_notes for op in note["forward ops"]})
    return (
        f"torch's {args.dtype} CPU LSTM runs torch's own kernels here, not oneDNN (torch.backends.mkldnn "
        f"available and enabled: {available}; the profiled forward ran {', '.join(ops) or 'no recurrent op'})."
    )


def format_header(args, threads, configs, reports, summary, cells=("rnn",)):
    """The lines above the tables: when, on which machine (CPU, vector extensions, cores), which versions, threads
    and BLAS, and how it was measured."""
    first = {library: next(report for report in reports if report["library"] == library) for library in LIBRARIES}
    numbarnn_report, torch_report = first["numbarnn"], first["torch"]
    numbarnn_threads = ", ".join(f"{key}={value}" for key, value in numbarnn_report["threads"].items())
    config_text = ", ".join(f"{name} {config.describe()}" for name, config in configs.items() if name != STEP_NAME)
    rounds, repeats = args.rounds, args.repeats
    lines = [
        f"numbarnn bench: {', '.join(f'numbarnn.{MODULES[cell][0]} vs torch.nn.{MODULES[cell][0]}' for cell in cells)}"
        f", {args.dtype}{f', nonlinearity={args.nonlinearity}' if 'rnn' in cells else ''}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {_cpu_name()}, {_available_cores()} cores available to this process ({os.cpu_count()} in the "
        f"machine), {platform.system()} {platform.machine()}; {_numba_target()}",
        f"versions: numbarnn {numbarnn_report['numbarnn']}, numba {numbarnn_report['numba']}, numpy "
        f"{numbarnn_report['numpy']}, scipy {numbarnn_report['scipy']}, torch {torch_report['torch']}, python "
        f"{numbarnn_report['python']}",
        f"load average (1 min) before / after: {_format_load(summary['load_average']['before'])} / "
        f"{_format_load(summary['load_average']['after'])} (other processes on these cores make the timings "
        "noisy, torch's per-step thread barriers most)",
        f"threads: {threads} for both libraries (environment {', '.join(THREAD_VARIABLES)}={threads}, then "
        f"torch.set_num_threads, numba.set_num_threads and threadpoolctl); torch worker: "
        f"torch.get_num_threads()={torch_report['threads']['torch.get_num_threads()']}; numbarnn worker: "
        f"{numbarnn_threads}",
        f"BLAS in the numbarnn worker (threadpoolctl): {_blas_text(numbarnn_report['blas'])}",
        f"BLAS/OpenMP in the torch worker (threadpoolctl): {_blas_text(torch_report['blas'])}",
        f"method: each library timed alone in its own fresh Python process; {rounds} round{'s' * (rounds != 1)}, "
        f"each one torch process and one numbarnn process, alternating which goes first; each process warms every "
        f"task up (numba compiles or loads its cache there), then takes {repeats} sample{'s' * (repeats != 1)} per "
        f"task (a sample: back-to-back calls lasting >= 20 ms, time per call); each time below is the median over "
        f"the {rounds} processes of each process's median; ratio = torch / numbarnn (above 1: numbarnn is faster).",
        "tasks: fwd = torch under inference_mode, numbarnn in eval mode; train = zero_grad + forward + backward of a "
        "fixed random grad_output; neither computes the input's gradient (the input is data: torch's "
        "requires_grad=False, numbarnn's backward(..., need_input_grad=False)). Same weights and data in both "
        "(seeded, load_state_dict).",
    ]
    if summary["gemm_gflops"] is not None:
        lines.append(
            f"GEMM ceiling: numba np.dot (scipy's BLAS) of "
            f"{args.gemm_size}x{args.gemm_size} {args.dtype} on {threads} thread{'s' * (threads != 1)}, one process "
            f"per round: {summary['gemm_gflops']:.1f} GFLOP/s (median of medians); a configuration's forward GFLOP/s "
            "counts its matrix products, sum over layers and directions of 2*L*N*G*(H_in_layer*H + H*H), G the gates "
            "(RNN 1, GRU 3, LSTM 4)."
        )
    kernels = torch_kernels_line(args, configs, reports, cells)
    if kernels is not None:
        lines.append(kernels)
    if config_text:
        lines.append(f"configs (L, N, H_in, H_out, layers, bidirectional): {config_text}")
    return "\n".join(lines)


def format_table(summary, cell, names, errors):
    """``cell``'s configurations' table (Markdown), one row per configuration."""
    rows = []
    for name in names:
        entry = summary["configs"][config_key(cell, name)]
        row = [name]
        for task in ("fwd", "train"):
            times = entry[task]
            row += [
                _significant(times["torch"] * 1e3),
                _significant(times["numbarnn"] * 1e3),
                _significant(times["ratio"]) + "x",
            ]
        row += [
            _significant(entry["fwd"]["numbarnn_gflops"]),
            f"{100 * entry['fwd']['ceiling_fraction']:.0f}%",
            f"{errors[f'{config_key(cell, name)}.forward']:.1e}",
        ]
        rows.append(row)
    return _markdown(TABLE_COLUMNS, rows)


def format_step_table(summary, cell, errors, call):
    """``cell``'s single-step table: microseconds per call of each library's step and cell-class call."""
    entry_key = config_key(cell, STEP_NAME)
    entry = summary["configs"][entry_key]
    row = [f"{STEP_NAME} {STEP_CONFIG.describe()}"]
    for task in ("step", "cell"):
        row += [
            _significant(entry[task]["torch"] * 1e6),
            _significant(entry[task]["numbarnn"] * 1e6),
            _significant(entry[task]["ratio"]) + "x",
        ]
    row.append(f"{max(errors[f'{entry_key}.step'], errors[f'{entry_key}.cell']):.1e}")
    module, cell_class = MODULES[cell]
    note = (
        f"step: one time step in eval mode, each call continuing from the previous call's state; numbarnn "
        f"{module}.{call}, torch.nn.{module} on an L=1 input; {cell_class}: numbarnn.{cell_class} vs "
        f"torch.nn.{cell_class}."
    )
    return note + "\n\n" + _markdown(step_columns(cell), [row])


def step_call(reports, cell="rnn"):
    notes = next(report for report in reports if report["library"] == "numbarnn")["notes"]
    return notes.get(config_key(cell, STEP_NAME), {}).get("step call", "step(x, h)")


def _markdown(columns, rows):
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]

    def line(cells):  # names left-aligned, numbers right-aligned
        return (
            "| "
            + " | ".join(
                cell.ljust(width) if index == 0 else cell.rjust(width)
                for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    separator = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (width + 1) + ":" for width in widths[1:]) + "|"
    return "\n".join([line(columns), separator, *(line(row) for row in rows)])


def _blas_text(libraries):
    return (
        "; ".join(
            f"{lib['internal_api']} {lib['version']} ({os.path.basename(lib['filepath'] or '?')}), "
            f"{lib['num_threads']} threads"
            for lib in libraries
        )
        or "none found"
    )


# -- helpers ---------------------------------------------------------------------------------------------------------
class _ExtendNames(argparse.Action):
    """Collect the names of every ``--configs`` (or ``--cell``) occurrence, each given as space- or comma-separated
    names."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = list(getattr(namespace, self.dest) or [])
        for group in values:
            names.extend(group)
        setattr(namespace, self.dest, names)


def selected_cells(args):
    """The cells asked for, in the order given (``all``: every cell), once each; the vanilla RNN by default."""
    names = args.cell or ["rnn"]
    if ALL_CELLS in names:
        names = [*names[: names.index(ALL_CELLS)], *CELLS, *names[names.index(ALL_CELLS) + 1 :]]
    return list(dict.fromkeys(names))


def _cell_names(text):
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*CELLS, ALL_CELLS)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown cell {', '.join(unknown) or repr(text)}; choose from {', '.join(CELLS)} or {ALL_CELLS}"
        )
    return names


def _selected_configs(args):
    names = list(dict.fromkeys(args.configs)) if args.configs else []
    if not names and args.custom_config is None:
        names = list(CONFIG_NAMES)
    configs = {name: STEP_CONFIG if name == STEP_NAME else CONFIGS[name] for name in names}
    if args.custom_config is not None:
        configs[CUSTOM_NAME] = args.custom_config
    return configs


def _config_names(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIG_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {', '.join(unknown) or repr(text)}; choose from {', '.join(CONFIG_NAMES)}"
        )
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


def _numba_target():
    """The CPU as numba's LLVM sees it and the vector extensions it has; NUMBA_CPU_NAME and NUMBA_CPU_FEATURES, when
    set, change what numba compiles for, and the text then says so."""
    import numba
    from llvmlite import binding

    text = f"LLVM's CPU {binding.get_host_cpu_name()}, vector extensions: {' '.join(_vector_extensions()) or 'none'}"
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        text += (
            f"; numba compiles for NUMBA_CPU_NAME={numba.config.CPU_NAME or ''} "
            f"NUMBA_CPU_FEATURES={numba.config.CPU_FEATURES or ''}"
        )
    return text


def _vector_extensions():
    """Those of VECTOR_EXTENSIONS that this CPU has, by LLVM's detection (the one numba compiles for)."""
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return [name for name in VECTOR_EXTENSIONS if features.get(name)]


def _load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def _format_load(value):
    return "unknown" if value is None else f"{value:.2f}"


def _significant(value, digits=4):
    """``value`` to ``digits`` significant digits, without exponent notation (0.06012, 12.35, 1235, 12346)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"
