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


def dims_conflict(a: Dim, b: Dim) -> bool:
    """True when ``a`` and ``b`` can never be equal: both static and different, or symbolic dims
    that differ by a nonzero constant (``seq`` and ``seq+1``). Unrelated symbols may be equal."""
    diff = a - b
    return isinstance(diff, int) and diff != 0


def require_same_dim(a: Dim, b: Dim, what: str) -> Dim:
    """The dim ``a`` and ``b`` must share, preferring the static one; ValueError if they cannot match."""
    if dims_conflict(a, b):
        raise ValueError(f"{what}: {a} vs {b}")
    return a if isinstance(a, int) else b


def require_static(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise ValueError(f"{what} must be static, got {d}")
    return d


def require_rank(t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise ValueError(f"{what} must have rank {rank}, got {t}")


def require_shape(t: TensorType, shape: tuple[Dim, ...], what: str) -> None:
    """``t`` must have exactly ``shape`` (symbolic dims compared with ``dims_conflict``)."""
    if t.rank != len(shape) or any(dims_conflict(a, b) for a, b in zip(t.shape, shape, strict=True)):
        want = ",".join(str(d) for d in shape)
        raise ValueError(f"{what} must have shape [{want}], got {t}")


def broadcasts_to(shape: tuple[Dim, ...], target: tuple[Dim, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it (each dim 1 or equal)."""
    if len(shape) > len(target):
        return False
    pairs = zip(reversed(shape), reversed(target), strict=False)
    return all(d == 1 or not dims_conflict(d, t) for d, t in pairs)


def _monomial_key(names: list[str]):
    # graded lexicographic order on exponent vectors: a monomial order, so polynomial division terminates
    def key(mono: tuple[str, ...]):
        return (len(mono), tuple(mono.count(n) for n in names))

    return key


def _monomial_quotient(mono: tuple[str, ...], by: tuple[str, ...]) -> tuple[str, ...] | None:
    rest = list(mono)
    for s in by:
        if s not in rest:
            return None
        rest.remove(s)
    return tuple(rest)


def _poly_terms(d: Dim) -> dict[tuple[str, ...], int]:
    if isinstance(d, SymExpr):
        return dict(d.terms)
    return {(): int(d)} if d else {}


def exact_div(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it is a polynomial with integer coefficients (``64*b*s / 64 -> b*s``,
    ``(4*s+4) / (s+1) -> 4``), else None. Division by zero gives None."""
    num, den = _poly_terms(a), _poly_terms(b)
    if not den:
        return None
    names = sorted({s for m in list(num) + list(den) for s in m})
    key = _monomial_key(names)
    den_lead = max(den, key=key)
    den_coef = den[den_lead]
    quotient: Dim = 0
    rem = dict(num)
    while rem:
        lead = max(rem, key=key)
        q_mono = _monomial_quotient(lead, den_lead)
        if q_mono is None or rem[lead] % den_coef:
            return None
        q_coef = rem[lead] // den_coef
        q_term: Dim = q_coef
        for s in q_mono:
            q_term = q_term * SymExpr.symbol(s)
        quotient = quotient + q_term
        for mono, coef in den.items():
            m = tuple(sorted(q_mono + mono))
            left = rem.get(m, 0) - q_coef * coef
            if left:
                rem[m] = left
            else:
                rem.pop(m, None)
    return quotient


def dims_agree(a: Dim, b: Dim) -> Dim:
    """The common value of two dims that must be equal (a static one wins over a symbol, which must
    then equal it at run time), or ValueError when they provably or symbolically differ."""
    if a == b:
        return a
    if isinstance(a, SymExpr) and isinstance(b, int):
        return b
    if isinstance(b, SymExpr) and isinstance(a, int):
        return a
    raise ValueError(f"dims {a} and {b} differ")


def require_plain(t: TensorType, what: str = "input") -> None:
    if t.dtype.is_quant:
        raise ValueError(f"{what} has quantized type {t.dtype}; dequantize first")
