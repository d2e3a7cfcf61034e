"""qjc's cuda engine against PyTorch eager and torch.compile, in one process on one GPU, bf16.

Workloads: all-MiniLM-L6-v2's architecture at batch 1 and 32 (sequence 128), and a SmolLM2-135M-
shaped Llama prefill of 512 tokens (30 layers, random weights: only the shapes matter for time).

For each: median milliseconds over many runs timed with CUDA events after warm-up (random token
ids, never zeros), the ratios, and each time as a percentage of its floor: the larger of
bytes / measured copy bandwidth and FLOPs / measured bf16 matmul rate, both measured here first.

    python3 bench/cuda_forward.py [--compile-mode max-autotune] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scratch import scratch_dir  # bench/ is sys.path[0] when a script here runs

MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12)
SMOLLM = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
              intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5,
              rope_theta=100000.0, tie_word_embeddings=True, use_cache=False)


def cuda_time(fn, warmup: int = 10, iters: int = 50) -> float:
    """Median milliseconds of ``fn()`` on the current stream, CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def profile(title: str, fn, runs: int = 5, top: int = 12) -> None:
    """The kernels that take the most GPU time over ``runs`` calls, per call."""
    from gpu_profile import kernel_times

    for _ in range(3):
        fn()
    rows = kernel_times(lambda: [fn() for _ in range(runs)])
    print(f"## {title}: {sum(t for _, t, _ in rows) / runs / 1e3:.3f} ms of kernels per call, "
          f"{sum(n for _, _, n in rows) // runs} launches per call")
    for name, t, n in rows[:top]:
        print(f"   {t / runs / 1e3:8.3f} ms  {n // runs:4d}x  {name[:110]}")


def measure_ceilings() -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, bf16 matmul FLOP/s), measured here; the
    bandwidth as bench/decode.py measures it, so both scripts' floors share one ceiling."""
    from decode import copy_bandwidth

    bandwidth = copy_bandwidth(torch.device("cuda"), 1 << 30)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, 3, 20)
    flops = 2 * 8192**3 / (ms * 1e-3)
    return bandwidth, flops


def floor_ms(model: torch.nn.Module, tokens: int, attention_flops: float, io_bytes: int, bandwidth: float,
             rate: float) -> tuple[float, str]:
    """The larger of the memory and the compute floor: every linear weight read once plus the
    inputs and outputs; 2 FLOPs per weight per token plus attention's two products."""
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    weight_bytes = 2 * linear_params
    flops = 2 * linear_params * tokens + attention_flops
    mem_ms = (weight_bytes + io_bytes) / bandwidth * 1e3
    compute_ms = flops / rate * 1e3
    return (compute_ms, "compute") if compute_ms >= mem_ms else (mem_ms, "memory")


class HiddenStates(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


class Logits(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def workloads():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    bert = HiddenStates(BertModel(BertConfig(**MINILM)).eval().to(torch.bfloat16))
    llama = Logits(LlamaForCausalLM(LlamaConfig(**SMOLLM)).eval().to(torch.bfloat16))
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        ids = torch.from_numpy(rng.integers(0, 30000, (batch, 128)))
        mask = torch.ones(batch, 128, dtype=torch.long)
        attn = 4 * batch * 12 * 128 * 128 * 32 * 6  # QK^T and PV, 12 heads of 32, 6 layers
        io = ids.numel() * 16 + batch * 128 * 384 * 2
        yield f"MiniLM-L6 b{batch} s128", bert, (ids, mask), batch * 128, attn, io
    ids = torch.from_numpy(rng.integers(0, 49152, (1, 512)))
    attn = 4 * 9 * 512 * 512 * 64 * 30 // 2  # causal: half the products
    yield "SmolLM2-135M prefill 512", llama, (ids,), 512, attn, ids.numel() * 8 + 512 * 49152 * 2


# switches the engine reads once per process (into statics): in this process a variant would silently time
# the default, so they need a process of their own
READ_ONCE = ("QJC_PDL", "QJC_ATTN_CTAS_PER_SM")


def variant_ms(path, dev, iters: int, env: dict[str, str]) -> float:
    """The same artifact run by a fresh engine under ``env``: switches its launchers read at each launch, so at
    the new engine's first (eager) run and its graph capture (QJC_CUBLASLT=0 for qjc's own GEMMs,
    QJC_ATTN_SPLIT=0)."""
    import os

    import qjc

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        engine = qjc.load(path)
        return cuda_time(lambda: engine(*dev), iters=iters)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text.rpartition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not label or not env:
        raise argparse.ArgumentTypeError(f"expected LABEL:VAR=VALUE[,VAR=VALUE], got {text!r}")
    once = [k for k in env if k in READ_ONCE]
    if once:
        raise argparse.ArgumentTypeError(f"{', '.join(once)}: read once per process; run the script with it set")
    return label, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-mode", default="max-autotune",
                        help="torch.compile mode (max-autotune, max-autotune-no-cudagraphs, reduce-overhead, none)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--profile", action="store_true",
                        help="also print the kernels that take the most GPU time (qjc without CUDA graphs, "
                             "torch.compile)")
    parser.add_argument("--variant", action="append", default=[], type=_variant, metavar="LABEL:VAR=VALUE[,...]",
                        help="also time each qjc engine with these environment switches (repeatable), e.g. "
                             "'no key split:QJC_ATTN_SPLIT=0'")
    args = parser.parse_args(argv)

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    torch.backends.cuda.matmul.allow_tf32 = False
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    gpu = torch.cuda.get_device_name()
    bandwidth, rate = measure_ceilings()
    print(f"# {gpu} ({arch}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"# measured: copy {bandwidth / 1e12:.2f} TB/s (read + write), bf16 matmul {rate / 1e12:.0f} TFLOP/s")
    rows = []
    tmp = scratch_dir("qjc-bench-")
    for name, module, inputs, tokens, attn, io in workloads():
        if args.only and args.only not in name:
            continue
        floor, bound = floor_ms(module, tokens, attn, io, bandwidth, rate)
        start = time.perf_counter()
        engine = qjc.compile(module, inputs, target="cuda", archs=(arch,),
                             out_dir=tmp / name.replace(" ", "_"))
        qjc_build_s = time.perf_counter() - start
        module = module.cuda()
        dev = [x.cuda() for x in inputs]
        result = {"workload": name, "floor_ms": floor, "bound": bound, "qjc_build_s": qjc_build_s,
                  "kernels": engine.manifest["backend"]["kernels"], "steps": engine.manifest["backend"]["steps"]}
        with torch.no_grad():
            want = module(*dev).float()
            got = engine(*dev).float()
            result["qjc_rel_err_vs_eager"] = float((got - want).norm() / want.norm())
            result["qjc_ms"] = cuda_time(lambda e=engine, d=dev: e(*d), iters=args.iters)
            result["qjc_engine_ms"] = statistics.median(engine.benchmark([x.numpy() for x in inputs], 10, args.iters))
            variants = dict(args.variant)
            if engine.manifest["backend"].get("gemm_library") == "cublaslt":
                variants["own GEMMs instead of cuBLASLt"] = {"QJC_CUBLASLT": "0"}
            result["variants_ms"] = {label: variant_ms(engine.artifact.path, dev, args.iters, env)
                                     for label, env in variants.items()}
            result["eager_ms"] = cuda_time(lambda m=module, d=dev: m(*d), iters=args.iters)
            if args.compile_mode != "none":
                start = time.perf_counter()
                compiled = torch.compile(module, mode=args.compile_mode)
                compiled(*dev)
                result["compile_s"] = time.perf_counter() - start
                result["compiled_ms"] = cuda_time(lambda c=compiled, d=dev: c(*d), iters=args.iters)
                if args.profile:  # the module compiled once, profiled before dynamo forgets it
                    profile(f"torch.compile {name}", lambda c=compiled, d=dev: c(*d))
                torch._dynamo.reset()
            if args.profile:
                engine.set_cuda_graphs(False)
                profile(f"qjc {name}", lambda e=engine, d=dev: e(*d))
                engine.set_cuda_graphs(True)
        module.cpu()
        del engine
        torch.cuda.empty_cache()
        rows.append(result)
        print(json.dumps(result), flush=True)
        if args.json:  # written after every workload, so a time-out keeps what finished
            _write(args.json, gpu, arch, bandwidth, rate, args.compile_mode, rows)

    print(f"\n{'workload':<28}{'floor':>9}{'qjc':>9}{'eager':>9}{'compile':>9}{'qjc/eager':>11}{'qjc/comp':>10}"
          f"{'qjc %floor':>12}{'comp %floor':>12}")
    for r in rows:
        comp = r.get("compiled_ms", float("nan"))
        print(f"{r['workload']:<28}{r['floor_ms']:9.3f}{r['qjc_ms']:9.3f}{r['eager_ms']:9.3f}{comp:9.3f}"
              f"{r['eager_ms'] / r['qjc_ms']:10.2f}x{comp / r['qjc_ms']:9.2f}x"
              f"{100 * r['floor_ms'] / r['qjc_ms']:11.1f}%{100 * r['floor_ms'] / comp:11.1f}%")
    print("(ms, median; ratios > 1 mean qjc is faster; %floor = floor / time)")
    for r in rows:
        for label, ms in r["variants_ms"].items():
            print(f"{r['workload']}: qjc with {label}: {ms:.3f} ms (default {r['qjc_ms']:.3f})")
    return 0


def _write(path: str, gpu: str, arch: str, bandwidth: float, rate: float, mode: str, rows: list) -> None:
    Path(path).write_text(json.dumps({"gpu": gpu, "arch": arch, "bandwidth": bandwidth, "matmul_rate": rate,
                                      "compile_mode": mode, "rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
