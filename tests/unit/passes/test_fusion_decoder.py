"""The standard pipeline on a SmolLM2-shaped decoder with a static KV cache (the LLM frontend's graph,
random weights, 2 layers): at most 8 kernels per layer, and prefill followed by decode steps, feeding
the caches back, gives what the unoptimized graph gives, with float and with int4 weights."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.ir.dtypes import parse_dtype, quant_scheme_of
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.passes.fusion import kernel_report
from qjc.passes.fusion.parallel_gemms import merged_constant_parts
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument
from qjc.passes.pipeline import standard_pipeline
from qjc.passes.quantize.weights import quantize_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from qjc.frontends.llm import export_decoder  # noqa: E402  (needs torch)

LAYERS, VOCAB, MAX_SEQ = 2, 1000, 64
# SmolLM2-135M's widths: 9 query heads and 3 kv heads of 64, hidden 576, MLP 1536, tied embeddings
SMOLLM2_SHAPE = dict(num_hidden_layers=LAYERS, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
                     intermediate_size=1536, vocab_size=VOCAB, max_position_embeddings=256,
                     tie_word_embeddings=True)


@pytest.fixture(scope="module")
def decoder() -> Graph:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_SHAPE)).eval()
    return export_decoder(model, 1, MAX_SEQ)


def optimize(graph: Graph) -> Graph:
    return PassManager(standard_pipeline(), [VerifyInstrument()]).run(graph.copy(), PassContext(debug=0))


def _fused_ops(graph: Graph, kind: str) -> list[list[str]]:
    return [[n.op for n in node.subgraph.nodes] for node in graph.nodes
            if node.op == "fused" and node.attrs["kind"] == kind]


def _prefill_then_decode(before: Graph, after: Graph, rtol: float, atol: float) -> None:
    """5 prompt tokens into empty caches, then 3 single tokens, each call given the caches the
    unoptimized graph left."""
    rng = np.random.default_rng(7)
    caches = [np.zeros(tuple(v.type.shape), v.type.dtype.np_dtype) for v in before.inputs[2:]]
    position = 0
    for length in (5, 1, 1, 1):
        tokens = rng.integers(0, VOCAB, (1, length)).astype(np.int64)
        positions = np.arange(position, position + length, dtype=np.int64)
        want = run(before, [tokens, positions, *caches])
        got = run(after, [tokens, positions, *caches])
        assert len(got) == 1 + 2 * LAYERS
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i}, position {position}")
        written = slice(position, position + length)
        assert np.abs(got[1][:, :, written]).max() > 0 and not got[1][:, :, position + length:].any()
        caches = want[1:]
        position += length


def test_smollm2_shaped_decoder_runs_in_seven_kernels_per_layer(decoder: Graph) -> None:
    after = optimize(decoder)
    report = kernel_report(after, num_layers=LAYERS)
    assert report["kernels_per_layer"] <= 8, report
    # rms_norm, q/k/v + RoPE, attention + cache writes, o_proj + residual, rms_norm, gate/up + SwiGLU,
    # down + residual; outside the layers: embedding, mask, RoPE tables, final norm, lm_head
    assert report["kernels_per_layer"] == 7, report
    assert report["by_kind"] == {"attention": 2, "elementwise": 3, "gemm": 9, "rms_norm": 5}, report
    assert report["unfused_by_op"] == {"concat": 1, "gather": 1, "le": 1}, report
    for ops in _fused_ops(after, "attention"):
        assert ops.count("index_copy") == 2 and ops[-2:] == ["transpose", "reshape"]
    merged = [ops for ops in _fused_ops(after, "gemm") if "split" in ops]
    assert sum(ops.count("concat") == 2 for ops in merged) == LAYERS  # q/k/v with RoPE on q and k
    assert sum(ops[-2:] == ["silu", "mul"] for ops in merged) == LAYERS  # gate/up with SwiGLU
    # the new caches are results of the attention groups, returned as the graph's state
    for _, new in after.state_updates():
        assert new.producer.op == "fused" and new.producer.attrs["kind"] == "attention"
    names = sorted(after.constants)
    assert "hf.model.layers.1.self_attn.q_proj__k_proj__v_proj.weight" in names
    assert "hf.model.layers.0.mlp.gate_proj__up_proj.weight" in names
    assert not any(n.endswith((".q_proj.weight", ".up_proj.weight")) for n in names)  # the parts are gone
    _prefill_then_decode(decoder, after, rtol=1e-5, atol=2e-5)


def test_int4_decoder_merges_packed_weights_and_decodes_the_same(decoder: Graph) -> None:
    quantized = decoder.copy()
    quantize_weights(quantized, quant_scheme_of(parse_dtype("q4g32m_f16")), keep=["lm_head"])
    after = optimize(quantized)
    assert kernel_report(after, num_layers=LAYERS)["kernels_per_layer"] == 7
    packed = sorted(n for n, c in after.constants.items() if c.value.type.dtype.is_quant)
    assert len(packed) == 4 * LAYERS  # q/k/v, o, gate/up, down
    assert "hf.model.layers.0.self_attn.q_proj__k_proj__v_proj.weight.q4g32m_f16" in packed
    # every packed weight still names the float weights it holds, rows in order
    traced = [part.removesuffix(".q4g32m_f16") for name in packed for part in merged_constant_parts(name) or [name]]
    assert len(traced) == 7 * LAYERS and all(name in decoder.constants for name in traced)
    _prefill_then_decode(quantized, after, rtol=1e-4, atol=1e-4)
