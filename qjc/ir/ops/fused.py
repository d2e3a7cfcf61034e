"""The fused-group op: a node that carries a subgraph. Its inputs bind the subgraph's inputs in
order; its outputs are the subgraph's outputs. Passes and the interpreter treat it like any op."""

from __future__ import annotations

from qjc.ir.ops.registry import Attr, OpDef, register


def _fused_infer(ts, attrs, subgraph):
    if subgraph is None:
        raise ValueError("a fused node needs a subgraph")
    if len(ts) != len(subgraph.inputs):
        raise ValueError(f"{len(ts)} operands for a subgraph of {len(subgraph.inputs)} inputs")
    for i, (t, v) in enumerate(zip(ts, subgraph.inputs)):
        if t != v.type:
            raise ValueError(f"operand {i} is {t} but subgraph input %{v.name} is {v.type}")
    return [v.type for v in subgraph.outputs]


def _never(*args, **kwargs):
    raise RuntimeError("fused nodes are evaluated by the interpreter through their subgraph")


register(OpDef("fused", "fused", (0, -1), _fused_infer, _never,
               attrs={"kind": Attr("str"), "name": Attr("str", "")},
               doc="a fused group; `kind` names the pattern (elementwise, rms_norm, gemm_epilogue, ...)"))
