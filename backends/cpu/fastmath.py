"""Transcendental functions as TIR expressions that LLVM vectorizes.

LLVM lowers ``exp`` / ``erf`` / ``tanh`` on f32 to scalar libm calls unless the loop is built with a
vector math library, which costs several nanoseconds per element: GELU over a 128x1536 activation
took longer than the GEMM that produced it. These versions are straight-line arithmetic (range
reduction, a polynomial, an exponent built from integer bits) with errors of a few f32 ulps, so a
vectorized loop stays vectorized. Each takes and returns a PrimExpr; non-f32 inputs fall back to
TVM's own intrinsics.
"""

from __future__ import annotations

import math
from typing import Any

from qjc.backends.cpu.tvm_env import import_tvm

tvm = import_tvm()
tirx = tvm.tirx

_LOG2E = 1.4426950408889634
# ln 2 split so that n * _LN2_HI is exact in f32 for |n| < 2^9 (Cody-Waite range reduction)
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# above this exp overflows f32; below _EXP_LO the result is subnormal and is flushed to zero
_EXP_HI = 88.72283905206835
_EXP_LO = -87.33654475055310


def _f32(value: float) -> Any:
    return tirx.const(value, "float32")


def as_expr(x: Any) -> Any:
    """A PrimExpr for ``x`` (a TE tensor element ``A[i]`` is a TensorSlice until converted)."""
    return x.asobject() if hasattr(x, "asobject") else x


def dtype_of(x: Any) -> str:
    """The element type of a PrimExpr, as a string such as "float32"."""
    return str(as_expr(x).ty)


def _let(value: Any, body: Any) -> Any:
    """``body(v)`` with ``v`` bound to ``value`` once: these formulas use their intermediates many times,
    and without a binding each use would be a copy of the whole subexpression."""
    value = as_expr(value)
    if isinstance(value, (tirx.Var, tirx.IntImm, tirx.FloatImm)):
        return body(value)
    var = tirx.Var("fm", dtype_of(value))
    return tirx.Let(var, value, body(var))


def _horner(x: Any, coefficients: list[float]) -> Any:
    """c0 + c1*x + c2*x^2 + ... (coefficients lowest degree first)."""
    acc = _f32(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * x + _f32(c)
    return acc


def _pow2(n: Any) -> Any:
    """2**n for an int32 n in [-126, 127], built from the exponent bits."""
    return tirx.reinterpret("float32", tirx.shift_left(n + tirx.const(127, "int32"), tirx.const(23, "int32")))


def exp(x: Any) -> Any:
    x = as_expr(x)
    if dtype_of(x) != "float32":
        return tirx.exp(x)
    return _let(x, _exp_body)


def _exp_body(x: Any) -> Any:
    def reduced(xc: Any) -> Any:
        def with_n(n: Any) -> Any:
            # |r| <= ln2/2; Taylor series of e^r to degree 7: the first omitted term is below 1e-8
            r = xc - n * _f32(_LN2_HI) - n * _f32(_LN2_LO)
            poly = _let(r, lambda rv: _horner(rv, [1.0 / math.factorial(k) for k in range(8)]))

            def scaled(ni: Any) -> Any:
                # 2^n as two factors so that n = 128 (x near the top of the range) does not overflow
                half = tirx.shift_right(ni, tirx.const(1, "int32"))
                return _let(half, lambda hv: poly * _pow2(hv) * _pow2(ni - hv))

            return _let(n.astype("int32"), scaled)

        return _let(tirx.floor(xc * _f32(_LOG2E) + _f32(0.5)), with_n)

    y = _let(tirx.max(tirx.min(x, _f32(_EXP_HI)), _f32(_EXP_LO)), reduced)
    y = tirx.Select(x < _f32(_EXP_LO), _f32(0.0), y)
    y = tirx.Select(x > _f32(_EXP_HI), _f32(math.inf), y)
    return tirx.Select(tirx.isnan(x), x, y)


def _erfc_positive(z: Any) -> Any:
    """erfc(z) for z >= 0 with a relative error near 1e-7 over the whole range (a rational-exponential
    fit in t = 1 / (1 + z/2)), so tiny tails such as GELU of large negative inputs stay accurate."""
    def body(t: Any) -> Any:
        poly = _horner(t, [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                           -1.13520398, 1.48851587, -0.82215223, 0.17087277])
        return t * exp(_f32(0.0) - z * z + poly)

    return _let(_f32(1.0) / (_f32(1.0) + _f32(0.5) * z), body)


def erfc_signed(x: Any) -> Any:
    """erfc(x) for any f32 x."""
    x = as_expr(x)
    return _let(x, lambda xv: _let(_erfc_positive(tirx.abs(xv)),
                                   lambda e: tirx.Select(xv < _f32(0.0), _f32(2.0) - e, e)))


def erf(x: Any) -> Any:
    x = as_expr(x)
    if dtype_of(x) != "float32":
        return tirx.erf(x)
    return _let(x, _erf_body)


def _erf_body(x: Any) -> Any:
    def magnitude(z: Any) -> Any:
        # near zero 1 - erfc(z) cancels; the Maclaurin series is exact there to f32 precision
        series = z * _let(z * z, lambda z2: _horner(z2, [2.0 / math.sqrt(math.pi) * c for c in (
            1.0, -1.0 / 3, 1.0 / 10, -1.0 / 42, 1.0 / 216, -1.0 / 1320, 1.0 / 9360)]))
        return tirx.Select(z < _f32(0.5), series, _f32(1.0) - _erfc_positive(z))

    y = _let(magnitude(tirx.abs(x)), lambda m: tirx.Select(x < _f32(0.0), _f32(0.0) - m, m))
    return tirx.Select(tirx.isnan(x), x, y)


def gelu_erf(x: Any) -> Any:
    """x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2)): accurate in both tails."""
    x = as_expr(x)
    if dtype_of(x) != "float32":
        return _f(0.5, x) * x * (_f(1.0, x) + tirx.erf(x * _f(1.0 / math.sqrt(2.0), x)))
    return _let(x, lambda xv: _f32(0.5) * xv * erfc_signed(_f32(0.0) - xv * _f32(1.0 / math.sqrt(2.0))))


def tanh(x: Any) -> Any:
    x = as_expr(x)
    if dtype_of(x) != "float32":
        return tirx.tanh(x)
    return _let(x, _tanh_body)


def _tanh_body(x: Any) -> Any:
    def magnitude(z: Any) -> Any:
        far = _let(exp(_f32(-2.0) * z), lambda e: (_f32(1.0) - e) / (_f32(1.0) + e))
        # 1 - e cancels for small z; use the odd series there (error below 1e-9 for z < 0.0625)
        near = z * _let(z * z, lambda z2: _horner(z2, [1.0, -1.0 / 3, 2.0 / 15, -17.0 / 315]))
        return tirx.Select(z < _f32(0.0625), near, far)

    y = _let(magnitude(tirx.abs(x)), lambda m: tirx.Select(x < _f32(0.0), _f32(0.0) - m, m))
    return tirx.Select(tirx.isnan(x), x, y)


def sigmoid(x: Any) -> Any:
    x = as_expr(x)
    if dtype_of(x) != "float32":
        return _f(1.0, x) / (_f(1.0, x) + tirx.exp(_f(0.0, x) - x))
    # exp(-x) overflows to inf for very negative x, and 1 / inf = 0 is the right limit
    return _f32(1.0) / (_f32(1.0) + exp(_f32(0.0) - x))


def gelu_tanh(x: Any) -> Any:
    x = as_expr(x)
    c = math.sqrt(2.0 / math.pi)

    def body(v: Any) -> Any:
        return _f(0.5, v) * v * (_f(1.0, v) + tanh(_f(c, v) * (v + _f(0.044715, v) * v * v * v)))

    return _let(x, body)


def _f(value: float, like: Any) -> Any:
    return tirx.const(value, dtype_of(like))
