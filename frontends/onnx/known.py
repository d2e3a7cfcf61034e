"""Compile-time known values.

Every ONNX tensor name maps either to a qjc Value (computed at run time) or to a ``Known``: data
the importer holds itself. A Known is a numpy array, or, for shape arithmetic over symbolic
dims (Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exported transformers do), an object
array whose entries are ints and SymExprs. Inputs such as Reshape's shape must be Known.

Element functions here return None where the answer depends on a symbol's value; the caller then
falls back to computing at run time (or says the value is not known at compile time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.ir.dims import Dim, SymExpr
from qjc.ir.dtypes import DType, boolean
from qjc.ir.ops.shape_rules import exact_div
from qjc.ir.types import SymRange


@dataclass(frozen=True)
class Known:
    data: np.ndarray  # numeric in dtype.np_dtype, or dtype=object holding ints and SymExprs
    dtype: DType

    def __post_init__(self) -> None:
        # numpy indexing of object arrays returns bare elements (a SymExpr, not a 0-d array)
        if not isinstance(self.data, np.ndarray):
            data = np.asarray(self.data, dtype=object if isinstance(self.data, SymExpr) else None)
            object.__setattr__(self, "data", data)

    @property
    def symbolic(self) -> bool:
        return self.data.dtype == object

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def dims(self) -> list[Dim]:
        """The entries as ints / SymExprs (a shape tensor's dims)."""
        return [d if isinstance(d, SymExpr) else int(d) for d in self.data.reshape(-1).tolist()]


def make_known(data: Any, dtype: DType) -> Known:
    """A Known holding ``data``; an object array without symbols becomes a plain numeric one."""
    array = np.asarray(data, dtype=object if _has_symbol(data) else None)
    if array.dtype == object and not any(isinstance(v, SymExpr) for v in array.reshape(-1)):
        array = np.array(array.tolist(), dtype=dtype.np_dtype).reshape(array.shape)
    elif array.dtype != object:
        array = array.astype(dtype.np_dtype, copy=False)
    return Known(array, dtype)


def dims_known(dims: list[Dim] | tuple[Dim, ...], dtype: DType) -> Known:
    """A 1-D shape tensor holding ``dims``."""
    array = np.empty(len(dims), dtype=object)
    for i, d in enumerate(dims):
        array[i] = d
    return make_known(array, dtype)


def _has_symbol(data: Any) -> bool:
    if isinstance(data, SymExpr):
        return True
    if isinstance(data, np.ndarray):
        return data.dtype == object and any(isinstance(v, SymExpr) for v in data.reshape(-1))
    if isinstance(data, (list, tuple)):
        return any(_has_symbol(v) for v in data)
    return False


# ---- comparisons over symbolic dims ---------------------------------------------------------------


def dim_bounds(d: Dim, symbols: Mapping[str, SymRange]) -> tuple[int, int] | None:
    """Interval of values ``d`` may take given the symbols' ranges, or None if a symbol has none."""
    if isinstance(d, int):
        return d, d
    lo = hi = 0
    for mono, coef in d.terms:
        mlo = mhi = 1
        for s in mono:
            if s not in symbols:
                return None
            mlo, mhi = mlo * symbols[s].lo, mhi * symbols[s].hi  # ranges are non-negative
        lo, hi = (lo + coef * mlo, hi + coef * mhi) if coef > 0 else (lo + coef * mhi, hi + coef * mlo)
    return lo, hi


def compare_dims(a: Dim, b: Dim, symbols: Mapping[str, SymRange]) -> int | None:
    """-1, 0 or 1 as ``a`` is below, equal to or above ``b`` for every symbol value; else None."""
    bounds = dim_bounds(a - b, symbols)
    if bounds is None:
        return None
    lo, hi = bounds
    if lo == hi == 0:
        return 0
    if lo > 0:
        return 1
    if hi < 0:
        return -1
    return None


def trunc_div(a: int, b: int) -> int:
    """Integer division rounding toward zero, as ONNX Div does on integers."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def dim_div(a: Dim, b: Dim) -> Dim | None:
    if isinstance(a, int) and isinstance(b, int):
        return None if b == 0 else trunc_div(a, b)
    return exact_div(a, b)


# element function over two dims -> result (None: not decidable at compile time)
DimFn = Callable[[Dim, Dim], Any]


def binary_dim_fns(symbols: Mapping[str, SymRange]) -> dict[str, DimFn]:
    def cmp(test: Callable[[int], bool]) -> DimFn:
        def fn(a: Dim, b: Dim):
            c = compare_dims(a, b, symbols)
            return None if c is None else test(c)

        return fn

    def pick(prefer_larger: bool) -> DimFn:
        def fn(a: Dim, b: Dim):
            c = compare_dims(a, b, symbols)
            if c is None:
                return None
            return a if (c >= 0) == prefer_larger else b

        return fn

    return {
        "Add": lambda a, b: a + b,
        "Sub": lambda a, b: a - b,
        "Mul": lambda a, b: a * b,
        "Div": dim_div,
        "Max": pick(True),
        "Min": pick(False),
        "Equal": cmp(lambda c: c == 0),
        "Less": cmp(lambda c: c < 0),
        "LessOrEqual": cmp(lambda c: c <= 0),
        "Greater": cmp(lambda c: c > 0),
        "GreaterOrEqual": cmp(lambda c: c >= 0),
    }


_NUMERIC_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum,
    "Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}
COMPARISONS = ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")


def fold_binary(op_type: str, a: Known, b: Known, out_dtype: DType,
                symbols: Mapping[str, SymRange]) -> Known | None:
    """``a op b`` on integer, bool or symbolic Knowns (shape arithmetic); None where it must be
    computed at run time (float data, an undecidable comparison, an inexact symbolic division)."""
    if a.dtype.is_float or b.dtype.is_float:
        return None  # float math is the runtime's job, with its rounding rules
    if not (a.symbolic or b.symbolic):
        if op_type == "Div":
            if np.any(b.data == 0):
                return None
            q = np.abs(a.data) // np.abs(b.data)
            return make_known(np.where((a.data >= 0) == (b.data >= 0), q, -q), out_dtype)
        fn = _NUMERIC_BINARY.get(op_type)
        return None if fn is None else make_known(fn(a.data, b.data), out_dtype)
    dim_fn = binary_dim_fns(symbols).get(op_type)
    if dim_fn is None:
        return None
    x, y = np.broadcast_arrays(a.data.astype(object), b.data.astype(object))
    out = np.empty(x.shape, dtype=object)
    for index in np.ndindex(x.shape):
        r = dim_fn(_as_dim(x[index]), _as_dim(y[index]))
        if r is None:
            return None
        out[index] = r
    if out_dtype == boolean:
        return make_known(out.astype(bool), boolean)
    return make_known(out, out_dtype)


def _as_dim(v: Any) -> Dim:
    return v if isinstance(v, SymExpr) else int(v)
