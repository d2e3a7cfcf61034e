"""How many kernels a graph launches, in total and per transformer layer.

A kernel is a fused group or any other op that moves or computes data. Pure metadata ops —
reshape, squeeze, unsqueeze, flatten, identity — are not kernels: in this IR every value is a dense
row-major tensor (a transpose materializes its result), so they only relabel a buffer.

Layers are counted by attention: each transformer layer has exactly one, so the kernels from one
attention up to (not including) the next are one layer's worth, wherever the layer boundary falls.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from qjc.ir.graph import Graph, Node

# Ops that relabel a contiguous buffer without touching its data.
METADATA_OPS = frozenset({"reshape", "squeeze", "unsqueeze", "flatten", "identity"})


def is_kernel(node: Node) -> bool:
    return node.op not in METADATA_OPS


def _is_attention(node: Node) -> bool:
    return node.op == "sdpa" or (node.op == "fused" and node.attrs.get("kind") == "attention")


def kernel_report(graph: Graph, num_layers: int | None = None) -> dict[str, Any]:
    """Kernel counts of ``graph`` (top level; a fused group counts once).

    Returns ``kernels`` (total), ``fused_groups``, ``unfused_ops``, ``by_kind`` (fused groups per
    kind), ``unfused_by_op``, ``layers`` (``num_layers`` if given, else the number of attentions;
    None without either) and ``kernels_per_layer`` (from the spacing of attentions when there are
    two or more, else total / layers; None without layers)."""
    kernels = [n for n in graph.nodes if is_kernel(n)]
    fused = [n for n in kernels if n.op == "fused"]
    unfused = [n for n in kernels if n.op != "fused"]
    attention_at = [i for i, n in enumerate(kernels) if _is_attention(n)]
    layers = num_layers if num_layers is not None else (len(attention_at) or None)
    per_layer: float | None = None
    if len(attention_at) >= 2 and num_layers in (None, len(attention_at)):
        span = attention_at[-1] - attention_at[0]
        per_layer = span / (len(attention_at) - 1)
    elif layers:
        per_layer = len(kernels) / layers
    return {
        "kernels": len(kernels),
        "fused_groups": len(fused),
        "unfused_ops": len(unfused),
        "by_kind": dict(sorted(Counter(n.attrs.get("kind", "") for n in fused).items())),
        "unfused_by_op": dict(sorted(Counter(n.op for n in unfused).items())),
        "layers": layers,
        "kernels_per_layer": per_layer,
    }
