"""The ``bench`` command (on tiny problems, each library in its own processes) and a smoke run of every asv benchmark.

No timing is asserted (the machine is shared): the tests check how the figures are made — separate processes, the
alternation, medians of medians, same threads, same weights — and that the printed table agrees with itself.
"""

import argparse
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import pkgutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from numbarnn.cli import bench
from numbarnn.cli._progress import Progress

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the asv suite lives next to the package, not inside it
    sys.path.insert(0, str(REPO_ROOT))

import benchmarks  # noqa: E402

ASV_PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")
# Forward over a few steps of a small RNN: rounding (float32 eps 1.2e-7, float64 2.2e-16) grows by a modest factor.
FLOAT32_FORWARD_TOLERANCE = 1e-5
FLOAT64_FORWARD_TOLERANCE = 1e-13
# Times and ratios are printed to 4 significant digits: each printed number is within 5e-4 (relative) of the value
# it rounds, so a ratio recomputed from two printed times differs from the printed ratio by at most ~1.5e-3.
PRINTED = 5e-4
RECOMPUTED = 3 * PRINTED
CUSTOM = "6,3,5,4,2,yes"


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def run_bench(argv):
    """(exit code, stdout, stderr) of ``bench.run`` on ``argv``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        exit_code = bench.run(parse(argv))
    return exit_code, out.getvalue(), err.getvalue()


@functools.cache
def two_rounds():
    """(stdout, stderr, --json data) of one run of two rounds on 1 thread (tiny, the single step, a custom
    configuration); run once, shared by the tests that read it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.json"
        exit_code, out, err = run_bench(
            [
                "--configs",
                "tiny",
                "step",
                "--custom-config",
                CUSTOM,
                "--repeats",
                "2",
                "--rounds",
                "2",
                "--threads",
                "1",
                "--gemm-size",
                "128",
                "--json",
                str(path),
            ]
        )
        assert exit_code == 0, err
        return out, err, json.loads(path.read_text())


@functools.cache
def gated_round():
    """(stdout, --json data) of one round on 1 thread of the LSTM and the GRU against torch's (the single step and a
    custom configuration); run once, shared by the tests that read it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.json"
        exit_code, out, err = run_bench(
            [
                "--cell",
                "lstm,gru",
                "--configs",
                "step",
                "--custom-config",
                CUSTOM,
                "--repeats",
                "1",
                "--rounds",
                "1",
                "--threads",
                "1",
                "--gemm-size",
                "64",
                "--json",
                str(path),
            ]
        )
        assert exit_code == 0, err
        return out, json.loads(path.read_text())


def markdown_tables(text):
    """Every Markdown table in ``text``, each a list of cell lists (header first, separator dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-:"):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def as_dicts(table):
    header, *rows = table
    return [dict(zip(header, row, strict=True)) for row in rows]


def number(cell):
    return float(cell.rstrip("x%"))


@pytest.mark.slow
def test_each_library_runs_in_its_own_processes_alternating_first():
    _, err, data = two_rounds()
    processes = data["processes"]
    pids = [process["pid"] for process in processes]
    assert len(set(pids)) == len(pids) == 2 * 3 and os.getpid() not in pids
    by_round = [[process["library"] for process in processes if process["round"] == index] for index in range(2)]
    assert by_round == [["gemm", "torch", "numbarnn"], ["gemm", "numbarnn", "torch"]]
    for process in processes:  # the same thread count everywhere, as each process saw it
        assert all(value == 1 for key, value in process["threads"].items() if key.endswith("num_threads()"))
        assert process["blas"] and all(library["num_threads"] == 1 for library in process["blas"])
    assert "(pid " in err and "round 2/2" in err  # progress goes to stderr, not into the report
    # one progress line per message (stderr is not a terminal here), counting the processes started
    assert "process 1/6  round 1/2, gemm: starting" in err and "process 6/6  round 2/2, torch (pid " in err


@pytest.mark.slow
def test_the_table_shows_medians_of_the_processes_medians_and_their_ratios():
    out, _, data = two_rounds()
    summary = data["summary"]["configs"]
    main_table, step_table = markdown_tables(out)
    assert tuple(main_table[0]) == bench.TABLE_COLUMNS and tuple(step_table[0]) == bench.STEP_COLUMNS
    rows = as_dicts(main_table)
    assert [row["config"] for row in rows] == ["tiny", bench.CUSTOM_NAME]
    for row in rows:
        name = row["config"]
        key = bench.config_key("rnn", name)
        for task in ("fwd", "train"):
            for library in bench.LIBRARIES:
                per_process = [
                    statistics.median(process["timings"][key][task])
                    for process in data["processes"]
                    if process["library"] == library
                ]
                assert summary[key][task][library] == statistics.median(per_process)
                assert summary[key][task][f"{library}_spread"] == max(per_process) / min(per_process)
                assert number(row[f"{library} {task} ms"]) == pytest.approx(
                    summary[key][task][library] * 1e3, rel=PRINTED
                )
            torch_ms, numbarnn_ms = number(row[f"torch {task} ms"]), number(row[f"numbarnn {task} ms"])
            assert number(row[f"{task} ratio"]) == pytest.approx(torch_ms / numbarnn_ms, rel=RECOMPUTED)
        config = bench.CONFIGS.get(name) or bench._custom_config(CUSTOM)
        gflops = config.forward_flops() / (number(row["numbarnn fwd ms"]) * 1e-3) / 1e9
        assert number(row["numbarnn fwd GFLOP/s"]) == pytest.approx(gflops, rel=RECOMPUTED)
        ceiling_percent = 100 * summary[key]["fwd"]["numbarnn_gflops"] / data["summary"]["gemm_gflops"]
        assert number(row["% of GEMM ceiling"]) == pytest.approx(ceiling_percent, abs=0.5)
        assert float(row["fwd rel err"]) < FLOAT32_FORWARD_TOLERANCE  # both loaded the same weights and data

    # measurements only: no project targets in a user's report
    assert not any("target" in column or "met" in column.split() for column in main_table[0] + step_table[0])
    assert "targets met" not in out
    assert "spread between processes (slowest / fastest process median): at most " in out


@pytest.mark.slow
def test_the_step_table_compares_single_steps_and_cells_in_microseconds():
    out, _, data = two_rounds()
    (row,) = as_dicts(markdown_tables(out)[1])
    step = data["summary"]["configs"][bench.config_key("rnn", bench.STEP_NAME)]
    for task, torch_column, numbarnn_column in (
        ("step", "torch RNN (L=1) us", "numbarnn step us"),
        ("cell", "torch RNNCell us", "numbarnn RNNCell us"),
    ):
        assert number(row[torch_column]) == pytest.approx(step[task]["torch"] * 1e6, rel=PRINTED)
        assert number(row[numbarnn_column]) == pytest.approx(step[task]["numbarnn"] * 1e6, rel=PRINTED)
        assert number(row[f"{task} ratio"]) == pytest.approx(
            number(row[torch_column]) / number(row[numbarnn_column]), rel=RECOMPUTED
        )
    assert float(row["rel err"]) < FLOAT32_FORWARD_TOLERANCE
    numbarnn_process = next(process for process in data["processes"] if process["library"] == "numbarnn")
    assert f"RNN.{numbarnn_process['notes'][bench.config_key('rnn', bench.STEP_NAME)]['step call']}" in out


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_each_gated_cell_is_timed_against_its_torch_counterpart(cell):
    out, data = gated_round()
    module, cell_class = bench.MODULES[cell]
    title = f"{module}: numbarnn.{module} vs torch.nn.{module}\n"
    assert out.count(title) == 1 and "nonlinearity" not in out  # the gated cells have none
    assert "numbarnn.LSTM vs torch.nn.LSTM, numbarnn.GRU vs torch.nn.GRU, float32," in out
    # this cell's two tables follow its title (the LSTM's section ends where the GRU's title starts)
    section = out.split(title)[1].split("GRU: numbarnn.GRU")[0]
    main_table, step_table = markdown_tables(section)[:2]
    assert tuple(main_table[0]) == bench.TABLE_COLUMNS
    assert tuple(step_table[0]) == bench.step_columns(cell)
    assert f"torch {cell_class} us" in step_table[0] and f"torch {module} (L=1) us" in step_table[0]
    assert f"numbarnn {module}.step(x, {'(h, c)' if cell == 'lstm' else 'h'})" in section
    summary = data["summary"]["configs"]
    (row,) = as_dicts(main_table)
    key = bench.config_key(cell, bench.CUSTOM_NAME)
    for library in bench.LIBRARIES:
        process = next(process for process in data["processes"] if process["library"] == library)
        assert set(process["timings"][key]) == {"fwd", "train"}
        assert number(row[f"{library} fwd ms"]) == pytest.approx(summary[key]["fwd"][library] * 1e3, rel=PRINTED)
    # the forward GFLOP/s count the G gate blocks of each product (LSTM 4, GRU 3)
    gates = {"lstm": 4, "gru": 3}[cell]
    flops = bench._custom_config(CUSTOM).forward_flops(gates)
    assert flops == gates * bench._custom_config(CUSTOM).forward_flops()
    assert number(row["numbarnn fwd GFLOP/s"]) == pytest.approx(
        flops / (number(row["numbarnn fwd ms"]) * 1e-3) / 1e9, rel=RECOMPUTED
    )
    assert float(row["fwd rel err"]) < FLOAT32_FORWARD_TOLERANCE  # both loaded the same weights and data
    (step_row,) = as_dicts(step_table)
    assert float(step_row["rel err"]) < FLOAT32_FORWARD_TOLERANCE  # the step and the cell carry (h, c) alike


@pytest.mark.slow
def test_the_report_says_torch_lstm_runs_onednn_only_when_torch_says_so():
    import torch

    out, data = gated_round()
    torch_process = next(process for process in data["processes"] if process["library"] == "torch")
    lstm_notes = torch_process["notes"][bench.config_key("lstm", bench.CUSTOM_NAME)]
    gru_notes = torch_process["notes"][bench.config_key("gru", bench.CUSTOM_NAME)]
    assert lstm_notes["torch.backends.mkldnn.is_available()"] == torch.backends.mkldnn.is_available()
    assert "aten::gru" in gru_notes["forward ops"] and not any("mkldnn" in op for op in gru_notes["forward ops"])
    onednn = (
        lstm_notes["torch.backends.mkldnn.is_available()"]
        and lstm_notes["torch.backends.mkldnn.enabled"]
        and "aten::mkldnn_rnn_layer" in lstm_notes["forward ops"]
    )
    assert ("torch's float32 CPU LSTM runs oneDNN:" in out) == onednn
    assert ("runs torch's own kernels here, not oneDNN" in out) == (not onednn)


def test_the_onednn_line_follows_the_torch_workers_profile():
    args = parse(["--cell", "lstm", "--dtype", "float64"])
    configs = {bench.CUSTOM_NAME: bench._custom_config(CUSTOM)}
    notes = {
        "torch.backends.mkldnn.is_available()": True,
        "torch.backends.mkldnn.enabled": True,
        "forward ops": ["aten::lstm"],
    }  # float64: torch's own kernel
    reports = [{"library": "torch", "notes": {bench.config_key("lstm", bench.CUSTOM_NAME): notes}}]
    line = bench.torch_kernels_line(args, configs, reports, ["lstm"])
    assert "float64 CPU LSTM runs torch's own kernels here, not oneDNN" in line and "aten::lstm" in line
    notes["forward ops"] = ["aten::lstm", "aten::mkldnn_rnn_layer"]
    assert bench.torch_kernels_line(args, configs, reports, ["lstm"]).startswith("torch's float64 CPU LSTM runs oneDNN")
    notes["torch.backends.mkldnn.enabled"] = False
    assert "not oneDNN" in bench.torch_kernels_line(args, configs, reports, ["lstm"])
    assert bench.torch_kernels_line(args, configs, reports, ["gru"]) is None  # no LSTM, nothing to say


@pytest.mark.slow
def test_the_report_names_the_machine_the_method_and_the_threads():
    out, _, data = two_rounds()
    import torch

    assert "each library timed alone in its own fresh Python process; 2 rounds" in out
    assert "alternating which goes first" in out and "median over the 2 processes of each process's median" in out
    assert "threads: 1 for both libraries" in out and "torch.get_num_threads()=1" in out
    assert "numba.get_num_threads()=1" in out
    assert f"torch {torch.__version__}" in out and "machine: " in out and " UTC" in out
    assert "GEMM ceiling: numba np.dot (scipy's BLAS) of 128x128 float32" in out
    assert f"{data['summary']['gemm_gflops']:.1f} GFLOP/s" in out
    assert f"custom {bench._custom_config(CUSTOM).describe()}" in out
    assert "RNN: numbarnn.RNN vs torch.nn.RNN (nonlinearity=tanh)\n" in out and "oneDNN" not in out
    assert f"vector extensions: {' '.join(bench._vector_extensions())}" in out and bench._cpu_name() in out


@pytest.mark.slow
def test_bench_float64_relu_runs_the_same_weights_in_both_libraries():
    exit_code, out, err = run_bench(
        [
            "--custom-config",
            "5,2,3,4,1,yes",
            "--repeats",
            "1",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--dtype",
            "float64",
            "--nonlinearity",
            "relu",
            "--gemm-size",
            "64",
        ]
    )
    assert exit_code == 0, err
    (row,) = as_dicts(markdown_tables(out)[0])
    assert float(row["fwd rel err"]) < FLOAT64_FORWARD_TOLERANCE
    assert "float64, nonlinearity=relu" in out and "64x64 float64" in out


@pytest.mark.slow
def test_the_step_alone_needs_no_gemm_ceiling(tmp_path):
    path = tmp_path / "bench.json"
    exit_code, out, err = run_bench(
        ["--configs", "step", "--repeats", "1", "--rounds", "1", "--threads", "1", "--json", str(path)]
    )
    assert exit_code == 0, err
    assert [process["library"] for process in json.loads(path.read_text())["processes"]] == ["torch", "numbarnn"]
    (step_table,) = markdown_tables(out)
    assert tuple(step_table[0]) == bench.STEP_COLUMNS
    assert "GEMM ceiling" not in out


@pytest.mark.slow
def test_a_failing_worker_is_reported_with_its_stderr(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "threads": 1,
                "dtype": "float32",
                "nonlinearity": "tanh",
                "repeats": 1,
                "gemm_size": 8,
                "data_dir": str(tmp_path),
                "configs": {"tiny": {}},
            }
        )
    )
    with pytest.raises(bench.WorkerError, match=r"(?s)the torch worker \(test\) failed with exit code 1.*tiny\.npz"):
        bench.run_worker(
            "torch", spec, save_outputs=False, progress=Progress(1, "process", file=io.StringIO()), label="test"
        )


def test_worker_progress_leaves_out_torchs_profiler_log():
    # as torch 2.13's profiler prints them in the torch worker, where the bench checks which kernels torch runs
    for event in ("start", "stop"):
        line = f"USDT:2026-12-05 19:15:09 27978:27978 SyncActivityProfilerHandler.cpp:52] profiler_{event}\n"
        assert bench.worker_status(line) is None
    assert bench.worker_status("rnn-tiny: fwd\n") == "rnn-tiny: fwd"
    assert bench.worker_status("USDT: profiler_start was not logged by kineto\n") == (
        "USDT: profiler_start was not logged by kineto"
    )


def test_vector_extensions_agree_with_the_kernels_cpu_flags():
    # LLVM's detection (what the report prints) against the operating system's, for the x86 extensions both name
    flags_line = (
        next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), None)
        if Path("/proc/cpuinfo").exists()
        else None
    )
    if flags_line is None:
        pytest.skip("no x86 flags in /proc/cpuinfo on this machine")
    flags = set(flags_line.split(":", 1)[1].split())
    found = bench._vector_extensions()
    for extension in ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"):
        assert (extension in found) == (extension.replace(".", "_") in flags), extension


def test_forward_flops_count_every_layer_and_direction():
    # layer 0: 2 directions x 2*L*N*(H_in*H + H*H) = 2 * 2*2*3*(5*4 + 4*4); layer 1 reads both directions (8 wide)
    expected = 2 * 2 * 2 * 3 * (5 * 4 + 4 * 4) + 2 * 2 * 2 * 3 * (8 * 4 + 4 * 4)
    assert bench.Config(2, 3, 5, 4, 2, True).forward_flops() == expected


def test_numbers_keep_four_significant_digits():
    assert [bench._significant(value) for value in (0.060123, 1.23456, 12.3456, 1234.56, 123456.0)] == [
        "0.06012",
        "1.235",
        "12.35",
        "1235",
        "123456",
    ]


def test_bench_without_torch_explains_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # importlib.util.find_spec("torch") then returns None
    exit_code, out, err = run_bench(["--custom-config", "2,1,2,2,1,no", "--repeats", "1"])
    assert exit_code == 2
    assert out == ""
    assert "pip install torch==2.13.0" in err and 'pip install -e ".[bench]"' in err


def test_bench_arguments():
    args = parse(["--configs", "tiny,small", "medium", "--configs", "large", "step"])
    assert args.configs == ["tiny", "small", "medium", "large", "step"]
    assert args.dtype == "float32" and args.nonlinearity == "tanh" and args.threads is None
    assert args.rounds == 3 and args.repeats == 10
    assert list(bench._selected_configs(parse([]))) == [*bench.CONFIGS, bench.STEP_NAME]
    assert parse(["--custom-config", "7,2,3,4,1,no"]).custom_config == bench.Config(7, 2, 3, 4, 1, False)
    assert bench.selected_cells(parse([])) == ["rnn"]
    assert bench.selected_cells(parse(["--cell", "lstm", "gru"])) == ["lstm", "gru"]
    assert bench.selected_cells(parse(["--cell", "gru,LSTM", "--cell", "gru"])) == ["gru", "lstm"]
    assert bench.selected_cells(parse(["--cell", "all"])) == ["rnn", "lstm", "gru"]
    assert bench.selected_cells(parse(["--cell", "gru", "all"])) == ["gru", "rnn", "lstm"]
    for bad in (
        ["--configs", "huge"],
        ["--threads", "0"],
        ["--repeats", "-1"],
        ["--rounds", "0"],
        ["--custom-config", "1,2,3"],
        ["--cell", "transformer"],
        ["--cell"],
    ):
        with pytest.raises(SystemExit):
            parse(bad)


def test_help_does_not_import_torch():
    # `python -m numbarnn --help` imports every subcommand module; bench leaves torch to its worker processes.
    code = (
        "import sys, numbarnn.cli.bench, numbarnn.cli.bench_worker; "
        "print('torch' in sys.modules, 'threadpoolctl' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
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
            elif inspect.isclass(value) and value.__module__ == module.__name__ and not name.startswith("_"):
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
    assert {
        "bench_rnn.Forward.time_forward",
        "bench_rnn.TrainingStep.time_training_step",
        "bench_rnn.TrainingMemory.peakmem_training_step",
        "bench_rnn.CellLoop.time_training_loop",
        "bench_rnn.Lengths.time_forward",
        "bench_startup.FirstForward.timeraw_import_and_first_forward",
    } <= names
    # each library is its own benchmark (asv runs each in its own process), over the bench configurations
    for torch_name, numbarnn_name, method in (
        ("TorchForward", "NumbarnnForward", "time_forward"),
        ("TorchTrainingStep", "NumbarnnTrainingStep", "time_training_step"),
        ("TorchStep", "NumbarnnStep", "time_step"),
        ("TorchCellStep", "NumbarnnCellStep", "time_cell_step"),
    ):
        assert {f"bench_vs_torch.{torch_name}.{method}", f"bench_vs_torch.{numbarnn_name}.{method}"} <= names
    from benchmarks import bench_vs_torch

    assert bench_vs_torch.TorchForward.params == bench_vs_torch.NumbarnnForward.params == [list(bench.CONFIGS)]


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
