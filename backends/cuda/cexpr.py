"""C spellings of qjc types and dims for generated CUDA / C++ code.

Symbolic dims become expressions over the engine's symbol array ``S`` (``S[0]`` is the first
symbol in sorted order): the host engine binds ``S`` from the input shapes, and every launcher and
kernel reads dims through it, so one build serves every shape in the symbols' ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qjc.errors import BackendError
from qjc.ir.dims import Dim, SymExpr
from qjc.ir.dtypes import DType

# qjc dtype name -> (C type in memory, C type computed in, size in bytes)
_CTYPES: dict[str, tuple[str, str, int]] = {
    "f32": ("float", "float", 4),
    "f16": ("__half", "float", 2),
    "bf16": ("__nv_bfloat16", "float", 2),
    "f64": ("double", "double", 8),
    "i64": ("int64_t", "int64_t", 8),
    "i32": ("int32_t", "int32_t", 4),
    "i8": ("int8_t", "int32_t", 1),
    "u8": ("uint8_t", "int32_t", 1),
    "bool": ("bool", "bool", 1),
}

# Codes shared with the host engine's weight loader (host_engine.cpp.j2) and the ctypes runtime.
DTYPE_CODES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 2, "f64": 3, "i64": 4, "i32": 5, "i8": 6, "u8": 7,
                               "bool": 8}
# safetensors dtype code -> qjc dtype name
SAFETENSORS_CODES: dict[str, str] = {"F32": "f32", "F16": "f16", "BF16": "bf16", "F64": "f64", "I64": "i64",
                                     "I32": "i32", "I8": "i8", "U8": "u8", "BOOL": "bool"}

SUPPORTED_DTYPES = tuple(_CTYPES)


def _entry(dtype: DType) -> tuple[str, str, int]:
    try:
        return _CTYPES[dtype.name]
    except KeyError:
        raise BackendError(f"the cuda backend does not handle dtype {dtype.name}",
                           f"supported: {', '.join(SUPPORTED_DTYPES)}") from None


def ctype(dtype: DType) -> str:
    """The C type a tensor of ``dtype`` is stored as."""
    return _entry(dtype)[0]


def compute_ctype(dtype: DType) -> str:
    """The C type arithmetic on ``dtype`` happens in (narrow floats in float, small ints in int)."""
    return _entry(dtype)[1]


def itemsize(dtype: DType) -> int:
    return _entry(dtype)[2]


class SymbolTable:
    """Symbol name -> slot in ``S``; sorted so the numbering is stable across builds."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        self.slot = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def dim(self, d: Dim, s: str = "S") -> str:
        """C expression (int64_t) of a dim."""
        if isinstance(d, int):
            return str(d)
        parts = []
        for mono, coef in d.terms:
            factors = [f"{s}[{self.slot[name]}]" for name in mono]
            if coef != 1 or not factors:
                factors.insert(0, f"(int64_t){coef}")
            parts.append("*".join(factors))
        return "(" + " + ".join(parts) + ")"

    def numel(self, shape: Sequence[Dim], s: str = "S") -> str:
        n: Dim = 1
        for d in shape:
            n = n * d
        return self.dim(n, s)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def upper_bound(d: Dim, ranges: dict[str, tuple[int, int]]) -> int:
    """The largest value a dim takes over its symbols' ranges (dims are non-negative polynomials)."""
    if isinstance(d, int):
        return d
    return d.evaluate({s: ranges[s][1] for s in d.symbols})


def dims_equal(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def product(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


def c_float(value: float, ctype_name: str = "float") -> str:
    """A C literal for ``value`` (inf / nan spelled through CUDA's intrinsics)."""
    import math

    if math.isnan(value):
        return "__int_as_float(0x7fffffff)" if ctype_name == "float" else "(0.0/0.0)"
    if math.isinf(value):
        if ctype_name == "float":
            return "__int_as_float(0x7f800000)" if value > 0 else "__int_as_float(0xff800000)"
        return "(1.0/0.0)" if value > 0 else "(-1.0/0.0)"
    text = repr(float(value))
    return text if ctype_name == "double" else f"{text}f"


__all__ = ["SymExpr", "SymbolTable", "ctype", "compute_ctype", "itemsize", "c_float"]
