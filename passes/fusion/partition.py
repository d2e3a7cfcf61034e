"""The fusion partitioner: a module pass that turns groups of nodes into ``fused`` nodes.

Kinds claim nodes in the order of FINDERS; within a kind, nodes are visited in topological
order. Each group is collapsed as soon as it is complete, so later groups are checked for
convexity against a graph where earlier groups are already single nodes: no set of groups, each
acceptable alone, can together close a cycle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from qjc.ir.graph import Graph
from qjc.passes.fusion.group import GraphIndex, collapse, unique_group_name
from qjc.passes.fusion.kinds import (
    Finder,
    find_attention,
    find_elementwise,
    find_gated,
    find_gemm,
    find_reduction,
    find_rope,
)
from qjc.passes.fusion.split_gemm import find_gemm_with_split_epilogue
from qjc.passes.manager import PassContext

# Kind finders in the order they claim nodes. Attention first (its cache writes and head layouts);
# then the GEMM of merged projections, before RoPE and the gated product claim its parts' epilogues.
FINDERS: list[tuple[tuple[str, ...], Finder]] = [
    (("attention",), find_attention),
    (("gemm",), find_gemm_with_split_epilogue),
    (("rope",), find_rope),
    (("swiglu", "geglu"), find_gated),
    (("gemm",), find_gemm),
    (("rms_norm", "layer_norm", "softmax"), find_reduction),
    (("elementwise",), find_elementwise),
]


class FusionPartitioner:
    name = "fuse"

    def __init__(self, kinds: Iterable[str] | None = None) -> None:
        """``kinds`` limits the kinds formed (default: all of FUSED_KINDS)."""
        from qjc.passes.fusion import FUSED_KINDS

        self.kinds = frozenset(FUSED_KINDS if kinds is None else kinds)
        unknown = self.kinds - set(FUSED_KINDS)
        if unknown:
            raise ValueError(f"unknown fused kind(s) {sorted(unknown)}; known: {list(FUSED_KINDS)}")

    def _allowed(self, kinds: tuple[str, ...], caps) -> bool:
        wanted = [k for k in kinds if k in self.kinds]
        if caps is None:
            return bool(wanted)
        return any(k in caps.fused_kinds for k in wanted)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        caps = ctx.capabilities
        index = GraphIndex(graph)
        taken = {n.attrs.get("name", "") for n in graph.nodes if n.op == "fused"}
        formed: Counter[str] = Counter()
        for kinds, finder in FINDERS:
            if not self._allowed(kinds, caps):
                continue
            for node in list(graph.nodes):
                if node.op == "fused" or not index.alive(node):
                    continue
                group = finder(node, index, caps)
                if group is None or group.kind not in self.kinds:
                    continue
                collapse(index, group.members, group.kind, unique_group_name(group.kind, taken))
                formed[group.kind] += 1
        if formed:
            ctx.note(self.name, ", ".join(f"{k} x{c}" for k, c in sorted(formed.items())))
        return graph
