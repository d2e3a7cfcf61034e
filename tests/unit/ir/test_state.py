"""State inputs (a KV cache): the trailing outputs carry their new contents."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.errors import IRParseError, VerifyError
from qjc.ir import Graph, TensorType, f32, i64
from qjc.ir.interpreter import run
from qjc.ir.parser import parse_graph
from qjc.ir.testing import assert_roundtrip
from qjc.ir.verifier import verify


def _cache_graph() -> Graph:
    g = Graph("step")
    cache = g.add_input("cache", TensorType((4, 3), f32))
    x = g.add_input("x", TensorType((1, 3), f32))
    pos = g.add_input("pos", TensorType((1,), i64))
    # new cache = cache with row `pos` replaced by x: where(iota == pos, x, cache)
    rows = g.op("unsqueeze", g.op("iota", shape=[4]), axes=[1])
    hit = g.op("eq", rows, g.op("unsqueeze", pos, axes=[1]))
    new = g.op("where", hit, x, cache)
    g.set_outputs(g.op("sum", new, axes=[0]), new)
    g.state = ["cache"]
    return g


def test_state_round_trips_and_runs():
    g = _cache_graph()
    verify(g)
    assert "  state %cache\n" in str(g)
    assert_roundtrip(g)
    [(inp, new)] = g.state_updates()
    assert inp.name == "cache" and new is g.outputs[-1]
    cache = np.zeros((4, 3), np.float32)
    rng = np.random.default_rng(0)
    rows = []
    for step in range(3):  # the caller feeds each new state back in, as a runtime does
        x = rng.standard_normal((1, 3)).astype(np.float32)
        rows.append(x[0])
        total, cache = run(g, [cache, x, np.array([step])])
        np.testing.assert_allclose(total, np.sum(rows, axis=0), rtol=1e-6)


def test_state_type_mismatch_is_reported():
    g = _cache_graph()
    g.outputs = [g.outputs[1], g.outputs[0]]  # the sum now sits where the cache update should
    with pytest.raises(VerifyError, match="state %cache"):
        verify(g)


def test_state_of_unknown_input_is_a_parse_error():
    text = str(_cache_graph()).replace("state %cache", "state %nope")
    with pytest.raises(IRParseError, match="not an input"):
        parse_graph(text)
