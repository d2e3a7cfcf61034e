"""The standard pass pipeline: a plain list, in order, one comment per step saying why it is there."""

from __future__ import annotations

from qjc.passes.cleanup import (
    Canonicalize,
    CommonSubexpressionElimination,
    ConstantFolding,
    DeadCodeElimination,
)
from qjc.passes.fusion import FusionPartitioner, MergeParallelGemms, RecognizeDecomposed
from qjc.passes.kv_cache import PagedKVCache
from qjc.passes.kv_cache_onnx import PagedKVCacheONNX
from qjc.passes.layout import LayoutCanonicalization
from qjc.passes.manager import Pass
from qjc.passes.memory_plan import MemoryPlanning


def standard_pipeline() -> list[Pass]:
    """A fresh list of pass instances (callers may append or drop steps)."""
    return [
        # Frontends leave identities, no-op casts/reshapes and transpose pairs; remove them first so
        # every later pass matches one spelling of each computation.
        Canonicalize(),
        # Shape arithmetic and small parameter math on constants become constants, which exposes
        # more no-ops (a reshape to a now-known shape) and spares the engine the work at run time.
        ConstantFolding(),
        # Folding can create the very no-ops the first canonicalization removes (e.g. a cast whose
        # target matches the folded input); clean them up before comparing nodes.
        Canonicalize(),
        # Exporters repeat subexpressions (one shape computation per layer, duplicated masks);
        # merge them so fusion and memory planning see each value once.
        CommonSubexpressionElimination(),
        # Drops whatever the steps above left unused, including constants that only fed folded
        # nodes, so the pattern rules below see single-use values where the model has them.
        DeadCodeElimination(),
        # A decoder's static KV cache becomes a paged pool with block tables when the backend asks
        # for it (Capabilities.layouts["kv_cache"]); before fusion, so attention fuses in its paged form.
        PagedKVCache(),
        # Models spell RMSNorm, LayerNorm, softmax, SiLU/GELU and attention as chains of small ops;
        # turn them back into the single ops the backend has kernels for (needs CSE'd inputs).
        RecognizeDecomposed(),
        # ONNX decoders thread their cache through past inputs and present outputs; they get the same
        # paged pool, which needs their attention already recognized as an sdpa (the step above).
        PagedKVCacheONNX(),
        # One spelling per GEMM (linear with [N, K] weights, or [K, N] where the backend wants it),
        # bias adds inside linears, no flatten/unflatten around GEMMs, batch norms folded into
        # convs: fusion then sees GEMMs whose epilogues follow them directly.
        LayoutCanonicalization(),
        # Projections of one input (q/k/v, gate/up) become one GEMM over concatenated weights and a
        # split: the input is read once, and fusion gives that GEMM the parts' RoPE or gated product.
        # After layout, so biases are inside the linears and merge with them.
        MergeParallelGemms(),
        # Group what one kernel can do (GEMM + epilogue, norm + prologue/epilogue, attention,
        # RoPE, SwiGLU, elementwise chains) into fused nodes, as the backend's capabilities allow.
        FusionPartitioner(),
        # Subgraphs copy the scalar constants they use, and fused groups repeat per layer: merge
        # equal constants again so the artifact holds each once.
        CommonSubexpressionElimination(),
        # Layout and fusion leave the original of every transposed or folded weight unused.
        DeadCodeElimination(),
        # Last, on the final node order: give every intermediate an offset in one reused arena.
        MemoryPlanning(),
    ]
