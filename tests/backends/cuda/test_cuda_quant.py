"""Quantized linear weights on cuda (option quant_kernels): int8 / int4 / fp8 codes dequantized in
registers by the GEMV and the CUDA-core GEMM. The build test runs anywhere nvcc is; the numeric
tests need a GPU (marker ``cuda``) and compare with numpy float64 on the dequantized weights."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.backends.cuda.nvcc import find_nvcc
from qjc.ir import Graph
from qjc.ir.dtypes import QuantScheme, f16, f32
from qjc.ir.quant import dequantize, quantize
from qjc.ir.types import parse_type

SCHEMES = [
    QuantScheme(8, 0, True, f16),  # int8 per output channel
    QuantScheme(4, 32, False, f16, "float"),  # GGUF Q4_1 / --quant int4
    QuantScheme(4, 32, True, f16),  # GGUF Q4_0
    QuantScheme(4, 64, False, f16, "int"),  # zero points
    QuantScheme(8, 32, True, f16),  # GGUF Q8_0
    QuantScheme(4, 16, False, f16, "int"),  # groups of 16: half of 16 code bytes, never the 16-byte GEMV
    QuantScheme(8, 0, True, f32, codes="e4m3"),  # --quant fp8 weights
]
# (N, K) of the linears every numeric test runs: whole 16-byte chunks of codes, and few columns with a
# long K (the GEMV splits K)
SHAPES = [(72, 256), (24, 4096)]
# the norm-prologue test's linears: K within NORM_PROLOGUE_MAX_K (plan.py), the long one split along K (its
# partial sums carry the squares)
NORM_SHAPES = [(72, 256), (24, 1024)]
ROWS = (1, 5, 17, 32, 40)  # one-row GEMV, up to 8 rows, 8-row chunks of the 16-byte GEMV, CUDA-core GEMM


def _codes_per_16_bytes(scheme: QuantScheme) -> int:
    return 32 if scheme.bits == 4 else 16


def _fallback_k(scheme: QuantScheme) -> int | None:
    """A K the scheme allows whose rows are not whole 16-byte chunks of codes in one scale group each
    (so the 16-byte GEMV cannot take it); None where every K the scheme allows is such chunks."""
    epl, group = _codes_per_16_bytes(scheme), scheme.group_size
    if group == 0:
        return epl + 8
    return 3 * group if group % epl else None


def _graph(scheme: QuantScheme, shapes, rng, norm_eps: float | None = None
           ) -> tuple[Graph, list[np.ndarray], list[np.ndarray]]:
    """Independent linears x_i [m, K_i] -> [m, N_i]; their float64 weights and biases. With
    ``norm_eps``, each x_i first goes through an RMSNorm without weight (which the GEMM applies to A
    as it loads it)."""
    g = Graph("qlinear")
    g.add_symbol("m", 1, 64)
    outs, weights, biases = [], [], []
    for i, (n, k) in enumerate(shapes):
        x = g.add_input(f"x{i}", parse_type(f"f32[m,{k}]"))
        if norm_eps is not None:
            x = g.op("rms_norm", x, eps=norm_eps)
        w = quantize(rng.standard_normal((n, k)), scheme)
        bias = rng.standard_normal(n).astype(np.float32)
        outs.append(g.op("linear", x, g.add_constant(f"w{i}", w, w.type), g.add_constant(f"bias{i}", bias)))
        weights.append(dequantize(w, np.float64))
        biases.append(bias.astype(np.float64))
    g.set_outputs(*outs)
    return g, weights, biases


def _sources(out) -> str:
    return "".join(p.read_text() for p in (out / "cuda" / "src").glob("kernels_*.cu"))


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_quantized_weights_stay_quantized_and_build(tmp_path):
    import json

    import qjc

    rng = np.random.default_rng(0)
    for scheme in SCHEMES[:2] + SCHEMES[-1:]:
        g, _, _ = _graph(scheme, [(24, 128)], rng)
        out = tmp_path / f"{scheme.name}.qjc"
        qjc.api.build(g, out, target="cuda", archs=("sm_80", "sm_90a"), dtype="bf16", quant_kernels=True)
        plan = json.loads((out / "cuda" / "plan.json").read_text())
        names = {b["name"]: b["dtype"] for b in plan["buffers"] if b["kind"] == "weight"}
        assert names["w0"] == "u8" and names["w0::scales"] == scheme.scale_dtype.name
        src = _sources(out)
        assert "wq_load" in src and "gemv_q" in src  # K = 128: whole 16-byte chunks of codes
        off = tmp_path / f"{scheme.name}.float.qjc"  # without the option: expanded at compile time
        qjc.api.build(g, off, target="cuda", archs=("sm_90a",), dtype="bf16")
        plan = json.loads((off / "cuda" / "plan.json").read_text())
        assert not any(b["dtype"] == "u8" for b in plan["buffers"] if b["kind"] == "weight")


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_tensor_core_gemv_only_where_it_applies(tmp_path):
    """gemv_mma needs f16 / bf16 activations, 4-bit integer codes, groups that hold whole rounds of 32 codes
    and an output at least GEMV_MMA_MIN_N wide (where it measured faster); everything else keeps gemv_q."""
    import qjc
    from qjc.backends.cuda.kernels.gemm import GEMV_MMA_MIN_N

    rng = np.random.default_rng(0)
    wide, int4 = GEMV_MMA_MIN_N + 8, QuantScheme(4, 64, False, f16, "float")
    cases = [(QuantScheme(4, 32, False, f16, "float"), "fp16", wide, None, True),
             (QuantScheme(4, 0, True, f16), "bf16", wide, None, True),
             (int4, "bf16", wide, 1e-5, True),  # with the RMSNorm prologue (K <= 1024)
             (int4, "fp32", wide, None, False),
             (int4, "bf16", 24, None, False),
             (QuantScheme(8, 0, True, f16), "bf16", wide, None, False)]
    for i, (scheme, dtype, n, eps, mma) in enumerate(cases):
        g, _, _ = _graph(scheme, [(n, 128)], rng, norm_eps=eps)
        out = tmp_path / f"{i}.qjc"
        qjc.api.build(g, out, target="cuda", archs=("sm_90a",), dtype=dtype, quant_kernels=True)
        src = _sources(out)
        assert "gemv_q<" in src and ("gemv_mma<" in src) == mma, (scheme.name, dtype, n, eps)


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_rows_of_partial_16_byte_chunks_build_without_the_16_byte_gemv(tmp_path):
    import qjc

    scheme = QuantScheme(4, 16, False, f16, "int")
    g, _, _ = _graph(scheme, [(24, _fallback_k(scheme))], np.random.default_rng(0))
    out = tmp_path / "q.qjc"
    qjc.api.build(g, out, target="cuda", archs=("sm_80", "sm_90a"), dtype="fp32", quant_kernels=True)
    src = _sources(out)
    assert "wq_load" in src and "gemv_q" not in src


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", SCHEMES, ids=[s.name for s in SCHEMES])
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 2e-2), ("fp16", 4e-3)])
def test_quantized_linear_matches_float64(tmp_path, scheme, dtype, tol):
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    rng = np.random.default_rng()
    fallback = _fallback_k(scheme)
    shapes = SHAPES + ([(40, fallback)] if fallback else [])
    g, weights, biases = _graph(scheme, shapes, rng)
    engine = qjc.compile(g, target="cuda", archs=(arch_of_capability(*torch.cuda.get_device_capability()),),
                         dtype=dtype, quant_kernels=True, out_dir=tmp_path / "q.qjc")
    for m in ROWS:
        xs = [rng.standard_normal((m, k)).astype(np.float32) for _, k in shapes]
        got = engine(*xs)
        for (n, k), x, w, bias, y in zip(shapes, xs, weights, biases, got):
            want = x.astype(np.float64) @ w.T + bias
            err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
            assert err < tol, f"M={m} N={n} K={k}: relative error {err:.2e}"


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_fp8_mode_builds_with_quantized_kernels(tmp_path):
    """--quant fp8 on cuda keeps e4m3 weights for the GEMV; activations stay in float there (cuda has
    no quantize / dequantize lowering), with a note, instead of a build that fails on those ops."""
    import json

    import qjc

    rng = np.random.default_rng()
    g = Graph("fp8_linear")
    x = g.add_input("x", parse_type("f32[3,64]"))
    g.set_outputs(g.op("linear", x, g.add_constant("fc1.weight", rng.standard_normal((96, 64)).astype(np.float32))))
    out = tmp_path / "fp8.qjc"
    result = qjc.api.build(g, out, target="cuda", archs=("sm_90a",), dtype="bf16", quant="fp8", quant_kernels=True)
    plan = json.loads((out / "cuda" / "plan.json").read_text())
    assert {b["dtype"] for b in plan["buffers"] if b["name"] == "fc1.weight.f8e4m3c_f32"} == {"u8"}
    assert any("activations stay in float" in n for n in result.notes)


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", [SCHEMES[0], SCHEMES[1], SCHEMES[-1]], ids=lambda s: s.name)
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_quantized_linear_after_rms_norm_matches_float64(tmp_path, scheme, dtype, tol):
    """The RMSNorm in front of a quantized linear is the GEMM's prologue (no kernel of its own), on every
    path: 16-byte GEMV for one row and 8-row chunks, CUDA-core GEMM on a stored normalized A for more."""
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    rng = np.random.default_rng()
    g, weights, biases = _graph(scheme, NORM_SHAPES, rng, norm_eps=1e-5)
    out = tmp_path / "q.qjc"
    engine = qjc.compile(g, target="cuda", archs=(arch_of_capability(*torch.cuda.get_device_capability()),),
                         dtype=dtype, quant_kernels=True, out_dir=out)
    assert "norm_rows" in _sources(out) and "row_reduce" not in engine.manifest["backend"]["kernel_kinds"]
    for m in ROWS:
        xs = [rng.standard_normal((m, k)).astype(np.float32) * 3 for _, k in NORM_SHAPES]
        got = engine(*xs)
        for (n, k), x, w, bias, y in zip(NORM_SHAPES, xs, weights, biases, got):
            x64 = x.astype(np.float64)
            x64 = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-5)
            want = x64 @ w.T + bias
            err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
            assert err < tol, f"M={m} N={n} K={k}: relative error {err:.2e}"


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", [QuantScheme(4, 64, False, f16, "float"), QuantScheme(4, 0, True, f16)],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("dtype,tol", [("bf16", 2e-2), ("fp16", 4e-3)])
@pytest.mark.parametrize("norm_eps", [None, 1e-5], ids=["plain", "rms_norm"])
def test_tensor_core_gemv_matches_float64(tmp_path, scheme, dtype, tol, norm_eps):
    """gemv_mma (outputs at least GEMV_MMA_MIN_N wide), with and without the RMSNorm prologue: K = 1024 and 4096
    split K in two on a 132-SM GPU (its own workspace, the squares carried along), K = 128 not at all."""
    import torch

    import qjc
    from qjc.backends.cuda.kernels.gemm import GEMV_MMA_MIN_N
    from qjc.backends.cuda.options import arch_of_capability

    rng = np.random.default_rng()
    n = GEMV_MMA_MIN_N + 8  # a partial group of 32 columns
    shapes = [(n, 1024), (n, 128)] + ([(n, 4096)] if norm_eps is None else [])
    g, weights, biases = _graph(scheme, shapes, rng, norm_eps=norm_eps)
    out = tmp_path / "q.qjc"
    engine = qjc.compile(g, target="cuda", archs=(arch_of_capability(*torch.cuda.get_device_capability()),),
                         dtype=dtype, quant_kernels=True, out_dir=out)
    assert "gemv_mma<" in _sources(out)
    for m in (1, 3, 8):
        xs = [rng.standard_normal((m, k)).astype(np.float32) * 3 for _, k in shapes]
        got = engine(*xs)
        for (n, k), x, w, bias, y in zip(shapes, xs, weights, biases, got):
            x64 = x.astype(np.float64)
            if norm_eps is not None:
                x64 = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + norm_eps)
            want = x64 @ w.T + bias
            err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
            assert err < tol, f"M={m} N={n} K={k}: relative error {err:.2e}"
