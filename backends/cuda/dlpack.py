"""Read a DLPack capsule (``x.__dlpack__()``) with ctypes: device pointer, dtype, shape, strides.

The capsule is not consumed (its name stays "dltensor"), so the producer's deleter runs when the
capsule is garbage-collected; keep it alive until the work that reads the pointer is enqueued.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from qjc.errors import QJCError

KDL_CUDA = 2
KDL_CUDA_MANAGED = 13
# (type code, bits) -> qjc dtype name (kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLBool 6)
_DTYPES = {(2, 32): "f32", (2, 16): "f16", (4, 16): "bf16", (2, 64): "f64", (0, 64): "i64", (0, 32): "i32",
           (0, 8): "i8", (1, 8): "u8", (6, 8): "bool"}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass
class DeviceTensor:
    pointer: int
    dtype: str  # qjc dtype name
    shape: tuple[int, ...]
    device_id: int
    capsule: Any  # keeps the producer's memory alive


def is_cuda_tensor(x: Any) -> bool:
    device = getattr(x, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        kind, _ = device()
    except Exception:
        return False
    return int(kind) in (KDL_CUDA, KDL_CUDA_MANAGED)


def read(x: Any, stream: int | None, name: str) -> DeviceTensor:
    """The device tensor behind ``x`` (torch / cupy / any DLPack producer on a CUDA device),
    made ready on ``stream`` (a cudaStream_t handle; 0 means the legacy default stream)."""
    dl_stream = 1 if not stream else stream  # DLPack spells the legacy default stream 1
    try:
        capsule = x.__dlpack__(stream=dl_stream)
    except TypeError:
        capsule = x.__dlpack__()
    try:
        address = _get_pointer(capsule, b"dltensor")
    except ValueError as e:
        raise QJCError(f"input {name!r}: not a DLPack capsule ({e})") from None
    t = _DLManagedTensor.from_address(address).dl_tensor
    key = (int(t.dtype.code), int(t.dtype.bits))
    if t.dtype.lanes != 1 or key not in _DTYPES:
        raise QJCError(f"input {name!r}: DLPack dtype (code {key[0]}, {key[1]} bits, {t.dtype.lanes} lanes) "
                       "has no qjc equivalent")
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        expected = 1
        for i in reversed(range(t.ndim)):
            if shape[i] != 1 and int(t.strides[i]) != expected:
                raise QJCError(f"input {name!r} is not contiguous", "pass x.contiguous()")
            expected *= shape[i]
    pointer = int(t.data or 0) + int(t.byte_offset)
    return DeviceTensor(pointer, _DTYPES[key], shape, int(t.device.device_id), capsule)
