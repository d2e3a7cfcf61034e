"""Quantized weights on a target without kernels for their type: dequantize them at compile time.

A GGUF model keeps its int4/int8 weights by default; a backend that declares no quantized dtypes
(the cuda backend today) would refuse such a graph. Rather than fail, the weights are expanded to
f32 once, here, and the compile report says so, naming how many weights and bytes it cost.
"""

from __future__ import annotations

import numpy as np

from qjc.ir import Graph
from qjc.ir.dtypes import f32
from qjc.ir.quant import QuantizedArray, dequantize
from qjc.passes.manager import PassContext


class DequantizeUnsupportedWeights:
    name = "dequantize_unsupported_weights"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        caps = ctx.capabilities
        if caps is None:
            return graph
        from qjc.passes.cleanup.dce import eliminate_dead_code

        expanded, extra = 0, 0
        for name, const in list(graph.constants.items()):
            data = const.data
            if not isinstance(data, QuantizedArray) or caps.accepts_dtype(const.value.type.dtype.name):
                continue
            dense = np.ascontiguousarray(dequantize(data, f32))
            new = graph.add_constant(f"{name}.f32", dense)
            graph.replace_uses(const.value, new)
            expanded += 1
            extra += dense.nbytes - data.nbytes
        if expanded:
            eliminate_dead_code(graph)
            ctx.note(self.name, f"the target has no kernels for these quantized types: {expanded} weights "
                                f"dequantized to f32 at compile time (+{extra / 2**20:.1f} MiB)")
        return graph
