"""The standard pass pipeline: a plain list, in order, one comment per step saying why it is there."""

from __future__ import annotations

from qjc.passes.cleanup import (
    Canonicalize,
    CommonSubexpressionElimination,
    ConstantFolding,
    DeadCodeElimination,
)
from qjc.passes.manager import Pass


def standard_pipeline() -> list[Pass]:
    """A fresh list of pass instances (callers may append or drop steps)."""
    return [
        # Frontends leave identities, no-op casts/reshapes and transpose pairs; remove them first so
        # every later pass matches one spelling of each computation.
        Canonicalize(),
        # Shape arithmetic and small parameter math on constants become constants, which exposes
        # more no-ops (a reshape to a now-known shape) and spares the engine the work at run time.
        ConstantFolding(),
        # Folding can create the very no-ops the first canonicalization removes (e.g. a cast whose
        # target matches the folded input); clean them up before comparing nodes.
        Canonicalize(),
        # Exporters repeat subexpressions (one shape computation per layer, duplicated masks);
        # merge them so fusion and memory planning see each value once.
        CommonSubexpressionElimination(),
        # Last: drops whatever the steps above left unused, including constants that only fed
        # folded nodes, so the artifact carries no dead weights.
        DeadCodeElimination(),
    ]
