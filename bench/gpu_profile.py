"""GPU time per kernel while a function runs (torch.profiler / CUPTI): it sees every kernel of the
process, qjc's engine library included. Shared by the bench scripts."""

from __future__ import annotations

from collections.abc import Callable

import torch


def kernel_times(fn: Callable[[], object]) -> list[tuple[str, float, int]]:
    """(kernel name, total microseconds, launches) for the kernels ``fn`` ran, most time first."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0.0, 0])
            entry[0] += event.device_time
            entry[1] += 1
    return sorted(((name, t, int(n)) for name, (t, n) in totals.items()), key=lambda row: -row[1])
