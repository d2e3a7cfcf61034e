"""`qjc explain MODEL [--target T]`: an op-coverage report, without compiling.

For every op of the model: how often it occurs, whether the frontend converts it, and - once it
is in qjc's IR and through the standard pipeline - whether the target backend accepts each op and
fused group (from the backend's declared Capabilities). Then the kernel count and the planned
arena when the passes that compute them are present.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from qjc.ir import Graph


@dataclass
class Coverage:
    source_kind: str  # "torch.export", "onnx", "qir"
    ops: dict[str, tuple[int, bool]] = field(default_factory=dict)  # source op -> (count, converted)
    graph: Graph | None = None  # the imported IR, when every op converts

    @property
    def complete(self) -> bool:
        return all(ok for _, ok in self.ops.values())


def _torch_coverage(ep, dynamic, source: str) -> Coverage:
    from qjc.frontends.torch_export import coverage, import_exported

    cov = Coverage("torch.export", coverage(ep))
    if cov.complete:
        cov.graph = import_exported(ep, "main", dynamic, source)
    return cov


def frontend_coverage(model: Any, example_inputs: Any = None) -> Coverage:
    """Read ``model`` far enough to know which of its ops the frontend converts."""
    from qjc.api import call_module_spec, is_module_spec, load_model

    if isinstance(model, str) and is_module_spec(model):
        from qjc.frontends.torch_export import decompose, export_module

        module, inputs, dynamic = call_module_spec(model)
        return _torch_coverage(decompose(export_module(module, inputs, dynamic)), dynamic, model)
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file() or path.suffix.lower() == ".gguf":
        from qjc.frontends.llm import export_program, load_causal_lm

        loaded = load_causal_lm(path, tokenizer=False)
        ep, dynamic = export_program(loaded.model)
        return _torch_coverage(ep, dynamic, str(path))
    if path.suffix.lower() == ".onnx":
        from qjc.frontends.onnx import coverage, from_onnx

        cov = Coverage("onnx", coverage(path))
        if cov.complete:
            cov.graph = from_onnx(path)
        return cov
    graph = load_model(model, example_inputs)
    counts = Counter(n.op for n in graph.nodes)
    return Coverage("qir", {op: (n, True) for op, n in counts.items()}, graph)


def _rows(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        out.write("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def explain(model: Any, target: str | None = None, out: TextIO | None = None) -> Coverage:
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a redirected stdout
    cov = frontend_coverage(model)
    total = sum(n for n, _ in cov.ops.values())
    missing = [op for op, (_, ok) in cov.ops.items() if not ok]
    out.write(f"model {model}: {total} ops of {len(cov.ops)} kinds through {cov.source_kind}; "
              f"{len(missing)} kind(s) not converted\n")
    _rows(out, ["op", "count", "converted"],
          [[op, str(n), "yes" if ok else "NO"] for op, (n, ok) in sorted(cov.ops.items())])
    if cov.graph is None:
        out.write("the IR report needs every op converted; see the NO rows above\n")
        return cov
    _explain_target(cov.graph, target, out)
    return cov


def _explain_target(graph: Graph, target: str | None, out: TextIO) -> None:
    """The standard pipeline for ``target`` (or, without one, as if every fusion were allowed)."""
    from qjc.backends.base import get_backend
    from qjc.passes.manager import PassContext, PassManager
    from qjc.passes.pipeline import standard_pipeline

    caps = None
    if target is not None:
        backend = get_backend(target)
        caps = backend.capabilities(backend.options_class())
    graph = PassManager(standard_pipeline()).run(graph.copy(), PassContext(capabilities=caps))
    rows: dict[str, list[Any]] = {}
    for node in graph.nodes:
        key = f"fused:{node.attrs['kind']}" if node.op == "fused" else node.op
        ok, why = caps.accepts(node, graph.symbols) if caps is not None else (True, "")
        row = rows.setdefault(key, [0, ok, why])
        row[0] += 1
        if not ok:
            row[1], row[2] = False, why
    where = f"target {target}" if target else "no target (every fusion allowed)"
    out.write(f"\n{where}: {len(graph.nodes)} nodes after the standard pipeline\n")
    _rows(out, ["IR op / fused kind", "count", "accepted", "why not"],
          [[k, str(n), "yes" if ok else "NO", "" if ok else why] for k, (n, ok, why) in sorted(rows.items())])
    fused = [n for n in graph.nodes if n.op == "fused"]
    if fused:
        kinds = Counter(n.attrs["kind"] for n in fused)
        out.write(f"fusion groups: {len(fused)} ({', '.join(f'{k} x{c}' for k, c in kinds.items())})\n")
    _optional_reports(graph, out)


def _optional_reports(graph: Graph, out: TextIO) -> None:
    """Kernel counts and the memory plan, from the fusion and planning passes."""
    try:
        from qjc.passes.fusion import kernel_report
    except ImportError:
        kernel_report = None
    if kernel_report is not None:
        report = kernel_report(graph)
        out.write("kernels: " + ", ".join(f"{k}={v}" for k, v in report.items()) + "\n")
    plan = getattr(graph, "memory_plan", None)
    if plan is not None:
        out.write(f"memory plan: arena {plan.arena_bytes / 2**20:.2f} MiB "
                  f"(naive sum {plan.naive_bytes / 2**20:.2f} MiB)\n")
