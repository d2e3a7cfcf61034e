"""The IR text parser: reads what qjc.ir.printer writes and builds the Graph through the builder
API, so every node's types are inferred again and checked against the declared ones.

The format is line-based. Indentation and blank lines do not matter; ``#`` starts a comment
that runs to the end of the line (outside strings). Every error is an IRParseError that names
the line and shows it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from qjc.errors import IRParseError, QJCError, UnknownOpError
from qjc.ir.dims import Dim, parse_dim
from qjc.ir.dtypes import DType, parse_dtype
from qjc.ir.graph import Graph, Value
from qjc.ir.ops.registry import OpDef, get_op
from qjc.ir.types import SymRange, TensorType, parse_type

_VALUE_NAME = re.compile(r"[A-Za-z0-9_.]+")
_BARE_GRAPH_NAME = re.compile(r"[A-Za-z0-9_.]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|nan)")
_SYM_LINE = re.compile(r"sym\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(?P<lo>\d+)\s*\.\.\s*(?P<hi>\d+)")

# Characters that end an unquoted value (a number, a dtype name, a dim expression like seq+1).
_ATOM_END = ',[]{}"='
# Characters that cannot be inside the brackets of a type; meeting one means the ']' is missing.
_NOT_IN_DIMS = '[]{}=%"'


def parse_graph(text: str, constants: Mapping[str, np.ndarray] | None = None,
                source: str | None = None) -> Graph:
    """Build the graph that ``text`` describes.

    Constants printed without inline data take theirs from ``constants`` (by name; the mapping
    also serves constants of fused subgraphs), else they have data None. ``source`` names the
    file in error messages.
    """
    return _Parser(text, constants or {}, source).parse()


@dataclass(frozen=True)
class _Line:
    no: int  # 1-based line number in the text
    raw: str
    text: str  # without the comment and surrounding whitespace


@dataclass(frozen=True)
class _Atom:
    """An unquoted literal as written; what it means depends on the kind it is converted to."""

    text: str


def _strip_comment(line: str) -> str:
    in_string = escaped = False
    for i, ch in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            return line[:i]
    return line


def _error(message: str, line: _Line | None, source: str | None, hint: str | None = None) -> IRParseError:
    err = IRParseError(message, line.no if line else None, line.raw if line else None, source)
    err.hint = hint  # QJCError.__str__ prints it after the offending line
    return err


class _Cursor:
    """A position in one line, with the small scanning steps the grammar needs."""

    def __init__(self, line: _Line, source: str | None) -> None:
        self.line = line
        self.text = line.text
        self.pos = 0
        self.source = source

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        raise _error(message, self.line, self.source, hint)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def found(self) -> str:
        if self.at_end():
            return "end of line"
        rest = self.text[self.pos:]
        return repr(rest if len(rest) <= 24 else rest[:24] + "...")

    def take(self, token: str) -> bool:
        self.skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def take_keyword(self, word: str) -> bool:
        self.skip_ws()
        end = self.pos + len(word)
        if self.text.startswith(word, self.pos) and (end == len(self.text) or self.text[end].isspace()):
            self.pos = end
            return True
        return False

    def expect(self, token: str, context: str) -> None:
        if not self.take(token):
            self.fail(f"expected '{token}' {context}, found {self.found()}")

    def expect_end(self, context: str) -> None:
        if not self.at_end():
            self.fail(f"unexpected text {self.found()} {context}")

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip_ws()
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def value_name(self, context: str) -> str:
        self.skip_ws()
        if not self.text.startswith("%", self.pos):
            self.fail(f"expected a value name like %x {context}, found {self.found()}")
        m = _VALUE_NAME.match(self.text, self.pos + 1)
        if m is None:
            self.fail("expected a value name after '%' (letters, digits, '_' or '.')")
        self.pos = m.end()
        return m.group(0)

    def graph_name(self) -> str:
        self.skip_ws()
        if self.text.startswith('"', self.pos):
            value = self.literal()
            if not isinstance(value, str):
                self.fail("expected a graph name")
            return value
        name = self.match(_BARE_GRAPH_NAME)
        if name is None:
            self.fail(f"expected a graph name after 'graph', found {self.found()}")
        return name

    def tensor_type(self, context: str) -> TensorType:
        self.skip_ws()
        start = self.pos
        dtype_name = self.match(_IDENT)
        if dtype_name is None:
            self.fail(f"expected a type like f32[4,8] {context}, found {self.found()}")
        if not self.text.startswith("[", self.pos):
            self.fail(f"bad type {dtype_name!r} {context}: expected dtype[dims], "
                      "e.g. f32[4,8] or f32[] for a scalar")
        end = self.pos + 1
        while end < len(self.text) and self.text[end] not in _NOT_IN_DIMS:
            end += 1
        if end >= len(self.text) or self.text[end] != "]":
            self.fail(f"unbalanced '[' in type {self.text[start:end].strip()!r} {context}: expected ']'")
        spelled = self.text[start:end + 1]
        self.pos = end + 1
        try:
            return parse_type(spelled)
        except ValueError as e:
            self.fail(f"bad type {spelled!r} {context}: {e}")

    def literal(self) -> Any:
        """A JSON string (-> str), a list ``[a, b]`` (-> list) or an unquoted value (-> _Atom)."""
        self.skip_ws()
        if self.pos >= len(self.text):
            self.fail("expected a value, found end of line")
        ch = self.text[self.pos]
        if ch == '"':
            m = _JSON_STRING.match(self.text, self.pos)
            if m is None:
                self.fail("unterminated string: expected a closing '\"'")
            self.pos = m.end()
            try:
                return json.loads(m.group(0))
            except ValueError as e:
                self.fail(f"bad string {m.group(0)}: {e}")
        if ch == "[":
            self.pos += 1
            items: list[Any] = []
            if self.take("]"):
                return items
            while True:
                items.append(self.literal())
                if self.take(","):
                    continue
                if self.take("]"):
                    return items
                if self.at_end():
                    self.fail("unbalanced '[' in a value: expected ']'")
                self.fail(f"expected ',' or ']' in a list, found {self.found()}")
        if ch in _ATOM_END:
            self.fail(f"expected a value, found {self.found()}")
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _ATOM_END:
            self.pos += 1
        return _Atom(self.text[start:self.pos].strip())

    def attr_block(self) -> dict[str, Any]:
        """``name=value, ...}`` (the opening '{' already taken), values still unconverted."""
        attrs: dict[str, Any] = {}
        if self.take("}"):
            return attrs
        while True:
            name = self.match(_IDENT)
            if name is None:
                if self.at_end():
                    self.fail("unbalanced '{' in the attribute block: expected '}'")
                self.fail(f"expected an attribute name, found {self.found()}")
            self.expect("=", f"after attribute name {name!r}")
            if name in attrs:
                self.fail(f"attribute {name!r} is given twice")
            attrs[name] = self.literal()
            if self.take(","):
                continue
            if self.take("}"):
                return attrs
            if self.at_end():
                self.fail("unbalanced '{' in the attribute block: expected '}'")
            self.fail(f"expected ',' or '}}' after attribute {name!r}, found {self.found()}")


# ---- literal conversion (each raises ValueError with a plain message) ------------------------


def _show(value: Any) -> str:
    if isinstance(value, _Atom):
        return value.text
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_show(v) for v in value) + "]"


def _to_int(value: Any) -> int:
    if isinstance(value, _Atom) and _INT.fullmatch(value.text):
        return int(value.text)
    raise ValueError(f"expected an integer, got {_show(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, _Atom) and _FLOAT.fullmatch(value.text):
        return float(value.text)
    raise ValueError(f"expected a number, got {_show(value)}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, _Atom) and value.text in ("true", "false"):
        return value.text == "true"
    raise ValueError(f"expected true or false, got {_show(value)}")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a quoted string, got {_show(value)}")


def _to_dtype(value: Any) -> DType:
    if isinstance(value, (_Atom, str)):
        return parse_dtype(value.text if isinstance(value, _Atom) else value)
    raise ValueError(f"expected a dtype name, got {_show(value)}")


def _to_dim(value: Any) -> Dim:
    if isinstance(value, _Atom):
        return parse_dim(value.text)
    raise ValueError(f"expected a dimension, got {_show(value)}")


def _list_of(element):
    def convert(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list [...], got {_show(value)}")
        return [element(v) for v in value]

    return convert


# One converter per attribute kind of the op registry (qjc.ir.ops.registry.ATTR_KINDS).
_ATTR_CONVERTERS = {
    "int": _to_int,
    "float": _to_float,  # accepts integers too
    "bool": _to_bool,
    "str": _to_str,
    "dtype": _to_dtype,
    "ints": _list_of(_to_int),
    "floats": _list_of(_to_float),
    "dims": _list_of(_to_dim),
}

# Element converters for inline constant data, by DType.kind.
_ELEMENT_CONVERTERS = {"float": _to_float, "int": _to_int, "uint": _to_int, "bool": _to_bool}


def _convert_attrs(cur: _Cursor, opdef: OpDef, raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        spec = opdef.attrs.get(name)
        if spec is None:
            cur.fail(f"unknown attribute {name!r} for op {opdef.name}",
                     f"{opdef.name} takes: {', '.join(opdef.attrs) or 'no attributes'}")
        if isinstance(value, _Atom) and value.text == "null":
            out[name] = None  # whether None is allowed is the schema's call (add_node checks)
            continue
        convert = _ATTR_CONVERTERS.get(spec.kind)
        if convert is None:
            cur.fail(f"attribute {name!r} of {opdef.name} has kind {spec.kind!r}, which has no text form")
        try:
            out[name] = convert(value)
        except ValueError as e:
            cur.fail(f"bad value for attribute {name!r} of {opdef.name} ({spec.kind}): {e}")
    return out


def _constant_data(cur: _Cursor, name: str, ty: TensorType, raw: Any) -> np.ndarray:
    if ty.dtype.is_quant:
        cur.fail(f"quantized constant %{name} cannot have inline data", "pass its data in constants=")
    if not ty.is_static:
        cur.fail(f"inline data of %{name} needs a static shape, got {ty}")
    numel = math.prod(ty.shape)  # Python ints: a mistyped huge dim must not overflow
    convert = _ELEMENT_CONVERTERS[ty.dtype.kind]
    if ty.rank == 0:
        if isinstance(raw, list):
            cur.fail(f"scalar constant %{name} takes one value, not a list")
        raw_items = [raw]
    else:
        if not isinstance(raw, list):
            cur.fail(f"constant %{name} of type {ty} takes a flat list of {numel} values, got {_show(raw)}")
        raw_items = raw
    try:
        values = [convert(v) for v in raw_items]
    except ValueError as e:
        cur.fail(f"bad data for constant %{name} ({ty.dtype}): {e}")
    if len(values) != numel:
        cur.fail(f"constant %{name} of type {ty} holds {numel} values, the list has {len(values)}")
    try:
        return np.array(values, dtype=ty.dtype.np_dtype).reshape(ty.shape)
    except (OverflowError, ValueError) as e:
        cur.fail(f"bad data for constant %{name} ({ty.dtype}): {e}")


# ---- the parser --------------------------------------------------------------------------------


class _Scope:
    """The values one graph has defined so far, and the line each came from."""

    def __init__(self) -> None:
        self.values: dict[str, Value] = {}
        self.lines: dict[str, int] = {}

    def check_new(self, cur: _Cursor, name: str) -> None:
        if name in self.lines:
            cur.fail(f"%{name} is defined twice (first on line {self.lines[name]})")

    def define(self, cur: _Cursor, name: str, value: Value) -> None:
        if value.name != name:  # Graph.fresh_name keeps an unused hint; a change means a bug here
            cur.fail(f"internal error: %{name} was renamed to %{value.name} while building the graph")
        self.values[name] = value
        self.lines[name] = cur.line.no

    def lookup(self, cur: _Cursor, name: str) -> Value:
        value = self.values.get(name)
        if value is None:
            cur.fail(f"undefined value %{name}")
        return value


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, Any], source: str | None) -> None:
        self.source = source
        self.constants = constants
        self.lines: list[_Line] = []
        # split on "\n" only: str.splitlines would also break on characters a string may hold
        for i, raw in enumerate(text.split("\n"), start=1):
            raw = raw.rstrip("\r")
            stripped = _strip_comment(raw).strip()
            if stripped:
                self.lines.append(_Line(i, raw, stripped))
        self.pos = 0
        self.current: _Line | None = None

    def parse(self) -> Graph:
        if not self.lines:
            raise _error("empty IR text: expected 'graph NAME(...) {'", None, self.source)
        try:
            graph = self._graph(parent=None)
        except IRParseError:
            raise
        except QJCError as e:  # every builder error is caught where it happens; this is a safety net
            raise _error(e.message, self.current, self.source, e.hint) from e
        except Exception as e:  # never let a raw Python error escape without a line number
            message = f"cannot parse this line ({type(e).__name__}: {e})"
            raise _error(message, self.current, self.source) from e
        if self.pos < len(self.lines):
            line = self.lines[self.pos]
            what = "unbalanced '}'" if line.text == "}" else "unexpected text"
            raise _error(f"{what} after the end of graph {graph.name}", line, self.source)
        return graph

    def _next(self, if_missing: str) -> _Line:
        if self.pos >= len(self.lines):
            raise _error(if_missing, self.lines[-1], self.source)
        self.current = self.lines[self.pos]
        self.pos += 1
        return self.current

    def _graph(self, parent: Graph | None) -> Graph:
        where = "the fused node's subgraph" if parent is not None else "the IR text"
        header = self._next(f"unexpected end of text: expected 'graph NAME(...) {{' for {where}")
        cur = _Cursor(header, self.source)
        if not cur.take_keyword("graph"):
            cur.fail(f"expected 'graph NAME(%input: TYPE, ...) {{' to start {where}, found {cur.found()}")
        graph = Graph(cur.graph_name())
        if parent is not None:
            graph.symbols = dict(parent.symbols)  # subgraphs inherit the parent's symbols
        scope = _Scope()
        self._header_inputs(cur, graph, scope)
        cur.expect("{", "at the end of the graph header")
        cur.expect_end("after the graph header")

        returned = False
        unclosed = f"graph {graph.name} (opened on line {header.no}) is not closed: expected '}}'"
        while True:
            line = self._next(f"unexpected end of text: {unclosed}")
            cur = _Cursor(line, self.source)
            if line.text == "}":
                if not returned:
                    cur.fail(f"graph {graph.name} has no 'return' line")
                return graph
            if line.text.startswith("}"):
                cur.fail(f"unexpected text after '}}' closing graph {graph.name}")
            if returned:
                cur.fail(f"expected '}}' after the return line of graph {graph.name}, found {cur.found()}")
            if cur.take_keyword("sym"):
                if parent is not None:
                    cur.fail("'sym' lines belong to the top graph; subgraphs inherit its symbols")
                self._symbol(cur, graph)
            elif cur.take_keyword("state"):
                self._state(cur, graph, scope)
            elif cur.take_keyword("const"):
                self._constant(cur, graph, scope)
            elif cur.take_keyword("return"):
                self._return(cur, graph, scope)
                returned = True
            elif cur.take_keyword("graph"):
                cur.fail("a nested graph must follow a fused node line that ends with '{'")
            elif line.text.startswith("%"):
                self._node(cur, graph, scope)
            else:
                cur.fail("expected a node line ('%out: TYPE = op(...)'), 'sym', 'const', 'return' or '}', "
                         f"found {cur.found()}")

    def _header_inputs(self, cur: _Cursor, graph: Graph, scope: _Scope) -> None:
        cur.expect("(", "after the graph name")
        if cur.take(")"):
            return
        while True:
            name = cur.value_name("for a graph input")
            cur.expect(":", f"after %{name}")
            ty = cur.tensor_type(f"of input %{name}")
            scope.check_new(cur, name)
            scope.define(cur, name, graph.add_input(name, ty))
            if cur.take(","):
                continue
            if cur.take(")"):
                return
            if cur.at_end() or cur.text.startswith("{", cur.pos):
                cur.fail("unbalanced '(' in the graph header: expected ')'")
            cur.fail(f"expected ',' or ')' after input %{name}, found {cur.found()}")

    def _state(self, cur: _Cursor, graph: Graph, scope: _Scope) -> None:
        """`state %k, %v`: these inputs are state; the last outputs are their new contents."""
        inputs = {v.name for v in graph.inputs}
        while True:
            name = cur.value_name("in a state line")
            if name not in inputs:
                cur.fail(f"state %{name} is not an input of graph {graph.name}")
            if name in graph.state:
                cur.fail(f"state %{name} is listed twice")
            graph.state.append(name)
            if not cur.take(","):
                break
        cur.expect_end("after the state list")

    def _symbol(self, cur: _Cursor, graph: Graph) -> None:
        m = _SYM_LINE.fullmatch(cur.line.text)
        if m is None:
            cur.fail("bad sym line: expected 'sym NAME: LO..HI', e.g. 'sym batch: 1..64'")
        name = m.group("name")
        if name in graph.symbols:
            cur.fail(f"symbol {name} is declared twice")
        try:
            graph.symbols[name] = SymRange(int(m.group("lo")), int(m.group("hi")))
        except ValueError as e:
            cur.fail(f"bad range for symbol {name}: {e}")

    def _constant(self, cur: _Cursor, graph: Graph, scope: _Scope) -> None:
        name = cur.value_name("after 'const'")
        cur.expect(":", f"after %{name}")
        ty = cur.tensor_type(f"of constant %{name}")
        if cur.take("="):
            data = _constant_data(cur, name, ty, cur.literal())
        else:
            data = self.constants.get(name)
        cur.expect_end(f"after constant %{name}")
        scope.check_new(cur, name)
        scope.define(cur, name, graph.add_constant(name, data, ty))

    def _return(self, cur: _Cursor, graph: Graph, scope: _Scope) -> None:
        outputs: list[Value] = []
        if not cur.at_end():
            while True:
                outputs.append(scope.lookup(cur, cur.value_name("in the return line")))
                if not cur.take(","):
                    break
        cur.expect_end("after the returned values")
        graph.set_outputs(*outputs)

    def _node(self, cur: _Cursor, graph: Graph, scope: _Scope) -> None:
        declared: list[tuple[str, TensorType]] = []
        while True:
            name = cur.value_name("for a node output")
            cur.expect(":", f"after %{name}")
            declared.append((name, cur.tensor_type(f"of %{name}")))
            if cur.take(","):
                continue
            if cur.take("="):
                break
            cur.fail(f"expected '=' after the output declarations, found {cur.found()}")
        op = cur.match(_OP_NAME)
        if op is None:
            cur.fail(f"expected an op name after '=', found {cur.found()}")
        cur.expect("(", f"after op name {op!r}")
        operand_names: list[str] = []
        if not cur.take(")"):
            while True:
                operand_names.append(cur.value_name(f"as an operand of {op}"))
                if cur.take(","):
                    continue
                if cur.take(")"):
                    break
                if cur.at_end() or cur.text.startswith("{", cur.pos):
                    cur.fail(f"unbalanced '(' in the operands of {op}: expected ')'")
                cur.fail(f"expected ',' or ')' in the operands of {op}, found {cur.found()}")
        raw_attrs: dict[str, Any] = {}
        opens_subgraph = False
        if cur.take("{"):
            if cur.at_end():
                opens_subgraph = True  # a lone '{': no attributes, a nested graph follows
            else:
                raw_attrs = cur.attr_block()
                opens_subgraph = cur.take("{")
        cur.expect_end(f"after the {op} node")

        try:
            opdef = get_op(op)
        except UnknownOpError as e:
            cur.fail(e.message, e.hint)
        operands = [scope.lookup(cur, n) for n in operand_names]
        attrs = _convert_attrs(cur, opdef, raw_attrs)
        seen: set[str] = set()
        for name, _ in declared:
            scope.check_new(cur, name)
            if name in seen:
                cur.fail(f"%{name} is declared twice among the outputs of this node")
            seen.add(name)

        subgraph = self._subgraph(cur, graph) if opens_subgraph else None
        try:
            outs = graph.add_node(op, operands, attrs, subgraph,
                                  names=[n for n, _ in declared], types=[t for _, t in declared])
        except QJCError as e:
            cur.fail(e.message, e.hint)
        except Exception as e:  # an op's type inference failing in a way it does not report itself
            cur.fail(f"{op}: type inference failed ({type(e).__name__}: {e})")
        for (name, _), value in zip(declared, outs, strict=True):
            scope.define(cur, name, value)

    def _subgraph(self, node_cur: _Cursor, parent: Graph) -> Graph:
        subgraph = self._graph(parent=parent)
        closing = self._next(f"unexpected end of text: the node on line {node_cur.line.no} is not closed: "
                             "expected '}'")
        if closing.text != "}":
            raise _error(f"expected '}}' closing the node opened on line {node_cur.line.no}",
                         closing, self.source)
        return subgraph
