"""Canonicalization: rewrite rules that remove no-op nodes and merge chains of the same op, so
later passes (fusion, layout) see one spelling of each computation."""

from __future__ import annotations

from qjc.errors import IRError
from qjc.ir.dtypes import PLAIN_DTYPES, DType, bf16, boolean, f8e4m3, f16, f32, f64, i8, i32, i64, u8
from qjc.ir.graph import Graph, Node, Value
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import RewritePass, Rule


def _producer(value: Value, op: str) -> Node | None:
    node = value.producer
    return node if node is not None and node.op == op else None


def remove_identity(node: Node, graph: Graph, ctx: PassContext) -> Value:
    return node.inputs[0]


def drop_noop_cast(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    x = node.inputs[0]
    return x if node.attrs["to"] == x.type.dtype else None


# Casts a -> b that keep every value of a unchanged (b holds all of a's values exactly).
# bool is 0/1, which every type holds. The f8e4m3 range (|x| <= 448, 3 mantissa bits, smallest
# subnormal 2^-9) fits f16 and bf16; 8-bit integers fit f16 (11 significant bits) and bf16 (8 bits).
_EXACT_WIDENING: dict[DType, frozenset[DType]] = {
    boolean: frozenset(PLAIN_DTYPES.values()),
    f8e4m3: frozenset({f16, bf16, f32, f64}),
    f16: frozenset({f32, f64}),
    bf16: frozenset({f32, f64}),
    f32: frozenset({f64}),
    i8: frozenset({i32, i64, f16, bf16, f32, f64}),
    u8: frozenset({i32, i64, f16, bf16, f32, f64}),
    i32: frozenset({i64, f64}),
}


def casts_exactly(src: DType, dst: DType) -> bool:
    return src == dst or dst in _EXACT_WIDENING.get(src, frozenset())


def merge_exact_cast_chain(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    """cast(cast(x, a), b) -> cast(x, b) when the inner cast is exact.

    An exact inner cast hands the outer one the very values of x, so casting x directly gives the
    same result. A lossy inner cast is part of the meaning and must stay: f32 -> f16 -> f32 rounds
    to half precision (a model may do that on purpose), f32 -> bf16 -> f16 rounds twice and can
    differ from one rounding, f32 -> i32 -> f32 truncates, and x -> bool -> f32 maps every non-zero
    value to 1."""
    inner = _producer(node.inputs[0], "cast")
    if inner is None:
        return None
    x = inner.inputs[0]
    if not casts_exactly(x.type.dtype, inner.attrs["to"]):
        return None
    return graph.op("cast", x, to=node.attrs["to"])


def drop_noop_reshape(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    x = node.inputs[0]
    return x if node.output.type == x.type else None


def merge_double_reshape(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    """reshape(reshape(x, s1), s2) -> reshape(x, s2): a reshape keeps the element order, so only
    the last shape matters (and s2's -1, if any, resolves the same: the element count is the same)."""
    inner = _producer(node.inputs[0], "reshape")
    if inner is None:
        return None
    try:
        merged = graph.op("reshape", inner.inputs[0], **node.attrs)
    except IRError:  # a symbolic shape this reshape cannot solve from x alone: keep the chain
        return None
    return merged if merged.type == node.output.type else None


def _perm_of(node: Node) -> tuple[int, ...]:
    perm = node.attrs.get("perm")
    return tuple(reversed(range(node.inputs[0].type.rank))) if perm is None else tuple(perm)


def drop_identity_transpose(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    perm = _perm_of(node)
    return node.inputs[0] if perm == tuple(range(len(perm))) else None


def merge_double_transpose(node: Node, graph: Graph, ctx: PassContext) -> Value | None:
    """transpose(transpose(x, p1), p2) -> transpose(x, p) with p[i] = p1[p2[i]] (output axis i of
    the outer one is its input axis p2[i], which is axis p1[p2[i]] of x), or x when p is the identity."""
    inner = _producer(node.inputs[0], "transpose")
    if inner is None:
        return None
    p1, p2 = _perm_of(inner), _perm_of(node)
    perm = tuple(p1[i] for i in p2)
    x = inner.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    return graph.op("transpose", x, perm=perm)


CANONICALIZE_RULES: list[Rule] = [
    Rule("remove_identity", "identity", remove_identity),
    Rule("drop_noop_cast", "cast", drop_noop_cast),
    Rule("merge_exact_cast_chain", "cast", merge_exact_cast_chain),
    Rule("drop_noop_reshape", "reshape", drop_noop_reshape),
    Rule("merge_double_reshape", "reshape", merge_double_reshape),
    Rule("drop_identity_transpose", "transpose", drop_identity_transpose),
    Rule("merge_double_transpose", "transpose", merge_double_transpose),
]


class Canonicalize(RewritePass):
    def __init__(self, max_iterations: int = 50) -> None:
        super().__init__("canonicalize", CANONICALIZE_RULES, max_iterations)
