"""Attention steps for ``sdpa`` (templates/attention.cu.j2): a tensor-core flash kernel for bf16 /
fp16 prefill and a CUDA-core kernel for everything else (fp32, decode with few query rows, odd
head dims). Both read K/V once with an online softmax, support GQA, bottom-right causal masking
and bool / additive masks broadcast to [B, Hq, Sq, Sk]."""

from __future__ import annotations

import math

from qjc.backends.cuda.cexpr import ctype
from qjc.backends.cuda.exprgen import Params
from qjc.backends.cuda.kernels.base import KernelSource, render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.errors import BackendError
from qjc.ir.dims import Dim, contiguous_strides
from qjc.ir.graph import Node, Value

TENSOR_CORE_HEAD_DIMS = (16, 32, 64, 128)
DECODE_MAX_SQ = 8  # up to this many query rows, the CUDA-core kernel (keys split across warps) wins


def _mask_strides(ctx: KernelContext, mask_shape: tuple[Dim, ...], logits: tuple[Dim, ...]) -> list[str]:
    padded = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    strides: list[str] = []
    acc: Dim = 1
    for k in range(3, -1, -1):
        d = padded[k]
        strides.append("0" if d == 1 and logits[k] != 1 else f"(idx_t){ctx.kernel_dim(acc)}")
        acc = acc * d
    return list(reversed(strides))



def attention_kernel(ctx: KernelContext, node: Node, views: dict[int, tuple[Value, list[Dim]]] | None = None,
                     out_view: tuple[Value, list[Dim]] | None = None) -> KernelSource:
    """``views`` maps input position (0 q, 1 k, 2 v) to (buffer value, its [B, H, S, D] element
    strides) for inputs read in place through transposes / reshapes; ``out_view`` is where the
    output is written the same way (the merged-heads layout the next GEMM reads)."""
    views = views or {}
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) == 4 else None
    out = node.outputs[0]
    sources = [views.get(i, (x, contiguous_strides(x.type.shape)))[0] for i, x in enumerate((q, k, v))]
    stride_of = {name: views.get(i, (x, contiguous_strides(x.type.shape)))[1]
                 for i, (name, x) in enumerate((("q", q), ("k", k), ("v", v)))}
    target, out_strides = out_view or (out, contiguous_strides(out.type.shape))
    stride_of["o"] = out_strides
    d, dv = q.type.shape[3], v.type.shape[3]
    if not isinstance(d, int) or not isinstance(dv, int):
        raise BackendError(f"sdpa {node.label}: head dims must be static, got {d} and {dv}")
    if d > 256 or dv > 256:
        raise BackendError(f"sdpa {node.label}: head dims above 256 are not supported (got {d}, {dv})")
    params = Params()
    o_ptr = params.ptr(target, write=True)
    q_ptr, k_ptr, v_ptr = (params.ptr(x) for x in sources)
    m_ptr = params.ptr(mask) if mask is not None else None
    dtype = q.type.dtype
    logits = (q.type.shape[0], q.type.shape[1], q.type.shape[2], k.type.shape[2])
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / math.sqrt(d)
    tensor_cores = dtype.name in ("f16", "bf16") and d == dv and d in TENSOR_CORE_HEAD_DIMS
    mask_strides = []
    if mask is not None:
        # strides are evaluated inside the kernel, where the symbols are a.s
        mask_strides = _mask_strides(ctx, mask.type.shape, logits)
    source = render(
        "attention.cu.j2",
        nptr=len(params.values), nsym=ctx.nsym, t_ctype=ctype(dtype), d=d, dv=dv,
        causal=node.attrs["causal"], has_mask=mask is not None,
        mask_bool=mask is not None and mask.type.dtype.name == "bool",
        mask_ctype=ctype(mask.type.dtype) if mask is not None else "float",
        mask_index=int(m_ptr[1:]) if m_ptr else 0, mask_strides=mask_strides,
        q_index=int(q_ptr[1:]), k_index=int(k_ptr[1:]), v_index=int(v_ptr[1:]), o_index=int(o_ptr[1:]),
        tensor_cores=tensor_cores, mma_type="bf16" if dtype.name == "bf16" else "f16",
        decode_max_sq=DECODE_MAX_SQ, scale=f"{float(scale)!r}f",
        strides={name: [f"(idx_t){ctx.host_dim(d)}" for d in st[:3]] for name, st in stride_of.items()},
        b_host=ctx.host_dim(q.type.shape[0]), hq_host=ctx.host_dim(q.type.shape[1]),
        hkv_host=ctx.host_dim(k.type.shape[1]), sq_host=ctx.host_dim(q.type.shape[2]),
        sk_host=ctx.host_dim(k.type.shape[2]),
    )
    return KernelSource("attention", source, list(params.values), [target])
