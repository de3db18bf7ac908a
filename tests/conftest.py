"""pytest fixtures shared by the test modules (plain helper functions live in ``helpers.py``)."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import helpers  # (also sets torch's thread count for the whole session before any test runs)
import numbarnn._workspace


@pytest.fixture
def rng():
    """A fresh generator with a fixed seed: every test sees the same data on every run."""
    return np.random.default_rng(20240601)


@pytest.fixture
def block_pool(monkeypatch):
    """Split batches into blocks as a pool of ``helpers.BLOCK_POOL`` numba threads would, whatever this machine's
    pool (numbarnn._workspace.max_blocks reads it once per process): a 1- or 2-core machine runs the block paths too,
    one block after the other, or in parallel where numba has 2 threads. Returns BLOCK_POOL."""
    monkeypatch.setattr(numbarnn._workspace, "max_blocks", lambda: helpers.BLOCK_POOL)
    return helpers.BLOCK_POOL


@pytest.fixture(scope="module")
def dask_client(tmp_path_factory):
    """A real dask.distributed cluster: 2 worker processes with 1 thread each, whose numba cache starts empty (a
    fresh NUMBA_CACHE_DIR), so their first tasks compile at the same time. Yields ``(client, numba_cache_dir)``."""
    import dask
    import distributed

    cache_dir = tmp_path_factory.mktemp("worker-numba-cache")
    root = str(pathlib.Path(__file__).resolve().parents[1])  # the workers import this checkout's numbarnn
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    # "pre-spawn": numba reads NUMBA_CACHE_DIR when it is imported, which a spawned worker may do before the nanny's
    # env= is applied. distributed lets a variable already in the environment win over that configuration (CI sets
    # NUMBA_CACHE_DIR for the whole run), so the spawning process's own environment says it too while the workers
    # start.
    environment = {"NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": python_path}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": environment}),
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            patch.undo()  # the workers have started: the rest of the session keeps its own environment
            yield client, cache_dir


# -- work started early: the slow tests that only wait for other processes -------------------------------------------
# A test marked ``@pytest.mark.early(work=work)`` has ``work(directory, environment)`` run in a background thread
# as soon as the session's tests are collected (if the test is among those selected), and reads its result from the
# ``early_work`` fixture (a Future). ``work`` starts processes, waits for them and returns what the test asserts on;
# ``directory`` is a fresh, empty one of its own, ``environment`` the environment variables as they were when the
# tests were collected (a test running meanwhile may have changed os.environ for itself).
# Why: these are the cold-cache tests, processes compiling from scratch into a NUMBA_CACHE_DIR of their own. Run at
# their turn, this process waited for them (one compiling process left a core idle), and the rest of the suite
# (mostly compiling, one thread) ran on one core. Started early, they use the core this process leaves idle. One job
# at a time, in the order of the tests, so that they add at most one job's processes to the machine's load. The
# tests assert exactly what they did when they ran the work themselves; only when the processes run changes.

_early_jobs = {}  # nodeid -> Future of work(directory, environment)
_early_pool = None
_early_directories = []


# -- the kernels compiled in the background from the start -------------------------------------------------------------
# Most of a cold session's time is numba compiling each cell's kernels in each dtype, once, in this process (one
# thread) or in the bench's worker processes. From the start of the session, a background process makes the calls of
# ``python -m numbarnn compile`` into the session's own cache (numba loads what another process has written), in the
# order the tests need them last-first: the gated cells, then the RNN (the first files the session runs use the RNN
# in both dtypes). A test that gets there first compiles the kernel itself, as it did without this. The tests run
# the same code either way; what changes is which process compiled it. Skip it with --no-warm-up.
WARM_UP_ORDER = [
    ("lstm", "float64"),
    ("gru", "float64"),
    ("lstm", "float32"),
    ("gru", "float32"),
    ("rnn", "float64"),
    ("rnn", "float32"),
]
WARM_UP_SCRIPT = """
import sys
from numbarnn._threads import configure_threads_once
from numbarnn.cli.compile import compile_cell
configure_threads_once()
for item in sys.argv[1:]:
    compile_cell(*item.split(":"))
"""
_warm_up = None


def pytest_addoption(parser):
    parser.addoption(
        "--no-warm-up",
        action="store_true",
        help="do not compile numbarnn's kernels in a background process from the start of the session",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "early(work): run work(directory, environment) in the background from the "
        "start of the session; the test reads its result from the early_work fixture",
    )


def pytest_collection_modifyitems(session, config, items):
    """The slow tests that wait for other processes (the bench's workers, clusters, scripts) run last, in their
    order, after the tests that compile in this process. Their processes load the kernels this session compiled
    (or the warm-up did) instead of compiling them first, on the core the warm-up needs (a cold session: ~12.3 min
    with them first, measured on 2 cores). The ``early`` ones stay where they are: their work starts with the
    session anyway."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None and not item.get_closest_marker("early"))


def _skipped(item):
    """Whether a skip or skipif marker (with a boolean condition) skips the test: its work is not started."""
    return any(item.iter_markers("skip")) or any(
        marker.args and not isinstance(marker.args[0], str) and bool(marker.args[0])
        for marker in item.iter_markers("skipif")
    )


def pytest_collection_finish(session):
    global _early_pool
    if session.config.option.collectonly:
        return
    environment = dict(os.environ)
    global _warm_up
    if session.items and not session.config.option.no_warm_up:
        root = str(pathlib.Path(__file__).resolve().parents[1])
        python_path = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
        _warm_up = subprocess.Popen(
            [sys.executable, "-c", WARM_UP_SCRIPT, *(f"{cell}:{dtype}" for cell, dtype in WARM_UP_ORDER)],
            env=dict(environment, PYTHONPATH=python_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    for item in session.items:
        marker = item.get_closest_marker("early")
        if marker is None or _skipped(item):
            continue
        if _early_pool is None:
            _early_pool = ThreadPoolExecutor(1, thread_name_prefix="early-test-work")
        directory = pathlib.Path(tempfile.mkdtemp(prefix="numbarnn-early-"))
        _early_directories.append(directory)
        _early_jobs[item.nodeid] = _early_pool.submit(marker.kwargs["work"], directory, environment)


def pytest_sessionfinish(session):
    if _warm_up is not None and _warm_up.poll() is None:
        _warm_up.kill()  # only a head start for the tests: what it has not compiled yet, nothing needs any more
        _warm_up.wait()
    if _early_pool is not None:
        _early_pool.shutdown(wait=True, cancel_futures=True)  # a job already running ends within its timeouts
    for directory in _early_directories:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def early_work(request):
    """The test's ``early`` work, a Future: its ``result()`` waits for the work and returns what it returned, or
    raises (in the test, which then fails) what it raised."""
    return _early_jobs[request.node.nodeid]
