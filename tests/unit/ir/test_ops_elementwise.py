"""Elementwise ops: type inference and interpreter results against torch / numpy in float64."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest
import torch

from qjc.errors import IRError
from qjc.ir import Graph, SymExpr, TensorType, bf16, boolean, f16, f32, i32, i64
from qjc.ir.interpreter import run

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer lands separately; the numeric checks stand alone
    def assert_roundtrip(graph, constants=None):
        return None

TOL = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.6e-2}

UNARY_TORCH = {
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "sin": torch.sin, "cos": torch.cos,
    "tanh": torch.tanh, "erf": torch.erf, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "silu": torch.nn.functional.silu, "floor": torch.floor, "ceil": torch.ceil,
}
POSITIVE_ONLY = {"log", "sqrt", "rsqrt", "reciprocal"}

BINARY_TORCH = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum,
}
COMPARE_TORCH = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}


def _random(rng, shape, dtype, positive=False):
    x = np.asarray(rng.standard_normal(shape) * 2)
    if positive:
        x = np.abs(x) + 0.1
    return np.asarray(x.astype(dtype.np_dtype))


def _ref(fn, *arrays):
    """Evaluate a torch function in float64 on the (already rounded) inputs."""
    return fn(*[torch.from_numpy(a.astype(np.float64)) for a in arrays]).numpy()


def _close(got, want, dtype):
    got = got.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=TOL[dtype.name], atol=TOL[dtype.name] * scale)


@pytest.mark.parametrize("dtype", [f32, f16, bf16], ids=lambda d: d.name)
@pytest.mark.parametrize("op", sorted(UNARY_TORCH))
def test_unary_matches_torch(op, dtype):
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    for shape in [(7,), (3, 5), (2, 3, 4)]:
        g = Graph()
        x = g.add_input("x", TensorType(shape, dtype))
        g.set_outputs(g.op(op, x))
        assert g.outputs[0].type == TensorType(shape, dtype)
        a = _random(rng, shape, dtype, positive=op in POSITIVE_ONLY)
        (got,) = run(g, [a])
        assert got.dtype == dtype.np_dtype
        _close(got, _ref(UNARY_TORCH[op], a), dtype)
        assert_roundtrip(g)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [f32, bf16], ids=lambda d: d.name)
def test_gelu(approximate, dtype):
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", TensorType((4, 33), dtype))
    g.set_outputs(g.op("gelu", x, approximate=approximate))
    a = _random(rng, (4, 33), dtype)
    (got,) = run(g, [a])
    _close(got, _ref(lambda t: torch.nn.functional.gelu(t, approximate=approximate), a), dtype)


@pytest.mark.parametrize("dtype", [f32, f16, bf16], ids=lambda d: d.name)
@pytest.mark.parametrize("op", sorted(BINARY_TORCH))
def test_binary_broadcasting(op, dtype):
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    for sa, sb in [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((), (2, 2)), ((2, 1, 4), (3, 1))]:
        g = Graph()
        a_in = g.add_input("a", TensorType(sa, dtype))
        b_in = g.add_input("b", TensorType(sb, dtype))
        g.set_outputs(g.op(op, a_in, b_in))
        want_shape = np.broadcast_shapes(sa, sb)
        assert g.outputs[0].type.shape == want_shape
        a = _random(rng, sa, dtype, positive=op == "pow")
        b = _random(rng, sb, dtype, positive=op == "div")
        if op == "pow":
            b = np.clip(b, -2, 2).astype(dtype.np_dtype)
        (got,) = run(g, [a, b])
        _close(got, _ref(BINARY_TORCH[op], a, b), dtype)
        assert_roundtrip(g)


@pytest.mark.parametrize("op", sorted(COMPARE_TORCH))
def test_comparisons_give_bool(op):
    rng = np.random.default_rng(7)
    g = Graph()
    a_in = g.add_input("a", TensorType((4, 5), i64))
    b_in = g.add_input("b", TensorType((5,), i64))
    g.set_outputs(g.op(op, a_in, b_in))
    assert g.outputs[0].type.dtype == boolean
    a = rng.integers(-3, 3, (4, 5))
    b = rng.integers(-3, 3, (5,))
    (got,) = run(g, [a, b])
    np.testing.assert_array_equal(got, COMPARE_TORCH[op](torch.from_numpy(a), torch.from_numpy(b)).numpy())


def test_integer_division_truncates_toward_zero():
    g = Graph()
    a_in = g.add_input("a", TensorType((6,), i32))
    b_in = g.add_input("b", TensorType((6,), i32))
    g.set_outputs(g.op("div", a_in, b_in))
    a = np.array([7, -7, 7, -7, 0, 9], np.int32)
    b = np.array([2, 2, -2, -2, 3, 3], np.int32)
    (got,) = run(g, [a, b])
    np.testing.assert_array_equal(got, torch.div(torch.from_numpy(a), torch.from_numpy(b), rounding_mode="trunc"))


def test_where_logic_and_not():
    rng = np.random.default_rng(3)
    g = Graph()
    c = g.add_input("c", TensorType((3, 1), boolean))
    d = g.add_input("d", TensorType((1, 4), boolean))
    a = g.add_input("a", TensorType((3, 4), f32))
    b = g.add_input("b", TensorType((), f32))
    cond = g.op("logical_not", g.op("logical_xor", c, d))
    g.set_outputs(g.op("where", cond, a, b))
    cv, dv = rng.random((3, 1)) > 0.5, rng.random((1, 4)) > 0.5
    av, bv = rng.standard_normal((3, 4)).astype(np.float32), np.float32(-9.0)
    (got,) = run(g, [cv, dv, av, np.asarray(bv)])
    np.testing.assert_array_equal(got, np.where(~(cv ^ dv), av, bv))
    assert_roundtrip(g)


@pytest.mark.parametrize("src,dst", [(f32, f16), (f32, bf16), (bf16, f32), (f32, i32), (i64, f32), (f32, boolean)],
                         ids=lambda d: d.name)
def test_cast(src, dst):
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.add_input("x", TensorType((64,), src))
    g.set_outputs(g.op("cast", x, to=dst))
    a = (rng.standard_normal(64) * 100).astype(src.np_dtype)
    (got,) = run(g, [a])
    want = torch.from_numpy(a.astype(np.float64) if src == bf16 else a)
    torch_dst = {f16: torch.float16, bf16: torch.bfloat16, f32: torch.float32, i32: torch.int32,
                 boolean: torch.bool}[dst]
    want = want.to(torch_dst)
    want = want.float().numpy() if dst == bf16 else want.numpy()
    np.testing.assert_array_equal(got.astype(np.float32) if dst == bf16 else got, want)


def test_clamp_one_sided():
    g = Graph()
    x = g.add_input("x", TensorType((5,), f32))
    g.set_outputs(g.op("clamp", g.op("clamp", x, min=-1.0), max=0.5))
    a = np.array([-3, -0.5, 0, 0.7, 9], np.float32)
    (got,) = run(g, [a])
    np.testing.assert_array_equal(got, np.clip(a, -1, 0.5))


def test_symbolic_broadcast_and_run():
    g = Graph()
    g.add_symbol("b", 1, 16)
    b = SymExpr.symbol("b")
    x = g.add_input("x", TensorType((b, 8), f32))
    y = g.add_input("y", TensorType((1, 8), f32))
    out = g.op("mul", x, y)
    assert out.type == TensorType((b, 8), f32)
    g.set_outputs(out)
    rng = np.random.default_rng(0)
    for n in (1, 5):
        xv, yv = rng.standard_normal((n, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
        np.testing.assert_allclose(run(g, [xv, yv])[0], xv.astype(np.float64) * yv, rtol=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda g: g.op("add", g.add_input("a", TensorType((3,), f32)), g.add_input("b", TensorType((4,), f32))),
        lambda g: g.op("add", g.add_input("a", TensorType((3,), f32)), g.add_input("b", TensorType((3,), f16))),
        lambda g: g.op("exp", g.add_input("a", TensorType((3,), i64))),
        lambda g: g.op("where", g.add_input("c", TensorType((3,), f32)), g.add_input("a", TensorType((3,), f32)),
                       g.add_input("b", TensorType((3,), f32))),
        lambda g: g.op("gelu", g.add_input("a", TensorType((3,), f32)), approximate="fast"),
        lambda g: g.op("cast", g.add_input("a", TensorType((3,), f32))),
        lambda g: g.op("relu", g.add_input("a", TensorType((3,), f32)), alpha=0.1),
        lambda g: g.op("nosuchop", g.add_input("a", TensorType((3,), f32))),
    ],
    ids=["shape", "dtype", "int-exp", "cond-dtype", "bad-choice", "missing-attr", "unknown-attr", "unknown-op"],
)
def test_bad_nodes_raise_ir_error(build):
    with pytest.raises(IRError):
        build(Graph())


def test_narrow_float_results_are_rounded_once():
    """bf16 inputs are computed in f32 and rounded to bf16 once: exp of a bf16 value equals
    the bf16 rounding of the exact f32 result."""
    g = Graph()
    x = g.add_input("x", TensorType((100,), bf16))
    g.set_outputs(g.op("exp", x))
    a = np.linspace(-4, 4, 100).astype(ml_dtypes.bfloat16)
    (got,) = run(g, [a])
    np.testing.assert_array_equal(got, np.exp(a.astype(np.float32)).astype(ml_dtypes.bfloat16))
