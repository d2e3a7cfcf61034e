"""Quantize and dequantize: the explicit conversions between float tensors and quantized types.

The packed layout and the arithmetic live in qjc.ir.quant; these ops make them nodes of the IR.
The quantization pass usually folds ``quantize`` of a weight into a QuantizedArray constant and
leaves ``dequantize`` (or a ``linear`` with a quantized weight) for the backend to fuse.
"""

from __future__ import annotations

import numpy as np

from qjc.ir.dtypes import quant_scheme_of
from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import require_float
from qjc.ir.quant import QuantizedArray, dequantize, quantize
from qjc.ir.types import TensorType


def _check_groups(t: TensorType, group_size: int) -> None:
    if t.rank < 1:
        raise ValueError("quantized tensors need rank >= 1 (groups run along the last axis)")
    k = t.shape[-1]
    if group_size and isinstance(k, int) and k % group_size:
        raise ValueError(f"last dim {k} is not divisible by the group size {group_size}")


def _quantize_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    x, dtype = ts[0], attrs["dtype"]
    require_float(x)
    if not dtype.is_quant:
        raise ValueError(f"dtype must be a quantized type (like q4g128a_f16), got {dtype}")
    _check_groups(x, quant_scheme_of(dtype).group_size)
    return [x.with_dtype(dtype)]


def _quantize(x: np.ndarray, dtype) -> QuantizedArray:
    return quantize(x, quant_scheme_of(dtype))


def _dequantize_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    q, to = ts[0], attrs["to"]
    if not q.dtype.is_quant:
        raise ValueError(f"input must be of a quantized type, got {q.dtype}")
    if not to.is_float:
        raise ValueError(f"to must be a float type, got {to}")
    _check_groups(q, quant_scheme_of(q.dtype).group_size)
    return [q.with_dtype(to)]


def _dequantize(q: QuantizedArray, to) -> np.ndarray:
    return dequantize(q, to)


register(OpDef("quantize", "quant", (1, 1), _quantize_infer, _quantize,
               attrs={"dtype": Attr("dtype")},
               doc="round-to-nearest quantization into a quantized dtype (groups along the last axis)"))

register(OpDef("dequantize", "quant", (1, 1), _dequantize_infer, _dequantize, widen=False,
               attrs={"to": Attr("dtype")},
               doc="(q - zero) * scale of a quantized tensor, as the float dtype `to`"))
