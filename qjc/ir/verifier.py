"""The IR verifier: a table of named checks run over a graph and, recursively, over the subgraphs
of its fused nodes. It reports every problem it finds, not just the first, so a broken pass shows
the whole damage at once.

Each check is ``fn(graph, top) -> Iterable[str]`` (``top`` is False inside subgraphs) and names
nodes by ``node.label``. Problems from a subgraph are prefixed with the fused node's label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from qjc.errors import IRError, QJCError, UnknownOpError, VerifyError
from qjc.ir.dims import SymExpr
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.ops.registry import OpDef, get_op
from qjc.ir.types import TensorType

Check = Callable[[Graph, bool], Iterable[str]]


def verify(graph: Graph) -> None:
    """Raise VerifyError listing every problem of ``graph``; return quietly if there is none."""
    problems = check(graph)
    if problems:
        raise VerifyError(graph.name, problems)


def check(graph: Graph) -> list[str]:
    """Every problem of ``graph`` and its subgraphs, as readable lines (empty when it is valid)."""
    return _check_graph(graph, top=True, active=set())


def _check_graph(graph: Graph, top: bool, active: set[int]) -> list[str]:
    if id(graph) in active:
        return [f"graph {graph.name} contains itself as a subgraph"]
    active = active | {id(graph)}
    problems: list[str] = []
    for name, fn in CHECKS:
        try:
            problems.extend(fn(graph, top))
        except Exception as e:  # a check tripping over a badly broken graph must not hide the rest
            problems.append(f"check {name!r} could not finish: {type(e).__name__}: {e}")
    for node in graph.nodes:
        if isinstance(node.subgraph, Graph):
            prefix = f"in subgraph {node.subgraph.name} of {_label(node)}: "
            problems.extend(prefix + p for p in _check_graph(node.subgraph, False, active))
    return problems


# ---- helpers -------------------------------------------------------------------------------------


def _label(node: Node) -> str:
    try:
        return node.label
    except Exception:  # outputs that are not Values
        return f"{node.op} node"


def _registered(graph: Graph) -> Iterator[tuple[Node, OpDef]]:
    """Nodes whose op is known (unknown ops are reported once, by check_ops_registered)."""
    for node in graph.nodes:
        try:
            yield node, get_op(node.op)
        except UnknownOpError:
            continue


def _well_formed(graph: Graph) -> Iterator[tuple[Node, OpDef, dict[str, Any]]]:
    """Nodes whose op, arity and attributes are valid, with their normalized attributes: the ones
    whose types can be re-inferred without repeating problems other checks already report."""
    for node, opdef in _registered(graph):
        if not all(isinstance(v, Value) for v in node.inputs):
            continue
        try:
            opdef.check_arity(len(node.inputs))
            attrs = opdef.normalize_attrs(node.attrs)
        except IRError:
            continue
        yield node, opdef, attrs


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same Python type, element by element (1 and 1.0 differ; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def _defined_values(graph: Graph) -> list[Value]:
    return list(graph.inputs) + [c.value for c in graph.constants.values()]


def _symbols_of(ty: TensorType) -> set[str]:
    return {s for d in ty.shape if isinstance(d, SymExpr) for s in d.symbols}


# ---- the checks ----------------------------------------------------------------------------------


def check_ops_registered(graph: Graph, top: bool) -> Iterator[str]:
    for node in graph.nodes:
        try:
            get_op(node.op)
        except UnknownOpError as e:
            yield f"{_label(node)}: {e.message} ({e.hint})"


def check_arity(graph: Graph, top: bool) -> Iterator[str]:
    for node, opdef in _registered(graph):
        try:
            opdef.check_arity(len(node.inputs), _label(node))
        except IRError as e:
            yield e.message


def check_attributes(graph: Graph, top: bool) -> Iterator[str]:
    for node, opdef in _registered(graph):
        label = _label(node)
        try:
            normalized = opdef.normalize_attrs(node.attrs, label)
        except IRError as e:  # unknown names, missing required ones, wrong kinds, bad choices
            yield e.message
            continue
        for name, value in normalized.items():
            if name not in node.attrs:
                yield f"{label}: attribute {name!r} is missing (its default {value!r} should be stored)"
            elif not _same(node.attrs[name], value):
                got = node.attrs[name]
                yield f"{label}: attribute {name!r} is {got!r}, not its normalized form {value!r}"


def check_operands_defined(graph: Graph, top: bool) -> Iterator[str]:
    produced_here = {v for n in graph.nodes for v in n.outputs if isinstance(v, Value)}
    defined = set(_defined_values(graph))
    for node in graph.nodes:
        label = _label(node)
        for i, v in enumerate(node.inputs):
            if not isinstance(v, Value):
                yield f"{label}: operand {i} is a {type(v).__name__}, not a Value"
            elif v not in defined:
                where = "before it is defined" if v in produced_here else "which is not defined in this graph"
                yield f"{label}: uses %{v.name} {where}"
        defined.update(v for v in node.outputs if isinstance(v, Value))


def check_unique_names(graph: Graph, top: bool) -> Iterator[str]:
    values = _defined_values(graph) + [v for n in graph.nodes for v in n.outputs]
    counts = Counter(v.name if isinstance(v, Value) else None for v in values)
    for name, n in counts.items():
        if name is None:
            yield f"graph {graph.name} defines {n} output(s) that are not Values"
        elif n > 1:
            yield f"value name %{name} is defined {n} times"
    for key, constant in graph.constants.items():
        if constant.value.name != key:
            yield f"constant entry {key!r} holds a value named %{constant.value.name}"


def check_producers(graph: Graph, top: bool) -> Iterator[str]:
    for v in graph.inputs:
        if v.producer is not None:
            yield f"graph input %{v.name} has a producer ({_label(v.producer)})"
    for c in graph.constants.values():
        if c.value.producer is not None:
            yield f"constant %{c.value.name} has a producer ({_label(c.value.producer)})"
    for node in graph.nodes:
        for v in node.outputs:
            if isinstance(v, Value) and v.producer is not node:
                actual = "none" if v.producer is None else _label(v.producer)
                yield f"{_label(node)}: output %{v.name} names a different producer ({actual})"


def check_output_types(graph: Graph, top: bool) -> Iterator[str]:
    for node, opdef, attrs in _well_formed(graph):
        label = _label(node)
        if node.op == "fused":
            if not isinstance(node.subgraph, Graph):
                continue  # check_subgraphs reports it
            inferred = [v.type for v in node.subgraph.outputs]  # operands are check_subgraphs' part
        else:
            try:
                inferred = opdef.infer_types([v.type for v in node.inputs], attrs, node.subgraph, label)
            except QJCError as e:
                yield f"type inference fails: {e.message}"
                continue
            except Exception as e:  # an inference function tripping on something it did not expect
                yield f"{label}: type inference fails: {type(e).__name__}: {e}"
                continue
        stored = [v.type if isinstance(v, Value) else None for v in node.outputs]
        if len(stored) != len(inferred):
            yield f"{label}: has {len(stored)} outputs, op {node.op} infers {len(inferred)}"
            continue
        for v, want in zip(node.outputs, inferred, strict=True):
            if isinstance(v, Value) and v.type != want:
                yield f"{label}: output %{v.name} is stored as {v.type} but infers as {want}"


def check_graph_outputs(graph: Graph, top: bool) -> Iterator[str]:
    if not graph.outputs:
        yield f"graph {graph.name} has no outputs"
    defined = set(_defined_values(graph))
    defined.update(v for n in graph.nodes for v in n.outputs if isinstance(v, Value))
    for i, v in enumerate(graph.outputs):
        if not isinstance(v, Value):
            yield f"graph output {i} is a {type(v).__name__}, not a Value"
        elif v not in defined:
            yield f"graph output %{v.name} is not defined in graph {graph.name}"


def check_subgraphs(graph: Graph, top: bool) -> Iterator[str]:
    for node in graph.nodes:
        label = _label(node)
        sub = node.subgraph
        if node.op != "fused":
            if sub is not None:
                yield f"{label}: carries a subgraph but op {node.op} is not fused"
            continue
        if not isinstance(sub, Graph):
            yield f"{label}: a fused node needs a subgraph"
            continue
        if len(node.inputs) != len(sub.inputs):
            yield f"{label}: {len(node.inputs)} operands for a subgraph of {len(sub.inputs)} inputs"
            continue
        for i, (operand, param) in enumerate(zip(node.inputs, sub.inputs, strict=True)):
            if isinstance(operand, Value) and operand.type != param.type:
                yield f"{label}: operand {i} %{operand.name} is {operand.type} but subgraph input " \
                      f"%{param.name} is {param.type}"


def check_constant_data(graph: Graph, top: bool) -> Iterator[str]:
    for constant in graph.constants.values():
        data, ty, name = constant.data, constant.value.type, constant.value.name
        if not isinstance(data, np.ndarray):
            continue  # no data yet, or a QuantizedArray (which checks itself)
        if ty.dtype.is_quant:
            yield f"constant %{name} of quantized type {ty.dtype} holds a plain ndarray"
            continue
        if not ty.is_static:
            yield f"constant %{name} has data but a symbolic type {ty}"
        elif data.shape != ty.shape:
            yield f"constant %{name} is declared {ty} but its data has shape {data.shape}"
        if data.dtype != ty.dtype.np_dtype:
            yield f"constant %{name} is declared {ty.dtype} but its data is {data.dtype}"


def check_symbols_declared(graph: Graph, top: bool) -> Iterator[str]:
    if not top:
        return  # subgraphs use the top graph's symbols
    first_user: dict[str, str] = {}
    for where, ty in _typed_things(graph):
        for s in sorted(_symbols_of(ty)):
            first_user.setdefault(s, where)
    for node_label, dims in _dims_attrs(graph):
        for d in dims:
            if isinstance(d, SymExpr):
                for s in sorted(d.symbols):
                    first_user.setdefault(s, node_label)
    for s, where in first_user.items():
        if s not in graph.symbols:
            yield f"symbol {s!r} (used by {where}) is not declared; add graph.add_symbol({s!r}, lo, hi)"


def _typed_things(graph: Graph) -> Iterator[tuple[str, TensorType]]:
    """(description, type) of every value in ``graph`` and, recursively, its subgraphs."""
    for v in graph.all_values():
        if isinstance(v, Value):
            yield f"%{v.name}: {v.type}", v.type
    for node in graph.nodes:
        if isinstance(node.subgraph, Graph):
            yield from _typed_things(node.subgraph)


def _dims_attrs(graph: Graph) -> Iterator[tuple[str, tuple]]:
    """Attribute values that may hold symbolic dims (e.g. a reshape target), subgraphs included."""
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, (list, tuple)):
                yield _label(node), tuple(value)
        if isinstance(node.subgraph, Graph):
            yield from _dims_attrs(node.subgraph)


def check_state(graph: Graph, top: bool) -> Iterator[str]:
    """State inputs exist, and the trailing outputs that update them have their types."""
    inputs = {v.name: v for v in graph.inputs}
    if len(graph.state) > len(graph.outputs):
        yield f"{len(graph.state)} state inputs but only {len(graph.outputs)} outputs to update them"
        return
    tail = graph.outputs[len(graph.outputs) - len(graph.state):] if graph.state else []
    for name, new in zip(graph.state, tail):
        if name not in inputs:
            yield f"state %{name} is not a graph input"
        elif inputs[name].type != new.type:
            yield f"state %{name}: {inputs[name].type} is updated by %{new.name}: {new.type}"


# The table: (name, check). Order matters only for the order problems are listed in.
CHECKS: list[tuple[str, Check]] = [
    ("ops registered", check_ops_registered),
    ("arity", check_arity),
    ("attributes", check_attributes),
    ("operands defined", check_operands_defined),
    ("unique names", check_unique_names),
    ("producers", check_producers),
    ("output types", check_output_types),
    ("graph outputs", check_graph_outputs),
    ("subgraphs", check_subgraphs),
    ("constant data", check_constant_data),
    ("symbols declared", check_symbols_declared),
    ("state", check_state),
]
