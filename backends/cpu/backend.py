"""The cpu backend: qjc graphs compiled through Apache TVM (Relax + TIR) and LLVM into a shared
library that TVM's Relax VM runs.

``lower`` writes ``model.so`` (the compiled function ``main(inputs..., weights...) -> (outputs...)``)
and records, in the manifest, the weight parameters and how each is packed from
weights.safetensors. ``load`` verifies the artifact and returns a CpuEngine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

from qjc.artifact import Artifact, verify_artifact
from qjc.backends.base import Backend, Capabilities, TargetOptions
from qjc.backends.cpu.options import CpuOptions
from qjc.errors import BackendError, MissingComponentError, UnsupportedOpsError
from qjc.ir.graph import Graph

# Ops with a converter (backends/cpu/ops_*.py), by family.
CPU_OPS: dict[str, tuple[str, ...]] = {
    "elementwise": ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf",
                    "sigmoid", "relu", "silu", "gelu", "floor", "ceil", "identity", "clamp", "cast", "add",
                    "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
                    "logical_and", "logical_or", "logical_xor", "logical_not", "where"),
    "matmul": ("matmul", "linear"),
    "quant": ("dequantize",),
    "reduction": ("sum", "mean", "max", "min", "prod", "argmax", "argmin", "softmax", "log_softmax", "cumsum"),
    "nn": ("layer_norm", "rms_norm", "batch_norm", "conv2d", "max_pool2d", "avg_pool2d"),
    "attention": ("sdpa",),
    "shape": ("reshape", "transpose", "slice", "concat", "split", "expand", "squeeze", "unsqueeze", "gather",
              "gather_elements", "index", "index_copy", "full", "iota", "flatten", "pad"),
}
# f32 is the float type of every kernel; integers and bool appear as indices, masks and shape math.
# Quantized weights (4 / 8 bits, grouped or per channel, symmetric or with a zero point / float
# offset) feed linear's quantized GEMM, which dequantizes in registers (kernel_gemm.py); one the
# kernel cannot take (odd groups, f64 scales, a dequantize feeding anything else) is dequantized to f32
# at load time instead and the manifest lists it under "dequantized_at_load".
CPU_DTYPES = ("f32", "i64", "i32", "i8", "u8", "bool")
CPU_QUANT_DTYPES = ("q4g*_*", "q4c*_*", "q8g*_*", "q8c*_*")
# Fused groups are translated op by op and re-fused by TVM, so every kind the fusion pass makes is taken.
CPU_FUSED_KINDS = ("elementwise", "rms_norm", "layer_norm", "softmax", "gemm", "attention", "rope", "swiglu",
                   "geglu")


class CpuBackend(Backend):
    name: ClassVar[str] = "cpu"
    options_class: ClassVar[type[TargetOptions]] = CpuOptions
    description: ClassVar[str] = "x86-64 CPUs through Apache TVM (Relax + TIR) and LLVM"

    def available(self) -> tuple[bool, str]:
        from qjc.backends.cpu.tvm_env import tvm_problem

        problem = tvm_problem()
        if problem:
            return False, f"{problem} (pip install 'qjc[cpu]')"
        tvm = sys.modules["tvm"]
        return True, f"TVM {tvm.__version__} with LLVM"

    def capabilities(self, options: TargetOptions) -> Capabilities:
        _own(options)
        return Capabilities(
            ops=frozenset(op for ops in CPU_OPS.values() for op in ops),
            dtypes=frozenset(CPU_DTYPES + CPU_QUANT_DTYPES),
            fused_kinds=frozenset(CPU_FUSED_KINDS),
            max_fused_inputs=64,
            layouts={"kv_cache": "contiguous"},
            notes="floats are f32; weights of linear / matmul are packed into column panels at load time; "
                  "quantized linear weights stay quantized (dequantized in the GEMM's registers)",
        )

    def lower(self, graph: Graph, options: TargetOptions, out_dir: Path) -> dict[str, Any]:
        opts = _own(options)
        self._check_supported(graph, opts)
        from qjc import knobs
        from qjc.backends.cpu.compile import ENTRY, LIBRARY_FILE, build_library

        def log(message: str) -> None:
            if knobs.DEBUG.get() >= 1:
                print(message, file=sys.stderr, flush=True)

        report = build_library(graph, opts, Path(out_dir), log)
        tvm = sys.modules["tvm"]
        entries: dict[str, Any] = {
            "arch": [f"{report.target.triple.split('-')[0]}-{report.target.cpu}"],
            "library": LIBRARY_FILE,
            "entry": ENTRY,
            "cpu": report.target.cpu,
            "cpu_features": list(report.target.features),
            "vector_bits": report.target.vector_bits,
            "gemm_tile": [report.config.gemm_rows, report.config.gemm_cols],
            "kernels": report.kernels,
            "params": [p.to_json() for p in report.params],
            "tvm_version": str(tvm.__version__),
        }
        if report.dequantized_at_load:
            # quantized constants read by something other than a quantized GEMM: f32 in memory
            entries["dequantized_at_load"] = report.dequantized_at_load
            log(f"cpu: {len(report.dequantized_at_load)} quantized weight(s) dequantized to f32 at load time "
                "(no quantized kernel reads them)")
        return entries

    def _check_supported(self, graph: Graph, options: CpuOptions) -> None:
        from qjc.backends.cpu.tvm_env import tvm_problem

        problem = tvm_problem()
        if problem:
            raise MissingComponentError(f"the cpu backend needs Apache TVM: {problem}", "pip install 'qjc[cpu]'")
        caps = self.capabilities(options)
        unsupported: dict[str, list[str]] = {}
        for node in graph.nodes:
            ok, why = caps.accepts(node, graph.symbols)
            if not ok:
                unsupported.setdefault(node.op, []).append(f"{node.label} ({why})")
        if unsupported:
            raise UnsupportedOpsError(f"target cpu (graph {graph.name})", unsupported)

    def load(self, artifact: Artifact | str | Path) -> Any:
        if not isinstance(artifact, Artifact):
            artifact = verify_artifact(artifact)
        if artifact.target != self.name:
            raise BackendError(f"artifact {artifact.path} is for target {artifact.target}, not {self.name}")
        from qjc.backends.cpu.engine import CpuEngine

        return CpuEngine(artifact)


def _own(options: TargetOptions) -> CpuOptions:
    if not isinstance(options, CpuOptions):
        raise BackendError(f"the cpu backend needs CpuOptions, got {type(options).__name__}")
    return options
