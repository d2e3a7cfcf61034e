"""Shape ops: type inference (symbolic dims included) and interpreter results against torch.

Shape ops move data without arithmetic, so results are compared bit for bit: the torch reference
runs on the raw bits of each element (bf16 as int16, f32 as int32), which also checks that nothing
on the way widens or rounds the data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qjc.errors import IRError
from qjc.ir import Graph, SymExpr, TensorType, bf16, boolean, f16, f32, i32, i64
from qjc.ir.interpreter import evaluate_node, run

try:
    from qjc.ir.testing import assert_roundtrip
except ImportError:  # the printer lands separately; the numeric checks stand alone
    def assert_roundtrip(graph, constants=None, inputs=None):
        return None

DTYPES = [f32, f16, bf16, i64]
_BITS = {"f32": np.int32, "f16": np.int16, "bf16": np.int16, "i64": np.int64, "i32": np.int32}
BIG = 2**62  # what exporters write for "to the end"
INT64_MAX = 2**63 - 1

b_, s_ = SymExpr.symbol("b"), SymExpr.symbol("s")


def _random(rng, shape, dtype):
    if dtype.is_int:
        # values beyond 2**53 would not survive a trip through a float
        info = np.iinfo(dtype.np_dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype.np_dtype)
    return (rng.standard_normal(shape) * 3).astype(dtype.np_dtype)


def _bits(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(_BITS[dtype.name]))


def _same_bits(got: np.ndarray, want: torch.Tensor, dtype) -> None:
    assert got.dtype == dtype.np_dtype
    assert got.shape == tuple(want.shape)
    np.testing.assert_array_equal(got.view(_BITS[dtype.name]), want.numpy())


def _new_graph() -> Graph:
    g = Graph()
    g.add_symbol("b", 1, 16)
    g.add_symbol("s", 1, 4096)
    return g


def _graph(op: str, types: list[TensorType], **attrs) -> Graph:
    g = _new_graph()
    xs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    outs = g.add_node(op, xs, attrs)
    g.set_outputs(*outs)
    return g


def _run(op: str, arrays: list[np.ndarray], dtypes, **attrs) -> tuple[list[np.ndarray], Graph]:
    g = _graph(op, [TensorType(a.shape, d) for a, d in zip(arrays, dtypes, strict=True)], **attrs)
    got = run(g, arrays)
    for r, v in zip(got, g.outputs, strict=True):
        assert r.shape == v.type.shape and r.dtype == v.type.dtype.np_dtype
    assert_roundtrip(g, inputs=arrays)
    return got, g


def _fails(op: str, types: list[TensorType], match: str, **attrs) -> None:
    with pytest.raises(IRError, match=match):
        _graph(op, types, **attrs)


# ---- reshape, transpose, flatten ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_reshape_transpose_flatten_match_torch(dtype):
    rng = np.random.default_rng(1)
    a = _random(rng, (2, 3, 4), dtype)
    for shape in [(6, 4), (4, -1), (2, 1, 12), (-1,), (24,)]:
        (got,), g = _run("reshape", [a], [dtype], shape=shape)
        _same_bits(got, _bits(a, dtype).reshape(shape), dtype)
    for perm in [(0, 1, 2), (2, 0, 1), (1, 0, 2), None]:
        (got,), _ = _run("transpose", [a], [dtype], perm=perm)
        want = _bits(a, dtype).permute(*(perm if perm is not None else (2, 1, 0)))
        _same_bits(got, want, dtype)
    for axis in [0, 1, 2, 3, -1]:
        (got,), _ = _run("flatten", [a], [dtype], axis=axis)
        k = axis + 3 if axis < 0 else axis
        rows = int(np.prod(a.shape[:k]))
        _same_bits(got, _bits(a, dtype).reshape(rows, -1), dtype)


def test_reshape_symbolic():
    g = _new_graph()
    x = g.add_input("x", TensorType((b_, s_, 64), f32))
    flat = g.op("reshape", x, shape=[b_ * s_, 64])
    inferred = g.op("reshape", x, shape=[-1, 64])
    back = g.op("reshape", flat, shape=[b_, -1, 64])
    heads = g.op("reshape", x, shape=[b_, s_, 4, 16])
    merged = g.op("reshape", heads, shape=[b_, s_, -1])
    assert flat.type.shape == (b_ * s_, 64)
    assert inferred.type.shape == (b_ * s_, 64)
    assert back.type.shape == (b_, s_, 64)
    assert heads.type.shape == (b_, s_, 4, 16)
    assert merged.type.shape == (b_, s_, 64)
    # a multi-term divisor: (s+1)*4 elements over s+1 rows
    y = g.add_input("y", TensorType((s_ + 1, 4), f32))
    assert g.op("reshape", y, shape=[s_ + 1, 2, -1]).type.shape == (s_ + 1, 2, 2)
    assert g.op("reshape", y, shape=[-1]).type.shape == (4 * s_ + 4,)
    g.set_outputs(flat, back, heads, merged)
    a = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    got = run(g, [a, np.zeros((6, 4), np.float32)])
    np.testing.assert_array_equal(got[0], a.reshape(10, 64))
    np.testing.assert_array_equal(got[1], a)
    np.testing.assert_array_equal(got[2], a.reshape(2, 5, 4, 16))
    np.testing.assert_array_equal(got[3], a)
    assert_roundtrip(g, inputs=[a, np.zeros((6, 4), np.float32)])


def test_reshape_reference_without_symbol_bindings():
    # evaluate_node alone (no symbol values): one symbolic entry is solved from the element count...
    g = _graph("reshape", [TensorType((b_, s_, 8), f32)], shape=[b_ * s_, 8])
    a = np.arange(48, dtype=np.float32).reshape(2, 3, 8)
    (got,) = evaluate_node(g.nodes[0], [a])
    np.testing.assert_array_equal(got, a.reshape(6, 8))
    # ...two are ambiguous and say so
    g = _graph("reshape", [TensorType((b_ * s_, 8), f32)], shape=[b_, s_, 8])
    with pytest.raises(IRError, match="symbols b, s"):
        evaluate_node(g.nodes[0], [a.reshape(6, 8)])
    (got,) = evaluate_node(g.nodes[0], [a.reshape(6, 8)], {"b": 2, "s": 3})
    np.testing.assert_array_equal(got, a)


def test_reshape_errors():
    t = TensorType((2, 3, 4), f32)
    _fails("reshape", [t], "cannot reshape 24", shape=[5, 5])
    _fails("reshape", [t], "more than one -1", shape=[-1, -1])
    _fails("reshape", [t], "known multiple", shape=[5, -1])
    _fails("reshape", [t], "negative dim", shape=[-2, -12])
    sym = TensorType((b_, s_, 64), f32)
    _fails("reshape", [sym], "cannot reshape", shape=[b_ * s_, 32])
    _fails("reshape", [sym], "cannot reshape", shape=[b_, s_, 65])
    _fails("reshape", [TensorType((s_,), f32)], "cannot infer the -1", shape=[-1, 2])
    _fails("reshape", [TensorType((s_, 0), f32)], "0 elements", shape=[0, -1])


def test_transpose_and_flatten_symbolic_and_errors():
    t = TensorType((b_, s_, 64), f32)
    g = _new_graph()
    x = g.add_input("x", t)
    assert g.op("transpose", x, perm=[1, 0, 2]).type.shape == (s_, b_, 64)
    assert g.op("flatten", x, axis=2).type.shape == (b_ * s_, 64)
    assert g.op("flatten", x, axis=0).type.shape == (1, 64 * b_ * s_)
    assert g.op("flatten", x).type.shape == (b_, 64 * s_)
    _fails("transpose", [t], "not a permutation", perm=[0, 1])
    _fails("transpose", [t], "not a permutation", perm=[0, 1, 1])
    _fails("flatten", [t], "out of range", axis=4)


# ---- slice ---------------------------------------------------------------------------------------


def _onnx_slice_indices(dim: int, start: int, end: int, step: int) -> list[int]:
    """The index list ONNX Slice picks, written from the spec's clamping rules."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return list(range(start, end, step))


SLICE_CASES = [
    dict(starts=[1], ends=[3]),
    dict(starts=[0, 1], ends=[BIG, -1], axes=[2, 0]),
    dict(starts=[-2], ends=[INT64_MAX], axes=[-1]),
    dict(starts=[5], ends=[-100], axes=[2], steps=[-2]),
    dict(starts=[-1], ends=[-BIG], axes=[1], steps=[-1]),
    dict(starts=[0, 0], ends=[6, 100], axes=[1, 2], steps=[2, 3]),
    dict(starts=[-BIG], ends=[2], axes=[0]),
    dict(starts=[3], ends=[1], axes=[1]),  # empty
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_slice_matches_onnx_rules(dtype):
    rng = np.random.default_rng(2)
    a = _random(rng, (4, 5, 7), dtype)
    for attrs in SLICE_CASES:
        (got,), _ = _run("slice", [a], [dtype], **attrs)
        want = _bits(a, dtype)
        axes = attrs.get("axes", range(len(attrs["starts"])))
        steps = attrs.get("steps", [1] * len(attrs["starts"]))
        for axis, start, end, step in zip(axes, attrs["starts"], attrs["ends"], steps, strict=True):
            idx = _onnx_slice_indices(a.shape[axis], start, end, step)
            want = torch.index_select(want, axis, torch.tensor(idx, dtype=torch.int64))
        _same_bits(got, want, dtype)


def test_slice_symbolic():
    t = TensorType((b_, s_, 64), f32)
    cases = [
        (dict(starts=[-1], ends=[BIG], axes=[1]), (b_, 1, 64)),  # the last position
        (dict(starts=[2], ends=[INT64_MAX], axes=[1]), (b_, s_ - 2, 64)),
        (dict(starts=[0], ends=[2**31 - 1], axes=[1]), (b_, s_, 64)),
        (dict(starts=[1], ends=[-1], axes=[1]), (b_, s_ - 2, 64)),
        (dict(starts=[-3], ends=[-1], axes=[1]), (b_, 2, 64)),
        (dict(starts=[-1], ends=[-BIG], axes=[1], steps=[-1]), (b_, s_, 64)),
        (dict(starts=[0, 8], ends=[BIG, 40], axes=[1, 2], steps=[1, 4]), (b_, s_, 8)),
        # a finite end on a symbolic dim is taken to lie inside it (x[:, 0], x[:, 1:3])
        (dict(starts=[0], ends=[1], axes=[1]), (b_, 1, 64)),
        (dict(starts=[1], ends=[3], axes=[1]), (b_, 2, 64)),
        (dict(starts=[4], ends=[2], axes=[1]), (b_, 0, 64)),
    ]
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 6, 64)).astype(np.float32)
    for attrs, shape in cases:
        g = _graph("slice", [t], **attrs)
        assert g.outputs[0].type.shape == shape, attrs
        (got,) = run(g, [a])
        assert got.shape == TensorType(shape, f32).concrete({"b": 2, "s": 6})
        (want,), _ = _run("slice", [a], [f32], **attrs)  # the same slice on a static type
        np.testing.assert_array_equal(got, want)
    for attrs in [dict(starts=[0], ends=[BIG], axes=[1], steps=[2]), dict(starts=[-2], ends=[3], axes=[1]),
                  dict(starts=[2], ends=[-1], axes=[1], steps=[-1])]:
        _fails("slice", [t], "depends on its value", **attrs)


def test_slice_errors():
    t = TensorType((4, 5), f32)
    _fails("slice", [t], "step 0", starts=[0], ends=[2], steps=[0])
    _fails("slice", [t], "differ in length", starts=[0, 1], ends=[2])
    _fails("slice", [t], "out of range", starts=[0], ends=[2], axes=[2])
    _fails("slice", [t], "repeated axis", starts=[0, 0], ends=[2, 2], axes=[1, -1])


# ---- concat, split -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_concat_split_match_torch(dtype):
    rng = np.random.default_rng(4)
    for shapes, axis in [([(2, 3), (2, 5)], 1), ([(1, 4), (3, 4), (2, 4)], 0), ([(2, 3, 1), (2, 3, 2)], -1),
                         ([(5,)], 0)]:
        arrays = [_random(rng, s, dtype) for s in shapes]
        (got,), _ = _run("concat", arrays, [dtype] * len(arrays), axis=axis)
        _same_bits(got, torch.cat([_bits(a, dtype) for a in arrays], dim=axis), dtype)
    a = _random(rng, (3, 10, 2), dtype)
    for sizes, axis in [([3, 7], 1), ([1, 1, 1], 0), ([4, 0, 6], -2), ([2], -1)]:
        got, g = _run("split", [a], [dtype], axis=axis, sizes=sizes)
        assert len(g.outputs) == len(sizes)
        for part, want in zip(got, torch.split(_bits(a, dtype), sizes, dim=axis), strict=True):
            _same_bits(part, want, dtype)


def test_concat_split_symbolic():
    g = _new_graph()
    cache = g.add_input("cache", TensorType((b_, s_, 64), f32))
    new = g.add_input("new", TensorType((b_, 1, 64), f32))
    both = g.op("concat", cache, new, axis=1)
    assert both.type.shape == (b_, s_ + 1, 64)
    twice = g.op("concat", both, cache, axis=-2)
    assert twice.type.shape == (b_, 2 * s_ + 1, 64)
    # a static dim pins a symbolic one off the concat axis
    static = g.add_input("static", TensorType((2, 3, 64), f32))
    assert g.op("concat", cache, static, axis=1).type.shape == (2, s_ + 3, 64)
    q, k, v = g.add_node("split", [cache], {"axis": 2, "sizes": [16, 16, 32]})
    assert (q.type.shape, v.type.shape) == ((b_, s_, 16), (b_, s_, 32))
    g.set_outputs(both, twice, v)
    rng = np.random.default_rng(5)
    c = rng.standard_normal((2, 4, 64)).astype(np.float32)
    n = rng.standard_normal((2, 1, 64)).astype(np.float32)
    got = run(g, [c, n, np.zeros((2, 3, 64), np.float32)])
    np.testing.assert_array_equal(got[0], np.concatenate([c, n], 1))
    np.testing.assert_array_equal(got[1], np.concatenate([c, n, c], 1))
    np.testing.assert_array_equal(got[2], c[:, :, 32:])
    assert_roundtrip(g, inputs=[c, n, np.zeros((2, 3, 64), np.float32)])


def test_concat_split_errors():
    _fails("concat", [TensorType((2, 3), f32), TensorType((3, 3), f32)], "only axis 1 may differ", axis=1)
    _fails("concat", [TensorType((2, 3), f32), TensorType((2, 3), f16)], "one dtype", axis=0)
    _fails("concat", [TensorType((2, 3), f32), TensorType((2, 3, 1), f32)], "rank", axis=0)
    _fails("concat", [TensorType((2, 3), f32), TensorType((2, 3), f32)], "out of range", axis=2)
    _fails("concat", [TensorType((b_, 3), f32), TensorType((s_, 3), f32)], "may differ", axis=1)
    _fails("split", [TensorType((4, 6), f32)], "add up to 5", axis=1, sizes=[2, 3])
    _fails("split", [TensorType((4, 6), f32)], "negative", axis=1, sizes=[7, -1])
    _fails("split", [TensorType((4, 6), f32)], "out of range", axis=2, sizes=[4])


# ---- expand, squeeze, unsqueeze ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_expand_squeeze_unsqueeze_match_torch(dtype):
    rng = np.random.default_rng(6)
    for in_shape, target in [((3, 1), (3, 4)), ((1, 4), (2, 5, 4)), ((3, 1), (-1, 6)), ((4,), (2, 3, 4)),
                             ((2, 1, 3), (2, 5, 3))]:
        a = _random(rng, in_shape, dtype)
        (got,), _ = _run("expand", [a], [dtype], shape=target)
        _same_bits(got, _bits(a, dtype).expand(*target), dtype)
    # ONNX Expand broadcasts both ways: a 1 in the target keeps the input's dim, a shorter target pads
    a = _random(rng, (3, 1), dtype)
    (got,), _ = _run("expand", [a], [dtype], shape=[1, 4])
    _same_bits(got, _bits(a, dtype).expand(3, 4), dtype)
    (got,), _ = _run("expand", [a], [dtype], shape=[5])
    _same_bits(got, _bits(a, dtype).expand(3, 5), dtype)

    a = _random(rng, (1, 3, 1, 2), dtype)
    for axes in [(0,), (-2,), (0, 2), None]:
        (got,), _ = _run("squeeze", [a], [dtype], axes=axes)
        want = _bits(a, dtype).squeeze() if axes is None else _bits(a, dtype).squeeze(axes)
        _same_bits(got, want, dtype)
    a = _random(rng, (3, 2), dtype)
    cases = [((0,), (1, 3, 2)), ((-1,), (3, 2, 1)), ((0, 3), (1, 3, 2, 1)), ((1, -2), (3, 1, 1, 2))]
    for axes, shape in cases:
        (got,), _ = _run("unsqueeze", [a], [dtype], axes=axes)
        _same_bits(got, _bits(a, dtype).reshape(shape), dtype)


def test_expand_squeeze_unsqueeze_symbolic():
    g = _new_graph()
    mask = g.add_input("mask", TensorType((1, 1, s_, s_), boolean))
    ids = g.add_input("ids", TensorType((b_, s_), i64))
    wide = g.op("expand", mask, shape=[b_, 4, -1, -1])
    assert wide.type == TensorType((b_, 4, s_, s_), boolean)
    pos = g.op("unsqueeze", ids, axes=[0, -1])
    assert pos.type.shape == (1, b_, s_, 1)
    back = g.op("squeeze", pos, axes=[0, 3])
    assert back.type.shape == (b_, s_)
    # a symbolic dim may be squeezed when named (it must be 1 at run time)
    assert g.op("squeeze", g.op("unsqueeze", ids, axes=[1]), axes=[1]).type.shape == (b_, s_)
    g.set_outputs(wide, back)
    m = np.tril(np.ones((3, 3), bool))[None, None]
    i = np.arange(6, dtype=np.int64).reshape(2, 3)
    got = run(g, [m, i])
    np.testing.assert_array_equal(got[0], np.broadcast_to(m, (2, 4, 3, 3)))
    np.testing.assert_array_equal(got[1], i)
    assert_roundtrip(g, inputs=[m, i])


def test_expand_squeeze_unsqueeze_errors():
    _fails("expand", [TensorType((3, 2), f32)], "do not broadcast", shape=[3, 4])
    _fails("expand", [TensorType((3,), f32)], "no input dim", shape=[-1, 3])
    _fails("expand", [TensorType((3,), f32)], "negative", shape=[-2, 3])
    _fails("squeeze", [TensorType((3, 1), f32)], "size 3", axes=[0])
    _fails("squeeze", [TensorType((s_, 1), f32)], "ambiguous")
    _fails("squeeze", [TensorType((3, 1), f32)], "out of range", axes=[2])
    _fails("unsqueeze", [TensorType((3, 1), f32)], "out of range", axes=[3])
    _fails("unsqueeze", [TensorType((3, 1), f32)], "repeated", axes=[0, -4])


# ---- gather, gather_elements ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_gather_matches_torch(dtype):
    rng = np.random.default_rng(7)
    data = _random(rng, (5, 4, 3), dtype)
    for axis, idx_shape in [(0, (2, 3)), (1, (6,)), (-1, ()), (2, (2, 2))]:
        n = data.shape[axis]
        idx = rng.integers(-n, n, size=idx_shape).astype(np.int64)  # negatives wrap
        (got,), g = _run("gather", [data, idx], [dtype, i64], axis=axis)
        flat = torch.from_numpy(np.where(idx < 0, idx + n, idx).reshape(-1))
        picked = torch.index_select(_bits(data, dtype), axis, flat)
        ax = axis % 3
        want = picked.reshape(data.shape[:ax] + idx_shape + data.shape[ax + 1:])
        _same_bits(got, want, dtype)
    # i32 indices and the embedding-lookup shape
    ids = np.array([[4, 0, -1]], dtype=np.int32)
    (got,), _ = _run("gather", [data, ids], [dtype, i32])
    _same_bits(got, _bits(data, dtype)[torch.tensor([[4, 0, 4]])], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_gather_elements_matches_torch(dtype):
    rng = np.random.default_rng(8)
    data = _random(rng, (4, 5, 3), dtype)
    for axis, idx_shape in [(0, (6, 5, 3)), (1, (4, 2, 3)), (-1, (2, 3, 7)), (2, (4, 5, 1))]:
        n = data.shape[axis]
        idx = rng.integers(-n, n, size=idx_shape).astype(np.int64)
        (got,), _ = _run("gather_elements", [data, idx], [dtype, i64], axis=axis)
        wrapped = torch.from_numpy(np.where(idx < 0, idx + n, idx))
        _same_bits(got, torch.gather(_bits(data, dtype), axis, wrapped), dtype)


def test_gather_symbolic_and_errors():
    g = _new_graph()
    table = g.add_input("table", TensorType((100, 64), bf16))
    ids = g.add_input("ids", TensorType((b_, s_), i64))
    emb = g.op("gather", table, ids, axis=0)
    assert emb.type == TensorType((b_, s_, 64), bf16)
    top = g.add_input("top", TensorType((b_, s_, 1), i64))
    logits = g.add_input("logits", TensorType((b_, s_, 100), f32))
    assert g.op("gather_elements", logits, top, axis=-1).type == TensorType((b_, s_, 1), f32)
    _fails("gather", [TensorType((4, 3), f32), TensorType((2,), f32)], "integer")
    _fails("gather", [TensorType((4, 3), f32), TensorType((2,), i64)], "out of range", axis=2)
    _fails("gather_elements", [TensorType((4, 3), f32), TensorType((4,), i64)], "rank")
    _fails("gather_elements", [TensorType((4, 3), f32), TensorType((2, 5), i64)], "exceeds", axis=0)
    # an index past the end is caught when the graph runs
    g = _graph("gather", [TensorType((4, 3), f32), TensorType((1,), i64)])
    with pytest.raises(IRError, match="out of bounds|out of range"):
        run(g, [np.zeros((4, 3), np.float32), np.array([4])])


# ---- pad -----------------------------------------------------------------------------------------


def _torch_pads(onnx_pads: list[int], rank: int) -> list[int]:
    out = []
    for axis in reversed(range(rank)):  # torch lists the last axis first, (begin, end) pairs
        out += [onnx_pads[axis], onnx_pads[axis + rank]]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_pad_matches_torch(dtype):
    rng = np.random.default_rng(9)
    a = _random(rng, (3, 4), dtype)
    for pads, value in [([0, 0, 0, 0], 0.0), ([1, 2, 3, 4], 0.0), ([0, 1, 0, 1], 2.0), ([-1, 1, 0, -2], -3.0),
                        ([-3, 0, 0, 0], 1.0)]:
        (got,), _ = _run("pad", [a], [dtype], pads=pads, value=value)
        if dtype.is_int:
            want = F.pad(torch.from_numpy(a), _torch_pads(pads, 2), value=int(value)).numpy()
        else:
            want = F.pad(torch.from_numpy(a.astype(np.float64)), _torch_pads(pads, 2), value=value).numpy()
            want = want.astype(dtype.np_dtype)  # exact: inputs and pad values are representable
        np.testing.assert_array_equal(got.view(_BITS[dtype.name]), want.view(_BITS[dtype.name]))


def test_pad_symbolic_and_errors():
    g = _graph("pad", [TensorType((b_, s_), f32)], pads=[0, 1, 0, 2])
    assert g.outputs[0].type.shape == (b_, s_ + 3)
    (got,) = run(g, [np.ones((2, 3), np.float32)])
    np.testing.assert_array_equal(got, np.pad(np.ones((2, 3)), [(0, 0), (1, 2)]))
    _fails("pad", [TensorType((3, 4), f32)], "needs 4", pads=[1, 1])
    _fails("pad", [TensorType((3, 4), f32)], "below zero", pads=[-2, 0, -2, 0])
    _fails("pad", [TensorType((3, 4), f32)], "must be one of", pads=[0, 0, 0, 0], mode="reflect")


# ---- full, iota ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f32, f16, bf16, i64, i32, boolean], ids=lambda d: d.name)
def test_full(dtype):
    g = _new_graph()
    g.set_outputs(g.op("full", shape=[2, 3], value=1.5, dtype=dtype))
    assert g.outputs[0].type == TensorType((2, 3), dtype)
    (got,) = run(g, [])
    want = {"bool": True, "i64": 1, "i32": 1}.get(dtype.name, 1.5)
    assert got.dtype == dtype.np_dtype and got.shape == (2, 3)
    assert np.all(got == np.asarray(want).astype(dtype.np_dtype))
    assert_roundtrip(g, inputs=[])


@pytest.mark.parametrize("dtype", [i64, i32, f32, bf16], ids=lambda d: d.name)
def test_iota(dtype):
    g = _new_graph()
    g.set_outputs(g.op("iota", shape=[7], dtype=dtype, start=-2))
    assert g.outputs[0].type == TensorType((7,), dtype)
    (got,) = run(g, [])
    np.testing.assert_array_equal(got.astype(np.float64), torch.arange(-2, 5, dtype=torch.float64).numpy())
    g = _new_graph()
    g.set_outputs(g.op("iota", shape=[4]))
    (got,) = run(g, [])
    assert got.dtype == np.int64 and got.tolist() == [0, 1, 2, 3]


def test_full_iota_with_symbolic_shapes():
    """The interpreter binds the symbols from the graph inputs before generating."""
    g = _new_graph()
    x = g.add_input("x", TensorType((s_, 3), f32))
    ramp = g.op("cast", g.op("iota", shape=[s_], start=2), to=f32)
    ones = g.op("full", shape=[s_, 3], value=1.5)
    g.set_outputs(g.op("add", g.op("add", x, ones), g.op("unsqueeze", ramp, axes=[1])))
    assert g.outputs[0].type == TensorType((s_, 3), f32)
    for n in (1, 4):
        xv = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
        want = xv.astype(np.float64) + 1.5 + np.arange(2, 2 + n)[:, None]
        np.testing.assert_allclose(run(g, [xv])[0], want, rtol=1e-6)


def test_full_iota_errors():
    g = _new_graph()
    with pytest.raises(IRError, match="negative"):
        g.op("full", shape=[-1], value=0.0)
    with pytest.raises(IRError, match="1-D"):
        g.op("iota", shape=[2, 3])
    with pytest.raises(IRError, match="bool"):
        g.op("iota", shape=[3], dtype=boolean)
    x = g.add_input("x", TensorType((2,), f32))
    with pytest.raises(IRError, match="takes 0 inputs"):
        g.op("full", x, shape=[2])


@pytest.mark.parametrize("axis,index_shapes", [(0, [(4, 1), (1, 5)]), (1, [(3,), (3,)]), (1, [(2, 1, 1), (1, 1, 4)])])
def test_index_matches_torch_advanced_indexing(axis, index_shapes):
    rng = np.random.default_rng(axis)
    data = rng.standard_normal((6, 7, 5)).astype(np.float32)
    idx = [rng.integers(-5, 5, s) for s in index_shapes]
    g = _new_graph()
    x = g.add_input("x", TensorType(data.shape, f32))
    ins = [g.add_input(f"i{k}", TensorType(a.shape, i64)) for k, a in enumerate(idx)]
    g.set_outputs(g.add_node("index", [x, *ins], {"axis": axis})[0])
    got = run(g, [data, *idx])[0]
    want = torch.from_numpy(data)[(slice(None),) * axis + tuple(torch.from_numpy(a) for a in idx)].numpy()
    assert g.outputs[0].type.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [f32, bf16], ids=lambda d: d.name)
def test_index_copy_matches_torch(dtype):
    rng = np.random.default_rng(11)
    cache = rng.standard_normal((2, 3, 8, 4)).astype(dtype.np_dtype)
    src = rng.standard_normal((2, 3, 2, 4)).astype(dtype.np_dtype)
    pos = np.array([5, 2])
    g = _new_graph()
    c = g.add_input("c", TensorType(cache.shape, dtype))
    p = g.add_input("p", TensorType((2,), i64))
    s = g.add_input("s", TensorType(src.shape, dtype))
    g.set_outputs(g.op("index_copy", c, p, s, axis=2))
    got = run(g, [cache, pos, src])[0]
    want = torch.from_numpy(cache.astype(np.float32)).index_copy(
        2, torch.from_numpy(pos), torch.from_numpy(src.astype(np.float32))).numpy()
    np.testing.assert_array_equal(got.astype(np.float32), want)
    assert_roundtrip(g)
