"""The conversion table: qjc op name -> function that emits its Relax/TE/TIR form.

A converter takes the Translator and the node and returns one Relax expression per node output.
It asks the translator for its operands (``t.arg(value)``) only when it needs them, so a converter
that reads a weight in a packed layout never makes the plain copy a parameter. Family modules
(ops_*.py) fill the table with the ``converts`` decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

Converter = Callable[["Translator", "Node"], list[Any]]

CONVERTERS: dict[str, Converter] = {}


def converts(*ops: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in ops:
            if op in CONVERTERS:
                raise RuntimeError(f"two cpu converters for op {op}")
            CONVERTERS[op] = fn
        return fn

    return register


def load_all() -> dict[str, Converter]:
    """The full table (importing the family modules registers their converters)."""
    from qjc.backends.cpu import (  # noqa: F401
        ops_attention,
        ops_elementwise,
        ops_linalg,
        ops_nn,
        ops_reduction,
        ops_shape,
    )

    return CONVERTERS
