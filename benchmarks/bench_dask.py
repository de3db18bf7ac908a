"""Throughput of ``numbarnn.dask.forward`` on a ``dask.distributed`` LocalCluster of 1 or 2 single-threaded worker
processes: scoring 4096 sequences (L=100, H_in=32, H=128, float32) with an RNN, LSTM or GRU, i.e. computing their
final states ``h_n`` (an LSTM's ``(h_n, c_n)``).

The input is generated on the workers and persisted there before the clock starts, as data read from storage by the
workers would be, so the timings are of the scoring (the tasks, the scheduler and gathering the 2 MB of ``h_n``), not
of moving the input. Two workers on two cores should score close to twice as fast as one.

asv times it (``ClusterScoring``, for each cell). For a fairer 1- vs 2-worker comparison run the module:

    python -m benchmarks.bench_dask [--cell rnn|lstm|gru] [--rounds 3] [--repeats 5]

which times each cluster size in its own fresh process, alternating, and prints the median of the per-process
medians and the speed-up. On a shared machine two cores rarely deliver twice one core's work, so it also measures the
ceiling: the same blocks scored without Dask by 1 process, and split between 2 processes started together.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import numbarnn
from numbarnn.cli.bench_worker import MODULES

from .common import SEED

SEQUENCES, STEPS, INPUT_SIZE, HIDDEN_SIZE = 4096, 100, 32, 128
BATCH_CHUNK = 512  # 8 tasks of ~30-40 ms (RNN): Dask's few ms per task stay small, and two workers still get 4 each
CELLS = tuple(MODULES)  # rnn, lstm, gru


def make_module(cell):
    """The scored module: numbarnn's RNN, LSTM or GRU (``cell`` "rnn", "lstm" or "gru"), seeded, in eval mode."""
    return getattr(numbarnn, MODULES[cell][0])(INPUT_SIZE, HIDDEN_SIZE, seed=SEED).eval()


class ClusterScoring:
    """Scoring on a LocalCluster (one thread per worker process); setup starts the cluster and warms every worker."""

    params = [[1, 2], list(CELLS)]
    param_names = ["workers", "cell"]
    timeout = 300

    def setup(self, workers, cell):
        self.scorer = Scorer(workers, cell)

    def teardown(self, workers, cell):
        self.scorer.close()

    def time_score(self, workers, cell):
        self.scorer.score()


class Scorer:
    """A LocalCluster of ``workers`` single-threaded worker processes holding the persisted input, and the module
    (``cell``: "rnn", "lstm" or "gru")."""

    def __init__(self, workers, cell="rnn"):
        import dask.array as da
        from dask.distributed import Client, LocalCluster, wait

        import numbarnn.dask  # before starting the cluster: a missing extra fails here, with nothing to clean up

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)
        try:
            self.rnn, self.forward = make_module(cell), numbarnn.dask.forward
            generator = da.random.default_rng(SEED)
            x = generator.standard_normal(
                (STEPS, SEQUENCES, INPUT_SIZE), dtype=np.float32, chunks=(STEPS, BATCH_CHUNK, INPUT_SIZE)
            )
            self.x = x.persist()
            wait(self.x)
            self.score()  # every worker compiles or loads the kernels before the clock starts
        except BaseException:
            self.close()
            raise

    def score(self):
        import dask

        _, h_n = self.forward(self.rnn, self.x)
        return dask.compute(h_n)[0]  # h_n, or an LSTM's (h_n, c_n)

    def close(self):
        self.client.close()
        self.cluster.close()


def _time_in_this_process(workers, repeats, cell):
    scorer = Scorer(workers, cell)
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            scorer.score()
            times.append(time.perf_counter() - start)
    finally:
        scorer.close()
    return statistics.median(times)


def _time_share_without_dask(workers, start_at, repeats, cell):
    """Score this process's 1 / ``workers`` share of the blocks with plain ``rnn(x)`` calls, starting at the wall-clock
    time ``start_at`` (so that the processes of one measurement run together); the median time."""
    import numbarnn.dask

    rnn = make_module(cell)
    block = np.random.default_rng(SEED).standard_normal((STEPS, BATCH_CHUNK, INPUT_SIZE)).astype(np.float32)
    blocks = SEQUENCES // BATCH_CHUNK // workers
    times = []
    with numbarnn.dask.limit_threads():
        rnn(block)
        time.sleep(max(0.0, start_at - time.time()))
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(blocks):
                rnn(block)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ceiling(workers, repeats, cell):
    start_at = time.time() + 3  # every process has imported numbarnn and warmed up by then
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_dask",
        "--child-without-dask",
        str(workers),
        "--start-at",
        str(start_at),
        "--repeats",
        str(repeats),
        "--cell",
        cell,
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    return max(json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=CELLS, default="rnn", help="the module scored (default rnn)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per cluster size (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed scorings per process (default 5)")
    # internal: one measurement in this process, printed as JSON
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-without-dask", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_time_in_this_process(args.child, args.repeats, args.cell)))
        return
    if args.child_without_dask is not None:
        print(json.dumps(_time_share_without_dask(args.child_without_dask, args.start_at, args.repeats, args.cell)))
        return
    medians, ceilings = {1: [], 2: []}, {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (1, 2):  # alternating: slow phases of the shared machine hit both sizes alike
            output = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_dask",
                    "--child",
                    str(workers),
                    "--repeats",
                    str(args.repeats),
                    "--cell",
                    args.cell,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            medians[workers].append(json.loads(output.stdout.strip().splitlines()[-1]))
            ceilings[workers].append(_ceiling(workers, args.repeats, args.cell))
    for workers, values in medians.items():
        seconds = statistics.median(values)
        print(
            f"{workers} worker(s): {seconds * 1e3:7.1f} ms per scoring, {SEQUENCES / seconds:8.0f} sequences/s "
            f"(per-process medians: {', '.join(f'{v * 1e3:.1f}' for v in values)} ms)"
        )
    for index in range(args.rounds):  # adjacent in time, so one noisy phase shows as one noisy round
        print(
            f"round {index + 1}: 2 workers / 1 worker {medians[1][index] / medians[2][index]:.2f}x, "
            f"without Dask {ceilings[1][index] / ceilings[2][index]:.2f}x"
        )
    speedup = statistics.median(medians[1]) / statistics.median(medians[2])
    ceiling = statistics.median(ceilings[1]) / statistics.median(ceilings[2])
    print(f"2 workers / 1 worker throughput: {speedup:.2f}x")
    print(
        f"without Dask, 2 processes / 1 process: {ceiling:.2f}x (the machine's ceiling at the time; medians "
        f"{statistics.median(ceilings[1]) * 1e3:.1f} and {statistics.median(ceilings[2]) * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    main()
