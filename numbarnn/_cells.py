"""What each recurrent cell contributes to the shared kernels: its gate epilogue (forward), its derivative (backward)
and its state layout. Everything else (blocks, lengths, directions, products, workspace, threads) is shared.

A kernel receives a *cell code* (:func:`cell_code`) and makes it a *cell marker* (:func:`marker_of`): a
namedtuple whose class differs per cell, so that numba types each cell differently and :func:`forward_epilogue` /
:func:`backward_epilogue` resolve, at typing time, to that cell's code. Each cell is thus its own specialisation of
the shared kernels (compiled and cached only when used), and the RNN's code is exactly the loop it had before the gated
cells existed. An LSTM with a projection (``proj_size``) is a cell of its own.

Gate layout (torch's): the G * H columns of a step's products are the gates in torch's order, RNN one, GRU r, z, n,
LSTM i, f, g, o. What a training forward saves for the backward, per row (S * H columns): GRU r, z, n and
``W_hn h + b_hn``; LSTM i, f, g, o and tanh(c_t). The RNN saves nothing (its backward reads its output).
"""

import functools
from collections import namedtuple

import numpy as np
from numba import types
from numba.extending import overload

from ._activations import activate, activation_backward, tanh
from ._jit import JIT_OPTIONS
from ._layout import W_HR
from ._loops import copy_2d
from ._panels import add_transposed_product, pack_panels_part, panel_matmul
from ._views import span_view

RnnCell = namedtuple("RnnCell", ["relu"])
GruCell = namedtuple("GruCell", ["gates"])
LstmCell = namedtuple("LstmCell", ["gates"])
# An LSTM with a projection (proj_size) is a cell of its own, so that a plain LSTM's kernels compile none of the
# projection's code: its packing, its product and its gradient (~0.8 s of a first LSTM training step's compile).
ProjectedLstmCell = namedtuple("ProjectedLstmCell", ["gates"])

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # G: gate blocks of H columns in each weight and step product
SAVED = {"rnn": 0, "gru": 4, "lstm": 5}  # S: blocks of H columns a training forward saves per row


# The kernels' entry points take the cell as a *cell code*: a NumPy unsigned integer whose width names the cell and
# whose value is the RNN's relu flag, which they turn into the marker while typing (:func:`marker_of`). numba types a
# NumPy scalar argument in C, ~0.1 us, and a namedtuple in Python, field by field: the marker cost ~0.7 us of every
# call (of a ~20 us call on one step of a batch of one).
CELL_CODE_TYPES = {"rnn": np.uint8, "gru": np.uint16, "lstm": np.uint32, "projected lstm": np.uint64}


def cell_code(spec):
    """The code the kernels receive for the cell of ``spec`` (:class:`numbarnn._workspace.Spec`): its cell, an
    RNN's nonlinearity and whether an LSTM has a projection."""
    return _cell_code(spec.cell, spec.relu, spec.proj_size > 0)


@functools.cache
def _cell_code(cell, relu, projected):
    """(Cached: one immutable code per cell.)"""
    if cell == "lstm" and projected:
        cell = "projected lstm"
    return CELL_CODE_TYPES[cell](bool(relu) if cell == "rnn" else 0)


def marker_of(code):
    """The cell marker of a cell code (:func:`cell_code`), inside a kernel."""


@overload(marker_of, jit_options=JIT_OPTIONS, inline="always")
def _marker_of(code):
    if code == types.uint8:
        return lambda code: RnnCell(code != 0)
    if code == types.uint16:
        return lambda code: GruCell(3)
    if code == types.uint32:
        return lambda code: LstmCell(4)
    if code == types.uint64:
        return lambda code: ProjectedLstmCell(4)
    return None


def _is(marker, cls):
    return isinstance(marker, types.BaseNamedTuple) and marker.instance_class is cls


def _is_lstm(marker):
    return _is(marker, LstmCell) or _is(marker, ProjectedLstmCell)


def cell_blocks(cell):
    """(G, S) of a cell marker, inside a kernel (:data:`GATES` and :data:`SAVED` outside)."""


@overload(cell_blocks, jit_options=JIT_OPTIONS, inline="always")
def _cell_blocks(cell):
    name = "rnn" if _is(cell, RnnCell) else "gru" if _is(cell, GruCell) else "lstm"
    gates, saved = GATES[name], SAVED[name]
    return lambda cell: (gates, saved)


_HALF, _ONE = np.float32(0.5), np.float32(1)
_NEGATIVE_ZERO = np.float32(-0.0)  # x + -0 is x for every x, -0 included (x + 0 would turn -0 into +0)


def sigmoid(x):
    """Logistic function; inside kernels, through the project's tanh (exact to a few ulp in both dtypes, and it
    vectorises): sigmoid(x) = 1/2 + tanh(x/2) / 2."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


@overload(sigmoid, jit_options=JIT_OPTIONS, inline="always")
def _sigmoid_overload(x):
    def impl(x):
        return _HALF + _HALF * tanh(_HALF * x)

    return impl


def forward_epilogue(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
    """One step's gates, from the step rows' input projection ``z`` (n, G * H) and recurrent product ``tmp``
    (n, G * H) and the biases (G * H,): advances the state ``h`` (n, P) (and an LSTM's ``c`` (n, H)) in place, writes
    the new h to ``out[:, column:column + P]`` and what the backward needs to rows ``first:first + n`` of ``saved``
    (S * H columns). An LSTM with a projection computes o * tanh(c) into rows ``first:first + n`` of ``h_full``
    (H columns; it has no rows without a projection) and h = h_full W_hr^T against ``w_hr_panels``."""


def backward_epilogue(
    cell, grad_y, y, column, carry, carry_c, saved, h_prev, c_prev, dz, dz_in, tmp, dh_proj, w_hh_panels, w_hr_panels
):
    """One reverse step: from the gradient of the step's outputs (``grad_y[:, column:]`` plus the carried gradient
    of h, ``carry`` (n, P)), write the pre-activation gradients of the recurrent side ``dz`` (n, G * H) and, for
    the GRU, of the input side ``dz_in``, then leave the gradient of h_{t-1} in ``carry`` (and of c_{t-1} in
    ``carry_c``). ``tmp`` (n, H) is scratch; ``dh_proj`` (n, P) receives an LSTM projection's output gradient."""


# The gated cells' epilogues are called, not inlined: each is compiled once per (cell, dtype) and linked into the
# kernels calling it. Inlined, they made the kernels slower to compile and to run (LSTM medium forward 257-266 ms
# against 186-215 with task_forward not inlined either, cold first inference + training step ~15 % less CPU time; the
# call costs a GRU's 100-step batch-of-one forward ~7 %; alternating fresh processes, busy host, Zen 3). The task
# bodies, each now called from one stage kernel only, are inlined there: LSTM small training 32.7-34.4 ms against
# 33.4-35.0 with them called (3 processes each, quiet host).
# The RNN's epilogues are inlined: a few instructions per unit, against a call with 13 or 15 arguments (most of them
# arrays) at every step, which was ~14 % of a batch-of-one forward and training step (Zen 4, RNN(32, 64), 100 steps:
# forward 30.7 -> 26.1 us, training step 76 -> 66 us; small and medium unchanged). They cost the RNN's cold first
# calls 0.1-0.4 s: numba compiles an inlined overload's body once on its own as well, only to type it. So each cell's
# epilogue is an overload of its own, inlined or not.
# Every epilogue reads and writes a direction's columns through per-row views (``out[i, column:column + P]``), never
# as ``out[i, column + j]``: numba cannot tell that index from a negative one and wraps it, which kept the loop from
# vectorising (the RNN's tanh epilogue at H = 1024: ~1.4 -> ~1.0 ns per element, float32, Zen 3).
@overload(forward_epilogue, jit_options=JIT_OPTIONS, inline="always")
def _rnn_forward_epilogue(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
    if _is(cell, RnnCell):

        def rnn(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
            relu = cell.relu
            state = h.shape[1]
            for i in range(z.shape[0]):
                z_i, tmp_i, h_i, out_i = z[i], tmp[i], h[i], out[i, column : column + state]
                for j in range(state):
                    v = activate((z_i[j] + b_ih[j]) + (tmp_i[j] + b_hh[j]), relu)
                    h_i[j] = v
                    out_i[j] = v

        return rnn
    return None


@overload(forward_epilogue, jit_options=JIT_OPTIONS)
def _gated_forward_epilogue(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
    # The gated cells' epilogues run as several short loops over a row, each reading and writing a few arrays: one
    # loop over all of a row's gates touches ~12 arrays, more than LLVM checks for overlap at run time, so it stayed
    # scalar (LSTM, 64 x 256, float32: 440-590 us per step, against 106-150 split, the products' own ~400 us).
    # Each value is computed with the same operations in the same order as before (where LLVM fuses a multiply and
    # an add differs with the loop, results can differ in the last bit).
    if _is(cell, GruCell):

        def gru(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
            hidden = h.shape[1]
            for i in range(z.shape[0]):
                z_i, tmp_i, saved_i, h_i = z[i], tmp[i], saved[first + i], h[i]
                out_i = out[i, column : column + hidden]
                for k in range(2 * hidden):  # r and z (called u here: z is the input projection)
                    saved_i[k] = sigmoid((z_i[k] + b_ih[k]) + (tmp_i[k] + b_hh[k]))
                r, u, n = saved_i[:hidden], saved_i[hidden : 2 * hidden], saved_i[2 * hidden : 3 * hidden]
                recurrent_n = saved_i[3 * hidden :]
                z_n, tmp_n = z_i[2 * hidden :], tmp_i[2 * hidden :]
                b_ih_n, b_hh_n = b_ih[2 * hidden :], b_hh[2 * hidden :]
                for j in range(hidden):
                    recurrent_n[j] = tmp_n[j] + b_hh_n[j]
                    n[j] = tanh((z_n[j] + b_ih_n[j]) + r[j] * recurrent_n[j])
                for j in range(hidden):
                    v = n[j] + u[j] * (h_i[j] - n[j])  # torch's order of operations (aten's GRUCell)
                    h_i[j] = v
                    out_i[j] = v

        return gru

    if _is_lstm(cell):
        projected = _is(cell, ProjectedLstmCell)  # a constant: the branches a plain LSTM does not take are not compiled

        def lstm(cell, z, tmp, b_ih, b_hh, h, c, saved, h_full, first, w_hr_panels, out, column):
            hidden = c.shape[1]
            for i in range(z.shape[0]):
                z_i, tmp_i, saved_i, c_i = z[i], tmp[i], saved[first + i], c[i]
                # i, f and o are sigmoids, sigmoid(v) = 1/2 + tanh(v/2) / 2, and g is tanh(v) = 1 * tanh(1 * v) + (-0)
                # (both exact): one loop body for the four gates, its scale and offset set once per gate. A select
                # per element on the column's gate (one loop over all 4 H columns) cost 20 % more (float32, Zen 4,
                # one thread: 8.1 -> 6.6 us at 32 x 128, 33.5 -> 26.5 us at 64 x 256, the same bits), and an index
                # range starting at the gate's column, instead of per-gate views, does not vectorise (4x slower).
                for gate in range(4):
                    scale = _ONE if gate == 2 else _HALF
                    offset = _NEGATIVE_ZERO if gate == 2 else _HALF
                    lo, hi = gate * hidden, (gate + 1) * hidden
                    z_g, tmp_g, saved_g, b_ih_g, b_hh_g = (
                        z_i[lo:hi],
                        tmp_i[lo:hi],
                        saved_i[lo:hi],
                        b_ih[lo:hi],
                        b_hh[lo:hi],
                    )
                    for j in range(hidden):
                        v = (z_g[j] + b_ih_g[j]) + (tmp_g[j] + b_hh_g[j])
                        saved_g[j] = scale * tanh(scale * v) + offset
                gi, gf, gg = saved_i[:hidden], saved_i[hidden : 2 * hidden], saved_i[2 * hidden : 3 * hidden]
                go, tanh_c = saved_i[3 * hidden : 4 * hidden], saved_i[4 * hidden :]
                target = h_full[first + i] if projected else h[i]
                for j in range(hidden):
                    cv = gf[j] * c_i[j] + gi[j] * gg[j]
                    tc = tanh(cv)
                    c_i[j] = cv
                    tanh_c[j] = tc
                    target[j] = go[j] * tc
            if projected:
                panel_matmul(h_full[first : first + z.shape[0]], w_hr_panels, h)
            for i in range(z.shape[0]):
                h_i, out_i = h[i], out[i, column : column + h.shape[1]]
                for j in range(h.shape[1]):
                    out_i[j] = h_i[j]

        return lstm
    return None


@overload(backward_epilogue, jit_options=JIT_OPTIONS, inline="always")
def _rnn_backward_epilogue(
    cell, grad_y, y, column, carry, carry_c, saved, h_prev, c_prev, dz, dz_in, tmp, dh_proj, w_hh_panels, w_hr_panels
):
    if _is(cell, RnnCell):

        def rnn(
            cell,
            grad_y,
            y,
            column,
            carry,
            carry_c,
            saved,
            h_prev,
            c_prev,
            dz,
            dz_in,
            tmp,
            dh_proj,
            w_hh_panels,
            w_hr_panels,
        ):
            relu = cell.relu
            state = dz.shape[1]
            for i in range(dz.shape[0]):
                grad_y_i, y_i = grad_y[i, column : column + state], y[i, column : column + state]
                dz_i, carry_i = dz[i], carry[i]
                for j in range(state):
                    dz_i[j] = activation_backward(grad_y_i[j] + carry_i[j], y_i[j], relu)
            panel_matmul(dz, w_hh_panels, carry)

        return rnn
    return None


@overload(backward_epilogue, jit_options=JIT_OPTIONS)
def _gated_backward_epilogue(
    cell, grad_y, y, column, carry, carry_c, saved, h_prev, c_prev, dz, dz_in, tmp, dh_proj, w_hh_panels, w_hr_panels
):
    if _is(cell, GruCell):

        def gru(
            cell,
            grad_y,
            y,
            column,
            carry,
            carry_c,
            saved,
            h_prev,
            c_prev,
            dz,
            dz_in,
            tmp,
            dh_proj,
            w_hh_panels,
            w_hr_panels,
        ):
            hidden = carry.shape[1]
            for i in range(dz.shape[0]):  # short loops, so that they vectorise (see the forward epilogues)
                grad_y_i, carry_i, h_prev_i, g = grad_y[i, column : column + hidden], carry[i], h_prev[i], tmp[i]
                saved_i, dz_i, dz_in_i = saved[i], dz[i], dz_in[i]
                r, u, n = saved_i[:hidden], saved_i[hidden : 2 * hidden], saved_i[2 * hidden : 3 * hidden]
                recurrent_n = saved_i[3 * hidden :]
                grad_r, grad_u, grad_n = dz_in_i[:hidden], dz_in_i[hidden : 2 * hidden], dz_in_i[2 * hidden :]
                dz_r, dz_u, dz_n = dz_i[:hidden], dz_i[hidden : 2 * hidden], dz_i[2 * hidden :]
                for j in range(hidden):
                    g[j] = grad_y_i[j] + carry_i[j]
                for j in range(hidden):
                    grad_n[j] = g[j] * (_ONE - u[j]) * (_ONE - n[j] * n[j])
                for j in range(hidden):
                    grad_r[j] = grad_n[j] * recurrent_n[j] * r[j] * (_ONE - r[j])
                    dz_r[j] = grad_r[j]
                    dz_n[j] = grad_n[j] * r[j]  # r scales W_hn h + b_hn: the recurrent side only
                for j in range(hidden):
                    grad_u[j] = g[j] * (h_prev_i[j] - n[j]) * u[j] * (_ONE - u[j])
                    dz_u[j] = grad_u[j]
                    g[j] *= u[j]  # h_{t-1}'s direct path through z * (h - n)
            panel_matmul(dz, w_hh_panels, carry)
            for i in range(dz.shape[0]):
                for j in range(hidden):
                    carry[i, j] += tmp[i, j]

        return gru

    if _is_lstm(cell):
        projected = _is(cell, ProjectedLstmCell)

        def lstm(
            cell,
            grad_y,
            y,
            column,
            carry,
            carry_c,
            saved,
            h_prev,
            c_prev,
            dz,
            dz_in,
            tmp,
            dh_proj,
            w_hh_panels,
            w_hr_panels,
        ):
            hidden = carry_c.shape[1]
            rows = dz.shape[0]
            if projected:  # h = h_full W_hr^T: the gradient of h_full is dh W_hr
                for i in range(rows):
                    grad_y_i, carry_i, dh_i = grad_y[i, column : column + carry.shape[1]], carry[i], dh_proj[i]
                    for j in range(carry.shape[1]):
                        dh_i[j] = grad_y_i[j] + carry_i[j]
                panel_matmul(dh_proj, w_hr_panels, tmp)
            else:
                for i in range(rows):
                    grad_y_i, carry_i, tmp_i = grad_y[i, column : column + hidden], carry[i], tmp[i]
                    for j in range(hidden):
                        tmp_i[j] = grad_y_i[j] + carry_i[j]
            for i in range(rows):  # short loops over per-gate views, so that they vectorise
                dh, saved_i, c_prev_i, carry_c_i, dz_i = tmp[i], saved[i], c_prev[i], carry_c[i], dz[i]
                gi, gf, gg = saved_i[:hidden], saved_i[hidden : 2 * hidden], saved_i[2 * hidden : 3 * hidden]
                go, tc = saved_i[3 * hidden : 4 * hidden], saved_i[4 * hidden : 5 * hidden]
                dz_gi, dz_gf = dz_i[:hidden], dz_i[hidden : 2 * hidden]
                dz_gg, dz_go = dz_i[2 * hidden : 3 * hidden], dz_i[3 * hidden : 4 * hidden]
                for j in range(hidden):
                    dz_go[j] = dh[j] * tc[j] * go[j] * (_ONE - go[j])
                for j in range(hidden):  # dh becomes dc: the gradient of c
                    dh[j] = carry_c_i[j] + dh[j] * go[j] * (_ONE - tc[j] * tc[j])
                dc = dh
                for j in range(hidden):
                    dz_gi[j] = dc[j] * gg[j] * gi[j] * (_ONE - gi[j])
                    dz_gg[j] = dc[j] * gi[j] * (_ONE - gg[j] * gg[j])
                for j in range(hidden):
                    dz_gf[j] = dc[j] * c_prev_i[j] * gf[j] * (_ONE - gf[j])
                    carry_c_i[j] = dc[j] * gf[j]
            panel_matmul(dz, w_hh_panels, carry)

        return lstm
    return None


# -- what only some cells do, as hooks that are empty for the others: the RNN's kernels compile none of it ----------
def save_state(cell, h, c, h_prev, c_prev):
    """Copy the state a step starts from (training): h, and an LSTM's c."""


@overload(save_state, jit_options=JIT_OPTIONS, inline="always")
def _save_state(cell, h, c, h_prev, c_prev):
    if _is_lstm(cell):

        def lstm(cell, h, c, h_prev, c_prev):
            copy_2d(h, h_prev)
            copy_2d(c, c_prev)

        return lstm

    def others(cell, h, c, h_prev, c_prev):
        copy_2d(h, h_prev)

    return others


def pack_projection(cell, params, offsets, row, state_width, hidden_size, panels, transposed):
    """Pack an LSTM projection's W_hr (P, H) of offset-table row ``row`` (W_hr^T if ``transposed``) into
    ``panels``; nothing for the other cells."""


# The hooks that run once per direction and call are called, not inlined: numba compiles an inlined overload's body
# on its own as well (only to type it) before typing it again inside the caller, so inlined, the LSTM's projection
# packing compiled twice (cold first LSTM inference, Zen 4, 3 alternating fresh processes each: 8.6-9.4 -> 8.3-8.4 s
# with these and pack_transposed_blocks called). The per-step hooks (save_state, input_side) stay inlined.
# ``transposed`` is a constant at every call site (the forward packs W_hr^T, the backward W_hr), and typed as one
# (``prefer_literal``), so that a kernel compiles only its own orientation; both go through pack_panels_part, whose
# specialisations the packing of W_ih and W_hh compiles anyway. A run-time flag compiled both, and pack_panels called
# directly compiled its own: three specialisations of pack_panels in a first LSTM inference instead of one.
@overload(pack_projection, jit_options=JIT_OPTIONS, prefer_literal=True)
def _pack_projection(cell, params, offsets, row, state_width, hidden_size, panels, transposed):
    if not _is(cell, ProjectedLstmCell):
        return lambda cell, params, offsets, row, state_width, hidden_size, panels, transposed: None
    if not isinstance(transposed, types.BooleanLiteral):
        raise TypeError(f"pack_projection's transposed must be a constant True or False, not {transposed}")

    if transposed.literal_value:

        def projected_transposed(cell, params, offsets, row, state_width, hidden_size, panels, transposed):
            w_hr = span_view(params, offsets[row, W_HR], (state_width, hidden_size))
            pack_panels_part(w_hr.T, panels, 0, 1)

        return projected_transposed

    def projected(cell, params, offsets, row, state_width, hidden_size, panels, transposed):
        pack_panels_part(span_view(params, offsets[row, W_HR], (state_width, hidden_size)), panels, 0, 1)

    return projected


def projection_gradient(cell, dh_proj, h_full, grads, offset, chunk):
    """``grads[offset:...] += dh_proj.T @ h_full``: an LSTM projection's weight gradient, its ``h_full`` packed
    through ``chunk`` (:func:`numbarnn._panels.add_transposed_product`); nothing for the other cells."""


@overload(projection_gradient, jit_options=JIT_OPTIONS)
def _projection_gradient(cell, dh_proj, h_full, grads, offset, chunk):
    if _is(cell, ProjectedLstmCell):
        return lambda cell, dh_proj, h_full, grads, offset, chunk: add_transposed_product(
            dh_proj, h_full, grads, offset, chunk
        )
    return lambda cell, dh_proj, h_full, grads, offset, chunk: None


def input_side(cell, dz, dz_in):
    """The input side's pre-activation gradient: the GRU's own ``dz_in`` (its n gate differs), else ``dz``."""


@overload(input_side, jit_options=JIT_OPTIONS, inline="always")
def _input_side(cell, dz, dz_in):
    if _is(cell, GruCell):
        return lambda cell, dz, dz_in: dz_in
    return lambda cell, dz, dz_in: dz
