"""npu_stub: the reference vendor backend. It runs without hardware on a simulated device that
executes the graph through qjc's numpy interpreter. Copy it to start a real NPU plug-in; see
README.md in this directory."""

from qjc.backends.npu_stub.backend import NpuStubBackend, NpuStubEngine, NpuStubOptions

__all__ = ["NpuStubBackend", "NpuStubEngine", "NpuStubOptions"]
