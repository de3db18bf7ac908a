"""Activation functions and their derivatives, as used inside the kernels.

float32 uses a clamped rational approximation of tanh (the one Eigen uses, a few ulp from the exact value), which
vectorises and is several times faster than ``np.tanh``. float64 uses Cephes' rational approximation below 0.625 and
``1 - 2 / (exp(2|x|) + 1)`` above, with an inlined exp (Cody-Waite reduction, a degree-13 Taylor polynomial and
2^k from its bit pattern), both computed and one selected so that the loops calling it vectorise: within 2 ulp of
``np.tanh``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import JIT_OPTIONS, jit

# Beyond this magnitude float32 tanh rounds to +-1.
_TANH_CLAMP = 7.90531110763549805
_TANH_SMALL = 4e-4  # below this tanh(x) == x to float32 precision
_ALPHA = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
_BETA = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)

# float64: Cephes tanh.c for |x| < 0.625 (x + x^3 P(x^2) / Q(x^2)); above, exp(2|x|) = 2^k exp(r).
_P64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_Q64 = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
_SATURATE64 = 22.0  # tanh(22) rounds to 1 in float64
_LN2_HI, _LN2_LO, _INV_LN2 = 6.93147180369123816490e-01, 1.90821492927058770002e-10, 1.44269504088896338700e00
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))  # highest degree first


def tanh(x):
    """Scalar tanh; inside kernels resolves to the dtype-specific implementation below."""
    return np.tanh(x)


@overload(tanh, jit_options=JIT_OPTIONS)
def _tanh_overload(x):
    if x == types.float64:
        return _tanh_f64
    if x != types.float32:
        return lambda x: np.tanh(x)

    a1, a3, a5, a7, a9, a11, a13 = (np.float32(c) for c in _ALPHA)
    b0, b2, b4, b6 = (np.float32(c) for c in _BETA)
    clamp, small, one = np.float32(_TANH_CLAMP), np.float32(_TANH_SMALL), np.float32(1)

    def tanh_f32(x):
        # Comparisons written so that NaN falls through both clamps and propagates.
        c = clamp if x > clamp else x
        c = -clamp if c < -clamp else c
        x2 = c * c
        p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * a13 + a11) + a9) + a7) + a5) + a3) + a1
        q = x2 * (x2 * (x2 * b6 + b4) + b2) + b0
        approx = c * p / q
        approx = x if abs(x) < small else approx
        # Saturate exactly, as np.tanh and torch do, where the polynomial would stop 2 ulp short of +-1.
        approx = one if x > clamp else approx
        return -one if x < -clamp else approx

    return tanh_f32


@intrinsic
def _power_of_two(typingctx, exponent):
    """2.0 ** exponent for an int32 exponent in [0, 1023], from its bit pattern: no table and no libm call, so a
    loop calling it still vectorises."""

    def codegen(context, builder, signature, args):
        biased = builder.add(builder.sext(args[0], ir.IntType(64)), ir.Constant(ir.IntType(64), 1023))
        return builder.bitcast(builder.shl(biased, ir.Constant(ir.IntType(64), 52)), ir.DoubleType())

    return types.float64(types.int32), codegen


def _tanh_f64(x):
    # Both branches are computed and one is selected: branch-free, the epilogue loops vectorise (~4x faster than
    # the branching version, measured at 5.7 ns per element before).
    a = abs(x)
    z = x * x
    p = (_P64[0] * z + _P64[1]) * z + _P64[2]
    q = ((z + _Q64[0]) * z + _Q64[1]) * z + _Q64[2]
    small = x + x * z * (p / q)
    y = 2.0 * (_SATURATE64 if a > _SATURATE64 else a)  # NaN passes through this select and propagates
    k = np.floor(y * _INV_LN2 + 0.5)
    k = k if k == k else 0.0  # keeps the exponent defined for NaN; the result is NaN through y all the same
    r = (y - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2, where the Taylor polynomial is exact to 1e-17
    e = _EXP_TAYLOR[0]
    for c in _EXP_TAYLOR[1:]:
        e = e * r + c
    t = 1.0 - 2.0 / (e * _power_of_two(np.int32(k)) + 1.0)
    large = t if x > 0 else -t
    result = small if a < 0.625 else large
    if a > _SATURATE64:
        result = 1.0 if x > 0 else -1.0
    return result


# float32 constants: mixed with a float64 value they widen to float64, mixed with float32 they stay float32.
_ZERO, _ONE = np.float32(0), np.float32(1)


@jit(inline=True)
def activate(v, relu):
    """tanh(v), or relu(v) with NaN propagated as torch's relu does."""
    if relu:
        return _ZERO if v < 0 else v
    return tanh(v)


@jit(inline=True)
def activation_backward(grad, y, relu):
    """The gradient before the activation, from the gradient ``grad`` after it and its output ``y``."""
    if relu:
        # As torch's threshold_backward: a select, not a product with the slope, so a NaN or inf gradient reaching a
        # unit clamped to 0 gives 0 (not NaN); a NaN output passes the gradient through.
        return _ZERO if y <= 0 else grad
    return grad * (_ONE - y * y)
