"""``python -m numbarnn demo`` through its command line, on tiny settings."""

import itertools
import re
import sys

import numpy as np
import pytest

from numbarnn.__main__ import main
from numbarnn.cli.demo import DEFAULT_CORPUS
from numbarnn.linear import Linear
from numbarnn.rnn import RNN
from numbarnn.serialization import load, load_metadata

TINY = [
    "demo",
    "--steps",
    "12",
    "--hidden",
    "16",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--sample-length",
    "30",
    "--samples",
    "2",
    "--progress",
    "lines",
]


def number_after(label, text):
    match = re.search(re.escape(label) + r"\s*([0-9.,]+)", text)
    assert match, f"no {label!r} in the output:\n{text}"
    return float(match.group(1).replace(",", "").rstrip("."))


def test_tiny_run_reports_loss_baseline_speed_samples_and_writes_files(tmp_path, capsys):
    model_path, plot_path = tmp_path / "out" / "model.npz", tmp_path / "loss.png"
    assert main(TINY + ["--save", str(model_path), "--plot", str(plot_path)]) == 0
    out = capsys.readouterr().out

    text = DEFAULT_CORPUS.read_text(encoding="utf-8")
    vocabulary = "".join(sorted(set(text)))
    assert f"vocabulary of {len(vocabulary)}" in out
    assert "update 12/12" in out
    assert out.count("--- sample after") == 2 and "--- sample after 12 updates" in out
    sample = out.split("--- sample after 12 updates")[1].split("\n")[1]
    assert sample.startswith("The ")
    baseline = number_after("unigram baseline:", out)
    assert 2.5 < baseline < 4.0  # the entropy of English-like character frequencies, in nats
    assert number_after("held-out loss:", out) > 0
    assert number_after("speed:", out) > 0 and "characters/s" in out
    assert "threads: " in out

    loaded = load(model_path)
    assert isinstance(loaded["rnn"], RNN) and isinstance(loaded["head"], Linear)
    assert (loaded["rnn"].input_size, loaded["rnn"].hidden_size) == (len(vocabulary), 16)
    assert load_metadata(model_path)["vocabulary"] == vocabulary
    png = plot_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000


def test_custom_data_and_adagrad(tmp_path, capsys):
    data = tmp_path / "abc.txt"
    data.write_text("abcab\n" * 400, encoding="utf-8")
    args = [
        "demo",
        "--data",
        str(data),
        "--steps",
        "30",
        "--hidden",
        "8",
        "--batch",
        "3",
        "--seq-len",
        "8",
        "--samples",
        "1",
        "--sample-length",
        "12",
        "--prime",
        "a",
        "--optimizer",
        "adagrad",
        "--layers",
        "2",
        "--nonlinearity",
        "relu",
        "--progress",
        "lines",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vocabulary of 4" in out and "Adagrad" in out and "RNN(4, 8, num_layers=2) with relu" in out
    # a deterministic pattern is learnt well below its unigram entropy (about 1.33 nats)
    assert number_after("held-out loss:", out) < number_after("unigram baseline:", out)


def test_threads_sets_numbas_thread_count_for_training(capsys):
    assert main(TINY[:2] + ["2"] + TINY[3:] + ["--samples", "0", "--threads", "1"]) == 0
    assert "threads: 1 (numba's" in capsys.readouterr().out


def test_max_seconds_stops_early(capsys):
    assert main(TINY[:2] + ["1000"] + TINY[3:] + ["--max-seconds", "0", "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "stopping after 1 updates" in out and "finished 1 updates" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "/nonexistent/corpus.txt"], "--data: no such file: /nonexistent/corpus.txt"),
        (["--prime", "\u00e9"], "--prime has characters the text does not contain"),
        (["--batch", "100000"], "the text is too short for --batch 100000 streams"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--temperature", "0"], "--temperature must be positive"),
    ],
)
def test_usage_errors(extra, message, capsys):
    assert main(TINY + extra) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err


def test_plot_without_matplotlib_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert main(TINY + ["--plot", str(tmp_path / "loss.png")]) == 2
    captured = capsys.readouterr()
    assert "--plot needs matplotlib" in captured.err and "pip install" in captured.err
    assert "update" not in captured.out and not (tmp_path / "loss.png").exists()


def test_truncated_bptt_carries_the_state_between_chunks(monkeypatch):
    """Each chunk after the first starts from the previous chunk's h_n, and no gradient is sent into h_n."""
    calls = []
    original_forward, original_backward = RNN.forward, RNN.backward

    def forward(self, input, h_0=None, lengths=None, **options):
        output, h_n = original_forward(self, input, h_0, lengths, **options)
        if self.training:
            calls.append(("forward", None if h_0 is None else h_0.copy(), h_n.copy()))
        return output, h_n

    def backward(self, grad_output=None, grad_h_n=None, **options):
        calls.append(("backward", grad_h_n))
        return original_backward(self, grad_output, grad_h_n, **options)

    monkeypatch.setattr(RNN, "forward", forward)
    monkeypatch.setattr(RNN, "backward", backward)
    assert (
        main(
            [
                "demo",
                "--steps",
                "3",
                "--hidden",
                "8",
                "--batch",
                "2",
                "--seq-len",
                "5",
                "--samples",
                "0",
                "--progress",
                "lines",
            ]
        )
        == 0
    )
    forwards = [call for call in calls if call[0] == "forward"]
    assert len(forwards) == 3 and forwards[0][1] is None
    for previous, current in itertools.pairwise(forwards):
        np.testing.assert_array_equal(current[1], previous[2])
    assert all(call[1] is None for call in calls if call[0] == "backward")
