"""Common-subexpression elimination: merge nodes that compute the same thing, and equal constants.

Two nodes merge when they have the same op, the very same input values, equal attributes and no
subgraph (or subgraphs that print the same and hold the same constants). Every op is pure, so the
first of them can serve all uses. Nodes are visited in topological order with their inputs already
merged, so whole duplicated chains collapse in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any

import numpy as np

from qjc.ir.graph import Graph, Node, Value
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import substitute

# Larger constants are not hashed: reading gigabytes of weights to find a rare duplicate costs more
# than it saves, and frontends already share tied weights by name.
DEFAULT_MAX_CONSTANT_BYTES = 1 << 20


class _NotComparable(Exception):
    pass


def attr_key(value: Any) -> Hashable:
    """A hashable stand-in for an attribute value that is equal exactly when the values are.

    Floats compare by bit pattern (via float.hex): NaN equals NaN, and 0.0 differs from -0.0
    (they give different results, e.g. as a divisor). Type tags keep True apart from 1 and 1.0."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (tuple, list)):
        return ("seq", tuple(attr_key(v) for v in value))
    if value is None or isinstance(value, str):
        return (type(value).__name__, value)
    try:
        hash(value)
    except TypeError:
        raise _NotComparable from None
    return (type(value).__qualname__, value)  # DType, SymExpr: frozen dataclasses


def _constants_fingerprint(graph: Graph) -> tuple:
    """Printed IR names constants but not their data; this covers the data, nested graphs too."""
    parts = []
    for name, const in graph.constants.items():
        if not isinstance(const.data, np.ndarray):
            raise _NotComparable  # no data (or packed data): cannot prove two are equal
        parts.append((name, str(const.value.type), _data_digest(const.data)))
    for node in graph.nodes:
        if node.subgraph is not None:
            parts.append(_constants_fingerprint(node.subgraph))
    return tuple(parts)


def _data_digest(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def node_key(node: Node) -> Hashable | None:
    """Equal keys mean interchangeable nodes; None means this node never merges."""
    try:
        attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
        sub = None
        if node.subgraph is not None:
            from qjc.ir.printer import print_graph

            sub = (print_graph(node.subgraph), _constants_fingerprint(node.subgraph))
    except _NotComparable:
        return None
    return (node.op, tuple(id(v) for v in node.inputs), attrs, sub)


def _merge_constants(graph: Graph, max_bytes: int, mapping: dict[Value, Value]) -> int:
    first_of: dict[tuple[str, str], Value] = {}
    merged = 0
    for const in list(graph.constants.values()):
        data = const.data
        if not isinstance(data, np.ndarray) or data.nbytes > max_bytes:
            continue
        key = (str(const.value.type), _data_digest(data))
        keep = first_of.setdefault(key, const.value)
        if keep is not const.value:
            mapping[const.value] = keep
            graph.remove_constant(const.value)
            merged += 1
    return merged


def eliminate_common_subexpressions(graph: Graph,
                                    max_constant_bytes: int = DEFAULT_MAX_CONSTANT_BYTES) -> int:
    """Merge duplicates in ``graph`` and its subgraphs; returns how many nodes and constants went."""
    merged = 0
    for node in graph.nodes:
        if node.subgraph is not None:  # first, so that equal subgraphs also print equal
            merged += eliminate_common_subexpressions(node.subgraph, max_constant_bytes)
    mapping: dict[Value, Value] = {}
    merged += _merge_constants(graph, max_constant_bytes, mapping)
    first_of: dict[Hashable, Node] = {}
    gone: set[int] = set()
    for node in graph.nodes:
        node.inputs = [mapping.get(v, v) for v in node.inputs]  # chains resolve: mapped values are final
        key = node_key(node)
        if key is None:
            continue
        keep = first_of.setdefault(key, node)
        if keep is not node:
            mapping.update(zip(node.outputs, keep.outputs, strict=True))
            gone.add(id(node))
    substitute(graph, mapping)
    if gone:
        graph.forget_names([v for n in graph.nodes if id(n) in gone for v in n.outputs])
        graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return merged + len(gone)


class CommonSubexpressionElimination:
    name = "cse"

    def __init__(self, max_constant_bytes: int = DEFAULT_MAX_CONSTANT_BYTES) -> None:
        self.max_constant_bytes = max_constant_bytes

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        merged = eliminate_common_subexpressions(graph, self.max_constant_bytes)
        if merged:
            ctx.note(self.name, f"merged {merged} duplicate node(s) and constant(s)")
        return graph
