"""``python -m numbarnn bench --kernels`` on a tiny grid, and its report built from given timings.

No speed is asserted (the machine is shared): the tests check that every product of the grid is timed in each
library's own process and reported with the CPU, the instruction set and the tile in use.
"""

import argparse
import contextlib
import io
import json
import re

import pytest

from numbarnn import _isa
from numbarnn.cli import bench, bench_kernels


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_kernels_reports_every_product_and_the_tile(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench.run(
            parse(
                [
                    "--kernels",
                    "--kernel-rows",
                    "1,7",
                    "--kernel-shapes",
                    "5x9,16x3",
                    "--repeats",
                    "1",
                    "--dtype",
                    "float64",
                    "--json",
                    str(tmp_path / "kernels.json"),
                ]
            )
        )
    text = out.getvalue()
    assert code == 0, err.getvalue()
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["report"] + "\n" == text and saved["tile"]["rows"] == _isa.tile().rows
    assert set(saved["seconds"]["numbarnn"]) == {"1x5x9", "7x5x9", "1x16x3", "7x16x3"}
    assert _isa.tile().describe() in text and f"numba compiles for {_isa.target().cpu_name}" in text
    assert "float64" in text.splitlines()[0]
    rows = [line for line in text.splitlines() if re.match(r"\| \d", line)]
    assert [tuple(line.split("|")[1:4]) for line in rows] == [
        (" 1 ", " 5 ", " 9 "),
        (" 7 ", " 5 ", " 9 "),
        (" 1 ", " 16 ", " 3 "),
        (" 7 ", " 16 ", " 3 "),
    ]
    header = next(line for line in text.splitlines() if line.startswith("| M |"))
    libraries = [label for label in ("numbarnn", "scipy BLAS", "torch.mm") if f"| {label} |" in header]
    assert libraries[:2] == ["numbarnn", "scipy BLAS"]
    for line in rows:
        rates = [float(cell) for cell in line.split("|")[4 : 4 + len(libraries)]]
        assert all(rate > 0 for rate in rates)
    # each library timed in its own process
    assert err.getvalue().count("in its own process") == len(libraries)


def test_bench_kernels_report_says_whether_the_product_stays_flat():
    spec = {"dtype": "float32", "repeats": 3, "rows": [1, 64, 1000], "shapes": [[10, 20]]}
    flops = {m: 2.0 * m * 10 * 20 for m in spec["rows"]}
    # numbarnn at 100 GFLOP/s for M = 1 and 64, 80 at M = 1000 (80 % of its best: not within 15 %); BLAS at 50
    results = {
        "numbarnn": {f"{m}x10x20": flops[m] / ((100 if m < 1000 else 80) * 1e9) for m in spec["rows"]},
        "blas": {f"{m}x10x20": flops[m] / 50e9 for m in spec["rows"]},
    }
    text = bench_kernels.format_report(spec, results, "Some CPU", _isa.target(), _isa.tile(), _isa.caches())
    assert "| 1000 | 10 | 20 | 80.0 | 50.0 | 1.60 |" in text
    assert "runs at 80% of the fastest (NOT within 15%)" in text
    results["numbarnn"]["1000x10x20"] = flops[1000] / 90e9
    text = bench_kernels.format_report(spec, results, "Some CPU", _isa.target(), _isa.tile(), _isa.caches())
    assert "runs at 90% of the fastest (within 15%)" in text


@pytest.mark.parametrize(
    ("option", "value"),
    [("--kernel-shapes", "5x"), ("--kernel-shapes", "5x9x2"), ("--kernel-rows", "0,4"), ("--kernel-rows", "a")],
)
def test_bench_kernels_rejects_bad_grids(option, value, capsys):
    with pytest.raises(SystemExit):
        parse(["--kernels", option, value])
    assert "expected" in capsys.readouterr().err
