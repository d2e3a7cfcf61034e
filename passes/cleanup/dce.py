"""Dead-code elimination: nodes and constants that no graph output depends on."""

from __future__ import annotations

from qjc.ir.graph import Graph
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import remove_dead_nodes


def eliminate_dead_code(graph: Graph) -> tuple[int, int]:
    """Remove dead nodes and unused constants here and in every fused subgraph.

    Inputs are never removed, even when unused: they are the graph's (or the fused group's)
    signature. Returns (nodes removed, constants removed)."""
    nodes = remove_dead_nodes(graph)
    constants = 0
    for node in graph.nodes:
        if node.subgraph is not None:
            n, c = eliminate_dead_code(node.subgraph)
            nodes += n
            constants += c
    used = {id(v) for node in graph.nodes for v in node.inputs} | {id(v) for v in graph.outputs}
    for const in list(graph.constants.values()):
        if id(const.value) not in used:
            graph.remove_constant(const.value)
            constants += 1
    return nodes, constants


class DeadCodeElimination:
    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        nodes, constants = eliminate_dead_code(graph)
        if nodes or constants:
            ctx.note(self.name, f"removed {nodes} node(s), {constants} constant(s)")
        return graph
