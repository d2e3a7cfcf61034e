"""bench/torch_decoder.py, the torch.compile peer of bench/decode.py, against transformers' Llama:
prefill logits and greedy decode steps through its static KV cache (f32 on CPU, eager)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

_PATH = Path(__file__).resolve().parents[2] / "bench" / "torch_decoder.py"


def _load_decoder_module():
    spec = importlib.util.spec_from_file_location("bench_torch_decoder", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_llama(seed: int, tie: bool):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so a misplaced norm weight shows
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    return config, model


@pytest.mark.parametrize("gqa,tie", [("repeat", True), ("sdpa", False)])
def test_prefill_and_greedy_decode_match_transformers(gqa, tie):
    decoder_module = _load_decoder_module()
    seed = {"repeat": 1, "sdpa": 2}[gqa]
    config, model = _tiny_llama(seed, tie)
    batch, prompt_len, steps = 2, 11, 3
    tokens = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    decoder = decoder_module.TorchDecoder(config, model.state_dict(), batch=batch, max_seq=24, dtype=torch.float32,
                                          device="cpu", gqa=gqa)
    with torch.no_grad():
        want = model(input_ids=tokens, use_cache=False).logits
        got = decoder.prefill(tokens)
        assert want.abs().max() > 1.0  # the comparison below is not between near-zero logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

        seq = torch.cat([tokens, got[:, -1].argmax(-1, keepdim=True)], dim=1)
        for step in range(steps):
            pos = torch.tensor([prompt_len + step])
            logits = decoder.decode_one(seq[:, -1:], pos)
            want = model(input_ids=seq, use_cache=False).logits[:, -1]  # full recompute, no cache
            torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
            # the step the benchmark compiles; rewriting the same position leaves the cache as it was
            nxt = decoder.greedy_step(seq[:, -1:], pos)
            assert torch.equal(nxt, want.argmax(-1, keepdim=True))
            seq = torch.cat([seq, nxt], dim=1)
        assert seq.shape == (batch, prompt_len + 1 + steps)


def test_greedy_step_matches_transformers_and_a_smaller_batch_uses_leading_cache_rows():
    decoder_module = _load_decoder_module()
    config, model = _tiny_llama(3, True)
    tokens = torch.randint(0, config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(3))
    full = decoder_module.TorchDecoder(config, model.state_dict(), batch=3, max_seq=16, dtype=torch.float32,
                                       device="cpu")
    with torch.no_grad():
        want = model(input_ids=tokens[:2], use_cache=False).logits
        torch.testing.assert_close(full.prefill(tokens[:2]), want, atol=1e-4, rtol=1e-4)
        full.prefill(tokens)
        pos = torch.tensor([7])
        nxt = tokens[:, -1:].flip(0)
        want = model(input_ids=torch.cat([tokens, nxt], dim=1), use_cache=False).logits[:, -1]
        torch.testing.assert_close(full.decode_one(nxt, pos), want, atol=1e-4, rtol=1e-4)
        assert torch.equal(full.greedy_step(nxt, pos), want.argmax(-1, keepdim=True))


def test_bad_gqa_mode_is_named():
    decoder_module = _load_decoder_module()
    config, model = _tiny_llama(4, True)
    with pytest.raises(ValueError, match="gqa"):
        decoder_module.TorchDecoder(config, model.state_dict(), batch=1, max_seq=8, dtype=torch.float32,
                                    device="cpu", gqa="nope")
