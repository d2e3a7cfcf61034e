"""Converters for ONNX reductions (ReduceSum/Mean/Max/Min/Prod and the L1/L2/SumSquare/LogSum/
LogSumExp compositions), ArgMax/ArgMin, Softmax/LogSoftmax and CumSum.

Reductions took their axes from an attribute until ReduceSum-13 and the others' version 18, then
from an optional input; both forms are registered, dispatched by the model's opset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.known import Known, make_known
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value
from qjc.ir.dims import product
from qjc.ir.dtypes import DType, boolean, i64

_TO_END = 2**63 - 1


def _axes(ctx: NodeContext, from_input: bool) -> list[int] | None:
    """The reduced axes; None for all of them. [] (with noop_with_empty_axes) means none."""
    if not from_input:
        axes = ctx.attr("axes", None)
        return None if axes is None else list(axes)
    axes = ctx.known_ints(1, "axes") if ctx.has_input(1) else []
    if not axes:
        return [] if ctx.attr("noop_with_empty_axes", 0) else None
    return axes


# qjc op applied after an optional prologue, then an optional epilogue
_Composite = tuple[str, Callable[[NodeContext, Value], Value] | None, Callable[[NodeContext, Value], Value] | None]


def _square(ctx: NodeContext, x: Value) -> Value:
    return ctx.op("mul", x, x)


_REDUCTIONS: dict[str, _Composite] = {
    "ReduceSum": ("sum", None, None),
    "ReduceMean": ("mean", None, None),
    "ReduceMax": ("max", None, None),
    "ReduceMin": ("min", None, None),
    "ReduceProd": ("prod", None, None),
    "ReduceSumSquare": ("sum", _square, None),
    "ReduceL1": ("sum", lambda ctx, x: ctx.op("abs", x), None),
    "ReduceL2": ("sum", _square, lambda ctx, y: ctx.op("sqrt", y)),
    "ReduceLogSum": ("sum", None, lambda ctx, y: ctx.op("log", y)),
}

# integer / symbolic folds (Size-like arithmetic over a Shape)
_KNOWN_FOLDS = {"ReduceSum": np.sum, "ReduceProd": np.prod}


def _empty_identity(op_type: str, dtype: DType) -> float | None:
    """What ONNX defines a max / min / log-sum-exp over no elements to be (qjc's max and min
    refuse an empty axis, having no identity of their own)."""
    lowest = not op_type.endswith("Min")
    if dtype == boolean:
        return 0.0 if lowest else 1.0
    if dtype.is_int:
        info = np.iinfo(dtype.np_dtype)
        return float(info.min if lowest else info.max)
    return -np.inf if lowest else np.inf


def _empty_reduction(ctx: NodeContext, op_type: str, x: Value, axes: list[int] | None,
                     keepdims: bool) -> Value | None:
    """A constant fill when a max-like reduction runs over a (static) zero-size axis, else None."""
    if op_type not in ("ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        return None
    rank = x.type.rank
    reduced = set(range(rank)) if axes is None else {a % rank for a in axes}
    if not any(x.type.shape[a] == 0 for a in reduced):
        return None
    shape = [1 if i in reduced else d for i, d in enumerate(x.type.shape) if keepdims or i not in reduced]
    value = _empty_identity(op_type, x.type.dtype)
    return ctx.op("full", shape=shape, value=value, dtype=x.type.dtype)


def _reduce(op_type: str, from_input: bool):
    qjc_op, prologue, epilogue = _REDUCTIONS[op_type]

    def convert(ctx: NodeContext):
        keepdims = bool(ctx.attr("keepdims", 1))
        axes = _axes(ctx, from_input)
        x_entry = ctx.input(0)
        if axes == []:
            return x_entry  # noop_with_empty_axes: the input unchanged
        fold = _KNOWN_FOLDS.get(op_type)
        if isinstance(x_entry, Known) and fold is not None and not x_entry.dtype.is_float:
            axis = None if axes is None else tuple(a % max(x_entry.data.ndim, 1) for a in axes)
            return make_known(fold(x_entry.data, axis=axis, keepdims=keepdims), x_entry.dtype)
        x = ctx.value(0)
        empty = _empty_reduction(ctx, op_type, x, axes, keepdims)
        if empty is not None:
            return empty
        if prologue is not None:
            x = prologue(ctx, x)
        y = ctx.op(qjc_op, x, axes=axes, keepdims=keepdims)
        return epilogue(ctx, y) if epilogue is not None else y

    return convert


for _name in _REDUCTIONS:
    _since = 13 if _name == "ReduceSum" else 18
    converter(_name, since=1)(_reduce(_name, from_input=False))
    converter(_name, since=_since)(_reduce(_name, from_input=True))


def _log_sum_exp(from_input: bool):
    def convert(ctx: NodeContext):
        keepdims = bool(ctx.attr("keepdims", 1))
        axes = _axes(ctx, from_input)
        x = ctx.value(0)
        if axes == []:
            return x
        empty = _empty_reduction(ctx, "ReduceLogSumExp", x, axes, keepdims)
        if empty is not None:
            return empty
        # log(sum(exp(x - m))) + m with m the maximum: the same value, without overflow
        m = ctx.op("max", x, axes=axes, keepdims=True)
        s = ctx.op("sum", ctx.op("exp", ctx.op("sub", x, m)), axes=axes, keepdims=keepdims)
        m_out = m if keepdims else ctx.op("reshape", m, shape=list(s.type.shape))
        return ctx.op("add", ctx.op("log", s), m_out)

    return convert


converter("ReduceLogSumExp", since=1)(_log_sum_exp(False))
converter("ReduceLogSumExp", since=18)(_log_sum_exp(True))


def _arg(qjc_op: str):
    def convert(ctx: NodeContext):
        x = ctx.value(0)
        axis = ctx.attr("axis", 0) % max(x.type.rank, 1)
        keepdims = bool(ctx.attr("keepdims", 1))
        if not ctx.attr("select_last_index", 0):
            return ctx.op(qjc_op, x, axis=axis, keepdims=keepdims)
        # the last extreme is the first one of the reversed axis, counted from the end
        size = x.type.shape[axis]
        if not isinstance(size, int):
            raise ctx.fail(f"select_last_index on symbolic axis {axis} (size {size}) is not supported")
        flipped = ctx.op("slice", x, starts=[-1], ends=[-_TO_END], axes=[axis], steps=[-1])
        index = ctx.op(qjc_op, flipped, axis=axis, keepdims=keepdims)
        return ctx.op("sub", ctx.scalar(size - 1, i64), index)

    return convert


converter("ArgMax", since=1)(_arg("argmax"))
converter("ArgMin", since=1)(_arg("argmin"))


def _softmax(qjc_op: str, coerce_2d: bool):
    def convert(ctx: NodeContext):
        x = ctx.value(0)
        if not coerce_2d:
            return ctx.op(qjc_op, x, axis=ctx.attr("axis", -1))
        # before opset 13 the input is seen as 2-D: dims before `axis` are rows, the rest one row each
        axis = ctx.attr("axis", 1) % max(x.type.rank, 1)
        shape = list(x.type.shape)
        flat = ctx.op("reshape", x, shape=[product(shape[:axis]), product(shape[axis:])])
        return ctx.op("reshape", ctx.op(qjc_op, flat, axis=1), shape=shape)

    return convert


converter("Softmax", since=1)(_softmax("softmax", True))
converter("Softmax", since=13)(_softmax("softmax", False))
converter("LogSoftmax", since=1)(_softmax("log_softmax", True))
converter("LogSoftmax", since=13)(_softmax("log_softmax", False))


@converter("CumSum", since=11)
def cumsum(ctx: NodeContext):
    x = ctx.value(0)
    axis = int(ctx.known_scalar(1, "axis"))
    return ctx.op("cumsum", x, axis=axis % max(x.type.rank, 1), exclusive=bool(ctx.attr("exclusive", 0)),
                  reverse=bool(ctx.attr("reverse", 0)))


def _hardmax(coerce_2d: bool):
    def convert(ctx: NodeContext):
        x = ctx.value(0)
        shape = list(x.type.shape)
        if coerce_2d:  # before opset 13: over the flattened dims from `axis` on, as Softmax
            axis = ctx.attr("axis", 1) % max(x.type.rank, 1)
            x = ctx.op("reshape", x, shape=[product(shape[:axis]), product(shape[axis:])])
            axis = 1
        else:
            axis = ctx.attr("axis", -1) % max(x.type.rank, 1)
        first = ctx.op("argmax", x, axis=axis, keepdims=True)  # ties: the first, as ONNX says
        positions = ctx.op("iota", shape=[x.type.shape[axis]], dtype=i64)
        along = [1] * x.type.rank
        along[axis] = -1
        positions = ctx.op("reshape", positions, shape=along)
        y = ctx.cast(ctx.op("eq", positions, first), x.type.dtype)
        return ctx.op("reshape", y, shape=shape) if coerce_2d else y

    return convert


converter("Hardmax", since=1)(_hardmax(True))
converter("Hardmax", since=13)(_hardmax(False))
