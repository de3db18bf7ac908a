"""``python -m numbarnn bench --kernels``: the panel product's GFLOP/s on this CPU, beside its BLAS, on one thread.

numbarnn's input projection, input gradient and per-step products all run :func:`numbarnn._panels.panel_matmul`
(``out = A @ B``, A (M, K), B packed into panels once). This prints its speed over the row count M for a few (K, N),
next to the same product through scipy's BLAS (numba's ``np.dot``) when scipy is installed and ``torch.mm`` when
torch is installed, together with the CPU, the instruction set numba compiles for, and the register
tile and row blocks the kernel uses there: what a user on another CPU runs to see what numbarnn does on theirs.

Each library runs alone in a fresh interpreter (``python -m numbarnn.cli.bench_kernels LIBRARY SPEC_JSON``), every
runtime limited to one thread by its environment variable before it starts; each product is warmed up, then timed
``--repeats`` times in CPU time of the process (``time.process_time``: a call that the scheduler pauses on a busy
machine is not charged for the pause, and any helper thread's work is), and the fastest repeat is reported.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = (1, 6, 64, 256, 1024, 4096, 12800, 100000)
SHAPES = ((64, 64), (256, 256), (512, 1024))
LIBRARIES = ("numbarnn", "blas", "torch")
LABELS = {"numbarnn": "numbarnn", "blas": "scipy BLAS", "torch": "torch.mm"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# a repeat lasts at least this long (back-to-back calls), so that microsecond products are timed well
MIN_REPEAT_SECONDS = 0.02
# "flat": every M from this many rows up within this fraction of the best (issue 17's bar)
FLAT_FROM_ROWS = 64
FLAT_FRACTION = 0.85


def add_arguments(parser):
    """The ``--kernels`` run's own options, on ``bench``'s parser (it shares ``--dtype``, ``--repeats`` and
    ``--json``)."""
    parser.add_argument(
        "--kernel-rows",
        type=_positive_ints,
        default=ROWS,
        metavar="M,M,...",
        help=f"with --kernels: row counts M (default: {','.join(map(str, ROWS))})",
    )
    parser.add_argument(
        "--kernel-shapes",
        type=_shapes,
        default=SHAPES,
        metavar="KxN,KxN,...",
        help=f"with --kernels: inner and output sizes (default: {','.join(f'{k}x{n}' for k, n in SHAPES)})",
    )


def run(args):
    """Run the kernel benchmark for parsed ``args``; print the report; return the exit code."""
    from numbarnn import _isa

    from .bench import _cpu_name

    installed = {"numbarnn": True, "blas": _has("scipy"), "torch": _has("torch")}
    libraries = [library for library in LIBRARIES if installed[library]]
    spec = {
        "dtype": args.dtype,
        "repeats": args.repeats,
        "rows": list(args.kernel_rows),
        "shapes": [list(shape) for shape in args.kernel_shapes],
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="numbarnn-bench-kernels-") as directory:
        spec_path = Path(directory) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for library in libraries:
            print(f"bench --kernels: timing {LABELS[library]} in its own process", file=sys.stderr, flush=True)
            try:
                results[library] = _run_worker(library, spec_path)
            except RuntimeError as error:
                print(f"numbarnn bench --kernels: {error}", file=sys.stderr)
                return 1
    tile, caches = _isa.tile(), _isa.caches()
    target = _isa.target()
    text = format_report(spec, results, _cpu_name(), target, tile, caches)
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "settings": spec,
                    "cpu": _cpu_name(),
                    "target": vars(target),
                    "tile": vars(tile),
                    "l2_bytes": caches.l2,
                    "last_level_bytes": caches.last_level,
                    "seconds": results,
                    "report": text,
                },
                indent=1,
            )
        )
    return 0


def format_report(spec, results, cpu, target, tile, caches):
    """The report's text: what ran where, then one table per (K, N)."""
    from numbarnn._panels import rows_per_block

    from .bench import _significant

    itemsize = np.dtype(spec["dtype"]).itemsize
    lines = [
        f"numbarnn bench --kernels: out = A @ B (A: M x K, B: K x N packed into panels), {spec['dtype']}, GFLOP/s "
        "(2 M K N / time) on one thread; each library in its own process, the fastest of "
        f"{spec['repeats']} repeats in process CPU time",
        f"CPU: {cpu}; numba compiles for {target.cpu_name} ({target.triple})",
        f"Instruction set and tile: {tile.describe()}",
        f"L2 per core: {caches.l2 // 1024} KiB ({'read from the host' if caches.from_host else 'not found: default'})"
        "; rows of A per block: "
        + ", ".join(f"{rows_per_block(k, itemsize)} at K = {k}" for k in sorted({k for k, _ in spec["shapes"]})),
        f"Last-level cache: {caches.last_level // 1024**2} MiB; numbarnn streams larger outputs to memory "
        "(non-temporal stores)"
        if caches.last_level
        else "Last-level cache: not reported by the host; numbarnn writes every output through the caches",
        "",
    ]
    others = [library for library in LIBRARIES if library in results and library != "numbarnn"]
    header = [
        "M",
        "K",
        "N",
        *(LABELS[library] for library in ("numbarnn", *others)),
        *(f"numbarnn / {LABELS[library]}" for library in others),
    ]
    rows = []
    for k, n in spec["shapes"]:
        for m in spec["rows"]:
            key = f"{m}x{k}x{n}"
            rates = {library: 2.0 * m * k * n / results[library][key] / 1e9 for library in results}
            speeds = [_significant(rates[library], 3) for library in ("numbarnn", *others)]
            ratios = [f"{rates['numbarnn'] / rates[library]:.2f}" for library in others]
            rows.append([str(m), str(k), str(n), *speeds, *ratios])
    lines.append(_markdown(header, rows))
    lines.append("")
    for k, n in spec["shapes"]:
        rates = [
            2.0 * m * k * n / results["numbarnn"][f"{m}x{k}x{n}"] / 1e9 for m in spec["rows"] if m >= FLAT_FROM_ROWS
        ]
        if rates:
            worst = min(rates) / max(rates)
            lines.append(
                f"K = {k}, N = {n}: from M = {FLAT_FROM_ROWS} up, the slowest M runs at {worst:.0%} of the "
                f"fastest ({'within' if worst >= FLAT_FRACTION else 'NOT within'} "
                f"{1 - FLAT_FRACTION:.0%})"
            )
    return "\n".join(lines)


def _markdown(header, rows):
    def line(cells):
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line(header), line(["---:"] * len(header)), *(line(row) for row in rows)])


def _run_worker(library, spec_path):
    environment = dict(os.environ)
    environment.update({variable: "1" for variable in THREAD_VARIABLES})
    # the worker must import this very numbarnn (a worktree or checkout), not another installed copy
    package_root = os.fspath(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "numbarnn.cli.bench_kernels", library, os.fspath(spec_path)]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(
            f"the {library} worker failed with exit code {finished.returncode}; command: "
            f"{' '.join(command)}; the end of its stderr:\n{finished.stderr[-3000:]}"
        )
    return json.loads(finished.stdout)


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- the worker --------------------------------------------------------------------------------------------------------
def _product(library, b):
    """A function ``product(a, out)`` computing ``out[:] = a @ b`` with ``library``, and its one-time setup done."""
    if library == "numbarnn":
        from numbarnn._panels import pack_panels, panel_matmul, panel_shape

        panels = np.empty(panel_shape(*b.shape, b.dtype), b.dtype)
        pack_panels(b, panels)
        return lambda a, out: panel_matmul(a, panels, out)
    if library == "blas":
        from .bench_worker import _jitted_matmul  # numba's np.dot: scipy's BLAS

        matmul = _jitted_matmul()
        return lambda a, out: matmul(a, b, out)
    import torch

    torch.set_num_threads(1)
    b_tensor = torch.from_numpy(b)
    return lambda a, out: torch.mm(torch.from_numpy(a), b_tensor, out=torch.from_numpy(out))


def _time(product, a, out, repeats):
    product(a, out)
    calls = 1
    while True:  # enough back-to-back calls per repeat to last MIN_REPEAT_SECONDS
        start = time.process_time()
        for _ in range(calls):
            product(a, out)
        elapsed = time.process_time() - start
        if elapsed >= MIN_REPEAT_SECONDS:
            break
        calls *= 4 if elapsed < MIN_REPEAT_SECONDS / 8 else 2
    best = elapsed / calls
    for _ in range(repeats - 1):
        start = time.process_time()
        for _ in range(calls):
            product(a, out)
        best = min(best, (time.process_time() - start) / calls)
    return best


def worker_main(argv=None):
    from numbarnn._panels import empty_panels

    parser = argparse.ArgumentParser(prog="python -m numbarnn.cli.bench_kernels")
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    dtype = np.dtype(spec["dtype"])
    rng = np.random.default_rng(0)
    seconds = {}
    for k, n in spec["shapes"]:
        product = _product(args.library, rng.standard_normal((k, n)).astype(dtype))
        for m in spec["rows"]:
            a = rng.standard_normal((m, k)).astype(dtype)
            out = empty_panels((m, n), dtype)  # on a cache line, as numbarnn's own buffers are, for every library
            seconds[f"{m}x{k}x{n}"] = _time(product, a, out, spec["repeats"])
            print(f"{args.library}: M = {m}, K = {k}, N = {n} done", file=sys.stderr, flush=True)
    json.dump(seconds, sys.stdout)
    return 0


def _positive_ints(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _shapes(text):
    try:
        shapes = tuple(tuple(int(size) for size in part.split("x")) for part in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(
            f"expected KxN pairs separated by commas (e.g. 256x256,512x1024), got {text!r}"
        )
    return shapes


if __name__ == "__main__":
    sys.exit(worker_main())
