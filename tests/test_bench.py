"""The ``bench`` command (on tiny problems) and a smoke run of every asv benchmark, without asv."""

import argparse
import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from numbarnn.cli import bench

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the asv suite lives next to the package, not inside it
    sys.path.insert(0, str(REPO_ROOT))

import benchmarks  # noqa: E402

ASV_PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")
# Forward over a few steps of a small RNN: rounding (float32 eps 1.2e-7, float64 2.2e-16) grows by a modest factor.
FLOAT32_FORWARD_TOLERANCE = 1e-5
FLOAT64_FORWARD_TOLERANCE = 1e-13


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def table_rows(text):
    """The Markdown table in ``text`` as a list of cell lists (header first, separator dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if not set("".join(row)) <= set("-:")]


def test_bench_prints_a_table_with_one_row_per_configuration(capsys):
    import torch
    threads_before = torch.get_num_threads()
    exit_code = bench.run(parse(["--configs", "tiny", "--custom-config", "6,3,5,4,2,yes", "--repeats", "2",
                                 "--threads", "1"]))
    captured = capsys.readouterr()
    assert exit_code == 0
    assert torch.get_num_threads() == threads_before  # the command restores the thread settings it changed

    header, *rows = table_rows(captured.out)
    assert tuple(header) == bench.TABLE_COLUMNS
    assert [row[0] for row in rows] == ["tiny", bench.CUSTOM_NAME]
    column = {name: index for index, name in enumerate(header)}
    for row in rows:
        for task in ("fwd", "train"):
            torch_ms = float(row[column[f"torch {task} ms"]])
            numbarnn_ms = float(row[column[f"numbarnn {task} ms"]])
            ratio = float(row[column[f"{task} ratio"]].rstrip("x"))
            assert torch_ms > 0 and numbarnn_ms > 0
            # the printed times are rounded to 3 significant digits or better
            assert ratio == pytest.approx(torch_ms / numbarnn_ms, rel=2e-2)
        assert float(row[column["fwd rel err"]]) < FLOAT32_FORWARD_TOLERANCE

    tiny, custom = rows
    assert tiny[column["fwd target"]] == ">= 15x" and tiny[column["train target"]] == ">= 50x"
    for task in ("fwd", "train"):
        target = bench.TARGETS["tiny"][0 if task == "fwd" else 1]
        met = float(tiny[column[f"{task} ratio"]].rstrip("x")) >= target
        assert tiny[column[f"{task} met"]] == ("yes" if met else "NO")
        assert custom[column[f"{task} target"]] == custom[column[f"{task} met"]] == "-"
    assert "targets met: forward " in captured.out and "/1, training " in captured.out
    assert "threads: 1;" in captured.out and "torch " + torch.__version__ in captured.out
    assert "(6, 3, 5, 4, 2, yes)" in captured.out
    assert "repeat 2/2" in captured.err  # progress goes to stderr, not into the report


def test_bench_float64_relu_runs_the_same_weights_in_both_libraries(capsys):
    exit_code = bench.run(parse(["--custom-config", "5,2,3,4,1,yes", "--repeats", "1", "--threads", "1",
                                 "--dtype", "float64", "--nonlinearity", "relu"]))
    captured = capsys.readouterr()
    assert exit_code == 0
    header, row = table_rows(captured.out)
    assert float(row[header.index("fwd rel err")]) < FLOAT64_FORWARD_TOLERANCE
    assert "float64, nonlinearity=relu" in captured.out


def test_bench_without_torch_explains_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    exit_code = bench.run(parse(["--custom-config", "2,1,2,2,1,no", "--repeats", "1"]))
    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    assert "pip install torch==2.13.0" in captured.err and 'pip install -e ".[bench]"' in captured.err


def test_bench_arguments():
    args = parse(["--configs", "tiny,small", "medium", "--configs", "large"])
    assert args.configs == ["tiny", "small", "medium", "large"]
    assert args.dtype == "float32" and args.nonlinearity == "tanh" and args.threads is None
    assert parse(["--custom-config", "7,2,3,4,1,no"]).custom_config == bench.Config(7, 2, 3, 4, 1, False)
    for bad in (["--configs", "huge"], ["--threads", "0"], ["--repeats", "-1"], ["--custom-config", "1,2,3"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_help_does_not_import_torch():
    # `python -m numbarnn --help` imports every subcommand module; bench must leave torch for run() to import.
    code = "import sys, numbarnn.cli.bench; print('torch' in sys.modules, 'threadpoolctl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# -- the asv suite -----------------------------------------------------------------------------------------------
def _asv_benchmarks():
    """(id, module, class or None, method name) for every asv benchmark in benchmarks/."""
    found = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        module = importlib.import_module(f"benchmarks.{info.name}")
        for name, value in vars(module).items():
            if inspect.isfunction(value) and name.startswith(ASV_PREFIXES) and value.__module__ == module.__name__:
                found.append(pytest.param(module, None, name, id=f"{info.name}.{name}"))
            elif inspect.isclass(value) and value.__module__ == module.__name__:
                for method in dir(value):
                    if method.startswith(ASV_PREFIXES):
                        found.append(pytest.param(module, value, method, id=f"{info.name}.{name}.{method}"))
    return found


def _smallest_parameters(cls):
    """The first value of every parameter list (each list starts with its smallest or cheapest value)."""
    params = getattr(cls, "params", [])
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]  # asv's shorthand for a single parameter
    return [values[0] for values in params]


def test_asv_suite_is_found():
    names = {param.id for param in _asv_benchmarks()}
    assert {"bench_rnn.Forward.time_forward", "bench_rnn.TrainingStep.time_training_step",
            "bench_rnn.TrainingMemory.peakmem_training_step", "bench_rnn.CellLoop.time_training_loop",
            "bench_rnn.Lengths.time_forward", "bench_startup.FirstForward.timeraw_import_and_first_forward"} <= names


@pytest.mark.parametrize(("module", "cls", "method"), _asv_benchmarks())
def test_asv_benchmark_runs_on_its_smallest_parameters(module, cls, method, tmp_path):
    if cls is None:
        result = getattr(module, method)()
    else:
        instance = cls()
        params = _smallest_parameters(cls)
        if hasattr(instance, "setup_cache"):
            # a timeraw setup_cache compiles in a subprocess for tens of seconds: pass a stand-in directory instead
            cache = tmp_path if method.startswith("timeraw_") else instance.setup_cache()
            params = [cache, *params]
        if hasattr(instance, "setup"):
            instance.setup(*params)  # asv passes the setup_cache result to setup too
        result = getattr(instance, method)(*params)
        if hasattr(instance, "teardown"):
            instance.teardown(*params)
    if method.startswith("timeraw_"):
        # the code runs in a fresh process under asv (with a cold JIT cache, too slow here): check that it compiles
        sources = result if isinstance(result, tuple) else (result,)
        for source in sources:
            compile(textwrap.dedent(source), f"<{method}>", "exec")
        assert "NUMBA_CACHE_DIR" in "".join(sources) or "import numbarnn" in sources[0]

