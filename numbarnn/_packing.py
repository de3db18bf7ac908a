"""Moving rows between the user's (L, N, F) layout and the kernels' packed rows (see :mod:`numbarnn._workspace`)."""

from ._jit import jit


@jit
def pack(source, packing, rows):
    """``rows[block_rows[b] + step_offsets[b, t] + i] = source[t, order[block_batch[b] + i]]`` for the sequences of
    block ``b`` still running at step ``t``. ``source`` is (L, N, F) in any memory layout (a batch_first input
    arrives as a transposed view)."""
    for b in range(packing.block_batch.size - 1):
        base, first, offsets = packing.block_rows[b], packing.block_batch[b], packing.step_offsets[b]
        for t in range(offsets.size - 1):
            r0 = base + offsets[t]
            for i in range(offsets[t + 1] - offsets[t]):
                row = source[t, packing.order[first + i]]
                for j in range(row.size):
                    rows[r0 + i, j] = row[j]


@jit
def unpack(rows, packing, target):
    """Inverse of :func:`pack`: scatter rows back to ``target`` (L, N, F); positions past a sequence's end get 0."""
    target[:] = 0
    for b in range(packing.block_batch.size - 1):
        base, first, offsets = packing.block_rows[b], packing.block_batch[b], packing.step_offsets[b]
        for t in range(offsets.size - 1):
            r0 = base + offsets[t]
            for i in range(offsets[t + 1] - offsets[t]):
                row = target[t, packing.order[first + i]]
                for j in range(row.size):
                    row[j] = rows[r0 + i, j]
