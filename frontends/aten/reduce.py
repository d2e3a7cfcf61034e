"""Converters for ATen reductions, softmax and the matrix products."""

from __future__ import annotations

from qjc.frontends.aten import ConvertContext, converts
from qjc.ir.dtypes import boolean, i32


def _axes(x, dims):
    if dims is None or dims == []:
        return None
    dims = [dims] if isinstance(dims, int) else dims
    return [d % max(x.type.rank, 1) for d in dims]


def _reduce(op: str):
    def convert(ctx: ConvertContext, x, dim=None, keepdim=False, dtype=None, **_):
        out = ctx.out_dtype()
        src = ctx.cast(x, out) if op in ("sum", "mean", "prod") else x
        return ctx.op(op, src, axes=_axes(x, dim), keepdims=bool(keepdim))

    return convert


converts("aten.sum.dim_IntList", "aten.sum.default")(_reduce("sum"))
converts("aten.mean.dim", "aten.mean.default")(_reduce("mean"))
converts("aten.amax.default")(_reduce("max"))
converts("aten.amin.default")(_reduce("min"))
converts("aten.prod.dim_int", "aten.prod.default")(_reduce("prod"))


@converts("aten.max.dim")
def max_dim(ctx, x, dim, keepdim=False):
    return (ctx.op("max", x, axes=[dim % x.type.rank], keepdims=keepdim),
            ctx.op("argmax", x, axis=dim % x.type.rank, keepdims=keepdim))


@converts("aten.min.dim")
def min_dim(ctx, x, dim, keepdim=False):
    return (ctx.op("min", x, axes=[dim % x.type.rank], keepdims=keepdim),
            ctx.op("argmin", x, axis=dim % x.type.rank, keepdims=keepdim))


@converts("aten.argmax.default")
def argmax(ctx, x, dim=None, keepdim=False):
    if dim is None:
        x, dim = ctx.op("reshape", x, shape=[-1]), 0
    return ctx.op("argmax", x, axis=dim % x.type.rank, keepdims=keepdim)


@converts("aten.any.dim", "aten.any.dims", "aten.any.default")
def any_(ctx, x, dim=None, keepdim=False):
    # any over bools is a max over 0/1
    as_int = ctx.cast(x, i32)
    return ctx.cast(ctx.op("max", as_int, axes=_axes(x, dim), keepdims=keepdim), boolean)


@converts("aten.all.dim", "aten.all.dims", "aten.all.default")
def all_(ctx, x, dim=None, keepdim=False):
    as_int = ctx.cast(x, i32)
    return ctx.cast(ctx.op("min", as_int, axes=_axes(x, dim), keepdims=keepdim), boolean)


@converts("aten._softmax.default", "aten.softmax.int")
def softmax(ctx, x, dim, half_to_float=False):
    return ctx.cast(ctx.op("softmax", x, axis=dim % x.type.rank), ctx.out_dtype())


@converts("aten._log_softmax.default", "aten.log_softmax.int")
def log_softmax(ctx, x, dim, half_to_float=False):
    return ctx.cast(ctx.op("log_softmax", x, axis=dim % x.type.rank), ctx.out_dtype())


@converts("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def matmul(ctx, a, b):
    return ctx.op("matmul", a, b)


@converts("aten.addmm.default")
def addmm(ctx, bias, a, b, beta=1, alpha=1):
    prod = ctx.op("matmul", a, b)
    if alpha != 1:
        prod = ctx.op("mul", prod, ctx.scalar(alpha, prod.type.dtype))
    if beta != 1:
        bias = ctx.op("mul", bias, ctx.scalar(beta, bias.type.dtype))
    return ctx.op("add", prod, bias)


@converts("aten.linear.default")
def linear(ctx, x, weight, bias=None):
    return ctx.graph.add_node("linear", [x, weight] + ([bias] if bias is not None else []))[0]
