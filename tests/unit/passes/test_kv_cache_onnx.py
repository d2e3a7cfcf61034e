"""The past/present KV-cache pass on the interpreter: a tiny Llama exported to ONNX with
past_key_values, made paged, computes what onnxruntime computes on the original model (past and
present threaded by hand), for a prompt plus decode steps, with two sequences of different lengths
sharing one pool through scattered, interleaved blocks."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import padded_prefill
from greedy import assert_greedy_matches, top2_gap

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.interpreter import run
from qjc.ir.verifier import verify
from qjc.passes.cleanup.canonicalize import Canonicalize
from qjc.passes.cleanup.cse import CommonSubexpressionElimination
from qjc.passes.cleanup.dce import DeadCodeElimination
from qjc.passes.cleanup.fold import ConstantFolding
from qjc.passes.fusion import RecognizeDecomposed
from qjc.passes.kv_cache import PagedLayout
from qjc.passes.kv_cache_onnx import PagedKVCacheONNX
from qjc.passes.manager import PassContext, PassManager

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")  # torch.onnx.export(dynamo=True) needs it

LAYERS, KV_HEADS, HEAD_DIM, VOCAB, MAX_SEQ = 2, 2, 8, 64, 24
PAST_NAMES = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]


def _export_llama(path: str, seed: int) -> None:
    """A random 2-layer GQA Llama (4 query / 2 kv heads, hidden 32) as ONNX with past/present pairs.
    Eager attention: its matmul/softmax/matmul is what RecognizeDecomposed turns into sdpa."""
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=KV_HEADS,
                                   hidden_size=32, intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=64)
    cfg._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights large enough that attention is far from uniform
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=cfg)
            for i in range(LAYERS):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            layers = out.past_key_values.layers
            return (out.logits, *[t for layer in layers for t in (layer.keys, layer.values)])

    b, s, p = 2, 3, 4
    past = [torch.randn(b, KV_HEADS, p, HEAD_DIM) for _ in PAST_NAMES]
    args = (torch.randint(0, VOCAB, (b, s)), torch.ones(b, p + s, dtype=torch.int64),
            torch.arange(p, p + s)[None].expand(b, s), *past)
    batch, seq, past_len = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: torch.export.Dim("total")},
              "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in PAST_NAMES)}
    outputs = ["logits"] + [n.replace("past_key_values", "present") for n in PAST_NAMES]
    program = torch.onnx.export(Decoder().eval(), args, dynamo=True, dynamic_shapes=shapes, verbose=False,
                                input_names=["input_ids", "attention_mask", "position_ids", *PAST_NAMES],
                                output_names=outputs)
    program.save(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx_kv") / "llama_past_present.onnx")
    _export_llama(path, int(np.random.default_rng().integers(1 << 30)))
    return path


def _imported(path_or_proto, ranges: dict | None = None) -> Graph:
    """The graph as the standard pipeline has it when the pass runs: cleaned, attention as sdpa. ``ranges``
    of its dims: a range of one value makes the dim static (and constant folding evaluates what it sizes)."""
    from qjc.frontends.onnx import from_onnx

    passes = [Canonicalize(), ConstantFolding(), Canonicalize(), CommonSubexpressionElimination(),
              DeadCodeElimination(), RecognizeDecomposed()]
    return PassManager(passes).run(from_onnx(path_or_proto, ranges=ranges), PassContext())


def _reference(session, prompt: list[int], follow: list[int]) -> list[np.ndarray]:
    """onnxruntime on one sequence: logits of the prompt's tokens, then of each following token."""
    past = {n: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for n in PAST_NAMES}
    out, done = [], 0
    for chunk in [prompt] + [[t] for t in follow]:
        feeds = {"input_ids": np.asarray([chunk], np.int64),
                 "attention_mask": np.ones((1, done + len(chunk)), np.int64),
                 "position_ids": np.arange(done, done + len(chunk), dtype=np.int64)[None], **past}
        logits, *present = session.run(None, feeds)
        past = dict(zip(PAST_NAMES, present))
        out.append(logits[0])
        done += len(chunk)
    return out


@pytest.mark.parametrize("order,batch", [("bhsd", None), ("bshd", None), ("bhsd", 2)])
def test_paged_matches_onnxruntime_for_different_lengths(model_path, order, batch):
    """Dynamic batch, and a static one: there constant folding turns the mask's batch iota into a constant,
    which the proof reads as the same range; the token ids become ``tokens``, the native loop's name."""
    ranges = {"batch": (batch, batch)} if batch else None
    ctx = PassContext(options={"max_seq": MAX_SEQ})
    paged = PassManager([PagedKVCacheONNX(PagedLayout(block_size=4, num_blocks=16, order=order))]).run(
        _imported(model_path, ranges), ctx)
    names = [v.name for v in paged.inputs]
    tokens = "tokens" if batch else "input_ids"
    assert names[:3] == [tokens, "positions", "block_table"] and len(names) == 3 + len(PAST_NAMES)
    llm = paged.meta.get("llm")
    if batch:
        assert llm["batch"] == batch and llm["vocab_size"] == VOCAB and llm["num_layers"] == LAYERS
        assert llm["kv_cache"]["layout"] == "paged" and llm["kv_cache"]["kv_heads"] == KV_HEADS
    else:
        assert llm is None and any("no native generation loop: batch" in n for n in ctx.log)
    assert paged.state == names[3:] and len(paged.outputs) == 1 + len(PAST_NAMES)
    assert not any(n.op in ("sdpa", "concat") and n.inputs[0].name.startswith("past") for n in paged.nodes)
    assert sum(n.op == "paged_attention" for n in paged.nodes) == LAYERS

    rng = np.random.default_rng()
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    prompts = [list(rng.integers(0, VOCAB, 7)), list(rng.integers(0, VOCAB, 3))]
    steps = 5
    follow = [list(rng.integers(0, VOCAB, steps)) for _ in prompts]
    want = [_reference(session, p, f) for p, f in zip(prompts, follow)]

    # scattered, interleaved blocks: sequence 0 gets odd blocks backwards, sequence 1 even ones
    table = np.asarray([[15, 13, 11, 9, 7, 5], [0, 2, 4, 6, 8, 10]], np.int32)
    pools = [np.zeros(tuple(v.type.shape), np.float32) for v in paged.inputs[3:]]
    # prefill both in one call, the shorter prompt padded with position -1
    tokens, positions = padded_prefill(prompts)
    for step in range(steps + 1):
        logits, *pools = run(paged, [tokens, positions, table, *pools])
        for b, p in enumerate(prompts):
            rows = logits[b, : len(p)] if step == 0 else logits[b, :1]
            ref = want[b][step]
            np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        if step < steps:
            tokens = np.asarray([[f[step]] for f in follow], np.int64)
            positions = np.asarray([[len(p) + step] for p in prompts], np.int64)


def _tampered(path: str, edit) -> Graph:
    proto = onnx.load(path)
    node = next(n for n in proto.graph.node if n.op_type == "LessOrEqual")
    edit(node)
    return _imported(proto)


def _strict(node) -> None:
    node.op_type = "Less"  # key < query: a query no longer sees itself


def _anti_causal(node) -> None:
    node.input[0], node.input[1] = node.input[1], node.input[0]


@pytest.mark.parametrize("edit", [_strict, _anti_causal])
def test_mask_that_is_not_causal_is_refused_naming_the_node(model_path, edit):
    g = _tampered(model_path, edit)
    mask_node = next(n for n in g.nodes if n.op in ("lt", "le"))
    with pytest.raises(QJCError, match="not provably causal") as info:
        PagedKVCacheONNX(PagedLayout(), max_seq=MAX_SEQ, strict=True).run(g, PassContext())
    assert f"%{mask_node.outputs[0].name} = {mask_node.op}" in str(info.value)
    assert "sdpa" in str(info.value)
    # the pipeline's lenient instance leaves the graph as it was and says why
    before = [v.name for v in g.inputs]
    ctx = PassContext()
    kept = PagedKVCacheONNX(PagedLayout(), max_seq=MAX_SEQ).run(g, ctx)
    assert kept is g and [v.name for v in kept.inputs] == before
    assert any("caches left unpaged" in n and f"%{mask_node.outputs[0].name}" in n for n in ctx.log)


def test_mask_with_an_unknown_op_is_refused_naming_it(model_path):
    g = _imported(model_path)
    cond = next(n for n in g.nodes if n.op == "where" and n.outputs[0].type.dtype.is_float)
    flipped = g.op("logical_not", g.op("logical_not", cond.inputs[0]))  # the same mask, beyond the proof
    cond.inputs[0] = flipped
    g.toposort()
    with pytest.raises(QJCError, match=f"%{flipped.name} = logical_not"):
        PagedKVCacheONNX(PagedLayout(), max_seq=MAX_SEQ, strict=True).run(g, PassContext())


def test_missing_max_seq_is_a_clear_error(model_path):
    with pytest.raises(QJCError, match="max_seq option"):
        PagedKVCacheONNX(PagedLayout(), strict=True).run(_imported(model_path), PassContext())


def test_dynamic_batch_needs_a_pool_size(model_path):
    with pytest.raises(QJCError, match="kv_blocks"):
        PagedKVCacheONNX(PagedLayout(), max_seq=MAX_SEQ, strict=True).run(_imported(model_path), PassContext())
    g = PagedKVCacheONNX(PagedLayout(block_size=8), max_seq=MAX_SEQ).run(
        _imported(model_path), PassContext(options={"batch": 3}))
    assert tuple(g.inputs[3].type.shape) == (3 * 3, KV_HEADS, 8, HEAD_DIM)  # every row can reach max_seq


def test_contiguous_targets_keep_past_and_present(model_path):
    g = PagedKVCacheONNX().run(_imported(model_path), PassContext(options={"max_seq": MAX_SEQ}))
    assert [v.name for v in g.inputs][3:] == PAST_NAMES


def _position_masked_attention(past: int, seq: int, pos_dtype: str = "i64", first_query_only: bool = False,
                               presents: bool = True) -> Graph:
    """One attention layer whose mask is key <= position_ids[b, q] (not the cache index). Variants:
    positions in i32 with one more use (as a rotary embedding would have); a mask that reads only the
    first query's position for every query (not causal); k / v concatenated with inputs that are not
    returned (an encoder's memory tokens, not a cache)."""
    from qjc.ir import TensorType
    from qjc.ir.dtypes import parse_dtype

    f32, i64 = parse_dtype("f32"), parse_dtype("i64")
    g = Graph("position_masked")
    q = g.add_input("q", TensorType((1, 4, seq, HEAD_DIM), f32))
    new = [g.add_input(n, TensorType((1, KV_HEADS, seq, HEAD_DIM), f32)) for n in ("k", "v")]
    pos = g.add_input("position_ids", TensorType((1, seq), parse_dtype(pos_dtype)))
    pasts = [g.add_input(n, TensorType((1, KV_HEADS, past, HEAD_DIM), f32)) for n in PAST_NAMES[:2]]
    k, v = (g.op("concat", p, x, axis=2) for p, x in zip(pasts, new))
    keys = g.op("unsqueeze", g.op("iota", shape=[past + seq], dtype=i64), axes=[0, 1, 2])
    query_pos = g.op("cast", pos, to="i64")
    if first_query_only:
        query_pos = g.op("expand", g.op("slice", query_pos, starts=[0], ends=[1], axes=[1]), shape=[1, seq])
    visible = g.op("le", keys, g.op("unsqueeze", query_pos, axes=[1, 3]))
    mask = g.op("where", visible, g.add_constant("zero", np.asarray(0, np.float32)),
                    g.add_constant("fill", np.asarray(-1e9, np.float32)))
    out = g.op("sdpa", q, k, v, mask, scale=0.5)
    if pos_dtype == "i32":  # another reader of the positions, in their own dtype
        shifted = g.op("cast", g.op("add", pos, g.add_constant("one", np.asarray(1, np.int32))), to="f32")
        out = g.op("mul", out, g.op("unsqueeze", shifted, axes=[1, 3]))
    g.set_outputs(out, k, v) if presents else g.set_outputs(out)
    return g


def test_a_mask_reading_one_query_position_for_all_is_not_causal():
    g = _position_masked_attention(4, 2, first_query_only=True)
    with pytest.raises(QJCError, match="not provably causal"):
        PagedKVCacheONNX(PagedLayout(block_size=2, num_blocks=5), max_seq=8, strict=True).run(g.copy(), PassContext())


def test_inputs_concatenated_into_an_attention_without_presents_are_no_cache():
    g = _position_masked_attention(4, 2, presents=False)
    before = [v.name for v in g.inputs]
    kept = PagedKVCacheONNX(PagedLayout(block_size=2, num_blocks=5), max_seq=8, strict=True).run(g, PassContext())
    assert [v.name for v in kept.inputs] == before


@pytest.mark.parametrize("pos_dtype", ["i64", "i32"])
def test_mask_by_position_ids_is_proven_and_paged(pos_dtype):
    rng = np.random.default_rng()
    past, seq = 4, 2
    original = _position_masked_attention(past, seq, pos_dtype)
    paged = PagedKVCacheONNX(PagedLayout(block_size=2, num_blocks=5), max_seq=8, strict=True).run(
        original.copy(), PassContext())
    verify(paged)
    assert [v.name for v in paged.inputs[:5]] == ["q", "k", "v", "positions", "block_table"]
    table = np.asarray([[4, 1, 3, 0]], np.int32)
    kv = [rng.standard_normal((1, KV_HEADS, past + seq, HEAD_DIM)).astype(np.float32) for _ in range(2)]
    pools = [np.zeros(tuple(t.type.shape), np.float32) for t in paged.inputs[5:]]
    for start in range(0, past + seq, seq):  # fill the pool as the past, then the step that is compared
        q = rng.standard_normal((1, 4, seq, HEAD_DIM)).astype(np.float32)
        part = [x[:, :, start: start + seq] for x in kv]
        positions = np.arange(start, start + seq)[None].astype(np.dtype(pos_dtype.replace("i", "int")))
        got, *pools = run(paged, [q, *part, positions, table, *pools])
    want = run(original, [q, *part, positions, kv[0][:, :, :past], kv[1][:, :, :past]])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_paged_onnx_decoder_builds_for_cuda(model_path, tmp_path):
    """Through the standard pipeline for cuda: past/present become the paged pool, the exporter's RMSNorm
    spelling is recognized (no lone reductions left), and the kernels plan and compile."""
    import json

    from qjc.api import build
    from qjc.backends.cuda.nvcc import find_nvcc

    if find_nvcc() is None:
        pytest.skip("nvcc is not installed")
    out = tmp_path / "onnx_decoder.qjc"
    result = build(model_path, out, target="cuda", archs=("sm_90a",), dtype="bf16", max_seq=MAX_SEQ, batch=2)
    assert any(n.startswith("kv_cache_onnx: 2 attention layer(s)") for n in result.notes)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == [f"{kv}_pool_{i}" for i in range(LAYERS) for kv in ("k", "v")]
    assert not any(name.startswith("past_key_values") for name in (s["name"] for s in manifest["signature"]["inputs"]))
    kinds = manifest["backend"]["kernel_kinds"]
    # the cache writes run inside the attention kernels (one launch less per layer)
    assert kinds.get("paged_attention") and "paged_kv_write" not in kinds and "row_reduce" not in kinds
    assert manifest["llm"] is None  # a dynamic batch: no native generation loop
    # a fixed batch: the decoder gets the native generation loop (its C ABI in the host engine)
    fixed = tmp_path / "fixed.qjc"
    build(model_path, fixed, target="cuda", archs=("sm_90a",), dtype="bf16", max_seq=MAX_SEQ, dims={"batch": (2, 2)})
    manifest = json.loads((fixed / "manifest.json").read_text())
    assert manifest["llm"]["batch"] == 2 and manifest["llm"]["kv_cache"]["inputs"] == ["tokens", "positions",
                                                                                       "block_table"]
    assert [s["name"] for s in manifest["signature"]["inputs"]][:3] == ["tokens", "positions", "block_table"]
    assert "qjc_llm_add" in (fixed / "cuda" / "src" / "host_engine.cpp").read_text()
    from qjc.verify import verify_against

    with pytest.raises(QJCError, match="does not translate"):  # not a comparison of unrelated inputs
        verify_against(str(fixed), model_path)


def _greedy_reference(session, prompt: list[int], new: int) -> tuple[list[int], list[float]]:
    """onnxruntime's greedy tokens, past and present threaded by hand, and its top-2 logit gap per step."""
    past = {n: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for n in PAST_NAMES}
    step, done, out, gaps = list(prompt), 0, [], []
    for _ in range(new):
        feeds = {"input_ids": np.asarray([step], np.int64), "attention_mask": np.ones((1, done + len(step)), np.int64),
                 "position_ids": np.arange(done, done + len(step), dtype=np.int64)[None], **past}
        logits, *present = session.run(None, feeds)
        past = dict(zip(PAST_NAMES, present))
        done += len(step)
        step = [int(np.argmax(logits[0, -1]))]
        out.append(step[0])
        gaps.append(top2_gap(logits[0, -1]))
    return out, gaps


def _check_batch(got: list[list[int]], refs: list[tuple[list[int], list[float]]]) -> None:
    assert len(got) == len(refs)
    for k, (tokens, (want, gaps)) in enumerate(zip(got, refs)):
        assert_greedy_matches(tokens, want, gaps, what=f"prompt {k}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available (torch.cuda.is_available() is False)")
def test_native_generation_of_an_onnx_decoder_on_cuda(model_path, tmp_path):
    """With a fixed batch the paged ONNX decoder runs the native generation loop: three requests through two
    slots give onnxruntime's greedy tokens, as does each prompt alone."""
    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    arch = arch_of_capability(*torch.cuda.get_device_capability())
    engine = qjc.compile(model_path, target="cuda", archs=(arch,), dtype="fp32", max_seq=MAX_SEQ,
                         dims={"batch": (2, 2)}, out_dir=tmp_path / "dec.qjc")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng()
    prompts = [[int(t) for t in rng.integers(0, VOCAB, n)] for n in (5, 1, 9)]
    refs = [_greedy_reference(session, p, 8) for p in prompts]
    _check_batch(engine.generate(prompts, max_new_tokens=8, stop_ids=[]), refs)
    assert_greedy_matches(engine.generate(prompts[2], max_new_tokens=8, stop_ids=[]), *refs[2])


def test_generate_on_cpu_feeds_presents_back_as_pasts(model_path, tmp_path):
    """An ONNX past/present decoder compiled for cpu (which keeps its caches as inputs and outputs) generates
    through the host loop of qjc/runtime/past_present.py: the same greedy tokens as onnxruntime, a list of
    prompts, stop tokens, and clear errors for a past range that excludes the empty first step and for text."""
    import qjc
    from qjc.cli import main

    pytest.importorskip("tvm")
    rng = np.random.default_rng()
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    engine = qjc.compile(model_path, target="cpu", dims={"past": (0, MAX_SEQ)}, out_dir=tmp_path / "dec.qjc")
    prompts = [[int(t) for t in rng.integers(0, VOCAB, n)] for n in (5, 1)]
    refs = [_greedy_reference(session, p, 8) for p in prompts]
    want, gaps = refs[0]
    assert_greedy_matches(engine.generate(prompts[0], max_new_tokens=8), want, gaps)
    _check_batch(engine.generate(prompts, max_new_tokens=8), refs)
    stop = want[2]
    upto = want.index(stop) + 1
    assert_greedy_matches(engine.generate(prompts[0], max_new_tokens=8, stop_ids=[stop]), want[:upto], gaps[:upto])
    # the longest request that fits: its last step reads a past of exactly MAX_SEQ positions
    most = MAX_SEQ - len(prompts[0]) + 2
    assert_greedy_matches(engine.generate(prompts[0], max_new_tokens=most, stop_ids=[]),
                          *_greedy_reference(session, prompts[0], most))
    with pytest.raises(QJCError, match="exceeds the past length"):
        engine.generate(prompts[0], max_new_tokens=most + 1)
    with pytest.raises(QJCError, match="no tokenizer"):
        engine.generate("hello")
    # a range of one value makes the dim static: the batch fixed at 1
    fixed = qjc.compile(model_path, target="cpu", dims={"past": (0, MAX_SEQ), "batch": (1, 1)},
                        out_dir=tmp_path / "fixed.qjc")
    assert [s.shape[0] for s in fixed.signature.inputs] == [1] * len(fixed.signature.inputs)
    assert "batch" not in fixed.signature.symbol_ranges
    assert_greedy_matches(fixed.generate(prompts[1], max_new_tokens=8), *refs[1])
    pair = qjc.compile(model_path, target="cpu", dims={"past": (0, MAX_SEQ), "batch": (2, 2)})
    with pytest.raises(QJCError, match="batch of 2"):
        pair.generate(prompts[1], max_new_tokens=2)
    # without a range for the past length its first value is 1: the error says how to compile instead
    default = qjc.compile(model_path, target="cpu", out_dir=tmp_path / "default.qjc")
    with pytest.raises(QJCError, match=r"--dim past=0:N"):
        default.generate(prompts[0], max_new_tokens=2)
    # the command line takes the same range
    assert main(["compile", model_path, "--target", "cpu", "--dim", "past=0:16", "-o", str(tmp_path / "cli.qjc")]) == 0
    assert qjc.load(tmp_path / "cli.qjc").signature.symbol_ranges["past"] == (0, 16)
    assert main(["compile", model_path, "--target", "cpu", "--dim", "past=0", "-o", str(tmp_path / "bad")]) == 1
    assert main(["generate", str(tmp_path / "cli.qjc"), "--prompt", "hi"]) == 1  # no tokenizer: says to pass ids
    with pytest.raises(QJCError, match="apply to ONNX models"):
        qjc.compile(Graph(), target="cpu", dims={"n": (0, 4)})
    with pytest.raises(QJCError, match="0 <= lo <= hi"):
        qjc.compile(model_path, target="cpu", dims={"past": (5, 1)})
    with pytest.raises(QJCError, match="no input has a symbolic dim named pats"):  # a typo is not ignored
        qjc.compile(model_path, target="cpu", dims={"pats": (0, 16)})
