"""sdpa: numerics against torch's scaled_dot_product_attention in float64 (and a manual float64
reference for bottom-right causal alignment), type inference with symbolic dims, bad inputs."""

from __future__ import annotations

import math

import ml_dtypes
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

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2, np.dtype(ml_dtypes.bfloat16): 1e-2}


def _sdpa(arrays: list[np.ndarray], **attrs) -> np.ndarray:
    g = Graph()
    values = [g.add_input(name, TensorType(a.shape, from_numpy(a.dtype)))
              for name, a in zip(("q", "k", "v", "mask"), arrays, strict=False)]
    y = g.op("sdpa", *values, **attrs)
    g.set_outputs(y)
    if assert_roundtrip is not None:
        assert_roundtrip(g, inputs=arrays)
    out = run(g, arrays)[0]
    assert out.shape == tuple(y.type.shape)
    return out


def _qkv(rng, b, hq, hkv, sq, sk, d, dv=None, dtype=np.float32):
    q = rng.standard_normal((b, hq, sq, d)).astype(dtype)
    k = rng.standard_normal((b, hkv, sk, d)).astype(dtype)
    v = rng.standard_normal((b, hkv, sk, dv or d)).astype(dtype)
    return q, k, v


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float64) if a.dtype != np.bool_ else a)


def _assert_close(got: np.ndarray, want, dtype=np.float32) -> None:
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= TOLERANCE[np.dtype(dtype)], f"relative error {err:.3g}"


def _manual_reference(q, k, v, allowed: np.ndarray, scale: float) -> np.ndarray:
    """Float64 attention with an explicit [.., Sq, Sk] allowed pattern, heads already matched."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for idx in np.ndindex(*q.shape[:2]):
        for i in range(q.shape[2]):
            keys = np.flatnonzero(np.broadcast_to(allowed, q.shape[:2] + allowed.shape[-2:])[idx][i])
            if keys.size == 0:
                continue
            logits = k[idx][keys] @ q[idx][i] * scale
            p = np.exp(logits - logits.max())
            out[idx][i] = (p / p.sum()) @ v[idx][keys]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_torch(dtype, causal):
    rng = np.random.default_rng(40)
    q, k, v = _qkv(rng, 2, 3, 3, 7, 7, 16, dv=12, dtype=dtype)
    got = _sdpa([q, k, v], causal=causal)
    want = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), is_causal=causal)
    _assert_close(got, want, dtype)


def test_sdpa_explicit_scale():
    rng = np.random.default_rng(41)
    q, k, v = _qkv(rng, 1, 2, 2, 5, 9, 8)
    got = _sdpa([q, k, v], scale=0.7)
    want = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), scale=0.7)
    _assert_close(got, want)


@pytest.mark.parametrize("mask_shape", [(2, 4, 6, 10), (6, 10), (2, 1, 1, 10), (1, 4, 6, 1)])
def test_sdpa_bool_mask(mask_shape):
    rng = np.random.default_rng(42)
    q, k, v = _qkv(rng, 2, 4, 4, 6, 10, 8)
    mask = rng.random(mask_shape) < 0.7
    mask[..., 0] = True  # every row attends to something, so torch gives no NaN
    got = _sdpa([q, k, v, mask])
    want = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), attn_mask=_t(mask))
    _assert_close(got, want)


@pytest.mark.parametrize("mask_shape", [(2, 4, 6, 10), (6, 10), (1, 4, 1, 10)])
def test_sdpa_additive_mask(mask_shape):
    rng = np.random.default_rng(43)
    q, k, v = _qkv(rng, 2, 4, 4, 6, 10, 8)
    mask = (rng.standard_normal(mask_shape) * 2).astype(np.float32)
    mask[rng.random(mask_shape) < 0.2] = -np.inf
    mask[..., 0] = 0.0
    got = _sdpa([q, k, v, mask])
    want = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), attn_mask=_t(mask))
    _assert_close(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_grouped_query_heads(causal):
    rng = np.random.default_rng(44)
    q, k, v = _qkv(rng, 2, 8, 2, 5, 5, 16)
    got = _sdpa([q, k, v], causal=causal)
    # each kv head serves 4 consecutive query heads
    k_rep, v_rep = (_t(a).repeat_interleave(4, dim=1) for a in (k, v))
    want = F.scaled_dot_product_attention(_t(q), k_rep, v_rep, is_causal=causal)
    _assert_close(got, want)
    # the grouping is not interchangeable: tiling the kv heads (h % Hkv) gives a different answer
    k_tiled, v_tiled = (_t(a).repeat(1, 4, 1, 1) for a in (k, v))
    wrong = F.scaled_dot_product_attention(_t(q), k_tiled, v_tiled, is_causal=causal).numpy()
    assert np.abs(got - wrong).max() > 1e-2


@pytest.mark.parametrize("sq,sk", [(1, 9), (3, 9), (9, 9)])
def test_sdpa_causal_is_bottom_right_aligned(sq, sk):
    rng = np.random.default_rng(45)
    q, k, v = _qkv(rng, 1, 4, 2, sq, sk, 8)
    got = _sdpa([q, k, v], causal=True)
    allowed = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
    want = _manual_reference(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), allowed, 1 / math.sqrt(8))
    _assert_close(got, want)
    if sq == 1:  # a decode step sees the whole cache
        full = F.scaled_dot_product_attention(_t(q), _t(np.repeat(k, 2, 1)), _t(np.repeat(v, 2, 1)))
        _assert_close(got, full)


def test_sdpa_causal_combined_with_mask():
    rng = np.random.default_rng(46)
    q, k, v = _qkv(rng, 2, 2, 2, 4, 6, 8)
    mask = rng.random((2, 1, 4, 6)) < 0.8
    mask[..., 0] = True
    got = _sdpa([q, k, v, mask], causal=True)
    allowed = mask & (np.arange(6)[None, :] <= np.arange(4)[:, None] + 2)
    want = _manual_reference(q, k, v, allowed, 1 / math.sqrt(8))
    _assert_close(got, want)


def test_sdpa_fully_masked_rows_are_zero():
    rng = np.random.default_rng(47)
    q, k, v = _qkv(rng, 1, 2, 2, 4, 5, 8)
    mask = rng.random((4, 5)) < 0.6
    mask[1] = False  # query row 1 may attend to nothing
    mask[[0, 2, 3], 0] = True
    got = _sdpa([q, k, v, mask])
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[:, :, 1], 0.0)
    want = _manual_reference(q, k, v, mask, 1 / math.sqrt(8))
    _assert_close(got, want)
    # the same through an additive -inf mask
    additive = np.where(mask, 0.0, -np.inf).astype(np.float32)
    np.testing.assert_array_equal(_sdpa([q, k, v, additive])[:, :, 1], 0.0)
    # and when Sq > Sk, bottom-right causal leaves the first rows nothing to attend to
    q2, k2, v2 = _qkv(rng, 1, 1, 1, 5, 3, 4)
    out = _sdpa([q2, k2, v2], causal=True)
    np.testing.assert_array_equal(out[:, :, :2], 0.0)
    assert np.abs(out[:, :, 2:]).min() > 0


def test_sdpa_symbolic_types():
    g = Graph()
    for name in ("batch", "seq", "past"):
        g.add_symbol(name, 1, 16)
    q = g.add_input("q", parse_type("f16[batch,8,seq,64]"))
    k = g.add_input("k", parse_type("f16[batch,2,past+seq,64]"))
    v = g.add_input("v", parse_type("f16[batch,2,past+seq,32]"))
    mask = g.add_input("mask", parse_type("bool[batch,1,seq,past+seq]"))
    y = g.op("sdpa", q, k, v, mask, causal=True, scale=0.125)
    assert str(y.type) == "f16[batch,8,seq,32]"
    g.set_outputs(y)
    if assert_roundtrip is not None:
        assert_roundtrip(g)


@pytest.mark.parametrize("types,message", [
    (["f32[1,6,4,8]", "f32[1,4,4,8]", "f32[1,4,4,8]"], "multiple"),
    (["f32[1,4,4,8]", "f32[1,4,4,16]", "f32[1,4,4,8]"], "head dims"),
    (["f32[1,4,4,8]", "f32[1,4,5,8]", "f32[1,4,6,8]"], "sequence"),
    (["f32[1,4,4,8]", "f32[1,4,5,8]", "f32[1,2,5,8]"], "head counts"),
    (["f32[2,4,4,8]", "f32[3,4,5,8]", "f32[3,4,5,8]"], "batch"),
    (["f32[4,4,8]", "f32[1,4,5,8]", "f32[1,4,5,8]"], "rank 4"),
    (["f32[1,4,4,8]", "f16[1,4,5,8]", "f16[1,4,5,8]"], "dtype"),
    (["i32[1,4,4,8]", "i32[1,4,5,8]", "i32[1,4,5,8]"], "float"),
    (["f32[1,4,4,8]", "f32[1,4,5,8]", "f32[1,4,5,8]", "bool[4,4]"], "broadcast"),
    (["f32[1,4,4,8]", "f32[1,4,5,8]", "f32[1,4,5,8]", "f32[2,4,4,5]"], "broadcast"),
    (["f32[1,4,4,8]", "f32[1,4,5,8]", "f32[1,4,5,8]", "f16[4,5]"], "mask"),
    (["f32[b,4,s,8]", "f32[b,4,t,8]", "f32[b,4,t,8]", "bool[s,t+1]"], "broadcast"),
])
def test_sdpa_rejects_bad_inputs(types, message):
    g = Graph()
    values = [g.add_input(f"in{i}", parse_type(t)) for i, t in enumerate(types)]
    with pytest.raises(IRError, match=message):
        g.add_node("sdpa", values)
