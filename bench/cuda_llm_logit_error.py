"""Which cuda feature puts a decoder's fp32 prefill logits off transformers' float64 ones? (diagnostic)

Builds the random-weight Llama of tests/backends/cuda/test_cuda_llm.py (GQA, head dim 32, 3 layers) once per
variant, each with one feature turned off, runs the engine's raw forward on prompts of several lengths (slot 0;
the other slots padding) and prints the worst logit error per length. fp32 kernels should stay near 1e-5.

    python3 bench/cuda_llm_logit_error.py [--work DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from scratch import scratch_dir  # bench/ is sys.path[0] when a script here runs

import qjc
from qjc.verify import paged_prompt_inputs

VARIANTS = {"default": {}, "no norm prologue": {"norm_prologue": False}, "own GEMMs": {"gemm_library": "qjc"},
            "no local fusion": {"local_fusion": False}, "no CUDA graphs": {"cuda_graphs": False}}
LENGTHS = (1, 5, 16, 17, 37, 64, 120)
BUILD = {"max_seq": 160, "batch": 4, "kv_block_size": 16}  # the engine's slots and KV pool


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="directory for the model and the artifacts (default: a new temporary one)")
    args = parser.parse_args()
    root = Path(args.work) if args.work else scratch_dir("qjc-logit-error-")
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
            logits = np.asarray(engine(*paged_prompt_inputs(engine, prompt)[0])[0], np.float64)[0]
            rows = np.abs(logits - refs[n]).max(axis=-1)
            parts.append(f"{n}: {rows.max():.1e} (row {int(rows.argmax())})")
        print(f"{name} ({time.perf_counter() - t0:.0f} s): " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
