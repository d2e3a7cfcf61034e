"""Replace the float constant weights of linear layers by quantized constants (round to nearest).

A linear's weight operand of a quantized dtype means "dequantize in the GEMM": backends read the
packed weight and scales directly, so no float copy of the weight exists anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from qjc.ir import Graph
from qjc.ir.dtypes import QuantScheme
from qjc.ir.quant import QuantizedArray, quantize
from qjc.passes.manager import PassContext


def quantize_weights(graph: Graph, scheme: QuantScheme, keep: Sequence[str] = (),
                     channel_scales: dict[str, np.ndarray] | None = None) -> list[str]:
    """Quantize every constant float linear weight whose name matches no ``keep`` regex.

    ``channel_scales`` (from activation-aware calibration) maps a weight name to per-input-channel
    factors s: the weight becomes Q(W * s) and the linear's input is divided by s first.
    Returns notes, one per weight, saying what was done."""
    patterns = [re.compile(p) for p in keep]
    notes: list[str] = []
    for node in list(graph.nodes):
        if node.op != "linear" or not graph.is_constant(node.inputs[1]):
            continue
        weight = node.inputs[1]
        data = graph.constant_data(weight)
        if isinstance(data, QuantizedArray) or not weight.type.dtype.is_float:
            continue
        if any(p.search(weight.name) for p in patterns):
            notes.append(f"kept {weight.name} in {weight.type.dtype} (matches --keep)")
            continue
        k = weight.type.shape[-1]
        if scheme.group_size and k % scheme.group_size:
            notes.append(f"kept {weight.name}: K={k} is not a multiple of the group size {scheme.group_size}")
            continue
        w = np.asarray(data, np.float64)
        scales = (channel_scales or {}).get(weight.name)
        if scales is not None:
            w = w * scales[None, :]
            inv = graph.add_constant(f"{weight.name}.awq_inv", (1.0 / scales).astype(weight.type.dtype.np_dtype))
            node.inputs[0] = graph.op("mul", node.inputs[0], inv)
        q = quantize(w, scheme)
        node.inputs[1] = graph.add_constant(f"{weight.name}.{scheme.name}", q, q.type)
        notes.append(f"{weight.name} -> {scheme.name}" + (" (activation-aware)" if scales is not None else ""))
    graph.toposort()
    return notes


class QuantizeWeights:
    """Module pass: weight-only quantization of linear layers, RTN or with calibrated scales."""

    name = "quantize_weights"

    def __init__(self, scheme: QuantScheme, keep: Sequence[str] = (),
                 channel_scales: dict[str, np.ndarray] | None = None) -> None:
        self.scheme = scheme
        self.keep = tuple(keep)
        self.channel_scales = channel_scales

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        from qjc.passes.cleanup.dce import eliminate_dead_code

        notes = quantize_weights(graph, self.scheme, self.keep, self.channel_scales)
        for note in notes:
            ctx.note(self.name, note)
        eliminate_dead_code(graph)  # the float weights are no longer read
        return graph
