"""Which cuda feature puts a decoder's fp32 prefill logits off transformers' float64 ones? (diagnostic)

Builds the random-weight Llama of tests/backends/cuda/test_cuda_llm.py (GQA, head dim 32, 3 layers) once per
variant, each with one feature turned off, runs the engine's raw forward on prompts of several lengths (slot 0;
the other slots padding) and prints the worst logit error per length. fp32 kernels should stay near 1e-5.

    python3 bench/cuda_llm_logit_error.py [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

import qjc

VARIANTS = {"default": {}, "no norm prologue": {"norm_prologue": False}, "own GEMMs": {"gemm_library": "qjc"},
            "no local fusion": {"local_fusion": False}, "no CUDA graphs": {"cuda_graphs": False}}
LENGTHS = (1, 5, 16, 17, 37, 64, 120)
SLOTS, MAX_SEQ, BLOCK = 4, 160, 16
BUILD = {"max_seq": MAX_SEQ, "batch": SLOTS, "kv_block_size": BLOCK}  # the engine's slots and KV pool


def random_llama() -> transformers.LlamaForCausalLM:
    """A small Llama with GQA and peaked logits (weights N(0, 0.1)), the same model on every call."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
                                   num_key_value_heads=2, head_dim=32, vocab_size=1000, max_position_embeddings=512)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1)
    return model


def forward_inputs(prompt: np.ndarray) -> list[np.ndarray]:
    """The raw forward's inputs for one prompt in slot 0, the other slots padding, empty pools."""
    n, max_blocks = len(prompt), MAX_SEQ // BLOCK
    tokens = np.zeros((SLOTS, n), np.int64)
    tokens[0] = prompt
    positions = -np.ones((SLOTS, n), np.int64)
    positions[0] = np.arange(n)
    table = np.arange(SLOTS * max_blocks, dtype=np.int32).reshape(SLOTS, max_blocks)
    pools = [np.zeros((SLOTS * max_blocks, 2, BLOCK, 32), np.float32) for _ in range(6)]
    return [tokens, positions, table, *pools]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="directory for the model and the artifacts (default: a new temporary one)")
    args = parser.parse_args()
    root = Path(args.work or tempfile.mkdtemp())
    random_llama().save_pretrained(root / "model")
    model64 = transformers.LlamaForCausalLM.from_pretrained(root / "model", torch_dtype=torch.float64).eval()
    rng = np.random.default_rng(5)
    prompts = {n: rng.integers(0, 1000, n) for n in LENGTHS}
    with torch.no_grad():
        refs = {n: model64(torch.tensor(p[None])).logits[0].numpy() for n, p in prompts.items()}
    for name, options in VARIANTS.items():
        t0 = time.perf_counter()
        out = root / name.replace(" ", "_")
        qjc.api.build(str(root / "model"), out, target="cuda", dtype="fp32", **BUILD, **options)
        engine = qjc.load(out)
        parts = []
        for n, prompt in prompts.items():
            logits = np.asarray(engine(*forward_inputs(prompt))[0], np.float64)[0]
            rows = np.abs(logits - refs[n]).max(axis=-1)
            parts.append(f"{n}: {rows.max():.1e} (row {int(rows.argmax())})")
        print(f"{name} ({time.perf_counter() - t0:.0f} s): " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
