"""Weights as the compiled function's parameters, and the load-time repacking of GEMM weights.

The artifact keeps one copy of every weight, in weights.safetensors in the graph's own layout. A
GEMM kernel wants its weight in column panels: [ceil(N / NB), K, NB], so that the innermost loop
reads NB consecutive floats of one row of K (one or two vector registers) per step. The runtime
makes that layout from the stored array when it loads the engine (a transpose, well under a second
for 100 MB) instead of the artifact holding a second, packed copy.

A constant of a quantized dtype is either split into the quantized GEMM's parameters (quant_layout.py),
or, where no kernel takes it, dequantized to f32 here and then laid out like a float weight; either
way the artifact stores it once, packed as qjc packs quantized tensors.

This module needs only numpy: the runtime imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.backends.cpu.quant_layout import PARTS, column_panels, pack_part

# Layouts: "plain": as stored. "nk": a linear weight [N, K] (torch layout). "kn": a matmul right operand
# [K, N]. Both packed layouts are [ceil(N / block), K, block], zero-padded past N. The q_* layouts (PARTS)
# are the parts of a quantized linear weight (quant_layout.py).


@dataclass(frozen=True)
class ParamSpec:
    name: str  # parameter name in the compiled function
    constant: str  # the graph constant (a tensor in weights.safetensors) it is made from
    layout: str
    block: int  # NB of a packed layout; 0 for plain
    shape: tuple[int, ...]  # shape as passed to the function
    dtype: str  # qjc dtype name of the parameter
    # the constant's quantized dtype and [N, K] when it is stored quantized ("" and () otherwise)
    quant: str = ""
    logical_shape: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "constant": self.constant, "layout": self.layout, "block": self.block,
             "shape": list(self.shape), "dtype": self.dtype}
        if self.quant:
            d.update(quant=self.quant, logical_shape=list(self.logical_shape))
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> ParamSpec:
        return ParamSpec(str(d["name"]), str(d["constant"]), str(d["layout"]), int(d["block"]),
                         tuple(int(x) for x in d["shape"]), str(d["dtype"]), str(d.get("quant", "")),
                         tuple(int(x) for x in d.get("logical_shape", ())))


def packed_shape(shape: tuple[int, ...], layout: str, block: int) -> tuple[int, ...]:
    if layout == "plain":
        return shape
    if layout not in ("nk", "kn") or len(shape) != 2 or block <= 0:
        raise ValueError(f"cannot pack a {list(shape)} weight as {layout!r} with block {block}")
    n, k = shape if layout == "nk" else shape[::-1]
    return (-(-n // block), k, block)


def pack(array: np.ndarray, layout: str, block: int) -> np.ndarray:
    """``array`` in the parameter layout (a contiguous copy for packed layouts)."""
    if layout == "plain":
        return np.ascontiguousarray(array)
    return column_panels(array if layout == "nk" else array.T, block)


def stored_quantized(stored: Mapping[str, np.ndarray], spec: ParamSpec) -> Any:
    """The QuantizedArray that ``spec.constant`` is stored as ("<name>", "<name>::scales", "<name>::zeros")."""
    from qjc.ir.dtypes import parse_dtype, quant_scheme_of
    from qjc.ir.quant import QuantizedArray

    name = spec.constant
    return QuantizedArray(stored[name], stored[f"{name}::scales"], stored.get(f"{name}::zeros"),
                          spec.logical_shape, quant_scheme_of(parse_dtype(spec.quant)))


def load_param(stored: Mapping[str, np.ndarray], spec: ParamSpec) -> np.ndarray:
    """The array the compiled function takes for ``spec``, made from the stored tensors."""
    if not spec.quant:
        return pack(stored[spec.constant], spec.layout, spec.block)
    q = stored_quantized(stored, spec)
    if spec.layout in PARTS:
        return pack_part(q, spec.layout, spec.block)
    from qjc.ir.quant import dequantize

    # no kernel takes this weight quantized: a float copy, made once here
    return pack(dequantize(q, np.float32), spec.layout, spec.block)
