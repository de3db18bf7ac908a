"""PyTorch's generic module checks, run side by side on torch's ``nn.RNN`` / ``nn.RNNCell`` and on numbarnn's drop-ins.

The checks are those of torch's ``test/test_modules.py`` (``TestModule``) for the two classes, on the inputs its
``torch/testing/_internal/common_modules.py`` gives them (``module_inputs_torch_nn_RNN_GRU`` with ``is_rnn=True``,
``module_inputs_torch_nn_RNN_GRU_Cell`` and the two ``module_error_inputs_*``), rewritten here: that module is
private and needs torch's own test dependencies. Every check runs on both implementations, so whatever torch's class
passes, the drop-in must pass on the same inputs: in both dtypes and both training modes, except the gradient checks
(float64, as torch runs them) and the copies (training mode; see test_grad), with smaller subsets of samples where
noted (PARTIAL_SAMPLES, GRADGRAD_SAMPLES) to keep the test time modest. The CUDA-only checks (device transfer,
CPU/GPU parity) and ``inplace`` (neither class has it) do not apply. numbarnn's results are also compared with
torch's on every sample.
"""

import contextlib
import copy
import io
import itertools
import pickle
from dataclasses import dataclass

import pytest
import torch
from helpers import pairwise_cases, saved_and_loaded
from torch.testing import assert_close, make_tensor

import numbarnn.torch as nt

TORCH_CLASSES = {"RNN": torch.nn.modules.rnn.RNN, "RNNCell": torch.nn.modules.rnn.RNNCell}
DROP_INS = {"RNN": nt.RNN, "RNNCell": nt.RNNCell}
IMPLEMENTATIONS = {"torch": TORCH_CLASSES, "numbarnn": DROP_INS}
TRAIN_AND_EVAL_DIFFER = {"RNN": True, "RNNCell": False}  # as torch's ModuleInfo entries say
DTYPES = [torch.float32, torch.float64]
# numbarnn against torch on the same sample: helpers' tolerances (tests/helpers.py derives them from the unit roundoff
# for short chains of O(1) terms) scaled for these inputs, which are uniform on [-9, 9] (make_tensor's range) instead
# of standard normal: pre-activations and gradients up to ~9x larger, so the absolute tolerance is 10x helpers'.
PARITY = {torch.float32: {"rtol": 1e-5, "atol": 5e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-11}}


@dataclass
class Sample:
    """One ``ModuleInput``: constructor arguments, forward arguments, and how torch's reference (a batch of one)
    unsqueezes them."""

    name: str
    constructor: dict
    forward: tuple
    batch_first: bool = False


def module_inputs(kind, dtype, requires_grad=False):
    """torch's samples for ``kind``: all unbatched (the no-batch-dim support they were written for)."""

    def make(*shape):  # torch's make_input: uniform on [-9, 9]
        return make_tensor(shape, device="cpu", dtype=dtype, requires_grad=requires_grad)

    if kind == "RNNCell":
        return [
            Sample("default", {"input_size": 5, "hidden_size": 10}, (make(5), make(10))),
            Sample("bias", {"input_size": 5, "hidden_size": 10, "bias": True}, (make(5), make(10))),
            Sample(
                "relu", {"input_size": 5, "hidden_size": 10, "bias": True, "nonlinearity": "relu"}, (make(5), make(10))
            ),
        ]
    samples = []
    for nonlinearity, bias, batch_first, bidirectional in itertools.product(
        ("relu", "tanh"), (False, True), (False, True), (False, True)
    ):
        arguments = {
            "input_size": 2,
            "num_layers": 2,
            "batch_first": batch_first,
            "bias": bias,
            "bidirectional": bidirectional,
            "nonlinearity": nonlinearity,
        }
        name = (
            f"{nonlinearity}-{'bias' if bias else 'nobias'}-{'bf' if batch_first else 'tm'}-"
            f"{'bi' if bidirectional else 'uni'}-"
        )
        samples.append(Sample(name, {**arguments, "hidden_size": 2}, (make(3, 2),), batch_first))
        samples.append(
            Sample(
                name + "hx",
                {**arguments, "hidden_size": 3},
                (make(3, 2), make(4 if bidirectional else 2, 3)),
                batch_first,
            )
        )
    return samples


def build(cls, sample, dtype, training):
    module = cls(**sample.constructor)
    module.to(dtype)
    module.train(training)
    return module


def batch_of_one_reference(kind, module, sample, args):
    """torch's ``no_batch_dim_reference_*``: the same call on a batch of one, squeezed back."""
    if kind == "RNNCell":
        return module(*(a.unsqueeze(0) for a in args)).squeeze(0)
    batch_dim = 0 if sample.batch_first else 1
    hx = args[1].unsqueeze(1) if len(args) > 1 else None
    output, h_n = module(args[0].unsqueeze(batch_dim), hx)
    return output.squeeze(batch_dim), h_n.squeeze(1)


def flat(outputs):
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request):
    return request.param


KINDS = pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
EVERY_DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
TRAINING = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


@KINDS
@EVERY_DTYPE
@TRAINING
def test_forward(implementation, kind, dtype, training):
    cls = IMPLEMENTATIONS[implementation][kind]
    torch.manual_seed(0)
    for sample in module_inputs(kind, dtype):
        module = build(cls, sample, dtype, training)
        outputs = module(*sample.forward)
        assert_close(outputs, batch_of_one_reference(kind, module, sample, sample.forward), msg=sample.name)
        if dtype == torch.float64:  # the dtype's own method, then a forward again
            module.double()
        else:
            module.float()
        module(*sample.forward)
        assert all(p.dtype == dtype and p.device.type == "cpu" for p in module.parameters())


@KINDS
@EVERY_DTYPE
def test_factory_kwargs(implementation, kind, dtype):
    for sample in module_inputs(kind, dtype):
        module = IMPLEMENTATIONS[implementation][kind](**sample.constructor, device="cpu", dtype=dtype)
        assert all(p.dtype == dtype and p.device.type == "cpu" for p in module.parameters()), sample.name


@KINDS
def test_repr(implementation, kind):
    for sample in module_inputs(kind, torch.float32):
        module = IMPLEMENTATIONS[implementation][kind](**sample.constructor)
        assert repr(module) == repr(TORCH_CLASSES[kind](**sample.constructor)) == str(module)


@KINDS
@EVERY_DTYPE
@pytest.mark.parametrize("how", ["torch.save", "pickle", "deepcopy"])
def test_copies_after_a_forward_compute_the_same(implementation, kind, dtype, how):
    # torch's test_pickle / test_save_load (torch.save of the module after a forward) and test_nn's deepcopy tests,
    # in training mode (see test_grad)
    cls = IMPLEMENTATIONS[implementation][kind]
    torch.manual_seed(0)
    for sample in module_inputs(kind, dtype):
        module = build(cls, sample, dtype, True)
        output = module(*sample.forward)
        duplicate = {
            "torch.save": saved_and_loaded,
            "pickle": lambda m: pickle.loads(pickle.dumps(m)),
            "deepcopy": copy.deepcopy,
        }[how](module)
        assert type(duplicate) is cls
        assert_close(duplicate(*sample.forward), output, msg=sample.name)
        # the copy owns its Parameters: changing them leaves the original as it was
        with torch.no_grad():
            for parameter in duplicate.parameters():
                parameter.add_(1.0)
        assert_close(module(*sample.forward), output, msg=sample.name)


@KINDS
@EVERY_DTYPE
def test_state_dict_save_load(implementation, kind, dtype):
    for sample in module_inputs(kind, dtype):
        module = build(IMPLEMENTATIONS[implementation][kind], sample, dtype, True)
        module(*sample.forward)  # after a forward, when numbarnn's Parameters live in one buffer
        state = module.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        for weights_only in (False, True):
            buffer.seek(0)
            loaded = torch.load(buffer, weights_only=weights_only)
            assert list(loaded) == list(state)
            assert all(torch.equal(loaded[name], state[name]) for name in state), sample.name


def non_contiguous(tensor):
    """torch's ``_make_non_contiguous``: the same values, every other element of a doubled tensor."""
    result = torch.repeat_interleave(tensor, 2, dim=-1)[..., ::2].detach()
    return result.requires_grad_(tensor.requires_grad)


@KINDS
@EVERY_DTYPE
@TRAINING
def test_non_contiguous_tensors(implementation, kind, dtype, training):
    cls = IMPLEMENTATIONS[implementation][kind]
    torch.manual_seed(0)
    for sample in module_inputs(kind, dtype, requires_grad=True):
        module = build(cls, sample, dtype, training)
        default_output = flat(module(*sample.forward))
        grad_outputs = [torch.randn_like(o) for o in default_output]
        torch.autograd.backward(default_output, grad_outputs)
        default_grads = [a.grad.clone() for a in sample.forward] + [p.grad.clone() for p in module.parameters()]
        arguments = [sample.forward, tuple(non_contiguous(a) for a in sample.forward)]
        assert not arguments[1][0].is_contiguous()
        for args, grads in itertools.product(arguments, [grad_outputs, [non_contiguous(g) for g in grad_outputs]]):
            for tensor in (*args, *module.parameters()):
                tensor.grad = None
            outputs = flat(module(*args))
            torch.autograd.backward(outputs, grads)
            assert_close(outputs, default_output, msg=sample.name)
            assert_close([a.grad for a in args], default_grads[: len(args)], atol=1e-4, rtol=0, msg=sample.name)
            assert_close([p.grad for p in module.parameters()], default_grads[len(args) :], msg=sample.name)


# To keep the test time modest (torch checks every sample every way): the checks with one Parameter at a time
# requiring grad run on two opposite corners of the RNN configurations, and gradgradcheck (a few seconds per sample
# for both implementations) on RNN samples covering every pair of options; every cell sample runs everything.
CELL_SAMPLES = {"default", "bias", "relu"}
PARTIAL_SAMPLES = {"tanh-bias-bf-bi-hx", "relu-nobias-tm-uni-"} | CELL_SAMPLES
GRADGRAD_SAMPLES = {
    "-".join(case.values())
    for case in pairwise_cases(
        {
            "nonlinearity": ["relu", "tanh"],
            "bias": ["nobias", "bias"],
            "layout": ["tm", "bf"],
            "directions": ["uni", "bi"],
            "hx": ["", "hx"],
        }
    )
} | CELL_SAMPLES


def gradient_checks(cls, kind, check, training, samples=None):
    """torch's ``_test_gradients_helper``: the check (in float64, fast mode, batched gradients included, as torch's
    test wrapper sets them) on (inputs, Parameters) all at once, then with one Parameter at a time requiring grad."""
    torch.manual_seed(0)
    for sample in module_inputs(kind, torch.float64, requires_grad=True):
        if samples is not None and sample.name not in samples:
            continue
        module = build(cls, sample, torch.float64, training)
        parameters = tuple(module.parameters())
        arguments = len(sample.forward)

        def function(*inputs_and_parameters, module=module, arguments=arguments):
            return tuple(flat(module(*inputs_and_parameters[:arguments])))

        assert check(function, sample.forward + parameters, check_batched_grad=True, fast_mode=True), sample.name
        if sample.name not in PARTIAL_SAMPLES:
            continue
        for parameter in parameters:
            parameter.requires_grad_(False)
        for parameter in parameters:
            parameter.requires_grad_(True)
            assert check(function, sample.forward + parameters, check_batched_grad=True, fast_mode=True), sample.name
            parameter.requires_grad_(False)


# The gradient checks and the copies run in training mode only (torch runs both): the samples have no dropout, the one
# thing the mode changes, so eval mode runs the same computation (test_forward and others run both modes).
@KINDS
def test_grad(implementation, kind):
    gradient_checks(IMPLEMENTATIONS[implementation][kind], kind, torch.autograd.gradcheck, True)


@KINDS
def test_gradgrad(implementation, kind):
    gradient_checks(IMPLEMENTATIONS[implementation][kind], kind, torch.autograd.gradgradcheck, True, GRADGRAD_SAMPLES)


@KINDS
@EVERY_DTYPE
@TRAINING
def test_outputs_and_gradients_are_contiguous(implementation, kind, dtype, training):
    # torch's test_memory_format for inputs of fewer than 4 dimensions: everything stays contiguous
    torch.manual_seed(0)
    for sample in module_inputs(kind, dtype, requires_grad=True):
        module = build(IMPLEMENTATIONS[implementation][kind], sample, dtype, training)
        outputs = flat(module(*sample.forward))
        grads = torch.autograd.grad(
            outputs, (*sample.forward, *module.parameters()), [torch.rand_like(o) for o in outputs]
        )
        assert all(t.is_contiguous() for t in (*outputs, *grads)), sample.name


@KINDS
@EVERY_DTYPE
def test_train_and_eval_modes(implementation, kind, dtype):
    # torch's test_if_train_and_eval_modes_differ: a forward may read .training only if the modes differ
    for sample in module_inputs(kind, dtype):
        module = build(IMPLEMENTATIONS[implementation][kind], sample, dtype, True)
        del module.training
        try:
            module(*sample.forward)
        except AttributeError as error:
            assert "'training'" in str(error) and TRAIN_AND_EVAL_DIFFER[kind], sample.name


@KINDS
@EVERY_DTYPE
def test_device_context_init(implementation, kind, dtype):
    for sample in module_inputs(kind, dtype):
        cls = IMPLEMENTATIONS[implementation][kind]
        on_cpu = cls(**sample.constructor)
        with torch.device("meta"):
            on_meta = cls(**sample.constructor)
        for meta, cpu in zip(on_meta.parameters(), on_cpu.parameters(), strict=True):
            assert meta.is_meta and (meta.shape, meta.dtype, meta.stride()) == (cpu.shape, cpu.dtype, cpu.stride())


@contextlib.contextmanager
def swapping_parameters(swap):
    """``torch.__future__.set_swap_module_params_on_conversion(swap)`` for the block (``.to()`` then swaps the
    Parameters' contents instead of assigning ``.data``)."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


@KINDS
@pytest.mark.parametrize("swap", [False, True], ids=["assign", "swap"])
def test_to_after_a_forward(implementation, kind, swap):
    # torch's test_to (both ways of converting Parameters), after a forward and a backward
    torch.manual_seed(0)
    for sample in module_inputs(kind, torch.float32, requires_grad=True):
        module = build(IMPLEMENTATIONS[implementation][kind], sample, torch.float32, True)
        outputs = flat(module(*sample.forward))
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        identities = [id(p) for p in module.parameters()]
        with swapping_parameters(swap):
            module.to(torch.float64)
        assert [id(p) for p in module.parameters()] == identities
        assert all(p.dtype == torch.float64 and p.grad.dtype == torch.float64 for p in module.parameters())
        reference = TORCH_CLASSES[kind](**sample.constructor, dtype=torch.float64)
        reference.load_state_dict(module.state_dict())
        args = [a.detach().double() for a in sample.forward]
        assert_close(module(*args), reference(*args), **PARITY[torch.float64], msg=sample.name)


@KINDS
@pytest.mark.parametrize("swap", [False, True], ids=["assign", "swap"])
def test_to_empty(implementation, kind, swap):
    for sample in module_inputs(kind, torch.float32):
        with torch.device("meta"):
            module = IMPLEMENTATIONS[implementation][kind](**sample.constructor)
        with swapping_parameters(swap):
            module.to_empty(device="cpu")
        assert all(isinstance(p, torch.nn.Parameter) and p.device.type == "cpu" for p in module.parameters())
        with torch.no_grad():
            for p in module.parameters():
                p.uniform_(-0.5, 0.5)
        reference = TORCH_CLASSES[kind](**sample.constructor)
        reference.load_state_dict(module.state_dict())
        assert_close(module(*sample.forward), reference(*sample.forward), **PARITY[torch.float32], msg=sample.name)


def error_inputs(kind, dtype):
    """torch's ``module_error_inputs_torch_nn_RNN_GRU`` / ``..._RNN_GRU_Cell``: (constructor args, kwargs, forward
    args or None for a construction error, error type, regex)."""
    if kind == "RNNCell":

        def make(*shape):
            return make_tensor(shape, device="cpu", dtype=dtype)

        return [
            (
                (10, 20),
                {},
                (make(3, 11), make(3, 20)),
                RuntimeError,
                "input has inconsistent input_size: got 11 expected 10",
            ),
            (
                (10, 20),
                {},
                (make(3, 10), make(3, 21)),
                RuntimeError,
                "hidden0 has inconsistent hidden_size: got 21, expected 20",
            ),
            (
                (10, 20),
                {},
                (make(3, 10), make(5, 20)),
                RuntimeError,
                "Input batch size 3 doesn't match hidden0 batch size 5",
            ),
            (
                (10, 20),
                {},
                (make(3, 10), make(3, 1, 1, 20)),
                ValueError,
                "Expected hidden to be 1D or 2D, got 4D instead",
            ),
            (
                (10, 20, "relu"),
                {},
                (make(3, 10), make(3, 21)),
                RuntimeError,
                "hidden0 has inconsistent hidden_size: got 21, expected 20",
            ),
            (
                (10, 20, "tanh"),
                {},
                (make(3, 10), make(3, 21)),
                RuntimeError,
                "hidden0 has inconsistent hidden_size: got 21, expected 20",
            ),
        ]
    mismatched = torch.float64 if dtype == torch.float32 else torch.float32
    return [
        ((10, 0, 1), {}, None, ValueError, "hidden_size must be greater than zero"),
        ((10, 10, 0), {}, None, ValueError, "num_layers must be greater than zero"),
        (
            (3, 5),
            {"dtype": dtype},
            (make_tensor((2, 4, 3), device="cpu", dtype=mismatched),),
            ValueError,
            (
                r"RNN input dtype .* does not match weight dtype .* Convert input: input\.to\(.*\), or convert model: "
                r"model\.to\(.*\)"
            ),
        ),
        ((3, 5), {"bias": 0}, None, TypeError, "bias should be of type bool, got: int"),
        ((3, 5), {"bias": 1}, None, TypeError, "bias should be of type bool, got: int"),
        ((3, 5), {"bias": "True"}, None, TypeError, "bias should be of type bool, got: str"),
        ((3, 5), {"batch_first": 0}, None, TypeError, "batch_first should be of type bool, got: int"),
        ((3, 5), {"batch_first": 1}, None, TypeError, "batch_first should be of type bool, got: int"),
        ((3, 5), {"batch_first": "False"}, None, TypeError, "batch_first should be of type bool, got: str"),
        ((3.0, 5), {}, None, TypeError, "input_size should be of type int, got: float"),
        (("10", 5), {}, None, TypeError, "input_size should be of type int, got: str"),
        ((0, 5), {}, None, ValueError, "input_size must be greater than zero"),
        ((-1, 5), {}, None, ValueError, "input_size must be greater than zero"),
        ((3, 5.0), {}, None, TypeError, "hidden_size should be of type int, got: float"),
    ]


@KINDS
@EVERY_DTYPE
def test_errors(implementation, kind, dtype):
    cls = IMPLEMENTATIONS[implementation][kind]
    for args, kwargs, forward, error, message in error_inputs(kind, dtype):
        if forward is None:
            with pytest.raises(error, match=message):
                cls(*args, **kwargs)
        else:
            module = cls(*args, **kwargs)
            with pytest.raises(error, match=message):
                module(*forward)


# -- numbarnn against torch on the same samples ----------------------------------------------------------------------


@KINDS
@EVERY_DTYPE
@TRAINING
def test_numbarnn_matches_torch_on_every_sample(kind, dtype, training):
    torch.manual_seed(0)
    for sample in module_inputs(kind, dtype, requires_grad=True):
        reference = build(TORCH_CLASSES[kind], sample, dtype, training)
        ours = build(DROP_INS[kind], sample, dtype, training)
        ours.load_state_dict(reference.state_dict())
        results = []
        for module in (reference, ours):
            outputs = flat(module(*sample.forward))
            grads = torch.autograd.grad(
                outputs, (*sample.forward, *module.parameters()), [torch.ones_like(o) for o in outputs]
            )
            results.append((outputs, grads))
        assert_close(results[1], results[0], **PARITY[dtype], msg=sample.name)


def test_the_subsets_name_real_samples_and_cover_every_pair():
    names = {sample.name for kind in ("RNN", "RNNCell") for sample in module_inputs(kind, torch.float32)}
    assert len(names) == 35  # torch's 16 RNN configurations without and with hx, and its 3 cell samples
    assert PARTIAL_SAMPLES <= names and GRADGRAD_SAMPLES <= names
    rnn_options = [name.split("-") for name in GRADGRAD_SAMPLES - CELL_SAMPLES]
    for a, b in itertools.combinations(range(5), 2):
        assert len({(options[a], options[b]) for options in rnn_options}) == 4
