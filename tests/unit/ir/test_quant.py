"""Quantized arrays: packing layout, quantize -> dequantize error bounds per scheme, and the
quantize / dequantize ops in graphs."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qjc.errors import IRError
from qjc.ir.dtypes import QuantScheme, bf16, f16, f32, parse_dtype, quant_scheme_of
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.quant import QuantizedArray, dequantize, group_scales, pack_int4, quantize, unpack_int4
from qjc.ir.types import TensorType, parse_type

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer / parser may not exist yet
    assert_roundtrip = None

SCHEMES = ["q8cs_f32", "q8cs_f16", "q8g32s_f16", "q8ca_f32", "q8g64a_bf16",
           "q4g32a_f16", "q4g32s_f16", "q4ca_bf16", "q4g16a_bf16", "q4cs_f32"]


def _scheme(name: str) -> QuantScheme:
    return quant_scheme_of(parse_dtype(name))


# ---- int4 packing --------------------------------------------------------------------------


def test_pack_int4_layout():
    # even element in the low nibble; negative values as two's complement nibbles
    packed = pack_int4(np.array([1, 2, 15, 0, -1, 7]))
    np.testing.assert_array_equal(packed, np.array([0x21, 0x0F, 0x7F], np.uint8))
    # an odd length pads the last high nibble with 0
    np.testing.assert_array_equal(pack_int4(np.array([[3, 4, 5]])), np.array([[0x43, 0x05]], np.uint8))


@pytest.mark.parametrize("length", [1, 2, 7, 64])
@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack_roundtrip(length, signed):
    rng = np.random.default_rng(50)
    lo, hi = (-8, 8) if signed else (0, 16)
    values = rng.integers(lo, hi, (3, 5, length))
    packed = pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (3, 5, (length + 1) // 2)
    back = unpack_int4(packed, length, signed=signed)
    assert back.dtype == (np.int8 if signed else np.uint8)
    np.testing.assert_array_equal(back, values)


def test_pack_int4_rejects_out_of_range():
    with pytest.raises(ValueError, match="-8, 15"):
        pack_int4(np.array([16]))
    with pytest.raises(ValueError, match="integers"):
        pack_int4(np.array([1.0]))


# ---- quantize / dequantize -----------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_quantize_error_is_at_most_half_a_step(name):
    scheme = _scheme(name)
    rng = np.random.default_rng(51)
    x = rng.standard_normal((6, 128)) * rng.uniform(0.1, 10, (6, 1)) + rng.uniform(-1, 1, (6, 1))
    q = quantize(x, scheme)
    assert q.logical_shape == x.shape and q.type == TensorType((6, 128), parse_dtype(name))
    groups = 1 if scheme.group_size == 0 else 128 // scheme.group_size
    assert q.scales.shape == (6, groups) and q.scales.dtype == scheme.scale_dtype.np_dtype
    assert (q.zeros is None) == scheme.symmetric
    assert q.data.shape == (6, 64 if scheme.bits == 4 else 128)

    back = dequantize(q, np.float64)
    step = group_scales(q)
    # half a step, plus float64 rounding of code * scale
    assert (np.abs(back - x) <= step / 2 * (1 + 1e-12) + 1e-12).all()
    # the step is no coarser than the range needs (so the bound above is not vacuous)
    qmax = 2 ** (scheme.bits - 1) - 1 if scheme.symmetric else 2**scheme.bits - 1
    if scheme.symmetric:
        width = 2 * np.abs(x).max(axis=1)
    else:
        width = np.maximum(x.max(axis=1), 0) - np.minimum(x.min(axis=1), 0)
    assert (step.max(axis=1) <= width / qmax * 1.02 + 1e-12).all()


def _decode_by_hand(q: QuantizedArray) -> np.ndarray:
    """An independent decoder written from the layout description, element by element."""
    scheme, (rows, k) = q.scheme, q.logical_shape
    group = scheme.group_size or k
    out = np.zeros((rows, k))
    for r in range(rows):
        for j in range(k):
            if scheme.bits == 4:
                byte = int(q.data[r, j // 2])
                code = (byte >> 4) if j % 2 else (byte & 0xF)
                if scheme.symmetric and code >= 8:
                    code -= 16
            else:
                code = int(q.data[r, j])
                if scheme.symmetric and code >= 128:
                    code -= 256
            zero = 0 if q.zeros is None else int(q.zeros[r, j // group])
            out[r, j] = (code - zero) * float(q.scales[r, j // group])
    return out


@pytest.mark.parametrize("name", ["q4g16a_f16", "q4cs_f32", "q8g32s_bf16", "q8ca_f16"])
def test_dequantize_matches_layout_description(name):
    rng = np.random.default_rng(52)
    q = quantize(rng.standard_normal((3, 64)), _scheme(name))
    np.testing.assert_array_equal(dequantize(q, np.float64), _decode_by_hand(q))


@pytest.mark.parametrize("name", ["q4g16a_f16", "q8cs_bf16"])
def test_code_ranges(name):
    scheme = _scheme(name)
    q = quantize(np.random.default_rng(53).standard_normal((4, 32)) * 5, scheme)
    if scheme.bits == 4:
        codes = unpack_int4(q.data, 32, signed=scheme.symmetric)
    else:
        codes = q.data.view(np.int8) if scheme.symmetric else q.data
    if scheme.symmetric:
        qmax = 2 ** (scheme.bits - 1) - 1
        assert codes.min() >= -qmax and codes.max() <= qmax
        # the range is used (a scale rounded up to bf16 can leave the top code one short)
        assert np.abs(codes).max(axis=-1).min() >= qmax - 1
    else:
        assert codes.min() >= 0 and codes.max() <= 15 and codes.max() == 15


def test_bf16_scales_are_rounded_up():
    scheme = _scheme("q8cs_bf16")
    x = np.random.default_rng(54).standard_normal((64, 48))
    q = quantize(x, scheme)
    assert q.scales.dtype == ml_dtypes.bfloat16
    exact = np.abs(x).max(axis=1, keepdims=True) / 127
    assert (q.scales.astype(np.float64) >= exact).all()
    # to the next bf16 value at most: one step of 2^-7 relative (8 significand bits)
    assert (q.scales.astype(np.float64) <= exact * (1 + 2**-7)).all()
    assert (q.scales.astype(np.float64) > exact * (1 - 2**-8)).all()


def test_zero_groups_and_sign_handling():
    x = np.zeros((2, 32))
    x[1, 16:] = -np.arange(16) / 4
    for name in ("q4g16s_f16", "q4g16a_f16", "q8cs_f32"):
        q = quantize(x, _scheme(name))
        back = dequantize(q, np.float32)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back[0], 0.0)  # all-zero groups stay exactly zero
        assert np.isfinite(back).all()
        assert np.abs(back - x).max() <= group_scales(q).max() / 2 + 1e-12


def test_quantize_needs_divisible_groups_and_floats():
    with pytest.raises(ValueError, match="divisible"):
        quantize(np.ones((2, 40)), _scheme("q4g32a_f16"))
    with pytest.raises(ValueError, match="float"):
        quantize(np.ones((2, 32), np.int32), _scheme("q4g32a_f16"))
    with pytest.raises(ValueError, match="rank"):
        quantize(np.float32(1.0), _scheme("q8cs_f32"))


def test_quantized_array_validates_its_parts():
    q = quantize(np.random.default_rng(55).standard_normal((4, 32)), _scheme("q4g16a_f16"))
    with pytest.raises(ValueError, match="data"):
        QuantizedArray(q.data[:, :-1], q.scales, q.zeros, q.logical_shape, q.scheme)
    with pytest.raises(ValueError, match="scales"):
        QuantizedArray(q.data, q.scales.astype(np.float32), q.zeros, q.logical_shape, q.scheme)
    with pytest.raises(ValueError, match="zero points"):
        QuantizedArray(q.data, q.scales, None, q.logical_shape, q.scheme)


# ---- the ops -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["q4g32a_f16", "q8cs_bf16"])
@pytest.mark.parametrize("to", [f32, f16, bf16])
def test_quantize_dequantize_ops(name, to):
    rng = np.random.default_rng(56)
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)
    g = Graph()
    g.add_symbol("batch", 1, 8)
    xv = g.add_input("x", parse_type("f32[batch,5,64]"))
    qv = g.op("quantize", xv, dtype=name)
    assert str(qv.type) == f"{name}[batch,5,64]"
    y = g.op("dequantize", qv, to=to)
    assert y.type == TensorType(xv.type.shape, to)
    g.set_outputs(y, qv)
    if assert_roundtrip is not None:
        assert_roundtrip(g)
    got, q = run(g, [x])
    assert isinstance(q, QuantizedArray) and q.logical_shape == x.shape
    assert got.dtype == to.np_dtype
    expected = quantize(x, _scheme(name))
    np.testing.assert_array_equal(q.data, expected.data)
    want = dequantize(expected, np.float64)
    # the only error beyond quantization's is one rounding to `to`
    rel = {f32: 2**-24, f16: 2**-11, bf16: 2**-8}[to]
    assert (np.abs(got.astype(np.float64) - want) <= np.abs(want) * rel * 1.001 + 1e-7).all()
    assert (np.abs(want - x) <= group_scales(q) / 2 * (1 + 1e-12) + 1e-12).all()


def test_quantized_graph_input_binds_symbols():
    rng = np.random.default_rng(57)
    g = Graph()
    g.add_symbol("rows", 1, 64)
    qv = g.add_input("w", parse_type("q8g16s_f16[rows,32]"))
    g.set_outputs(g.op("dequantize", qv, to="f32"))
    w = quantize(rng.standard_normal((7, 32)), _scheme("q8g16s_f16"))
    got = run(g, [w])[0]
    assert got.shape == (7, 32)
    np.testing.assert_array_equal(got, dequantize(w, np.float32))


@pytest.mark.parametrize("op,type_text,attrs,message", [
    ("quantize", "f32[4,32]", {"dtype": "f16"}, "quantized type"),
    ("quantize", "f32[4,40]", {"dtype": "q4g32a_f16"}, "divisible"),
    ("quantize", "i32[4,32]", {"dtype": "q4g32a_f16"}, "float"),
    ("quantize", "f32[]", {"dtype": "q8cs_f32"}, "rank"),
    ("dequantize", "f32[4,32]", {"to": "f32"}, "quantized type"),
    ("dequantize", "q4g32a_f16[4,32]", {"to": "i32"}, "float"),
    ("dequantize", "q4g32a_f16[4,32]", {}, "needs attribute"),
])
def test_quant_ops_reject_bad_inputs(op, type_text, attrs, message):
    g = Graph()
    x = g.add_input("x", parse_type(type_text))
    with pytest.raises(IRError, match=message):
        g.add_node(op, [x], attrs)


@pytest.mark.parametrize("scale_dtype", [f16, bf16, f32], ids=lambda d: d.name)
def test_float_offset_scheme_error_bound_and_name(scale_dtype):
    """zero="float" (value = q*scale + offset, GGUF Q4_1's form): within half a step, no clipping."""
    scheme = QuantScheme(4, 32, False, scale_dtype, "float")
    assert scheme.name == f"q4g32m_{scale_dtype.name}" and parse_dtype(scheme.name) == scheme.dtype
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 128)) * rng.uniform(0.1, 5, (16, 1)) + rng.uniform(-3, 3, (16, 1))
    q = quantize(x, scheme)
    assert q.zeros is not None and q.zeros.dtype == scale_dtype.np_dtype
    err = np.abs(dequantize(q, np.float64) - x)
    assert (err <= group_scales(q) / 2 * (1 + 1e-9)).all()
