"""Reduction ops: type inference (symbolic dims included) and interpreter results against torch in float64."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from qjc.errors import IRError
from qjc.ir import Graph, SymExpr, TensorType, bf16, boolean, f16, f32, i32, i64
from qjc.ir.interpreter import run

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer lands separately; the numeric checks stand alone
    def assert_roundtrip(graph, constants=None, inputs=None):
        return None

TOL = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.6e-2}
FLOATS = [f32, f16, bf16]


def _random(rng, shape, dtype, low=None, high=None):
    if dtype.is_int:
        return rng.integers(-50, 50, size=shape).astype(dtype.np_dtype)
    x = rng.uniform(low, high, size=shape) if low is not None else rng.standard_normal(shape) * 2
    return np.asarray(x).astype(dtype.np_dtype)


def _t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.float64))


def _close(got: np.ndarray, want, dtype) -> None:
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    tol = TOL[dtype.name]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)


def _run1(op: str, a: np.ndarray, dtype, **attrs) -> tuple[np.ndarray, Graph]:
    g = Graph()
    x = g.add_input("x", TensorType(a.shape, dtype))
    g.set_outputs(g.op(op, x, **attrs))
    (got,) = run(g, [a])
    assert got.dtype == g.outputs[0].type.dtype.np_dtype
    assert got.shape == g.outputs[0].type.shape
    assert_roundtrip(g, inputs=[a])
    return got, g


def _dims(axes, ndim):
    return tuple(range(ndim)) if axes is None else tuple(axes)


def _torch_reduce(op: str, t: torch.Tensor, axes, keepdims: bool) -> torch.Tensor:
    dims = _dims(axes, t.ndim)
    if op == "sum":
        return torch.sum(t, dim=dims, keepdim=keepdims)
    if op == "mean":
        return torch.mean(t, dim=dims, keepdim=keepdims)
    if op == "max":
        return torch.amax(t, dim=dims, keepdim=keepdims)
    if op == "min":
        return torch.amin(t, dim=dims, keepdim=keepdims)
    # torch.prod takes one dim at a time; reduce the highest first so the others keep their numbers
    out = t
    for d in sorted((d % t.ndim for d in dims), reverse=True):
        out = torch.prod(out, dim=d, keepdim=keepdims)
    return out


REDUCE_CASES = [
    ((2, 3, 4), None, False),
    ((2, 3, 4), None, True),
    ((2, 3, 4), (1,), True),
    ((2, 3, 4), (-1, 0), False),
    ((7,), (0,), False),
    ((3, 1, 5), (-2,), True),
    ((4, 33), (1,), False),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "prod"])
def test_reduce_float_matches_torch(op, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{op}/{dtype.name}".encode()))
    for shape, axes, keepdims in REDUCE_CASES:
        # products of values near 1 stay in range for every dtype
        a = _random(rng, shape, dtype, 0.6, 1.4) if op == "prod" else _random(rng, shape, dtype)
        got, g = _run1(op, a, dtype, axes=axes, keepdims=keepdims)
        assert g.outputs[0].type.dtype == dtype
        _close(got, _torch_reduce(op, _t64(a), axes, keepdims).numpy(), dtype)


@pytest.mark.parametrize("dtype", [i64, i32], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
def test_reduce_int_keeps_dtype(op, dtype):
    rng = np.random.default_rng(7)
    for shape, axes, keepdims in REDUCE_CASES:
        a = rng.integers(-3, 4, size=shape).astype(dtype.np_dtype)
        got, g = _run1(op, a, dtype, axes=axes, keepdims=keepdims)
        assert g.outputs[0].type.dtype == dtype and got.dtype == dtype.np_dtype
        want = _torch_reduce(op, torch.from_numpy(a.astype(np.int64)), axes, keepdims).numpy()
        np.testing.assert_array_equal(got, want.astype(dtype.np_dtype))


def test_int32_sum_wraps_like_c():
    a = np.full((4,), 2**30, dtype=np.int32)
    got, _ = _run1("sum", a, i32)
    assert got.dtype == np.int32 and int(got) == np.int64(2**32).astype(np.int32)  # 2**32 wraps to 0


def test_narrow_float_mean_accumulates_in_f32():
    # 4096 * 30 overflows f16 (max 65504): an f16 accumulator would give inf, f32 gives the exact mean
    a = np.full((4096,), 30.0, dtype=np.float16)
    got, _ = _run1("mean", a, f16)
    assert got.dtype == np.float16 and float(got) == 30.0
    with np.errstate(over="ignore"):
        total, _ = _run1("sum", a, f16)
    assert np.isinf(total)  # the true sum does not fit in f16 either
    # 1 + 256 small terms: a bf16 accumulator would drop every 2**-9 (below half an ulp of 1)
    b = np.concatenate([[1.0], np.full(256, 2.0**-9)]).astype(bf16.np_dtype)
    got, _ = _run1("sum", b, bf16)
    assert float(got) == 1.5


def test_reduce_scalar_and_empty_axes():
    a = np.asarray(np.float32(3.5))
    got, g = _run1("sum", a, f32, axes=(0,))
    assert g.outputs[0].type.shape == () and float(got) == 3.5
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    got, g = _run1("sum", b, f32, axes=())
    assert g.outputs[0].type.shape == (2, 3)
    np.testing.assert_array_equal(got, b)


def test_reduce_symbolic_shapes():
    b, s = SymExpr.symbol("b"), SymExpr.symbol("s")
    g = Graph()
    g.add_symbol("b", 1, 8)
    g.add_symbol("s", 1, 64)
    x = g.add_input("x", TensorType((b, s, 64), f32))
    total = g.op("sum", x, axes=[-1])
    peak = g.op("max", x, axes=[1], keepdims=True)
    avg = g.op("mean", x)
    idx = g.op("argmax", x, axis=1)
    sm = g.op("softmax", x, axis=1)
    cs = g.op("cumsum", x, axis=1)
    assert total.type == TensorType((b, s), f32)
    assert peak.type == TensorType((b, 1, 64), f32)
    assert avg.type == TensorType((), f32)
    assert idx.type == TensorType((b, 64), i64)
    assert sm.type == x.type and cs.type == x.type
    g.set_outputs(total, peak, avg, idx, sm, cs)
    a = np.random.default_rng(3).standard_normal((2, 5, 64)).astype(np.float32)
    got = run(g, [a])
    t = _t64(a)
    _close(got[0], t.sum(-1).numpy(), f32)
    _close(got[1], t.amax(1, keepdim=True).numpy(), f32)
    _close(got[2], t.mean().numpy(), f32)
    np.testing.assert_array_equal(got[3], t.argmax(1).numpy())
    _close(got[4], torch.softmax(t, 1).numpy(), f32)
    _close(got[5], torch.cumsum(t, 1).numpy(), f32)
    assert_roundtrip(g, inputs=[a])


@pytest.mark.parametrize("dtype", [f32, bf16, i64], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_reduce_matches_torch(op, dtype):
    rng = np.random.default_rng(11)
    fn = torch.argmax if op == "argmax" else torch.argmin
    cases = [((5,), 0, False), ((3, 7), -1, False), ((3, 7), 0, True), ((2, 3, 4), 1, True)]
    for shape, axis, keepdims in cases:
        # few distinct values, so ties are common: both sides must pick the first index
        a = rng.integers(-3, 4, size=shape).astype(dtype.np_dtype)
        got, g = _run1(op, a, dtype, axis=axis, keepdims=keepdims)
        assert g.outputs[0].type.dtype == i64
        want = fn(_t64(a), dim=axis, keepdim=keepdims).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_matches_torch(op, dtype):
    rng = np.random.default_rng(5)
    fn = torch.softmax if op == "softmax" else torch.log_softmax
    for shape, axis in [((8,), -1), ((3, 17), -1), ((3, 17), 0), ((2, 3, 5), 1)]:
        a = _random(rng, shape, dtype)
        got, _ = _run1(op, a, dtype, axis=axis)
        _close(got, fn(_t64(a), dim=axis).numpy(), dtype)


def test_softmax_default_axis_and_stability():
    # logits of 1e4 would overflow exp() without the max shift
    a = np.array([[1e4, 1e4 - 1.0, 1e4 - 3.0], [-1e4, 0.0, 5.0]], dtype=np.float32)
    got, g = _run1("softmax", a, f32)
    assert g.nodes[0].attrs["axis"] == -1
    assert np.all(np.isfinite(got))
    _close(got, torch.softmax(_t64(a), -1).numpy(), f32)
    got, _ = _run1("log_softmax", a, f32)
    assert np.all(np.isfinite(got))
    _close(got, torch.log_softmax(_t64(a), -1).numpy(), f32)


@pytest.mark.parametrize("dtype", [f32, f16, bf16, i64], ids=lambda d: d.name)
def test_cumsum_matches_torch(dtype):
    rng = np.random.default_rng(9)
    for shape, axis in [((9,), 0), ((3, 6), 1), ((3, 6), -2), ((2, 3, 4), -1)]:
        a = _random(rng, shape, dtype)
        got, g = _run1("cumsum", a, dtype, axis=axis)
        assert g.outputs[0].type == TensorType(shape, dtype)
        want = torch.cumsum(_t64(a), dim=axis).numpy()
        if dtype.is_int:
            np.testing.assert_array_equal(got, want.astype(np.int64))
        else:
            _close(got, want, dtype)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_exclusive_reverse(exclusive, reverse):
    a = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    got, _ = _run1("cumsum", a, f32, axis=1, exclusive=exclusive, reverse=reverse)
    want = np.zeros((3, 5))
    for i in range(3):
        for j in range(5):
            # ONNX CumSum: which elements of the row go into output j
            ks = range(j, 5) if reverse else range(0, j + 1)
            want[i, j] = sum(float(a[i, k]) for k in ks if not (exclusive and k == j))
    _close(got, want, f32)


def _infer_fails(op: str, t: TensorType, match: str, **attrs) -> None:
    g = Graph()
    x = g.add_input("x", t)
    with pytest.raises(IRError, match=match):
        g.op(op, x, **attrs)


def test_bad_inputs_raise_irerror():
    t = TensorType((2, 3, 4), f32)
    _infer_fails("sum", t, "out of range", axes=[3])
    _infer_fails("sum", t, "repeated axis", axes=[1, -2])
    _infer_fails("max", t, "out of range", axes=[-4])
    _infer_fails("mean", TensorType((2, 3), i64), "float")
    _infer_fails("sum", TensorType((2, 3), boolean), "bool")
    _infer_fails("softmax", TensorType((2, 3), i32), "float")
    _infer_fails("softmax", t, "out of range", axis=3)
    _infer_fails("argmax", t, "needs attribute")  # axis is required
    _infer_fails("argmax", t, "out of range", axis=5)
    _infer_fails("argmax", TensorType((), f32), "rank", axis=0)
    _infer_fails("max", TensorType((2, 0), f32), "size 0", axes=[1])
    _infer_fails("argmin", TensorType((0, 3), f32), "size 0", axis=0)
    _infer_fails("cumsum", t, "out of range", axis=-4)
    _infer_fails("sum", t, "unknown attribute", axis=1)
    _infer_fails("sum", t, "bool", axes=[0], keepdims=1)
