"""Canonicalization rules: each removes a no-op or merges a chain without changing any result."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qjc.ir import Graph, TensorType, bf16, boolean, f8e4m3, f16, f32, f64, i8, i32, i64, u8
from qjc.ir.dtypes import PLAIN_DTYPES
from qjc.ir.interpreter import run
from qjc.ir.printer import print_graph
from qjc.passes.cleanup import Canonicalize
from qjc.passes.cleanup.canonicalize import casts_exactly
from qjc.passes.manager import PassContext, PassManager, VerifyInstrument


def _random_inputs(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for v in graph.inputs:
        dtype = v.type.dtype
        if dtype.is_float:
            out.append((rng.standard_normal(v.type.shape) * 10).astype(dtype.np_dtype))
        elif dtype == boolean:
            out.append(rng.random(v.type.shape) < 0.5)
        else:
            lo = 0 if dtype.kind == "uint" else -100
            out.append(rng.integers(lo, 100, v.type.shape).astype(dtype.np_dtype))
    return out


def canonicalize(graph: Graph) -> tuple[Graph, PassContext]:
    """Run the pass with verification and check results are bit-identical on random inputs."""
    before = graph.copy()
    ctx = PassContext(debug=0)
    after = PassManager([Canonicalize()], [VerifyInstrument()]).run(graph, ctx)
    rng = np.random.default_rng(0)
    for _ in range(2):
        inputs = _random_inputs(before, rng)
        for want, got in zip(run(before, inputs), run(after, inputs), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    return after, ctx


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def test_identity_is_removed_and_an_input_may_become_an_output() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    a = g.op("identity", g.op("identity", x))
    g.set_outputs(a, g.op("exp", a, name="e"))
    after, ctx = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f32[4]) {\n"
        "  %e: f32[4] = exp(%x)\n"
        "  return %x, %e\n"
        "}\n"
    )
    assert ctx.log == ["canonicalize: remove_identity x2"]


def test_cast_to_the_same_dtype_is_dropped_but_a_real_cast_stays() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    g.set_outputs(g.op("neg", g.op("cast", x, to=f32)), g.op("cast", x, to=f16, name="h"))
    after, _ = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f32[4]) {\n"
        "  %1: f32[4] = neg(%x)\n"
        "  %h: f16[4] = cast(%x) {to=f16}\n"
        "  return %1, %h\n"
        "}\n"
    )


def test_exact_cast_chains_merge_and_lossy_ones_stay() -> None:
    g = Graph()
    h = g.add_input("h", TensorType((8,), f16))
    q = g.add_input("q", TensorType((8,), i8))
    x = g.add_input("x", TensorType((8,), f32))
    widened = g.op("cast", g.op("cast", h, to=f32), to=f64, name="widened")  # f16 -> f64 exactly
    back = g.op("cast", g.op("cast", h, to=f32), to=f16, name="back")  # exact round trip: just h
    as_float = g.op("cast", g.op("cast", q, to=i32), to=f32, name="as_float")
    halved = g.op("cast", g.op("cast", x, to=f16, name="rounded"), to=f32, name="halved")  # rounds: stays
    g.set_outputs(widened, back, as_float, halved)
    after, ctx = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%h: f16[8], %q: i8[8], %x: f32[8]) {\n"
        "  %rounded: f16[8] = cast(%x) {to=f16}\n"
        "  %halved: f32[8] = cast(%rounded) {to=f32}\n"
        "  %widened: f64[8] = cast(%h) {to=f64}\n"
        "  %as_float: f32[8] = cast(%q) {to=f32}\n"
        "  return %widened, %h, %as_float, %halved\n"
        "}\n"
    )
    assert ctx.log == ["canonicalize: drop_noop_cast x1, merge_exact_cast_chain x3"]


def test_narrowing_then_widening_keeps_the_rounding() -> None:
    # 1 + 2^-12 is not an f16 value: the chain must still round it.
    g = Graph()
    x = g.add_input("x", TensorType((2,), f32))
    g.set_outputs(g.op("cast", g.op("cast", x, to=f16), to=f32))
    after, _ = canonicalize(g)
    assert _ops(after) == ["cast", "cast"]
    got = run(after, [np.array([1 + 2**-12, 3.0], np.float32)])[0]
    np.testing.assert_array_equal(got, np.array([1.0, 3.0], np.float32))


_ALL_BIT_PATTERNS = {8: np.arange(256, dtype=np.uint8), 16: np.arange(65536, dtype=np.uint16)}


def _every_value(dtype) -> np.ndarray:
    """Every value of a narrow type, or a spread of hard cases for a wide one."""
    if dtype == boolean:
        return np.array([False, True])
    if dtype.bits in _ALL_BIT_PATTERNS:
        return _ALL_BIT_PATTERNS[dtype.bits].view(dtype.np_dtype)
    rng = np.random.default_rng(3)
    if dtype.is_float:
        bits = rng.integers(0, 2**32, 100_000, dtype=np.uint32)
        return bits.view(np.float32) if dtype == f32 else bits.astype(np.uint64).view(np.float64)
    info = np.iinfo(dtype.np_dtype)
    edges = np.array([info.min, info.min + 1, -1, 0, 1, info.max - 1, info.max], dtype.np_dtype)
    return np.concatenate([edges, rng.integers(info.min, info.max, 100_000, dtype=dtype.np_dtype)])


@pytest.mark.parametrize("src", [d for d in PLAIN_DTYPES.values() if d != f64], ids=str)
def test_exact_widening_table_matches_numpy(src) -> None:
    """Every pair the table calls exact round-trips every value; some listed as lossy do not."""
    values = _every_value(src)
    checked = 0
    for dst in PLAIN_DTYPES.values():
        if not casts_exactly(src, dst) or dst == src:
            continue
        with np.errstate(all="ignore"):
            there = values.astype(dst.np_dtype)
            nan = np.isnan(values.astype(np.float64))
            # the same number on both sides (f64 holds every value of the sources in the table)...
            np.testing.assert_array_equal(there[~nan].astype(np.float64), values[~nan].astype(np.float64),
                                          err_msg=f"{src}->{dst}")
            # ...and NaN stays NaN
            assert np.isnan(there[nan].astype(np.float64)).all(), f"{src}->{dst} loses NaN"
        checked += 1
    assert checked > 0 or src in (i64,)


@pytest.mark.parametrize(("src", "dst"), [(f16, bf16), (bf16, f16), (f32, f16), (i32, f32), (i8, u8),
                                          (u8, i8), (i8, f8e4m3), (f16, i64), (i64, f64)], ids=str)
def test_lossy_casts_are_not_called_exact(src, dst) -> None:
    assert not casts_exactly(src, dst)
    values = _every_value(src)
    with np.errstate(all="ignore"):
        there = values.astype(dst.np_dtype)
        back = there.astype(src.np_dtype)
        finite = np.isfinite(values.astype(np.float64))
        changed_value = there[finite].astype(np.float64) != values[finite].astype(np.float64)
    # numpy agrees that something is lost: a value changes, or does not come back
    assert changed_value.any() or not np.array_equal(back[finite], values[finite])


def test_reshape_chains_merge_and_no_op_reshapes_go() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 4), f32))
    r1 = g.op("reshape", x, shape=(6, 4))
    r2 = g.op("reshape", r1, shape=(4, -1), name="r2")
    same = g.op("reshape", r2, shape=(4, 6))
    g.set_outputs(g.op("neg", same, name="n"), g.op("reshape", x, shape=(2, 3, 4)))
    after, ctx = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3,4]) {\n"
        "  %r2: f32[4,6] = reshape(%x) {shape=[4, -1]}\n"
        "  %n: f32[4,6] = neg(%r2)\n"
        "  return %n, %x\n"
        "}\n"
    )
    assert ctx.log == ["canonicalize: drop_noop_reshape x2, merge_double_reshape x1"]


@pytest.mark.parametrize(("p1", "p2", "merged"), [
    ((1, 0, 2), (0, 2, 1), "[1, 2, 0]"),
    ((2, 0, 1), (2, 0, 1), "[1, 2, 0]"),
    ((2, 0, 1), (1, 2, 0), None),  # inverse permutations: the pair is a no-op
    (None, (0, 2, 1), "[2, 0, 1]"),  # no perm reverses the axes
])
def test_transpose_pairs_merge_into_one(p1, p2, merged) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 4), f32))
    t = g.op("transpose", g.op("transpose", x, perm=p1), perm=p2, name="t")
    g.set_outputs(g.op("exp", t, name="e"))
    after, _ = canonicalize(g)
    if merged is None:
        assert _ops(after) == ["exp"] and after.nodes[0].inputs == after.inputs
    else:
        t_type = after.nodes[0].output.type
        assert print_graph(after) == (
            "graph main(%x: f32[2,3,4]) {\n"
            f"  %t: {t_type} = transpose(%x) {{perm={merged}}}\n"
            f"  %e: {t_type} = exp(%t)\n"
            "  return %e\n"
            "}\n"
        )


def test_identity_transpose_is_dropped() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f32))
    g.set_outputs(g.op("transpose", x, perm=(0, 1)), g.op("transpose", x))
    after, _ = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f32[2,3]) {\n"
        "  %1: f32[3,2] = transpose(%x) {perm=null}\n"
        "  return %x, %1\n"
        "}\n"
    )


def test_rules_reach_a_fixpoint_across_kinds() -> None:
    # identity between two transposes hides the pair until it is removed; then the pair cancels
    # and exposes a cast chain, which merges into a no-op cast, which goes too.
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), f16))
    c = g.op("cast", x, to=f32)
    t = g.op("transpose", g.op("identity", g.op("transpose", c)))
    g.set_outputs(g.op("cast", t, to=f16))
    after, _ = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f16[2,3]) {\n"
        "  return %x\n"
        "}\n"
    )


def test_fused_subgraphs_are_canonicalized_too() -> None:
    sub = Graph("group0")
    p = sub.add_input("p", TensorType((4,), f32))
    sub.set_outputs(sub.op("exp", sub.op("identity", p), name="r"))
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    (y,) = g.add_node("fused", [x], {"kind": "elementwise"}, subgraph=sub, names=["y"])
    g.set_outputs(g.op("identity", y))
    after, _ = canonicalize(g)
    assert print_graph(after) == (
        "graph main(%x: f32[4]) {\n"
        '  %y: f32[4] = fused(%x) {kind="elementwise", name=""} {\n'
        "    graph group0(%p: f32[4]) {\n"
        "      %r: f32[4] = exp(%p)\n"
        "      return %r\n"
        "    }\n"
        "  }\n"
        "  return %y\n"
        "}\n"
    )


def test_other_ops_are_left_alone() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), bf16))
    k = g.add_input("k", TensorType((2, 3), u8))
    g.set_outputs(g.op("add", x, x), g.op("cast", k, to=i64), g.op("cast", x, to=f32))
    text = print_graph(g)
    after, ctx = canonicalize(g)
    assert print_graph(after) == text and ctx.log == []


def test_f8_inputs_widen_exactly() -> None:
    values = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
    g = Graph()
    x = g.add_input("x", TensorType((256,), f8e4m3))
    g.set_outputs(g.op("cast", g.op("cast", x, to=bf16), to=f32))
    after, _ = canonicalize(g)
    assert _ops(after) == ["cast"]
    got = run(after, [values])[0]
    finite = ~np.isnan(values.astype(np.float32))
    np.testing.assert_array_equal(got[finite], values.astype(np.float64)[finite])


def test_dead_nodes_go_before_rules_look_at_them() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), f32))
    g.op("identity", g.op("exp", x))
    g.set_outputs(g.op("neg", x, name="n"))
    after, ctx = canonicalize(g)
    assert [n.op for n in after.nodes] == ["neg"] and ctx.log == []
