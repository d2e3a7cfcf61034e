"""Turn a planned Program into source files: one translation unit per distinct kernel, the host
engine (templates/host_engine.cpp.j2) and the shared headers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qjc.backends.cuda.cexpr import DTYPE_CODES, itemsize
from qjc.backends.cuda.kernels.base import render
from qjc.backends.cuda.nvcc import Unit
from qjc.backends.cuda.plan import Program
from qjc.errors import BackendError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import parse_dtype

HEADER_FILE = Path(__file__).resolve().parent / "qjc_engine.h"
KIND_CODES = {"input": 0, "weight": 1, "temp": 2, "workspace": 3, "state": 4}
LOGITS_DTYPES = {"f32": 0, "bf16": 1, "f16": 2}


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


def host_engine_source(program: Program, archs: tuple[str, ...], cuda_graphs: bool, llm: dict | None = None) -> str:
    """The host engine; ``llm`` (llm_loop_facts) adds the generation loop."""
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
        compound_checks=compound, llm=llm,
    )


def llm_loop_facts(program: Program) -> dict | None:
    """What the native generation loop (templates/llm_engine.cpp.j2) needs, for a decoder on a paged
    KV cache (passes/kv_cache.py); None for any other graph."""
    g = program.graph
    llm = g.meta.get("llm") or {}
    kv = llm.get("kv_cache") or {}
    if kv.get("layout") != "paged":
        return None
    names = [v.name for v in g.inputs]
    missing = [n for n in ("tokens", "positions", "block_table") if n not in names]
    logits = g.outputs[0].type.dtype.name
    if missing or logits not in LOGITS_DTYPES:
        raise BackendError(f"graph {g.name}: a paged decoder needs inputs tokens, positions, block_table and float "
                           f"logits first (missing {missing}, logits {logits})")
    tokens, positions = (g.inputs[names.index(n)] for n in ("tokens", "positions"))
    # the loop uploads batch x seq int64 values into each of the two
    if (tokens.type.rank != 2 or tokens.type.shape[0] != llm["batch"]
            or tuple(positions.type.shape) != tuple(tokens.type.shape)
            or {tokens.type.dtype.name, positions.type.dtype.name} != {"i64"}):
        raise BackendError(f"graph {g.name}: the generation loop feeds i64 [{llm['batch']}, seq] tokens and "
                           f"positions, got {tokens.type} and {positions.type}")
    step = tokens.type.shape[1]  # the step length: "seq" from the LLM frontend, any name from ONNX
    seq = None if isinstance(step, int) else _single_symbol(step)
    if seq is None:
        raise BackendError(f"graph {g.name}: the generation loop needs a symbolic step length (tokens {tokens.type})")
    input_dims = []
    for v in g.inputs:
        dims = []
        for d in v.type.shape:
            if isinstance(d, int):
                dims.append(str(d))
            elif _single_symbol(d) == seq:
                dims.append("seq")
            else:
                raise BackendError(f"graph {g.name}: input {v.name} has dim {d}; the generation loop binds only "
                                   f"the step length ({tokens.name}'s second dim)")
        input_dims.append(dims)
    return {"batch": llm["batch"], "max_seq": llm["max_seq"], "block_size": kv["block_size"],
            "max_blocks": kv["max_blocks_per_seq"], "num_blocks": kv["num_blocks"], "vocab": llm["vocab_size"],
            "logits_dtype": LOGITS_DTYPES[logits], "tokens_input": names.index("tokens"),
            "positions_input": names.index("positions"), "table_input": names.index("block_table"),
            "input_dims": input_dims}


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


def uses_blaslt(program: Program) -> bool:
    """Whether a GEMM step may call cuBLASLt (then blaslt.cu is built and linked with -ldl)."""
    return any(k.notes.get("blaslt") for k in program.kernels.values())


def generate_sources(program: Program, archs: tuple[str, ...], cuda_graphs: bool, jobs: int = 2) -> Sources:
    units = []
    for k, names in enumerate(_group_kernels(sorted(program.kernels), program, jobs)):
        code = "\n".join(program.kernels[n].code for n in names)
        units.append(Unit(f"kernels_{k:02d}.cu", code))
    if uses_blaslt(program):
        units.append(Unit("blaslt.cu", render("blaslt.cu.j2")))
    llm = llm_loop_facts(program)
    if llm is not None:
        units.append(Unit("sampling.cu", render("sampling.cu.j2")))
    units.append(Unit("host_engine.cpp", host_engine_source(program, archs, cuda_graphs, llm)))
    headers = {"qjc_common.cuh": render("common.cuh.j2"), "qjc_engine.h": HEADER_FILE.read_text(encoding="utf-8")}
    return Sources(units, headers)
