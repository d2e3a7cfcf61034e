"""Matrix products: linear (y = x @ w.T + bias) and matmul.

A linear or matmul whose weight is a constant f32 matrix runs on the hand-written GEMM kernel
(kernel_gemm.py) with the weight packed at load time; leading dims of the activation fold into the
kernel's symbolic M through views. Anything else (a product of two computed tensors, integer
matmuls) goes through Relax's matmul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.kernel_gemm import GemmSpec, gemm_func
from qjc.backends.cpu.tvm_env import import_tvm
from qjc.ir.dims import product

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node, Value

tvm = import_tvm()
relax = tvm.relax


def packable(t: Translator, weight: Value, x: Value) -> bool:
    return (t.constant_data(weight) is not None and weight.type.rank == 2 and weight.type.dtype.name == "f32"
            and x.type.dtype.name == "f32")


def _gemm(t: Translator, x: Value, weight: Value, layout: str, bias: Value | None, out: Value) -> Any:
    """``out`` = x [..., K] times the packed constant ``weight`` (+ bias) on the GEMM kernel."""
    k = int(x.type.shape[-1])
    n = int(weight.type.shape[0] if layout == "nk" else weight.type.shape[1])
    cfg = t.config
    spec = GemmSpec(k, n, cfg.gemm_cols, cfg.gemm_rows, bias is not None)
    gvar = t.kernel(("gemm", spec), lambda name: gemm_func(spec, name))
    m = t.dim(product(x.type.shape[:-1]))
    rows = t.reshape(t.arg(x), [m, t.dim(k)])
    args = [rows, t.param(weight, layout)] + ([t.arg(bias)] if bias is not None else [])
    y = t.call_kernel(gvar, args, [m, t.dim(n)], "float32")
    return t.reshape(y, t.shape(out))


@converts("linear")
def _convert_linear(t: Translator, node: Node) -> list[Any]:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) == 3 else None
    if packable(t, w, x):
        return [_gemm(t, x, w, "nk", bias, node.output)]
    y = t.emit(relax.op.matmul(t.arg(x), t.emit(relax.op.permute_dims(t.arg(w), [1, 0]))))
    if bias is not None:
        y = t.emit(relax.op.add(y, t.arg(bias)))
    return [y]


@converts("matmul")
def _convert_matmul(t: Translator, node: Node) -> list[Any]:
    a, b = node.inputs
    if packable(t, b, a):
        return [_gemm(t, a, b, "kn", None, node.output)]
    return [t.emit(relax.op.matmul(t.arg(a), t.arg(b)))]
