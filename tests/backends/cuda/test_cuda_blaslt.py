"""Large-M linears through cuBLASLt (templates/blaslt.cu.j2) against float64, every way the launcher
uses it: its bias epilogue straight into the output, its rounded product + bias or an f32 product
finished by qjc's generated epilogue; and qjc's own kernels when the library is turned off (QJC_CUBLASLT=0)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from qjc.ir import Graph
from qjc.ir.types import parse_type

# (N, K). N = 96: 16-bit gelu + residual starts from cuBLASLt's rounded product + bias; N = 51 (odd, rows of D
# not 16-byte aligned): an f32 product and the whole epilogue after it
SHAPES = [(96, 64), (51, 72)]
ROWS = (9, 40, 128, 200)  # past the GEMV (M <= 8)
TOLERANCE = {"fp32": 1e-5, "fp16": 4e-3, "bf16": 2e-2}


def _graph(rng) -> tuple[Graph, list]:
    """Per shape: y = x W^T + b (cuBLASLt's own bias epilogue) and z = gelu(x W^T + b) + r (the generated
    epilogue on cuBLASLt's product)."""
    g = Graph("lt")
    g.add_symbol("m", 1, 256)
    outs, refs = [], []
    for i, (n, k) in enumerate(SHAPES):
        x = g.add_input(f"x{i}", parse_type(f"f32[m,{k}]"))
        r = g.add_input(f"r{i}", parse_type(f"f32[m,{n}]"))
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        y = g.op("linear", x, g.add_constant(f"w{i}", w), g.add_constant(f"b{i}", b))
        w2 = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        z = g.op("add", g.op("gelu", g.op("linear", x, g.add_constant(f"v{i}", w2), g.add_constant(f"c{i}", b))), r)
        outs += [y, z]
        refs.append((w.astype(np.float64), w2.astype(np.float64), b.astype(np.float64)))
    g.set_outputs(*outs)
    return g, refs


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return x * 0.5 * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _matmuls(engine) -> int:
    fn = engine._lib.qjc_cublaslt_matmuls
    fn.restype = ctypes.c_longlong
    return fn()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_large_m_linears_through_cublaslt_match_float64(tmp_path, dtype, monkeypatch):
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    rng = np.random.default_rng()
    g, refs = _graph(rng)
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    out = tmp_path / "lt.qjc"
    engine = qjc.compile(g, target="cuda", archs=(arch,), dtype=dtype, gemm_library="cublaslt", out_dir=out)
    assert engine.artifact.backend_entries["gemm_library"] == "cublaslt"
    for library_on in (True, False):
        if not library_on:  # a fresh engine: the launchers read the switch when they run
            monkeypatch.setenv("QJC_CUBLASLT", "0")
            engine = qjc.load(out)
        before = _matmuls(engine)
        for m in ROWS:
            feeds = []
            for n, k in SHAPES:
                feeds += [rng.standard_normal(shape).astype(np.float32) for shape in ((m, k), (m, n))]
            for _ in range(3):  # eager, captured, replayed
                got = engine(*feeds)
            for i, (w, w2, b) in enumerate(refs):
                x, r = feeds[2 * i].astype(np.float64), feeds[2 * i + 1].astype(np.float64)
                for y, want in ((got[2 * i], x @ w.T + b), (got[2 * i + 1], _gelu(x @ w2.T + b) + r)):
                    err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
                    assert err < TOLERANCE[dtype], f"cuBLASLt {library_on} M={m} shape {SHAPES[i]}: error {err:.2e}"
        took = _matmuls(engine) - before
        # an eager launch and a capture per M and product: 16 for the shape with 16-byte rows alone (cuBLASLt may
        # have no algorithm for the other's odd rows of D: qjc's kernel takes those)
        assert (took >= 16) if library_on else took == 0, f"cuBLASLt on={library_on}: {took} products"
