"""Serving figures: requests/s of one eval ``numbarnn.RNN`` from 1 and from 2 threads, and the latency of one
streaming step (``rnn.step``, ``RNNCell``, ``rnn(x[None], h)``) next to torch's ``nn.RNNCell`` and ``nn.RNN`` on L=1.

Run it as a script (not an asv benchmark: it compares libraries in alternating fresh processes)::

    python benchmarks/serving.py [--rounds 3] [--requests 4000] [--profile-step]

Scaling: ``RNN(32, 64)`` in eval mode on L=100, N=1 (float32) requests, a fixed total of ``--requests`` served by one
thread, then split between two threads of a ``ThreadPoolExecutor``; the best of several repetitions per process.
Latency: H_in=32, H_out=64, N=1, float32, one layer, each call fed the state the previous call returned (a live
stream); the median per-call time of several samples of back-to-back calls. torch runs in its own process with
``torch.set_num_threads(1)`` under ``torch.inference_mode()``; numbarnn's step kernels are serial (one thread) too.
Every figure is the median over ``--rounds`` fresh processes per library, the libraries alternating.

``--profile-step`` adds a breakdown of where a ``rnn.step`` call's microseconds go (argument checks, allocation,
numba's dispatch, the kernel), measured piece by piece with private functions.

Only the standard library is imported at module level, so that asv's discovery (which imports every module under
``benchmarks/``) finds nothing to run here.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

INPUT_SIZE, HIDDEN = 32, 64
STEPS = 100  # the serving request's sequence length
INPUTS = 64  # distinct requests, cycled
SAMPLES = 9  # latency samples per process
MIN_SAMPLE_SECONDS = 0.05  # each latency sample times enough back-to-back calls to last this long
THROUGHPUT_REPEATS = 25  # short ones (--requests each), alternating
FREE_CORES = 1.8  # the control's 2-thread / 1-thread ratio when no other process holds a core


def per_call_seconds(call, state):
    """Median over SAMPLES of the time per call of ``state = call(state)`` repeated back to back."""
    for _ in range(200):  # warm up: compile, fill caches
        state = call(state)
    count = 1
    while True:  # calls per sample: enough to last MIN_SAMPLE_SECONDS
        start = time.perf_counter()
        for _ in range(count):
            state = call(state)
        if time.perf_counter() - start >= MIN_SAMPLE_SECONDS:
            break
        count *= 2
    samples = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        for _ in range(count):
            state = call(state)
        samples.append((time.perf_counter() - start) / count)
    return statistics.median(samples)


def numbarnn_latency():
    import numpy as np

    import numbarnn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, INPUT_SIZE)).astype(np.float32)
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, seed=0).eval()
    cell = numbarnn.RNNCell(INPUT_SIZE, HIDDEN, seed=0).eval()
    h_layers = np.zeros((1, 1, HIDDEN), np.float32)
    return {
        "numbarnn rnn.step(x, h)": per_call_seconds(lambda h: rnn.step(x, h)[1], h_layers),
        "numbarnn RNNCell(x, h)": per_call_seconds(lambda h: cell(x, h), np.zeros((1, HIDDEN), np.float32)),
        "numbarnn rnn(x[None], h), L=1": per_call_seconds(lambda h: rnn(x[None], h)[1], h_layers),
    }


def torch_latency():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, INPUT_SIZE)
    rnn = torch.nn.RNN(INPUT_SIZE, HIDDEN).eval()
    cell = torch.nn.RNNCell(INPUT_SIZE, HIDDEN).eval()
    with torch.inference_mode():
        return {
            "torch nn.RNNCell(x, h)": per_call_seconds(lambda h: cell(x, h), torch.zeros(1, HIDDEN)),
            "torch nn.RNN(x[None], h), L=1": per_call_seconds(lambda h: rnn(x[None], h)[1], torch.zeros(1, 1, HIDDEN)),
        }


def numbarnn_throughput(requests):
    """Requests/s of one eval module serving L=100, N=1 requests from 1 thread and from 2 threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    import numba
    import numpy as np

    import numbarnn

    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, seed=0).eval()
    xs = np.random.default_rng(0).standard_normal((INPUTS, STEPS, 1, INPUT_SIZE)).astype(np.float32)

    def serve(first, count):
        for i in range(first, first + count):
            rnn(xs[i % INPUTS])

    # Control: a GIL-free, vectorised multiply-add loop of about a request's duration. Its 2-thread/1-thread ratio
    # is what the machine offers at this moment (2.0 on two idle cores; ~1.0 when another process holds a core).
    @numba.njit(nogil=True, fastmath=True, cache=False)
    def control_kernel(a, b, repeats):
        for _ in range(repeats):
            for j in range(a.size):
                a[j] = a[j] * np.float32(0.999) + b[j]

    control_arrays = [np.ones(1024, np.float32) for _ in range(4)]

    def control(first, count):
        a, b = control_arrays[2 * (first > 0)], control_arrays[2 * (first > 0) + 1]
        for _ in range(count):
            control_kernel(a, b, 1000)

    serve(0, 200)  # warm up
    control(0, 10)
    # 1 and 2 threads alternate, numbarnn and the control too, in many short repetitions: on a machine shared with
    # other processes a repetition counts only when the control found both cores free (its ratio >= FREE_CORES).
    pools = {threads: ThreadPoolExecutor(threads) for threads in (1, 2)}

    def rate(work, threads):
        share = requests // threads
        start = time.perf_counter()
        list(pools[threads].map(work, [t * share for t in range(threads)], [share] * threads))
        return share * threads / (time.perf_counter() - start)

    best, free_ratios = {}, []
    for _ in range(THROUGHPUT_REPEATS):
        rates = {
            (name, threads): rate(work, threads)
            for name, work in (("numbarnn", serve), ("control", control))
            for threads in (1, 2)
        }
        for (name, threads), value in rates.items():
            key = f"{name} requests/s, {threads} thread{'s' if threads > 1 else ''}"
            best[key] = max(best.get(key, 0.0), value)
        if rates["control", 2] / rates["control", 1] >= FREE_CORES:
            free_ratios.append(rates["numbarnn", 2] / rates["numbarnn", 1])
    for pool in pools.values():
        pool.shutdown()
    best["free-core ratios"] = free_ratios
    return best


def profile_step(requests):
    """Where a ``rnn.step`` call's time goes, each piece timed alone (private functions; figures in seconds)."""
    import numba
    import numpy as np

    import numbarnn
    from numbarnn._step import run_step
    from numbarnn._validation import as_array
    from numbarnn._workspace import step_buffers

    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN, seed=0).eval()
    spec = rnn._spec
    x = np.random.default_rng(0).standard_normal((1, INPUT_SIZE)).astype(np.float32)
    h = np.zeros((1, 1, HIDDEN), np.float32)
    params, offsets = rnn._param_flat, rnn._offsets
    buffers = step_buffers(spec, x, h, None, keep=False)

    @numba.njit(cache=False, nogil=True)
    def empty_kernel(params, offsets, relu, x, h, c, out, saved, h_full):
        return None

    def kernel(_):
        run_step(spec, params, offsets, buffers)

    def dispatch_only(_):
        empty_kernel(params, offsets, False, *buffers[:6])

    def checks(_):
        as_array(x, "input", rnn.dtype)
        as_array(h, "h", rnn.dtype)

    def arguments(_):
        step_buffers(spec, x, h, None, keep=False)

    return {
        "profile: whole rnn.step(x, h)": per_call_seconds(lambda s: rnn.step(x, s)[1], h),
        "profile: run_step alone (dispatch + arithmetic)": per_call_seconds(kernel, None),
        "profile: numba dispatch of an empty kernel with the step kernel's arguments": per_call_seconds(
            dispatch_only, None
        ),
        "profile: argument checks (as_array x2)": per_call_seconds(checks, None),
        "profile: the kernel's arguments (step_buffers: state copy, output)": per_call_seconds(arguments, None),
    }


def worker(kind, requests):
    if kind == "numbarnn":
        result = numbarnn_latency()
        result.update(numbarnn_throughput(requests))
    elif kind == "torch":
        result = torch_latency()
    else:
        result = profile_step(requests)
    print(json.dumps(result))


def run_worker(kind, requests):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    finished = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, "--requests", str(requests)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per library (default 3)")
    parser.add_argument("--requests", type=int, default=4000, help="requests per throughput repetition")
    parser.add_argument("--profile-step", action="store_true", help="also break a step call down into its parts")
    parser.add_argument("--worker", choices=["numbarnn", "torch", "profile"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker, arguments.requests)
        return
    runs = {}
    for round_ in range(arguments.rounds):
        order = ["numbarnn", "torch"] if round_ % 2 == 0 else ["torch", "numbarnn"]
        if arguments.profile_step:
            order.append("profile")
        for kind in order:
            for name, value in run_worker(kind, arguments.requests).items():
                runs.setdefault(name, []).append(value)
    print(f"median of {arguments.rounds} fresh processes per library (machine load: {os.getloadavg()[0]:.2f})")
    print(f"{'measure':<96} {'value':>12}")
    free_ratios = [ratio for ratios in runs.pop("free-core ratios") for ratio in ratios]
    for name, values in runs.items():
        value = statistics.median(values)
        shown = f"{value:,.0f}" if "requests/s" in name else f"{value * 1e6:.2f} us"
        print(f"{name:<96} {shown:>12}")
    for name in ("numbarnn", "control"):
        ratios = [
            two / one
            for one, two in zip(
                runs[f"{name} requests/s, 1 thread"], runs[f"{name} requests/s, 2 threads"], strict=True
            )
        ]
        print(
            f"{name + ' best 2 threads / best 1 thread (per process: ' + ', '.join(f'{r:.2f}' for r in ratios) + ')':<96}"
            f" {statistics.median(ratios):>11.2f}x"
        )
    label = (
        f"numbarnn 2 threads / 1 thread in the {len(free_ratios)} repetitions where the control found both cores free"
    )
    print(f"{label:<96} {statistics.median(free_ratios) if free_ratios else float('nan'):>11.2f}x")


if __name__ == "__main__":
    main()
