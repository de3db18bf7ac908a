"""The command line's one progress helper (numbarnn.cli._progress): plain lines in logs, a tqdm bar on request."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from numbarnn.cli._progress import Progress

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_lines_for_the_first_and_last_unit_and_every_tenth():
    out = io.StringIO()
    progress = Progress(25, "update", file=out, every=10)
    assert progress.bar is None  # a StringIO is not a terminal
    for done in range(1, 26):
        progress.update(done, f"loss {done}")
    progress.write("a sample")
    progress.close()
    assert out.getvalue().splitlines() == [
        "update  1/25  loss 1",
        "update 10/25  loss 10",
        "update 20/25  loss 20",
        "update 25/25  loss 25",
        "a sample",
    ]


def test_status_keeps_the_count():
    out = io.StringIO()
    progress = Progress(3, "process", file=out)
    progress.update(2, "round 1/1, torch")
    progress.set_status("round 1/1, torch (pid 7): tiny fwd")
    assert out.getvalue().splitlines() == [
        "process 2/3  round 1/1, torch",
        "process 2/3  round 1/1, torch (pid 7): tiny fwd",
    ]


def test_bar_mode_draws_a_tqdm_bar_with_the_status():
    out = io.StringIO()
    progress = Progress(4, "update", file=out, mode="bar")
    for done in range(1, 5):
        progress.update(done, f"loss 0.{done}")
    progress.write("between")
    progress.close()
    text = out.getvalue()
    assert "4/4" in text and "loss 0.4" in text and "update/s" in text and "between\n" in text
    assert "update 4/4  loss" not in text  # no plain lines in bar mode


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode must be 'auto', 'bar' or 'lines', got 'fancy'"):
        Progress(1, "update", mode="fancy")


def test_import_numbarnn_imports_no_command_line_dependency():
    # tqdm (and matplotlib) belong to the command line; the library never imports them
    code = "import sys, numbarnn; print(sorted(m for m in ('tqdm', 'matplotlib') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.stdout.strip() == "[]"
