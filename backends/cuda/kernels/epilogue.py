"""The store side shared by the matrix-product kernels (GEMM/GEMV and conv2d)."""

from __future__ import annotations

from qjc.backends.cuda.cexpr import compute_ctype, ctype
from qjc.backends.cuda.exprgen import Index, Params
from qjc.ir.graph import Value


def store_accumulator(gen, params: Params, out: Value, outputs: list[Value], index: Index,
                      bias: Value | None = None, bias_index: Index | None = None) -> None:
    """Emit the epilogue of a product held in the f32 register ``acc``: add the bias, round the
    product to its dtype (as an unfused op would store it), then compute and store every group
    output at ``index`` through the fused elementwise tail."""
    ct = compute_ctype(out.type.dtype)
    value = f"({ct})acc"
    if bias is not None:
        value = f"({value} + {gen.value(bias, bias_index)})"
    if out.type.dtype.name in ("f16", "bf16"):
        value = f"q_round<{ctype(out.type.dtype)}>({value})"
    gen.body.append(f"const {ct} c_acc = {value};")
    gen.bind(out, index, "c_acc")
    for v in outputs:
        var = gen.value(v, index)
        gen.body.append(f"{params.ptr(v, write=True)}[{index.flat.base}] = q_store_cvt<{ctype(v.type.dtype)}>({var});")
