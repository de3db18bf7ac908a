"""The README's and the guide's examples run as written, and the set-up commands the README shows are the ones CI
runs. The guide (docs/guide/*.md, the Sphinx site's pages) holds what the README held before it moved there."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = sorted((ROOT / "docs" / "guide").glob("*.md"))
DOCUMENTS = {"README.md": README} | {path.relative_to(ROOT).as_posix(): path.read_text() for path in GUIDE}


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


BLOCKS = [(name, index, block) for name, text in DOCUMENTS.items() for index, block in enumerate(python_blocks(text))]


def test_readme_and_guide_have_examples():
    assert len(python_blocks(README)) >= 2  # the quick start
    # the pages that took over the README's examples still have them
    for page in ("quickstart", "torch", "onnx", "dask"):
        assert python_blocks(DOCUMENTS[f"docs/guide/{page}.md"]), page


@pytest.mark.parametrize(("document", "index", "block"), BLOCKS, ids=[f"{name}-{index}" for name, index, _ in BLOCKS])
def test_example_runs(document, index, block, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(block, f"{document}[python block {index}]", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.split("\n")
    # A comment after a print() states what it prints (after a colon, if the comment also explains): hold the
    # documents to it.
    promises = re.findall(r"^print\(.*?\)\s*#\s*(.*)$", block, flags=re.MULTILINE)
    for promise in promises:
        expected = promise.split(": ")[-1].strip()
        assert any(line.strip() == expected for line in printed), (expected, printed)


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"```bash\n(pip install -e \"\.\[test\]\" && python -m pytest)\n```", README)
    assert test_command is not None
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_to_files_that_exist():
    for target in re.findall(r"\]\(((?:docs/|LICENSE|CHANGELOG)[^)#]*)", README):
        assert (ROOT / target).exists(), target
