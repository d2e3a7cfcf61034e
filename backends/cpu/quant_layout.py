"""Quantized linear weights in the layout of the quantized GEMM tile (kernel_gemm.py), made at load time.

A weight [N, K] of a quantized dtype reaches the kernel as up to three parameters, each in the column
panels of the f32 path ([ceil(N / NB), rows, NB], zero-padded past N) so that one vector load reads
the NB columns of one step of K:

  q_codes   [P, K / 2, NB] uint8 for 4-bit (low nibble: even k, high nibble: odd k), [P, K, NB] for
            8-bit (int8 for symmetric schemes, uint8 otherwise)
  q_scales  [P, G, NB] f16 (kept as stored: it is read once per group) or f32 (other scale types)
  q_zeros   [P, G, NB] uint8 zero points (``zero="int"`` schemes) or offsets in the scales' type
            (``zero="float"``, GGUF Q4_1); absent for symmetric schemes

The kernel dequantizes in registers as ``code * scale + offset`` (one FMA): symmetric 4-bit codes are
stored biased by +8 (the nibble with bit 3 flipped) and use offset -8 * scale, an integer zero point z
gives offset -z * scale. So the kernel reads 4 + 16/G bits per weight for Q4_0-like schemes, 4 + 32/G
for Q4_1-like ones, never a float copy of the weight.

numpy only: the runtime imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qjc.ir.dtypes import QuantScheme
from qjc.ir.quant import QuantizedArray, unpack_int4

PARTS = ("q_codes", "q_scales", "q_zeros")
# scale types the kernel widens exactly from f32 storage; f16 is read as is
_SCALES_AS_F32 = ("f32", "bf16", "f8e4m3")


@dataclass(frozen=True)
class KernelFormat:
    """What the quantized tile reads for one weight (``GemmSpec.quant`` in kernel_gemm.py)."""

    bits: int
    group: int  # values of K per scale (K for one scale per row)
    zero: str  # "none" (signed int8 codes), "sym" (biased codes), "int" (u8 zero points), "float" (offsets)
    scale_dtype: str  # "f16" | "f32"

    @property
    def codes_dtype(self) -> str:
        return "i8" if self.zero == "none" else "u8"

    @property
    def zeros_dtype(self) -> str | None:
        return {"int": "u8", "float": self.scale_dtype}.get(self.zero)

    @property
    def parts(self) -> tuple[str, ...]:
        return PARTS if self.zeros_dtype else PARTS[:2]


def kernel_format(scheme: QuantScheme, k: int) -> KernelFormat | None:
    """The kernel's format for a weight with ``k`` columns, or None when the kernel does not take it
    (the weight is then dequantized at load time)."""
    group = scheme.group_size or k
    if k % group or group % 2:  # the tile takes K two steps at a time within a group
        return None
    scale = scheme.scale_dtype.name
    if scale != "f16" and scale not in _SCALES_AS_F32:
        return None
    if scheme.symmetric:
        zero = "none" if scheme.bits == 8 else "sym"
    else:
        zero = scheme.zero
    return KernelFormat(scheme.bits, group, zero, "f16" if scale == "f16" else "f32")


def part_shape(fmt: KernelFormat, part: str, n: int, k: int, block: int) -> tuple[int, int, int]:
    panels = -(-n // block)
    if part == "q_codes":
        return (panels, k // 2 if fmt.bits == 4 else k, block)
    return (panels, k // fmt.group, block)


def part_dtype(fmt: KernelFormat, part: str) -> str:
    if part == "q_codes":
        return fmt.codes_dtype
    if part == "q_scales":
        return fmt.scale_dtype
    zeros = fmt.zeros_dtype
    if zeros is None:
        raise ValueError(f"a {fmt} weight has no zero points")
    return zeros


def column_panels(rows: np.ndarray, block: int) -> np.ndarray:
    """[N, R] -> [ceil(N / block), R, block], zero-padded past N."""
    n, r = rows.shape
    panels = -(-n // block)
    padded = np.zeros((panels * block, r), rows.dtype)
    padded[:n] = rows
    return np.ascontiguousarray(padded.reshape(panels, block, r).transpose(0, 2, 1))


def pack_part(q: QuantizedArray, part: str, block: int) -> np.ndarray:
    """One kernel parameter of the quantized weight ``q`` [N, K]."""
    if len(q.logical_shape) != 2:
        raise ValueError(f"a quantized linear weight is [N, K], got {list(q.logical_shape)}")
    n, k = q.logical_shape
    fmt = kernel_format(q.scheme, k)
    if fmt is None:
        raise ValueError(f"the cpu kernel does not take {q.scheme.name} with K={k}")
    if part == "q_codes":
        if fmt.bits == 4:
            codes = unpack_int4(q.data, k)  # raw nibbles
            if fmt.zero == "sym":
                codes = codes ^ np.uint8(8)  # two's complement q -> q + 8
            panels = column_panels(codes, block)
            return np.ascontiguousarray(panels[:, 0::2, :] | (panels[:, 1::2, :] << np.uint8(4)))
        codes = q.data.view(np.int8) if fmt.zero == "none" else q.data
        return column_panels(codes, block)
    if part == "q_scales":
        scales = q.scales if fmt.scale_dtype == "f16" else q.scales.astype(np.float32)
        return column_panels(np.ascontiguousarray(scales), block)
    if part == "q_zeros" and q.zeros is not None:
        zeros = q.zeros if fmt.zero == "int" or fmt.scale_dtype == "f16" else q.zeros.astype(np.float32)
        return column_panels(np.ascontiguousarray(zeros), block)
    raise ValueError(f"no part {part!r} in a {q.scheme.name} weight")
