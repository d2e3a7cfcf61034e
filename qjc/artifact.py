"""The engine artifact: a directory holding ``manifest.json``, ``graph.qir`` (the final IR text),
``weights.safetensors`` (the graph's constants) and the target's own files.

Rules this module enforces:

- identical inputs and options give byte-identical files: sorted JSON keys, no timestamps, no
  absolute paths, deterministic weight layout;
- an artifact is built in a temporary sibling directory and renamed into place, so a failed
  build leaves nothing half-written and keeps the previous artifact;
- every file's SHA-256 is in the manifest and is checked before anything is loaded; the file list
  may not point outside the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from qjc.errors import ArtifactError

if TYPE_CHECKING:
    from qjc.backends.base import TargetOptions
    from qjc.ir.graph import Graph

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "graph.qir"
WEIGHTS_FILE = "weights.safetensors"

# Keys a backend's lower() may set at the top level of the manifest; any other key it returns
# goes under "backend".
BACKEND_TOP_LEVEL_KEYS = ("arch", "kv_cache", "memory_plan_bytes")

# Parts of a quantized constant beside its packed data, stored as "<name>::<part>".
_QUANT_PARTS = ("scales", "zeros")

FilesWriter = Callable[[Path], Mapping[str, Any] | None]


# ---- signature -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an engine: a name, a dtype name and dims (ints, or strings for
    symbolic dims such as "batch" or "seq+1")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> TensorSpec:
        return TensorSpec(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    symbols: tuple[tuple[str, int, int], ...] = ()  # (name, lo, hi), inclusive

    @property
    def symbol_ranges(self) -> dict[str, tuple[int, int]]:
        return {name: (lo, hi) for name, lo, hi in self.symbols}

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "symbols": {name: [lo, hi] for name, lo, hi in self.symbols},
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Signature:
        return Signature(
            tuple(TensorSpec.from_json(t) for t in d.get("inputs", [])),
            tuple(TensorSpec.from_json(t) for t in d.get("outputs", [])),
            tuple(sorted((str(k), int(v[0]), int(v[1])) for k, v in d.get("symbols", {}).items())),
        )

    @staticmethod
    def of_graph(graph: Graph) -> Signature:
        def spec(v) -> TensorSpec:
            shape = tuple(d if isinstance(d, int) else str(d) for d in v.type.shape)
            return TensorSpec(v.name, v.type.dtype.name, shape)

        symbols = tuple(sorted((name, r.lo, r.hi) for name, r in graph.symbols.items()))
        return Signature(tuple(spec(v) for v in graph.inputs), tuple(spec(v) for v in graph.outputs), symbols)


# ---- the artifact as read back -------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def signature(self) -> Signature:
        return Signature.from_json(self.manifest["signature"])

    @property
    def backend_entries(self) -> dict[str, Any]:
        return self.manifest.get("backend") or {}

    def file(self, relative: str) -> Path:
        """The path of a file the manifest lists (and so whose hash was checked)."""
        if relative not in self.manifest["files"]:
            raise ArtifactError(f"artifact {self.path}: {relative} is not listed in its manifest",
                                "rebuild the artifact with this qjc")
        return self.path / relative

    def read_text(self, relative: str) -> str:
        return self.file(relative).read_text(encoding="utf-8")

    def load_graph(self) -> Graph:
        """The final IR (graph.qir) with its constants' data from weights.safetensors."""
        from qjc.ir.parser import parse_graph

        graph = parse_graph(self.read_text(GRAPH_FILE), source=str(self.file(GRAPH_FILE)))
        tensors = {}
        if WEIGHTS_FILE in self.manifest["files"]:
            from qjc.safetensors_io import load_file

            tensors = load_file(self.file(WEIGHTS_FILE))
        attach_constants(graph, tensors, source=str(self.file(WEIGHTS_FILE)))
        return graph


# ---- weights <-> constants ----------------------------------------------------------------------



def _all_constants(graph: Graph) -> list[tuple[str, Any]]:
    """(name, Constant) for the graph and its subgraphs: one flat name space, as in the parser."""
    return [(name, c) for g in graph.all_graphs() for name, c in g.constants.items()]


def constants_to_tensors(graph: Graph) -> dict[str, np.ndarray]:
    """The constant data of the graph and its subgraphs as flat named arrays (a quantized
    constant as its packed data plus "<name>::scales" and "<name>::zeros")."""
    from qjc.ir.quant import QuantizedArray

    out: dict[str, np.ndarray] = {}
    owner: dict[str, Any] = {}
    for name, const in _all_constants(graph):
        data = const.data
        if data is None:
            raise ArtifactError(f"constant %{name} of graph {graph.name} has no data; an artifact needs it",
                                "for an IR file, put the constants' data in a .safetensors file beside it")
        if name in owner:
            if owner[name] is data:
                continue
            raise ArtifactError(f"two constants named %{name} (in different subgraphs) hold different data",
                                "constant names must be unique across a graph and its fused groups")
        owner[name] = data
        if isinstance(data, QuantizedArray):
            out[name] = data.data
            out[f"{name}::scales"] = data.scales
            if data.zeros is not None:
                out[f"{name}::zeros"] = data.zeros
        elif isinstance(data, np.ndarray):
            out[name] = data
        else:
            raise ArtifactError(f"constant %{name}: cannot store data of type {type(data).__name__}")
    return out


def attach_constants(graph: Graph, tensors: Mapping[str, np.ndarray], source: str = WEIGHTS_FILE) -> None:
    """Fill the constants of the graph and its subgraphs from ``tensors`` (by name), checking every
    shape and dtype against the declaration. Constants with inline data need no tensor."""
    from qjc.ir.dtypes import quant_scheme_of
    from qjc.ir.quant import QuantizedArray

    problems: list[str] = []
    used: set[str] = set()
    for name, const in _all_constants(graph):
        t = const.value.type
        if name not in tensors:
            if const.data is None:
                problems.append(f"%{name}: missing")
            continue
        arr = tensors[name]
        used.add(name)
        if t.dtype.is_quant:
            parts = {p: tensors.get(f"{name}::{p}") for p in _QUANT_PARTS}
            used.update(f"{name}::{p}" for p, a in parts.items() if a is not None)
            try:
                const.data = QuantizedArray(arr, parts["scales"], parts["zeros"], t.concrete({}),
                                            quant_scheme_of(t.dtype))
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                problems.append(f"%{name}: stored parts do not make a {t}: {e}")
            continue
        want = tuple(t.concrete({})) if t.is_static else None
        if arr.dtype != t.dtype.np_dtype or want is None or arr.shape != want:
            problems.append(f"%{name}: declared {t}, stored {arr.dtype}{list(arr.shape)}")
            continue
        const.data = arr
    extra = sorted(set(tensors) - used)
    if extra:
        problems.append(f"tensors not declared as constants: {', '.join(extra[:10])}")
    if problems:
        raise ArtifactError(f"{source} does not match the graph's constants:\n  - " + "\n  - ".join(problems))


# ---- writing ------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dumps_json(value: Any) -> bytes:
    """Canonical JSON for files in an artifact: sorted keys, fixed indent, trailing newline."""
    try:
        text = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"artifact metadata is not plain JSON: {e}") from None
    return (text + "\n").encode("ascii")


def _hash_tree(root: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise ArtifactError(f"artifact file {rel} is a symbolic link; "
                                    "artifacts must be self-contained")
            if rel != MANIFEST_FILE:
                files[rel] = _sha256(path)
    return dict(sorted(files.items()))


def _looks_like_artifact(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file() or not any(path.iterdir())


def write_artifact(out_dir: str | os.PathLike, graph: Graph, target: str, options: TargetOptions,
                   files_writer: FilesWriter | None = None) -> Artifact:
    """Build the artifact for ``graph`` at ``out_dir``.

    ``files_writer(tmp_dir)`` writes the target's files (usually ``backend.lower``) and returns
    its manifest entries. Everything is written into a temporary sibling directory; only when
    it is complete does it replace ``out_dir``. On any failure ``out_dir`` is left as it was.
    """
    from qjc import __version__
    from qjc.ir.printer import print_graph
    from qjc.safetensors_io import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
    if out.is_dir() and not _looks_like_artifact(out):
        raise ArtifactError(f"{out} exists and is not a qjc artifact; refusing to replace it",
                            "choose another output path or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        (tmp / GRAPH_FILE).write_text(print_graph(graph), encoding="utf-8")
        save_file(constants_to_tensors(graph), tmp / WEIGHTS_FILE)
        for rel, data in sorted(graph.meta.get("attachments", {}).items()):
            dest = _check_relative(tmp, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        entries = dict(files_writer(tmp) or {}) if files_writer is not None else {}
        if MANIFEST_FILE in entries or (tmp / MANIFEST_FILE).exists():
            raise ArtifactError(f"backend {target} wrote {MANIFEST_FILE}; qjc writes the manifest itself")
        manifest = {
            "format_version": FORMAT_VERSION,
            "qjc_version": __version__,
            "created_by": {"tool": "qjc", "version": __version__},
            "target": target,
            "target_options": options.to_json(),
            "target_options_hash": options.stable_hash(),
            "arch": list(entries.pop("arch", None) or []),
            "kv_cache": entries.pop("kv_cache", None),
            "memory_plan_bytes": entries.pop("memory_plan_bytes", None),
            "graph": {"name": graph.name, "ir": GRAPH_FILE, "weights": WEIGHTS_FILE},
            "signature": Signature.of_graph(graph).to_json(),
            "state": list(graph.state),
            "llm": graph.meta.get("llm"),
            "backend": entries,
            "files": _hash_tree(tmp),
        }
        # written last: a directory with a manifest is a complete artifact
        (tmp / MANIFEST_FILE).write_bytes(dumps_json(manifest))
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; an artifact is ordinary shared data
            executable = p.is_dir() or p.stat().st_mode & 0o100
            os.chmod(p, 0o755 if executable else 0o644)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(out, manifest)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``; an existing ``dest`` is set aside first and restored if the move
    fails. (POSIX cannot rename a directory over a non-empty one in a single step.)"""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    old.rmdir()
    os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- reading and verifying ---------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, with its format version checked (file hashes
    are not: use verify_artifact before loading anything)."""
    root = Path(path)
    mpath = root / MANIFEST_FILE
    if not root.is_dir():
        why = "" if root.exists() else " (it does not exist)"
        raise ArtifactError(f"{root} is not an artifact directory{why}")
    if not mpath.is_file() or mpath.is_symlink():
        raise ArtifactError(f"{root} is not a qjc artifact: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{mpath}: format_version is {version!r}, not an integer; "
                            "this is not a qjc artifact")
    if version != FORMAT_VERSION:
        from qjc import __version__

        writer = manifest.get("qjc_version", "an unknown version")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"artifact {root} has format version {version}, written by qjc {writer}; this qjc "
                f"({__version__}) reads format version {FORMAT_VERSION} only",
                f"load it with qjc {writer} or newer, or rebuild it with this qjc")
        raise ArtifactError(f"artifact {root} has format version {version}, which no qjc release reads "
                            f"(this qjc {__version__} reads version {FORMAT_VERSION})", "rebuild it")
    for key, kind in (("target", str), ("files", dict), ("signature", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{mpath}: {key!r} is missing or not a {kind.__name__}")
    return manifest


def _check_relative(root: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"artifact {root}: bad file name {rel!r} in its manifest")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or any(part in ("..", ".", "") for part in rel.split("/")) \
            or rel == MANIFEST_FILE:
        raise ArtifactError(f"artifact {root}: file {rel!r} in its manifest points outside the artifact")
    path = root / rel
    cursor = root
    for part in pure.parts:  # no symlink anywhere on the way: the file must live inside root
        cursor = cursor / part
        if cursor.is_symlink():
            raise ArtifactError(f"artifact {root}: {rel} goes through a symbolic link "
                                f"({cursor.relative_to(root)})")
    return path


def verify_artifact(path: str | os.PathLike) -> Artifact:
    """Check the format version and every listed file's SHA-256; return the Artifact.
    Call this before loading any of its files."""
    root = Path(path)
    manifest = read_manifest(root)
    for rel, expected in sorted(manifest["files"].items()):
        file = _check_relative(root, rel)
        if not file.is_file():
            raise ArtifactError(f"artifact {root}: {rel} is missing",
                                "the artifact is incomplete; rebuild it")
        actual = _sha256(file)
        if actual != expected:
            raise ArtifactError(
                f"artifact {root}: {rel} does not match its SHA-256 in {MANIFEST_FILE} "
                f"(expected {str(expected)[:16]}..., found {actual[:16]}...)",
                "the file was modified or corrupted after the build; rebuild the artifact")
    for required in (GRAPH_FILE,):
        if required not in manifest["files"]:
            raise ArtifactError(f"artifact {root}: its manifest does not list {required}")
    return Artifact(root, manifest)
