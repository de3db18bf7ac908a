"""Moving rows between the user's (L, N, F) layout and the kernels' packed, length-sorted rows."""

from ._jit import jit


@jit
def pack(source, order, step_offsets, packed):
    """``packed[step_offsets[t] + i] = source[t, order[i]]`` for the sequences still running at step ``t``.

    ``source`` is (L, N, F) in any memory layout (a batch_first input arrives as a transposed view).
    """
    for t in range(step_offsets.size - 1):
        r0 = step_offsets[t]
        for i in range(step_offsets[t + 1] - r0):
            row = source[t, order[i]]
            for j in range(row.size):
                packed[r0 + i, j] = row[j]


@jit
def unpack(packed, order, step_offsets, target):
    """Inverse of :func:`pack`: scatter rows back to ``target`` (L, N, F); positions past a sequence's end get 0."""
    target[:] = 0
    for t in range(step_offsets.size - 1):
        r0 = step_offsets[t]
        for i in range(step_offsets[t + 1] - r0):
            row = target[t, order[i]]
            for j in range(row.size):
                row[j] = packed[r0 + i, j]
