"""Translation of torch dtypes and symbolic sizes into qjc dtypes and SymExpr dims."""

from __future__ import annotations

import sympy
import torch

from qjc.errors import QJCError
from qjc.ir import dtypes as qd
from qjc.ir.dims import Dim, SymExpr

TORCH_TO_QJC = {
    torch.float32: qd.f32, torch.float16: qd.f16, torch.bfloat16: qd.bf16, torch.float64: qd.f64,
    torch.float8_e4m3fn: qd.f8e4m3, torch.int64: qd.i64, torch.int32: qd.i32, torch.int8: qd.i8,
    torch.uint8: qd.u8, torch.bool: qd.boolean,
}
QJC_TO_TORCH = {v: k for k, v in TORCH_TO_QJC.items()}


def qjc_dtype(dtype: torch.dtype, where: str = "") -> qd.DType:
    try:
        return TORCH_TO_QJC[dtype]
    except KeyError:
        raise QJCError(f"{where + ': ' if where else ''}torch dtype {dtype} has no qjc equivalent") from None


def sympy_to_dim(expr, names: dict[str, str]) -> Dim:
    """A sympy expression over size symbols (sums and products with integer coefficients) as a Dim.
    ``names`` renames torch's symbols (s0, s43, ...) to the user's Dim names where known."""
    expr = sympy.expand(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        return SymExpr.symbol(names.get(expr.name, expr.name))
    if expr.is_Add:
        out: Dim = 0
        for a in expr.args:
            out = out + sympy_to_dim(a, names)
        return out
    if expr.is_Mul:
        out = 1
        for a in expr.args:
            out = out * sympy_to_dim(a, names)
        return out
    if expr.is_Pow and expr.exp.is_Integer and int(expr.exp) > 0:
        base = sympy_to_dim(expr.base, names)
        out = 1
        for _ in range(int(expr.exp)):
            out = out * base
        return out
    raise QJCError(f"symbolic size {expr} is not a polynomial qjc can represent (floor division, min, max ...)",
                   "export with a static size for this dimension")


def size_to_dim(size, names: dict[str, str]) -> Dim:
    """A torch size entry (int or SymInt) as a Dim."""
    if isinstance(size, int):
        return size
    if isinstance(size, torch.SymInt):
        return sympy_to_dim(size.node.expr, names)
    raise QJCError(f"unexpected size value {size!r}")
