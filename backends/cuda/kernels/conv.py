"""conv2d steps: a direct convolution with the generated epilogue (templates/conv2d.cu.j2), so a
following batch norm / bias / activation costs no extra pass over the output."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import ctype, product
from qjc.backends.cuda.exprgen import IX, Index, Params
from qjc.backends.cuda.kernels.base import KernelSource, indent, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.backends.cuda.kernels.epilogue import store_accumulator
from qjc.ir.graph import Node, Value
from qjc.ir.ops.nn import _window_out_size


def conv2d_kernel(ctx: KernelContext, core: Node, outputs: list[Value]) -> KernelSource:
    x, w = core.inputs[0], core.inputs[1]
    bias = core.inputs[2] if len(core.inputs) == 3 else None
    out = core.outputs[0]
    n, c, h, wd = x.type.shape
    o, _, kh, kw = w.type.shape
    sh, sw = core.attrs["strides"]
    pt, pl, pb, pr = core.attrs["pads"]
    dh, dw = core.attrs["dilations"]
    oh = _window_out_size(h, kh, sh, pt, pb, dh, False, "height")
    ow = _window_out_size(wd, kw, sw, pl, pr, dw, False, "width")
    params = Params()
    x_ptr, w_ptr = params.ptr(x), params.ptr(w)
    gen = ctx.generator(params, outputs, vec=1)
    shape = out.type.shape
    lead = gen.delinearize(IX("row0", 0), shape[:-1])
    index = Index(flat=IX("flat", 0), multi=tuple(lead) + (IX("il0", 0),))
    store_accumulator(gen, params, out, outputs, index, bias, Index(flat=IX("o", 0), multi=(IX("o", 0),)))
    total = product(shape)
    acc_t = "double" if x.type.dtype.name == "f64" else "float"
    source = render(
        "conv2d.cu.j2", nptr=len(params.values), nsym=ctx.nsym, idx_t=ctx.index_type(total, product(x.type.shape)),
        c=c, o=o, h=h, w=wd, kh=kh, kw=kw, oh=oh, ow=ow, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh, dw=dw,
        groups=core.attrs["groups"], t_ctype=ctype(x.type.dtype), acc_t=acc_t,
        x_index=int(x_ptr[1:]), w_index=int(w_ptr[1:]), decls=indent(params.declarations(), 2),
        epi_pre=indent(gen.pre, 4), epi_body=indent(gen.body, 4), total_host=ctx.host_dim(total),
    )
    return KernelSource("conv2d", source, list(params.values), list(outputs))
