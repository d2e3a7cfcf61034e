"""Linear layers with quantized weights on the cpu backend: the quantized GEMM (codes dequantized in
registers) for every scheme family and several shapes, the graph forms that reach it (the weight
itself, a dequantize feeding linear, both inside fused gemm groups with an epilogue), and the
load-time fallback for weights no quantized kernel reads; against numpy float64 of the dequantized
weight times the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cpu_cases import build_engine

from qjc.ir.dtypes import f32, parse_dtype, quant_scheme_of
from qjc.ir.graph import Graph
from qjc.ir.parser import parse_graph
from qjc.ir.quant import dequantize, quantize
from qjc.ir.types import TensorType, parse_type

# every scheme family the kernel takes: int8 per channel / grouped symmetric, int4 grouped symmetric,
# with an integer zero point, with a float offset (GGUF Q4_1); f32 and bf16 scales once each
SCHEMES = ["q8cs_f16", "q8g32s_f16", "q4g32s_f16", "q4g64s_f16", "q4g128s_f16", "q4g32a_f16", "q4g128a_f16",
           "q4g32m_f16", "q4g64m_f16", "q4g128m_f16", "q8g32s_f32", "q4g64a_bf16"]
# (N, K): N odd and not a multiple of the panel width, K a multiple of every group size
SHAPES = [(37, 128), (96, 256), (5, 384)]
ROWS = (1, 7, 13)  # 13: a full 8-row tile plus leftovers on AVX-512


def _weight(rng: np.random.Generator, n: int, k: int, scheme_name: str):
    w = rng.standard_normal((n, k)) * rng.uniform(0.2, 2.0, (n, 1))  # rows of different magnitudes
    return quantize(w.astype(np.float32), quant_scheme_of(parse_dtype(scheme_name)))


def _reference(x: np.ndarray, q) -> tuple[np.ndarray, np.ndarray]:
    """x @ dequantize(q).T in float64, and a bound on f32 rounding: the sum of |x| |w| per output."""
    w = dequantize(q, np.float64)
    x64 = x.astype(np.float64)
    return x64 @ w.T, np.abs(x64) @ np.abs(w).T


def _check(got: np.ndarray, x: np.ndarray, q, what: str) -> None:
    want, magnitude = _reference(x, q)
    assert got.shape == want.shape, what
    err = np.abs(got.astype(np.float64) - want)
    bound = 1e-5 * magnitude + 1e-6
    assert (err <= bound).all(), f"{what}: max error {err.max():.3g} (bound there {bound.flat[err.argmax()]:.3g})"


# the portable AVX2 build (16-column panels, 4-row tiles) and this host's (AVX-512 where present: 32-column
# panels, 8-row tiles)
@pytest.fixture(scope="module", params=["x86-64-v3", "native"])
def schemes_engine(request, tmp_path_factory):
    rng = np.random.default_rng(7)
    g = Graph("quant_linear")
    g.add_symbol("m", 1, 16)
    xs = {k: g.add_input(f"x{k}", parse_type(f"f32[m,{k}]")) for k in sorted({k for _, k in SHAPES})}
    weights = []
    outs = []
    for scheme in SCHEMES:
        for n, k in SHAPES:
            q = _weight(rng, n, k, scheme)
            wv = g.add_constant(f"w_{scheme}_{n}x{k}", q, q.type)
            outs.append(g.op("linear", xs[k], wv))
            weights.append((scheme, n, k, q))
    g.set_outputs(*outs)
    out = tmp_path_factory.mktemp("cpu_quant") / "quant.qjc"
    return build_engine(g, out, cpu=request.param), weights, out


@pytest.mark.parametrize("rows", ROWS)
def test_every_scheme_and_shape_matches_float64(schemes_engine, rows) -> None:
    engine, weights, _ = schemes_engine
    rng = np.random.default_rng(100 + rows)
    xs = {k: rng.standard_normal((rows, k)).astype(np.float32) for k in sorted({k for _, k in SHAPES})}
    results = engine(*xs.values())
    for (scheme, n, k, q), got in zip(weights, results, strict=True):
        _check(got, xs[k], q, f"{scheme} [{n}, {k}] with {rows} row(s)")


def test_weights_stay_quantized_in_the_artifact(schemes_engine) -> None:
    _, weights, path = schemes_engine
    backend = json.loads((path / "manifest.json").read_text())["backend"]
    assert "dequantized_at_load" not in backend
    by_constant: dict[str, list[dict]] = {}
    for p in backend["params"]:
        by_constant.setdefault(p["constant"], []).append(p)
    for scheme, n, k, _ in weights:
        params = by_constant[f"w_{scheme}_{n}x{k}"]
        assert {p["layout"] for p in params} <= {"q_codes", "q_scales", "q_zeros"}
        codes = next(p for p in params if p["layout"] == "q_codes")
        bits = quant_scheme_of(parse_dtype(scheme)).bits
        assert codes["dtype"] in ("u8", "i8") and codes["shape"][1] == k * bits // 8


# ---- the graph forms of the pass pipeline: fused gemm groups, dequantize -> linear, fallbacks ----------

IR = """graph quant_forms(%x: f32[n,3,64], %res: f32[n,3,40], %x65: f32[n,65]) {
  sym n: 1..4
  const %wm: q4g32m_f16[40,64]
  const %ws: q4g32s_f16[40,64]
  const %wa: q4g64a_f16[48,64]
  const %w8: q8cs_f16[24,64]
  const %wodd: q4cs_f16[8,65]
  const %bias: f32[40]
  %y0: f32[n,3,40] = fused(%x, %wm, %bias, %res) {kind="gemm", name="gemm_0"} {
    graph gemm_0(%x: f32[n,3,64], %wm: q4g32m_f16[40,64], %bias: f32[40], %res: f32[n,3,40]) {
      %l: f32[n,3,40] = linear(%x, %wm, %bias)
      %a: f32[n,3,40] = silu(%l)
      %y0: f32[n,3,40] = add(%a, %res)
      return %y0
    }
  }
  %y1: f32[n,3,40] = fused(%x, %ws) {kind="gemm", name="gemm_1"} {
    graph gemm_1(%x: f32[n,3,64], %ws: q4g32s_f16[40,64]) {
      %d: f32[40,64] = dequantize(%ws) {to=f32}
      %y1: f32[n,3,40] = linear(%x, %d)
      return %y1
    }
  }
  %p: f32[n,3,24], %y2: f32[n,3,24] = fused(%x, %wa) {kind="gemm", name="gemm_2"} {
    graph gemm_2(%x: f32[n,3,64], %wa: q4g64a_f16[48,64]) {
      %l: f32[n,3,48] = linear(%x, %wa)
      %p: f32[n,3,24], %q: f32[n,3,24] = split(%l) {axis=2, sizes=[24, 24]}
      %y2: f32[n,3,24] = mul(%q, %p)
      return %p, %y2
    }
  }
  %d8: f32[24,64] = dequantize(%w8) {to=f32}
  %y3: f32[n,3,24] = linear(%x, %d8)
  %y4: f32[n,3,64] = matmul(%y3, %d8)
  %y5: f32[n,8] = linear(%x65, %wodd)
  return %y0, %y1, %p, %y2, %y3, %y4, %y5
}
"""


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    rng = np.random.default_rng(11)
    g = parse_graph(IR)
    data = {name: _weight(rng, *g.constants[name].value.type.shape, g.constants[name].value.type.dtype.name)
            for name in ("wm", "ws", "wa", "w8", "wodd")}
    for name, q in data.items():
        g.constants[name].data = q
    g.constants["bias"].data = rng.standard_normal(40).astype(np.float32)
    out = tmp_path_factory.mktemp("cpu_quant_forms") / "forms.qjc"
    return build_engine(g, out), g, data, out


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def test_graph_forms_match_float64(forms) -> None:
    engine, g, data, _ = forms
    rng = np.random.default_rng(12)
    n = 2
    x = rng.standard_normal((n, 3, 64)).astype(np.float32)
    res = rng.standard_normal((n, 3, 40)).astype(np.float32)
    x65 = rng.standard_normal((n, 65)).astype(np.float32)
    y0, y1, p, y2, y3, y4, y5 = engine(x, res, x65)
    w = {name: dequantize(q, np.float64) for name, q in data.items()}
    x64 = x.astype(np.float64)
    bias = g.constants["bias"].data.astype(np.float64)
    np.testing.assert_allclose(y0, _silu(x64 @ w["wm"].T + bias) + res, rtol=1e-4, atol=1e-4)
    _check(y1.reshape(-1, 40), x.reshape(-1, 64), data["ws"], "dequantize -> linear in a gemm group")
    both = x64 @ w["wa"].T
    np.testing.assert_allclose(p, both[..., :24], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y2, both[..., 24:] * both[..., :24], rtol=1e-4, atol=1e-4)
    _check(y3.reshape(-1, 24), x.reshape(-1, 64), data["w8"], "dequantize -> linear outside groups")
    np.testing.assert_allclose(y4, (x64 @ w["w8"].T) @ w["w8"], rtol=1e-4, atol=1e-4)
    _check(y5, x65, data["wodd"], "4-bit per channel with odd K (dequantized at load)")


def test_only_weights_without_a_quantized_reader_are_dequantized_at_load(forms) -> None:
    _, _, _, path = forms
    backend = json.loads((path / "manifest.json").read_text())["backend"]
    # w8 is also read by a matmul (its dequantize result is a tensor there); wodd's odd K has no kernel
    assert sorted(backend["dequantized_at_load"]) == ["w8", "wodd"]
    layouts = {(p["constant"], p["layout"]) for p in backend["params"]}
    for name in ("wm", "ws", "wa", "w8"):
        assert (name, "q_codes") in layouts, name
    assert not any(c in ("wm", "ws", "wa") and lay in ("plain", "nk") for c, lay in layouts)


def test_capabilities_accept_the_quantized_types() -> None:
    from qjc.backends.cpu.backend import CpuBackend
    from qjc.backends.cpu.options import CpuOptions

    caps = CpuBackend().capabilities(CpuOptions())
    for name in SCHEMES + ["q4g128m_f16", "q4cs_f16"]:
        assert caps.accepts_dtype(name), name
    assert caps.accepts_op("dequantize")
    assert not caps.accepts_dtype("f16")


def test_a_quantized_constant_read_as_a_tensor_is_refused(tmp_path) -> None:
    from qjc.errors import QJCError

    g = Graph("bad")
    x = g.add_input("x", TensorType((2, 32), f32))
    q = quantize(np.ones((4, 32), np.float32), quant_scheme_of(parse_dtype("q4g32s_f16")))
    wq = g.add_constant("wq", q, q.type)
    g.set_outputs(g.op("linear", x, wq), wq)
    with pytest.raises(QJCError, match="wq"):
        build_engine(g, tmp_path / "bad.qjc")
