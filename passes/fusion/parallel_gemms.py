"""Parallel GEMMs merged into one: linears that read the same input with constant weights become one
linear over the weights concatenated along N (and their biases), whose result a ``split`` along the
last axis cuts back into the parts. A transformer's q/k/v projections become one GEMM, and so do a
gated MLP's gate and up projections; fusion then gives the merged GEMM the parts' epilogues (RoPE on
q and k, the gated product), so one kernel reads the input once.

Weights merge when all are plain constants of one dtype, or all are quantized constants of one
scheme (packed rows, scales and zero points are concatenated along the rows: quantization groups
run along K, so rows are independent); a group of linears merges when all or none have a constant
bias. Anything else stays as it was. Merging needs a backend that runs ``split``.

The merged constant is made once and named after its parts: their common dotted prefix and suffix
around the differing middles joined by ``__`` (``layers.0.self_attn.q_proj__k_proj__v_proj.weight``);
``merged_constant_parts`` reads such a name back. The parts' constants become dead (DCE drops them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qjc.errors import IRError
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.quant import QuantizedArray
from qjc.passes.fusion.pattern import Match, Var, op, pattern_rule
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import RewritePass, Rule

SEPARATOR = "__"


# ---- names -----------------------------------------------------------------------------------------


def merged_constant_name(names: list[str]) -> str:
    """One name for the concatenation of constants ``names`` that keeps each traceable."""
    parts = [n.split(".") for n in names]
    shortest = min(len(p) for p in parts)
    prefix = 0
    while prefix < shortest and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and len({p[-1 - suffix] for p in parts}) == 1:
        suffix += 1
    middles = [".".join(p[prefix:len(p) - suffix]) for p in parts]
    if not all(middles):
        return SEPARATOR.join(names)
    head, tail = parts[0][:prefix], parts[0][len(parts[0]) - suffix:]
    return ".".join(head + [SEPARATOR.join(middles)] + tail)


def merged_constant_parts(name: str) -> list[str] | None:
    """The names ``merged_constant_name`` joined into ``name`` (single-component middles), or None
    when ``name`` is not a merged name."""
    components = name.split(".")
    merged = [i for i, c in enumerate(components) if SEPARATOR in c]
    if len(merged) != 1:
        return None
    i = merged[0]
    middles = components[i].split(SEPARATOR)
    if not all(middles):
        return None
    return [".".join(components[:i] + [m] + components[i + 1:]) for m in middles]


# ---- constants -------------------------------------------------------------------------------------


def _concatenated_rows(datas: list[Any]) -> np.ndarray | QuantizedArray | None:
    """The constants stacked along their first axis, or None when they cannot be."""
    if all(isinstance(d, np.ndarray) for d in datas):
        if len({d.dtype for d in datas}) != 1 or len({d.shape[1:] for d in datas}) != 1:
            return None
        return np.ascontiguousarray(np.concatenate(datas, axis=0))
    if not all(isinstance(d, QuantizedArray) for d in datas):
        return None
    first = datas[0]
    if any(d.scheme != first.scheme or d.logical_shape[1:] != first.logical_shape[1:] for d in datas):
        return None
    rows = sum(d.logical_shape[0] for d in datas)
    zeros = None if first.zeros is None else np.concatenate([d.zeros for d in datas], axis=0)
    return QuantizedArray(np.concatenate([d.data for d in datas], axis=0),
                          np.concatenate([d.scales for d in datas], axis=0), zeros,
                          (rows,) + first.logical_shape[1:], first.scheme)


def _same_data(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, QuantizedArray) and isinstance(b, QuantizedArray):
        same_zeros = (a.zeros is None and b.zeros is None) or (
            a.zeros is not None and b.zeros is not None and np.array_equal(a.zeros, b.zeros))
        return (a.scheme == b.scheme and a.logical_shape == b.logical_shape and np.array_equal(a.data, b.data)
                and np.array_equal(a.scales, b.scales) and same_zeros)
    return False


def concatenated_constant(graph: Graph, values: list[Value]) -> Value | None:
    """A constant holding ``values`` (constants) stacked along their first axis, made once: an
    existing constant of the merged name with the same contents is reused."""
    datas = [graph.constant_data(v) for v in values]
    if any(d is None for d in datas) or len({v.type.dtype for v in values}) != 1:
        return None
    data = _concatenated_rows(datas)
    if data is None:
        return None
    name = merged_constant_name([v.name for v in values])
    existing = graph.constants.get(name)
    if existing is not None and _same_data(existing.data, data):
        return existing.value
    if isinstance(data, QuantizedArray):
        return graph.add_constant(name, data, type=data.type)
    return graph.add_constant(name, data)


# ---- the rule --------------------------------------------------------------------------------------


def _mergeable_with(graph: Graph, root: Node, other: Node) -> bool:
    """``other`` can share one GEMM with ``root``: same input, constant weights (and biases) of one
    dtype, both with or both without a bias."""
    if other.op != "linear" or other.inputs[0] is not root.inputs[0] or len(other.inputs) != len(root.inputs):
        return False
    return all(graph.is_constant(a) and a.type.dtype == b.type.dtype and a.type.rank == b.type.rank
               for a, b in zip(other.inputs[1:], root.inputs[1:], strict=True))


def _parallel_linears(graph: Graph, root: Node) -> list[Node]:
    """The live linears that can merge with ``root``, ``root`` among them, in graph order (a linear
    already replaced by an earlier merge stays in the node list, unused, until the sweep ends)."""
    if not _mergeable_with(graph, root, root):
        return []
    used = {id(v) for v in graph.outputs}
    candidates = []
    for node in graph.nodes:
        used.update(id(v) for v in node.inputs)
        if _mergeable_with(graph, root, node):
            candidates.append(node)
    return [n for n in candidates if id(n.output) in used] if id(root.output) in used else []


def _backend_runs_split(ctx: PassContext) -> bool:
    caps = ctx.capabilities
    return caps is None or caps.accepts_op("split")


def _merge_parallel_linears(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    root = m.nodes["gemm"]
    if not _backend_runs_split(ctx):
        return None
    group = _parallel_linears(graph, root)
    if len(group) < 2:
        return None
    weight = concatenated_constant(graph, [n.inputs[1] for n in group])
    bias = concatenated_constant(graph, [n.inputs[2] for n in group]) if len(root.inputs) == 3 else None
    if weight is None or (len(root.inputs) == 3 and bias is None):
        return None
    try:
        merged = graph.op("linear", root.inputs[0], weight, *([bias] if bias is not None else []))
        rank = merged.type.rank
        parts = graph.add_node("split", [merged], {"axis": rank - 1,
                                                   "sizes": tuple(n.output.type.shape[-1] for n in group)})
    except IRError:
        return None
    if any(p.type != n.output.type for p, n in zip(parts, group, strict=True)):
        return None
    # A rule replaces the outputs of the node it looks at; the other linears of the group are
    # replaced here, by the same split, keeping their names as the driver does for the root's.
    for node, part in zip(group, parts, strict=True):
        if node is not root:
            graph.replace_uses(node.output, part)
            node.output.name, part.name = part.name, node.output.name
    return parts[group.index(root)]


x, w, b = Var("x"), Var("w"), Var("b")

PARALLEL_GEMM_RULES: list[Rule] = [
    pattern_rule("merge_parallel_linears_over_concatenated_weights", op("linear", x, w, as_="gemm"),
                 _merge_parallel_linears),
    pattern_rule("merge_parallel_biased_linears_over_concatenated_weights", op("linear", x, w, b, as_="gemm"),
                 _merge_parallel_linears),
]


class MergeParallelGemms(RewritePass):
    """Linears that read one input with constant weights become one linear and a split."""

    def __init__(self, max_iterations: int = 50) -> None:
        super().__init__("merge_parallel_gemms", PARALLEL_GEMM_RULES, max_iterations)
