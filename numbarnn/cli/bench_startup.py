"""``python -m numbarnn bench --startup``: what a fresh environment pays before its first results.

Every figure comes from a fresh Python process. A *cold* process gets a new, empty ``NUMBA_CACHE_DIR``, so it compiles
every kernel it uses, as the first run after an install, in a new container or on a new Dask worker does; a *warm*
process reuses the directory a cold one filled, as every later run does. Per cell: ``import numbarnn``; the first
inference call (an eval-mode forward, (L, N, H_in, H) = (50, 16, 64, 128)), then in the same process the first
training step (forward and backward); and, warm, import plus the first inference call. Then the demo's first update
(``python -m numbarnn demo --steps 1``, cold, the whole process). ``--rounds`` processes of each kind; the medians
are shown.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Runs in each process: prints the seconds of import, first inference call and first training step as JSON.
WORKER = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import numbarnn
imported = time.perf_counter()
module = getattr(numbarnn, sys.argv[1])(64, 128, seed=0).eval()
x = np.random.default_rng(0).standard_normal((50, 16, 64)).astype(np.float32)
module(x)
inference = time.perf_counter()
times = {"import": imported - start, "inference": inference - imported}
if sys.argv[2] == "cold":
    output, _ = module.train()(x)
    module.backward(np.ones_like(output))
    times["training"] = time.perf_counter() - inference
print(json.dumps(times))
"""

CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def run_process(arguments, cache_dir):
    """Run ``python arguments`` with numba's cache in ``cache_dir`` (None: where this process's is); returns (stdout,
    wall seconds)."""
    environment = dict(os.environ) if cache_dir is None else dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], env=environment, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:3])} failed:\n{done.stderr[-2000:]}")
    return done.stdout, seconds


def measure_cell(cell, rounds):
    """Medians over ``rounds`` cold and warm processes of ``cell``'s start-up figures, in seconds."""
    cold, warm = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="numbarnn-startup-") as cache_dir:
            stdout, _ = run_process(["-c", WORKER, CLASSES[cell], "cold"], cache_dir)
            cold.append(json.loads(stdout))
            stdout, _ = run_process(["-c", WORKER, CLASSES[cell], "warm"], cache_dir)
            warm.append(json.loads(stdout))
    return {
        "import": statistics.median(sample["import"] for sample in cold),
        "inference": statistics.median(sample["inference"] for sample in cold),
        "training": statistics.median(sample["training"] for sample in cold),
        "warm": statistics.median(sample["import"] + sample["inference"] for sample in warm),
    }


def measure_demo(rounds):
    """Median wall seconds of ``python -m numbarnn demo --steps 1`` in a cold process."""
    samples = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="numbarnn-startup-") as cache_dir:
            samples.append(run_process(["-m", "numbarnn", "demo", "--steps", "1"], cache_dir)[1])
    return statistics.median(samples)


def run(args):
    """Measure and print the start-up figures for parsed ``args`` (``--cell``, ``--rounds``, ``--json``)."""
    from ._progress import Progress
    from .bench import _cpu_name, _numba_target, selected_cells

    cells = selected_cells(args)
    progress = Progress(len(cells) + 1, "measurement", file=sys.stderr, leave=False)
    results = {}
    try:
        for done, cell in enumerate(cells):
            progress.update(done, f"{cell}: cold and warm processes")
            results[cell] = measure_cell(cell, args.rounds)
        progress.update(len(cells), "the demo's first update")
        demo = measure_demo(args.rounds)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        progress.close()
        print(f"numbarnn bench --startup: {error}", file=sys.stderr)
        return 1
    progress.close()
    lines = [
        f"numbarnn start-up, {args.rounds} fresh process(es) of each kind, medians; {_cpu_name()} "
        f"({_numba_target()}), {os.cpu_count()} cores",
        "cold: a new empty NUMBA_CACHE_DIR (everything compiles); warm: the directory a cold process filled",
        "",
        "| cell | import s | first inference, cold s | then first training step, cold s "
        "| import + first inference, warm s |",
        "|---|---:|---:|---:|---:|",
    ]
    for cell, figures in results.items():
        lines.append(
            f"| {cell} | {figures['import']:.2f} | {figures['inference']:.2f} | {figures['training']:.2f} "
            f"| {figures['warm']:.2f} |"
        )
    lines += ["", f"demo (python -m numbarnn demo --steps 1, cold, whole process): {demo:.1f} s"]
    text = "\n".join(lines)
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"cells": results, "demo_first_update": demo, "rounds": args.rounds, "report": text}, indent=1)
        )
    return 0
