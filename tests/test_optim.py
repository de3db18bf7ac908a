"""SGD, Adam and Adagrad against ``torch.optim`` over several steps, on the same parameters and gradients."""

import numpy as np
import pytest
import torch

import numbarnn
from numbarnn.linear import Linear
from numbarnn.optim import SGD, Adagrad, Adam

STEPS = 5
TORCH_OPTIMIZERS = {SGD: torch.optim.SGD, Adam: torch.optim.Adam, Adagrad: torch.optim.Adagrad}

CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.8, dampening=0.3)),
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (SGD, dict(lr=0.1, weight_decay=0.01)),
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    (Adam, dict()),
    (Adam, dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, dict(lr=0.01, weight_decay=0.1)),
    (Adagrad, dict()),
    (Adagrad, dict(lr=0.1, lr_decay=0.05)),
    (Adagrad, dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6)),
]


def case_id(case):
    cls, settings = case
    return cls.__name__ + "-" + "-".join(f"{key}={value}" for key, value in settings.items())


def make_modules(dtype):
    """Two modules of different kinds, so each step updates two flat buffers."""
    return [numbarnn.RNN(3, 4, num_layers=2, dtype=dtype, seed=1), Linear(4, 2, dtype=dtype, seed=2)]


def torch_copies(modules):
    return [torch.tensor(value.copy(), requires_grad=True) for module in modules for value in module.params.values()]


# Per step each parameter is rounded once more (0.5 ulp of |p| <= ~1) and the update (|step| <= lr) picks up a few
# ulps, so after STEPS steps the two agree to ~STEPS ulps of O(1) values: ~1e-15 for float64, ~1e-6 for float32.
TOLERANCE = {np.dtype(np.float64): dict(rtol=1e-13, atol=1e-14), np.dtype(np.float32): dict(rtol=2e-6, atol=1e-6)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_over_several_steps(case, dtype, rng):
    cls, settings = case
    modules = make_modules(dtype)
    reference_params = torch_copies(modules)
    optimizer = cls(modules, **settings)
    reference = TORCH_OPTIMIZERS[cls](reference_params, **settings)
    for _ in range(STEPS):
        for module in modules:
            module._grad_flat[:] = rng.standard_normal(module._grad_flat.size)
        gradients = [value.copy() for module in modules for value in module.grads.values()]
        for param, gradient in zip(reference_params, gradients, strict=True):
            param.grad = torch.tensor(gradient)
        optimizer.step()
        reference.step()
        ours = [value for module in modules for value in module.params.values()]
        for index, (mine, theirs) in enumerate(zip(ours, reference_params, strict=True)):
            np.testing.assert_allclose(
                mine, theirs.detach().numpy(), **TOLERANCE[np.dtype(dtype)], err_msg=f"parameter {index}"
            )


def test_updates_the_flat_buffers_in_place(rng):
    modules = make_modules(np.float64)
    views = [module.params for module in modules]
    flats = [module._param_flat for module in modules]
    before = [flat.copy() for flat in flats]
    optimizer = Adam(modules, lr=0.1)
    for module in modules:
        module._grad_flat[:] = rng.standard_normal(module._grad_flat.size)
    optimizer.step()
    for module, params, flat, old in zip(modules, views, flats, before, strict=True):
        assert module._param_flat is flat and module.params is params
        assert not np.array_equal(flat, old)
        assert all(np.shares_memory(value, flat) for value in params.values())


def test_zero_grad_clears_every_module(rng):
    modules = make_modules(np.float32)
    for module in modules:
        module._grad_flat[:] = 1
    SGD(modules, lr=0.1).zero_grad()
    assert not any(module._grad_flat.any() for module in modules)


def test_accepts_a_single_module():
    layer = Linear(2, 2, dtype=np.float64, seed=0)
    layer._grad_flat[:] = 1
    before = layer._param_flat.copy()
    SGD(layer, lr=0.5).step()
    np.testing.assert_array_equal(layer._param_flat, before - 0.5)


def test_argument_errors():
    layer = Linear(2, 2)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        SGD([layer], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        SGD([layer], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        SGD([layer], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        Adam([layer], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon value"):
        Adam([layer], eps=-1e-8)
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        Adagrad([layer], weight_decay=-1)
    with pytest.raises(ValueError, match="Invalid lr_decay value"):
        Adagrad([layer], lr_decay=-1)
    with pytest.raises(ValueError, match="more than once"):
        Adam([layer, layer])
    with pytest.raises(ValueError, match="empty list"):
        Adam([])
    with pytest.raises(TypeError, match=r"modules\[1\] must be a numbarnn module"):
        Adam([layer, np.zeros(3)])
