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
    QuantScheme(8, 0, True, f32, codes="e4m3"),  # --quant fp8 weights
]


def _graph(scheme: QuantScheme, n: int, k: int, rng) -> tuple[Graph, np.ndarray]:
    g = Graph("qlinear")
    g.add_symbol("m", 1, 64)
    x = g.add_input("x", parse_type(f"f32[m,{k}]"))
    w = quantize(rng.standard_normal((n, k)), scheme)
    bias = g.add_constant("bias", rng.standard_normal(n).astype(np.float32))
    g.set_outputs(g.op("linear", x, g.add_constant("w", w, w.type), bias))
    return g, dequantize(w, np.float64)


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_quantized_weights_stay_quantized_and_build(tmp_path):
    import json

    import qjc

    rng = np.random.default_rng(0)
    for scheme in SCHEMES[:2] + SCHEMES[-1:]:
        g, _ = _graph(scheme, 24, 128, rng)
        out = tmp_path / f"{scheme.name}.qjc"
        qjc.api.build(g, out, target="cuda", archs=("sm_80", "sm_90a"), dtype="bf16", quant_kernels=True)
        plan = json.loads((out / "cuda" / "plan.json").read_text())
        names = {b["name"]: b["dtype"] for b in plan["buffers"] if b["kind"] == "weight"}
        assert names["w"] == "u8" and names["w::scales"] == scheme.scale_dtype.name
        src = "".join(p.read_text() for p in (out / "cuda" / "src").glob("kernels_*.cu"))
        assert "wq_load" in src
        off = tmp_path / f"{scheme.name}.float.qjc"  # without the option: expanded at compile time
        qjc.api.build(g, off, target="cuda", archs=("sm_90a",), dtype="bf16")
        plan = json.loads((off / "cuda" / "plan.json").read_text())
        assert not any(b["dtype"] == "u8" for b in plan["buffers"] if b["kind"] == "weight")


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", SCHEMES, ids=[s.name for s in SCHEMES])
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_quantized_linear_matches_float64(tmp_path, scheme, dtype, tol):
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    rng = np.random.default_rng()
    g, w = _graph(scheme, 72, 256, rng)
    bias = g.constants["bias"].data.astype(np.float64)
    engine = qjc.compile(g, target="cuda", archs=(arch_of_capability(*torch.cuda.get_device_capability()),),
                         dtype=dtype, quant_kernels=True, out_dir=tmp_path / "q.qjc")
    for m in (1, 5, 40):  # GEMV, GEMV with several rows, CUDA-core GEMM
        x = rng.standard_normal((m, 256)).astype(np.float32)
        want = x.astype(np.float64) @ w.T + bias
        got = np.asarray(engine(x), np.float64)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < tol, f"M={m}: relative error {err:.2e}"
