"""Where cuBLASLt's header (to build) and library (to run) are on this machine.

The header comes with a CUDA toolkit or with the ``nvidia-cublas`` wheel (``nvidia/cu13/include``), which
``qjc[cuda]`` installs so machines without a toolkit build the same engine. The engine opens the
library itself at run time (templates/blaslt.cu.j2); the runtime points it at the wheel's copy when
there is one (``QJC_CUBLASLT_LIB``), else the dynamic loader searches by soname.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HEADER = "cublasLt.h"
INCLUDE_ENV = "QJC_CUBLAS_INCLUDE"  # a directory holding cublasLt.h, tried first
LIBRARY_ENV = "QJC_CUBLASLT_LIB"  # the library's path; read by the engine itself
SONAME = "libcublasLt.so.13"  # the major version the engine is built against (blaslt.cu.j2 checks it)
_warned: set[str] = set()


def _wheel_dirs(sub: str) -> list[Path]:
    """``nvidia/<package>/<sub>`` of every installed NVIDIA wheel (a namespace package)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted(d for r in roots for d in Path(r).glob(f"*/{sub}") if d.is_dir())


def find_include(nvcc: str | None = None) -> Path | None:
    """The directory holding cublasLt.h: $QJC_CUBLAS_INCLUDE, the toolkit of ``nvcc``, $CUDA_HOME, $CUDA_PATH,
    /usr/local/cuda, then the nvidia-cublas wheel."""
    candidates = [os.environ.get(INCLUDE_ENV)]
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent / "include"))
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append("/usr/local/cuda/include")
    candidates += [str(d) for d in _wheel_dirs("include")]
    for c in candidates:
        if c and (Path(c) / HEADER).is_file():
            return Path(c)
    return None


def find_library() -> Path | None:
    """The nvidia-cublas wheel's libcublasLt (None: leave the search to the dynamic loader)."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        return Path(explicit)
    for d in _wheel_dirs("lib"):
        found = sorted(d.glob("libcublasLt.so.*"))
        if found:
            return found[0]
    return None


def point_engine_at_library(warn=None) -> Path | None:
    """Set $QJC_CUBLASLT_LIB for engines loaded in this process (unless the user set it); the path or None.
    Where neither the wheel nor the dynamic loader has the library, say once (``warn``, default stderr) that
    the engine will run qjc's own, slower GEMMs."""
    lib = find_library()
    if lib is not None and not os.environ.get(LIBRARY_ENV):
        os.environ[LIBRARY_ENV] = str(lib)
    if lib is None and SONAME not in _warned and not _loader_finds(SONAME):
        _warned.add(SONAME)
        (warn or _stderr)(f"qjc: this engine calls cuBLASLt for large GEMMs, but {SONAME} was not found: qjc's own, "
                          "slower GEMMs run instead (pip install nvidia-cublas, or set QJC_CUBLASLT_LIB)")
    return lib



def _loader_finds(name: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)
