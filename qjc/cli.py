"""The ``qjc`` command.

Exit codes: 0 success; 1 a user error (any QJCError: bad model, unsupported op, bad artifact),
printed as ``error: ...`` without a traceback; 2 bad usage (argparse); 3 a bug in qjc (the
traceback is shown with QJC_DEBUG>=1). Results go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from qjc.errors import QJCError

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _table(rows: list[list[str]], out: TextIO) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]
        print("  ".join(cells).rstrip(), file=out)


# ---- commands -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from qjc.demo import run_demo

    return run_demo(args.output, model=args.model)


def cmd_targets(args: argparse.Namespace) -> int:
    from qjc.backends.base import discover_backends

    rows = [["TARGET", "USABLE", "SOURCE", "DETAILS"]]
    for name, info in discover_backends().items():
        if info.broken:
            rows.append([info.name, "broken", info.source, f"{info.target}: {info.error}"])
            continue
        ok, why = info.availability()
        desc = info.backend_class.description if info.backend_class else ""
        rows.append([name, "yes" if ok else "no", info.source, "; ".join(x for x in (desc, why) if x)])
    _table(rows, sys.stdout)
    return EXIT_OK


def cmd_ops(args: argparse.Namespace) -> int:
    from qjc.ir.ops.registry import REGISTRY, _load_families

    _load_families()
    rows = [["OP", "FAMILY", "INPUTS", "ATTRIBUTES"]]
    for op in sorted(REGISTRY.values(), key=lambda o: (o.family, o.name)):
        if args.family and op.family != args.family:
            continue
        lo, hi = op.inputs
        arity = str(lo) if lo == hi else (f"{lo}+" if hi < 0 else f"{lo}-{hi}")
        attrs = ", ".join(f"{n}: {a.kind}" + ("" if a.required else f"={a.default!r}")
                          for n, a in op.attrs.items())
        rows.append([op.name, op.family, arity, attrs or "-"])
    if len(rows) == 1:
        raise QJCError(f"no ops in family {args.family!r}",
                       f"families: {', '.join(sorted({o.family for o in REGISTRY.values()}))}")
    _table(rows, sys.stdout)
    return EXIT_OK


def cmd_knobs(args: argparse.Namespace) -> int:
    from qjc import knobs

    print(knobs.describe())
    return EXIT_OK


MODEL_HELP = ("a model: .qir IR text, .onnx file, Hugging Face model directory, .gguf file, or "
              "package.module:function returning (nn.Module, example_inputs[, dynamic_shapes])")


def cmd_dump(args: argparse.Namespace) -> int:
    from qjc.api import load_model, verify_graph
    from qjc.ir.printer import print_graph

    graph = load_model(args.model)
    verify_graph(graph)
    sys.stdout.write(print_graph(graph))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from qjc.explain import explain

    explain(args.model, args.target)
    return EXIT_OK


def _parse_option_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QJCError(f"-O {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _target_option_pairs(args: argparse.Namespace) -> dict[str, str]:
    """-O KEY=VALUE pairs plus the shorthands --arch (archs) and --dtype."""
    pairs = _parse_option_pairs(args.option)
    if getattr(args, "arch", None):
        pairs["archs"] = ",".join(a for part in args.arch for a in part.split(",") if a)
    if getattr(args, "dtype", None):
        pairs["dtype"] = args.dtype
    return pairs


def _dim_args(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for item in items:
        name, _, bounds = item.partition("=")
        lo, _, hi = bounds.partition(":")
        if not name or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise QJCError(f"--dim {item!r}: expected NAME=LO:HI, e.g. past=0:2048")
        out[name] = (int(lo), int(hi))
    return out


def cmd_compile(args: argparse.Namespace) -> int:
    from qjc.api import build
    from qjc.backends.base import get_backend

    model = Path(args.model)
    stem = model.stem if model.exists() else args.model.replace(":", "_").replace(".", "_")
    out = Path(args.output) if args.output else Path(f"{stem}.{args.target}.qjc")
    backend = get_backend(args.target)
    target_options = backend.options_class.from_strings(_target_option_pairs(args))
    options = {f: getattr(target_options, f) for f in target_options.field_names()}

    def progress(stage: str) -> None:
        print(f"[qjc] {stage} ...", file=sys.stderr, flush=True)

    result = build(args.model, out, target=args.target, progress=progress, optimize=not args.no_optimize,
                   dump_ir=args.dump_ir, max_seq=args.max_seq, batch=args.batch,
                   kv_block_size=args.kv_block_size, kv_blocks=args.kv_blocks, quant=args.quant,
                   group_size=args.group_size, keep=tuple(args.keep), dims=_dim_args(args.dim), **options)
    width = max(len(name) for name, _ in result.timings)
    for name, seconds in result.timings:
        print(f"  {name:<{width}}  {seconds * 1e3:9.1f} ms")
    print(f"  {'total':<{width}}  {sum(s for _, s in result.timings) * 1e3:9.1f} ms")
    if _debug_level() == 1:  # level 2 and up already printed each note as it happened
        for note in result.notes:
            print(f"[qjc] {note}", file=sys.stderr)
    manifest = result.artifact.manifest
    print(f"wrote {out} (target {manifest['target']}, {len(manifest['files'])} files + manifest)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from qjc.verify import main_verify

    return main_verify(args.artifact, args.against)


def cmd_generate(args: argparse.Namespace) -> int:
    import time

    from qjc.api import load
    from qjc.runtime.generation import TextStream, load_tokenizer

    engine = load(args.artifact)
    tokenizer = load_tokenizer(engine)
    ids = tokenizer.encode(args.prompt)
    stream = TextStream(tokenizer)
    start = time.perf_counter()
    # the engine's own loop: the native one inside a cuda engine, else the host loop
    engine.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, on_token=stream)
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    new = len(stream.tokens)
    print(f"[qjc] {len(ids)} prompt + {new} new tokens in {seconds:.2f} s "
          f"({new / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return EXIT_OK


def _load_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise QJCError(f"cannot read inputs from {path}: {e}",
                       "give a .npz file written by numpy.savez") from None


def cmd_bench(args: argparse.Namespace) -> int:
    import statistics
    import time

    import numpy as np

    from qjc.api import load
    from qjc.ir.dims import parse_dim
    from qjc.ir.dtypes import parse_dtype

    engine = load(args.artifact)
    if getattr(engine, "_native", False):  # a decoder with the native generation loop
        return _bench_llm(engine, args)
    sig = engine.signature
    env = {name: lo for name, lo, _ in sig.symbols}
    env.update({k: int(v) for k, v in _parse_option_pairs(args.dim).items()})
    rng = np.random.default_rng(0)

    def size(d: int | str) -> int:
        dim = d if isinstance(d, int) else parse_dim(d)
        return dim if isinstance(dim, int) else dim.evaluate(env)

    inputs = []
    for spec in sig.inputs:
        shape = tuple(size(d) for d in spec.shape)
        dtype = parse_dtype(spec.dtype)
        if dtype.is_float:
            data = rng.standard_normal(shape).astype(dtype.np_dtype)
        elif dtype.name == "bool":
            data = rng.random(shape) < 0.5
        else:  # token ids and indices: small non-negative numbers, never all zeros
            data = rng.integers(0, 100, shape).astype(dtype.np_dtype)
        inputs.append(data)
    if hasattr(engine, "benchmark"):  # device engines time themselves with CUDA events
        times = engine.benchmark(inputs, warmup=args.warmup, iters=args.iters)
        how = "CUDA events, inputs on the device"
    else:
        for _ in range(args.warmup):
            engine(*inputs)
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            engine(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
        how = "wall clock"
    median = statistics.median(times)
    shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(sig.inputs, inputs))
    print(f"{args.artifact} ({engine.target}) on {shapes}")
    print(f"median {median:.3f} ms ({median * 1e3:.1f} us per call) over {args.iters} runs, {how}; "
          f"min {min(times):.3f} ms, max {max(times):.3f} ms")
    return EXIT_OK


def _bench_llm(engine, args: argparse.Namespace) -> int:
    """Prefill and decode throughput of the native loop, and per-token latency percentiles."""
    gen = engine.generator
    batch = args.batch or gen.slots
    context = min(args.context, gen.max_seq - args.iters - args.warmup - 2)
    stats = gen.decode_benchmark(batch=batch, context=context, steps=args.iters, warmup=args.warmup)
    lat = sorted(gen.token_latencies(context=context, steps=args.iters))
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"{args.artifact} ({engine.target}): {batch} sequence(s), {context} tokens of context")
    print(f"prefill {batch * context / stats['prefill_ms'] * 1e3:,.0f} tokens/s ({stats['prefill_ms']:.1f} ms)")
    print(f"decode  {stats['tokens_per_s']:,.0f} tokens/s ({stats['us_per_step']:.1f} us per step, bursts without "
          "host round trips)")
    print(f"per-token latency of one sequence streamed token by token: p50 {pick(0.5):.3f} ms, p90 {pick(0.9):.3f} "
          f"ms, p99 {pick(0.99):.3f} ms")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from qjc.api import load

    engine = load(args.artifact)
    inputs = _load_npz(Path(args.inputs)) if args.inputs else {}
    names = [s.name for s in engine.signature.inputs]
    if not args.inputs and names:
        raise QJCError(f"the engine takes inputs {', '.join(names)}", "pass them with --inputs FILE.npz")
    result = engine(**inputs) if inputs else engine()
    outputs = result if isinstance(result, list) else [result]
    named = {spec.name: out for spec, out in zip(engine.signature.outputs, outputs, strict=True)}
    for name, arr in named.items():
        shape = ",".join(str(d) for d in np.shape(arr))
        print(f"{name}: {getattr(arr, 'dtype', type(arr).__name__)}[{shape}]")
    if args.out:
        np.savez(args.out, **{k: np.asarray(v) for k, v in named.items()})
        print(f"wrote {args.out}")
    return EXIT_OK


# ---- parser and entry -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from qjc import __version__
    from qjc.passes.quantize.modes import QUANT_MODES

    parser = argparse.ArgumentParser(prog="qjc", description="qjc: an ahead-of-time inference compiler")
    parser.add_argument("--version", action="version", version=f"qjc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="compile and run a built-in real model (SmolLM2-135M by default)")
    p.add_argument("-o", "--output", help="artifact directory (default: smollm2.qjc / minilm.qjc)")
    p.add_argument("--model", choices=["smollm2", "minilm"], default="smollm2")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("targets", help="list backends, whether each can run here, and broken plug-ins")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("ops", help="list the IR ops: name, family, inputs, attributes")
    p.add_argument("--family", help="only this op family")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("knobs", help="list every QJC_* environment variable")
    p.set_defaults(func=cmd_knobs)

    p = sub.add_parser("dump", help="read a model, verify it and print its IR")
    p.add_argument("model", help=MODEL_HELP)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("explain", help="op-coverage report: what the frontend converts and the target accepts")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--target", help="also report the target backend's acceptance after the standard pipeline")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compile", help="compile a model into an engine artifact")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--max-seq", type=int, default=256, help="language models: KV-cache length")
    p.add_argument("--batch", type=int, default=1, help="language models: sequences decoded at once")
    p.add_argument("--kv-block-size", type=int, default=16, help="language models: tokens per KV-cache block "
                   "(targets with a paged cache)")
    p.add_argument("--kv-blocks", type=int, help="language models: KV-cache blocks in the pool (default: enough "
                   "for every sequence to reach max-seq)")
    p.add_argument("--quant", default="none", choices=list(QUANT_MODES),
                   help="quantization of linear layers: weight-only int8 / int4 / int4-awq, or fp8 (e4m3 weights, "
                        "and activations on targets with fp8 kernels)")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64, 128, 256)")
    p.add_argument("--keep", action="append", default=[], metavar="REGEX",
                   help="keep weights whose name matches in float (repeatable), e.g. lm_head")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=LO:HI",
                   help="ONNX models: the range of a symbolic dim (repeatable), e.g. past=0:2048 for a past/present "
                        "decoder whose first step has no past")
    p.add_argument("--target", "-t", default="npu_stub", help="backend to compile for (see `qjc targets`)")
    p.add_argument("-o", "--output", help="artifact directory (default: MODEL.TARGET.qjc here)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a target option; repeat for several")
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help="GPU architecture(s) to build for, e.g. sm_90a or sm_80,sm_90a (target option archs)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="compute dtype (target option dtype)")
    p.add_argument("--no-optimize", action="store_true", help="skip the pass pipeline")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("verify", help="per-layer and end-to-end error of an artifact against its float model")
    p.add_argument("artifact")
    p.add_argument("--against", required=True, metavar="MODEL", help=MODEL_HELP)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("generate", help="generate text with a language-model artifact, streaming to stdout")
    p.add_argument("artifact")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run an artifact on inputs from a .npz file")
    p.add_argument("artifact", help="an artifact directory written by `qjc compile`")
    p.add_argument("--inputs", "-i", metavar="FILE.npz", help="inputs by name")
    p.add_argument("--out", metavar="FILE.npz", help="write the outputs here, by name")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="time an artifact on random inputs (median of N runs)")
    p.add_argument("artifact", help="an artifact directory written by `qjc compile`")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=N",
                   help="value of a symbolic dim (default: the bottom of its range)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("-n", "--iters", type=int, default=100)
    p.add_argument("--batch", type=int, help="language models: sequences decoded at once (default: all slots)")
    p.add_argument("--context", type=int, default=512, help="language models: prompt tokens before decoding")
    p.set_defaults(func=cmd_bench)
    return parser


def _debug_level() -> int:
    from qjc import knobs

    try:
        return int(knobs.DEBUG.get())
    except QJCError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version exit 0, usage errors 2
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("qjc: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except QJCError as e:
        if e.exit_code == EXIT_INTERNAL:
            print(f"internal error (a bug in qjc; please report it): {e}", file=sys.stderr)
            if _debug_level() >= 1:
                traceback.print_exc()
            return EXIT_INTERNAL
        print(f"error: {e}", file=sys.stderr)
        if _debug_level() >= 2:
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"internal error (a bug in qjc; please report it): {type(e).__name__}: {e}", file=sys.stderr)
        if _debug_level() >= 1:
            traceback.print_exc()
        else:
            print("set QJC_DEBUG=1 to see the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
