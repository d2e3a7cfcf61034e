"""Patterns as data: a small tree language that matches a value's producers, and rules built from a
pattern plus a replacement.

    x = Var("x")
    squared = Alt(op("mul", x, x), op("pow", x, Const("two", 2.0)))
    pattern = op("mul", x, op("rsqrt", op("add", op("mean", squared, keepdims=True, as_="ms"), Const("eps"))))

``Var`` binds any value (a second occurrence of the same name must be the very same value),
``Const`` a scalar constant of the graph (numel 1; optionally of a given value), ``op`` a node
of one or more ops whose operands match in order (both orders for commutative binary ops),
with attribute values or predicates, ``Alt`` the first of several alternatives that matches
(``maybe("cast", p)`` is ``Alt(op("cast", p), p)``). ``as_`` binds a matched node's output.

A match returns every value, node and scalar it bound, and the list of nodes it covered (the
fusion partitioner groups those). Matching is structural and cheap; semantic checks (axes,
shapes, dtypes) belong to the replacement, which returns None to decline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qjc.ir.dtypes import DType
from qjc.ir.graph import Graph, Node, Value
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import Rule

# Binary ops whose operands may be swapped without changing the result.
COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or",
                         "logical_xor"})


@dataclass(frozen=True)
class Var:
    """Any value, bound under ``name``."""

    name: str


@dataclass(frozen=True)
class Const:
    """A constant of the graph holding one element (any shape of numel 1), bound under ``name``;
    with ``value``, only a constant equal to it within its dtype's precision matches."""

    name: str
    value: float | None = None


@dataclass(frozen=True)
class Op:
    ops: frozenset[str]
    args: tuple[Pattern, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    bind: str | None = None


@dataclass(frozen=True)
class Alt:
    options: tuple[Pattern, ...]


Pattern = Var | Const | Op | Alt


def op(name: str | tuple[str, ...], *args: Pattern, as_: str | None = None, **attrs: Any) -> Op:
    """A node of op ``name`` (or any of a tuple of ops) with operands ``args``. Attribute values
    must equal the node's (after normalization), or be predicates ``value -> bool``."""
    ops = frozenset((name,) if isinstance(name, str) else name)
    return Op(ops, tuple(args), tuple(sorted(attrs.items())), as_)


def maybe(name: str, inner: Pattern, **attrs: Any) -> Alt:
    """``inner``, with or without a single-operand ``name`` node (e.g. a cast) on top of it."""
    return Alt((op(name, inner, **attrs), inner))


@dataclass
class Match:
    values: dict[str, Value] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    covered: list[Node] = field(default_factory=list)

    def copy(self) -> Match:
        return Match(dict(self.values), dict(self.nodes), dict(self.scalars), list(self.covered))

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def get(self, name: str) -> Value | None:
        return self.values.get(name)


def scalar_of(graph: Graph, value: Value) -> float | None:
    """The single element of a plain constant of numel 1, as a float; None for anything else."""
    data = graph.constant_data(value)
    if not isinstance(data, np.ndarray) or data.size != 1 or value.type.dtype.is_quant:
        return None
    return float(data.reshape(-1)[0].astype(np.float64))


def close_in(dtype: DType, got: float, want: float) -> bool:
    """``got`` equals ``want`` as far as ``dtype`` can tell (a bf16 model stores 0.044715 as 0.04468)."""
    if got == want:
        return True
    bits = {"f64": 52, "f32": 23, "f16": 10, "bf16": 7, "f8e4m3": 3}.get(dtype.name, 23)
    return abs(got - want) <= 2.0 ** -bits * max(abs(want), 1e-30) * 2


def match(pattern: Pattern, value: Value, graph: Graph) -> Iterator[Match]:
    """Every way ``pattern`` matches ``value`` (usually one)."""
    yield from _match(pattern, value, graph, Match())


def first_match(pattern: Pattern, value: Value, graph: Graph) -> Match | None:
    return next(match(pattern, value, graph), None)


def _match(p: Pattern, v: Value, graph: Graph, m: Match) -> Iterator[Match]:
    if isinstance(p, Var):
        bound = m.values.get(p.name)
        if bound is None:
            m = m.copy()
            m.values[p.name] = v
            yield m
        elif bound is v:
            yield m
        return
    if isinstance(p, Const):
        x = scalar_of(graph, v)
        if x is None or (p.value is not None and not close_in(v.type.dtype, x, p.value)):
            return
        bound = m.values.get(p.name)
        if bound is not None and bound is not v:
            return
        m = m.copy()
        m.values[p.name] = v
        m.scalars[p.name] = x
        yield m
        return
    if isinstance(p, Alt):
        for option in p.options:
            yield from _match(option, v, graph, m)
        return
    node = v.producer
    if node is None or node.op not in p.ops or len(node.outputs) != 1 or len(node.inputs) != len(p.args):
        return
    for name, want in p.attrs:
        have = node.attrs.get(name)
        if not (want(have) if callable(want) else _same_attr(have, want)):
            return
    if p.bind is not None:
        bound = m.values.get(p.bind)
        if bound is not None and bound is not v:
            return
    m = m.copy()
    if not any(n is node for n in m.covered):
        m.covered.append(node)
    if p.bind is not None:
        m.values[p.bind] = v
        m.nodes[p.bind] = node
    orders = [p.args]
    if node.op in COMMUTATIVE and len(p.args) == 2:
        orders.append((p.args[1], p.args[0]))
    for args in orders:
        yield from _match_args(args, node.inputs, graph, m)


def _match_args(args: tuple[Pattern, ...], inputs: list[Value], graph: Graph, m: Match) -> Iterator[Match]:
    if not args:
        yield m
        return
    for m1 in _match(args[0], inputs[0], graph, m):
        yield from _match_args(args[1:], inputs[1:], graph, m1)


def _same_attr(have: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return isinstance(have, (list, tuple)) and tuple(have) == tuple(want)
    if isinstance(want, bool):  # True must not match 1
        return have is want
    return have == want


# ---- rules built from patterns ---------------------------------------------------------------------

Build = Callable[[Match, Graph, PassContext], Value | None]


def root_ops(pattern: Pattern) -> frozenset[str]:
    """The ops a node must have to be the root of a match (empty: any value matches)."""
    if isinstance(pattern, Op):
        return pattern.ops
    if isinstance(pattern, Alt) and all(isinstance(o, (Op, Alt)) for o in pattern.options):
        parts = [root_ops(o) for o in pattern.options]
        return frozenset() if not all(parts) else frozenset().union(*parts)
    return frozenset()


def pattern_rule(name: str, pattern: Op | Alt, build: Build) -> Rule:
    """A rewrite Rule from (pattern, replacement): the replacement runs on each match of the root
    node's output until one returns a value of the same type; nodes built by declined attempts are
    dropped."""
    ops = root_ops(pattern)
    if not ops:
        raise ValueError(f"rule {name}: the pattern's root must be an op (or alternatives of ops)")
    root_op = next(iter(ops)) if len(ops) == 1 else None

    def rewrite(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
        if node.op not in ops or len(node.outputs) != 1:
            return None
        for m in match(pattern, node.output, graph):
            first_new = len(graph.nodes)
            result = build(m, graph, ctx)
            if result is not None and result.type == node.output.type and result is not node.output:
                return result
            drop_nodes_from(graph, first_new)
        return None

    return Rule(name, root_op, rewrite)


def drop_nodes_from(graph: Graph, first_new: int) -> None:
    """Forget nodes appended to ``graph`` since it had ``first_new`` nodes."""
    if len(graph.nodes) > first_new:
        graph.forget_names([v for n in graph.nodes[first_new:] for v in n.outputs])
        del graph.nodes[first_new:]


def users_of(graph: Graph, value: Value) -> list[Node]:
    return [n for n in graph.nodes if any(v is value for v in n.inputs)]


def used_once(graph: Graph, value: Value) -> bool:
    """``value`` feeds exactly one operand of one node and is not a graph output."""
    if any(v is value for v in graph.outputs):
        return False
    return sum(1 for n in graph.nodes for v in n.inputs if v is value) == 1
