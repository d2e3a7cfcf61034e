"""The attention kernel: o = softmax(q @ k^T * scale + mask) @ v with qjc's sdpa semantics (GQA by
head index, bottom-right causal, bool or additive mask, rows with nothing to attend to give zeros).

TIR written directly (TVMScript text). One parallel task per (batch, query head):
  kT[D, Sk'] = k[b, kv_head]^T, zero-padded to a multiple of the vector width; then for each block
  of R query rows (R = ROWS, and single rows for the remainder):
    s[r, j]   = scale * q[r, :] . kT[:, j]     (vectorized over j; each kT vector load feeds R FMAs)
    s[r, j]   = -inf where masked, else s[r, j] + additive mask
    p[r, j]   = exp(s[r, j] - max_j s[r, :]),  total[r] = sum_j p[r, j]   (fastmath.exp, vectorized)
    o[r, :]   = sum_j p[r, j] * v[j, :] / total[r]   (vectorized over the value dim; each v row load
                                                      feeds R FMAs)
q, k, v and o are each read or written either as [batch, heads, seq, dim] ("bhsd", the sdpa op's
layout) or as [batch, seq, heads, dim] ("bshd": the projections' own layout before the head-splitting
transpose), so an attention group needs no transposes around the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qjc.backends.cpu import fastmath
from qjc.backends.cpu.tvm_env import import_tvm, parse_kernel

tvm = import_tvm()

ROWS = 4  # query rows per block


@dataclass(frozen=True)
class SdpaShape:
    """Static facts the kernel is specialized on. Dims given as None are symbolic."""

    batch: int | None
    q_heads: int
    kv_heads: int
    q_len: int | None
    kv_len: int | None
    head_dim: int
    value_dim: int
    causal: bool
    scale: float
    mask: str  # "none", "bool" or "additive"
    mask_broadcast: tuple[bool, bool, bool, bool]  # per mask dim: a size-1 dim read at index 0
    lanes: int
    layouts: tuple[str, str, str, str] = ("bhsd", "bhsd", "bhsd", "bhsd")  # of q, k, v, o


def _dim(value: int | None, var: str) -> str:
    return var if value is None else str(value)


def _shape(layout: str, b: str, h: int, s: str, d: int) -> str:
    return f"({b}, {h}, {s}, {d})" if layout == "bhsd" else f"({b}, {s}, {h}, {d})"


def _at(layout: str, b: str, h: str, s: str, d: str) -> str:
    return f"{b}, {h}, {s}, {d}" if layout == "bhsd" else f"{b}, {s}, {h}, {d}"


def _allowed(s: SdpaShape, row: str, j: str, sk: str, sq: str, mask_read: Any) -> tuple[str, str]:
    """(condition that query ``row`` may attend key ``j``, additive mask term or "")."""
    allowed = [f"{j} < {sk}"]
    if s.causal:
        allowed.append(f"{j} <= {row} + {sk} - {sq}")
    add = ""
    if mask_read is not None:
        read = mask_read(row, f"T.min({j}, {sk} - 1)")
        if s.mask == "bool":
            allowed.append(read)
        else:
            add = f" + {read}"
    return " and ".join(f"({a})" for a in allowed), add


def _softmax_and_pv(s: SdpaShape, rows: int, row0: str, sk: str, skp: str, skip_zero: bool) -> list[str]:
    """Rows of sc[r, :] (logits, -inf where masked) -> softmax -> O[rows] = p @ V."""
    lanes = s.lanes
    _, _, v_l, o_l = s.layouts
    pv = [
        f"for j in range(T.int64({sk})):",
        f"    for r in T.unroll({rows}):",
        f"        for e in T.vectorized({s.value_dim}):",
        f"            acc[r, e] = acc[r, e] + sc[r, j] * V[{_at(v_l, 'b', 'kvh', 'j', 'e')}]",
    ]
    if skip_zero:  # one row: keys with zero weight (masked) are not read at all
        pv = [
            f"for j in range(T.int64({sk})):",
            "    if sc[0, j] != T.float32(0):",
            f"        for e in T.vectorized({s.value_dim}):",
            f"            acc[0, e] = acc[0, e] + sc[0, j] * V[{_at(v_l, 'b', 'kvh', 'j', 'e')}]",
        ]
    return [
        # softmax of each row: max, exp and sum, with lane-wide partials reduced at the end
        f"for r in T.unroll({rows}):",
        f"    for l in T.vectorized({lanes}):",
        "        part[r, l] = NEG_INF",
        f"    for jc in range(({skp}) // {lanes}):",
        f"        for l in T.vectorized({lanes}):",
        f"            part[r, l] = T.max(part[r, l], sc[r, jc * {lanes} + l])",
        "    red[r, 0] = NEG_INF",
        f"    for l in range({lanes}):",
        "        red[r, 0] = T.max(red[r, 0], part[r, l])",
        "    red[r, 1] = T.Select(T.isfinite(red[r, 0]), red[r, 0], T.float32(0))",
        f"    for l in T.vectorized({lanes}):",
        "        part[r, l] = T.float32(0)",
        f"    for jc in range(({skp}) // {lanes}):",
        f"        for l in T.vectorized({lanes}):",
        f"            sc[r, jc * {lanes} + l] = fexp(sc[r, jc * {lanes} + l] - red[r, 1])",
        f"            part[r, l] = part[r, l] + sc[r, jc * {lanes} + l]",
        "    red[r, 1] = T.Select(T.isfinite(red[r, 0]), T.float32(1), T.float32(0))",
        "    red[r, 0] = T.float32(0)",
        f"    for l in range({lanes}):",
        "        red[r, 0] = red[r, 0] + part[r, l]",
        "    red[r, 1] = T.Select(red[r, 0] > T.float32(0), red[r, 1] / red[r, 0], T.float32(0))",
        # o = p @ v, every loaded row of v used by all rows of the block
        f"for r in T.unroll({rows}):",
        f"    for e in T.vectorized({s.value_dim}):",
        "        acc[r, e] = T.float32(0)",
        *pv,
        f"for r in T.unroll({rows}):",
        f"    for e in T.vectorized({s.value_dim}):",
        f"        O[{_at(o_l, 'b', 'h', f'{row0} + r', 'e')}] = acc[r, e] * red[r, 1]",
    ]


def _direct_row(s: SdpaShape, row: str, sk: str, sq: str, skp: str, mask_read: Any) -> list[str]:
    """One query row without the transposed copy of K: each allowed key's dot product is vectorized
    over the head dim and reduced by halving; masked keys are skipped. For decode (a few rows against
    a long, mostly masked static cache) this reads only the keys that count."""
    q_l, k_l, _, _ = s.layouts
    lanes = math.gcd(s.head_dim, s.lanes)
    cond, add = _allowed(s, row, "j", sk, sq, mask_read)
    halving = []
    width = lanes
    while width > 1:
        width //= 2
        halving += [f"        for l in T.vectorized({width}):", f"            dot[l] = dot[l] + dot[l + {width}]"]
    return [
        f"for j in range({skp}):",
        "    sc[0, j] = NEG_INF",
        f"for j in range(T.int64({sk})):",
        f"    if {cond}:",
        f"        for l in T.vectorized({lanes}):",
        "            dot[l] = T.float32(0)",
        f"        for dc in range({s.head_dim // lanes}):",
        f"            for l in T.vectorized({lanes}):",
        f"                dot[l] = dot[l] + Q[{_at(q_l, 'b', 'h', row, f'dc * {lanes} + l')}] * "
        f"K[{_at(k_l, 'b', 'kvh', 'j', f'dc * {lanes} + l')}]",
        *halving,
        f"        sc[0, j] = dot[0] * T.float32({s.scale!r}){add}",
        *_softmax_and_pv(s, 1, row, sk, skp, skip_zero=True),
    ]


def _row_block(s: SdpaShape, rows: int, row0: str, sk: str, sq: str, skp: str, mask_read: Any) -> list[str]:
    """TVMScript lines computing ``rows`` query rows starting at ``row0`` (one (b, h) task)."""
    lanes = s.lanes
    q_l = s.layouts[0]
    j = f"(jc * {lanes} + l)"
    lines = [
        f"for jc in range(({skp}) // {lanes}):",
        f"    for r in T.unroll({rows}):",
        f"        for l in T.vectorized({lanes}):",
        "            part[r, l] = T.float32(0)",
        f"    for d in range(T.int64({s.head_dim})):",
        f"        for r in T.unroll({rows}):",
        f"            for l in T.vectorized({lanes}):",
        f"                part[r, l] = part[r, l] + Q[{_at(q_l, 'b', 'h', f'{row0} + r', 'd')}] * kT[d, {j}]",
        f"    for r in T.unroll({rows}):",
        f"        for l in T.vectorized({lanes}):",
    ]
    cond, add = _allowed(s, f"{row0} + r", j, sk, sq, mask_read)
    lines += [
        f"            sc[r, {j}] = T.Select({cond}, part[r, l] * T.float32({s.scale!r}){add}, NEG_INF)",
        *_softmax_and_pv(s, rows, row0, sk, skp, skip_zero=False),
    ]
    return lines


def sdpa_source(s: SdpaShape, name: str = "sdpa") -> str:
    lanes = s.lanes
    group = s.q_heads // s.kv_heads
    b, sq, sk = _dim(s.batch, "nb"), _dim(s.q_len, "sq"), _dim(s.kv_len, "sk")
    q_l, k_l, v_l, o_l = s.layouts
    decls = [f"{v} = T.int64()" for v in (b, sq, sk) if not v.isdigit()]
    params = ["q_h: T.handle", "k_h: T.handle", "v_h: T.handle"]
    matches = [
        f'Q = T.match_buffer(q_h, {_shape(q_l, b, s.q_heads, sq, s.head_dim)}, "float32")',
        f'K = T.match_buffer(k_h, {_shape(k_l, b, s.kv_heads, sk, s.head_dim)}, "float32")',
        f'V = T.match_buffer(v_h, {_shape(v_l, b, s.kv_heads, sk, s.value_dim)}, "float32")',
    ]
    mask_read = None
    if s.mask != "none":
        full = [b, str(s.q_heads), sq, sk]
        dims = ["1" if bc else d for bc, d in zip(s.mask_broadcast, full)]
        dtype = "bool" if s.mask == "bool" else "float32"
        params.append("m_h: T.handle")
        matches.append(f'M = T.match_buffer(m_h, ({", ".join(dims)}), "{dtype}")')

        def mask_read(row: str, col: str) -> str:
            index = ["0" if bc else ix for bc, ix in zip(s.mask_broadcast, ("b", "h", row, col))]
            return f"M[{', '.join(index)}]"

    params.append("o_h: T.handle")
    matches.append(f'O = T.match_buffer(o_h, {_shape(o_l, b, s.q_heads, sq, s.value_dim)}, "float32")')
    skp = f"(T.int64({sk}) + {lanes - 1}) // {lanes} * {lanes}"

    def block(rows: int, row0: str) -> str:
        return "\n".join("                " + line for line in _row_block(s, rows, row0, sk, sq, skp, mask_read))

    direct = "\n".join("                " + line for line in _direct_row(s, "i", sk, sq, skp, mask_read))

    header = "\n".join("    " + line for line in decls + matches)
    return f'''
@T.prim_func(s_tir=False)
def {name}({", ".join(params)}):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}})
{header}
    for bh in T.parallel(T.int64({b}) * {s.q_heads}):
        b = bh // {s.q_heads}
        h = bh % {s.q_heads}
        kvh = h // {group}
        # small scratch is "global": TVM puts a constant-size global buffer under 1 KB on the stack, and
        # anything else behind a TVMBackendAllocWorkspace call per task
        sc = T.alloc_buffer(({ROWS}, {skp}), "float32")
        part = T.alloc_buffer(({ROWS}, {lanes}), "float32", scope="global")
        acc = T.alloc_buffer(({ROWS}, {s.value_dim}), "float32", scope="local")
        red = T.alloc_buffer(({ROWS}, 2), "float32", scope="global")
        dot = T.alloc_buffer(({lanes},), "float32", scope="global")
        if T.int64({sq}) >= {ROWS}:
            kT = T.alloc_buffer(({s.head_dim}, {skp}), "float32")
            for j in range({skp}):
                for d in range(T.int64({s.head_dim})):
                    kT[d, j] = T.if_then_else(j < {sk}, K[{_at(k_l, "b", "kvh", f"T.min(j, {sk} - 1)", "d")}],
                                              T.float32(0))
            for ib in range(T.int64({sq}) // {ROWS}):
{block(ROWS, f"ib * {ROWS}")}
            for ir in range(T.int64({sq}) % {ROWS}):
{block(1, f"T.int64({sq}) - T.int64({sq}) % {ROWS} + ir")}
        else:
            for i in range(T.int64({sq})):
{direct}
'''


def sdpa_func(shape: SdpaShape, name: str = "sdpa") -> Any:
    """The kernel as a PrimFunc; arguments (q, k, v, [mask], o)."""
    return parse_kernel(sdpa_source(shape, name), fexp=fastmath.exp,
                        NEG_INF=tvm.tirx.const(float("-inf"), "float32"))
