"""``python -m numbarnn demo``: train a character-level language model, RNN -> Linear -> softmax cross-entropy.

The text is cut into N parallel streams; each update reads the next ``--seq-len`` characters of every stream
(one-hot, (L, N, V)), predicts each following character, and backpropagates through those L steps only (truncated
BPTT): the final hidden state of one chunk is the initial state of the next, but no gradient flows between chunks.
The held-out tail of the text measures the result against the unigram baseline, the entropy of the character
distribution: the loss of a model that knows character frequencies but no context.
"""

import math
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

from .._threads import numba_threads
from ..clip import clip_grad_norm_
from ..linear import Linear
from ..losses import softmax_cross_entropy
from ..optim import Adagrad, Adam
from ..rnn import RNN
from ..serialization import save
from ._progress import Progress

DEFAULT_CORPUS = Path(__file__).parent.parent / "data" / "corpus.txt"  # numbarnn/data, shipped as package data
# Fraction of the text (its end) held out to measure the final loss.
VALIDATION_FRACTION = 0.05
# Smoothing of the reported training loss: an exponential moving average over about 1 / (1 - 0.95) = 20 updates.
LOSS_SMOOTHING = 0.95


class UsageError(Exception):
    """A problem with the command line or the input file: reported in one line, exit code 2."""


def add_arguments(parser):
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE",
        help="UTF-8 text to train on (default: the bundled corpus, numbarnn/data/corpus.txt)",
    )
    parser.add_argument("--hidden", type=int, default=128, help="hidden size H of the RNN (default 128)")
    parser.add_argument("--layers", type=int, default=1, help="number of stacked RNN layers (default 1)")
    parser.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh", help="RNN nonlinearity")
    parser.add_argument("--steps", type=int, default=2500, help="number of parameter updates (default 2500)")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=64,
        help="characters per stream per update: the truncated-BPTT length L (default 64)",
    )
    parser.add_argument("--batch", type=int, default=32, help="number of parallel text streams N (default 32)")
    parser.add_argument("--optimizer", choices=("adam", "adagrad"), default="adam", help="optimiser (default adam)")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 3e-3 for adam, 5e-2 for adagrad)"
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=5.0,
        help="clip the gradient's total 2-norm to this (default 5; 0 turns clipping off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and sampling (default 0)")
    parser.add_argument(
        "--samples",
        type=int,
        default=3,
        help="how many samples to print during training, evenly spaced, the last at the end (default 3; 0 for none)",
    )
    parser.add_argument("--sample-length", type=int, default=240, help="characters per sample (default 240)")
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature: lower is more conservative (default 0.7)"
    )
    parser.add_argument("--prime", default="The ", help="text the samples start from (default 'The ')")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop training after this many seconds even if --steps are not done",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="numba threads for training (numbarnn runs blocks of the batch on them; 0, the "
        "default, keeps numba's setting, every core unless NUMBA_NUM_THREADS says otherwise)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a progress bar or a plain line every tenth of the run; auto draws the bar when "
        "stdout is a terminal (default auto)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="PATH",
        help="save the trained model to this .npz file (numbarnn.save, vocabulary as metadata)",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="PATH", help="write a PNG of the loss curve here (needs matplotlib)"
    )


def run(args):
    try:
        _check_arguments(args)
        text = _read_text(args.data)
        return _train(args, text)
    except UsageError as error:
        print(f"numbarnn demo: error: {error}", file=sys.stderr)
        return 2


# -- setup -------------------------------------------------------------------------------------------------------
def _check_arguments(args):
    for name in ("hidden", "layers", "steps", "seq_len", "batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("samples", "sample_length", "threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be positive, got {args.temperature}")
    if args.clip < 0:
        raise UsageError(f"--clip must be 0 (off) or positive, got {args.clip}")
    if args.samples > 0 and not args.prime:
        raise UsageError("--prime must have at least one character to start the samples from (or use --samples 0)")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401  (checked before training, not after a minute of it)
        except ImportError:
            raise UsageError(
                "--plot needs matplotlib, which is not installed; install it with `pip install matplotlib` "
                "(or `pip install 'numbarnn[demo]'`), or leave out --plot"
            ) from None


def _read_text(path):
    path = DEFAULT_CORPUS if path is None else path
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--data: no such file: {path}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"--data: {path} is not UTF-8 text ({error})") from None
    except OSError as error:
        raise UsageError(f"--data: cannot read {path}: {error}") from None


class Corpus:
    """The text as class indices: N training streams and a held-out tail."""

    def __init__(self, text, batch, seq_len):
        self.vocabulary = sorted(set(text))
        index = {char: i for i, char in enumerate(self.vocabulary)}
        codes = np.fromiter((index[char] for char in text), dtype=np.int64, count=len(text))
        held_out = max(int(len(codes) * VALIDATION_FRACTION), seq_len + 1)
        train, self.validation = codes[:-held_out], codes[-held_out:]
        stream_length = len(train) // batch
        if stream_length < seq_len + 1:
            raise UsageError(
                f"the text is too short for --batch {batch} streams of --seq-len {seq_len}: it has {len(codes)} "
                f"characters ({held_out} held out), and each stream needs at least {seq_len + 1}; use a longer text "
                "or smaller --batch / --seq-len"
            )
        self.streams = train[: batch * stream_length].reshape(batch, stream_length)
        counts = np.bincount(train, minlength=len(self.vocabulary))
        frequencies = counts[counts > 0] / counts.sum()
        self.unigram_entropy = float(-(frequencies * np.log(frequencies)).sum())
        self.train_size = len(train)

    @property
    def size(self):
        return len(self.vocabulary)

    def encode(self, text):
        index = {char: i for i, char in enumerate(self.vocabulary)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise UsageError(f"--prime has characters the text does not contain: {''.join(unknown)!r}")
        return [index[char] for char in text]


def _one_hot(codes, out):
    """Fill ``out`` (..., V) with the one-hot encoding of ``codes`` (...)."""
    out.fill(0)
    np.put_along_axis(out, codes[..., None], 1, axis=-1)
    return out


# -- training ----------------------------------------------------------------------------------------------------
class History:
    """What a training run measured."""

    def __init__(self):
        self.losses = []  # training loss of every update
        self.validation_points = []  # (update, held-out loss) at every sample
        self.updates = 0
        self.training_seconds = 0.0  # forward + backward + clipping + update, without sampling and evaluation
        self.first_update_seconds = 0.0  # the first update also loads (or compiles) the kernels
        self.wall_seconds = 0.0

    def characters_per_second(self, characters_per_update):
        """Training speed, leaving out the first update once there are others."""
        if self.updates <= 1:
            return characters_per_update / max(self.training_seconds, 1e-9)
        seconds = max(self.training_seconds - self.first_update_seconds, 1e-9)
        return (self.updates - 1) * characters_per_update / seconds


def _train(args, text):
    corpus = Corpus(text, args.batch, args.seq_len)
    prime = corpus.encode(args.prime)
    rng = np.random.default_rng(args.seed)
    rnn = RNN(corpus.size, args.hidden, num_layers=args.layers, nonlinearity=args.nonlinearity, seed=rng)
    head = Linear(args.hidden, corpus.size, seed=rng)
    if args.optimizer == "adam":
        optimizer = Adam([rnn, head], lr=3e-3 if args.lr is None else args.lr)
    else:
        optimizer = Adagrad([rnn, head], lr=5e-2 if args.lr is None else args.lr)

    print(
        f"corpus: {len(text):,} characters ({corpus.train_size:,} for training, {len(corpus.validation):,} "
        f"held out), vocabulary of {corpus.size}"
    )
    print(
        f"model: {rnn!r} with {args.nonlinearity} -> {head!r} -> softmax cross-entropy, "
        f"{sum(m._param_flat.size for m in (rnn, head)):,} float32 parameters"
    )
    print(
        f"training: {args.steps} updates of N={args.batch} streams x L={args.seq_len} characters, "
        f"{type(optimizer).__name__} lr={optimizer.lr:g}, gradient clipping at {args.clip:g}"
    )
    print(f"unigram baseline (entropy of the character distribution): {corpus.unigram_entropy:.3f} nats/char")
    sys.stdout.flush()

    # restored afterwards: main() may run inside a larger program, whose setting is its own
    with numba_threads(args.threads or None, "--threads"):
        print(f"threads: {numba.get_num_threads()} (numba's; the matrix products inside run on one thread each)")
        history = _fit(args, corpus, rnn, head, optimizer, prime)
    _summarise(args, corpus, rnn, head, history)
    if args.save is not None:
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        save(
            args.save,
            metadata={
                "vocabulary": "".join(corpus.vocabulary),
                "description": "character-level language model: one-hot characters -> rnn -> head -> softmax",
            },
            rnn=rnn,
            head=head,
        )
        print(f"saved the model to {args.save} (numbarnn.load; vocabulary in numbarnn.serialization.load_metadata)")
    if args.plot is not None:
        _plot(args.plot, history, corpus.unigram_entropy)
        print(f"wrote the loss curve to {args.plot}")
    return 0


def _fit(args, corpus, rnn, head, optimizer, prime):
    """The training loop: truncated BPTT over the streams, with progress, samples and held-out losses."""
    steps, seq_len, batch = args.steps, args.seq_len, args.batch
    sample_at = {round(steps * (i + 1) / args.samples) for i in range(args.samples)} if args.samples else set()
    sample_rng = np.random.default_rng([args.seed, 1])
    progress = Progress(steps, "update", mode=args.progress, every=steps // 10)
    inputs = np.empty((seq_len, batch, corpus.size), np.float32)
    history = History()
    hidden_state, position, smoothed = None, 0, None
    started = time.perf_counter()
    for step in range(1, steps + 1):
        if position + seq_len + 1 > corpus.streams.shape[1]:
            position, hidden_state = 0, None  # a new pass over the text starts from a zero state
        chunk = corpus.streams[:, position : position + seq_len + 1].T  # (L + 1, N)
        position += seq_len
        tick = time.perf_counter()
        optimizer.zero_grad()
        output, hidden_state = rnn(_one_hot(chunk[:-1], inputs), hidden_state)
        loss, grad_logits = softmax_cross_entropy(head(output), chunk[1:])
        # no grad_h_n: the gradient stops at the chunk boundary; the one-hot input needs no gradient
        rnn.backward(head.backward(grad_logits), need_input_grad=False)
        if args.clip > 0:
            clip_grad_norm_([rnn, head], args.clip)
        optimizer.step()
        history.training_seconds += time.perf_counter() - tick
        history.updates = step
        if step == 1:
            history.first_update_seconds = history.training_seconds

        history.losses.append(float(loss))
        smoothed = float(loss) if smoothed is None else LOSS_SMOOTHING * smoothed + (1 - LOSS_SMOOTHING) * float(loss)
        progress.update(step, f"loss {smoothed:.3f}  {history.characters_per_second(seq_len * batch):,.0f} chars/s")
        out_of_time = args.max_seconds is not None and time.perf_counter() - started > args.max_seconds
        if step in sample_at or (out_of_time and args.samples):
            held_out = _evaluate(rnn, head, corpus)
            history.validation_points.append((step, held_out))
            sample = _sample(rnn, head, corpus, prime, args.sample_length, args.temperature, sample_rng)
            progress.write(
                f"\n--- sample after {step} updates (held-out loss {held_out:.3f} nats/char) ---\n"
                f"{args.prime}{sample}\n---"
            )
        if out_of_time:
            progress.write(f"stopping after {step} updates: --max-seconds {args.max_seconds:g} reached")
            break
    progress.close()
    history.wall_seconds = time.perf_counter() - started
    return history


def _summarise(args, corpus, rnn, head, history):
    """The closing report: losses against the unigram baseline, and the speed."""
    last = history.validation_points[-1] if history.validation_points else None
    held_out = last[1] if last and last[0] == history.updates else _evaluate(rnn, head, corpus)
    characters = history.updates * args.seq_len * args.batch
    recent = history.losses[-50:]
    baseline = corpus.unigram_entropy
    print()
    print(
        f"finished {history.updates} updates in {history.wall_seconds:.1f} s: {characters:,} characters, "
        f"{characters / corpus.train_size:.1f} passes over the training text"
    )
    print(f"training loss (mean of the last {len(recent)} updates): {np.mean(recent):.3f} nats/char")
    print(f"held-out loss:                         {held_out:.3f} nats/char (perplexity {math.exp(held_out):.2f})")
    print(f"unigram baseline:                      {baseline:.3f} nats/char (perplexity {math.exp(baseline):.2f})")
    verdict = "below" if held_out < baseline else "NOT below"
    print(
        f"the held-out loss is {abs(baseline - held_out):.3f} nats/char {verdict} the baseline "
        f"({100 * held_out / baseline:.0f}% of it)"
    )
    print(
        f"speed: {history.characters_per_second(args.seq_len * args.batch):,.0f} characters/s "
        f"(forward + backward + clipping + update; {history.training_seconds:.1f} s of training, of which "
        f"{history.first_update_seconds:.1f} s for the first update, which also loads or compiles the kernels)"
    )


def _evaluate(rnn, head, corpus, streams=32):
    """Mean cross-entropy (nats/char) of predicting each held-out character from the ones before it."""
    codes = corpus.validation
    streams = max(1, min(streams, (len(codes) - 1) // 2))
    length = (len(codes) - 1) // streams
    inputs = codes[: streams * length].reshape(streams, length).T  # (L, N)
    targets = codes[1 : streams * length + 1].reshape(streams, length).T
    rnn.eval(), head.eval()
    try:
        output, _ = rnn(_one_hot(inputs, np.empty(inputs.shape + (corpus.size,), np.float32)))
        loss, _ = softmax_cross_entropy(head(output), targets)
    finally:
        rnn.train(), head.train()
    return float(loss)


def _sample(rnn, head, corpus, prime, length, temperature, rng):
    """``length`` characters drawn one at a time from the model, after reading ``prime``."""
    rnn.eval(), head.eval()
    try:
        step_input = np.zeros((1, 1, corpus.size), np.float32)
        hidden_state = None
        for code in prime[:-1]:  # read all but the last prime character; the loop below reads that one
            step_input.fill(0)
            step_input[0, 0, code] = 1
            _, hidden_state = rnn(step_input, hidden_state)
        code = prime[-1]
        chosen = []
        for _ in range(length):
            step_input.fill(0)
            step_input[0, 0, code] = 1
            output, hidden_state = rnn(step_input, hidden_state)
            logits = head(output[0, 0]).astype(np.float64) / temperature
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            code = int(rng.choice(corpus.size, p=probabilities))
            chosen.append(corpus.vocabulary[code])
    finally:
        rnn.train(), head.train()
    return "".join(chosen)


def _plot(path, history, baseline):
    from matplotlib.figure import (
        Figure,  # the object API: no GUI backend, no global pyplot state
    )

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    losses, validation_points = history.losses, history.validation_points
    steps = np.arange(1, len(losses) + 1)
    axes.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="training loss (each update)")
    window = min(25, len(losses))
    if window > 1:
        smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1 :], smoothed, color="tab:blue", label=f"training loss ({window}-update mean)")
    if validation_points:
        at, values = zip(*validation_points, strict=True)
        axes.plot(at, values, "o", color="tab:orange", label="held-out loss")
    axes.axhline(baseline, color="tab:red", linestyle="--", label=f"unigram baseline ({baseline:.2f})")
    axes.set_xlabel("update")
    axes.set_ylabel("cross-entropy (nats/char)")
    axes.set_title("numbarnn character-level language model")
    axes.legend()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
