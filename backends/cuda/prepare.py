"""Rewrite a copy of the graph into the form the cuda lowering takes.

- Compute dtype: with ``dtype=fp16|bf16`` every f32 value becomes that dtype (weights are
  converted by the engine when it loads them); f32 graph inputs are cast on the way in and f32
  outputs cast back on the way out, so the engine's signature is the graph's -- except state (a KV
  pool), which the engine keeps in the compute dtype (the manifest's ``state_dtype``).
- Fused groups are inlined into the node list, each node tagged with its group (region) and kind;
  the planner fuses inside a region as the group says and never across its border. An unknown kind
  simply runs op by op.
- Reductions, softmax and argmax over non-trailing axes get a transpose in front, so the row
  reduction template only ever sees trailing axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qjc.backends.cuda.kernels.row_reduce import ROW_CORES, reduces_trailing
from qjc.errors import BackendError
from qjc.ir.dtypes import DType, parse_dtype
from qjc.ir.graph import Graph, Node, Value


@dataclass
class Prepared:
    graph: Graph
    # constant name -> dtype stored in weights.safetensors (the engine converts on load)
    stored_dtypes: dict[str, str]
    # id(node) -> (region number, fused kind) for nodes that came out of a fused group
    regions: dict[int, tuple[int, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare(graph: Graph, compute_dtype: str | None) -> Prepared:
    g = graph.copy()
    _copy_extra_attrs(graph, g)
    stored = {name: c.value.type.dtype.name for name, c in _all_constants(graph)}
    prepared = Prepared(g, stored)
    _flatten_fused(g, prepared)
    if compute_dtype is not None:
        was_f32 = [v.type.dtype.name == "f32" for v in graph.outputs]
        _convert_floats(g, parse_dtype(compute_dtype), prepared, was_f32)
    _legalize_reductions(g)
    g.toposort()
    return prepared


def _copy_extra_attrs(src: Graph, dst: Graph) -> None:
    plan = getattr(src, "memory_plan", None)
    if plan is not None:
        dst.memory_plan = plan  # type: ignore[attr-defined]


def _all_constants(graph: Graph):
    out = list(graph.constants.items())
    for node in graph.nodes:
        if node.subgraph is not None:
            out.extend(_all_constants(node.subgraph))
    return out


# ---- fused groups --------------------------------------------------------------------------------


def _flatten_fused(g: Graph, prepared: Prepared) -> None:
    region = 0
    while any(n.op == "fused" for n in g.nodes):
        new_nodes: list[Node] = []
        for node in g.nodes:
            if node.op != "fused":
                new_nodes.append(node)
                continue
            region += 1
            kind = node.attrs.get("kind", "")
            for inner in _inline_subgraph(g, node):
                prepared.regions[id(inner)] = (region, kind)
                new_nodes.append(inner)
        g.nodes = new_nodes


def _inline_subgraph(g: Graph, fused: Node) -> list[Node]:
    sub = fused.subgraph
    if sub is None:
        raise BackendError(f"fused node {fused.label} has no subgraph")
    remap: dict[Value, Value] = dict(zip(sub.inputs, fused.inputs))
    for name, const in sub.constants.items():
        if name in g.constants:
            remap[const.value] = g.constants[name].value
            continue
        g.constants[name] = const
        g._names.add(name)
    out_of = {}
    for k, v in enumerate(sub.outputs):
        out_of.setdefault(v, []).append(fused.outputs[k])
    nodes: list[Node] = []
    produced: set[Value] = set()
    for inner in sub.nodes:
        inputs = [remap.get(v, v) for v in inner.inputs]
        outputs = []
        for v in inner.outputs:
            targets = out_of.get(v)
            if targets:
                nv = targets[0]
            else:
                nv = Value(g._claim(g.fresh_name(v.name)), v.type)
            remap[v] = nv
            outputs.append(nv)
        node = Node(inner.op, inputs, outputs, dict(inner.attrs), inner.subgraph)
        for nv in outputs:
            nv.producer = node
            produced.add(nv)
        nodes.append(node)
    # outputs that are subgraph inputs, constants or repeats need a copy of their own
    for k, v in enumerate(sub.outputs):
        target = fused.outputs[k]
        if target in produced:
            continue
        source = remap.get(v, v)
        node = Node("identity", [source], [target], {})
        target.producer = node
        produced.add(target)
        nodes.append(node)
    return nodes


# ---- compute dtype -------------------------------------------------------------------------------


def _convert_floats(g: Graph, dtype: DType, prepared: Prepared, was_f32: list[bool]) -> None:
    """Every f32 value becomes ``dtype``; the signature keeps f32 through boundary casts."""
    f32 = parse_dtype("f32")

    def convert(v: Value) -> None:
        if v.type.dtype == f32:
            v.type = v.type.with_dtype(dtype)

    boundary: list[Node] = []
    new_inputs = []
    state = set(g.state)
    for v in g.inputs:
        if v.name in state:
            convert(v)  # state (a KV pool) lives on the device in the compute dtype: no casts per run
            new_inputs.append(v)
            continue
        if v.type.dtype != f32:
            new_inputs.append(v)
            continue
        # the input keeps its f32 type; a cast feeds everything that used it
        inner = Value(g._claim(g.fresh_name(f"{v.name}_c")), v.type.with_dtype(dtype))
        cast = Node("cast", [v], [inner], {"to": dtype})
        inner.producer = cast
        for node in g.nodes:
            node.inputs = [inner if u is v else u for u in node.inputs]
        boundary.append(cast)
        new_inputs.append(v)
    g.inputs = new_inputs
    for c in g.constants.values():
        convert(c.value)
    for node in g.nodes:
        for v in node.outputs:
            convert(v)
        for key, value in list(node.attrs.items()):
            if isinstance(value, DType) and value == f32:
                node.attrs[key] = dtype
    # outputs that were f32 get a cast back (an input passed straight through keeps f32)
    outputs = []
    tail: list[Node] = []
    first_state = len(g.outputs) - len(g.state)
    for k, (v, f32_out) in enumerate(zip(g.outputs, was_f32)):
        if f32_out and v.type.dtype == dtype and k < first_state:
            back = Value(g._claim(g.fresh_name(f"{v.name}_out")), v.type.with_dtype(f32))
            cast = Node("cast", [v], [back], {"to": f32})
            back.producer = cast
            tail.append(cast)
            outputs.append(back)
        else:
            outputs.append(v)
    g.outputs = outputs
    g.nodes = boundary + g.nodes + tail
    prepared.notes.append(f"f32 values computed in {dtype.name}; f32 inputs and outputs cast at the boundary")


# ---- legalization --------------------------------------------------------------------------------


def _legalize_reductions(g: Graph) -> None:
    """Put reduced axes last with a transpose (and reshape a keepdims result back)."""
    for node in list(g.nodes):
        if node.op not in ROW_CORES or reduces_trailing(node):
            continue
        x = node.inputs[0]
        rank = len(x.type.shape)
        if node.op in ("softmax", "log_softmax", "argmax", "argmin"):
            reduced = (node.attrs["axis"] % rank,)
        else:
            reduced = tuple(sorted(a % rank for a in node.attrs["axes"]))
        kept = tuple(a for a in range(rank) if a not in reduced)
        perm = kept + reduced
        moved = g.op("transpose", x, perm=list(perm))
        if node.op in ("softmax", "log_softmax"):
            inner = g.op(node.op, moved, axis=-1)
            inverse = [perm.index(a) for a in range(rank)]
            result = g.op("transpose", inner, perm=inverse)
        elif node.op in ("argmax", "argmin"):
            inner = g.op(node.op, moved, axis=-1, keepdims=False)
            result = g.op("reshape", inner, shape=list(node.outputs[0].type.shape)) \
                if node.attrs["keepdims"] else inner
        else:
            inner = g.op(node.op, moved, axes=list(range(len(kept), rank)), keepdims=False)
            result = g.op("reshape", inner, shape=list(node.outputs[0].type.shape)) \
                if node.attrs["keepdims"] else inner
        old = node.outputs[0]
        g.replace_uses(old, result)
        g.nodes.remove(node)
