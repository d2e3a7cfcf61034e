"""A small reader and writer of the safetensors file format (no pickle, no extra dependency).

Layout: an 8-byte little-endian unsigned header length N, N bytes of JSON, then the raw
little-endian tensor bytes. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the end of the header) and may hold a
``"__metadata__"`` map of strings.

Files written here are deterministic: sorted JSON keys, tensors laid out by alignment then name,
the header padded with spaces so the data starts on an 8-byte boundary. Tensors are contiguous
with no gaps, as the reference implementation requires; sorting by decreasing element size keeps
every tensor naturally aligned.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from qjc.errors import ArtifactError

# safetensors dtype code <-> numpy dtype
_CODES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODE_OF: dict[np.dtype, str] = {dt: code for code, dt in _CODES.items()}

_HEADER_ALIGN = 8
# The reference implementation refuses headers over 100 MB; so do we, before reading them.
_MAX_HEADER = 100_000_000
_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def dtype_code(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    try:
        return _CODE_OF[dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype]
    except KeyError:
        raise ArtifactError(f"safetensors cannot hold numpy dtype {dtype}",
                            f"supported: {', '.join(str(d) for d in _CODES.values())}") from None


def _to_little_endian_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    if sys.byteorder != "little" and arr.dtype.itemsize > 1:
        arr = arr.view(_UINT_OF_SIZE[arr.dtype.itemsize]).byteswap()
    return arr.tobytes()


def _from_little_endian(buf: memoryview | bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if sys.byteorder != "little" and dtype.itemsize > 1:
        raw = np.frombuffer(buf, dtype=_UINT_OF_SIZE[dtype.itemsize]).byteswap()
        return raw.view(dtype).reshape(shape)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors``."""
    arrays: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ArtifactError(f"bad tensor name {name!r} for a safetensors file")
        if isinstance(arr, np.generic):
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise ArtifactError(f"tensor {name!r}: expected a numpy array, got {type(arr).__name__}")
        dtype_code(arr.dtype)  # raises for unsupported dtypes
        arrays[name] = arr
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in order:
        arr = arrays[name]
        data = _to_little_endian_bytes(arr)
        header[name] = {"dtype": dtype_code(arr.dtype), "shape": [int(d) for d in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ArtifactError(f"safetensors metadata must map strings to strings; bad keys: {bad}")
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-(8 + len(text)) % _HEADER_ALIGN)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> None:
    Path(path).write_bytes(serialize(tensors, metadata))


class SafetensorsFile:
    """A parsed, validated header plus access to the file's bytes (copied or memory-mapped)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    self._fail(f"file is {size} bytes, too short for a header")
                n = int.from_bytes(head, "little")
                if n > _MAX_HEADER or 8 + n > size:
                    self._fail(f"header length {n} does not fit a {size}-byte file")
                raw = f.read(n)
        except OSError as e:
            raise ArtifactError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._fail(f"header is not valid JSON: {e}")
        if not isinstance(header, dict):
            self._fail("header is not a JSON object")
        self.data_start = 8 + n
        self.data_size = size - self.data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            self._fail("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = metadata
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self.entries[name] = self._check_entry(name, entry)

    def _fail(self, why: str):
        raise ArtifactError(f"{self.path}: not a valid safetensors file: {why}")

    def _check_entry(self, name: str, entry: object) -> tuple[np.dtype, tuple[int, ...], int, int]:
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            self._fail(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _CODES:
            self._fail(f"tensor {name!r}: unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            self._fail(f"tensor {name!r}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            self._fail(f"tensor {name!r}: bad data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= self.data_size:
            self._fail(f"tensor {name!r}: data_offsets {offsets} are outside the {self.data_size} data bytes")
        dtype = _CODES[code]
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize:
            self._fail(f"tensor {name!r}: {end - begin} bytes for {code}{shape} "
                       f"(needs {numel * dtype.itemsize})")
        return dtype, tuple(shape), begin, end

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def load(self, use_mmap: bool = False) -> dict[str, np.ndarray]:
        """Every tensor: writable copies, or read-only views of a memory map with ``use_mmap``."""
        if not self.entries:
            return {}
        with open(self.path, "rb") as f:
            if use_mmap and self.data_size:
                buf: memoryview | bytes = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            else:
                f.seek(self.data_start)
                buf = f.read()
                if len(buf) != self.data_size:
                    self._fail("the file changed while it was read")
        base = self.data_start if use_mmap and self.data_size else 0
        out: dict[str, np.ndarray] = {}
        for name in self.keys():
            dtype, shape, begin, end = self.entries[name]
            arr = _from_little_endian(buf[base + begin:base + end], dtype, shape)
            out[name] = arr if use_mmap else arr.copy()
        return out


def load_file(path: str | os.PathLike, use_mmap: bool = False) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file; ArtifactError naming the file if it is malformed."""
    return SafetensorsFile(path).load(use_mmap)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return SafetensorsFile(path).metadata
