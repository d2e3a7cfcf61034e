"""The ONNX -> qjc conversion table, keyed by (domain, op_type) and dispatched by opset version.

A converter declares the first opset version whose semantics it implements
(``@converter("ReduceSum", since=13)``); it serves every later version until a converter with a
higher ``since`` takes over. A model whose opset is older than an op's first converter uses that
op unsupported, and the import lists it before translating anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# "" and "ai.onnx" name the same default domain.
DEFAULT_DOMAIN = ""

Converter = Callable[..., Any]


def normalize_domain(domain: str) -> str:
    return DEFAULT_DOMAIN if domain in ("", "ai.onnx") else domain


@dataclass(frozen=True)
class Entry:
    since: int
    fn: Converter


# (domain, op_type) -> entries sorted by ``since``
TABLE: dict[tuple[str, str], list[Entry]] = {}


def converter(*op_types: str, since: int = 1, domain: str = DEFAULT_DOMAIN) -> Callable[[Converter], Converter]:
    """Register ``fn`` for ``op_types`` from opset ``since`` on."""

    def deco(fn: Converter) -> Converter:
        for op_type in op_types:
            entries = TABLE.setdefault((normalize_domain(domain), op_type), [])
            if any(e.since == since for e in entries):
                raise RuntimeError(f"two converters for {op_type} since opset {since}")
            bisect.insort(entries, Entry(since, fn), key=lambda e: e.since)
        return fn

    return deco


def lookup(domain: str, op_type: str, opset: int) -> Converter | None:
    """The converter for ``op_type`` at ``opset`` (the one with the highest ``since`` not above it)."""
    entries = TABLE.get((normalize_domain(domain), op_type), [])
    chosen = None
    for entry in entries:
        if entry.since <= opset:
            chosen = entry.fn
    return chosen


def first_opset(domain: str, op_type: str) -> int | None:
    entries = TABLE.get((normalize_domain(domain), op_type))
    return entries[0].since if entries else None


def claimed_op_types(domain: str = DEFAULT_DOMAIN) -> set[str]:
    """Every op type of ``domain`` that some converter handles (at some opset)."""
    return {op for (d, op) in TABLE if d == normalize_domain(domain)}
