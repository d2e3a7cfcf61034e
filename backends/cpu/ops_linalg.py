"""Matrix products: linear (y = x @ w.T + bias) and matmul, and dequantize.

A linear or matmul whose weight is a constant f32 matrix runs on the hand-written GEMM kernel
(kernel_gemm.py) with the weight packed at load time; leading dims of the activation fold into the
kernel's symbolic M through views. A linear whose weight is quantized (the constant itself, or a
``dequantize`` of it) runs on the same kernel's quantized tile, which reads the packed codes and
dequantizes in registers; where that tile cannot take the format, the weight is dequantized at load
time and the f32 tile runs. Anything else (a product of two computed tensors, integer matmuls) goes
through Relax's matmul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.kernel_gemm import GemmSpec, gemm_func
from qjc.backends.cpu.quant_layout import KernelFormat, kernel_format
from qjc.backends.cpu.translate import Deferred
from qjc.backends.cpu.tvm_env import import_tvm
from qjc.errors import BackendError
from qjc.ir.dims import product

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node, Value

tvm = import_tvm()
relax = tvm.relax

def quantized_source(t: Translator, weight: Value) -> Value | None:
    """The quantized constant that ``weight`` is, directly or as the f32 result of ``dequantize``."""
    weight = t.resolve(weight)
    if t.quantized_data(weight) is not None:
        return weight
    node = weight.producer
    if node is not None and node.op == "dequantize" and weight.type.dtype.name == "f32":
        source = t.resolve(node.inputs[0])
        if t.quantized_data(source) is not None:
            return source
    return None


def packable(t: Translator, weight: Value, x: Value) -> bool:
    """``weight`` is a constant 2-D matrix (f32, or quantized) the GEMM kernel can read packed."""
    if x.type.dtype.name != "f32" or weight.type.rank != 2:
        return False
    if quantized_source(t, weight) is not None:
        return True
    return t.constant_data(weight) is not None and weight.type.dtype.name == "f32"


def gemm_operands(t: Translator, weight: Value, layout: str) -> tuple[list[Any], KernelFormat | None]:
    """The kernel's weight parameters for a ``packable`` weight, and its quantized format (None: f32)."""
    source = quantized_source(t, weight)
    if source is None:
        return [t.param(weight, layout)], None
    q = t.quantized_data(source)
    assert q is not None
    fmt = kernel_format(q.scheme, q.logical_shape[-1]) if layout == "nk" else None
    if fmt is None:
        # the quantized tile reads groups along K of an [N, K] weight; else f32, dequantized at load
        return [t.param(source, layout)], None
    return [t.param(source, part) for part in fmt.parts], fmt


def emit_gemm(t: Translator, x: Value, weight: Value, layout: str, bias: Value | None, out: Value,
              extras: tuple[tuple[Value, str], ...] = (), signature: str = "", epilogue: Any = None) -> Any:
    """``out`` = x [..., K] times the packed constant ``weight`` (+ bias) on the GEMM kernel; a fused
    group's tail rides along as ``epilogue`` (named by ``signature``) reading ``extras`` (value, "full"
    [.., N] or "row" [N])."""
    k = int(x.type.shape[-1])
    n = int(weight.type.shape[0] if layout == "nk" else weight.type.shape[1])
    cfg = t.config
    operands, quant = gemm_operands(t, weight, layout)
    rows = cfg.gemm_rows if quant is None else cfg.qgemm_rows
    spec = GemmSpec(k, n, cfg.gemm_cols, rows, bias is not None, tuple(kind for _, kind in extras), signature, quant)
    gvar = t.kernel(("gemm", spec), lambda name: gemm_func(spec, name, epilogue))
    m = t.dim(product(x.type.shape[:-1]))
    args = [t.reshape(t.arg(x), [m, t.dim(k)]), *operands] + ([t.arg(bias)] if bias is not None else [])
    for v, kind in extras:
        args.append(t.reshape(t.arg(v), [m, t.dim(n)] if kind == "full" else [t.dim(n)]))
    y = t.call_kernel(gvar, args, [m, t.dim(n)], "float32")
    return t.reshape(y, t.shape(out))


@converts("linear")
def _convert_linear(t: Translator, node: Node) -> list[Any]:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) == 3 else None
    if packable(t, w, x):
        return [emit_gemm(t, x, w, "nk", bias, node.output)]
    if w.type.dtype.is_quant:
        raise BackendError(f"cpu backend: linear {node.label} has a quantized weight that is not a constant")
    y = t.emit(relax.op.matmul(t.arg(x), t.emit(relax.op.permute_dims(t.arg(w), [1, 0]))))
    if bias is not None:
        y = t.emit(relax.op.add(y, t.arg(bias)))
    return [y]


@converts("matmul")
def _convert_matmul(t: Translator, node: Node) -> list[Any]:
    a, b = node.inputs
    if packable(t, b, a):
        return [emit_gemm(t, a, b, "kn", None, node.output)]
    return [t.emit(relax.op.matmul(t.arg(a), t.arg(b)))]


@converts("dequantize")
def _convert_dequantize(t: Translator, node: Node) -> list[Any]:
    """Deferred: a linear reading the result packs the quantized weight itself; only another reader
    makes the f32 copy (a parameter dequantized at load time)."""
    source = t.resolve(node.inputs[0])
    if t.quantized_data(source) is None:
        raise BackendError(f"cpu backend: dequantize {node.label} reads %{source.name}, which is not a quantized "
                           "constant; only constant weights may be quantized on this target")
    if node.attrs["to"].name != "f32":
        raise BackendError(f"cpu backend: dequantize {node.label} to {node.attrs['to']}: only f32 is supported")
    return [Deferred(lambda: t.param(source, "plain"))]
