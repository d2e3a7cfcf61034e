"""The cuda engine at run time: the artifact's libqjc_engine.so through ctypes.

Inputs may be numpy arrays (copied to the GPU and back; outputs are numpy arrays) or CUDA tensors
of torch / cupy / any DLPack producer (zero copy, run on the caller's current stream; outputs are
allocated with the same library and returned without synchronizing). Neither torch nor cupy is
needed for the numpy path: the library's own helpers do the device work.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from qjc.artifact import Artifact
from qjc.backends.cuda import dlpack
from qjc.backends.cuda.cublaslt_paths import point_engine_at_library
from qjc.backends.cuda.llm_runtime import NativeGenerator, bind_llm
from qjc.errors import BackendError, QJCError
from qjc.ir.dtypes import parse_dtype
from qjc.runtime.engine import Engine
from qjc.runtime.library import load_library

_I64P = ctypes.POINTER(ctypes.c_int64)


def _bind(lib: ctypes.CDLL) -> None:
    vp, i = ctypes.c_void_p, ctypes.c_int
    sig = {
        "qjc_engine_last_error": (ctypes.c_char_p, []),
        "qjc_engine_abi_version": (i, []),
        "qjc_engine_create": (i, [ctypes.c_char_p, ctypes.POINTER(vp)]),
        "qjc_engine_destroy": (None, [vp]),
        "qjc_engine_output_shape": (i, [vp, i, ctypes.POINTER(_I64P), _I64P, ctypes.POINTER(i)]),
        "qjc_engine_run": (i, [vp, ctypes.POINTER(vp), ctypes.POINTER(_I64P), ctypes.POINTER(vp), vp]),
        "qjc_engine_set_cuda_graphs": (i, [vp, i]),
        "qjc_engine_benchmark": (i, [vp, ctypes.POINTER(vp), ctypes.POINTER(_I64P), ctypes.POINTER(vp), vp, i, i,
                                     ctypes.POINTER(ctypes.c_float)]),
        "qjc_engine_arena_bytes": (ctypes.c_int64, [vp]),
        "qjc_device_info": (i, [ctypes.POINTER(i), ctypes.POINTER(i), ctypes.POINTER(i)]),
        "qjc_compiled_archs": (ctypes.c_char_p, []),
        "qjc_alloc": (i, [ctypes.c_size_t, ctypes.POINTER(vp)]),
        "qjc_free": (i, [vp]),
        "qjc_memcpy_htod": (i, [vp, vp, ctypes.c_size_t, vp]),
        "qjc_memcpy_dtoh": (i, [vp, vp, ctypes.c_size_t, vp]),
        "qjc_stream_synchronize": (i, [vp]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def arch_runs(arch: str, major: int, minor: int) -> bool:
    """Whether SASS for ``arch`` runs on a device of compute capability major.minor (the same
    major and no newer minor; arch-specific "a" targets only on their exact chip)."""
    num = int(arch[3:].rstrip("a"))
    a_major, a_minor = divmod(num, 10)
    if arch.endswith("a"):
        return (a_major, a_minor) == (major, minor)
    return a_major == major and a_minor <= minor


class DeviceBuffer:
    """Device memory from the engine library, freed with this object."""

    def __init__(self, lib: ctypes.CDLL, nbytes: int) -> None:
        self._lib = lib
        self.nbytes = nbytes
        ptr = ctypes.c_void_p()
        if lib.qjc_alloc(max(nbytes, 1), ctypes.byref(ptr)) != 0:
            raise BackendError(f"cannot allocate {nbytes} bytes on the GPU: {lib.qjc_engine_last_error().decode()}")
        self.ptr = ptr.value

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.qjc_free(self.ptr)
            self.ptr = None


class CudaEngine(Engine):
    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact)
        entries = artifact.backend_entries
        relative = entries.get("library", "cuda/libqjc_engine.so")
        library = artifact.file(relative)
        if entries.get("gemm_library") == "cublaslt":  # the engine opens cuBLASLt itself; tell it where
            point_engine_at_library()
        try:
            self._lib = load_library(library, artifact.manifest["files"][relative])
        except OSError as e:
            raise BackendError(f"cannot load {library}: {e}") from None
        _bind(self._lib)
        self.archs = list(artifact.manifest.get("arch") or [])
        major, minor = self._device()
        if not any(arch_runs(a, major, minor) for a in self.archs):
            raise BackendError(
                f"artifact {artifact.path} holds machine code for {', '.join(self.archs) or 'no arch'}; this GPU is "
                f"sm_{major}{minor}", f"rebuild with: qjc compile MODEL --target cuda --arch sm_{major}{minor}")
        handle = ctypes.c_void_p()
        if self._lib.qjc_engine_create(str(artifact.path).encode(), ctypes.byref(handle)) != 0:
            raise BackendError(f"cannot create the engine of {artifact.path}: {self._error()}")
        self._handle = handle.value
        self._out_specs = [parse_dtype(s.dtype) for s in self.signature.outputs]
        self._shape_cache: dict[tuple, list[tuple[int, ...]]] = {}
        self._in_specs = [parse_dtype(s.dtype) for s in self.signature.inputs]
        # state (a KV pool) lives on the device in the compute dtype; host arrays are converted
        state = set(artifact.manifest.get("state") or [])
        state_dtype = artifact.backend_entries.get("state_dtype")
        self._state_inputs = {k for k, s in enumerate(self.signature.inputs) if s.name in state}
        self._state_np = parse_dtype(state_dtype).np_dtype if state_dtype else None
        self._native = bind_llm(self._lib)
        self._native_generator: NativeGenerator | None = None

    # ---- helpers -------------------------------------------------------------------------------
    def _error(self) -> str:
        return (self._lib.qjc_engine_last_error() or b"").decode(errors="replace")

    def _device(self) -> tuple[int, int]:
        major, minor, count = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if self._lib.qjc_device_info(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(count)) != 0:
            raise BackendError(f"the cuda engine needs an NVIDIA GPU and driver: {self._error()}",
                               "run it on a machine with a GPU; building works anywhere nvcc is")
        return major.value, minor.value

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.qjc_engine_destroy(handle)
            self._handle = None

    @property
    def arena_bytes(self) -> int:
        return int(self._lib.qjc_engine_arena_bytes(self._handle))

    def set_cuda_graphs(self, enabled: bool) -> None:
        self._lib.qjc_engine_set_cuda_graphs(self._handle, int(enabled))

    @staticmethod
    def _shape_table(shapes: Sequence[tuple[int, ...]]) -> tuple[Any, list[Any]]:
        arrays = [(ctypes.c_int64 * max(len(s), 1))(*s) for s in shapes]
        table = (_I64P * max(len(arrays), 1))(*[ctypes.cast(a, _I64P) for a in arrays])
        return table, arrays

    def output_shapes(self, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        table, keep = self._shape_table(shapes)
        out = []
        for k in range(len(self.signature.outputs)):
            dims = (ctypes.c_int64 * 16)()
            rank = ctypes.c_int()
            if self._lib.qjc_engine_output_shape(self._handle, k, table, dims, ctypes.byref(rank)) != 0:
                raise QJCError(self._error())
            out.append(tuple(int(dims[i]) for i in range(rank.value)))
        del keep
        return out

    def _launch(self, in_ptrs: Sequence[int], shapes: Sequence[tuple[int, ...]], out_ptrs: Sequence[int],
                stream: int) -> None:
        table, keep = self._shape_table(shapes)
        ins = (ctypes.c_void_p * max(len(in_ptrs), 1))(*in_ptrs)
        outs = (ctypes.c_void_p * max(len(out_ptrs), 1))(*out_ptrs)
        rc = self._lib.qjc_engine_run(self._handle, ins, table, outs, ctypes.c_void_p(stream or None))
        del keep
        if rc != 0:
            raise BackendError(f"cuda engine run failed: {self._error()}")

    # ---- calling -------------------------------------------------------------------------------
    def __call__(self, *inputs: Any, **named: Any):
        values = list(inputs) if inputs else [named[s.name] for s in self.signature.inputs if s.name in named]
        if values and any(dlpack.is_cuda_tensor(x) for x in values) and len(values) == len(self.signature.inputs):
            outputs = self._run_device(values)
            return outputs[0] if len(outputs) == 1 else outputs
        return super().__call__(*inputs, **named)

    def run(self, inputs: list[Any], symbols: dict[str, int]) -> list[np.ndarray]:
        """numpy in, numpy out: host pointers go straight to the engine, which copies them."""
        arrays = [np.ascontiguousarray(a) for a in inputs]
        shapes = [tuple(int(d) for d in a.shape) for a in arrays]
        first_state = len(self._out_specs) - len(self._state_inputs)
        convert = bool(self._state_inputs) and self._state_np is not None
        if convert:
            arrays = [a.astype(self._state_np) if k in self._state_inputs else a for k, a in enumerate(arrays)]
        outs = [np.empty(shape, dtype=self._state_np if convert and k >= first_state else spec.np_dtype)
                for k, (shape, spec) in enumerate(zip(self.output_shapes(shapes), self._out_specs))]
        self._launch([a.ctypes.data for a in arrays], shapes, [o.ctypes.data for o in outs], 0)
        if self._lib.qjc_stream_synchronize(None) != 0:
            raise BackendError(f"cuda engine run failed: {self._error()}")
        if convert:
            outs = [o.astype(spec.np_dtype) if k >= first_state else o
                    for k, (o, spec) in enumerate(zip(outs, self._out_specs))]
        return outs

    # ---- language models -----------------------------------------------------------------------
    @property
    def generator(self) -> NativeGenerator:
        """The native generation loop (decoders on a paged KV cache)."""
        if not self._native:
            raise QJCError(f"{self.path} has no native generation loop (not a decoder with a paged KV cache)")
        if self._native_generator is None:
            self._native_generator = NativeGenerator(self)
        return self._native_generator

    def generate(self, prompt: Any, max_new_tokens: int = 64, **options: Any) -> Any:
        if not self._native:
            return super().generate(prompt, max_new_tokens, **options)
        return self.generator.generate(prompt, max_new_tokens, **options)

    def decode_benchmark(self, batch: int | None = None, context: int = 512, steps: int = 128,
                         warmup: int = 16) -> dict[str, float]:
        return self.generator.decode_benchmark(batch, context, steps, warmup)

    def _run_device(self, values: list[Any]) -> list[Any]:
        if all(type(x).__module__.startswith("torch") for x in values):
            return self._run_torch(values)
        stream, alloc = _stream_and_allocator(values)
        tensors = []
        for spec, want, x in zip(self.signature.inputs, self._in_specs, values):
            if not dlpack.is_cuda_tensor(x):
                raise QJCError(f"input {spec.name!r}: mix of CUDA tensors and host arrays",
                               "pass every input on the GPU, or every input as a numpy array")
            t = dlpack.read(x, stream, spec.name)
            if t.dtype != want.name and not (want.name == "bool" and t.dtype == "u8"):
                raise QJCError(f"input {spec.name!r}: expected dtype {spec.dtype} ({spec}), got {t.dtype}")
            tensors.append(t)

        self._bind_shapes([_Shaped(t.shape) for t in tensors])
        shapes = [t.shape for t in tensors]
        outputs = [alloc(shape, spec) for shape, spec in zip(self.output_shapes(shapes), self._out_specs)]
        self._launch([t.pointer for t in tensors], shapes, [_pointer_of(o) for o in outputs], stream)
        del tensors
        return outputs

    def _run_torch(self, values: list[Any]) -> list[Any]:
        """torch CUDA tensors without the DLPack round trip (the common case, kept cheap: a call
        costs a few microseconds of Python)."""
        import torch

        shapes = []
        for spec, want, x in zip(self.signature.inputs, self._in_specs, values):
            if not x.is_cuda:
                raise QJCError(f"input {spec.name!r}: mix of CUDA tensors and host arrays",
                               "pass every input on the GPU, or every input as a numpy array")
            if _torch_names().get(x.dtype) != want.name:
                raise QJCError(f"input {spec.name!r}: expected dtype {spec.dtype} ({spec}), got {x.dtype}")
            if not x.is_contiguous():
                raise QJCError(f"input {spec.name!r} is not contiguous", "pass x.contiguous()")
            shapes.append(tuple(x.shape))
        key = tuple(shapes)
        out_shapes = self._shape_cache.get(key)
        if out_shapes is None:
            self._bind_shapes([_Shaped(s) for s in shapes])
            out_shapes = self.output_shapes(shapes)
            if len(self._shape_cache) < 64:
                self._shape_cache[key] = out_shapes
        device = values[0].device if values else torch.device("cuda")
        outputs = [torch.empty(shape, dtype=_torch_dtype(spec.name), device=device)
                   for shape, spec in zip(out_shapes, self._out_specs)]
        stream = torch.cuda.current_stream(device).cuda_stream
        self._launch([x.data_ptr() for x in values], shapes, [o.data_ptr() for o in outputs], stream)
        return outputs

    # ---- timing --------------------------------------------------------------------------------
    def benchmark(self, inputs: Sequence[np.ndarray], warmup: int = 10, iters: int = 50) -> list[float]:
        """Per-run milliseconds (CUDA events around each run, inputs already on the GPU)."""
        arrays = [np.ascontiguousarray(a) for a in inputs]
        shapes = [tuple(int(d) for d in a.shape) for a in arrays]
        dev_in = [DeviceBuffer(self._lib, a.nbytes) for a in arrays]
        for buf, a in zip(dev_in, arrays):
            if self._lib.qjc_memcpy_htod(buf.ptr, a.ctypes.data, a.nbytes, None) != 0:
                raise BackendError(self._error())
        out_bytes = [int(np.prod(s)) * spec.np_dtype.itemsize for s, spec in
                     zip(self.output_shapes(shapes), self._out_specs)]
        dev_out = [DeviceBuffer(self._lib, n) for n in out_bytes]
        table, keep = self._shape_table(shapes)
        ins = (ctypes.c_void_p * max(len(dev_in), 1))(*[b.ptr for b in dev_in])
        outs = (ctypes.c_void_p * max(len(dev_out), 1))(*[b.ptr for b in dev_out])
        times = (ctypes.c_float * iters)()
        rc = self._lib.qjc_engine_benchmark(self._handle, ins, table, outs, None, warmup, iters, times)
        del keep
        if rc != 0:
            raise BackendError(f"benchmark failed: {self._error()}")
        return [float(t) for t in times]


def _stream_and_allocator(values: list[Any]):
    module = type(next(x for x in values if dlpack.is_cuda_tensor(x))).__module__.split(".")[0]
    if module == "torch":
        import torch

        device = next(x.device for x in values if dlpack.is_cuda_tensor(x))
        stream = torch.cuda.current_stream(device).cuda_stream

        def alloc(shape, spec):
            return torch.empty(shape, dtype=_torch_dtype(spec.name), device=device)

        return int(stream), alloc
    if module == "cupy":
        import cupy

        stream = cupy.cuda.get_current_stream().ptr

        def alloc(shape, spec):
            if spec.name == "bf16":
                raise QJCError("cupy has no bfloat16 arrays; pass torch tensors or numpy arrays")
            return cupy.empty(shape, dtype=spec.np_dtype)

        return int(stream), alloc
    raise QJCError(f"CUDA tensors from {module} are not supported for outputs", "pass torch or cupy tensors")


class _Shaped:
    """Something with a .shape, for Engine._bind_shapes."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


@functools.cache
def _torch_dtypes() -> dict[str, Any]:
    """qjc dtype name -> torch dtype (empty without torch); looked up on every call, built once."""
    try:
        import torch
    except ImportError:
        return {}
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
            "i64": torch.int64, "i32": torch.int32, "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool}


@functools.cache
def _torch_names() -> dict[Any, str]:
    return {t: name for name, t in _torch_dtypes().items()}


def _torch_dtype(name: str):
    return _torch_dtypes()[name]


def _pointer_of(x: Any) -> int:
    if hasattr(x, "data_ptr"):
        return int(x.data_ptr())
    return int(x.data.ptr)
