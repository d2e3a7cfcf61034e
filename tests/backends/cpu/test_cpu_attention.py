"""sdpa on the cpu backend's attention kernel: grouped-query heads, bottom-right causal with fewer
queries than keys, bool and additive masks (broadcast, with -inf entries), fully masked rows, a
custom scale and a value dim unlike the key dim; against the interpreter and a float64 reference,
at three (query, key) lengths with one build."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cpu_cases import Case, assert_close, build_case_graph, build_engine

from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import boolean, f32
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType

S, T = SymExpr.symbol("s"), SymExpr.symbol("t")
INPUTS = {
    "q": TensorType((2, 4, S, 16), f32),
    "k": TensorType((2, 2, T, 16), f32),
    "v": TensorType((2, 2, T, 8), f32),
    "mb": TensorType((2, 1, S, T), boolean),
    "ma": TensorType((S, T), f32),
    "qs": TensorType((1, 3, S, 24), f32),  # no GQA, one batch, head dim 24
    "ks": TensorType((1, 3, T, 24), f32),
    "vs": TensorType((1, 3, T, 40), f32),
}
LENGTHS = ((3, 7), (5, 5), (1, 9))


def attention64(q, k, v, mask=None, causal=False, scale=None) -> np.ndarray:
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(0, 1, 3, 2) * scale
    sq, sk = logits.shape[-2:]
    allowed = np.ones(logits.shape, bool)
    if causal:
        allowed &= np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
    if mask is not None and mask.dtype == bool:
        allowed &= mask
    elif mask is not None:
        logits = logits + mask
    logits = np.where(allowed, logits, -np.inf)
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for idx in np.ndindex(*logits.shape[:-1]):
        row = logits[idx]
        if not np.isfinite(row).any():
            continue  # nothing to attend to: zeros
        w = np.exp(row - row.max())
        out[idx] = (w / w.sum()) @ v[idx[:2]]
    return out


def sdpa(name, *ins, ref_mask=None, **attrs) -> Case:
    def make(g, v):
        return g.op("sdpa", *(v[n] for n in ins), **attrs)

    def ref(i):
        mask = None if len(ins) == 3 else i[ins[3]]
        return attention64(i[ins[0]], i[ins[1]], i[ins[2]], mask, attrs.get("causal", False), attrs.get("scale"))

    return Case(name, make, ref, "reduction")


CASES = [
    sdpa("gqa", "q", "k", "v"),
    sdpa("causal", "q", "k", "v", causal=True),
    sdpa("bool_mask", "q", "k", "v", "mb"),
    sdpa("additive_mask", "q", "k", "v", "ma", scale=0.3),
    sdpa("causal_bool_mask", "q", "k", "v", "mb", causal=True),
    sdpa("mha_dims", "qs", "ks", "vs", causal=True),
]


def make_inputs(s: int, t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    mb = rng.random((2, 1, s, t)) < 0.6
    mb[0, 0, 0] = False  # one row with nothing to attend to
    ma = rng.standard_normal((s, t)).astype(np.float32)
    ma[rng.random((s, t)) < 0.2] = -np.inf
    return {
        "q": rng.standard_normal((2, 4, s, 16)).astype(np.float32),
        "k": rng.standard_normal((2, 2, t, 16)).astype(np.float32),
        "v": rng.standard_normal((2, 2, t, 8)).astype(np.float32),
        "mb": mb, "ma": ma,
        "qs": rng.standard_normal((1, 3, s, 24)).astype(np.float32),
        "ks": rng.standard_normal((1, 3, t, 24)).astype(np.float32),
        "vs": rng.standard_normal((1, 3, t, 40)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def attention_runs(tmp_path_factory):
    graph, where = build_case_graph("attention", INPUTS, CASES, {"s": (1, 16), "t": (1, 16)})
    engine = build_engine(graph, tmp_path_factory.mktemp("cpu_attention") / "attention.qjc")
    rng = np.random.default_rng(99)
    runs = []
    for s, t in LENGTHS:
        inputs = make_inputs(s, t, rng)
        args = [inputs[k] for k in INPUTS]
        runs.append(((s, t), inputs, engine(*args), run(graph, args)))
    return where, runs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sdpa_matches_interpreter_and_reference(attention_runs, case: Case) -> None:
    where, runs = attention_runs
    for (s, t), inputs, got, interp in runs:
        g, i = got[where[case.name]][0], interp[where[case.name]][0]
        what = f"{case.name} at s={s}, t={t}"
        assert np.isfinite(g).all(), f"{what}: non-finite outputs"
        assert_close(g, i, case.tol, f"{what} vs interpreter")
        assert_close(g, case.ref(inputs), case.tol, f"{what} vs reference")


def test_fully_masked_rows_are_zero(attention_runs) -> None:
    where, runs = attention_runs
    for _, _, got, _ in runs:
        out = got[where["bool_mask"]][0]
        assert not out[0, :2, 0].any()  # batch 0, both query heads of kv head 0, query row 0
