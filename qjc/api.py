"""Public Python API: ``compile()`` a model into an engine artifact, ``load()`` one back.

``compile`` = load the model into a Graph -> verify -> the standard pass pipeline -> the target
backend's ``lower`` inside ``write_artifact`` -> load the engine. Each stage is timed; the CLI
prints the timings. ``load_model`` is the one place that decides how a model is read.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qjc.errors import MissingComponentError, QJCError

if TYPE_CHECKING:
    from qjc.artifact import Artifact
    from qjc.backends.base import Backend, TargetOptions
    from qjc.ir.graph import Graph
    from qjc.runtime.engine import Engine

DEFAULT_TARGET = "npu_stub"


@dataclass(frozen=True)
class Options:
    """Target-independent compile options (a target's own options come from its backend)."""

    target: str = DEFAULT_TARGET
    # Run the standard pass pipeline (qjc.passes.pipeline); off compiles the graph as given.
    optimize: bool = True
    # Verify the graph before the pipeline and after every pass.
    verify: bool = True
    # Write the IR after every pass into this directory (as QJC_DUMP_IR does).
    dump_ir: str | None = None
    # Language models: the static KV cache's length (prompt + generated tokens).
    max_seq: int = 256
    # Language models: sequences decoded at once (the engine's slots for continuous batching).
    batch: int = 1
    # Language models on targets with a paged KV cache: tokens per block, and blocks in the pool
    # (None: enough for every slot to reach max_seq).
    kv_block_size: int = 16
    kv_blocks: int | None = None
    # Quantization of linear layers: none, int8, int4, int4-awq (weight-only), fp8 (see passes/quantize).
    quant: str = "none"
    # Group size for int4 modes (32, 64, 128 or 256 values share a scale and zero point).
    group_size: int = 128
    # Regexes of weight names to keep in float (e.g. "lm_head").
    keep: tuple[str, ...] = ()
    # ONNX models: ranges of symbolic dims by name, ((name, lo, hi), ...) or {name: (lo, hi)}; a dim_param
    # without one ranges over 1..2**31-1 (a past/present decoder's past length needs 0 for its first step).
    dims: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", dim_ranges(self.dims))


def dim_ranges(dims: Any) -> tuple[tuple[str, int, int], ...]:
    """``dims`` as ((name, lo, hi), ...), from a {name: (lo, hi)} mapping or such tuples."""
    pairs = list(dims.items()) if isinstance(dims, dict) else [(d[0], tuple(d[1:])) for d in dims]
    out = []
    for name, bounds in pairs:
        bounds = bounds[0] if len(bounds) == 1 else bounds  # (name, (lo, hi))
        try:
            lo, hi = (int(b) for b in bounds)
        except (TypeError, ValueError):
            raise QJCError(f"dims: {name}: expected (lo, hi), got {bounds!r}") from None
        if not 0 <= lo <= hi:
            raise QJCError(f"dims: {name}: the range needs 0 <= lo <= hi, got {lo}..{hi}")
        out.append((str(name), lo, hi))
    return tuple(out)


@dataclass
class BuildResult:
    artifact: Artifact
    # (stage, seconds) in order: load, verify, passes, lower, ...
    timings: list[tuple[str, float]] = field(default_factory=list)
    # (pass, seconds) for each pass of the pipeline
    pass_timings: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- models ---------------------------------------------------------------------------------------

_FRONTEND_PENDING: dict[str, str] = {}


def _is_torch_module(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def load_model(model: Any, example_inputs: Any = None, max_seq: int = 256, batch: int = 1,
               dims: Any = ()) -> Graph:
    """Read ``model`` into a qjc Graph: a Graph as is, or a path to a ``.qir`` IR text file (its
    constants' data from ``MODEL.safetensors`` beside it, if present). Other kinds of model are
    recognized here and sent to their frontend. ``dims``: ranges of an ONNX model's symbolic dims."""
    from qjc.ir.graph import Graph

    ranges = {name: (lo, hi) for name, lo, hi in dim_ranges(dims)}
    if ranges and not (isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")):
        raise QJCError("dims (ranges of symbolic dims) apply to ONNX models; other frontends take their ranges from "
                       "the model (torch.export's Dim, the LLM frontend's max_seq)")

    if isinstance(model, Graph):
        return model
    if _is_torch_module(model) or type(model).__name__ == "ExportedProgram":
        try:
            from qjc.frontends.torch_export import from_torch
        except ImportError as e:
            raise MissingComponentError(f"compiling a torch model needs torch: {e}",
                                        "pip install 'qjc[torch]'") from None
        return from_torch(model, example_inputs)
    if isinstance(model, str) and is_module_spec(model):
        module, inputs, dynamic = call_module_spec(model)
        from qjc.frontends.torch_export import from_torch

        return from_torch(module, inputs, dynamic_shapes=dynamic)
    if not isinstance(model, (str, os.PathLike)):
        raise QJCError(f"cannot compile a {type(model).__name__}",
                       "pass a qjc Graph, an nn.Module, or a path to a .qir / .onnx / .gguf file")
    path = Path(model)
    if not path.exists():
        raise QJCError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "manifest.json").is_file():
            raise QJCError(f"{path} is a compiled qjc artifact, not a model",
                           "run it with `qjc run` or qjc.load()")
        if (path / "config.json").is_file():
            return _llm_frontend()(path, max_seq=max_seq, batch=batch)
        raise QJCError(f"{path} is a directory, not a model file")
    suffix = path.suffix.lower()
    if suffix == ".qir":
        return _load_ir_file(path)
    if suffix == ".gguf":
        return _llm_frontend()(path, max_seq=max_seq, batch=batch)
    if suffix == ".onnx":
        try:
            from qjc.frontends.onnx import from_onnx
        except ImportError as e:
            raise MissingComponentError(f"{path}: reading ONNX models needs onnx: {e}",
                                        "pip install 'qjc[onnx]'") from None
        return from_onnx(path, ranges=ranges)
    if suffix in _FRONTEND_PENDING:
        raise MissingComponentError(f"{path}: {suffix} models need {_FRONTEND_PENDING[suffix]}, "
                                    "which has not landed in this qjc yet")
    raise QJCError(f"{path}: unknown model kind {suffix or '(no extension)'!r}",
                   "qjc reads .qir (IR text), .onnx, .gguf, .pt2 files and Hugging Face directories")


def _llm_frontend() -> Callable[[Path], Graph]:
    try:
        from qjc.frontends.llm import from_llm
    except ImportError as e:
        raise MissingComponentError(f"language models need torch and transformers: {e}",
                                    "pip install 'qjc[torch,llm]'") from None
    return from_llm


def is_module_spec(text: str) -> bool:
    """`package.module:function`, not a Windows drive or an existing path."""
    head, sep, tail = text.partition(":")
    return bool(sep) and tail.isidentifier() and all(p.isidentifier() for p in head.split(".")) \
        and not Path(text).exists()


def call_module_spec(spec: str) -> tuple[Any, tuple, Any]:
    """Import `package.module:function` and call it; it returns (module, example_inputs) or
    (module, example_inputs, dynamic_shapes)."""
    import importlib

    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` does, so local modules resolve
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise QJCError(f"{spec}: cannot import: {e}") from None
    try:
        result = fn()
    except Exception as e:
        raise QJCError(f"{spec}: calling it failed: {type(e).__name__}: {e}") from e
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise QJCError(f"{spec} must return (module, example_inputs) or (module, example_inputs, dynamic_shapes), "
                       f"got {type(result).__name__}")
    module, inputs = result[0], tuple(result[1]) if isinstance(result[1], (list, tuple)) else (result[1],)
    return module, inputs, result[2] if len(result) == 3 else None


def _load_ir_file(path: Path) -> Graph:
    from qjc.artifact import attach_constants
    from qjc.ir.parser import parse_graph

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QJCError(f"cannot read {path}: {e}") from None
    graph = parse_graph(text, source=str(path))
    weights = path.with_suffix(".safetensors")
    if weights.is_file():
        from qjc.safetensors_io import load_file

        attach_constants(graph, load_file(weights), source=str(weights))
    return graph


# ---- compile ----------------------------------------------------------------------------------------


def _split_options(backend: Backend, target: str, options: dict[str, Any]) -> tuple[Options, TargetOptions]:
    general = {f.name for f in dataclasses.fields(Options)} - {"target"}
    mine = {k: v for k, v in options.items() if k in general}
    theirs = {k: v for k, v in options.items() if k not in general}
    return Options(target=target, **mine), backend.make_options(**theirs)


def verify_graph(graph: Graph) -> None:
    """Raise VerifyError listing every problem of ``graph``."""
    from qjc.ir.verifier import verify

    verify(graph)


def _optimize(graph: Graph, options: Options, capabilities: Any, pass_timings: list[tuple[str, float]],
              notes: list[str]) -> Graph:
    from qjc.passes.manager import DumpIRInstrument, PassContext, PassManager, VerifyInstrument
    from qjc.passes.pipeline import standard_pipeline
    from qjc.passes.quantize.legalize import DequantizeUnsupportedWeights
    from qjc.passes.quantize.plan import activation_pass, quantization_pass

    # quantize first: fusion then sees linears with quantized weights and fuses their dequantize;
    # fp8 activations after the weights (they look for fp8-weight linears); then weights of a type
    # the target has no kernels for become f32 (with a note)
    prefix = [quantization_pass(graph, options.quant, options.group_size, options.keep,
                                log=lambda note: notes.append(f"calibrate: {note}")),
              activation_pass(options.quant), DequantizeUnsupportedWeights()]
    passes = [p for p in prefix if p is not None] + standard_pipeline()
    manager = PassManager.from_knobs(passes)
    if not options.verify:
        manager.instruments = [i for i in manager.instruments if not isinstance(i, VerifyInstrument)]
    if options.dump_ir:
        manager.instruments.insert(0, DumpIRInstrument(options.dump_ir))
    ctx = PassContext(options=dataclasses.asdict(options), capabilities=capabilities)
    graph = manager.run(graph, ctx)
    pass_timings.extend(ctx.timings)
    notes.extend(ctx.log)
    return graph


def build(model: Any, out_dir: str | os.PathLike, target: str = DEFAULT_TARGET, example_inputs: Any = None,
          progress: Callable[[str], None] | None = None, **options: Any) -> BuildResult:
    """Compile ``model`` for ``target`` into the artifact directory ``out_dir`` (replaced
    atomically if it exists). ``progress`` is told when each stage starts."""
    from qjc.artifact import write_artifact
    from qjc.backends.base import get_backend

    backend = get_backend(target)
    general, target_options = _split_options(backend, target, options)
    timings: list[tuple[str, float]] = []
    pass_timings: list[tuple[str, float]] = []
    notes: list[str] = []

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        if progress is not None:
            progress(name)
        start = time.perf_counter()
        value = fn()
        timings.append((name, time.perf_counter() - start))
        return value

    # a copy: passes rewrite in place, and the caller's graph must stay as it was
    graph = stage("load", lambda: load_model(model, example_inputs, max_seq=general.max_seq,
                                             batch=general.batch, dims=general.dims).copy())
    if general.verify:
        stage("verify", lambda: verify_graph(graph))
    caps = backend.capabilities(target_options)
    if general.optimize:
        graph = stage("passes", lambda: _optimize(graph, general, caps, pass_timings, notes))
    artifact = stage("lower", lambda: write_artifact(
        out_dir, graph, backend.name, target_options, lambda d: backend.lower(graph, target_options, d)))
    return BuildResult(artifact, timings, pass_timings, notes)


def compile(model: Any, example_inputs: Any = None, target: str = DEFAULT_TARGET,  # noqa: A001
            out_dir: str | os.PathLike | None = None, **options: Any) -> Engine:
    """Compile ``model`` for ``target`` and return the loaded engine.

    Without ``out_dir`` the artifact goes into a temporary directory that is removed when the
    engine is garbage-collected. ``options`` are Options fields (optimize, verify, dump_ir) and
    the target's own options (see ``qjc targets``)."""
    tmp_root = None
    if out_dir is None:
        tmp_root = tempfile.mkdtemp(prefix="qjc-")
        out_dir = Path(tmp_root) / "artifact"
    try:
        result = build(model, out_dir, target=target, example_inputs=example_inputs, **options)
        engine = _load_verified(result.artifact)
    except BaseException:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    if tmp_root is not None:
        weakref.finalize(engine, shutil.rmtree, tmp_root, True)
    return engine


# ---- load --------------------------------------------------------------------------------------------


def _load_verified(artifact: Artifact) -> Engine:
    from qjc.backends.base import get_backend

    return get_backend(artifact.target).load(artifact)


def load(path: str | os.PathLike) -> Engine:
    """The engine of the artifact at ``path``: its manifest is read, every file hash checked,
    then the backend named by the manifest loads it."""
    from qjc.artifact import verify_artifact

    return _load_verified(verify_artifact(path))
