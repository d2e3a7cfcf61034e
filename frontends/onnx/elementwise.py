"""Converters for elementwise ONNX ops: arithmetic, comparisons, logic, unary math, Cast, Clip,
Where, Identity and Dropout (inference).

ONNX requires one type for both operands of a binary op, as qjc does, so no casts are inserted
(Pow, whose exponent may differ, is the exception). Integer and symbolic Knowns are folded at
compile time, since they are shape arithmetic that later inputs (a Reshape's shape) depend on.
"""

from __future__ import annotations

import numpy as np

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.known import Known, fold_binary, make_known
from qjc.frontends.onnx.onnx_types import qjc_dtype
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value
from qjc.ir.dtypes import DType, boolean, f8e4m3
from qjc.ir.ops.registry import get_op

# ---- binary ---------------------------------------------------------------------------------------

_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
_COMPARE = {"Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge"}
_LOGIC = {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}


def _binary(op_type: str, qjc_op: str, out_bool: bool):
    def convert(ctx: NodeContext):
        a, b = ctx.input(0), ctx.input(1)
        if isinstance(a, Known) and isinstance(b, Known):
            folded = fold_binary(op_type, a, b, boolean if out_bool else a.dtype, ctx.graph.symbols)
            if folded is not None:
                return folded
        return ctx.op(qjc_op, ctx.value(0), ctx.value(1))

    return convert


for _t, _op in _ARITH.items():
    converter(_t, since=7)(_binary(_t, _op, False))
for _t, _op in _COMPARE.items():
    converter(_t, since=7 if _t in ("Equal", "Less", "Greater") else 12)(_binary(_t, _op, True))
for _t, _op in _LOGIC.items():
    converter(_t, since=7)(_binary(_t, _op, True))


@converter("Pow", since=7)
def pow_(ctx: NodeContext):
    base = ctx.value(0)
    # the exponent may have another type than the base; the result has the base's
    return ctx.op("pow", base, ctx.cast(ctx.value(1), base.type.dtype))


def _variadic(op_type: str, qjc_op: str):
    def convert(ctx: NodeContext):
        entries = [e for e in ctx.inputs() if e is not None]
        if all(isinstance(e, Known) for e in entries):
            acc: Known | None = entries[0]
            for e in entries[1:]:
                acc = fold_binary("Add" if op_type == "Sum" else op_type, acc, e, acc.dtype, ctx.graph.symbols)
                if acc is None:
                    break
            if acc is not None:
                return acc
        values = ctx.values()
        out = values[0]  # one input: the op is the identity
        for v in values[1:]:
            out = ctx.op(qjc_op, out, v)
        return out

    return convert


converter("Sum", since=8)(_variadic("Sum", "add"))
converter("Max", since=8)(_variadic("Max", "maximum"))
converter("Min", since=8)(_variadic("Min", "minimum"))


@converter("Mean", since=8)
def mean(ctx: NodeContext):
    values = ctx.values()
    total = values[0]
    for v in values[1:]:
        total = ctx.op("add", total, v)
    return ctx.op("div", total, ctx.scalar(len(values), total.type.dtype))


# ---- unary ----------------------------------------------------------------------------------------

_UNARY = {
    "Neg": ("neg", 6), "Abs": ("abs", 6), "Exp": ("exp", 6), "Log": ("log", 6), "Sqrt": ("sqrt", 6),
    "Reciprocal": ("reciprocal", 6), "Tanh": ("tanh", 6), "Sigmoid": ("sigmoid", 6), "Relu": ("relu", 6),
    "Floor": ("floor", 6), "Ceil": ("ceil", 6), "Sin": ("sin", 7), "Cos": ("cos", 7), "Erf": ("erf", 9),
}

# folds of unary ops on integer Knowns (shape arithmetic); floats are computed at run time
_UNARY_INT_FOLD = {"Neg": np.negative, "Abs": np.abs}


def _unary(op_type: str, qjc_op: str):
    def convert(ctx: NodeContext):
        x = ctx.input(0)
        fold = _UNARY_INT_FOLD.get(op_type)
        if isinstance(x, Known) and fold is not None and not x.dtype.is_float:
            if not x.symbolic:
                return make_known(fold(x.data), x.dtype)
            if op_type == "Neg":
                return make_known(np.array([-d for d in x.data.reshape(-1)], object).reshape(x.shape), x.dtype)
        return ctx.op(qjc_op, ctx.value(0))

    return convert


for _t, (_op, _since) in _UNARY.items():
    converter(_t, since=_since)(_unary(_t, _op))


@converter("Tan", since=7)
def tan(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("div", ctx.op("sin", x), ctx.op("cos", x))


@converter("Not", since=1)
def not_(ctx: NodeContext):
    x = ctx.input(0)
    if isinstance(x, Known) and not x.symbolic:
        return make_known(np.logical_not(x.data), boolean)
    return ctx.op("logical_not", ctx.value(0))


@converter("IsNaN", since=9)
def isnan(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("ne", x, x)  # NaN is the one value unequal to itself


@converter("IsInf", since=10)
def isinf(ctx: NodeContext):
    x = ctx.value(0)
    dtype = x.type.dtype
    pos = ctx.op("eq", x, ctx.scalar(np.inf, dtype)) if ctx.attr("detect_positive", 1) else None
    neg = ctx.op("eq", x, ctx.scalar(-np.inf, dtype)) if ctx.attr("detect_negative", 1) else None
    if pos is not None and neg is not None:
        return ctx.op("logical_or", pos, neg)
    if pos is not None or neg is not None:
        return pos if pos is not None else neg
    return ctx.op("full", shape=list(x.type.shape), value=0.0, dtype=boolean)


@converter("Sign", since=9)
def sign(ctx: NodeContext):
    x = ctx.value(0)
    dtype = x.type.dtype
    zero, one, minus = ctx.scalar(0, dtype), ctx.scalar(1, dtype), ctx.scalar(-1 if dtype.kind != "uint" else 0,
                                                                             dtype)
    negative = ctx.op("where", ctx.op("lt", x, zero), minus, zero)
    return ctx.op("where", ctx.op("gt", x, zero), one, negative)


# ---- cast, clip, where, identity, dropout --------------------------------------------------------


# the largest finite float8 e4m3fn value: saturating casts clip to it (ONNX Cast's saturate=1)
_F8E4M3_MAX = 448.0


def _cast_to(ctx: NodeContext, to: DType):
    x = ctx.input(0)
    saturate = to == f8e4m3 and bool(ctx.attr("saturate", 1))
    if isinstance(x, Known):
        if x.symbolic:
            return Known(x.data, to)  # dims stay symbolic; materializing casts them
        data = np.clip(x.data, -_F8E4M3_MAX, _F8E4M3_MAX) if saturate and x.dtype.is_float else x.data
        # the IR's own cast reference, so folding rounds exactly as running would
        return make_known(get_op("cast").ref(data, to=to), to)
    value = ctx.value(0)
    if value.type.dtype == to:
        return value  # a cast to the same type is the value itself
    if saturate and value.type.dtype.is_float:
        value = ctx.op("clamp", value, min=-_F8E4M3_MAX, max=_F8E4M3_MAX)  # NaN stays NaN
    return ctx.op("cast", value, to=to)


@converter("Cast", since=6)
def cast(ctx: NodeContext):
    return _cast_to(ctx, qjc_dtype(ctx.attr("to"), "the Cast target"))


@converter("CastLike", since=15)
def cast_like(ctx: NodeContext):
    target = ctx.input(1)
    return _cast_to(ctx, target.dtype if isinstance(target, Known) else target.type.dtype)


def _clip(ctx: NodeContext, x: Value, low, high):
    """Clip with bounds that are None, numbers or Values."""
    if isinstance(low, Value) or isinstance(high, Value) or x.type.dtype.is_int:
        # integer bounds stay exact as constants (clamp's float attributes may not hold an int64)
        out = x
        if low is not None:
            out = ctx.op("maximum", out, low if isinstance(low, Value) else ctx.scalar(low, x.type.dtype))
        if high is not None:
            out = ctx.op("minimum", out, high if isinstance(high, Value) else ctx.scalar(high, x.type.dtype))
        return out if out is not x else ctx.op("identity", x)
    return ctx.op("clamp", x, min=None if low is None else float(low), max=None if high is None else float(high))


@converter("Clip", since=6)
def clip_attrs(ctx: NodeContext):
    low, high = ctx.attr("min", None), ctx.attr("max", None)
    return _clip(ctx, ctx.value(0), low, high)


@converter("Clip", since=11)
def clip(ctx: NodeContext):
    bounds = []
    for i in (1, 2):
        entry = ctx.input(i)
        if entry is None:
            bounds.append(None)
        elif isinstance(entry, Known) and not entry.symbolic:
            bounds.append(entry.data.reshape(-1)[0].item())
        else:
            bounds.append(ctx.value(i))
    return _clip(ctx, ctx.value(0), *bounds)


@converter("Where", since=9)
def where(ctx: NodeContext):
    cond, a, b = ctx.inputs()[:3]
    if all(isinstance(e, Known) for e in (cond, a, b)) and not cond.symbolic:
        data = np.where(cond.data, a.data.astype(object) if b.symbolic else a.data,
                        b.data.astype(object) if a.symbolic else b.data)
        return make_known(data, a.dtype)
    return ctx.op("where", ctx.value(0), ctx.value(1), ctx.value(2))


@converter("Identity", since=1)
def identity(ctx: NodeContext):
    return ctx.input(0)


def _dropout_mask(ctx: NodeContext) -> Value | None:
    if len(ctx.node.output) < 2 or not ctx.node.output[1]:
        return None
    x = ctx.value(0)
    # inference keeps every element; the mask is bool from opset 10, before that of the data's type
    dtype = boolean if ctx.opset >= 10 else x.type.dtype
    return ctx.op("full", shape=list(x.type.shape), value=1.0, dtype=dtype)


@converter("Dropout", since=7)
def dropout_attrs(ctx: NodeContext):
    return ctx.input(0), _dropout_mask(ctx)


@converter("Dropout", since=12)
def dropout(ctx: NodeContext):
    if ctx.has_input(2):
        training = ctx.known_scalar(2, "training_mode")
        if bool(training):
            raise ctx.fail("training_mode is true; qjc compiles for inference only")
    return ctx.input(0), _dropout_mask(ctx)


# ---- compositions: Mod, Round, hyperbolic functions ----------------------------------------------


def _trunc(ctx: NodeContext, q: Value) -> Value:
    """Round toward zero (floats): ceil below zero, floor above."""
    return ctx.op("where", ctx.op("lt", q, ctx.scalar(0, q.type.dtype)), ctx.op("ceil", q), ctx.op("floor", q))


@converter("Mod", since=10)
def mod(ctx: NodeContext):
    a, b = ctx.value(0), ctx.value(1)
    dtype = a.type.dtype
    # fmod: a - trunc(a / b) * b has the dividend's sign (qjc's integer div truncates already)
    quotient = ctx.op("div", a, b) if dtype.is_int else _trunc(ctx, ctx.op("div", a, b))
    # a zero quotient leaves a itself (also for an infinite b, where 0 * b would be NaN)
    rest = ctx.op("where", ctx.op("eq", quotient, ctx.scalar(0, dtype)), a,
                  ctx.op("sub", a, ctx.op("mul", quotient, b)))
    if ctx.attr("fmod", 0) or dtype.kind == "uint":
        return rest
    # Python's mod has the divisor's sign: move a nonzero remainder of the other sign by one b
    zero = ctx.scalar(0, dtype)
    signs_differ = ctx.op("ne", ctx.op("lt", rest, zero), ctx.op("lt", b, zero))
    fix = ctx.op("logical_and", ctx.op("ne", rest, zero), signs_differ)
    return ctx.op("where", fix, ctx.op("add", rest, b), rest)


@converter("Round", since=11)
def round_(ctx: NodeContext):
    x = ctx.value(0)
    dtype = x.type.dtype
    down = ctx.op("floor", x)
    up = ctx.op("add", down, ctx.scalar(1, dtype))
    frac = ctx.op("sub", x, down)
    half = ctx.scalar(0.5, dtype)
    # ties go to the even neighbour: down is even when down - 2 * floor(down / 2) is 0
    halved = ctx.op("floor", ctx.op("mul", down, half))
    down_even = ctx.op("eq", ctx.op("sub", down, ctx.op("add", halved, halved)), ctx.scalar(0, dtype))
    tie = ctx.op("where", down_even, down, up)
    return ctx.op("where", ctx.op("gt", frac, half), up, ctx.op("where", ctx.op("lt", frac, half), down, tie))


def _exp_pair(ctx: NodeContext, x: Value) -> tuple[Value, Value]:
    return ctx.op("exp", x), ctx.op("exp", ctx.op("neg", x))


@converter("Sinh", since=9)
def sinh(ctx: NodeContext):
    x = ctx.value(0)
    e, ei = _exp_pair(ctx, x)
    return ctx.op("mul", ctx.op("sub", e, ei), ctx.scalar(0.5, x.type.dtype))


@converter("Cosh", since=9)
def cosh(ctx: NodeContext):
    x = ctx.value(0)
    e, ei = _exp_pair(ctx, x)
    return ctx.op("mul", ctx.op("add", e, ei), ctx.scalar(0.5, x.type.dtype))


@converter("Asinh", since=9)
def asinh(ctx: NodeContext):
    x = ctx.value(0)
    root = ctx.op("sqrt", ctx.op("add", ctx.op("mul", x, x), ctx.scalar(1, x.type.dtype)))
    return ctx.op("log", ctx.op("add", x, root))


@converter("Acosh", since=9)
def acosh(ctx: NodeContext):
    x = ctx.value(0)
    root = ctx.op("sqrt", ctx.op("sub", ctx.op("mul", x, x), ctx.scalar(1, x.type.dtype)))
    return ctx.op("log", ctx.op("add", x, root))


@converter("Atanh", since=9)
def atanh(ctx: NodeContext):
    x = ctx.value(0)
    one = ctx.scalar(1, x.type.dtype)
    ratio = ctx.op("div", ctx.op("add", one, x), ctx.op("sub", one, x))
    return ctx.op("mul", ctx.op("log", ratio), ctx.scalar(0.5, x.type.dtype))
