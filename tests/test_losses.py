"""``softmax_cross_entropy`` and ``mse_loss`` against ``torch.nn.functional``: values and gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, assert_close

from numbarnn.losses import mse_loss, softmax_cross_entropy

CLASSES = 5
REDUCTIONS = ["mean", "sum", "none"]
# targets shape (...): unbatched, a batch, (L, N) as after an RNN
TARGET_SHAPES = [(), (6,), (4, 3)]


def torch_cross_entropy(logits, targets, reduction, ignore_index=-100):
    """torch's loss and autograd gradient for logits (..., C): torch wants the classes on axis 1."""
    logits_t = torch.tensor(logits, requires_grad=True)
    moved = logits_t.movedim(-1, 1) if logits.ndim > 2 else logits_t
    loss = F.cross_entropy(moved, torch.tensor(targets), reduction=reduction, ignore_index=ignore_index)
    loss.sum().backward()
    return loss.detach().numpy(), logits_t.grad.numpy()


def random_targets(rng, shape, ignore_index=None, ignored_fraction=0.3):
    targets = rng.integers(0, CLASSES, size=shape)
    if ignore_index is not None and targets.ndim:
        targets[rng.random(shape) < ignored_fraction] = ignore_index
        targets.flat[0] = 1  # at least one position counts
    return targets


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", TARGET_SHAPES, ids=str)
@pytest.mark.parametrize("with_ignored", [False, True], ids=["all", "ignored"])
def test_cross_entropy_matches_torch(shape, reduction, dtype, with_ignored, rng):
    logits = (3 * rng.standard_normal(shape + (CLASSES,))).astype(dtype)
    targets = random_targets(rng, shape, ignore_index=-100 if with_ignored else None)
    expected_loss, expected_grad = torch_cross_entropy(logits, targets, reduction)
    loss, grad = softmax_cross_entropy(logits, targets, reduction=reduction)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    assert_close(loss, expected_loss, dtype, "loss")
    assert_close(grad, expected_grad, dtype, "grad_logits")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_custom_ignore_index_that_is_a_valid_class(reduction, rng):
    logits = rng.standard_normal((4, 3, CLASSES))
    targets = random_targets(rng, (4, 3))
    targets.flat[0] = 0
    expected_loss, expected_grad = torch_cross_entropy(logits, targets, reduction, ignore_index=2)
    loss, grad = softmax_cross_entropy(logits, targets, reduction=reduction, ignore_index=2)
    assert_close(loss, expected_loss, np.float64, "loss")
    assert_close(grad, expected_grad, np.float64, "grad_logits")
    assert not grad[targets == 2].any()


def test_mean_over_nothing_is_nan_with_zero_gradient_like_torch(rng):
    logits = rng.standard_normal((3, CLASSES))
    targets = np.full(3, -100)
    expected_loss, expected_grad = torch_cross_entropy(logits, targets, "mean")
    loss, grad = softmax_cross_entropy(logits, targets)
    assert np.isnan(loss) and np.isnan(expected_loss)
    assert_close(grad, expected_grad, np.float64, "grad_logits")
    assert not grad.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_large_logits_are_stable(dtype, rng):
    # exp(1e4) overflows in either dtype; the log-sum-exp with the maximum subtracted does not.
    logits = (rng.standard_normal((6, CLASSES)) * 1e4).astype(dtype)
    targets = random_targets(rng, (6,))
    expected_loss, expected_grad = torch_cross_entropy(logits, targets, "sum")
    loss, grad = softmax_cross_entropy(logits, targets, reduction="sum")
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert_close(loss, expected_loss, dtype, "loss")
    assert_close(grad, expected_grad, dtype, "grad_logits")


def test_gradient_is_softmax_minus_one_hot(rng):
    logits = rng.standard_normal((4, CLASSES))
    targets = random_targets(rng, (4,))
    _, grad = softmax_cross_entropy(logits, targets, reduction="sum")
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert_close(grad, softmax - np.eye(CLASSES)[targets], np.float64, "grad")
    assert_close(grad.sum(axis=1), np.zeros(4), np.float64, "rows sum to zero")


def test_cross_entropy_errors():
    logits = np.zeros((3, CLASSES), np.float32)
    with pytest.raises(TypeError, match=r"targets must be integer class indices, got dtype float32.*astype"):
        softmax_cross_entropy(logits, np.zeros(3, np.float32))
    with pytest.raises(IndexError, match=r"\[0, 5\).*found 5 at position \(1,\)"):
        softmax_cross_entropy(logits, np.array([0, 5, 1]))
    with pytest.raises(IndexError, match="found -1"):
        softmax_cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"targets must have shape logits.shape\[:-1\] = \(3,\).*got shape \(4,\)"):
        softmax_cross_entropy(logits, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="reduction must be one of"):
        softmax_cross_entropy(logits, np.zeros(3, np.int64), reduction="average")
    with pytest.raises(TypeError, match="logits must be a float32 or float64 array, got dtype int64"):
        softmax_cross_entropy(np.zeros((3, CLASSES), np.int64), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="at least one class"):
        softmax_cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_torch(reduction, dtype, rng):
    pred = rng.standard_normal((4, 3)).astype(dtype)
    target = rng.standard_normal((4, 3)).astype(dtype)
    pred_t = torch.tensor(pred, requires_grad=True)
    expected = F.mse_loss(pred_t, torch.tensor(target), reduction=reduction)
    expected.sum().backward()
    loss, grad = mse_loss(pred, target, reduction=reduction)
    assert_close(loss, expected, dtype, "loss")
    assert_close(grad, pred_t.grad, dtype, "grad_pred")


def test_mse_errors():
    pred = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 3\), got \(3,\)"):
        mse_loss(pred, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"target.astype\(np.float32\)"):
        mse_loss(pred, np.zeros((2, 3)))
