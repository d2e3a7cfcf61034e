"""The GEMM of merged parallel projections (see parallel_gemms.py): a matmul / linear whose result a
``split`` along the last axis cuts into parts, grouped with what its parts feed, so one kernel
computes q/k/v and rotates q and k, or computes gate/up and their gated product.

A part's epilogue is one of:
- RoPE, reached through the reshape / transpose that cut heads out of the part (the kernel writes
  the rotated heads in the layout attention reads);
- the gated product silu(gate) * up or gelu(gate) * up of two parts (casts around the activation
  allowed);
- elementwise ops of the part's shape.
A part without one is a result of the group as it is (attention reads the v part through its own
layout prologue). When no part has an epilogue the split is left alone: the plain GEMM finder takes
the GEMM and attention's layout prologue the split (GPT-2's fused c_attn, a merged BERT q/k/v).
"""

from __future__ import annotations

from typing import Any

from qjc.ir.graph import Node, Value
from qjc.passes.fusion.group import Boundary, GraphIndex, GroupBuilder, is_elementwise
from qjc.passes.fusion.kinds import (
    GATED,
    absorb_weight_dequantize,
    grow_epilogue,
    keeps_last_axis,
    rope_match,
)
from qjc.passes.fusion.pattern import first_match

# A gated product sits at most this many elementwise ops after its parts: cast, activation, cast, mul.
GATED_DEPTH = 4


def _private(index: GraphIndex, members: list[Node], result: Value) -> bool:
    """``result`` is the only value of ``members`` used outside them."""
    return Boundary(index, members).outputs == [result]


def _head_layout_chain(index: GraphIndex, part: Value) -> tuple[list[Node], Value]:
    """The reshapes / transposes (last axis kept) that alone consume ``part``, one after the other,
    and the value at the end of the chain."""
    chain: list[Node] = []
    value = part
    while id(value) not in index.graph_outputs:
        users = index.users_of(value)
        if len(users) != 1 or users[0].op not in ("reshape", "transpose") or not keeps_last_axis(users[0]):
            break
        chain.append(users[0])
        value = users[0].output
    return chain, value


def rope_epilogue(index: GraphIndex, part: Value) -> list[Node] | None:
    """The head layout chain and the RoPE applied to ``part``, when nothing else reads inside them."""
    chain, x = _head_layout_chain(index, part)
    for mul in index.users_of(x):
        if mul.op != "mul":
            continue
        for add in index.users_of(mul.output):
            m = rope_match(add, index)
            if m is not None and m["x"] is x and _private(index, chain + m.covered, add.output):
                return chain + m.covered
    return None


def gated_epilogues(index: GraphIndex, parts: list[Value]) -> list[list[Node]]:
    """The gated products whose gate and up are two of ``parts``, when nothing else reads inside them."""
    part_ids = {id(p) for p in parts}
    found: list[list[Node]] = []
    seen: set[int] = set()
    frontier = list(parts)
    for _ in range(GATED_DEPTH):
        reached: list[Value] = []
        for value in frontier:
            for user in index.users_of(value):
                if id(user) in seen or not is_elementwise(user) or len(user.outputs) != 1:
                    continue
                seen.add(id(user))
                reached.append(user.output)
                m = first_match(GATED, user.output, index.graph) if user.op == "mul" else None
                if (m is not None and id(m["gate"]) in part_ids and id(m["up"]) in part_ids
                        and m["gate"] is not m["up"] and m["gate"].type.shape == m["up"].type.shape
                        == user.output.type.shape and _private(index, m.covered, user.output)):
                    found.append(m.covered)
        frontier = reached
    return found


def _elementwise_user(index: GraphIndex, part: Value) -> bool:
    users = index.users_of(part)
    return (len(users) == 1 and is_elementwise(users[0]) and len(users[0].outputs) == 1
            and users[0].output.type.shape == part.type.shape)


def find_gemm_with_split_epilogue(node: Node, index: GraphIndex, caps: Any) -> GroupBuilder | None:
    """A GEMM, the split of its result along the last axis, and the epilogues of the parts."""
    if node.op not in ("matmul", "linear") or id(node.output) in index.graph_outputs:
        return None
    users = index.users_of(node.output)
    rank = node.output.type.rank
    if len(users) != 1 or users[0].op != "split" or users[0].attrs["axis"] % rank != rank - 1:
        return None
    split = users[0]
    parts = list(split.outputs)
    epilogues = [e for e in (rope_epilogue(index, p) for p in parts) if e is not None]
    epilogues += gated_epilogues(index, parts)
    if not epilogues and not any(_elementwise_user(index, p) for p in parts):
        return None
    group = GroupBuilder(index, caps, "gemm")
    if not group.try_add(node, split):
        return None
    absorb_weight_dequantize(group, node)
    core = len(group.members)
    for members in epilogues:
        group.try_add(*members)
    for shape in dict.fromkeys(p.type.shape for p in parts):
        grow_epilogue(group, shape)
    # a GEMM and a split alone are better left to the plain GEMM finder: a backend's GEMM kernel
    # takes the group as it always did, and the split goes to whoever reads the parts
    return group if len(group.members) > core else None
