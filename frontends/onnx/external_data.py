"""External tensor data, read by qjc's own code rather than onnx's loader.

A model file names the files that hold its large tensors. qjc reads them only from inside the
model's directory: absolute locations, ``..`` components and symlinks that resolve elsewhere are
rejected, and every (offset, length) is checked against the file's size and the tensor's type
before anything is read, so a hostile model cannot make qjc read other files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from qjc.errors import QJCError
from qjc.frontends.onnx.onnx_types import qjc_dtype

_DRIVE = re.compile(r"^[A-Za-z]:")


def constant_key(output_name: str) -> str:
    """How a Constant node's external ``value`` is keyed (initializers are keyed by their name)."""
    return f"{output_name}:value"


def external_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, TensorProto]]:
    """(key, tensor) for every tensor of the main graph whose data lives in an external file."""
    for tensor in graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            yield tensor.name, tensor
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_location == TensorProto.EXTERNAL:
                yield constant_key(node.output[0]), attr.t


def read_external_data(graph: onnx.GraphProto, model_path: Path) -> dict[str, np.ndarray]:
    """key -> array for every external tensor of ``graph`` (see ``external_tensors``)."""
    base_real = os.path.realpath(model_path.parent)
    return {key: _read_tensor(tensor, model_path, base_real) for key, tensor in external_tensors(graph)}


def _read_tensor(tensor: TensorProto, model_path: Path, base_real: str) -> np.ndarray:
    def fail(cause: str) -> QJCError:
        return QJCError(f"{model_path}: external data of tensor {tensor.name!r}: {cause}",
                        "external data files must be regular files inside the model's directory")

    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise fail("no location given")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or _DRIVE.match(location):
        raise fail(f"location {location!r} is an absolute path")
    if ".." in re.split(r"[\\/]+", location):
        raise fail(f"location {location!r} has a '..' component")
    real = os.path.realpath(os.path.join(model_path.parent, location))
    if os.path.commonpath([real, base_real]) != base_real:
        raise fail(f"location {location!r} resolves to {real}, outside the model's directory {base_real} "
                   "(through a symlink)")
    if not os.path.isfile(real):
        raise fail(f"location {location!r} is not a regular file")
    size = os.path.getsize(real)
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise fail(f"offset {info.get('offset')!r} or length {info.get('length')!r} is not an integer") from None
    if offset < 0 or length < 0:
        raise fail(f"negative offset {offset} or length {length}")
    if offset + length > size:
        raise fail(f"offset {offset} + length {length} = {offset + length} is past the end of {location!r} "
                   f"({size} bytes)")
    dtype = qjc_dtype(tensor.data_type, f"tensor {tensor.name!r}")
    shape = tuple(int(d) for d in tensor.dims)
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.np_dtype.itemsize
    if length != needed:
        raise fail(f"{length} bytes at offset {offset}, but a {dtype}{list(shape)} tensor takes {needed}")
    with open(real, "rb") as f:
        f.seek(offset)
        data = bytearray(f.read(length))
    if len(data) != length:
        raise fail(f"read {len(data)} of {length} bytes from {location!r}")
    # ONNX stores raw data little-endian; bytearray keeps the array writable
    array = np.frombuffer(data, dtype=dtype.np_dtype.newbyteorder("<")).reshape(shape)
    return array.astype(dtype.np_dtype, copy=False)
