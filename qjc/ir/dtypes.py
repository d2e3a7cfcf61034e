"""Element types of qjc tensors, including packed quantized types.

A quantized dtype is a type, not a flag: ``q4g128a_f16`` says "4-bit values, one f16 scale and
one zero point per 128 consecutive elements of the last axis". Its runtime value is a
``QuantizedArray`` (see qjc.ir.quant), never a plain ndarray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    np_dtype: np.dtype | None  # None for packed quantized types
    kind: str  # "float" | "int" | "uint" | "bool" | "quant"
    bits: int

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_int(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def is_quant(self) -> bool:
        return self.kind == "quant"

    @property
    def itemsize(self) -> int:
        """Bytes per element for plain dtypes; quantized types report their packed bits / 8."""
        return max(1, self.bits // 8)


f32 = DType("f32", np.dtype(np.float32), "float", 32)
f16 = DType("f16", np.dtype(np.float16), "float", 16)
bf16 = DType("bf16", np.dtype(ml_dtypes.bfloat16), "float", 16)
f8e4m3 = DType("f8e4m3", np.dtype(ml_dtypes.float8_e4m3fn), "float", 8)
f64 = DType("f64", np.dtype(np.float64), "float", 64)  # constants from frontends only
i64 = DType("i64", np.dtype(np.int64), "int", 64)
i32 = DType("i32", np.dtype(np.int32), "int", 32)
i8 = DType("i8", np.dtype(np.int8), "int", 8)
u8 = DType("u8", np.dtype(np.uint8), "uint", 8)
boolean = DType("bool", np.dtype(np.bool_), "bool", 8)

PLAIN_DTYPES: dict[str, DType] = {d.name: d for d in (f32, f16, bf16, f8e4m3, f64, i64, i32, i8, u8, boolean)}


@dataclass(frozen=True)
class QuantScheme:
    """How a quantized tensor is stored.

    Values are grouped along the last axis in runs of ``group_size`` (0 = one group per row,
    i.e. per output channel). ``symmetric`` schemes store only a scale; asymmetric ones also a
    zero per group: an integer zero point (``zero="int"``: value = (q - z) * scale) or a float
    offset in the scale dtype (``zero="float"``: value = q * scale + offset, GGUF Q4_1's form).
    ``codes="e4m3"``: the 8-bit codes are fp8 e4m3 numbers (value = code * scale, symmetric), named
    ``f8e4m3c_f32`` / ``f8e4m3g128_f16`` so no integer-scheme pattern (``q8c*``) matches them.
    """

    bits: int
    group_size: int
    symmetric: bool
    scale_dtype: DType
    zero: str = "int"
    codes: str = "int"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantized bits must be 4 or 8, got {self.bits}")
        if self.group_size < 0 or (self.group_size and self.group_size % 2):
            raise ValueError(f"group size must be 0 (per row) or a positive even number, got {self.group_size}")
        if not self.scale_dtype.is_float:
            raise ValueError(f"scale dtype must be a float type, got {self.scale_dtype}")
        if self.zero not in ("int", "float"):
            raise ValueError(f"zero must be 'int' or 'float', got {self.zero!r}")
        if self.symmetric and self.zero != "int":
            object.__setattr__(self, "zero", "int")  # a symmetric scheme has no zero: one spelling
        if self.codes not in ("int", "e4m3"):
            raise ValueError(f"codes must be 'int' or 'e4m3', got {self.codes!r}")
        if self.codes == "e4m3" and (self.bits != 8 or not self.symmetric):
            raise ValueError("fp8 e4m3 codes are 8-bit and symmetric (value = code * scale)")

    @property
    def name(self) -> str:
        group = f"g{self.group_size}" if self.group_size else "c"
        if self.codes == "e4m3":
            return f"f8e4m3{group}_{self.scale_dtype.name}"
        kind = "s" if self.symmetric else ("a" if self.zero == "int" else "m")
        return f"q{self.bits}{group}{kind}_{self.scale_dtype.name}"

    @property
    def dtype(self) -> DType:
        return DType(self.name, None, "quant", self.bits)


_QUANT_RE = re.compile(r"^q(\d+)(?:g(\d+)|c)([sam])_(\w+)$")
_FP8_RE = re.compile(r"^f8e4m3(?:g(\d+)|c)_(\w+)$")


def _scheme_of_match(m: re.Match) -> QuantScheme:
    return QuantScheme(int(m.group(1)), int(m.group(2) or 0), m.group(3) == "s", PLAIN_DTYPES[m.group(4)],
                       "float" if m.group(3) == "m" else "int")


def _scheme_of_name(name: str) -> QuantScheme | None:
    m = _QUANT_RE.match(name)
    if m and m.group(4) in PLAIN_DTYPES:
        return _scheme_of_match(m)
    m = _FP8_RE.match(name)
    if m and m.group(2) in PLAIN_DTYPES:
        return QuantScheme(8, int(m.group(1) or 0), True, PLAIN_DTYPES[m.group(2)], codes="e4m3")
    return None


def quant_scheme_of(dtype: DType) -> QuantScheme:
    scheme = _scheme_of_name(dtype.name) if dtype.kind == "quant" else None
    if scheme is None:
        raise ValueError(f"{dtype} is not a quantized dtype")
    return scheme


def parse_dtype(name: str) -> DType:
    """The dtype named ``name`` (as printed in IR text), or ValueError."""
    if name in PLAIN_DTYPES:
        return PLAIN_DTYPES[name]
    scheme = _scheme_of_name(name)
    if scheme is not None:
        return scheme.dtype
    known = ", ".join(PLAIN_DTYPES)
    raise ValueError(f"unknown dtype {name!r} (known: {known}, or a quantized type like q4g128a_f16 or f8e4m3c_f32)")


_FROM_NUMPY = {d.np_dtype: d for d in PLAIN_DTYPES.values()}


def from_numpy(np_dtype: np.dtype) -> DType:
    np_dtype = np.dtype(np_dtype)
    if np_dtype in _FROM_NUMPY:
        return _FROM_NUMPY[np_dtype]
    raise ValueError(f"numpy dtype {np_dtype} has no qjc equivalent")


def compute_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype the reference interpreter computes in for values of ``dtype``.

    Narrow floats are widened to f32 (as GPU kernels accumulate) and rounded back afterwards.
    """
    if dtype.kind == "float" and dtype.bits < 32:
        return np.dtype(np.float32)
    return dtype.np_dtype
