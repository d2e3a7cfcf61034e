"""The numpy reference interpreter: runs any graph, fused groups included.

It is the oracle every pass and backend test compares against, and the executor of the npu_stub
simulated device. It is written for clarity, not speed, and is not a compile target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qjc.errors import IRError, QJCError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import bf16, f8e4m3, f16
from qjc.ir.graph import Graph, Node, Value
from qjc.ir.ops.registry import get_op

# Narrow floats are computed in f32 by the reference and rounded back, as GPU kernels accumulate.
_NARROW_FLOATS = {f16.np_dtype, bf16.np_dtype, f8e4m3.np_dtype}


def bind_symbols(graph: Graph, arrays: Sequence[Any]) -> dict[str, int]:
    """Match input shapes against the graph's signature; return symbol values or raise."""
    env: dict[str, int] = {}
    for value, arr in zip(graph.inputs, arrays):
        shape = tuple(np.shape(arr)) if not hasattr(arr, "logical_shape") else arr.logical_shape
        if len(shape) != value.type.rank:
            raise QJCError(f"input %{value.name}: expected rank {value.type.rank} ({value.type}), got shape {shape}")
        for d, n in zip(value.type.shape, shape):
            if isinstance(d, int):
                if d != n:
                    raise QJCError(f"input %{value.name}: expected shape {value.type}, got {shape}")
            elif len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1:
                sym = d.terms[0][0][0]
                if env.setdefault(sym, n) != n:
                    raise QJCError(f"input %{value.name}: symbol {sym} is {env[sym]} elsewhere, {n} here")
                rng = graph.symbols.get(sym)
                if rng is not None and not rng.lo <= n <= rng.hi:
                    raise QJCError(f"input %{value.name}: {sym}={n} is outside its range {rng}")
    # compound dims (seq+1, ...) are checked once every symbol is known
    for value, arr in zip(graph.inputs, arrays):
        shape = tuple(np.shape(arr)) if not hasattr(arr, "logical_shape") else arr.logical_shape
        for d, n in zip(value.type.shape, shape):
            if isinstance(d, SymExpr):
                try:
                    ok = d.evaluate(env) == n
                except KeyError:
                    ok = True  # a symbol that appears only inside an expression: nothing to check
                if not ok:
                    raise QJCError(f"input %{value.name}: dim {d} should be {d.evaluate(env)}, got {n}")
    return env


def _check_input_dtype(value: Value, arr: Any) -> Any:
    want = value.type.dtype
    if want.is_quant:
        return arr
    arr = np.asarray(arr)
    if arr.dtype != want.np_dtype:
        raise QJCError(f"input %{value.name}: expected dtype {want}, got {arr.dtype}")
    return arr


def _bind_attr(value: Any, symbols: Mapping[str, int]) -> Any:
    """A symbolic dim (or a tuple holding some) with the bound symbol values put in, where known."""
    if isinstance(value, SymExpr):
        try:
            return value.evaluate(dict(symbols))
        except KeyError:
            return value
    if isinstance(value, tuple) and any(isinstance(v, SymExpr) for v in value):
        return tuple(_bind_attr(v, symbols) for v in value)
    return value


def evaluate_node(node: Node, args: list[Any], symbols: Mapping[str, int] | None = None) -> list[Any]:
    """Run one node's reference implementation; returns one array per output. ``symbols`` (from
    bind_symbols) turns symbolic dims in attributes, such as a reshape target, into ints."""
    if node.op == "fused":
        return run(node.subgraph, args, symbols=symbols)
    opdef = get_op(node.op)
    if opdef.widen:
        args = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype in _NARROW_FLOATS else a for a in args]
    attrs = {k: _bind_attr(v, symbols) for k, v in node.attrs.items()} if symbols else node.attrs
    try:
        result = opdef.ref(*args, **attrs)
    except QJCError:
        raise
    except Exception as e:  # a reference bug or an input the type system let through
        raise IRError(f"interpreter: {node.label} failed: {type(e).__name__}: {e}") from e
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(results) != len(node.outputs):
        raise IRError(f"interpreter: {node.label} returned {len(results)} results for {len(node.outputs)} outputs")
    out = []
    for value, r in zip(node.outputs, results):
        dtype = value.type.dtype
        if not dtype.is_quant:
            r = np.asarray(r)
            if r.dtype != dtype.np_dtype:
                r = r.astype(dtype.np_dtype)
        out.append(r)
    return out


def run(graph: Graph, inputs: Sequence[Any] | Mapping[str, Any],
        constants: Mapping[str, Any] | None = None, symbols: Mapping[str, int] | None = None,
        observer: Callable[[Node, list[Any], list[Any]], None] | None = None) -> list[Any]:
    """Evaluate ``graph``. ``inputs`` is a list in signature order or a dict by input name.
    ``constants`` supplies data for constants declared without it (e.g. a parsed graph).
    ``observer(node, inputs, outputs)`` sees every top-level node as it runs (calibration, per-layer
    error reports)."""
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise QJCError(f"graph {graph.name}: missing input(s) {missing}")
        arrays = [inputs[v.name] for v in graph.inputs]
    else:
        arrays = list(inputs)
        if len(arrays) != len(graph.inputs):
            raise QJCError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(arrays)}")
    arrays = [_check_input_dtype(v, a) for v, a in zip(graph.inputs, arrays)]
    # a fused subgraph also sees the symbols its parent bound (a reshape inside it may use them)
    symbols = {**(symbols or {}), **bind_symbols(graph, arrays)}
    env: dict[Value, Any] = dict(zip(graph.inputs, arrays))
    for name, c in graph.constants.items():
        data = c.data if c.data is not None else (constants or {}).get(name)
        if data is None:
            raise QJCError(f"graph {graph.name}: constant %{name} has no data",
                           "pass its array in constants= or load the artifact's weights")
        env[c.value] = data
    for node in graph.nodes:
        args = [env[v] for v in node.inputs]
        outs = evaluate_node(node, args, symbols)
        if observer is not None:
            observer(node, args, outs)
        env.update(zip(node.outputs, outs))
    return [env[v] for v in graph.outputs]
