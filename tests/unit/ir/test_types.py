"""Dtypes, symbolic dims and tensor types: parsing, printing, arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.ir import SymExpr, TensorType, bf16, f16, f32, i64, parse_dtype, parse_type
from qjc.ir.dims import evaluate, parse_dim, product
from qjc.ir.dtypes import QuantScheme, from_numpy, quant_scheme_of


@pytest.mark.parametrize("name", ["f32", "f16", "bf16", "f8e4m3", "i64", "i32", "i8", "u8", "bool"])
def test_plain_dtypes_round_trip_through_numpy(name):
    dt = parse_dtype(name)
    assert dt.name == name and str(dt) == name
    assert from_numpy(dt.np_dtype) is dt
    assert np.zeros(3, dt.np_dtype).dtype == dt.np_dtype


@pytest.mark.parametrize("scheme", [
    QuantScheme(4, 128, False, f16), QuantScheme(4, 32, True, bf16), QuantScheme(8, 0, True, f32),
])
def test_quant_dtypes_are_types(scheme):
    dt = scheme.dtype
    assert dt.is_quant and dt.bits == scheme.bits
    assert parse_dtype(dt.name) == dt
    assert quant_scheme_of(dt) == scheme


@pytest.mark.parametrize("bad", [dict(bits=3, group_size=32), dict(bits=4, group_size=33)])
def test_bad_quant_schemes(bad):
    with pytest.raises(ValueError):
        QuantScheme(symmetric=True, scale_dtype=f16, **bad)


def test_unknown_dtype_lists_known():
    with pytest.raises(ValueError, match="known"):
        parse_dtype("f12")


def test_symbolic_arithmetic_normalizes():
    b, s = SymExpr.symbol("b"), SymExpr.symbol("s")
    assert b * s == s * b
    assert (s + 1) - 1 == s
    assert (b - b) == 0 and isinstance(b - b, int)
    assert str(2 * b * s + 1) == "2*b*s+1"
    assert str(s - 1) == "s-1"
    assert product([b, 4, s]) == 4 * b * s
    assert evaluate((s + 1) * b, {"s": 3, "b": 2}) == 8


@pytest.mark.parametrize("text", ["4", "seq", "seq+1", "2*b*s", "s-1", "b*s*s", "-s+3"])
def test_dim_text_round_trip(text):
    d = parse_dim(text)
    assert parse_dim(str(d)) == d


@pytest.mark.parametrize("bad", ["", "s+", "3s", "s**2", "(s+1"])
def test_bad_dims(bad):
    with pytest.raises(ValueError):
        parse_dim(bad)


def test_tensor_type_text_and_bytes():
    t = parse_type("bf16[batch,seq+1,64]")
    assert t.dtype == bf16 and t.rank == 3 and not t.is_static
    assert str(t) == "bf16[batch,seq+1,64]"
    assert t.nbytes({"batch": 2, "seq": 3}) == 2 * 4 * 64 * 2
    assert parse_type("i64[]") == TensorType((), i64)
    assert parse_type("q4g32a_f16[8,64]").nbytes() == 8 * 64 // 2


@pytest.mark.parametrize("bad", ["f32", "f32[3", "x32[3]", "f32[3,,4]"])
def test_bad_types(bad):
    with pytest.raises(ValueError):
        parse_type(bad)
