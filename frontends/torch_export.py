"""torch.export frontend: an nn.Module (plus example inputs) or an ExportedProgram becomes a qjc Graph.

Steps: export -> run the core ATen decompositions minus the ops qjc keeps whole (linear, SDPA) ->
collect every op the conversion table lacks and fail once, listing them -> translate node by node.
Parameters, buffers and lifted constants become named graph constants; symbolic sizes become
SymExpr dims named after the user's torch.export.Dim names where they can be matched.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx

from qjc.errors import QJCError, UnsupportedOpsError
from qjc.frontends.aten import TABLE, ConvertContext
from qjc.frontends.torch_types import qjc_dtype, size_to_dim, sympy_to_dim
from qjc.ir import Graph, TensorType, Value
from qjc.ir.dims import Dim

# Ops qjc converts whole instead of letting torch decompose them: they map onto one IR op
# that later passes fuse or hand to a library kernel.
KEEP_WHOLE = ("linear", "scaled_dot_product_attention")

# FX targets that carry no computation for inference.
IGNORED = {
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg", "aten.sym_constrain_range.default",
}


def export_module(module: torch.nn.Module, example_inputs: Sequence[Any], dynamic_shapes=None, strict: bool = False):
    """torch.export the module in eval mode, with a clear error when capture fails."""
    module = module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=strict)
    except Exception as e:  # torch raises many unrelated types here; all mean "cannot capture"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QJCError(
            f"torch.export could not capture {type(module).__name__}: {type(e).__name__}: {first}",
            "make the forward traceable (no data-dependent Python control flow), or pass dynamic_shapes",
        ) from e


def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        table.pop(getattr(torch.ops.aten, name).default, None)
    return ep.run_decompositions(table)


def target_key(node: torch.fx.Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    return str(node.target)


def source_location(node: torch.fx.Node) -> str:
    """The user-code line that produced a node, for error messages."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip().startswith("File ")]
    if lines:
        return lines[-1].replace("File ", "").split(", in ")[0]
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0] or node.name
    return node.name


def _is_symbolic_scalar(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool))


def unsupported_ops(ep: torch.export.ExportedProgram) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function" or _is_symbolic_scalar(node):
            continue
        key = target_key(node)
        if key not in TABLE and key not in IGNORED:
            missing.setdefault(key, []).append(source_location(node))
    return missing


def coverage(ep: torch.export.ExportedProgram) -> dict[str, tuple[int, bool]]:
    """Every op in the program: count, and whether the conversion table has it."""
    out: dict[str, tuple[int, bool]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function" or _is_symbolic_scalar(node):
            continue
        key = target_key(node)
        if key in IGNORED:
            continue
        n, _ = out.get(key, (0, False))
        out[key] = (n + 1, key in TABLE)
    return out


def _dim_names(ep: torch.export.ExportedProgram, dynamic_shapes) -> dict[str, str]:
    """Map torch's size symbols to the names of the user's Dim objects, by position."""
    names: dict[str, str] = {}
    if not dynamic_shapes:
        return names
    specs = list(dynamic_shapes.values()) if isinstance(dynamic_shapes, dict) else list(dynamic_shapes)
    user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in _user_input_names(ep)]
    for node, spec in zip(user_inputs, specs):
        if not isinstance(spec, dict):
            continue
        val = node.meta.get("val")
        for axis, dim in spec.items():
            size = val.shape[axis] if val is not None else None
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol and hasattr(dim, "__name__"):
                names[size.node.expr.name] = dim.__name__
    return names


def _user_input_names(ep) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]


def import_exported(ep: torch.export.ExportedProgram, name: str = "main", dynamic_shapes=None,
                    source: str = "torch module") -> Graph:
    """Translate an (already decomposed) ExportedProgram into a qjc Graph."""
    from torch.export.graph_signature import InputKind, OutputKind

    missing = unsupported_ops(ep)
    if missing:
        raise UnsupportedOpsError(source, missing)

    names = _dim_names(ep, dynamic_shapes)
    graph = Graph(name)
    for sym, rng in ep.range_constraints.items():
        if getattr(sym, "is_Symbol", False):
            hi = int(rng.upper) if rng.upper.is_finite else 2**31 - 1
            graph.add_symbol(names.get(sym.name, sym.name), int(rng.lower), hi)

    env: dict[str, Any] = {}
    sig = ep.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs}
    # buffers the program writes (a KV cache) become state: runtime-owned inputs whose new
    # contents are the graph's trailing outputs
    mutated = [s.target for s in sig.output_specs if s.kind == OutputKind.BUFFER_MUTATION]
    unsupported_kinds = [s for s in sig.output_specs if s.kind not in (OutputKind.USER_OUTPUT,
                                                                       OutputKind.BUFFER_MUTATION)]
    if unsupported_kinds:
        raise QJCError(f"{source}: output of kind {unsupported_kinds[0].kind.name} ({unsupported_kinds[0].target}) "
                       "is not supported in an inference graph")
    state_inputs: dict[str, Value] = {}
    state = dict(ep.state_dict)
    state.update(ep.constants)
    for node in ep.graph.nodes:
        if node.op != "placeholder":
            continue
        spec = specs.get(node.name)
        val = node.meta.get("val")
        if spec is not None and spec.kind == InputKind.USER_INPUT:
            if not isinstance(val, torch.Tensor):
                raise QJCError(f"{source}: input {node.name} is not a tensor ({type(val).__name__}); "
                               "only tensor inputs are supported")
            shape = tuple(size_to_dim(s, names) for s in val.shape)
            env[node.name] = graph.add_input(node.name, TensorType(shape, qjc_dtype(val.dtype, node.name)))
        elif spec is not None and spec.kind == InputKind.BUFFER and spec.target in mutated:
            shape = tuple(size_to_dim(s, names) for s in val.shape)
            state_inputs[spec.target] = graph.add_input(spec.target, TensorType(shape, qjc_dtype(val.dtype, node.name)))
            env[node.name] = state_inputs[spec.target]
        elif spec is not None and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = state[spec.target]
            env[node.name] = graph.add_constant(spec.target, tensor_to_numpy(tensor))
        else:
            kind = spec.kind.name if spec is not None else "unknown"
            raise QJCError(f"{source}: input {node.name} of kind {kind} is not supported")

    # user inputs first, state after them, whatever order torch lifted the placeholders in
    graph.inputs = [v for v in graph.inputs if v not in state_inputs.values()] + list(state_inputs.values())
    ctx = ConvertContext(graph, names, source)
    for node in ep.graph.nodes:
        if node.op == "call_function":
            if _is_symbolic_scalar(node):
                env[node.name] = symbolic_value(node, names)
                continue
            key = target_key(node)
            if key in IGNORED:
                continue
            args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            ctx.node = node
            try:
                env[node.name] = TABLE[key](ctx, *args, **kwargs)
            except QJCError as e:
                raise QJCError(f"{source}: converting {key} at {source_location(node)}: {e.message}", e.hint) from e
        elif node.op == "output":
            outputs = node.args[0]
            user = [o for o, s in zip(outputs, sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
            writes = [o for o, s in zip(outputs, sig.output_specs) if s.kind == OutputKind.BUFFER_MUTATION]
            graph.set_outputs(*[ctx.as_value(env[o.name]) for o in user + writes])
            graph.state = [state_inputs[target].name for target in mutated]
    return graph


def symbolic_value(node: torch.fx.Node, names: dict[str, str]) -> Dim:
    val = node.meta["val"]
    if isinstance(val, torch.SymInt):
        return sympy_to_dim(val.node.expr, names)
    raise QJCError(f"symbolic {type(val).__name__} at {source_location(node)} is not supported")


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy().copy()


def from_torch(module_or_program, example_inputs: Sequence[Any] | None = None, dynamic_shapes=None,
               name: str = "main") -> Graph:
    """The torch frontend's entry point."""
    if isinstance(module_or_program, torch.export.ExportedProgram):
        ep = module_or_program
        source = "exported program"
    else:
        if example_inputs is None:
            raise QJCError("from_torch: example_inputs are needed to export a module")
        ep = export_module(module_or_program, example_inputs, dynamic_shapes)
        source = type(module_or_program).__name__
    ep = decompose(ep)
    return import_exported(ep, name, dynamic_shapes, source)
