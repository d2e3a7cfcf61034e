"""Tests marked ``cuda`` need an NVIDIA GPU (seen through torch); elsewhere they are skipped with the
reason. Unmarked tests here run everywhere nvcc is (they build, never run, the engines)."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def gpu_unavailable_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (the GPU tests compare against it)"
    if not torch.cuda.is_available():
        return "no CUDA GPU available (torch.cuda.is_available() is False)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None:
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(reason)
