"""Merging parallel linears (q/k/v, gate/up) into one linear over concatenated weights and a split:
golden IR before and after, and the same outputs on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import apply, check_rewrite, parse, weights

from qjc.backends.base import Capabilities
from qjc.ir import Graph, TensorType, f32, parse_dtype
from qjc.ir.dtypes import quant_scheme_of
from qjc.ir.printer import print_graph
from qjc.ir.quant import QuantizedArray, dequantize, quantize
from qjc.passes.cleanup import DeadCodeElimination
from qjc.passes.fusion import MergeParallelGemms
from qjc.passes.fusion.parallel_gemms import merged_constant_name, merged_constant_parts


def merge() -> list:
    return [MergeParallelGemms(), DeadCodeElimination()]


QKV = (
    "graph main(%x: f32[2,3,32]) {\n"
    "  const %attn.q.weight: f32[32,32]\n"
    "  const %attn.k.weight: f32[16,32]\n"
    "  const %attn.v.weight: f32[16,32]\n"
    "  %q: f32[2,3,32] = linear(%x, %attn.q.weight)\n"
    "  %k: f32[2,3,16] = linear(%x, %attn.k.weight)\n"
    "  %v: f32[2,3,16] = linear(%x, %attn.v.weight)\n"
    "  %kv: f32[2,3,16] = add(%k, %v)\n"
    "  return %q, %kv\n"
    "}\n"
)
QKV_WEIGHTS = {"attn.q.weight": (32, 32), "attn.k.weight": (16, 32), "attn.v.weight": (16, 32)}


def test_linears_of_one_input_become_one_linear_over_concatenated_weights_and_a_split() -> None:
    consts = weights(0, **QKV_WEIGHTS)
    after, ctx = check_rewrite(merge(), QKV, (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %attn.q__k__v.weight: f32[64,32]\n"
        "  %1: f32[2,3,64] = linear(%x, %attn.q__k__v.weight)\n"
        "  %q: f32[2,3,32], %k: f32[2,3,16], %v: f32[2,3,16] = split(%1) {axis=2, sizes=[32, 16, 16]}\n"
        "  %kv: f32[2,3,16] = add(%k, %v)\n"
        "  return %q, %kv\n"
        "}\n"
    ), consts)
    np.testing.assert_array_equal(after.constants["attn.q__k__v.weight"].data,
                                  np.concatenate([consts[n] for n in QKV_WEIGHTS]))
    assert ctx.log[0] == "merge_parallel_gemms: merge_parallel_linears_over_concatenated_weights x1"


def test_biases_merge_with_their_weights_and_a_linear_without_one_stays_apart() -> None:
    check_rewrite(merge(), (
        "graph main(%x: f32[4,16]) {\n"
        "  const %q.w: f32[24,16]\n"
        "  const %q.b: f32[24]\n"
        "  const %k.w: f32[20,16]\n"
        "  const %k.b: f32[20]\n"
        "  const %gate.w: f32[6,16]\n"
        "  %q: f32[4,24] = linear(%x, %q.w, %q.b)\n"
        "  %k: f32[4,20] = linear(%x, %k.w, %k.b)\n"
        "  %g: f32[4,6] = linear(%x, %gate.w)\n"
        "  return %q, %k, %g\n"
        "}\n"
    ), (
        "graph main(%x: f32[4,16]) {\n"
        "  const %gate.w: f32[6,16]\n"
        "  const %q__k.w: f32[44,16]\n"
        "  const %q__k.b: f32[44]\n"
        "  %g: f32[4,6] = linear(%x, %gate.w)\n"
        "  %1: f32[4,44] = linear(%x, %q__k.w, %q__k.b)\n"
        "  %q: f32[4,24], %k: f32[4,20] = split(%1) {axis=1, sizes=[24, 20]}\n"
        "  return %q, %k, %g\n"
        "}\n"
    ), weights(1, **{"q.w": (24, 16), "q.b": (24,), "k.w": (20, 16), "k.b": (20,), "gate.w": (6, 16)}))


def test_run_time_weights_and_a_backend_without_split_keep_the_linears() -> None:
    text = (
        "graph main(%x: f32[4,16], %w1: f32[8,16], %w2: f32[8,16]) {\n"
        "  %a: f32[4,8] = linear(%x, %w1)\n"
        "  %b: f32[4,8] = linear(%x, %w2)\n"
        "  return %a, %b\n"
        "}\n"
    )
    check_rewrite(merge(), text, text)
    no_split = Capabilities(ops={"linear", "add"}, dtypes={"*"})
    check_rewrite(merge(), QKV, QKV, weights(0, **QKV_WEIGHTS), capabilities=no_split)


def test_the_merged_constant_is_made_once_and_its_name_reads_back() -> None:
    # the same two weights applied to two inputs: both merges share one concatenated constant
    after, _ = check_rewrite(merge(), (
        "graph main(%x: f32[4,16], %y: f32[4,16]) {\n"
        "  const %l.up.w: f32[8,16]\n"
        "  const %l.gate.w: f32[8,16]\n"
        "  %a: f32[4,8] = linear(%x, %l.up.w)\n"
        "  %b: f32[4,8] = linear(%x, %l.gate.w)\n"
        "  %c: f32[4,8] = linear(%y, %l.up.w)\n"
        "  %d: f32[4,8] = linear(%y, %l.gate.w)\n"
        "  return %a, %b, %c, %d\n"
        "}\n"
    ), (
        "graph main(%x: f32[4,16], %y: f32[4,16]) {\n"
        "  const %l.up__gate.w: f32[16,16]\n"
        "  %1: f32[4,16] = linear(%x, %l.up__gate.w)\n"
        "  %a: f32[4,8], %b: f32[4,8] = split(%1) {axis=1, sizes=[8, 8]}\n"
        "  %4: f32[4,16] = linear(%y, %l.up__gate.w)\n"
        "  %c: f32[4,8], %d: f32[4,8] = split(%4) {axis=1, sizes=[8, 8]}\n"
        "  return %a, %b, %c, %d\n"
        "}\n"
    ), weights(2, **{"l.up.w": (8, 16), "l.gate.w": (8, 16)}))
    assert merged_constant_parts("l.up__gate.w") == ["l.up.w", "l.gate.w"]
    name = "hf.model.layers.0.self_attn.q_proj__k_proj__v_proj.weight.q4g32m_f16"
    parts = merged_constant_parts(name)
    assert parts is not None and merged_constant_name(parts) == name
    assert parts[1] == "hf.model.layers.0.self_attn.k_proj.weight.q4g32m_f16"
    assert merged_constant_name(["w", "w.T"]) == "w__w.T"  # no middles to join: whole names
    assert merged_constant_parts("hf.model.layers.0.mlp.up_proj.weight") is None


# ---- quantized weights ---------------------------------------------------------------------------------


def _quantized_linears(schemes: list[str | None], seed: int = 0) -> Graph:
    """x [3, 64] through one linear per scheme (None: a float weight), rows 16, 8, 24, ..."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType((3, 64), f32))
    outs = []
    for i, scheme in enumerate(schemes):
        w = rng.standard_normal((8 * (i % 3 + 1), 64)).astype(np.float32)
        if scheme is None:
            wv = g.add_constant(f"p{i}.weight", w)
        else:
            dtype = parse_dtype(scheme)
            q = quantize(w, quant_scheme_of(dtype))
            wv = g.add_constant(f"p{i}.weight.{scheme}", q, type=q.type)
        outs.append(g.op("linear", x, wv, name=f"y{i}"))
    g.set_outputs(*outs)
    return g


@pytest.mark.parametrize("scheme", ["q4g32m_f16", "q4g32a_f32", "q8cs_f16"])
def test_quantized_weights_of_one_scheme_merge_their_packed_rows(scheme: str) -> None:
    graph = _quantized_linears([scheme] * 3)
    parts = [c.data for c in graph.constants.values()]
    after, _ = apply(merge(), graph)
    (const,) = after.constants.values()
    assert const.value.name == f"p0__p1__p2.weight.{scheme}" and const.value.type.dtype == parse_dtype(scheme)
    merged = const.data
    assert isinstance(merged, QuantizedArray) and merged.logical_shape == (48, 64)
    # the packed bytes, scales and zero points of the parts, row after row: nothing re-quantized
    np.testing.assert_array_equal(merged.data, np.concatenate([p.data for p in parts]))
    np.testing.assert_array_equal(merged.scales, np.concatenate([p.scales for p in parts]))
    if merged.zeros is not None:
        np.testing.assert_array_equal(merged.zeros, np.concatenate([p.zeros for p in parts]))
    unpacked = np.concatenate([dequantize(p, f32) for p in parts])
    np.testing.assert_array_equal(dequantize(merged, f32), unpacked)
    assert [n.op for n in after.nodes] == ["linear", "split"]


def test_quantized_weights_of_different_schemes_or_beside_floats_stay_apart() -> None:
    for schemes in (["q4g32m_f16", "q8cs_f16"], ["q4g32s_f16", None], ["q4g32s_f16", "q4g32a_f16"]):
        graph = _quantized_linears(schemes)
        text = print_graph(graph)
        after, ctx = apply(merge(), graph)
        assert print_graph(after) == text
        assert not any("merge_parallel" in line for line in ctx.log)


def test_the_printed_quantized_graph_round_trips_after_merging() -> None:
    graph = _quantized_linears(["q4g32m_f16", "q4g32m_f16"])
    after, _ = apply(merge(), graph)
    consts = {name: c.data for name, c in after.constants.items()}
    assert print_graph(parse(print_graph(after), consts)) == print_graph(after)
