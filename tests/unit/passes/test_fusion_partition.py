"""The partitioner as a whole: backend capabilities decide what fuses, and on random graphs every
group is valid (no cycles, every node in exactly one place, same outputs)."""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from graphs import apply, fused_nodes, parse, random_dag, top_ops, weights

from qjc.backends.base import Capabilities
from qjc.ir.graph import Graph
from qjc.ir.verifier import verify
from qjc.passes.fusion import FUSED_KINDS, FusionPartitioner
from qjc.passes.fusion.group import GraphIndex

LLAMA_MLP = (
    "graph main(%x: f32[2,4,32], %res: f32[2,4,32]) {\n"
    "  const %norm: f32[32]\n"
    "  const %gate: f32[64,32]\n"
    "  const %up: f32[64,32]\n"
    "  const %down: f32[32,64]\n"
    "  const %bias: f32[32]\n"
    "  %h: f32[2,4,32] = rms_norm(%x, %norm) {axis=2, eps=1e-06}\n"
    "  %g: f32[2,4,64] = linear(%h, %gate)\n"
    "  %u: f32[2,4,64] = linear(%h, %up)\n"
    "  %a: f32[2,4,64] = silu(%g)\n"
    "  %m: f32[2,4,64] = mul(%a, %u)\n"
    "  %d: f32[2,4,32] = linear(%m, %down, %bias)\n"
    "  %t: f32[2,4,32] = tanh(%d)\n"
    "  %y: f32[2,4,32] = add(%res, %t)\n"
    "  return %y\n"
    "}\n"
)


def _mlp() -> Graph:
    return parse(LLAMA_MLP, weights(0, norm=(32,), gate=(64, 32), up=(64, 32), down=(32, 64), bias=(32,)))


def caps(**overrides) -> Capabilities:
    base = {"ops": {"*"}, "dtypes": {"*"}, "fused_kinds": set(FUSED_KINDS), "max_fused_inputs": 16}
    base.update(overrides)
    return Capabilities(**base)


def test_without_a_backend_everything_fusable_fuses() -> None:
    after, _ = apply([FusionPartitioner()], _mlp())
    assert top_ops(after) == ["fused:rms_norm", "fused:gemm", "fused:gemm", "fused:swiglu", "fused:gemm"]
    assert [n.op for n in after.nodes[-1].subgraph.nodes] == ["linear", "tanh", "add"]


def test_only_the_kinds_the_backend_lists_are_formed() -> None:
    after, _ = apply([FusionPartitioner()], _mlp(), capabilities=caps(fused_kinds={"elementwise"}))
    # no swiglu template: silu * up is an ordinary elementwise pair; tanh + add likewise
    assert top_ops(after) == ["rms_norm", "linear", "linear", "fused:elementwise", "linear", "fused:elementwise"]


def test_the_partitioner_can_be_limited_to_some_kinds() -> None:
    after, _ = apply([FusionPartitioner(kinds={"gemm"})], _mlp())
    assert top_ops(after) == ["rms_norm", "fused:gemm", "fused:gemm", "fused:gemm"]  # the gate takes silu*up
    with pytest.raises(ValueError, match="unknown fused kind"):
        FusionPartitioner(kinds={"gemm", "megakernel"})


def test_a_group_stops_growing_at_the_operand_limit() -> None:
    # the down projection has x, weight and bias; the residual add would be a 4th operand
    after, _ = apply([FusionPartitioner()], _mlp(), capabilities=caps(max_fused_inputs=3))
    down = after.nodes[-2]
    assert top_ops(after)[-2:] == ["fused:gemm", "add"]
    assert [n.op for n in down.subgraph.nodes] == ["linear", "tanh"] and len(down.inputs) == 3
    assert all(len(n.inputs) <= 3 for n in fused_nodes(after))


def test_ops_and_dtypes_the_backend_lacks_stay_out_of_groups() -> None:
    after, _ = apply([FusionPartitioner()], _mlp(), capabilities=caps(ops={"linear", "rms_norm", "silu", "mul",
                                                                           "add"}))
    # no tanh on the device: the down projection's epilogue stops before it, tanh + add do not fuse
    assert top_ops(after) == ["fused:rms_norm", "fused:gemm", "fused:gemm", "fused:swiglu", "fused:gemm", "tanh",
                              "add"]
    bf16 = parse(LLAMA_MLP.replace("f32", "bf16"),
                 {k: v.astype(ml_dtypes.bfloat16) for k, v in
                  weights(0, norm=(32,), gate=(64, 32), up=(64, 32), down=(32, 64), bias=(32,)).items()})
    after, _ = apply([FusionPartitioner()], bf16, capabilities=caps(dtypes={"f32"}), rtol=0, atol=0)
    assert not fused_nodes(after)


def _node_census(graph: Graph) -> Counter:
    """Ops of every node, subgraphs included, fused nodes themselves excluded."""
    out: Counter = Counter()
    for n in graph.nodes:
        if n.op == "fused":
            out.update(_node_census(n.subgraph))
        else:
            out[n.op] += 1
    return out


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_fuse_into_valid_acyclic_groups_with_the_same_results(seed: int) -> None:
    graph = random_dag(seed, nodes=60)
    census = _node_census(graph)
    limited = caps(max_fused_inputs=3, fused_kinds={"elementwise", "gemm", "rms_norm"}) if seed % 2 else None
    after, _ = apply([FusionPartitioner()], graph, capabilities=limited, rtol=1e-4, atol=1e-5)
    verify(after)
    assert _node_census(after) == census  # every node lives in exactly one place
    for node in fused_nodes(after):
        if limited is not None:
            assert limited.accepts(node, after.symbols)[0]
        # the group as it stood in the flat graph was convex: re-expanding it must not create a cycle
        assert node.subgraph.nodes and node.subgraph.outputs


def test_groups_are_convex_in_the_graph_they_came_from() -> None:
    # check convexity of every group against the unfused graph, by node identity through names
    for seed in range(6):
        graph = random_dag(100 + seed, nodes=50)
        flat = graph.copy()
        by_output = {v.name: n for n in flat.nodes for v in n.outputs}
        after, _ = apply([FusionPartitioner()], graph, rtol=1e-4, atol=1e-5)
        index = GraphIndex(flat)
        for node in fused_nodes(after):
            members = [by_output[n.outputs[0].name] for n in node.subgraph.nodes]
            assert index.is_convex(members), node.attrs["name"]


def test_fused_subgraphs_have_deterministic_operands_and_scalar_constants_inside() -> None:
    texts = set()
    for _ in range(2):
        g = parse(
            "graph main(%x: f32[4,32], %b: f32[32]) {\n"
            "  const %big: f32[32]\n"
            "  const %k: f32[] = 3.0\n"
            "  %a: f32[4,32] = add(%x, %big)\n"
            "  %m: f32[4,32] = mul(%a, %k)\n"
            "  %y: f32[4,32] = sub(%b, %m)\n"
            "  return %y\n"
            "}\n", weights(1, big=(32,)))
        after, _ = apply([FusionPartitioner()], g)
        node = after.nodes[0]
        assert [v.name for v in node.inputs] == ["x", "big", "b"]  # first use, in node order
        assert list(node.subgraph.constants) == ["k"]  # the scalar moved in; the [32] weight did not
        texts.add(str(after))
    assert len(texts) == 1


def test_a_state_output_and_graph_outputs_inside_a_group_stay_results() -> None:
    g = parse(
        "graph main(%x: f32[4,8]) {\n"
        "  %a: f32[4,8] = exp(%x)\n"
        "  %b: f32[4,8] = neg(%a)\n"
        "  %c: f32[4,8] = tanh(%b)\n"
        "  return %c, %a\n"
        "}\n")
    after, _ = apply([FusionPartitioner()], g)
    (node,) = after.nodes
    assert [v.name for v in node.outputs] == ["a", "c"]
    assert [v.name for v in after.outputs] == ["c", "a"]
    np.testing.assert_equal([v.producer is node for v in after.outputs], [True, True])
