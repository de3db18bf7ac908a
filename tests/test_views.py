"""The kernels' views (numbarnn._views) against numba's own slicing and reshape: the same elements, the same
memory, the same numba types (so that no callee compiles a second signature)."""

import numba
import numpy as np
import pytest

from numbarnn._jit import jit
from numbarnn._views import pool_views, row_span, span_view


@jit(nrt=True)  # returns views: the runtime keeps their base alive
def rows_both_ways(array, start, stop):
    return row_span(array, start, stop), array[start:stop]


@jit(nrt=True)
def span_both_ways(flat, start, shape):
    return span_view(flat, start, shape), flat[start : start + np.prod(np.array(shape))].reshape(shape)


@jit(nrt=True)
def span_only(flat, start, shape):
    return span_view(flat, start, shape)


def _return_type(kernel, *args):
    """The numba return type of ``kernel``'s specialisation for ``args``."""
    return kernel.overloads[tuple(numba.typeof(arg) for arg in args)].signature.return_type


def _arrays():
    base = np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5)
    return {
        "1-D": np.arange(9, dtype=np.float64),
        "2-D": base[0].copy(),
        "3-D": base,
        "2-D of a 3-D array": base[3],
        "every other column": base[:, ::2, 1],  # not contiguous: numba's layout "A"
    }


ROW_BOUNDS = [(0, 0), (0, 1), (1, 4), (2, 6), (0, 100), (5, 3), (6, 7), (100, 200)]


@pytest.mark.parametrize("name", list(_arrays()))
@pytest.mark.parametrize("start, stop", ROW_BOUNDS)
def test_row_span_is_the_slice(name, start, stop):
    array = _arrays()[name]
    view, sliced = rows_both_ways(array, start, stop)
    assert view.shape == sliced.shape == array[start:stop].shape and view.strides == sliced.strides
    np.testing.assert_array_equal(view, sliced)
    # even an empty view points within the array (at its end at most), as a slice's does
    assert 0 <= view.ctypes.data - array.ctypes.data <= array.shape[0] * array.strides[0]
    if view.size:
        assert view.ctypes.data == sliced.ctypes.data  # a view of the same memory, not a copy
        view[...] = -1
        assert (array[start:stop] == -1).all()
    span_type, slice_type = _return_type(rows_both_ways, array, start, stop)
    assert span_type == slice_type


def test_the_bounds_cover_every_case():
    """The grid reaches each clamp: an empty span, a stop past the rows, a start past the rows, stop < start."""
    rows = 7
    assert any(start == stop for start, stop in ROW_BOUNDS)
    assert any(start < rows < stop for start, stop in ROW_BOUNDS)
    assert any(start >= rows for start, stop in ROW_BOUNDS)
    assert any(stop < start for start, stop in ROW_BOUNDS)


def test_row_span_counts_a_negative_bound_as_zero():
    array = np.arange(10.0)
    view, _ = rows_both_ways(array, -3, 4)
    np.testing.assert_array_equal(view, array[0:4])
    view, _ = rows_both_ways(array, 2, -1)
    assert view.shape == (0,)


@pytest.mark.parametrize(
    "start, shape", [(0, (3,)), (2, (3, 4)), (5, (2, 3, 4)), (0, (0, 5)), (7, (3, 0)), (29, (1, 1)), (30, (0,))]
)
def test_span_view_is_the_reshaped_slice(start, shape):
    flat = np.arange(30, dtype=np.float32)
    view, reshaped = span_both_ways(flat, start, shape)
    assert view.shape == reshaped.shape == shape and view.flags.c_contiguous
    np.testing.assert_array_equal(view, reshaped)
    if view.size:  # (an empty array's strides are immaterial, and numpy's and numba's differ)
        assert view.strides == flat[start : start + view.size].reshape(shape).strides
        assert view.ctypes.data == flat.ctypes.data + start * flat.itemsize
    view_type, reshaped_type = _return_type(span_both_ways, flat, start, shape)
    assert view_type == reshaped_type


@pytest.mark.parametrize("start, shape", [(0, (31,)), (28, (3,)), (1, (6, 5)), (-1, (2,)), (0, (-1, 2)), (30, (1,))])
def test_span_view_rejects_a_span_outside_the_buffer(start, shape):
    flat = np.zeros(30, np.float32)
    with pytest.raises(IndexError, match="span_view: the span does not lie within the buffer"):
        span_only(flat, start, shape)


two_views = pool_views((2, 1))


@jit(nrt=True)
def pooled_pair(flat, layout):
    return two_views(flat, layout)


def test_pool_views_are_the_spans_the_layout_gives():
    flat = np.arange(30, dtype=np.float64)
    layout = np.array([[4, 2, 3, 1], [16, 5, 1, 1]], np.int64)  # a (2, 3) view from element 4, a (5,) from 16
    matrix, vector = pooled_pair(flat, layout)
    np.testing.assert_array_equal(matrix, flat[4:10].reshape(2, 3))
    np.testing.assert_array_equal(vector, flat[16:21])
    assert matrix.ctypes.data == flat.ctypes.data + 4 * flat.itemsize and matrix.flags.c_contiguous
    assert _return_type(pooled_pair, flat, layout) == numba.typeof((flat[:6].reshape(2, 3), flat[:5]))


@pytest.mark.parametrize(
    "layout, message",
    [
        ([[0, 2, 3, 1]], "pool_views: the layout has too few entries"),  # one row for two views
        ([[0, 2], [6, 5]], "pool_views: the layout has too few entries"),  # no column for the second dimension
        ([[0, 2, 3, 1], [26, 5, 1, 1]], "span_view: the span does not lie within the buffer"),
        ([[0, 2, -3, 1], [6, 5, 1, 1]], "span_view: the span does not lie within the buffer"),
    ],
)
def test_pool_views_reject_a_layout_that_does_not_fit(layout, message):
    with pytest.raises(IndexError, match=message):
        pooled_pair(np.zeros(30), np.array(layout, np.int64))
