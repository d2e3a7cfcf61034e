"""The GEMM kernel: D[m, n] = epilogue(sum_k A[m, k] * W[n, k] (+ bias[n]), extras at [m, n]), with W
packed as [ceil(N / NB), K, NB] (weights.py).

Written as TIR directly (TVMScript text) rather than scheduled from TE: the register tile needs a
vectorized loop under the reduction loop, which TVM's schedule primitives refuse for reduction
blocks, and a symbolic M (batch * seq) must not turn the accumulator into an M-sized buffer.

Shape of the loop nest, per (row block, column panel `no`) task (the parallel loop):
  for each full tile of MR rows:  acc[MR, NB] = 0
                                  for k: acc[mi, :] += A[row mi, k] * W[no, k, :]   (mi unrolled,
                                         the NB columns one or two vector registers)
                                  D[rows, panel] = epilogue(acc (+ bias))
  for each leftover row of the block: the same with a one-row tile (the decode GEMV case, m = 1).
A task covers up to ROW_BLOCK rows: its panel [K, NB] of W stays in L1/L2 while the row tiles stream
past it. The epilogue (an activation,
a residual add: a fused "gemm" group's elementwise tail) is applied on the way out, so the product
is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qjc.backends.cpu.tvm_env import import_tvm, parse_kernel

tvm = import_tvm()


# Rows per task: a block of A (ROW_BLOCK x K floats) stays in L2 while the tasks of its row range
# walk the column panels; a panel of W is re-read once per row block.
ROW_BLOCK = 256


@dataclass(frozen=True)
class GemmSpec:
    k: int
    n: int
    nb: int  # panel width (weights.py block)
    mr: int  # rows of the register tile
    bias: bool
    # extra f32 operands of the epilogue: "row" is [N] (read at column n), "full" is [M, N]
    extras: tuple[str, ...] = ()
    # a key naming the epilogue function (kernels with equal specs share one PrimFunc)
    epilogue: str = ""


def _tile(row0: str, mr: int, spec: GemmSpec, panels: int) -> str:
    """TVMScript for one row tile of ``mr`` rows starting at row ``row0``."""
    nb = spec.nb
    value = "acc[mi, ni]" + (f" + bias[no * {nb} + ni]" if spec.bias else "")
    col = f"no * {nb} + ni"
    if spec.extras:
        loads = [f"X{i}[{row0} + mi, {col}]" if kind == "full" else f"X{i}[{col}]"
                 for i, kind in enumerate(spec.extras)]
        value = f"epilogue({value}, {', '.join(loads)})"
    elif spec.epilogue:
        value = f"epilogue({value})"
    lines = [
        f"acc = T.alloc_buffer(({mr}, {nb}), \"float32\", scope=\"local\")",
        f"for mi in T.unroll({mr}):",
        f"    for ni in T.vectorized({nb}):",
        "        acc[mi, ni] = T.float32(0)",
        f"for kk in range({spec.k}):",
        f"    for mi in T.unroll({mr}):",
        f"        for ni in T.vectorized({nb}):",
        f"            acc[mi, ni] = acc[mi, ni] + A[{row0} + mi, kk] * W[no, kk, ni]",
    ]
    full_store = [
        f"for mi in T.unroll({mr}):",
        f"    for ni in T.vectorized({nb}):",
        f"        D[{row0} + mi, {col}] = {value}",
    ]
    if spec.n % nb == 0:
        lines += full_store
    else:
        tail = spec.n - (panels - 1) * nb
        lines += [f"if no < {panels - 1}:"] + ["    " + s for s in full_store] + [
            "else:",
            f"    for mi in T.unroll({mr}):",
            f"        for ni in range({tail}):",
            f"            D[{row0} + mi, {col}] = {value}",
        ]
    return "\n".join(lines)


def gemm_source(spec: GemmSpec, name: str = "gemm") -> str:
    panels = -(-spec.n // spec.nb)
    params = ["a: T.handle", f"W: T.Buffer(({panels}, {spec.k}, {spec.nb}), \"float32\")"]
    if spec.bias:
        params.append(f"bias: T.Buffer(({spec.n},), \"float32\")")
    matches = []
    for i, kind in enumerate(spec.extras):
        if kind == "row":
            params.append(f"X{i}: T.Buffer(({spec.n},), \"float32\")")
        else:
            params.append(f"x{i}: T.handle")
            matches.append(f"X{i} = T.match_buffer(x{i}, (m, {spec.n}), \"float32\")")
    params.append("d: T.handle")

    def indent(text: str, levels: int) -> str:
        return "\n".join("    " * levels + line for line in text.splitlines())

    block = ROW_BLOCK // spec.mr * spec.mr
    full = _tile(f"mb * {block} + mo * {spec.mr}", spec.mr, spec, panels)
    rest = _tile(f"mb * {block} + rows - rows % {spec.mr} + ri", 1, spec, panels)
    header = "\n".join(f"    {line}" for line in matches)
    return f'''
@T.prim_func(s_tir=False)
def {name}({", ".join(params)}):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}})
    m = T.int64()
    A = T.match_buffer(a, (m, {spec.k}), "float32")
    D = T.match_buffer(d, (m, {spec.n}), "float32")
{header}
    for task in T.parallel((m + {block - 1}) // {block} * {panels}):
        mb = task // {panels}
        no = task % {panels}
        rows = T.min(T.int64({block}), m - mb * {block})
        for mo in range(rows // {spec.mr}):
{indent(full, 3)}
        for ri in range(rows % {spec.mr}):
{indent(rest, 3)}
'''


def gemm_func(spec: GemmSpec, name: str = "gemm", epilogue: Callable[..., Any] | None = None) -> Any:
    """The kernel as a PrimFunc; arguments (A [m, K], W packed, [bias [N]], extras..., D [m, N]).
    ``epilogue(value, *extras)`` maps the product (plus bias) and the extras' elements to the output."""
    return parse_kernel(gemm_source(spec, name), epilogue=epilogue)
