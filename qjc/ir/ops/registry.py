"""The op registry: one OpDef per op, holding its attribute schema, type inference and numpy
reference implementation. Adding an op is one ``register(OpDef(...))`` call in a family module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qjc.errors import IRError, UnknownOpError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import DType, parse_dtype
from qjc.ir.types import TensorType

_REQUIRED = object()

# Attribute kinds and the Python values they hold:
#   int, float, bool, str, dtype (DType), ints (tuple[int]), floats (tuple[float]),
#   dims (tuple of int | SymExpr: a shape that may be symbolic).
ATTR_KINDS = ("int", "float", "bool", "str", "dtype", "ints", "floats", "dims")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = _REQUIRED
    choices: tuple | None = None
    optional: bool = False  # the value may be None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def coerce_attr(kind: str, value: Any) -> Any:
    """Convert ``value`` to the canonical Python form of attribute kind ``kind`` or raise ValueError."""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"expected an int, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"expected a float, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"expected a bool, got {value!r}")
        return bool(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if kind == "dtype":
        if isinstance(value, DType):
            return value
        if isinstance(value, str):
            return parse_dtype(value)
        raise ValueError(f"expected a dtype, got {value!r}")
    if kind == "ints":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list of ints, got {value!r}")
        return tuple(coerce_attr("int", v) for v in value)
    if kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list of floats, got {value!r}")
        return tuple(coerce_attr("float", v) for v in value)
    if kind == "dims":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list of dims, got {value!r}")
        return tuple(v if isinstance(v, SymExpr) else coerce_attr("int", v) for v in value)
    raise ValueError(f"unknown attribute kind {kind!r}")


InferFn = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]
RefFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    """One op.

    ``infer(in_types, attrs) -> out_types`` raises ValueError with a plain message on bad input;
    ``ref(*arrays, **attrs)`` returns an ndarray or a tuple of them. With ``widen`` set, narrow float
    inputs (f16, bf16, f8) reach ``ref`` as f32 and results are rounded to the output dtype, the
    way GPU kernels accumulate.
    """

    name: str
    family: str
    inputs: tuple[int, int]  # (min, max) count; max -1 = variadic
    infer: InferFn
    ref: RefFn
    attrs: dict[str, Attr] = field(default_factory=dict)
    widen: bool = True
    doc: str = ""

    def normalize_attrs(self, attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Defaults filled in, kinds checked, unknown names rejected."""
        where = where or self.name
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(
                f"{where}: unknown attribute(s) {sorted(unknown)} for op {self.name}",
                f"{self.name} takes: {', '.join(self.attrs) or 'no attributes'}",
            )
        out: dict[str, Any] = {}
        for name, spec in self.attrs.items():
            if name not in attrs:
                if spec.required:
                    raise IRError(f"{where}: op {self.name} needs attribute {name!r} ({spec.kind})")
                out[name] = spec.default
                continue
            value = attrs[name]
            if value is None and (spec.optional or spec.default is None):
                out[name] = None
                continue
            try:
                value = coerce_attr(spec.kind, value)
            except ValueError as e:
                raise IRError(f"{where}: attribute {name!r} of {self.name}: {e}") from None
            if spec.choices is not None and value not in spec.choices:
                raise IRError(f"{where}: attribute {name!r} of {self.name} must be one of {spec.choices}, "
                              f"got {value!r}")
            out[name] = value
        return out

    def check_arity(self, n: int, where: str = "") -> None:
        lo, hi = self.inputs
        if n < lo or (hi >= 0 and n > hi):
            want = f"{lo}" if lo == hi else (f"{lo}..{hi}" if hi >= 0 else f"at least {lo}")
            raise IRError(f"{where or self.name}: op {self.name} takes {want} inputs, got {n}")

    def infer_types(self, in_types: list[TensorType], attrs: dict[str, Any], subgraph=None,
                    where: str = "") -> list[TensorType]:
        self.check_arity(len(in_types), where)
        try:
            if self.family == "fused":
                return self.infer(in_types, attrs, subgraph)
            return list(self.infer(in_types, attrs))
        except (ValueError, IndexError, KeyError) as e:
            shown = ", ".join(map(str, in_types))
            raise IRError(f"{where or self.name}: {self.name}({shown}): {e}") from None


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in REGISTRY:
        raise RuntimeError(f"op {opdef.name} registered twice")
    REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str, where: str = "") -> OpDef:
    _load_families()
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(name, where) from None


_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import qjc.ir.ops  # noqa: F401  (each family module registers its ops on import)
