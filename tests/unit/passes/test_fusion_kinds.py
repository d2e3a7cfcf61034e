"""The fusion partitioner, kind by kind: golden IR after fusion and unchanged outputs."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from graphs import apply, check_rewrite, parse, positive_inputs, random_inputs, top_ops, weights

from qjc.ir import Graph, TensorType, f32, parse_dtype
from qjc.ir.printer import print_graph
from qjc.ir.quant import quantize
from qjc.passes.fusion import FusionPartitioner
from qjc.passes.fusion.group import GraphIndex


def fuse() -> list:
    return [FusionPartitioner()]


def test_an_elementwise_dag_with_broadcasts_becomes_one_group_with_two_results() -> None:
    _, ctx = check_rewrite(fuse(), (
        "graph main(%x: f32[4,32], %s: f32[4,1], %b: f32[32]) {\n"
        "  const %two: f32[] = 2.0\n"
        "  %r: f32[4,1] = rsqrt(%s)\n"
        "  %m: f32[4,32] = mul(%x, %r)\n"
        "  %a: f32[4,32] = add(%m, %b)\n"
        "  %t: f32[4,32] = mul(%a, %two)\n"
        "  %e: f32[4,32] = exp(%a)\n"
        "  return %t, %e\n"
        "}\n"
    ), (
        "graph main(%x: f32[4,32], %s: f32[4,1], %b: f32[32]) {\n"
        "  const %two: f32[] = 2.0\n"
        "  %t: f32[4,32], %e: f32[4,32] = fused(%s, %x, %b) {kind=\"elementwise\", name=\"elementwise_0\"} {\n"
        "    graph elementwise_0(%s: f32[4,1], %x: f32[4,32], %b: f32[32]) {\n"
        "      const %two: f32[] = 2.0\n"
        "      %r: f32[4,1] = rsqrt(%s)\n"
        "      %m: f32[4,32] = mul(%x, %r)\n"
        "      %a: f32[4,32] = add(%m, %b)\n"
        "      %t: f32[4,32] = mul(%a, %two)\n"
        "      %e: f32[4,32] = exp(%a)\n"
        "      return %t, %e\n"
        "    }\n"
        "  }\n"
        "  return %t, %e\n"
        "}\n"
    ), make_inputs=positive_inputs)
    assert ctx.log == ["fuse: elementwise x1"]


def test_a_small_value_used_outside_stays_out_of_a_wider_elementwise_group() -> None:
    # %h [4,1] is returned: one loop nest over [4,32] would write it 32 times, so the [4,1] ops and
    # the [4,32] ops form two groups (a lone elementwise op would stay a plain op)
    check_rewrite(fuse(), (
        "graph main(%x: f32[4,32], %s: f32[4,1]) {\n"
        "  %r: f32[4,1] = rsqrt(%s)\n"
        "  %h: f32[4,1] = neg(%r)\n"
        "  %m: f32[4,32] = mul(%x, %r)\n"
        "  %e: f32[4,32] = exp(%m)\n"
        "  return %e, %h\n"
        "}\n"
    ), (
        "graph main(%x: f32[4,32], %s: f32[4,1]) {\n"
        "  %r: f32[4,1], %h: f32[4,1] = fused(%s) {kind=\"elementwise\", name=\"elementwise_0\"} {\n"
        "    graph elementwise_0(%s: f32[4,1]) {\n"
        "      %r: f32[4,1] = rsqrt(%s)\n"
        "      %h: f32[4,1] = neg(%r)\n"
        "      return %r, %h\n"
        "    }\n"
        "  }\n"
        "  %e: f32[4,32] = fused(%x, %r) {kind=\"elementwise\", name=\"elementwise_1\"} {\n"
        "    graph elementwise_1(%x: f32[4,32], %r: f32[4,1]) {\n"
        "      %m: f32[4,32] = mul(%x, %r)\n"
        "      %e: f32[4,32] = exp(%m)\n"
        "      return %e\n"
        "    }\n"
        "  }\n"
        "  return %e, %h\n"
        "}\n"
    ), make_inputs=positive_inputs)


def test_a_lone_elementwise_op_stays_a_plain_op() -> None:
    text = (
        "graph main(%x: f32[4,8]) {\n"
        "  %s: f32[4,1] = sum(%x) {axes=[1], keepdims=true}\n"
        "  %y: f32[4,8] = sub(%x, %s)\n"
        "  return %y\n"
        "}\n"
    )
    check_rewrite(fuse(), text, text)


PRE_NORM_BF16 = (
    "graph main(%h: bf16[2,4,32], %attn: bf16[2,4,32]) {\n"
    "  const %w: bf16[32]\n"
    "  %res: bf16[2,4,32] = add(%h, %attn)\n"
    "  %x32: f32[2,4,32] = cast(%res) {to=f32}\n"
    "  %n: f32[2,4,32] = rms_norm(%x32) {axis=2, eps=1e-06}\n"
    "  %nb: bf16[2,4,32] = cast(%n) {to=bf16}\n"
    "  %y: bf16[2,4,32] = mul(%w, %nb)\n"
    "  return %y, %res\n"
    "}\n"
)


def test_rms_norm_takes_the_residual_add_and_casts_and_returns_the_residual_stream() -> None:
    w = np.random.default_rng(0).standard_normal(32).astype(ml_dtypes.bfloat16)
    check_rewrite(fuse(), PRE_NORM_BF16, (
        "graph main(%h: bf16[2,4,32], %attn: bf16[2,4,32]) {\n"
        "  const %w: bf16[32]\n"
        "  %res: bf16[2,4,32], %y: bf16[2,4,32] = fused(%h, %attn, %w) {kind=\"rms_norm\", name=\"rms_norm_0\"} {\n"
        "    graph rms_norm_0(%h: bf16[2,4,32], %attn: bf16[2,4,32], %w: bf16[32]) {\n"
        "      %res: bf16[2,4,32] = add(%h, %attn)\n"
        "      %x32: f32[2,4,32] = cast(%res) {to=f32}\n"
        "      %n: f32[2,4,32] = rms_norm(%x32) {axis=2, eps=1e-06}\n"
        "      %nb: bf16[2,4,32] = cast(%n) {to=bf16}\n"
        "      %y: bf16[2,4,32] = mul(%w, %nb)\n"
        "      return %res, %y\n"
        "    }\n"
        "  }\n"
        "  return %y, %res\n"
        "}\n"
    ), {"w": w}, rtol=0, atol=0)


def test_layer_norm_and_softmax_groups_take_their_prologues_and_epilogues() -> None:
    check_rewrite(fuse(), (
        "graph main(%x: f32[2,4,32], %pos: f32[4,32], %mask: f32[2,1,1,4], %qk: f32[2,3,4,4]) {\n"
        "  const %g: f32[32]\n"
        "  const %scale: f32[] = 0.125\n"
        "  %e: f32[2,4,32] = add(%x, %pos)\n"
        "  %ln: f32[2,4,32] = layer_norm(%e, %g) {axis=2, eps=1e-05}\n"
        "  %s: f32[2,3,4,4] = mul(%qk, %scale)\n"
        "  %l: f32[2,3,4,4] = add(%s, %mask)\n"
        "  %p: f32[2,3,4,4] = softmax(%l) {axis=3}\n"
        "  %p16: f16[2,3,4,4] = cast(%p) {to=f16}\n"
        "  return %ln, %p16\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,4,32], %pos: f32[4,32], %mask: f32[2,1,1,4], %qk: f32[2,3,4,4]) {\n"
        "  const %g: f32[32]\n"
        "  const %scale: f32[] = 0.125\n"
        "  %ln: f32[2,4,32] = fused(%x, %pos, %g) {kind=\"layer_norm\", name=\"layer_norm_0\"} {\n"
        "    graph layer_norm_0(%x: f32[2,4,32], %pos: f32[4,32], %g: f32[32]) {\n"
        "      %e: f32[2,4,32] = add(%x, %pos)\n"
        "      %ln: f32[2,4,32] = layer_norm(%e, %g) {axis=2, eps=1e-05}\n"
        "      return %ln\n"
        "    }\n"
        "  }\n"
        "  %p16: f16[2,3,4,4] = fused(%qk, %mask) {kind=\"softmax\", name=\"softmax_0\"} {\n"
        "    graph softmax_0(%qk: f32[2,3,4,4], %mask: f32[2,1,1,4]) {\n"
        "      const %scale: f32[] = 0.125\n"
        "      %s: f32[2,3,4,4] = mul(%qk, %scale)\n"
        "      %l: f32[2,3,4,4] = add(%s, %mask)\n"
        "      %p: f32[2,3,4,4] = softmax(%l) {axis=3}\n"
        "      %p16: f16[2,3,4,4] = cast(%p) {to=f16}\n"
        "      return %p16\n"
        "    }\n"
        "  }\n"
        "  return %ln, %p16\n"
        "}\n"
    ), weights(1, g=(32,)), rtol=1e-3, atol=1e-3)


def _quantized_gemm_graph() -> Graph:
    rng = np.random.default_rng(3)
    qdtype = parse_dtype("q4g32s_f16")
    from qjc.ir.dtypes import quant_scheme_of

    g = Graph()
    x = g.add_input("x", TensorType((2, 5, 64), f32))
    res = g.add_input("res", TensorType((2, 5, 48), f32))
    qw = g.add_constant("qw", quantize(rng.standard_normal((48, 64)).astype(np.float32), quant_scheme_of(qdtype)),
                        type=TensorType((48, 64), qdtype))
    b = g.add_constant("b", rng.standard_normal(48).astype(np.float32))
    w = g.op("dequantize", qw, to=f32, name="w")
    y = g.op("linear", x, w, name="y")
    yb = g.op("add", y, b, name="yb")
    act = g.op("gelu", yb, name="act")
    out = g.op("add", res, act, name="out")
    g.set_outputs(out)
    return g


def test_gemm_takes_the_dequantize_of_its_weight_and_a_bias_activation_residual_epilogue() -> None:
    after, ctx = apply(fuse(), _quantized_gemm_graph(), rtol=1e-5, atol=1e-5)
    assert print_graph(after) == (
        "graph main(%x: f32[2,5,64], %res: f32[2,5,48]) {\n"
        "  const %qw: q4g32s_f16[48,64]\n"
        "  const %b: f32[48]\n"
        "  %out: f32[2,5,48] = fused(%qw, %x, %b, %res) {kind=\"gemm\", name=\"gemm_0\"} {\n"
        "    graph gemm_0(%qw: q4g32s_f16[48,64], %x: f32[2,5,64], %b: f32[48], %res: f32[2,5,48]) {\n"
        "      %w: f32[48,64] = dequantize(%qw) {to=f32}\n"
        "      %y: f32[2,5,48] = linear(%x, %w)\n"
        "      %yb: f32[2,5,48] = add(%y, %b)\n"
        "      %act: f32[2,5,48] = gelu(%yb) {approximate=\"none\"}\n"
        "      %out: f32[2,5,48] = add(%res, %act)\n"
        "      return %out\n"
        "    }\n"
        "  }\n"
        "  return %out\n"
        "}\n"
    )
    assert ctx.log == ["fuse: gemm x1"]


def test_a_gemm_result_used_twice_ends_the_epilogue_and_a_shared_dequantize_stays_out() -> None:
    g = _quantized_gemm_graph()
    w = g.nodes[0].output
    x = g.inputs[0]
    other = g.op("linear", x, w, name="other")
    g.set_outputs(g.outputs[0], other)
    after, _ = apply(fuse(), g, rtol=1e-5, atol=1e-5)
    assert top_ops(after) == ["dequantize", "fused:gemm", "fused:gemm"]
    assert [n.op for n in after.nodes[1].subgraph.nodes] == ["linear", "add", "gelu", "add"]


ATTENTION_WITH_LAYOUT = (
    "graph main(%qkv: f32[2,5,96], %mask: bool[2,1,5,5]) {\n"
    "  %q: f32[2,5,32], %k: f32[2,5,32], %v: f32[2,5,32] = split(%qkv) {axis=2, sizes=[32, 32, 32]}\n"
    "  %qh: f32[2,5,4,8] = reshape(%q) {shape=[2, 5, 4, 8]}\n"
    "  %qt: f32[2,4,5,8] = transpose(%qh) {perm=[0, 2, 1, 3]}\n"
    "  %kh: f32[2,5,4,8] = reshape(%k) {shape=[2, 5, 4, 8]}\n"
    "  %kt: f32[2,4,5,8] = transpose(%kh) {perm=[0, 2, 1, 3]}\n"
    "  %vh: f32[2,5,4,8] = reshape(%v) {shape=[2, 5, 4, 8]}\n"
    "  %vt: f32[2,4,5,8] = transpose(%vh) {perm=[0, 2, 1, 3]}\n"
    "  %o: f32[2,4,5,8] = sdpa(%qt, %kt, %vt, %mask) {causal=false, scale=0.35}\n"
    "  %ot: f32[2,5,4,8] = transpose(%o) {perm=[0, 2, 1, 3]}\n"
    "  %y: f32[2,5,32] = reshape(%ot) {shape=[2, 5, 32]}\n"
    "  return %y\n"
    "}\n"
)


def _attendable(graph, rng):
    inputs = random_inputs(graph, rng)
    inputs[1][..., 0] = True
    return inputs


def test_attention_reads_q_k_v_through_the_head_split_and_writes_merged_heads() -> None:
    check_rewrite(fuse(), ATTENTION_WITH_LAYOUT, (
        "graph main(%qkv: f32[2,5,96], %mask: bool[2,1,5,5]) {\n"
        "  %y: f32[2,5,32] = fused(%qkv, %mask) {kind=\"attention\", name=\"attention_0\"} {\n"
        "    graph attention_0(%qkv: f32[2,5,96], %mask: bool[2,1,5,5]) {\n"
        "      %q: f32[2,5,32], %k: f32[2,5,32], %v: f32[2,5,32] = split(%qkv) {axis=2, sizes=[32, 32, 32]}\n"
        "      %qh: f32[2,5,4,8] = reshape(%q) {shape=[2, 5, 4, 8]}\n"
        "      %qt: f32[2,4,5,8] = transpose(%qh) {perm=[0, 2, 1, 3]}\n"
        "      %kh: f32[2,5,4,8] = reshape(%k) {shape=[2, 5, 4, 8]}\n"
        "      %kt: f32[2,4,5,8] = transpose(%kh) {perm=[0, 2, 1, 3]}\n"
        "      %vh: f32[2,5,4,8] = reshape(%v) {shape=[2, 5, 4, 8]}\n"
        "      %vt: f32[2,4,5,8] = transpose(%vh) {perm=[0, 2, 1, 3]}\n"
        "      %o: f32[2,4,5,8] = sdpa(%qt, %kt, %vt, %mask) {causal=false, scale=0.35}\n"
        "      %ot: f32[2,5,4,8] = transpose(%o) {perm=[0, 2, 1, 3]}\n"
        "      %y: f32[2,5,32] = reshape(%ot) {shape=[2, 5, 32]}\n"
        "      return %y\n"
        "    }\n"
        "  }\n"
        "  return %y\n"
        "}\n"
    ), make_inputs=_attendable)


def test_a_transpose_that_moves_the_last_axis_or_feeds_others_stays_outside_attention() -> None:
    text = (
        "graph main(%q: f32[1,2,8,4], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {\n"
        "  %qt: f32[1,2,4,8] = transpose(%q) {perm=[0, 1, 3, 2]}\n"
        "  %kt: f32[1,2,4,8] = transpose(%k) {perm=[0, 1, 2, 3]}\n"
        "  %o: f32[1,2,4,8] = sdpa(%qt, %kt, %v) {causal=true, scale=null}\n"
        "  return %o, %kt\n"
        "}\n"
    )
    after, _ = check_rewrite(fuse(), text, (
        "graph main(%q: f32[1,2,8,4], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {\n"
        "  %qt: f32[1,2,4,8] = transpose(%q) {perm=[0, 1, 3, 2]}\n"
        "  %kt: f32[1,2,4,8] = transpose(%k) {perm=[0, 1, 2, 3]}\n"
        "  %o: f32[1,2,4,8] = fused(%qt, %kt, %v) {kind=\"attention\", name=\"attention_0\"} {\n"
        "    graph attention_0(%qt: f32[1,2,4,8], %kt: f32[1,2,4,8], %v: f32[1,2,4,8]) {\n"
        "      %o: f32[1,2,4,8] = sdpa(%qt, %kt, %v) {causal=true, scale=null}\n"
        "      return %o\n"
        "    }\n"
        "  }\n"
        "  return %o, %kt\n"
        "}\n"
    ))


ROPE = (
    "graph main(%x: f32[2,4,6,16], %cos: f32[1,1,6,16], %sin: f32[1,1,6,16]) {\n"
    "  %xt: f32[2,6,4,16] = transpose(%x) {perm=[0, 2, 1, 3]}\n"
    "  %xh: f32[2,4,6,16] = transpose(%xt) {perm=[0, 2, 1, 3]}\n"
    "  %a: f32[2,4,6,16] = mul(%xh, %cos)\n"
    "  %lo: f32[2,4,6,8] = slice(%xh) {starts=[0], ends=[8], axes=[3], steps=[1]}\n"
    "  %hi: f32[2,4,6,8] = slice(%xh) {starts=[8], ends=[4611686018427387904], axes=[3], steps=[1]}\n"
    "  %nh: f32[2,4,6,8] = neg(%hi)\n"
    "  %rot: f32[2,4,6,16] = concat(%nh, %lo) {axis=-1}\n"
    "  %b: f32[2,4,6,16] = mul(%sin, %rot)\n"
    "  %y: f32[2,4,6,16] = add(%a, %b)\n"
    "  return %y\n"
    "}\n"
)


def test_rope_is_recognized_and_grouped_with_the_transposes_that_feed_it() -> None:
    _, ctx = check_rewrite(fuse(), ROPE, (
        "graph main(%x: f32[2,4,6,16], %cos: f32[1,1,6,16], %sin: f32[1,1,6,16]) {\n"
        "  %y: f32[2,4,6,16] = fused(%x, %cos, %sin) {kind=\"rope\", name=\"rope_0\"} {\n"
        "    graph rope_0(%x: f32[2,4,6,16], %cos: f32[1,1,6,16], %sin: f32[1,1,6,16]) {\n"
        "      %xt: f32[2,6,4,16] = transpose(%x) {perm=[0, 2, 1, 3]}\n"
        "      %xh: f32[2,4,6,16] = transpose(%xt) {perm=[0, 2, 1, 3]}\n"
        "      %a: f32[2,4,6,16] = mul(%xh, %cos)\n"
        "      %lo: f32[2,4,6,8] = slice(%xh) {starts=[0], ends=[8], axes=[3], steps=[1]}\n"
        "      %hi: f32[2,4,6,8] = slice(%xh) {starts=[8], ends=[4611686018427387904], axes=[3], steps=[1]}\n"
        "      %nh: f32[2,4,6,8] = neg(%hi)\n"
        "      %rot: f32[2,4,6,16] = concat(%nh, %lo) {axis=-1}\n"
        "      %b: f32[2,4,6,16] = mul(%sin, %rot)\n"
        "      %y: f32[2,4,6,16] = add(%a, %b)\n"
        "      return %y\n"
        "    }\n"
        "  }\n"
        "  return %y\n"
        "}\n"
    ))
    assert ctx.log == ["fuse: rope x1"]


def test_a_rotation_of_the_wrong_halves_is_not_rope() -> None:
    # x[..., 7:15] is not the upper half: the ops stay apart (the elementwise ones in groups)
    text = ROPE.replace("starts=[8], ends=[4611686018427387904]", "starts=[7], ends=[15]")
    after, _ = apply(fuse(), parse(text))
    assert top_ops(after) == ["transpose", "transpose", "slice", "slice", "neg", "concat", "fused:elementwise"]
    assert [n.op for n in after.nodes[-1].subgraph.nodes] == ["mul", "mul", "add"]


def test_swiglu_and_geglu_group_the_gated_product() -> None:
    check_rewrite(fuse(), (
        "graph main(%g: bf16[2,64], %u: bf16[2,64], %g2: f32[2,64], %u2: f32[2,64]) {\n"
        "  %g32: f32[2,64] = cast(%g) {to=f32}\n"
        "  %a: f32[2,64] = silu(%g32)\n"
        "  %ab: bf16[2,64] = cast(%a) {to=bf16}\n"
        "  %y: bf16[2,64] = mul(%ab, %u)\n"
        "  %a2: f32[2,64] = gelu(%g2) {approximate=\"tanh\"}\n"
        "  %z: f32[2,64] = mul(%u2, %a2)\n"
        "  return %y, %z\n"
        "}\n"
    ), (
        "graph main(%g: bf16[2,64], %u: bf16[2,64], %g2: f32[2,64], %u2: f32[2,64]) {\n"
        "  %y: bf16[2,64] = fused(%g, %u) {kind=\"swiglu\", name=\"swiglu_0\"} {\n"
        "    graph swiglu_0(%g: bf16[2,64], %u: bf16[2,64]) {\n"
        "      %g32: f32[2,64] = cast(%g) {to=f32}\n"
        "      %a: f32[2,64] = silu(%g32)\n"
        "      %ab: bf16[2,64] = cast(%a) {to=bf16}\n"
        "      %y: bf16[2,64] = mul(%ab, %u)\n"
        "      return %y\n"
        "    }\n"
        "  }\n"
        "  %z: f32[2,64] = fused(%g2, %u2) {kind=\"geglu\", name=\"geglu_0\"} {\n"
        "    graph geglu_0(%g2: f32[2,64], %u2: f32[2,64]) {\n"
        "      %a2: f32[2,64] = gelu(%g2) {approximate=\"tanh\"}\n"
        "      %z: f32[2,64] = mul(%u2, %a2)\n"
        "      return %z\n"
        "    }\n"
        "  }\n"
        "  return %y, %z\n"
        "}\n"
    ), rtol=0, atol=0)


def test_a_group_that_would_close_a_cycle_is_not_formed() -> None:
    # {exp, neg, add} would both feed and consume the cumsum: the add starts a group of its own
    check_rewrite(fuse(), (
        "graph main(%x: f32[4,8]) {\n"
        "  %e: f32[4,8] = exp(%x)\n"
        "  %n: f32[4,8] = neg(%e)\n"
        "  %c: f32[4,8] = cumsum(%n) {axis=1, exclusive=false, reverse=false}\n"
        "  %y: f32[4,8] = add(%n, %c)\n"
        "  %z: f32[4,8] = relu(%y)\n"
        "  return %z\n"
        "}\n"
    ), (
        "graph main(%x: f32[4,8]) {\n"
        "  %n: f32[4,8] = fused(%x) {kind=\"elementwise\", name=\"elementwise_0\"} {\n"
        "    graph elementwise_0(%x: f32[4,8]) {\n"
        "      %e: f32[4,8] = exp(%x)\n"
        "      %n: f32[4,8] = neg(%e)\n"
        "      return %n\n"
        "    }\n"
        "  }\n"
        "  %c: f32[4,8] = cumsum(%n) {axis=1, exclusive=false, reverse=false}\n"
        "  %z: f32[4,8] = fused(%n, %c) {kind=\"elementwise\", name=\"elementwise_1\"} {\n"
        "    graph elementwise_1(%n: f32[4,8], %c: f32[4,8]) {\n"
        "      %y: f32[4,8] = add(%n, %c)\n"
        "      %z: f32[4,8] = relu(%y)\n"
        "      return %z\n"
        "    }\n"
        "  }\n"
        "  return %z\n"
        "}\n"
    ))


def test_convexity_check_sees_paths_through_other_nodes() -> None:
    g = parse(
        "graph main(%x: f32[4,8]) {\n"
        "  %e: f32[4,8] = exp(%x)\n"
        "  %c: f32[4,8] = cumsum(%e) {axis=1, exclusive=false, reverse=false}\n"
        "  %n: f32[4,8] = neg(%c)\n"
        "  %y: f32[4,8] = add(%e, %n)\n"
        "  %z: f32[4,8] = add(%y, %x)\n"
        "  return %z\n"
        "}\n"
    )
    index = GraphIndex(g)
    e, c, n, y, z = g.nodes
    assert not index.is_convex([e, y])
    assert not index.is_convex([e, z])
    assert index.is_convex([e, c, n, y])
    assert index.is_convex([y, z])
    assert index.is_convex([c, n])


def test_fusing_a_fused_graph_again_changes_nothing_and_names_stay_unique() -> None:
    from qjc.passes.manager import PassContext

    g = parse(PRE_NORM_BF16, {"w": np.ones(32, ml_dtypes.bfloat16)})
    FusionPartitioner().run(g, PassContext(debug=0))
    text = print_graph(g)
    FusionPartitioner().run(g, PassContext(debug=0))
    assert print_graph(g) == text
    names = [n.attrs["name"] for n in g.nodes if n.op == "fused"]
    assert len(names) == len(set(names))
