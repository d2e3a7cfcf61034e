"""The pass manager, its instruments, the rewrite driver and the standard pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.errors import InternalError, VerifyError
from qjc.ir import Graph, TensorType, f16, f32
from qjc.ir.interpreter import run
from qjc.ir.printer import print_graph
from qjc.passes.manager import (
    DumpIRInstrument,
    PassBrokeGraphError,
    PassContext,
    PassManager,
    PrintIRInstrument,
    TimingInstrument,
    VerifyInstrument,
)
from qjc.passes.pipeline import standard_pipeline
from qjc.passes.rewrite import RewriteDidNotConverge, RewritePass, Rule


def _random_inputs(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(v.type.shape).astype(v.type.dtype.np_dtype) for v in graph.inputs]


def _assert_same_results(before: Graph, after: Graph, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(2):
        inputs = _random_inputs(before, rng)
        for want, got in zip(run(before, inputs), run(after, inputs), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def _small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    y = g.add_input("y", TensorType((2, 3), f32))
    s = g.op("add", x, y, name="s")
    g.set_outputs(g.op("exp", s, name="e"))
    return g


class RenameGraph:
    """A module pass that records that it ran."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        self.seen.append(self.name)
        return graph


class AppendNeg:
    name = "append_neg"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        graph.set_outputs(graph.op("neg", graph.outputs[0], name="n"))
        return graph


class DropFirstNode:
    """Corrupts the graph: the dropped node's output is still used."""

    name = "drop_first_node"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        del graph.nodes[0]
        return graph


def test_passes_run_in_order_and_share_the_context() -> None:
    seen: list[str] = []
    ctx = PassContext(options={"k": 1}, debug=0)
    g = _small_graph()
    out = PassManager([RenameGraph("a", seen), RenameGraph("b", seen)], [VerifyInstrument()]).run(g, ctx)
    assert out is g
    assert seen == ["a", "b"]
    assert ctx.options == {"k": 1} and ctx.capabilities is None


def test_dump_ir_writes_the_input_and_every_pass(tmp_path) -> None:
    directory = tmp_path / "not" / "yet" / "there"
    g = _small_graph()
    input_text = print_graph(g)
    pm = PassManager([AppendNeg(), RenameGraph("odd name/x", [])],
                     [VerifyInstrument(), DumpIRInstrument(directory)])
    pm.run(g, PassContext(debug=0))
    written = sorted(p.name for p in directory.iterdir())
    assert written == ["00_input.txt", "01_append_neg.txt", "02_odd_name_x.txt"]
    assert (directory / "00_input.txt").read_text() == input_text
    assert (directory / "01_append_neg.txt").read_text() == (
        "graph main(%x: f32[2,3], %y: f32[2,3]) {\n"
        "  %s: f32[2,3] = add(%x, %y)\n"
        "  %e: f32[2,3] = exp(%s)\n"
        "  %n: f32[2,3] = neg(%e)\n"
        "  return %n\n"
        "}\n"
    )
    assert (directory / "02_odd_name_x.txt").read_text() == print_graph(g)


def test_timing_reports_every_pass() -> None:
    timing = TimingInstrument()
    ctx = PassContext(debug=0)
    names = ["first", "second", "third"]
    PassManager([RenameGraph(n, []) for n in names], [VerifyInstrument(), timing]).run(_small_graph(), ctx)
    assert [n for n, _ in timing.records] == names
    assert [n for n, _ in ctx.timings] == names
    assert all(s >= 0 for _, s in timing.records)
    report = timing.report().splitlines()
    assert len(report) == 1 + len(names) + 1  # header, one row per pass, total
    for row, name in zip(report[1:], names, strict=False):
        assert name in row
    assert "total" in report[-1]


def test_verify_blames_the_pass_that_broke_the_graph(tmp_path) -> None:
    seen: list[str] = []
    pm = PassManager([RenameGraph("fine", seen), DropFirstNode(), RenameGraph("never", seen)],
                     [VerifyInstrument(), DumpIRInstrument(tmp_path)])
    with pytest.raises(PassBrokeGraphError) as info:
        pm.run(_small_graph(), PassContext(debug=0))
    assert info.value.pass_name == "drop_first_node"
    assert "'drop_first_node' (step 2)" in str(info.value)
    assert any("%s" in p for p in info.value.problems)  # the dangling use is reported
    assert seen == ["fine"]
    # dumps run before verification, so the broken IR is there to look at
    assert (tmp_path / "02_drop_first_node.txt").exists()


def test_verify_rejects_a_broken_input_before_any_pass() -> None:
    g = _small_graph()
    del g.nodes[0]
    with pytest.raises(VerifyError, match="before any pass"):
        PassManager([RenameGraph("a", [])], [VerifyInstrument()]).run(g, PassContext(debug=0))


def test_manager_names_a_pass_that_crashes_or_returns_nothing() -> None:
    class Crashes:
        name = "crashes"

        def run(self, graph: Graph, ctx: PassContext) -> Graph:
            raise KeyError("oops")

    class ReturnsNothing:
        name = "returns_nothing"

        def run(self, graph: Graph, ctx: PassContext):
            return None

    with pytest.raises(InternalError, match="'crashes' .*crashed: KeyError"):
        PassManager([Crashes()]).run(_small_graph(), PassContext(debug=0))
    with pytest.raises(InternalError, match="'returns_nothing' returned NoneType"):
        PassManager([ReturnsNothing()]).run(_small_graph(), PassContext(debug=0))
    with pytest.raises(TypeError, match="not a pass"):
        PassManager([object()])  # type: ignore[list-item]


def test_from_knobs_builds_instruments_from_the_environment(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("QJC_VERIFY", "1")
    monkeypatch.setenv("QJC_DUMP_IR", str(tmp_path / "dump"))
    monkeypatch.setenv("QJC_DEBUG", "2")
    pm = PassManager.from_knobs([AppendNeg()])
    kinds = [type(i) for i in pm.instruments]
    assert kinds == [VerifyInstrument, DumpIRInstrument, TimingInstrument]
    pm.run(_small_graph(), PassContext(debug=0))
    assert "append_neg" in capsys.readouterr().err  # the timing table at QJC_DEBUG >= 2
    assert (tmp_path / "dump" / "01_append_neg.txt").exists()

    monkeypatch.setenv("QJC_VERIFY", "0")
    monkeypatch.delenv("QJC_DUMP_IR")
    monkeypatch.setenv("QJC_DEBUG", "3")
    kinds = [type(i) for i in PassManager.from_knobs([]).instruments]
    assert kinds == [PrintIRInstrument, TimingInstrument]


# ---- the rewrite driver --------------------------------------------------------------------------


def _swap_add_operands(node, graph, ctx):
    return graph.op("add", node.inputs[1], node.inputs[0])


def test_a_rule_set_that_never_settles_raises_a_clear_error() -> None:
    spin = RewritePass("spin", [Rule("swap_add_operands", "add", _swap_add_operands)], max_iterations=5)
    with pytest.raises(RewriteDidNotConverge) as info:
        PassManager([spin], [VerifyInstrument()]).run(_small_graph(), PassContext(debug=0))
    text = str(info.value)
    assert "'spin'" in text and "5 sweeps" in text and "swap_add_operands x1" in text


def test_a_rule_must_keep_types() -> None:
    def to_half(node, graph, ctx):
        return graph.op("cast", node.inputs[0], to=f16)

    bad = RewritePass("bad", [Rule("exp_to_cast", "exp", to_half)])
    with pytest.raises(InternalError, match="exp_to_cast replaced %e: f32\\[2,3\\] of exp with .*f16"):
        PassManager([bad]).run(_small_graph(), PassContext(debug=0))


def test_rewrite_may_consume_the_value_it_replaces_and_may_decline_after_building() -> None:
    done: set[int] = set()

    def double_after_exp(node, graph, ctx):
        if id(node) in done:
            return None
        done.add(id(node))
        return graph.op("add", node.output, node.output, name="twice")

    def build_then_decline(node, graph, ctx):
        graph.op("neg", node.output, name="unused")
        return None

    g = _small_graph()
    before = g.copy()
    rules = [Rule("build_then_decline", None, build_then_decline),
             Rule("double_after_exp", "exp", double_after_exp)]
    ctx = PassContext(debug=0)
    PassManager([RewritePass("double", rules)], [VerifyInstrument()]).run(g, ctx)
    assert print_graph(g) == (
        "graph main(%x: f32[2,3], %y: f32[2,3]) {\n"
        "  %s: f32[2,3] = add(%x, %y)\n"
        "  %e: f32[2,3] = exp(%s)\n"
        "  %twice: f32[2,3] = add(%e, %e)\n"
        "  return %twice\n"
        "}\n"
    )
    assert ctx.log == ["double: double_after_exp x1"]
    rng = np.random.default_rng(1)
    inputs = _random_inputs(before, rng)
    np.testing.assert_array_equal(run(g, inputs)[0], 2 * run(before, inputs)[0])


def test_duplicate_rule_names_are_rejected() -> None:
    rule = Rule("same", "add", _swap_add_operands)
    with pytest.raises(ValueError, match="same"):
        RewritePass("twice", [rule, rule])


# ---- the standard pipeline -----------------------------------------------------------------------


def test_standard_pipeline_cleans_a_typical_exported_graph() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    scale = g.add_constant("scale", np.full((3,), 2.0, np.float32))
    offset = g.add_constant("offset", np.full((3,), 0.5, np.float32))
    g.add_constant("unused", np.zeros((4,), np.float32))
    bias = g.op("add", scale, offset, name="bias")  # folds to a constant
    a = g.op("identity", x, name="a")
    t = g.op("transpose", g.op("transpose", a, perm=(1, 0)), perm=(1, 0))
    left = g.op("add", t, bias, name="left")
    right = g.op("add", x, bias, name="right")  # the same as `left` once the transposes are gone
    out = g.op("mul", left, g.op("cast", right, to=f32), name="out")
    g.op("exp", x, name="dead")
    g.set_outputs(out)
    before = g.copy()
    ctx = PassContext(debug=0)
    after = PassManager(standard_pipeline(), [VerifyInstrument()]).run(g, ctx)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3]) {\n"
        "  const %bias: f32[3] = [2.5, 2.5, 2.5]\n"
        "  %out: f32[2,3] = fused(%x, %bias) {kind=\"elementwise\", name=\"elementwise_0\"} {\n"
        "    graph elementwise_0(%x: f32[2,3], %bias: f32[3]) {\n"
        "      %left: f32[2,3] = add(%x, %bias)\n"
        "      %out: f32[2,3] = mul(%left, %left)\n"
        "      return %out\n"
        "    }\n"
        "  }\n"
        "  return %out\n"
        "}\n"
    )
    _assert_same_results(before, after)
    x_data = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    want = (x_data.astype(np.float64) + 2.5) ** 2  # an independent reference
    np.testing.assert_allclose(run(after, [x_data])[0], want, rtol=1e-6)
