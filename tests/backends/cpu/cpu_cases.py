"""Shared helpers of the cpu backend tests: building graphs into engines and comparing outputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qjc.api import build, load
from qjc.ir.graph import Graph, Value

# relative / absolute tolerances against a float64 reference, by what the output is
TOL = {"elementwise": (1e-5, 1e-6), "reduction": (1e-4, 1e-5), "exact": (0.0, 0.0)}


@dataclass
class Case:
    """One output of a shared test graph: how to make it and an independent float64 reference."""

    name: str
    make: Callable[[Graph, dict[str, Value]], Value | list[Value]]
    ref: Callable[[dict[str, np.ndarray]], np.ndarray | list[np.ndarray]]
    tol: str = "elementwise"

    def n_outputs(self, made: Value | list[Value]) -> int:
        return len(made) if isinstance(made, list) else 1


def build_engine(graph: Graph, out_dir: Path, **options: Any) -> Any:
    """Compile ``graph`` as given (no pass pipeline: each op is tested as itself) and load it."""
    build(graph, out_dir, target="cpu", optimize=False, **options)
    return load(out_dir)


def build_case_graph(name: str, inputs: dict[str, Any], cases: list[Case], symbols: dict[str, tuple[int, int]]
                     ) -> tuple[Graph, dict[str, slice]]:
    """One graph over ``inputs`` (name -> TensorType) whose outputs are the cases' results in order,
    and where each case's results sit among the graph outputs."""
    g = Graph(name)
    for sym, (lo, hi) in symbols.items():
        g.add_symbol(sym, lo, hi)
    values = {n: g.add_input(n, t) for n, t in inputs.items()}
    outs: list[Value] = []
    where: dict[str, slice] = {}
    for case in cases:
        made = case.make(g, values)
        made = made if isinstance(made, list) else [made]
        where[case.name] = slice(len(outs), len(outs) + len(made))
        outs.extend(made)
    g.set_outputs(*outs)
    return g, where


def assert_close(got: np.ndarray, want: np.ndarray, tol: str, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    rtol, atol = TOL[tol]
    if want.dtype.kind in "biu" or tol == "exact":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, err_msg=what)


erf = np.vectorize(math.erf, otypes=[np.float64])


def softmax64(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
