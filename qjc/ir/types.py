"""Tensor types: a shape of static or symbolic dims plus a dtype."""

from __future__ import annotations

from dataclasses import dataclass

from qjc.ir.dims import Dim, SymExpr, evaluate, parse_dim, product
from qjc.ir.dtypes import DType, parse_dtype


@dataclass(frozen=True)
class SymRange:
    """The inclusive range a symbolic dim may take at run time."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo < 0 or self.hi < self.lo:
            raise ValueError(f"bad range {self.lo}..{self.hi}")

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: DType

    def __post_init__(self) -> None:
        shape = tuple(d if isinstance(d, SymExpr) else int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        return product(self.shape)

    def nbytes(self, env: dict[str, int] | None = None) -> int:
        """Bytes of a dense tensor of this type (quantized types: packed bytes, scales excluded)."""
        n = evaluate(self.numel, env or {})
        return (n * self.dtype.bits + 7) // 8

    def concrete(self, env: dict[str, int]) -> tuple[int, ...]:
        return tuple(evaluate(d, env) for d in self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join(str(d) for d in self.shape)}]"


def parse_type(text: str) -> TensorType:
    """Parse ``f32[batch,128]`` (or ``f32[]`` for a scalar)."""
    text = text.strip()
    if "[" not in text or not text.endswith("]"):
        raise ValueError(f"bad tensor type {text!r}: expected dtype[dims]")
    name, body = text[:-1].split("[", 1)
    dtype = parse_dtype(name.strip())
    dims = [] if not body.strip() else [parse_dim(p) for p in _split_top(body)]
    return TensorType(tuple(dims), dtype)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]
