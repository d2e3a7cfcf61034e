"""Layout canonicalization: one spelling per GEMM, with weights in the layout the backend reads.

Rules (each a local rewrite):
- a matmul by a transposed 2-D weight is a ``linear`` (which takes weights as [N, K]);
- a matmul by a constant [K, N] weight becomes a ``linear`` by the pre-transposed constant, unless
  the backend prefers [K, N] weights (``Capabilities.layout("weights") == "kn"``), in which case
  constant ``linear`` weights go the other way, to a matmul by the pre-transposed constant;
- a bias add after a linear joins the linear; a GEMM over rows flattened by a reshape and
  unflattened after works on the rows in place (GPT-2 wraps every Conv1D that way);
- chains of metadata ops (reshape, squeeze, unsqueeze, flatten) become one reshape;
- a batch_norm after a conv2d, both with constant parameters, folds into the conv's weights.

The existing canonicalization rules (no-op casts and reshapes, transpose pairs) run in the same
fixpoint, so what these rules expose is cleaned up at once.
"""

from __future__ import annotations

import numpy as np

from qjc.errors import IRError
from qjc.ir.dims import product
from qjc.ir.graph import Graph, Value
from qjc.passes.cleanup.canonicalize import CANONICALIZE_RULES
from qjc.passes.fusion.pattern import Match, Var, op, pattern_rule, used_once
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import RewritePass, Rule

x, w, b = Var("x"), Var("w"), Var("b")

VIEW_OPS = ("reshape", "squeeze", "unsqueeze", "flatten")


def preferred_weight_layout(ctx: PassContext) -> str:
    """"nk" (linear's [N, K], the default) or "kn" ([K, N], a matmul's right operand)."""
    caps = ctx.capabilities
    layout = caps.layout("weights") if caps is not None else None
    return "kn" if layout == "kn" else "nk"


def _try_op(graph: Graph, name: str, *inputs: Value, **attrs) -> Value | None:
    try:
        return graph.op(name, *inputs, **attrs)
    except IRError:
        return None


def _plain_constant(graph: Graph, value: Value) -> np.ndarray | None:
    data = graph.constant_data(value)
    return data if isinstance(data, np.ndarray) and not value.type.dtype.is_quant else None


def transposed_constant(graph: Graph, value: Value) -> Value:
    """A constant holding the transpose of the 2-D constant ``value`` (shared between the GEMMs
    that ask for it)."""
    data = graph.constant_data(value)
    name = f"{value.name}.T"
    existing = graph.constants.get(name)
    if existing is not None and isinstance(existing.data, np.ndarray) and existing.data.shape == data.shape[::-1] \
            and np.array_equal(existing.data, data.T):
        return existing.value
    return graph.add_constant(name, np.ascontiguousarray(data.T))


# ---- GEMM spelling -----------------------------------------------------------------------------------


def _linear_from_transposed_weight(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    t = m.nodes["t"]
    weight = t.inputs[0]
    if weight.type.rank != 2 or (t.attrs["perm"] not in (None, (1, 0))) or m["x"].type.rank < 2:
        return None
    return _try_op(graph, "linear", m["x"], weight)


def _linear_from_constant_weight(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    weight = m["w"]
    if preferred_weight_layout(ctx) != "nk" or weight.type.rank != 2 or _plain_constant(graph, weight) is None:
        return None
    return _try_op(graph, "linear", m["x"], transposed_constant(graph, weight))


def _matmul_from_constant_linear(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    node = m.nodes["lin"]
    weight = node.inputs[1]
    if (preferred_weight_layout(ctx) != "kn" or _plain_constant(graph, weight) is None
            or node.inputs[0].type.rank < 2):
        return None
    out = _try_op(graph, "matmul", node.inputs[0], transposed_constant(graph, weight))
    if out is not None and len(node.inputs) == 3:
        out = _try_op(graph, "add", out, node.inputs[2])
    return out


def _linear_with_bias(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    node = m.nodes["lin"]
    bias = m["b"]
    n = node.output.type.shape[-1]
    if bias.type.shape != (n,) or bias.type.dtype != node.output.type.dtype or not used_once(graph, node.output):
        return None
    return _try_op(graph, "linear", node.inputs[0], node.inputs[1], bias)


def _gemm_on_rows_in_place(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    """reshape(gemm(reshape(y, [R, K])), [*lead, N]) -> gemm(reshape(y, [*lead, K])) with
    prod(lead) == R: a GEMM treats rows independently, so which dims hold the rows does not matter."""
    flat = m.nodes["flat"].output
    gemm = m.nodes["gemm"]
    out = m.nodes["out"].output
    if flat.type.rank != 2 or out.type.rank < 2 or product(out.type.shape[:-1]) != flat.type.shape[0]:
        return None
    if not used_once(graph, gemm.output):
        return None  # the flattened result is needed as it is elsewhere: keep one GEMM
    if gemm.op == "matmul" and gemm.inputs[1].type.rank != 2:
        return None
    lead = tuple(out.type.shape[:-1])
    rows = _try_op(graph, "reshape", m["y"], shape=lead + (flat.type.shape[1],))
    if rows is None:
        return None
    return _try_op(graph, gemm.op, rows, *gemm.inputs[1:])


# ---- metadata chains ---------------------------------------------------------------------------------


def _merged_view(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    outer = m.nodes["outer"]
    if outer.op == "reshape" and m.nodes["inner"].op == "reshape":
        return None  # canonicalize's merge_double_reshape owns that case
    return _try_op(graph, "reshape", m["x"], shape=tuple(outer.output.type.shape))


# ---- batch norm into conv ------------------------------------------------------------------------


def _conv_absorbs_batch_norm(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    bn = m.nodes["bn"]
    conv = m.nodes["conv"]
    params = [_plain_constant(graph, v) for v in bn.inputs[1:]]
    weight = _plain_constant(graph, conv.inputs[1])
    bias = _plain_constant(graph, conv.inputs[2]) if len(conv.inputs) == 3 else None
    if weight is None or any(p is None for p in params) or (len(conv.inputs) == 3 and bias is None):
        return None
    if not used_once(graph, conv.output):
        return None
    scale, shift, mean, var = (p.astype(np.float64) for p in params)
    factor = scale / np.sqrt(var + bn.attrs["eps"])  # per output channel
    new_weight = (weight.astype(np.float64) * factor[:, None, None, None]).astype(weight.dtype)
    old_bias = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
    new_bias = ((old_bias - mean) * factor + shift).astype(weight.dtype)
    wv = graph.add_constant(f"{conv.inputs[1].name}.bn", new_weight)
    bv = graph.add_constant(f"{bn.inputs[2].name}.bn" if bias is None else f"{conv.inputs[2].name}.bn", new_bias)
    return _try_op(graph, "conv2d", conv.inputs[0], wv, bv, **conv.attrs)


def _conv_pattern(with_bias: bool):
    conv_args = (x, w, b) if with_bias else (x, w)
    return op("batch_norm", op("conv2d", *conv_args, as_="conv"), Var("s"), Var("t"), Var("mu"), Var("var"),
              as_="bn")


LAYOUT_RULES: list[Rule] = [
    pattern_rule("linear_from_matmul_by_transposed_weight", op("matmul", x, op("transpose", w, as_="t")),
                 _linear_from_transposed_weight),
    pattern_rule("linear_from_matmul_by_constant_weight", op("matmul", x, w), _linear_from_constant_weight),
    pattern_rule("matmul_by_pretransposed_weight_for_kn_backends", op("linear", x, w, as_="lin"),
                 _matmul_from_constant_linear),
    pattern_rule("matmul_by_pretransposed_biased_weight_for_kn_backends", op("linear", x, w, b, as_="lin"),
                 _matmul_from_constant_linear),
    pattern_rule("linear_absorbs_bias_add", op("add", op("linear", x, w, as_="lin"), b), _linear_with_bias),
    pattern_rule("gemm_on_rows_without_flattening",
                 op("reshape", op(("linear", "matmul"), op("reshape", Var("y"), as_="flat"), Var("rest"), as_="gemm"),
                    as_="out"),
                 _gemm_on_rows_in_place),
    pattern_rule("biased_gemm_on_rows_without_flattening",
                 op("reshape", op("linear", op("reshape", Var("y"), as_="flat"), w, b, as_="gemm"), as_="out"),
                 _gemm_on_rows_in_place),
    pattern_rule("merge_view_chain", op(VIEW_OPS, op(VIEW_OPS, x, as_="inner"), as_="outer"), _merged_view),
    pattern_rule("conv2d_absorbs_batch_norm", _conv_pattern(False), _conv_absorbs_batch_norm),
    pattern_rule("biased_conv2d_absorbs_batch_norm", _conv_pattern(True), _conv_absorbs_batch_norm),
]


class LayoutCanonicalization(RewritePass):
    """LAYOUT_RULES plus the cleanup canonicalization rules, to one fixpoint."""

    def __init__(self, max_iterations: int = 50) -> None:
        super().__init__("layout", LAYOUT_RULES + CANONICALIZE_RULES, max_iterations)
