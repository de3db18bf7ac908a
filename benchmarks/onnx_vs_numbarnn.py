"""Inference time of ONNX Runtime running a file written by ``numbarnn.onnx.export`` versus numbarnn on the same
inputs, each library timed in its own fresh process, for each cell: RNN (tanh), LSTM and GRU (ONNX's ``RNN``,
``LSTM`` and ``GRU`` operators).

Run it as a script (it is not an asv benchmark: asv times one library per process without alternating)::

    python benchmarks/onnx_vs_numbarnn.py [--threads 1] [--rounds 4] [--repeats 15] [--configs tiny small stream]
        [--cells rnn lstm gru]

For each cell and configuration the parent process writes the model once (``numbarnn.save`` for numbarnn, the exported
``.onnx`` for ONNX Runtime) and the input; then, for ``--rounds`` rounds, it starts one worker process per library
(``python onnx_vs_numbarnn.py --worker ...``), alternating which library goes first. Each worker warms up, then takes
``--repeats`` samples of back-to-back calls and prints their median time per call; the table shows the median of those
medians. Both libraries get the same thread count: ONNX Runtime's ``intra_op_num_threads`` (inter-op 1), numba's
``set_num_threads`` (numbarnn calls no BLAS). Both start from the same initial state (an LSTM's ``(h_0, c_0)``). The
one-step "stream" configuration calls the module's ``step``. Needs onnx and onnxruntime.

Only the standard library is imported at module level, so that asv's discovery (which imports every module under
``benchmarks/``) finds nothing to run here and needs none of those packages.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# name -> (L, N, H_in, H_out, layers, bidirectional): tiny and small are `python -m numbarnn bench`'s configurations;
# stream is one step of one sequence carried over from the last call's state (serving a live stream).
CONFIGS = {
    "tiny": (100, 1, 32, 64, 1, False),
    "small": (100, 32, 64, 128, 2, False),
    "stream": (1, 1, 64, 128, 2, False),
}
CELLS = ("rnn", "lstm", "gru")  # numbarnn.RNN, numbarnn.LSTM, numbarnn.GRU
SEED = 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), help="cells to time (default all)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both libraries (default 1)")
    parser.add_argument("--rounds", type=int, default=4, help="worker processes per library (default 4)")
    parser.add_argument("--repeats", type=int, default=15, help="samples per worker process (default 15)")
    parser.add_argument("--worker", choices=("onnxruntime", "numbarnn"), help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.directory, args.threads, args.repeats)))
        return 0
    print(
        f"ONNX Runtime vs numbarnn, inference, float32 (RNN: tanh); threads {args.threads}; {args.rounds} fresh "
        f"processes per library (alternating), {args.repeats} samples each; median of the per-process medians"
    )
    print("cell config (L, N, H_in, H_out, layers, bidirectional) | onnxruntime ms | numbarnn ms | ort ÷ numbarnn")
    for cell in args.cells:
        for name in args.configs:
            with tempfile.TemporaryDirectory(prefix=f"onnx-vs-numbarnn-{cell}-{name}-") as directory:
                write_problem(cell, CONFIGS[name], directory)
                medians = {"onnxruntime": [], "numbarnn": []}
                for round_number in range(args.rounds):
                    order = ["onnxruntime", "numbarnn"] if round_number % 2 == 0 else ["numbarnn", "onnxruntime"]
                    for library in order:
                        medians[library].append(spawn_worker(library, directory, args.threads, args.repeats))
                ort, ours = (statistics.median(medians[key]) * 1e3 for key in ("onnxruntime", "numbarnn"))
                print(f"{cell} {name} {CONFIGS[name]} | {ort:.4g} | {ours:.4g} | {ort / ours:.2f}x")
    return 0


def write_problem(cell, config, directory):
    """The model of ``cell`` (numbarnn checkpoint and ONNX export, same weights), the input and the initial state
    (``h_0``, and an LSTM's ``c_0``: the ONNX graph's inputs of those names), written once per cell and config."""
    import numpy as np

    import numbarnn
    import numbarnn.onnx

    steps, batch, input_size, hidden, layers, bidirectional = config
    module = getattr(numbarnn, cell.upper())(input_size, hidden, layers, bidirectional=bidirectional, seed=SEED)
    numbarnn.save(os.path.join(directory, "model.npz"), model=module)
    numbarnn.onnx.export(os.path.join(directory, "model.onnx"), module, h_0=True)
    rng = np.random.default_rng(SEED)
    np.save(os.path.join(directory, "input.npy"), rng.standard_normal((steps, batch, input_size)).astype(np.float32))
    state_shape = (module.num_directions * layers, batch, hidden)
    names = ("h_0", "c_0") if cell == "lstm" else ("h_0",)
    state = {name: rng.standard_normal(state_shape).astype(np.float32) for name in names}
    np.savez(os.path.join(directory, "state.npz"), **state)


def spawn_worker(library, directory, threads, repeats):
    """Median seconds per call measured in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            library,
            "--directory",
            directory,
            "--threads",
            str(threads),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{library} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_worker(library, directory, threads, repeats):
    import numpy as np

    from numbarnn.cli.bench_worker import median_seconds_per_call  # as `numbarnn bench` samples

    x = np.load(os.path.join(directory, "input.npy"))
    with np.load(os.path.join(directory, "state.npz")) as saved:
        state = dict(saved)  # h_0, and an LSTM's c_0
    if library == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            os.path.join(directory, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"input": x, **state}

        def call():
            session.run(None, feeds)

        return median_seconds_per_call(call, repeats)
    import numba

    import numbarnn
    from numbarnn._threads import configure_threads_once

    configure_threads_once()  # numbarnn's own thread setup, then the thread count asked for
    numba.set_num_threads(threads)
    module = numbarnn.load(os.path.join(directory, "model.npz"))["model"].eval()
    h_0 = (state["h_0"], state["c_0"]) if "c_0" in state else state["h_0"]  # an LSTM's state is the pair

    if x.shape[0] == 1 and not module.bidirectional:  # a streaming step: numbarnn's one-step entry point
        x_t = x[0]

        def call():
            module.step(x_t, h_0)
    else:

        def call():
            module(x, h_0)

    return median_seconds_per_call(call, repeats)


if __name__ == "__main__":
    # As a script, sys.path starts at benchmarks/: time this checkout's numbarnn (the workers get it via PYTHONPATH).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
