"""Layout canonicalization: one spelling per GEMM, weights in the backend's layout, view chains
merged, batch norms folded into convs. Golden IR before and after, same outputs on random inputs."""

from __future__ import annotations

import numpy as np
from graphs import check_rewrite, parse, weights

from qjc.backends.base import Capabilities
from qjc.passes.layout import LayoutCanonicalization


def layout() -> list:
    return [LayoutCanonicalization()]


def kn_backend() -> Capabilities:
    return Capabilities(ops={"*"}, dtypes={"*"}, layouts={"weights": "kn"})


def test_matmul_by_a_transposed_weight_is_a_linear() -> None:
    check_rewrite(layout(), (
        "graph main(%x: f32[3,5,32], %w: f32[24,32]) {\n"
        "  %wt: f32[32,24] = transpose(%w) {perm=[1, 0]}\n"
        "  %y: f32[3,5,24] = matmul(%x, %wt)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[3,5,32], %w: f32[24,32]) {\n"
        "  %y: f32[3,5,24] = linear(%x, %w)\n"
        "  return %y\n"
        "}\n"
    ))


def test_a_constant_kn_weight_is_pretransposed_for_linear_and_back_for_a_kn_backend() -> None:
    text = (
        "graph main(%x: f32[6,32]) {\n"
        "  const %w: f32[32,24]\n"
        "  %y: f32[6,24] = matmul(%x, %w)\n"
        "  return %y\n"
        "}\n"
    )
    consts = weights(3, w=(32, 24))
    after, ctx = check_rewrite(layout(), text, (
        "graph main(%x: f32[6,32]) {\n"
        "  const %w: f32[32,24]\n"
        "  const %w.T: f32[24,32]\n"
        "  %y: f32[6,24] = linear(%x, %w.T)\n"
        "  return %y\n"
        "}\n"
    ), consts)
    np.testing.assert_array_equal(after.constants["w.T"].data, consts["w"].T)
    assert after.constants["w.T"].data.flags["C_CONTIGUOUS"]
    # a backend that reads [K, N] weights keeps the matmul
    check_rewrite(layout(), text, text, consts, capabilities=kn_backend())


def test_a_kn_backend_gets_linear_weights_pretransposed_and_quantized_or_runtime_weights_stay() -> None:
    check_rewrite(layout(), (
        "graph main(%x: f32[6,32], %rw: f32[24,32]) {\n"
        "  const %w: f32[24,32]\n"
        "  %y: f32[6,24] = linear(%x, %w)\n"
        "  %z: f32[6,24] = linear(%x, %rw)\n"
        "  return %y, %z\n"
        "}\n"
    ), (
        "graph main(%x: f32[6,32], %rw: f32[24,32]) {\n"
        "  const %w: f32[24,32]\n"
        "  const %w.T: f32[32,24]\n"
        "  %z: f32[6,24] = linear(%x, %rw)\n"
        "  %y: f32[6,24] = matmul(%x, %w.T)\n"
        "  return %y, %z\n"
        "}\n"
    ), weights(4, w=(24, 32)), capabilities=kn_backend())


def test_a_kn_backend_gets_linear_weights_pretransposed_and_the_bias_as_an_add() -> None:
    check_rewrite(layout(), (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %w: f32[24,32]\n"
        "  const %b: f32[24]\n"
        "  %y: f32[2,3,24] = linear(%x, %w, %b)\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,32]) {\n"
        "  const %w: f32[24,32]\n"
        "  const %b: f32[24]\n"
        "  const %w.T: f32[32,24]\n"
        "  %1: f32[2,3,24] = matmul(%x, %w.T)\n"
        "  %y: f32[2,3,24] = add(%1, %b)\n"
        "  return %y\n"
        "}\n"
    ), weights(4, w=(24, 32), b=(24,)), capabilities=kn_backend())


def test_a_bias_add_joins_the_linear_but_a_broadcast_add_does_not() -> None:
    check_rewrite(layout(), (
        "graph main(%x: f32[2,3,32], %w: f32[24,32], %b: f32[24], %r: f32[3,24]) {\n"
        "  %l: f32[2,3,24] = linear(%x, %w)\n"
        "  %y: f32[2,3,24] = add(%b, %l)\n"
        "  %l2: f32[2,3,24] = linear(%x, %w)\n"
        "  %z: f32[2,3,24] = add(%l2, %r)\n"
        "  return %y, %z\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,32], %w: f32[24,32], %b: f32[24], %r: f32[3,24]) {\n"
        "  %l2: f32[2,3,24] = linear(%x, %w)\n"
        "  %z: f32[2,3,24] = add(%l2, %r)\n"
        "  %y: f32[2,3,24] = linear(%x, %w, %b)\n"
        "  return %y, %z\n"
        "}\n"
    ))


def test_gpt2_conv1d_becomes_a_linear_on_unflattened_rows() -> None:
    # GPT-2's Conv1D: view(-1, K) -> addmm(bias, x, W[K, N]) -> view(*lead, N)
    _, ctx = check_rewrite(layout(), (
        "graph main(%x: f32[2,5,32]) {\n"
        "  const %w: f32[32,48]\n"
        "  const %b: f32[48]\n"
        "  %flat: f32[10,32] = reshape(%x) {shape=[-1, 32]}\n"
        "  %mm: f32[10,48] = matmul(%flat, %w)\n"
        "  %mb: f32[10,48] = add(%mm, %b)\n"
        "  %y: f32[2,5,48] = reshape(%mb) {shape=[2, 5, 48]}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,5,32]) {\n"
        "  const %w: f32[32,48]\n"
        "  const %b: f32[48]\n"
        "  const %w.T: f32[48,32]\n"
        "  %y: f32[2,5,48] = linear(%x, %w.T, %b)\n"
        "  return %y\n"
        "}\n"
    ), weights(5, w=(32, 48), b=(48,)))
    assert ctx.log == ["layout: biased_gemm_on_rows_without_flattening x1, drop_noop_reshape x1, "
                       "linear_absorbs_bias_add x1, linear_from_matmul_by_constant_weight x1"]


def test_rows_flattened_from_another_shape_are_reshaped_to_the_output_rows() -> None:
    # attention output [B, S, H, D] flattened to [B*S, H*D]: the rows become [B, S] directly
    check_rewrite(layout(), (
        "graph main(%a: f32[2,5,4,8], %w: f32[16,32]) {\n"
        "  %flat: f32[10,32] = reshape(%a) {shape=[-1, 32]}\n"
        "  %l: f32[10,16] = linear(%flat, %w)\n"
        "  %y: f32[2,5,16] = reshape(%l) {shape=[2, 5, 16]}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%a: f32[2,5,4,8], %w: f32[16,32]) {\n"
        "  %1: f32[2,5,32] = reshape(%a) {shape=[2, 5, 32]}\n"
        "  %y: f32[2,5,16] = linear(%1, %w)\n"
        "  return %y\n"
        "}\n"
    ))


def test_a_gemm_whose_flat_result_is_also_used_keeps_its_shape() -> None:
    text = (
        "graph main(%x: f32[2,5,32], %w: f32[16,32]) {\n"
        "  %flat: f32[10,32] = reshape(%x) {shape=[-1, 32]}\n"
        "  %l: f32[10,16] = linear(%flat, %w)\n"
        "  %y: f32[2,5,16] = reshape(%l) {shape=[2, 5, 16]}\n"
        "  return %y, %l\n"
        "}\n"
    )
    check_rewrite(layout(), text, text)


def test_view_chains_become_one_reshape_and_canonicalization_runs_with_them() -> None:
    check_rewrite(layout(), (
        "graph main(%x: f32[2,3,4]) {\n"
        "  %u: f32[2,1,3,4] = unsqueeze(%x) {axes=[1]}\n"
        "  %f: f32[2,12] = flatten(%u) {axis=1}\n"
        "  %c: f32[2,12] = cast(%f) {to=f32}\n"
        "  %s: f32[2,12,1] = unsqueeze(%c) {axes=[2]}\n"
        "  %y: f32[24] = reshape(%s) {shape=[24]}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,4]) {\n"
        "  %y: f32[24] = reshape(%x) {shape=[24]}\n"
        "  return %y\n"
        "}\n"
    ))


def _conv_bn_constants(seed: int, bias: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    consts = {"w": rng.standard_normal((20, 3, 3, 3)).astype(np.float32),
              "scale": (rng.random(20) + 0.5).astype(np.float32),
              "shift": rng.standard_normal(20).astype(np.float32),
              "mean": rng.standard_normal(20).astype(np.float32),
              "var": (rng.random(20) + 0.5).astype(np.float32)}
    if bias:
        consts["cb"] = rng.standard_normal(20).astype(np.float32)
    return consts


def test_batch_norm_folds_into_a_conv_with_and_without_bias() -> None:
    after, _ = check_rewrite(layout(), (
        "graph main(%x: f32[2,3,8,8]) {\n"
        "  const %w: f32[20,3,3,3]\n"
        "  const %scale: f32[20]\n"
        "  const %shift: f32[20]\n"
        "  const %mean: f32[20]\n"
        "  const %var: f32[20]\n"
        "  %c: f32[2,20,6,6] = conv2d(%x, %w) {strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1}\n"
        "  %y: f32[2,20,6,6] = batch_norm(%c, %scale, %shift, %mean, %var) {eps=0.001}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[2,3,8,8]) {\n"
        "  const %w: f32[20,3,3,3]\n"
        "  const %scale: f32[20]\n"
        "  const %shift: f32[20]\n"
        "  const %mean: f32[20]\n"
        "  const %var: f32[20]\n"
        "  const %w.bn: f32[20,3,3,3]\n"
        "  const %shift.bn: f32[20]\n"
        "  %y: f32[2,20,6,6] = conv2d(%x, %w.bn, %shift.bn) "
        "{strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1}\n"
        "  return %y\n"
        "}\n"
    ), _conv_bn_constants(6, bias=False), rtol=1e-4, atol=1e-5)
    # the folded bias, by an independent formula
    c = _conv_bn_constants(6, bias=False)
    want = c["shift"] - c["mean"] * c["scale"] / np.sqrt(c["var"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(after.constants["shift.bn"].data, want, rtol=1e-6)

    check_rewrite(layout(), (
        "graph main(%x: f32[1,3,5,5]) {\n"
        "  const %w: f32[20,3,3,3]\n"
        "  const %cb: f32[20]\n"
        "  const %scale: f32[20]\n"
        "  const %shift: f32[20]\n"
        "  const %mean: f32[20]\n"
        "  const %var: f32[20]\n"
        "  %c: f32[1,20,5,5] = conv2d(%x, %w, %cb) {strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1}\n"
        "  %y: f32[1,20,5,5] = batch_norm(%c, %scale, %shift, %mean, %var) {eps=1e-05}\n"
        "  return %y\n"
        "}\n"
    ), (
        "graph main(%x: f32[1,3,5,5]) {\n"
        "  const %w: f32[20,3,3,3]\n"
        "  const %cb: f32[20]\n"
        "  const %scale: f32[20]\n"
        "  const %shift: f32[20]\n"
        "  const %mean: f32[20]\n"
        "  const %var: f32[20]\n"
        "  const %w.bn: f32[20,3,3,3]\n"
        "  const %cb.bn: f32[20]\n"
        "  %y: f32[1,20,5,5] = conv2d(%x, %w.bn, %cb.bn) "
        "{strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1}\n"
        "  return %y\n"
        "}\n"
    ), _conv_bn_constants(7, bias=True), rtol=1e-4, atol=1e-5)


def test_a_batch_norm_with_runtime_statistics_or_a_shared_conv_stays() -> None:
    text = (
        "graph main(%x: f32[1,3,5,5], %mean: f32[20]) {\n"
        "  const %w: f32[20,3,3,3]\n"
        "  const %scale: f32[20]\n"
        "  const %shift: f32[20]\n"
        "  const %var: f32[20]\n"
        "  %c: f32[1,20,3,3] = conv2d(%x, %w) {strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1}\n"
        "  %y: f32[1,20,3,3] = batch_norm(%c, %scale, %shift, %mean, %var) {eps=1e-05}\n"
        "  %c2: f32[1,20,3,3] = conv2d(%x, %w) {strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1}\n"
        "  %z: f32[1,20,3,3] = batch_norm(%c2, %scale, %shift, %var, %var) {eps=1e-05}\n"
        "  return %y, %z, %c2\n"
        "}\n"
    )
    consts = {k: v for k, v in _conv_bn_constants(8, bias=False).items() if k != "mean"}
    check_rewrite(layout(), text, text, consts, rtol=1e-4, atol=1e-5)


def test_layout_rules_reach_a_fixpoint() -> None:
    graph = parse((
        "graph main(%x: f32[2,5,32]) {\n"
        "  const %w: f32[32,48]\n"
        "  %flat: f32[10,32] = reshape(%x) {shape=[-1, 32]}\n"
        "  %mm: f32[10,48] = matmul(%flat, %w)\n"
        "  %y: f32[2,5,48] = reshape(%mm) {shape=[2, 5, 48]}\n"
        "  return %y\n"
        "}\n"
    ), weights(9, w=(32, 48)))
    from qjc.ir.printer import print_graph
    from qjc.passes.manager import PassContext

    once = print_graph(LayoutCanonicalization().run(graph, PassContext(debug=0)))
    assert print_graph(LayoutCanonicalization().run(graph, PassContext(debug=0))) == once
