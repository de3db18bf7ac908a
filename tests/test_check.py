"""``python -m numbarnn check``: for each cell type its grid reaches the fast paths and has every combination of
arguments at small sizes, its fast-path settings agree with torch, and ``--cell`` chooses the cells."""

import itertools
import re

import numpy as np
import pytest
from helpers import panels_of

import numbarnn._workspace
from numbarnn.__main__ import main
from numbarnn.cli import check


@pytest.mark.parametrize("pool", [2, 4])
@pytest.mark.parametrize("cell", check.CELLS)
def test_grid_reaches_partial_panels_and_blocks(pool, cell, monkeypatch):
    """For each cell, with the panel width and block sizes in use, at the default L and N: whole panels only, and
    whole panels and a partial one, in each dtype; with a 2-thread pool (a 2-core machine) a multi-layer stack with
    lengths in several blocks, and with 4 threads a bidirectional one too (an LSTM's with proj_size among them)."""
    monkeypatch.setattr(numbarnn._workspace, "max_blocks", lambda: pool)
    steps, batch = 7, 3  # check's defaults
    grid = check.settings(batch, (cell,))
    assert {check.SEQUENCE_MODULES.get(module) or check.CELL_MODULES[module] for module, _, _ in grid} == {cell}
    for dtype in check.TOLERANCES:
        panels = {panels_of(sizes[1], np.dtype(dtype)) for _, sizes, _ in grid}
        assert any(full >= 1 and partial == 0 for full, partial in panels), (dtype, panels)
        assert any(full >= 1 and partial == 1 for full, partial in panels), (dtype, panels)
    blocked = [
        config
        for module, sizes, config in grid
        if module in check.SEQUENCE_MODULES and check.block_count(module, sizes, config, steps) >= 2
    ]
    assert any(config.layers > 1 and config.lengths for config in blocked), blocked
    assert any(not config.bidirectional for config in blocked), blocked
    if pool >= 4:
        assert any(config.bidirectional and config.layers > 1 for config in blocked), blocked
        if cell == "lstm":
            assert any(config.proj_size for config in blocked), blocked


@pytest.mark.parametrize("cell", check.CELLS)
def test_small_grid_has_every_combination_of_arguments(cell):
    """Every value of every argument meets every value of every other one (bias=False at 2 layers, proj_size at 1
    and 2 layers); the gated cells have no nonlinearity, only the LSTM a proj_size."""
    grid = check.small_settings(3, (cell,))
    sequence, cell_class = check.MODULES[cell]
    configs = [config for module, _, config in grid if module == sequence]
    activations = {"tanh", "relu"} if cell == "rnn" else {None}
    projections = {0, check.SMALL_PROJ_SIZE} if cell == "lstm" else {0}
    for first, second in itertools.combinations(check.Config._fields, 2):
        pairs = {(getattr(config, first), getattr(config, second)) for config in configs}
        values = {"layers": {1, 2, 3}, "nonlinearity": activations, "proj_size": projections}
        expected = set(itertools.product(values.get(first, {False, True}), values.get(second, {False, True})))
        if first == "layers" and second == "bias":
            expected -= {(1, False), (3, False)}
        if first == "layers" and second == "proj_size":
            expected -= {(3, check.SMALL_PROJ_SIZE)}
        assert pairs == expected, (first, second)
    assert {config for module, _, config in grid if module == cell_class} == set(
        itertools.product(activations, (True, False))
    )


def test_fast_path_settings_agree_with_torch(block_pool, monkeypatch, capsys):
    """The fast-path part of the grid for every cell, run as the command runs it (blocks as with 4 threads)."""
    monkeypatch.setattr(check, "settings", check.fast_path_settings)
    assert main(["check", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    modules = (*check.SEQUENCE_MODULES, *check.CELL_MODULES)
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in modules]
    assert len(rows) == 2 * len(check.fast_path_settings(3)), out
    assert {row[0] for row in rows} == set(modules), out
    assert all(row[-1] == "yes" for row in rows), out
    assert {int(row[1]) for row in rows} == set(check.PANEL_HIDDEN_SIZES)
    assert {int(row[7]) for row in rows if row[0] == "LSTM"} == {0, *(h // 2 for h in check.PANEL_HIDDEN_SIZES)}
    blocked = [row for row in rows if int(row[3]) >= 2]
    assert {row[5] for row in blocked} == {"False", "True"}, out  # unidirectional and bidirectional stacks
    assert {row[0] for row in blocked} == set(check.SEQUENCE_MODULES), out
    assert re.search(rf"{len(blocked)} of {len(rows)} settings ran in several blocks", out), out
    assert f"all {len(rows)} settings agree with torch" in out


@pytest.mark.parametrize(
    ("arguments", "cells"),
    [
        ([], list(check.CELLS)),
        (["--cell", "gru"], ["gru"]),
        (["--cell", "lstm,rnn"], ["lstm", "rnn"]),
        (["--cell", "all"], list(check.CELLS)),
    ],
)
def test_cell_option_chooses_the_cells_as_bench_does(arguments, cells, monkeypatch, capsys):
    chosen = []
    monkeypatch.setattr(check, "settings", lambda batch, selected: chosen.append(selected) or [])
    assert main(["check", *arguments]) == 0
    assert chosen == [cells, cells]  # once per dtype
    assert capsys.readouterr().out.startswith(
        "numbarnn check: "
        + ", ".join(f"numbarnn.{check.MODULES[cell][0]} vs torch.nn.{check.MODULES[cell][0]}" for cell in cells)
    )


def test_unknown_cell_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--cell", "lstm,transformer"])
    assert "unknown cell transformer; choose from rnn, lstm, gru or all" in capsys.readouterr().err


def test_tolerance_grows_with_the_rows_a_gradient_sums():
    assert check.tolerance("float32", 7 * 3) == check.TOLERANCES["float32"]
    assert check.tolerance("float64", 7 * 32) == check.TOLERANCES["float64"]
    assert check.tolerance("float32", 7 * 32) == pytest.approx(7 * 32 * np.finfo(np.float32).eps)
