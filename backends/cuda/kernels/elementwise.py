"""Elementwise kernels: one kernel per group of same-shaped outputs, whose body is the generated
expression code of every op feeding them that is not materialized (templates/elementwise.cu.j2)."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import ctype, itemsize, product
from qjc.backends.cuda.exprgen import IX, Index
from qjc.backends.cuda.kernels.base import KernelSource, indent, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.ir.graph import Value

THREADS = 256


def root_index(gen, shape) -> Index:
    """The index of lane ``lane`` of the group starting at flat offset ``flat0`` (``il0`` is its
    position in the last dim, ``row0`` the index of everything before it)."""
    rank = len(shape)
    flat = IX("flat0", 1)
    if rank == 0:
        return Index(flat=flat, multi=())
    if rank == 1:
        return Index(flat=flat, multi=(IX("il0", 1),))
    outer = gen.delinearize(IX("row0", 0), shape[:-1])
    return Index(flat=flat, multi=tuple(outer) + (IX("il0", 1),))


def vector_width(values: list[Value]) -> int:
    widest = max(itemsize(v.type.dtype) for v in values)
    return max(1, min(8, 16 // widest))


def elementwise_kernel(ctx: KernelContext, outputs: list[Value]) -> KernelSource:
    from qjc.backends.cuda.exprgen import Params

    shape = outputs[0].type.shape
    params = Params()
    out_ptrs = [params.ptr(v, write=True) for v in outputs]
    gen = ctx.generator(params, outputs)
    index = root_index(gen, shape)
    for k, v in enumerate(outputs):
        var = gen.value(v, index)
        gen.store_lanes(v, var, f"o{k}")
    numel = product(shape)
    last = shape[-1] if shape else 1
    vec = vector_width(outputs)
    source = render(
        "elementwise.cu.j2",
        idx_t=ctx.index_type(numel),
        nptr=len(params.values),
        nsym=ctx.nsym,
        decls=indent(params.declarations(), 2),
        numel_kernel=ctx.kernel_dim(numel),
        last_kernel=ctx.kernel_dim(last),
        numel_host=ctx.host_dim(numel),
        last_host=ctx.host_dim(last),
        pre=indent(gen.pre, 4),
        body=indent(gen.body, 6),
        outs=[{"ctype": ctype(v.type.dtype), "ptr": p, "index": int(p[1:]), "bytes": vec * itemsize(v.type.dtype)}
              for v, p in zip(outputs, out_ptrs)],
        vec=vec,
        threads=THREADS,
    )
    return KernelSource("elementwise", source, list(params.values), list(outputs),
                        notes={"vector_loads": gen.vector_loads})
