"""Products against a weight matrix packed once per call into column panels: the recurrence's per-step product, and
the input projection and input gradient over a block's rows.

Each time step multiplies a few rows (a block's states, 1-64 of them) by the same (H, H) matrix. A BLAS call packs
that matrix again at every step and reaches ~82 GFLOP/s on one core at 32 x 256 x 256 (OpenBLAS 0.3.30, Zen 3), 65 %
of its large-GEMM rate. Here the matrix is packed once per call into panels of ``W`` columns (two SIMD vectors, the
panel's rows contiguous), and a register-tiled micro-kernel multiplies a tile of rows by a panel, its accumulators
held in vector registers over the whole inner dimension: on AVX2 (6 rows x 2 vectors, W = 16 float32 or 8 float64)
125-133 GFLOP/s for 16-64 rows at H = 128-1024 (126 at 32 x 256 x 256), and 62 against BLAS's 45 for one row at
H = 64 (measured on the project machine, one thread, float32; float64 61-66 against BLAS's 42-56).

The tile follows the instruction set numba compiles for (:func:`numbarnn._isa.tile`: 512-bit vectors and 12 rows with
AVX-512, 256-bit and 6 rows with AVX2/AVX, 128-bit with SSE2 and NEON), so the panel width ``W`` does too: buffers
are sized with :func:`panel_shape`, and the kernels read ``W`` from the panels' shape.

Over many rows (the input projection and input gradient, 100-100,000 rows) the rows are taken in blocks, as BLIS and
GotoBLAS block theirs: each block's slice of A stays in the L2 cache while every panel passes over it. Unblocked,
every panel streamed all of A again, and once A outgrew the L2 the product ran at the L3's bandwidth (on Zen 4,
K = N = 256: 113 GFLOP/s at M = 256, 49 at M = 12,800). The block size comes from the host's L2 size
(:func:`numbarnn._isa.caches`) and changes only the speed, never the results (every output element is the same
K-long sum whatever the blocks), so code cached on a host with another L2 is still correct.

When the panels outgrow the caches (a gated cell's per-step product at H = 1024: W_hh^T is 1024 x 4096, 16 MiB in
float32), every step streams them from memory, and the tiles over a panel took that stream all at once: the first
tile waited for the panel's lines while the others found them in the L2. So each tile over a panel also prefetches
its share of the next panel into the L2 (``prefetcht1`` on x86), which spreads the stream over the whole panel's
work. Measured on the project machine (Zen 3, one thread, float32; a busy shared host, so process CPU time, best of 4
processes): 32 x 1024 x 4096 59 -> 68 GFLOP/s, 64 x 1024 x 4096 64 -> 75, 32 x 1024 x 8192 56 -> 64, the input
projection 3200 x 512 x 4096 78 -> 86; 32 x 1024 x 1024 (4 MiB) 87 -> 85, within the noise. Panels that all fit in
the L2 stay there between uses and are not prefetched.

An output larger than the last-level cache (a gated cell's input projection over a long batch: 52 MB for the medium
LSTM's) is written with non-temporal stores, which send each line to memory without first reading it into the caches
and leave the L2 to A and the panels (:func:`_streams`; 105-106 -> 113 GFLOP/s at 12,800 x 256 x 1,024). The reader
of such an output finds it in memory either way. Smaller outputs, which their reader may still find in a cache, and
the weight gradients, which add into their output, are written as before.

The backward's weight gradients ``dz.T @ inputs`` (M = G * H rows, K = a block's rows) run on their own micro-kernels
(:func:`panel_matmul_transposed`): they read A = dz.T from dz as it is, a step's rows side by side, and add into the
gradient, while the inputs are packed in chunks of K (GotoBLAS's K blocking) whose panels fill the L2. As BLAS GEMMs a
third of their time went to BLAS's copies of both operands.

numba cannot express a vector register, so the micro-kernel is an ``@intrinsic`` emitting LLVM vector IR
(``llvm.fmuladd`` on <lanes x float>): a fused multiply-add where the target has one, else a vector multiply and add.
(``llvm.fma`` must be fused, and on a target without FMA LLVM lowers it to one libm ``fmaf`` call per lane: built
with ``NUMBA_CPU_NAME=generic``, the small benchmark's forward took 280 ms against 5.7 ms host-tuned; with
``llvm.fmuladd``, 15-16 ms against 5.5.)
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _isa
from ._jit import JIT_OPTIONS, jit
from ._views import row_span, span_view

# Decided once per process, by the owner of the choice (numbarnn._isa): a pure function of numba's target, so code
# numba loads from its cache was compiled for this very tile (see numbarnn._isa).
_TILE = _isa.tile()
TILE_ROWS = _TILE.rows
_VECTOR_BYTES = _TILE.vector_bits // 8
_PANEL_BYTES = _TILE.vectors * _VECTOR_BYTES  # one panel row: W elements of any dtype
# Rows of A per block: the block's rows take an eighth of the L2, which leaves the rest to B (256 KiB at
# K = N = 256 float32) while every panel passes over the block, and to the output rows and prefetched lines. Measured
# on the project machine (Zen 3, 512 KiB L2, one thread, float32, M = 256-100,000; a busy shared machine, so thread
# CPU time, fastest of repeats): an eighth kept K = N = 256 at 83-99 GFLOP/s and 512 x 1024 at 90-97; a quarter gave
# 74-87 at K = N = 256, a half 77-83 at 512 x 1024 (M >= 1024), a sixteenth 66-73 at K = N = 256. Slicing K as well,
# so that a panel's slice stays in half the L1, was slower at large M (79 and 75 against 88 and 90).
_L2_BYTES = _isa.caches().l2
_A_BLOCK_BYTES = _L2_BYTES // 8
# Outputs larger than this are streamed to memory (_streams); 0: never (the host does not report its last-level cache)
_STREAM_OUTPUT_BYTES = _isa.caches().last_level or 0
# llvm.prefetch's (read, locality, data cache) arguments: a read, kept in the outer caches (prefetcht1 on x86)
_PREFETCH_READ_L2 = tuple(ir.Constant(ir.IntType(32), value) for value in (0, 2, 1))
CACHE_LINE_BYTES = 64


def panel_width(dtype):
    """Columns per panel for ``dtype`` on this process's instruction set (AVX2: 16 float32 or 8 float64)."""
    return _TILE.panel_width(dtype)


def panel_shape(rows, columns, dtype):
    """Shape of the panels holding a (rows, columns) matrix: (ceil(columns / W), rows, W)."""
    width = panel_width(dtype)
    return (-(-columns // width), rows, width)


# A product whose inner dimension is long (the backward's weight gradients, dz.T @ inputs: K is a block's rows, up to
# ~10^5) packs and multiplies B in chunks of K, as GotoBLAS blocks K, so that a chunk's panels stay in the L2 while
# every tile of A's rows passes over them. Unchunked, B (K x N) outgrew the caches and each tile streamed it again
# (6400 x 1024 x 256 float32: 77 GFLOP/s against BLAS's 85). Chunks the size of the L2: each chunk costs a load, an
# add and a store of every output element and a page per step of A.T, so longer chunks paid where the output is
# large (Zen 4, one thread, 1 MiB L2; M x K x N: 4096 x 6400 x 1024 93 GFLOP/s with a half of the L2, 101 with all
# of it, BLAS 101; 128 x 1600 x 128 109 / 108, BLAS 86); the medium_bi backward (2 threads, before the tiles added
# into the gradient) took 180 ms with chunks of the L2, 180-186 with a half, 187-192 a quarter, 195 an eighth.
_CHUNK_BYTES = _L2_BYTES


def chunk_elements(columns, dtype):
    """Elements of a 1-D buffer for the chunks of a (K, columns) B (:func:`chunk_rows`): the L2's size, and at least
    one padded row."""
    dtype = np.dtype(dtype)
    width = panel_width(dtype)
    padded = -(-columns // width) * width
    return max(_CHUNK_BYTES // dtype.itemsize // padded, 1) * padded


def _micro_kernel(module, element, index, rows, float64, panel_count=None, split=1, transposed=False):
    """The LLVM function ``tile(a, lda, panel, out, ldo, k, columns)`` for ``rows`` rows (pointers to elements,
    strides in elements): ``out[r, :columns] = a[r, :k] @ panel[:k, :columns]``, defined in ``module`` once. With
    ``transposed``, ``a`` is read as the transpose of a C-contiguous matrix: ``a[r, p]`` is at ``a + p * lda + r``
    (each step's rows are side by side, one pointer moving ``lda`` per step; a run-time stride for both layouts took
    one register more, which the 16 general registers did not have: a stack access in every tile's loop), and the
    product is added into ``out`` (``out[r, :columns] +=``): its one use accumulates weight gradients over chunks of
    K, where overwriting a product buffer and adding it into the gradients cost a pass over the whole output per
    chunk (4096 x 6400 x 1024: 88 GFLOP/s against BLAS's 101).

    With a ``panel_count`` (one row only), the ``panel_count`` consecutive whole panels from ``panel`` at once:
    ``out[0, :panel_count * W]``, ``columns`` unused, each panel as ``split`` times as many vectors of 1 / ``split``
    the width (see :func:`_row_split`). One row by one panel is only ``vectors`` chains of dependent fused
    multiply-adds, each waiting for the previous one's latency (4 cycles on Zen 3, 2 units): a 1 x 64 x 256 product
    ran at 37 GFLOP/s. Every output element is the same K-long sum in the same order as in the one-panel tile, whatever
    the vectors' width, so results do not depend on which kernel computed them.

    A function of its own, never inlined: inlined into the product's loops, the tile's pointers competed with the
    loops' own values for the 16 general registers, and LLVM reloaded 10-15 of them from the stack on every step of
    the inner loop (the 6-row AVX2 loop: 52 instructions, 15 stack accesses; now 31 and none). Zen 3's three load
    ports hid those reloads (same speed measured either way), a core with two (Intel's, up to Ice Lake) would not; a
    call per tile costs a few nanoseconds against K steps of work.
    """
    lanes = _TILE.lanes(np.float64 if float64 else np.float32) // split
    vectors = _TILE.vectors * split
    name = f"numbarnn_panel_tile_{_TILE.isa}_{'f64' if float64 else 'f32'}_{rows}x{vectors}x{lanes}"
    if transposed:
        name += "_at"
    if panel_count is not None:
        name += f"_{panel_count}_panels"
    pointer = element.as_pointer()
    function_type = ir.FunctionType(
        ir.VoidType(), [pointer, index, pointer, pointer, index, index, index, pointer, index, index]
    )
    function = cgutils.get_or_insert_function(module, function_type, name)
    if not function.is_declaration:
        return function
    function.linkage = "internal"
    function.attributes.add("noinline")
    function.attributes.add("nounwind")
    a_pointer, lda, panel_pointer, out_pointer, ldo, k, columns, prefetch_pointer, prefetch_rows, stream = function.args
    for argument in (a_pointer, panel_pointer, out_pointer):  # out overlaps neither a nor the panels
        argument.add_attribute("noalias")
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    vector = ir.VectorType(element, lanes)
    align = 8 if float64 else 4

    def constant(value):
        return ir.Constant(index, value)

    def lane_index(lane):
        return ir.Constant(ir.IntType(32), lane)

    fmuladd = cgutils.get_or_insert_function(
        module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{lanes}f{64 if float64 else 32}"
    )
    zero = ir.Constant(vector, [ir.Constant(element, 0.0)] * lanes)
    broadcast_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    # allocas in the entry block: LLVM's mem2reg keeps them in registers
    if panel_count is not None:  # one row, panel_count panels: their accumulators side by side as one row's
        accumulators = [[cgutils.alloca_once_value(builder, zero) for _ in range(panel_count * vectors)]]
        panel_starts = [
            builder.gep(panel_pointer, [builder.mul(constant(q * vectors * lanes), k)]) for q in range(panel_count)
        ]
    else:
        accumulators = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]
        panel_starts = [panel_pointer]
    if not transposed:
        row_starts = [builder.gep(a_pointer, [builder.mul(constant(r), lda)]) for r in range(rows)]
    prefetch = cgutils.get_or_insert_function(
        module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), *[ir.IntType(32)] * 3]), "llvm.prefetch"
    )

    def step(p):
        """The tile's multiply-adds for row ``p`` of the panels."""
        panel_vectors = []
        for start in panel_starts:
            panel_row = builder.gep(start, [builder.mul(p, constant(vectors * lanes))])
            for v in range(vectors):
                address = builder.bitcast(builder.gep(panel_row, [constant(v * lanes)]), vector.as_pointer())
                panel_vectors.append(builder.load(address, align=align))
        step_start = builder.gep(a_pointer, [builder.mul(p, lda)]) if transposed else None
        for r in range(rows):
            x = builder.load(builder.gep(step_start, [constant(r)]) if transposed else builder.gep(row_starts[r], [p]))
            x = builder.insert_element(ir.Constant(vector, ir.Undefined), x, lane_index(0))
            x = builder.shuffle_vector(x, ir.Constant(vector, ir.Undefined), broadcast_mask)
            for v, panel_vector in enumerate(panel_vectors):
                accumulator = accumulators[r][v]
                builder.store(builder.call(fmuladd, [x, panel_vector, builder.load(accumulator)]), accumulator)

    # the first prefetch_rows steps also fetch one panel row each from prefetch_pointer on (see panel_matmul)
    byte_pointer = ir.IntType(8).as_pointer()
    prefetch_row_bytes = constant(vectors * lanes * (8 if float64 else 4))
    prefetch_bytes = builder.bitcast(prefetch_pointer, byte_pointer)
    prefetched = builder.select(builder.icmp_signed("<", prefetch_rows, k), prefetch_rows, k)
    with cgutils.for_range(builder, prefetched) as loop:
        row = builder.gep(prefetch_bytes, [builder.mul(loop.index, prefetch_row_bytes)])
        for line in range(0, _PANEL_BYTES, CACHE_LINE_BYTES):
            builder.call(prefetch, [builder.gep(row, [constant(line)]), *_PREFETCH_READ_L2])
        step(loop.index)
    _keep_rolled(module, loop.index, f"{name}.prefetching")
    with cgutils.for_range_slice(builder, prefetched, k, constant(1), inc=True) as (p, _):
        step(p)
    _keep_rolled(module, p, f"{name}.steps")
    out_rows = [builder.gep(out_pointer, [builder.mul(constant(r), ldo)]) for r in range(rows)]

    def total(accumulator, target):
        """What a whole vector of ``out`` receives: the sum, added to what ``out`` holds when transposed."""
        value = builder.load(accumulator)
        return builder.fadd(builder.load(target, align=align), value) if transposed else value

    if panel_count is not None:  # whole panels only
        for v, accumulator in enumerate(accumulators[0]):
            target = builder.bitcast(builder.gep(out_rows[0], [constant(v * lanes)]), vector.as_pointer())
            builder.store(total(accumulator, target), target, align=align)
        builder.ret_void()
        return function

    def store_whole_panel(streaming):
        for r in range(rows):
            for v in range(vectors):
                target = builder.bitcast(builder.gep(out_rows[r], [constant(v * lanes)]), vector.as_pointer())
                if streaming:  # aligned to the vector (panel_matmul checked): what a non-temporal store requires
                    builder.store(total(accumulators[r][v], target), target, align=vector_bytes).set_metadata(
                        "nontemporal", non_temporal
                    )
                else:
                    builder.store(total(accumulators[r][v], target), target, align=align)

    vector_bytes = lanes * (8 if float64 else 4)
    non_temporal = module.add_metadata([ir.Constant(ir.IntType(32), 1)])
    full = builder.icmp_signed("==", columns, constant(vectors * lanes))
    with builder.if_else(full, likely=True) as (whole_panel, partial_panel):
        with whole_panel:
            if transposed:  # adds into out, which it reads: never streamed
                store_whole_panel(False)
            else:
                with builder.if_else(builder.icmp_signed("!=", stream, constant(0))) as (streamed, cached):
                    with streamed:
                        store_whole_panel(True)
                    with cached:
                        store_whole_panel(False)
        with partial_panel:  # the last panel of a matrix whose width is not a multiple of W: masked stores
            masked_store = _masked_store(module, vector)
            columns_splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(ir.VectorType(index, lanes), ir.Undefined), columns, lane_index(0)),
                ir.Constant(ir.VectorType(index, lanes), ir.Undefined),
                broadcast_mask,
            )
            for v in range(vectors):
                lane_columns = ir.Constant(ir.VectorType(index, lanes), [v * lanes + lane for lane in range(lanes)])
                mask = builder.icmp_signed("<", lane_columns, columns_splat)
                for r in range(rows):
                    target = builder.bitcast(builder.gep(out_rows[r], [constant(v * lanes)]), vector.as_pointer())
                    value = builder.load(accumulators[r][v])
                    if transposed:
                        held = builder.call(
                            _masked_load(module, vector), [target, ir.Constant(ir.IntType(32), align), mask, zero]
                        )
                        value = builder.fadd(held, value)
                    builder.call(masked_store, [value, target, ir.Constant(ir.IntType(32), align), mask])
    builder.ret_void()
    return function


def _masked_store(module, vector):
    """``llvm.masked.store`` for ``vector``: stores the lanes whose mask bit is set, and touches no memory for the
    others (so a store past the end of a row is never made). x86 compiles it to one masked move (AVX-512) or
    ``vmaskmovps`` (AVX); a target without masked moves gets one conditional scalar store per lane.

    The partial panel's stores were a branch and a scalar store per lane, written out in the IR: the 12-row AVX-512
    tile had 3,165 instructions (1,072 of them stack accesses; 271 and 5 with masked stores), the 6-row AVX2 one 675
    (176), and every kernel that links the tiles optimised them again on a cold compile: on Zen 4 the first inference
    call took 19.5 s (7.7 s with masked stores) and the first training step 16.4 s more (8.8). The masked stores are
    faster too: 64 x 17 x 17 20 -> 33 GFLOP/s, 1000 x 40 x 40 59 -> 68 (Zen 4, one thread, float32)."""
    element = "f64" if isinstance(vector.element, ir.DoubleType) else "f32"
    mask = ir.VectorType(ir.IntType(1), vector.count)
    return cgutils.get_or_insert_function(  # LLVM's name for it (pointers are opaque: "p0")
        module,
        ir.FunctionType(ir.VoidType(), [vector, vector.as_pointer(), ir.IntType(32), mask]),
        f"llvm.masked.store.v{vector.count}{element}.p0",
    )


def _masked_load(module, vector):
    """``llvm.masked.load`` for ``vector``: loads the lanes whose mask bit is set and gives the pass-through value's
    in the others, touching no memory for them (the partial panel's output row, which an accumulating tile adds
    into)."""
    element = "f64" if isinstance(vector.element, ir.DoubleType) else "f32"
    mask = ir.VectorType(ir.IntType(1), vector.count)
    return cgutils.get_or_insert_function(
        module,
        ir.FunctionType(vector, [vector.as_pointer(), ir.IntType(32), mask, vector]),
        f"llvm.masked.load.v{vector.count}{element}.p0",
    )


def _keep_rolled(module, index, name):
    """Tell LLVM not to unroll the loop whose index phi is ``index`` (a loop of ``cgutils.for_range`` or
    ``cgutils.for_range_slice``, whose last incoming block closes the loop).

    The tile's loop body already holds ``rows x vectors`` independent multiply-adds. Unrolled twice (as LLVM did for
    znver4), the two steps' broadcasts of A, scheduled together, needed more than the 32 vector registers: the 12-row
    AVX-512 loop spilled and reloaded ~30 zmm registers per step pair, and ran at 77-95 GFLOP/s where the AVX2 tile
    built for the same Zen 4 core ran at 98-113."""
    latch = index.incomings[-1][1]
    # A loop ID is a metadata node whose first operand is itself (LangRef, "llvm.loop"); a unique placeholder first,
    # so that add_metadata's cache does not hand out another loop's node.
    unroll_disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([ir.MetaDataString(module, f"{name}.loop"), unroll_disable])
    loop_id.operands = (loop_id, unroll_disable)
    latch.terminator.set_metadata("llvm.loop", loop_id)


def _call_by_count(builder, count, kernels, arguments, name):
    """Emit ``kernels[count - 1](*arguments)``: a switch on the run-time ``count`` (1 to ``len(kernels)``; any other
    count calls nothing), one micro-kernel per tile height or panel count."""
    done = builder.append_basic_block(f"{name}.done")
    switch = builder.switch(count, done)
    for case, kernel in enumerate(kernels, start=1):
        block = builder.append_basic_block(f"{name}{case}")
        switch.add_case(ir.Constant(count.type, case), block)
        builder.position_at_end(block)
        builder.call(kernel, arguments)
        builder.branch(done)
    builder.position_at_end(done)


def _element_pointer(context, builder, array_type, value, offset):
    """A pointer to element ``offset`` of the data of ``value``, an array of numba type ``array_type``."""
    array = context.make_array(array_type)(context, builder, value)
    return builder.gep(array.data, [offset])


@intrinsic
def _tile(
    typingctx,
    rows,
    a,
    a_offset,
    lda,
    panels,
    panel_offset,
    out,
    out_offset,
    ldo,
    k,
    columns,
    prefetch_offset,
    prefetch_rows,
    stream,
    transposed,
):
    """``tile(rows, a, a_offset, lda, panels, panel_offset, out, out_offset, ldo, k, columns, prefetch_offset,
    prefetch_rows, stream, transposed)``: ``out[r, :columns] = a[r, :k] @ panel[:k, :columns]`` for ``rows`` (1 to
    TILE_ROWS) rows, all offsets and strides in elements of the arrays' data (unless ``transposed`` is None,
    ``a[r, p]`` is at ``a_offset + p * lda + r``: decided while typing); ``columns`` <= W, the panel's further
    columns (zero padding) are not stored. Meanwhile ``prefetch_rows`` panel rows of ``panels`` from
    ``prefetch_offset`` on are prefetched. With a nonzero ``stream`` a whole panel's rows of ``out``, which must then
    start on a vector boundary, are written with non-temporal stores (see :func:`_streams`). One micro-kernel per row
    count, chosen by a switch."""
    dtype = a.dtype
    if dtype not in (types.float32, types.float64) or panels.dtype != dtype or out.dtype != dtype:
        return None
    if not isinstance(stream, types.Boolean):
        return None
    a_transposed = not isinstance(transposed, types.NoneType)

    def codegen(context, builder, signature, args):
        (
            rows_value,
            a_value,
            a_offset,
            lda_value,
            panels_value,
            panel_offset,
            out_value,
            out_offset,
            ldo_value,
            k_value,
            columns_value,
            prefetch_offset,
            prefetch_rows,
            stream_value,
            _,
        ) = args

        def data(position, value, offset):
            return _element_pointer(context, builder, signature.args[position], value, offset)

        pointers = data(1, a_value, a_offset), data(4, panels_value, panel_offset), data(6, out_value, out_offset)
        prefetch_pointer = data(4, panels_value, prefetch_offset)
        element = context.get_value_type(dtype)
        kernels = [
            _micro_kernel(builder.module, element, k_value.type, count, dtype == types.float64, transposed=a_transposed)
            for count in range(1, TILE_ROWS + 1)
        ]
        arguments = [
            pointers[0],
            lda_value,
            pointers[1],
            pointers[2],
            ldo_value,
            k_value,
            columns_value,
            prefetch_pointer,
            prefetch_rows,
            builder.zext(stream_value, k_value.type),  # a bool (i1)
        ]
        _call_by_count(builder, rows_value, kernels, arguments, "tile.rows")
        return context.get_dummy_value()

    signature = types.none(
        rows,
        a,
        a_offset,
        lda,
        panels,
        panel_offset,
        out,
        out_offset,
        ldo,
        k,
        columns,
        prefetch_offset,
        prefetch_rows,
        stream,
        transposed,
    )
    return signature, codegen


# Panels one row multiplies at once: 4 x 2 vectors = 8 independent chains, enough to keep two fused multiply-add
# units with a latency of 4 cycles busy (Zen 3 and 4; Intel's since Skylake), and 8 of the 16 vector registers.
ROW_PANELS = 4
ROW_CHAINS = ROW_PANELS * _TILE.vectors


def _row_split(count):
    """How many narrower vectors a one-row product of ``count`` whole panels splits each of its vectors into: halved
    (down to 256 bits) while it has fewer than ROW_CHAINS accumulators. One row is latency-bound: on AVX-512 a
    64-unit RNN's two panels gave four chains of 512-bit multiply-adds, and a 1 x 64 x 64 product took 146 ns on Zen 4
    (whose units execute a 512-bit multiply-add as two 256-bit halves) where the AVX2 build's eight 256-bit chains took
    102 ns. Where two 512-bit units exist (Intel's), four 512-bit and eight 256-bit chains move the same lanes per
    cycle."""
    split = 1
    while count * _TILE.vectors * split < ROW_CHAINS and _TILE.vector_bits // split > 256:
        split *= 2
    return split


@intrinsic
def _row_tile(typingctx, count, a, a_offset, lda, panels, panel_offset, out, out_offset, k, transposed):
    """``out[0, :count * W] = a[0, :k] @`` the ``count`` (1 to ROW_PANELS) whole panels from ``panel_offset``
    (offsets in elements of the arrays' data; unless ``transposed`` is None, ``a[0, p]`` is at ``a_offset + p *
    lda``, else ``lda`` is unused), their accumulators side by side. One micro-kernel per count, chosen by
    a switch: the panels left after whole groups of ROW_PANELS go in one call too, not one by one (on AVX-512 a
    64-unit state is two panels, which one by one ran two chains of dependent multiply-adds at a time)."""
    dtype = a.dtype
    if dtype not in (types.float32, types.float64) or panels.dtype != dtype or out.dtype != dtype:
        return None
    a_transposed = not isinstance(transposed, types.NoneType)

    def codegen(context, builder, signature, args):
        count_value, a_value, a_offset, lda_value, panels_value, panel_offset, out_value, out_offset, k_value, _ = args

        def data(position, value, offset):
            return _element_pointer(context, builder, signature.args[position], value, offset)

        element, float64 = context.get_value_type(dtype), dtype == types.float64
        panel_pointer = data(4, panels_value, panel_offset)
        no_rows = ir.Constant(k_value.type, 0)
        kernels = [
            _micro_kernel(
                builder.module, element, k_value.type, 1, float64, panel_count, _row_split(panel_count), a_transposed
            )
            for panel_count in range(1, ROW_PANELS + 1)
        ]
        arguments = [
            data(1, a_value, a_offset),
            lda_value,
            panel_pointer,
            data(6, out_value, out_offset),
            k_value,
            k_value,
            k_value,  # columns: whole panels only, unread
            panel_pointer,  # nothing prefetched
            no_rows,
            no_rows,  # not streamed (its whole-panel stores are not the streaming branch's)
        ]
        _call_by_count(builder, count_value, kernels, arguments, "row_tile.panels")
        return context.get_dummy_value()

    return types.none(count, a, a_offset, lda, panels, panel_offset, out, out_offset, k, transposed), codegen


@jit(inline=True)
def new_panels(rows, columns, like):
    """Uninitialised panels for a (rows, columns) matrix of ``like``'s dtype: :func:`panel_shape` inside a kernel."""
    width = _PANEL_BYTES // like.itemsize
    return np.empty((-(-columns // width), rows, width), like.dtype)


def empty_panels(shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` for panels (:func:`panel_shape`, or several such buffers
    side by side), its data starting on a cache line, so that no vector load of a panel spans two lines.

    NumPy aligns its arrays to 16 bytes, and half of a panel's 512-bit loads then spanned two cache lines: a
    one-row product (latency- and load-bound) of 1 x 64 x 128 took 310-320 ns from such panels against 195-200 ns
    from panels on a cache line (Zen 4, AVX-512); every panel and panel row is a whole number of vectors, so
    aligning the start aligns every load."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + CACHE_LINE_BYTES, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE_BYTES
    return raw[start : start + size].view(dtype).reshape(shape)


@jit(inline=True)
def panels_in(flat, rows, columns, width):
    """The panels of a (rows, columns) matrix, (ceil(columns / width), rows, width), at the start of the 1-D buffer
    ``flat`` (sized for the largest matrix it serves)."""
    count = -(-columns // width)
    return span_view(flat, 0, (count, rows, width))


@jit(inline=True)
def chunk_rows(flat, columns, like):
    """Rows of a (K, columns) matrix of ``like``'s dtype whose panels fit in the 1-D buffer ``flat``
    (:func:`chunk_elements`)."""
    width = _PANEL_BYTES // like.itemsize
    return flat.size // (-(-columns // width) * width)


@jit(inline=True)
def chunk_panels(flat, rows, columns, like):
    """:func:`panels_in` of ``flat`` for ``rows`` (at most :func:`chunk_rows`) rows of ``columns`` columns."""
    return panels_in(flat, rows, columns, _PANEL_BYTES // like.itemsize)


@jit(inline=True)
def pack_panels_part(source, panels, part, parts):
    """Pack part ``part`` of ``parts`` of ``source``'s panels (:func:`pack_panels`): the parts are nearly equal ranges
    of panels, so that ``parts`` threads share one packing."""
    count = panels.shape[0]
    pack_panels(source, panels, count * part // parts, count * (part + 1) // parts)


# The masks of an 8 x 8 float32 transpose in three rounds of two-vector shuffles (indices >= 8 pick from the second
# vector), which x86 compiles to unpcklps/unpckhps, shufps and vperm2f128 (other targets to their own shuffles).
_INTERLEAVE_LOW, _INTERLEAVE_HIGH = (0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)
_PAIRS_LOW, _PAIRS_HIGH = (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)
_HALVES_LOW, _HALVES_HIGH = (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)


@intrinsic
def _transpose_8x8(typingctx, source, source_byte, column_bytes, panels, panel_offset, panel_row):
    """``panels.flat[panel_offset + a * panel_row + b]`` = the element at byte ``source_byte + b * column_bytes +
    a * itemsize`` of ``source``'s data, for ``a, b < 8``: an 8 x 8 block of a matrix whose first axis is contiguous
    (``w.T`` of a C-contiguous ``w``). float32: 8 vector loads, transposed in registers, 8 vector stores; float64
    (not on a hot path): element by element."""
    dtype = source.dtype
    if dtype not in (types.float32, types.float64) or panels.dtype != dtype:
        return None

    def codegen(context, builder, signature, args):
        source_value, first_byte, column_stride, panels_value, offset, row_stride = args
        element = context.get_value_type(dtype)
        data = context.make_array(signature.args[0])(context, builder, source_value).data
        data = builder.bitcast(data, ir.IntType(8).as_pointer())

        def constant(value):
            return ir.Constant(first_byte.type, value)

        def column_start(b):
            return builder.gep(data, [builder.add(first_byte, builder.mul(column_stride, constant(b)))])

        def row_start(a):
            element_offset = builder.add(offset, builder.mul(row_stride, constant(a)))
            return _element_pointer(context, builder, signature.args[3], panels_value, element_offset)

        if dtype == types.float64:
            rows = [row_start(a) for a in range(8)]
            for b in range(8):
                column = builder.bitcast(column_start(b), element.as_pointer())
                for a in range(8):
                    value = builder.load(builder.gep(column, [constant(a)]))
                    builder.store(value, builder.gep(rows[a], [constant(b)]))
            return context.get_dummy_value()
        vector = ir.VectorType(element, 8)

        def shuffle(x, y, mask):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 8), list(mask)))

        columns = [builder.load(builder.bitcast(column_start(b), vector.as_pointer()), align=4) for b in range(8)]
        pairs = []
        for b in range(0, 8, 2):
            pairs += [shuffle(columns[b], columns[b + 1], mask) for mask in (_INTERLEAVE_LOW, _INTERLEAVE_HIGH)]
        quads = []
        for first, second in ((0, 2), (1, 3), (4, 6), (5, 7)):
            quads += [shuffle(pairs[first], pairs[second], mask) for mask in (_PAIRS_LOW, _PAIRS_HIGH)]
        rows = [shuffle(quads[a], quads[a + 4], _HALVES_LOW) for a in range(4)]
        rows += [shuffle(quads[a], quads[a + 4], _HALVES_HIGH) for a in range(4)]
        for a, row in enumerate(rows):
            builder.store(row, builder.bitcast(row_start(a), vector.as_pointer()), align=4)
        return context.get_dummy_value()

    signature = types.none(source, source_byte, column_bytes, panels, panel_offset, panel_row)
    return signature, codegen


def pack_transposed_blocks(source, panels, first, last):
    """Pack panels ``first:last`` (whole panels) of a Fortran-layout ``source`` (``w.T`` of a C-contiguous ``w``)
    in 8 x 8 blocks; returns the panel where the other copies take over: ``last``, or ``first`` for a source of
    another layout, whose blocks this does not copy."""


@overload(pack_transposed_blocks, jit_options=JIT_OPTIONS)
def _pack_transposed_blocks(source, panels, first, last):
    # Compiled only for the layout that uses it: in a C-contiguous source's specialisation (the backward packs W_hh
    # as it is) the block copies were dead code that numba and LLVM still compiled. Called, not inlined, as the
    # once-per-call hooks of numbarnn._cells are: inlined, numba compiled it twice.
    if not (isinstance(source, types.Array) and source.layout == "F"):
        return lambda source, panels, first, last: first

    def in_blocks(source, panels, first, last):
        k, width = source.shape[0], panels.shape[2]
        if width % 8:
            return first
        k_blocked = k - k % 8
        for q in range(first, last):
            j = q * width
            for p0 in range(0, k_blocked, 8):
                for c0 in range(0, width, 8):
                    first_byte = p0 * source.itemsize + (j + c0) * source.strides[1]  # the first axis is contiguous
                    _transpose_8x8(source, first_byte, source.strides[1], panels, (q * k + p0) * width + c0, width)
            for p in range(k_blocked, k):
                for c in range(width):
                    panels[q, p, c] = source[p, j + c]
        return last

    return in_blocks


@jit  # called, not inlined: its blocked copies are long, and each direction packs two or three weights
def pack_panels(source, panels, first=0, last=-1):
    """Pack ``source`` (K, N), any memory layout (``w.T`` of a C-contiguous ``w`` included), into ``panels``
    (ceil(N / W), K, W); the columns past N are zero. Only panels ``first:last`` (default: all) when given, so that
    several threads can share the packing. (Unchecked; :func:`panel_matmul` checks the panels' shape against its
    operands.)"""
    k, n = source.shape
    width = panels.shape[2]
    last = panels.shape[0] if last < 0 else last
    whole = min(n // width, last)  # the panels with no column past N
    # A transposed source (``w.T``: K is its contiguous axis) is copied in 8 x 8 blocks; element by element, each
    # panel row gathered W scattered values (W_hh of 64 x 64 float32: 2.4 -> 1.3 us, the large configuration's LSTM
    # W_hh, 4096 x 1024: 6.7 -> 2.5 ms). LLVM compiled the blocks' loops to scalar moves (282 vmovss, 81 vinsertps),
    # so a float32 block is transposed in registers: 64 x 64 1.31 -> 0.28 us, the tiny LSTM's W_hh (256 x 64) 5.5
    # -> 1.7 us, 4096 x 1024 2.2 -> 1.4 ms (Zen 3). Any other layout copies whole panels row by row without the
    # padding test, which kept the loop scalar (a C-contiguous 64 x 64 source, as the backward packs W_hh: 2.8 ->
    # 0.4 us).
    blocked = pack_transposed_blocks(source, panels, first, whole)
    for q in range(max(first, blocked), whole):  # whole panels of any other layout: row by row, no padding test
        j = q * width
        for p in range(k):
            row = source[p, j : j + width]
            panel_row = panels[q, p]
            for c in range(width):
                panel_row[c] = row[c]
    for q in range(max(first, whole), last):  # the last panel, zero past column N
        for p in range(k):
            for c in range(width):
                j = q * width + c
                panels[q, p, c] = source[p, j] if j < n else 0


class PanelOperandError(ValueError):
    """Operands of :func:`panel_matmul` that do not fit together. Raised inside kernels (an operand that is not
    C-contiguous: while numba types the call, :func:`_require_c_layout`) with the message template and its values as
    separate arguments, formatted here in Python: formatting them in the kernel (``str`` of an int, string
    concatenation) made numba compile its unicode support into every kernel calling panel_matmul, ~3 s of every cold
    first call (measured with numba's compile events)."""

    def __str__(self):
        template, *values = self.args
        return "panel_matmul: " + template.format(*values)


@intrinsic
def _require_c_layout(typingctx, a, panels, out):
    """Refuse, while numba types a call (before anything is compiled), operands that are not C-contiguous: numba
    types each array with its memory layout, and a C-contiguous type is contiguous at run time too, so the
    micro-kernels' assumption holds for every call that compiles. Checked at run time, a strided operand compiled a
    whole specialisation of panel_matmul (about 3 s each on a cold cache) only to raise. Emits no code."""
    for name, operand in (("a", a), ("panels", panels), ("out", out)):
        if not isinstance(operand, types.Array) or operand.layout != "C":
            raise PanelOperandError(
                "{} must be a C-contiguous array (copy a strided view first: np.ascontiguousarray), got {}",
                name,
                operand,
            )

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.none(a, panels, out), codegen


@jit(inline=True)
def _check_operands(a, transposed, panels, out):
    """The shapes and layouts the micro-kernels assume; any mismatch would read or write out of bounds.

    They run at every step of a recurrence (a batch of one's per-step product takes ~0.1 us), so they are comparisons
    and multiplications only (the item size is read from the array at run time: dividing by it was an integer
    division), and the error, which carries run-time values, is raised in a function of its own. An RNN(32, 64)
    training step on 100 steps of one sequence went from 61.1-62.5 to 60.4-61.1 us (Zen 4, 3 alternating pairs of
    processes)."""
    _require_c_layout(a, panels, out)
    m, k = a.shape[::-1] if transposed else a.shape
    n = out.shape[1]
    width, count = panels.shape[2], panels.shape[0]
    if (
        width * a.itemsize != _PANEL_BYTES
        or panels.shape[1] != k
        or out.shape[0] != m
        or not (count - 1) * width < n <= count * width  # count == ceil(n / width)
    ):
        _operand_error(m, k, n, out.shape[0], panels.shape[1], width, count, _PANEL_BYTES // a.itemsize, transposed)


@jit(nrt=True)  # called, not inlined: only a mismatch reaches it
def _operand_error(m, k, n, out_rows, panel_rows, width, count, expected_width, transposed):
    """Raise the :class:`PanelOperandError` of the first mismatch :func:`_check_operands` found."""
    if width != expected_width:
        raise PanelOperandError(
            "panels must be {} columns wide on this CPU's instruction set (size them with "
            "numbarnn._panels.panel_shape), got {}",
            expected_width,
            width,
        )
    if panel_rows != k:
        if transposed:
            raise PanelOperandError("a is A.T, (K, M), with K = {} but the panels hold {} rows", k, panel_rows)
        raise PanelOperandError("a is (M, K) with K = {} but the panels hold {} rows", k, panel_rows)
    if out_rows != m:
        raise PanelOperandError("out must have A's {} rows, got {}", m, out_rows)
    raise PanelOperandError("out has {} columns, which need {} panels, got {}", n, -(-n // width), count)


@jit(inline=True)
def _streams(out):
    """Whether a product writes ``out`` with non-temporal stores, which go to memory without first reading each line
    of ``out`` into the caches: when ``out`` is larger than the last-level cache, so that its consumer finds it in
    memory either way, and each row starts on a vector boundary, as those stores require.

    A large output written through the caches cost each of its lines a read from memory first and filled the L2 with
    lines the product never reads: 12,800 x 256 x 1,024 (the medium LSTM's input projection, 52 MB) ran at 105-106
    GFLOP/s, against 111-112 writing the rows into one L2-sized buffer and 113 streamed (Zen 4, one thread, float32;
    prefetching each tile's output rows for writing gained nothing)."""
    if _STREAM_OUTPUT_BYTES == 0 or out.size * out.itemsize <= _STREAM_OUTPUT_BYTES:
        return False
    return out.ctypes.data % _VECTOR_BYTES == 0 and (out.shape[1] * out.itemsize) % _VECTOR_BYTES == 0


@intrinsic
def _store_fence(typingctx):
    """A sequentially consistent fence (``mfence`` on x86): orders non-temporal stores before every later access."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@jit(inline=True)
def rows_per_block(k, itemsize):
    """Rows of A per block for an inner dimension ``k``: whole tiles, at least one, an eighth of the L2."""
    return max(1, _A_BLOCK_BYTES // (k * itemsize) // TILE_ROWS) * TILE_ROWS


@jit(inline=True)
def _products(a, transposed, panels, out):
    """``out[:] = a @ B`` when ``transposed`` is None, else ``out += a.T @ B``: :func:`panel_matmul` and
    :func:`panel_matmul_transposed`, each compiled with its own micro-kernels. (None against a value, not False
    against True: numba types None apart, where a literal bool lost its value on the way to the intrinsics.)"""
    flipped = transposed is not None
    _check_operands(a, flipped, panels, out)
    m, k = a.shape[::-1] if flipped else a.shape
    n = out.shape[1]
    width = panels.shape[2]
    # the micro-kernels' stride: between rows of a C-contiguous A, or between the steps of A.T's rows
    stride = m if flipped else k
    if m == 0 or n == 0:
        return
    if k == 0:
        if not flipped:  # the transposed product adds nothing
            out[:] = 0
        return
    if m == 1:  # a batch of one's step: whole panels up to ROW_PANELS at a time, then a partial one
        whole = n // width
        for q in range(0, whole, ROW_PANELS):
            _row_tile(min(ROW_PANELS, whole - q), a, 0, stride, panels, q * k * width, out, q * width, k, transposed)
        if whole < panels.shape[0]:
            _tile(
                1,
                a,
                0,
                stride,
                panels,
                whole * k * width,
                out,
                whole * width,
                n,
                k,
                n - whole * width,
                0,
                0,
                False,
                transposed,
            )
        return
    row_block = rows_per_block(k, a.itemsize)
    count = panels.shape[0]
    stream = not flipped and _streams(out)
    for i0 in range(0, m, row_block):
        i1 = min(m, i0 + row_block)
        tiles = -(-(i1 - i0) // TILE_ROWS)
        # panel rows of the next panel each tile prefetches: none when all the panels fit in the L2, where they stay
        share = -(-k // tiles) if panels.size * panels.itemsize > _L2_BYTES else 0
        for q in range(count):
            columns = min(width, n - q * width)
            panel = q * k * width
            following = (q + 1) % count * k * width  # the next panel, or the first one again for the next block
            for i in range(i0, i1, TILE_ROWS):
                first = (i - i0) // TILE_ROWS * share
                _tile(
                    min(TILE_ROWS, i1 - i),
                    a,
                    i if flipped else i * k,
                    stride,
                    panels,
                    panel,
                    out,
                    i * n + q * width,
                    n,
                    k,
                    columns,
                    following + first * width,
                    max(0, min(share, k - first)),
                    stream,
                    transposed,
                )
    if stream:
        _store_fence()  # the streamed stores are weakly ordered: done before any later store, and seen by any thread


# compiled once, not inlined into the recurrence kernels: 2.6 s less cold compile, no measurable cost; with numba's
# runtime for its operand errors, which carry run-time values
@jit(nrt=True)
def panel_matmul(a, panels, out):
    """``out[:] = a @ B`` for C-contiguous ``a`` (M, K) and ``out`` (M, N) and ``B`` (K, N) packed by
    :func:`pack_panels` into panels of this CPU's width (:func:`panel_shape`); ``out`` must not overlap ``a``.
    Raises ValueError when the shapes do not fit together or an operand is not C-contiguous."""
    _products(a, None, panels, out)


@jit(nrt=True)  # compiled (and its micro-kernels) only where used: weight gradients (the backward's, Linear's)
def panel_matmul_transposed(a, panels, out):
    """``out += a.T @ B`` for C-contiguous ``a`` (K, M) and ``out`` (M, N) and ``B`` (K, N) packed as for
    :func:`panel_matmul`: the weight gradients ``dz.T @ inputs``, accumulated, without a transposed copy of ``dz``
    (the tiles read each step's rows side by side). Raises ValueError as :func:`panel_matmul` does."""
    _products(a, True, panels, out)


@jit(inline=True)
def add_transposed_product(a, b, target, offset, chunk):
    """``target[offset:...] += (a.T @ b).ravel()`` for C-contiguous ``a`` (K, M) and ``b`` (K, N), a weight gradient
    (``dz.T @ inputs``) added into the flat gradients: K in chunks, each chunk's rows of ``b`` packed into the 1-D
    buffer ``chunk`` (:func:`chunk_elements`, for at least N columns) and multiplied by ``a``'s rows read as they
    are, the product added into the target (:func:`panel_matmul_transposed`).

    As BLAS GEMMs (numba's ``np.dot``) these products ran at 77-101 GFLOP/s on one Zen 4 core, a third of their time
    in BLAS's copies of both operands (the transposed copy of dz the most); this way 89-109 (M x K x N = 128 x 1600 x
    128: 86 -> 108 GFLOP/s; 4096 x 6400 x 1024: 101 both ways).
    """
    rows, width = b.shape
    product = span_view(target, offset, (a.shape[1], width))
    step = max(1, chunk_rows(chunk, width, b))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        panels = chunk_panels(chunk, r1 - r0, width, b)
        pack_panels_part(row_span(b, r0, r1), panels, 0, 1)  # pack_panels' run-time (first, last): its compiled form
        panel_matmul_transposed(row_span(a, r0, r1), panels, product)
