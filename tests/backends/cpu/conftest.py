"""The cpu backend's tests need Apache TVM with LLVM; without it they are skipped with the reason.

Builds are the slow part (LLVM codegen and linking), so each test module builds one artifact
holding many cases and shares it through a module- or session-scoped fixture.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=1)
def cpu_unavailable_reason() -> str | None:
    from qjc.backends.cpu.backend import CpuBackend

    ok, why = CpuBackend().available()
    return None if ok else why


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    for item in items:
        if here in Path(str(item.fspath)).parents:
            reason = reason or cpu_unavailable_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
