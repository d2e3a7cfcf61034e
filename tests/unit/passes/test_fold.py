"""Constant folding: nodes of constants become constants, small ones only, with the same values."""

from __future__ import annotations

import warnings

import numpy as np

from qjc.ir import Graph, TensorType, f16, f32, parse_dtype
from qjc.ir.interpreter import run
from qjc.ir.printer import print_graph
from qjc.ir.quant import QuantizedArray
from qjc.passes.cleanup import ConstantFolding, DeadCodeElimination
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument


def fold(graph: Graph, *, with_dce: bool = True, **options) -> tuple[Graph, PassContext]:
    """Fold (then clean up) with verification; check results are bit-identical on random inputs."""
    before = graph.copy()
    ctx = PassContext(debug=0)
    passes = [ConstantFolding(**options)] + ([DeadCodeElimination()] if with_dce else [])
    after = PassManager(passes, [VerifyInstrument()]).run(graph, ctx)
    rng = np.random.default_rng(0)
    for _ in range(2):
        inputs = [rng.standard_normal(v.type.shape).astype(v.type.dtype.np_dtype) for v in before.inputs]
        for want, got in zip(run(before, inputs), run(after, inputs), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    return after, ctx


def test_a_constant_chain_folds_into_one_constant_with_the_right_values() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 2), f32))
    a = g.add_constant("a", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    b = g.add_constant("b", np.array([0.5, -1.0], np.float32))
    # exact arithmetic only: the printed values must not depend on the platform's exp or sqrt
    scale = g.op("neg", g.op("mul", g.op("transpose", a, name="at"), b, name="ab"), name="scale")
    g.set_outputs(g.op("mul", x, scale, name="out"))
    after, ctx = fold(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,2]) {\n"
        "  const %scale: f32[2,2] = [-0.5, 3.0, -1.0, 4.0]\n"
        "  %out: f32[2,2] = mul(%x, %scale)\n"
        "  return %out\n"
        "}\n"
    )
    assert ctx.log == ["fold_constants: folded 3 node(s)", "dce: removed 0 node(s), 4 constant(s)"]
    # an independent reference in float64
    want = -(np.array([[1.0, 3.0], [2.0, 4.0]]) * np.array([0.5, -1.0]))
    np.testing.assert_array_equal(after.constant_data(after.nodes[0].inputs[1]), want)


def test_results_above_the_size_cap_are_not_folded() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((64,), f32))
    c = g.add_constant("c", np.ones(64, np.float32))
    g.set_outputs(g.op("add", x, g.op("neg", c, name="big")))
    after, _ = fold(g, max_output_bytes=255)
    assert [n.op for n in after.nodes] == ["neg", "add"]
    after, _ = fold(after, max_output_bytes=256)
    assert [n.op for n in after.nodes] == ["add"]
    np.testing.assert_array_equal(after.constant_data(after.nodes[0].inputs[1]), -np.ones(64, np.float32))


def test_generators_fold_when_static_and_feed_further_folds() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), f16))
    positions = g.op("cast", g.op("iota", shape=(4,), name="pos"), to=f16, name="pos_h")
    half = g.op("full", shape=(4,), value=0.5, dtype=f16, name="half")
    g.set_outputs(g.op("add", x, g.op("mul", positions, half, name="steps"), name="out"))
    after, _ = fold(g)
    assert print_graph(after) == (
        "graph main(%x: f16[4]) {\n"
        "  const %steps: f16[4] = [0.0, 0.5, 1.0, 1.5]\n"
        "  %out: f16[4] = add(%x, %steps)\n"
        "  return %out\n"
        "}\n"
    )


def test_nodes_with_a_run_time_input_stay() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), f32))
    c = g.add_constant("c", np.ones(3, np.float32))
    g.set_outputs(g.op("add", x, c), g.op("exp", x))
    text = print_graph(g)
    after, ctx = fold(g)
    assert print_graph(after) == text and ctx.log == []


def test_quantized_weights_stay_packed_but_quantizing_a_constant_folds() -> None:
    q4 = parse_dtype("q4g8s_f16")
    g = Graph()
    x = g.add_input("x", TensorType((2, 16), f16))
    w = g.add_constant("w", np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16).astype(np.float16))
    wq = g.op("quantize", w, dtype=q4, name="wq")
    g.set_outputs(g.op("matmul", x, g.op("transpose", g.op("dequantize", wq, to=f16, name="wd")), name="y"))
    after, _ = fold(g)
    assert [n.op for n in after.nodes] == ["dequantize", "transpose", "matmul"]
    assert isinstance(after.constant_data(after.nodes[0].inputs[0]), QuantizedArray)
    assert print_graph(after).splitlines()[1] == "  const %wq: q4g8s_f16[4,16]"


def test_fused_nodes_of_constants_fold_and_subgraphs_fold_inside() -> None:
    def group(name: str) -> Graph:
        sub = Graph(name)
        p = sub.add_input("p", TensorType((2,), f32))
        k = sub.add_constant("k", np.array([2.0, 3.0], np.float32))
        sub.set_outputs(sub.op("mul", p, sub.op("neg", k, name="nk"), name="r"))
        return sub

    g = Graph()
    x = g.add_input("x", TensorType((2,), f32))
    c = g.add_constant("c", np.array([1.0, -1.0], np.float32))
    (whole,) = g.add_node("fused", [c], {"kind": "elementwise"}, subgraph=group("g0"), names=["whole"])
    (part,) = g.add_node("fused", [x], {"kind": "elementwise"}, subgraph=group("g1"), names=["part"])
    g.set_outputs(whole, part)
    after, _ = fold(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2]) {\n"
        "  const %whole: f32[2] = [-2.0, 3.0]\n"
        '  %part: f32[2] = fused(%x) {kind="elementwise", name=""} {\n'
        "    graph g1(%p: f32[2]) {\n"
        "      const %nk: f32[2] = [-2.0, -3.0]\n"
        "      %r: f32[2] = mul(%p, %nk)\n"
        "      return %r\n"
        "    }\n"
        "  }\n"
        "  return %whole, %part\n"
        "}\n"
    )


def test_a_node_that_cannot_be_evaluated_is_left_and_noted() -> None:
    sub = Graph("g0")
    p = sub.add_input("p", TensorType((2,), f32))
    k = sub.add_constant("k", None, type=TensorType((2,), f32))  # declared, data supplied at run time
    sub.set_outputs(sub.op("mul", p, k, name="r"))
    g = Graph()
    c = g.add_constant("c", np.ones(2, np.float32))
    (out,) = g.add_node("fused", [c], {"kind": "elementwise"}, subgraph=sub, names=["out"])
    g.set_outputs(out)
    ctx = PassContext(debug=0)
    after = PassManager([ConstantFolding()], [VerifyInstrument()]).run(g, ctx)
    assert [n.op for n in after.nodes] == ["fused"]
    assert len(ctx.log) == 1 and ctx.log[0].startswith("fold_constants: left %out = fused(...) unfolded")


def test_overflow_folds_to_inf_quietly_like_the_run_time_would() -> None:
    g = Graph()
    big = g.add_constant("big", np.array([3e38, 1.0], np.float32))
    g.set_outputs(g.op("add", big, big, name="twice"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        after = PassManager([ConstantFolding()], [VerifyInstrument()]).run(g, PassContext(debug=0))
    np.testing.assert_array_equal(after.constant_data(after.outputs[0]), np.array([np.inf, 2.0], np.float32))
