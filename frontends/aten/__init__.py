"""The ATen -> qjc conversion table, keyed by overload name ("aten.add.Tensor").

Each family module registers converters with ``@converts(...)``. A converter receives the
ConvertContext and the FX node's arguments with tensors already replaced by qjc Values (and
symbolic sizes by Dims), and returns a Value, a tuple of Values, or a Dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qjc.errors import QJCError
from qjc.frontends.torch_types import qjc_dtype
from qjc.ir import Graph, TensorType, Value
from qjc.ir.dtypes import DType

Converter = Callable[..., Any]
TABLE: dict[str, Converter] = {}


def converts(*keys: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for key in keys:
            if key in TABLE:
                raise RuntimeError(f"two converters for {key}")
            TABLE[key] = fn
        return fn

    return deco


class ConvertContext:
    """What converters need: the graph being built and the FX node being converted."""

    def __init__(self, graph: Graph, dim_names: dict[str, str], source: str) -> None:
        self.graph = graph
        self.dim_names = dim_names
        self.source = source
        self.node: torch.fx.Node | None = None

    def op(self, name: str, *inputs: Value, **attrs: Any) -> Value:
        return self.graph.op(name, *inputs, **attrs)

    def ops(self, name: str, inputs: list[Value], **attrs: Any) -> list[Value]:
        return self.graph.add_node(name, inputs, attrs)

    def out_dtype(self, index: int = 0) -> DType:
        val = self.node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[index]
        return qjc_dtype(val.dtype, self.node.name)

    def scalar(self, value: Any, dtype: DType) -> Value:
        return self.graph.add_constant("c", np.asarray(value, dtype=dtype.np_dtype))

    def as_value(self, x: Any, dtype: DType | None = None) -> Value:
        if isinstance(x, Value):
            return x
        if isinstance(x, (bool, int, float)):
            return self.scalar(x, dtype or self.out_dtype())
        raise QJCError(f"expected a tensor, got {type(x).__name__}")

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.type.dtype == dtype else self.op("cast", v, to=dtype)

    def rank(self, v: Value) -> int:
        return v.type.rank

    def fail(self, message: str) -> QJCError:
        return QJCError(message)


def t(v: Value) -> TensorType:
    return v.type


from qjc.frontends.aten import elementwise, nn, reduce, shape  # noqa: E402,F401  (registers converters)
