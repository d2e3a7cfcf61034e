"""fp8 activations: the input of every linear whose weight is fp8 is quantized to e4m3 on the fly
(one scale per token, from that token's absmax) and read back, so the GEMM sees what an fp8
tensor-core kernel would multiply. Inserted only where the target has fp8 kernels, which fuse the
pair into the GEMM's operand load; elsewhere the weights alone are fp8 and a note says so."""

from __future__ import annotations

from qjc.ir import Graph
from qjc.passes.manager import PassContext
from qjc.passes.quantize.modes import FP8_ACTIVATIONS


def target_has_fp8(ctx: PassContext) -> bool:
    """The target takes fp8 activations: their dtype and the quantize / dequantize pair (a target that
    dequantizes fp8 weights in its GEMM accepts the dtype without lowering the pair)."""
    caps = ctx.capabilities
    return caps is None or (caps.accepts_dtype(FP8_ACTIVATIONS.name) and caps.accepts_op("quantize")
                            and caps.accepts_op("dequantize"))


def quantize_activations(graph: Graph) -> int:
    """Insert quantize -> dequantize on the input of each fp8-weight linear; returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "linear" or not node.inputs[1].type.dtype.name.startswith("f8e4m3"):
            continue
        x = node.inputs[0]
        if not x.type.dtype.is_float or x.type.rank < 1:
            continue
        q = graph.op("quantize", x, dtype=FP8_ACTIVATIONS.dtype)
        node.inputs[0] = graph.op("dequantize", q, to=x.type.dtype)
        count += 1
    graph.toposort()
    return count


class QuantizeActivationsFp8:
    name = "quantize_activations_fp8"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if not target_has_fp8(ctx):
            ctx.note(self.name, "activations stay in float: the target has no fp8 kernels (weights are fp8)")
            return graph
        n = quantize_activations(graph)
        ctx.note(self.name, f"{n} linear input(s) quantized to fp8 e4m3 per token")
        return graph
