"""Turn a planned Program into source files: one translation unit per distinct kernel, the host
engine (templates/host_engine.cpp.j2) and the shared headers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qjc.backends.cuda.cexpr import DTYPE_CODES, itemsize
from qjc.backends.cuda.kernels.base import render
from qjc.backends.cuda.nvcc import Unit
from qjc.backends.cuda.plan import Program
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import parse_dtype

HEADER_FILE = Path(__file__).resolve().parent / "qjc_engine.h"
KIND_CODES = {"input": 0, "weight": 1, "temp": 2, "workspace": 3}


@dataclass
class Sources:
    units: list[Unit]  # kernels first, the host engine last
    headers: dict[str, str]

    def all_files(self) -> dict[str, str]:
        return {**self.headers, **{u.name: u.source for u in self.units}}


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _single_symbol(d: SymExpr) -> str | None:
    if len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1:
        return d.terms[0][0][0]
    return None


def host_engine_source(program: Program, archs: tuple[str, ...], cuda_graphs: bool) -> str:
    syms = program.syms
    g = program.graph
    bind_checks: list[str] = []
    compound: list[str] = []
    for i, v in enumerate(g.inputs):
        for k, d in enumerate(v.type.shape):
            got = f"shapes[{i}][{k}]"
            where = f"input '{_c_string(v.name)}' axis {k}"
            if isinstance(d, int):
                bind_checks.append(
                    f'if ({got} != {d}) return fail(std::string("{where} must be {d}, got ") + std::to_string({got}));')
                continue
            sym = _single_symbol(d)
            if sym is not None:
                j = syms.slot[sym]
                bind_checks.append(
                    f"if (!bound[{j}]) {{ S[{j}] = {got}; bound[{j}] = true; }} else if (S[{j}] != {got}) "
                    f'return fail(std::string("{where} is {sym}=") + std::to_string({got}) + '
                    f'", but an earlier input gives " + std::to_string(S[{j}]));')
            else:
                compound.append(
                    f'if ({syms.dim(d)} != {got}) return fail(std::string("{where} must be {d}, got ") + '
                    f"std::to_string({got}));")
    buffers = [{"id": b.id, "kind": KIND_CODES[b.kind], "first": b.first, "last": b.last,
                "itemsize": itemsize(parse_dtype(b.dtype)), "numel": syms.numel(b.shape), "name": _c_string(b.name)}
               for b in program.buffers]
    weights = []
    for name, bid, stored, engine in program.weights:
        numel = program.buffers[bid].numel()
        weights.append({"name": _c_string(name), "buffer": bid, "stored": DTYPE_CODES[stored],
                        "engine": DTYPE_CODES[engine], "numel": numel})
    inputs = [{"buffer": bid, "itemsize": itemsize(v.type.dtype), "name": _c_string(v.name)}
              for bid, v in zip(program.inputs, g.inputs)]
    outputs = [{"buffer": bid, "itemsize": itemsize(v.type.dtype), "name": _c_string(v.name),
                "dims": [syms.dim(d) for d in v.type.shape]} for bid, v in zip(program.outputs, g.outputs)]
    symbols = [{"name": n, "lo": g.symbols[n].lo, "hi": g.symbols[n].hi} for n in syms.names]
    steps = [{"kernel": s.kernel, "operands": s.operands, "label": _c_string(s.label)} for s in program.steps]
    return render(
        "host_engine.cpp.j2", graph_name=_c_string(g.name), nsym=len(syms), symbols=symbols,
        archs=list(archs), cuda_graphs=cuda_graphs, buffers=buffers, weights=weights, inputs=inputs,
        outputs=outputs, steps=steps, kernels=sorted(program.kernels), bind_checks=bind_checks,
        compound_checks=compound,
    )


# Rough relative compile cost of a kernel kind (the tensor-core templates dominate).
_COST = {"gemm": 4, "attention": 3, "conv2d": 2}
_UNIT_OVERHEAD = 6  # nvcc's fixed cost per translation unit, in the same units


def _group_kernels(names: list[str], program: Program, jobs: int) -> list[list[str]]:
    """Kernels into translation units: enough units to keep ``jobs`` nvcc processes busy, few
    enough that nvcc's per-unit start-up (headers, its pipeline) does not dominate."""
    costs = {n: _COST.get(program.kernels[n].kind, 1) for n in names}
    total = sum(costs.values())
    count = max(1, min(len(names), 2 * jobs, -(-total // _UNIT_OVERHEAD)))
    bins: list[list[str]] = [[] for _ in range(count)]
    load = [0] * count
    for name in sorted(names, key=lambda n: (-costs[n], n)):
        k = load.index(min(load))
        bins[k].append(name)
        load[k] += costs[name]
    return [sorted(b) for b in bins if b]


def generate_sources(program: Program, archs: tuple[str, ...], cuda_graphs: bool, jobs: int = 2) -> Sources:
    units = []
    for k, names in enumerate(_group_kernels(sorted(program.kernels), program, jobs)):
        code = "\n".join(program.kernels[n].code for n in names)
        units.append(Unit(f"kernels_{k:02d}.cu", code))
    units.append(Unit("host_engine.cpp", host_engine_source(program, archs, cuda_graphs)))
    headers = {"qjc_common.cuh": render("common.cuh.j2"), "qjc_engine.h": HEADER_FILE.read_text(encoding="utf-8")}
    return Sources(units, headers)
