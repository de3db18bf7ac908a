"""``torch.nn.RNN`` versus ``numbarnn.torch.RNN`` in PyTorch code, each library timed in its own fresh process.

Run it as a script (it is not an asv benchmark: asv times one library per process without alternating)::

    python benchmarks/torch_dropin_vs_torch.py [--threads 2] [--rounds 4] [--repeats 9] [--configs tiny small ...]

Timed, per configuration (L, N, H_in, H_out, layers): inference (``with torch.inference_mode(): rnn(x)``) and a
training step (``out, h = rnn(x); (out * g).sum().backward()``, ``x.requires_grad == False``); and ``model``: a whole
training step of Embedding -> RNN -> Linear -> cross-entropy -> Adam at the demo's sizes (``python -m numbarnn demo``:
L=64, N=32, H=128, one layer, the bundled corpus's 53 characters; the embedding is as wide as the vocabulary, the
width of the demo's one-hot input).

For ``--rounds`` rounds the parent starts one worker process per library (``--worker torch`` / ``--worker
numbarnn``), alternating which goes first; both build the same modules from the same seed (the numbarnn worker with
``numbarnn.torch.accelerate``, the only difference). Each worker warms up, takes ``--repeats`` samples of
back-to-back calls per case and prints their median time per call; the table shows the median of those medians and
torch ÷ numbarnn. Both libraries get the same thread count: ``torch.set_num_threads`` (numbarnn follows it).

Only the standard library is imported at module level, so that asv's discovery (which imports every module under
``benchmarks/``) finds nothing to run here.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

# name -> (L, N, H_in, H_out, layers): the bench's tiny, small and medium configurations (unidirectional).
CONFIGS = {
    "tiny": (100, 1, 32, 64, 1),
    "small": (100, 32, 64, 128, 2),
    "medium": (200, 64, 256, 256, 2),
}
MODEL = {"steps": 64, "batch": 32, "hidden": 128, "layers": 1, "vocabulary": 53}
# The targets, torch ÷ numbarnn: (inference, training step); the model step has one.
TARGETS = {"tiny": (8.0, 20.0), "small": (1.7, 2.5), "medium": (1.2, 1.3), "model": (None, 2.0)}
SEED = 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=[*CONFIGS, "model"], default=[*CONFIGS, "model"])
    parser.add_argument("--threads", type=int, default=2, help="threads of both libraries (default 2)")
    parser.add_argument("--rounds", type=int, default=4, help="worker processes per library (default 4)")
    parser.add_argument("--repeats", type=int, default=9, help="samples per case per worker (default 9)")
    parser.add_argument("--worker", choices=("torch", "numbarnn"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.configs, args.threads, args.repeats)))
        return 0
    print(
        f"torch.nn.RNN vs numbarnn.torch.RNN, float32, tanh; threads {args.threads}; {args.rounds} fresh processes "
        f"per library (alternating), {args.repeats} samples each; median of the per-process medians"
    )
    medians = {"torch": [], "numbarnn": []}
    for round_number in range(args.rounds):
        for library in ["torch", "numbarnn"] if round_number % 2 == 0 else ["numbarnn", "torch"]:
            medians[library].append(spawn_worker(library, args))
    print("case | torch ms (process range) | numbarnn ms (process range) | torch ÷ numbarnn | target")
    for case in medians["torch"][0]:
        reference, ours = ([run[case] * 1e3 for run in medians[library]] for library in ("torch", "numbarnn"))
        name, mode = case.split("/")
        target = TARGETS[name][0 if mode == "inference" else 1]
        shape = CONFIGS.get(name, tuple(MODEL.values()))
        ratio = statistics.median(reference) / statistics.median(ours)
        print(f"{name} {shape} {mode} | {describe(reference)} | {describe(ours)} | {ratio:.2f}x | >= {target}x")
    return 0


def describe(times):
    """Median of the per-process medians, and their range: how noisy the machine was."""
    return f"{statistics.median(times):.4g} ({min(times):.3g}-{max(times):.3g})"


def spawn_worker(library, args):
    here = os.path.dirname(os.path.abspath(__file__))
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            library,
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
            "--configs",
            *args.configs,
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{library} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_worker(library, configs, threads, repeats):
    """{case: median seconds per call} for this library, measured in this process."""
    import torch

    from numbarnn.cli.bench_worker import median_seconds_per_call  # as `numbarnn bench` samples

    torch.set_num_threads(threads)
    accelerate = lambda module: module
    if library == "numbarnn":
        import numbarnn.torch

        accelerate = numbarnn.torch.accelerate
    results = {}
    for name in configs:
        if name == "model":
            results["model/training step"] = median_seconds_per_call(model_step(torch, accelerate), repeats)
            continue
        steps, batch, input_size, hidden, layers = CONFIGS[name]
        torch.manual_seed(SEED)
        rnn = accelerate(torch.nn.RNN(input_size, hidden, layers))
        x = torch.randn(steps, batch, input_size)
        g = torch.randn(steps, batch, hidden)

        def inference(rnn=rnn, x=x):  # bound now: the loop rebinds the names
            with torch.inference_mode():
                rnn(x)

        def training_step(rnn=rnn, x=x, g=g):
            out, _h = rnn(x)
            (out * g).sum().backward()

        results[f"{name}/inference"] = median_seconds_per_call(inference, repeats)
        results[f"{name}/training step"] = median_seconds_per_call(training_step, repeats)
    return results


def model_step(torch, accelerate):
    """One training step of a character model at the demo's sizes, as a closure."""
    steps, batch, hidden, layers, vocabulary = MODEL.values()

    class CharModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(vocabulary, vocabulary)
            self.rnn = torch.nn.RNN(vocabulary, hidden, layers)
            self.head = torch.nn.Linear(hidden, vocabulary)

        def forward(self, tokens):
            return self.head(self.rnn(self.embedding(tokens))[0])

    torch.manual_seed(SEED)
    model = accelerate(CharModel())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, vocabulary, (steps + 1, batch))

    def step():
        optimizer.zero_grad()
        logits = model(tokens[:-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, vocabulary), tokens[1:].reshape(-1)).backward()
        optimizer.step()

    return step


if __name__ == "__main__":
    # As a script, sys.path starts at benchmarks/: time this checkout's numbarnn (the workers get it via PYTHONPATH).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
