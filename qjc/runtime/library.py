"""Loading an artifact's compiled library so that a rebuilt artifact is never served by a stale one.

The dynamic loader hands back an already-loaded library when asked for the same path again, even after
the file there was replaced. A process that loads an artifact, rebuilds another model into the same
directory and loads it would run the first model's engine on the second model's weights (seen in a
benchmark that reused one output directory per batch size: the engine then reported the first model's
lm_head size). So each path remembers the content it was loaded with, and different content at a path
seen before is loaded from a copy named after its hash.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import shutil
import tempfile
import threading
from pathlib import Path

from qjc.errors import ArtifactError

_loaded: dict[str, str] = {}  # resolved path -> SHA-256 of the library first loaded from it
_lock = threading.Lock()
_copies: Path | None = None  # this process's own directory (mode 0700): nobody else can plant a library


def _copy_dir() -> Path:
    global _copies
    if _copies is None:
        _copies = Path(tempfile.mkdtemp(prefix="qjc-engine-libraries-"))
        # a loaded library's file may go: the loader keeps its mapping
        atexit.register(shutil.rmtree, _copies, True)
    return _copies


def path_to_load(library: Path, digest: str) -> Path:
    """The path to dlopen for ``library`` whose content has SHA-256 ``digest``."""
    key = str(library.resolve())
    with _lock:
        first = _loaded.setdefault(key, digest)
        if first == digest:
            return library
        copy = _copy_dir() / f"{digest}{library.suffix}"
        if not copy.is_file():
            data = library.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:  # changed since the artifact's hashes were checked
                raise ArtifactError(f"{library} changed while it was being loaded", "load the artifact again")
            copy.write_bytes(data)
        return copy


def load_library(library: Path, digest: str) -> ctypes.CDLL:
    return ctypes.CDLL(str(path_to_load(library, digest)))
