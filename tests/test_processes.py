"""Several processes at once on one cold numba cache, as a multiprocessing or Dask pool starts its workers: every
process compiles (or loads what another just wrote) and all succeed with the same results.

numba's on-disk cache has raced in the past when processes compile the same function at once (numba issues #4807,
#10128): a process could read an index another was still writing. This test starts four processes that wait for
each other and then compile the same kernels into one fresh, empty ``NUMBA_CACHE_DIR``; then four more that load from
it. Slow (a cold compile is ~7 s of CPU per process, and four share the cores), so marked ``slow``; its processes
start with the session (``early``, conftest.py), in the background.
"""

import pathlib
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from helpers import assert_bitwise_equal

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROCESSES = 4

# Run by each process with its index and the shared directory; exec'd by the test too for its own results. Large
# enough (N=8, L=50, H=64) that the eval forward splits the batch into blocks; a streaming step adds a second kernel.
# Inference only: a training forward + backward would more than double the cold compile (~10 s of CPU per process for
# the forward), and the cache race does not depend on which kernels compile.
WORKER_SCRIPT = r'''
import pathlib
import sys
import time

import numpy as np

import numbarnn


def results():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 8, 16)).astype(np.float32)
    rnn = numbarnn.RNN(16, 64, seed=1).eval()
    output, h_n = rnn(x)
    step_output, step_h = rnn.step(x[0])
    return dict(output=output, h_n=h_n, step_output=step_output, step_h=step_h)


def wait_for_everyone(directory, index, count):
    """A file barrier: start compiling only when every process has imported numbarnn and arrived."""
    (directory / f"ready-{index}").touch()
    deadline = time.monotonic() + 120
    while len(list(directory.glob("ready-*"))) < count:
        if time.monotonic() > deadline:
            sys.exit("the other processes never arrived")
        time.sleep(0.005)


if __name__ == "__main__":
    index, directory, count = int(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    wait_for_everyone(directory, index, count)
    start = time.perf_counter()
    values = results()
    np.savez(directory / f"result-{index}.npz", **values)
    print(f"process {index}: {time.perf_counter() - start:.1f} s")
'''


def run_processes_at_once(round_directory, cache_directory, environ):
    """Start PROCESSES workers at once on ``cache_directory``, in ``environ`` otherwise; returns their results (dicts
    of arrays) and what they printed."""
    round_directory.mkdir()
    environment = dict(
        environ,
        NUMBA_CACHE_DIR=str(cache_directory),
        PYTHONPATH=str(ROOT),
        NUMBA_NUM_THREADS=str(numba.config.NUMBA_NUM_THREADS),
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(index), str(round_directory), str(PROCESSES)],
            env=environment,
            cwd=round_directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(PROCESSES)
    ]
    outcomes = [worker.communicate(timeout=300) for worker in workers]
    for index, (worker, (stdout, stderr)) in enumerate(zip(workers, outcomes, strict=True)):
        # Empty stderr: not even a warning that numba could not read or write its cache.
        assert worker.returncode == 0 and stderr == "", (index, worker.returncode, stdout, stderr[-3000:])
    results = []
    for index in range(PROCESSES):
        with np.load(round_directory / f"result-{index}.npz") as loaded:
            results.append({name: loaded[name] for name in loaded.files})
    return results, "".join(stdout for stdout, _ in outcomes)


def cold_then_warm(directory, environ):
    """Both rounds on one fresh cache under ``directory``: ``(cold results, warm results, cache index files the cold
    round wrote, what the processes printed)``. Started early (conftest.py): it runs in the background while the
    session runs other tests."""
    cache = directory / "numba-cache"
    cache.mkdir()
    started = time.perf_counter()
    cold, cold_printed = run_processes_at_once(directory / "cold", cache, environ)
    cold_seconds = time.perf_counter() - started
    written = sorted(cache.rglob("*.nbi"))
    started = time.perf_counter()
    warm, warm_printed = run_processes_at_once(directory / "warm", cache, environ)
    warm_seconds = time.perf_counter() - started
    printed = (
        f"{cold_printed}{warm_printed}\n{PROCESSES} processes at once: cold cache {cold_seconds:.1f} s, "
        f"warm cache {warm_seconds:.1f} s"
    )
    return cold, warm, written, printed


@pytest.mark.slow
@pytest.mark.early(work=cold_then_warm)
def test_four_processes_on_a_cold_cache_all_succeed_with_equal_results(early_work):
    namespace = {"__name__": "worker_script"}
    exec(compile(WORKER_SCRIPT, "WORKER_SCRIPT", "exec"), namespace)
    expected = namespace["results"]()
    cold, warm, written, printed = early_work.result()
    print(printed)
    assert written, "the processes wrote nothing to the shared cache"

    # Same code, same machine and the same blocks per call (NUMBA_NUM_THREADS is passed on): the same bits.
    for index, result in enumerate(cold + warm):
        assert sorted(result) == sorted(expected)
        for name, value in expected.items():
            assert_bitwise_equal(result[name], value, f"process {index}: {name}")
