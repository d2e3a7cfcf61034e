"""The `--quant` modes and the QuantScheme each one means."""

from __future__ import annotations

from qjc.errors import QJCError
from qjc.ir.dtypes import QuantScheme, f16, f32

# mode -> (bits, symmetric, calibrated); group size comes from --group-size for 4-bit modes.
QUANT_MODES = {
    "none": None,
    # per output channel, symmetric: the int8 GEMV/GEMM needs one scale per row
    "int8": (8, True, False),
    # group-wise asymmetric: value = q * scale + offset per group (the offset is the group's
    # minimum, so it is exact; GGUF Q4_1's form, one FMA to dequantize in a kernel)
    "int4": (4, False, False),
    # int4 with per-input-channel scales searched on calibration text (AWQ-style)
    "int4-awq": (4, False, True),
    # fp8 e4m3 weights with one f32 scale per output channel; activations fp8 too (one dynamic
    # scale per token) on targets with fp8 kernels (see activations.py)
    "fp8": (8, True, False),
}
FP8_WEIGHTS = QuantScheme(8, 0, True, f32, codes="e4m3")
FP8_ACTIVATIONS = FP8_WEIGHTS  # per row of the input: a dynamic scale per token


def scheme_for(mode: str, group_size: int = 128) -> QuantScheme | None:
    if mode not in QUANT_MODES:
        raise QJCError(f"unknown quantization mode {mode!r}", f"choose one of {', '.join(QUANT_MODES)}")
    spec = QUANT_MODES[mode]
    if spec is None:
        return None
    if mode == "fp8":
        return FP8_WEIGHTS
    bits, symmetric, _ = spec
    if bits == 4 and group_size not in (32, 64, 128, 256):
        raise QJCError(f"int4 group size must be 32, 64, 128 or 256, got {group_size}")
    return QuantScheme(bits, 0 if bits == 8 else group_size, symmetric, f16, "int" if symmetric else "float")


def is_calibrated(mode: str) -> bool:
    spec = QUANT_MODES.get(mode)
    return bool(spec and spec[2])
