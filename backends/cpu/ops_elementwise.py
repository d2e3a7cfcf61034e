"""Elementwise ops as TE computations: unary math and activations, binary ops with broadcasting,
comparisons, logic, where, cast, clamp.

Written in TE rather than through Relax's operators so that qjc's semantics are spelled out here
(integer division truncates toward zero, casts to bool mean "nonzero") and so that exp / erf / tanh
use fastmath's vectorizable forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qjc.backends.cpu import fastmath
from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.te_util import as_expr, broadcast_load, const, dtype_of
from qjc.backends.cpu.translate import TVM_DTYPES
from qjc.backends.cpu.tvm_env import import_tvm

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

tvm = import_tvm()
te = tvm.te
tirx = tvm.tirx


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _zero(x: Any) -> Any:
    return const(0, dtype_of(x))


def _one(x: Any) -> Any:
    return const(1, dtype_of(x))


def _relu(x: Any, attrs: dict) -> Any:
    return tirx.max(x, _zero(x))


def _silu(x: Any, attrs: dict) -> Any:
    return x * fastmath.sigmoid(x)


def _gelu(x: Any, attrs: dict) -> Any:
    return fastmath.gelu_tanh(x) if attrs.get("approximate") == "tanh" else fastmath.gelu_erf(x)


def _clamp(x: Any, attrs: dict) -> Any:
    dt = dtype_of(x)
    if attrs.get("min") is not None:
        x = tirx.max(x, const(attrs["min"], dt))
    if attrs.get("max") is not None:
        x = tirx.min(x, const(attrs["max"], dt))
    return x


def _cast(x: Any, attrs: dict) -> Any:
    to = TVM_DTYPES[attrs["to"].name]
    src = dtype_of(x)
    if to == src:
        return x
    if to == "bool":
        return tirx.NE(x, _zero(x))  # NaN != 0 is True, as numpy's astype(bool)
    if src == "bool":
        return tirx.Select(x, const(1, to), const(0, to))
    return x.astype(to)  # float -> int truncates toward zero (fptosi), as the reference does


UNARY: dict[str, Callable[[Any, dict], Any]] = {
    "neg": lambda x, a: _zero(x) - x,
    "abs": lambda x, a: tirx.abs(x),
    "exp": lambda x, a: fastmath.exp(x),
    "log": lambda x, a: tirx.log(x),
    "sqrt": lambda x, a: tirx.sqrt(x),
    "rsqrt": lambda x, a: _one(x) / tirx.sqrt(x),
    "reciprocal": lambda x, a: _one(x) / x,
    "sin": lambda x, a: tirx.sin(x),
    "cos": lambda x, a: tirx.cos(x),
    "tanh": lambda x, a: fastmath.tanh(x),
    "erf": lambda x, a: fastmath.erf(x),
    "sigmoid": lambda x, a: fastmath.sigmoid(x),
    "relu": _relu,
    "silu": _silu,
    "gelu": _gelu,
    "floor": lambda x, a: tirx.floor(x),
    "ceil": lambda x, a: tirx.ceil(x),
    "clamp": _clamp,
    "cast": _cast,
    "logical_not": lambda x, a: tirx.Not(x),
}


def _div(a: Any, b: Any) -> Any:
    if _is_float(dtype_of(a)):
        return a / b
    # C-style truncation; a zero divisor gives 0 instead of a SIGFPE
    zero, one = _zero(b), _one(b)
    safe = tirx.Select(tirx.EQ(b, zero), one, b)
    return tirx.Select(tirx.EQ(b, zero), _zero(a), tirx.truncdiv(a, safe))


def _pow(a: Any, b: Any) -> Any:
    dt = dtype_of(a)
    if _is_float(dt):
        return tirx.power(a, b)
    return tirx.power(a.astype("float64"), b.astype("float64")).astype(dt)


BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": _div,
    "pow": _pow,
    "maximum": tirx.max,
    "minimum": tirx.min,
    "eq": tirx.EQ,
    "ne": tirx.NE,
    "lt": tirx.LT,
    "le": tirx.LE,
    "gt": tirx.GT,
    "ge": tirx.GE,
    "logical_and": tirx.And,
    "logical_or": tirx.Or,
    # tirx.NE on bools reaches LLVM as a float compare; spell xor with and / or / not
    "logical_xor": lambda a, b: tirx.Or(tirx.And(a, tirx.Not(b)), tirx.And(tirx.Not(a), b)),
}


@converts(*UNARY)
def _convert_unary(t: Translator, node: Node) -> list[Any]:
    fn, attrs = UNARY[node.op], dict(node.attrs)
    out_shape, out_dtype = t.shape(node.output), t.dtype(node.output)

    def compute(x: Any) -> Any:
        return te.compute(out_shape, lambda *i: typed(fn(as_expr(x(*i)), attrs), out_dtype), name=node.op)

    return [t.emit_te(compute, t.arg(node.inputs[0]), name=node.op)]


@converts(*BINARY)
def _convert_binary(t: Translator, node: Node) -> list[Any]:
    fn = BINARY[node.op]
    out_shape, out_dtype = t.shape(node.output), t.dtype(node.output)

    def compute(a: Any, b: Any) -> Any:
        return te.compute(out_shape, lambda *i: typed(fn(broadcast_load(a, i), broadcast_load(b, i)), out_dtype),
                          name=node.op)

    return [t.emit_te(compute, t.arg(node.inputs[0]), t.arg(node.inputs[1]), name=node.op)]


@converts("where")
def _convert_where(t: Translator, node: Node) -> list[Any]:
    out_shape = t.shape(node.output)

    def compute(c: Any, a: Any, b: Any) -> Any:
        return te.compute(out_shape, lambda *i: tirx.Select(broadcast_load(c, i), broadcast_load(a, i),
                                                            broadcast_load(b, i)), name="where")

    return [t.emit_te(compute, *(t.arg(v) for v in node.inputs), name="where")]


def typed(expr: Any, dtype: str) -> Any:
    """Comparisons build bool expressions; everything else must already have the output dtype."""
    return expr if dtype_of(expr) == dtype else expr.astype(dtype)
