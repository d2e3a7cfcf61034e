"""The nvcc driver: compile translation units in parallel (no GPU needed), link one shared library,
and cache both by content hash under ``$QJC_CACHE_DIR/cuda``.

Every object's key is sha256(source, headers, flags, nvcc version); the library's key is the
hash of its objects' keys and the link flags. Machine code (SASS) is emitted for each requested
arch (``-gencode arch=compute_XX,code=sm_XX``) and no PTX, so nothing is JIT-compiled at load.
A failing command raises BackendError with the exact command line (which works as printed: the
sources stay in the cache directory) and the tail of nvcc's output.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from qjc.errors import BackendError

NVCC_TIMEOUT_S = 900
COMMON_FLAGS = ("-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-diag-suppress", "177,550,20054",
                "--expt-relaxed-constexpr")


def find_nvcc(explicit: str | None = None) -> str | None:
    """nvcc from the option, $PATH, $CUDA_HOME or /usr/local/cuda, in that order."""
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendError(f"cannot run {nvcc} --version: {e}") from None
    lines = [line for line in out.stdout.splitlines() if "release" in line or "Build" in line]
    return " | ".join(lines) or out.stdout.strip()


def gencode_flags(archs: Sequence[str]) -> list[str]:
    flags = []
    for arch in archs:
        num = arch[len("sm_"):]
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    return flags


@dataclass(frozen=True)
class Unit:
    """One translation unit: its file name and source text."""

    name: str
    source: str


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


class NvccBuilder:
    def __init__(self, nvcc: str, archs: Sequence[str], cache_dir: Path, jobs: int = 0,
                 include_dirs: Sequence[Path] = (), link_flags: Sequence[str] = ()) -> None:
        self.nvcc = nvcc
        self.archs = tuple(archs)
        self.include_dirs = tuple(str(d) for d in include_dirs)  # beside the sources' own directory
        self.link_flags = tuple(link_flags)
        self.cache = Path(cache_dir) / "cuda"
        self.jobs = jobs or max(1, os.cpu_count() or 1)
        self.version = nvcc_version(nvcc)
        self.hits = 0
        self.misses = 0

    def compile_flags(self) -> list[str]:
        return [*COMMON_FLAGS, *gencode_flags(self.archs), *(f for d in self.include_dirs for f in ("-I", d))]

    def build(self, units: Sequence[Unit], headers: dict[str, str]) -> Path:
        """Compile ``units`` (including ``headers``) and link them; the cached library's path."""
        header_text = "".join(f"{k}\n{v}" for k, v in sorted(headers.items()))
        flags = self.compile_flags()
        keys = [_sha(u.source, header_text, " ".join(flags), self.version) for u in units]
        lib_key = _sha(*keys, "link", *self.link_flags, self.version)
        lib = self.cache / "lib" / f"{lib_key}.so"
        if lib.is_file():
            self.hits += len(units)
            return lib
        src_dir = self.cache / "src" / lib_key
        src_dir.mkdir(parents=True, exist_ok=True)
        for name, text in headers.items():
            _write_if_changed(src_dir / name, text)
        for u in units:
            _write_if_changed(src_dir / u.name, u.source)
        obj_dir = self.cache / "obj"
        obj_dir.mkdir(parents=True, exist_ok=True)
        objects = [obj_dir / f"{k}.o" for k in keys]
        todo = [(u, o) for u, o in zip(units, objects) if not o.is_file()]
        self.hits += len(units) - len(todo)
        self.misses += len(todo)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for fut in [pool.submit(self._compile, src_dir / u.name, o, src_dir, flags) for u, o in todo]:
                fut.result()
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".tmp{os.getpid()}.so")
        cmd = [self.nvcc, "-shared", "-Xcompiler", "-fPIC", *gencode_flags(self.archs), "-o", str(tmp),
               *map(str, objects), *self.link_flags]
        self._run(cmd, "linking the engine library")
        os.replace(tmp, lib)
        return lib

    def _compile(self, source: Path, obj: Path, include: Path, flags: list[str]) -> None:
        fd, tmp_name = tempfile.mkstemp(suffix=".o", dir=obj.parent)
        os.close(fd)
        cmd = [self.nvcc, *flags, "-I", str(include), "-c", str(source), "-o", tmp_name]
        try:
            self._run(cmd, f"compiling {source.name}")
            os.replace(tmp_name, obj)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def _run(self, cmd: list[str], what: str) -> None:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"nvcc timed out after {NVCC_TIMEOUT_S} s {what}",
                               f"reproduce with: {shlex.join(cmd)}") from None
        except OSError as e:
            raise BackendError(f"cannot run nvcc ({self.nvcc}): {e}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
            raise BackendError(f"nvcc failed {what} (exit {proc.returncode}):\n{tail}",
                               f"reproduce with: {shlex.join(cmd)}")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
