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
