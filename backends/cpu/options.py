"""Target options of the cpu backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qjc.backends.base import TargetOptions


@dataclass(frozen=True)
class CpuOptions(TargetOptions):
    target: ClassVar[str] = "cpu"

    # The CPU the code is generated for: an LLVM CPU name or x86-64 level. The default runs on any
    # x86-64 machine from the last decade (AVX2 + FMA); "native" uses everything this host has
    # (AVX-512 where present) and the artifact then refuses to load on a CPU that lacks it.
    cpu: str = "x86-64-v3"
    # Worker threads of the engine; 0 means every CPU this process may run on.
    threads: int = 0

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (all CPUs) or positive, got {self.threads}")
        if not self.cpu or any(c.isspace() for c in self.cpu):
            raise ValueError(f"cpu must be an LLVM CPU name, an x86-64 level or 'native', got {self.cpu!r}")
