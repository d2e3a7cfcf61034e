"""Fusion: decomposed patterns back to single ops, then groups of nodes into ``fused`` nodes.

A backend implements one kernel template per fused kind, so the set is small. Every fused node
carries ``kind`` (one of these strings) and ``name`` (unique in its graph), and its subgraph holds
the grouped nodes: operands in first-use order, results in production order, scalar constants
copied inside as immediates (larger constants stay operands).

``elementwise``
    A connected DAG of two or more elementwise ops (registry family "elementwise": unary, binary
    with broadcasting, where, cast, clamp) and broadcasts (expand), with one or more results. One
    loop nest covers it: every result has the broadcast shape of all members; smaller operands
    and interior values are broadcast. A lone elementwise op stays a plain op (it is one kernel
    either way). The other kinds form a group even around their core alone: the kind names the
    kernel template.
``rms_norm`` / ``layer_norm`` / ``softmax``
    One rms_norm, layer_norm, or softmax / log_softmax (kind "softmax") with an elementwise
    prologue on its input (a residual add, a cast to f32; a prologue result used elsewhere is a
    result of the group too: the residual stream) and an elementwise epilogue (a cast, a scale).
``gemm``
    One matmul or linear; a ``dequantize`` feeding its weight operand; an elementwise epilogue on
    its result with other operands broadcast (bias, activation, residual add, casts). Or, for
    parallel projections merged into one GEMM (q/k/v, gate/up: see parallel_gemms.py), a ``split``
    of its result along the last axis with the parts' epilogues: RoPE through the reshape /
    transpose that cut heads out of a part, the gated product of two parts (silu(gate) * up,
    gelu(gate) * up), elementwise ops of a part's shape. Such a group has several results (the
    rotated q and k in [B, H, S, D], the v part as it is), in production order.
``attention``
    One sdpa (grouped-query heads native: the "repeat_kv" broadcast is folded away first). Its
    k and v may be static KV caches it first appends the new keys and values to: the
    ``index_copy`` along the sequence axis of a [B, H, S, D] cache is in the group, and the new
    caches are results of the group beside the attention output. Its q and the new k, v may
    arrive through the split / reshape / transpose that cut heads out of a projection and its
    result may leave through the transpose / reshape that merges them back (a layout prologue and
    epilogue: index arithmetic in the kernel, never a transpose of the last axis).
``rope``
    Rotary embedding x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1) over the
    halves of the last axis: two multiplies, two slices, neg, concat and the add; x may arrive
    through a layout prologue as attention's operands do.
``swiglu`` / ``geglu``
    silu(gate) * up / gelu(gate) * up, with casts around the activation (gate and up are the two
    MLP projections, left to their own gemm groups).

Decomposed forms (RMSNorm as x * rsqrt(mean(x*x) + eps) * w, LayerNorm as mean/sub/var, softmax as
exp/sum, SiLU, GELU, attention as matmul-softmax-matmul, repeat_kv) are rewritten to the single op
first by the ``RecognizeDecomposed`` rule set (decomposed.py), so the kinds above see one spelling;
``MergeParallelGemms`` (parallel_gemms.py) turns linears that read one input into one linear and a
split before the partitioner runs.
"""

from qjc.passes.fusion.decomposed import DECOMPOSED_RULES, RecognizeDecomposed
from qjc.passes.fusion.parallel_gemms import PARALLEL_GEMM_RULES, MergeParallelGemms
from qjc.passes.fusion.partition import FusionPartitioner
from qjc.passes.fusion.report import kernel_report

FUSED_KINDS: tuple[str, ...] = (
    "elementwise", "rms_norm", "layer_norm", "softmax", "gemm", "attention", "rope", "swiglu", "geglu",
)

__all__ = [
    "DECOMPOSED_RULES", "FUSED_KINDS", "PARALLEL_GEMM_RULES", "FusionPartitioner", "MergeParallelGemms",
    "RecognizeDecomposed", "kernel_report",
]
