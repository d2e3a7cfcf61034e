"""cumsum steps (templates/cumsum.cu.j2)."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import ctype, product
from qjc.backends.cuda.kernels.base import KernelSource, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.ir.graph import Node


def cumsum_kernel(ctx: KernelContext, node: Node) -> KernelSource:
    x, out = node.inputs[0], node.outputs[0]
    shape = x.type.shape
    axis = node.attrs["axis"] % len(shape)
    dt = x.type.dtype
    acc_t = "float" if dt.name in ("f32", "f16", "bf16") else ("double" if dt.name == "f64" else ctype(dt))
    if dt.name in ("i8", "u8"):
        acc_t = "int32_t"
    source = render(
        "cumsum.cu.j2", idx_t=ctx.index_type(product(shape)), t_ctype=ctype(dt), acc_t=acc_t,
        exclusive=node.attrs["exclusive"], reverse=node.attrs["reverse"],
        outer_host=ctx.host_dim(product(shape[:axis])), len_host=ctx.host_dim(shape[axis]),
        inner_host=ctx.host_dim(product(shape[axis + 1:])),
    )
    return KernelSource("cumsum", source, [out, x], [out])
