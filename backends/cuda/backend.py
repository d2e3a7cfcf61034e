"""The cuda backend: generated CUDA kernels and a generated C++ host engine per model, built with
nvcc into one shared library (no GPU needed to build), loaded through ctypes.

lower(): prepare the graph (compute dtype, fused groups inlined, reductions legalized) -> plan
kernels and buffers (plan.py) -> render sources (codegen.py, templates/) -> nvcc (cached) -> copy
into the artifact: cuda/libqjc_engine.so, cuda/qjc_engine.h, cuda/src/ (the generated sources,
for reading and debugging).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from qjc import knobs
from qjc.artifact import Artifact, dumps_json, verify_artifact
from qjc.backends.base import Backend, Capabilities, TargetOptions
from qjc.backends.cuda.cexpr import SUPPORTED_DTYPES
from qjc.backends.cuda.options import CudaOptions, local_gpu_arch
from qjc.errors import BackendError
from qjc.ir.graph import Graph

LIBRARY = "cuda/libqjc_engine.so"
HEADER = "cuda/qjc_engine.h"
SOURCES = "cuda/src"
PLAN_FILE = "cuda/plan.json"
FUSED_KINDS = ("elementwise", "rms_norm", "layer_norm", "softmax", "gemm", "attention", "rope", "swiglu", "geglu",
               "gemm_epilogue")


class CudaBackend(Backend):
    name: ClassVar[str] = "cuda"
    options_class: ClassVar[type[TargetOptions]] = CudaOptions
    description: ClassVar[str] = "NVIDIA GPUs: generated CUDA kernels and C++ host engine, built with nvcc"

    def available(self) -> tuple[bool, str]:
        from qjc.backends.cuda.nvcc import find_nvcc, nvcc_version

        nvcc = find_nvcc()
        if nvcc is None:
            return False, "nvcc not found (install the CUDA toolkit or put nvcc on PATH)"
        try:
            version = nvcc_version(nvcc).split("|")[0].strip()
        except BackendError as e:
            return False, str(e)
        from qjc.backends.cuda.cublaslt_paths import find_include

        gpu = local_gpu_arch()
        where = f"GPU {gpu} here" if gpu else "no GPU here: artifacts build but need a GPU to run"
        lt = "cuBLASLt header found" if find_include(nvcc) else "no cuBLASLt header (pip install nvidia-cublas)"
        return True, f"{version}; {where}; {lt}"

    def runnable(self) -> tuple[bool, str]:
        """Whether an artifact can also run here (a GPU is present), beside building."""
        gpu = local_gpu_arch()
        return (True, f"GPU {gpu}") if gpu else (False, "no NVIDIA GPU (nvidia-smi) on this machine")

    def capabilities(self, options: TargetOptions) -> Capabilities:
        from qjc.backends.cuda.kernels.quant_weights import CUDA_QUANT_DTYPES
        from qjc.backends.cuda.plan import SUPPORTED_OPS

        opts = _own(options)
        return Capabilities(
            ops=frozenset(SUPPORTED_OPS),
            dtypes=frozenset(SUPPORTED_DTYPES) | (frozenset(CUDA_QUANT_DTYPES) if opts.quant_kernels else frozenset()),
            fused_kinds=frozenset(FUSED_KINDS),
            max_fused_inputs=64,
            # decoders get a paged KV pool ([blocks, kv_heads, block_size, head_dim]) and the native loop
            layouts={"kv_cache": "paged:bhsd"},
            shape_limits={"max_rank": 8},
            notes="quantize / dequantize and quantized weights are not supported yet; sdpa head dims <= 256; "
                  "conv2d / pooling need static spatial dims",
        )

    def lower(self, graph: Graph, options: TargetOptions, out_dir: Path) -> dict[str, Any]:
        from qjc.backends.cuda.codegen import HEADER_FILE, generate_sources, uses_blaslt
        from qjc.backends.cuda.nvcc import NvccBuilder, find_nvcc
        from qjc.backends.cuda.plan import peak_arena_bytes, plan_program
        from qjc.backends.cuda.prepare import prepare

        opts = _own(options)
        nvcc = find_nvcc(opts.nvcc)
        if nvcc is None:
            raise BackendError("the cuda target needs nvcc to build, and none was found",
                               "install the CUDA toolkit, put nvcc on PATH, or pass -O nvcc=/path/to/nvcc")
        prepared = prepare(graph, opts.compute_dtype)
        lt_include = _cublaslt_include(opts, nvcc)
        program = plan_program(prepared, opts.local_fusion, opts.norm_prologue, blaslt=lt_include is not None)
        if opts.gemm_library == "auto" and lt_include is None:
            program.notes.append("cuBLASLt header not found (pip install nvidia-cublas, or a CUDA toolkit with "
                                 "cuBLAS): large GEMMs use qjc's own tensor-core kernels")
        blaslt = uses_blaslt(program)
        builder = NvccBuilder(nvcc, opts.archs, Path(knobs.CACHE_DIR.get()), opts.max_parallel_builds,
                              include_dirs=[lt_include] if blaslt else [], link_flags=["-ldl"] if blaslt else [])
        sources = generate_sources(program, opts.archs, opts.cuda_graphs, builder.jobs)
        library = builder.build(sources.units, sources.headers)
        out = Path(out_dir)
        (out / "cuda").mkdir(exist_ok=True)
        shutil.copyfile(library, out / LIBRARY)
        shutil.copyfile(HEADER_FILE, out / HEADER)
        src_dir = out / SOURCES
        src_dir.mkdir(parents=True, exist_ok=True)
        for name, text in sorted(sources.all_files().items()):
            (src_dir / name).write_text(text, encoding="utf-8")
        plan_summary = {
            "steps": [{"kernel": s.kernel, "operands": s.operands, "value": s.label} for s in program.steps],
            "buffers": [{"id": b.id, "name": b.name, "dtype": b.dtype, "shape": [str(d) for d in b.shape],
                         "kind": b.kind, "live": [b.first, b.last]} for b in program.buffers],
        }
        (out / PLAN_FILE).write_bytes(dumps_json(plan_summary))
        kv = dict((graph.meta.get("llm") or {}).get("kv_cache") or {})
        if kv.get("layout") == "paged":  # the pool as this engine holds it: the ABI of its cache
            kv["dtype"] = opts.compute_dtype or kv.get("dtype")
        return {
            "arch": list(opts.archs),
            "kv_cache": kv or None,
            "memory_plan_bytes": peak_arena_bytes(program),
            "library": LIBRARY,
            "header": HEADER,
            "sources": SOURCES,
            "plan": PLAN_FILE,
            "dtype": opts.dtype,
            "compute_dtype": opts.compute_dtype or "as in the graph",
            "signature": "as the graph's: f32 inputs / outputs are cast at the boundary when dtype converts",
            "kernels": len(program.kernels),
            "steps": len(program.steps),
            "kernel_kinds": program.kernel_kinds(),
            "cuda_graphs": opts.cuda_graphs,
            # graph state (a KV pool) stays on the device in this dtype (null: the graph's own)
            "state_dtype": opts.compute_dtype,
            "nvcc": builder.version,
            # large-M GEMMs: cuBLASLt, opened by the engine at run time (qjc's kernels where it is missing)
            "gemm_library": "cublaslt" if blaslt else "qjc",
            "notes": program.notes,
        }

    def load(self, artifact: Artifact | str | Path):
        from qjc.backends.cuda.runtime import CudaEngine

        if not isinstance(artifact, Artifact):
            artifact = verify_artifact(artifact)
        if artifact.target != self.name:
            raise BackendError(f"artifact {artifact.path} is for target {artifact.target}, not {self.name}")
        return CudaEngine(artifact)


def _cublaslt_include(opts: CudaOptions, nvcc: str) -> Path | None:
    """cuBLASLt's include directory when the engine should call it, else None."""
    from qjc.backends.cuda.cublaslt_paths import find_include

    if opts.gemm_library == "qjc":
        return None
    found = find_include(nvcc)
    if found is None and opts.gemm_library == "cublaslt":
        raise BackendError("gemm_library=cublaslt, but cublasLt.h was not found in $QJC_CUBLAS_INCLUDE, next to "
                           "nvcc, in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda or an nvidia-cublas wheel",
                           "pip install nvidia-cublas, set QJC_CUBLAS_INCLUDE to its directory, or pass "
                           "-O gemm_library=qjc")
    return found


def _own(options: TargetOptions) -> CudaOptions:
    if not isinstance(options, CudaOptions):
        raise BackendError(f"cuda needs CudaOptions, got {type(options).__name__}")
    return options
