"""The gated drop-ins ``numbarnn.torch.LSTM``, ``GRU``, ``LSTMCell`` and ``GRUCell`` against torch's stock modules:
every output (the LSTM's (h_n, c_n) included) and every gradient (input, h_0, c_0, each Parameter, weight_hr) at
hidden sizes that reach the panel kernels' partial and full panels (16, 17, 40, 64) and in a batch split into blocks,
with PackedSequence input (enforce_sorted both ways), both directions, two layers, proj_size, with and without a
given state, unbatched; gradcheck (batched gradients included) and double backward; copies after a forward; the
fallbacks to torch's own computation; ``accelerate``.

Tolerances are helpers.py's (RTOL / ATOL, derived there from the unit roundoff for short chains of O(1) sums; a
gated step is such a chain, with sigmoid through the project's tanh, as tests/test_lstm.py argues), and
:func:`helpers.scaled_atols` for the larger blocked problem. float64's (1e-10 relative, 1e-12 absolute) are within the
1e-9 asked for.
"""

import copy
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import ATOL, RTOL, saved_and_loaded, scaled_atols
from numpy.testing import assert_allclose
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import numbarnn.torch as nt
from numbarnn._cells import GATES
from numbarnn._workspace import block_count, max_blocks

# torch's float32 LSTM runs oneDNN, which has no projection and says so each call: torch's own kernel then runs
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")

TORCH = {
    "LSTM": torch.nn.modules.rnn.LSTM,
    "GRU": torch.nn.modules.rnn.GRU,
    "LSTMCell": torch.nn.modules.rnn.LSTMCell,
    "GRUCell": torch.nn.modules.rnn.GRUCell,
}
INPUT_SIZE, STEPS, BATCH = 7, 5, 3

# One case per hidden size, the options rotated so that each value of each option occurs for both cells (proj_size
# for the LSTM only; bias True unless given); "blocks" is a batch of 48 sequences, which the kernels split into
# blocks.
CASES = [
    dict(hidden_size=16, form="tensor", batch_first=False, bidirectional=True, num_layers=2, state=True, proj=0),
    dict(
        hidden_size=17, form="packed_sorted", batch_first=False, bidirectional=False, num_layers=2, state=False, proj=5
    ),
    dict(
        hidden_size=40,
        form="packed_unsorted",
        batch_first=True,
        bidirectional=True,
        num_layers=1,
        state=True,
        proj=7,
        bias=False,
    ),
    dict(hidden_size=64, form="blocks", batch_first=True, bidirectional=False, num_layers=2, state=True, proj=0),
    dict(hidden_size=17, form="unbatched", batch_first=True, bidirectional=True, num_layers=2, state=True, proj=3),
    dict(
        hidden_size=40,
        form="unbatched",
        batch_first=False,
        bidirectional=False,
        num_layers=1,
        state=False,
        proj=0,
        bias=False,
    ),
]


@pytest.fixture
def numbarnn_calls(monkeypatch):
    """How many forwards numbarnn's kernels ran (sequence or cell path): a comparison with torch proves nothing if
    the drop-in fell back to torch's own forward."""
    calls = []
    for name in ("_run", "_cell_step"):
        original = getattr(nt, name)
        monkeypatch.setattr(nt, name, lambda *a, _original=original, **k: calls.append(1) or _original(*a, **k))
    return calls


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def test_cases_cover_every_option_value():
    for option, values in {
        "hidden_size": {16, 17, 40, 64},
        "batch_first": {False, True},
        "bidirectional": {False, True},
        "num_layers": {1, 2},
        "state": {False, True},
        "proj": {0, 3, 5, 7},
        "bias": {False, True},
        "form": {"tensor", "packed_sorted", "packed_unsorted", "blocks", "unbatched"},
    }.items():
        assert {case.get(option, True) for case in CASES} == values, option


def module_pair(kind, dtype, **arguments):
    """torch's module and the drop-in with the same constructor arguments and weights."""
    torch.manual_seed(0)
    reference = TORCH[kind](dtype=dtype, **arguments)
    ours = getattr(nt, kind)(dtype=dtype, **arguments)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def states(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


def problem(kind, case, reference, dtype, generator):
    """(make_input, hx, leaves): a function building the input (a tensor or a PackedSequence) from the leaf x, the
    state (None, h_0, or the LSTM's (h_0, c_0)) and every leaf a gradient is asked of."""
    rows = reference.num_layers * (2 if reference.bidirectional else 1)
    form = case["form"]
    if form.startswith("packed"):
        lengths = [STEPS, STEPS - 1, 1] if form == "packed_sorted" else [2, STEPS, 1, STEPS]
        x = torch.randn(sum(lengths), INPUT_SIZE, dtype=dtype, generator=generator, requires_grad=True)

        def make_input():
            return pack_sequence(list(torch.split(x, lengths)), enforce_sorted=form == "packed_sorted")

        batch = (len(lengths),)
    else:
        batch = () if form == "unbatched" else (48,) if form == "blocks" else (BATCH,)
        shape = (*batch, STEPS, INPUT_SIZE) if case["batch_first"] else (STEPS, *batch, INPUT_SIZE)
        x = torch.randn(shape, dtype=dtype, generator=generator, requires_grad=True)

        def make_input():
            return x

    hx = None
    if case["state"]:
        h_width = reference.proj_size if kind == "LSTM" and reference.proj_size else reference.hidden_size
        hx = torch.randn((rows, *batch, h_width), dtype=dtype, generator=generator, requires_grad=True)
        if kind == "LSTM":
            hx = (
                hx,
                torch.randn(
                    (rows, *batch, reference.hidden_size), dtype=dtype, generator=generator, requires_grad=True
                ),
            )
    return make_input, hx, [x, *([] if hx is None else states(hx))]


def results_of(module, make_input, hx, leaves, loss_weights):
    """The outputs (output, h_n [, c_n]) and the gradients of every leaf and Parameter for a loss that gives each
    output element its own gradient."""
    output, h_n = module(make_input(), hx)
    data = output.data if isinstance(output, PackedSequence) else output
    outputs = [data, *states(h_n)]
    loss = sum(
        (value * weights[: value.numel()].view(value.shape)).sum()
        for value, weights in zip(outputs, loss_weights[: len(outputs)], strict=True)
    )
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return output, outputs, grads


def compare(actual, expected, names, dtype, atols=None):
    for a, e, name in zip(actual, expected, names, strict=True):
        assert a.shape == e.shape, (name, a.shape, e.shape)
        atol = (
            ATOL[dtype]
            if atols is None
            else atols.parameter_gradients
            if name.startswith(("weight", "bias"))
            else atols.values
        )
        assert_allclose(a.detach().numpy(), e.detach().numpy(), rtol=RTOL[dtype], atol=atol, err_msg=name)


NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_results_and_gradients_match_torch(kind, case, dtype, numbarnn_calls):
    arguments = dict(
        input_size=INPUT_SIZE,
        hidden_size=case["hidden_size"],
        num_layers=case["num_layers"],
        batch_first=case["batch_first"],
        bidirectional=case["bidirectional"],
        bias=case.get("bias", True),
    )
    if kind == "LSTM":
        arguments["proj_size"] = case["proj"]
    reference, ours = module_pair(kind, dtype, **arguments)
    generator = torch.Generator().manual_seed(1)
    make_input, hx, leaves = problem(kind, case, reference, dtype, generator)
    loss_weights = [torch.randn(100_000, dtype=dtype, generator=generator) for _ in range(3)]
    expected_output, expected, expected_grads = results_of(reference, make_input, hx, leaves, loss_weights)
    output, actual, grads = results_of(ours, make_input, hx, leaves, loss_weights)
    assert len(numbarnn_calls) == 1
    if isinstance(expected_output, PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            e = getattr(expected_output, field)
            assert torch.equal(getattr(output, field), e) if e is not None else getattr(output, field) is None
    np_dtype = NP_DTYPES[dtype]
    atols = None
    if case["form"] == "blocks":
        assert (
            block_count(48, STEPS, INPUT_SIZE, case["hidden_size"], case["num_layers"], 1, GATES[kind.lower()])
            == min(max_blocks(), 48)
            > 1
            or max_blocks() == 1
        )
        atols = scaled_atols(np_dtype, STEPS, 48, INPUT_SIZE, case["hidden_size"], 2 if case["bidirectional"] else 1)
    names = ["output", "h_n", "c_n"][: len(actual)]
    compare(actual, expected, names, np_dtype, atols)
    leaf_names = ["grad_x", "grad_h_0", "grad_c_0"][: len(leaves)]
    compare(grads, expected_grads, leaf_names + [name for name, _ in reference.named_parameters()], np_dtype, atols)
    with torch.no_grad():  # the inference path (no autograd Function, nothing kept) gives the same results
        output, h_n = ours(make_input(), hx)
    assert not any(state.requires_grad for state in states(h_n))
    compare(
        [output.data if isinstance(output, PackedSequence) else output, *states(h_n)],
        expected,
        ["no_grad " + name for name in names],
        np_dtype,
        atols,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cells_match_torch_through_a_loop(kind, dtype, numbarnn_calls):
    # Three steps at each hidden size, batched and unbatched, from a given state and from none; gradients of the
    # inputs, the first state and every Parameter through the loop, and the no_grad step (numbarnn's one-step
    # kernel) against torch's.
    np_dtype = NP_DTYPES[dtype]
    for hidden_size in (16, 17, 40, 64):
        reference, ours = module_pair(kind, dtype, input_size=INPUT_SIZE, hidden_size=hidden_size)
        generator = torch.Generator().manual_seed(hidden_size)
        for batch, given in (((BATCH,), True), ((), True), ((BATCH,), False)):
            xs = [
                torch.randn((*batch, INPUT_SIZE), dtype=dtype, generator=generator, requires_grad=True)
                for _ in range(3)
            ]
            state = (
                [
                    torch.randn((*batch, hidden_size), dtype=dtype, generator=generator, requires_grad=True)
                    for _ in range(2 if kind == "LSTMCell" else 1)
                ]
                if given
                else []
            )
            hx = None if not given else tuple(state) if kind == "LSTMCell" else state[0]
            results = []
            for module in (reference, ours):
                h, outputs = hx, []
                for x in xs:
                    h = module(x, h)
                    outputs += states(h)
                loss = sum((o * o.detach().sin()).sum() for o in outputs)
                grads = torch.autograd.grad(loss, xs + state + list(module.parameters()))
                with torch.no_grad():
                    step = module(xs[0], hx)
                results.append(outputs + list(grads) + states(step))
            assert len(numbarnn_calls) == 4  # three steps and the no_grad one
            numbarnn_calls.clear()
            compare(
                results[1],
                results[0],
                [f"{kind} H={hidden_size} batch={batch} given={given} #{i}" for i in range(len(results[0]))],
                np_dtype,
            )


GRADCHECK_MODULES = {
    "LSTM": dict(
        input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2, batch_first=True, bias=False
    ),
    "GRU": dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True),
    "LSTMCell": dict(input_size=3, hidden_size=4),
    "GRUCell": dict(input_size=3, hidden_size=4),
}


def gradcheck_function(kind, module, packed):
    """(function of the leaves, leaves): tiny float64 inputs, states given, every Parameter a leaf too (through
    ``torch.func.functional_call``, as in tests/test_torch.py)."""
    generator = torch.Generator().manual_seed(2)
    names = [name for name, _ in module.named_parameters()]
    if kind.endswith("Cell"):
        x = torch.randn(2, 3, dtype=torch.float64, generator=generator)
        state = [torch.randn(2, 4, dtype=torch.float64, generator=generator) for _ in range(1 + (kind == "LSTMCell"))]
    else:
        rows, width = 4, 2 if kind == "LSTM" else 4
        x = (
            torch.randn(9, 3, dtype=torch.float64, generator=generator)
            if packed
            else torch.randn((3, 2, 3) if module.batch_first else (2, 3, 3), dtype=torch.float64, generator=generator)
        )
        state = [torch.randn(rows, 3, width, dtype=torch.float64, generator=generator)]
        if kind == "LSTM":
            state.append(torch.randn(rows, 3, 4, dtype=torch.float64, generator=generator))

    def function(x, *rest):
        state, weights = rest[: len(rest) - len(names)], rest[len(rest) - len(names) :]
        hx = tuple(state) if kind in ("LSTM", "LSTMCell") else state[0]
        if packed:
            x = pack_sequence(list(torch.split(x, [4, 2, 3])), enforce_sorted=False)
        result = torch.func.functional_call(module, dict(zip(names, weights, strict=True)), (x, hx))
        if kind.endswith("Cell"):
            return result
        output, h_n = result
        return (output.data if packed else output, *states(h_n))

    leaves = [x.requires_grad_(), *(s.requires_grad_() for s in state), *module.parameters()]
    return function, leaves


@pytest.mark.parametrize(
    "kind, packed", [("LSTM", False), ("LSTM", True), ("GRU", True), ("LSTMCell", False), ("GRUCell", False)]
)
def test_gradcheck_with_batched_gradients(kind, packed):
    module = getattr(nt, kind)(dtype=torch.float64, **GRADCHECK_MODULES[kind])
    function, leaves = gradcheck_function(kind, module, packed)
    assert torch.autograd.gradcheck(function, leaves, check_batched_grad=True)


def test_double_backward_through_the_lstm_and_the_gru():
    for kind in ("LSTM", "GRUCell"):
        module = getattr(nt, kind)(dtype=torch.float64, **GRADCHECK_MODULES[kind])
        function, leaves = gradcheck_function(kind, module, False)
        assert torch.autograd.gradgradcheck(function, leaves, fast_mode=True)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_copies_after_a_forward_compute_like_the_original(kind, how):
    arguments = dict(GRADCHECK_MODULES[kind], dtype=torch.float32)
    module = getattr(nt, kind)(**arguments)
    x = torch.randn((2, 3) if kind.endswith("Cell") else (2, 3, 3))
    module(x)[0].sum().backward()  # a training call: plans, records and the flat buffer now exist
    with torch.no_grad():
        module(x)
    copied = {
        "deepcopy": copy.deepcopy,
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "torch.save": saved_and_loaded,
    }[how](module)
    assert type(copied) is type(module)
    expected, actual = module(x), copied(x)
    for a, e in zip(
        states(actual[1]) if not kind.endswith("Cell") else states(actual),
        states(expected[1]) if not kind.endswith("Cell") else states(expected),
        strict=True,
    ):
        assert torch.equal(a, e)


def test_state_tuple_and_its_gradients_reach_both_states():
    # grad of c_n alone flows into c_0 and h_0; grad of h_n alone too: each state gradient may be the only one
    reference, ours = module_pair("LSTM", torch.float64, input_size=3, hidden_size=16, num_layers=2)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 3, dtype=torch.float64, generator=generator)
    h_0, c_0 = (torch.randn(2, 2, 16, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2))
    for pick in (0, 1):
        results = []
        for module in (reference, ours):
            _, state = module(x, (h_0, c_0))
            results.append(torch.autograd.grad(state[pick].sin().sum(), (h_0, c_0)))
        compare(results[1], results[0], ["grad_h_0", "grad_c_0"], NP_DTYPES[torch.float64])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_other_dtypes_and_devices_run_torchs_own_forward(monkeypatch, kind):
    monkeypatch.setattr(nt, "_run", lambda *a, **k: pytest.fail("numbarnn ran"))
    monkeypatch.setattr(nt, "_cell_step", lambda *a, **k: pytest.fail("numbarnn ran"))
    cell = kind.endswith("Cell")
    shape = (2, 3) if cell else (5, 2, 3)
    reference, ours = module_pair(kind, torch.bfloat16, input_size=3, hidden_size=4)
    x = torch.randn(shape, dtype=torch.bfloat16)
    for a, e in zip(
        states(ours(x)) if cell else [ours(x)[0], *states(ours(x)[1])],
        states(reference(x)) if cell else [reference(x)[0], *states(reference(x)[1])],
        strict=True,
    ):
        assert a.dtype == torch.bfloat16 and torch.equal(a, e)  # torch's own code ran on both: bitwise the same
    x = torch.randn(shape, device="meta")  # meta tensors hold no values: shapes, dtypes and devices are torch's
    expected, actual = TORCH[kind](3, 4, device="meta")(x), getattr(nt, kind)(3, 4, device="meta")(x)
    for a, e in zip(
        states(actual) if cell else [actual[0], *states(actual[1])],
        states(expected) if cell else [expected[0], *states(expected[1])],
        strict=True,
    ):
        assert (a.device.type, a.dtype, a.shape) == ("meta", e.dtype, e.shape)


@pytest.mark.parametrize(
    "kind, arguments",
    [
        ("LSTM", lambda: (torch.randn(5, 2, 3), (torch.randn(1, 2, 4),))),  # a one-tensor state
        ("LSTM", lambda: (torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(2, 4)))),  # c_0 2-D
        ("LSTM", lambda: (torch.randn(5, 2, 3), (torch.randn(1, 3, 4), torch.randn(1, 3, 4)))),  # wrong batch
        ("LSTM", lambda: (torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 5)))),  # wrong c width
        ("GRU", lambda: (torch.randn(5, 2, 3), torch.randn(1, 2, 5))),
        ("GRU", lambda: (torch.randn(5, 2, 2, 3),)),
        ("LSTMCell", lambda: (torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 4)))),
        ("LSTMCell", lambda: (torch.randn(2, 3), (torch.randn(3, 4, 2), torch.randn(2, 4)))),
        ("GRUCell", lambda: (torch.randn(2, 5),)),
    ],
)
def test_errors_are_torchs(kind, arguments):
    torch.manual_seed(0)
    with pytest.raises(Exception) as expected:
        TORCH[kind](3, 4)(*arguments())
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        getattr(nt, kind)(3, 4)(*arguments())


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 16, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(32, 17, num_layers=2, batch_first=True)
        self.cell = torch.nn.LSTMCell(17, 16)

    def forward(self, x):
        output, _ = self.gru(self.lstm(x)[0])
        return output, self.cell(output[:, -1])


def test_accelerate_switches_an_lstm_and_a_gru_and_warns_when_nothing_can_switch():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(4, 5, 3)
    expected = model(x)
    parameters = list(model.parameters())
    assert nt.accelerate(model) is model
    assert (type(model.lstm), type(model.gru), type(model.cell)) == (nt.LSTM, nt.GRU, nt.LSTMCell)
    assert list(model.parameters()) == parameters  # the same Parameter objects, by identity
    actual = model(x)
    for a, e in zip([actual[0], *actual[1]], [expected[0], *expected[1]], strict=True):
        assert_allclose(
            a.detach().numpy(),
            e.detach().numpy(),
            rtol=RTOL[NP_DTYPES[torch.float32]],
            atol=ATOL[NP_DTYPES[torch.float32]],
        )

    with pytest.warns(UserWarning, match="holds no torch.nn.RNN, LSTM, GRU"):
        nt.accelerate(torch.nn.Sequential(torch.nn.Linear(3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nt.accelerate(model)  # already switched: nothing to warn about


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_jit_script_does_what_it_does_for_torchs_module(kind):
    # torch.jit.script of a drop-in scripts torch's own module sharing its Parameters: it runs as torch's scripted
    # module does, or fails as scripting torch's module fails (torch 2.13 cannot script its own LSTM and GRU:
    # their overloaded forward is lost, "'RecursiveScriptModule' object has no attribute 'forward'").
    reference, ours = module_pair(kind, torch.float32, input_size=3, hidden_size=4)
    x = torch.randn((2, 3) if kind.endswith("Cell") else (5, 2, 3))
    try:
        expected = torch.jit.script(reference)(x)
    except Exception as error:  # noqa: BLE001 - whatever torch raises, the drop-in must raise too
        with pytest.raises(type(error), match=re.escape(str(error))):
            torch.jit.script(ours)(x)
        return
    actual = torch.jit.script(ours)(x)
    flat = (lambda r: states(r)) if kind.endswith("Cell") else (lambda r: [r[0], *states(r[1])])
    for a, e in zip(flat(actual), flat(expected), strict=True):
        assert torch.equal(a, e)  # torch's scripted kernels on both


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_follows_torch_manual_seed_and_its_gradients_check(kind):
    # The masks come from torch's generator: reseeding reproduces them, so gradcheck's repeated forwards see the
    # same masks and the backward (kernels, and the recomputation for double backward) goes through them.
    module = getattr(nt, kind)(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def function(x):
        torch.manual_seed(3)
        output, state = module(x)
        return output, *states(state)

    first, second = function(x), function(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    module.eval()
    assert not torch.equal(function(x)[0], first[0])  # training dropped something out
    module.train()
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,), fast_mode=True)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_an_empty_batch_gives_torchs_shapes(kind):
    reference, ours = module_pair(kind, torch.float64, input_size=3, hidden_size=4, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
    expected, actual = reference(x), ours(x)
    for a, e in zip([actual[0], *states(actual[1])], [expected[0], *states(expected[1])], strict=True):
        assert a.shape == e.shape
    actual[0].sum().backward()
    assert x.grad.shape == x.shape


def flat_results(result):
    """A module's results as one list: a sequence module's output and each state, or a cell's state(s)."""
    if isinstance(result, torch.Tensor):
        return [result]
    first, second = result
    return [first, *states(second)]


class Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_idioms_after_a_forward_keep_matching_torch(kind, numbarnn_calls):
    # flatten_parameters(), load_state_dict, .double() / .float() and a parametrization registered once the
    # Parameters live in numbarnn's buffer
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    reference, ours = TORCH[kind](3, 4), getattr(nt, kind)(3, 4)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn((2, 3) if cell else (5, 2, 3))

    def check(name, dtype=torch.float32):
        results = []
        for module in (reference, ours):
            leaf = x.to(dtype).requires_grad_()
            outputs = flat_results(module(leaf))
            grads = torch.autograd.grad(
                sum((o * o.detach().cos()).sum() for o in outputs), [leaf, *module.parameters()]
            )
            results.append(outputs + list(grads))
        assert len(numbarnn_calls) == 1, name  # the drop-in's call, not torch's
        numbarnn_calls.clear()
        compare(results[1], results[0], [f"{name} #{i}" for i in range(len(results[0]))], NP_DTYPES[dtype])

    check("first call")
    if not cell:
        ours.flatten_parameters()
        reference.flatten_parameters()
        check("after flatten_parameters()")
    reference.load_state_dict(TORCH[kind](3, 4).state_dict())
    ours.load_state_dict(reference.state_dict())
    check("after load_state_dict")
    for convert in (lambda m: m.double(), lambda m: m.float(), lambda m: m.to(torch.float64)):
        convert(reference)
        convert(ours)
        check("after a conversion", next(ours.parameters()).dtype)
    name = "weight_hh" if cell else "weight_hh_l0"
    for module in (reference, ours):
        torch.nn.utils.parametrize.register_parametrization(module, name, Doubled())
    check("parametrized", torch.float64)


def test_rebinding_torchs_classes_to_the_drop_ins_does_not_recurse(monkeypatch):
    for name in ("LSTM", "GRU", "LSTMCell", "GRUCell"):
        monkeypatch.setattr(torch.nn, name, getattr(nt, name))
    for kind in ("LSTM", "GRU", "LSTMCell", "GRUCell"):
        module = getattr(torch.nn, kind)(3, 4, dtype=torch.bfloat16)  # the fallback: torch's own forward
        x = torch.randn((2, 3) if kind.endswith("Cell") else (5, 2, 3), dtype=torch.bfloat16)
        assert all(result.dtype == torch.bfloat16 for result in flat_results(module(x)))
