"""The runtime value of a quantized tensor, and the numpy code that makes and reads one.

Layout (the same bytes a backend kernel reads, so weights are packed once):

- values are grouped along the last axis in runs of ``group_size`` (0 = the whole row is one
  group, i.e. one scale per output channel of a ``[N, K]`` weight);
- ``data`` is uint8 with shape ``[..., K]`` for 8-bit and ``[..., ceil(K / 2)]`` for 4-bit, where
  two values share a byte and the low nibble holds the even element (an odd K pads with 0);
- symmetric schemes store signed values in two's complement (int8 in [-127, 127], int4 in
  [-7, 7]: the most negative code is left unused so the range is symmetric around zero);
  asymmetric schemes store unsigned values in [0, 2^bits - 1] and a zero point per group;
- ``scales`` has shape ``[..., n_groups]`` in the scheme's scale dtype; ``zeros`` (asymmetric
  only) has the same shape: one unpacked uint8 zero point per group for ``zero="int"`` schemes, one
  offset in the scale dtype for ``zero="float"`` schemes (GGUF Q4_1).

Dequantized value: ``(q - zero) * scale`` (``zero`` is 0 for symmetric schemes), or
``q * scale + offset`` for ``zero="float"`` schemes. fp8 schemes (``codes="e4m3"``) store each value
as the bits of an e4m3 number c (uint8 ``data``) and stand for ``c * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from qjc.ir.dtypes import DType, QuantScheme
from qjc.ir.types import TensorType

# float dtypes numpy does not report as kind "f"
_ML_FLOATS = (np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn))


@dataclass(eq=False)
class QuantizedArray:
    data: np.ndarray  # uint8, packed as described in the module docstring
    scales: np.ndarray  # [..., n_groups], scheme.scale_dtype
    zeros: np.ndarray | None  # [..., n_groups] uint8, None for symmetric schemes
    logical_shape: tuple[int, ...]
    scheme: QuantScheme

    def __post_init__(self) -> None:
        self.logical_shape = tuple(int(d) for d in self.logical_shape)
        if not self.logical_shape:
            raise ValueError("a quantized array needs rank >= 1 (groups run along the last axis)")
        lead, k = self.logical_shape[:-1], self.logical_shape[-1]
        want_data = lead + (packed_length(k, self.scheme.bits),)
        want_scales = lead + (n_groups(k, self.scheme.group_size),)
        if self.data.dtype != np.uint8 or self.data.shape != want_data:
            raise ValueError(f"quantized data must be uint8{list(want_data)}, "
                             f"got {self.data.dtype}{list(self.data.shape)}")
        if self.scales.dtype != self.scheme.scale_dtype.np_dtype or self.scales.shape != want_scales:
            raise ValueError(f"scales must be {self.scheme.scale_dtype}{list(want_scales)}, "
                             f"got {self.scales.dtype}{list(self.scales.shape)}")
        if self.scheme.symmetric != (self.zeros is None):
            raise ValueError("zero points are stored for asymmetric schemes and only for them")
        zero_dtype = np.dtype(np.uint8) if self.scheme.zero == "int" else self.scheme.scale_dtype.np_dtype
        if self.zeros is not None and (self.zeros.dtype != zero_dtype or self.zeros.shape != want_scales):
            raise ValueError(f"zero points must be {zero_dtype}{list(want_scales)}, "
                             f"got {self.zeros.dtype}{list(self.zeros.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.logical_shape

    @property
    def dtype(self) -> DType:
        return self.scheme.dtype

    @property
    def type(self) -> TensorType:
        """The IR type of a value holding this array (for ``Graph.add_constant``)."""
        return TensorType(self.logical_shape, self.scheme.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes stored: packed values, scales and zero points."""
        return self.data.nbytes + self.scales.nbytes + (self.zeros.nbytes if self.zeros is not None else 0)

    def __repr__(self) -> str:
        return f"QuantizedArray({self.scheme.name}{list(self.logical_shape)})"


def packed_length(k: int, bits: int) -> int:
    return (k + 1) // 2 if bits == 4 else k


def n_groups(k: int, group_size: int) -> int:
    if group_size == 0:
        return 1
    if k % group_size:
        raise ValueError(f"last dim {k} is not divisible by the group size {group_size}")
    return k // group_size


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack integers in [-8, 15] (signed values become two's complement nibbles) two per byte along
    the last axis, the even element in the low nibble. An odd last dim is padded with 0."""
    values = np.asarray(values)
    if values.ndim == 0:
        raise ValueError("pack_int4 needs rank >= 1")
    if values.dtype.kind not in "iu":
        raise ValueError(f"pack_int4 takes integers, got {values.dtype}")
    if values.size and (values.min() < -8 or values.max() > 15):
        raise ValueError("pack_int4 takes values in [-8, 15]")
    nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.shape[-1] % 2:
        nibbles = np.concatenate([nibbles, np.zeros(nibbles.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, length: int, signed: bool = False) -> np.ndarray:
    """The inverse of ``pack_int4``: ``length`` values along the last axis, as int8 when ``signed``
    (nibbles sign-extended) else as uint8 in [0, 15]."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"unpack_int4 takes uint8, got {packed.dtype}")
    if packed.shape[-1] != (length + 1) // 2:
        raise ValueError(f"{packed.shape[-1]} packed bytes cannot hold {length} int4 values")
    out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.uint8)
    out[..., 0::2] = packed & 0xF
    out[..., 1::2] = packed >> 4
    out = out[..., :length]
    if signed:
        return ((out.astype(np.int8) ^ 8) - 8).astype(np.int8)  # sign-extend bit 3
    return out


_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _round_scale_up(exact: np.ndarray, scale_dtype: DType) -> np.ndarray:
    """The smallest value of the scale dtype >= ``exact`` (float64, non-negative). A scale rounded
    down would push the group's extreme values past the integer range and clip them, breaking the
    half-step error bound."""
    np_dtype = scale_dtype.np_dtype
    stored = np.asarray(exact.astype(np_dtype))
    low = stored.astype(np.float64) < exact
    if low.any():
        # for non-negative floats, the bit pattern plus one is the next representable value up
        bits = stored.view(_UINT_OF_SIZE[np_dtype.itemsize])
        bits[low] += 1
    return stored


def _round_down(exact: np.ndarray, dtype: DType) -> np.ndarray:
    """The largest value of ``dtype`` <= ``exact`` (float64), by stepping the bit pattern."""
    np_dtype = dtype.np_dtype
    stored = np.asarray(exact.astype(np_dtype))
    high = stored.astype(np.float64) > exact
    if high.any():
        uint = _UINT_OF_SIZE[np_dtype.itemsize]
        bits = stored.view(uint)
        value = stored.astype(np.float64)
        bits[high & (value > 0)] -= 1  # positive: one step toward zero
        bits[high & (value < 0)] += 1  # negative: one step away from zero
        sign = uint(1 << (8 * np_dtype.itemsize - 1))
        bits[high & (value == 0)] = sign | uint(1)  # zero: the smallest negative subnormal
    return stored


def _grouped(x: np.ndarray, group_size: int) -> np.ndarray:
    """``x`` [..., K] viewed as [..., n_groups, group]."""
    k = x.shape[-1]
    return x.reshape(x.shape[:-1] + (n_groups(k, group_size), group_size or k))


def quantize(x: np.ndarray, scheme: QuantScheme) -> QuantizedArray:
    """Round-to-nearest quantization of a float array along its last axis.

    Symmetric: ``scale = absmax / qmax`` with qmax 127 (8-bit) or 7 (4-bit). Asymmetric: the group's
    [min, max] widened to include 0 (so 0 is exact) is spread over [0, 2^bits - 1]. All-zero groups
    get scale 0. Scales too large for the scale dtype become inf; pick a wider scale dtype then.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f" and x.dtype not in _ML_FLOATS:
        raise ValueError(f"quantize takes a float array, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize needs rank >= 1 (groups run along the last axis)")
    xs = x.astype(np.float64)
    if not np.isfinite(xs).all():
        raise ValueError("quantize got non-finite values")
    groups = _grouped(xs, scheme.group_size)  # [..., G, g]
    bits = scheme.bits
    if scheme.codes == "e4m3":
        return _quantize_e4m3(x.shape, groups, scheme)
    if scheme.symmetric:
        qmax = 2 ** (bits - 1) - 1
        scales = _round_scale_up(np.abs(groups).max(axis=-1) / qmax, scheme.scale_dtype)
        s = scales.astype(np.float64)[..., None]
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        q = np.clip(np.rint(groups * inv), -qmax, qmax).astype(np.int8)
        zeros = None
    elif scheme.zero == "float":
        # the offset is the group minimum rounded down, so every x - offset is >= 0 and the
        # rounded-up scale spans the group without clipping
        qmax = 2**bits - 1
        zeros = _round_down(groups.min(axis=-1), scheme.scale_dtype)
        off = zeros.astype(np.float64)
        scales = _round_scale_up((groups.max(axis=-1) - off) / qmax, scheme.scale_dtype)
        s = scales.astype(np.float64)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        q = np.clip(np.rint((groups - off[..., None]) * inv[..., None]), 0, qmax).astype(np.uint8)
    else:
        qmax = 2**bits - 1
        lo = np.minimum(groups.min(axis=-1), 0.0)
        hi = np.maximum(groups.max(axis=-1), 0.0)
        scales = _round_scale_up((hi - lo) / qmax, scheme.scale_dtype)
        s = scales.astype(np.float64)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        zeros = np.clip(np.rint(-lo * inv), 0, qmax).astype(np.uint8)
        q = np.clip(np.rint(groups * inv[..., None]) + zeros[..., None], 0, qmax).astype(np.uint8)
    q = q.reshape(x.shape)
    data = pack_int4(q) if bits == 4 else q.view(np.uint8)
    return QuantizedArray(np.ascontiguousarray(data), scales, zeros, x.shape, scheme)


E4M3_MAX = 448.0  # the largest finite e4m3 (fn) value


def _quantize_e4m3(shape: tuple[int, ...], groups: np.ndarray, scheme: QuantScheme) -> QuantizedArray:
    """fp8: ``scale = absmax / 448`` per group (rounded up, so nothing clips), codes rounded to the
    nearest e4m3 value (ties to even)."""
    scales = _round_scale_up(np.abs(groups).max(axis=-1) / E4M3_MAX, scheme.scale_dtype)
    s = scales.astype(np.float64)[..., None]
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    codes = np.clip(groups * inv, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
    data = codes.reshape(shape).view(np.uint8)
    return QuantizedArray(np.ascontiguousarray(data), scales, None, shape, scheme)


def quantized_values(q: QuantizedArray) -> np.ndarray:
    """The integer codes of ``q`` minus their zero points, as int16 with the logical shape (the
    e4m3 values as float64 for fp8 schemes)."""
    k = q.logical_shape[-1]
    if q.scheme.codes == "e4m3":
        return q.data.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    if q.scheme.bits == 4:
        codes = unpack_int4(q.data, k, signed=q.scheme.symmetric)
    else:
        codes = q.data.view(np.int8) if q.scheme.symmetric else q.data
    codes = codes.astype(np.int16)
    if q.zeros is not None and q.scheme.zero == "int":
        zeros = q.zeros[..., None].astype(np.int16)
        codes = (_grouped(codes, q.scheme.group_size) - zeros).reshape(codes.shape)
    return codes


def dequantize(q: QuantizedArray, dtype: DType | np.dtype | type) -> np.ndarray:
    """The float array ``q`` stands for, in ``dtype`` (a qjc DType or a numpy dtype).

    Computed in float64 (integer code times scale is exact there) and rounded once to ``dtype``.
    """
    if not isinstance(q, QuantizedArray):
        raise TypeError(f"expected a QuantizedArray, got {type(q).__name__}")
    np_dtype = np.dtype(dtype.np_dtype if isinstance(dtype, DType) else dtype)
    codes = _grouped(quantized_values(q).astype(np.float64), q.scheme.group_size)
    values = codes * q.scales.astype(np.float64)[..., None]
    if q.scheme.zero == "float" and q.zeros is not None:
        values = values + q.zeros.astype(np.float64)[..., None]
    return values.reshape(q.logical_shape).astype(np_dtype)


def group_scales(q: QuantizedArray) -> np.ndarray:
    """Each element's scale (float64, logical shape): the per-element quantization step."""
    k = q.logical_shape[-1]
    per_group = q.scales.astype(np.float64)
    return np.repeat(per_group, q.scheme.group_size or k, axis=-1).reshape(q.logical_shape)
