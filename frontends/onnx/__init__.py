"""ONNX frontend: an ONNX model (a file or a ModelProto) becomes a qjc Graph.

Steps (loading.py, importer.py): read the file without onnx's external-data loader -> read
external tensor data with qjc's own confined reader -> onnx's checker and strict shape inference
-> list every op the conversion table lacks at the model's opset and fail once -> translate node
by node. Converters live in one module per op family and register by (domain, op_type) with the
first opset version they implement (registry.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import onnx

from qjc.frontends.onnx import activations, constants, elementwise, matmul, nn, reduce, shape  # noqa: F401
from qjc.frontends.onnx.context import NotKnownError
from qjc.frontends.onnx.importer import import_model, op_coverage
from qjc.frontends.onnx.loading import inline_functions, load, read_proto
from qjc.frontends.onnx.registry import claimed_op_types
from qjc.ir import Graph

__all__ = ["NotKnownError", "claimed_op_types", "coverage", "from_onnx"]


def from_onnx(model: onnx.ModelProto | str | os.PathLike, name: str | None = None,
              ranges: Mapping[str, tuple[int, int]] | None = None) -> Graph:
    """Import ``model`` as a qjc Graph named ``name`` (default: the ONNX graph's name).

    Symbolic input dims (ONNX dim_params) become qjc symbols of the same name (made a valid
    identifier), with the range ``ranges[name]`` or 1..2**31-1.
    """
    return import_model(load(model, name), name, ranges)


def coverage(model: onnx.ModelProto | str | os.PathLike) -> dict[str, tuple[int, bool]]:
    """Every op the model uses: how many nodes, and whether qjc converts it at the model's opset.
    Ops outside the default domain are named ``Op (domain d)``."""
    proto, source, _ = read_proto(model)
    return op_coverage(inline_functions(proto, source))
