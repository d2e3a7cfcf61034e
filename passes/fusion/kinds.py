"""One finder per fused kind: given a node, the group of that kind it anchors (or None).

A finder starts from the kind's core (an sdpa, a GEMM, a norm, a matched RoPE or gated-MLP
pattern), then grows the prologue and epilogue its kind allows, one node at a time through a
GroupBuilder, which keeps the group convex and acceptable to the backend. Finders run kind by kind
in the order of partition.FINDERS, so a node goes to the first kind that claims it: a residual add
after a GEMM becomes the GEMM's epilogue, and a norm's prologue gets only what no GEMM took.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qjc.ir.dims import Dim
from qjc.ir.graph import Node, Value
from qjc.ir.ops.shape_rules import broadcast_shapes
from qjc.passes.fusion.group import Boundary, GraphIndex, GroupBuilder, is_elementwise
from qjc.passes.fusion.pattern import Match, Var, first_match, maybe, op

Finder = Callable[[Node, GraphIndex, Any], GroupBuilder | None]


def _start(index: GraphIndex, caps: Any, kind: str, core: list[Node]) -> GroupBuilder | None:
    group = GroupBuilder(index, caps, kind)
    return group if group.try_add(*core) else None


def grow_epilogue(group: GroupBuilder, shape: tuple[Dim, ...]) -> None:
    """Add elementwise users of the group's results whose output has ``shape`` (the core's output
    shape: an epilogue never broadcasts the core's result up), until none can join.

    Only through values the group alone consumes: taking one of several users would make the
    kernel write both the value and the user's result (a bf16 residual and its f32 cast), where
    the next kernel could have applied the op in registers."""
    changed = True
    while changed:
        changed = False
        for value in group.produced():
            users = group.index.users_of(value)
            outside = [u for u in users if u not in group]
            if len(outside) != 1:
                continue
            user = outside[0]
            if (group.available(user) and is_elementwise(user) and len(user.outputs) == 1
                    and user.output.type.shape == shape and group.try_add(user)):
                changed = True


def grow_prologue(group: GroupBuilder, start: Value) -> None:
    """Add the elementwise producers of ``start`` (and of their operands) that have its shape.
    Their results may also be used outside: then they become outputs of the group too (a
    pre-norm transformer's residual stream)."""
    frontier = [start]
    while frontier:
        value = frontier.pop(0)
        producer = value.producer
        if (group.available(producer) and is_elementwise(producer) and len(producer.outputs) == 1
                and producer.output.type.shape == start.type.shape and group.try_add(producer)):
            frontier.extend(producer.inputs)


# Ops that only move data: a kernel can read its operand through them (or write its result
# through them) with index arithmetic instead of a separate copy.
LAYOUT_OPS = frozenset({"transpose", "reshape", "squeeze", "unsqueeze", "flatten", "split"})


def keeps_last_axis(node: Node) -> bool:
    """Innermost elements stay contiguous (a transpose that moves the last axis is a real shuffle)."""
    if node.op != "transpose":
        return True
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"] or tuple(reversed(range(rank)))
    return rank == 0 or perm[-1] == rank - 1


def _feeds_only(group: GroupBuilder, node: Node) -> bool:
    index = group.index
    return all(id(v) not in index.graph_outputs and all(u in group for u in index.users_of(v))
               for v in node.outputs)


def grow_layout_prologue(group: GroupBuilder, operands: list[Value]) -> None:
    """Absorb the transposes, reshapes and splits that produce ``operands`` when the group is their
    only consumer: the kernel then reads the operand through the permutation."""
    changed = True
    while changed:
        changed = False
        frontier = list(operands)
        while frontier:
            producer = frontier.pop(0).producer
            if producer is None or producer.op not in LAYOUT_OPS:
                continue
            if producer in group:
                frontier.extend(producer.inputs)
            elif (group.available(producer) and keeps_last_axis(producer) and _feeds_only(group, producer)
                  and group.try_add(producer)):
                frontier.extend(producer.inputs)
                changed = True


def grow_layout_epilogue(group: GroupBuilder, value: Value) -> None:
    """Absorb the chain of transposes and reshapes that is the only consumer of ``value``: the
    kernel then writes its result in the layout the next op reads."""
    index = group.index
    while id(value) not in index.graph_outputs:
        users = index.users_of(value)
        if len(users) != 1:
            return
        user = users[0]
        if (user.op not in LAYOUT_OPS or user.op == "split" or not keeps_last_axis(user)
                or not group.try_add(user)):
            return
        value = user.output


def _only_output(group: GroupBuilder, value: Value) -> bool:
    """The group's one result is ``value`` (a pattern's interior feeds nothing else)."""
    return Boundary(group.index, group.members).outputs == [value]


# ---- attention ---------------------------------------------------------------------------------


def _writes_sequence_axis(node: Node | None) -> bool:
    """An index_copy of new keys or values into a [B, H, S, D] cache at sequence positions."""
    return (node is not None and node.op == "index_copy" and node.output.type.rank == 4
            and node.attrs["axis"] % 4 == 2)


def find_attention(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """One sdpa; k and v may be caches it first appends the new keys and values to (index_copy
    along the sequence axis: the new caches are results of the group too); q and the new k, v may
    arrive through head-splitting reshapes and transposes, and the result may leave through the
    transpose and reshape that merge the heads back."""
    if node.op != "sdpa":
        return None
    group = _start(index, caps, "attention", [node])
    if group is not None:
        operands = [node.inputs[0]]
        for kv in node.inputs[1:3]:
            write = kv.producer
            appended = _writes_sequence_axis(write) and group.try_add(write)
            operands.append(write.inputs[2] if appended else kv)
        grow_layout_prologue(group, operands)
        grow_layout_epilogue(group, node.output)
    return group


# ---- rope --------------------------------------------------------------------------------------

_X = Var("x")
_ROTATE_HALF = op("concat", op("neg", op("slice", _X, as_="upper")), op("slice", _X, as_="lower"), as_="rot")
ROPE = op("add", op("mul", _X, Var("cos")), op("mul", _ROTATE_HALF, Var("sin")), as_="out")


def _is_half(node: Node, first: bool) -> bool:
    """A slice of the lower (first) or upper half of the last axis, step 1."""
    x = node.inputs[0]
    rank = x.type.rank
    d = x.type.shape[-1] if rank else None
    attrs = node.attrs
    axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(attrs["starts"])))
    steps = attrs["steps"] or (1,) * len(axes)
    if not isinstance(d, int) or d % 2 or len(axes) != 1 or axes[0] % rank != rank - 1 or steps != (1,):
        return False
    start, end = attrs["starts"][0], attrs["ends"][0]
    if not (isinstance(start, int) and isinstance(end, int)):
        return False
    return (start, end) == (0, d // 2) if first else (start == d // 2 and end >= d)


def rope_match(node: Node, index: GraphIndex) -> Match | None:
    """The rotary embedding ``node`` (an add) completes: x * cos + rotate_half(x) * sin,
    rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2]); None if it is not one."""
    if node.op != "add":
        return None
    m = first_match(ROPE, node.output, index.graph)
    if m is None:
        return None
    x = m["x"]
    rank = x.type.rank
    if (rank == 0 or m.nodes["rot"].attrs["axis"] % rank != rank - 1 or node.output.type != x.type
            or not _is_half(m.nodes["lower"], True) or not _is_half(m.nodes["upper"], False)):
        return None
    return m


def find_rope(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2])."""
    m = rope_match(node, index)
    if m is None:
        return None
    x = m["x"]
    group = _start(index, caps, "rope", m.covered)
    if group is None or not _only_output(group, node.output):
        return None
    grow_layout_prologue(group, [x])
    return group


# ---- gated MLP activations -----------------------------------------------------------------------

GATED = op("mul", maybe("cast", op(("silu", "gelu"), maybe("cast", Var("gate")), as_="act")), Var("up"), as_="out")


def find_gated(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """silu(gate) * up (swiglu) or gelu(gate) * up (geglu), casts around the activation allowed."""
    if node.op != "mul":
        return None
    m = first_match(GATED, node.output, index.graph)
    if m is None:
        return None
    shape = node.output.type.shape
    if m["gate"].type.shape != shape or m["up"].type.shape != shape:
        return None
    kind = "swiglu" if m.nodes["act"].op == "silu" else "geglu"
    group = _start(index, caps, kind, m.covered)
    return group if group is not None and _only_output(group, node.output) else None


# ---- gemm ----------------------------------------------------------------------------------------


def find_gemm(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """matmul / linear, with the dequantize of its weight and an elementwise epilogue (bias,
    activation, residual add, casts)."""
    if node.op not in ("matmul", "linear"):
        return None
    group = _start(index, caps, "gemm", [node])
    if group is None:
        return None
    absorb_weight_dequantize(group, node)
    grow_epilogue(group, node.output.type.shape)
    return group


def absorb_weight_dequantize(group: GroupBuilder, gemm: Node) -> None:
    """Take the dequantize that feeds ``gemm``'s weight operand (the kernel reads the packed weight)."""
    index = group.index
    weight = gemm.inputs[1]
    if (weight.producer is not None and weight.producer.op == "dequantize"
            and index.users_of(weight) == [gemm] and id(weight) not in index.graph_outputs):
        group.try_add(weight.producer)  # a shared dequantized weight stays out: it would become a result


# ---- reductions with prologue and epilogue -------------------------------------------------------

_REDUCTION_KINDS = {"rms_norm": "rms_norm", "layer_norm": "layer_norm", "softmax": "softmax",
                    "log_softmax": "softmax"}


def find_reduction(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    kind = _REDUCTION_KINDS.get(node.op)
    if kind is None:
        return None
    group = _start(index, caps, kind, [node])
    if group is None:
        return None
    grow_prologue(group, node.inputs[0])
    grow_epilogue(group, node.output.type.shape)
    return group


# ---- elementwise ---------------------------------------------------------------------------------


def _iteration_shape_ok(members: list[Node], index: GraphIndex) -> bool:
    """One loop nest covers the group: every result has the broadcast of all member shapes (smaller
    interior values are recomputed per element, which elementwise math can afford)."""
    try:
        full = broadcast_shapes(*[tuple(v.type.shape) for n in members for v in n.outputs])
    except ValueError:
        return False
    return all(tuple(v.type.shape) == full for v in Boundary(index, members).outputs)


def find_elementwise(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """The connected elementwise ops around ``node`` (producers and users), two or more of them,
    one or more results."""
    if not is_elementwise(node) or len(node.outputs) != 1:
        return None
    group = _start(index, caps, "elementwise", [node])
    if group is None:
        return None

    def fits(members: list[Node]) -> bool:
        return _iteration_shape_ok(members, index)

    changed = True
    while changed:
        changed = False
        for member in list(group.members):
            neighbours = [v.producer for v in member.inputs] + [u for v in member.outputs
                                                                for u in index.users_of(v)]
            for other in index.ordered(n for n in neighbours if n is not None and index.alive(n)):
                if (group.available(other) and is_elementwise(other) and len(other.outputs) == 1
                        and group.try_add(other, check=fits)):
                    changed = True
    # A lone elementwise op is one kernel already; wrapping it would only hide it from backends
    # that run plain ops.
    return group if len(group.members) >= 2 else None
