"""CPU schedules for the TIR functions TVM generates from TE (after FuseOps / FuseTIR).

TVM's default CPU pipeline leaves these loop nests as written: serial, one element at a time. This
pass gives each one a schedule:
  1. row reductions with a prologue / epilogue (softmax, the norms): dlight's CPU Reduction rule
     (one parallel loop over rows, every stage of a row computed under it, vectorized);
  2. everything else: intermediate elementwise stages inlined, the spatial loops of each remaining
     stage fused into one parallel loop, the innermost dim vectorized where it is a static multiple
     of the vector width.
The hand-written kernels (GEMM, attention) carry ``tirx.is_scheduled`` and are left alone. A rule
that fails on some function leaves that function serial rather than failing the build.
"""

from __future__ import annotations

from typing import Any

from qjc.backends.cpu.tvm_env import import_tvm

tvm = import_tvm()
tirx = tvm.tirx
s_tir = tvm.s_tir
dlight = s_tir.dlight

SCHEDULED_ATTR = "tirx.is_scheduled"


def _extent(sch: Any, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


class ParallelVectorize(dlight.ScheduleRule):
    """The fallback: parallel over fused spatial loops, vectorized innermost spatial dim."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = dlight.normalize_prim_func(sch)
        if infos is None:
            return None
        infos = dlight.base.try_inline_contiguous_spatial(sch, infos)
        if not infos:
            return None
        for info in infos:
            kinds = info.dom_kind()
            n_spatial = len(kinds) - len(kinds.lstrip("S"))
            if n_spatial == 0:
                continue
            loops = sch.get_loops(info.block_rv)[:n_spatial]
            if info.is_injective():
                inner = _extent(sch, loops[-1])
                if inner is not None and inner % self.lanes == 0 and inner >= self.lanes:
                    rest, vec = sch.split(loops[-1], [None, self.lanes])
                    sch.vectorize(vec)
                    loops = [*loops[:-1], rest]
            sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
        return sch


def _is_scheduled(func: Any) -> bool:
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


def schedule_pass(lanes: int) -> Any:
    rules = [dlight.cpu.Reduction(), ParallelVectorize(lanes)]

    @tvm.transform.module_pass(opt_level=0, name="QjcCpuSchedule")
    def apply(mod: Any, _ctx: Any) -> Any:
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except Exception:  # noqa: BLE001  a rule that cannot handle this function: try the next
                    space = None
                if space is None:
                    continue
                sch = space[0] if isinstance(space, list) else space
                updates[gvar] = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
                break
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return apply
