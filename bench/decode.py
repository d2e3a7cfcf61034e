"""Greedy decode speed: qjc's cuda engine against a gpt-fast-style torch.compile decoder, one process, one GPU.

Models: Llama shapes with random weights (only shapes matter for time) — SmolLM2-135M and
Llama-3.2-1B — in bf16. Each row (shape, batch) decodes ``--steps`` tokens per sequence after a
``--context``-token prefill, greedy (argmax fed back on the device, no host sync per step).

* torch: bench/torch_decoder.py (static KV cache, merged q/k/v and gate/up), its greedy step (logits
  and argmax) compiled with ``torch.compile(mode="reduce-overhead", fullgraph=True)`` and run under
  the math SDPA backend, as gpt-fast does; prefill eager. Checked once per row against transformers'
  forward before timing. Timed with CUDA events over the steps, median of ``--repeats`` runs.
* qjc: the transformers model saved with ``save_pretrained``, built with ``qjc.api.build(...,
  target="cuda", dtype="bf16", batch=B)`` and timed by the engine's own ``decode_benchmark``.
* floor: (every weight read once, the tied embedding once + the KV cache of ``context`` positions)
  / device copy bandwidth measured here (bytes read + written by a 1 GiB copy, best of 10).

    python3 bench/decode.py --shapes smollm2-135m,llama-3.2-1b --batches 1,32 --context 512 \\
        --steps 128 --warmup 16 --device cuda --out results.json
    python3 bench/decode.py --device cpu --tiny --context 32 --steps 8 --warmup 3 --skip-qjc   # logic only

On an H200 the torch side alone takes about 6 minutes for the four default rows (55-90 s of
compiling per row, most of it inductor's coordinate-descent tuning); run one shape per command
(``--shapes``) where a command's time is limited. ``--profile`` prints the torch step's top kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072),
}
# Largest |torch decoder - transformers| over the check's logits, as a fraction of the largest
# |logit|: bf16 rounding through 16-30 layers stays well under this; a wrong wiring (RoPE, GQA
# head order, norm) lands near 1.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}
_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:8.1f}s] {msg}", flush=True)


def tiny_shape(full: dict[str, Any]) -> dict[str, Any]:
    """The same head structure (heads, KV heads, tied embedding, RoPE base) at a size a CPU runs in
    seconds: 2 layers, head_dim 16, a 1024-token vocabulary."""
    heads = full["num_attention_heads"]
    return dict(full, vocab_size=1024, hidden_size=heads * 16, intermediate_size=heads * 40, num_hidden_layers=2,
                head_dim=16)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters to ``dtype``, buffers as they are: ``model.to(bf16)`` would also round the rotary
    embedding's f32 ``inv_freq`` to bf16 (a model loaded with ``dtype=bf16`` keeps it f32), which moves
    the reference's RoPE angles by up to a radian at position 500 and its logits by ~10 %."""
    with torch.no_grad():
        for p in model.parameters():  # a tied embedding comes once and stays tied
            p.data = p.data.to(dtype)
    return model


def make_model(shape: dict[str, Any], seed: int):
    """transformers LlamaForCausalLM with weights ~ N(0, 0.02) and unit norms (f32, CPU): small
    enough that bf16 logits stay finite, random enough that greedy tokens vary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, initializer_range=0.02)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # explicit, so every transformers version starts from the same weights
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)
    return config, model


class Clock:
    """Elapsed seconds between two marks on ``device``: CUDA events on the current stream, else the
    host clock after the work is done."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._stop = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self._stop.record()
            self._stop.synchronize()
            return self._start.elapsed_time(self._stop) * 1e-3
        return time.perf_counter() - self._t0


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes read + written per second by the best of ``repeats`` copies of an ``nbytes`` tensor."""
    clock = Clock(device)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    clock.sync()
    best = float("inf")
    for _ in range(repeats):
        clock.start()
        dst.copy_(src)
        best = min(best, clock.stop())
    del src, dst
    free_device_memory(device)
    return 2 * nbytes / best


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def floor_terms(config: Any, model: torch.nn.Module, batch: int, context: int, itemsize: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) one decode step must read at least: every parameter once
    (``parameters()`` yields a tied embedding once: the lm_head reads it, the lookup only B rows),
    and K and V of ``context`` positions in every layer."""
    weights = sum(p.numel() for p in model.parameters()) * itemsize
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = batch * config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * context * itemsize
    return weights, kv


def check_against_transformers(decoder, model, prompt: torch.Tensor, device: torch.device,
                               dtype: torch.dtype) -> dict[str, Any]:
    """Prefill logits of the decoder against transformers' forward on the first (at most 2)
    sequences of ``prompt``; the model visits ``device`` only for this."""
    rows = prompt[: min(2, prompt.shape[0])]
    model.to(device)
    try:
        want = model(input_ids=rows, use_cache=False).logits.float()
    finally:
        model.to("cpu")
    got = decoder.prefill(rows).float()
    diff = float((got - want).abs().max())
    scale = float(want.abs().max())
    ok = bool(torch.isfinite(got).all()) and diff <= CHECK_TOLERANCE[dtype] * max(scale, 1e-6)
    del want, got
    return {"torch_check_max_abs_diff": diff, "torch_check_max_abs_logit": scale, "torch_check_ok": ok}


def _cudagraph_skips() -> int:
    """Inductor's count of graphs it declined to capture as CUDA graphs (0 where it keeps none)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["inductor"].get("cudagraph_skips", 0))


def decode_attention_backend(choice: str):
    """The SDPA backends the decode step may use: ``math`` alone (gpt-fast), or torch's own choice."""
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def profile_kernels(title: str, fn, steps: int, top: int = 12) -> None:
    """The kernels that take the most GPU time in ``fn`` (``steps`` decode steps), per step."""
    from gpu_profile import kernel_times

    rows = kernel_times(fn)
    busy, launches = sum(t for _, t, _ in rows), sum(n for _, _, n in rows)
    log(f"  profile {title}: {busy / steps:.1f} us of kernels per step, {launches / steps:.0f} kernels per step")
    for name, t, n in rows[:top]:
        print(f"      {t / steps:8.1f} us  {n / steps:5.1f}x  {name[:100]}", flush=True)


def run_torch(config, model, batch: int, args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from torch_decoder import TorchDecoder

    # the cache length rounded up to 16 keeps the attention mask rows aligned for the fused SDPA kernels
    max_seq = -(-(args.context + args.steps + args.warmup + 16) // 16) * 16
    clock = Clock(device)
    out: dict[str, Any] = {"torch_max_seq": max_seq, "torch_gqa": args.torch_gqa,
                           "torch_compile_mode": args.compile_mode, "torch_decode_sdpa": args.torch_decode_sdpa}
    log(f"  torch: decoder batch {batch}, cache {max_seq} positions, gqa={args.torch_gqa}")
    decoder = TorchDecoder(config, model.state_dict(), batch=batch, max_seq=max_seq, dtype=dtype, device=device,
                           gqa=args.torch_gqa)
    gen = torch.Generator().manual_seed(args.seed + batch)
    prompt = torch.randint(0, config.vocab_size, (batch, args.context), generator=gen).to(device)
    try:
        with torch.no_grad():
            out.update(check_against_transformers(decoder, model, prompt, device, dtype))
            log(f"  torch: prefill logits vs transformers: max |diff| {out['torch_check_max_abs_diff']:.3e} "
                f"(max |logit| {out['torch_check_max_abs_logit']:.3f}) "
                f"{'ok' if out['torch_check_ok'] else 'MISMATCH: the torch numbers below time a wrong decoder'}")

            clock.sync()
            t0 = time.perf_counter()
            clock.start()
            first = decoder.prefill(prompt, last_only=True)[:, -1].argmax(-1, keepdim=True)
            out["torch_prefill_ms"] = clock.stop() * 1e3
            log(f"  torch: eager prefill of {args.context} tokens: {out['torch_prefill_ms']:.2f} ms "
                f"(first call, {time.perf_counter() - t0:.1f} s wall)")

            if args.compile_mode == "none":
                step = decoder.greedy_step
            else:
                step = torch.compile(decoder.greedy_step, mode=args.compile_mode, fullgraph=True)
            pos = torch.tensor([args.context], dtype=torch.long, device=device)

            def decode(tokens: torch.Tensor, n: int) -> torch.Tensor:
                # gpt-fast decodes under the math SDPA backend so inductor generates the attention itself
                # instead of calling a fused kernel built for long queries
                with decode_attention_backend(args.torch_decode_sdpa):
                    for _ in range(n):
                        # a new CUDA-graph step each call: the previous step's output buffers may be reused,
                        # so the tokens are cloned out of them before the next replay
                        torch.compiler.cudagraph_mark_step_begin()
                        tokens = step(tokens, pos).clone()
                        pos.add_(1)
                return tokens

            t0 = time.perf_counter()
            log(f"  torch: compiling and warming up ({args.warmup} steps)")
            skips_before = _cudagraph_skips()
            tokens = decode(first, args.warmup)
            clock.sync()
            out["torch_compile_warmup_s"] = time.perf_counter() - t0
            out["torch_cudagraph_skips"] = _cudagraph_skips() - skips_before
            log(f"  torch: compile + warm-up took {out['torch_compile_warmup_s']:.1f} s")
            if out["torch_cudagraph_skips"] and device.type == "cuda" and "reduce-overhead" in args.compile_mode:
                log("  torch: WARNING: inductor skipped CUDA graphs for the step (see its log above); "
                    "the torch time includes launch overhead")

            times = []
            for _ in range(args.repeats):
                # timed steps start with exactly `context` tokens in the cache, like the floor assumes
                pos.fill_(args.context)
                clock.sync()
                clock.start()
                tokens = decode(tokens, args.steps)
                times.append(clock.stop())
            seconds = statistics.median(times)
            if args.profile and device.type == "cuda":
                pos.fill_(args.context)
                profile_kernels(f"torch b{batch}", lambda: decode(tokens, 8), 8)
            if not bool(((tokens >= 0) & (tokens < config.vocab_size)).all()):
                raise RuntimeError("torch decoder produced token ids outside the vocabulary")
    finally:
        del decoder, prompt
        if args.compile_mode != "none":
            torch._dynamo.reset()
        free_device_memory(device)
    out["torch_us_per_step"] = seconds / args.steps * 1e6
    out["torch_tokens_per_s"] = batch * args.steps / seconds
    out["torch_us_per_step_runs"] = [t / args.steps * 1e6 for t in times]
    return out


def run_qjc(model_dir: Path, work: Path, batch: int, args, device: torch.device) -> dict[str, Any]:
    import qjc

    max_seq = args.context + args.steps + args.warmup + 16
    out_dir = work / f"qjc-{model_dir.name}-b{batch}"  # one directory per artifact (see qjc/runtime/library.py)
    log(f"  qjc: building {model_dir.name} for cuda, bf16, batch {batch}, max_seq {max_seq}")
    t0 = time.perf_counter()
    qjc.api.build(str(model_dir), str(out_dir), target="cuda", dtype="bf16", max_seq=max_seq, batch=batch,
                  progress=lambda stage: log(f"  qjc: build stage {stage}"))
    out: dict[str, Any] = {"qjc_build_s": time.perf_counter() - t0, "qjc_max_seq": max_seq}
    log(f"  qjc: built in {out['qjc_build_s']:.1f} s; loading and running decode_benchmark")
    engine = None
    try:
        engine = qjc.load(out_dir)
        stats = engine.decode_benchmark(batch=batch, context=args.context, steps=args.steps, warmup=args.warmup)
        out["qjc_us_per_step"] = float(stats["us_per_step"])
        out["qjc_tokens_per_s"] = float(stats["tokens_per_s"])
        out["qjc_prefill_ms"] = float(stats["prefill_ms"])
    finally:
        del engine
        free_device_memory(device)
        if not args.keep_artifacts:
            shutil.rmtree(out_dir, ignore_errors=True)
    log(f"  qjc: {out['qjc_us_per_step']:.1f} us/step, {out['qjc_tokens_per_s']:.0f} tokens/s")
    return out


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'shape':<14}{'batch':>6}{'torch us/step':>15}{'qjc us/step':>13}{'torch/qjc':>11}{'torch tok/s':>13}"
            f"{'qjc tok/s':>12}{'floor us':>10}{'torch %floor':>14}{'qjc %floor':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.get("ratio_torch_over_qjc")
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        torch_pct, qjc_pct = (_fmt(r.get(f"{side}_pct_of_floor"), ".1f") for side in ("torch", "qjc"))
        lines.append(
            f"{r['shape']:<14}{r['batch']:>6}{_fmt(r.get('torch_us_per_step'), '.1f'):>15}"
            f"{_fmt(r.get('qjc_us_per_step'), '.1f'):>13}{ratio_text:>11}"
            f"{_fmt(r.get('torch_tokens_per_s'), '.0f'):>13}{_fmt(r.get('qjc_tokens_per_s'), '.0f'):>12}"
            f"{r['floor_us']:>10.1f}{torch_pct + ('%' if torch_pct != '-' else ''):>14}"
            f"{qjc_pct + ('%' if qjc_pct != '-' else ''):>12}")
    lines.append("(us per decode step, median of the timed runs; torch/qjc > 1 means qjc is faster; "
                 "%floor = floor / time)")
    for r in rows:
        for side in ("torch", "qjc"):
            if f"{side}_error" in r:
                lines.append(f"{r['shape']} b{r['batch']} {side} error: {r[f'{side}_error']}")
        if r.get("torch_check_ok") is False:
            lines.append(f"{r['shape']} b{r['batch']} torch decoder MISMATCHES transformers "
                         f"(max |diff| {r['torch_check_max_abs_diff']:.3e})")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def write_json(path: str, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    Path(path).write_text(json.dumps(dict(header, rows=rows), indent=2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--batches", default="1,32", help="comma list of batch sizes")
    parser.add_argument("--context", type=int, default=512, help="tokens in the cache when the timed steps start")
    parser.add_argument("--qjc-first", action="store_true",
                        help="time qjc before torch.compile in each row (by default torch runs first; comparing the "
                             "two orders shows what one side's leftovers cost the other)")
    parser.add_argument("--steps", type=int, default=128, help="timed decode steps per run")
    parser.add_argument("--warmup", type=int, default=16, help="untimed decode steps first (torch: includes compile)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of --steps for torch; the median counts")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to test the script's logic")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                        help="torch side dtype (default: bf16 on cuda, fp32 on cpu); qjc always builds bf16")
    parser.add_argument("--tiny", action="store_true", help="2-layer models with the same head structure (testing)")
    parser.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode, or none for eager")
    parser.add_argument("--torch-gqa", choices=("repeat", "sdpa"), default="repeat",
                        help="KV heads for SDPA: repeat_interleave (gpt-fast) or enable_gqa=True")
    parser.add_argument("--torch-decode-sdpa", choices=("math", "auto"), default="math",
                        help="SDPA backend of the compiled decode step: math, which inductor generates code for "
                             "(gpt-fast), or auto (torch picks a fused kernel: cuDNN / efficient / flash)")
    parser.add_argument("--profile", action="store_true", help="print the top GPU kernels of the torch decode step")
    parser.add_argument("--no-coordinate-descent", action="store_true",
                        help="leave inductor's coordinate-descent tuning off (gpt-fast turns it on)")
    parser.add_argument("--skip-qjc", action="store_true")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--keep-artifacts", action="store_true", help="keep the model dirs and qjc artifacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results here as JSON (rewritten after every row)")
    args = parser.parse_args(argv)
    args.shape_names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shape_names if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; known: {', '.join(SHAPES)}")
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: expected a comma list of integers, got {args.batches!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batches: every batch size must be >= 1")
    for name in ("context", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def configure_inductor(args: argparse.Namespace) -> None:
    """Inductor as gpt-fast sets it: coordinate-descent tuning on, unless --no-coordinate-descent."""
    if not args.no_coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_decoder.py sits next to this file
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("decode.py: --device cuda but torch sees no GPU (use --device cpu --tiny to test the logic)",
              file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    configure_inductor(args)
    itemsize = torch.empty((), dtype=dtype).element_size()

    import transformers

    gpu = device_name(device)
    header: dict[str, Any] = {
        "gpu": gpu, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
        "transformers": transformers.__version__, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "tiny": args.tiny, "context": args.context, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "compile_mode": args.compile_mode, "torch_gqa": args.torch_gqa,
        "torch_decode_sdpa": args.torch_decode_sdpa,
        "coordinate_descent_tuning": not args.no_coordinate_descent}
    print(f"# {gpu}, {header['date']}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{header['dtype']}{', tiny shapes' if args.tiny else ''}", flush=True)
    copy_bytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    bandwidth = copy_bandwidth(device, copy_bytes)
    header["copy_bandwidth_bytes_per_s"] = bandwidth
    header["copy_bytes"] = copy_bytes
    print(f"# copy bandwidth {bandwidth / 1e9:.1f} GB/s (bytes read + written, {copy_bytes >> 20} MiB copy, "
          "best of 10)", flush=True)

    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="qjc-decode-bench-"))
    try:
        for shape_name in args.shape_names:
            shape = tiny_shape(SHAPES[shape_name]) if args.tiny else SHAPES[shape_name]
            log(f"{shape_name}: building the transformers model (random weights)")
            config, model = make_model(shape, args.seed)
            cast_parameters(model, dtype)
            model_dir = work / shape_name
            if not args.skip_qjc:
                # qjc reads the safetensors checkpoint in bf16 whatever the torch side runs in
                saved = model if dtype == torch.bfloat16 else cast_parameters(copy.deepcopy(model), torch.bfloat16)
                saved.save_pretrained(model_dir)
                del saved
                log(f"{shape_name}: saved to {model_dir}")
            for batch in args.batch_sizes:
                log(f"{shape_name} batch {batch}")
                weight_bytes, kv_bytes = floor_terms(config, model, batch, args.context, itemsize)
                floor_us = (weight_bytes + kv_bytes) / bandwidth * 1e6
                row: dict[str, Any] = {"shape": shape_name, "batch": batch, "context": args.context,
                                       "steps": args.steps, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                                       "floor_us": floor_us}
                sides = {"torch": functools.partial(run_torch, config, model, batch, args, device, dtype),
                         "qjc": functools.partial(run_qjc, model_dir, work, batch, args, device)}
                for side in ("qjc", "torch") if args.qjc_first else ("torch", "qjc"):
                    if getattr(args, f"skip_{side}"):
                        continue
                    try:
                        row.update(sides[side]())
                    except Exception as exc:  # noqa: BLE001 - a failed side is reported in its row
                        traceback.print_exc()
                        row[f"{side}_error"] = _error(exc)
                        log(f"  {side} failed: {row[f'{side}_error']}")
                for side in ("torch", "qjc"):
                    if f"{side}_us_per_step" in row:
                        row[f"{side}_pct_of_floor"] = floor_us / row[f"{side}_us_per_step"] * 100
                if "torch_us_per_step" in row and "qjc_us_per_step" in row:
                    row["ratio_torch_over_qjc"] = row["torch_us_per_step"] / row["qjc_us_per_step"]
                rows.append(row)
                print(format_table([row]), flush=True)
                if args.out:  # after every row, so a time-out keeps what finished
                    write_json(args.out, header, rows)
            del model
            free_device_memory(device)
            if not args.keep_artifacts:
                shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        if not args.keep_artifacts:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n# {gpu}, {header['date']}; floor = (weights + KV of {args.context} positions) / "
          f"{bandwidth / 1e9:.1f} GB/s")
    print(format_table(rows), flush=True)
    if args.out:
        write_json(args.out, header, rows)
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
