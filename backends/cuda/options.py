"""Target options of the cuda backend, and which GPU architectures to build for by default."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from qjc.backends.base import TargetOptions

# Architectures the kernels are written for: Ampere (sm_80), Ada (sm_89), Hopper (sm_90a).
KNOWN_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")
DTYPES = ("auto", "fp32", "fp16", "bf16")
FALLBACK_ARCH = "sm_90a"
GEMM_LIBRARIES = ("auto", "cublaslt", "qjc")


def arch_of_capability(major: int, minor: int) -> str:
    """The arch string to build for a device of compute capability major.minor (Hopper gets the
    arch-specific sm_90a so its own instructions are allowed)."""
    if (major, minor) == (9, 0):
        return "sm_90a"
    return f"sm_{major}{minor}"


@functools.lru_cache(maxsize=1)
def local_gpu_arch() -> str | None:
    """The arch of this machine's first GPU (through nvidia-smi), or None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)", out)
    return arch_of_capability(int(m.group(1)), int(m.group(2))) if m else None


def default_archs() -> tuple[str, ...]:
    local = local_gpu_arch()
    return (local,) if local else (FALLBACK_ARCH,)


@dataclass(frozen=True)
class CudaOptions(TargetOptions):
    target: ClassVar[str] = "cuda"

    # GPU architectures to emit machine code (SASS) for; one -gencode each. Default: this machine's
    # GPU, else sm_90a (H100 / H200).
    archs: tuple[str, ...] = ()
    # Compute dtype: "auto" keeps the graph's dtypes; "fp16" / "bf16" / "fp32" convert every f32
    # value (weights included) to that dtype. The engine's signature stays what the graph says:
    # f32 inputs are cast on the way in and outputs cast back on the way out.
    dtype: str = "auto"
    # Capture the whole forward into a CUDA graph per input shape and replay it.
    cuda_graphs: bool = True
    # nvcc to build with (None: $PATH, then /usr/local/cuda/bin).
    nvcc: str | None = None
    # Translation units compiled at once (0: one per CPU core).
    max_parallel_builds: int = 0
    # Fuse elementwise chains, reduction prologues/epilogues and GEMM epilogues inside the backend
    # (on top of whatever fused groups the graph already has).
    local_fusion: bool = True
    # An RMSNorm read only by a linear of K <= NORM_PROLOGUE_MAX_K (plan.py) becomes that GEMM's prologue:
    # no norm kernel, the GEMV sums the row's squares in its main loop (see plan.Planner.norm_prologue).
    norm_prologue: bool = True
    # Keep int8 / int4 / fp8 linear weights quantized and dequantize them in the GEMV / CUDA-core
    # GEMM (off: such weights are expanded to float at compile time). Their kernels pass the GPU tests;
    # off by default until the real-GGUF generation tests have run with them on a GPU.
    quant_kernels: bool = False
    # Large-M GEMMs of dense f32 / f16 / bf16 weights: "cublaslt" calls cuBLASLt (its header must be found at
    # build time: a CUDA toolkit or the nvidia-cublas wheel; the engine opens the library at run time and
    # falls back to qjc's kernels without it), "qjc" only qjc's own kernels, "auto" cuBLASLt where its
    # header is found. A linear of M <= 8 rows (decode) always runs qjc's GEMV.
    gemm_library: str = "auto"

    def __post_init__(self) -> None:
        archs = self.archs or default_archs()
        if isinstance(archs, str):
            archs = tuple(a.strip() for a in archs.split(",") if a.strip())
        archs = tuple(archs)
        bad = [a for a in archs if not re.fullmatch(r"sm_\d{2,3}a?", a)]
        if bad:
            raise ValueError(f"bad arch(s) {bad}; expected names like {', '.join(KNOWN_ARCHS)}")
        object.__setattr__(self, "archs", archs)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.gemm_library not in GEMM_LIBRARIES:
            raise ValueError(f"gemm_library must be one of {GEMM_LIBRARIES}, got {self.gemm_library!r}")
        if self.max_parallel_builds < 0:
            raise ValueError("max_parallel_builds must be >= 0")

    @property
    def compute_dtype(self) -> str | None:
        """The qjc dtype name f32 values become, or None to keep them."""
        return {"auto": None, "fp32": None, "fp16": "f16", "bf16": "bf16"}[self.dtype]
