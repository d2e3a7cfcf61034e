"""Elementwise ops: unary math and activations, binary arithmetic and comparisons with
numpy-style broadcasting, where, cast, clamp.

Binary ops require both operands to share a dtype (frontends insert explicit casts), so backends
never guess a promotion rule.
"""

from __future__ import annotations

import math

import numpy as np

from qjc.ir.dtypes import boolean
from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import broadcast_shapes, require_float, same_dtype
from qjc.ir.types import TensorType

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _erf_array(x: np.ndarray) -> np.ndarray:
    return _erf(x.astype(np.float64)).astype(x.dtype) if x.size else x.copy()


def _gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        c = np.asarray(math.sqrt(2.0 / math.pi), x.dtype)
        return 0.5 * x * (1.0 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x**3)))
    return 0.5 * x * (1.0 + _erf_array(x / np.asarray(math.sqrt(2.0), x.dtype)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so exp never overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


# name -> (numpy function, float-only?)
_UNARY = {
    "neg": (np.negative, False),
    "abs": (np.abs, False),
    "exp": (np.exp, True),
    "log": (np.log, True),
    "sqrt": (np.sqrt, True),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), True),
    "reciprocal": (lambda x: 1.0 / x, True),
    "sin": (np.sin, True),
    "cos": (np.cos, True),
    "tanh": (np.tanh, True),
    "erf": (_erf_array, True),
    "sigmoid": (_sigmoid, True),
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), False),
    "silu": (lambda x: x * _sigmoid(x), True),
    "floor": (np.floor, True),
    "ceil": (np.ceil, True),
}


def _unary_infer(float_only: bool):
    def infer(ts: list[TensorType], attrs) -> list[TensorType]:
        if float_only:
            require_float(ts[0])
        elif ts[0].dtype == boolean or ts[0].dtype.is_quant:
            raise ValueError(f"needs a numeric input, got {ts[0].dtype}")
        return [ts[0]]

    return infer


for _name, (_fn, _float_only) in _UNARY.items():
    register(OpDef(_name, "elementwise", (1, 1), _unary_infer(_float_only),
                   (lambda f: lambda x: f(x))(_fn), doc=f"elementwise {_name}"))

register(OpDef("gelu", "elementwise", (1, 1), _unary_infer(True), _gelu,
               attrs={"approximate": Attr("str", "none", choices=("none", "tanh"))},
               doc="GELU, exact (erf) or the tanh approximation"))

register(OpDef("identity", "elementwise", (1, 1), lambda ts, a: [ts[0]], lambda x: x.copy(), widen=False,
               doc="returns its input; canonicalization removes it"))


def _clamp(x: np.ndarray, min: float | None = None, max: float | None = None) -> np.ndarray:
    out = x
    if min is not None:
        out = np.maximum(out, np.asarray(min, x.dtype))
    if max is not None:
        out = np.minimum(out, np.asarray(max, x.dtype))
    return out


register(OpDef("clamp", "elementwise", (1, 1), _unary_infer(False), _clamp,
               attrs={"min": Attr("float", None, optional=True), "max": Attr("float", None, optional=True)},
               doc="clip to [min, max]; either bound may be absent"))


def _cast_infer(ts, attrs):
    if ts[0].dtype.is_quant or attrs["to"].is_quant:
        raise ValueError("cast does not take quantized types; use quantize / dequantize")
    return [ts[0].with_dtype(attrs["to"])]


def _cast(x: np.ndarray, to) -> np.ndarray:
    if to.is_float and x.dtype.kind in "iub":
        return x.astype(np.float64).astype(to.np_dtype)
    if to.is_int and x.dtype.kind == "f":
        return np.trunc(x).astype(to.np_dtype)  # C-style truncation toward zero
    return x.astype(to.np_dtype)


register(OpDef("cast", "elementwise", (1, 1), _cast_infer, _cast, attrs={"to": Attr("dtype")}, widen=False,
               doc="convert to another dtype; float->int truncates toward zero"))

# ---- binary --------------------------------------------------------------------------------


def _binary_infer(kind: str):
    def infer(ts: list[TensorType], attrs) -> list[TensorType]:
        same_dtype(ts, "operands")
        dtype = ts[0].dtype
        if dtype.is_quant:
            raise ValueError("quantized operands must be dequantized first")
        if kind == "arith" and dtype == boolean:
            raise ValueError("arithmetic on bool; cast first")
        if kind == "logic" and dtype != boolean:
            raise ValueError(f"logical ops take bool, got {dtype}")
        shape = broadcast_shapes(ts[0].shape, ts[1].shape)
        out_dtype = boolean if kind in ("compare", "logic") else dtype
        return [TensorType(shape, out_dtype)]

    return infer


def _int_safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # C-style truncating division, as ONNX and CUDA define it
        return (np.trunc(a.astype(np.float64) / b.astype(np.float64))).astype(a.dtype)
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.power(a, b)


_BINARY = {
    "add": (np.add, "arith"),
    "sub": (np.subtract, "arith"),
    "mul": (np.multiply, "arith"),
    "div": (_int_safe_div, "arith"),
    "pow": (_pow, "arith"),
    "maximum": (np.maximum, "arith"),
    "minimum": (np.minimum, "arith"),
    "eq": (np.equal, "compare"),
    "ne": (np.not_equal, "compare"),
    "lt": (np.less, "compare"),
    "le": (np.less_equal, "compare"),
    "gt": (np.greater, "compare"),
    "ge": (np.greater_equal, "compare"),
    "logical_and": (np.logical_and, "logic"),
    "logical_or": (np.logical_or, "logic"),
    "logical_xor": (np.logical_xor, "logic"),
}

for _name, (_fn, _kind) in _BINARY.items():
    register(OpDef(_name, "elementwise", (2, 2), _binary_infer(_kind), (lambda f: lambda a, b: f(a, b))(_fn),
                   doc=f"elementwise {_name} with broadcasting"))


def _not_infer(ts, attrs):
    if ts[0].dtype != boolean:
        raise ValueError(f"logical_not takes bool, got {ts[0].dtype}")
    return [ts[0]]


register(OpDef("logical_not", "elementwise", (1, 1), _not_infer, np.logical_not, doc="boolean not"))


def _where_infer(ts, attrs):
    cond, a, b = ts
    if cond.dtype != boolean:
        raise ValueError(f"condition must be bool, got {cond.dtype}")
    same_dtype([a, b], "branches")
    return [TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), a.dtype)]


register(OpDef("where", "elementwise", (3, 3), _where_infer, lambda c, a, b: np.where(c, a, b),
               doc="select a where cond else b, with broadcasting"))
