"""Converters for the ONNX matrix products: MatMul (numpy semantics, 1-D operands included) and
Gemm (lowered to qjc ``linear`` in its common torch layout, else matmul / transpose / mul / add)."""

from __future__ import annotations

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value
from qjc.ir.ops.shape_rules import dims_conflict


def matmul(ctx: NodeContext, a: Value, b: Value) -> Value:
    """numpy.matmul: a 1-D lhs is a row, a 1-D rhs a column, and that axis is dropped again."""
    lhs_vector, rhs_vector = a.type.rank == 1, b.type.rank == 1
    if lhs_vector:
        a = ctx.op("unsqueeze", a, axes=[0])
    if rhs_vector:
        b = ctx.op("unsqueeze", b, axes=[1])
    y = ctx.op("matmul", a, b)
    drop = ([y.type.rank - 2] if lhs_vector else []) + ([y.type.rank - 1] if rhs_vector else [])
    return ctx.op("squeeze", y, axes=drop) if drop else y


@converter("MatMul", since=1)
def matmul_op(ctx: NodeContext):
    return matmul(ctx, ctx.value(0), ctx.value(1))


@converter("Gemm", since=7)
def gemm(ctx: NodeContext):
    """Y = alpha * A' @ B' + beta * C, where A' and B' are optionally transposed."""
    a, b, c = ctx.value(0), ctx.value(1), ctx.optional_value(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    bias_fits = c is None or (beta == 1.0 and c.type.rank == 1 and not dims_conflict(c.type.shape[0], b.type.shape[0]))
    if not trans_a and trans_b and alpha == 1.0 and bias_fits and a.type.dtype.is_float:
        # torch's nn.Linear export: x @ w.T + bias is qjc's linear, which backends fuse best
        return ctx.graph.add_node("linear", [a, b] + ([c] if c is not None else []))[0]
    if trans_a:
        a = ctx.op("transpose", a, perm=[1, 0])
    if trans_b:
        b = ctx.op("transpose", b, perm=[1, 0])
    y = ctx.op("matmul", a, b)
    if alpha != 1.0:
        y = ctx.op("mul", y, ctx.scalar(alpha, y.type.dtype))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.op("mul", c, ctx.scalar(beta, c.type.dtype))
        y = ctx.op("add", y, c)
    return y
