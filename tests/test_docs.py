"""The documentation's API reference lists every public name, and the gallery's speed figure reads the committed
benchmark file it draws. (CI builds the site with warnings as errors, which also runs the gallery's examples; the
guide's code blocks run in test_readme.py.)"""

import importlib
import inspect
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = (DOCS / "api" / "index.rst").read_text()


def documented_names():
    """Each module's names listed in autosummary tables of docs/api/index.rst, in the module they are listed under."""
    names, module = set(), None
    for line in API.splitlines():
        if match := re.match(r"\.\. (?:current)?module:: (\S+)", line):
            module = match.group(1)
        elif module and (match := re.match(r"   ([A-Za-z_]\w*)$", line)):
            names.add(f"{module}.{match.group(1)}")
    return names


def public_names(module_name):
    """A module's ``__all__``, or for a module without one its own public functions and classes."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return {f"{module_name}.{name}" for name in module.__all__ if not inspect.ismodule(getattr(module, name))}
    return {
        f"{module_name}.{name}"
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module_name
    }


@pytest.mark.parametrize("module_name", ["numbarnn", "numbarnn.torch", "numbarnn.onnx", "numbarnn.dask"])
def test_api_reference_lists_every_public_name(module_name):
    public = public_names(module_name)
    assert public, module_name  # the test looks at something
    assert public <= documented_names(), sorted(public - documented_names())


def test_api_reference_lists_only_names_that_exist():
    for name in documented_names():
        module_name, attribute = name.rsplit(".", 1)
        assert hasattr(importlib.import_module(module_name), attribute), name


def test_gallery_benchmark_files_are_bench_jsons_with_their_machine_and_date():
    paths = sorted((DOCS / "data").glob("bench-*.json"))
    assert paths
    assert 'glob("bench-*.json")' in (DOCS / "examples" / "plot_speed_vs_torch.py").read_text()  # draws them all
    for path in paths:
        check_bench_json(path)


def check_bench_json(path):
    results = json.loads(path.read_text())
    header = results["report"].splitlines()
    date = re.search(r"\d{4}-\d{2}-\d{2}", header[0]).group(0)
    assert date in path.name
    assert header[1].startswith("machine: ") and "LLVM's CPU" in header[1]
    llvm_cpu = header[1].split("LLVM's CPU ")[1].split(",")[0]
    assert llvm_cpu.replace("znver", "zen") in path.name  # the file says which CPU (zen3, zen4, ...) it ran on
    for cell in results["settings"]["cells"]:
        for config in results["configs"]:
            tasks = ("step", "cell") if config == "step" else ("fwd", "train")
            for task in tasks:
                assert results["summary"]["configs"][f"{cell}-{config}"][task]["ratio"] > 0
