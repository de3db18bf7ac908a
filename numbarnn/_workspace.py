"""Buffers a module reuses across calls of the same shape."""

import numpy as np


class Workspace:
    """Named arrays, reallocated only when the requested shape or dtype changes."""

    def __init__(self):
        self._arrays = {}
        self._constants = {}

    def get(self, name, shape, dtype):
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = np.empty(shape, dtype)
            self._arrays[name] = array
        return array

    def constant(self, name, key, make):
        """A value computed once per ``key`` (e.g. the step offsets of one (L, N))."""
        cached = self._constants.get(name)
        if cached is None or cached[0] != key:
            cached = (key, make())
            self._constants[name] = cached
        return cached[1]
