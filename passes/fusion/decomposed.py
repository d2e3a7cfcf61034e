"""Rules that turn decomposed computations back into the single op they spell, so that fusion (and
the backend's kernel for that op) sees one node: RMSNorm as HF Llama/Qwen2 write it, LayerNorm as
mean/sub/var, softmax as exp/sum, SiLU and GELU as their formulas, attention as
matmul-scale-mask-softmax-matmul, and the "repeat_kv" broadcast of grouped-query attention.

Each rule is (name, pattern, replacement); the pattern is data (see pattern.py), the replacement
checks what a structural match cannot (axes, shapes, dtypes) and returns None to decline. The
results agree with the decomposed forms within floating-point rounding; the one difference beyond
rounding is documented on the attention rule.
"""

from __future__ import annotations

import math

from qjc.errors import IRError
from qjc.ir.dims import Dim, product
from qjc.ir.graph import Graph, Value
from qjc.ir.ops.shape_rules import broadcast_shapes
from qjc.passes.fusion.pattern import Alt, Const, Match, Var, maybe, op, pattern_rule, used_once
from qjc.passes.manager import PassContext
from qjc.passes.rewrite import RewritePass, Rule

x, w, b = Var("x"), Var("w"), Var("b")

# Attention logits must be masked with something at least this negative to count as "never attend".
MASK_FILL_AT_MOST = -1e4


def trailing_axis(axes: tuple[int, ...] | None, rank: int) -> int | None:
    """The first axis when ``axes`` are exactly axis..rank-1 (what a norm over the last dims reduces);
    None otherwise."""
    if rank == 0:
        return None
    norm = sorted({a % rank for a in (range(rank) if axes is None else axes)})
    if not norm or norm != list(range(norm[0], rank)):
        return None
    return norm[0]


def _try_op(graph: Graph, name: str, *inputs: Value, **attrs) -> Value | None:
    """graph.op, or None where type inference rejects the operands (the rule then declines)."""
    try:
        return graph.op(name, *inputs, **attrs)
    except IRError:
        return None


# ---- activations -----------------------------------------------------------------------------------


def _silu(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    return _try_op(graph, "silu", m["x"])


def _gelu(approximate: str):
    def build(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
        return _try_op(graph, "gelu", m["x"], approximate=approximate)

    return build


def _half_x_times(inner):
    """0.5 * x * inner, in the two associations exporters produce."""
    half = Const("half", 0.5)
    return Alt((op("mul", op("mul", x, half), inner), op("mul", x, op("mul", half, inner))))


_GELU_TANH = _half_x_times(op("add", op("tanh", op("mul", op("add", x, op("mul", op("pow", x, Const("three", 3.0)),
                                                                                  Const("c", 0.044715))),
                                                       Const("k", math.sqrt(2.0 / math.pi)))),
                               Const("one", 1.0)))
_GELU_ERF = _half_x_times(op("add", op("erf", Alt((op("mul", x, Const("r", 1.0 / math.sqrt(2.0))),
                                                   op("div", x, Const("s", math.sqrt(2.0)))))),
                             Const("one", 1.0)))

# ---- normalizations -------------------------------------------------------------------------------

_SQUARE = Alt((op("mul", x, x), op("pow", x, Const("two", 2.0))))
_MEAN_SQUARE = op("mean", _SQUARE, keepdims=True, as_="ms")
def _inverse_root_forms(numerator, variance):
    """numerator / sqrt(variance + eps) as exporters write it: rsqrt, a division, or (torch.onnx) a
    reciprocal of the square root."""
    root = op("sqrt", op("add", variance, Const("eps")))
    return Alt((op("mul", numerator, op("rsqrt", op("add", variance, Const("eps")))), op("div", numerator, root),
                op("mul", numerator, op("reciprocal", root))))


_RMS_NORM = _inverse_root_forms(x, _MEAN_SQUARE)


def _rms_norm(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    xv = m["x"]
    axis = trailing_axis(m.nodes["ms"].attrs["axes"], xv.type.rank)
    if axis is None or not xv.type.dtype.is_float:
        return None
    return _try_op(graph, "rms_norm", xv, axis=axis, eps=m.scalars["eps"])


_CENTERED = op("sub", x, op("mean", x, keepdims=True, as_="mu"), as_="c")
_VARIANCE = op("mean", Alt((op("mul", Var("c"), Var("c")), op("pow", Var("c"), Const("two", 2.0)))),
               keepdims=True, as_="var")
_LAYER_NORM = _inverse_root_forms(_CENTERED, _VARIANCE)


def _layer_norm(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    xv = m["x"]
    rank = xv.type.rank
    axis = trailing_axis(m.nodes["mu"].attrs["axes"], rank)
    if axis is None or axis != trailing_axis(m.nodes["var"].attrs["axes"], rank) or not xv.type.dtype.is_float:
        return None
    return _try_op(graph, "layer_norm", xv, axis=axis, eps=m.scalars["eps"])


def _normalized_shape_param(m: Match, graph: Graph, norm: str, param: str) -> Value | None:
    """The parameter ``param`` when it has exactly the normalized shape and dtype of the norm it
    multiplies or shifts, and the norm feeds nothing else (otherwise both would be computed)."""
    node = m.nodes[norm]
    p = m[param]
    normalized = node.inputs[0].type.shape[node.attrs["axis"] % node.inputs[0].type.rank:]
    if p.type.shape != normalized or p.type.dtype != node.inputs[0].type.dtype:
        return None
    return p if used_once(graph, node.output) else None


def _norm_with_weight(op_name: str):
    def build(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
        weight = _normalized_shape_param(m, graph, "norm", "w")
        if weight is None:
            return None
        attrs = m.nodes["norm"].attrs
        return _try_op(graph, op_name, m["x"], weight, axis=attrs["axis"], eps=attrs["eps"])

    return build


def _layer_norm_with_bias(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    bias = _normalized_shape_param(m, graph, "norm", "b")
    if bias is None:
        return None
    attrs = m.nodes["norm"].attrs
    return _try_op(graph, "layer_norm", m["x"], m["w"], bias, axis=attrs["axis"], eps=attrs["eps"])


# ---- softmax ---------------------------------------------------------------------------------------

_EXP = Alt((op("exp", op("sub", x, op("max", x, keepdims=True, as_="mx")), as_="e"), op("exp", x, as_="e")))
_SOFTMAX = Alt((op("div", _EXP, op("sum", Var("e"), keepdims=True, as_="s")),
                op("mul", _EXP, op("reciprocal", op("sum", Var("e"), keepdims=True, as_="s")))))


def _softmax(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    xv = m["x"]
    rank = xv.type.rank
    axes = m.nodes["s"].attrs["axes"]
    axes = tuple(range(rank)) if axes is None else tuple(a % rank for a in axes)
    if len(axes) != 1 or not xv.type.dtype.is_float:
        return None
    if "mx" in m.nodes:
        mx_axes = m.nodes["mx"].attrs["axes"]
        if mx_axes is None or tuple(a % rank for a in mx_axes) != axes:
            return None
    return _try_op(graph, "softmax", xv, axis=axes[0])


# ---- batched matmul and attention ---------------------------------------------------------------


def _noop_expand(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    return m["x"] if m["x"].type == m.nodes["e"].outputs[0].type else None


def _batch_source(flat: Value, batch: tuple[Dim, ...]) -> Value | None:
    """The operand a [P, M, K] reshape flattened: its batch dims must be exactly ``batch`` (an
    expand of batch dims only is looked through: matmul broadcasts them itself)."""
    src = flat.producer.inputs[0]
    if src.type.rank < 3 or tuple(src.type.shape[:-2]) != batch or src.type.shape[-2:] != flat.type.shape[-2:]:
        return None
    node = src.producer
    if node is not None and node.op == "expand":
        inner = node.inputs[0]
        if inner.type.rank >= 2 and inner.type.shape[-2:] == src.type.shape[-2:]:
            return inner
    return src


def _batched_matmul(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    out = m.nodes["out"].outputs[0]
    mm = m.nodes["mm"].outputs[0]
    if mm.type.rank != 3 or out.type.rank < 4 or out.type.shape[-2:] != mm.type.shape[-2:]:
        return None
    batch = tuple(out.type.shape[:-2])
    if product(batch) != mm.type.shape[0]:
        return None
    a = _batch_source(m["a"], batch)
    bb = _batch_source(m["b"], batch)
    if a is None or bb is None:
        return None
    try:
        if broadcast_shapes(tuple(a.type.shape[:-2]), tuple(bb.type.shape[:-2])) != batch:
            return None
    except ValueError:
        return None
    return _try_op(graph, "matmul", a, bb)


def transposed_last_two(graph: Graph, v: Value) -> Value:
    """``v`` with its last two axes swapped, merging into a transpose that produced it."""
    rank = v.type.rank
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    node = v.producer
    if node is not None and node.op == "transpose":
        inner_perm = node.attrs["perm"] or tuple(reversed(range(rank)))
        perm = tuple(inner_perm[i] for i in swap)
        if perm == tuple(range(rank)):
            return node.inputs[0]
        return graph.op("transpose", node.inputs[0], perm=perm)
    return graph.op("transpose", v, perm=swap)


_LOGITS = op("matmul", Var("q"), Var("kt"), as_="qk")
_SCALED = Alt((op("mul", _LOGITS, Const("scale")), op("div", _LOGITS, Const("divisor")), _LOGITS))
_MASKED = Alt((op("add", _SCALED, Var("mask")),
               op("where", Var("keep"), _SCALED, Const("fill")),
               op("where", Var("drop"), Const("fill"), _SCALED),
               _SCALED))
_ATTENTION = op("matmul", maybe("cast", op("softmax", maybe("cast", _MASKED), as_="sm")), Var("v"))


def _attention(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    """softmax(q @ k^T * scale + mask) @ v -> sdpa. Where every key of a query row is masked, the
    decomposed form gives NaN and sdpa gives zeros (see the sdpa op); everywhere else they agree."""
    q, kt, v = m["q"], m["kt"], m["v"]
    dtype = q.type.dtype
    if any(t.type.rank != 4 or t.type.dtype != dtype for t in (q, kt, v)) or not dtype.is_float:
        return None
    sm = m.nodes["sm"]
    if sm.attrs["axis"] % 4 != 3:
        return None
    if "scale" in m.scalars:
        scale = m.scalars["scale"]
    elif "divisor" in m.scalars:
        if m.scalars["divisor"] == 0:
            return None
        scale = 1.0 / m.scalars["divisor"]
    else:
        scale = 1.0
    mask: Value | None = None
    if "mask" in m.values:
        mask = m["mask"]
        if mask.type.dtype != dtype:
            return None
    elif "keep" in m.values or "drop" in m.values:
        if m.scalars["fill"] > MASK_FILL_AT_MOST:
            return None  # a mild penalty, not a mask: keep the decomposed form
        if "keep" in m.values:
            mask = m["keep"]
        else:
            mask = _try_op(graph, "logical_not", m["drop"])
        if mask is None or mask.type.dtype.name != "bool":
            return None
    k = transposed_last_two(graph, kt)
    operands = [q, k, v] + ([mask] if mask is not None else [])
    return _try_op(graph, "sdpa", *operands, causal=False, scale=scale)


def _repeat_kv(name: str) -> Alt:
    """HF's repeat_kv: [B, H, S, D] -> unsqueeze(2) -> expand [B, H, r, S, D] -> reshape [B, H*r, S, D]."""
    return op("reshape", op("expand", op(("unsqueeze", "reshape"), Var(name), as_=f"{name}_u"), as_=f"{name}_e"),
              as_=f"{name}_r")


def _unrepeated(m: Match, name: str) -> tuple[Value, Dim] | None:
    """The kv tensor before repeat_kv and its repeat count, or None when the pattern is not that."""
    src = m[name]
    if src.type.rank != 4:
        return None
    bsz, heads, seq, dim = src.type.shape
    unsqueezed = m.nodes[f"{name}_u"].outputs[0].type.shape
    expanded = m.nodes[f"{name}_e"].outputs[0].type.shape
    repeated = m.nodes[f"{name}_r"].outputs[0].type.shape
    if unsqueezed != (bsz, heads, 1, seq, dim) or len(expanded) != 5:
        return None
    reps = expanded[2]
    if expanded != (bsz, heads, reps, seq, dim) or repeated != (bsz, heads * reps, seq, dim):
        return None
    return src, reps


def _sdpa_without_repeat_kv(m: Match, graph: Graph, ctx: PassContext) -> Value | None:
    k = _unrepeated(m, "k")
    v = _unrepeated(m, "v")
    if k is None or v is None or k[1] != v[1]:
        return None
    node = m.nodes["attn"]
    operands = [node.inputs[0], k[0], v[0]] + node.inputs[3:]
    return _try_op(graph, "sdpa", *operands, **node.attrs)


# ---- the rule set --------------------------------------------------------------------------------

DECOMPOSED_RULES: list[Rule] = [
    pattern_rule("silu_from_x_times_sigmoid", op("mul", x, op("sigmoid", x)), _silu),
    pattern_rule("gelu_tanh_from_polynomial", _GELU_TANH, _gelu("tanh")),
    pattern_rule("gelu_from_erf", _GELU_ERF, _gelu("none")),
    pattern_rule("layer_norm_from_mean_and_variance", _LAYER_NORM, _layer_norm),
    pattern_rule("layer_norm_absorbs_weight", op("mul", op("layer_norm", x, as_="norm"), w),
                 _norm_with_weight("layer_norm")),
    pattern_rule("layer_norm_absorbs_bias", op("add", op("layer_norm", x, w, as_="norm"), b), _layer_norm_with_bias),
    # after layer norm: x - mean(x) normalized by its root mean square would match as an RMSNorm too
    pattern_rule("rms_norm_from_rsqrt_of_mean_square", _RMS_NORM, _rms_norm),
    pattern_rule("rms_norm_absorbs_weight", op("mul", op("rms_norm", x, as_="norm"), w), _norm_with_weight("rms_norm")),
    pattern_rule("softmax_from_exp_over_sum", _SOFTMAX, _softmax),
    pattern_rule("drop_noop_expand", op("expand", x, as_="e"), _noop_expand),
    pattern_rule("batched_matmul_from_flattened_batches",
                 op("reshape", op("matmul", op("reshape", Var("a0"), as_="a"), op("reshape", Var("b0"), as_="b"),
                                  as_="mm"), as_="out"),
                 _batched_matmul),
    pattern_rule("sdpa_from_matmul_softmax_matmul", _ATTENTION, _attention),
    pattern_rule("sdpa_takes_kv_heads_without_repeat_kv",
                 Alt((op("sdpa", Var("q"), _repeat_kv("k"), _repeat_kv("v"), as_="attn"),
                      op("sdpa", Var("q"), _repeat_kv("k"), _repeat_kv("v"), Var("mask"), as_="attn"))),
                 _sdpa_without_repeat_kv),
]


class RecognizeDecomposed(RewritePass):
    """Rewrites decomposed norms, softmax, activations and attention into their single ops."""

    def __init__(self, max_iterations: int = 50) -> None:
        super().__init__("recognize_decomposed", DECOMPOSED_RULES, max_iterations)
