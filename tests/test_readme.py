"""The README's examples run as written, and the set-up commands it shows are the ones CI runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(PYTHON_BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.split("\n")
    # A comment after a print() states what it prints (after a colon, if the comment also explains): hold the README
    # to it.
    promises = re.findall(r"^print\(.*?\)\s*#\s*(.*)$", PYTHON_BLOCKS[index], flags=re.MULTILINE)
    for promise in promises:
        expected = promise.split(": ")[-1].strip()
        assert any(line.strip() == expected for line in printed), (expected, printed)


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"```bash\n(pip install -e \"\.\[test\]\" && python -m pytest)\n```", README)
    assert test_command is not None
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()
