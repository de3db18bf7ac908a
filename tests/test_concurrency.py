"""Many threads at once: eval-mode ``RNN``, ``RNNCell`` and ``RNN.step`` called from a thread pool give bitwise the
results of serial calls and leave every thread pool's size as it was; two threads training one module get the
documented error, never corrupted results; under numba's ``workqueue`` threading layer (which aborts the process when
two threads enter numba parallel regions at once; the NumPy API runs none, and the drop-ins' passes step aside) the
same program runs to the end with the same results.

Bitwise, not within a tolerance: a call's blocks are fixed per process (numba's pool size), and each block's task
computes the same values whichever thread runs it, so nothing may change with the thread that runs a call.
"""

import copy
import os
import pathlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise_equal, pairwise_cases
from threadpoolctl import threadpool_info

import numbarnn
import numbarnn._engine
import numbarnn._threads
from numbarnn._workspace import block_count

ROOT = pathlib.Path(__file__).resolve().parents[1]

THREADS = 8
CALLS_PER_THREAD = 12
DISTINCT_INPUTS = 16  # each thread walks them from its own starting point, so the same input runs in many threads

# "blocks": large enough that the batch is split into blocks, which with the directions are the tasks that run on
# several threads (when numba allows several); "small": one block, one thread unless bidirectional.
SIZES = {
    "blocks": dict(input_size=16, hidden_size=64, steps=50, batch=8),
    "small": dict(input_size=3, hidden_size=5, steps=4, batch=3),
}

OPTIONS = {
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "lengths": [False, True],
    "batch_first": [False, True],
    "dtype": DTYPES,
    "size": list(SIZES),
}
CASES = pairwise_cases(OPTIONS)


def _case_id(case):
    return "-".join(
        [case["size"], f"L{case['num_layers']}", np.dtype(case["dtype"]).name]
        + [name for name in ("bidirectional", "lengths", "batch_first") if case[name]]
    )


def run_in_threads(work, threads=THREADS, calls=CALLS_PER_THREAD, distinct=DISTINCT_INPUTS):
    """Call ``work(i)`` from ``threads`` threads released at once by a barrier, ``calls`` times each on input
    indices ``i`` that differ from call to call and from thread to thread; returns every ``(i, result)``."""
    start = threading.Barrier(threads, timeout=120)

    def worker(thread):
        start.wait()
        return [(i, work(i)) for i in ((thread * 5 + k) % distinct for k in range(calls))]

    with ThreadPoolExecutor(threads) as pool:
        return [pair for part in pool.map(worker, range(threads)) for pair in part]


def thread_pools():
    """Every thread pool threadpoolctl sees (BLAS, OpenMP) and its size: process-wide state a call must not move."""
    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info())


def assert_concurrent_equals_serial(work, distinct=DISTINCT_INPUTS):
    """``work(i)`` (a tuple of arrays) from many threads at once equals, bit for bit, ``work(i)`` called serially,
    and no thread pool changed size meanwhile."""
    serial = [work(i) for i in range(distinct)]  # also compiles, and sets BLAS to one thread once, before the snapshot
    pools_before = thread_pools()
    results = run_in_threads(work, distinct=distinct)
    assert thread_pools() == pools_before
    assert len(results) == THREADS * CALLS_PER_THREAD
    for i, result in results:
        for position, (actual, expected) in enumerate(zip(result, serial[i], strict=True)):
            assert_bitwise_equal(actual, expected, f"input {i}, result {position}")


def rnn_case(case, seed=0):
    """An eval-mode module for ``case`` and a function of an input index that calls it on its own data."""
    size = SIZES[case["size"]]
    steps, batch, dtype = size["steps"], size["batch"], case["dtype"]
    rnn = numbarnn.RNN(
        size["input_size"],
        size["hidden_size"],
        case["num_layers"],
        batch_first=case["batch_first"],
        bidirectional=case["bidirectional"],
        dtype=dtype,
        seed=seed,
    ).eval()
    rng = np.random.default_rng(seed)
    shape = (batch, steps, size["input_size"]) if case["batch_first"] else (steps, batch, size["input_size"])
    xs = rng.standard_normal((DISTINCT_INPUTS, *shape)).astype(dtype)
    h_0s = rng.standard_normal(
        (DISTINCT_INPUTS, rnn.num_layers * rnn.num_directions, batch, size["hidden_size"])
    ).astype(dtype)
    lengths = rng.integers(1, steps + 1, (DISTINCT_INPUTS, batch)) if case["lengths"] else None

    def call(i):
        return rnn(xs[i], None if i % 2 else h_0s[i], None if lengths is None else lengths[i])

    return rnn, call


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_eval_rnn_called_from_threads_equals_serial_calls(case):
    rnn, call = rnn_case(case)
    size = SIZES[case["size"]]
    if case["size"] == "blocks" and numba.config.NUMBA_NUM_THREADS > 1:  # the case exercises what it is meant to:
        # several tasks (blocks x directions), shared between threads
        blocks = block_count(
            size["batch"], size["steps"], size["input_size"], size["hidden_size"], rnn.num_layers, rnn.num_directions
        )
        assert blocks * rnn.num_directions >= 2
    assert_concurrent_equals_serial(call)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batched", [True, False])
def test_eval_rnn_cell_called_from_threads_equals_serial_calls(dtype, batched, rng):
    cell = numbarnn.RNNCell(32, 64, dtype=dtype, seed=3).eval()
    xs = rng.standard_normal((DISTINCT_INPUTS, 4, 32) if batched else (DISTINCT_INPUTS, 32)).astype(dtype)
    hs = rng.standard_normal((DISTINCT_INPUTS, 4, 64) if batched else (DISTINCT_INPUTS, 64)).astype(dtype)
    assert_concurrent_equals_serial(lambda i: (cell(xs[i], None if i % 2 else hs[i]),))
    assert cell._tape == []  # eval mode records nothing, from any thread


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("batched", [True, False])
def test_step_called_from_threads_equals_serial_calls(dtype, num_layers, batched, rng):
    rnn = numbarnn.RNN(32, 64, num_layers, dtype=dtype, seed=4).eval()
    xs = rng.standard_normal((DISTINCT_INPUTS, 4, 32) if batched else (DISTINCT_INPUTS, 32)).astype(dtype)
    hs = rng.standard_normal(
        (DISTINCT_INPUTS, num_layers, 4, 64) if batched else (DISTINCT_INPUTS, num_layers, 64)
    ).astype(dtype)
    assert_concurrent_equals_serial(lambda i: rnn.step(xs[i], None if i % 2 else hs[i]))


def test_different_modules_called_from_threads_at_once_equal_serial_calls(rng):
    """Modules of every kind share nothing they write: a thread pool mixing them gives the serial results."""
    _, call_big = rnn_case(
        dict(size="blocks", num_layers=2, bidirectional=True, lengths=True, batch_first=False, dtype=np.float32), seed=1
    )
    _, call_small = rnn_case(
        dict(size="small", num_layers=1, bidirectional=False, lengths=False, batch_first=True, dtype=np.float64), seed=2
    )
    cell = numbarnn.RNNCell(16, 64, nonlinearity="relu", seed=5).eval()
    xs = rng.standard_normal((DISTINCT_INPUTS, 8, 16)).astype(np.float32)
    hs = rng.standard_normal((DISTINCT_INPUTS, 2, 8, 64)).astype(np.float32)
    stepper = numbarnn.RNN(16, 64, 2, seed=6).eval()
    kinds = [call_big, call_small, lambda i: (cell(xs[i], hs[i, 0]),), lambda i: stepper.step(xs[i], hs[i])]
    assert_concurrent_equals_serial(lambda i: kinds[i % len(kinds)](i))


def test_copies_trained_in_threads_at_once_equal_serial_training(rng):
    """The documented way to train from several threads, one copy each: forward and backward from many threads at
    once (multi-threaded passes included) give the serial results and gradients."""
    rnn = numbarnn.RNN(16, 64, 2, bidirectional=True, seed=7)
    xs = rng.standard_normal((DISTINCT_INPUTS, 50, 8, 16)).astype(np.float32)
    grads = rng.standard_normal((DISTINCT_INPUTS, 50, 8, 128)).astype(np.float32)
    copies = threading.local()

    def train(i):
        if not hasattr(copies, "rnn"):
            copies.rnn = copy.deepcopy(rnn)
        module = copies.rnn
        module.zero_grad()
        output, h_n = module(xs[i])
        grad_input, grad_h_0 = module.backward(grads[i])
        return output, h_n, grad_input, grad_h_0, module._grad_flat.copy()

    assert_concurrent_equals_serial(train)


# -- one module trained from two threads --------------------------------------------------------------------------


def _training_error(what):
    return (
        rf"{what}\(\) in training mode while another thread is training this module.*copy\.deepcopy\(rnn\)"
        r".*rnn\.eval\(\)"
    )


@pytest.mark.parametrize("held", ["forward", "backward"])
def test_second_thread_training_the_same_module_gets_the_documented_error(held, monkeypatch, rng):
    """One thread is held inside a training forward (or backward); the other thread's forward and backward raise
    the documented RuntimeError at once, and the held thread's results and gradients are exactly the serial ones."""
    rnn = numbarnn.RNN(16, 64, 2, bidirectional=True, seed=8)
    x = rng.standard_normal((50, 8, 16)).astype(np.float32)
    other_x = rng.standard_normal((50, 8, 16)).astype(np.float32)
    grad_output = rng.standard_normal((50, 8, 128)).astype(np.float32)
    reference = copy.deepcopy(rnn)
    expected = (*reference(x), *reference.backward(grad_output), reference._grad_flat.copy())

    inside, release = threading.Event(), threading.Event()
    real = getattr(numbarnn._engine, held)
    held_calls = []

    def held_kernel_call(*arguments, **keywords):
        if not held_calls:  # only the first call waits: the holder's
            held_calls.append(threading.get_ident())
            inside.set()
            assert release.wait(60)
        return real(*arguments, **keywords)

    monkeypatch.setattr(numbarnn._engine, held, held_kernel_call)

    def holder():
        output, h_n = rnn(x)
        return (output, h_n, *rnn.backward(grad_output), rnn._grad_flat.copy())

    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(holder)
        try:
            assert inside.wait(60)
            with pytest.raises(RuntimeError, match=_training_error("forward")):
                rnn(other_x)
            with pytest.raises(RuntimeError, match=_training_error("backward")):
                rnn.backward(grad_output)
        finally:
            release.set()
        actual = holding.result(timeout=120)
    assert len(held_calls) == 1 and held_calls[0] != threading.get_ident()  # the pool's thread was the one held
    for position, (value, reference_value) in enumerate(zip(actual, expected, strict=True)):
        assert_bitwise_equal(value, reference_value, f"result {position}")
    # The failed calls left the module usable: the next forward and backward, serially, are exact again.
    rnn.zero_grad()
    output, h_n = rnn(x)
    for position, (value, reference_value) in enumerate(
        zip((output, h_n, *rnn.backward(grad_output), rnn._grad_flat), expected, strict=True)
    ):
        assert_bitwise_equal(value, reference_value, f"after the error, result {position}")


def test_two_threads_training_one_module_get_correct_results_or_the_error(rng):
    """Unheld: two threads run training forwards of one module as fast as they can; each call either returns
    exactly the serial result for its input or raises the documented error, and the error is seen."""
    rnn = numbarnn.RNN(16, 64, 2, bidirectional=True, seed=9)
    xs = rng.standard_normal((4, 50, 8, 16)).astype(np.float32)
    reference = copy.deepcopy(rnn)
    expected = [reference(x) for x in xs]
    start = threading.Barrier(2, timeout=60)
    errors = []
    stop = threading.Event()

    def hammer(thread):
        start.wait()
        calls = 0
        while not stop.is_set() and calls < 2000:
            i = (thread + calls) % len(xs)
            calls += 1
            try:
                output, h_n = rnn(xs[i])
            except RuntimeError as error:
                assert "in training mode while another thread is training this module" in str(error)
                errors.append(error)
                if len(errors) >= 20:
                    stop.set()  # seen often enough: the overlap is real
                continue
            assert_bitwise_equal(output, expected[i][0], f"thread {thread} output {i}")
            assert_bitwise_equal(h_n, expected[i][1], f"thread {thread} h_n {i}")
        return calls

    with ThreadPoolExecutor(2) as pool:
        calls = list(pool.map(hammer, range(2)))
    assert errors, f"the two threads never overlapped in {calls} calls"


# -- numbarnn's worker threads --------------------------------------------------------------------------------------


def spy_on_workers(monkeypatch):
    """The parts that calls hand to numbarnn's workers from now on, as ``(first_stage, part, parts)``."""
    pool = numbarnn._threads._pool()
    submit = pool.submit
    handed = []

    def recording_submit(function, first_stage, end_stage, part, parts, *arguments):
        handed.append((first_stage, part, parts))
        return submit(function, first_stage, end_stage, part, parts, *arguments)

    monkeypatch.setattr(pool, "submit", recording_submit)
    return handed


def test_a_pass_uses_the_workers_only_where_the_calling_thread_allows_several_threads(monkeypatch, block_pool, rng):
    """A multi-block, two-layer forward with numba's count at 1 for the calling thread runs on it alone; at 2, the
    stage after the first (which packs both layers' small weights on the calling thread alone) hands part 1 of 2 to
    a worker: its block, through both layers. Both give bitwise the same result. With dropout (whose masks apply to
    a layer's whole input), each stage after the first is handed over: layer 0's tasks, layer 1's preparation, its
    tasks."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NUMBA_NUM_THREADS=1: numbarnn has no worker threads here")
    rnn = numbarnn.RNN(16, 64, 2, seed=12).eval()
    x = rng.standard_normal((50, 8, 16)).astype(np.float32)
    assert block_count(8, 50, 16, 64, 2, 1) >= 2
    handed = spy_on_workers(monkeypatch)
    with numbarnn._threads.numba_threads(1):
        alone = rnn(x)
    assert handed == []
    with numbarnn._threads.numba_threads(2):
        shared = rnn(x)
    assert handed == [(1, 1, 2)]  # (stage, part, parts): the blocks, each through both layers
    for got, expected in zip(shared, alone, strict=True):
        assert_bitwise_equal(got, expected, "output or h_n")
    handed.clear()
    dropout = numbarnn.RNN(16, 64, 2, dropout=0.5, seed=12)
    with numbarnn._threads.numba_threads(2):
        dropout(x)
    assert handed == [(1, 1, 2), (2, 1, 2), (3, 1, 2)]


def _forked_call(rnn, x, results):
    with numbarnn._threads.numba_threads(2):
        results.put(rnn(x)[0].tobytes())


def test_a_child_forked_after_a_multithreaded_call_starts_its_own_workers(block_pool, rng):
    """A child forked from a process whose workers exist has none of them: its multi-block call starts its own
    (instead of waiting for ever on the parent's) and gives the parent's result."""
    import multiprocessing

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NUMBA_NUM_THREADS=1: numbarnn has no worker threads here")
    rnn = numbarnn.RNN(16, 64, 2, seed=13).eval()
    x = rng.standard_normal((50, 8, 16)).astype(np.float32)
    with numbarnn._threads.numba_threads(2):
        expected = rnn(x)[0]
    assert numbarnn._threads._workers is not None
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_forked_call, args=(rnn, x, results))
    child.start()
    try:
        got = results.get(timeout=120)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert got == expected.tobytes()


def test_an_openmp_pass_runs_alone_while_another_may_hold_the_only_parallel_region(monkeypatch):
    """The drop-ins' passes run on numba's OpenMP threads (a parts kernel). While it is not known that the threading
    layer allows two parallel regions at once (workqueue does not), a pass that finds another one in its region runs
    its stages in one part on the calling thread; otherwise, after a first stage run alone if asked, the parts
    kernel runs the rest."""
    calls = []

    def kernel(first_stage, end_stage, part, parts, *arguments):
        calls.append(("kernel", first_stage, end_stage, part, parts))

    def parts_kernel(first_stage, end_stage, parts, *arguments):
        calls.append(("parts", first_stage, end_stage, parts))

    monkeypatch.setattr(numbarnn._threads, "_layer_allows_concurrency", None)
    with numbarnn._threads.numba_threads(2):
        threads = numba.get_num_threads()
        if threads < 2:
            pytest.skip("NUMBA_NUM_THREADS=1: no parallel region to share")
        with numbarnn._threads._parallel_gate:  # another thread is in its parallel region
            numbarnn._threads.run_stages(kernel, parts_kernel, 3, 4, False)
        assert calls == [("kernel", 0, 3, 0, 1)]
        calls.clear()
        numbarnn._threads.run_stages(kernel, parts_kernel, 3, 4, True)
        assert calls == [("kernel", 0, 1, 0, 1), ("parts", 1, 3, threads)]


# -- numba's workqueue threading layer ----------------------------------------------------------------------------

# Run by the test in a fresh interpreter with NUMBA_THREADING_LAYER=workqueue (the layer is fixed per process), and
# exec'd by the test itself to compute the same serial results under the default layer. numba's cache is not keyed
# on the threading layer, so the child loads what the parent compiled.
WORKQUEUE_SCRIPT = r'''
import copy
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import numbarnn

THREADS, CALLS = 4, 8


def calls():
    """Functions of an input index, each giving a tuple of arrays: multi-block eval RNNs, separate training
    copies, a cell and a streaming step."""
    rng = np.random.default_rng(11)
    bidirectional = numbarnn.RNN(16, 64, 2, bidirectional=True, seed=1).eval()
    wide = numbarnn.RNN(16, 64, batch_first=True, dtype=np.float64, seed=2).eval()
    trained = numbarnn.RNN(16, 64, seed=3)
    cell = numbarnn.RNNCell(16, 64, seed=4).eval()
    stepper = numbarnn.RNN(16, 64, 2, seed=5).eval()
    xs = rng.standard_normal((THREADS, 50, 8, 16)).astype(np.float32)
    lengths = rng.integers(1, 51, (THREADS, 8))
    grads = rng.standard_normal((THREADS, 50, 8, 64)).astype(np.float32)
    copies = threading.local()

    def train(i):
        if not hasattr(copies, "rnn"):
            copies.rnn = copy.deepcopy(trained)
        copies.rnn.zero_grad()
        output, h_n = copies.rnn(xs[i])
        return (output, h_n, *copies.rnn.backward(grads[i]), copies.rnn._grad_flat.copy())

    return {
        "bidirectional_lengths": lambda i: bidirectional(xs[i], lengths=lengths[i]),
        "float64_batch_first": lambda i: wide(xs[i].transpose(1, 0, 2).astype(np.float64)),
        "training_copies": train,
        "cell": lambda i: (cell(xs[i, 0]),),
        "step": lambda i: stepper.step(xs[i, 0]),
    }


def serial_results():
    return {f"{name}/{i}/{k}": value for name, call in calls().items() for i in range(THREADS)
            for k, value in enumerate(call(i))}


def main(path):
    import numba

    serial = serial_results()
    start = threading.Barrier(THREADS, timeout=120)

    def worker(thread):
        start.wait()
        out = {}
        for round_ in range(CALLS):
            for name, call in work.items():
                i = (thread + round_) % THREADS
                for k, value in enumerate(call(i)):
                    out[f"{name}/{i}/{k}/{thread}/{round_}"] = (f"{name}/{i}/{k}", value)
        return out

    work = calls()
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    compared = 0
    for out in results:
        for key, (serial_key, value) in out.items():
            if value.tobytes() != serial[serial_key].tobytes():
                sys.exit(f"concurrent result {key} differs from the serial one")
            compared += 1
    np.savez(path, **serial)
    print(f"layer={numba.threading_layer()} threads={numba.get_num_threads()} compared={compared}")


if __name__ == "__main__":
    main(sys.argv[1])
'''


def test_workqueue_layer_runs_concurrent_multithreaded_calls_without_aborting(tmp_path):
    """numba's workqueue layer aborts the process ("Concurrent access has been detected") when two threads enter a
    numba parallel region at once. The NumPy API's passes run on numbarnn's own worker threads, under any layer: 4
    threads calling multi-block modules at once exit normally with bitwise the serial results, which equal those
    under the default layer."""
    namespace = {"__name__": "workqueue_script"}
    exec(compile(WORKQUEUE_SCRIPT, "WORKQUEUE_SCRIPT", "exec"), namespace)
    here = namespace["serial_results"]()  # the default layer's results; compiles what the child will load
    environment = dict(
        os.environ,
        NUMBA_THREADING_LAYER="workqueue",
        PYTHONPATH=str(ROOT),
        NUMBA_NUM_THREADS=str(numba.config.NUMBA_NUM_THREADS),
    )
    path = tmp_path / "serial.npz"
    finished = subprocess.run(
        [sys.executable, "-c", WORKQUEUE_SCRIPT, str(path)],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, (finished.returncode, finished.stdout, finished.stderr[-3000:])
    assert "Concurrent access has been detected" not in finished.stderr
    assert finished.stdout.startswith(f"layer=workqueue threads={numba.config.NUMBA_NUM_THREADS} compared="), (
        finished.stdout
    )
    with np.load(path) as child:
        assert sorted(child.files) == sorted(here)
        for key, value in here.items():
            assert_bitwise_equal(child[key], value, key)  # same blocks per call, so the same bits in both layers


def test_two_threads_training_one_cell_get_their_own_gradients_or_an_error(rng):
    """Thread A calls the cell, thread B calls it, then A's backward: A must get the gradient of its own call (a
    tape per thread) or a RuntimeError (one training thread per cell), never B's gradient silently."""
    cell = numbarnn.RNNCell(3, 4, seed=0)
    x_a, x_b = rng.standard_normal((2, 1, 3)).astype(np.float32)
    grad = np.ones((1, 4), np.float32)
    reference = copy.deepcopy(cell)
    reference(x_a)
    expected = reference.backward(grad)
    a_called, b_called = threading.Event(), threading.Event()

    def thread_a():
        cell(x_a)
        a_called.set()
        assert b_called.wait(60)
        try:
            return cell.backward(grad)
        except RuntimeError as error:
            return error

    def thread_b():
        assert a_called.wait(60)
        try:
            cell(x_b)
        finally:
            b_called.set()

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(thread_a), pool.submit(thread_b)
        result = a.result(timeout=120)
        refused = b.exception(timeout=120)
    for error in (refused, result):
        if isinstance(error, BaseException):  # a refusal must be the documented kind of error
            assert isinstance(error, RuntimeError) and "another thread" in str(error), error
    if not isinstance(result, BaseException):
        for value, reference_value in zip(result, expected, strict=True):
            assert_bitwise_equal(value, reference_value, "thread A's gradient")
