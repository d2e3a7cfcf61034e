"""cpu: qjc's CPU backend through Apache TVM (Relax + TIR, compiled by LLVM)."""

from qjc.backends.cpu.backend import CpuBackend
from qjc.backends.cpu.options import CpuOptions

__all__ = ["CpuBackend", "CpuOptions"]
