"""The version has one source, and the command line reports it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import numbarnn
from numbarnn.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11 (CI's); numbarnn supports 3.10
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once_and_read_by_pyproject():
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "numbarnn.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|(a|b|rc)\d+)?", numbarnn.__version__)
    # the changelog has a section for the version the package carries
    assert f"## {numbarnn.__version__} " in (REPO_ROOT / "CHANGELOG.md").read_text()


def test_version_option(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"numbarnn {numbarnn.__version__}\n"


def test_python_m_numbarnn_version():
    result = subprocess.run(
        [sys.executable, "-m", "numbarnn", "--version"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout == f"numbarnn {numbarnn.__version__}\n"


def test_the_wheel_ships_the_corpus_and_the_type_marker():
    # the wheel carries what package-data names (CI installs a built wheel and checks the files are there)
    project = pyproject()
    package_data = project["tool"]["setuptools"]["package-data"]["numbarnn"]
    package = Path(numbarnn.__file__).parent
    for required in ("data/corpus.txt", "py.typed"):
        assert (package / required).is_file() and any(Path(required).match(pattern) for pattern in package_data)


# A process in which scipy and threadpoolctl cannot be imported (None in sys.modules makes an import fail): numbarnn
# trains and runs its cells and a Linear head there, and never tried to import either itself.
WITHOUT_SCIPY = """
import builtins, sys
sys.modules["scipy"] = sys.modules["threadpoolctl"] = None
tried = []
original_import = builtins.__import__
def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] in ("scipy", "threadpoolctl") and (globals or {}).get("__name__", "").startswith("numbarnn"):
        tried.append(name)
    return original_import(name, globals, locals, fromlist, level)
builtins.__import__ = recording_import
import numpy as np
import numbarnn
x = np.ones((4, 3, 5), np.float32)
for module in (numbarnn.RNN(5, 6, num_layers=2), numbarnn.LSTM(5, 6, proj_size=3), numbarnn.GRU(5, 6)):
    output, _ = module(x)
    module.backward(np.ones_like(output))
    module.eval()(x)
head = numbarnn.Linear(6, 2)
logits = head(np.ones((4, 6), np.float32))
head.backward(np.ones_like(logits))
numbarnn.RNNCell(5, 6)(x[0])
print("tried", tried)
"""


def test_numbarnn_needs_neither_scipy_nor_threadpoolctl():
    """Its dependencies are numpy, numba and tqdm (pyproject.toml says so); no kernel calls a BLAS."""
    dependencies = pyproject()["project"]["dependencies"]
    assert sorted(re.match(r"[a-z]+", requirement).group() for requirement in dependencies) == [
        "numba",
        "numpy",
        "tqdm",
    ]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SCIPY], capture_output=True, text=True, cwd=REPO_ROOT, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "tried []"
