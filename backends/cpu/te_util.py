"""Small helpers for writing TE computations over qjc semantics (broadcasting, constants, axes)."""

from __future__ import annotations

from typing import Any

from qjc.backends.cpu.fastmath import as_expr, dtype_of
from qjc.backends.cpu.tvm_env import import_tvm

tvm = import_tvm()
te = tvm.te
tirx = tvm.tirx

__all__ = ["as_expr", "dtype_of", "const", "is_one", "broadcast_load", "int64", "lowest"]


def const(value: float | int | bool, dtype: str) -> Any:
    """``value`` as a TIR constant of ``dtype``, converted as numpy would (ints truncate toward zero,
    bool means nonzero)."""
    if dtype == "bool":
        return tirx.const(bool(value), "bool")
    if dtype.startswith(("int", "uint")):
        return tirx.const(int(value), dtype)
    return tirx.const(float(value), dtype)


def int64(value: int) -> Any:
    return tirx.IntImm("int64", int(value))


def is_one(dim: Any) -> bool:
    return isinstance(dim, tirx.IntImm) and int(dim) == 1 or isinstance(dim, int) and dim == 1


def broadcast_load(tensor: Any, index: tuple[Any, ...]) -> Any:
    """``tensor`` read at output ``index`` under numpy broadcasting: dims aligned from the right,
    size-1 dims read at 0."""
    rank = len(tensor.shape)
    own = index[len(index) - rank:] if rank else ()
    idx = [int64(0) if is_one(d) else i for d, i in zip(tensor.shape, own, strict=True)]
    return as_expr(tensor(*idx)) if rank else as_expr(tensor())


def lowest(dtype: str) -> Any:
    """The identity of max: -inf for floats, the smallest integer otherwise."""
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return tirx.const(float("-inf"), dtype)
    return tirx.min_value(dtype)
