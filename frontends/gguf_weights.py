"""GGUF tensors as qjc values without a float detour: Q4_0, Q4_1 and Q8_0 blocks map exactly onto
qjc's quantized types (group size 32, f16 scales); F32/F16 tensors stay plain arrays.

Block layouts (32 weights each, facts of the GGUF format):
  Q8_0: f16 d, int8 q[32]                          value = d * q
  Q4_0: f16 d, u8 qs[16]  (element j in the low nibble of byte j, element j+16 in the high nibble)
                                                   value = d * (nibble - 8)
  Q4_1: f16 d, f16 m, u8 qs[16] (nibbles as Q4_0)  value = d * nibble + m
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qjc.errors import QJCError
from qjc.ir.dtypes import QuantScheme, f16
from qjc.ir.quant import QuantizedArray, pack_int4

BLOCK = 32
Q8_0 = QuantScheme(8, BLOCK, True, f16)
Q4_0 = QuantScheme(4, BLOCK, True, f16)
Q4_1 = QuantScheme(4, BLOCK, False, f16, "float")


def _blocks(raw: np.ndarray, rows: int, k: int, block_bytes: int) -> np.ndarray:
    if k % BLOCK:
        raise QJCError(f"GGUF tensor row of {k} values is not a whole number of {BLOCK}-value blocks")
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, k // BLOCK, block_bytes)


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., offset:offset + 2]).view(np.float16)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[rows, blocks, 16] bytes -> [rows, blocks * 32] unsigned nibbles in element order."""
    low, high = qs & 0xF, qs >> 4
    return np.concatenate([low, high], axis=-1).reshape(qs.shape[0], -1)


def q8_0(raw: np.ndarray, rows: int, k: int) -> QuantizedArray:
    b = _blocks(raw, rows, k, 34)
    data = np.ascontiguousarray(b[..., 2:]).reshape(rows, k)  # int8 codes, stored as their bytes
    return QuantizedArray(data, _f16(b, 0), None, (rows, k), Q8_0)


def q4_0(raw: np.ndarray, rows: int, k: int) -> QuantizedArray:
    b = _blocks(raw, rows, k, 18)
    signed = _nibbles(b[..., 2:]).astype(np.int16) - 8
    return QuantizedArray(pack_int4(signed), _f16(b, 0), None, (rows, k), Q4_0)


def q4_1(raw: np.ndarray, rows: int, k: int) -> QuantizedArray:
    b = _blocks(raw, rows, k, 20)
    return QuantizedArray(pack_int4(_nibbles(b[..., 4:])), _f16(b, 0), _f16(b, 2), (rows, k), Q4_1)


_CONVERT = {"Q8_0": q8_0, "Q4_0": q4_0, "Q4_1": q4_1}


def read_tensors(path: str | Path) -> dict[str, QuantizedArray | np.ndarray]:
    """Every tensor of a GGUF file by its GGUF name, shaped [rows, k] (numpy order)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise QJCError(f"{path}: the GGUF file does not parse: {type(e).__name__}: {e}") from e
    out: dict[str, QuantizedArray | np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        kind = t.tensor_type.name
        if kind in ("F32", "F16"):
            out[t.name] = np.asarray(t.data).reshape(shape)
        elif kind in _CONVERT:
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            q = _CONVERT[kind](t.data, rows, shape[-1])
            out[t.name] = q if len(shape) == 2 else _reshape_rows(q, shape)
        else:
            raise QJCError(f"{path}: tensor {t.name} has GGUF type {kind}, which qjc does not import yet",
                           "supported: F32, F16, Q8_0, Q4_0, Q4_1")
    return out


def _reshape_rows(q: QuantizedArray, shape: tuple[int, ...]) -> QuantizedArray:
    lead = shape[:-1]
    return QuantizedArray(q.data.reshape(lead + q.data.shape[-1:]), q.scales.reshape(lead + q.scales.shape[-1:]),
                          None if q.zeros is None else q.zeros.reshape(lead + q.zeros.shape[-1:]), shape, q.scheme)


def permute_rows(q: QuantizedArray, order: np.ndarray) -> QuantizedArray:
    """Rows reordered (groups run along rows, so a row permutation keeps the encoding exact)."""
    return QuantizedArray(q.data[order], q.scales[order], None if q.zeros is None else q.zeros[order],
                          q.logical_shape, q.scheme)


# transformers' parameter names (as the LLM frontend's constants carry them) -> GGUF tensor names
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(param: str) -> str | None:
    """``...model.layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``; lm_head -> output."""
    parts = param.split(".")
    if parts[-1] != "weight":
        return None
    if "layers" in parts:
        i = parts.index("layers")
        module = ".".join(parts[i + 2:-1])
        if module in _LAYER_NAMES:
            return f"blk.{parts[i + 1]}.{_LAYER_NAMES[module]}.weight"
        return None
    if parts[-2] == "lm_head":
        return "output.weight"
    if parts[-2] == "embed_tokens":
        return "token_embd.weight"
    return None


def _row_order(stored: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """The permutation p with stored[p] == wanted row for row (transformers reorders the q/k rows
    of llama GGUF files for its rotary layout), or None."""
    if np.array_equal(stored, wanted):
        return np.arange(stored.shape[0])
    index = {row.tobytes(): i for i, row in enumerate(stored)}
    order = [index.get(row.tobytes()) for row in wanted]
    if any(o is None for o in order) or len(set(order)) != len(order):
        return None
    return np.asarray(order)


def use_gguf_weights(graph, path: str | Path) -> list[str]:
    """Replace the float weights of the graph's linear layers by the GGUF file's own quantized
    tensors, exactly (each is checked to dequantize to the float weight the model was loaded with).
    Returns notes on what was replaced or kept."""
    from qjc.ir.dtypes import f32
    from qjc.ir.quant import dequantize

    tensors = read_tensors(path)
    notes: list[str] = []
    lm_head_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"  # tied
    for node in list(graph.nodes):
        if node.op != "linear" or not graph.is_constant(node.inputs[1]):
            continue
        weight = node.inputs[1]
        name = gguf_name(weight.name)
        if name in ("output.weight", "token_embd.weight"):
            name = lm_head_name
        q = tensors.get(name) if name else None
        if not isinstance(q, QuantizedArray):
            notes.append(f"kept {weight.name} in float (GGUF {name or '?'}: not a quantized tensor)")
            continue
        data = graph.constant_data(weight)
        order = _row_order(dequantize(q, f32), np.asarray(data, np.float32))
        if order is None:
            notes.append(f"kept {weight.name} in float: GGUF {name} does not dequantize to it")
            continue
        q = permute_rows(q, order)
        node.inputs[1] = graph.add_constant(f"{weight.name}.{q.scheme.name}", q, q.type)
        notes.append(f"{weight.name} <- {name} ({q.scheme.name})")
    return notes
