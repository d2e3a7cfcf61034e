"""Converters for elementwise ATen ops: arithmetic with torch's type promotion made explicit
through casts, comparisons, activations, where / masked_fill, casts and aliases."""

from __future__ import annotations

import torch

from qjc.frontends.aten import ConvertContext, converts
from qjc.frontends.torch_types import qjc_dtype
from qjc.ir import Value
from qjc.ir.dtypes import boolean


def _binary(ctx: ConvertContext, op: str, a, b, compute_dtype=None) -> Value:
    """Cast both operands to one dtype (torch promotes implicitly, qjc never does)."""
    dtype = compute_dtype or ctx.out_dtype()
    return ctx.op(op, ctx.cast(ctx.as_value(a, dtype), dtype), ctx.cast(ctx.as_value(b, dtype), dtype))


def _promoted(a, b) -> object:
    """The dtype torch computes a comparison in."""
    def tdt(x):
        if isinstance(x, Value):
            from qjc.frontends.torch_types import QJC_TO_TORCH

            return QJC_TO_TORCH[x.type.dtype]
        return torch.tensor(x).dtype

    if isinstance(a, Value) and not isinstance(b, Value):
        return a.type.dtype if not (a.type.dtype.is_int and isinstance(b, float)) else qjc_dtype(torch.float32)
    if isinstance(b, Value) and not isinstance(a, Value):
        return _promoted(b, a)
    return qjc_dtype(torch.promote_types(tdt(a), tdt(b)))


@converts("aten.add.Tensor", "aten.add.Scalar")
def add(ctx, a, b, alpha=1):
    if alpha != 1:
        b = _binary(ctx, "mul", b, alpha)
    return _binary(ctx, "add", a, b)


@converts("aten.sub.Tensor", "aten.sub.Scalar")
def sub(ctx, a, b, alpha=1):
    if alpha != 1:
        b = _binary(ctx, "mul", b, alpha)
    return _binary(ctx, "sub", a, b)


@converts("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(ctx, a, b, alpha=1):
    return sub(ctx, b, a, alpha) if alpha == 1 else _binary(ctx, "sub", b, _binary(ctx, "mul", a, alpha))


@converts("aten.mul.Tensor", "aten.mul.Scalar")
def mul(ctx, a, b):
    return _binary(ctx, "mul", a, b)


@converts("aten.div.Tensor", "aten.div.Scalar")
def div(ctx, a, b):
    return _binary(ctx, "div", a, b)


@converts("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(ctx, a, b, rounding_mode=None):
    dtype = ctx.out_dtype()
    if rounding_mode is None:
        return _binary(ctx, "div", a, b)
    if rounding_mode == "trunc" and dtype.is_int:
        return _binary(ctx, "div", a, b)
    if rounding_mode == "floor" and dtype.is_float:
        return ctx.op("floor", _binary(ctx, "div", a, b))
    if rounding_mode == "trunc" and dtype.is_float:
        q = _binary(ctx, "div", a, b)
        return ctx.op("where", ctx.op("lt", q, ctx.scalar(0, dtype)), ctx.op("ceil", q), ctx.op("floor", q))
    raise ctx.fail(f"division with rounding_mode={rounding_mode!r} on {dtype} is not supported")


@converts("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(ctx, a, b):
    if isinstance(b, (int, float)) and b == 2:
        a = ctx.cast(ctx.as_value(a), ctx.out_dtype())
        return ctx.op("mul", a, a)  # exact and cheaper than pow
    return _binary(ctx, "pow", a, b)


@converts("aten.maximum.default")
def maximum(ctx, a, b):
    return _binary(ctx, "maximum", a, b)


@converts("aten.minimum.default")
def minimum(ctx, a, b):
    return _binary(ctx, "minimum", a, b)


_COMPARE = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}


def _make_compare(op: str):
    def convert(ctx, a, b):
        return _binary(ctx, op, a, b, compute_dtype=_promoted(a, b))

    return convert


for _t, _op in _COMPARE.items():
    converts(f"aten.{_t}.Tensor", f"aten.{_t}.Scalar")(_make_compare(_op))

_UNARY = {
    "neg": "neg", "abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "tanh": "tanh",
    "erf": "erf", "sigmoid": "sigmoid", "relu": "relu", "silu": "silu", "sin": "sin", "cos": "cos",
    "reciprocal": "reciprocal", "floor": "floor", "ceil": "ceil", "logical_not": "logical_not",
}


def _make_unary(op: str):
    def convert(ctx, x):
        dtype = ctx.out_dtype()
        return ctx.op(op, ctx.cast(x, dtype) if op != "logical_not" else x)

    return convert


for _t, _op in _UNARY.items():
    converts(f"aten.{_t}.default")(_make_unary(_op))


@converts("aten.bitwise_not.default")
def bitwise_not(ctx, x):
    if x.type.dtype != boolean:
        raise ctx.fail("bitwise_not is supported on bool tensors only")
    return ctx.op("logical_not", x)


def _make_logic(op: str):
    def convert(ctx, a, b):
        if any(isinstance(v, Value) and v.type.dtype != boolean for v in (a, b)):
            raise ctx.fail(f"{op} is supported on bool tensors only")
        return ctx.op(op, ctx.as_value(a, boolean), ctx.as_value(b, boolean))

    return convert


for _t, _op in {"bitwise_and": "logical_and", "bitwise_or": "logical_or", "bitwise_xor": "logical_xor",
                "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor"}.items():
    converts(f"aten.{_t}.Tensor" if _t.startswith("bitwise") else f"aten.{_t}.default")(_make_logic(_op))


@converts("aten.gelu.default")
def gelu(ctx, x, approximate="none"):
    return ctx.op("gelu", x, approximate=approximate)


@converts("aten.clamp.default", "aten.clamp.Tensor", "aten.hardtanh.default")
def clamp(ctx, x, min=None, max=None):
    if isinstance(min, Value) or isinstance(max, Value):
        out = x
        if min is not None:
            out = _binary(ctx, "maximum", out, min)
        if max is not None:
            out = _binary(ctx, "minimum", out, max)
        return out
    return ctx.op("clamp", x, min=min, max=max)


@converts("aten.clamp_min.default")
def clamp_min(ctx, x, min):
    return clamp(ctx, x, min=min)


@converts("aten.clamp_max.default")
def clamp_max(ctx, x, max):
    return clamp(ctx, x, max=max)


@converts("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(ctx, cond, a, b):
    dtype = ctx.out_dtype()
    return ctx.op("where", cond, ctx.cast(ctx.as_value(a, dtype), dtype), ctx.cast(ctx.as_value(b, dtype), dtype))


@converts("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(ctx, x, mask, value):
    return ctx.op("where", mask, ctx.cast(ctx.as_value(value, x.type.dtype), x.type.dtype), x)


@converts("aten._to_copy.default", "aten.to.dtype")
def to_copy(ctx, x, dtype=None, **_ignored):
    return ctx.cast(x, ctx.out_dtype())


@converts("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
          "aten.contiguous.default", "aten.dropout.default")
def alias(ctx, x, *args, **kwargs):
    return x  # inference: copies and aliases are the same value
