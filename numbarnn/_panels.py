"""Products against a weight matrix packed once per call into column panels: the recurrence's per-step product, and
the input projection and input gradient over a block's rows.

Each time step multiplies a few rows (a block's states, 1-64 of them) by the same (H, H) matrix. A BLAS call packs
that matrix again at every step and reaches ~82 GFLOP/s on one core at 32 x 256 x 256 (OpenBLAS 0.3.30, Zen 3), 65 %
of its large-GEMM rate. Here the matrix is packed once per call into panels of ``W`` columns (two SIMD vectors: 16
float32 or 8 float64, the panel's rows contiguous), and a register-tiled micro-kernel multiplies up to 6 rows by a
panel, its 12 accumulators held in vector registers over the whole inner dimension: 125-133 GFLOP/s for 16-64 rows
at H = 128-1024 (126 at 32 x 256 x 256), and 62 against BLAS's 45 for one row at H = 64 (measured on the project
machine, one thread, float32; float64 61-66 against BLAS's 42-56). Over a block's rows (the projections, 100-12800
rows) it also beats one thread of BLAS: 129-133 against 109-125 GFLOP/s.

numba cannot express a vector register, so the micro-kernel is an ``@intrinsic`` emitting LLVM vector IR
(``llvm.fma`` on <lanes x float>); LLVM lowers it to whatever SIMD the machine has.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit

VECTOR_BYTES = 32  # one AVX register; narrower machines get two (or four) registers per vector from LLVM
VECTORS_PER_PANEL = 2
MAX_ROWS = 6  # 6 rows x 2 vectors = 12 accumulators, plus 2 panel vectors and a broadcast: 15 of 16 AVX registers


def panel_width(dtype):
    """Columns per panel for ``dtype``: 16 float32 or 8 float64."""
    return VECTORS_PER_PANEL * VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_shape(rows, columns, dtype):
    """Shape of the panels holding a (rows, columns) matrix: (ceil(columns / W), rows, W)."""
    width = panel_width(dtype)
    return (-(-columns // width), rows, width)


def _make_tile(rows):
    """An intrinsic ``tile(a, a_offset, lda, panels, panel_offset, out, out_offset, ldo, k, columns)``:
    ``out[r, :columns] = a[r, :k] @ panel[:k, :columns]`` for ``rows`` rows, all offsets and strides in elements of
    the arrays' data; ``columns`` <= W, the panel's further columns (zero padding) are not stored."""

    @intrinsic
    def tile(typingctx, a, a_offset, lda, panels, panel_offset, out, out_offset, ldo, k, columns):
        dtype = a.dtype
        if dtype not in (types.float32, types.float64) or panels.dtype != dtype or out.dtype != dtype:
            return None

        def codegen(context, builder, signature, args):
            a_value, a_offset_value, lda_value, panels_value, panel_offset_value, out_value, out_offset_value, \
                ldo_value, k_value, columns_value = args
            element = context.get_value_type(dtype)
            lanes = VECTOR_BYTES // context.get_abi_sizeof(element)
            vector = ir.VectorType(element, lanes)
            index = k_value.type

            def constant(value):
                return ir.Constant(index, value)

            def data(position, value, offset):
                array = context.make_array(signature.args[position])(context, builder, value)
                return builder.gep(array.data, [offset])

            a_pointer = data(0, a_value, a_offset_value)
            panel_pointer = data(3, panels_value, panel_offset_value)
            out_pointer = data(5, out_value, out_offset_value)
            suffix = f"v{lanes}f{64 if dtype == types.float64 else 32}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 f"llvm.fma.{suffix}")
            zero = ir.Constant(vector, [ir.Constant(element, 0.0)] * lanes)
            broadcast_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            # allocas in the entry block: LLVM's mem2reg keeps them in registers
            accumulators = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS_PER_PANEL)]
                            for _ in range(rows)]
            row_starts = [builder.gep(a_pointer, [builder.mul(constant(r), lda_value)]) for r in range(rows)]
            with cgutils.for_range(builder, k_value) as loop:
                p = loop.index
                panel_row = builder.gep(panel_pointer, [builder.mul(p, constant(VECTORS_PER_PANEL * lanes))])
                panel_vectors = []
                for v in range(VECTORS_PER_PANEL):
                    address = builder.bitcast(builder.gep(panel_row, [constant(v * lanes)]), vector.as_pointer())
                    panel_vectors.append(builder.load(address, align=context.get_abi_sizeof(element)))
                for r in range(rows):
                    x = builder.load(builder.gep(row_starts[r], [p]))
                    x = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
                    x = builder.shuffle_vector(x, ir.Constant(vector, ir.Undefined), broadcast_mask)
                    for v in range(VECTORS_PER_PANEL):
                        accumulator = accumulators[r][v]
                        builder.store(builder.call(fma, [x, panel_vectors[v], builder.load(accumulator)]),
                                      accumulator)
            full = builder.icmp_signed("==", columns_value, constant(VECTORS_PER_PANEL * lanes))
            with builder.if_else(full, likely=True) as (whole_panel, partial_panel):
                with whole_panel:
                    for r in range(rows):
                        row = builder.gep(out_pointer, [builder.mul(constant(r), ldo_value)])
                        for v in range(VECTORS_PER_PANEL):
                            target = builder.bitcast(builder.gep(row, [constant(v * lanes)]), vector.as_pointer())
                            builder.store(builder.load(accumulators[r][v]), target,
                                          align=context.get_abi_sizeof(element))
                with partial_panel:  # the last panel of a matrix whose width is not a multiple of W
                    for r in range(rows):
                        row = builder.gep(out_pointer, [builder.mul(constant(r), ldo_value)])
                        for v in range(VECTORS_PER_PANEL):
                            values = builder.load(accumulators[r][v])
                            for lane in range(lanes):
                                column = v * lanes + lane
                                with builder.if_then(builder.icmp_signed("<", constant(column), columns_value)):
                                    builder.store(builder.extract_element(values, ir.Constant(ir.IntType(32), lane)),
                                                  builder.gep(row, [constant(column)]))
            return context.get_dummy_value()

        return types.none(a, a_offset, lda, panels, panel_offset, out, out_offset, ldo, k, columns), codegen

    return tile


_tile1, _tile2, _tile3, _tile4, _tile5, _tile6 = (_make_tile(rows) for rows in range(1, MAX_ROWS + 1))


@jit(inline=True)
def panels_in(flat, rows, columns, width):
    """The panels of a (rows, columns) matrix, (ceil(columns / width), rows, width), at the start of the 1-D buffer
    ``flat`` (sized for the largest matrix it serves)."""
    count = -(-columns // width)
    return flat[: count * rows * width].reshape((count, rows, width))


@jit(inline=True)
def pack_panels(source, panels):
    """Pack ``source`` (K, N), any memory layout (``w.T`` of a C-contiguous ``w`` included), into ``panels``
    (ceil(N / W), K, W); the columns past N are zero."""
    k, n = source.shape
    width = panels.shape[2]
    for q in range(panels.shape[0]):
        for p in range(k):
            for c in range(width):
                j = q * width + c
                panels[q, p, c] = source[p, j] if j < n else 0


@jit  # compiled once, not inlined into the four recurrence kernels: 2.6 s less cold compile, no measurable cost
def panel_matmul(a, panels, out):
    """``out[:] = a @ B`` for C-contiguous ``a`` (M, K) and ``out`` (M, N) and ``B`` (K, N) packed by
    :func:`pack_panels`; ``out`` must not overlap ``a``."""
    m, k = a.shape
    n = out.shape[1]
    width = panels.shape[2]
    if m == 0:
        return
    for q in range(panels.shape[0]):
        columns = min(width, n - q * width)
        panel = q * k * width
        i = 0
        while m - i >= 6:
            _tile6(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
            i += 6
        rest = m - i
        if rest == 1:
            _tile1(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
        elif rest == 2:
            _tile2(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
        elif rest == 3:
            _tile3(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
        elif rest == 4:
            _tile4(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
        elif rest == 5:
            _tile5(a, i * k, k, panels, panel, out, i * n + q * width, n, k, columns)
