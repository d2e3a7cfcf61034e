"""Steps for the paged KV cache (qjc.ir.ops.paged): the in-place cache write and attention over the
pool (templates/paged_kv_write.cu.j2, templates/paged_attention.cu.j2)."""

from __future__ import annotations

import math

from qjc.backends.cuda.cexpr import ctype
from qjc.backends.cuda.exprgen import IX, Index, Params
from qjc.backends.cuda.kernels.base import KernelSource, Workspace, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.errors import BackendError
from qjc.ir.dims import Dim, contiguous_strides
from qjc.ir.dtypes import parse_dtype
from qjc.ir.graph import Node, Value
from qjc.ir.ops.paged import pool_dims

MIN_CHUNK = 128  # keys per slice at least (mirrors MIN_CHUNK in the template)
MAX_SPLITS = 32  # the merge kernel reads one slice per lane


def _pool_geometry(node: Node, pool: Value) -> dict:
    layout = node.attrs["layout"]
    num_blocks, heads, block_size, dim = pool_dims(pool.type, layout)
    if not all(isinstance(x, int) for x in (num_blocks, heads, block_size, dim)):
        raise BackendError(f"{node.label}: the KV pool {pool.type} needs static dims")
    if dim > 256:
        raise BackendError(f"{node.label}: head dim {dim} is not supported (at most 256)")
    strides = (heads * block_size * dim, block_size * dim, dim) if layout == "bhsd" else \
        (block_size * heads * dim, dim, heads * dim)
    return {"layout": layout, "num_blocks": num_blocks, "hkv": heads, "block_size": block_size, "d": dim,
            "pool_strides": list(strides)}


def element_function(ctx: KernelContext, params: Params, v: Value) -> dict[str, str]:
    """Device code computing element (b, h, s, d) of the rank-4 value ``v``: a load when it has a
    buffer, else its producers' arithmetic inline (RoPE of a slice of the QKV GEMM, say)."""
    gen = ctx.generator(params, vec=1)
    index = Index(multi=tuple(IX(n, 0) for n in ("b", "h", "s", "d")))
    var = gen.value(v, index)
    return {"body": "\n".join("    " + line for line in gen.pre + gen.body), "result": var}


def paged_kv_write_kernel(ctx: KernelContext, node: Node) -> KernelSource:
    """The output value shares the pool input's buffer (the planner aliases them): written in place."""
    pool, table, positions, new = node.inputs
    out = node.outputs[0]
    geo = _pool_geometry(node, pool)
    params = Params()
    pool_ptr = params.ptr(out, write=True)
    table_ptr, pos_ptr = params.ptr(table), params.ptr(positions)
    new_at = element_function(ctx, params, new)
    source = render(
        "paged_kv_write.cu.j2", nptr=len(params.values), nsym=ctx.nsym, t_ctype=ctype(pool.type.dtype),
        pos_ctype=ctype(positions.type.dtype), pool_index=int(pool_ptr[1:]), table_index=int(table_ptr[1:]),
        pos_index=int(pos_ptr[1:]), b_host=ctx.host_dim(positions.type.shape[0]),
        s_host=ctx.host_dim(positions.type.shape[1]), max_blocks=ctx.host_dim(table.type.shape[1]),
        decls="\n".join("    " + d for d in params.declarations()), new_at=new_at, **geo)
    return KernelSource("paged_kv_write", source, list(params.values), [out])


def paged_attention_kernel(ctx: KernelContext, node: Node,
                           out_view: tuple[Value, list[Dim]] | None = None) -> KernelSource:
    q, k_pool, v_pool, table, positions = node.inputs
    out = node.outputs[0]
    geo = _pool_geometry(node, k_pool)
    hq = q.type.shape[1]
    if not isinstance(hq, int):
        raise BackendError(f"{node.label}: query heads must be static, got {hq}")
    group = hq // geo["hkv"]
    target, o_strides = out_view or (out, contiguous_strides(out.type.shape))
    params = Params()
    o_ptr = params.ptr(target, write=True)
    k_ptr, v_ptr = params.ptr(k_pool), params.ptr(v_pool)
    table_ptr, pos_ptr = params.ptr(table), params.ptr(positions)
    q_at = element_function(ctx, params, q)
    max_blocks = table.type.shape[1]
    if not isinstance(max_blocks, int):
        raise BackendError(f"{node.label}: the block table needs a static width, got {table.type}")
    max_splits = max(1, min(MAX_SPLITS, math.ceil(max_blocks * geo["block_size"] / MIN_CHUNK)))
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / math.sqrt(geo["d"])
    source = render(
        "paged_attention.cu.j2", nptr=len(params.values), nsym=ctx.nsym, t_ctype=ctype(q.type.dtype),
        pos_ctype=ctype(positions.type.dtype), group=group, q_at=q_at,
        decls="\n".join("    " + d for d in params.declarations()), k_index=int(k_ptr[1:]),
        v_index=int(v_ptr[1:]), table_index=int(table_ptr[1:]), pos_index=int(pos_ptr[1:]),
        o_index=int(o_ptr[1:]), b_host=ctx.host_dim(q.type.shape[0]), s_host=ctx.host_dim(q.type.shape[2]),
        max_blocks=max_blocks, max_splits=max_splits, scale=f"{float(scale)!r}f",
        o_strides=[f"(idx_t){ctx.host_dim(d)}" for d in o_strides[:3]], **geo)
    # partials of the key slices: [rows, Hq, splits, (max, sum, accumulator[D])] in f32
    rows = q.type.shape[0] * q.type.shape[2]
    workspace = Workspace(parse_dtype("f32"), rows * hq * max_splits * (geo["d"] + 2))
    return KernelSource("paged_attention", source, list(params.values), [target], [workspace])
