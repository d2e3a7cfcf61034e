"""Normalizations, conv2d and pooling: reference numerics against torch in float64 on fresh random
inputs, type inference with symbolic batch dims, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qjc.errors import IRError
from qjc.ir.dtypes import from_numpy
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType, parse_type

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer / parser may not exist yet
    assert_roundtrip = None

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2}


def _run_single(op: str, arrays: list[np.ndarray], **attrs) -> np.ndarray:
    g = Graph()
    values = [g.add_input(f"in{i}", TensorType(a.shape, from_numpy(a.dtype))) for i, a in enumerate(arrays)]
    g.set_outputs(g.op(op, *values, **attrs))
    if assert_roundtrip is not None:
        assert_roundtrip(g, inputs=arrays)
    return run(g, arrays)[0]


def _assert_close(got: np.ndarray, want: np.ndarray | torch.Tensor, dtype) -> None:
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    assert got.dtype == dtype and got.shape == want.shape
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got.astype(np.float64) - want).max() / scale
    assert err <= TOLERANCE[np.dtype(dtype)], f"relative error {err:.3g} for {np.dtype(dtype)}"


def _t(a: np.ndarray) -> torch.Tensor:
    """The float64 torch tensor of an array, the reference's precision."""
    return torch.from_numpy(a.astype(np.float64))


# ---- layer_norm / rms_norm / batch_norm ----------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("params", ["none", "weight", "both"])
def test_layer_norm_matches_torch(dtype, axis, params):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 6, 16)) * 3 + 1.5).astype(dtype)
    normalized = x.shape[axis:]
    arrays = [x]
    weight = bias = None
    if params in ("weight", "both"):
        arrays.append(rng.standard_normal(normalized).astype(dtype))
        weight = _t(arrays[-1])
    if params == "both":
        arrays.append(rng.standard_normal(normalized).astype(dtype))
        bias = _t(arrays[-1])
    got = _run_single("layer_norm", arrays, axis=axis, eps=1e-4)
    want = F.layer_norm(_t(x), normalized, weight, bias, eps=1e-4)
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_matches_float64(dtype, axis, with_weight):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4, 32)) * 2).astype(dtype)
    arrays = [x]
    x64 = x.astype(np.float64)
    axes = tuple(range(axis % 3, 3))
    want = x64 / np.sqrt((x64**2).mean(axis=axes, keepdims=True) + 1e-6)
    if with_weight:
        w = rng.standard_normal(x.shape[axis:]).astype(dtype)
        arrays.append(w)
        want = want * w.astype(np.float64)
    got = _run_single("rms_norm", arrays, axis=axis)
    _assert_close(got, want, dtype)
    if axis == -1:  # an independent second opinion
        torch_want = F.rms_norm(_t(x), (32,), _t(arrays[1]) if with_weight else None, eps=1e-6)
        _assert_close(got, torch_want, dtype)


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 7), (3, 5, 4, 6)])
def test_batch_norm_matches_torch(shape):
    rng = np.random.default_rng(12)
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    scale, bias, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.2, 3.0, c).astype(np.float32)
    got = _run_single("batch_norm", [x, scale, bias, mean, var], eps=1e-3)
    want = F.batch_norm(_t(x), _t(mean), _t(var), _t(scale), _t(bias), training=False, eps=1e-3)
    _assert_close(got, want, np.float32)


def test_norms_with_symbolic_dims():
    g = Graph()
    x = g.add_input("x", parse_type("f16[batch,seq,64]"))
    w = g.add_input("w", parse_type("f16[64]"))
    assert g.op("rms_norm", x, w).type == x.type
    assert g.op("layer_norm", x, w, w).type == x.type
    ws = g.add_input("ws", parse_type("f16[seq,64]"))
    assert g.op("layer_norm", x, ws, axis=-2).type == x.type
    img = g.add_input("img", parse_type("f32[batch,8,4,4]"))
    p = g.add_input("p", parse_type("f32[8]"))
    assert g.op("batch_norm", img, p, p, p, p).type == img.type


@pytest.mark.parametrize("op,x,params,attrs,message", [
    ("layer_norm", "f32[2,16]", ["f32[8]"], {}, "shape"),
    ("layer_norm", "f32[2,16]", ["f32[16]"], {"axis": 0}, "shape"),
    ("layer_norm", "f32[2,16]", ["f32[16]"], {"axis": 2}, "out of range"),
    ("layer_norm", "f32[2,16]", ["f16[16]"], {}, "dtype"),
    ("rms_norm", "i32[2,16]", [], {}, "float"),
    ("rms_norm", "f32[seq,16]", ["f32[seq+1,16]"], {"axis": 0}, "shape"),
    ("batch_norm", "f32[2,8,4]", ["f32[4]"] * 4, {}, "channel"),
    ("batch_norm", "f32[8]", ["f32[8]"] * 4, {}, "rank >= 2"),
])
def test_norms_reject_bad_inputs(op, x, params, attrs, message):
    g = Graph()
    values = [g.add_input("x", parse_type(x))]
    values += [g.add_input(f"p{i}", parse_type(t)) for i, t in enumerate(params)]
    with pytest.raises(IRError, match=message):
        g.add_node(op, values, attrs)


# ---- conv2d --------------------------------------------------------------------------------


@pytest.mark.parametrize("strides,padding,dilations,groups", [
    ((1, 1), (0, 0), (1, 1), 1),
    ((2, 2), (1, 1), (1, 1), 1),
    ((1, 2), (2, 1), (2, 1), 1),
    ((2, 1), (1, 0), (1, 2), 2),
    ((1, 1), (1, 1), (1, 1), 6),  # depthwise
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv2d_matches_torch(strides, padding, dilations, groups, with_bias):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((2, 6, 11, 9)).astype(np.float32)
    w = rng.standard_normal((12, 6 // groups, 3, 3)).astype(np.float32)
    arrays = [x, w]
    bias = None
    if with_bias:
        arrays.append(rng.standard_normal(12).astype(np.float32))
        bias = _t(arrays[-1])
    pads = (padding[0], padding[1], padding[0], padding[1])
    got = _run_single("conv2d", arrays, strides=strides, pads=pads, dilations=dilations, groups=groups)
    want = F.conv2d(_t(x), _t(w), bias, stride=strides, padding=padding, dilation=dilations, groups=groups)
    _assert_close(got, want, np.float32)


def test_conv2d_asymmetric_pads_and_f16():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, 4, 8, 7)).astype(np.float16)
    w = rng.standard_normal((5, 4, 2, 3)).astype(np.float16)
    top, left, bottom, right = 1, 0, 2, 3
    got = _run_single("conv2d", [x, w], pads=(top, left, bottom, right), strides=(2, 1))
    want = F.conv2d(F.pad(_t(x), (left, right, top, bottom)), _t(w), stride=(2, 1))
    _assert_close(got, want, np.float16)


def test_conv2d_symbolic_batch():
    g = Graph()
    g.add_symbol("batch", 1, 4)
    x = g.add_input("x", parse_type("f32[batch,3,32,32]"))
    w = g.add_input("w", parse_type("f32[16,3,5,5]"))
    b = g.add_input("b", parse_type("f32[16]"))
    y = g.op("conv2d", x, w, b, strides=(2, 2), pads=(2, 2, 2, 2))
    assert str(y.type) == "f32[batch,16,16,16]"
    g.set_outputs(y)
    rng = np.random.default_rng(22)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 3, 32, 32), (16, 3, 5, 5), (16,))]
    if assert_roundtrip is not None:
        assert_roundtrip(g, inputs=arrays)
    got = run(g, arrays)[0]
    want = F.conv2d(*(_t(a) for a in arrays), stride=2, padding=2)
    _assert_close(got, want, np.float32)


@pytest.mark.parametrize("x,w,attrs,message", [
    ("f32[1,4,8,8]", "f32[6,3,3,3]", {}, "channels per group"),
    ("f32[1,4,8,8]", "f32[6,2,3,3]", {"groups": 4}, "divisible by groups"),
    ("f32[1,4,8,8]", "f32[6,4,3,3]", {"groups": 0}, "groups"),
    ("f32[1,4,8,8]", "f32[6,4,3,3]", {"pads": (1, 1)}, "pads"),
    ("f32[1,4,8,8]", "f32[6,4,3,3]", {"strides": (0, 1)}, "strides"),
    ("f32[1,4,2,8]", "f32[6,4,3,3]", {}, "does not fit"),
    ("f32[1,4,h,8]", "f32[6,4,3,3]", {}, "static"),
    ("f32[1,4,8]", "f32[6,4,3,3]", {}, "rank 4"),
    ("f32[1,4,8,8]", "f16[6,4,3,3]", {}, "dtype"),
])
def test_conv2d_rejects_bad_inputs(x, w, attrs, message):
    g = Graph()
    xv, wv = g.add_input("x", parse_type(x)), g.add_input("w", parse_type(w))
    with pytest.raises(IRError, match=message):
        g.add_node("conv2d", [xv, wv], attrs)


# ---- pooling -------------------------------------------------------------------------------

POOL_CASES = [
    # kernel, stride, padding, ceil_mode
    ((2, 2), None, (0, 0), False),
    ((3, 3), (2, 2), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), True),
    ((3, 2), (2, 3), (0, 1), True),
    ((2, 2), (2, 2), (0, 0), True),
    ((2, 2), (3, 3), (1, 1), True),  # the last ceil-mode window would start in the pad: dropped
]


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", POOL_CASES)
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1)])
def test_max_pool2d_matches_torch(kernel, stride, padding, ceil_mode, dilation):
    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    pads = (padding[0], padding[1], padding[0], padding[1])
    got = _run_single("max_pool2d", [x], kernel=kernel, strides=stride, pads=pads, dilations=dilation,
                      ceil_mode=ceil_mode)
    want = F.max_pool2d(_t(x), kernel, stride=stride or kernel, padding=padding, dilation=dilation,
                        ceil_mode=ceil_mode)
    _assert_close(got, want, np.float32)


def test_max_pool2d_pads_are_minus_infinity():
    # all-negative input: zero padding would show up as 0 in border windows
    rng = np.random.default_rng(31)
    x = -rng.uniform(1, 2, (1, 2, 6, 6)).astype(np.float32)
    got = _run_single("max_pool2d", [x], kernel=(3, 3), strides=(1, 1), pads=(1, 2, 0, 1))
    want = F.max_pool2d(F.pad(_t(x), (2, 1, 1, 0), value=-np.inf), 3, stride=1)
    _assert_close(got, want, np.float32)
    assert (got < 0).all()


def test_max_pool2d_integer_input():
    rng = np.random.default_rng(33)
    x = rng.integers(-1000, 1000, (2, 3, 9, 8)).astype(np.int32)
    got = _run_single("max_pool2d", [x], kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True)
    want = F.max_pool2d(_t(x), 3, stride=2, padding=1, ceil_mode=True).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool2d_matches_torch(kernel, stride, padding, ceil_mode, count_include_pad):
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    pads = (padding[0], padding[1], padding[0], padding[1])
    got = _run_single("avg_pool2d", [x], kernel=kernel, strides=stride, pads=pads, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad)
    want = F.avg_pool2d(_t(x), kernel, stride=stride or kernel, padding=padding, ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad)
    _assert_close(got, want, np.float32)


def test_pooling_symbolic_batch_and_channels():
    g = Graph()
    x = g.add_input("x", parse_type("f16[batch,chan,32,30]"))
    assert str(g.op("max_pool2d", x, kernel=(2, 2)).type) == "f16[batch,chan,16,15]"
    y = g.op("avg_pool2d", x, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True)
    # ceil((32 + 2 - 3) / 2) + 1 = 17 and ceil((30 + 2 - 3) / 2) + 1 = 16, as torch computes
    assert str(y.type) == "f16[batch,chan,17,16]"


@pytest.mark.parametrize("op,x,attrs,message", [
    ("max_pool2d", "f32[1,2,8,8]", {}, "kernel"),
    ("max_pool2d", "f32[1,2,8,8]", {"kernel": (2,)}, "kernel must be 2 ints"),
    ("max_pool2d", "f32[1,2,8,s]", {"kernel": (2, 2)}, "static"),
    ("max_pool2d", "f32[2,8,8]", {"kernel": (2, 2)}, "rank 4"),
    ("avg_pool2d", "f32[1,2,8,8]", {"kernel": (2, 2), "dilations": (2, 2)}, "unknown attribute"),
    ("avg_pool2d", "i32[1,2,8,8]", {"kernel": (2, 2)}, "float"),
    ("avg_pool2d", "f32[1,2,8,8]", {"kernel": (9, 2)}, "does not fit"),
])
def test_pooling_rejects_bad_inputs(op, x, attrs, message):
    g = Graph()
    xv = g.add_input("x", parse_type(x))
    with pytest.raises(IRError, match=message):
        g.add_node(op, [xv], attrs)
