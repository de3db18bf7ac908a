"""
Speed against PyTorch, per configuration
========================================

How many times faster numbarnn runs than ``torch.nn`` for each cell (RNN, LSTM, GRU) and size, in inference and in a
training step, and for one streaming step. The figures are **not** measured while this page is built: a fair
comparison runs each library alone in several fresh processes on a quiet machine and takes minutes. They come from a
committed file per machine, each written by

.. code-block:: bash

    python -m numbarnn bench --cell all --json bench.json

on the machine and date printed below (one figure each); the bars are the ratio of the medians of the per-process
medians (torch ÷ numbarnn: above 1, numbarnn is faster) and the whiskers the range of that ratio over the pairs of
processes, which shows how noisy the machine was. Run the same command to see what your machine gets;
{doc}`../guide/speed` describes the method.
"""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

# The files sit in docs/data/, one per machine the project has measured (the newest first); sphinx-gallery runs this
# script from docs/examples/. The ratios depend on the CPU (its vector width, caches and cores) as much as on the code.
paths = sorted((Path("..") / "data").glob("bench-*.json"), reverse=True)
runs = [json.loads(path.read_text()) for path in paths]

# %%
# Where and how each was measured
# -------------------------------
# Each report's header, as ``bench`` printed it: the date, the CPU and the vector extensions LLVM found, the versions,
# the load average, the threads.

for path, results in zip(paths, runs, strict=True):
    print(path.name)
    print("\n".join(results["report"].split("\n")[:5]))
    print(
        f"rounds: {results['settings']['rounds']} processes per library, {results['settings']['repeats']} samples each"
    )
    print()

# %%
# The ratios
# ----------
# Each configuration is (L, N, H_in, H_out, layers, bidirectional); "step" is one time step of a stacked module
# (``rnn.step``) and "cell" one call of the cell, both at N = 1, H_in = 32, H_out = 64. One figure per machine.


def process_medians(results, library, key, task):
    """Each process's median time of one task (the figure bench takes the median of)."""
    return [
        np.median(process["timings"][key][task])
        for process in results["processes"]
        if process["library"] == library and key in process["timings"]
    ]


def ratio_range(results, key, task):
    torch_times = process_medians(results, "torch", key, task)
    numbarnn_times = process_medians(results, "numbarnn", key, task)
    return min(torch_times) / max(numbarnn_times), max(torch_times) / min(numbarnn_times)


def draw(results):
    """One run's ratios: a row of bars per cell."""
    summary = results["summary"]["configs"]
    sizes = [name for name in results["configs"] if name != "step"]
    bars = [(size, task) for size in sizes for task in ("fwd", "train")] + [("step", "step"), ("step", "cell")]
    labels = [
        f"{size}\n{'inference' if task == 'fwd' else 'training'}" if size != "step" else task for size, task in bars
    ]
    colours = {"fwd": "tab:blue", "train": "tab:orange", "step": "tab:green", "cell": "tab:green"}
    cells = results["settings"]["cells"]
    fig, axes = plt.subplots(len(cells), 1, figsize=(9, 2.6 * len(cells)), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, cell in zip(axes, cells, strict=True):
        ratios, lows, highs = [], [], []
        for size, task in bars:
            key = f"{cell}-{size}"
            ratio = summary[key][task]["ratio"]
            low, high = ratio_range(results, key, task)
            ratios.append(ratio)
            lows.append(ratio - low)
            highs.append(high - ratio)
        x = np.arange(len(bars))
        # bars start at 1 (as fast as torch): up when numbarnn is faster, down when it is slower
        ax.bar(
            x,
            np.subtract(ratios, 1),
            bottom=1,
            color=[colours[task] for _, task in bars],
            yerr=[lows, highs],
            capsize=2,
            ecolor="0.3",
        )
        ax.axhline(1, color="k", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("torch ÷ numbarnn")
        ax.set_title(f"numbarnn.{cell.upper()} against torch.nn.{cell.upper()}", fontsize=10)
        for xi, ratio, low, high in zip(x, ratios, lows, highs, strict=True):
            faster = ratio >= 1
            ax.annotate(
                f"{ratio:.2g}×",
                (xi, ratio + high if faster else ratio - low),
                textcoords="offset points",
                xytext=(0, 2 if faster else -2),
                ha="center",
                va="bottom" if faster else "top",
                fontsize=7,
            )
        ax.set_ylim(0.25, 100)
    axes[-1].set_xticks(np.arange(len(bars)), labels, fontsize=7)
    header = results["report"].split("\n")
    date = header[0].rsplit(", ", 1)[-1]
    cpu = header[1].removeprefix("machine: ").split(",")[0]
    llvm_cpu = header[1].split("LLVM's CPU ")[1].split(",")[0]
    fig.suptitle(
        f"{date}, {cpu} ({llvm_cpu}), {results['settings']['threads']} threads, {results['settings']['dtype']}: "
        "above 1, numbarnn is faster",
        fontsize=10,
    )
    fig.tight_layout()


for results in runs:
    draw(results)

# %%
# The sizes
# ---------

for name, config in runs[0]["configs"].items():
    print(
        f"{name:>9}: L={config['steps']}, N={config['batch']}, H_in={config['input_size']}, "
        f"H_out={config['hidden_size']}, layers={config['num_layers']}, bidirectional={config['bidirectional']}"
    )
