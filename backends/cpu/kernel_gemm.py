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
  the rows % MR leftover rows of the block: tiles of 4, 2 and 1 rows (the one-row tile is the decode
  GEMV case, m = 1).
A task covers up to ROW_BLOCK rows: its panel [K, NB] of W stays in L1/L2 while the row tiles stream
past it. The epilogue (an activation, a residual add: a fused "gemm" group's elementwise tail) is
applied on the way out, so the product is written once.

With a quantized weight (``GemmSpec.quant``, layouts in quant_layout.py) the panel holds codes, and the
tile dequantizes one step of K for its NB columns in registers before the multiply-adds:
  for each group g:  s[:] = scales[no, g, :], o[:] = offsets of the group (from zero points / -8 s)
                     for each pair of k:  w0, w1 = codes of k, k+1 (two nibbles of one byte for 4-bit)
                                          w = code * s + o;  acc[mi, :] += A[row mi, k] * w0 + A[., k+1] * w1
so a decode step streams 4 bits (plus the group's scale) per weight instead of 32. The one-row tile
keeps the two steps of a pair in separate accumulators: its chain of dependent FMAs would otherwise
bound it, not the loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qjc.backends.cpu.quant_layout import KernelFormat
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
    quant: KernelFormat | None = None  # the weight's quantized format (quant_layout.py), None for f32


_TVM = {"f16": "float16", "f32": "float32", "u8": "uint8", "i8": "int8"}


# Scratch buffers of a tile are declared "global": TVM keeps a constant-size global buffer under 1 KB on
# the stack, while a "local" one (or a bigger one) costs a TVMBackendAllocWorkspace call per tile, which
# for a decode GEMV (one tile per 32 columns) took more time than the multiply-adds. So every row of the
# register tile has its own accumulator buffer.
_SCRATCH = 'scope="global"'


def _f32_product(row0: str, mr: int, spec: GemmSpec) -> list[str]:
    """TVMScript accumulating ``mr`` rows times an f32 panel into acc0..acc{mr-1} [1, NB]."""
    nb = spec.nb
    lines = [f'acc{r} = T.alloc_buffer((1, {nb}), "float32", {_SCRATCH})' for r in range(mr)]
    for r in range(mr):
        lines += [f"for ni in T.vectorized({nb}):", f"    acc{r}[0, ni] = T.float32(0)"]
    lines.append(f"for kk in range({spec.k}):")
    for r in range(mr):
        lines += [f"    for ni in T.vectorized({nb}):",
                  f"        acc{r}[0, ni] = acc{r}[0, ni] + A[{row0} + {r}, kk] * W[no, kk, ni]"]
    return lines


def _quant_product(row0: str, mr: int, spec: GemmSpec) -> list[str]:
    """TVMScript accumulating ``mr`` rows times a quantized panel into acc0..acc{mr-1} [split, NB]: the
    group's scales (and offsets) are loaded once per group, each pair of K steps dequantized once for
    all rows."""
    q = spec.quant
    assert q is not None
    nb, g = spec.nb, q.group
    split = 2 if mr == 1 else 1  # independent accumulators for the two steps of a pair
    offset = {"none": "", "sym": f" + sv[ni] * T.float32({-(1 << (q.bits - 1))})",
              "int": ' - T.Cast("float32", Z[no, g, ni]) * sv[ni]', "float": ' + T.Cast("float32", Z[no, g, ni])'}
    if q.bits == 4:
        byte = f"Q[no, g * {g // 2} + j, ni]"
        codes = (f"T.bitwise_and({byte}, T.uint8(15))", f"T.shift_right({byte}, T.uint8(4))")
    else:
        codes = (f"Q[no, g * {g} + 2 * j, ni]", f"Q[no, g * {g} + 2 * j + 1, ni]")
    plus_offset = " + ov[ni]" if q.zero != "none" else ""
    lines = [f'acc{r} = T.alloc_buffer(({split}, {nb}), "float32", {_SCRATCH})' for r in range(mr)]
    lines += [f'sv = T.alloc_buffer(({nb},), "float32", {_SCRATCH})',
              f'ov = T.alloc_buffer(({nb},), "float32", {_SCRATCH})',
              f'wv = T.alloc_buffer((2, {nb}), "float32", {_SCRATCH})']
    for r in range(mr):
        lines += [f"for ni in T.vectorized({nb}):"] + [f"    acc{r}[{u}, ni] = T.float32(0)" for u in range(split)]
    lines += [f"for g in range({spec.k // g}):",
              f"    for ni in T.vectorized({nb}):",
              '        sv[ni] = T.Cast("float32", S[no, g, ni])']
    if plus_offset:
        lines.append(f"        ov[ni] = T.float32(0){offset[q.zero]}")
    lines += [f"    for j in range({g // 2}):", f"        for ni in T.vectorized({nb}):"]
    lines += [f'            wv[{i}, ni] = T.Cast("float32", {code}) * sv[ni]{plus_offset}'
              for i, code in enumerate(codes)]
    for r in range(mr):
        lines.append(f"        for ni in T.vectorized({nb}):")
        for i in range(2):
            u = i * (split - 1)
            lines.append(f"            acc{r}[{u}, ni] = acc{r}[{u}, ni] + A[{row0} + {r}, g * {g} + 2 * j + {i}]"
                         f" * wv[{i}, ni]")
    return lines


def _tile(row0: str, mr: int, spec: GemmSpec, panels: int) -> str:
    """TVMScript for one row tile of ``mr`` rows starting at row ``row0``."""
    nb = spec.nb
    quant = spec.quant is not None
    lines = _quant_product(row0, mr, spec) if quant else _f32_product(row0, mr, spec)
    col = f"no * {nb} + ni"

    def value(r: int) -> str:
        v = f"acc{r}[0, ni] + acc{r}[1, ni]" if quant and mr == 1 else f"acc{r}[0, ni]"
        v += f" + bias[{col}]" if spec.bias else ""
        if spec.extras:
            loads = [f"X{i}[{row0} + {r}, {col}]" if kind == "full" else f"X{i}[{col}]"
                     for i, kind in enumerate(spec.extras)]
            return f"epilogue({v}, {', '.join(loads)})"
        return f"epilogue({v})" if spec.epilogue else v

    def store(loop: str) -> list[str]:
        return [line for r in range(mr) for line in (loop, f"    D[{row0} + {r}, {col}] = {value(r)}")]

    if spec.n % nb == 0:
        lines += store(f"for ni in T.vectorized({nb}):")
    else:
        tail = spec.n - (panels - 1) * nb
        lines += [f"if no < {panels - 1}:"] + ["    " + s for s in store(f"for ni in T.vectorized({nb}):")]
        lines += ["else:"] + ["    " + s for s in store(f"for ni in range({tail}):")]
    return "\n".join(lines)


def gemm_source(spec: GemmSpec, name: str = "gemm") -> str:
    panels = -(-spec.n // spec.nb)
    q = spec.quant
    if q is None:
        params = ["a: T.handle", f"W: T.Buffer(({panels}, {spec.k}, {spec.nb}), \"float32\")"]
    else:
        steps = spec.k // 2 if q.bits == 4 else spec.k
        groups = spec.k // q.group
        params = ["a: T.handle", f"Q: T.Buffer(({panels}, {steps}, {spec.nb}), \"{_TVM[q.codes_dtype]}\")",
                  f"S: T.Buffer(({panels}, {groups}, {spec.nb}), \"{_TVM[q.scale_dtype]}\")"]
        if q.zeros_dtype:
            params.append(f"Z: T.Buffer(({panels}, {groups}, {spec.nb}), \"{_TVM[q.zeros_dtype]}\")")
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
    # the rows % MR leftover rows in tiles of 4, 2, 1 rows (their binary digits): with one-row tiles
    # only, a prefill of 7 rows would walk (and dequantize) the weight panel 7 times
    rest = []
    size = 1 << (spec.mr - 1).bit_length() - 1 if spec.mr > 1 else 0
    while size >= 1:
        offset = f"rows % {spec.mr} // {2 * size} * {2 * size}"
        tile = _tile(f"mb * {block} + rows - rows % {spec.mr} + {offset}", size, spec, panels)
        rest.append(f"if rows % {spec.mr} // {size} % 2 == 1:\n{indent(tile, 1)}")
        size //= 2
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
{indent(chr(10).join(rest), 2)}
'''


def gemm_func(spec: GemmSpec, name: str = "gemm", epilogue: Callable[..., Any] | None = None) -> Any:
    """The kernel as a PrimFunc; arguments (A [m, K], W packed (quantized: codes, scales[, zeros]),
    [bias [N]], extras..., D [m, N]).
    ``epilogue(value, *extras)`` maps the product (plus bias) and the extras' elements to the output."""
    return parse_kernel(gemm_source(spec, name), epilogue=epilogue)
