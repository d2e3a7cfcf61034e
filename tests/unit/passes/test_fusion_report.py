"""kernel_report: fused groups and data-moving ops count, metadata ops do not; layers are found by
their attentions."""

from __future__ import annotations

from graphs import parse

from qjc.passes.fusion import FusionPartitioner, kernel_report
from qjc.passes.manager import PassContext

TWO_LAYERS = (
    "graph main(%x: f32[1,2,4,8]) {\n"
    "  %a0: f32[1,2,4,8] = sdpa(%x, %x, %x) {causal=true, scale=null}\n"
    "  %t0: f32[1,4,2,8] = transpose(%a0) {perm=[0, 2, 1, 3]}\n"
    "  %r0: f32[1,4,16] = reshape(%t0) {shape=[1, 4, 16]}\n"
    "  %e0: f32[1,4,16] = exp(%r0)\n"
    "  %n0: f32[1,4,16] = neg(%e0)\n"
    "  %u0: f32[1,2,4,8] = reshape(%n0) {shape=[1, 2, 4, 8]}\n"
    "  %a1: f32[1,2,4,8] = sdpa(%u0, %u0, %u0) {causal=true, scale=null}\n"
    "  %t1: f32[1,4,2,8] = transpose(%a1) {perm=[0, 2, 1, 3]}\n"
    "  %r1: f32[1,4,16] = reshape(%t1) {shape=[1, 4, 16]}\n"
    "  %e1: f32[1,4,16] = exp(%r1)\n"
    "  %n1: f32[1,4,16] = neg(%e1)\n"
    "  %s: f32[1,4,1] = sum(%n1) {axes=[2], keepdims=true}\n"
    "  %q: f32[1,4] = squeeze(%s) {axes=[2]}\n"
    "  return %q\n"
    "}\n"
)


def test_unfused_graph_counts_every_op_that_moves_data() -> None:
    report = kernel_report(parse(TWO_LAYERS))
    assert report == {
        "kernels": 9, "fused_groups": 0, "unfused_ops": 9, "by_kind": {},
        "unfused_by_op": {"exp": 2, "neg": 2, "sdpa": 2, "sum": 1, "transpose": 2},
        "layers": 2, "kernels_per_layer": 4.0,
    }


def test_fused_graph_counts_groups_once_and_layers_by_attention() -> None:
    graph = parse(TWO_LAYERS)
    FusionPartitioner().run(graph, PassContext(debug=0))
    report = kernel_report(graph)
    # per layer: attention (with its output transpose) + exp/neg; then the sum
    assert report["by_kind"] == {"attention": 2, "elementwise": 2}
    assert report["unfused_by_op"] == {"sum": 1}
    assert (report["kernels"], report["layers"], report["kernels_per_layer"]) == (5, 2, 2.0)
    # a caller that knows the layer count gets total / layers instead
    assert kernel_report(graph, num_layers=4)["kernels_per_layer"] == 1.25
