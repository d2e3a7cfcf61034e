"""Decomposed-pattern rules: each turns a chain of small ops back into the single op it spells.

Every test gives the IR before and after (golden text) and checks that the interpreter gives the
same outputs before and after on fresh random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from graphs import check_rewrite, parse, random_inputs, weights

from qjc.ir.printer import print_graph
from qjc.passes.fusion import RecognizeDecomposed
from qjc.passes.manager import PassContext


def recognize() -> list:
    return [RecognizeDecomposed()]


def test_silu_from_x_times_sigmoid() -> None:
    check_rewrite(recognize(), (
        "graph main(%x: f32[2,8], %z: f32[2,8]) {\n"
        "  %s: f32[2,8] = sigmoid(%x)\n"
        "  %y: f32[2,8] = mul(%s, %x)\n"
        "  %other: f32[2,8] = mul(%z, %s)\n"
        "  return %y, %other\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,8], %z: f32[2,8]) {\n"
        "  %s: f32[2,8] = sigmoid(%x)\n"
        "  %other: f32[2,8] = mul(%z, %s)\n"
        "  %y: f32[2,8] = silu(%x)\n"
        "  return %y, %other\n"
        "}\n"
    ))


def test_gelu_tanh_from_the_gpt2_polynomial() -> None:
    _, ctx = check_rewrite(recognize(), (
        "graph main(%x: f32[2,8]) {\n"
        "  const %half: f32[] = 0.5\n"
        "  const %three: f32[] = 3.0\n"
        "  const %c: f32[] = 0.044714998453855515\n"
        "  const %k: f32[] = 0.7978845834732056\n"
        "  const %one: f32[] = 1.0\n"
        "  %h: f32[2,8] = mul(%x, %half)\n"
        "  %p: f32[2,8] = pow(%x, %three)\n"
        "  %cp: f32[2,8] = mul(%p, %c)\n"
        "  %inner: f32[2,8] = add(%x, %cp)\n"
        "  %scaled: f32[2,8] = mul(%inner, %k)\n"
        "  %t: f32[2,8] = tanh(%scaled)\n"
        "  %t1: f32[2,8] = add(%t, %one)\n"
        "  %y: f32[2,8] = mul(%h, %t1)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,8]) {\n"
        "  const %half: f32[] = 0.5\n"
        "  const %three: f32[] = 3.0\n"
        "  const %c: f32[] = 0.044714998453855515\n"
        "  const %k: f32[] = 0.7978845834732056\n"
        "  const %one: f32[] = 1.0\n"
        "  %y: f32[2,8] = gelu(%x) {approximate=\"tanh\"}\n"
        "  return %y\n"
        "}\n"
    ))
    assert ctx.log == ["recognize_decomposed: gelu_tanh_from_polynomial x1"]


def test_gelu_from_erf_and_a_wrong_constant_is_left_alone() -> None:
    check_rewrite(recognize(), (
        "graph main(%x: f32[4]) {\n"
        "  const %half: f32[] = 0.5\n"
        "  const %r: f32[] = 0.7071067690849304\n"
        "  const %r2: f32[] = 0.5\n"
        "  const %one: f32[] = 1.0\n"
        "  %xr: f32[4] = mul(%x, %r)\n"
        "  %e: f32[4] = erf(%xr)\n"
        "  %e1: f32[4] = add(%one, %e)\n"
        "  %g: f32[4] = mul(%x, %half)\n"
        "  %y: f32[4] = mul(%g, %e1)\n"
        "  %xr2: f32[4] = mul(%x, %r2)\n"
        "  %f: f32[4] = erf(%xr2)\n"
        "  %f1: f32[4] = add(%f, %one)\n"
        "  %z: f32[4] = mul(%g, %f1)\n"
        "  return %y, %z\n"
        "}\n"
    ), (
        "graph main(%x: f32[4]) {\n"
        "  const %half: f32[] = 0.5\n"
        "  const %r: f32[] = 0.7071067690849304\n"
        "  const %r2: f32[] = 0.5\n"
        "  const %one: f32[] = 1.0\n"
        "  %g: f32[4] = mul(%x, %half)\n"
        "  %xr2: f32[4] = mul(%x, %r2)\n"
        "  %f: f32[4] = erf(%xr2)\n"
        "  %f1: f32[4] = add(%f, %one)\n"
        "  %z: f32[4] = mul(%g, %f1)\n"
        "  %y: f32[4] = gelu(%x) {approximate=\"none\"}\n"
        "  return %y, %z\n"
        "}\n"
    ))


LLAMA_RMS_NORM = (
    "graph main(%x: f32[2,3,32]) {\n"
    "  const %w: f32[32]\n"
    "  const %eps: f32[] = 9.999999974752427e-07\n"
    "  %sq: f32[2,3,32] = mul(%x, %x)\n"
    "  %ms: f32[2,3,1] = mean(%sq) {axes=[2], keepdims=true}\n"
    "  %v: f32[2,3,1] = add(%ms, %eps)\n"
    "  %r: f32[2,3,1] = rsqrt(%v)\n"
    "  %n: f32[2,3,32] = mul(%x, %r)\n"
    "  %y: f32[2,3,32] = mul(%w, %n)\n"
    "  return %y\n"
    "}\n"
)


# torch.onnx writes rsqrt as Reciprocal(Sqrt(...)) and the square as Pow(x, 2)
TORCH_ONNX_RMS_NORM = (
    "graph main(%x: f32[2,3,32]) {\n"
    "  const %w: f32[32]\n"
    "  const %two: f32[] = 2.0\n"
    "  const %eps: f32[] = 9.999999974752427e-07\n"
    "  %sq: f32[2,3,32] = pow(%x, %two)\n"
    "  %ms: f32[2,3,1] = mean(%sq) {axes=[2], keepdims=true}\n"
    "  %v: f32[2,3,1] = add(%ms, %eps)\n"
    "  %s: f32[2,3,1] = sqrt(%v)\n"
    "  %r: f32[2,3,1] = reciprocal(%s)\n"
    "  %n: f32[2,3,32] = mul(%x, %r)\n"
    "  %y: f32[2,3,32] = mul(%w, %n)\n"
    "  return %y\n"
    "}\n"
)


@pytest.mark.parametrize("before,extra_consts",
                         [(LLAMA_RMS_NORM, ""), (TORCH_ONNX_RMS_NORM, "  const %two: f32[] = 2.0\n")],
                         ids=["hf_llama", "torch_onnx"])
def test_rms_norm_from_decomposed_forms_takes_its_weight(before, extra_consts) -> None:
    _, ctx = check_rewrite(recognize(), before, (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %w: f32[32]\n"
        f"{extra_consts}"
        "  const %eps: f32[] = 9.999999974752427e-07\n"
        "  %y: f32[2,3,32] = rms_norm(%x, %w) {axis=2, eps=9.999999974752427e-07}\n"
        "  return %y\n"
        "}\n"
    ), weights(0, w=(32,)))
    assert ctx.log == ["recognize_decomposed: rms_norm_absorbs_weight x1, rms_norm_from_rsqrt_of_mean_square x1"]


def test_rms_norm_in_bf16_keeps_the_casts_and_the_weight_multiply() -> None:
    # HF computes the norm in f32 and multiplies by the bf16 weight after rounding back: the casts
    # and the multiply stay (fusion puts them in the norm's group), only the f32 core is one op.
    import ml_dtypes

    w = np.random.default_rng(1).standard_normal(32).astype(ml_dtypes.bfloat16)
    check_rewrite(recognize(), (
        "graph main(%x: bf16[4,32]) {\n"
        "  const %w: bf16[32]\n"
        "  const %two: f32[] = 2.0\n"
        "  const %eps: f32[] = 9.999999747378752e-06\n"
        "  %x32: f32[4,32] = cast(%x) {to=f32}\n"
        "  %sq: f32[4,32] = pow(%x32, %two)\n"
        "  %ms: f32[4,1] = mean(%sq) {axes=[-1], keepdims=true}\n"
        "  %v: f32[4,1] = add(%eps, %ms)\n"
        "  %s: f32[4,1] = sqrt(%v)\n"
        "  %n: f32[4,32] = div(%x32, %s)\n"
        "  %nb: bf16[4,32] = cast(%n) {to=bf16}\n"
        "  %y: bf16[4,32] = mul(%w, %nb)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: bf16[4,32]) {\n"
        "  const %w: bf16[32]\n"
        "  const %two: f32[] = 2.0\n"
        "  const %eps: f32[] = 9.999999747378752e-06\n"
        "  %x32: f32[4,32] = cast(%x) {to=f32}\n"
        "  %n: f32[4,32] = rms_norm(%x32) {axis=1, eps=9.999999747378752e-06}\n"
        "  %nb: bf16[4,32] = cast(%n) {to=bf16}\n"
        "  %y: bf16[4,32] = mul(%w, %nb)\n"
        "  return %y\n"
        "}\n"
    ), {"w": w}, rtol=1e-2, atol=1e-2)


def test_a_mean_over_a_leading_axis_is_not_an_rms_norm() -> None:
    text = (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %eps: f32[] = 9.999999974752427e-07\n"
        "  %sq: f32[2,3,32] = mul(%x, %x)\n"
        "  %ms: f32[2,1,32] = mean(%sq) {axes=[1], keepdims=true}\n"
        "  %v: f32[2,1,32] = add(%ms, %eps)\n"
        "  %r: f32[2,1,32] = rsqrt(%v)\n"
        "  %n: f32[2,3,32] = mul(%x, %r)\n"
        "  return %n\n"
        "}\n"
    )
    check_rewrite(recognize(), text, text)


def test_layer_norm_from_mean_and_variance_takes_weight_and_bias() -> None:
    _, ctx = check_rewrite(recognize(), (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %w: f32[32]\n"
        "  const %b: f32[32]\n"
        "  const %eps: f32[] = 9.999999747378752e-06\n"
        "  %mu: f32[2,3,1] = mean(%x) {axes=[2], keepdims=true}\n"
        "  %c: f32[2,3,32] = sub(%x, %mu)\n"
        "  %c2: f32[2,3,32] = mul(%c, %c)\n"
        "  %var: f32[2,3,1] = mean(%c2) {axes=[2], keepdims=true}\n"
        "  %ve: f32[2,3,1] = add(%var, %eps)\n"
        "  %sd: f32[2,3,1] = sqrt(%ve)\n"
        "  %n: f32[2,3,32] = div(%c, %sd)\n"
        "  %nw: f32[2,3,32] = mul(%n, %w)\n"
        "  %y: f32[2,3,32] = add(%nw, %b)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %w: f32[32]\n"
        "  const %b: f32[32]\n"
        "  const %eps: f32[] = 9.999999747378752e-06\n"
        "  %y: f32[2,3,32] = layer_norm(%x, %w, %b) {axis=2, eps=9.999999747378752e-06}\n"
        "  return %y\n"
        "}\n"
    ), weights(2, w=(32,), b=(32,)))
    assert ctx.log == ["recognize_decomposed: layer_norm_absorbs_bias x1, layer_norm_absorbs_weight x1, "
                       "layer_norm_from_mean_and_variance x1"]


def test_softmax_from_exp_over_sum_with_and_without_the_max() -> None:
    check_rewrite(recognize(), (
        "graph main(%x: f32[3,5]) {\n"
        "  %m: f32[3,1] = max(%x) {axes=[1], keepdims=true}\n"
        "  %d: f32[3,5] = sub(%x, %m)\n"
        "  %e: f32[3,5] = exp(%d)\n"
        "  %s: f32[3,1] = sum(%e) {axes=[-1], keepdims=true}\n"
        "  %y: f32[3,5] = div(%e, %s)\n"
        "  %e2: f32[3,5] = exp(%x)\n"
        "  %s2: f32[3,5] = sum(%e2) {axes=[0], keepdims=true}\n"
        "  %r2: f32[3,5] = reciprocal(%s2)\n"
        "  %z: f32[3,5] = mul(%r2, %e2)\n"
        "  return %y, %z\n"
        "}\n"
    ).replace("%s2: f32[3,5] = sum", "%s2: f32[1,5] = sum").replace("%r2: f32[3,5]", "%r2: f32[1,5]"), (
        "graph main(%x: f32[3,5]) {\n"
        "  %y: f32[3,5] = softmax(%x) {axis=1}\n"
        "  %z: f32[3,5] = softmax(%x) {axis=0}\n"
        "  return %y, %z\n"
        "}\n"
    ))


def test_a_max_over_another_axis_is_an_ordinary_subtraction_before_the_softmax() -> None:
    # exp(d) / sum(exp(d)) is softmax(d) whatever d is; the max only stabilizes when it is taken
    # over the softmax axis, so here it stays as part of d
    check_rewrite(recognize(), (
        "graph main(%x: f32[3,5]) {\n"
        "  %m: f32[1,5] = max(%x) {axes=[0], keepdims=true}\n"
        "  %d: f32[3,5] = sub(%x, %m)\n"
        "  %e: f32[3,5] = exp(%d)\n"
        "  %s: f32[3,1] = sum(%e) {axes=[1], keepdims=true}\n"
        "  %y: f32[3,5] = div(%e, %s)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[3,5]) {\n"
        "  %m: f32[1,5] = max(%x) {axes=[0], keepdims=true}\n"
        "  %d: f32[3,5] = sub(%x, %m)\n"
        "  %y: f32[3,5] = softmax(%d) {axis=1}\n"
        "  return %y\n"
        "}\n"
    ))


def test_torch_bmm_decomposition_becomes_one_batched_matmul() -> None:
    check_rewrite(recognize(), (
        "graph main(%a: f32[2,3,4,5], %b: f32[2,1,5,6]) {\n"
        "  %ae: f32[2,3,4,5] = expand(%a) {shape=[2, 3, 4, 5]}\n"
        "  %af: f32[6,4,5] = reshape(%ae) {shape=[6, 4, 5]}\n"
        "  %be: f32[2,3,5,6] = expand(%b) {shape=[2, 3, 5, 6]}\n"
        "  %bf: f32[6,5,6] = reshape(%be) {shape=[6, 5, 6]}\n"
        "  %mm: f32[6,4,6] = matmul(%af, %bf)\n"
        "  %y: f32[2,3,4,6] = reshape(%mm) {shape=[2, 3, 4, 6]}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%a: f32[2,3,4,5], %b: f32[2,1,5,6]) {\n"
        "  %y: f32[2,3,4,6] = matmul(%a, %b)\n"
        "  return %y\n"
        "}\n"
    ))


def test_a_flattening_that_mixes_batch_dims_is_left_alone() -> None:
    # [3, 2] batches flattened, unflattened as [2, 3]: not the same matmul
    text = (
        "graph main(%a: f32[3,2,4,5], %b: f32[3,2,5,6]) {\n"
        "  %af: f32[6,4,5] = reshape(%a) {shape=[6, 4, 5]}\n"
        "  %bf: f32[6,5,6] = reshape(%b) {shape=[6, 5, 6]}\n"
        "  %mm: f32[6,4,6] = matmul(%af, %bf)\n"
        "  %y: f32[2,3,4,6] = reshape(%mm) {shape=[2, 3, 4, 6]}\n"
        "  return %y\n"
        "}\n"
    )
    check_rewrite(recognize(), text, text)


EAGER_ATTENTION = (
    "graph main(%q: f32[2,4,6,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8], %mask: f32[2,1,6,6]) {\n"
    "  const %scale: f32[] = 0.3535533845424652\n"
    "  %kt: f32[2,4,8,6] = transpose(%k) {perm=[0, 1, 3, 2]}\n"
    "  %qk: f32[2,4,6,6] = matmul(%q, %kt)\n"
    "  %s: f32[2,4,6,6] = mul(%qk, %scale)\n"
    "  %l: f32[2,4,6,6] = add(%s, %mask)\n"
    "  %p: f32[2,4,6,6] = softmax(%l) {axis=-1}\n"
    "  %o: f32[2,4,6,8] = matmul(%p, %v)\n"
    "  return %o\n"
    "}\n"
)


def test_sdpa_from_matmul_scale_mask_softmax_matmul() -> None:
    check_rewrite(recognize(), EAGER_ATTENTION, (
        "graph main(%q: f32[2,4,6,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8], %mask: f32[2,1,6,6]) {\n"
        "  const %scale: f32[] = 0.3535533845424652\n"
        "  %o: f32[2,4,6,8] = sdpa(%q, %k, %v, %mask) {causal=false, scale=0.3535533845424652}\n"
        "  return %o\n"
        "}\n"
    ))


def _attendable_masks(graph, rng):
    """Random inputs whose bool masks leave every query row something to attend to (where all
    keys are masked, the decomposed form gives NaN and sdpa zeros)."""
    inputs = random_inputs(graph, rng)
    for i, v in enumerate(graph.inputs):
        if v.type.dtype.name == "bool":
            inputs[i][..., 0] = True
    return inputs


def test_sdpa_from_a_where_mask_a_divisor_and_casts_around_the_softmax() -> None:
    check_rewrite(recognize(), (
        "graph main(%q: f32[1,2,5,4], %kt: f32[1,2,4,7], %v: f32[1,2,7,3], %keep: bool[1,1,5,7]) {\n"
        "  const %d: f32[] = 2.0\n"
        "  const %fill: f32[] = -inf\n"
        "  %qk: f32[1,2,5,7] = matmul(%q, %kt)\n"
        "  %s: f32[1,2,5,7] = div(%qk, %d)\n"
        "  %l: f32[1,2,5,7] = where(%keep, %s, %fill)\n"
        "  %l64: f64[1,2,5,7] = cast(%l) {to=f64}\n"
        "  %p64: f64[1,2,5,7] = softmax(%l64) {axis=3}\n"
        "  %p: f32[1,2,5,7] = cast(%p64) {to=f32}\n"
        "  %o: f32[1,2,5,3] = matmul(%p, %v)\n"
        "  return %o\n"
        "}\n"
    ), (
        "graph main(%q: f32[1,2,5,4], %kt: f32[1,2,4,7], %v: f32[1,2,7,3], %keep: bool[1,1,5,7]) {\n"
        "  const %d: f32[] = 2.0\n"
        "  const %fill: f32[] = -inf\n"
        "  %1: f32[1,2,7,4] = transpose(%kt) {perm=[0, 1, 3, 2]}\n"
        "  %o: f32[1,2,5,3] = sdpa(%q, %1, %v, %keep) {causal=false, scale=0.5}\n"
        "  return %o\n"
        "}\n"
    ), make_inputs=_attendable_masks)


def test_a_mild_where_penalty_is_not_a_mask() -> None:
    text = (
        "graph main(%q: f32[1,1,3,4], %kt: f32[1,1,4,3], %v: f32[1,1,3,4], %keep: bool[1,1,3,3]) {\n"
        "  const %fill: f32[] = -1.0\n"
        "  %qk: f32[1,1,3,3] = matmul(%q, %kt)\n"
        "  %l: f32[1,1,3,3] = where(%keep, %qk, %fill)\n"
        "  %p: f32[1,1,3,3] = softmax(%l) {axis=3}\n"
        "  %o: f32[1,1,3,4] = matmul(%p, %v)\n"
        "  return %o\n"
        "}\n"
    )
    check_rewrite(recognize(), text, text)


def test_repeat_kv_folds_into_sdpa_grouped_query_heads() -> None:
    check_rewrite(recognize(), (
        "graph main(%q: f32[1,4,5,8], %k: f32[1,2,5,8], %v: f32[1,2,5,8]) {\n"
        "  %ku: f32[1,2,1,5,8] = unsqueeze(%k) {axes=[2]}\n"
        "  %ke: f32[1,2,2,5,8] = expand(%ku) {shape=[1, 2, 2, 5, 8]}\n"
        "  %kr: f32[1,4,5,8] = reshape(%ke) {shape=[1, 4, 5, 8]}\n"
        "  %vu: f32[1,2,1,5,8] = reshape(%v) {shape=[1, 2, 1, 5, 8]}\n"
        "  %ve: f32[1,2,2,5,8] = expand(%vu) {shape=[1, 2, 2, 5, 8]}\n"
        "  %vr: f32[1,4,5,8] = reshape(%ve) {shape=[1, 4, 5, 8]}\n"
        "  %o: f32[1,4,5,8] = sdpa(%q, %kr, %vr) {causal=true, scale=null}\n"
        "  return %o\n"
        "}\n"
    ), (
        "graph main(%q: f32[1,4,5,8], %k: f32[1,2,5,8], %v: f32[1,2,5,8]) {\n"
        "  %o: f32[1,4,5,8] = sdpa(%q, %k, %v) {causal=true, scale=null}\n"
        "  return %o\n"
        "}\n"
    ))


def test_a_head_interleaving_repeat_is_not_repeat_kv() -> None:
    # expand on axis 1 ([B, r, H, S, D]) repeats the whole head block: kv head h serves query heads
    # h, h+H, ... which is not sdpa's grouping, so the broadcast must stay
    text = (
        "graph main(%q: f32[1,4,5,8], %k: f32[1,2,5,8], %v: f32[1,4,5,8]) {\n"
        "  %ku: f32[1,1,2,5,8] = unsqueeze(%k) {axes=[1]}\n"
        "  %ke: f32[1,2,2,5,8] = expand(%ku) {shape=[1, 2, 2, 5, 8]}\n"
        "  %kr: f32[1,4,5,8] = reshape(%ke) {shape=[1, 4, 5, 8]}\n"
        "  %o: f32[1,4,5,8] = sdpa(%q, %kr, %v) {causal=false, scale=null}\n"
        "  return %o\n"
        "}\n"
    )
    check_rewrite(recognize(), text, text)


def test_noop_expand_is_dropped() -> None:
    check_rewrite(recognize(), (
        "graph main(%x: f32[2,3]) {\n"
        "  %e: f32[2,3] = expand(%x) {shape=[2, -1]}\n"
        "  %b: f32[4,2,3] = expand(%x) {shape=[4, 2, 3]}\n"
        "  %y: f32[4,2,3] = add(%e, %b)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3]) {\n"
        "  %b: f32[4,2,3] = expand(%x) {shape=[4, 2, 3]}\n"
        "  %y: f32[4,2,3] = add(%x, %b)\n"
        "  return %y\n"
        "}\n"
    ))


def test_rules_reach_a_fixpoint_and_a_second_run_changes_nothing() -> None:
    graph = parse(LLAMA_RMS_NORM, weights(0, w=(32,)))
    ctx = PassContext(debug=0)
    once = RecognizeDecomposed().run(graph, ctx)
    text = print_graph(once)
    again = RecognizeDecomposed().run(once, ctx)
    assert print_graph(again) == text
