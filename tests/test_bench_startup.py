"""``python -m numbarnn bench --startup``: fresh processes with a cold and a warm JIT cache."""

import json

import pytest
from test_bench import run_bench

from numbarnn.cli import bench_startup


def test_each_cell_gets_a_cold_then_a_warm_process_on_the_same_cache(monkeypatch):
    calls = []

    def fake_process(arguments, cache_dir):
        calls.append((arguments[-2:], cache_dir))
        kind = arguments[-1]
        times = {"import": 0.5, "inference": 2.0 if kind == "cold" else 0.1}
        if kind == "cold":
            times["training"] = 4.0
        return json.dumps(times), 1.0

    monkeypatch.setattr(bench_startup, "run_process", fake_process)
    monkeypatch.setattr(bench_startup, "measure_demo", lambda rounds: 7.5)
    exit_code, out, err = run_bench(["--startup", "--cell", "rnn", "gru", "--rounds", "2"])
    assert exit_code == 0, err
    assert [arguments for arguments, _ in calls] == [["RNN", "cold"], ["RNN", "warm"]] * 2 + [
        ["GRU", "cold"],
        ["GRU", "warm"],
    ] * 2
    cold_dirs, warm_dirs = [d for (a, d) in calls if a[1] == "cold"], [d for (a, d) in calls if a[1] == "warm"]
    assert cold_dirs == warm_dirs  # each warm process reads the cache its cold process filled
    assert len(set(cold_dirs)) == len(cold_dirs)  # and every cold process starts from a new, empty one
    assert "| rnn | 0.50 | 2.00 | 4.00 | 0.60 |" in out
    assert "| gru | 0.50 | 2.00 | 4.00 | 0.60 |" in out
    assert "demo (python -m numbarnn demo --steps 1, cold, whole process): 7.5 s" in out


def test_a_failing_process_is_reported(monkeypatch):
    def failing(arguments, cache_dir):
        raise RuntimeError("-c boom failed:\nTraceback: boom")

    monkeypatch.setattr(bench_startup, "run_process", failing)
    exit_code, out, err = run_bench(["--startup", "--rounds", "1"])
    assert exit_code == 1
    assert "numbarnn bench --startup: -c boom failed" in err


def test_each_process_gets_the_cache_directory_it_is_given(tmp_path):
    code = "import os; print(os.environ.get('NUMBA_CACHE_DIR'))"
    stdout, seconds = bench_startup.run_process(["-c", code], str(tmp_path))
    assert stdout.strip() == str(tmp_path) and seconds > 0
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        bench_startup.run_process(["-c", "1 / 0"], str(tmp_path))


def test_the_worker_script_is_valid_python_that_prints_its_figures():
    # the real cold run compiles for a minute (bench --startup itself); here: it parses, and prints JSON at the end
    compile(bench_startup.WORKER, "worker", "exec")
    assert bench_startup.WORKER.rstrip().endswith("print(json.dumps(times))")
