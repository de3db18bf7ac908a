"""The timed half of ``python -m numbarnn bench``: one library, alone in a fresh interpreter.

``python -m numbarnn bench`` starts this module once per library per round::

    python -m numbarnn.cli.bench_worker {torch,numbarnn,gemm} SPEC_JSON [--save-outputs]

The thread count arrives in the environment (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
``NUMBA_NUM_THREADS``, read by each runtime when it starts) and is set again through each library's own call and
threadpoolctl. The worker imports only the library it times (and numba, which ``numbarnn``'s package imports), loads
the weights and data the parent wrote (``SPEC_JSON`` names them), warms every task up, then prints one JSON object on
stdout: its pid, versions, thread settings, BLAS libraries, and the seconds per call of every timed sample. Progress
goes to stderr, one line per task, for the parent to show.

``gemm`` times numba's ``np.dot`` (which calls the BLAS of ``scipy.linalg.cython_blas``) on a large square product:
the ceiling the forward GFLOP/s are compared with.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Each task runs at least this many calls and this long before it is timed: numba compiles (or loads its cache) on the
# first call, torch's allocator and the CPU caches settle on the next ones.
WARMUP_CALLS = 3
WARMUP_SECONDS = 0.05
# The modules each cell is timed with, in both libraries: (sequence class, cell class), the same names in numbarnn and
# torch.nn. Only the vanilla RNN takes a nonlinearity.
MODULES = {"rnn": ("RNN", "RNNCell"), "lstm": ("LSTM", "LSTMCell"), "gru": ("GRU", "GRUCell")}
# Each sample times enough back-to-back calls to last this long, so that timer resolution and per-sample overhead do
# not matter for microsecond calls; a sample is the mean time per call over its calls.
MIN_SAMPLE_SECONDS = 0.02


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numbarnn.cli.bench_worker", description=__doc__.split("\n")[0])
    parser.add_argument("library", choices=("torch", "numbarnn", "gemm"))
    parser.add_argument("spec", type=Path, help="JSON written by `numbarnn bench`: settings, configs, data directory")
    parser.add_argument(
        "--save-outputs",
        action="store_true",
        help="save each configuration's outputs (for the parent's cross-check of the two libraries)",
    )
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    report = {
        "library": args.library,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "timings": {},
        "calls_per_sample": {},
    }
    if args.library == "gemm":
        _run_gemm(spec, report)
    else:
        _run_rnn(args.library, spec, args.save_outputs, report)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _progress(message):
    print(message, file=sys.stderr, flush=True)


def time_calls(function, repeats, context=contextlib.nullcontext):
    """Warm ``function`` up, then return (``repeats`` samples of seconds per call, calls per sample).

    The whole measurement runs inside one ``context()`` (torch's inference mode), so that entering it is not timed.
    """
    with context():
        fastest = math.inf
        calls = 0
        warmup_start = time.perf_counter()
        while calls < WARMUP_CALLS or time.perf_counter() - warmup_start < WARMUP_SECONDS:
            start = time.perf_counter()
            function()
            fastest = min(fastest, time.perf_counter() - start)
            calls += 1
        number = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(fastest, 1e-9)))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                function()
            samples.append((time.perf_counter() - start) / number)
    return samples, number


def median_seconds_per_call(function, repeats):
    """The median of :func:`time_calls`'s samples: one figure per process, for scripts that compare other engines
    the same way (``benchmarks/onnx_vs_numbarnn.py``, ``benchmarks/torch_dropin_vs_torch.py``)."""
    samples, _ = time_calls(function, repeats)
    return statistics.median(samples)


# -- the two libraries -----------------------------------------------------------------------------------------------
def _run_rnn(library, spec, save_outputs, report):
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = spec["threads"]
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
        report["torch"] = torch.__version__
        build = _torch_tasks
        # torch's own pools follow torch.set_num_threads; threadpoolctl covers the BLAS libraries it may load
        limits = threadpool_limits(limits=threads, user_api="blas")
    else:
        import numba
        import scipy

        import numbarnn
        from numbarnn._threads import configure_threads_once

        configure_threads_once()  # as numbarnn's first call would: its thread setup, then the thread count asked for
        numba.set_num_threads(threads)
        report.update(numbarnn=numbarnn.__version__, numba=numba.__version__, scipy=scipy.__version__)
        build = _numbarnn_tasks
        limits = contextlib.nullcontext()  # numbarnn's kernels call no BLAS: nothing to limit
    data_dir = Path(spec["data_dir"])
    with limits:
        for name, config in spec["configs"].items():
            data = dict(np.load(data_dir / f"{name}.npz"))
            tasks, outputs, notes = build(config, data, spec)
            report.setdefault("notes", {})[name] = notes
            if save_outputs:
                for key, value in outputs.items():
                    np.save(data_dir / f"output-{library}-{name}-{key}.npy", value)
            for task, (function, context) in tasks.items():
                _progress(f"{name}: {task}")
                samples, number = time_calls(function, spec["repeats"], context)
                report["timings"].setdefault(name, {})[task] = samples
                report["calls_per_sample"].setdefault(name, {})[task] = number
        report["blas"] = _blas_info(threadpool_info())  # as the runs had them
        # read after the runs: numba's per-thread count says how many threads a pass uses, and the NumPy API runs
        # them on numbarnn's own workers (numbarnn._threads)
        if library == "torch":
            report["threads"] = {"torch.get_num_threads()": torch.get_num_threads()}
        else:
            report["threads"] = {"numba.get_num_threads()": numba.get_num_threads(), "run on": "numbarnn's workers"}


def _parameters(data, prefix="param."):
    """The state dict the parent stored in ``data`` under ``prefix`` (torch's parameter names)."""
    return {key[len(prefix) :]: value for key, value in data.items() if key.startswith(prefix)}


def _cell_parameters(data):
    return _parameters(data, "cell.")


def _module_options(config, spec):
    """The constructor options of ``config``'s cell besides the sizes: the nonlinearity is the vanilla RNN's only."""
    return {"nonlinearity": spec["nonlinearity"]} if config["cell"] == "rnn" else {}


def _first_state(state):
    """h of a state: itself, or the first part of an LSTM's (h, c)."""
    return state[0] if isinstance(state, tuple) else state


def _step_states(data, to_array=lambda array: array):
    """The initial states of the step tasks: the module's (layers, N, H) and the cell's (N, H), each an LSTM's tuple
    (h, c) when the parent stored a c_0."""
    if "c_0" not in data:
        return to_array(data["h_0"]), to_array(data["h_0"][0])
    return ((to_array(data["h_0"]), to_array(data["c_0"])), (to_array(data["h_0"][0]), to_array(data["c_0"][0])))


def _torch_rnn_ops(torch, module, x):
    """The aten operators of torch's recurrent kernels that one forward of ``module`` runs (torch's profiler): shows
    whether torch ran oneDNN (aten::mkldnn_rnn_layer) or its own kernels (aten::rnn_tanh, aten::gru, ...)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        with torch.inference_mode():
            module(x)
    return sorted(
        {
            event.key
            for event in profile.key_averages()
            if event.key.startswith("aten::") and any(word in event.key for word in ("rnn", "lstm", "gru"))
        }
    )


def _torch_tasks(config, data, spec):
    import torch

    dtype = getattr(torch, spec["dtype"])
    inference_mode = torch.inference_mode
    sequence_class, cell_class = (getattr(torch.nn, name) for name in MODULES[config["cell"]])
    options = _module_options(config, spec)
    if config["kind"] == "step":
        rnn = sequence_class(config["input_size"], config["hidden_size"], 1, dtype=dtype, **options).eval()
        rnn.load_state_dict({key: torch.from_numpy(value) for key, value in _parameters(data).items()})
        cell = cell_class(config["input_size"], config["hidden_size"], dtype=dtype, **options).eval()
        cell.load_state_dict({key: torch.from_numpy(value) for key, value in _cell_parameters(data).items()})
        x_step = torch.from_numpy(data["x"])  # (N, H_in)
        x_sequence = x_step[None]  # (1, N, H_in): torch.nn.RNN has no single-step call
        initial = dict(zip(("rnn", "cell"), _step_states(data, torch.from_numpy), strict=True))
        state = dict(initial)

        def rnn_step():  # streaming: each call continues from the previous call's state
            _, state["rnn"] = rnn(x_sequence, state["rnn"])

        def cell_step():
            state["cell"] = cell(x_step, state["cell"])

        with torch.inference_mode():
            outputs = {
                "step": _first_state(rnn(x_sequence, initial["rnn"])[1]).numpy(),
                "cell": _first_state(cell(x_step, initial["cell"])).numpy(),
            }
        return {"step": (rnn_step, inference_mode), "cell": (cell_step, inference_mode)}, outputs, {}

    rnn = sequence_class(
        config["input_size"],
        config["hidden_size"],
        config["num_layers"],
        bidirectional=config["bidirectional"],
        dtype=dtype,
        **options,
    )
    rnn.load_state_dict({key: torch.from_numpy(value) for key, value in _parameters(data).items()})
    x = torch.from_numpy(data["x"])  # requires_grad=False: data, as in training
    grad_output = torch.from_numpy(data["grad_output"])

    def forward():
        rnn(x)

    def training_step():
        rnn.zero_grad()
        output, _ = rnn(x)
        output.backward(grad_output)

    with torch.inference_mode():
        outputs = {"forward": rnn(x)[0].numpy()}
    notes = {
        "torch.backends.mkldnn.is_available()": torch.backends.mkldnn.is_available(),
        "torch.backends.mkldnn.enabled": torch.backends.mkldnn.enabled,
        "forward ops": _torch_rnn_ops(torch, rnn, x),
    }
    return {"fwd": (forward, inference_mode), "train": (training_step, contextlib.nullcontext)}, outputs, notes


def _numbarnn_tasks(config, data, spec):
    import numbarnn

    nullcontext = contextlib.nullcontext
    sequence_class, cell_class = (getattr(numbarnn, name) for name in MODULES[config["cell"]])
    options = dict(_module_options(config, spec), dtype=spec["dtype"])
    if config["kind"] == "step":
        rnn = sequence_class(config["input_size"], config["hidden_size"], 1, **options).eval()
        rnn.load_state_dict(_parameters(data))
        cell = cell_class(config["input_size"], config["hidden_size"], **options).eval()
        cell.load_state_dict(_cell_parameters(data))
        x_step = data["x"]  # (N, H_in)
        initial = dict(zip(("rnn", "cell"), _step_states(data), strict=True))
        state = dict(initial)
        if hasattr(rnn, "step"):
            step_call = "step(x, (h, c))" if config["cell"] == "lstm" else "step(x, h)"

            def rnn_step():  # streaming: each call continues from the previous call's state
                _, state["rnn"] = rnn.step(x_step, state["rnn"])
        else:  # a release without step(): one step through the sequence call
            step_call = "module(x[None], h)"
            x_sequence = x_step[None]

            def rnn_step():
                _, state["rnn"] = rnn(x_sequence, state["rnn"])

        def cell_step():
            state["cell"] = cell(x_step, state["cell"])

        rnn_step()
        cell_step()
        outputs = {"step": _first_state(state["rnn"]).copy(), "cell": _first_state(state["cell"]).copy()}
        state.update(initial)
        return {"step": (rnn_step, nullcontext), "cell": (cell_step, nullcontext)}, outputs, {"step call": step_call}

    sizes = (config["input_size"], config["hidden_size"], config["num_layers"])
    options["bidirectional"] = config["bidirectional"]
    inference = sequence_class(*sizes, **options).eval()
    training = sequence_class(*sizes, **options)
    inference.load_state_dict(_parameters(data))
    training.load_state_dict(_parameters(data))
    x, grad_output = data["x"], data["grad_output"]

    def forward():
        inference(x)

    def training_step():
        training.zero_grad()
        training(x)
        # The input is data: like torch's input without requires_grad, it needs no gradient.
        training.backward(grad_output, need_input_grad=False)

    outputs = {"forward": inference(x)[0]}
    return {"fwd": (forward, nullcontext), "train": (training_step, nullcontext)}, outputs, {}


# -- the GEMM ceiling ------------------------------------------------------------------------------------------------
def _run_gemm(spec, report):
    import numba
    import scipy.linalg.cython_blas  # noqa: F401  the BLAS numba's np.dot calls (the bench extra installs scipy)
    from threadpoolctl import threadpool_info, threadpool_limits

    threads, size = spec["threads"], spec["gemm_size"]
    numba.set_num_threads(threads)
    report.update(numba=numba.__version__, scipy=scipy.__version__)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(spec["dtype"])
    b = rng.standard_normal((size, size)).astype(spec["dtype"])
    out = np.empty_like(a)
    matmul = _jitted_matmul()
    with threadpool_limits(limits=threads, user_api="blas"):
        report["blas"] = _blas_info(threadpool_info())
        _progress(f"gemm: {size}x{size} {spec['dtype']}")
        samples, number = time_calls(lambda: matmul(a, b, out), spec["repeats"])
    report["timings"]["gemm"] = {"seconds": samples}
    report["calls_per_sample"]["gemm"] = {"seconds": number}
    report["gemm_flops"] = 2 * size**3
    report["threads"] = {"numba.get_num_threads()": numba.get_num_threads()}


def _jitted_matmul():
    import numba

    @numba.njit(cache=True)
    def matmul(a, b, out):  # np.dot into a preallocated result
        np.dot(a, b, out)

    return matmul


def _blas_info(info):
    """The BLAS/OpenMP libraries threadpoolctl found: what, which version, where, how many threads."""
    return [
        {key: library.get(key) for key in ("user_api", "internal_api", "version", "num_threads", "filepath")}
        for library in info
    ]


if __name__ == "__main__":
    sys.exit(main())
