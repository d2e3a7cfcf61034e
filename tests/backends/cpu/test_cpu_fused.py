"""Every fused-group kind on the cpu backend (fused nodes written out as IR text, so this does not
depend on what the partitioner chooses), both through the whole-group kernels and op by op for
groups those kernels do not take: against the interpreter and a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_cases import assert_close, build_engine, erf, softmax64

from qjc.ir.interpreter import run
from qjc.ir.parser import parse_graph

_R = np.random.default_rng(31)
CONSTANTS = {
    "w": _R.standard_normal((24, 16)).astype(np.float32),
    "bias": _R.standard_normal(24).astype(np.float32),
    "g": _R.uniform(0.5, 1.5, 16).astype(np.float32),
    "beta": _R.standard_normal(16).astype(np.float32),
}

IR = """graph fused_kinds(%x: f32[n,4,16], %res: f32[n,4,16], %s: f32[n,4,1], %r24: f32[n,4,24], %qkv: f32[n,4,48], \
%cos: f32[4,16], %sin: f32[4,16], %gate: f32[n,4,24], %up: f32[n,4,24], %hq: f32[n,2,4,8]) {
  sym n: 1..8
  const %w: f32[24,16]
  const %bias: f32[24]
  const %g: f32[16]
  const %beta: f32[16]
  %e1: f32[n,4,16], %e2: f32[n,4,16] = fused(%x, %s, %beta) {kind="elementwise", name="elementwise_0"} {
    graph elementwise_0(%x: f32[n,4,16], %s: f32[n,4,1], %beta: f32[16]) {
      const %two: f32[] = 2.0
      %a: f32[n,4,1] = rsqrt(%s)
      %b: f32[n,4,16] = mul(%x, %a)
      %e1: f32[n,4,16] = add(%b, %beta)
      %c: f32[n,4,16] = mul(%e1, %two)
      %e2: f32[n,4,16] = exp(%c)
      return %e1, %e2
    }
  }
  %h: f32[n,4,16], %rms: f32[n,4,16] = fused(%x, %res, %g) {kind="rms_norm", name="rms_norm_0"} {
    graph rms_norm_0(%x: f32[n,4,16], %res: f32[n,4,16], %g: f32[16]) {
      %h: f32[n,4,16] = add(%x, %res)
      %rms: f32[n,4,16] = rms_norm(%h, %g) {axis=-1, eps=1e-06}
      return %h, %rms
    }
  }
  %ln: f32[n,4,16] = fused(%x, %res, %g, %beta) {kind="layer_norm", name="layer_norm_0"} {
    graph layer_norm_0(%x: f32[n,4,16], %res: f32[n,4,16], %g: f32[16], %beta: f32[16]) {
      %h: f32[n,4,16] = add(%x, %res)
      %ln: f32[n,4,16] = layer_norm(%h, %g, %beta) {axis=-1, eps=1e-05}
      return %ln
    }
  }
  %sm: f32[n,4,16] = fused(%x) {kind="softmax", name="softmax_0"} {
    graph softmax_0(%x: f32[n,4,16]) {
      const %scale: f32[] = 0.5
      %a: f32[n,4,16] = mul(%x, %scale)
      %sm: f32[n,4,16] = softmax(%a) {axis=-1}
      return %sm
    }
  }
  %mm: f32[n,4,24] = fused(%x, %w, %bias, %r24) {kind="gemm", name="gemm_0"} {
    graph gemm_0(%x: f32[n,4,16], %w: f32[24,16], %bias: f32[24], %r24: f32[n,4,24]) {
      %l: f32[n,4,24] = linear(%x, %w, %bias)
      %a: f32[n,4,24] = gelu(%l) {approximate="none"}
      %mm: f32[n,4,24] = add(%a, %r24)
      return %mm
    }
  }
  %att: f32[n,4,16] = fused(%qkv) {kind="attention", name="attention_0"} {
    graph attention_0(%qkv: f32[n,4,48]) {
      %q: f32[n,4,16], %k: f32[n,4,16], %v: f32[n,4,16] = split(%qkv) {axis=2, sizes=[16, 16, 16]}
      %q4: f32[n,4,2,8] = reshape(%q) {shape=[n, 4, 2, 8]}
      %qt: f32[n,2,4,8] = transpose(%q4) {perm=[0, 2, 1, 3]}
      %k4: f32[n,4,2,8] = reshape(%k) {shape=[n, 4, 2, 8]}
      %kt: f32[n,2,4,8] = transpose(%k4) {perm=[0, 2, 1, 3]}
      %v4: f32[n,4,2,8] = reshape(%v) {shape=[n, 4, 2, 8]}
      %vt: f32[n,2,4,8] = transpose(%v4) {perm=[0, 2, 1, 3]}
      %o: f32[n,2,4,8] = sdpa(%qt, %kt, %vt) {causal=true}
      %ot: f32[n,4,2,8] = transpose(%o) {perm=[0, 2, 1, 3]}
      %att: f32[n,4,16] = reshape(%ot) {shape=[n, 4, 16]}
      return %att
    }
  }
  %rope: f32[n,4,16] = fused(%x, %cos, %sin) {kind="rope", name="rope_0"} {
    graph rope_0(%x: f32[n,4,16], %cos: f32[4,16], %sin: f32[4,16]) {
      %a: f32[n,4,16] = mul(%x, %cos)
      %lo: f32[n,4,8] = slice(%x) {starts=[0], ends=[8], axes=[2], steps=[1]}
      %hi: f32[n,4,8] = slice(%x) {starts=[8], ends=[2147483647], axes=[2], steps=[1]}
      %nh: f32[n,4,8] = neg(%hi)
      %rot: f32[n,4,16] = concat(%nh, %lo) {axis=2}
      %b: f32[n,4,16] = mul(%rot, %sin)
      %rope: f32[n,4,16] = add(%a, %b)
      return %rope
    }
  }
  %sw: f32[n,4,24] = fused(%gate, %up) {kind="swiglu", name="swiglu_0"} {
    graph swiglu_0(%gate: f32[n,4,24], %up: f32[n,4,24]) {
      %a: f32[n,4,24] = silu(%gate)
      %sw: f32[n,4,24] = mul(%a, %up)
      return %sw
    }
  }
  %gg: f32[n,4,24] = fused(%gate, %up) {kind="geglu", name="geglu_0"} {
    graph geglu_0(%gate: f32[n,4,24], %up: f32[n,4,24]) {
      %a: f32[n,4,24] = gelu(%gate) {approximate="tanh"}
      %gg: f32[n,4,24] = mul(%a, %up)
      return %gg
    }
  }
  %l1: f32[n,4,24], %g1: f32[n,4,24] = fused(%x, %w) {kind="gemm", name="gemm_1"} {
    graph gemm_1(%x: f32[n,4,16], %w: f32[24,16]) {
      %l1: f32[n,4,24] = linear(%x, %w)
      %g1: f32[n,4,24] = gelu(%l1) {approximate="tanh"}
      return %l1, %g1
    }
  }
  %att1: f32[n,2,4,8] = fused(%hq) {kind="attention", name="attention_1"} {
    graph attention_1(%hq: f32[n,2,4,8]) {
      %att1: f32[n,2,4,8] = sdpa(%hq, %hq, %hq) {causal=false, scale=0.5}
      return %att1
    }
  }
  %rms1: f32[n,4,16] = fused(%x, %g) {kind="rms_norm", name="rms_norm_1"} {
    graph rms_norm_1(%x: f32[n,4,16], %g: f32[16]) {
      const %half: f32[] = 0.5
      %r: f32[n,4,16] = rms_norm(%x, %g) {axis=-1, eps=1e-06}
      %rms1: f32[n,4,16] = mul(%r, %half)
      return %rms1
    }
  }
  return %e1, %e2, %h, %rms, %ln, %sm, %mm, %att, %rope, %sw, %gg, %l1, %g1, %att1, %rms1
}
"""


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _causal_attention(qkv: np.ndarray) -> np.ndarray:
    n = qkv.shape[0]
    q, k, v = (qkv[..., i * 16:(i + 1) * 16].reshape(n, 4, 2, 8).transpose(0, 2, 1, 3) for i in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    logits = np.where(np.tril(np.ones((4, 4), bool)), logits, -np.inf)
    o = softmax64(logits, -1) @ v
    return o.transpose(0, 2, 1, 3).reshape(n, 4, 16)


def references(i: dict[str, np.ndarray]) -> list[np.ndarray]:
    x, res = i["x"].astype(np.float64), i["res"].astype(np.float64)
    e1 = x / np.sqrt(i["s"]) + CONSTANTS["beta"]
    h = x + res
    centered = h - h.mean(-1, keepdims=True)
    ln = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5) * CONSTANTS["g"] + CONSTANTS["beta"]
    gate, up = i["gate"].astype(np.float64), i["up"].astype(np.float64)
    rot = np.concatenate([-x[..., 8:], x[..., :8]], -1)
    lin1 = x @ CONSTANTS["w"].T.astype(np.float64)
    hq = i["hq"].astype(np.float64)
    tanh_gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    return [
        e1, np.exp(2 * e1), h, h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6) * CONSTANTS["g"], ln,
        softmax64(x * 0.5, -1),
        _gelu(x @ CONSTANTS["w"].T.astype(np.float64) + CONSTANTS["bias"]) + i["r24"],
        _causal_attention(i["qkv"].astype(np.float64)),
        x * i["cos"] + rot * i["sin"],
        gate / (1 + np.exp(-gate)) * up,
        tanh_gelu * up,
        lin1,
        0.5 * lin1 * (1 + np.tanh(np.sqrt(2 / np.pi) * (lin1 + 0.044715 * lin1**3))),
        softmax64(hq @ hq.transpose(0, 1, 3, 2) * 0.5, -1) @ hq,
        0.5 * x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * CONSTANTS["g"],
    ]


NAMES = ["elementwise", "elementwise_exp", "rms_norm_residual", "rms_norm", "layer_norm", "softmax", "gemm",
         "attention", "rope", "swiglu", "geglu",
         # groups the whole-group kernels do not take, translated op by op
         "gemm_two_results", "gemm_two_results_gelu", "attention_plain_layout", "rms_norm_with_epilogue"]


def make_inputs(graph, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for v in graph.inputs:
        shape = v.type.concrete({"n": n})
        a = rng.standard_normal(shape).astype(np.float32)
        out.append(np.abs(a) + 0.5 if v.name == "s" else a)
    return out


@pytest.fixture(scope="module")
def fused_runs(tmp_path_factory):
    graph = parse_graph(IR, constants=CONSTANTS)
    engine = build_engine(graph, tmp_path_factory.mktemp("cpu_fused") / "fused.qjc")
    rng = np.random.default_rng(8)
    runs = []
    for n in (1, 3):
        args = make_inputs(graph, n, rng)
        named = {v.name: a for v, a in zip(graph.inputs, args)}
        runs.append((n, engine(*args), run(graph, args), references(named)))
    return runs


@pytest.mark.parametrize("k", range(len(NAMES)), ids=NAMES)
def test_fused_kind_matches_interpreter_and_reference(fused_runs, k: int) -> None:
    for n, got, interp, refs in fused_runs:
        assert_close(got[k], interp[k], "reduction", f"{NAMES[k]} at n={n} vs interpreter")
        assert_close(got[k], refs[k], "reduction", f"{NAMES[k]} at n={n} vs reference")


def test_whole_group_kernels_are_the_ones_used():
    """The numbers above match op by op too; this checks the groups the kernels take do get them:
    two GEMM groups (epilogues), two attention groups and two norms (one rms_norm stays op by op)."""
    import re
    from collections import Counter

    from qjc.backends.cpu.translate import KernelConfig, translate
    from qjc.backends.cpu.tvm_env import make_target

    mod, _, _ = translate(parse_graph(IR, constants=CONSTANTS), KernelConfig.for_target(make_target("x86-64-v3")))
    kinds = Counter(m.group(1) for gv in mod.get_global_vars() if (m := re.fullmatch(r"(gemm|sdpa|norm)\d+",
                                                                                         gv.name_hint)))
    assert kinds == {"gemm": 2, "sdpa": 2, "norm": 2}
