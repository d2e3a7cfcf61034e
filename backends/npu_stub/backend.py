"""The npu_stub backend: a vendor NPU plug-in in miniature that needs no hardware.

Its "device" has a deliberately small op table (below) so partitioning and `qjc explain` have
something to show. ``lower`` writes ``device_program.json`` — the simulated device binary: the
op sequence with each instruction's operands and the unit (device or host) that runs it.
``load`` checks that program against graph.qir and returns an engine that executes it
instruction by instruction with the reference interpreter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qjc.artifact import Artifact, dumps_json, verify_artifact
from qjc.backends.base import Backend, Capabilities, TargetOptions
from qjc.errors import ArtifactError, BackendError, UnsupportedOpsError
from qjc.ir.graph import Graph, Node
from qjc.runtime.engine import Engine

PROGRAM_FILE = "device_program.json"
PROGRAM_FORMAT = "npu_stub.program/1"
DEVICE_ARCH = "npu_stub-sim-v1"

# What the simulated device executes natively, by op family. Deliberately partial: no trig, erf,
# pow, convolutions, pooling, attention or quantized types.
DEVICE_OPS: dict[str, tuple[str, ...]] = {
    "elementwise": ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "relu",
                    "silu", "gelu", "identity", "clamp", "cast", "add", "sub", "mul", "div", "maximum",
                    "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where"),
    "matmul": ("matmul", "linear"),
    "reduction": ("sum", "mean", "max", "min", "softmax", "log_softmax"),
    "nn": ("layer_norm", "rms_norm"),
    "shape": ("reshape", "transpose", "slice", "concat", "gather", "squeeze", "unsqueeze", "flatten",
              "expand"),
}
# Floats are f32 and f16 only; integers appear as gather indices, bools as masks.
DEVICE_DTYPES = ("f32", "f16", "i32", "i64", "bool")
DEVICE_FUSED_KINDS = ("elementwise", "softmax", "layer_norm", "rms_norm")


@dataclass(frozen=True)
class NpuStubOptions(TargetOptions):
    target: ClassVar[str] = "npu_stub"

    # Simulated compute cores; recorded in the program (a real NPU would partition work by it).
    cores: int = 1
    # Let ops the device lacks run on the host CPU instead of refusing the graph. Until the
    # partitioner exists this is the npu_stub's own stand-in for a fallback backend.
    host_fallback: bool = False
    # Largest fused group the device's scheduler takes, in operands.
    max_fused_inputs: int = 8

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"cores must be at least 1, got {self.cores}")
        if self.max_fused_inputs < 1:
            raise ValueError(f"max_fused_inputs must be at least 1, got {self.max_fused_inputs}")


class NpuStubBackend(Backend):
    name: ClassVar[str] = "npu_stub"
    options_class: ClassVar[type[TargetOptions]] = NpuStubOptions
    description: ClassVar[str] = "reference vendor backend: a simulated NPU that runs on numpy"

    def available(self) -> tuple[bool, str]:
        return True, "simulated device (numpy); no hardware needed"

    def capabilities(self, options: TargetOptions) -> Capabilities:
        opts = _own(options)
        return Capabilities(
            ops=frozenset(op for ops in DEVICE_OPS.values() for op in ops),
            # with the host fallback, the host's interpreter takes quantized weights as they are
            dtypes=frozenset(DEVICE_DTYPES + (("q*",) if opts.host_fallback else ())),
            fused_kinds=frozenset(DEVICE_FUSED_KINDS),
            max_fused_inputs=opts.max_fused_inputs,
            layouts={"kv_cache": "contiguous"},
            shape_limits={"max_rank": 6, "max_dim": 1 << 20},
            notes="floats f32/f16 only; integer tensors only as indices",
        )

    def lower(self, graph: Graph, options: TargetOptions, out_dir: Path) -> dict[str, Any]:
        opts = _own(options)
        caps = self.capabilities(opts)
        instructions: list[dict[str, Any]] = []
        host_ops: dict[str, list[str]] = {}
        for node in graph.nodes:
            ok, why = caps.accepts(node, graph.symbols)
            if not ok:
                host_ops.setdefault(node.op, []).append(f"{node.label} ({why})")
            instructions.append(_instruction(node, "device" if ok else "host"))
        if host_ops and not opts.host_fallback:
            raise UnsupportedOpsError(f"target npu_stub (graph {graph.name})", host_ops)
        program = {
            "format": PROGRAM_FORMAT,
            "arch": DEVICE_ARCH,
            "cores": opts.cores,
            "inputs": [v.name for v in graph.inputs],
            "constants": sorted(graph.constants),
            "outputs": [v.name for v in graph.outputs],
            "instructions": instructions,
        }
        (out_dir / PROGRAM_FILE).write_bytes(dumps_json(program))
        return {
            "arch": [DEVICE_ARCH],
            "program": PROGRAM_FILE,
            "instructions": len(instructions),
            "host_ops": sorted(host_ops),
        }

    def load(self, artifact: Artifact | str | Path) -> NpuStubEngine:
        if not isinstance(artifact, Artifact):
            artifact = verify_artifact(artifact)
        if artifact.target != self.name:
            raise BackendError(f"artifact {artifact.path} is for target {artifact.target}, not {self.name}")
        return NpuStubEngine(artifact)


def _own(options: TargetOptions) -> NpuStubOptions:
    if not isinstance(options, NpuStubOptions):
        raise BackendError(f"npu_stub needs NpuStubOptions, got {type(options).__name__}")
    return options


def _json_attr(value: Any) -> Any:
    from qjc.ir.dims import SymExpr
    from qjc.ir.dtypes import DType

    if isinstance(value, (DType, SymExpr)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf / nan
    if isinstance(value, (list, tuple)):
        return [_json_attr(v) for v in value]
    return value


def _instruction(node: Node, unit: str) -> dict[str, Any]:
    instr: dict[str, Any] = {
        "op": node.op,
        "unit": unit,
        "inputs": [v.name for v in node.inputs],
        "outputs": [v.name for v in node.outputs],
        "attrs": {k: _json_attr(v) for k, v in sorted(node.attrs.items())},
    }
    if node.subgraph is not None:
        instr["body"] = [n.op for n in node.subgraph.nodes]
    return instr


class NpuStubEngine(Engine):
    """The simulated device: runs device_program.json with the reference interpreter."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact)
        self.graph = artifact.load_graph()
        program_file = artifact.backend_entries.get("program", PROGRAM_FILE)
        try:
            self.program = json.loads(artifact.read_text(program_file))
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{artifact.path / program_file}: not valid JSON: {e}") from None
        self._steps = self._bind_program()

    def _bind_program(self) -> list[Node]:
        """Match every instruction to its graph node, as a device driver validates a binary
        against the model it claims to run."""
        where = f"{self.path / PROGRAM_FILE}"
        if self.program.get("format") != PROGRAM_FORMAT:
            raise ArtifactError(f"{where}: program format {self.program.get('format')!r}, "
                                f"expected {PROGRAM_FORMAT}")
        node_of = {v.name: n for n in self.graph.nodes for v in n.outputs}
        defined = {v.name for v in self.graph.inputs} | set(self.graph.constants)
        steps: list[Node] = []
        for i, instr in enumerate(self.program.get("instructions", [])):
            outs = instr.get("outputs") or []
            node = node_of.get(outs[0]) if outs else None
            if node is None or node.op != instr.get("op") or [v.name for v in node.outputs] != outs \
                    or [v.name for v in node.inputs] != instr.get("inputs"):
                raise ArtifactError(f"{where}: instruction {i} ({instr.get('op')}) does not match graph.qir")
            missing = [n for n in instr["inputs"] if n not in defined]
            if missing:
                raise ArtifactError(f"{where}: instruction {i} reads {missing} before they are written")
            defined.update(outs)
            steps.append(node)
        if len(steps) != len(self.graph.nodes):
            raise ArtifactError(f"{where}: {len(steps)} instructions for {len(self.graph.nodes)} graph nodes")
        return steps

    def run(self, inputs: list[Any], symbols: dict[str, int]) -> list[Any]:
        from qjc.ir.interpreter import evaluate_node

        env: dict[str, Any] = {v.name: x for v, x in zip(self.graph.inputs, inputs, strict=True)}
        for name, const in self.graph.constants.items():
            env[name] = const.data
        for node in self._steps:
            outs = evaluate_node(node, [env[v.name] for v in node.inputs], symbols)
            env.update((v.name, x) for v, x in zip(node.outputs, outs, strict=True))
        return [env[v.name] for v in self.graph.outputs]
