"""An onnx.backend adapter over qjc: ``prepare`` imports a model with the ONNX frontend and the
returned rep runs it on qjc's reference interpreter. Used to run the ONNX node test cases.

qjc compiles ahead of time, so values an op needs at compile time (Reshape's shape, Pad's pads,
a reduction's axes, ...) must be constants. The node tests feed many of them as graph inputs; the
rep binds exactly those inputs (the ones the frontend names in its NotKnownError) as initializers
once their data arrives in ``run``, as a static-shape compiler is used on such a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from qjc.frontends.onnx import NotKnownError, from_onnx
from qjc.ir import Graph
from qjc.ir.interpreter import run


def as_array(value: Any) -> np.ndarray:
    """A test-data value (numpy array or TensorProto) as a numpy array."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def bind_inputs(model: onnx.ModelProto, data: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs named in ``data`` are initializers holding it."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    kept = [vi for vi in bound.graph.input if vi.name not in data]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    bound.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in data.items())
    return bound


class QJCRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, graph: Graph | None) -> None:
        self.model = model
        self.graph = graph  # None until run() has the data of the inputs to bind
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initializers]
        self.bound: list[str] = []  # graph inputs bound as initializers by the last run

    def run(self, inputs: Sequence[Any] | Mapping[str, Any], **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            by_name = {k: as_array(v) for k, v in inputs.items()}
        else:
            by_name = {name: as_array(v) for name, v in zip(self.input_names, inputs)}
        graph, bound = self.graph, set()
        while graph is None:
            try:
                graph = from_onnx(bind_inputs(self.model, {n: by_name[n] for n in bound}), name="main")
            except NotKnownError as e:
                new = set(e.graph_inputs) - bound
                if not new or not new <= set(by_name):
                    raise
                bound |= new
        self.bound = sorted(bound)
        return tuple(run(graph, [by_name[n] for n in self.input_names if n not in bound]))


class QJCBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> QJCRep:
        try:
            graph = from_onnx(model, name="main")
        except NotKnownError:
            graph = None  # some graph inputs must be constants: bound when run() has their data
        return QJCRep(model, graph)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"  # the interpreter runs on numpy
