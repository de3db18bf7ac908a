"""pytest fixtures shared by the test modules (plain helper functions live in ``helpers.py``)."""

import os
import pathlib

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
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}), \
                distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                         dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            patch.undo()  # the workers have started: the rest of the session keeps its own environment
            yield client, cache_dir
