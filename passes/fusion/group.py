"""Fused groups: growing a set of nodes under the rules every group obeys, and collapsing it into
one ``fused`` node that carries the nodes as its subgraph.

Every group is checked, each time a node joins it, for:
- convexity: no path leaves the group and comes back into it (collapsing a non-convex set would
  make the fused node depend on itself). The graph is a DAG in topological order and every group
  already formed is a real fused node, so a search from the group's users that stops past the
  group's last position decides it exactly;
- the backend's Capabilities (ctx.capabilities; None accepts everything): the kind, the operand
  count, dtypes and shape limits of the group's boundary, and every op inside;
- symbols: a node whose attributes name a symbolic dim (a reshape to ``[batch*seq, 64]``) may only
  join if the symbol can be bound from the group's operand shapes, as the interpreter binds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from qjc.ir.dims import SymExpr
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.ops.registry import get_op

# Ops that compute each output element from the same-index elements of their (broadcast) operands.
ELEMENTWISE_LIKE_EXTRA = frozenset({"expand"})


def is_elementwise(node: Node) -> bool:
    """Elementwise registry family (unary, binary with broadcasting, where, cast, clamp) or a
    broadcast (expand), which a kernel does by indexing."""
    if node.op == "fused":
        return False
    return node.op in ELEMENTWISE_LIKE_EXTRA or get_op(node.op).family == "elementwise"


def is_scalar_constant(graph: Graph, value: Value) -> bool:
    """Small enough to copy into a subgraph as an immediate: one element of plain data."""
    data = graph.constant_data(value)
    return isinstance(data, np.ndarray) and data.size == 1 and value.type.is_static


class GraphIndex:
    """Positions and users of the nodes of ``graph``, rebuilt after every collapse."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        self.pos: dict[int, int] = {id(n): i for i, n in enumerate(self.graph.nodes)}
        self.users: dict[int, list[Node]] = {}
        for node in self.graph.nodes:
            seen: set[int] = set()
            for v in node.inputs:
                if id(v) not in seen:
                    seen.add(id(v))
                    self.users.setdefault(id(v), []).append(node)
        self.graph_outputs: set[int] = {id(v) for v in self.graph.outputs}

    def alive(self, node: Node) -> bool:
        return id(node) in self.pos

    def users_of(self, value: Value) -> list[Node]:
        return self.users.get(id(value), [])

    def ordered(self, nodes: Iterable[Node]) -> list[Node]:
        return sorted(nodes, key=lambda n: self.pos[id(n)])

    def is_convex(self, members: Iterable[Node]) -> bool:
        """No path from a member through a non-member back to a member."""
        member_ids = {id(n) for n in members}
        last = max(self.pos[i] for i in member_ids)
        stack = [u for i in member_ids for v in self._node(i).outputs for u in self.users_of(v)
                 if id(u) not in member_ids]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen or self.pos[id(node)] > last:
                continue  # later nodes only reach later nodes: none of them is a member
            seen.add(id(node))
            for v in node.outputs:
                for u in self.users_of(v):
                    if id(u) in member_ids:
                        return False
                    stack.append(u)
        return True

    def _node(self, node_id: int) -> Node:
        return self.graph.nodes[self.pos[node_id]]


class Boundary:
    """What crosses the edge of a set of nodes: operands in first-use order, scalar constants to
    copy inside, and results used outside (or returned) in production order."""

    def __init__(self, index: GraphIndex, members: list[Node]) -> None:
        graph = index.graph
        produced = {id(v) for n in members for v in n.outputs}
        member_ids = {id(n) for n in members}
        self.inputs: list[Value] = []
        self.scalars: list[Value] = []
        seen: set[int] = set()
        for node in members:
            for v in node.inputs:
                if id(v) in produced or id(v) in seen:
                    continue
                seen.add(id(v))
                (self.scalars if is_scalar_constant(graph, v) else self.inputs).append(v)
        self.outputs: list[Value] = [
            v for n in members for v in n.outputs
            if id(v) in index.graph_outputs or any(id(u) not in member_ids for u in index.users_of(v))
        ]


def _bare_symbol(dim: object) -> str | None:
    """The symbol's name when ``dim`` is exactly one symbol (``seq``, not ``seq+1`` or ``2*seq``)."""
    if isinstance(dim, SymExpr) and len(dim.terms) == 1:
        monomial, coefficient = dim.terms[0]
        if coefficient == 1 and len(monomial) == 1:
            return monomial[0]
    return None


def symbols_bound(members: list[Node], boundary: Boundary) -> bool:
    """Every symbol in a member's attributes is a whole dim of an operand, where the interpreter
    (and a kernel's launch code) can read its value."""
    bound = {_bare_symbol(d) for v in boundary.inputs for d in v.type.shape} - {None}
    for node in members:
        for value in node.attrs.values():
            items = value if isinstance(value, tuple) else (value,)
            for d in items:
                if isinstance(d, SymExpr) and not d.symbols <= bound:
                    return False
    return True


def capabilities_accept(caps: Any, kind: str, members: list[Node], boundary: Boundary,
                        symbols: dict[str, Any]) -> bool:
    """The backend takes a fused group of ``kind`` with this boundary and these ops (no backend: yes)."""
    if caps is None:
        return True
    probe = Node("fused", list(boundary.inputs), list(boundary.outputs), {"kind": kind, "name": ""})
    ok, _ = caps.accepts(probe, symbols)
    return ok and all(caps.accepts(n, symbols)[0] for n in members)


class GroupBuilder:
    """A set of nodes that grows one node at a time while it stays a valid group of ``kind``."""

    def __init__(self, index: GraphIndex, caps: Any, kind: str) -> None:
        self.index = index
        self.caps = caps
        self.kind = kind
        self.members: list[Node] = []
        self._ids: set[int] = set()

    def __contains__(self, node: Node) -> bool:
        return id(node) in self._ids

    def available(self, node: Node | None) -> bool:
        """Not yet in a group (of this builder or an earlier one) and still in the graph."""
        return (node is not None and node.op != "fused" and id(node) not in self._ids
                and self.index.alive(node))

    def valid(self, members: list[Node]) -> bool:
        boundary = Boundary(self.index, members)
        return (self.index.is_convex(members) and symbols_bound(members, boundary)
                and capabilities_accept(self.caps, self.kind, members, boundary, self.index.graph.symbols))

    def try_add(self, *nodes: Node, check=None) -> bool:
        """Add ``nodes`` together if the result is a valid group (and ``check(members)`` holds)."""
        if not all(self.available(n) for n in nodes):
            return False
        candidate = self.index.ordered(self.members + list(dict.fromkeys(nodes)))
        if check is not None and not check(candidate):
            return False
        if not self.valid(candidate):
            return False
        self.members = candidate
        self._ids = {id(n) for n in candidate}
        return True

    def produced(self) -> list[Value]:
        return [v for n in self.members for v in n.outputs]


def unique_group_name(kind: str, taken: set[str]) -> str:
    i = 0
    while f"{kind}_{i}" in taken:
        i += 1
    name = f"{kind}_{i}"
    taken.add(name)
    return name


def collapse(index: GraphIndex, members: list[Node], kind: str, name: str) -> Node:
    """Replace ``members`` (a valid group) by one fused node. The group's results keep their Value
    objects and names in the outer graph, so every use stays as it was; the subgraph holds copies
    of the nodes, its inputs named after the operands they bind."""
    graph = index.graph
    members = index.ordered(members)
    boundary = Boundary(index, members)
    sub = Graph(name)
    inner: dict[int, Value] = {}
    for v in boundary.inputs:
        inner[id(v)] = sub.add_input(v.name, v.type)
    for v in boundary.scalars:
        inner[id(v)] = sub.add_constant(v.name, graph.constant_data(v), type=v.type)
    for node in members:
        outs = sub.add_node(node.op, [inner[id(v)] for v in node.inputs], dict(node.attrs), node.subgraph,
                            names=[v.name for v in node.outputs], types=[v.type for v in node.outputs])
        inner.update((id(old), new) for old, new in zip(node.outputs, outs, strict=True))
    sub.set_outputs(*[inner[id(v)] for v in boundary.outputs])

    fused = Node("fused", list(boundary.inputs), list(boundary.outputs), {"kind": kind, "name": name}, sub)
    escaping = {id(v) for v in boundary.outputs}
    graph.forget_names([v for n in members for v in n.outputs if id(v) not in escaping])
    for v in boundary.outputs:
        v.producer = fused
    member_ids = {id(n) for n in members}
    last = index.pos[id(members[-1])]
    nodes = graph.nodes
    graph.nodes = [n for n in nodes[:last] if id(n) not in member_ids] + [fused] + \
                  [n for n in nodes[last + 1:] if id(n) not in member_ids]
    # Users of early members that sat before the last member now come before their producer.
    if not _ordered(graph):
        graph.toposort()
    index.refresh()
    return fused


def _ordered(graph: Graph) -> bool:
    defined = {id(v) for v in graph.inputs} | {id(c.value) for c in graph.constants.values()}
    for node in graph.nodes:
        if any(id(v) not in defined for v in node.inputs):
            return False
        defined.update(id(v) for v in node.outputs)
    return True
