"""Local rewrites written as data, and the driver that applies them to a fixpoint.

A ``Rule`` names what it does (``merge_double_transpose``), the op of the node it looks at (or None
for any op) and a function ``(node, graph, ctx) -> replacement | None``. The replacement is one
value per output of ``node`` (a single Value for a single-output node; in a list, None keeps that
output). New nodes are built with ``graph.op`` / ``graph.add_node``, which append at the end; the
driver restores topological order, points every use at the replacements and drops dead nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from qjc.errors import InternalError
from qjc.ir.graph import Graph, Node, Value
from qjc.passes.manager import PassContext

Replacement = Value | Sequence[Value | None] | None
RewriteFn = Callable[[Node, Graph, PassContext], Replacement]


@dataclass(frozen=True)
class Rule:
    name: str
    op: str | None  # the op of the root node this rule looks at; None = every node
    match_and_rewrite: RewriteFn


class RewriteDidNotConverge(InternalError):
    """A rule set kept rewriting past the iteration cap: some rules undo or re-trigger each other."""


class RewritePass:
    """Applies ``rules`` to every node, sweep after sweep, until a sweep changes nothing.

    Rules are tried in the order given; the first that rewrites a node wins for that sweep. Fused
    nodes' subgraphs are rewritten with the same rules."""

    def __init__(self, name: str, rules: Iterable[Rule], max_iterations: int = 50) -> None:
        self.name = name
        self.rules = list(rules)
        self.max_iterations = max_iterations
        names = Counter(r.name for r in self.rules)
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise ValueError(f"rewrite pass {name}: rule name(s) used twice: {twice}")
        self._for_op: dict[str, list[Rule]] = {}

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        fired: Counter[str] = Counter()
        self._rewrite_graph(graph, ctx, fired)
        if fired:
            ctx.note(self.name, ", ".join(f"{n} x{c}" for n, c in sorted(fired.items())))
        return graph

    def rules_for(self, op: str) -> list[Rule]:
        """The rules that look at nodes of ``op``, in the declared order."""
        rules = self._for_op.get(op)
        if rules is None:
            rules = self._for_op[op] = [r for r in self.rules if r.op in (op, None)]
        return rules

    def _rewrite_graph(self, graph: Graph, ctx: PassContext, fired: Counter[str]) -> None:
        for node in graph.nodes:
            if node.subgraph is not None:
                self._rewrite_graph(node.subgraph, ctx, fired)
        remove_dead_nodes(graph)
        for _ in range(self.max_iterations):
            this_sweep = self._sweep(graph, ctx)
            if not this_sweep:
                return
            fired.update(this_sweep)
            graph.toposort()
            remove_dead_nodes(graph)
        shown = ", ".join(f"{n} x{c}" for n, c in this_sweep.most_common())
        raise RewriteDidNotConverge(
            f"rewrite pass {self.name!r} did not reach a fixpoint on graph {graph.name} after "
            f"{self.max_iterations} sweeps; the last sweep still applied: {shown}",
            "two rules probably undo each other, or a rule rewrites a node into one it matches again",
        )

    def _sweep(self, graph: Graph, ctx: PassContext) -> Counter[str]:
        fired: Counter[str] = Counter()
        for node in list(graph.nodes):  # nodes that rules append are visited in the next sweep
            for rule in self.rules_for(node.op):
                first_new = len(graph.nodes)
                result = rule.match_and_rewrite(node, graph, ctx)
                if result is not None and _apply(rule, node, result, graph, graph.nodes[first_new:]):
                    fired[rule.name] += 1
                    break
                _drop_appended(graph, first_new)  # a rule may build nodes and then decline
        return fired


def _apply(rule: Rule, node: Node, result: Replacement, graph: Graph, new_nodes: list[Node]) -> bool:
    """Point uses of ``node``'s outputs at ``result``; False when nothing changes."""
    replacements = [result] if isinstance(result, Value) else list(result)
    if len(replacements) != len(node.outputs):
        raise InternalError(f"rule {rule.name} returned {len(replacements)} values for {node.label}, "
                            f"which has {len(node.outputs)} outputs")
    changed = False
    renamed: set[int] = set()
    for old, new in zip(node.outputs, replacements, strict=True):
        if new is None or new is old:
            continue
        if new.type != old.type:
            raise InternalError(f"rule {rule.name} replaced %{old.name}: {old.type} of {node.op} "
                                f"with %{new.name}: {new.type}; a rewrite must keep types")
        # The new nodes may consume the old value (e.g. a cast inserted after it): keep those uses.
        kept = [list(n.inputs) for n in new_nodes]
        graph.replace_uses(old, new)
        for n, inputs in zip(new_nodes, kept, strict=True):
            n.inputs = inputs
        built_here = any(new.producer is n for n in new_nodes)
        old_still_used = any(v is old for n in new_nodes for v in n.inputs)
        if built_here and not old_still_used and id(new) not in renamed:
            # A value built by this rule takes over the name of the one it replaces (so names from
            # the model survive in dumps); swapping keeps every name unique, and the old value,
            # now dead, takes the other name away with it.
            old.name, new.name = new.name, old.name
            renamed.add(id(new))
        changed = True
    return changed


def _drop_appended(graph: Graph, first_new: int) -> None:
    if len(graph.nodes) > first_new:
        graph.forget_names([v for n in graph.nodes[first_new:] for v in n.outputs])
        del graph.nodes[first_new:]


def remove_dead_nodes(graph: Graph) -> int:
    """Drop nodes no graph output depends on (this graph only, not subgraphs); returns how many."""
    live: set[int] = {id(v) for v in graph.outputs}
    kept: list[Node] = []
    dead: list[Node] = []
    for node in reversed(graph.nodes):
        if any(id(v) in live for v in node.outputs):
            kept.append(node)
            live.update(id(v) for v in node.inputs)
        else:
            dead.append(node)
    if dead:
        graph.nodes = kept[::-1]
        graph.forget_names([v for n in dead for v in n.outputs])
    return len(dead)


def substitute(graph: Graph, mapping: dict[Value, Value]) -> None:
    """Replace many values at once (one walk over the graph instead of one per value)."""
    if not mapping:
        return

    def resolve(v: Value) -> Value:
        while v in mapping:
            v = mapping[v]
        return v

    for node in graph.nodes:
        node.inputs = [resolve(v) for v in node.inputs]
    graph.outputs = [resolve(v) for v in graph.outputs]
