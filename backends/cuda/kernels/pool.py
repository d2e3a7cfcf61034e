"""max_pool2d / avg_pool2d steps (templates/pool2d.cu.j2)."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import compute_ctype, ctype, product
from qjc.backends.cuda.kernels.base import KernelSource, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.ir.graph import Node


def pool2d_kernel(ctx: KernelContext, node: Node) -> KernelSource:
    x, out = node.inputs[0], node.outputs[0]
    is_max = node.op == "max_pool2d"
    kh, kw = node.attrs["kernel"]
    strides = node.attrs["strides"] or node.attrs["kernel"]
    pt, pl, pb, pr = node.attrs["pads"]
    dh, dw = node.attrs["dilations"] if is_max else (1, 1)
    _, _, h, w = x.type.shape
    _, _, oh, ow = out.type.shape
    dt = x.type.dtype
    acc_t = compute_ctype(dt) if is_max else ("double" if dt.name == "f64" else "float")
    source = render(
        "pool2d.cu.j2", is_max=is_max, idx_t=ctx.index_type(product(x.type.shape)), t_ctype=ctype(dt), acc_t=acc_t,
        h=h, w=w, kh=kh, kw=kw, oh=oh, ow=ow, sh=strides[0], sw=strides[1], pt=pt, pl=pl, pb=pb, pr=pr, dh=dh, dw=dw,
        count_include_pad=bool(node.attrs.get("count_include_pad", False)),
        total_host=ctx.host_dim(product(out.type.shape)),
    )
    return KernelSource("pool2d", source, [out, x], [out])
