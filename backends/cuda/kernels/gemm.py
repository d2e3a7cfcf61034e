"""GEMM / GEMV steps for ``linear`` and ``matmul`` with a generated epilogue (templates/gemm.cu.j2).

The epilogue is every elementwise op the planner hung after the product (bias, activation,
residual add, casts): generated expression code evaluated on each f32 accumulator, so the
product is written once, already finished.

A linear may also have an RMSNorm prologue (the planner's ``norm_prologue``): A is then computed
from the norm's input as it is loaded. The GEMV sums each row's squares in its main loop and scales
its dot products by 1/rms at the end; larger M stores the normalized A once into a workspace (one extra
kernel) and runs the GEMM on it.
"""

from __future__ import annotations

from qjc.backends.cuda.cexpr import c_float, compute_ctype, ctype, itemsize, product
from qjc.backends.cuda.exprgen import IX, Index, NotFusable, Params
from qjc.backends.cuda.kernels.base import KernelSource, Workspace, indent, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.backends.cuda.kernels.epilogue import store_accumulator
from qjc.backends.cuda.kernels.quant_weights import mma_code_bytes, template_facts
from qjc.ir.dims import Dim, contiguous_strides
from qjc.ir.dtypes import f32, i32
from qjc.ir.graph import Node, Value

GEMV_MAX_SPLITS = 16
GEMV_MAX_M = 8  # rows the plain GEMV keeps in registers
GEMV_Q_MAX_M = 32  # rows the quantized GEMV takes (8 per grid.z block)
GEMV_Q_UNROLL = (2, 2)  # 16-byte code loads per column each gemv_q lane keeps in flight: one row, up to 8 rows
GEMV_Q_COLS = 4  # columns per warp for one row: the converted activations serve all of them
GEMV_SPLIT_MAX_N = 8192  # wider outputs fill the GPU without splitting K
GEMV_MMA_WIDE_SPLITS, GEMV_MMA_WIDE_MAX_N = 4, 65536  # the tensor-core GEMV's K splits of wider outputs
# Outputs at least this wide take the tensor-core 4-bit GEMV (gemv_mma.cu.j2). Measured on an H200, Llama-3.2-1B
# shape, int4 groups of 64, batch 1, us per step of each GEMV's 16 layers (gemv_mma / gemv_q): the vocabulary
# projection (N = 128256) 71.4 / 82.0 for one, but q/k/v, o, gate/up and down 132-240 / 110-224, slower.
GEMV_MMA_MIN_N = 32768
SPLITK_WORKSPACE_FLOATS = 1 << 21  # 8 MB of f32 partial sums; every GEMM step shares the bytes
LT_WORKSPACE_FLOATS = SPLITK_WORKSPACE_FLOATS  # cuBLASLt's scratch: the split-K one, or one of its size
LT_TYPES = {"f32": 0, "f16": 1, "bf16": 2}  # QJC_LT_* in common.cuh



def _epilogue_value(gen, out: Value, bias: Value | None, n_index: Index, acc: str) -> str:
    """The product as the graph has it: plus the linear's bias, rounded to the output dtype."""
    ct = compute_ctype(out.type.dtype)
    value = f"({ct}){acc}"
    if bias is not None:
        value = f"({value} + {gen.value(bias, n_index)})"
    if out.type.dtype.name in ("f16", "bf16"):  # as an unfused linear would store it
        value = f"q_round<{ctype(out.type.dtype)}>({value})"
    return value


def _pair_epilogue(ctx: KernelContext, params: Params, outputs: list[Value], out: Value, bias: Value | None,
                   folded: bool, o_shape, batch_dims, fname: str = "epilogue_pair",
                   doc: str = "The epilogue") -> dict | None:
    """The epilogue for column pairs (n, n + 1): lanes 0 and 1 of the expression generator, so
    operands contiguous along n are read as one pair and each output is stored 4 bytes at once
    (None for outputs that are not 16-bit)."""
    if out.type.dtype.name not in ("f16", "bf16"):
        return None
    gen = ctx.generator(params, outputs, vec=2)
    if folded:
        lead = gen.delinearize(IX("m", 0), o_shape[:-1])
        flat = IX("(m * N_ + n)", 1)
    else:
        lead = gen.delinearize(IX("b", 0), batch_dims) if batch_dims else ()
        lead = tuple(lead) + (IX("m", 0),)
        flat = IX("((b * M_ + m) * N_ + n)", 1)
    index = Index(flat=flat, multi=tuple(lead) + (IX("n", 1),))
    ct = compute_ctype(out.type.dtype)
    value = _epilogue_value(gen, out, bias, Index(flat=IX("n", 1), multi=(IX("n", 1),)), "acc")
    gen.body.append(f"const {ct} c_acc = {value};")
    gen.bind(out, index, "c_acc")
    ptrs = [params.ptr(v, write=True) for v in outputs]
    for k, v in enumerate(outputs):
        gen.store_lanes(v, gen.value(v, index), f"o{k}")
    return {"fname": fname, "doc": doc, "decls": indent(params.declarations(), 2), "pre": indent(gen.pre, 2),
            "body": indent(gen.body, 4), "flat": flat.base,
            "outs": [{"ctype": ctype(v.type.dtype), "ptr": p} for v, p in zip(outputs, ptrs)]}


def _norm_prologue(ctx: KernelContext, params: Params, norm: Node, a_val: Value) -> dict:
    """Device code for A = chain(rms_norm(x)) at row ``m``, columns ``k .. k + VEC - 1``: the norm's
    input there (for a row's sum of squares), A itself given the row's 1/rms and rounded to A's dtype as
    a stored A would be (``normalized_a``: many rows, stored once), and A before the 1/rms (``load_a``:
    the GEMVs scale their dot products instead; the planner checked that the chain only scales)."""
    shape = a_val.type.shape

    def generator():
        gen = ctx.generator(params, [], vec="VEC")
        lead = gen.delinearize(IX("m", 0), shape[:-1])
        return gen, Index(flat=IX("(m * K_ + k)", 1), multi=tuple(lead) + (IX("k", 1),))

    def chain(gen, index, x: str) -> str:
        """A at ``index`` with the norm's output bound to ``x`` times the norm's own weight."""
        y = x
        if len(norm.inputs) > 1:
            weight = norm.inputs[1]
            y = f"({y} * {gen.value(weight, gen.broadcast_index(index, shape, weight.type.shape))})"
        yv = gen.fresh("y")
        gen.body.append(f"const {compute_ctype(norm.outputs[0].type.dtype)} {yv} = {y};")
        gen.bind(norm.outputs[0], index, yv)
        return gen.value(a_val, index)

    g_in, index = generator()
    g_in.body.append(f"x[lane] = {g_in.value(norm.inputs[0], index)};")
    g_a, index = generator()
    a_scaled = chain(g_a, index, f"({g_a.value(norm.inputs[0], index)} * rstd)")
    g_a.body.append(f"x[lane] = q_cvt(q_store_cvt<ab_t>({a_scaled}));")
    g_u, index = generator()
    x_in = g_u.value(norm.inputs[0], index)
    g_u.body.append(f"x[lane] = {chain(g_u, index, x_in)};")
    g_u.body.append(f"ss += {x_in} * {x_in};")
    read = range(len(params.values))  # so far only what the prologue loads: it is generated first
    return {"norm_in_pre": indent(g_in.pre, 2), "norm_in_body": indent(g_in.body, 4),
            "norm_a_pre": indent(g_a.pre, 2), "norm_a_body": indent(g_a.body, 4),
            "norm_u_pre": indent(g_u.pre, 2), "norm_u_body": indent(g_u.body, 4),
            "norm_eps": c_float(norm.attrs.get("eps", 0.0), "float"), "norm_vec": 16 // itemsize(a_val.type.dtype),
            # the prologue's loads are 16-byte vectors when its operands are aligned
            "norm_aligned_host": " && ".join(f"q_aligned(p[{i}], 16)" for i in read) or "true"}


def _blaslt_facts(ctx: KernelContext, params: Params, workspaces: list[Workspace], core: Node,
                  outputs: list[Value], bias: Value | None, folded: bool, o_shape, n_dim,
                  shared_ws: int | None) -> dict:
    """Whether the launcher tries cuBLASLt first (dense f32 / f16 / bf16 weights, one batch of rows), and
    how: straight into the output with cuBLASLt's bias epilogue when the step stores only the product
    (+ bias); else into a workspace that a generated epilogue kernel finishes: the product + bias rounded
    to the output's 16-bit dtype (exactly what the fused epilogue starts from; N even), or an f32 product.
    Appends the workspaces it needs (cuBLASLt's own scratch reuses the split-K one where the step has it)."""
    a_val, b_val, out = core.inputs[0], core.inputs[1], core.outputs[0]
    dtype = a_val.type.dtype
    if (not ctx.blaslt or not folded or dtype.name not in LT_TYPES or b_val.type.dtype != dtype
            or out.type.dtype.name not in LT_TYPES):
        return {"blaslt": False, "lt_direct": False, "lt_rounded": False}
    bias_fits = bias is None or (bias.type.dtype == out.type.dtype and bias.type.rank == 1 and ctx.materialized(bias))
    direct = len(outputs) == 1 and outputs[0] is out and bias_fits
    rounded = (not direct and bias_fits and out.type.dtype == dtype and dtype.name in ("f16", "bf16")
               and isinstance(n_dim, int) and n_dim % 2 == 0)
    facts = {"blaslt": True, "lt_direct": direct, "lt_rounded": rounded, "lt_ab_type": LT_TYPES[dtype.name],
             "lt_bias_index": -1, "lt_bias_type": -1}
    if (direct or rounded) and bias is not None:
        facts.update(lt_bias_index=int(params.ptr(bias)[1:]), lt_bias_type=LT_TYPES[bias.type.dtype.name])
    if direct:
        facts.update(lt_d_index=int(params.ptr(out, write=True)[1:]), lt_d_type=LT_TYPES[out.type.dtype.name])
    else:  # the product in a workspace: rounded to A's 16-bit dtype, or f32
        d_dtype = dtype if rounded else f32
        facts.update(lt_d_index=len(params.values) + len(workspaces), lt_d_type=LT_TYPES[d_dtype.name])
        workspaces.append(Workspace(d_dtype, product(o_shape)))
    if shared_ws is None:
        shared_ws = len(params.values) + len(workspaces)
        workspaces.append(Workspace(f32, LT_WORKSPACE_FLOATS))
    facts.update(lt_ws_index=shared_ws, lt_ws_bytes=4 * LT_WORKSPACE_FLOATS)
    return facts


def gemm_kernel(ctx: KernelContext, core: Node, outputs: list[Value], prologue: Node | None = None) -> KernelSource:
    """``prologue``: an RMSNorm whose result reaches A through inline elementwise ops (the planner
    checked the chain); A then has no buffer of its own."""
    a_val, b_val = core.inputs[0], core.inputs[1]
    bias = core.inputs[2] if core.op == "linear" and len(core.inputs) == 3 else None
    out = core.outputs[0]
    dtype = a_val.type.dtype
    params = Params()
    if prologue is None and not ctx.materialized(a_val):  # the planner expected a prologue it did not wire up
        raise NotFusable(a_val, "a GEMM operand needs a buffer")
    norm = _norm_prologue(ctx, params, prologue, a_val) if prologue is not None else None
    a_ptr = None if norm is not None else params.ptr(a_val)
    quant = None
    if b_val.type.dtype.is_quant:  # codes + scales (+ zeros), dequantized in registers as they load
        parts = ctx.quant_parts[id(b_val)]
        b_ptr = params.ptr(parts.data)
        quant = template_facts(parts, params)
        quant.update(data_index=int(quant["data_ptr"][1:]), scales_index=int(quant["scales_ptr"][1:]),
                     zeros_index=int(quant["zeros_ptr"][1:]) if parts.zeros is not None else -1)
    else:
        b_ptr = params.ptr(b_val)
    out_ptrs = [params.ptr(v, write=True) for v in outputs]
    del out_ptrs
    b_nk = core.op == "linear"
    a_shape, b_shape, o_shape = a_val.type.shape, b_val.type.shape, out.type.shape
    k_dim = a_shape[-1]
    if b_nk:
        n_dim = b_shape[0]
        folded = True
    else:
        n_dim = b_shape[-1]
        folded = len(b_shape) == 2  # a plain weight: every batch row of A is one more row of M
    if folded:
        m_dim = product(a_shape[:-1])
        batch_dims: tuple[Dim, ...] = ()
    else:
        m_dim = a_shape[-2]
        batch_dims = o_shape[:-2]
    batch = product(batch_dims)

    # ---- batch offsets -------------------------------------------------------------------------
    gen_b = ctx.generator(params, outputs, vec=1)
    lines = []
    if batch_dims:
        multi = gen_b.delinearize(IX("b", 0), batch_dims)
        terms = {"a_off": [], "b_off": []}
        for name, shape in (("a_off", a_shape), ("b_off", b_shape)):
            own = shape[:-2]
            strides = contiguous_strides(shape)[:-2]
            lead = len(batch_dims) - len(own)
            for k, d in enumerate(own):
                if d == 1 and batch_dims[lead + k] != 1:
                    continue
                terms[name].append(f"{multi[lead + k].base} * (idx_t){ctx.kernel_dim(strides[k])}")
        lines = gen_b.pre + gen_b.body
        lines.append(f"a_off = {' + '.join(terms['a_off']) or '0'};")
        lines.append(f"b_off = {' + '.join(terms['b_off']) or '0'};")
    else:
        lines = ["(void)a; (void)b;", "a_off = 0;", "b_off = 0;"]
    batch_code = indent(lines, 2)
    # host check that every batch start stays 16-byte aligned for cp.async
    a_batch_stride = product(a_shape[-2:]) if batch_dims else 0
    b_batch_stride = product(b_shape[-2:]) if batch_dims else 0
    batch_aligned = " && ".join(f"({ctx.host_dim(s)}) % 8 == 0" for s in (a_batch_stride, b_batch_stride)
                                if s != 0) or "true"

    # ---- epilogue ----------------------------------------------------------------------------------
    gen = ctx.generator(params, outputs, vec=1)
    if folded:
        lead = gen.delinearize(IX("m", 0), o_shape[:-1])
        index = Index(flat=IX("(m * N_ + n)", 0), multi=tuple(lead) + (IX("n", 0),))
    else:
        lead = gen.delinearize(IX("b", 0), batch_dims) if batch_dims else ()
        index = Index(flat=IX("((b * M_ + m) * N_ + n)", 0), multi=tuple(lead) + (IX("m", 0), IX("n", 0)))
    store_accumulator(gen, params, out, outputs, index, bias, Index(flat=IX("n", 0), multi=(IX("n", 0),)))

    pair = _pair_epilogue(ctx, params, outputs, out, bias, folded, o_shape, batch_dims)
    pair_fns = [pair] if pair else []
    workspaces: list[Workspace] = []
    # GEMV only where M can be small; the CUDA-core GEMM only where the tensor cores may not apply.
    # Quantized B whose codes split into whole 16-byte chunks also gets gemv_q, for up to 32 rows.
    gemv_q = quant is not None and quant["loads_16_bytes"] and dtype.name in ("f32", "f16", "bf16")
    gemv_rows = GEMV_Q_MAX_M if gemv_q else GEMV_MAX_M
    gemv = b_nk and dtype.is_float and (not isinstance(m_dim, int) or m_dim <= gemv_rows)
    gemv_q = gemv_q and gemv
    # the tensor-core 4-bit GEMV only where it measured faster than gemv_q: the vocabulary projection
    mma_wide = gemv_q and isinstance(n_dim, int) and n_dim >= GEMV_MMA_MIN_N
    mma_lb = mma_code_bytes(ctx.quant_parts[id(b_val)].scheme, dtype.name) if mma_wide else 0
    tensor_cores = dtype.name in ("f16", "bf16") and quant is None  # quantized B: GEMV and CUDA cores
    static_aligned = all(isinstance(d, int) and d % 8 == 0 for d in (k_dim, a_batch_stride, b_batch_stride)) and \
        (b_nk or (isinstance(n_dim, int) and n_dim % 8 == 0))
    simt = not tensor_cores or not static_aligned
    n_static = n_dim if isinstance(n_dim, int) else None
    max_splits = GEMV_MAX_SPLITS if gemv and n_static is not None and n_static <= GEMV_SPLIT_MAX_N else 1
    # the tensor-core GEMV splits wide outputs too: it keeps fewer columns in flight per SM than gemv_q
    mma_splits = max_splits
    if mma_lb and max_splits == 1 and n_static is not None and n_static <= GEMV_MMA_WIDE_MAX_N:
        mma_splits = GEMV_MMA_WIDE_SPLITS
    ws_index = tickets_index = 0
    if gemv and max(max_splits, mma_splits) > 1:
        # partial sums of the K splits, and the arrival tickets of the last-block epilogue (one per
        # column block and 8-row chunk, or per warp's 32 columns in gemv_mma; zeroed once, the last rearms its own)
        # (+ each split's sums of squares per row under a norm prologue)
        rows = max(max_splits * gemv_rows, mma_splits * GEMV_MAX_M)
        workspaces.append(Workspace(f32, rows * (n_static + (norm is not None))))
        workspaces.append(Workspace(i32, -(-n_static // 8) * -(-gemv_rows // 8), persistent=True))
    if workspaces:
        ws_index = len(params.values)
        tickets_index = ws_index + 1
    # split-K partial sums of the tensor-core GEMM (small problems only: a fixed-size scratch)
    splitk_ws, splitk_ws_index = 0, 0
    if tensor_cores:
        splitk_ws = SPLITK_WORKSPACE_FLOATS
        splitk_ws_index = len(params.values) + len(workspaces)
        workspaces.append(Workspace(f32, splitk_ws))
    a_index = int(a_ptr[1:]) if a_ptr is not None else -1
    if norm is not None:  # the normalized A, stored once when M is too large for the GEMV
        a_index = len(params.values) + len(workspaces)
        workspaces.append(Workspace(dtype, product(a_shape)))
    lt = _blaslt_facts(ctx, params, workspaces, core, outputs, bias, folded, o_shape, n_dim,
                       splitk_ws_index if tensor_cores else None)
    if lt["lt_rounded"]:  # cuBLASLt adds the bias: the epilogue after it starts from the rounded sum
        pair_fns.append(_pair_epilogue(ctx, params, outputs, out, None, folded, o_shape, batch_dims,
                                       "lt_epilogue_pair", "The epilogue after cuBLASLt's product + bias"))
    nptr = len(params.values) + len(workspaces)
    acc_t = "float" if dtype.name in ("f32", "f16", "bf16") else ("double" if dtype.name == "f64" else "int64_t")
    source = render(
        "gemm.cu.j2",
        nptr=nptr, nsym=ctx.nsym, idx_t=ctx.index_type(product(o_shape), product(a_shape), product(b_shape)),
        ab_ctype=ctype(dtype), acc_t=acc_t, b_nk=b_nk, b_nk_cpp="true" if b_nk else "false",
        tensor_cores=tensor_cores, simt=simt, mma_type="bf16" if dtype.name == "bf16" else "f16",
        quant=quant, gemv=gemv, gemv_vec=max(1, 16 // (2 if dtype.name in ("f16", "bf16") else 4)) if gemv else 1,
        gemv_q=gemv_q, gemv_mma=mma_lb, mma_splits=mma_splits,
        gemv_q_max_m=GEMV_Q_MAX_M, gemv_q_unroll=GEMV_Q_UNROLL, gemv_q_cols=GEMV_Q_COLS,
        max_splits=max_splits, ws_index=ws_index, tickets_index=tickets_index,
        splitk_ws=splitk_ws, splitk_ws_index=splitk_ws_index,
        a_index=a_index, b_index=int(b_ptr[1:]), norm_prologue=norm is not None, **(norm or {}), **lt,
        batch_code=batch_code, batch_aligned_host=batch_aligned,
        epi_decls=indent(params.declarations(), 2), epi_pre=indent(gen.pre, 2), epi_body=indent(gen.body, 2),
        pair_epilogue=pair is not None, pair_fns=pair_fns,
        m_host=ctx.host_dim(m_dim), n_host=ctx.host_dim(n_dim), k_host=ctx.host_dim(k_dim),
        batch_host=ctx.host_dim(batch), lda_host=ctx.host_dim(k_dim),
        ldb_host=ctx.host_dim(k_dim if b_nk else n_dim),
    )
    return KernelSource("gemm", source, list(params.values), list(outputs), workspaces,
                        notes={"epilogue_ops": len(gen.body), "blaslt": lt["blaslt"]})
