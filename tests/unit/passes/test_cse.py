"""Common-subexpression elimination: equal nodes and equal small constants merge, nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.ir import Graph, TensorType, f16, f32, i32
from qjc.ir.interpreter import run
from qjc.ir.printer import print_graph
from qjc.passes.cleanup import CommonSubexpressionElimination
from qjc.passes.cleanup.cse import attr_key
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument


def cse(graph: Graph, **options) -> tuple[Graph, PassContext]:
    """Run the pass with verification and check results are bit-identical on random inputs."""
    before = graph.copy()
    ctx = PassContext(debug=0)
    after = PassManager([CommonSubexpressionElimination(**options)], [VerifyInstrument()]).run(graph, ctx)
    rng = np.random.default_rng(0)
    for _ in range(2):
        inputs = [rng.standard_normal(v.type.shape).astype(v.type.dtype.np_dtype) for v in before.inputs]
        for want, got in zip(run(before, inputs), run(after, inputs), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    return after, ctx


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def test_duplicate_chains_collapse_in_one_pass() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    y = g.add_input("y", TensorType((2, 3), f32))
    a1 = g.op("exp", g.op("add", x, y, name="s1"), name="e1")
    a2 = g.op("exp", g.op("add", x, y, name="s2"), name="e2")
    swapped = g.op("add", y, x, name="swapped")  # operand order counts: no commutativity is assumed
    g.set_outputs(g.op("mul", a1, a2, name="m"), a2, swapped)
    after, ctx = cse(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3], %y: f32[2,3]) {\n"
        "  %s1: f32[2,3] = add(%x, %y)\n"
        "  %e1: f32[2,3] = exp(%s1)\n"
        "  %swapped: f32[2,3] = add(%y, %x)\n"
        "  %m: f32[2,3] = mul(%e1, %e1)\n"
        "  return %m, %e1, %swapped\n"
        "}\n"
    )
    assert ctx.log == ["cse: merged 2 duplicate node(s) and constant(s)"]


def test_attributes_must_be_equal() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    outs = [
        g.op("cast", x, to=f16, name="h1"), g.op("cast", x, to=f16, name="h2"),  # merge
        g.op("cast", x, to=i32, name="i"),  # differs from the f16 casts
        g.op("clamp", x, min=0.0, name="pos0"), g.op("clamp", x, min=-0.0, name="neg0"),  # -0.0 is not 0.0
        # NaN bounds are equal to each other here, unlike under ==
        g.op("clamp", x, min=float("nan"), name="nan1"), g.op("clamp", x, min=float("nan"), name="nan2"),
        g.op("clamp", x, min=1.0, max=None, name="c1"), g.op("clamp", x, min=1.0, name="c2"),  # merge
    ]
    g.set_outputs(*outs)
    after, _ = cse(g)
    assert [n.output.name for n in after.nodes] == ["h1", "i", "pos0", "neg0", "nan1", "c1"]
    assert [v.name for v in after.outputs] == ["h1", "h1", "i", "pos0", "neg0", "nan1", "nan1", "c1", "c1"]


@pytest.mark.parametrize(("a", "b", "equal"), [
    (float("nan"), float("nan"), True),
    (0.0, -0.0, False),
    (1, 1.0, False),
    (True, 1, False),
    ((1, 2), [1, 2], True),
    ((1, (2, 3.5)), (1, (2, 3.5)), True),
    ((0.0,), (-0.0,), False),
    (f16, f16, True),
    (f16, f32, False),
    (None, 0, False),
])
def test_attr_key(a, b, equal) -> None:
    assert (attr_key(a) == attr_key(b)) is equal
    hash(attr_key(a))


def test_equal_small_constants_merge_by_type_and_bytes() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), f32))
    c1 = g.add_constant("c1", np.array([1.0, 2.0, 3.0], np.float32))
    c2 = g.add_constant("c2", np.array([1.0, 2.0, 3.0], np.float32))  # same as c1
    z32 = g.add_constant("z32", np.zeros(3, np.float32))
    zi32 = g.add_constant("zi32", np.zeros(3, np.int32))  # same bytes as z32, another type
    nz = g.add_constant("nz", np.full(3, -0.0, np.float32))  # -0.0 has other bytes than 0.0
    g.set_outputs(g.op("add", x, c1, name="a1"), g.op("add", x, c2, name="a2"),
                  g.op("mul", x, z32, name="m"), zi32, g.op("mul", x, nz, name="mn"))
    after, ctx = cse(g)
    assert print_graph(after) == (
        "graph main(%x: f32[3]) {\n"
        "  const %c1: f32[3] = [1.0, 2.0, 3.0]\n"
        "  const %z32: f32[3] = [0.0, 0.0, 0.0]\n"
        "  const %zi32: i32[3] = [0, 0, 0]\n"
        "  const %nz: f32[3] = [-0.0, -0.0, -0.0]\n"
        "  %a1: f32[3] = add(%x, %c1)\n"
        "  %m: f32[3] = mul(%x, %z32)\n"
        "  %mn: f32[3] = mul(%x, %nz)\n"
        "  return %a1, %a1, %m, %zi32, %mn\n"
        "}\n"
    )
    assert ctx.log == ["cse: merged 2 duplicate node(s) and constant(s)"]


def test_constants_above_the_size_limit_are_not_compared() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((64,), f32))
    big1 = g.add_constant("big1", np.ones(64, np.float32))
    big2 = g.add_constant("big2", np.ones(64, np.float32))
    g.set_outputs(g.op("add", x, big1), g.op("add", x, big2))
    after, _ = cse(g, max_constant_bytes=255)
    assert sorted(after.constants) == ["big1", "big2"] and _ops(after) == ["add", "add"]
    after, _ = cse(after, max_constant_bytes=256)
    assert sorted(after.constants) == ["big1"] and _ops(after) == ["add"]


def _group(scale: float, name: str = "group0") -> Graph:
    sub = Graph(name)
    p = sub.add_input("p", TensorType((32,), f32))
    k = sub.add_constant("k", np.full((32,), scale, np.float32))  # too big to print its data
    sub.set_outputs(sub.op("mul", sub.op("exp", p), k, name="r"))
    return sub


def test_fused_nodes_merge_when_their_subgraphs_are_the_same() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((32,), f32))
    kinds = {"kind": "elementwise"}
    (f1,) = g.add_node("fused", [x], kinds, subgraph=_group(2.0), names=["f1"])
    (f2,) = g.add_node("fused", [x], kinds, subgraph=_group(2.0), names=["f2"])  # merges with f1
    (f3,) = g.add_node("fused", [x], kinds, subgraph=_group(3.0), names=["f3"])  # prints the same, other data
    (f4,) = g.add_node("fused", [x], kinds, subgraph=_group(2.0, "other"), names=["f4"])  # other text
    g.set_outputs(f1, f2, f3, f4)
    after, _ = cse(g)
    assert [n.output.name for n in after.nodes] == ["f1", "f3", "f4"]
    assert [v.name for v in after.outputs] == ["f1", "f1", "f3", "f4"]


def test_duplicates_inside_a_subgraph_merge() -> None:
    sub = Graph("group0")
    p = sub.add_input("p", TensorType((4,), f32))
    sub.set_outputs(sub.op("add", sub.op("exp", p, name="e1"), sub.op("exp", p, name="e2"), name="r"))
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    (y,) = g.add_node("fused", [x], {"kind": "elementwise"}, subgraph=sub, names=["y"])
    g.set_outputs(y)
    after, _ = cse(g)
    assert print_graph(after) == (
        "graph main(%x: f32[4]) {\n"
        '  %y: f32[4] = fused(%x) {kind="elementwise", name=""} {\n'
        "    graph group0(%p: f32[4]) {\n"
        "      %e1: f32[4] = exp(%p)\n"
        "      %r: f32[4] = add(%e1, %e1)\n"
        "      return %r\n"
        "    }\n"
        "  }\n"
        "  return %y\n"
        "}\n"
    )
    x_data = np.linspace(-1, 1, 4, dtype=np.float32)
    np.testing.assert_allclose(run(after, [x_data])[0], 2 * np.exp(x_data.astype(np.float64)), rtol=1e-6)


def test_generators_with_equal_attributes_merge() -> None:
    g = Graph()
    a = g.op("iota", shape=(5,), name="a")
    b = g.op("iota", shape=(5,), name="b")
    c = g.op("iota", shape=(5,), start=1, name="c")
    g.set_outputs(g.op("add", a, b, name="s"), c)
    after, _ = cse(g)
    assert print_graph(after) == (
        "graph main() {\n"
        "  %a: i64[5] = iota() {shape=[5], dtype=i64, start=0}\n"
        "  %c: i64[5] = iota() {shape=[5], dtype=i64, start=1}\n"
        "  %s: i64[5] = add(%a, %a)\n"
        "  return %s, %c\n"
        "}\n"
    )
