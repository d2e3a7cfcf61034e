"""Weights as the compiled function's parameters, and the load-time repacking of GEMM weights.

The artifact keeps one copy of every weight, in weights.safetensors in the graph's own layout. A
GEMM kernel wants its weight in column panels: [ceil(N / NB), K, NB], so that the innermost loop
reads NB consecutive floats of one row of K (one or two vector registers) per step. The runtime
makes that layout from the stored array when it loads the engine (a transpose, well under a second
for 100 MB) instead of the artifact holding a second, packed copy.

This module needs only numpy: the runtime imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# "plain": as stored. "nk": a linear weight [N, K] (torch layout). "kn": a matmul right operand [K, N].
# Both packed layouts are [ceil(N / block), K, block], zero-padded past N.
LAYOUTS = ("plain", "nk", "kn")


@dataclass(frozen=True)
class ParamSpec:
    name: str  # parameter name in the compiled function
    constant: str  # the graph constant (a tensor in weights.safetensors) it is made from
    layout: str
    block: int  # NB of a packed layout; 0 for plain
    shape: tuple[int, ...]  # shape as passed to the function
    dtype: str  # qjc dtype name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "constant": self.constant, "layout": self.layout, "block": self.block,
                "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> ParamSpec:
        return ParamSpec(str(d["name"]), str(d["constant"]), str(d["layout"]), int(d["block"]),
                         tuple(int(x) for x in d["shape"]), str(d["dtype"]))


def packed_shape(shape: tuple[int, ...], layout: str, block: int) -> tuple[int, ...]:
    if layout == "plain":
        return shape
    if layout not in LAYOUTS or len(shape) != 2 or block <= 0:
        raise ValueError(f"cannot pack a {list(shape)} weight as {layout!r} with block {block}")
    n, k = shape if layout == "nk" else shape[::-1]
    return (-(-n // block), k, block)


def pack(array: np.ndarray, layout: str, block: int) -> np.ndarray:
    """``array`` in the parameter layout (a contiguous copy for packed layouts)."""
    if layout == "plain":
        return np.ascontiguousarray(array)
    nk = array if layout == "nk" else array.T
    n, k = nk.shape
    panels = -(-n // block)
    padded = np.zeros((panels * block, k), array.dtype)
    padded[:n] = nk
    # [panels, block, K] -> [panels, K, block]
    return np.ascontiguousarray(padded.reshape(panels, block, k).transpose(0, 2, 1))
