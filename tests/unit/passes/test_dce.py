"""Dead-code elimination: unused nodes and constants go, inputs and everything outputs need stay."""

from __future__ import annotations

import numpy as np

from qjc.ir import Graph, TensorType, f32
from qjc.ir.interpreter import run
from qjc.ir.printer import print_graph
from qjc.passes.cleanup import DeadCodeElimination
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument


def dce(graph: Graph) -> tuple[Graph, PassContext]:
    """Run the pass with verification and check results are bit-identical on random inputs."""
    before = graph.copy()
    ctx = PassContext(debug=0)
    after = PassManager([DeadCodeElimination()], [VerifyInstrument()]).run(graph, ctx)
    rng = np.random.default_rng(0)
    for _ in range(2):
        inputs = [rng.standard_normal(v.type.shape).astype(np.float32) for v in before.inputs]
        for want, got in zip(run(before, inputs), run(after, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
    return after, ctx


def test_dead_chains_and_unused_constants_go_but_inputs_stay() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    unused_input = g.add_input("unused_input", TensorType((5,), f32))
    w = g.add_constant("w", np.arange(3, dtype=np.float32))
    dead_w = g.add_constant("dead_w", np.ones((3,), np.float32))
    g.add_constant("never_used", np.zeros((7,), np.float32))
    live = g.op("mul", x, w, name="live")
    dead = g.op("exp", g.op("add", live, dead_w, name="dead1"), name="dead2")
    g.op("neg", dead, name="dead3")
    g.op("neg", unused_input, name="dead4")
    g.set_outputs(g.op("sin", live, name="out"))
    after, ctx = dce(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3], %unused_input: f32[5]) {\n"
        "  const %w: f32[3] = [0.0, 1.0, 2.0]\n"
        "  %live: f32[2,3] = mul(%x, %w)\n"
        "  %out: f32[2,3] = sin(%live)\n"
        "  return %out\n"
        "}\n"
    )
    assert ctx.log == ["dce: removed 4 node(s), 2 constant(s)"]


def test_a_node_with_one_used_output_stays_and_outputs_may_be_inputs_or_constants() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    c = g.add_constant("c", np.full((2,), 4.0, np.float32))
    first, second = g.add_node("split", [x], {"axis": 1, "sizes": (1, 2)}, names=["first", "second"])
    g.op("neg", first, name="dead")
    g.set_outputs(second, x, c)
    after, _ = dce(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3]) {\n"
        "  const %c: f32[2] = [4.0, 4.0]\n"
        "  %first: f32[2,1], %second: f32[2,2] = split(%x) {axis=1, sizes=[1, 2]}\n"
        "  return %second, %x, %c\n"
        "}\n"
    )


def test_dead_code_inside_fused_subgraphs_goes_and_their_inputs_stay() -> None:
    sub = Graph("group0")
    p = sub.add_input("p", TensorType((4,), f32))
    q = sub.add_input("q", TensorType((4,), f32))  # unused, but part of the group's signature
    k = sub.add_constant("k", np.full((4,), 3.0, np.float32))
    sub.add_constant("k_dead", np.full((4,), 5.0, np.float32))
    sub.op("exp", q, name="inner_dead")
    sub.set_outputs(sub.op("mul", p, k, name="r"))
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    y = g.add_input("y", TensorType((4,), f32))
    (out,) = g.add_node("fused", [x, y], {"kind": "elementwise"}, subgraph=sub, names=["out"])
    g.set_outputs(out)
    after, ctx = dce(g)
    assert print_graph(after) == (
        "graph main(%x: f32[4], %y: f32[4]) {\n"
        '  %out: f32[4] = fused(%x, %y) {kind="elementwise", name=""} {\n'
        "    graph group0(%p: f32[4], %q: f32[4]) {\n"
        "      const %k: f32[4] = [3.0, 3.0, 3.0, 3.0]\n"
        "      %r: f32[4] = mul(%p, %k)\n"
        "      return %r\n"
        "    }\n"
        "  }\n"
        "  return %out\n"
        "}\n"
    )
    assert ctx.log == ["dce: removed 1 node(s), 1 constant(s)"]
    x_data = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run(after, [x_data, x_data])[0], 3 * x_data)


def test_a_live_graph_is_left_unchanged() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), f32))
    g.set_outputs(g.op("add", x, g.op("exp", x)))
    text = print_graph(g)
    after, ctx = dce(g)
    assert print_graph(after) == text and ctx.log == []
