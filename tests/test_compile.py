"""``python -m numbarnn compile`` fills numba's cache so that a later process compiles nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import spy_on

import numbarnn._engine
from numbarnn.cli import compile as compile_command

ROOT = Path(__file__).resolve().parents[1]

# A process that uses the cache: a forward, a training step and a step of a float64 RNN; it prints the kernels that
# numba compiled instead of loading them (dispatcher.stats counts cache misses per signature).
USER = """
import numpy as np
import numbarnn
from numbarnn import _backward, _forward, _step
rnn = numbarnn.RNN(8, 16, num_layers=2, dtype=np.float64, seed=1)
x = np.ones((5, 3, 8))
out, _ = rnn(x)
rnn.backward(np.ones_like(out))
rnn.eval()
rnn(x)
rnn.step(x[0])
kernels = {"forward": _forward.recurrent_forward, "backward": _backward.recurrent_backward, "step": _step.stacked_step}
print("misses", sorted(name for name, k in kernels.items() if k.stats.cache_misses))
print("hits", sorted(name for name, k in kernels.items() if k.stats.cache_hits))
"""


def run(args, cache, environ=os.environ):
    # One numba thread in both processes: the batch then stays one block (numbarnn._workspace.block_count), and the
    # command's cold compile skips the packing kernels, which USER does not call (that the command splits a batch
    # where numba has threads is checked in-process, on the session's cache, below).
    environment = dict(environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], env=environment, cwd=cache, capture_output=True, text=True, timeout=600
    )


def compile_then_use(directory, environ):
    """``python -m numbarnn compile`` on a fresh cache in ``directory``, then USER on it, in ``environ`` otherwise:
    ``(directory, the command's CompletedProcess, the cache index files it wrote, USER's CompletedProcess or None if
    the command failed)``.
    Started early (conftest.py): it runs in the background while the session runs other tests."""
    done = run(
        ["-m", "numbarnn", "compile", "--cells", "rnn", "--dtypes", "float64", "--progress", "lines"],
        directory,
        environ,
    )
    written = sorted(directory.rglob("*.nbi"))
    user = run(["-c", USER], directory, environ) if done.returncode == 0 else None
    return directory, done, written, user


@pytest.mark.slow
@pytest.mark.early(work=compile_then_use)
def test_compile_fills_the_cache_a_later_process_loads(early_work):
    directory, done, written, user = early_work.result()
    assert done.returncode == 0, done.stderr
    assert "rnn in float64 ready in" in done.stdout
    assert f"cache: NUMBA_CACHE_DIR={directory}" in done.stdout
    assert written, "no cache index written"

    assert user.returncode == 0, user.stderr
    assert "misses []" in user.stdout, user.stdout
    assert "hits ['backward', 'forward', 'step']" in user.stdout, user.stdout


def test_compile_splits_a_batch_into_blocks_where_numba_has_threads(block_pool, monkeypatch):
    """Its batch is large enough to split into blocks (with two numba threads or more): a cell's training forward,
    backward and eval forward each get a call with at least two tasks, as a real batch would."""
    calls = spy_on(
        monkeypatch, numbarnn._engine, "run_stages", lambda args, kwargs, result: (args[0].py_func.__name__, args[3])
    )
    compile_command.compile_cell("rnn", "float64")
    several = [kernel for kernel, tasks in calls if tasks >= 2]
    assert sorted(several) == ["recurrent_backward", "recurrent_forward", "recurrent_forward"], calls


def test_compile_covers_an_lstm_with_a_projection_its_own_specialisation(monkeypatch):
    """An LSTM with proj_size runs kernels of its own (numbarnn._cells), so compiling the LSTM exercises one of each;
    the other cells one module."""
    exercised = []
    monkeypatch.setattr(compile_command, "exercise", lambda module, x: exercised.append(module))
    for cell in ("lstm", "gru"):
        compile_command.compile_cell(cell, "float32")
    kinds = [(type(module).__name__, getattr(module, "proj_size", 0)) for module in exercised]
    assert kinds == [("LSTM", 0), ("LSTM", compile_command.HIDDEN_SIZE // 2), ("GRU", 0)]


def test_compile_rejects_an_unknown_cell():
    done = subprocess.run(
        [sys.executable, "-m", "numbarnn", "compile", "--cells", "transformer"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert done.returncode == 2
    assert "invalid choice: 'transformer'" in done.stderr
