"""Build a graph into the engine's shared library: translate to Relax, run TVM's fusion and
lowering with qjc's schedules and kernels, compile through LLVM and export ``model.so``.

Every stage is timed; the times go to ``log`` (stderr at QJC_DEBUG >= 1) (the build's progress output).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qjc.backends.cpu.engine import LIBRARY_FILE
from qjc.backends.cpu.options import CpuOptions
from qjc.backends.cpu.schedule import schedule_pass
from qjc.backends.cpu.translate import KernelConfig, translate
from qjc.backends.cpu.tvm_env import CpuTarget, import_tvm, make_target
from qjc.backends.cpu.weights import ParamSpec
from qjc.ir.graph import Graph

ENTRY = "main"


@dataclass
class BuildReport:
    target: CpuTarget
    config: KernelConfig
    params: list[ParamSpec]
    kernels: int = 0
    dequantized_at_load: list[str] = field(default_factory=list)  # quantized weights no kernel reads


def _require_linker() -> None:
    """export_library links the object code with the system C++ compiler (CXX, else g++)."""
    import os
    import shutil

    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler.split()[0]) is None:
        from qjc.errors import MissingComponentError

        raise MissingComponentError(f"the cpu backend links its library with {compiler!r}, which is not on PATH",
                                    "install a C++ compiler (e.g. apt-get install g++) or set CXX")


def relax_pipeline(lanes: int) -> Any:
    """Fusion, qjc's schedules, then TVM's standard lowering to VM code (the CPU default pipeline
    with the schedule pass between FuseTIR and the dataflow lowering)."""
    tvm = import_tvm()
    relax = tvm.relax
    passes = [
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        schedule_pass(lanes),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    return tvm.transform.Sequential(passes, name="qjc_cpu")


def build_library(graph: Graph, options: CpuOptions, out_dir: Path,
                  log: Callable[[str], None] | None = None) -> BuildReport:
    """Write ``out_dir / LIBRARY_FILE`` for ``graph``; return what the manifest records."""
    tvm = import_tvm()
    _require_linker()
    say = log or (lambda _msg: None)
    target = make_target(options.cpu)
    config = KernelConfig.for_target(target)
    report = BuildReport(target, config, [])

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        say(f"cpu: {name} ...")
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        say(f"cpu: {name} {seconds:.2f} s")
        return value

    mod, params, report.dequantized_at_load = stage("translate", lambda: translate(graph, config))
    report.params = params
    tvm_target = target.tvm_target(options.threads)
    with tvm_target:
        mod = stage("fuse+schedule", lambda: relax_pipeline(config.lanes)(mod))
    report.kernels = sum(1 for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    executable = stage("codegen", lambda: tvm.compile(mod, target=tvm_target, relax_pipeline=None))
    stage("export", lambda: executable.export_library(str(out_dir / LIBRARY_FILE)))
    return report
