"""Decode speed of qjc's quantized cuda engines (bf16, int8, int4, fp8 weights) against qjc's own bf16
engine and a gpt-fast-style torch.compile decoder, in one process on one GPU.

Rows: each shape (SmolLM2-135M, Llama-3.2-1B; random weights) x batch (1, 32) x mode. The quantized
engines keep their weights quantized (cuda option quant_kernels) and dequantize them in registers.
Target (issue 8): on the 1B shape at batch 1, int4 at least 1.6x faster than qjc's bf16.

    PYTHONPATH=$PWD python3 bench/quant_decode.py --shapes llama-3.2-1b --batches 1 --out q.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode  # noqa: E402
from decode import SHAPES, cast_parameters, free_device_memory, log, make_model, tiny_shape  # noqa: E402

MODES = ("none", "int8", "int4", "fp8")


def run_mode(model_dir: Path, work: Path, mode: str, batch: int, args) -> dict[str, Any]:
    import qjc

    max_seq = args.context + args.steps + args.warmup + 16
    out_dir = work / f"{model_dir.name}-{mode}-b{batch}"  # one directory per artifact
    t0 = time.perf_counter()
    result = qjc.api.build(str(model_dir), str(out_dir), target="cuda", dtype="bf16", max_seq=max_seq, batch=batch,
                           quant=mode, group_size=args.group_size, quant_kernels=mode != "none")
    row: dict[str, Any] = {"build_s": time.perf_counter() - t0,
                           "notes": [n for n in result.notes if "kept" in n or "dequantized" in n][:5]}
    engine = None
    try:
        engine = qjc.load(out_dir)
        stats = engine.decode_benchmark(batch=batch, context=args.context, steps=args.steps, warmup=args.warmup)
        row.update(us_per_step=float(stats["us_per_step"]), tokens_per_s=float(stats["tokens_per_s"]))
    finally:
        del engine
        free_device_memory(torch.device("cuda"))
        shutil.rmtree(out_dir, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (none = bf16)")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size (64 divides every K here)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="torch: timed runs, the median counts")
    parser.add_argument("--tiny", action="store_true", help="2-layer models (testing the script)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("quant_decode.py needs a CUDA GPU (torch sees none)", file=sys.stderr)
        return 2
    # the torch peer exactly as decode.py runs it by default (gpt-fast settings)
    torch_args = decode.parse_args(["--shapes", args.shapes, "--batches", args.batches, "--context", str(args.context),
                             "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)])
    decode.configure_inductor(torch_args)
    device = torch.device("cuda")
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="qjc-quant-bench-"))
    print(f"# {torch.cuda.get_device_name(device)}, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    try:
        for name in args.shapes.split(","):
            shape = tiny_shape(SHAPES[name]) if args.tiny else SHAPES[name]
            config, model = make_model(shape, 0)
            cast_parameters(model, torch.bfloat16)
            model.save_pretrained(work / name)
            for batch in (int(b) for b in args.batches.split(",")):
                torch_us = None
                if not args.skip_torch:
                    try:
                        torch_us = decode.run_torch(config, model, batch, torch_args, device,
                                                    torch.bfloat16)["torch_us_per_step"]
                    except Exception as e:  # the qjc rows still run
                        log(f"torch failed: {type(e).__name__}: {e}")
                base = None
                for mode in args.modes.split(","):
                    row: dict[str, Any] = {"shape": name, "batch": batch, "mode": mode, "torch_us_per_step": torch_us}
                    try:
                        row.update(run_mode(work / name, work, mode, batch, args))
                    except Exception as e:
                        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    if mode == "none":
                        base = row.get("us_per_step")
                    us = row.get("us_per_step")
                    if us:
                        row["vs_qjc_bf16"] = base / us if base else None
                        row["vs_torch_compile"] = torch_us / us if torch_us else None
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        Path(args.out).write_text(json.dumps(rows, indent=2))
            del model
            free_device_memory(device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'shape':<14}{'batch':>6}{'mode':>6}{'us/step':>10}{'tok/s':>10}{'vs bf16':>9}{'vs torch':>10}")
    for r in rows:
        fmt = lambda v, s: format(v, s) if isinstance(v, float) else "-"  # noqa: E731
        print(f"{r['shape']:<14}{r['batch']:>6}{r['mode']:>6}{fmt(r.get('us_per_step'), '.1f'):>10}"
              f"{fmt(r.get('tokens_per_s'), '.0f'):>10}{fmt(r.get('vs_qjc_bf16'), '.2f'):>9}"
              f"{fmt(r.get('vs_torch_compile'), '.2f'):>10}" + (f"  {r['error']}" if "error" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
