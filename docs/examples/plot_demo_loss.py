"""
The demo's loss curve
=====================

``python -m numbarnn demo`` trains a character-level language model — one-hot characters → :class:`numbarnn.RNN` →
:class:`numbarnn.Linear` → softmax cross-entropy — on a corpus that ships with the package, with truncated
backpropagation through time. This example runs the same training with the public API, for a few hundred updates
instead of the demo's 2500, and draws the loss of every update against the unigram baseline: the loss of a model that
knows how often each character occurs but nothing about context.
"""

import importlib.resources
import time

import matplotlib.pyplot as plt
import numpy as np

import numbarnn

# %%
# The corpus as class indices, cut into N parallel streams
# --------------------------------------------------------
# Each update reads the next L characters of every stream. The demo's sizes: N = 32 streams, L = 64 characters, a
# hidden state of 128, Adam at 3e-3 and the gradient clipped at a norm of 5.

text = (importlib.resources.files("numbarnn") / "data" / "corpus.txt").read_text(encoding="utf-8")
vocabulary = sorted(set(text))
codes = np.searchsorted(vocabulary, list(text))  # each character's index in the sorted vocabulary
V, N, L, H, UPDATES = len(vocabulary), 32, 64, 128, 300
streams = codes[: len(codes) // N * N].reshape(N, -1)  # (N, characters per stream)
frequencies = np.bincount(codes, minlength=V) / len(codes)
baseline = float(-(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0])).sum())
print(f"{len(text):,} characters, a vocabulary of {V}; unigram baseline {baseline:.3f} nats/char")

# %%
# Truncated BPTT
# --------------
# The final state of one chunk is the initial state of the next, but the gradient stops at the chunk boundary: each
# update backpropagates through its L steps only. The one-hot input needs no gradient (``need_input_grad=False``).

rng = np.random.default_rng(0)
rnn = numbarnn.RNN(V, H, seed=rng)
head = numbarnn.Linear(H, V, seed=rng)
optimizer = numbarnn.Adam([rnn, head], lr=3e-3)
one_hot = np.eye(V, dtype=np.float32)

losses, h, position = [], None, 0
started = time.perf_counter()
for _ in range(UPDATES):
    if position + L + 1 > streams.shape[1]:
        position, h = 0, None  # a new pass over the text starts from a zero state
    chunk = streams[:, position : position + L + 1].T  # (L + 1, N)
    position += L
    optimizer.zero_grad()
    output, h = rnn(one_hot[chunk[:-1]], h)  # (L, N, H)
    loss, grad_logits = numbarnn.softmax_cross_entropy(head(output), chunk[1:])
    rnn.backward(head.backward(grad_logits), need_input_grad=False)
    numbarnn.clip_grad_norm_([rnn, head], max_norm=5.0)
    optimizer.step()
    losses.append(float(loss))
seconds = time.perf_counter() - started
print(f"{UPDATES} updates in {seconds:.1f} s (the first one also loads or compiles the kernels)")
print(f"loss: first update {losses[0]:.3f}, mean of the last 20 {np.mean(losses[-20:]):.3f} nats/char")

# %%
# The curve
# ---------

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.arange(1, UPDATES + 1), losses, lw=0.8, color="0.6", label="loss of each update")
window = 20
smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
ax.plot(np.arange(window, UPDATES + 1), smoothed, lw=2, label=f"mean of the last {window} updates")
ax.axhline(baseline, color="k", ls="--", lw=1, label=f"unigram baseline ({baseline:.2f})")
ax.set_xlabel("update")
ax.set_ylabel("cross-entropy (nats per character)")
ax.set_title(f"numbarnn.RNN({V}, {H}) → Linear({H}, {V}); N={N} × L={L} characters an update", fontsize=10)
ax.legend()
fig.tight_layout()
