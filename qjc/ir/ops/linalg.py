"""Matrix products: ``matmul`` (numpy semantics for rank >= 2, batch dims broadcast) and
``linear`` (torch layout ``y = x @ w.T + bias``).

``linear`` also takes a weight of a quantized dtype, whose run-time value is a QuantizedArray;
the reference dequantizes it and multiplies. Keeping the dequantize inside ``linear`` is what lets
a backend fuse it into the GEMM/GEMV and read the packed weight directly.
"""

from __future__ import annotations

import numpy as np

from qjc.ir.dtypes import i32, i64, quant_scheme_of
from qjc.ir.ops.registry import OpDef, register
from qjc.ir.ops.shape_rules import broadcast_shapes, require_float, require_rank, require_same_dim, same_dtype
from qjc.ir.quant import QuantizedArray, dequantize
from qjc.ir.types import TensorType


def _matmul_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    a, b = ts
    for name, t in (("lhs", a), ("rhs", b)):
        if t.rank < 2:
            raise ValueError(f"{name} has rank {t.rank}; matmul takes rank >= 2 operands "
                             "(unsqueeze a vector first)")
    same_dtype(ts, "operands")
    dtype = a.dtype
    if dtype.is_quant:
        raise ValueError("matmul does not take quantized operands; use linear with a quantized weight")
    if not (dtype.is_float or dtype in (i32, i64)):
        raise ValueError(f"matmul takes float, i32 or i64 operands, got {dtype}")
    require_same_dim(a.shape[-1], b.shape[-2], "contracted dims differ (lhs [..., M, K], rhs [..., K, N])")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), dtype)]


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a, b)


register(OpDef("matmul", "matmul", (2, 2), _matmul_infer, _matmul,
               doc="batched matrix product [..., M, K] x [..., K, N] -> [..., M, N]; batch dims broadcast "
                   "as in numpy; both operands rank >= 2 and one dtype (float, i32 or i64)"))


def _linear_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    x, w = ts[0], ts[1]
    if x.rank < 1:
        raise ValueError("input must have rank >= 1 ([..., K])")
    require_float(x)
    require_rank(w, 2, "weight ([N, K])")
    if w.dtype.is_quant:
        group = quant_scheme_of(w.dtype).group_size
        k = w.shape[1]
        if group and isinstance(k, int) and k % group:
            raise ValueError(f"weight K={k} is not divisible by the quantization group size {group}")
    elif w.dtype != x.dtype:
        raise ValueError(f"weight dtype {w.dtype} differs from input dtype {x.dtype}")
    require_same_dim(x.shape[-1], w.shape[1], "input last dim and weight K differ (weight is [N, K])")
    n = w.shape[0]
    if len(ts) == 3:
        bias = ts[2]
        require_rank(bias, 1, "bias ([N])")
        if bias.dtype != x.dtype:
            raise ValueError(f"bias dtype {bias.dtype} differs from input dtype {x.dtype}")
        n = require_same_dim(bias.shape[0], n, "bias length and weight N differ")
    return [TensorType(x.shape[:-1] + (n,), x.dtype)]


def _linear(x: np.ndarray, w: np.ndarray | QuantizedArray, bias: np.ndarray | None = None) -> np.ndarray:
    if isinstance(w, QuantizedArray):
        w = dequantize(w, x.dtype)  # x is already widened to f32 if it was a narrow float
    y = np.matmul(x, w.T)
    return y if bias is None else y + bias


register(OpDef("linear", "matmul", (2, 3), _linear_infer, _linear,
               doc="y = x @ w.T + bias with x [..., K], w [N, K] (torch layout), optional bias [N]; "
                   "w may be of a quantized dtype (dequantized to the input's dtype); output has x's dtype"))
