"""Quantized linear weights on the cuda target: the parts of a QuantizedArray constant (packed codes,
scales, zero points / offsets) as separate device buffers, and the facts the device code that
dequantizes them in registers needs (templates/gemm.cu.j2: ``wq_load`` per element, ``gemv_q`` 16 code
bytes at a time)."""

from __future__ import annotations

from dataclasses import dataclass

from qjc.ir.dtypes import QuantScheme, parse_dtype, quant_scheme_of
from qjc.ir.graph import Value
from qjc.ir.quant import n_groups, packed_length
from qjc.ir.types import TensorType

# the schemes the GEMV / CUDA-core GEMM dequantize (glob patterns for Capabilities.dtypes)
CUDA_QUANT_DTYPES = ("q8cs_*", "q8g*s_*", "q4g*s_*", "q4g*a_*", "q4g*m_*", "q4cs_*", "f8e4m3c_*", "f8e4m3g*_*")


@dataclass
class QuantParts:
    """The device buffers of one quantized weight [N, K] and how to read them."""

    scheme: QuantScheme
    data: Value  # u8 [N, packed K]
    scales: Value  # [N, groups] in the scale dtype
    zeros: Value | None  # [N, groups]: u8 zero points or offsets in the scale dtype
    k: int  # the logical K (the packed length rounds it up for odd 4-bit rows)

    def values(self) -> list[Value]:
        return [self.data, self.scales] + ([self.zeros] if self.zeros is not None else [])


def quant_parts(weight: Value) -> QuantParts:
    """Synthetic values naming the artifact's tensors ``<name>``, ``<name>::scales``, ``<name>::zeros``."""
    scheme = quant_scheme_of(weight.type.dtype)
    n, k = (int(d) for d in weight.type.shape)
    groups = n_groups(k, scheme.group_size)
    data = Value(weight.name, TensorType((n, packed_length(k, scheme.bits)), parse_dtype("u8")))
    scales = Value(f"{weight.name}::scales", TensorType((n, groups), scheme.scale_dtype))
    zeros = None
    if not scheme.symmetric:
        zero_dtype = parse_dtype("u8") if scheme.zero == "int" else scheme.scale_dtype
        zeros = Value(f"{weight.name}::zeros", TensorType((n, groups), zero_dtype))
    return QuantParts(scheme, data, scales, zeros, k)


def codes_per_16_bytes(scheme: QuantScheme) -> int:
    return 32 if scheme.bits == 4 else 16


def loads_16_bytes(parts: QuantParts) -> bool:
    """Whether every 16 bytes of a row's codes are whole elements of one scale group, with each row
    starting 16-byte aligned: what gemv_q needs to read codes as uint4 and scale a chunk at once."""
    epl = codes_per_16_bytes(parts.scheme)
    group = parts.scheme.group_size
    k_packed = int(parts.data.type.shape[1])
    return parts.k % epl == 0 and k_packed % 16 == 0 and (group == 0 or group % epl == 0)


def template_facts(parts: QuantParts, params) -> dict:
    """What gemm.cu.j2's ``wq_load`` and ``gemv_q`` need: pointers, scheme and kind of codes."""
    from qjc.backends.cuda.cexpr import ctype

    s = parts.scheme
    k_packed = int(parts.data.type.shape[1])
    return {
        "bits": s.bits, "group": s.group_size, "codes": s.codes,
        "kind": "sym" if s.symmetric else ("int" if s.zero == "int" else "float"),
        "data_ptr": params.ptr(parts.data), "scales_ptr": params.ptr(parts.scales),
        "zeros_ptr": params.ptr(parts.zeros) if parts.zeros is not None else "nullptr",
        "scale_ctype": ctype(s.scale_dtype),
        "zero_ctype": ctype(parts.zeros.type.dtype) if parts.zeros is not None else "uint8_t",
        "k_packed": k_packed, "groups": int(parts.scales.type.shape[1]),
        "epl": codes_per_16_bytes(s), "loads_16_bytes": loads_16_bytes(parts),
    }


def mma_code_bytes(scheme: QuantScheme, act_dtype: str) -> int:
    """Code bytes per lane, row and round of the tensor-core 4-bit GEMV (templates/gemv_mma.cu.j2), 0 where it
    does not apply: integer 4-bit codes, f16 / bf16 activations, and rounds of 8 x that many codes (4 lanes x 2
    codes per byte) that stay inside one scale group."""
    if scheme.bits != 4 or scheme.codes != "int" or act_dtype not in ("f16", "bf16"):
        return 0
    group = scheme.group_size
    return next((lb for lb in (16, 8, 4) if group == 0 or group % (8 * lb) == 0), 0)
