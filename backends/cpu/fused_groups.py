"""Fused groups that map onto one hand-written kernel as a whole.

The translator offers every fused node here first (``translate_group``); a handler either emits
the whole group and returns its outputs, or returns None and the group is translated op by op
(TVM then fuses what it can). Handled today:

``gemm``       linear / matmul with a constant weight (f32, or quantized: the constant or its
               ``dequantize`` inside the group) and an elementwise tail (bias, activation, residual
               add): one GEMM kernel whose store applies the tail (kernel_gemm.py).
``attention``  sdpa whose q / k / v arrive through the head-splitting reshape + transpose and whose
               result leaves through the transpose + reshape merging the heads: the attention kernel
               reads and writes the [batch, seq, heads, dim] layout directly, so the four transposes
               are never materialized (kernel_sdpa.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.tvm_env import import_tvm

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Graph, Node, Value

tvm = import_tvm()
relax = tvm.relax
tirx = tvm.tirx


def _users(graph: Graph) -> dict[Value, list[Node]]:
    return graph.users()


# ---- gemm --------------------------------------------------------------------------------------------


def _epilogue_plan(t: Translator, sub: Graph, gemm: Node, absorbed: list[Node]
                   ) -> tuple[list[Node], list[tuple[Value, str]], str] | None:
    """The elementwise tail after ``gemm`` as (nodes, extra operands with their kind, signature), or None
    when the group is not a GEMM followed by a chain the kernel's store can apply. ``absorbed`` nodes
    (the weight's dequantize) are part of the GEMM."""
    from qjc.backends.cpu.ops_elementwise import BINARY, UNARY

    out = gemm.output
    shape = out.type.shape
    n = shape[-1]
    tail = [node for node in sub.nodes if node is not gemm and node not in absorbed]
    produced = {out}
    extras: list[tuple[Value, str]] = []
    names: dict[Value, str] = {out: "v"}
    parts = []
    for node in tail:
        if node.op not in UNARY and node.op not in BINARY:
            return None
        if node.op == "cast" or len(node.outputs) != 1:
            return None
        if node.output.type.shape != shape or node.output.type.dtype.name != "f32":
            return None
        args = []
        for v in node.inputs:
            if v in produced:
                args.append(names[v])
                continue
            if v.type.dtype.name != "f32":
                return None
            data = t.constant_data(v)
            if data is not None and data.size == 1:
                args.append(repr(float(data.reshape(()))))
                names[v] = args[-1]
                continue
            dims = v.type.shape
            if tuple(dims) == tuple(shape):
                kind = "full"
            elif dims and dims[-1] == n and all(d == 1 for d in dims[:-1]):
                kind = "row"
            else:
                return None
            if v not in names:
                names[v] = f"x{len(extras)}"
                extras.append((v, kind))
            args.append(names[v])
        names[node.output] = f"t{len(produced)}"
        produced.add(node.output)
        attrs = ",".join(f"{k}={val}" for k, val in sorted(node.attrs.items()))
        parts.append(f"{names[node.output]}={node.op}({','.join(args)}){{{attrs}}}")
    final = tail[-1].output if tail else out
    if sub.outputs != [final]:
        return None
    # the product and interior values feed nothing outside the chain
    users = _users(sub)
    for v in produced:
        if v is not final and any(u not in tail for u in users.get(v, [])):
            return None
    return tail, extras, ";".join(parts)


def _epilogue_fn(t: Translator, gemm: Node, tail: list[Node], extras: list[tuple[Value, str]]
                 ) -> Callable[..., Any]:
    from qjc.backends.cpu.ops_elementwise import BINARY, UNARY, typed

    def epilogue(value: Any, *loads: Any) -> Any:
        env: dict[Any, Any] = {gemm.output: value}
        for (v, _), load in zip(extras, loads, strict=True):
            env[v] = load
        for node in tail:
            args = []
            for v in node.inputs:
                if v not in env:
                    data = t.constant_data(v)
                    env[v] = tirx.const(float(data.reshape(())), "float32")
                args.append(env[v])
            if node.op in UNARY:
                env[node.output] = typed(UNARY[node.op](args[0], dict(node.attrs)), "float32")
            else:
                env[node.output] = typed(BINARY[node.op](*args), "float32")
        return env[tail[-1].output] if tail else value

    return epilogue


def _weight_dequantize(sub: Graph, gemm: Node) -> list[Node]:
    """The ``dequantize`` inside the group that makes ``gemm``'s weight, when nothing else reads it."""
    producer = gemm.inputs[1].producer
    if producer is None or producer.op != "dequantize" or producer not in sub.nodes:
        return []
    readers = _users(sub).get(gemm.inputs[1], [])
    return [producer] if readers == [gemm] and gemm.inputs[1] not in sub.outputs else []


def gemm_group(t: Translator, node: Node) -> list[Any] | None:
    from qjc.backends.cpu.ops_linalg import emit_gemm, packable

    sub = node.subgraph
    assert sub is not None
    gemms = [n for n in sub.nodes if n.op in ("linear", "matmul")]
    if len(gemms) != 1:
        return None
    gemm = gemms[0]
    x, w = gemm.inputs[0], gemm.inputs[1]
    if not packable(t, w, x) or x not in sub.inputs:
        return None
    absorbed = _weight_dequantize(sub, gemm)
    if w.producer is not None and w.producer in sub.nodes and not absorbed:
        return None  # a weight computed inside the group (a dequantize read elsewhere too)
    plan = _epilogue_plan(t, sub, gemm, absorbed)
    if plan is None:
        return None
    tail, extras, signature = plan
    layout = "nk" if gemm.op == "linear" else "kn"
    bias = gemm.inputs[2] if gemm.op == "linear" and len(gemm.inputs) == 3 else None
    return [emit_gemm(t, x, w, layout, bias, node.outputs[0], tuple(extras), signature,
                      _epilogue_fn(t, gemm, tail, extras))]


# ---- attention -------------------------------------------------------------------------------------

_HEADS_PERM = (0, 2, 1, 3)


def _single_user(users: dict[Value, list[Node]], value: Value) -> Node | None:
    found = users.get(value, [])
    return found[0] if len(found) == 1 else None


def _split_heads_source(sub: Graph, value: Value) -> tuple[Value, list[Node]] | None:
    """``value`` = transpose(reshape(x, [B, S, H, D]), (0, 2, 1, 3)): (x, the two nodes), else None."""
    users = _users(sub)
    tr = value.producer
    if tr is None or tr.op != "transpose" or tuple(tr.attrs["perm"] or ()) != _HEADS_PERM:
        return None
    rs = tr.inputs[0].producer
    if rs is None or rs.op != "reshape" or _single_user(users, rs.output) is not tr:
        return None
    x = rs.inputs[0]
    b, s, h, d = rs.output.type.shape
    if x.type.rank != 3 or tuple(x.type.shape[:2]) != (b, s) or x.type.shape[2] != h * d:
        return None
    return x, [rs, tr]


def attention_group(t: Translator, node: Node) -> list[Any] | None:
    from qjc.backends.cpu.ops_attention import emit_sdpa

    sub = node.subgraph
    assert sub is not None
    cores = [n for n in sub.nodes if n.op == "sdpa"]
    if len(cores) != 1 or cores[0].inputs[0].type.dtype.name != "f32":
        return None
    sdpa = cores[0]
    users = _users(sub)
    absorbed: list[Node] = [sdpa]
    sources, layouts = [], []
    for value in sdpa.inputs[:3]:
        found = _split_heads_source(sub, value)
        if found is not None and _single_user(users, value) is sdpa and value not in sub.outputs:
            sources.append(found[0])
            absorbed.extend(found[1])
            layouts.append("bshd")
        else:
            sources.append(value)
            layouts.append("bhsd")
    merged = None
    tr = _single_user(users, sdpa.output)
    if tr is not None and tr.op == "transpose" and tuple(tr.attrs["perm"] or ()) == _HEADS_PERM:
        rs = _single_user(users, tr.output)
        if rs is not None and rs.op == "reshape" and rs.output.type.rank == 3 and sdpa.output not in sub.outputs \
                and tr.output not in sub.outputs:
            merged = rs
            absorbed.extend([tr, rs])
    if layouts == ["bhsd"] * 3 and merged is None:
        return None  # nothing to fold: translate op by op
    t.translate_nodes([n for n in sub.nodes if n not in absorbed])
    qkv = []
    for value, layout, head in zip(sources, layouts, sdpa.inputs[:3], strict=True):
        expr = t.arg(value)
        if layout == "bshd":
            b, h, s, d = t.shape(head)
            expr = t.reshape(expr, [b, s, h, d])
        qkv.append(expr)
    out = emit_sdpa(t, sdpa, qkv, (*layouts, "bshd" if merged is not None else "bhsd"))  # type: ignore[arg-type]
    if merged is not None:
        t.env[merged.output] = t.reshape(out, t.shape(merged.output))
    else:
        t.env[sdpa.output] = out
    return [t.arg(v) for v in sub.outputs]


# ---- rms_norm / layer_norm ---------------------------------------------------------------------------


def norm_group(t: Translator, node: Node) -> list[Any] | None:
    """A norm over trailing static dims with an elementwise prologue (residual add) and no epilogue."""
    from qjc.backends.cpu.kernel_norm import NormSpec, norm_func
    from qjc.backends.cpu.ops_elementwise import BINARY, UNARY, typed
    from qjc.ir.dims import product

    sub = node.subgraph
    assert sub is not None
    norms = [n for n in sub.nodes if n.op in ("layer_norm", "rms_norm")]
    if len(norms) != 1 or norms[0] is not sub.nodes[-1]:
        return None
    norm = norms[0]
    src = norm.inputs[0]
    if src.type.dtype.name != "f32":
        return None
    axis = norm.attrs["axis"] % src.type.rank
    inner = src.type.shape[axis:]
    if not all(isinstance(d, int) for d in inner):
        return None
    c = int(product(inner))
    shape = src.type.shape
    prologue_nodes = sub.nodes[:-1]
    produced: set[Value] = set()
    operands: list[tuple[Value, str]] = []
    names: dict[Value, str] = {}
    parts = []

    def operand(v: Value) -> str | None:
        if v in produced:
            return names[v]
        if v.type.dtype.name != "f32":
            return None
        data = t.constant_data(v)
        if data is not None and data.size == 1:
            return repr(float(data.reshape(())))
        if v in names:
            return names[v]
        dims = v.type.shape
        if tuple(dims) == tuple(shape):
            kind = "full"
        elif len(dims) <= len(inner) and tuple(dims) == tuple(inner[len(inner) - len(dims):]) and len(dims) > 0:
            kind = "row"
        else:
            return None
        names[v] = f"x{len(operands)}"
        operands.append((v, kind))
        return names[v]

    for pn in prologue_nodes:
        if (pn.op not in UNARY and pn.op not in BINARY) or pn.op == "cast" or len(pn.outputs) != 1 \
                or tuple(pn.output.type.shape) != tuple(shape) or pn.output.type.dtype.name != "f32":
            return None
        args = [operand(v) for v in pn.inputs]
        if any(a is None for a in args):
            return None
        names[pn.output] = f"t{len(produced)}"
        produced.add(pn.output)
        attrs = ",".join(f"{k}={val}" for k, val in sorted(pn.attrs.items()))
        parts.append(f"{names[pn.output]}={pn.op}({','.join(args)}){{{attrs}}}")
    if src not in produced and operand(src) is None:
        return None
    if not prologue_nodes and (len(operands) != 1 or operands[0][1] != "full"):
        return None
    outputs = list(sub.outputs)
    write_input = False
    if outputs == [src, norm.output] or outputs == [norm.output, src]:
        write_input = src in produced
        if not write_input:
            return None
    elif outputs != [norm.output]:
        return None
    users = _users(sub)
    for v in produced:
        if v is not src and any(u not in prologue_nodes for u in users.get(v, [])):
            return None

    def prologue(*loads: Any) -> Any:
        env: dict[Any, Any] = {v: load for (v, _), load in zip(operands, loads, strict=True)}
        for pn in prologue_nodes:
            args = []
            for v in pn.inputs:
                if v not in env:
                    env[v] = tvm.tirx.const(float(t.constant_data(v).reshape(())), "float32")
                args.append(env[v])
            fn = UNARY[pn.op] if pn.op in UNARY else None
            env[pn.output] = typed(fn(args[0], dict(pn.attrs)) if fn else BINARY[pn.op](*args), "float32")
        return env[src]

    params = norm.inputs[1:]
    spec = NormSpec(c, norm.op == "layer_norm", float(norm.attrs["eps"]), len(params) >= 1, len(params) >= 2,
                    tuple(kind for _, kind in operands), ";".join(parts) or "", write_input, t.config.lanes)
    gvar = t.kernel(("norm", spec), lambda name: norm_func(spec, name, prologue if parts else None))
    m = t.dim(product(shape[:axis]))
    args = [t.reshape(t.arg(v), [m, t.dim(c)] if kind == "full" else [t.dim(c)])
            for v, kind in operands]
    args += [t.reshape(t.arg(p), [t.dim(c)]) for p in params]
    out_types = [relax.TensorType([m, t.dim(c)], "float32")] * (2 if write_input else 1)
    call = t.emit(relax.call_tir(gvar, relax.Tuple(args), out_types if write_input else out_types[0]))
    results = [t.emit(relax.TupleGetItem(call, i)) for i in range(2)] if write_input else [call]
    t.env[norm.output] = t.reshape(results[0], t.shape(norm.output))
    if write_input:
        t.env[src] = t.reshape(results[1], t.shape(src))
    return [t.arg(v) for v in outputs]


GROUP_HANDLERS: dict[str, Callable[[Translator, Node], list[Any] | None]] = {
    "gemm": gemm_group,
    "attention": attention_group,
    "layer_norm": norm_group,
    "rms_norm": norm_group,
}


def translate_group(t: Translator, node: Node) -> list[Any] | None:
    handler = GROUP_HANDLERS.get(node.attrs.get("kind", ""))
    return handler(t, node) if handler is not None else None
