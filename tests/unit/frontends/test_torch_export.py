"""torch.export frontend: imported graphs, run on the reference interpreter, match torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qjc.errors import QJCError, UnsupportedOpsError
from qjc.frontends.torch_export import from_torch
from qjc.ir.interpreter import run
from qjc.ir.testing import assert_roundtrip
from qjc.ir.verifier import verify


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(2, ceil_mode=True)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.relu(self.bn2(self.conv2(x))))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.log_softmax(self.fc(x), dim=-1)


def randomize_norm_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Give batch norms non-trivial running statistics so the test sees them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def check_against_torch(module, graph, inputs, rtol=1e-4, atol=1e-5):
    with torch.no_grad():
        want = module(*inputs)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    got = run(graph, [i.numpy() for i in inputs])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=rtol, atol=atol)


def test_small_cnn_matches_torch():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    randomize_norm_stats(model)
    x = torch.randn(2, 3, 16, 16)
    g = from_torch(model, (x,))
    verify(g)
    ops = {n.op for n in g.nodes}
    assert {"conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "linear", "log_softmax"} <= ops
    check_against_torch(model, g, [torch.randn(2, 3, 16, 16)])
    assert_roundtrip(g)


def test_dynamic_batch_becomes_a_named_symbol():
    torch.manual_seed(1)
    model = SmallCNN().eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    g = from_torch(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    assert str(g.inputs[0].type) == "f32[batch,3,16,16]"
    assert (g.symbols["batch"].lo, g.symbols["batch"].hi) == (1, 32)
    for n in (1, 5):
        check_against_torch(model, g, [torch.randn(n, 3, 16, 16)])


class Unsupported(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x) + torch.special.bessel_j1(x) + torch.special.bessel_j0(x * 2)


def test_unsupported_ops_are_listed_once():
    with pytest.raises(UnsupportedOpsError) as err:
        from_torch(Unsupported(), (torch.randn(4),))
    text = str(err.value)
    assert "aten.special_bessel_j0.default x2" in text
    assert "aten.special_bessel_j1.default x1" in text
    assert "test_torch_export.py" in text  # source location of the op


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_uncapturable_module_gives_one_clear_error():
    with pytest.raises(QJCError, match="torch.export could not capture DataDependent"):
        from_torch(DataDependent(), (torch.randn(3),))


class Mixed(torch.nn.Module):
    """Type promotion, scalars, comparisons, where, slicing, concat, split, gather."""

    def forward(self, x, idx):
        y = x * 2 + 1.5
        m = (x > 0.1) & (y < 3)
        z = torch.where(m, y, -x)
        a, b = torch.split(z, [3, 5], dim=1)
        c = torch.cat([b, a], dim=1)[:, 1:-1]
        g = torch.index_select(c, 1, idx)
        s = g.sum(dim=-1, keepdim=True) / g.shape[-1]
        return torch.softmax(g - s, dim=-1), idx.float() + x[:, 0].mean()


def test_mixed_ops_and_promotion():
    x = torch.randn(4, 8)
    idx = torch.tensor([0, 2, 5])
    g = from_torch(Mixed(), (x, idx))
    verify(g)
    check_against_torch(Mixed(), g, [torch.randn(4, 8), torch.tensor([1, 1, 4])])
    assert_roundtrip(g)


def _hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=128, n_positions=64)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       hidden_size=64, intermediate_size=128, vocab_size=128,
                                       max_position_embeddings=64)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    cfg = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64,
                                  intermediate_size=128, vocab_size=128, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


class LogitsOnly(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False) if not hasattr(
            self.model.config, "type_vocab_size") else self.model(input_ids=ids, attention_mask=mask)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "bert"])
def test_hf_architectures_with_random_weights(kind):
    model = LogitsOnly(_hf_model(kind)).eval()
    ids = torch.randint(0, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    g = from_torch(model, (ids, mask))
    verify(g)
    ids2 = torch.randint(0, 128, (2, 12))
    mask2 = torch.ones(2, 12, dtype=torch.long)
    mask2[1, 9:] = 0
    with torch.no_grad():
        want = model(ids2, mask2).numpy()
    (got,) = run(g, [ids2.numpy(), mask2.numpy()])
    valid = mask2.numpy().astype(bool)  # padded positions are undefined in every framework
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4)
