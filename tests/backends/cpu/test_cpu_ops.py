"""Every elementwise, reduction, matmul, norm and shape op on the cpu backend, against the numpy
interpreter and an independent float64 reference, on fresh random inputs at two sizes of the
symbolic dim ``n`` with one build."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_cases import Case, assert_close, build_case_graph, build_engine, erf, softmax64

from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import boolean, f32, i32, i64
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType

N = SymExpr.symbol("n")
TO_END = 2**31 - 1
SIZES = (2, 5)  # two values of n served by one build

INPUTS = {
    "x": TensorType((N, 6, 16), f32),
    "y": TensorType((N, 6, 16), f32),
    "p": TensorType((N, 6, 16), f32),  # positive
    "r": TensorType((16,), f32),
    "col": TensorType((N, 6, 1), f32),
    "a": TensorType((N, 6, 16), i64),
    "d": TensorType((N, 6, 16), i64),  # nonzero
    "b1": TensorType((N, 6, 16), boolean),
    "b2": TensorType((N, 6, 16), boolean),
    "i32": TensorType((N, 6, 16), i32),
    "ix": TensorType((5,), i64),  # in [-6, 6)
    "gi": TensorType((N, 6, 4), i64),  # in [0, 16)
    "tok": TensorType((N, 6), i64),  # in [0, 20)
    "wdyn": TensorType((12, 16), f32),
    "rows": TensorType((2,), i64),  # distinct, in [0, 6)
    "src": TensorType((N, 2, 16), f32),
    "sel": TensorType((3,), i64),  # in [-6, 6)
    "sel2": TensorType((3,), i64),  # in [-16, 16)
}


def make_inputs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (n, 6, 16)
    d = rng.integers(1, 7, shape) * rng.choice([-1, 1], shape)
    return {
        "x": rng.standard_normal(shape).astype(np.float32),
        "y": rng.standard_normal(shape).astype(np.float32),
        "p": rng.uniform(0.5, 3.0, shape).astype(np.float32),
        "r": rng.standard_normal(16).astype(np.float32),
        "col": rng.standard_normal((n, 6, 1)).astype(np.float32),
        "a": rng.integers(-20, 21, shape).astype(np.int64),
        "d": d.astype(np.int64),
        "b1": rng.random(shape) < 0.5,
        "b2": rng.random(shape) < 0.5,
        "i32": rng.integers(-1000, 1000, shape).astype(np.int32),
        "ix": rng.integers(-6, 6, 5).astype(np.int64),
        "gi": rng.integers(0, 16, (n, 6, 4)).astype(np.int64),
        "tok": rng.integers(0, 20, (n, 6)).astype(np.int64),
        "wdyn": rng.standard_normal((12, 16)).astype(np.float32),
        "rows": rng.permutation(6)[:2].astype(np.int64),
        "src": rng.standard_normal((n, 2, 16)).astype(np.float32),
        "sel": rng.integers(-6, 6, 3).astype(np.int64),
        "sel2": rng.integers(-16, 16, 3).astype(np.int64),
    }


_W = np.random.default_rng(1234)
W12 = _W.standard_normal((12, 16)).astype(np.float32)
B12 = _W.standard_normal(12).astype(np.float32)
W10 = _W.standard_normal((10, 16)).astype(np.float32)
KN = _W.standard_normal((16, 8)).astype(np.float32)
K3 = _W.standard_normal((1, 16, 5)).astype(np.float32)
KI = _W.integers(-3, 4, (16, 3)).astype(np.int64)
TABLE = _W.standard_normal((20, 16)).astype(np.float32)
GW, GB = _W.standard_normal(16).astype(np.float32), _W.standard_normal(16).astype(np.float32)
BN = [_W.standard_normal(6).astype(np.float32) for _ in range(3)] + [_W.uniform(0.5, 2, 6).astype(np.float32)]


def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


def unary(op: str, ref, src: str = "x", **attrs) -> Case:
    name = f"{op}_{src}" + "".join(f"_{k}{v}" for k, v in attrs.items())
    return Case(name, lambda g, v: g.op(op, v[src], **attrs), lambda i: ref(f64(i[src]) if i[src].dtype.kind == "f"
                                                                                else i[src]))


def binary(op: str, ref, a: str = "x", b: str = "y") -> Case:
    return Case(f"{op}_{a}_{b}", lambda g, v: g.op(op, v[a], v[b]), lambda i: ref(i[a], i[b]))


def const(g, name: str, data: np.ndarray):
    return g.add_constant(name, data)


def layer_norm64(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    x = f64(x)
    m = x.mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(axis=axes, keepdims=True) + eps)


def cumsum64(x: np.ndarray, axis: int, exclusive: bool = False, reverse: bool = False) -> np.ndarray:
    out = np.flip(x, axis) if reverse else x
    out = np.cumsum(out, axis=axis, dtype=x.dtype)
    if exclusive:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                              np.take(out, range(out.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(out, axis) if reverse else out


def index_copy64(x, rows, src):
    out = x.copy()
    out[:, rows] = src
    return out


CASES: list[Case] = [
    # ---- unary -----------------------------------------------------------------------------------
    unary("neg", lambda x: -x),
    unary("abs", np.abs),
    unary("exp", np.exp),
    unary("log", np.log, "p"),
    unary("sqrt", np.sqrt, "p"),
    unary("rsqrt", lambda x: 1 / np.sqrt(x), "p"),
    unary("reciprocal", lambda x: 1 / x, "p"),
    unary("sin", np.sin),
    unary("cos", np.cos),
    unary("tanh", np.tanh),
    unary("erf", erf),
    unary("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    unary("relu", lambda x: np.maximum(x, 0)),
    unary("silu", lambda x: x / (1 + np.exp(-x))),
    unary("gelu", lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    unary("gelu", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), approximate="tanh"),
    unary("floor", np.floor),
    unary("ceil", np.ceil),
    unary("identity", lambda x: x),
    unary("clamp", lambda x: np.clip(x, -0.5, 0.7), min=-0.5, max=0.7),
    unary("clamp", lambda x: np.maximum(x, 0.25), min=0.25),
    unary("neg", lambda a: -a, "a"),
    unary("abs", np.abs, "a"),
    unary("relu", lambda a: np.maximum(a, 0), "a"),
    unary("clamp", lambda a: np.clip(a, -3, 4), "a", min=-3.7, max=4.2),
    unary("logical_not", np.logical_not, "b1"),
    # ---- casts -----------------------------------------------------------------------------------
    Case("cast_f32_i64",
         lambda g, v: g.op("cast", g.op("mul", v["x"], const(g, "ten", np.asarray(10.0, np.float32))), to=i64),
         lambda i: np.trunc(i["x"] * np.float32(10)).astype(np.int64)),
    Case("cast_f32_bool", lambda g, v: g.op("cast", g.op("relu", v["x"]), to=boolean), lambda i: i["x"] > 0),
    Case("cast_bool_f32", lambda g, v: g.op("cast", v["b1"], to=f32), lambda i: i["b1"].astype(np.float64)),
    Case("cast_i64_f32", lambda g, v: g.op("cast", v["a"], to=f32), lambda i: f64(i["a"])),
    Case("cast_i64_i32", lambda g, v: g.op("cast", v["a"], to=i32), lambda i: i["a"].astype(np.int32)),
    Case("cast_i32_i64", lambda g, v: g.op("cast", v["i32"], to=i64), lambda i: i["i32"].astype(np.int64)),
    Case("cast_bool_i64", lambda g, v: g.op("cast", v["b1"], to=i64), lambda i: i["b1"].astype(np.int64)),
    # ---- binary ----------------------------------------------------------------------------------
    binary("add", lambda a, b: f64(a) + b),
    binary("sub", lambda a, b: f64(a) - b),
    binary("mul", lambda a, b: f64(a) * b),
    binary("div", lambda a, b: f64(a) / b),
    binary("pow", lambda a, b: np.power(f64(a), f64(b)), "p", "y"),
    binary("maximum", np.maximum),
    binary("minimum", np.minimum),
    binary("add", lambda a, b: f64(a) + b, "x", "r"),
    binary("mul", lambda a, b: f64(a) * b, "x", "col"),
    binary("sub", lambda a, b: f64(a) - b, "col", "x"),
    binary("add", lambda a, b: a + b, "a", "d"),
    binary("mul", lambda a, b: a * b, "a", "d"),
    binary("div", lambda a, b: np.trunc(f64(a) / b).astype(np.int64), "a", "d"),
    binary("maximum", np.maximum, "a", "d"),
    *[binary(op, fn) for op, fn in (("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                                    ("gt", np.greater), ("ge", np.greater_equal))],
    *[binary(op, fn, "a", "d") for op, fn in (("eq", np.equal), ("lt", np.less), ("ge", np.greater_equal))],
    binary("logical_and", np.logical_and, "b1", "b2"),
    binary("logical_or", np.logical_or, "b1", "b2"),
    binary("logical_xor", np.logical_xor, "b1", "b2"),
    Case("where", lambda g, v: g.op("where", v["b1"], v["x"], v["y"]), lambda i: np.where(i["b1"], i["x"], i["y"])),
    Case("where_bcast", lambda g, v: g.op("where", v["b1"], v["x"], v["r"]),
         lambda i: np.where(i["b1"], i["x"], i["r"])),
    # ---- reductions ------------------------------------------------------------------------------
    Case("sum_2", lambda g, v: g.op("sum", v["x"], axes=(2,)), lambda i: f64(i["x"]).sum(2), "reduction"),
    Case("mean_12_keep", lambda g, v: g.op("mean", v["x"], axes=(1, 2), keepdims=True),
         lambda i: f64(i["x"]).mean((1, 2), keepdims=True), "reduction"),
    Case("max_1", lambda g, v: g.op("max", v["x"], axes=(1,)), lambda i: i["x"].max(1)),
    Case("min_all", lambda g, v: g.op("min", v["x"]), lambda i: np.asarray(i["x"].min())),
    Case("prod_2", lambda g, v: g.op("prod", v["p"], axes=(2,)), lambda i: f64(i["p"]).prod(2), "reduction"),
    Case("sum_int", lambda g, v: g.op("sum", v["a"], axes=(2,)), lambda i: i["a"].sum(2)),
    Case("sum_none_axes", lambda g, v: g.op("sum", v["x"], axes=()), lambda i: f64(i["x"])),
    Case("argmax_2", lambda g, v: g.op("argmax", v["x"], axis=2), lambda i: i["x"].argmax(2)),
    Case("argmax_int_ties", lambda g, v: g.op("argmax", v["a"], axis=2), lambda i: i["a"].argmax(2)),
    Case("argmin_int_ties", lambda g, v: g.op("argmin", v["a"], axis=1), lambda i: i["a"].argmin(1)),
    Case("argmin_1_keep", lambda g, v: g.op("argmin", v["x"], axis=1, keepdims=True),
         lambda i: i["x"].argmin(1)[:, None]),
    Case("max_bool", lambda g, v: g.op("max", v["b1"], axes=(2,)), lambda i: i["b1"].any(2)),
    Case("min_bool", lambda g, v: g.op("min", v["b1"], axes=(2,)), lambda i: i["b1"].all(2)),
    Case("softmax_last", lambda g, v: g.op("softmax", v["x"], axis=-1), lambda i: softmax64(f64(i["x"]), -1)),
    Case("softmax_1", lambda g, v: g.op("softmax", v["x"], axis=1), lambda i: softmax64(f64(i["x"]), 1)),
    Case("log_softmax", lambda g, v: g.op("log_softmax", v["x"], axis=-1),
         lambda i: np.log(softmax64(f64(i["x"]), -1))),
    Case("cumsum_2", lambda g, v: g.op("cumsum", v["x"], axis=2), lambda i: np.cumsum(f64(i["x"]), 2), "reduction"),
    Case("cumsum_excl_rev", lambda g, v: g.op("cumsum", v["x"], axis=1, exclusive=True, reverse=True),
         lambda i: cumsum64(f64(i["x"]), 1, True, True), "reduction"),
    Case("cumsum_int", lambda g, v: g.op("cumsum", v["a"], axis=2), lambda i: np.cumsum(i["a"], 2)),
    # ---- matrix products -------------------------------------------------------------------------
    Case("linear_bias", lambda g, v: g.op("linear", v["x"], const(g, "w12", W12), const(g, "b12", B12)),
         lambda i: f64(i["x"]) @ f64(W12).T + B12, "reduction"),
    Case("linear_tail", lambda g, v: g.op("linear", v["x"], const(g, "w10", W10)),
         lambda i: f64(i["x"]) @ f64(W10).T, "reduction"),
    Case("linear_dyn", lambda g, v: g.op("linear", v["x"], v["wdyn"], const(g, "b12d", B12)),
         lambda i: f64(i["x"]) @ f64(i["wdyn"]).T + B12, "reduction"),
    Case("matmul_const", lambda g, v: g.op("matmul", v["x"], const(g, "kn", KN)),
         lambda i: f64(i["x"]) @ f64(KN), "reduction"),
    Case("matmul_dyn", lambda g, v: g.op("matmul", v["x"], g.op("transpose", v["y"], perm=(0, 2, 1))),
         lambda i: f64(i["x"]) @ f64(i["y"]).transpose(0, 2, 1), "reduction"),
    Case("matmul_bcast", lambda g, v: g.op("matmul", v["x"], const(g, "k3", K3)),
         lambda i: f64(i["x"]) @ f64(K3), "reduction"),
    Case("matmul_int", lambda g, v: g.op("matmul", v["a"], const(g, "ki", KI)), lambda i: i["a"] @ KI),
    # ---- norms -----------------------------------------------------------------------------------
    Case("layer_norm", lambda g, v: g.op("layer_norm", v["x"], const(g, "gw", GW), const(g, "gb", GB), eps=1e-5),
         lambda i: layer_norm64(i["x"], (2,), 1e-5) * GW + GB, "reduction"),
    Case("layer_norm_2d", lambda g, v: g.op("layer_norm", v["x"], axis=1, eps=1e-3),
         lambda i: layer_norm64(i["x"], (1, 2), 1e-3), "reduction"),
    Case("rms_norm", lambda g, v: g.op("rms_norm", v["x"], const(g, "rw", GW), eps=1e-6),
         lambda i: f64(i["x"]) / np.sqrt((f64(i["x"]) ** 2).mean(2, keepdims=True) + 1e-6) * GW, "reduction"),
    Case("rms_norm_plain", lambda g, v: g.op("rms_norm", v["p"]),
         lambda i: f64(i["p"]) / np.sqrt((f64(i["p"]) ** 2).mean(2, keepdims=True) + 1e-6), "reduction"),
    Case("batch_norm", lambda g, v: g.op("batch_norm", v["x"], *(const(g, f"bn{k}", BN[k]) for k in range(4)),
                                         eps=1e-5),
         lambda i: (f64(i["x"]) - BN[2][:, None]) / np.sqrt(f64(BN[3])[:, None] + 1e-5) * BN[0][:, None]
         + BN[1][:, None], "reduction"),
    # ---- shape -----------------------------------------------------------------------------------
    Case("reshape", lambda g, v: g.op("reshape", v["x"], shape=(N, 96)), lambda i: i["x"].reshape(-1, 96)),
    Case("transpose", lambda g, v: g.op("transpose", v["x"], perm=(0, 2, 1)), lambda i: i["x"].transpose(0, 2, 1)),
    Case("slice_step", lambda g, v: g.op("slice", v["x"], starts=(2,), ends=(14,), axes=(2,), steps=(3,)),
         lambda i: i["x"][:, :, 2:14:3]),
    Case("slice_neg", lambda g, v: g.op("slice", v["x"], starts=(-4,), ends=(TO_END,), axes=(1,)),
         lambda i: i["x"][:, -4:]),
    Case("slice_reverse", lambda g, v: g.op("slice", v["x"], starts=(-1,), ends=(-TO_END,), axes=(1,), steps=(-1,)),
         lambda i: i["x"][:, ::-1]),
    Case("slice_symbolic", lambda g, v: g.op("slice", v["x"], starts=(1,), ends=(TO_END,), axes=(0,)),
         lambda i: i["x"][1:]),
    Case("concat_2", lambda g, v: g.op("concat", v["x"], v["y"], axis=2),
         lambda i: np.concatenate([i["x"], i["y"]], 2)),
    Case("concat_0", lambda g, v: g.op("concat", v["x"], v["y"], axis=0),
         lambda i: np.concatenate([i["x"], i["y"]], 0)),
    Case("split", lambda g, v: g.add_node("split", [v["x"]], {"axis": 2, "sizes": (4, 12)}),
         lambda i: [i["x"][..., :4], i["x"][..., 4:]]),
    Case("expand", lambda g, v: g.op("expand", v["col"], shape=(N, 6, 16)),
         lambda i: np.broadcast_to(i["col"], i["x"].shape)),
    Case("squeeze", lambda g, v: g.op("squeeze", v["col"], axes=(2,)), lambda i: i["col"][..., 0]),
    Case("unsqueeze", lambda g, v: g.op("unsqueeze", v["x"], axes=(1,)), lambda i: i["x"][:, None]),
    Case("flatten", lambda g, v: g.op("flatten", v["x"], axis=2), lambda i: i["x"].reshape(-1, 16)),
    Case("gather_neg", lambda g, v: g.op("gather", v["x"], v["ix"], axis=1), lambda i: np.take(i["x"], i["ix"], 1)),
    Case("gather_table", lambda g, v: g.op("gather", const(g, "table", TABLE), v["tok"], axis=0),
         lambda i: TABLE[i["tok"]]),
    Case("gather_elements", lambda g, v: g.op("gather_elements", v["x"], v["gi"], axis=2),
         lambda i: np.take_along_axis(i["x"], i["gi"], 2)),
    Case("index_1", lambda g, v: g.op("index", v["x"], v["sel"], axis=1), lambda i: i["x"][:, i["sel"]]),
    Case("index_2", lambda g, v: g.op("index", v["x"], v["sel"], v["sel2"], axis=1),
         lambda i: i["x"][:, i["sel"], i["sel2"]]),
    Case("index_copy", lambda g, v: g.op("index_copy", v["x"], v["rows"], v["src"], axis=1),
         lambda i: index_copy64(i["x"], i["rows"], i["src"])),
    Case("full", lambda g, v: g.op("full", shape=(N, 3), value=1.5), lambda i: np.full((len(i["x"]), 3), 1.5)),
    Case("full_int", lambda g, v: g.op("full", shape=(2, N), value=7.0, dtype=i64),
         lambda i: np.full((2, len(i["x"])), 7, np.int64)),
    Case("iota", lambda g, v: g.op("iota", shape=(N,), start=3), lambda i: np.arange(3, 3 + len(i["x"]))),
    Case("iota_i32", lambda g, v: g.op("iota", shape=(4,), dtype=i32), lambda i: np.arange(4, dtype=np.int32)),
    Case("input_passthrough", lambda g, v: v["x"], lambda i: i["x"]),
    Case("constant_output", lambda g, v: const(g, "w10_out", W10), lambda i: W10),
    Case("pad", lambda g, v: g.op("pad", v["x"], pads=(0, 1, 2, 0, 2, -1), value=0.5),
         lambda i: np.pad(i["x"], ((0, 0), (1, 2), (2, 0)), constant_values=0.5)[:, :, :17]),
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    graph, where = build_case_graph("zoo", INPUTS, CASES, {"n": (1, 8)})
    engine = build_engine(graph, tmp_path_factory.mktemp("cpu_ops") / "zoo.qjc")
    rng = np.random.default_rng(20250101)
    runs = []
    for n in SIZES:
        inputs = make_inputs(n, rng)
        args = [inputs[k] for k in INPUTS]
        runs.append((inputs, engine(*args), run(graph, args)))
    return where, runs


def test_one_build_serves_two_sizes(zoo) -> None:
    _, runs = zoo
    assert [r[1][0].shape[0] for r in runs] == list(SIZES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_interpreter_and_reference(zoo, case: Case) -> None:
    where, runs = zoo
    for inputs, got, interp in runs:
        got_case, interp_case = got[where[case.name]], interp[where[case.name]]
        ref = case.ref(inputs)
        refs = ref if isinstance(ref, list) else [ref]
        n = len(inputs["x"])
        for k, (g, i, r) in enumerate(zip(got_case, interp_case, refs, strict=True)):
            what = f"{case.name} output {k} at n={n}"
            assert g.dtype == i.dtype, f"{what}: dtype {g.dtype}, interpreter {i.dtype}"
            assert_close(g, i, case.tol, f"{what} vs interpreter")
            assert_close(g, np.asarray(r), case.tol, f"{what} vs reference")


def test_reductions_over_an_axis_that_may_be_empty() -> None:
    """A reduced extent whose symbol's range starts at 0 (an ONNX decoder's first step has no past): TVM's
    reductions initialize inside the reduced loop, so an empty extent once returned uninitialized memory. Sums
    and products of nothing are their identities, an empty mean is nan, an empty max / min the lowest / highest
    value (numpy, the reference, refuses those two)."""
    import qjc
    from qjc.ir import Graph

    g = Graph("maybe_empty")
    g.add_symbol("n", 0, 16)
    x = g.add_input("x", TensorType((3, N, 4), f32))
    a = g.add_input("a", TensorType((3, N), i64))
    ops = ("sum", "mean", "prod", "max", "min")
    outs = [g.op(op, x, axes=[1], keepdims=keepdims) for op in ops for keepdims in (False, True)]
    outs += [g.op("sum", a, axes=[1], keepdims=False), g.op("max", a, axes=[0, 1], keepdims=False)]
    # every reduced axis that may be empty (not only the first), integers at the ends of int64, bool any / all
    g.add_symbol("m", 0, 16)
    b = g.add_input("b", TensorType((SymExpr.symbol("m"), N, 4), f32))
    outs += [g.op("sum", b, axes=[0, 1], keepdims=False), g.op("min", a, axes=[1], keepdims=False),
             g.op("max", g.op("gt", x, g.add_constant("zero", np.zeros((), np.float32))), axes=[1], keepdims=False),
             g.op("min", g.op("gt", x, g.add_constant("zero2", np.zeros((), np.float32))), axes=[1], keepdims=False)]
    g.set_outputs(*outs)
    engine = qjc.compile(g, target="cpu")
    rng = np.random.default_rng()
    for size in (0, 1, 5):
        xv = rng.standard_normal((3, size, 4)).astype(np.float32)
        av = rng.integers(-50, 50, (3, size))
        bv = rng.standard_normal((2, size, 4)).astype(np.float32)
        got = [np.asarray(v) for v in engine(xv, av, bv)]
        tail = got[len(ops) * 2 + 2:]
        np.testing.assert_allclose(tail[0], bv.astype(np.float64).sum(axis=(0, 1)), rtol=1e-5, atol=1e-5)
        want_min = av.min(axis=1) if size else np.full(3, np.iinfo(np.int64).max)
        np.testing.assert_array_equal(tail[1], want_min)
        np.testing.assert_array_equal(tail[2], (xv > 0).any(axis=1))
        np.testing.assert_array_equal(tail[3], (xv > 0).all(axis=1))
        x64 = xv.astype(np.float64)
        for k, op in enumerate(ops):
            if size == 0:
                want = {"sum": np.zeros((3, 4)), "mean": np.full((3, 4), np.nan), "prod": np.ones((3, 4)),
                        "max": np.full((3, 4), -np.inf), "min": np.full((3, 4), np.inf)}[op]
            else:
                want = getattr(np, op)(x64, axis=1)
            # a float32 sum of terms that cancel is off by ~1e-7 of the terms, not of the result: an absolute floor
            np.testing.assert_allclose(got[2 * k], want, rtol=1e-5, atol=1e-5, err_msg=f"{op} over {size}")
            np.testing.assert_allclose(got[2 * k + 1], want[:, None], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{op} keepdims over {size}")
        np.testing.assert_array_equal(got[2 * len(ops)], av.sum(axis=1))
        assert got[2 * len(ops) + 1] == (av.max() if size else np.iinfo(np.int64).min)
