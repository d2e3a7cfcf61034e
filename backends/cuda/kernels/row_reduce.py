"""Row reductions with fused prologue and epilogue: RMSNorm, LayerNorm, softmax / log_softmax and
the plain reductions (sum, mean, max, min, prod, argmax, argmin) over trailing axes
(templates/row_reduce.cu.j2). One warp per row when the row is short, one block otherwise."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import c_float, compute_ctype, ctype, itemsize, product
from qjc.backends.cuda.exprgen import IX, Index, Params
from qjc.backends.cuda.kernels.base import KernelSource, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.ir.graph import Node, Value

NORMS = ("rms_norm", "layer_norm")
SOFTMAXES = ("softmax", "log_softmax")
REDUCTIONS = ("sum", "mean", "max", "min", "prod", "argmax", "argmin")
ROW_CORES = frozenset(NORMS + SOFTMAXES + REDUCTIONS)


def row_axis(node: Node) -> int:
    """The first reduced axis; the row is that axis and everything after it."""
    rank = len(node.inputs[0].type.shape)
    if node.op in NORMS or node.op in SOFTMAXES or node.op in ("argmax", "argmin"):
        return node.attrs["axis"] % max(rank, 1)
    axes = node.attrs["axes"]
    if axes is None:
        return 0
    return min(a % rank for a in axes) if axes else rank


def reduces_trailing(node: Node) -> bool:
    """Whether the node reduces a trailing block of axes (what the template takes)."""
    rank = len(node.inputs[0].type.shape)
    if node.op in SOFTMAXES or node.op in ("argmax", "argmin"):
        return rank == 0 or node.attrs["axis"] % rank == rank - 1
    if node.op in NORMS:
        return True
    axes = node.attrs["axes"]
    if axes is None:
        return True
    norm = sorted(a % rank for a in axes) if rank else []
    return norm == list(range(rank - len(norm), rank))


def _acc_type(node: Node) -> str:
    dt = node.inputs[0].type.dtype
    if dt.is_float:
        return "double" if dt.name == "f64" else "float"
    if node.op in ("sum", "prod", "mean"):
        return "int64_t"
    return compute_ctype(dt)


def _root(gen, shape, axis: int) -> Index:
    """The element at column ``c0 + lane`` of row ``row``."""
    outer, inner = shape[:axis], shape[axis:]
    multi: list[IX] = list(gen.delinearize(IX("row", 0), outer)) if outer else []
    if len(inner) == 1:
        multi.append(IX("c0", 1))
    elif inner:
        parts = gen.delinearize(IX("c0", 0), inner)
        multi.extend(parts[:-1])
        multi.append(IX(parts[-1].base, 1))
    return Index(flat=IX("(row * cols + c0)", 1), multi=tuple(multi))


def row_reduce_kernel(ctx: KernelContext, core: Node, outputs: list[Value], co_outputs: list[Value]) -> KernelSource:
    """``outputs``: what the epilogue stores (the core's own output when there is no epilogue);
    ``co_outputs``: prologue values (such as a residual sum) stored on the way."""
    x = core.inputs[0]
    shape = x.type.shape
    axis = row_axis(core)
    rows, cols = product(shape[:axis]), product(shape[axis:])
    mode = core.op
    per_element = mode in NORMS or mode in SOFTMAXES
    acc_t = _acc_type(core)
    params = Params()
    out_ptrs = [params.ptr(v, write=True) for v in outputs]
    co_ptrs = [params.ptr(v, write=True) for v in co_outputs]

    def prologue(store_co: bool):
        gen = ctx.generator(params, list(outputs) + list(co_outputs))
        index = _root(gen, shape, axis)
        var = gen.value(x, index)
        if store_co:
            for k, v in enumerate(co_outputs):
                gen.store_lanes(v, gen.value(v, index), f"co{k}")
        return gen, var

    g1, x1 = prologue(True)
    g2, x2 = prologue(False)

    def epilogue(cached: bool):
        gen = ctx.generator(params, list(outputs) + list(co_outputs))
        index = _root(gen, shape, axis)
        if cached:
            xv = gen.fresh("x")
            gen.body.append(f"const {acc_t} {xv} = cache[it][lane];")
        else:
            xv = gen.value(x, index)
        if mode == "rms_norm":
            y = f"({xv} * rstd)"
        elif mode == "layer_norm":
            y = f"(({xv} - mean) * rstd)"
        elif mode == "softmax":
            y = f"(q_exp({xv} - row_max) * inv_sum)"
        else:
            y = f"({xv} - row_max - log_sum)"
        if mode in NORMS:
            for param, op in zip(core.inputs[1:], ("*", "+")):
                pv = gen.value(param, gen.broadcast_index(index, shape, param.type.shape))
                y = f"({y} {op} {pv})"
        yv = gen.fresh("y")
        gen.body.append(f"const {compute_ctype(core.outputs[0].type.dtype)} {yv} = {y};")
        gen.bind(core.outputs[0], index, yv)
        for k, v in enumerate(outputs):
            gen.store_lanes(v, gen.value(v, index), f"o{k}")
        return gen

    cols_static = cols if isinstance(cols, int) else 0
    nt = 32 if cols_static and cols_static <= 1024 else (512 if cols_static >= 16384 else 256)
    block = 128 if nt == 32 else nt
    vec = max(1, min(8, 16 // max(itemsize(x.type.dtype), max(itemsize(v.type.dtype) for v in outputs))))
    context = dict(
        mode=mode, nt=nt, block=block, cols_static=cols_static, acc_t=acc_t,
        idx_t=ctx.index_type(product(shape)), nsym=ctx.nsym,
        rows_kernel=ctx.kernel_dim(rows), cols_kernel=ctx.kernel_dim(cols),
        rows_host=ctx.host_dim(rows), cols_host=ctx.host_dim(cols),
        inner_last_host=ctx.host_dim(shape[-1] if shape else 1),
        pro1_pre="\n".join(g1.pre), pro1_body="\n".join(g1.body), pro1_x=x1,
        pro2_pre="\n".join(g2.pre), pro2_body="\n".join(g2.body), pro2_x=x2,
        co_outs=[{"ctype": ctype(v.type.dtype), "ptr": p} for v, p in zip(co_outputs, co_ptrs)],
        per_element=per_element, vec=vec,
        eps=c_float(core.attrs.get("eps", 0.0), acc_t if acc_t == "double" else "float"),
        reduce_init={"sum": "0", "mean": "0", "prod": "1", "max": "q_lowest<acc_t>()",
                     "min": "q_highest<acc_t>()"}.get(mode, "0"),
    )
    if per_element:
        ec, er = epilogue(True), epilogue(False)
        context.update(epi_cached_pre="\n".join(ec.pre), epi_cached_body="\n".join(ec.body),
                       epi_pre="\n".join(er.pre), epi_body="\n".join(er.body),
                       outs=[{"ctype": ctype(v.type.dtype), "ptr": p} for v, p in zip(outputs, out_ptrs)])
    else:
        context.update(out_ptr=out_ptrs[0], out_ctype=ctype(outputs[0].type.dtype))
    decls = params.declarations()
    context["decls"] = "\n".join("  " + d for d in decls)
    context["nptr"] = len(params.values)
    source = render("row_reduce.cu.j2", **context)
    return KernelSource("row_reduce", source, list(params.values), list(outputs) + list(co_outputs))
