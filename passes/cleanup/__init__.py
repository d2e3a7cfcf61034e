"""Cleanup passes: canonicalization, constant folding, common-subexpression and dead-code elimination."""

from qjc.passes.cleanup.canonicalize import CANONICALIZE_RULES, Canonicalize
from qjc.passes.cleanup.cse import CommonSubexpressionElimination
from qjc.passes.cleanup.dce import DeadCodeElimination, eliminate_dead_code
from qjc.passes.cleanup.fold import ConstantFolding

__all__ = [
    "CANONICALIZE_RULES", "Canonicalize", "CommonSubexpressionElimination", "ConstantFolding",
    "DeadCodeElimination", "eliminate_dead_code",
]
