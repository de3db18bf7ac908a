"""Views the kernels take of their buffers, built without numba's general indexing code.

The pass kernels (:mod:`numbarnn._forward`, :mod:`numbarnn._backward`) inline every helper, and each view they take
is compiled at each of its sites: a task's rows of a workspace (``z[r0:r1]``), a step's rows (``h[:n]``), a
(layer, direction)'s weights carved out of the flat parameters (``params[o:o + G * H * K].reshape((G * H, K))``).
numba compiles a slice for any bounds and step (negative bounds counted from the end, clamping, a step's stride):
~220 LLVM instructions for a row slice of a 2-D array; and a reshape for any strides and a ``-1`` dimension: a
compiled normaliser with its error branches and a C call, ~340. The kernels need neither: their bounds are never
negative, their steps 1, their buffers C-contiguous. :func:`row_span` and :func:`span_view` build the same views
(~80 instructions each), and the same numba types, so every callee keeps its compiled signature.

Measured on Zen 4 (2 threads, fresh caches, alternating processes): the forward kernel's IR 16,500 -> 11,900
lines, the backward's 23,800 -> 16,400; an RNN's first inference call 6.6-6.75 -> 5.9 s and its first training step
8.3-8.9 -> 7.2 s; LSTM 9.9 -> 8.0 s and 12.2 -> 9.5 s; GRU 6.9 -> 6.3 s and 9.1 -> 7.2 s. Run time is unchanged
within the noise (a tiny forward, 100 steps, ~29 us either way).
"""

from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


@intrinsic
def span_view(typingctx, flat, start, shape):
    """``flat[start:start + prod(shape)].reshape(shape)`` for a C-contiguous 1-D ``flat`` and a tuple of integers
    ``shape``: the same C-contiguous view, after one check that the span lies within ``flat`` (``IndexError`` if it
    does not, or if ``start`` or a dimension is negative)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    if not (isinstance(start, types.Integer) and isinstance(shape, types.UniTuple)):
        return None
    if not isinstance(shape.dtype, types.Integer):
        return None
    ndim = shape.count
    view_type = flat.copy(ndim=ndim, layout="C")
    signature = view_type(flat, start, shape)

    def codegen(context, builder, sig, args):
        flat_value, start_value, shape_value = args
        source = _array(context, builder, sig.args[0], flat_value)
        dims = [
            context.cast(builder, builder.extract_value(shape_value, i), shape.dtype, types.intp) for i in range(ndim)
        ]
        offset = context.cast(builder, start_value, sig.args[1], types.intp)
        return _span(context, builder, sig.return_type, source, offset, dims)

    return signature, codegen


def _span(context, builder, view_type, source, offset, dims):
    """The C-contiguous ``view_type`` view of ``dims`` (LLVM values) of the 1-D ``source``'s elements from ``offset``
    on, after a check that the span lies within ``source`` (raising ``IndexError`` from the kernel if not)."""
    zero = cgutils.intp_t(0)
    outside = builder.icmp_signed("<", offset, zero)
    size = offset.type(1)
    for dim in dims:
        outside = builder.or_(outside, builder.icmp_signed("<", dim, zero))
        size = builder.mul(size, dim)
    outside = builder.or_(outside, builder.icmp_signed(">", builder.add(offset, size), source.nitems))
    with cgutils.if_unlikely(builder, outside):
        context.call_conv.return_user_exc(builder, IndexError, ("span_view: the span does not lie within the buffer",))
    strides = [source.itemsize] * len(dims)
    for i in range(len(dims) - 2, -1, -1):
        strides[i] = builder.mul(strides[i + 1], dims[i + 1])
    data = cgutils.gep(builder, source.data, offset)
    return _view(context, builder, view_type, source, data, dims, strides)


def pool_views(dims):
    """An intrinsic ``views(pool, layout)`` for views of ``dims[i]`` dimensions: the tuple of :func:`span_view` s of
    the C-contiguous 1-D ``pool`` that the rows of the C-contiguous int64 ``layout`` give, ``layout[i, 0]`` the
    offset of view ``i`` and ``layout[i, 1:1 + dims[i]]`` its shape (:func:`numbarnn._workspace.pool` writes them).

    One intrinsic for all the views a kernel takes of its pool: as ``span_view`` calls with numba indexing the
    layout, the pass kernels took 0.25-0.35 s longer to compile (Zen 4, an RNN's forward)."""
    dims = tuple(dims)
    columns_needed = 1 + max(dims)

    @intrinsic
    def views(typingctx, pool, layout):
        if not (isinstance(pool, types.Array) and pool.ndim == 1 and pool.layout == "C"):
            return None
        if not (isinstance(layout, types.Array) and layout.ndim == 2 and layout.layout == "C"):
            return None
        if layout.dtype != types.int64:
            return None
        view_types = [pool.copy(ndim=count, layout="C") for count in dims]
        signature = types.Tuple(view_types)(pool, layout)

        def codegen(context, builder, sig, args):
            source = _array(context, builder, sig.args[0], args[0])
            table = _array(context, builder, sig.args[1], args[1])
            rows, columns = cgutils.unpack_tuple(builder, table.shape)
            small = builder.or_(
                builder.icmp_signed("<", rows, cgutils.intp_t(len(dims))),
                builder.icmp_signed("<", columns, cgutils.intp_t(columns_needed)),
            )
            with cgutils.if_unlikely(builder, small):
                context.call_conv.return_user_exc(builder, IndexError, ("pool_views: the layout has too few entries",))

            def entry(row, column):
                index = builder.add(builder.mul(cgutils.intp_t(row), columns), cgutils.intp_t(column))
                return builder.load(cgutils.gep(builder, table.data, index))

            values = [
                _span(context, builder, view_type, source, entry(i, 0), [entry(i, 1 + k) for k in range(count)])
                for i, (view_type, count) in enumerate(zip(view_types, dims, strict=True))
            ]
            return context.make_tuple(builder, sig.return_type, values)

        return signature, codegen

    return views


@intrinsic
def row_span(typingctx, array, start, stop):
    """``array[start:stop]`` (rows ``start`` to ``stop - 1`` of an array of any dimension) for bounds that are not
    negative: the same view, of the same numba type, with the bounds clamped to the rows as a slice clamps them.

    A negative bound counts as 0 (a slice would count it from the end): the kernels never pass one, and clamping
    keeps every view within the array without a branch to raise from in the time loops."""
    if not (isinstance(array, types.Array) and array.ndim >= 1):
        return None
    if not (isinstance(start, types.Integer) and isinstance(stop, types.Integer)):
        return None
    view_type = array.copy(layout=array.layout if array.layout in "CA" else "A")
    signature = view_type(array, start, stop)

    def codegen(context, builder, sig, args):
        array_value, start_value, stop_value = args
        source = _array(context, builder, sig.args[0], array_value)
        first = context.cast(builder, start_value, sig.args[1], types.intp)
        end = context.cast(builder, stop_value, sig.args[2], types.intp)
        shape = cgutils.unpack_tuple(builder, source.shape)
        strides = cgutils.unpack_tuple(builder, source.strides)
        rows, zero = shape[0], cgutils.intp_t(0)
        first = builder.select(builder.icmp_signed("<", first, zero), zero, first)
        first = builder.select(builder.icmp_signed(">", first, rows), rows, first)
        end = builder.select(builder.icmp_signed(">", end, rows), rows, end)
        end = builder.select(builder.icmp_signed("<", end, first), first, end)
        data = _byte_offset(builder, source.data, builder.mul(first, strides[0]))
        return _view(context, builder, sig.return_type, source, data, [builder.sub(end, first), *shape[1:]], strides)

    return signature, codegen


def _byte_offset(builder, pointer, offset):
    """``pointer`` moved by ``offset`` bytes."""
    return builder.bitcast(
        builder.gep(builder.bitcast(pointer, cgutils.voidptr_t), [offset], inbounds=True), pointer.type
    )


def _array(context, builder, array_type, value):
    """The array structure of ``value``, an array of ``array_type``, to read its fields in a codegen."""
    from numba.np.arrayobj import make_array  # at compile time only: 20 ms of import

    return make_array(array_type)(context, builder, value)


def _view(context, builder, view_type, source, data, shape, strides):
    """A ``view_type`` array over ``source``'s memory (the same owner and parent): ``data`` its first element,
    ``shape`` and ``strides`` its dimensions (LLVM values)."""
    from numba.np.arrayobj import make_array, populate_array

    view = make_array(view_type)(context, builder)
    populate_array(
        view,
        data=data,
        shape=shape,
        strides=strides,
        itemsize=source.itemsize,
        meminfo=source.meminfo,
        parent=source.parent,
    )
    return impl_ret_borrowed(context, builder, view_type, view._getvalue())
