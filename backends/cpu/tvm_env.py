"""Importing TVM, and what the CPU target is.

``import tvm`` imports torch if it is installed (tvm_ffi does so eagerly, for DLPack interop), which
would make every loaded engine pay torch's import time and memory. qjc never hands torch tensors to
TVM, so the import is done with torch blocked unless torch is already loaded.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# x86-64 micro-architecture levels (the psABI) as /proc/cpuinfo flag names, for the load-time check
# that an artifact's code can run on this CPU. Level v4 adds the AVX-512 base set to v3.
_X86_LEVEL_FLAGS = {
    "x86-64": (),
    "x86-64-v2": ("sse4_1", "sse4_2", "ssse3", "popcnt"),
    "x86-64-v3": ("sse4_1", "sse4_2", "ssse3", "popcnt", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe"),
    "x86-64-v4": ("sse4_1", "sse4_2", "ssse3", "popcnt", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe",
                  "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
# LLVM feature names that matter for generated float code -> /proc/cpuinfo flag names
_LLVM_TO_CPUINFO = {
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512cd": "avx512cd", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "sse4.1": "sse4_1", "sse4.2": "sse4_2",
}


def import_tvm() -> Any:
    """The ``tvm`` module, imported without pulling in torch when torch is not loaded yet."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tvm
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def tvm_problem() -> str:
    """Why TVM cannot build CPU code here, or "" if it can."""
    try:
        tvm = import_tvm()
    except Exception as e:  # a broken install raises many kinds of errors
        return f"apache-tvm is not importable: {type(e).__name__}: {e}"
    try:
        enabled = tvm.support.libinfo().get("USE_LLVM", "OFF")
    except Exception as e:
        return f"cannot read TVM's build info: {type(e).__name__}: {e}"
    if str(enabled).upper() in ("OFF", "", "NOT-FOUND"):
        return "this TVM build has no LLVM code generator (USE_LLVM is OFF)"
    return ""


@functools.cache
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. znver5)."""
    return str(import_tvm().target.codegen.llvm_get_system_cpu())


def resolve_cpu(cpu: str) -> str:
    return host_cpu() if cpu == "native" else cpu


@dataclass(frozen=True)
class CpuTarget:
    """The LLVM target for one options set, and the vector width kernels are shaped for."""

    cpu: str  # LLVM CPU name, "native" resolved
    triple: str
    vector_bits: int
    features: tuple[str, ...]  # /proc/cpuinfo flag names the generated code needs

    @property
    def f32_lanes(self) -> int:
        return max(4, self.vector_bits // 32)

    def tvm_target(self, threads: int) -> Any:
        tvm = import_tvm()
        config: dict[str, Any] = {"kind": "llvm", "mcpu": self.cpu}
        if threads > 0:
            config["num-cores"] = threads
        return tvm.target.Target(config)


def make_target(cpu: str) -> CpuTarget:
    tvm = import_tvm()
    codegen = tvm.target.codegen
    name = resolve_cpu(cpu)
    triple = str(codegen.llvm_get_system_triple())
    target = tvm.target.Target({"kind": "llvm", "mcpu": name, "mtriple": triple})
    if not codegen.llvm_is_valid_cpu(name, triple):
        from qjc.errors import BackendError

        raise BackendError(f"LLVM does not know the CPU {name!r}",
                           "use cpu=native, a level such as x86-64-v3, or an LLVM CPU name such as znver4")
    if name in _X86_LEVEL_FLAGS:
        features = set(_X86_LEVEL_FLAGS[name])
    else:
        llvm_features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
        features = {flag for feat, flag in _LLVM_TO_CPUINFO.items() if feat in llvm_features}
    # LLVM's own vector-width query answers for the host, not for the named CPU; read it off the ISA
    bits = 512 if "avx512f" in features else 256 if "avx" in features else 128
    return CpuTarget(name, triple, bits, tuple(sorted(features)))


def missing_cpu_features(required: list[str]) -> list[str]:
    """The flags of ``required`` this machine's CPU lacks (empty when unknown: no /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return []
    have: set[str] = set()
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            have.update(line.split(":", 1)[1].split())
            break
    return [f for f in required if f not in have] if have else []


_THREADS_ENV_SET_BY_QJC = False


def configure_threads(threads: int) -> int:
    """Size TVM's (process-wide) thread pool: ``threads`` workers; with 0, TVM_NUM_THREADS if the user
    set it, else every CPU this process may run on.

    TVM reads TVM_NUM_THREADS when it first starts its pool and otherwise assumes two hardware
    threads per core (half the CPUs), which leaves half of a machine without SMT idle; so the
    variable is set here before the pool starts, and the pool resized afterwards.
    """
    global _THREADS_ENV_SET_BY_QJC
    tvm = import_tvm()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = "" if _THREADS_ENV_SET_BY_QJC else os.environ.get("TVM_NUM_THREADS", "")
    if threads > 0:
        wanted = threads
    elif env.isdigit() and int(env) > 0:
        wanted = int(env)
    else:
        wanted = available
    if not env:
        os.environ["TVM_NUM_THREADS"] = str(max(wanted, available))
        _THREADS_ENV_SET_BY_QJC = True
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(1, wanted)  # 1: the "big cores" group, i.e. all of them on a homogeneous CPU
    return wanted


def parse_kernel(source: str, **names: Any) -> Any:
    """A hand-written kernel from TVMScript text: a PrimFunc whose body, from its first top-level loop
    on, is wrapped in a root block (TVM's Relax passes inspect call_tir functions as block-structured
    TIR; the loops inside are written out directly). ``names`` are visible to the script (helpers that
    build expressions, constants)."""
    tvm = import_tvm()
    from tvm.script.parser.core.entry import parse

    lines = source.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("    for "))
    wrapped = lines[:first] + ['    with T.sblock("root"):'] + ["    " + line if line.strip() else line
                                                                 for line in lines[first:]]
    text = "\n".join(wrapped).replace("@T.prim_func(s_tir=False)", "@T.prim_func(s_tir=True)")
    return parse(text, extra_vars={"T": tvm.script.tirx, **names})
