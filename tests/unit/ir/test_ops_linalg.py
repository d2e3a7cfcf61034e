"""matmul and linear: type inference (symbolic dims, bad inputs) and reference numerics against
float64 numpy on fresh random inputs, for f32 / f16 / bf16 and quantized weights."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qjc.errors import IRError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import bf16, f16, f32, from_numpy, i32, i64, parse_dtype, quant_scheme_of
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.quant import dequantize, quantize
from qjc.ir.types import TensorType, parse_type

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer / parser may not exist yet
    assert_roundtrip = None

TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "bf16": 1e-2}
NP_DTYPE = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def _roundtrip(g: Graph, inputs: list[np.ndarray]) -> None:
    """Print -> parse -> print gives the same text, and both graphs compute the same outputs."""
    if assert_roundtrip is not None:
        assert_roundtrip(g, inputs=inputs)


def _assert_close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    """Max error relative to the output's scale, so near-zero elements of a sum don't dominate."""
    assert got.dtype == np.dtype(NP_DTYPE[dtype])
    got64 = got.astype(np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got64 - want).max() / scale
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]} for {dtype}"


def _run_single(op: str, arrays: list[np.ndarray], **attrs) -> np.ndarray:
    g = Graph()
    values = [g.add_input(f"in{i}", TensorType(a.shape, from_numpy(a.dtype))) for i, a in enumerate(arrays)]
    g.set_outputs(g.op(op, *values, **attrs))
    _roundtrip(g, arrays)
    return run(g, arrays)[0]


# ---- matmul --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("a_shape,b_shape", [
    ((5, 16), (16, 7)),
    ((3, 5, 16), (16, 7)),  # rhs broadcast over the batch
    ((2, 1, 5, 16), (3, 16, 7)),  # both broadcast
    ((4, 5, 32), (4, 32, 6)),
])
def test_matmul_matches_float64(dtype, a_shape, b_shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(NP_DTYPE[dtype])
    b = rng.standard_normal(b_shape).astype(NP_DTYPE[dtype])
    got = _run_single("matmul", [a, b])
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == want.shape
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("np_dtype,dtype", [(np.int32, i32), (np.int64, i64)])
def test_matmul_integer(np_dtype, dtype):
    rng = np.random.default_rng(1)
    a = rng.integers(-50, 50, (2, 3, 8)).astype(np_dtype)
    b = rng.integers(-50, 50, (8, 4)).astype(np_dtype)
    got = _run_single("matmul", [a, b])
    assert got.dtype == np_dtype
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_matmul_symbolic_batch_and_seq():
    g = Graph()
    a = g.add_input("a", parse_type("f32[batch,seq,64]"))
    b = g.add_input("b", parse_type("f32[1,64,32]"))
    y = g.op("matmul", a, b)
    batch, seq = SymExpr.symbol("batch"), SymExpr.symbol("seq")
    assert y.type == TensorType((batch, seq, 32), f32)
    # a symbolic contracted dim is accepted (checked at run time)
    k = g.add_input("k", parse_type("f32[seq,n]"))
    assert g.op("matmul", a, k).type == TensorType((batch, seq, SymExpr.symbol("n")), f32)


@pytest.mark.parametrize("a,b,message", [
    ("f32[4,8]", "f32[9,3]", "contracted"),
    ("f32[8]", "f32[8,3]", "unsqueeze"),
    ("f32[4,8]", "f32[8]", "unsqueeze"),
    ("f32[4,8]", "f16[8,3]", "dtype"),
    ("i8[4,8]", "i8[8,3]", "i32 or i64"),
    ("f32[2,4,8]", "f32[3,8,5]", "broadcast"),
    ("f32[seq,4,8]", "f32[seq+1,8,5]", "broadcast"),
    ("f32[4,seq]", "f32[seq+1,5]", "contracted"),
])
def test_matmul_rejects_bad_inputs(a, b, message):
    g = Graph()
    x, y = g.add_input("a", parse_type(a)), g.add_input("b", parse_type(b))
    with pytest.raises(IRError, match=message):
        g.add_node("matmul", [x, y])


# ---- linear --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("x_shape", [(24,), (3, 24), (2, 5, 24)])
def test_linear_matches_float64(dtype, with_bias, x_shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(NP_DTYPE[dtype])
    w = (rng.standard_normal((10, 24)) / 5).astype(NP_DTYPE[dtype])
    arrays = [x, w]
    want = x.astype(np.float64) @ w.astype(np.float64).T
    if with_bias:
        bias = rng.standard_normal(10).astype(NP_DTYPE[dtype])
        arrays.append(bias)
        want = want + bias.astype(np.float64)
    got = _run_single("linear", arrays)
    assert got.shape == x_shape[:-1] + (10,)
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("scheme_name", ["q8cs_f32", "q8g16a_f16", "q4g32a_f16", "q4g16s_bf16", "q4ca_f32"])
@pytest.mark.parametrize("act", ["f32", "f16"])
def test_linear_with_quantized_weight(scheme_name, act):
    rng = np.random.default_rng(3)
    qdtype = parse_dtype(scheme_name)
    w_float = rng.standard_normal((12, 64))
    qw = quantize(w_float, quant_scheme_of(qdtype))
    x = rng.standard_normal((2, 3, 64)).astype(NP_DTYPE[act])
    bias = rng.standard_normal(12).astype(NP_DTYPE[act])

    g = Graph()
    xv = g.add_input("x", TensorType(x.shape, f32 if act == "f32" else f16))
    wv = g.add_constant("w", qw, type=qw.type)
    bv = g.add_constant("bias", bias)
    y = g.op("linear", xv, wv, bv)
    assert y.type.dtype == xv.type.dtype and y.type.shape == (2, 3, 12)
    g.set_outputs(y)
    _roundtrip(g, [x])
    got = run(g, [x])[0]

    # reference: the dequantized weight (exact in float64) times the activation, in float64
    w_ref = dequantize(qw, np.float64)
    want = x.astype(np.float64) @ w_ref.T + bias.astype(np.float64)
    _assert_close(got, want, act)
    # and the quantized product is close to the float one: quantization did something sensible
    float_result = x.astype(np.float64) @ w_float.T + bias.astype(np.float64)
    assert np.abs(want - float_result).max() < 0.25 * np.abs(float_result).max()


def test_linear_symbolic_batch_and_quantized_type():
    g = Graph()
    x = g.add_input("x", parse_type("f16[batch,seq,128]"))
    w = g.add_constant("w", None, type=parse_type("q4g32a_f16[256,128]"))
    y = g.op("linear", x, w)
    assert str(y.type) == "f16[batch,seq,256]"


@pytest.mark.parametrize("x,w,bias,message", [
    ("f32[4,8]", "f32[3,9]", None, "K differ"),
    ("f32[4,8]", "f32[8]", None, "rank 2"),
    ("f32[4,8]", "f32[3,8]", "f32[4]", "bias length"),
    ("f32[4,8]", "f32[3,8]", "f32[1,3]", "rank 1"),
    ("f32[4,8]", "f16[3,8]", None, "dtype"),
    ("i32[4,8]", "i32[3,8]", None, "float"),
    ("f16[4,48]", "q4g32a_f16[3,48]", None, "group size"),
])
def test_linear_rejects_bad_inputs(x, w, bias, message):
    g = Graph()
    values = [g.add_input("x", parse_type(x)), g.add_input("w", parse_type(w))]
    if bias:
        values.append(g.add_input("b", parse_type(bias)))
    with pytest.raises(IRError, match=message):
        g.add_node("linear", values)


def test_linear_arity():
    g = Graph()
    x = g.add_input("x", parse_type("f32[4,8]"))
    with pytest.raises(IRError, match="takes 2..3 inputs"):
        g.add_node("linear", [x])


def test_bf16_activation_dtype_kept():
    g = Graph()
    x = g.add_input("x", TensorType((2, 8), bf16))
    w = g.add_input("w", TensorType((4, 8), bf16))
    assert g.op("linear", x, w).type.dtype == bf16
