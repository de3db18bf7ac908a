"""``clip_grad_norm_`` against ``torch.nn.utils.clip_grad_norm_``: the returned norm and the scaled gradients."""

import math

import numpy as np
import pytest
import torch
from helpers import DTYPES, assert_close

import numbarnn
from numbarnn.clip import clip_grad_norm_
from numbarnn.linear import Linear


def modules_with_gradients(rng, dtype, scale=1.0):
    modules = [numbarnn.RNN(3, 4, dtype=dtype, seed=0), Linear(4, 2, dtype=dtype, seed=1)]
    for module in modules:
        module._grad_flat[:] = scale * rng.standard_normal(module._grad_flat.size)
    return modules


def torch_clip(modules, max_norm, norm_type, **options):
    params = []
    for module in modules:
        for gradient in module.grads.values():
            param = torch.zeros(gradient.shape, dtype=torch.float64 if gradient.dtype == np.float64 else torch.float32)
            param.grad = torch.tensor(gradient.copy())
            params.append(param)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, **options)
    return float(total), [param.grad.numpy() for param in params]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf], ids=["l2", "l1", "l3", "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clipped", "unchanged"])
def test_matches_torch(max_norm, norm_type, dtype, rng):
    modules = modules_with_gradients(rng, dtype)
    expected_total, expected_grads = torch_clip(modules, max_norm, norm_type)
    total = clip_grad_norm_(modules, max_norm, norm_type=norm_type)
    assert_close(total, expected_total, dtype, "total norm")
    ours = [value for module in modules for value in module.grads.values()]
    for index, (mine, theirs) in enumerate(zip(ours, expected_grads, strict=True)):
        assert_close(mine, theirs, dtype, f"gradient {index}")


def test_clipped_norm_is_max_norm(rng):
    modules = modules_with_gradients(rng, np.float64, scale=10.0)
    before = clip_grad_norm_(modules, 1.0)
    assert before > 1.0
    after = np.sqrt(sum(np.dot(module._grad_flat, module._grad_flat) for module in modules))
    assert after == pytest.approx(1.0 * before / (before + 1e-6), rel=1e-12)  # torch's 1e-6 guard, kept


def test_inf_norm_is_the_largest_magnitude(rng):
    modules = modules_with_gradients(rng, np.float64)
    modules[1]._grad_flat[3] = -42.0
    assert clip_grad_norm_(modules, 1e9, norm_type="inf") == 42.0


def test_non_finite_norm(rng):
    modules = modules_with_gradients(rng, np.float64)
    modules[0]._grad_flat[0] = np.nan
    expected_total, expected_grads = torch_clip(modules, 1.0, 2.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(modules, 1.0, error_if_nonfinite=True)
    assert np.isnan(modules[0]._grad_flat[0]) and np.isfinite(modules[1]._grad_flat).all()  # untouched by the error
    total = clip_grad_norm_(modules, 1.0)
    assert math.isnan(total) and math.isnan(expected_total)
    ours = [value for module in modules for value in module.grads.values()]
    for mine, theirs in zip(ours, expected_grads, strict=True):
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))


def test_bad_norm_type(rng):
    with pytest.raises(ValueError, match="norm_type must be a positive number or inf"):
        clip_grad_norm_(modules_with_gradients(rng, np.float32), 1.0, norm_type=0)
