"""The CLI's cuda-facing parts: `qjc compile --target cuda --arch/--dtype` and `qjc bench`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qjc.backends.cuda.nvcc import find_nvcc
from qjc.cli import main
from qjc.ir.graph import Graph
from qjc.ir.printer import print_graph
from qjc.ir.types import parse_type


def _model(tmp_path):
    g = Graph("mlp")
    g.add_symbol("batch", 1, 8)
    x = g.add_input("x", parse_type("f32[batch,16]"))
    y = g.add_input("y", parse_type("f32[batch,16]"))
    g.set_outputs(g.op("tanh", g.op("mul", x, y)))
    path = tmp_path / "mlp.qir"
    path.write_text(print_graph(g))
    return path


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_compile_with_arch_and_dtype_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QJC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "mlp.cuda.qjc"
    rc = main(["compile", str(_model(tmp_path)), "--target", "cuda", "--arch", "sm_80", "--arch", "sm_90a",
               "--dtype", "bf16", "-o", str(out)])
    assert rc == 0, capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == ["sm_80", "sm_90a"]
    assert manifest["target_options"]["dtype"] == "bf16"
    assert manifest["signature"]["inputs"][0]["dtype"] == "f32"  # cast at the boundary


def test_arch_flag_is_refused_by_a_target_without_it(tmp_path, capsys):
    rc = main(["compile", str(_model(tmp_path)), "--target", "npu_stub", "--arch", "sm_80"])
    assert rc == 1
    assert "archs" in capsys.readouterr().err


def test_bench_prints_the_median(tmp_path, capsys):
    out = tmp_path / "mlp.npu.qjc"
    assert main(["compile", str(_model(tmp_path)), "--target", "npu_stub", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--dim", "batch=3", "-n", "5", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "median" in text and "us per call" in text and "x[3, 16]" in text
    assert np.isfinite(float(text.split("median ")[1].split(" ms")[0]))
