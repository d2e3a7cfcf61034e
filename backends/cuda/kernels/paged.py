"""Steps for the paged KV cache (qjc.ir.ops.paged): the in-place cache write and attention over the
pool (templates/paged_kv_write.cu.j2, templates/paged_attention.cu.j2)."""

from __future__ import annotations

import math

from qjc.backends.cuda.cexpr import ctype
from qjc.backends.cuda.exprgen import IX, Index, Params
from qjc.backends.cuda.kernels.base import NAME_PLACEHOLDER, KernelSource, Workspace, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.errors import BackendError
from qjc.ir.dims import Dim, contiguous_strides
from qjc.ir.dtypes import parse_dtype
from qjc.ir.graph import Node, Value
from qjc.ir.ops.paged import pool_dims

MIN_CHUNK = 32  # keys per slice at least: two rounds of a CTA's key groups at head dim 64
MAX_SPLITS = 32
MAX_TICKETS = 1024  # (row, kv head) pairs that may split: more CTAs than that fill the GPU unsplit
PART_SLOTS = 2048  # CTAs x kv heads whose partials fit the workspace (the launcher splits no further)
# CTAs per SM the key slices aim for: with many rows (batched decode) two per SM left each CTA hundreds of keys
# walked in dependent rounds; the default is the best of 2/4/8 measured on an H200 (bench/RESULTS.md)
CTAS_PER_SM = 4


def lane_layout(d: int, itemsize: int) -> tuple[int, int, int]:
    """(VE, LPK, NV): a key's row of ``d`` elements spread over LPK lanes (a power of two <= 32), each
    reading NV vectors of VE elements; the widest vector (16 bytes down to one element) that divides d."""
    for vec_bytes in (16, 8, 4, itemsize):
        ve = max(1, vec_bytes // itemsize)
        if d % ve:
            continue
        chunks = d // ve
        lpk = 1
        while lpk < 32 and chunks % (lpk * 2) == 0:
            lpk *= 2
        return ve, lpk, chunks // lpk
    raise AssertionError("unreachable: one-element vectors divide every d")


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


def _kv_write_facts(ctx: KernelContext, params: Params, nodes: list[Node]) -> dict:
    """What paged_kv_write.cu.j2 needs for cache writes that share the block table, positions and pool type;
    registers their operands in ``params`` (each output value shares its pool input's buffer)."""
    _, table, positions, _ = nodes[0].inputs
    pool_ptrs = [params.ptr(n.outputs[0], write=True) for n in nodes]
    table_ptr, pos_ptr = params.ptr(table), params.ptr(positions)
    return dict(t_ctype=ctype(nodes[0].inputs[0].type.dtype), pos_ctype=ctype(positions.type.dtype),
                pool_indices=[int(p[1:]) for p in pool_ptrs], table_index=int(table_ptr[1:]),
                pos_index=int(pos_ptr[1:]), b_host=ctx.host_dim(positions.type.shape[0]),
                s_host=ctx.host_dim(positions.type.shape[1]), max_blocks=ctx.host_dim(table.type.shape[1]),
                new_at=[element_function(ctx, params, n.inputs[3]) for n in nodes],
                **_pool_geometry(nodes[0], nodes[0].inputs[0]))


def _render_kv_write(ctx: KernelContext, params: Params, facts: dict) -> str:
    return render("paged_kv_write.cu.j2", nptr=len(params.values), nsym=ctx.nsym,
                  decls="\n".join("    " + d for d in params.declarations()), **facts)


def paged_kv_write_kernel(ctx: KernelContext, nodes: list[Node]) -> KernelSource:
    """One kernel for cache writes that share the block table, positions and pool type (a layer's K
    and V). Each output value shares its pool input's buffer (the planner aliases them): written in place."""
    params = Params()
    source = _render_kv_write(ctx, params, _kv_write_facts(ctx, params, nodes))
    return KernelSource("paged_kv_write", source, list(params.values), [n.outputs[0] for n in nodes])


def paged_attention_kernel(ctx: KernelContext, node: Node, out_view: tuple[Value, list[Dim]] | None = None,
                           writes: list[Node] | None = None) -> KernelSource:
    """``writes``: the K and V cache writes whose pools this attention reads (the planner's fuse_cache_writes),
    done by this step: inside the attention on a one-token step, by the write kernel first otherwise."""
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
    kv_write = _kv_write_facts(ctx, params, writes) if writes else None
    max_blocks = table.type.shape[1]
    if not isinstance(max_blocks, int):
        raise BackendError(f"{node.label}: the block table needs a static width, got {table.type}")
    max_splits = max(1, min(MAX_SPLITS, math.ceil(max_blocks * geo["block_size"] / MIN_CHUNK)))
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / math.sqrt(geo["d"])
    ve, lpk, nv = lane_layout(geo["d"], q.type.dtype.itemsize)
    source = render(
        "paged_attention.cu.j2", nptr=len(params.values), nsym=ctx.nsym, t_ctype=ctype(q.type.dtype),
        pos_ctype=ctype(positions.type.dtype), group=group, q_at=q_at, ve=ve, lpk=lpk, nv=nv,
        min_chunk=MIN_CHUNK, ctas_per_sm=CTAS_PER_SM, max_tickets=MAX_TICKETS, part_slots=PART_SLOTS,
        decls="\n".join("    " + d for d in params.declarations()), k_index=int(k_ptr[1:]),
        v_index=int(v_ptr[1:]), table_index=int(table_ptr[1:]), pos_index=int(pos_ptr[1:]),
        o_index=int(o_ptr[1:]), b_host=ctx.host_dim(q.type.shape[0]), s_host=ctx.host_dim(q.type.shape[2]),
        max_blocks=max_blocks, max_splits=max_splits, scale=f"{float(scale)!r}f",
        o_strides=[f"(idx_t){ctx.host_dim(d)}" for d in o_strides[:3]],
        new_at=kv_write["new_at"] if kv_write else [], **geo)
    if kv_write:  # the write kernel for longer steps, named after this kernel
        source = _render_kv_write(ctx, params, kv_write).replace(NAME_PLACEHOLDER, NAME_PLACEHOLDER + "_kvw") + source
    # partials of the key slices, [rows, Hq, splits, (max, sum, accumulator[D])] in f32, and the arrival
    # counters of the last-CTA merge (zeroed once; the merging CTA rearms its own)
    partials = Workspace(parse_dtype("f32"), PART_SLOTS * group * (geo["d"] + 2))
    tickets = Workspace(parse_dtype("i32"), MAX_TICKETS, persistent=True)
    written = [target, *(n.outputs[0] for n in writes or ())]
    return KernelSource("paged_attention", source, list(params.values), written, [partials, tickets])
