"""Shared helpers for the fusion, layout and memory-plan tests: graphs from IR text, random inputs,
running passes under the verifier, and comparing interpreter outputs before and after."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qjc.ir.dtypes import boolean
from qjc.ir.graph import Graph, Node
from qjc.ir.interpreter import bind_symbols, evaluate_node, run
from qjc.ir.parser import parse_graph
from qjc.ir.printer import print_graph
from qjc.passes.manager import Pass, PassContext, PassManager, VerifyInstrument
from qjc.passes.memory_plan import MemoryPlan

InputMaker = Callable[[Graph, np.random.Generator], list[np.ndarray]]


def parse(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """The graph ``text`` describes; it must print back exactly (so ``text`` is the golden 'before')."""
    graph = parse_graph(text, constants=constants or {})
    assert print_graph(graph) == text, f"the test's IR text is not in printed form:\n{print_graph(graph)}"
    return graph


def weights(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Random f32 constants by name."""
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in shapes.items()}


def random_inputs(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for v in graph.inputs:
        dtype = v.type.dtype
        shape = v.type.concrete({name: rng_range.hi for name, rng_range in graph.symbols.items()})
        if dtype == boolean:
            out.append(rng.random(shape) < 0.7)
        elif dtype.is_float:
            out.append(rng.standard_normal(shape).astype(dtype.np_dtype))
        else:
            out.append(rng.integers(0, 8, shape).astype(dtype.np_dtype))
    return out


def positive_inputs(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    """Random inputs with floats in [0.5, 1.5) (for sqrt, log and friends)."""
    return [np.abs(a) % 1 + 0.5 if a.dtype.kind == "f" else a for a in random_inputs(graph, rng)]


def assert_same_outputs(before: Graph, after: Graph, make_inputs: InputMaker = random_inputs, rounds: int = 2,
                        rtol: float = 1e-5, atol: float = 1e-6, seed: int = 0) -> None:
    """Interpreter outputs of ``before`` and ``after`` agree on fresh random inputs."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        inputs = make_inputs(before, rng)
        want, got = run(before, inputs), run(after, inputs)
        assert len(want) == len(got)
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            assert g.dtype == w.dtype and g.shape == w.shape, f"output {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
            assert not np.isnan(w.astype(np.float64)).any(), f"output {i} has NaNs: the test's inputs are wrong"
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol,
                                       err_msg=f"output {i} changed")


def apply(passes: Sequence[Pass], graph: Graph, capabilities: Any = None, make_inputs: InputMaker = random_inputs,
          rtol: float = 1e-5, atol: float = 1e-6) -> tuple[Graph, PassContext]:
    """Run ``passes`` under the verifier and check the outputs did not change."""
    before = graph.copy()
    ctx = PassContext(debug=0, capabilities=capabilities)
    after = PassManager(list(passes), [VerifyInstrument()]).run(graph, ctx)
    assert_same_outputs(before, after, make_inputs, rtol=rtol, atol=atol)
    return after, ctx


def check_rewrite(passes: Sequence[Pass], before_text: str, after_text: str,
                  constants: dict[str, np.ndarray] | None = None, **kwargs: Any) -> tuple[Graph, PassContext]:
    """Golden IR before and after, and the same outputs on random inputs."""
    graph = parse(before_text, constants)
    after, ctx = apply(passes, graph, **kwargs)
    got = print_graph(after)
    assert got == after_text, f"IR after the passes:\n{got}"
    return after, ctx


def fused_kinds(graph: Graph) -> list[str]:
    return [n.attrs["kind"] for n in graph.nodes if n.op == "fused"]


def top_ops(graph: Graph) -> list[str]:
    return [n.op if n.op != "fused" else f"fused:{n.attrs['kind']}" for n in graph.nodes]


def fused_nodes(graph: Graph, kind: str | None = None) -> list[Node]:
    return [n for n in graph.nodes if n.op == "fused" and (kind is None or n.attrs["kind"] == kind)]


def random_dag(seed: int, nodes: int = 40) -> Graph:
    """A random graph of [4, 16] f32 tensors: unary and binary elementwise ops (some broadcasting a
    [4, 1] or [16] operand), linears, reductions with keepdims, cumsum, softmax and rms_norm,
    each node reading random earlier values; several results are returned."""
    from qjc.ir import TensorType, f32

    rng = np.random.default_rng(seed)
    g = Graph(f"random{seed}")
    full = [g.add_input("x", TensorType((4, 16), f32)), g.add_input("y", TensorType((4, 16), f32))]
    small = [g.add_input("s", TensorType((4, 1), f32))]
    row = [g.add_constant("r", rng.standard_normal(16).astype(np.float32))]
    w = g.add_constant("w", (rng.standard_normal((16, 16)) * 0.25).astype(np.float32))
    pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
    for _ in range(nodes):
        kind = rng.choice(["unary", "binary", "broadcast", "linear", "reduce", "cumsum", "softmax", "norm"],
                          p=[0.25, 0.25, 0.15, 0.1, 0.08, 0.05, 0.06, 0.06])
        if kind == "unary":
            full.append(g.op(str(rng.choice(["neg", "tanh", "sigmoid", "relu", "silu"])), pick(full)))
        elif kind == "binary":
            full.append(g.op(str(rng.choice(["add", "mul", "sub", "maximum"])), pick(full), pick(full)))
        elif kind == "broadcast":
            other = pick(small) if rng.random() < 0.5 else pick(row)
            full.append(g.op(str(rng.choice(["add", "mul"])), pick(full), other))
        elif kind == "linear":
            full.append(g.op("linear", pick(full), w))
        elif kind == "reduce":
            s = g.op(str(rng.choice(["sum", "max"])), pick(full), axes=(1,), keepdims=True)
            small.append(g.op("tanh", s) if rng.random() < 0.5 else s)
        elif kind == "cumsum":
            full.append(g.op("cumsum", pick(full), axis=1))
        elif kind == "softmax":
            full.append(g.op("softmax", pick(full), axis=1))
        else:
            full.append(g.op("rms_norm", pick(full), eps=1e-3))
    produced = [v for n in g.nodes for v in n.outputs]
    returned = [full[-1]] + [v for v in produced[:-1] if rng.random() < 0.15]
    g.set_outputs(*returned)
    from qjc.passes.cleanup import eliminate_dead_code

    eliminate_dead_code(g)
    return g


# ---- memory plans ----------------------------------------------------------------------------------


def check_no_overlap(graph: Graph, plan: MemoryPlan) -> None:
    """Every pair of planned values live at the same step holds disjoint bytes, unless one
    reuses the other's buffer (in place or as a view), in which case they share its offset."""
    live: dict[str, set[int]] = {}
    last_use: dict[str, int] = {}
    defined: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[v.name] = step
        for v in node.outputs:
            defined[v.name] = step
    for name in plan.offsets:
        live[name] = set(range(defined[name], last_use.get(name, defined[name]) + 1))
    shared = _buffer_classes(plan)
    for a, b in itertools.combinations(sorted(plan.offsets), 2):
        if not live[a] & live[b]:
            continue
        if shared[a] == shared[b]:
            assert plan.offsets[a] == plan.offsets[b]
            continue
        lo_a, hi_a = plan.offsets[a], plan.offsets[a] + plan.sizes[a]
        lo_b, hi_b = plan.offsets[b], plan.offsets[b] + plan.sizes[b]
        assert hi_a <= lo_b or hi_b <= lo_a, f"%{a} [{lo_a}, {hi_a}) and %{b} [{lo_b}, {hi_b}) overlap while live"
    for name, offset in plan.offsets.items():
        assert offset % plan.alignment == 0
        assert offset + plan.sizes[name] <= plan.arena_bytes
    assert plan.arena_bytes <= plan.naive_bytes


def _buffer_classes(plan: MemoryPlan) -> dict[str, str]:
    """Values tied by in-place reuse or views, to one representative each."""
    parent = {name: name for name in plan.offsets}

    def find(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for a, b in list(plan.in_place.items()) + list(plan.aliases.items()):
        if a in parent and b in parent:
            parent[find(a)] = find(b)
    return {n: find(n) for n in parent}


def run_in_arena(graph: Graph, plan: MemoryPlan, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Execute ``graph`` storing every planned value in one byte arena at its offset (and reading it
    back from there), so a wrong plan corrupts results."""
    arena = np.zeros(plan.arena_bytes, np.uint8)
    symbols = bind_symbols(graph, inputs)
    outside: dict[int, np.ndarray] = dict(zip(map(id, graph.inputs), inputs, strict=True))
    for c in graph.constants.values():
        outside[id(c.value)] = c.data

    def read(v) -> np.ndarray:
        if v.name not in plan.offsets or id(v) in outside:
            return outside[id(v)]
        shape = v.type.concrete(symbols)
        size = int(np.prod(shape)) * v.type.dtype.np_dtype.itemsize
        raw = arena[plan.offsets[v.name]: plan.offsets[v.name] + size]
        return raw.view(v.type.dtype.np_dtype).reshape(shape).copy()

    for node in graph.nodes:
        results = evaluate_node(node, [read(v) for v in node.inputs], symbols)
        for v, r in zip(node.outputs, results, strict=True):
            if v.name in plan.offsets:
                data = np.ascontiguousarray(r).view(np.uint8).reshape(-1)
                arena[plan.offsets[v.name]: plan.offsets[v.name] + data.size] = data
            else:
                outside[id(v)] = r
    return [read(v) for v in graph.outputs]


def mlp(rng: np.random.Generator, rows: int) -> Graph:
    """x [rows, 64] -> linear 96 -> relu -> linear 16 (weights fc1.weight, head.weight): the
    quantization tests' model."""
    from qjc.ir import TensorType, f32

    g = Graph()
    x = g.add_input("x", TensorType((rows, 64), f32))
    w1 = g.add_constant("fc1.weight", rng.standard_normal((96, 64)).astype(np.float32) * 0.2)
    w2 = g.add_constant("head.weight", rng.standard_normal((16, 96)).astype(np.float32) * 0.2)
    g.set_outputs(g.op("linear", g.op("relu", g.op("linear", x, w1)), w2))
    return g


def padded_prefill(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, positions) [batch, longest prompt] prefilling every prompt in one call of a paged
    decoder: shorter prompts are padded with token 0 at position -1 (what the paged kernels skip)."""
    width = max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), np.int64)
    positions = np.full((len(prompts), width), -1, np.int64)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)], positions[b, : len(p)] = p, np.arange(len(p))
    return tokens, positions
