"""The IR text printer. ``qjc.ir.parser.parse_graph`` reads back exactly what this writes.

Layout (two spaces per nesting level)::

    graph main(%x: f32[batch,128]) {
      sym batch: 1..64
      const %w: f32[128,64]
      const %c: f32[] = 0.5
      %0: f32[batch,64] = matmul(%x, %w)
      %out: f32[batch,64] = fused(%0, %c) {kind="elementwise", name=""} {
        graph group0(%p0: f32[batch,64], %p1: f32[]) {
          %r: f32[batch,64] = mul(%p0, %p1)
          return %r
        }
      }
      return %out
    }

Constant data is printed only when it is small (``inline_limit`` elements); larger data stays on
the Constant object and travels beside the text (the parser takes it through ``constants=``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from qjc.errors import UnknownOpError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import DType
from qjc.ir.graph import Constant, Graph, Node, Value

INDENT = "  "

# Graph names that need no quoting; anything else is printed as a JSON string.
BARE_GRAPH_NAME = re.compile(r"[A-Za-z0-9_.]+")


def print_graph(graph: Graph, inline_limit: int = 16) -> str:
    """The text form of ``graph``, ending in a newline. Constants with at most ``inline_limit``
    elements of plain ndarray data carry their values in the text."""
    lines: list[str] = []
    _emit_graph(graph, 0, True, inline_limit, lines)
    return "\n".join(lines) + "\n"


def _emit_graph(graph: Graph, depth: int, top: bool, inline_limit: int, lines: list[str]) -> None:
    pad = INDENT * depth
    body = pad + INDENT
    params = ", ".join(_declaration(v) for v in graph.inputs)
    lines.append(f"{pad}graph {format_graph_name(graph.name)}({params}) {{")
    if top:  # subgraphs inherit the top graph's symbols, so only it declares them
        for name, symbol_range in graph.symbols.items():
            lines.append(f"{body}sym {name}: {symbol_range}")
    if graph.state:
        lines.append(f"{body}state " + ", ".join(f"%{name}" for name in graph.state))
    for constant in graph.constants.values():
        lines.append(body + _constant_line(constant, inline_limit))
    for node in graph.nodes:
        lines.append(body + _node_line(node))
        if node.subgraph is not None:
            _emit_graph(node.subgraph, depth + 2, False, inline_limit, lines)
            lines.append(body + "}")
    returned = ", ".join(f"%{v.name}" for v in graph.outputs)
    lines.append(f"{body}return {returned}".rstrip())
    lines.append(pad + "}")


def format_graph_name(name: str) -> str:
    return name if BARE_GRAPH_NAME.fullmatch(name) else json.dumps(name)


def _declaration(value: Value) -> str:
    return f"%{value.name}: {value.type}"


def _constant_line(constant: Constant, inline_limit: int) -> str:
    line = f"const {_declaration(constant.value)}"
    inline = _inline_data(constant, inline_limit)
    return line if inline is None else f"{line} = {inline}"


def _inline_data(constant: Constant, inline_limit: int) -> str | None:
    """The printed values of a small constant, or None when its data stays out of the text.

    Data that disagrees with the declared type is never inlined: the parser would build the
    declared type from it, so the text would not describe the graph (the verifier reports it).
    """
    data, ty = constant.data, constant.value.type
    if not isinstance(data, np.ndarray) or ty.dtype.is_quant or not ty.is_static:
        return None
    if data.size > inline_limit or data.shape != ty.shape or data.dtype != ty.dtype.np_dtype:
        return None
    element = _ELEMENT_FORMATS[ty.dtype.kind]
    if data.ndim == 0:
        return element(data[()])
    return "[" + ", ".join(element(x) for x in data.reshape(-1)) + "]"


def _format_float(x: Any) -> str:
    # repr of a Python float round-trips exactly, and every narrower float widens to it exactly
    return repr(float(x))


_ELEMENT_FORMATS = {
    "float": _format_float,
    "int": lambda x: str(int(x)),
    "uint": lambda x: str(int(x)),
    "bool": lambda x: "true" if bool(x) else "false",
}


def _node_line(node: Node) -> str:
    outs = ", ".join(_declaration(v) for v in node.outputs)
    ins = ", ".join(f"%{v.name}" for v in node.inputs)
    line = f"{outs} = {node.op}({ins})"
    if node.attrs:
        shown = ", ".join(f"{k}={format_attr_value(node.attrs[k])}" for k in _attr_order(node))
        line += f" {{{shown}}}"
    if node.subgraph is not None:
        line += " {"
    return line


def _attr_order(node: Node) -> list[str]:
    """Schema order, so the text does not depend on how the attrs dict was built."""
    from qjc.ir.ops.registry import get_op

    try:
        schema = list(get_op(node.op).attrs)
    except UnknownOpError:  # still printable, e.g. in a dump of a graph that fails verification
        schema = []
    return [k for k in schema if k in node.attrs] + [k for k in node.attrs if k not in schema]


def format_attr_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _format_float(value)
    if isinstance(value, str):
        # ASCII-only so no character in a string can act as a line break when the text is split
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, DType):
        return value.name
    if isinstance(value, SymExpr):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr_value(v) for v in value) + "]"
    # Printing must not fail (dumps of broken graphs use it); the parser rejects this form.
    return f"<unprintable {type(value).__name__}>"
