"""Translation of a loaded ONNX model into a qjc Graph.

Steps: find every op the conversion table lacks at the model's opset and fail once, listing them
-> graph inputs (ONNX dim_params become qjc symbols) -> initializers and Constant nodes become
Knowns, turned into graph constants only where a runtime op uses them -> each node through its
converter -> graph outputs, named as in the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import onnx

from qjc.errors import InternalError, QJCError, UnsupportedOpsError
from qjc.frontends.onnx.context import ImportState, NodeContext, NotKnownError
from qjc.frontends.onnx.known import make_known
from qjc.frontends.onnx.loading import LoadedModel, default_opset
from qjc.frontends.onnx.onnx_types import ONNX_TO_QJC, qjc_dtype, tensor_to_array
from qjc.frontends.onnx.registry import first_opset, lookup, normalize_domain
from qjc.ir import Graph, TensorType, Value
from qjc.ir.dims import Dim, SymExpr

# Range of a symbolic dim the caller gave none for.
DEFAULT_RANGE = (1, 2**31 - 1)


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How errors name a node: its name, else its op type and position."""
    return node.name or f"{node.op_type}#{index}"


def op_key(node: onnx.NodeProto, opset: int) -> tuple[str, bool]:
    """(how coverage reports name the node's op, whether qjc converts it at this opset)."""
    domain = normalize_domain(node.domain)
    if domain != "":
        return f"{node.op_type} (domain {domain})", False
    if lookup(domain, node.op_type, opset) is not None:
        return node.op_type, True
    first = first_opset(domain, node.op_type)
    if first is None:
        return node.op_type, False
    return f"{node.op_type} (opset {opset}; qjc converts it from opset {first})", False


def op_coverage(proto: onnx.ModelProto) -> dict[str, tuple[int, bool]]:
    opset = default_opset(proto) or 0
    out: dict[str, tuple[int, bool]] = {}
    for node in proto.graph.node:
        key, ok = op_key(node, opset)
        count, _ = out.get(key, (0, ok))
        out[key] = (count + 1, ok)
    return out


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    opset = default_opset(proto) or 0
    missing: dict[str, list[str]] = {}
    for index, node in enumerate(proto.graph.node):
        key, ok = op_key(node, opset)
        if not ok:
            missing.setdefault(key, []).append(node_label(node, index))
    return missing


class SymbolTable:
    """ONNX dim_params -> qjc symbols (valid identifiers), each declared on the graph with a range."""

    def __init__(self, graph: Graph, ranges: Mapping[str, tuple[int, int]] | None) -> None:
        self.graph = graph
        self.ranges = dict(ranges or {})
        self._by_param: dict[str, Dim] = {}
        self._names: set[str] = set()  # the symbols' own names (a range may be keyed by either)

    def dim(self, param: str) -> Dim:
        """The dim for ``param``: a symbol, or a plain int where its range is one value (a batch fixed at
        compile time becomes static, so passes and kernels specialize on it)."""
        if param not in self._by_param:
            base = re.sub(r"[^A-Za-z0-9_]", "_", param) or "dim"
            if not re.match(r"[A-Za-z_]", base):
                base = f"d_{base}"
            name, n = base, 1
            while name in self.graph.symbols:
                name, n = f"{base}_{n}", n + 1
            self._names.add(name)
            lo, hi = self.ranges.get(param, self.ranges.get(name, DEFAULT_RANGE))
            if lo == hi:
                self._by_param[param] = lo
            else:
                self.graph.add_symbol(name, lo, hi)
                self._by_param[param] = SymExpr.symbol(name)
        return self._by_param[param]

    def unused_ranges(self) -> list[str]:
        """Range names no symbolic input dim carries (a typo, or a dim the model does not have)."""
        return sorted(set(self.ranges) - set(self._by_param) - self._names)


def _input_type(vi: onnx.ValueInfoProto, symbols: SymbolTable, source: str) -> TensorType:
    what = f"{source}: graph input {vi.name!r}"
    if vi.type.WhichOneof("value") != "tensor_type":
        raise QJCError(f"{what} is a {vi.type.WhichOneof('value') or 'value of unknown kind'}; "
                       "qjc takes tensor inputs only")
    tt = vi.type.tensor_type
    dtype = qjc_dtype(tt.elem_type, what)
    if not tt.HasField("shape"):
        raise QJCError(f"{what} has no shape (unknown rank); qjc needs at least the rank",
                       "export the model with input shapes, using names for the dynamic dims")
    shape: list[Dim] = []
    for axis, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            # a dim with neither value nor name gets its own symbol
            shape.append(symbols.dim(d.dim_param or f"{vi.name}_dim{axis}"))
    return TensorType(tuple(shape), dtype)


def _rename(graph: Graph, value: Value, hint: str) -> None:
    """Give ``value`` the name ``hint`` (sanitized, made unique): ONNX names survive into the IR."""
    graph.forget_names([value])  # first, so that a value already named so keeps its name
    value.name = graph.fresh_name(hint)
    graph._claim(value.name)  # Graph has no public rename; _claim records the name as taken


class Importer:
    def __init__(self, loaded: LoadedModel, name: str | None,
                 ranges: Mapping[str, tuple[int, int]] | None) -> None:
        self.proto = loaded.proto
        self.loaded = loaded
        self.source = loaded.source
        self.graph = Graph(name or self.proto.graph.name or "main")
        opset = default_opset(self.proto)
        self.state = ImportState(self.graph, self.source, opset if opset is not None else 0, loaded.external)
        self.symbols = SymbolTable(self.graph, ranges)

    def run(self) -> Graph:
        missing = unsupported_ops(self.proto)
        if missing:
            raise UnsupportedOpsError(self.source, missing)
        g = self.proto.graph
        if len(g.sparse_initializer):
            raise QJCError(f"{self.source}: sparse initializers ({g.sparse_initializer[0].values.name!r}, ...) "
                           "are not supported")
        initializers = {t.name for t in g.initializer}
        for vi in g.input:
            if vi.name not in initializers:  # an input with an initializer is a constant (IR < 4 style)
                value = self.graph.add_input(vi.name, _input_type(vi, self.symbols, self.source))
                self.state.env[vi.name] = value
                self.state.input_names[value] = vi.name
        unused = self.symbols.unused_ranges()
        if unused:
            raise QJCError(f"{self.source}: no input has a symbolic dim named {', '.join(unused)} (dims given: "
                           f"{', '.join(sorted(self.symbols.ranges))})",
                           "the names are the model's dim_params; `qjc dump MODEL` shows them")
        for tensor in g.initializer:
            what = f"{self.source}: initializer {tensor.name!r}"
            data = tensor_to_array(tensor, what, self.loaded.external.get(tensor.name))
            self.state.env[tensor.name] = make_known(data, ONNX_TO_QJC[tensor.data_type])
        used = {name for node in g.node for name in node.input} | {vi.name for vi in g.output}
        for index, node in enumerate(g.node):
            self._convert(node, index, used)
        self._set_outputs()
        return self.graph

    def _convert(self, node: onnx.NodeProto, index: int, used: set[str]) -> None:
        label = node_label(node, index)
        where = f"{self.source}: node {label} ({node.op_type})"
        fn = lookup(node.domain, node.op_type, self.state.opset)
        assert fn is not None, "unsupported ops are rejected before translation"
        ctx = NodeContext(self.state, node, label)
        missing_inputs = [name for name in node.input if name and name not in self.state.env]
        if missing_inputs:
            raise QJCError(f"{where}: input {missing_inputs[0]!r} is not produced by any earlier node, "
                           "initializer or graph input (the nodes must be in topological order)")
        start = len(self.graph.nodes)
        try:
            result = fn(ctx)
        except (UnsupportedOpsError, InternalError):
            raise
        except NotKnownError as e:
            raise NotKnownError(f"{where}: {e.message}", e.graph_inputs) from e
        except QJCError as e:  # converter and IR type errors: say which node of which file
            message = e.message.removeprefix(f"{self.source}: ")
            raise QJCError(f"{where}: {message}", e.hint) from e
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        created = {id(n) for n in self.graph.nodes[start:]}
        for k, out_name in enumerate(node.output):
            if not out_name:
                continue
            entry = results[k] if k < len(results) else None
            if entry is None:
                if out_name in used:
                    raise QJCError(f"{where}: output {k} ({out_name!r}) is not supported")
                continue
            if isinstance(entry, Value) and entry.producer is not None and id(entry.producer) in created:
                _rename(self.graph, entry, out_name)
            self.state.env[out_name] = entry

    def _set_outputs(self) -> None:
        outputs: list[Value] = []
        for vi in self.proto.graph.output:
            if vi.name not in self.state.env:
                raise QJCError(f"{self.source}: graph output {vi.name!r} is not produced by any node")
            value = self.state.value_of(vi.name)
            is_node_output = value.producer is not None and value.producer in self.graph.nodes
            if not is_node_output or any(value is o for o in outputs):
                value = self.graph.op("identity", value, name=vi.name)  # outputs get their own, named value
            else:
                _rename(self.graph, value, vi.name)
            declared = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            if declared and ONNX_TO_QJC.get(declared) not in (None, value.type.dtype):
                raise InternalError(f"{self.source}: output {vi.name!r} came out as {value.type.dtype}, but the "
                                    f"model declares {ONNX_TO_QJC[declared]} (a converter bug)")
            outputs.append(value)
        self.graph.set_outputs(*outputs)


def import_model(loaded: LoadedModel, name: str | None = None,
                 ranges: Mapping[str, tuple[int, int]] | None = None) -> Graph:
    return Importer(loaded, name, ranges).run()
