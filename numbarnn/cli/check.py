"""``python -m numbarnn check``: compare numbarnn with torch.nn over a grid of settings, for each cell type: RNN and
RNNCell, LSTM (with and without ``proj_size``) and LSTMCell, GRU and GRUCell, each against its torch counterpart
(``--cell rnn|lstm|gru|all``, as for ``bench``; all of them by default).

For each setting both libraries get the same weights and inputs; the table shows the largest error of the output,
the final state (h_n, and an LSTM's c_n) and every gradient (input, h_0 and c_0, each parameter), each relative to
the largest magnitude of torch's value.

The grid has two parts for each cell: every combination of arguments at small sizes (H_in = 4, H = 5, the batch
given), and the fast paths at hidden sizes past one panel of the panel kernels (16 and 64 fill whole panels of 16
float32 or 8 float64 columns on AVX2, 17 and 40 end in a partial one) with a batch of at least 32, which numbarnn
splits into blocks (one per numba thread, when there is work enough; the ``blocks`` column shows how many this
process uses).
"""

import itertools
import sys
import warnings
from collections import namedtuple

import numba
import numpy as np

from .._cells import GATES
from .._workspace import block_count as _block_count
from .bench import ALL_CELLS, CELLS, _cell_names, _ExtendNames, selected_cells
from .bench_worker import MODULES

# Relative tolerances: float64 results agree to ~1e-15; float32 to a few ulp times the depth of the computation.
TOLERANCES = {"float64": 1e-10, "float32": 1e-5}

SMALL_INPUT_SIZE, SMALL_HIDDEN_SIZE = 4, 5
SMALL_PROJ_SIZE = 3  # an LSTM's h then has fewer features than its c
PANEL_HIDDEN_SIZES = (16, 17, 40, 64)
PANEL_INPUT_SIZE = 24  # the backward's products over H_in columns end in a partial float32 panel too
BLOCK_BATCH = 32  # at L = 7 and H >= 40, work enough for two blocks (numbarnn._workspace.MIN_WORK_PER_BLOCK)

# The arguments of a sequence module's setting; ``nonlinearity`` is None for the gated cells, ``proj_size`` is 0
# except for some LSTM settings.
Config = namedtuple(
    "Config", ["layers", "bidirectional", "nonlinearity", "bias", "batch_first", "lengths", "proj_size"], defaults=(0,)
)
# at each of PANEL_HIDDEN_SIZES (the gated cells ignore the nonlinearity); an LSTM also runs the last with proj_size
PANEL_CONFIGS = (
    Config(1, False, "tanh", True, False, False),
    Config(2, False, "relu", True, True, True),
    Config(2, True, "tanh", False, False, True),
)
SEQUENCE_MODULES = {sequence: cell for cell, (sequence, _) in MODULES.items()}  # "LSTM" -> "lstm"
CELL_MODULES = {cell_class: cell for cell, (_, cell_class) in MODULES.items()}  # "LSTMCell" -> "lstm"


def tolerance(dtype, rows):
    """The largest relative error allowed for a setting whose parameter gradients sum ``rows`` = L * N products.

    A sum of K products is off by ~sqrt(K) * eps * S, S the sum of their magnitudes (rounding errors of random sign),
    and S ~ K * m for products of magnitude ~m; its largest entries are at least ~sqrt(K) * m (the sum's typical
    size), so its error relative to them is at most ~K * eps: beyond the fixed tolerance once K * eps exceeds it
    (float32: K > 84, which the default batch of the fast-path settings does). Outputs, states and the input
    gradients sum H_in + D * H + H products of weights <= 1/sqrt(H) per step (per gate for LSTM and GRU, whose
    gates' slopes are at most 1): sqrt(K) * eps, within the fixed one.
    """
    return max(TOLERANCES[dtype], rows * float(np.finfo(dtype).eps))


def settings(batch, cells=CELLS):
    """The grid: ``(module, (input_size, hidden_size, batch), config)`` for each setting of each of ``cells``
    ("rnn", "lstm", "gru"), ``batch`` the small part's batch size; a sequence module's config is a :class:`Config`,
    a cell's (nonlinearity, bias)."""
    return [
        setting for cell in cells for setting in small_settings(batch, (cell,)) + fast_path_settings(batch, (cell,))
    ]


def small_settings(batch, cells=CELLS):
    """Every combination of arguments at H_in = 4, H = 5 (bias=False on 2 layers only, an LSTM's proj_size on 1 and
    2 layers)."""
    small = (SMALL_INPUT_SIZE, SMALL_HIDDEN_SIZE, batch)
    grid = []
    for cell in cells:
        sequence, cell_class = MODULES[cell]
        activations = ("tanh", "relu") if cell == "rnn" else (None,)
        projections = (0, SMALL_PROJ_SIZE) if cell == "lstm" else (0,)
        combinations = itertools.product(
            (1, 2, 3), (False, True), activations, (True, False), (False, True), (False, True), projections
        )
        grid += [
            (sequence, small, config)
            for config in itertools.starmap(Config, combinations)
            if (config.bias or config.layers == 2) and not (config.proj_size and config.layers == 3)
        ]
        grid += [(cell_class, small, config) for config in itertools.product(activations, (True, False))]
    return grid


def fast_path_settings(batch, cells=CELLS):
    """PANEL_CONFIGS (and an LSTM's with proj_size = H // 2) and a cell at each of PANEL_HIDDEN_SIZES, with a batch
    of at least BLOCK_BATCH."""
    grid = []
    for cell in cells:
        sequence, cell_class = MODULES[cell]
        for hidden in PANEL_HIDDEN_SIZES:
            sizes = (PANEL_INPUT_SIZE, hidden, max(batch, BLOCK_BATCH))
            configs = [config if cell == "rnn" else config._replace(nonlinearity=None) for config in PANEL_CONFIGS]
            if cell == "lstm":
                configs.append(configs[-1]._replace(bias=True, proj_size=hidden // 2))
            grid += [(sequence, sizes, config) for config in configs]
            activation = ("relu" if hidden % 2 else "tanh") if cell == "rnn" else None
            grid.append((cell_class, sizes, (activation, True)))
    return grid


def block_count(module, sizes, config, steps):
    """How many blocks numbarnn splits the batch of a sequence module's setting into in this process."""
    input_size, hidden, batch = sizes
    return _block_count(
        batch,
        steps,
        input_size,
        hidden,
        config.layers,
        2 if config.bidirectional else 1,
        GATES[SEQUENCE_MODULES[module]],
    )


def add_arguments(parser):
    parser.add_argument(
        "--cell",
        type=_cell_names,
        nargs="+",
        action=_ExtendNames,
        metavar="CELL",
        help=f"the cells to check, each against its torch counterpart (torch.nn.RNN and RNNCell, "
        f"LSTM and LSTMCell, GRU and GRUCell), separated by spaces or commas: {', '.join(CELLS)} "
        f"or {ALL_CELLS} (default: {ALL_CELLS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    parser.add_argument("--steps", type=int, default=7, help="sequence length L (default 7)")
    parser.add_argument(
        "--batch",
        type=int,
        default=3,
        help=f"batch size N (default 3; the fast-path settings use at least {BLOCK_BATCH})",
    )


def _relative_error(ours, theirs):
    theirs = np.asarray(theirs, dtype=np.float64)
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-30)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max(initial=0.0)) / scale


def _torch_dtype(torch, dtype):
    return torch.float64 if dtype == "float64" else torch.float32


def _check_sequence(torch, numbarnn, module, config, sizes, dtype, steps, rng):
    """One setting of RNN, LSTM or GRU: forward, then the backward of sum(G_out * output) + sum(G_h * h_n)
    (+ sum(G_c * c_n)) in both libraries."""
    input_size, hidden, batch = sizes
    lstm = module == "LSTM"
    options = {"nonlinearity": config.nonlinearity} if module == "RNN" else {}
    if config.proj_size:
        options["proj_size"] = config.proj_size
    arguments = dict(
        num_layers=config.layers,
        bias=config.bias,
        batch_first=config.batch_first,
        bidirectional=config.bidirectional,
        **options,
    )
    reference = getattr(torch.nn, module)(input_size, hidden, dtype=_torch_dtype(torch, dtype), **arguments)
    ours = getattr(numbarnn, module)(input_size, hidden, dtype=dtype, **arguments)
    ours.load_state_dict(reference.state_dict())
    rows = config.layers * (2 if config.bidirectional else 1)
    widths = (config.proj_size or hidden, hidden) if lstm else (hidden,)
    x = rng.standard_normal((batch, steps, input_size) if config.batch_first else (steps, batch, input_size))
    x = x.astype(dtype)
    state = [rng.standard_normal((rows, batch, width)).astype(dtype) for width in widths]
    lengths = rng.integers(1, steps + 1, size=batch) if config.lengths else None
    x_t = torch.tensor(x, requires_grad=True)
    state_t = [torch.tensor(part, requires_grad=True) for part in state]
    with warnings.catch_warnings():
        # torch says, once per process, that its LSTM with proj_size runs its own kernels rather than oneDNN's
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
        if config.lengths:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x_t, torch.tensor(lengths), batch_first=config.batch_first, enforce_sorted=False
            )
            packed_out, h_n_t = reference(packed, _as_state(state_t, lstm))
            out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(
                packed_out, batch_first=config.batch_first, total_length=steps
            )
        else:
            out_t, h_n_t = reference(x_t, _as_state(state_t, lstm))
    out, h_n = ours(x, _as_state(state, lstm), lengths=lengths)
    h_n, h_n_t = _parts(h_n), _parts(h_n_t)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = [rng.standard_normal(part.shape).astype(dtype) for part in h_n]
    loss = (out_t * torch.tensor(grad_out)).sum()
    for part_t, grad in zip(h_n_t, grad_h_n, strict=True):
        loss = loss + (part_t * torch.tensor(grad)).sum()
    loss.backward()
    grad_x, grad_h_0 = ours.backward(grad_out, _as_state(grad_h_n, lstm))
    errors = {
        "output": _relative_error(out, out_t.detach()),
        "h_n": max(_relative_error(part, part_t.detach()) for part, part_t in zip(h_n, h_n_t, strict=True)),
    }
    gradient_errors = [_relative_error(grad_x, x_t.grad)]
    gradient_errors += [
        _relative_error(part, part_t.grad) for part, part_t in zip(_parts(grad_h_0), state_t, strict=True)
    ]
    gradient_errors += [_relative_error(ours.grads[name], p.grad) for name, p in reference.named_parameters()]
    errors["gradients"] = max(gradient_errors)
    return errors


def _check_cell(torch, numbarnn, module, config, sizes, dtype, steps, rng):
    """One setting of RNNCell, LSTMCell or GRUCell: ``steps`` calls, then the backward of sum(G_t * h_t) through
    them, last call first (an LSTM cell's c carries its gradient from step to step)."""
    nonlinearity, bias = config
    input_size, hidden, batch = sizes
    lstm = module == "LSTMCell"
    options = {"nonlinearity": nonlinearity} if module == "RNNCell" else {}
    reference = getattr(torch.nn, module)(input_size, hidden, bias=bias, dtype=_torch_dtype(torch, dtype), **options)
    ours = getattr(numbarnn, module)(input_size, hidden, bias=bias, dtype=dtype, **options)
    ours.load_state_dict(reference.state_dict())
    xs = rng.standard_normal((steps, batch, input_size)).astype(dtype)
    xs_t = torch.tensor(xs, requires_grad=True)
    h, h_t, outputs, outputs_t = None, None, [], []
    for t in range(steps):
        h = ours(xs[t], h)
        h_t = reference(xs_t[t], h_t)
        outputs.append(_parts(h)[0])
        outputs_t.append(_parts(h_t)[0])
    grads = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    (torch.stack(outputs_t) * torch.tensor(grads)).sum().backward()
    grad_xs = np.empty_like(xs)
    carried = [np.zeros((batch, hidden), dtype) for _ in range(2 if lstm else 1)]
    for t in reversed(range(steps)):
        grad_xs[t], carried = ours.backward(_as_state([grads[t] + carried[0], *carried[1:]], lstm))
        carried = _parts(carried)
    gradient_errors = [_relative_error(grad_xs, xs_t.grad)]
    gradient_errors += [_relative_error(ours.grads[name], p.grad) for name, p in reference.named_parameters()]
    return {
        "output": _relative_error(np.stack(outputs), torch.stack(outputs_t).detach()),
        "h_n": 0.0,
        "gradients": max(gradient_errors),
    }


def _parts(state):
    """(h,) or an LSTM's (h, c), as a tuple."""
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def _as_state(parts, lstm):
    """The state argument from its parts: an LSTM's tuple (h, c), or h."""
    return tuple(parts) if lstm else parts[0]


def run(args):
    try:
        import torch
    except ImportError:
        print(
            "numbarnn check compares against PyTorch, which is not installed. Install the CPU build with\n"
            "    pip install torch==2.13.0\n"
            'or the test extra: pip install -e ".[test]"',
            file=sys.stderr,
        )
        return 2
    import numbarnn

    cells = selected_cells(args) if args.cell else list(CELLS)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    checked, failed, blocked = 0, 0, 0
    header = (
        f"{'module':<8} {'H':>3} {'N':>4} {'blocks':>6} {'layers':>6} {'bidir':>5} {'act':>4} {'proj':>4} "
        f"{'bias':>5} {'b_first':>7} {'lengths':>7} {'dtype':>7} {'output':>9} {'h_n':>9} {'grads':>9}  ok"
    )
    compared = ", ".join(f"numbarnn.{MODULES[cell][0]} vs torch.nn.{MODULES[cell][0]}" for cell in cells)
    print(f"numbarnn check: {compared} (and their cells); h_n is the final state (h_n and an LSTM's c_n)")
    print(header)
    print("-" * len(header))
    worst = {dtype: 0.0 for dtype in TOLERANCES}
    for dtype in TOLERANCES:
        for module, sizes, config in settings(args.batch, cells):
            if module in SEQUENCE_MODULES:
                errors = _check_sequence(torch, numbarnn, module, config, sizes, dtype, args.steps, rng)
                blocks = block_count(module, sizes, config, args.steps)
            else:
                errors = _check_cell(torch, numbarnn, module, config, sizes, dtype, args.steps, rng)
                config = Config(1, False, config[0], config[1], False, False)
                blocks = 1  # a cell's step is one block
            largest = max(errors.values())
            worst[dtype] = max(worst[dtype], largest)
            ok = largest <= tolerance(dtype, args.steps * sizes[2])
            failed += not ok
            blocked += blocks > 1
            print(
                f"{module:<8} {sizes[1]:>3} {sizes[2]:>4} {blocks:>6} {config.layers:>6} "
                f"{str(config.bidirectional):>5} {config.nonlinearity or '-':>4} "
                f"{config.proj_size if module == 'LSTM' else '-':>4} {str(config.bias):>5} "
                f"{str(config.batch_first):>7} {str(config.lengths):>7} {dtype:>7} {errors['output']:>9.2e} "
                f"{errors['h_n']:>9.2e} {errors['gradients']:>9.2e}  {'yes' if ok else 'NO'}"
            )
            checked += 1
    print()
    most_rows = args.steps * max(args.batch, BLOCK_BATCH)
    for dtype, fixed in TOLERANCES.items():
        scaled = tolerance(dtype, most_rows)
        more = f"; {scaled:.1e} where the gradients sum L * N = {most_rows} rows" if scaled > fixed else ""
        print(f"largest relative error, {dtype}: {worst[dtype]:.2e} (tolerance {fixed:.0e}{more})")
    print(
        f"{blocked} of {checked} settings ran in several blocks (numba's pool: "
        f"{numba.config.NUMBA_NUM_THREADS} threads)"
    )
    if failed:
        print(f"{failed} of {checked} settings exceed the tolerance", file=sys.stderr)
        return 1
    print(f"all {checked} settings agree with torch")
    return 0
