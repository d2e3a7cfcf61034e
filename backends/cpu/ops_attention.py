"""Scaled dot-product attention on the hand-written kernel (kernel_sdpa.py)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.kernel_sdpa import SdpaShape, sdpa_func
from qjc.backends.cpu.tvm_env import import_tvm
from qjc.errors import BackendError

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

tvm = import_tvm()
relax = tvm.relax


def _static(d: Any) -> int | None:
    return d if isinstance(d, int) else None


def emit_sdpa(t: Translator, node: Node, qkv: list[Any], layouts: tuple[str, str, str, str]) -> Any:
    """Call the attention kernel for sdpa ``node`` on ``qkv`` (Relax values in ``layouts``); the result is
    in ``layouts[3]``."""
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) == 4 else None
    if q.type.dtype.name != "f32":
        raise BackendError(f"cpu backend: sdpa on {q.type.dtype} is not supported ({node.label})")
    head_dim = int(q.type.shape[3])
    scale = node.attrs["scale"]
    args = list(qkv)
    kind, broadcast = "none", (True, True, True, True)
    if mask is not None:
        kind = "bool" if mask.type.dtype.name == "bool" else "additive"
        dims = (1,) * (4 - mask.type.rank) + tuple(mask.type.shape)
        broadcast = tuple(isinstance(d, int) and d == 1 for d in dims)  # type: ignore[assignment]
        m = t.arg(mask)
        if mask.type.rank != 4:
            m = t.reshape(m, [t.dim(d) for d in dims])
        args.append(m)
    shape = SdpaShape(
        batch=_static(q.type.shape[0]), q_heads=int(q.type.shape[1]), kv_heads=int(k.type.shape[1]),
        q_len=_static(q.type.shape[2]), kv_len=_static(k.type.shape[2]), head_dim=head_dim,
        value_dim=int(v.type.shape[3]), causal=bool(node.attrs["causal"]),
        scale=float(scale) if scale is not None else 1.0 / math.sqrt(head_dim), mask=kind,
        mask_broadcast=broadcast, lanes=t.config.lanes, layouts=layouts)
    gvar = t.kernel(("sdpa", shape), lambda name: sdpa_func(shape, name))
    b, h, s, d = t.shape(node.output)
    out_shape = [b, h, s, d] if layouts[3] == "bhsd" else [b, s, h, d]
    return t.call_kernel(gvar, args, out_shape, "float32")


@converts("sdpa")
def _convert_sdpa(t: Translator, node: Node) -> list[Any]:
    qkv = [t.arg(v) for v in node.inputs[:3]]
    return [emit_sdpa(t, node, qkv, ("bhsd", "bhsd", "bhsd", "bhsd"))]
