"""The cuda backend: generated CUDA kernels plus a generated C++ host engine per model, built with
nvcc (no GPU needed to build) and loaded through ctypes. See backend.py."""

from qjc.backends.cuda.backend import CudaBackend
from qjc.backends.cuda.options import CudaOptions

__all__ = ["CudaBackend", "CudaOptions"]
