"""What converters work with: the import's state (graph, name -> Value | Known map) and, per node,
a NodeContext that reads the node's inputs and attributes and builds qjc ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from qjc.errors import QJCError
from qjc.frontends.onnx.known import Known, make_known
from qjc.ir import Graph, Value
from qjc.ir.dims import Dim, SymExpr
from qjc.ir.dtypes import DType, i64
from qjc.ir.interpreter import evaluate_node

_REQUIRED = object()


class NotKnownError(QJCError):
    """An input that must be compile-time data (a Reshape's shape, ...) is computed at run time.
    ``graph_inputs`` names the ONNX graph inputs it is computed from, so a caller that has their
    data (a test harness) can bind them as initializers and import again."""

    def __init__(self, message: str, graph_inputs: list[str]) -> None:
        super().__init__(message, "give it as an initializer or a Constant, or compute it from Shape outputs")
        self.graph_inputs = graph_inputs


Entry = Value | Known  # what an ONNX tensor name stands for


class ImportState:
    """The graph being built and what every ONNX tensor name stands for."""

    def __init__(self, graph: Graph, source: str, opset: int, external: dict[str, np.ndarray]) -> None:
        self.graph = graph
        self.source = source
        self.opset = opset
        self.external = external  # external tensor data read by the loader, by key
        self.env: dict[str, Entry] = {}
        self._materialized: dict[str, Value] = {}  # ONNX name -> the constant made from its Known
        self._symbol_values: dict[str, Value] = {}  # symbol -> i64 scalar Value holding it at run time
        self._folded: dict[Value, Known | None] = {}
        self.input_names: dict[Value, str] = {}  # graph input Value -> its ONNX name

    # ---- Known -> Value ---------------------------------------------------------------------------
    def value_of(self, name: str) -> Value:
        entry = self.env[name]
        if isinstance(entry, Value):
            return entry
        if name not in self._materialized:
            self._materialized[name] = self.materialize(entry, name)
        return self._materialized[name]

    def materialize(self, known: Known, hint: str = "c") -> Value:
        """A Value holding ``known``: a constant, or ops computing its symbolic entries at run time."""
        if not known.symbolic:
            return self.graph.add_constant(hint or "c", np.asarray(known.data, order="C"))  # keeps 0-d
        scalars = [self.dim_scalar(d, known.dtype) for d in known.dims()]
        if known.data.ndim == 0:
            return scalars[0]
        pieces = [self.graph.op("unsqueeze", s, axes=[0]) for s in scalars]
        flat = pieces[0] if len(pieces) == 1 else self.graph.op("concat", *pieces, axis=0)
        return flat if known.data.ndim == 1 else self.graph.op("reshape", flat, shape=list(known.shape))

    def dim_scalar(self, d: Dim, dtype: DType) -> Value:
        """A scalar Value of ``dtype`` holding the dim ``d`` (a polynomial over symbols)."""
        if isinstance(d, int):
            return self.graph.add_constant("c", np.asarray(d, dtype=dtype.np_dtype))
        total: Value | None = None
        for mono, coef in d.terms:
            term: Value | None = None if coef == 1 else self.graph.add_constant("c", np.asarray(coef, np.int64))
            for s in mono:
                v = self.symbol_value(s)
                term = v if term is None else self.graph.op("mul", term, v)
            total = term if total is None else self.graph.op("add", total, term)
        return total if dtype == i64 else self.graph.op("cast", total, to=dtype)

    def symbol_value(self, symbol: str) -> Value:
        # A symbol's value at run time, as a tensor: the sum of `symbol` ones. qjc has no op that
        # reads a dim into a tensor; this costs one tiny reduction per symbol and graph.
        if symbol not in self._symbol_values:
            ones = self.graph.op("full", shape=[SymExpr.symbol(symbol)], value=1.0, dtype=i64)
            self._symbol_values[symbol] = self.graph.op("sum", ones, name=f"{symbol}_value")
        return self._symbol_values[symbol]

    # ---- Value -> Known ---------------------------------------------------------------------------
    def fold(self, value: Value) -> Known | None:
        """The data of ``value`` if it is computed from constants only (evaluated now), else None."""
        if value in self._folded:
            return self._folded[value]
        if self.graph_inputs_of(value):  # checked first: the recursion below then stays among constants
            self._folded[value] = None
            return None
        result: Known | None = None
        if self.graph.is_constant(value):
            data = self.graph.constant_data(value)
            result = make_known(data, value.type.dtype) if isinstance(data, np.ndarray) else None
        elif value.producer is not None and value.producer.op != "fused":
            node = value.producer
            args = [self.fold(v) for v in node.inputs]
            if all(a is not None and not a.symbolic for a in args):
                try:
                    outs = evaluate_node(node, [a.data for a in args])
                    result = make_known(outs[node.outputs.index(value)], value.type.dtype)
                except Exception:  # e.g. a symbolic attribute: not foldable, which is all we need to know
                    result = None
        self._folded[value] = result
        return result

    def graph_inputs_of(self, value: Value) -> list[str]:
        """ONNX names of the graph inputs ``value`` is computed from."""
        found: list[str] = []
        seen: set[int] = set()
        stack = [value]
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if v in self.input_names:
                found.append(self.input_names[v])
            elif v.producer is not None:
                stack.extend(v.producer.inputs)
        return sorted(found)


class NodeContext:
    """One ONNX node being converted."""

    def __init__(self, state: ImportState, node: onnx.NodeProto, label: str) -> None:
        self.state = state
        self.graph = state.graph
        self.node = node
        self.label = label
        self.opset = state.opset
        self._attrs = {a.name: a for a in node.attribute}

    # ---- attributes -------------------------------------------------------------------------------
    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = _REQUIRED) -> Any:
        proto = self._attrs.get(name)
        if proto is None:
            if default is _REQUIRED:
                raise self.fail(f"attribute {name!r} is required")
            return default
        if proto.type == onnx.AttributeProto.GRAPH or proto.type == onnx.AttributeProto.GRAPHS:
            raise self.fail(f"attribute {name!r} is a subgraph; qjc does not import control flow")
        value = helper.get_attribute_value(proto)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode("utf-8") for v in value]
        return value

    # ---- inputs -----------------------------------------------------------------------------------
    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def input(self, i: int) -> Entry | None:
        return self.state.env[self.node.input[i]] if self.has_input(i) else None

    def inputs(self) -> list[Entry | None]:
        return [self.input(i) for i in range(self.num_inputs)]

    def value(self, i: int) -> Value:
        if not self.has_input(i):
            raise self.fail(f"input {i} is required")
        return self.state.value_of(self.node.input[i])

    def optional_value(self, i: int) -> Value | None:
        return self.value(i) if self.has_input(i) else None

    def values(self) -> list[Value]:
        return [self.value(i) for i in range(self.num_inputs) if self.has_input(i)]

    def known(self, i: int, what: str) -> Known:
        """Input ``i`` as compile-time data, or an error saying it must be."""
        entry = self.input(i)
        if entry is None:
            raise self.fail(f"input {i} ({what}) is required")
        if isinstance(entry, Known):
            return entry
        folded = self.state.fold(entry)
        if folded is None:
            sources = self.state.graph_inputs_of(entry)
            cause = (f"it is computed from graph input(s) {', '.join(sources)}" if sources
                     else "it depends on symbolic dims whose values are known only at run time")
            raise NotKnownError(f"input {i} ({what}, tensor {self.node.input[i]!r}) must be known at compile "
                                f"time, but {cause}", sources)
        return folded

    def known_dims(self, i: int, what: str) -> list[Dim]:
        """A compile-time 1-D int tensor (or scalar) as a list of dims (ints or SymExprs)."""
        k = self.known(i, what)
        if k.dtype.is_float or k.data.ndim > 1:
            raise self.fail(f"input {i} ({what}) must be a 1-D integer tensor, got {k.dtype}{list(k.shape)}")
        return k.dims()

    def known_ints(self, i: int, what: str) -> list[int]:
        dims = self.known_dims(i, what)
        symbolic = [d for d in dims if isinstance(d, SymExpr)]
        if symbolic:
            raise self.fail(f"input {i} ({what}) must be static, but it depends on symbolic dim {symbolic[0]}")
        return [int(d) for d in dims]

    def known_scalar(self, i: int, what: str) -> Any:
        k = self.known(i, what)
        if k.data.size != 1:
            raise self.fail(f"input {i} ({what}) must hold one value, got shape {list(k.shape)}")
        return k.data.reshape(-1)[0]

    # ---- building ---------------------------------------------------------------------------------
    def op(self, name: str, *inputs: Value, **attrs: Any) -> Value:
        return self.graph.op(name, *inputs, **attrs)

    def ops(self, name: str, inputs: list[Value], **attrs: Any) -> list[Value]:
        return self.graph.add_node(name, inputs, attrs)

    def scalar(self, value: Any, dtype: DType) -> Value:
        return self.graph.add_constant("c", np.asarray(value, dtype=dtype.np_dtype))

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.type.dtype == dtype else self.op("cast", v, to=dtype)

    def fail(self, message: str, hint: str | None = None) -> QJCError:
        return QJCError(message, hint)
