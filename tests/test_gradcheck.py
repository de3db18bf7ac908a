"""Gradients against central finite differences in float64, with no torch involved.

The loss is ``sum(G_out * output) + sum(G_h * h_n)`` for fixed random G, so its gradient is exactly what
``backward(G_out, G_h)`` returns. Every scalar of every parameter, of the input and of h_0 is perturbed by +-STEP.
"""

import numpy as np
import pytest

import numbarnn

STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS = 3, 2, 2, 3, 2
STEP = 1e-6
# Central differences err by STEP^2 / 6 * |L'''| (~1e-12 for these O(1) losses) plus the rounding of the two loss
# evaluations, ~ eps * sum|terms of L| / STEP = 2.2e-16 * ~50 / 1e-6 ~ 1e-8. 2e-7 leaves a margin over both,
# and is still far below any real gradient error (a wrong term is O(0.01-1)).
ABSOLUTE_TOLERANCE = 2e-7


def loss(rnn, x, h_0, lengths, grad_output, grad_h_n):
    output, h_n = rnn(x, h_0, lengths=lengths)
    return float(np.sum(grad_output * output) + np.sum(grad_h_n * h_n))


def central_difference(array, evaluate):
    """d evaluate() / d array, by perturbing ``array`` in place one element at a time."""
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + STEP
        upper = evaluate()
        array[index] = original - STEP
        lower = evaluate()
        array[index] = original
        gradient[index] = (upper - lower) / (2 * STEP)
    return gradient


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", [None, [3, 2], [1, 3]], ids=["full", "sorted", "unsorted-with-1"])
def test_every_gradient_matches_central_differences(lengths, nonlinearity):
    rng = np.random.default_rng(7)
    rnn = numbarnn.RNN(INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS, nonlinearity, bidirectional=True, dtype=np.float64, seed=3)
    # Larger weights than the default init so that every term matters (no near-zero gradients to hide behind).
    for value in rnn.params.values():
        value[...] = rng.uniform(-1, 1, value.shape)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    h_0 = rng.standard_normal((2 * NUM_LAYERS, BATCH, HIDDEN_SIZE))
    grad_output = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN_SIZE))
    grad_h_n = rng.standard_normal(h_0.shape)

    rnn.train()
    rnn(x, h_0, lengths=lengths)
    analytic_x, analytic_h_0 = rnn.backward(grad_output, grad_h_n)
    analytic = {name: grad.copy() for name, grad in rnn.grads.items()}

    rnn.eval()
    evaluate = lambda: loss(rnn, x, h_0, lengths, grad_output, grad_h_n)  # noqa: E731
    numeric = {name: central_difference(rnn.params[name], evaluate) for name in rnn.params}
    numeric_x = central_difference(x, evaluate)
    numeric_h_0 = central_difference(h_0, evaluate)

    for name in rnn.params:
        np.testing.assert_allclose(analytic[name], numeric[name], rtol=0, atol=ABSOLUTE_TOLERANCE, err_msg=name)
        assert np.abs(analytic[name]).max() > 1e-3, f"{name}: a vanishing gradient would make the check empty"
    np.testing.assert_allclose(analytic_x, numeric_x, rtol=0, atol=ABSOLUTE_TOLERANCE, err_msg="input")
    np.testing.assert_allclose(analytic_h_0, numeric_h_0, rtol=0, atol=ABSOLUTE_TOLERANCE, err_msg="h_0")
    if lengths is not None:  # padded input positions do not influence the loss at all
        padded = np.arange(STEPS)[:, None] >= np.asarray(lengths)[None, :]
        np.testing.assert_array_equal(numeric_x[padded], 0)
        np.testing.assert_array_equal(analytic_x[padded], 0)
