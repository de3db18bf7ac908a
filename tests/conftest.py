"""pytest fixtures shared by the test modules (plain helper functions live in ``helpers.py``)."""

import numpy as np
import pytest

import helpers  # noqa: F401  (sets torch's thread count for the whole session before any test runs)


@pytest.fixture
def rng():
    """A fresh generator with a fixed seed: every test sees the same data on every run."""
    return np.random.default_rng(20240601)
