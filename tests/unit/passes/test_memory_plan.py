"""Memory planning: buffers that are live at the same time never overlap, the arena is no larger
than the naive sum, in-place and view reuse happen only where safe, and executing the graph inside
one real byte arena at the planned offsets gives the interpreter's results."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import check_no_overlap, parse, random_dag, random_inputs, run_in_arena, weights

from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.passes.fusion import FusionPartitioner
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument
from qjc.passes.memory_plan import ALIGNMENT, MemoryPlan, MemoryPlanning, memory_plan_of, plan_memory


def check_plan(graph: Graph, rounds: int = 1, seed: int = 0) -> MemoryPlan:
    plan = plan_memory(graph)
    check_no_overlap(graph, plan)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        inputs = random_inputs(graph, rng)
        for want, got in zip(run(graph, inputs), run_in_arena(graph, plan, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
    return plan


CHAIN = (
    "graph main(%x: f32[64]) {\n"
    "  %a: f32[64] = sin(%x)\n"
    "  %b: f32[128] = concat(%a, %x) {axis=0}\n"
    "  %c: f32[64] = slice(%b) {starts=[1], ends=[65], axes=[0], steps=[1]}\n"
    "  %d: f32[64] = cumsum(%c) {axis=0, exclusive=false, reverse=false}\n"
    "  %e: f32[64] = cumsum(%d) {axis=0, exclusive=false, reverse=false}\n"
    "  return %e\n"
    "}\n"
)


def test_a_chain_reuses_dead_buffers_at_known_offsets() -> None:
    g = parse(CHAIN)
    plan = check_plan(g)
    # sizes: a 256, b 512, c 256, d 256 bytes; %e is the output (not planned)
    assert plan.sizes == {"a": 256, "b": 512, "c": 256, "d": 256}
    assert plan.lifetimes == {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}
    # largest first: b at 0; a and c are live with b -> after it; d only overlaps c -> reuses b's bytes
    assert plan.offsets == {"b": 0, "a": 512, "c": 512, "d": 0}
    assert (plan.arena_bytes, plan.naive_bytes) == (768, 1280)
    assert plan.in_place == {} and plan.aliases == {}


def test_elementwise_ops_write_over_an_operand_that_dies_there() -> None:
    g = parse(
        "graph main(%x: f32[8,32], %s: f32[8,1]) {\n"
        "  %a: f32[8,32] = exp(%x)\n"
        "  %b: f32[8,32] = neg(%a)\n"
        "  %c: f32[8,32] = mul(%b, %s)\n"
        "  %d: f32[8,32] = add(%c, %b)\n"
        "  %r: f32[8] = sum(%d) {axes=[1], keepdims=false}\n"
        "  %t: f32[8] = tanh(%r)\n"
        "  %y: f32[8,1] = unsqueeze(%t) {axes=[1]}\n"
        "  %z: f32[8,32] = mul(%x, %y)\n"
        "  %w: f32[8,32] = add(%z, %c)\n"
        "  return %w\n"
        "}\n")
    plan = check_plan(g, rounds=2)
    # b overwrites a (a dies at neg); c may not overwrite b (b is read again by d), d may not
    # overwrite c (read again by w) but overwrites b, which dies at d; z may not overwrite the
    # [8,1] y (a broadcast operand); w is an output
    assert plan.in_place == {"b": "a", "d": "b", "t": "r"}
    assert plan.aliases == {"y": "t"}
    assert plan.offsets["y"] == plan.offsets["t"] == plan.offsets["r"]


def test_inputs_constants_and_outputs_are_not_in_the_arena_nor_what_aliases_them() -> None:
    g = parse(
        "graph main(%x: f32[4,8]) {\n"
        "  const %w: f32[8,8]\n"
        "  %xv: f32[32] = reshape(%x) {shape=[32]}\n"
        "  %l: f32[4,8] = linear(%x, %w)\n"
        "  %m: f32[4,8] = cumsum(%l) {axis=1, exclusive=false, reverse=false}\n"
        "  %out: f32[32] = reshape(%m) {shape=[32]}\n"
        "  %o2: f32[32] = neg(%xv)\n"
        "  return %out, %o2\n"
        "}\n", weights(0, w=(8, 8)))
    plan = check_plan(g)
    # %m is written straight into the output buffer it is a view of; %l is the only arena value
    assert sorted(plan.offsets) == ["l"]
    assert plan.aliases == {"xv": "x", "out": "m"}


def test_a_value_overwritten_in_place_by_an_output_lives_in_the_output_buffer() -> None:
    g = parse(
        "graph main(%x: f32[4,8]) {\n"
        "  %c: f32[4,8] = cumsum(%x) {axis=1, exclusive=false, reverse=false}\n"
        "  %m: f32[4,8] = mul(%c, %c)\n"
        "  %out: f32[32] = reshape(%m) {shape=[32]}\n"
        "  return %out\n"
        "}\n")
    plan = check_plan(g)
    assert plan.in_place == {"m": "c"} and plan.offsets == {} and plan.arena_bytes == 0


def test_symbolic_dims_are_planned_at_the_top_of_their_range() -> None:
    g = parse(
        "graph main(%x: f32[batch,seq,16]) {\n"
        "  sym batch: 1..4\n"
        "  sym seq: 1..100\n"
        "  %a: f32[batch,seq,16] = cumsum(%x) {axis=2, exclusive=false, reverse=false}\n"
        "  %b: f32[batch,seq,16] = cumsum(%a) {axis=1, exclusive=false, reverse=false}\n"
        "  %c: f32[batch,seq,16] = cumsum(%b) {axis=0, exclusive=false, reverse=false}\n"
        "  return %c\n"
        "}\n")
    plan = plan_memory(g)
    assert plan.sizes == {"a": 4 * 100 * 16 * 4, "b": 4 * 100 * 16 * 4}
    assert plan.planned_at == {"batch": 4, "seq": 100}
    check_no_overlap(g, plan)
    # smaller actual sizes fit the plan
    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_in_arena(g, plan, [x])[0], run(g, [x])[0])


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_plain_and_fused(seed: int) -> None:
    graph = random_dag(200 + seed, nodes=70)
    check_plan(graph, seed=seed)
    FusionPartitioner().run(graph, PassContext(debug=0))
    plan = check_plan(graph, seed=seed)
    assert plan.arena_bytes <= plan.naive_bytes


def test_the_pass_stores_the_plan_on_the_graph_until_the_graph_changes() -> None:
    g = parse(CHAIN)
    ctx = PassContext(debug=0)
    PassManager([MemoryPlanning()], [VerifyInstrument()]).run(g, ctx)
    plan = memory_plan_of(g)
    assert plan is not None and plan.arena_bytes == 768
    assert ctx.log == ["memory_plan: arena 768 bytes for 4 values (naive 1280 bytes, 40.0% saved; 0 in place)"]
    assert plan.to_json()["offsets"] == {"a": 512, "b": 0, "c": 512, "d": 0}
    g.op("neg", g.outputs[0])  # any edit makes the stored plan stale
    assert memory_plan_of(g) is None
    assert memory_plan_of(parse(CHAIN)) is None


def test_alignment_is_configurable_and_respected() -> None:
    g = parse(CHAIN.replace("64", "3").replace("128", "6").replace("ends=[65]", "ends=[4]"))
    plan = plan_memory(g, alignment=64)
    assert all(o % 64 == 0 for o in plan.offsets.values())
    check_no_overlap(g, plan)
    assert plan_memory(g).alignment == ALIGNMENT
