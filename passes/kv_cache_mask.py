"""Proof that an attention mask built inside an exported decoder means exactly "key position <=
query position, padding keys excluded" -- what paged_attention does by itself, so the pass in
kv_cache_onnx.py may drop the mask.

The mask's producers are read symbolically, not evaluated: every tensor in its cone becomes an
expression over the tensor's own axes (an index expression, a conjunction of conditions, or an
additive mask), and each op maps expressions to expressions. An op or operand outside the small
vocabulary exporters use (iota, also as a folded constant, shape scalars, unsqueeze/expand/squeeze,
comparisons, logical_and, the attention mask gathered at [batch, key], where(cond, 0, -big)) stops the
proof and is named.

Index expressions are ``base + offset``: base None (a scalar), ("idx", axis, extent) (the
coordinate along ``axis`` of a tensor ``extent`` long there) or ("pos", b_axis, q_axis) (the
position_ids input at [b, q]); the offset is an int or a symbolic dim (e.g. the past length).
Conditions are Le(a, b) -- a <= b -- and Pad(b_axis, k_axis, extent) -- the attention mask is
nonzero at [b, k]; each remembers the node that introduced it, so a refusal can name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from qjc.ir import Graph
from qjc.ir.dims import Dim
from qjc.ir.graph import Node, Value
from qjc.passes.fusion.decomposed import MASK_FILL_AT_MOST


@dataclass(frozen=True)
class Index:
    base: tuple | None
    offset: Dim = 0


@dataclass(frozen=True)
class Le:  # a <= b
    a: Index
    b: Index
    origin: Node | None = field(default=None, compare=False, hash=False)  # for error messages


@dataclass(frozen=True)
class Pad:  # the attention mask is nonzero at [coord b_axis, coord k_axis], k_axis being extent long
    b_axis: int
    k_axis: int
    extent: Dim
    origin: Node | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Conj:
    atoms: frozenset = frozenset()


@dataclass(frozen=True)
class Additive:  # 0 where the conjunction holds, at most MASK_FILL_AT_MOST elsewhere
    cond: Conj


@dataclass(frozen=True)
class Scalar:
    value: float


class NotProven(Exception):
    def __init__(self, node: Node | None, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


def _remap_index(e: Index, axis_map: dict[int, int]) -> Index:
    if e.base is None:
        return e
    if e.base[0] == "idx":
        return Index(("idx", axis_map[e.base[1]], e.base[2]), e.offset)
    return Index(("pos", axis_map[e.base[1]], axis_map[e.base[2]]), e.offset)


def remap(e, axis_map: dict[int, int]):
    """``e`` with its axes renumbered (KeyError where an axis it uses disappears)."""
    if isinstance(e, Index):
        return _remap_index(e, axis_map)
    if isinstance(e, Conj):
        return Conj(frozenset(replace(a, a=_remap_index(a.a, axis_map), b=_remap_index(a.b, axis_map))
                              if isinstance(a, Le) else replace(a, b_axis=axis_map[a.b_axis], k_axis=axis_map[a.k_axis])
                              for a in e.atoms))
    if isinstance(e, Additive):
        return Additive(remap(e.cond, axis_map))
    return e


def _aligned(e, rank: int, to_rank: int):
    """``e`` of a rank-``rank`` operand, seen in a broadcast result of rank ``to_rank``."""
    return remap(e, {a: a + to_rank - rank for a in range(rank)})


class MaskProver:
    def __init__(self, graph: Graph, position_input: Value | None, mask_input: Value | None) -> None:
        self.g = graph
        self.pos = position_input
        self.am = mask_input
        self.memo: dict[int, object] = {}

    def of(self, v: Value):
        if id(v) not in self.memo:
            self.memo[id(v)] = self._compute(v)
        return self.memo[id(v)]

    def _compute(self, v: Value):
        if self.g.is_constant(v):
            data = np.asarray(self.g.constant_data(v))
            if data.dtype == np.bool_ and data.all():
                return Conj()
            if data.size == 1 and data.dtype.kind in "iu":
                return Index(None, int(data.reshape(-1)[0]))
            if data.size == 1 and data.dtype.kind == "f":
                return Scalar(float(data.reshape(-1)[0]))
            # an iota that constant folding evaluated (over a static batch, say): c, c + 1, ... along one axis
            long = [a for a, n in enumerate(data.shape) if n > 1]
            if data.dtype.kind in "iu" and len(long) == 1:
                line = data.reshape(-1).astype(np.int64)
                if np.array_equal(line - line[0], np.arange(line.size)):
                    return Index(("idx", long[0], int(line.size)), int(line[0]))
            raise NotProven(None, f"constant %{v.name} is neither all-true, a scalar nor a range along one axis")
        if v is self.pos:
            return Index(("pos", 0, 1))
        node = v.producer
        if node is None:
            raise NotProven(None, f"it reads the graph input %{v.name}")
        try:
            out = self._op(node, v)
        except KeyError:
            out = None
        if out is None:
            raise NotProven(node, "this op or operand form is outside what the proof understands")
        return out

    def _op(self, node: Node, v: Value):
        op, ins, rank = node.op, node.inputs, v.type.rank
        if op == "iota":
            return Index(("idx", 0, node.attrs["shape"][0]), node.attrs["start"])
        if op == "sum" and ins[0].producer is not None and ins[0].producer.op == "full" and rank == 0:
            full = ins[0].producer  # how the ONNX frontend reads a symbolic dim into a tensor
            if full.attrs["value"] == 1 and len(full.attrs["shape"]) == 1:
                return Index(None, full.attrs["shape"][0])
            return None
        if op == "cast" and ins[0] is self.am and v.type.dtype.name == "bool" and rank == 2:
            return Conj(frozenset({Pad(0, 1, ins[0].type.shape[1], node)}))
        if op in ("cast", "identity", "expand", "unsqueeze", "squeeze", "slice"):
            return self._reshaped(node, v)
        if op in ("le", "ge", "lt", "gt"):
            a, b = (_aligned(self.of(x), x.type.rank, rank) for x in ins)
            if not (isinstance(a, Index) and isinstance(b, Index)):
                return None
            if op in ("ge", "gt"):
                a, b = b, a
            if op in ("lt", "gt"):  # a < b is a <= b - 1 on integers
                if not ins[0].type.dtype.is_int:
                    return None
                b = Index(b.base, b.offset - 1)
            return Conj(frozenset({Le(a, b, node)}))
        if op in ("add", "sub"):
            return self._sum(node, v)
        if op == "logical_and":
            a, b = (_aligned(self.of(x), x.type.rank, rank) for x in ins)
            if isinstance(a, Conj) and isinstance(b, Conj):
                return Conj(a.atoms | b.atoms)
            return None
        if op == "where":
            cond, yes, no = (_aligned(self.of(x), x.type.rank, rank) for x in ins)
            if isinstance(cond, Conj) and yes == Scalar(0.0) and isinstance(no, Scalar) \
                    and no.value <= MASK_FILL_AT_MOST:
                return Additive(cond)
            return None
        if op == "index":
            return self._gathered_padding(node, v)
        if op == "split":
            return self._split_of_concat(node, v)
        return None

    def _sum(self, node: Node, v: Value):
        a, b = (_aligned(self.of(x), x.type.rank, v.type.rank) for x in node.inputs)
        if node.op == "add" and isinstance(a, Additive) and isinstance(b, Additive):
            return Additive(Conj(a.cond.atoms | b.cond.atoms))
        if not (isinstance(a, Index) and isinstance(b, Index)) or not v.type.dtype.is_int:
            return None
        if node.op == "sub":
            if b.base is not None:
                return None
            return Index(a.base, a.offset - b.offset)
        if a.base is not None and b.base is not None:
            return None
        return Index(a.base if a.base is not None else b.base, a.offset + b.offset)

    def _reshaped(self, node: Node, v: Value):
        """Ops that move or broadcast axes but keep each element's meaning."""
        x = node.inputs[0]
        e = self.of(x)
        if node.op == "cast":
            same_kind = (isinstance(e, Index) and v.type.dtype.is_int) or \
                        (isinstance(e, Conj) and v.type.dtype.name == "bool") or isinstance(e, Scalar)
            return e if same_kind else None
        if node.op in ("identity", "expand"):
            return _aligned(e, x.type.rank, v.type.rank)
        if node.op == "unsqueeze":
            added = {a % v.type.rank for a in node.attrs["axes"]}
            kept = [a for a in range(v.type.rank) if a not in added]
            return remap(e, dict(zip(range(x.type.rank), kept)))
        if node.op == "squeeze":
            axes = node.attrs["axes"]
            dropped = {a % x.type.rank for a in axes} if axes is not None else \
                {a for a, d in enumerate(x.type.shape) if d == 1}
            kept = [a for a in range(x.type.rank) if a not in dropped]
            return remap(e, {a: i for i, a in enumerate(kept)})
        # slice: only from 0 with step 1, so a coordinate keeps its value; extents shrink
        attrs = node.attrs
        if any(s != 0 for s in attrs["starts"]) or any(s != 1 for s in (attrs["steps"] or [])):
            return None
        axes = {a % x.type.rank for a in (attrs["axes"] or range(len(attrs["starts"])))}
        shrunk = {a for a in axes if v.type.shape[a] != x.type.shape[a]}
        # position_ids[:, :1] or attention_mask[:1] broadcast back would read one sequence's or one
        # query's values for all: the terms that read an input carry no extent to check, so refuse
        if shrunk & _input_axes(e):
            return None
        return _with_extents(e, {a: v.type.shape[a] for a in axes})

    def _gathered_padding(self, node: Node, v: Value):
        """attention_mask[b_index, k_index] with both indices plain coordinates: the padding term."""
        data, *indices = node.inputs
        src = self.of(data)
        if node.attrs["axis"] != 0 or len(indices) != 2 or src != Conj(frozenset({Pad(0, 1, data.type.shape[1])})):
            return None
        bi, ki = (_aligned(self.of(x), x.type.rank, v.type.rank) for x in indices)
        ok = all(isinstance(i, Index) and i.base is not None and i.base[0] == "idx" and i.offset == 0
                 for i in (bi, ki))
        if not ok or bi.base[2] != data.type.shape[0]:
            return None
        return Conj(frozenset({Pad(bi.base[1], ki.base[1], ki.base[2], node)}))

    def _split_of_concat(self, node: Node, v: Value):
        src = node.inputs[0].producer
        k = node.outputs.index(v)
        if src is None or src.op != "concat" or src.attrs["axis"] % v.type.rank != node.attrs["axis"] % v.type.rank:
            return None
        if [p.type.shape[src.attrs["axis"]] for p in src.inputs] != list(node.attrs["sizes"]):
            return None
        return self.of(src.inputs[k])


def _input_axes(e) -> set[int]:
    """Axes along which ``e`` reads position_ids or the attention mask (not an iota it can track)."""
    def of_index(i: Index) -> set[int]:
        return set(i.base[1:]) if i.base is not None and i.base[0] == "pos" else set()

    if isinstance(e, Index):
        return of_index(e)
    if isinstance(e, Additive):
        return _input_axes(e.cond)
    if isinstance(e, Conj):
        axes: set[int] = set()
        for a in e.atoms:
            axes |= of_index(a.a) | of_index(a.b) if isinstance(a, Le) else {a.b_axis}
        return axes
    return set()


def _with_extents(e, extents: dict[int, Dim]):
    def fix(i: Index) -> Index:
        if i.base is not None and i.base[0] == "idx" and i.base[1] in extents:
            return Index(("idx", i.base[1], extents[i.base[1]]), i.offset)
        return i

    if isinstance(e, Index):
        return fix(e)
    if isinstance(e, Conj):
        return Conj(frozenset(replace(a, a=fix(a.a), b=fix(a.b)) if isinstance(a, Le) else
                              replace(a, extent=extents.get(a.k_axis, a.extent)) for a in e.atoms))
    if isinstance(e, Additive):
        return Additive(_with_extents(e.cond, extents))
    return e


def check_causal_mask(prover: MaskProver, sdpa: Node, past_len: Dim, fail) -> None:
    """Raise ``fail(message)`` unless the sdpa's mask (and causal flag) mean: key j visible to query
    i of sequence b iff j <= past_len + i (or j <= position_ids[b, i]) and, optionally, the
    attention mask is nonzero at [b, j]."""
    q, k = sdpa.inputs[0], sdpa.inputs[1]
    seq, keys = q.type.shape[2], k.type.shape[2]
    key = Index(("idx", 3, keys))
    causal_forms = {Le(key, Index(("idx", 2, seq), past_len)), Le(key, Index(("pos", 0, 2)))}
    atoms: set = set()
    if sdpa.attrs.get("causal"):  # bottom-right aligned over past + seq keys: j <= i + past
        atoms.add(Le(key, Index(("idx", 2, seq), past_len)))
    if len(sdpa.inputs) == 4:
        mask = sdpa.inputs[3]
        try:
            e = prover.of(mask)
        except NotProven as e:
            where = e.node.label if e.node is not None else f"the mask %{mask.name}"
            raise fail(f"the mask of {sdpa.label} is not provably causal: {where}: {e.why}") from None
        e = _aligned(e, mask.type.rank, 4)
        cond = e.cond if isinstance(e, Additive) else e if isinstance(e, Conj) and mask.type.dtype.name == "bool" \
            else None
        if cond is None:
            raise fail(f"the mask %{mask.name} of {sdpa.label} is not provably causal: it is not a condition or "
                       "a 0 / -inf additive mask")
        atoms |= cond.atoms
    others = [a for a in atoms if a not in causal_forms and not _padding(a, keys) and not _always(a)]
    if others or not atoms & causal_forms:
        if others:
            source = others[0].origin
            what = f"it requires {_describe(others[0])}" + (f" (from {source.label})" if source else "") + \
                ", which is neither key position <= query position nor the attention_mask's padding"
        else:
            what = "it has no key <= query position term"
        raise fail(f"the mask of {sdpa.label} is not provably causal: {what}")


def _padding(atom, keys: Dim) -> bool:
    return atom == Pad(0, 3, keys)


def _always(atom) -> bool:
    return isinstance(atom, Le) and atom.a.base is None and atom.b.base is None and \
        isinstance(atom.a.offset, int) and isinstance(atom.b.offset, int) and atom.a.offset <= atom.b.offset


def _describe(atom) -> str:
    if isinstance(atom, Pad):
        return f"attention_mask at axes {atom.b_axis}, {atom.k_axis} over {atom.extent} keys"

    def side(i: Index) -> str:
        base = "" if i.base is None else f"coord(axis {i.base[1]} of {i.base[2]})" if i.base[0] == "idx" \
            else f"position_ids[axis {i.base[1]}, axis {i.base[2]}]"
        return f"{base} + {i.offset}" if base else str(i.offset)

    return f"{side(atom.a)} <= {side(atom.b)}"
