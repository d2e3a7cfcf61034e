"""Scaled dot-product attention as one op, so backends can map it to a fused attention kernel."""

from __future__ import annotations

import math

import numpy as np

from qjc.ir.dtypes import boolean
from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import broadcasts_to, require_float, require_rank, require_same_dim
from qjc.ir.types import TensorType


def _sdpa_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    q, k, v = ts[:3]
    require_float(q, "q")
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_rank(t, 4, f"{name} ([B, H, S, D])")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
    b = require_same_dim(q.shape[0], k.shape[0], "q and k batch differ")
    b = require_same_dim(b, v.shape[0], "q and v batch differ")
    hq = q.shape[1]
    hkv = require_same_dim(k.shape[1], v.shape[1], "k and v head counts differ")
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv == 0 or hq % hkv):
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    require_same_dim(q.shape[3], k.shape[3], "q and k head dims differ")
    sk = require_same_dim(k.shape[2], v.shape[2], "k and v sequence lengths differ")
    if len(ts) == 4:
        mask = ts[3]
        if mask.dtype not in (boolean, q.dtype):
            raise ValueError(f"mask must be bool (True = attend) or additive {q.dtype}, got {mask.dtype}")
        logits_shape = (b, hq, q.shape[2], sk)
        if not broadcasts_to(mask.shape, logits_shape):
            raise ValueError(f"mask {mask} does not broadcast to [{','.join(map(str, logits_shape))}]")
    return [TensorType((b, hq, q.shape[2], v.shape[3]), q.dtype)]


def _sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, causal: bool = False,
          scale: float | None = None) -> np.ndarray:
    # at least f32 (narrow floats arrive widened already); float64 inputs stay float64
    ct = np.result_type(q.dtype, np.float32)
    q, k, v = q.astype(ct), k.astype(ct), v.astype(ct)
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        # grouped-query attention: kv head h serves query heads h*r .. h*r + r - 1
        k = np.repeat(k, hq // hkv, axis=1)
        v = np.repeat(v, hq // hkv, axis=1)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, ct)  # [B, Hq, Sq, Sk]
    sq, sk = logits.shape[-2:]
    allowed = np.ones((1, 1, sq, sk), bool)
    if causal:
        # bottom-right aligned: the last query row sees every key
        allowed = allowed & (np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq))
    if mask is not None:
        if mask.dtype == np.bool_:
            allowed = allowed & mask
        else:
            logits = logits + mask.astype(ct)
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(axis=-1, keepdims=True)
    # rows with nothing to attend to (all -inf) produce zeros instead of NaN
    attended = np.isfinite(row_max)
    weights = np.exp(logits - np.where(attended, row_max, 0))
    denom = weights.sum(axis=-1, keepdims=True)
    weights = np.divide(weights, denom, out=np.zeros_like(weights), where=attended & (denom > 0))
    return np.matmul(weights, v)


register(OpDef("sdpa", "attention", (3, 4), _sdpa_infer, _sdpa,
               attrs={"causal": Attr("bool", False), "scale": Attr("float", None, optional=True)},
               doc="softmax(q @ k^T * scale + mask) @ v with q [B, Hq, Sq, D], k [B, Hkv, Sk, D], "
                   "v [B, Hkv, Sk, Dv] -> [B, Hq, Sq, Dv]. Hq must be a multiple of Hkv: kv head h serves "
                   "the Hq/Hkv consecutive query heads h*r..h*r+r-1 (torch enable_gqa / repeat_interleave). "
                   "scale defaults to 1/sqrt(D). mask (optional) is bool (True = attend) or additive in q's "
                   "dtype, broadcastable to [B, Hq, Sq, Sk]. causal is aligned bottom-right: query i may "
                   "attend key j iff j <= i + (Sk - Sq) -- torch's is_causal when Sq == Sk, and what decode "
                   "against a KV cache needs when Sq < Sk. A query row that may attend to nothing outputs "
                   "zeros (torch gives NaN). Softmax is computed in f32 (or wider)."))
