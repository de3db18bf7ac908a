"""The public API is annotated (PEP 561: numbarnn ships ``py.typed``), the annotations hold in the code and say what a
user gets (mypy on the package and on tests/typing_usage.py), and they cost ``import numbarnn`` nothing."""

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import numbarnn
import numbarnn.dask
import numbarnn.onnx

REPO_ROOT = Path(__file__).resolve().parents[1]


def public_callables():
    """Every public function, class constructor and public method of ``numbarnn``, ``numbarnn.onnx`` and
    ``numbarnn.dask`` (numbarnn.torch's drop-ins are torch's classes, with torch's signatures)."""
    found = {}
    for module, names in (
        (numbarnn, numbarnn.__all__),
        (numbarnn.onnx, ["export", "load"]),
        (numbarnn.dask, numbarnn.dask.__all__),
    ):
        for name in names:
            value = getattr(module, name)
            if inspect.isfunction(value):
                found[f"{module.__name__}.{name}"] = value
            elif inspect.isclass(value) and not issubclass(value, Exception):
                for attribute, member in inspect.getmembers(value):
                    if (
                        (attribute == "__init__" or not attribute.startswith("_"))
                        and inspect.isfunction(member)
                        and member.__module__.startswith("numbarnn")
                    ):
                        found[f"{module.__name__}.{name}.{attribute}"] = member
    return found


def test_every_public_function_and_method_is_annotated():
    callables = public_callables()
    assert len(callables) > 60 and "numbarnn.LSTM.backward" in callables  # the test looks at the whole API
    missing = []
    for name, function in callables.items():
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        if parameters and parameters[0].name == "self":
            parameters = parameters[1:]
        missing += [f"{name}({p.name})" for p in parameters if p.annotation is inspect.Parameter.empty]
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
    assert not missing, missing


def test_import_numbarnn_imports_no_typing_helpers():
    # the annotations are strings (from __future__ import annotations) and their aliases are imported only under
    # TYPE_CHECKING: numpy.typing, typing_extensions and numbarnn._typing stay out of a plain import
    code = (
        "import sys, numbarnn; print(sorted(m for m in ('numpy.typing', 'typing_extensions', 'numbarnn._typing', "
        "'torch', 'onnx', 'dask') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def mypy(request, tmp_path_factory):
    """Run mypy (pinned in the lint and test extras) with pyproject's [tool.mypy] settings, caching in pytest's cache
    directory so that a second run takes a second or two (in a temporary one under ``-p no:cacheprovider``)."""
    pytest.importorskip("mypy")
    pytest_cache = getattr(request.config, "cache", None)
    cache = pytest_cache.mkdir("mypy") if pytest_cache is not None else tmp_path_factory.mktemp("mypy-cache")

    def run(*files):
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--cache-dir", str(cache), *files],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )
        return result.returncode, result.stdout + result.stderr

    return run


def test_mypy_passes_on_the_public_modules_and_the_usage_snippet(mypy):
    code, report = mypy()  # the files pyproject's [tool.mypy] lists, tests/typing_usage.py among them
    assert code == 0, report
    assert re.search(r"Success: no issues found in \d+ source files", report), report


def test_mypy_rejects_misuse(mypy, tmp_path):
    # each line marked "# error" must be reported, and nothing else: the annotations are precise enough to catch
    # these mistakes (an Any anywhere on their path would let them through)
    snippet = tmp_path / "misuse.py"
    snippet.write_text(
        textwrap.dedent("""\
        import numpy as np
        import numbarnn

        x = np.zeros((5, 3, 10), np.float32)
        numbarnn.RNN("10", 20)  # error
        numbarnn.LSTM(10, 20, nonlinearity="relu")  # error
        numbarnn.RNN(10, 20).step(x[0], lengths=None)  # error
        output, state = numbarnn.LSTM(10, 20)(x)
        state.shape  # error
        numbarnn.GRUCell(10, 20)(x[0]).missing  # error
        numbarnn.Adam([numbarnn.RNN(10, 20)], betas=0.9)  # error
        numbarnn.load("model.npz")["rnn"].zero_grad(1)  # error
        numbarnn.Linear(10, 2).bias.shape  # error
    """)
    )
    code, report = mypy(str(snippet))
    expected = {number for number, line in enumerate(snippet.read_text().splitlines(), 1) if line.endswith("# error")}
    reported = {int(match) for match in re.findall(rf"{re.escape(snippet.name)}:(\d+): error", report)}
    assert code == 1 and reported == expected, report
