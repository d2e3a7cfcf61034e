"""Shape arithmetic shared by type-inference functions: broadcasting and axis handling.

Functions raise ValueError with a plain message; the registry adds the op and node.
"""

from __future__ import annotations

from qjc.ir.dims import Dim, SymExpr
from qjc.ir.types import TensorType


def broadcast_dim(a: Dim, b: Dim) -> Dim:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, SymExpr) and isinstance(b, int):
        return b  # the symbol must equal b at run time (or be 1)
    if isinstance(b, SymExpr) and isinstance(a, int):
        return a
    raise ValueError(f"dims {a} and {b} do not broadcast")


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dim(x, y) for x, y in zip(out, padded)]
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(axes: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    """Sorted, non-negative, unique axes; None means all axes."""
    if axes is None:
        return tuple(range(rank))
    out = sorted({norm_axis(a, rank) for a in axes})
    if len(out) != len(axes):
        raise ValueError(f"repeated axis in {axes}")
    return tuple(out)


def same_dtype(types: list[TensorType], what: str = "inputs") -> None:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise ValueError(f"{what} must share one dtype, got {', '.join(sorted(d.name for d in dtypes))}")


def require_float(t: TensorType, what: str = "input") -> None:
    if not t.dtype.is_float:
        raise ValueError(f"{what} must be a float type, got {t.dtype}")
