"""The row-normalization kernel: layer_norm or rms_norm over the last C elements of each row, with an
optional elementwise prologue (a residual add) whose result may also be written out (the residual
stream), as one pass over each row.

TIR written directly (TVMScript text). One parallel task per row:
  h[c]   = prologue(operands at [row, c])   (kept in a row buffer; written to H if asked)
  mean   = sum(h) / C                       (layer_norm only; lane-wide partial sums, then reduced)
  inv    = 1 / sqrt(sum((h - mean)^2) / C + eps)     (rms_norm: sum(h^2))
  y[c]   = (h - mean) * inv * w[c] + b[c]
Row statistics are accumulated in vector lanes, which TVM's schedules for TE reductions do not do
(LLVM keeps a float reduction serial without fast-math).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qjc.backends.cpu.tvm_env import import_tvm, parse_kernel

tvm = import_tvm()


@dataclass(frozen=True)
class NormSpec:
    c: int  # elements normalized per row
    centered: bool  # layer_norm (True) or rms_norm
    eps: float
    weight: bool
    bias: bool
    operands: tuple[str, ...]  # prologue operands: "full" [M, C] or "row" [C]
    prologue: str  # a key naming the prologue function ("" = the first operand as is)
    write_input: bool  # also write the prologue's result (the norm's input) to H
    lanes: int


def norm_source(s: NormSpec, name: str = "norm") -> str:
    lanes = math.gcd(s.c, s.lanes)
    chunks = s.c // lanes
    params, matches = [], []
    for i, kind in enumerate(s.operands):
        if kind == "full":
            params.append(f"x{i}: T.handle")
            matches.append(f'X{i} = T.match_buffer(x{i}, (m, {s.c}), "float32")')
        else:
            params.append(f'X{i}: T.Buffer(({s.c},), "float32")')
    if s.weight:
        params.append(f'Wt: T.Buffer(({s.c},), "float32")')
    if s.bias:
        params.append(f'Bs: T.Buffer(({s.c},), "float32")')
    params.append("y: T.handle")
    matches.append(f'Y = T.match_buffer(y, (m, {s.c}), "float32")')
    if s.write_input:
        params.append("hh: T.handle")
        matches.append(f'H = T.match_buffer(hh, (m, {s.c}), "float32")')
    c = f"(cc * {lanes} + l)"
    loads = ", ".join(f"X{i}[row, {c}]" if kind == "full" else f"X{i}[{c}]" for i, kind in enumerate(s.operands))
    value = f"prologue({loads})" if s.prologue else loads
    store_h = [f"            H[row, {c}] = hb[{c}]"] if s.write_input else []
    mean = "red[1]" if s.centered else "T.float32(0)"
    out = f"(hb[{c}] - {mean}) * red[0]" + (f" * Wt[{c}]" if s.weight else "") + (f" + Bs[{c}]" if s.bias else "")
    # TVM keeps a constant-size "global" buffer under 1 KB on the stack (part, red, a short row buffer);
    # a longer row buffer costs a TVMBackendAllocWorkspace call per row
    scope = ', scope="global"' if s.c * 4 < 1024 else ', scope="local"' if s.c <= 16384 else ""
    lines = [
        "for row in T.parallel(m):",
        f'    hb = T.alloc_buffer(({s.c},), "float32"{scope})',
        f'    part = T.alloc_buffer(({lanes},), "float32", scope="global")',
        '    red = T.alloc_buffer((2,), "float32", scope="global")',
        f"    for cc in range({chunks}):",
        f"        for l in T.vectorized({lanes}):",
        f"            hb[{c}] = {value}",
        *store_h,
        "    red[1] = T.float32(0)",
    ]
    if s.centered:
        lines += [
            f"    for l in T.vectorized({lanes}):",
            "        part[l] = T.float32(0)",
            f"    for cc in range({chunks}):",
            f"        for l in T.vectorized({lanes}):",
            f"            part[l] = part[l] + hb[cc * {lanes} + l]",
            "    red[0] = T.float32(0)",
            f"    for l in range({lanes}):",
            "        red[0] = red[0] + part[l]",
            f"    red[1] = red[0] * T.float32({1.0 / s.c!r})",
        ]
    lines += [
        f"    for l in T.vectorized({lanes}):",
        "        part[l] = T.float32(0)",
        f"    for cc in range({chunks}):",
        f"        for l in T.vectorized({lanes}):",
        f"            part[l] = part[l] + (hb[cc * {lanes} + l] - red[1]) * (hb[cc * {lanes} + l] - red[1])",
        "    red[0] = T.float32(0)",
        f"    for l in range({lanes}):",
        "        red[0] = red[0] + part[l]",
        f"    red[0] = T.float32(1) / T.sqrt(red[0] * T.float32({1.0 / s.c!r}) + T.float32({s.eps!r}))",
        f"    for cc in range({chunks}):",
        f"        for l in T.vectorized({lanes}):",
        f"            Y[row, {c}] = {out}",
    ]
    body = "\n".join("    " + line for line in matches + lines)
    return f'''
@T.prim_func(s_tir=False)
def {name}({", ".join(params)}):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}})
    m = T.int64()
{body}
'''


def norm_func(spec: NormSpec, name: str = "norm", prologue: Callable[..., Any] | None = None) -> Any:
    """The kernel as a PrimFunc; arguments (operands..., [weight], [bias], Y, [H])."""
    return parse_kernel(norm_source(spec, name), prologue=prologue)
