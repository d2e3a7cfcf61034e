"""Symbolic dimensions: polynomials over named symbols with integer coefficients.

Shapes are tuples whose entries are ``int`` or ``SymExpr``. Arithmetic on a SymExpr that folds to
a constant returns a plain int, so static shapes stay plain ints throughout. Ranges of the
symbols live on the Graph (``Graph.symbols``), not on each expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

# A monomial is a sorted tuple of symbol names (with repetition for powers); () is the constant.
Monomial = tuple[str, ...]


@dataclass(frozen=True)
class SymExpr:
    terms: tuple[tuple[Monomial, int], ...]  # sorted, no zero coefficients, at least one symbol

    @staticmethod
    def symbol(name: str) -> SymExpr:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad symbol name {name!r}")
        return SymExpr((((name,), 1),))

    @staticmethod
    def _make(terms: dict[Monomial, int]) -> Dim:
        clean = {m: c for m, c in terms.items() if c}
        if not clean:
            return 0
        if set(clean) == {()}:
            return clean[()]
        return SymExpr(tuple(sorted(clean.items(), key=lambda mc: (-len(mc[0]), mc[0]))))

    def _dict(self) -> dict[Monomial, int]:
        return dict(self.terms)

    @property
    def symbols(self) -> set[str]:
        return {s for m, _ in self.terms for s in m}

    def __add__(self, other: Dim) -> Dim:
        d = self._dict()
        for m, c in _as_terms(other).items():
            d[m] = d.get(m, 0) + c
        return SymExpr._make(d)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return SymExpr._make({m: -c for m, c in self.terms})

    def __sub__(self, other: Dim) -> Dim:
        return self + (-other)

    def __rsub__(self, other: Dim) -> Dim:
        return (-self) + other

    def __mul__(self, other: Dim) -> Dim:
        out: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in _as_terms(other).items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return SymExpr._make(out)

    __rmul__ = __mul__

    def evaluate(self, env: dict[str, int]) -> int:
        total = 0
        for m, c in self.terms:
            v = c
            for s in m:
                if s not in env:
                    raise KeyError(s)
                v *= env[s]
            total += v
        return total

    def __str__(self) -> str:
        parts = []
        for m, c in self.terms:
            body = "*".join(m)
            if not m:
                parts.append(str(c))
            elif c == 1:
                parts.append(body)
            elif c == -1:
                parts.append(f"-{body}")
            else:
                parts.append(f"{c}*{body}")
        text = "+".join(parts)
        return text.replace("+-", "-")

    def __repr__(self) -> str:
        return f"SymExpr({self})"


Dim = Union[int, SymExpr]  # noqa: UP007  (a runtime alias; `|` on a forward class fails on 3.10)


def _as_terms(d: Dim) -> dict[Monomial, int]:
    if isinstance(d, SymExpr):
        return d._dict()
    return {(): int(d)}


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def dim_str(d: Dim) -> str:
    return str(d)


def evaluate(d: Dim, env: dict[str, int]) -> int:
    return d if isinstance(d, int) else d.evaluate(env)


def contiguous_strides(shape) -> list[Dim]:
    """Row-major strides (in elements) of a dense tensor of ``shape``."""
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(tuple(shape)):
        out.append(acc)
        acc = acc * d
    return list(reversed(out))


def product(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def parse_dim(text: str) -> Dim:
    """Parse ``4``, ``seq``, ``seq+1``, ``2*batch*seq`` or ``past-1`` (sums of products)."""
    tokens = [t for t in _TOKEN.findall(text)]
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def atom() -> Dim:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise ValueError(f"bad dimension {text!r}")
        pos += 1
        num, name, punct = tok
        if num:
            return int(num)
        if name:
            return SymExpr.symbol(name)
        if punct == "(":
            v = expr()
            if peek() is None or peek()[2] != ")":
                raise ValueError(f"bad dimension {text!r}: missing ')'")
            pos += 1
            return v
        if punct == "-":
            return -atom()
        raise ValueError(f"bad dimension {text!r}: unexpected {punct!r}")

    def term() -> Dim:
        nonlocal pos
        v = atom()
        while peek() is not None and peek()[2] == "*":
            pos += 1
            v = v * atom()
        return v

    def expr() -> Dim:
        nonlocal pos
        v = term()
        while peek() is not None and peek()[2] in ("+", "-"):
            op = peek()[2]
            pos += 1
            t = term()
            v = v + t if op == "+" else v - t
        return v

    result = expr()
    if pos != len(tokens):
        raise ValueError(f"bad dimension {text!r}")
    return result
