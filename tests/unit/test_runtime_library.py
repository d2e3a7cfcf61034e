"""qjc.runtime.library: a library rebuilt at a path already loaded is loaded from a copy named after its
content, so the process runs the new code (checked with two tiny C libraries built by the system
compiler)."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from qjc.errors import ArtifactError
from qjc.runtime.library import load_library, path_to_load

CC = shutil.which("cc") or shutil.which("gcc")


def _build(src_dir: Path, value: int) -> Path:
    src = src_dir / f"v{value}.c"
    src.write_text(f"int qjc_test_value(void) {{ return {value}; }}\n")
    lib = src_dir / f"v{value}.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_content_loads_in_place_new_content_from_a_copy(tmp_path) -> None:
    lib = tmp_path / "engine.so"
    lib.write_bytes(b"first")
    assert path_to_load(lib, _digest(lib)) == lib
    assert path_to_load(lib, _digest(lib)) == lib  # loaded again unchanged: the same path
    lib.write_bytes(b"second")
    copy = path_to_load(lib, _digest(lib))
    assert copy != lib and copy.read_bytes() == b"second" and _digest(lib) in copy.name
    lib.write_bytes(b"third")  # the file no longer has the content its artifact's manifest promised
    with pytest.raises(ArtifactError, match="changed while it was being loaded"):
        path_to_load(lib, "0" * 64)


@pytest.mark.skipif(CC is None, reason="no C compiler to build the test libraries")
def test_a_replaced_library_runs_its_new_code(tmp_path) -> None:
    first, second = _build(tmp_path, 1), _build(tmp_path, 2)
    path = tmp_path / "libengine.so"
    shutil.copyfile(first, path)
    old = load_library(path, _digest(path))
    assert old.qjc_test_value() == 1
    shutil.copyfile(second, tmp_path / "new.so")
    (tmp_path / "new.so").replace(path)  # what rebuilding an artifact in place does
    # the loader's own answer for the path is still the first library ...
    assert ctypes.CDLL(str(path)).qjc_test_value() == 1
    # ... while load_library gives the new one
    assert load_library(path, _digest(path)).qjc_test_value() == 2
