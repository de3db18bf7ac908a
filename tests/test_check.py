"""``python -m numbarnn check``: its grid reaches the fast paths, and its fast-path settings agree with torch."""

import re

import numpy as np
import pytest
from helpers import panels_of

import numbarnn._workspace
from numbarnn.__main__ import main
from numbarnn.cli import check


@pytest.mark.parametrize("pool", [2, 4])
def test_grid_reaches_partial_panels_and_blocks(pool, monkeypatch):
    """With the panel width and block sizes in use, at the default L and N: whole panels only, and whole panels and
    a partial one, in each dtype; with a 2-thread pool (a 2-core machine) a multi-layer stack with lengths in
    several blocks, and with 4 threads a bidirectional one too."""
    monkeypatch.setattr(numbarnn._workspace, "max_blocks", lambda: pool)
    steps, batch = 7, 3  # check's defaults
    grid = check.settings(batch)
    for dtype in check.TOLERANCES:
        panels = {panels_of(sizes[1], np.dtype(dtype)) for _, sizes, _ in grid}
        assert any(full >= 1 and partial == 0 for full, partial in panels), (dtype, panels)
        assert any(full >= 1 and partial == 1 for full, partial in panels), (dtype, panels)
    blocked = [config for module, sizes, config in grid
               if module == "RNN" and check.block_count(sizes, config, steps) >= 2]
    layers, bidirectional, lengths = 0, 1, 5
    assert any(config[layers] > 1 and config[lengths] for config in blocked), blocked
    assert any(not config[bidirectional] for config in blocked), blocked
    if pool >= 4:
        assert any(config[bidirectional] and config[layers] > 1 for config in blocked), blocked


def test_fast_path_settings_agree_with_torch(block_pool, monkeypatch, capsys):
    """The fast-path part of the grid, run as the command runs it (blocks as with 4 threads)."""
    monkeypatch.setattr(check, "settings", check.fast_path_settings)
    assert main(["check", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("RNN ", "RNNCell "))]
    assert len(rows) == 2 * len(check.fast_path_settings(3)), out
    assert all(row[-1] == "yes" for row in rows), out
    assert {int(row[1]) for row in rows} == set(check.PANEL_HIDDEN_SIZES)
    blocked = [row for row in rows if int(row[3]) >= 2]
    assert {row[5] for row in blocked} == {"False", "True"}, out  # unidirectional and bidirectional stacks
    assert re.search(rf"{len(blocked)} of {len(rows)} settings ran in several blocks", out), out
    assert f"all {len(rows)} settings agree with torch" in out


def test_tolerance_grows_with_the_rows_a_gradient_sums():
    assert check.tolerance("float32", 7 * 3) == check.TOLERANCES["float32"]
    assert check.tolerance("float64", 7 * 32) == check.TOLERANCES["float64"]
    assert check.tolerance("float32", 7 * 32) == pytest.approx(7 * 32 * np.finfo(np.float32).eps)
