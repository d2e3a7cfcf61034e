"""Fusion around merged projections: the GEMM of q/k/v takes the split and RoPE on q and k, the GEMM
of gate/up takes the split and the gated product, and attention takes the KV-cache writes. Golden IR
after fusion and unchanged outputs."""

from __future__ import annotations

import numpy as np
from graphs import apply, check_rewrite, parse, random_inputs, top_ops, weights

from qjc.ir.graph import Graph
from qjc.passes.cleanup import DeadCodeElimination
from qjc.passes.fusion import FusionPartitioner, MergeParallelGemms


def _rope(name: str, x: str, heads: int) -> str:
    """RoPE over the 8-wide head dim of %x [1, heads, 3, 8], as HF's apply_rotary_pos_emb spells it."""
    full, half = f"f32[1,{heads},3,8]", f"f32[1,{heads},3,4]"
    return (
        f"  %{name}a: {full} = mul(%{x}, %cos)\n"
        f"  %{name}lo: {half} = slice(%{x}) {{starts=[0], ends=[4], axes=[3], steps=[1]}}\n"
        f"  %{name}hi: {half} = slice(%{x}) {{starts=[4], ends=[8], axes=[3], steps=[1]}}\n"
        f"  %{name}nh: {half} = neg(%{name}hi)\n"
        f"  %{name}rot: {full} = concat(%{name}nh, %{name}lo) {{axis=-1}}\n"
        f"  %{name}b: {full} = mul(%{name}rot, %sin)\n"
        f"  %{name}r: {full} = add(%{name}a, %{name}b)\n"
    )


def _indent(text: str, by: int) -> str:
    return "".join(" " * by + line for line in text.splitlines(keepends=True))


HEADER = ("graph main(%x: f32[1,3,16], %pos: i64[3], %cos: f32[1,1,3,8], %sin: f32[1,1,3,8], "
          "%k_cache: f32[1,1,6,8], %v_cache: f32[1,1,6,8]) {\n")
QKV_SPLIT = (
    "  %y: f32[1,3,32] = linear(%x, %qkv.weight)\n"
    "  %q: f32[1,3,16], %k: f32[1,3,8], %v: f32[1,3,8] = split(%y) {axis=2, sizes=[16, 8, 8]}\n"
)
Q_AND_K = (
    "  %q4: f32[1,3,2,8] = reshape(%q) {shape=[1, 3, 2, 8]}\n"
    "  %qh: f32[1,2,3,8] = transpose(%q4) {perm=[0, 2, 1, 3]}\n"
    + _rope("q", "qh", 2)
    + "  %k4: f32[1,3,1,8] = reshape(%k) {shape=[1, 3, 1, 8]}\n"
    "  %kh: f32[1,1,3,8] = transpose(%k4) {perm=[0, 2, 1, 3]}\n"
    + _rope("k", "kh", 1)
)
V_HEADS = (
    "  %v4: f32[1,3,1,8] = reshape(%v) {shape=[1, 3, 1, 8]}\n"
    "  %vh: f32[1,1,3,8] = transpose(%v4) {perm=[0, 2, 1, 3]}\n"
)
CACHE_WRITES = (
    "  %kc: f32[1,1,6,8] = index_copy(%k_cache, %pos, %kr) {axis=2}\n"
    "  %vc: f32[1,1,6,8] = index_copy(%v_cache, %pos, %vh) {axis=2}\n"
)
ATTENTION = (
    "  %o: f32[1,2,3,8] = sdpa(%qr, %kc, %vc) {causal=false, scale=null}\n"
    "  %ot: f32[1,3,2,8] = transpose(%o) {perm=[0, 2, 1, 3]}\n"
    "  %out: f32[1,3,16] = reshape(%ot) {shape=[1, 3, 16]}\n"
)
# One decoder layer's attention with a static KV cache, q/k/v already merged into one GEMM:
# 2 query heads and 1 kv head of 8, 3 new tokens written at positions %pos of a 6-slot cache.
DECODER_ATTENTION = (
    HEADER + "  const %qkv.weight: f32[32,16]\n" + QKV_SPLIT + Q_AND_K + V_HEADS + CACHE_WRITES + ATTENTION
    + "  return %out, %kc, %vc\n}\n"
)


def _distinct_positions(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    inputs = random_inputs(graph, rng)
    inputs[1] = rng.permutation(6)[:3].astype(np.int64)
    return inputs


def test_qkv_gemm_takes_rope_and_attention_takes_the_cache_writes() -> None:
    _, ctx = check_rewrite([FusionPartitioner()], DECODER_ATTENTION, (
        HEADER + "  const %qkv.weight: f32[32,16]\n"
        "  %v: f32[1,3,8], %qr: f32[1,2,3,8], %kr: f32[1,1,3,8] = fused(%x, %qkv.weight, %cos, %sin) "
        "{kind=\"gemm\", name=\"gemm_0\"} {\n"
        "    graph gemm_0(%x: f32[1,3,16], %qkv.weight: f32[32,16], %cos: f32[1,1,3,8], "
        "%sin: f32[1,1,3,8]) {\n"
        + _indent(QKV_SPLIT + Q_AND_K, 4)
        + "      return %v, %qr, %kr\n"
        "    }\n"
        "  }\n"
        "  %kc: f32[1,1,6,8], %vc: f32[1,1,6,8], %out: f32[1,3,16] = "
        "fused(%v, %k_cache, %pos, %kr, %v_cache, %qr) "
        "{kind=\"attention\", name=\"attention_0\"} {\n"
        "    graph attention_0(%v: f32[1,3,8], %k_cache: f32[1,1,6,8], %pos: i64[3], %kr: f32[1,1,3,8], "
        "%v_cache: f32[1,1,6,8], %qr: f32[1,2,3,8]) {\n"
        + _indent(V_HEADS + CACHE_WRITES + ATTENTION, 4)
        + "      return %kc, %vc, %out\n"
        "    }\n"
        "  }\n"
        "  return %out, %kc, %vc\n"
        "}\n"
    ), weights(0, **{"qkv.weight": (32, 16)}), make_inputs=_distinct_positions)
    assert ctx.log == ["fuse: attention x1, gemm x1"]


def test_a_rotation_whose_heads_are_read_elsewhere_stays_out_of_the_gemm() -> None:
    # k's heads are also returned: taking them into the GEMM would make it write them twice
    text = DECODER_ATTENTION.replace("return %out, %kc, %vc", "return %out, %kc, %vc, %kh")
    after, _ = apply([FusionPartitioner()], parse(text, weights(0, **{"qkv.weight": (32, 16)})),
                     make_inputs=_distinct_positions)
    assert top_ops(after) == ["fused:gemm", "reshape", "transpose", "fused:rope", "fused:attention"]
    gemm = after.nodes[0]
    assert [v.name for v in gemm.outputs] == ["k", "v", "qr"]  # q rotated inside, k as the split left it
    assert [n.op for n in gemm.subgraph.nodes].count("concat") == 1


def test_gate_and_up_merge_into_one_gemm_whose_epilogue_is_the_gated_product() -> None:
    check_rewrite([MergeParallelGemms(), DeadCodeElimination(), FusionPartitioner()], (
        "graph main(%x: f32[2,3,16], %res: f32[2,3,16]) {\n"
        "  const %mlp.gate.w: f32[24,16]\n"
        "  const %mlp.up.w: f32[24,16]\n"
        "  const %mlp.down.w: f32[16,24]\n"
        "  %g: f32[2,3,24] = linear(%x, %mlp.gate.w)\n"
        "  %u: f32[2,3,24] = linear(%x, %mlp.up.w)\n"
        "  %a: f32[2,3,24] = silu(%g)\n"
        "  %h: f32[2,3,24] = mul(%a, %u)\n"
        "  %d: f32[2,3,16] = linear(%h, %mlp.down.w)\n"
        "  %y: f32[2,3,16] = add(%res, %d)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,16], %res: f32[2,3,16]) {\n"
        "  const %mlp.down.w: f32[16,24]\n"
        "  const %mlp.gate__up.w: f32[48,16]\n"
        "  %h: f32[2,3,24] = fused(%x, %mlp.gate__up.w) {kind=\"gemm\", name=\"gemm_0\"} {\n"
        "    graph gemm_0(%x: f32[2,3,16], %mlp.gate__up.w: f32[48,16]) {\n"
        "      %1: f32[2,3,48] = linear(%x, %mlp.gate__up.w)\n"
        "      %g: f32[2,3,24], %u: f32[2,3,24] = split(%1) {axis=2, sizes=[24, 24]}\n"
        "      %a: f32[2,3,24] = silu(%g)\n"
        "      %h: f32[2,3,24] = mul(%a, %u)\n"
        "      return %h\n"
        "    }\n"
        "  }\n"
        "  %y: f32[2,3,16] = fused(%h, %mlp.down.w, %res) {kind=\"gemm\", name=\"gemm_1\"} {\n"
        "    graph gemm_1(%h: f32[2,3,24], %mlp.down.w: f32[16,24], %res: f32[2,3,16]) {\n"
        "      %d: f32[2,3,16] = linear(%h, %mlp.down.w)\n"
        "      %y: f32[2,3,16] = add(%res, %d)\n"
        "      return %y\n"
        "    }\n"
        "  }\n"
        "  return %y\n"
        "}\n"
    ), weights(3, **{"mlp.gate.w": (24, 16), "mlp.up.w": (24, 16), "mlp.down.w": (16, 24)}))


def test_a_split_whose_parts_only_change_layout_is_left_to_attention() -> None:
    # no RoPE (a BERT or GPT-2 layer): the GEMM stays plain, attention reads its heads through the split
    heads = "".join(line + "\n" for line in Q_AND_K.splitlines() if "reshape" in line or "transpose" in line)
    text = (HEADER + "  const %qkv.weight: f32[32,16]\n" + QKV_SPLIT + heads + V_HEADS
            + CACHE_WRITES.replace("%kr", "%kh") + ATTENTION.replace("%qr", "%qh")
            + "  return %out, %kc, %vc\n}\n")
    after, _ = apply([FusionPartitioner()], parse(text, weights(0, **{"qkv.weight": (32, 16)})),
                     make_inputs=_distinct_positions)
    assert top_ops(after) == ["fused:gemm", "fused:attention"]
    gemm, attention = after.nodes
    assert [n.op for n in gemm.subgraph.nodes] == ["linear"]
    assert [n.op for n in attention.subgraph.nodes] == (
        ["split"] + ["reshape", "transpose"] * 3 + ["index_copy"] * 2 + ["sdpa", "transpose", "reshape"])
