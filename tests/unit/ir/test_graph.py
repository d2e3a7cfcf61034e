"""Graph construction and mutation: names, uses, toposort, copy."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.errors import IRError, QJCError
from qjc.ir import Graph, SymExpr, TensorType, f32
from qjc.ir.interpreter import run


def _small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((2, 3), f32))
    w = g.add_constant("w", np.arange(3, dtype=np.float32))
    y = g.op("mul", x, w, name="y")
    z = g.op("exp", y)
    g.set_outputs(g.op("add", z, y))
    return g


def test_names_are_kept_and_unique():
    g = _small_graph()
    names = [v.name for v in g.all_values()]
    assert len(names) == len(set(names))
    assert "y" in names and "x" in names and "w" in names
    with pytest.raises(IRError, match="defined twice"):
        g._claim("y")


def test_users_and_replace_uses():
    g = _small_graph()
    y = g.nodes[0].output
    assert len(g.users()[y]) == 2
    x = g.inputs[0]
    g.replace_uses(y, x)
    assert y not in g.users()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run(g, [a])[0], np.exp(a) + a, rtol=1e-6)


def test_toposort_restores_order_and_detects_cycles():
    g = _small_graph()
    ref = run(g, [np.ones((2, 3), np.float32)])[0]
    g.nodes.reverse()
    g.toposort()
    np.testing.assert_array_equal(run(g, [np.ones((2, 3), np.float32)])[0], ref)
    g.nodes[0].inputs[0] = g.nodes[-1].output  # mul now reads the final add: a cycle
    with pytest.raises(IRError, match="cycle"):
        g.toposort()


def test_copy_is_independent():
    g = _small_graph()
    h = g.copy()
    h.nodes[1].op = "neg"
    assert g.nodes[1].op == "exp"
    assert h.constants["w"].data is g.constants["w"].data
    assert [v.name for v in h.all_values()] == [v.name for v in g.all_values()]
    assert all(n.outputs[0].producer is n for n in h.nodes)


def test_interpreter_checks_inputs():
    g = Graph()
    g.add_symbol("n", 1, 4)
    x = g.add_input("x", TensorType((SymExpr.symbol("n"), 2), f32))
    g.set_outputs(g.op("neg", x))
    with pytest.raises(QJCError, match="outside its range"):
        run(g, [np.zeros((5, 2), np.float32)])
    with pytest.raises(QJCError, match="dtype"):
        run(g, [np.zeros((2, 2), np.float64)])
    with pytest.raises(QJCError, match="rank"):
        run(g, [np.zeros((2,), np.float32)])
    with pytest.raises(QJCError, match="takes 1 inputs"):
        run(g, [])


def test_constant_without_data_needs_it_at_run_time():
    g = Graph()
    x = g.add_input("x", TensorType((3,), f32))
    w = g.add_constant("w", None, TensorType((3,), f32))
    g.set_outputs(g.op("add", x, w))
    with pytest.raises(QJCError, match="no data"):
        run(g, [np.zeros(3, np.float32)])
    out = run(g, [np.zeros(3, np.float32)], constants={"w": np.ones(3, np.float32)})
    np.testing.assert_array_equal(out[0], np.ones(3))
