"""The paged KV-cache pass on the interpreter: a paged decoder computes what the static-cache
decoder computes, for prefill plus several decode steps, with sequences of different lengths
sharing one pool through scattered blocks."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import padded_prefill

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.interpreter import run
from qjc.passes.cleanup.canonicalize import Canonicalize
from qjc.passes.cleanup.cse import CommonSubexpressionElimination
from qjc.passes.cleanup.dce import DeadCodeElimination
from qjc.passes.cleanup.fold import ConstantFolding
from qjc.passes.kv_cache import PagedKVCache, PagedLayout
from qjc.passes.manager import PassContext, PassManager

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MAX_SEQ = 24


@pytest.fixture(scope="module")
def decoders():
    from qjc.frontends.llm import export_decoder

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                                   intermediate_size=48, vocab_size=64, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    single = _cleaned(export_decoder(model, 1, MAX_SEQ))
    double = _cleaned(export_decoder(model, 2, MAX_SEQ))
    return single, double


def _cleaned(g: Graph) -> Graph:
    passes = [Canonicalize(), ConstantFolding(), Canonicalize(), CommonSubexpressionElimination(),
              DeadCodeElimination()]
    return PassManager(passes).run(g, PassContext())


def _paged(g: Graph, layout: PagedLayout) -> Graph:
    return PassManager([PagedKVCache(layout)]).run(g.copy(), PassContext())


def _static_generation(g: Graph, prompt: list[int], steps: int) -> list[np.ndarray]:
    """Logits of the last token after the prompt and after each greedy step, static cache."""
    state = [np.zeros(tuple(v.type.shape), np.float32) for v in g.inputs[2:]]
    tokens, pos = np.asarray([prompt]), np.arange(len(prompt))
    out = []
    for _ in range(steps):
        logits, *state = run(g, [tokens, pos, *state])
        out.append(logits[0, -1])
        tokens, pos = np.asarray([[int(np.argmax(logits[0, -1]))]]), np.asarray([pos[-1] + 1])
    return out


@pytest.mark.parametrize("order", ["bhsd", "bshd"])
def test_paged_matches_static_cache_for_different_lengths(decoders, order):
    single, double = decoders
    layout = PagedLayout(block_size=4, num_blocks=16, order=order)
    paged = _paged(double, layout)
    names = [v.name for v in paged.inputs]
    assert names[:3] == ["tokens", "positions", "block_table"]
    assert not any(n.op in ("index_copy", "sdpa") for n in paged.nodes)
    assert sum(n.op == "paged_attention" for n in paged.nodes) == 2
    rng = np.random.default_rng()
    prompts = [list(rng.integers(0, 64, 7)), list(rng.integers(0, 64, 3))]
    steps = 5
    want = [_static_generation(single, p, steps) for p in prompts]
    # scattered, interleaved blocks: sequence 0 gets odd blocks backwards, sequence 1 even ones
    table = np.full((2, MAX_SEQ // 4), -1, np.int32)
    table[0] = [15, 13, 11, 9, 7, 5]
    table[1] = [0, 2, 4, 6, 8, 10]
    pools = [np.zeros(tuple(v.type.shape), np.float32) for v in paged.inputs[3:]]
    # prefill both in one call, the shorter prompt padded with position -1
    tokens, positions = padded_prefill(prompts)
    last = [len(p) - 1 for p in prompts]
    for step in range(steps):
        logits, *pools = run(paged, [tokens, positions, table, *pools])
        nxt = []
        for b in range(2):
            row = logits[b, last[b] if step == 0 else 0]
            np.testing.assert_allclose(row, want[b][step], rtol=1e-4, atol=1e-4)
            # the static run's token (its own argmax): a near-tie cannot send the two runs down different paths
            nxt.append(int(np.argmax(want[b][step])))
        tokens = np.asarray(nxt)[:, None]
        positions = np.asarray([[len(prompts[b]) + step] for b in range(2)])


def test_layout_and_manifest_section(decoders):
    _, double = decoders
    double.meta["llm"] = {"kv_cache": {"kv_heads": 2, "head_dim": 8}}
    paged = _paged(double, PagedLayout(block_size=8))
    pool = paged.inputs[3]
    assert tuple(pool.type.shape) == (2 * 3, 2, 8, 8)  # default pool: every row can reach max_seq
    assert paged.state == [v.name for v in paged.inputs[3:]]
    kv = paged.meta["llm"]["kv_cache"]
    assert kv["layout"] == "paged" and kv["block_size"] == 8 and kv["num_blocks"] == 6
    assert kv["max_blocks_per_seq"] == 3 and kv["dims"][0] == "num_blocks"


def test_contiguous_targets_keep_the_static_cache(decoders):
    _, double = decoders
    g = PassManager([PagedKVCache()]).run(double.copy(), PassContext())
    assert any(n.op == "index_copy" for n in g.nodes)


def test_bad_layout_options():
    with pytest.raises(QJCError, match="power of two"):
        PagedLayout(block_size=12)
    with pytest.raises(QJCError, match="layout"):
        PagedLayout(order="hsbd")


def test_unknown_position_use_is_named(decoders):
    _, double = decoders
    g = double.copy()
    pos = next(v for v in g.inputs if v.name == "input_pos")
    extra = g.op("neg", pos)
    g.set_outputs(*g.outputs, extra)
    with pytest.raises(QJCError, match="input_pos is used by .*neg"):
        PassManager([PagedKVCache(PagedLayout())]).run(g, PassContext())
