"""``python -m numbarnn check``: compare numbarnn with torch.nn.RNN / RNNCell over a grid of settings.

For each setting both libraries get the same weights and inputs; the table shows the largest error of the output,
h_n and every gradient (input, h_0, each parameter), each relative to the largest magnitude of torch's value.

The grid has two parts: every combination of arguments at small sizes (H_in = 4, H = 5, the batch given), and the
fast paths at hidden sizes past one panel of the panel kernels (16 and 64 fill whole panels of 16 float32 or 8
float64 columns on AVX2, 17 and 40 end in a partial one) with a batch of at least 32, which numbarnn splits into blocks
(one per numba thread, when there is work enough; the ``blocks`` column shows how many this process uses).
"""

import itertools
import sys

import numba
import numpy as np

from .._workspace import block_count as _block_count

# Relative tolerances: float64 results agree to ~1e-15; float32 to a few ulp times the depth of the computation.
TOLERANCES = {"float64": 1e-10, "float32": 1e-5}

SMALL_INPUT_SIZE, SMALL_HIDDEN_SIZE = 4, 5
PANEL_HIDDEN_SIZES = (16, 17, 40, 64)
PANEL_INPUT_SIZE = 24  # the backward's products over H_in columns end in a partial float32 panel too
BLOCK_BATCH = 32  # at L = 7 and H >= 40, work enough for two blocks (numbarnn._workspace.MIN_WORK_PER_BLOCK)
# (layers, bidirectional, nonlinearity, bias, batch_first, lengths) at each of PANEL_HIDDEN_SIZES
PANEL_CONFIGS = ((1, False, "tanh", True, False, False), (2, False, "relu", True, True, True),
                 (2, True, "tanh", False, False, True))


def tolerance(dtype, rows):
    """The largest relative error allowed for a setting whose parameter gradients sum ``rows`` = L * N products.

    A sum of K products is off by ~sqrt(K) * eps * S, S the sum of their magnitudes (rounding errors of random sign),
    and S ~ K * m for products of magnitude ~m; its largest entries are at least ~sqrt(K) * m (the sum's typical
    size), so its error relative to them is at most ~K * eps: beyond the fixed tolerance once K * eps exceeds it
    (float32: K > 84, which the default batch of the fast-path settings does). Outputs, states and the input
    gradients sum H_in + D * H + H products of weights <= 1/sqrt(H) per step: sqrt(K) * eps, within the fixed one.
    """
    return max(TOLERANCES[dtype], rows * float(np.finfo(dtype).eps))


def settings(batch):
    """The grid: ``(module, (input_size, hidden_size, batch), config)`` for each setting, ``batch`` the small part's
    batch size; an RNN's config is (layers, bidirectional, nonlinearity, bias, batch_first, lengths), a cell's
    (nonlinearity, bias)."""
    return small_settings(batch) + fast_path_settings(batch)


def small_settings(batch):
    """Every combination of arguments at H_in = 4, H = 5 (bias=False on 2 layers only)."""
    small = (SMALL_INPUT_SIZE, SMALL_HIDDEN_SIZE, batch)
    rnn_grid = itertools.product((1, 2, 3), (False, True), ("tanh", "relu"), (True, False), (False, True),
                                 (False, True))
    grid = [("RNN", small, config) for config in rnn_grid if config[3] or config[0] == 2]
    return grid + [("RNNCell", small, config) for config in itertools.product(("tanh", "relu"), (True, False))]


def fast_path_settings(batch):
    """PANEL_CONFIGS and a cell at each of PANEL_HIDDEN_SIZES, with a batch of at least BLOCK_BATCH."""
    grid = []
    for hidden in PANEL_HIDDEN_SIZES:
        sizes = (PANEL_INPUT_SIZE, hidden, max(batch, BLOCK_BATCH))
        grid += [("RNN", sizes, config) for config in PANEL_CONFIGS]
        grid.append(("RNNCell", sizes, ("relu" if hidden % 2 else "tanh", True)))
    return grid


def block_count(sizes, config, steps):
    """How many blocks numbarnn splits the batch of an RNN setting into in this process."""
    input_size, hidden, batch = sizes
    return _block_count(batch, steps, input_size, hidden, config[0], 2 if config[1] else 1)


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    parser.add_argument("--steps", type=int, default=7, help="sequence length L (default 7)")
    parser.add_argument("--batch", type=int, default=3,
                        help=f"batch size N (default 3; the fast-path settings use at least {BLOCK_BATCH})")


def _relative_error(ours, theirs):
    theirs = np.asarray(theirs, dtype=np.float64)
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-30)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max(initial=0.0)) / scale


def _torch_dtype(torch, dtype):
    return torch.float64 if dtype == "float64" else torch.float32


def _check_rnn(torch, numbarnn, config, sizes, dtype, steps, rng):
    layers, bidirectional, nonlinearity, bias, batch_first, use_lengths = config
    input_size, hidden, batch = sizes
    reference = torch.nn.RNN(input_size, hidden, layers, nonlinearity=nonlinearity, bias=bias,
                             batch_first=batch_first, bidirectional=bidirectional, dtype=_torch_dtype(torch, dtype))
    ours = numbarnn.RNN(input_size, hidden, layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    directions = 2 if bidirectional else 1
    x = rng.standard_normal((batch, steps, input_size) if batch_first else (steps, batch, input_size)).astype(dtype)
    h_0 = rng.standard_normal((layers * directions, batch, hidden)).astype(dtype)
    lengths = rng.integers(1, steps + 1, size=batch) if use_lengths else None
    x_t = torch.tensor(x, requires_grad=True)
    h_0_t = torch.tensor(h_0, requires_grad=True)
    if use_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths), batch_first=batch_first,
                                                         enforce_sorted=False)
        packed_out, h_n_t = reference(packed, h_0_t)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=batch_first, total_length=steps)
    else:
        out_t, h_n_t = reference(x_t, h_0_t)
    out, h_n = ours(x, h_0, lengths=lengths)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    ((out_t * torch.tensor(grad_out)).sum() + (h_n_t * torch.tensor(grad_h_n)).sum()).backward()
    grad_x, grad_h_0 = ours.backward(grad_out, grad_h_n)
    errors = {"output": _relative_error(out, out_t.detach()), "h_n": _relative_error(h_n, h_n_t.detach())}
    gradient_errors = [_relative_error(grad_x, x_t.grad), _relative_error(grad_h_0, h_0_t.grad)]
    gradient_errors += [_relative_error(ours.grads[name], p.grad) for name, p in reference.named_parameters()]
    errors["gradients"] = max(gradient_errors)
    return errors


def _check_cell(torch, numbarnn, config, sizes, dtype, steps, rng):
    nonlinearity, bias = config
    input_size, hidden, batch = sizes
    reference = torch.nn.RNNCell(input_size, hidden, bias=bias, nonlinearity=nonlinearity,
                                 dtype=_torch_dtype(torch, dtype))
    ours = numbarnn.RNNCell(input_size, hidden, bias=bias, nonlinearity=nonlinearity, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    xs = rng.standard_normal((steps, batch, input_size)).astype(dtype)
    xs_t = torch.tensor(xs, requires_grad=True)
    h, h_t, outputs, outputs_t = None, None, [], []
    for t in range(steps):
        h = ours(xs[t], h)
        h_t = reference(xs_t[t], h_t)
        outputs.append(h)
        outputs_t.append(h_t)
    grads = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    (torch.stack(outputs_t) * torch.tensor(grads)).sum().backward()
    grad_xs = np.empty_like(xs)
    carried = np.zeros((batch, hidden), dtype)
    for t in reversed(range(steps)):
        grad_xs[t], carried = ours.backward(grads[t] + carried)
    gradient_errors = [_relative_error(grad_xs, xs_t.grad)]
    gradient_errors += [_relative_error(ours.grads[name], p.grad) for name, p in reference.named_parameters()]
    return {"output": _relative_error(np.stack(outputs), torch.stack(outputs_t).detach()), "h_n": 0.0,
            "gradients": max(gradient_errors)}


def run(args):
    try:
        import torch
    except ImportError:
        print("numbarnn check compares against PyTorch, which is not installed. Install the CPU build with\n"
              "    pip install torch==2.13.0\n"
              "or the test extra: pip install -e \".[test]\"", file=sys.stderr)
        return 2
    import numbarnn

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    checked, failed, blocked = 0, 0, 0
    header = f"{'module':<8} {'H':>3} {'N':>4} {'blocks':>6} {'layers':>6} {'bidir':>5} {'act':>4} {'bias':>5} " \
             f"{'b_first':>7} {'lengths':>7} {'dtype':>7} {'output':>9} {'h_n':>9} {'grads':>9}  ok"
    print(header)
    print("-" * len(header))
    worst = {dtype: 0.0 for dtype in TOLERANCES}
    for dtype in TOLERANCES:
        for module, sizes, config in settings(args.batch):
            if module == "RNN":
                errors = _check_rnn(torch, numbarnn, config, sizes, dtype, args.steps, rng)
                layers, bidirectional, nonlinearity, bias, batch_first, use_lengths = config
                blocks = block_count(sizes, config, args.steps)
            else:
                errors = _check_cell(torch, numbarnn, config, sizes, dtype, args.steps, rng)
                (nonlinearity, bias), layers, bidirectional, batch_first, use_lengths = config, 1, False, False, False
                blocks = 1  # a cell's step is one block
            largest = max(errors.values())
            worst[dtype] = max(worst[dtype], largest)
            ok = largest <= tolerance(dtype, args.steps * sizes[2])
            failed += not ok
            blocked += blocks > 1
            print(f"{module:<8} {sizes[1]:>3} {sizes[2]:>4} {blocks:>6} {layers:>6} {str(bidirectional):>5} "
                  f"{nonlinearity:>4} {str(bias):>5} {str(batch_first):>7} {str(use_lengths):>7} {dtype:>7} "
                  f"{errors['output']:>9.2e} {errors['h_n']:>9.2e} {errors['gradients']:>9.2e}  "
                  f"{'yes' if ok else 'NO'}")
            checked += 1
    print()
    most_rows = args.steps * max(args.batch, BLOCK_BATCH)
    for dtype, fixed in TOLERANCES.items():
        scaled = tolerance(dtype, most_rows)
        more = f"; {scaled:.1e} where the gradients sum L * N = {most_rows} rows" if scaled > fixed else ""
        print(f"largest relative error, {dtype}: {worst[dtype]:.2e} (tolerance {fixed:.0e}{more})")
    print(f"{blocked} of {checked} settings ran in several blocks (numba's pool: "
          f"{numba.config.NUMBA_NUM_THREADS} threads)")
    if failed:
        print(f"{failed} of {checked} settings exceed the tolerance", file=sys.stderr)
        return 1
    print(f"all {checked} settings agree with torch")
    return 0
