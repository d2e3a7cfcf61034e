"""Constant folding: evaluate nodes whose inputs are all constants and store the result instead.

The reference interpreter computes the value, so folding means exactly what the op means. Only
small results are folded (1 MiB per output by default): a folded broadcast or a cast of a large
weight would grow the artifact and the memory the engine loads, for no run-time gain worth it.
Nodes with no inputs (full, iota) fold too when their shape is static, and fused nodes fold
through their subgraph.
"""

from __future__ import annotations

import numpy as np

from qjc.errors import QJCError
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.interpreter import evaluate_node
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import substitute

DEFAULT_MAX_OUTPUT_BYTES = 1 << 20


def _foldable_inputs(node: Node, graph: Graph) -> list[np.ndarray] | None:
    args = []
    for v in node.inputs:
        data = graph.constant_data(v)
        # Plain arrays only: quantized weights (QuantizedArray data) stay packed, since folding
        # their dequantize would undo the compression; declared-only constants have no data.
        if not isinstance(data, np.ndarray):
            return None
        args.append(data)
    return args


def _small_enough(node: Node, max_bytes: int) -> bool:
    return all(v.type.is_static and v.type.nbytes() <= max_bytes for v in node.outputs)


def fold_constants(graph: Graph, ctx: PassContext, pass_name: str,
                   max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> int:
    """Fold in ``graph`` and its subgraphs; returns the number of nodes folded. The constants
    that fed them stay until dead-code elimination, which knows whether anything else reads them."""
    folded = 0
    for node in graph.nodes:
        if node.subgraph is not None:
            folded += fold_constants(node.subgraph, ctx, pass_name, max_output_bytes)
    mapping: dict[Value, Value] = {}
    gone: set[int] = set()
    for node in graph.nodes:
        node.inputs = [mapping.get(v, v) for v in node.inputs]  # see the constants folded so far
        args = _foldable_inputs(node, graph)
        if args is None or not _small_enough(node, max_output_bytes):
            continue
        try:
            # Overflow or 0/0 gives inf / NaN at run time too; the fold must not be noisier.
            with np.errstate(all="ignore"):
                results = evaluate_node(node, args)
        except QJCError as e:
            ctx.note(pass_name, f"left {node.label} unfolded: {e}")
            continue
        for out, data in zip(node.outputs, results, strict=True):
            if isinstance(data, np.ndarray):
                data = np.ascontiguousarray(data)
            graph.forget_names([out])  # the constant takes over the output's name
            mapping[out] = graph.add_constant(out.name, data, type=out.type)
        gone.add(id(node))
    substitute(graph, mapping)
    if gone:
        graph.nodes = [n for n in graph.nodes if id(n) not in gone]  # names already handed over
    return folded + len(gone)


class ConstantFolding:
    name = "fold_constants"

    def __init__(self, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.max_output_bytes = max_output_bytes

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        folded = fold_constants(graph, ctx, self.name, self.max_output_bytes)
        if folded:
            ctx.note(self.name, f"folded {folded} node(s)")
        return graph
