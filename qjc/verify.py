"""`qjc verify ARTIFACT --against MODEL`: how far a compiled (e.g. quantized) engine is from the
float model it came from — per quantized layer and end to end.

End to end runs the artifact's engine where its target runs on this machine; elsewhere (a CI machine
without the GPU, say) it runs the artifact's final IR in the interpreter and says so: that checks what
the compiler did to the model (passes, quantization), not the target's kernels. A decoder compiled onto a
paged KV cache gets the float model's tokens as one sequence in slot 0 of its slots."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.quant import QuantizedArray, dequantize


@dataclass
class LayerError:
    weight: str
    scheme: str
    weight_rel: float  # ||deq(Wq) - W|| / ||W||
    output_rel: float | None  # ||x deq(Wq)^T - x W^T|| / ||x W^T|| on the float model's own inputs


@dataclass
class VerifyReport:
    layers: list[LayerError] = field(default_factory=list)
    end_to_end_rel: list[float] = field(default_factory=list)  # per output
    perplexity: dict[str, float] = field(default_factory=dict)
    ran: str = "the engine"  # what produced the artifact's outputs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _inputs_for(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    """Test inputs: the calibration text for language models, random data otherwise."""
    llm = graph.meta.get("llm")
    if llm:
        from qjc.passes.quantize.plan import calibration_inputs

        try:
            return calibration_inputs(graph, 64)
        except QJCError:  # no tokenizer: random token ids over the vocabulary
            n = min(16, int(llm["max_seq"]))
            tokens = rng.integers(0, int(llm["vocab_size"]), (int(llm["batch"]), n))
            caches = [np.zeros(tuple(v.type.shape), v.type.dtype.np_dtype) for v in graph.inputs[2:]]
            return [tokens, np.arange(n, dtype=np.int64)] + caches
    out = []
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else min(8, graph.symbols[str(d)].hi) for d in v.type.shape)
        dt = v.type.dtype
        out.append(rng.integers(0, 2, shape).astype(dt.np_dtype) if not dt.is_float
                   else rng.standard_normal(shape).astype(dt.np_dtype))
    return out


def _float_weight_rows(name: str, wq: np.ndarray, float_graph: Graph) -> list[tuple[str, np.ndarray]]:
    """(float weight, its rows of the dequantized ``wq``) for the compiled weight ``name``: one pair, or
    one per part when the compiler merged parallel linears into one weight (passes/fusion/parallel_gemms)."""
    if name in float_graph.constants:
        return [(name, wq)]
    from qjc.passes.fusion.parallel_gemms import merged_constant_parts

    parts = merged_constant_parts(name) or []
    if not parts or any(p not in float_graph.constants for p in parts):
        return []
    rows = [float_graph.constants[p].value.type.shape[0] for p in parts]
    return list(zip(parts, np.split(wq, np.cumsum(rows)[:-1]))) if sum(rows) == wq.shape[0] else []


def verify_against(artifact_path: str, model: Any, max_seq: int = 256) -> VerifyReport:
    from qjc.api import load, load_model
    from qjc.artifact import verify_artifact
    from qjc.backends.base import get_backend
    from qjc.ir.interpreter import run

    artifact = verify_artifact(artifact_path)
    compiled = artifact.load_graph()
    float_graph = load_model(model, max_seq=int((artifact.manifest.get("llm") or {}).get("max_seq", max_seq)))
    is_paged = ((artifact.manifest.get("llm") or {}).get("kv_cache") or {}).get("layout") == "paged"
    if is_paged and not float_graph.meta.get("llm"):
        raise QJCError(f"verify: {artifact_path} is a decoder on a paged KV cache whose float model (an ONNX file "
                       "with past/present pairs) takes other inputs; verify does not translate those yet",
                       "compile the model for cpu and verify that artifact")
    inputs = _inputs_for(float_graph, np.random.default_rng(0))

    seen: dict[str, np.ndarray] = {}

    def observe(node, args, outs) -> None:
        if node.op == "linear" and float_graph.is_constant(node.inputs[1]):
            seen[node.inputs[1].name] = np.asarray(args[0], np.float64).reshape(-1, args[0].shape[-1])[:256]

    want = run(float_graph, inputs, observer=observe)
    report = VerifyReport()
    for name, const in sorted(compiled.constants.items()):
        if not isinstance(const.data, QuantizedArray):
            continue
        # a quantized weight constant is named "<float weight name>.<scheme>" (passes/quantize)
        merged = name.removesuffix("." + const.data.scheme.name).removesuffix(".awq_inv")
        for base, wq in _float_weight_rows(merged, dequantize(const.data, np.float64), float_graph):
            w = np.asarray(float_graph.constants[base].data, np.float64)
            x = seen.get(base)
            out_rel = None
            if x is not None and wq.shape == w.shape:
                out_rel = _rel(x @ wq.T, x @ w.T) if not compiled.constants.get(f"{base}.awq_inv") else None
            report.layers.append(LayerError(base, const.data.scheme.name, _rel(wq, w) if wq.shape == w.shape else
                                            float("nan"), out_rel))
    paged = paged_prompt_inputs(artifact, inputs[0][0]) if is_paged else None
    feed = paged[0] if paged else inputs
    runnable = getattr(get_backend(artifact.target), "runnable", None)
    can_run, why_not = runnable() if runnable is not None else (True, "")
    if not can_run:
        report.ran = (f"the artifact's final IR in the interpreter ({why_not}: its {artifact.target} kernels "
                      "are not checked)")
        got = run(compiled, feed)
    else:
        got = load(artifact_path)(*feed)
    got = got if isinstance(got, list) else [got]
    if paged:  # slot 0's rows of the logits against the float model's; the pools are not comparable
        got, want = [np.asarray(got[0])[:1, : paged[1]]], [np.asarray(want[0])[:1, : paged[1]]]
    report.end_to_end_rel = [_rel(np.asarray(g, np.float64), np.asarray(w, np.float64))
                             for g, w in zip(got, want) if np.asarray(w).dtype.kind == "f"]
    return report


def paged_prompt_inputs(engine: Any, prompt: Sequence[int]) -> tuple[list[np.ndarray], int]:
    """The raw forward's inputs for a decoder compiled onto a paged KV cache (``engine``: an Engine or an
    Artifact, for its manifest and signature): ``prompt`` as one sequence in slot 0, the other slots padding
    (position -1), slot 0's blocks first in the table, empty pools; and how many prompt tokens fit."""
    from qjc.ir.dtypes import parse_dtype

    llm = engine.manifest["llm"]
    kv = llm["kv_cache"]
    bs, slots, width = int(kv["block_size"]), int(llm["batch"]), int(kv["max_blocks_per_seq"])
    n = min(len(prompt), int(llm["max_seq"]), int(kv["num_blocks"]) * bs, width * bs)
    tokens = np.zeros((slots, n), np.int64)
    tokens[0] = np.asarray(prompt)[:n]
    positions = -np.ones((slots, n), np.int64)
    positions[0] = np.arange(n)
    table = -np.ones((slots, width), np.int32)
    table[0, : -(-n // bs)] = np.arange(-(-n // bs))
    pools = [np.zeros(tuple(int(d) for d in spec.shape), parse_dtype(spec.dtype).np_dtype)
             for spec in engine.signature.inputs[3:]]
    return [tokens, positions, table, *pools], n


def print_report(report: VerifyReport, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a redirected stdout
    if report.layers:
        out.write(f"{len(report.layers)} quantized layers (relative errors):\n")
        width = max(len(layer.weight) for layer in report.layers)
        for layer in report.layers:
            shown = "-" if layer.output_rel is None else f"{layer.output_rel:.2e}"
            out.write(f"  {layer.weight:<{width}}  {layer.scheme:<12} weight {layer.weight_rel:.2e}  output {shown}\n")
    else:
        out.write("no quantized layers\n")
    out.write(f"end to end: ran {report.ran}\n")
    for i, rel in enumerate(report.end_to_end_rel):
        out.write(f"end to end: output {i} relative error {rel:.3e}\n")


def main_verify(artifact: str, against: str, out: TextIO | None = None) -> int:
    report = verify_against(artifact, against)
    print_report(report, out)
    if not report.end_to_end_rel:
        raise QJCError("verify: the artifact has no float outputs to compare")
    return 0
