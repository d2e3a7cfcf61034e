"""The SSA graph: values, nodes and graphs.

A Graph holds its inputs, its outputs, its nodes in topological order and its constants (named
values whose data lives beside the node list, so a printed graph stays small). Every node's
output types come from the op registry's type inference at construction time.
A fused group is an ordinary node (op ``fused``) whose ``subgraph`` holds the grouped ops.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qjc.errors import IRError
from qjc.ir.dtypes import from_numpy
from qjc.ir.types import SymRange, TensorType


class Value:
    """One SSA value. Identity is the object; the name is for printing and must be unique."""

    __slots__ = ("name", "type", "producer")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    subgraph: Graph | None = None

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.label} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    @property
    def label(self) -> str:
        """How errors name this node: its op and first output."""
        first = f"%{self.outputs[0].name}" if self.outputs else "<no outputs>"
        return f"{first} = {self.op}(...)"

    def __repr__(self) -> str:
        ins = ", ".join(f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"Node({outs} = {self.op}({ins}) {self.attrs})"


@dataclass(eq=False)
class Constant:
    value: Value
    data: Any  # np.ndarray, a QuantizedArray, or None when only the declaration is known


class Graph:
    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Constant] = {}
        self.symbols: dict[str, SymRange] = {}
        # Inputs that are state (a KV cache): the runtime owns them across calls, and the last
        # len(state) outputs are their new contents, in this order. Functional in the IR; a
        # backend may update them in place.
        self.state: list[str] = []
        # What a frontend knows beyond the computation, for the artifact: e.g. meta["llm"] (vocab,
        # max_seq, stop tokens) and meta["attachments"] ({relative path: bytes}, e.g. a tokenizer).
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # ---- construction -------------------------------------------------------------------------
    def fresh_name(self, hint: str = "") -> str:
        base = _sanitize(hint) if hint else ""
        if base and base not in self._names:
            return base
        while True:
            name = f"{base}{next(self._counter)}" if base else str(next(self._counter))
            if name not in self._names:
                return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise IRError(f"value name %{name} is defined twice in graph {self.name}")
        self._names.add(name)
        return name

    def add_symbol(self, name: str, lo: int, hi: int) -> None:
        self.symbols[name] = SymRange(lo, hi)

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self._claim(self.fresh_name(name)), type)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, data: Any, type: TensorType | None = None) -> Value:
        """Declare a named constant. ``data`` may be None when only the declaration is known."""
        if type is None:
            if not isinstance(data, np.ndarray):
                raise IRError(f"constant {name}: a type is needed for data of kind {data.__class__.__name__}")
            type = TensorType(data.shape, from_numpy(data.dtype))
        value = Value(self._claim(self.fresh_name(name)), type)
        self.constants[value.name] = Constant(value, data)
        return value

    def add_node(
        self,
        op: str,
        inputs: list[Value],
        attrs: dict[str, Any] | None = None,
        subgraph: Graph | None = None,
        names: list[str] | None = None,
        types: list[TensorType] | None = None,
    ) -> list[Value]:
        """Append a node, inferring its output types (or checking ``types`` against them)."""
        from qjc.ir.ops.registry import get_op  # the registry imports this module

        opdef = get_op(op)
        attrs = opdef.normalize_attrs(attrs or {}, where=f"{op} node")
        inferred = opdef.infer_types([v.type for v in inputs], attrs, subgraph, where=f"{op} node")
        if types is not None:
            _check_declared(op, types, inferred)
            inferred = types
        node = Node(op, list(inputs), [], attrs, subgraph)
        hints = names or [""] * len(inferred)
        if len(hints) != len(inferred):
            raise IRError(f"{op} node: {len(hints)} output names given, op produces {len(inferred)}")
        node.outputs = [Value(self._claim(self.fresh_name(h)), t, node) for h, t in zip(hints, inferred)]
        self.nodes.append(node)
        return node.outputs

    def op(self, op: str, *inputs: Value, name: str = "", **attrs: Any) -> Value:
        """Builder shorthand for a single-output node: ``g.op("add", x, y)``."""
        outs = self.add_node(op, list(inputs), attrs, names=[name] if name else None)
        if len(outs) != 1:
            raise IRError(f"{op} has {len(outs)} outputs; use add_node")
        return outs[0]

    def set_outputs(self, *values: Value) -> None:
        self.outputs = list(values)

    def state_updates(self) -> list[tuple[Value, Value]]:
        """(state input, value holding its new contents) pairs."""
        by_name = {v.name: v for v in self.inputs}
        tail = self.outputs[len(self.outputs) - len(self.state):] if self.state else []
        return [(by_name[name], new) for name, new in zip(self.state, tail)]

    # ---- queries ------------------------------------------------------------------------------
    def constant_data(self, value: Value) -> Any | None:
        c = self.constants.get(value.name)
        return c.data if c is not None and c.value is value else None

    def is_constant(self, value: Value) -> bool:
        c = self.constants.get(value.name)
        return c is not None and c.value is value

    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                out.setdefault(v, []).append(node)
        return out

    def all_graphs(self) -> list[Graph]:
        """This graph and every fused subgraph inside it, outermost first."""
        out = [self]
        for node in self.nodes:
            if node.subgraph is not None:
                out.extend(node.subgraph.all_graphs())
        return out

    def all_values(self) -> list[Value]:
        vals = list(self.inputs) + [c.value for c in self.constants.values()]
        for n in self.nodes:
            vals.extend(n.outputs)
        return vals

    # ---- mutation -----------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (node inputs and graph outputs) at ``new``."""
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_constant(self, value: Value) -> None:
        del self.constants[value.name]
        self._names.discard(value.name)

    def forget_names(self, values: list[Value]) -> None:
        for v in values:
            self._names.discard(v.name)

    def toposort(self) -> None:
        """Reorder nodes so every value is defined before use, keeping the existing order where
        it is already valid. Rewrites append new nodes at the end and call this afterwards."""
        position = {id(n): i for i, n in enumerate(self.nodes)}
        producer_of = {id(v): n for n in self.nodes for v in n.outputs}
        deps = {id(n): {id(producer_of[id(v)]) for v in n.inputs if id(v) in producer_of} for n in self.nodes}
        by_id = {id(n): n for n in self.nodes}
        done: set[int] = set()
        order: list[Node] = []
        import heapq

        ready = [(position[k], k) for k, d in deps.items() if not d]
        heapq.heapify(ready)
        dependents: dict[int, list[int]] = {}
        for k, d in deps.items():
            for p in d:
                dependents.setdefault(p, []).append(k)
        remaining = {k: len(d) for k, d in deps.items()}
        while ready:
            _, k = heapq.heappop(ready)
            done.add(k)
            order.append(by_id[k])
            for c in dependents.get(k, ()):
                remaining[c] -= 1
                if remaining[c] == 0:
                    heapq.heappush(ready, (position[c], c))
        if len(order) != len(self.nodes):
            stuck = [by_id[k].label for k in deps if k not in done][:5]
            raise IRError(f"graph {self.name} has a cycle through: {', '.join(stuck)}")
        self.nodes = order

    def copy(self) -> Graph:
        """A structural deep copy (new Values and Nodes); constant data arrays are shared."""
        g = Graph(self.name)
        g.symbols = dict(self.symbols)
        g.state = list(self.state)
        g.meta = dict(self.meta)
        remap: dict[Value, Value] = {}

        def clone(v: Value, producer: Node | None = None) -> Value:
            nv = Value(g._claim(v.name), v.type, producer)
            remap[v] = nv
            return nv

        g.inputs = [clone(v) for v in self.inputs]
        for name, c in self.constants.items():
            g.constants[name] = Constant(clone(c.value), c.data)
        for n in self.nodes:
            nn = Node(n.op, [remap[v] for v in n.inputs], [], dict(n.attrs), n.subgraph.copy() if n.subgraph else None)
            nn.outputs = [clone(v, nn) for v in n.outputs]
            g.nodes.append(nn)
        g.outputs = [remap[v] for v in self.outputs]
        g._counter = itertools.count(next(self._counter))
        return g

    def __str__(self) -> str:
        from qjc.ir.printer import print_graph

        return print_graph(self)


def _sanitize(hint: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in hint)


def _check_declared(op: str, declared: list[TensorType], inferred: list[TensorType]) -> None:
    if len(declared) != len(inferred) or any(a != b for a, b in zip(declared, inferred)):
        got = ", ".join(map(str, declared))
        want = ", ".join(map(str, inferred))
        raise IRError(f"{op}: declared output types ({got}) differ from inferred ({want})")
