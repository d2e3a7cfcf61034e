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
    op = _RELAX_REDUCE[node.op]
    keepdims = bool(node.attrs["keepdims"])
    if src.type.dtype.name == "bool":
        # bool max / min are any / all: reduce 0/1 bytes and compare back
        y = t.emit(op(t.emit(relax.op.astype(x, "int8")), axis=list(axes), keepdims=keepdims))
        return [t.emit(relax.op.not_equal(y, relax.const(0, "int8")))]
    empty_axis = next((a for a in axes if _may_be_zero(t, src.type.shape[a])), None)
    if empty_axis is not None:
        return [_reduce_maybe_empty(t, node.op, x, src, axes, empty_axis, keepdims)]
    return [t.emit(op(x, axis=list(axes), keepdims=keepdims))]


def _may_be_zero(t: Translator, d: Any) -> bool:
    """Whether an extent can be 0 (a static 0, or symbols whose ranges start at 0)."""
    if isinstance(d, int):
        return d == 0
    return d.evaluate({s: t.graph.symbols[s].lo for s in d.symbols}) <= 0


def _reduce_maybe_empty(t: Translator, op: str, x: Any, src: Any, axes: tuple, axis: int, keepdims: bool) -> Any:
    """A reduction over axes that may hold no element. TVM's reduction initializes its result inside the
    loop over the reduced axis, so an empty extent left the result unwritten: one identity element padded
    onto ``axis`` makes every reduction see at least one. An empty mean is 0 / 0 = nan (as numpy); an empty
    max / min is -inf / +inf, as ONNX defines it (TVM's own max starts from the lowest finite value, so
    those rows are set afterwards)."""
    import numpy as np

    dtype, rank = src.type.dtype, src.type.rank
    if dtype.is_float:
        lowest, highest = float("-inf"), float("inf")
    else:
        info = np.iinfo(dtype.np_dtype)
        lowest, highest = float(info.min), float(info.max)
    identity = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": lowest, "min": highest}[op]
    width = [0] * (2 * rank)
    width[2 * axis + 1] = 1

    def reduce(kind: str, v: Any, pad: float) -> Any:
        return t.emit(_RELAX_REDUCE[kind](t.emit(relax.op.nn.pad(v, width, pad_value=pad)), axis=list(axes),
                                          keepdims=keepdims))

    total = reduce("sum" if op == "mean" else op, x, identity)
    if op in ("sum", "prod"):
        return total
    count = reduce("sum", t.emit(relax.op.ones_like(x)), 0.0)
    if op == "mean":
        return t.emit(relax.op.divide(total, count))
    name = t.dtype(src)
    empty = t.emit(relax.op.equal(count, relax.const(0, name)))
    return t.emit(relax.op.where(empty, relax.const(identity, name), total))


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
