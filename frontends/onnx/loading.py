"""Reading an ONNX model: the file, its external data, onnx's checker and strict shape inference.

Every failure becomes one QJCError that names the file and the cause; no protobuf or onnx
traceback reaches the user.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import onnx.inliner
import onnx.shape_inference
from google.protobuf.message import DecodeError

from qjc.errors import QJCError
from qjc.frontends.onnx.external_data import external_tensors, read_external_data
from qjc.frontends.onnx.registry import normalize_domain

# protobuf cannot serialize a message this large; onnx's in-memory checks then refuse the model
_PROTO_LIMIT = 2**31 - 1


@dataclass
class LoadedModel:
    proto: onnx.ModelProto
    source: str  # how errors name the model: its path, or the name given for a ModelProto
    external: dict[str, np.ndarray]  # external tensor data read by qjc (see external_data.py)


def default_opset(proto: onnx.ModelProto) -> int | None:
    for entry in proto.opset_import:
        if normalize_domain(entry.domain) == "":
            return int(entry.version)
    return None


def read_proto(model: onnx.ModelProto | str | os.PathLike, name: str | None = None
               ) -> tuple[onnx.ModelProto, str, Path | None]:
    """The ModelProto (external data not loaded), how to name it in errors, and its path if any."""
    if isinstance(model, onnx.ModelProto):
        return model, name or model.graph.name or "ONNX model", None
    if not isinstance(model, (str, os.PathLike)):
        raise QJCError(f"from_onnx takes an onnx.ModelProto or a path, not a {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise QJCError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as e:
        raise QJCError(f"{path}: not an ONNX model: the file does not parse as an ONNX protobuf ({e})",
                       "the file may be truncated or not an .onnx file; re-export or re-download it") from None
    except (OSError, ValueError) as e:
        raise QJCError(f"{path}: cannot read the ONNX model: {e}") from None
    if proto.ir_version == 0 or not proto.HasField("graph"):
        raise QJCError(f"{path}: not an ONNX model: it has no IR version or no graph "
                       "(empty, truncated or not an .onnx file)")
    return proto, str(path), path


def check_versions(proto: onnx.ModelProto, source: str) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise QJCError(f"{source}: IR version {proto.ir_version} is newer than the installed onnx "
                       f"{onnx.__version__} supports (up to IR version {onnx.IR_VERSION})",
                       "upgrade onnx, or export the model with an older IR version")
    opset = default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and opset > newest:
        raise QJCError(f"{source}: opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                       f"(up to opset {newest})", "upgrade onnx, or export the model with an older opset")


def _first_lines(error: Exception, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return " / ".join(lines[:n]) or type(error).__name__


def run_onnx_checks(proto: onnx.ModelProto, source: str, path: Path | None) -> None:
    """onnx's model checker and strict shape inference, their errors turned into one QJCError."""
    # A file on disk is checked by path: onnx then finds external data beside it and has no
    # 2 GB limit. An in-memory model that large cannot be serialized for the checks at all.
    if path is None and proto.ByteSize() > _PROTO_LIMIT:
        warnings.warn(f"{source}: the model is larger than 2 GB in memory; onnx's checker and shape "
                      "inference were skipped (pass its path to have them run)", stacklevel=3)
        return
    try:
        onnx.checker.check_model(str(path) if path is not None else proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise QJCError(f"{source}: onnx's checker rejects the model: {_first_lines(e)}") from None
    try:
        # External data is not loaded here, so this proto stays small whatever the weights.
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as e:
        raise QJCError(f"{source}: ONNX shape inference fails on the model: {_first_lines(e)}") from None


def load(model: onnx.ModelProto | str | os.PathLike, name: str | None = None) -> LoadedModel:
    """Read, validate and prepare ``model`` for import."""
    proto, source, path = read_proto(model, name)
    check_versions(proto, source)
    external: dict[str, np.ndarray] = {}
    if path is not None:
        external = read_external_data(proto.graph, path)
    elif any(True for _ in external_tensors(proto.graph)):
        # without a path there is no directory to confine the reads to
        key = next(external_tensors(proto.graph))[0]
        raise QJCError(f"{source}: tensor {key!r} keeps its data in an external file",
                       "pass the model's path instead of a ModelProto, so qjc can read the data beside it")
    run_onnx_checks(proto, source, path)
    return LoadedModel(inline_functions(proto, source), source, external)


def inline_functions(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """``proto`` with calls to its model-local functions replaced by their bodies, so that only
    ONNX ops remain."""
    if not proto.functions:
        return proto
    try:
        return onnx.inliner.inline_local_functions(proto)
    except Exception as e:  # onnx's inliner raises bare RuntimeErrors from C++
        raise QJCError(f"{source}: cannot inline the model's local functions: {_first_lines(e)}") from None
