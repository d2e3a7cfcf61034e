"""Memory planning: every intermediate tensor gets a byte offset in one arena, buffers whose
lifetimes do not overlap share bytes, and the arena's size is reported.

What is planned: the results of top-level nodes (a fused group is one step; its interior lives in
registers or the kernel's own scratch). Not planned: graph inputs and constants (the caller and
the weights file own them) and graph outputs — including state updates — which the engine hands
back to the caller, so they must outlive the next call and cannot sit in a reused arena.

Rules:
- lifetimes are in steps (node positions): a buffer is live from the step that writes it to the
  last step that reads it, both included, so an op's operands and results never share bytes...
- ...except in place: an elementwise op (or an ``elementwise`` fused group) whose operand has the
  result's exact shape and dtype, and whose step is that operand's last use, writes its result over
  the operand (each output element depends only on the same element of that operand);
- metadata ops (reshape, squeeze, unsqueeze, flatten, identity) alias their operand: they launch
  no kernel, so their result is the same bytes (a view of an input, constant or output is not
  planned either);
- symbolic dims are planned at the top of their ranges (``graph.symbols[...].hi``);
- placement is greedy by size, largest first, each buffer into the smallest gap (best fit) between
  buffers that are live at the same time; every offset is a multiple of ALIGNMENT bytes.

The plan is stored on the graph as ``graph.memory_plan`` (a MemoryPlan). It describes the graph as
it was when planned; ``memory_plan_of(graph)`` returns it only while the graph still matches, so a
pass that changes the graph afterwards cannot leave a stale plan behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qjc.errors import QJCError
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.ops.registry import get_op
from qjc.passes.fusion.report import METADATA_OPS
from qjc.passes.manager import PassContext

ALIGNMENT = 256


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


@dataclass
class MemoryPlan:
    """Where each planned value lives. ``offsets``, ``sizes`` and ``lifetimes`` are keyed by value
    name; values in one buffer (in-place chains, views) share an offset."""

    alignment: int
    arena_bytes: int  # bytes the arena needs: the end of the highest buffer, aligned up
    naive_bytes: int  # bytes without reuse: every planned buffer in its own aligned allocation
    offsets: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    lifetimes: dict[str, tuple[int, int]] = field(default_factory=dict)  # buffer's (first, last) step
    in_place: dict[str, str] = field(default_factory=dict)  # result -> the operand it overwrites
    aliases: dict[str, str] = field(default_factory=dict)  # view result -> the value it views
    planned_at: dict[str, int] = field(default_factory=dict)  # symbol -> the value sizes assume
    node_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "alignment": self.alignment, "arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
            "offsets": dict(sorted(self.offsets.items())), "sizes": dict(sorted(self.sizes.items())),
            "in_place": dict(sorted(self.in_place.items())), "aliases": dict(sorted(self.aliases.items())),
            "planned_at": dict(sorted(self.planned_at.items())),
        }

    def summary(self) -> str:
        saved = 100.0 * (1 - self.arena_bytes / self.naive_bytes) if self.naive_bytes else 0.0
        at = ", ".join(f"{s}={v}" for s, v in sorted(self.planned_at.items()))
        return (f"arena {self.arena_bytes} bytes for {len(self.offsets)} values "
                f"(naive {self.naive_bytes} bytes, {saved:.1f}% saved; {len(self.in_place)} in place"
                f"{'; sizes at ' + at if at else ''})")


def _is_in_place_candidate(node: Node) -> bool:
    if node.op == "fused":
        return node.attrs.get("kind") == "elementwise"
    return get_op(node.op).family == "elementwise"


class _Storage:
    """One buffer: the values that share it (in definition order) and the steps it is live."""

    def __init__(self, value: Value, size: int, step: int, external: bool = False) -> None:
        self.values = [value]
        self.size = size
        self.first = step
        self.last = step
        self.external = external  # an input, a constant or an output lives in it: not in the arena
        self.offset = 0


def _sizes_env(graph: Graph) -> dict[str, int]:
    return {name: rng.hi for name, rng in graph.symbols.items()}


def _nbytes(value: Value, env: dict[str, int]) -> int:
    try:
        return value.type.nbytes(env)
    except KeyError as e:
        raise QJCError(f"memory plan: %{value.name}: {value.type} uses symbol {e} with no declared range",
                       "declare it with graph.add_symbol(name, lo, hi)") from None


def plan_memory(graph: Graph, alignment: int = ALIGNMENT) -> MemoryPlan:
    """Plan the top level of ``graph`` (see the module docstring for the rules)."""
    env = _sizes_env(graph)
    storage_of: dict[int, _Storage] = {}
    for v in list(graph.inputs) + [c.value for c in graph.constants.values()]:
        storage_of[id(v)] = _Storage(v, 0, -1, external=True)
    last_use: dict[int, int] = {}
    for step, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[id(v)] = step
    defined_at: dict[int, int] = {}
    returned = {id(v) for v in graph.outputs}

    in_place: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for step, node in enumerate(graph.nodes):
        overwritten: set[int] = set()
        for out in node.outputs:
            defined_at[id(out)] = step
            storage: _Storage | None = None
            if node.op in METADATA_OPS and len(node.outputs) == 1:
                storage = storage_of[id(node.inputs[0])]
                aliases[out.name] = node.inputs[0].name
            elif _is_in_place_candidate(node) and id(out) not in returned:
                storage = _dying_operand(node, out, step, storage_of, last_use, defined_at, overwritten)
                if storage is not None:
                    in_place[out.name] = storage.values[-1].name
                    overwritten.add(id(storage))
            if storage is None:
                storage = _Storage(out, _nbytes(out, env), step)
            else:
                storage.values.append(out)
                storage.size = max(storage.size, _nbytes(out, env))
            storage.external = storage.external or id(out) in returned
            storage_of[id(out)] = storage

    buffers = list({id(s): s for s in storage_of.values()}.values())
    for s in buffers:
        s.first = min(defined_at.get(id(v), -1) for v in s.values)
        s.last = max(last_use.get(id(v), defined_at.get(id(v), -1)) for v in s.values)
    planned = [s for s in buffers if not s.external]
    plan = MemoryPlan(alignment=alignment, arena_bytes=_place(planned, alignment),
                      naive_bytes=sum(align_up(s.size, alignment) for s in planned),
                      in_place=in_place, aliases=aliases,
                      planned_at={name: env[name] for name in sorted(_symbols_used(graph))},
                      node_count=len(graph.nodes))
    for s in planned:
        for v in s.values:
            plan.offsets[v.name] = s.offset
            plan.sizes[v.name] = _nbytes(v, env)
            plan.lifetimes[v.name] = (s.first, s.last)
    return plan


def _symbols_used(graph: Graph) -> set[str]:
    return {sym for node in graph.nodes for v in node.outputs for d in v.type.shape
            if not isinstance(d, int) for sym in d.symbols}


def _dying_operand(node: Node, out: Value, step: int, storage_of: dict[int, _Storage], last_use: dict[int, int],
                   defined_at: dict[int, int], overwritten: set[int]) -> _Storage | None:
    """An operand buffer ``out`` may overwrite: planned, of ``out``'s exact type, and read by no
    later step through any value that shares it (a view of it read later keeps it alive)."""
    for v in node.inputs:
        storage = storage_of[id(v)]
        if storage.external or id(storage) in overwritten or v.type != out.type:
            continue
        if all(last_use.get(id(m), defined_at.get(id(m), step)) <= step for m in storage.values):
            return storage
    return None


def _place(storages: list[_Storage], alignment: int) -> int:
    """Best-fit placement, largest buffer first; returns the arena size."""
    order = sorted(storages, key=lambda s: (-s.size, s.first, s.values[0].name))
    placed: list[_Storage] = []
    top = 0
    for s in order:
        busy = sorted((p.offset, p.offset + p.size) for p in placed if p.first <= s.last and s.first <= p.last)
        best: tuple[int, int] | None = None  # (gap size, offset)
        cursor = 0
        for start, end in busy:
            if start - cursor >= s.size:
                gap = start - cursor
                if best is None or gap < best[0]:
                    best = (gap, cursor)
            cursor = max(cursor, align_up(end, alignment))
        s.offset = best[1] if best is not None else cursor
        placed.append(s)
        top = max(top, s.offset + s.size)
    return align_up(top, alignment)


def memory_plan_of(graph: Graph) -> MemoryPlan | None:
    """The plan stored on ``graph`` if it still describes it (same values, sizes and node count)."""
    plan = getattr(graph, "memory_plan", None)
    if not isinstance(plan, MemoryPlan) or plan.node_count != len(graph.nodes):
        return None
    env = _sizes_env(graph)
    produced = {v.name: v for n in graph.nodes for v in n.outputs}
    for name, size in plan.sizes.items():
        v = produced.get(name)
        if v is None or _nbytes(v, env) != size:
            return None
    return plan


class MemoryPlanning:
    name = "memory_plan"

    def __init__(self, alignment: int = ALIGNMENT) -> None:
        self.alignment = alignment

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        plan = plan_memory(graph, self.alignment)
        graph.memory_plan = plan  # type: ignore[attr-defined]  # read back with memory_plan_of
        ctx.note(self.name, plan.summary())
        return graph
