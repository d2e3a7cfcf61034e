"""Reductions (sum, mean, max, min, prod, argmax, argmin), softmax / log_softmax and cumsum.

Plain reductions go through Relax's operators (TOPI's legalization keeps the input dtype, as the
IR requires). Softmax is TE written here so its exp is fastmath's vectorizable one and its three
stages (row max, exp and sum, normalize) land in one kernel that the row schedule keeps in cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qjc.backends.cpu import fastmath
from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.te_util import as_expr, int64
from qjc.backends.cpu.tvm_env import import_tvm
from qjc.ir.ops.shape_rules import norm_axes

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

tvm = import_tvm()
te = tvm.te
tirx = tvm.tirx
relax = tvm.relax

_RELAX_REDUCE = {"sum": relax.op.sum, "mean": relax.op.mean, "max": relax.op.max, "min": relax.op.min,
                 "prod": relax.op.prod}


@converts(*_RELAX_REDUCE)
def _convert_reduce(t: Translator, node: Node) -> list[Any]:
    src = node.inputs[0]
    x = t.arg(src)
    rank = src.type.rank
    axes = () if rank == 0 else norm_axes(node.attrs["axes"], rank)
    if not axes:
        return [x]  # nothing to reduce (an empty axis list, or a scalar)
    keepdims = bool(node.attrs["keepdims"])
    empty_axes = [a for a in axes if _may_be_zero(t, src.type.shape[a])]
    if src.type.dtype.name == "bool":
        # bool max / min are any / all: reduce 0/1 bytes and compare back (nothing is false for any, true for all)
        y = _reduce(t, node.op, t.emit(relax.op.astype(x, "int8")), "int8", axes, empty_axes, keepdims, rank,
                    identity=0 if node.op == "max" else 1)
        return [t.emit(relax.op.not_equal(y, relax.const(0, "int8")))]
    return [_reduce(t, node.op, x, t.dtype(src), axes, empty_axes, keepdims, rank)]


def _may_be_zero(t: Translator, d: Any) -> bool:
    """Whether an extent can be 0 (a static 0, or symbols whose ranges start at 0)."""
    if isinstance(d, int):
        return d == 0
    return d.evaluate({s: t.graph.symbols[s].lo for s in d.symbols}) <= 0


def _reduce(t: Translator, op: str, x: Any, dtype: str, axes: tuple, empty_axes: list[int], keepdims: bool,
            rank: int, identity: Any = None) -> Any:
    """``op`` over ``axes``. Where some of them may hold no element (``empty_axes``): TVM's reduction initializes
    its result inside the loop over the reduced axis, so an empty extent leaves it unwritten; such results are
    replaced by the reduction's identity, found where a count of the reduced elements is 0. An empty mean is
    nan for floats (as numpy), 0 for integers; an empty max / min is -inf / +inf (as ONNX defines it), the
    lowest / highest value for integers."""
    import numpy as np

    if not empty_axes:
        return t.emit(_RELAX_REDUCE[op](x, axis=list(axes), keepdims=keepdims))
    total = t.emit(_RELAX_REDUCE["sum" if op == "mean" else op](x, axis=list(axes), keepdims=keepdims))
    width = [0] * (2 * rank)
    for a in empty_axes:
        width[2 * a + 1] = 1  # one zero appended: the count's own reduction is never empty
    ones = t.emit(relax.op.nn.pad(t.emit(relax.op.ones_like(x)), width, pad_value=0.0))
    count = t.emit(_RELAX_REDUCE["sum"](ones, axis=list(axes), keepdims=keepdims))
    empty = t.emit(relax.op.equal(count, relax.const(0, dtype)))
    is_float = dtype.startswith("float") or dtype.startswith("bfloat")
    if op == "mean":  # divided by at least 1: an integer division by 0 would trap
        total = t.emit(relax.op.divide(total, t.emit(relax.op.maximum(count, relax.const(1, dtype)))))
    if identity is None:
        info = None if is_float else np.iinfo(np.dtype(dtype))
        identity = {"sum": 0, "prod": 1, "mean": float("nan") if is_float else 0,
                    "max": float("-inf") if is_float else int(info.min),
                    "min": float("inf") if is_float else int(info.max)}[op]
    return t.emit(relax.op.where(empty, relax.const(identity, dtype), total))


@converts("argmax", "argmin")
def _convert_arg(t: Translator, node: Node) -> list[Any]:
    src = node.inputs[0]
    axis = node.attrs["axis"] % src.type.rank
    op = relax.op.argmax if node.op == "argmax" else relax.op.argmin
    return [t.emit(op(t.arg(src), axis=axis, keepdims=bool(node.attrs["keepdims"])))]


@converts("cumsum")
def _convert_cumsum(t: Translator, node: Node) -> list[Any]:
    src = node.inputs[0]
    axis = node.attrs["axis"] % src.type.rank
    x = t.arg(src)
    reverse = bool(node.attrs["reverse"])
    if reverse:
        x = t.emit(relax.op.flip(x, axis))
    y = t.emit(relax.op.cumsum(x, axis=axis, dtype=t.dtype(node.output), exclusive=bool(node.attrs["exclusive"])))
    if reverse:
        y = t.emit(relax.op.flip(y, axis))
    return [y]


def softmax_te(x: Any, axis: int, log: bool) -> Any:
    """softmax / log_softmax of TE tensor ``x`` along ``axis`` (stages: max, exp, sum, output)."""
    shape = list(x.shape)
    n = shape[axis]
    reduced = shape[:axis] + shape[axis + 1:]

    def at(i: tuple, k: Any) -> tuple:
        return (*i[:axis], k, *i[axis:])

    k1 = te.reduce_axis((int64(0), n), name="k")
    row_max = te.compute(reduced, lambda *i: te.max(as_expr(x(*at(i, k1))), axis=k1), name="row_max")

    def shifted(*i: Any) -> Any:
        return as_expr(x(*i)) - row_max(*i[:axis], *i[axis + 1:])

    e = te.compute(shape, lambda *i: fastmath.exp(shifted(*i)), name="exp")
    k2 = te.reduce_axis((int64(0), n), name="k")
    total = te.compute(reduced, lambda *i: te.sum(e(*at(i, k2)), axis=k2), name="row_sum")
    if log:
        return te.compute(shape, lambda *i: shifted(*i) - tirx.log(total(*i[:axis], *i[axis + 1:])),
                          name="log_softmax")
    return te.compute(shape, lambda *i: e(*i) / total(*i[:axis], *i[axis + 1:]), name="softmax")


@converts("softmax", "log_softmax")
def _convert_softmax(t: Translator, node: Node) -> list[Any]:
    src = node.inputs[0]
    axis = node.attrs["axis"] % src.type.rank
    log = node.op == "log_softmax"
    return [t.emit_te(lambda x: softmax_te(x, axis, log), t.arg(src), name=node.op)]
