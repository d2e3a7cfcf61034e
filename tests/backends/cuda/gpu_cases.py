"""Op and fused-group cases for the GPU tests: each case adds inputs and nodes to a graph and gives
the torch computation it must match. Many cases share one graph (one artifact per dtype), so one
nvcc build covers them all."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qjc.ir.dtypes import parse_dtype
from qjc.ir.graph import Graph, Value
from qjc.ir.types import TensorType

FLOATS = ("f32", "f16", "bf16")
# relative error ||out - ref|| / ||ref|| allowed per dtype (torch in float64 is the reference)
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "bf16": 1e-2}


@dataclass
class Case:
    name: str
    build: Callable[[Maker], Value | list[Value]]
    ref: Callable[..., Any]  # torch tensors (floats as float64) -> tensor or list of tensors
    exact: bool = False
    dtypes: tuple[str, ...] = FLOATS
    tol: dict[str, float] = field(default_factory=dict)


class Maker:
    """Creates a case's graph inputs with fresh random data, in the order the reference takes them."""

    def __init__(self, g: Graph, dtype: str, rng: np.random.Generator, prefix: str) -> None:
        self.g, self.dtype, self.rng, self.prefix = g, dtype, rng, prefix
        self.inputs: list[tuple[Value, np.ndarray]] = []

    def x(self, shape: Sequence[int], kind: str = "normal", dtype: str | None = None) -> Value:
        dt = parse_dtype(dtype or self.dtype)
        rng = self.rng
        if kind == "normal":
            data = rng.standard_normal(shape)
        elif kind == "positive":
            data = rng.uniform(0.5, 3.0, shape)
        elif kind == "away":  # far from zero, either sign
            data = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        elif kind == "small_ints":
            data = rng.integers(-2, 3, shape).astype(np.float64)
        elif kind == "near_one":
            data = 1.0 + 0.05 * rng.standard_normal(shape)
        elif kind == "fractional":
            data = rng.uniform(-5.0, 5.0, shape)
        elif kind == "bool":
            data = rng.random(shape) < 0.5
        elif kind.startswith("ints"):
            hi = int(kind[4:] or 10)
            data = rng.integers(-hi, hi, shape)
        elif kind.startswith("index"):  # valid indices for a dim, negatives included
            n = int(kind[5:])
            data = rng.integers(-n, n, shape)
        else:
            raise ValueError(kind)
        arr = np.asarray(data).astype(dt.np_dtype)
        v = self.g.add_input(f"{self.prefix}_in{len(self.inputs)}", TensorType(tuple(shape), dt))
        self.inputs.append((v, arr))
        return v

    def const(self, data: np.ndarray) -> Value:
        return self.g.add_constant(f"{self.prefix}_c{len(self.g.constants)}", data)

    @property
    def np_dtype(self):
        return parse_dtype(self.dtype).np_dtype


def op(m: Maker, name: str, *inputs: Value, **attrs: Any) -> Value:
    return m.g.op(name, *inputs, **attrs)


def fused(m: Maker, kind: str, inputs: list[Value], body: Callable[..., Value | list[Value]]) -> list[Value]:
    """A fused node of ``kind`` whose subgraph is ``body`` applied to the inputs."""
    sub = Graph(f"{m.prefix}_{kind}")
    sub.symbols = dict(m.g.symbols)
    args = [sub.add_input(f"a{i}", v.type) for i, v in enumerate(inputs)]
    result = body(sub, *args)
    outs = result if isinstance(result, list) else [result]
    sub.set_outputs(*outs)
    return m.g.add_node("fused", inputs, {"kind": kind, "name": f"{m.prefix}_{kind}"}, subgraph=sub)


# ---- torch references ------------------------------------------------------------------------------


def _t():
    import torch

    return torch


def sdpa_ref(q, k, v, mask=None, causal=False, scale=None):
    """The sdpa op's definition in float64: GQA by repetition, bottom-right causal, rows that may
    attend nothing give zeros."""
    torch = _t()
    hq, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-1, -2) * scale
    sq, sk = logits.shape[-2:]
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            logits = logits + mask
    logits = logits.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return weights @ v


def _slice_ref(x):
    return x[1:4, :, -5::2]


def _pad_ref(x):
    torch = _t()
    # pads [1, -1, 2, 0]: rows +1 before, +2 after; columns crop 1 before
    x = x[:, 1:]
    return torch.nn.functional.pad(x, (0, 0, 1, 2), value=0.5)


def _rope_ref(x, cos, sin):
    torch = _t()
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def _gelu(x, approximate="none"):
    return _t().nn.functional.gelu(x, approximate=approximate)


def unary_cases() -> list[Case]:
    torch = _t()
    table = [
        ("neg", "normal", torch.neg), ("abs", "normal", torch.abs), ("exp", "normal", torch.exp),
        ("log", "positive", torch.log), ("sqrt", "positive", torch.sqrt), ("rsqrt", "positive", torch.rsqrt),
        ("reciprocal", "away", torch.reciprocal), ("sin", "normal", torch.sin), ("cos", "normal", torch.cos),
        ("tanh", "normal", torch.tanh), ("erf", "normal", torch.erf), ("sigmoid", "normal", torch.sigmoid),
        ("relu", "normal", torch.relu), ("silu", "normal", torch.nn.functional.silu),
        ("floor", "fractional", torch.floor), ("ceil", "fractional", torch.ceil),
    ]
    cases = [Case(name, (lambda m, n=name, k=kind: op(m, n, m.x((3, 37), k))), fn) for name, kind, fn in table]
    cases += [
        Case("gelu", lambda m: op(m, "gelu", m.x((4, 40))), _gelu),
        Case("gelu_tanh", lambda m: op(m, "gelu", m.x((4, 40)), approximate="tanh"),
             lambda x: _gelu(x, "tanh")),
        Case("clamp", lambda m: op(m, "clamp", m.x((5, 16)), min=-0.5, max=0.7), lambda x: x.clamp(-0.5, 0.7)),
        Case("clamp_min", lambda m: op(m, "clamp", m.x((5, 16)), min=0.25), lambda x: x.clamp(min=0.25)),
    ]
    return cases


def binary_cases() -> list[Case]:
    torch = _t()
    cases = [
        Case("add_bcast", lambda m: op(m, "add", m.x((4, 1, 32)), m.x((8, 32))), torch.add),
        Case("sub_bcast", lambda m: op(m, "sub", m.x((3, 5, 16)), m.x((16,))), torch.sub),
        Case("mul_bcast", lambda m: op(m, "mul", m.x((2, 3, 8)), m.x((2, 1, 8))), torch.mul),
        Case("div", lambda m: op(m, "div", m.x((6, 24)), m.x((6, 24), "away")), torch.div),
        Case("pow", lambda m: op(m, "pow", m.x((6, 24), "positive"), m.x((6, 24))), torch.pow),
        Case("maximum", lambda m: op(m, "maximum", m.x((6, 24)), m.x((24,))), torch.maximum),
        Case("minimum", lambda m: op(m, "minimum", m.x((6, 24)), m.x((6, 1))), torch.minimum),
        Case("scalar_bcast", lambda m: op(m, "mul", m.x((7, 9)), m.x(())), torch.mul),
    ]
    for name, fn in (("eq", torch.eq), ("ne", torch.ne), ("lt", torch.lt), ("le", torch.le), ("gt", torch.gt),
                     ("ge", torch.ge)):
        cases.append(Case(name, lambda m, n=name: op(m, n, m.x((4, 33), "small_ints"), m.x((33,), "small_ints")),
                          fn, exact=True))
    for name, fn in (("logical_and", torch.logical_and), ("logical_or", torch.logical_or),
                     ("logical_xor", torch.logical_xor)):
        cases.append(Case(name, lambda m, n=name: op(m, n, m.x((4, 20), "bool", "bool"), m.x((20,), "bool", "bool")),
                          fn, exact=True, dtypes=("f32",)))
    cases += [
        Case("logical_not", lambda m: op(m, "logical_not", m.x((4, 20), "bool", "bool")), torch.logical_not,
             exact=True, dtypes=("f32",)),
        Case("where", lambda m: op(m, "where", m.x((4, 1, 16), "bool", "bool"), m.x((4, 8, 16)), m.x((16,))),
             torch.where),
        Case("cast_to_i64", lambda m: op(m, "cast", m.x((5, 12), "fractional"), to="i64"),
             lambda x: x.to(torch.int64), exact=True),
        Case("cast_from_i64", lambda m: op(m, "cast", m.x((5, 12), "ints50", "i64"), to=m.dtype),
             lambda x: x.to(torch.float64), exact=True),
        Case("cast_to_bool", lambda m: op(m, "cast", m.x((5, 12), "small_ints"), to="bool"),
             lambda x: x != 0, exact=True),
        Case("cast_from_bool", lambda m: op(m, "cast", m.x((5, 12), "bool", "bool"), to=m.dtype),
             lambda x: x.to(torch.float64), exact=True),
        Case("cast_to_bf16", lambda m: op(m, "cast", m.x((5, 12), "normal", "f32"), to="bf16"),
             lambda x: x.to(torch.float32).to(torch.bfloat16), exact=True, dtypes=("f32",)),
        Case("cast_to_f16", lambda m: op(m, "cast", m.x((5, 12), "normal", "f32"), to="f16"),
             lambda x: x.to(torch.float32).to(torch.float16), exact=True, dtypes=("f32",)),
    ]
    # integer arithmetic (C semantics: truncating division), once
    for name, opname, fn in (("i64_add", "add", torch.add), ("i64_mul", "mul", torch.mul),
                             ("i64_max", "maximum", torch.maximum)):
        cases.append(Case(name, lambda m, o=opname: op(m, o, m.x((6, 10), "ints100", "i64"),
                                                       m.x((10,), "ints9", "i64")),
                          lambda a, b, f=fn: f(a, b), exact=True, dtypes=("f32",)))

    def int_div(m):  # divisors |b| + 1: never zero
        a = m.x((6, 10), "ints100", "i64")
        b = op(m, "add", op(m, "abs", m.x((10,), "ints9", "i64")), m.const(np.array(1, np.int64)))
        return op(m, "div", a, b)

    cases.append(Case("i64_div", int_div, lambda a, b: torch.div(a, b.abs() + 1, rounding_mode="trunc"), exact=True,
                      dtypes=("f32",)))
    cases.append(Case("i32_neg_abs", lambda m: op(m, "abs", op(m, "neg", m.x((7, 5), "ints1000", "i32"))),
                      lambda x: x.neg().abs(), exact=True, dtypes=("f32",)))
    return cases


def reduction_cases() -> list[Case]:
    torch = _t()
    return [
        Case("sum_last", lambda m: op(m, "sum", m.x((6, 100)), axes=[-1]), lambda x: x.sum(-1)),
        Case("sum_all", lambda m: op(m, "sum", m.x((3, 4, 50))), lambda x: x.sum()),
        Case("sum_first", lambda m: op(m, "sum", m.x((40, 6)), axes=[0]), lambda x: x.sum(0)),
        Case("mean_keep", lambda m: op(m, "mean", m.x((3, 4, 20)), axes=[1, 2], keepdims=True),
             lambda x: x.mean((1, 2), keepdim=True)),
        Case("max_last", lambda m: op(m, "max", m.x((5, 3000)), axes=[-1]), lambda x: x.amax(-1)),
        Case("min_outer", lambda m: op(m, "min", m.x((4, 3, 5)), axes=[0, 2]), lambda x: x.amin((0, 2))),
        Case("prod", lambda m: op(m, "prod", m.x((4, 30), "near_one"), axes=[1]), lambda x: x.prod(1)),
        Case("argmax", lambda m: op(m, "argmax", m.x((7, 300)), axis=-1), lambda x: x.argmax(-1), exact=True),
        Case("argmin_keep", lambda m: op(m, "argmin", m.x((9, 5)), axis=0, keepdims=True),
             lambda x: x.argmin(0, keepdim=True), exact=True),
        Case("softmax", lambda m: op(m, "softmax", m.x((6, 77))), lambda x: torch.softmax(x, -1)),
        Case("softmax_long", lambda m: op(m, "softmax", m.x((3, 20000))), lambda x: torch.softmax(x, -1)),
        Case("softmax_axis1", lambda m: op(m, "softmax", m.x((2, 9, 5)), axis=1), lambda x: torch.softmax(x, 1)),
        Case("log_softmax", lambda m: op(m, "log_softmax", m.x((4, 500))), lambda x: torch.log_softmax(x, -1)),
        Case("cumsum_excl", lambda m: op(m, "cumsum", m.x((3, 40, 2)), axis=1, exclusive=True),
             lambda x: x.cumsum(1) - x),
        Case("cumsum_rev", lambda m: op(m, "cumsum", m.x((5, 33)), axis=-1, reverse=True),
             lambda x: x.flip(-1).cumsum(-1).flip(-1)),
        Case("i64_sum", lambda m: op(m, "sum", m.x((5, 64), "ints1000", "i64"), axes=[1]), lambda x: x.sum(1),
             exact=True, dtypes=("f32",)),
        Case("i64_cumsum", lambda m: op(m, "cumsum", m.x((4, 9), "ints100", "i64"), axis=1), lambda x: x.cumsum(1),
             exact=True, dtypes=("f32",)),
        Case("layer_norm", lambda m: op(m, "layer_norm", m.x((4, 7, 96)), m.x((96,)), m.x((96,)), axis=-1, eps=1e-5),
             lambda x, w, b: torch.nn.functional.layer_norm(x, (96,), w, b, 1e-5)),
        Case("layer_norm_2d", lambda m: op(m, "layer_norm", m.x((3, 4, 5)), m.x((4, 5)), axis=1, eps=1e-5),
             lambda x, w: torch.nn.functional.layer_norm(x, (4, 5), w, None, 1e-5)),
        Case("rms_norm", lambda m: op(m, "rms_norm", m.x((6, 576)), m.x((576,)), eps=1e-6),
             lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w),
        Case("rms_norm_long", lambda m: op(m, "rms_norm", m.x((2, 5000)), eps=1e-6),
             lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
        Case("batch_norm", lambda m: op(m, "batch_norm", m.x((2, 8, 5, 5)), m.x((8,)), m.x((8,)), m.x((8,)),
                                        m.x((8,), "positive"), eps=1e-5),
             lambda x, s, b, mu, var: torch.nn.functional.batch_norm(x, mu, var, s, b, False, 0.0, 1e-5)),
    ]


def shape_cases() -> list[Case]:
    torch = _t()
    return [
        Case("reshape", lambda m: op(m, "reshape", m.x((4, 6, 5)), shape=[8, -1]), lambda x: x.reshape(8, -1),
             exact=True),
        Case("transpose", lambda m: op(m, "transpose", m.x((4, 6, 5)), perm=[2, 0, 1]),
             lambda x: x.permute(2, 0, 1), exact=True),
        Case("slice", lambda m: op(m, "slice", m.x((6, 3, 20)), starts=[1, -5], ends=[4, 2**31 - 1], axes=[0, 2],
                                   steps=[1, 2]), _slice_ref, exact=True),
        Case("slice_reverse", lambda m: op(m, "slice", m.x((4, 7)), starts=[-1], ends=[-(2**31)], axes=[1],
                                           steps=[-1]), lambda x: x.flip(1), exact=True),
        Case("concat", lambda m: op(m, "concat", m.x((2, 3, 4)), m.x((2, 5, 4)), m.x((2, 1, 4)), axis=1),
             lambda a, b, c: torch.cat([a, b, c], 1), exact=True),
        Case("split", lambda m: m.g.add_node("split", [m.x((6, 4))], {"axis": 0, "sizes": [2, 3, 1]}),
             lambda x: list(x.split([2, 3, 1], 0)), exact=True),
        Case("expand", lambda m: op(m, "expand", m.x((3, 1, 4)), shape=[2, 3, 5, 4]),
             lambda x: x.expand(2, 3, 5, 4), exact=True),
        Case("squeeze_unsqueeze", lambda m: op(m, "unsqueeze", op(m, "squeeze", m.x((3, 1, 4)), axes=[1]),
                                               axes=[0, 3]), lambda x: x.squeeze(1)[None, :, :, None], exact=True),
        Case("flatten", lambda m: op(m, "flatten", m.x((2, 3, 4, 5)), axis=2), lambda x: x.reshape(6, 20),
             exact=True),
        Case("gather", lambda m: op(m, "gather", m.x((10, 16)), m.x((2, 3), "index10", "i64"), axis=0),
             lambda d, i: d[i % 10], exact=True),
        Case("gather_axis1", lambda m: op(m, "gather", m.x((4, 10, 3)), m.x((5,), "index10", "i32"), axis=1),
             lambda d, i: d[:, i.long() % 10], exact=True),
        Case("gather_elements", lambda m: op(m, "gather_elements", m.x((4, 9)), m.x((4, 6), "index9", "i64"), axis=1),
             lambda d, i: torch.gather(d, 1, i % 9), exact=True),
        Case("index", lambda m: op(m, "index", m.x((3, 7, 8)), m.x((4, 1), "index7", "i64"),
                                   m.x((5,), "index8", "i64"), axis=1),
             lambda d, a, b: d[:, a % 7, b % 8], exact=True),
        Case("pad", lambda m: op(m, "pad", m.x((4, 6)), pads=[1, -1, 2, 0], value=0.5), _pad_ref, exact=True),
        Case("full", lambda m: op(m, "full", shape=[3, 4], value=2.5, dtype=m.dtype),
             lambda: torch.full((3, 4), 2.5, dtype=torch.float64), exact=True),
        Case("iota", lambda m: op(m, "iota", shape=[10], dtype="i64", start=3),
             lambda: torch.arange(3, 13), exact=True, dtypes=("f32",)),
    ]


def linalg_cases() -> list[Case]:
    torch = _t()
    fn = torch.nn.functional
    return [
        Case("matmul_batched", lambda m: op(m, "matmul", m.x((2, 3, 17, 24)), m.x((2, 3, 24, 40))), torch.matmul),
        Case("matmul_bcast", lambda m: op(m, "matmul", m.x((2, 1, 16, 32)), m.x((1, 3, 32, 16))), torch.matmul),
        Case("matmul_2d_rhs", lambda m: op(m, "matmul", m.x((4, 5, 32)), m.x((32, 24))), torch.matmul),
        Case("matmul_odd", lambda m: op(m, "matmul", m.x((33, 20)), m.x((20, 13))), torch.matmul),
        Case("linear_gemv", lambda m: op(m, "linear", m.x((5, 64)), m.x((48, 64)), m.x((48,))), fn.linear),
        Case("linear_gemm", lambda m: op(m, "linear", m.x((3, 50, 64)), m.x((136, 64)), m.x((136,))), fn.linear),
        Case("linear_big", lambda m: op(m, "linear", m.x((300, 256)), m.x((320, 256))), fn.linear),
        Case("linear_k20", lambda m: op(m, "linear", m.x((12, 20)), m.x((24, 20))), fn.linear),
        # 32 rows: the multi-row GEMV of batched decode (four chunks of 8 rows per warp)
        Case("linear_gemv32", lambda m: op(m, "linear", m.x((2, 16, 96)), m.x((40, 96)), m.x((40,))), fn.linear),
        Case("linear_splitk", lambda m: op(m, "linear", m.x((1, 4096)), m.x((64, 4096))), fn.linear),
        Case("linear_tc_splitk", lambda m: op(m, "linear", m.x((64, 2048)), m.x((96, 2048)), m.x((96,))), fn.linear),
        Case("matmul_tc_splitk", lambda m: op(m, "matmul", m.x((2, 40, 1024)), m.x((2, 1024, 64))), torch.matmul),
        Case("matmul_i64", lambda m: op(m, "matmul", m.x((5, 7), "ints5", "i64"), m.x((7, 3), "ints5", "i64")),
             torch.matmul, exact=True, dtypes=("f32",)),
    ]


def nn_cases() -> list[Case]:
    torch = _t()
    fn = torch.nn.functional
    return [
        Case("conv2d", lambda m: op(m, "conv2d", m.x((2, 3, 9, 9)), m.x((8, 3, 3, 3)), m.x((8,)), strides=[2, 2],
                                    pads=[1, 1, 1, 1]),
             lambda x, w, b: fn.conv2d(x, w, b, stride=2, padding=1)),
        Case("conv2d_grouped", lambda m: op(m, "conv2d", m.x((1, 4, 10, 10)), m.x((6, 2, 3, 3)), groups=2,
                                            dilations=[2, 2], pads=[2, 2, 2, 2]),
             lambda x, w: fn.conv2d(x, w, None, padding=2, dilation=2, groups=2)),
        Case("max_pool", lambda m: op(m, "max_pool2d", m.x((2, 3, 9, 9)), kernel=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], ceil_mode=True),
             lambda x: fn.max_pool2d(x, 3, 2, 1, ceil_mode=True), exact=True),
        Case("avg_pool", lambda m: op(m, "avg_pool2d", m.x((2, 3, 8, 8)), kernel=[2, 2], pads=[1, 1, 1, 1]),
             lambda x: fn.avg_pool2d(x, 2, 2, 1, count_include_pad=False)),
        Case("avg_pool_incl", lambda m: op(m, "avg_pool2d", m.x((1, 2, 7, 7)), kernel=[3, 3], strides=[2, 2],
                                           pads=[1, 1, 1, 1], count_include_pad=True),
             lambda x: fn.avg_pool2d(x, 3, 2, 1, count_include_pad=True)),
    ]


def attention_cases() -> list[Case]:
    torch = _t()
    return [
        Case("sdpa_causal_gqa", lambda m: op(m, "sdpa", m.x((2, 4, 33, 64)), m.x((2, 2, 33, 64)), m.x((2, 2, 33, 64)),
                                             causal=True),
             lambda q, k, v: sdpa_ref(q, k, v, causal=True)),
        Case("sdpa_long", lambda m: op(m, "sdpa", m.x((1, 2, 300, 32)), m.x((1, 2, 300, 32)), m.x((1, 2, 300, 32))),
             lambda q, k, v: sdpa_ref(q, k, v)),
        Case("sdpa_bottom_right", lambda m: op(m, "sdpa", m.x((1, 4, 3, 32)), m.x((1, 4, 20, 32)),
                                               m.x((1, 4, 20, 32)), causal=True),
             lambda q, k, v: sdpa_ref(q, k, v, causal=True)),
        Case("sdpa_bool_mask", lambda m: op(m, "sdpa", m.x((2, 4, 33, 64)), m.x((2, 1, 33, 64)), m.x((2, 1, 33, 64)),
                                            _masked_rows(m)),
             lambda q, k, v, mask: sdpa_ref(q, k, v, mask=mask & (torch.arange(33)[:, None] != 5))),
        Case("sdpa_additive", lambda m: op(m, "sdpa", m.x((1, 3, 9, 48)), m.x((1, 3, 20, 48)), m.x((1, 3, 20, 48)),
                                           m.x((1, 1, 1, 20)), scale=0.3),
             lambda q, k, v, mask: sdpa_ref(q, k, v, mask=mask, scale=0.3)),
        Case("sdpa_decode", lambda m: op(m, "sdpa", m.x((2, 8, 1, 64)), m.x((2, 2, 200, 64)), m.x((2, 2, 200, 64)),
                                         causal=True),
             lambda q, k, v: sdpa_ref(q, k, v, causal=True)),
        # few rows for the GPU: the key tiles split across 4 warps (causal bottom-right: 100 rows over 150 keys,
        # rows and keys not whole tiles, GQA 8/2, head dim 128) and across 2 (head dim 16, 40 keys)
        Case("sdpa_key_split_d128", lambda m: op(m, "sdpa", m.x((1, 8, 100, 128)), m.x((1, 2, 150, 128)),
                                                 m.x((1, 2, 150, 128)), causal=True),
             lambda q, k, v: sdpa_ref(q, k, v, causal=True)),
        Case("sdpa_key_split_d16", lambda m: op(m, "sdpa", m.x((1, 2, 20, 16)), m.x((1, 2, 40, 16)),
                                                m.x((1, 2, 40, 16))),
             lambda q, k, v: sdpa_ref(q, k, v)),
    ]


def _masked_rows(m: Maker) -> Value:
    """A random bool mask [2,1,33,33] with query row 5 allowed nothing (its output must be zeros)."""
    mask = m.x((2, 1, 33, 33), "bool", "bool")
    keep = np.ones((1, 1, 33, 33), bool)
    keep[..., 5, :] = False
    return op(m, "logical_and", mask, m.const(keep))


def fused_cases() -> list[Case]:
    torch = _t()
    fn = torch.nn.functional

    def elementwise(m):
        x, y = m.x((8, 64)), m.x((64,))
        two = np.array(2.0, dtype=m.np_dtype)
        return fused(m, "elementwise", [x, y], lambda s, a, b: s.op(
            "add", s.op("mul", a, s.op("sigmoid", a)), s.op("mul", b, s.add_constant(f"{m.prefix}_two", two))))

    def rms(m):
        x, r, w = m.x((5, 576)), m.x((5, 576)), m.x((576,))

        def body(s, a, b, c):
            h = s.op("add", a, b)
            return [s.op("rms_norm", h, c, eps=1e-6), h]

        return fused(m, "rms_norm", [x, r, w], body)

    def rms_ref(x, r, w):
        h = x + r
        return [h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w, h]

    def layer(m):
        x, w, b, g2 = m.x((6, 384)), m.x((384,)), m.x((384,)), m.x((384,))
        return fused(m, "layer_norm", [x, w, b, g2], lambda s, a, ww, bb, gg: s.op(
            "relu", s.op("mul", s.op("layer_norm", a, ww, bb, eps=1e-12), gg)))

    def softmax(m):
        x, mask = m.x((4, 8, 40)), m.x((4, 1, 40))
        return fused(m, "softmax", [x, mask], lambda s, a, mm: s.op("softmax", s.op("add", a, mm)))

    def gemm(m):
        x, w, b, res = m.x((2, 40, 64)), m.x((96, 64)), m.x((96,)), m.x((2, 40, 96))
        return fused(m, "gemm", [x, w, b, res], lambda s, a, ww, bb, rr: s.op(
            "add", s.op("gelu", s.op("linear", a, ww, bb)), rr))

    def gemm_bmm(m):
        a, b, scale = m.x((3, 16, 32)), m.x((3, 32, 24)), m.x((3, 1, 1))
        return fused(m, "gemm", [a, b, scale], lambda s, x, y, z: s.op("mul", s.op("matmul", x, y), z))

    def attention(m):
        q, k, v = m.x((2, 16, 64)), m.x((2, 16, 64)), m.x((2, 16, 64))

        def body(s, a, b, c):
            heads = [s.op("transpose", s.op("reshape", t, shape=[2, 16, 4, 16]), perm=[0, 2, 1, 3]) for t in (a, b, c)]
            o = s.op("sdpa", *heads, causal=True)
            return s.op("reshape", s.op("transpose", o, perm=[0, 2, 1, 3]), shape=[2, 16, 64])

        return fused(m, "attention", [q, k, v], body)

    def attention_ref(q, k, v):
        split = [t.reshape(2, 16, 4, 16).transpose(1, 2) for t in (q, k, v)]
        return sdpa_ref(*split, causal=True).transpose(1, 2).reshape(2, 16, 64)

    def rope(m):
        x, cos, sin = m.x((1, 4, 10, 32)), m.x((1, 1, 10, 32)), m.x((1, 1, 10, 32))

        def body(s, a, c, sn):
            lo = s.op("slice", a, starts=[0], ends=[16], axes=[3])
            hi = s.op("slice", a, starts=[16], ends=[2**62], axes=[3])
            rot = s.op("concat", s.op("neg", hi), lo, axis=3)
            return s.op("add", s.op("mul", a, c), s.op("mul", rot, sn))

        return fused(m, "rope", [x, cos, sin], body)

    def swiglu(m):
        g, u = m.x((7, 96)), m.x((7, 96))
        return fused(m, "swiglu", [g, u], lambda s, a, b: s.op("mul", s.op("silu", a), b))

    def geglu(m):
        g, u = m.x((7, 96)), m.x((7, 96))
        return fused(m, "geglu", [g, u], lambda s, a, b: s.op("mul", s.op("gelu", a, approximate="tanh"), b))

    def norm_linear(shape):
        """An RMSNorm read only by a linear: the GEMM normalizes A as it loads it (GEMV rows) or stores it
        once first (more rows)."""
        def make(m):
            x, g, w = m.x(shape), m.x((576,)), m.x((96, 576))
            return op(m, "linear", op(m, "rms_norm", x, g, eps=1e-6), w)

        return make

    def norm_gemm_residual(shape):
        """The decoder's form: a fused norm group (norm, then the weight's product) feeding a fused
        GEMM whose epilogue adds the residual."""
        def make(m):
            x, g, w, r = m.x(shape), m.x((576,)), m.x((96, 576)), m.x(shape[:-1] + (96,))
            n = fused(m, "rms_norm", [x, g], lambda s, a, gg: s.op("mul", s.op("rms_norm", a, eps=1e-5), gg))[0]
            return fused(m, "gemm", [n, w, r], lambda s, a, ww, rr: s.op("add", s.op("linear", a, ww), rr))

        return make

    def _rms(x, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def mystery(m):
        a, b = m.x((4, 16, 8)), m.x((4, 8, 16))
        return fused(m, "some_future_kind", [a, b], lambda s, x, y: s.op(
            "add", s.op("softmax", s.op("matmul", x, y)), s.op("cumsum", s.op("matmul", x, y), axis=2)))

    return [
        Case("fused_elementwise", elementwise, lambda x, y: x * torch.sigmoid(x) + y * 2),
        Case("fused_rms_norm", rms, rms_ref),
        Case("fused_layer_norm", layer, lambda x, w, b, g: torch.relu(fn.layer_norm(x, (384,), w, b, 1e-12) * g)),
        Case("fused_softmax", softmax, lambda x, mask: torch.softmax(x + mask, -1)),
        Case("fused_gemm", gemm, lambda x, w, b, r: fn.gelu(fn.linear(x, w, b)) + r),
        Case("fused_gemm_bmm", gemm_bmm, lambda a, b, s: (a @ b) * s),
        Case("fused_attention", attention, attention_ref),
        Case("fused_rope", rope, _rope_ref),
        Case("fused_swiglu", swiglu, lambda g, u: fn.silu(g) * u),
        Case("fused_geglu", geglu, lambda g, u: fn.gelu(g, approximate="tanh") * u),
        Case("norm_linear_1row", norm_linear((1, 576)), lambda x, g, w: fn.linear(_rms(x, 1e-6) * g, w)),
        Case("norm_linear_40rows", norm_linear((40, 576)), lambda x, g, w: fn.linear(_rms(x, 1e-6) * g, w)),
        Case("norm_gemm_residual_5rows", norm_gemm_residual((5, 576)),
             lambda x, g, w, r: fn.linear(_rms(x, 1e-5) * g, w) + r),
        Case("norm_gemm_residual_2x20rows", norm_gemm_residual((2, 20, 576)),
             lambda x, g, w, r: fn.linear(_rms(x, 1e-5) * g, w) + r),
        Case("fused_unknown_kind", mystery, lambda a, b: torch.softmax(a @ b, -1) + (a @ b).cumsum(2)),
    ]


GROUPS: dict[str, Callable[[], list[Case]]] = {
    "basic": lambda: unary_cases() + binary_cases() + reduction_cases() + shape_cases(),
    "heavy": lambda: linalg_cases() + nn_cases() + attention_cases() + fused_cases(),
}


def build_group(cases: list[Case], dtype: str, seed: int):
    """One graph holding every case for ``dtype``: (graph, inputs by name, case -> (input arrays,
    output names))."""
    g = Graph(f"cases_{dtype}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    layout: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    outputs: list[Value] = []
    for case in cases:
        if dtype not in case.dtypes:
            continue
        m = Maker(g, dtype, rng, case.name)
        result = case.build(m)
        outs = result if isinstance(result, list) else [result]
        layout[case.name] = ([a for _, a in m.inputs], [v.name for v in outs])
        feeds.update({v.name: a for v, a in m.inputs})
        outputs.extend(outs)
    g.set_outputs(*outputs)
    return g, feeds, layout
