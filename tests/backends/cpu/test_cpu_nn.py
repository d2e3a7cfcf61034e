"""conv2d (strides, asymmetric pads, dilations, groups), pooling (ceil_mode, count_include_pad,
dilation) and batch_norm on the cpu backend, against the interpreter and torch in float64, with a
symbolic batch run at two sizes."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_cases import Case, assert_close, build_case_graph, build_engine

from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import f32
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType

torch = pytest.importorskip("torch")
F = torch.nn.functional

N = SymExpr.symbol("n")
INPUTS = {"x": TensorType((N, 4, 10, 11), f32)}
_R = np.random.default_rng(77)
W = _R.standard_normal((6, 4, 3, 3)).astype(np.float32)
B = _R.standard_normal(6).astype(np.float32)
WD = _R.standard_normal((8, 1, 3, 3)).astype(np.float32)
W1 = _R.standard_normal((6, 2, 1, 1)).astype(np.float32)
BN = [_R.standard_normal(4).astype(np.float32) for _ in range(3)] + [_R.uniform(0.5, 2, 4).astype(np.float32)]


def t64(a: np.ndarray):
    return torch.from_numpy(np.asarray(a, np.float64))


def conv_ref(x, w, bias, strides, pads, dilations, groups):
    top, left, bottom, right = pads
    xp = F.pad(t64(x), (left, right, top, bottom))
    y = F.conv2d(xp, t64(w), None if bias is None else t64(bias), stride=strides, dilation=dilations, groups=groups)
    return y.numpy()


def conv(name, w, bias, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1) -> Case:
    def make(g, v):
        ins = [v["x"], g.add_constant(f"{name}_w", w)] + ([g.add_constant(f"{name}_b", bias)] if bias is not None
                                                           else [])
        return g.op("conv2d", *ins, strides=strides, pads=pads, dilations=dilations, groups=groups)

    return Case(name, make, lambda i: conv_ref(i["x"], w, bias, strides, pads, dilations, groups), "reduction")


def pool(op, name, **attrs) -> Case:
    def ref(i):
        x = t64(i["x"])
        kernel, strides, pads = attrs["kernel"], attrs.get("strides") or attrs["kernel"], attrs.get("pads", (0,) * 4)
        padding = (pads[0], pads[1])
        if op == "max_pool2d":
            return F.max_pool2d(x, kernel, strides, padding, attrs.get("dilations", (1, 1)),
                                ceil_mode=attrs.get("ceil_mode", False)).numpy()
        return F.avg_pool2d(x, kernel, strides, padding, ceil_mode=attrs.get("ceil_mode", False),
                            count_include_pad=attrs.get("count_include_pad", False)).numpy()

    return Case(name, lambda g, v: g.op(op, v["x"], **attrs), ref, "reduction")


CASES = [
    conv("conv", W, B, strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2)),
    conv("conv_plain", W, None),
    conv("conv_depthwise", WD, None, pads=(1, 1, 1, 1), groups=4),
    conv("conv_grouped_1x1", W1, None, strides=(2, 2), groups=2),
    pool("max_pool2d", "max_ceil", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True),
    pool("max_pool2d", "max_dilated", kernel=(2, 3), strides=(1, 2), dilations=(2, 1)),
    pool("avg_pool2d", "avg_ceil_incl", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True,
         count_include_pad=True),
    pool("avg_pool2d", "avg_ceil_excl", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True),
    pool("avg_pool2d", "avg_plain", kernel=(2, 2)),
    Case("batch_norm", lambda g, v: g.op("batch_norm", v["x"], *(g.add_constant(f"bn{k}", BN[k]) for k in range(4))),
         lambda i: F.batch_norm(t64(i["x"]), t64(BN[2]), t64(BN[3]), t64(BN[0]), t64(BN[1]), eps=1e-5).numpy(),
         "reduction"),
]


@pytest.fixture(scope="module")
def nn_runs(tmp_path_factory):
    graph, where = build_case_graph("nn", INPUTS, CASES, {"n": (1, 4)})
    engine = build_engine(graph, tmp_path_factory.mktemp("cpu_nn") / "nn.qjc")
    rng = np.random.default_rng(5)
    runs = []
    for n in (1, 3):
        x = rng.standard_normal((n, 4, 10, 11)).astype(np.float32)
        runs.append(({"x": x}, engine(x), run(graph, [x])))
    return where, runs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nn_op_matches_interpreter_and_torch(nn_runs, case: Case) -> None:
    where, runs = nn_runs
    for inputs, got, interp in runs:
        g, i = got[where[case.name]][0], interp[where[case.name]][0]
        what = f"{case.name} at n={len(inputs['x'])}"
        assert_close(g, i, case.tol, f"{what} vs interpreter")
        assert_close(g, case.ref(inputs), case.tol, f"{what} vs torch")
