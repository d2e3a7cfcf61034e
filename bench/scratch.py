"""A benchmark's scratch directory, removed when the process exits.

Benchmarks write artifacts of hundreds of MB (weights, built libraries); left behind in /tmp run
after run, they filled a shared disk once."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # at exit, not earlier: loaded engines keep their libraries mapped until then
    atexit.register(shutil.rmtree, path, True)
    return path
