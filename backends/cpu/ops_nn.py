"""Neural-network layers: layer_norm, rms_norm, batch_norm, conv2d, max_pool2d, avg_pool2d.

The norms are TE written here: two-pass statistics (mean, then the mean of squared deviations) as
the reference computes them, which TOPI's one-pass E[x^2] - E[x]^2 is not. Convolution goes through
Relax's conv2d; pooling is TE so that ceil-mode windows and the count_include_pad divisor follow
qjc's reference exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.te_util import as_expr, const, int64, lowest
from qjc.backends.cpu.tvm_env import import_tvm

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

tvm = import_tvm()
te = tvm.te
tirx = tvm.tirx
relax = tvm.relax


def _norm_stages(x: Any, axis: int, centered: bool, eps: float) -> tuple[Any, Any | None]:
    """(inverse RMS or inverse std per row, mean per row or None) over dims axis..end of ``x``."""
    shape = list(x.shape)
    outer, inner = shape[:axis], shape[axis:]
    dtype = str(x.dtype)
    count = 1
    for d in inner:
        count = count * d
    inv_count = const(1.0, dtype) / tirx.Cast(dtype, count)

    def full(i: tuple, ks: list) -> Any:
        return as_expr(x(*i, *ks))

    ks = [te.reduce_axis((int64(0), d), name=f"k{n}") for n, d in enumerate(inner)]
    mean = None
    if centered:
        total = te.compute(outer, lambda *i: te.sum(full(i, ks), axis=ks), name="row_sum")
        mean = te.compute(outer, lambda *i: total(*i) * inv_count, name="row_mean")
        ks2 = [te.reduce_axis((int64(0), d), name=f"j{n}") for n, d in enumerate(inner)]

        def sq_dev(i: tuple) -> Any:
            c = full(i, ks2) - mean(*i)
            return c * c

        second = te.compute(outer, lambda *i: te.sum(sq_dev(i), axis=ks2), name="row_sqdev")
    else:
        second = te.compute(outer, lambda *i: te.sum(full(i, ks) * full(i, ks), axis=ks), name="row_sumsq")
    inv = te.compute(outer, lambda *i: const(1.0, dtype) / tirx.sqrt(second(*i) * inv_count + const(eps, dtype)),
                     name="row_inv")
    return inv, mean


@converts("layer_norm", "rms_norm")
def _convert_norm(t: Translator, node: Node) -> list[Any]:
    src = node.inputs[0]
    axis = node.attrs["axis"] % src.type.rank
    centered = node.op == "layer_norm"
    eps = float(node.attrs["eps"])
    n_params = len(node.inputs) - 1

    def compute(x: Any, *params: Any) -> Any:
        inv, mean = _norm_stages(x, axis, centered, eps)

        def body(*i: Any) -> Any:
            v = as_expr(x(*i))
            y = ((v - mean(*i[:axis])) if mean is not None else v) * inv(*i[:axis])
            if n_params >= 1:
                y = y * as_expr(params[0](*i[axis:]))
            if n_params >= 2:
                y = y + as_expr(params[1](*i[axis:]))
            return y

        return te.compute(list(x.shape), body, name=node.op)

    return [t.emit_te(compute, *(t.arg(v) for v in node.inputs), name=node.op)]


@converts("batch_norm")
def _convert_batch_norm(t: Translator, node: Node) -> list[Any]:
    eps = float(node.attrs["eps"])

    def compute(x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
        dtype = str(x.dtype)

        def body(*i: Any) -> Any:
            c = i[1]
            inv_std = const(1.0, dtype) / tirx.sqrt(as_expr(var(c)) + const(eps, dtype))
            return (as_expr(x(*i)) - mean(c)) * inv_std * scale(c) + bias(c)

        return te.compute(list(x.shape), body, name="batch_norm")

    return [t.emit_te(compute, *(t.arg(v) for v in node.inputs), name="batch_norm")]


@converts("conv2d")
def _convert_conv2d(t: Translator, node: Node) -> list[Any]:
    a = node.attrs
    y = t.emit(relax.op.nn.conv2d(t.arg(node.inputs[0]), t.arg(node.inputs[1]), strides=list(a["strides"]),
                                  padding=list(a["pads"]), dilation=list(a["dilations"]), groups=int(a["groups"]),
                                  data_layout="NCHW", kernel_layout="OIHW"))
    if len(node.inputs) == 3:
        o = node.inputs[1].type.shape[0]
        bias = t.reshape(t.arg(node.inputs[2]), [1, o, 1, 1])
        y = t.emit(relax.op.add(y, bias))
    return [y]


def _window(o: Any, stride: int, pad: int, k: Any, dilation: int) -> Any:
    return o * int64(stride) - int64(pad) + k * int64(dilation)


@converts("max_pool2d", "avg_pool2d")
def _convert_pool(t: Translator, node: Node) -> list[Any]:
    a = node.attrs
    kernel = tuple(a["kernel"])
    strides = tuple(a["strides"]) if a["strides"] is not None else kernel
    pads = tuple(a["pads"])
    dilations = tuple(a.get("dilations", (1, 1))) if node.op == "max_pool2d" else (1, 1)
    is_max = node.op == "max_pool2d"
    include_pad = bool(a.get("count_include_pad", False))
    out_shape = t.shape(node.output)
    h, w = (int(d) for d in node.inputs[0].type.shape[2:])

    def compute(x: Any) -> Any:
        dtype = str(x.dtype)
        kh = te.reduce_axis((int64(0), int64(kernel[0])), name="kh")
        kw = te.reduce_axis((int64(0), int64(kernel[1])), name="kw")

        def read(n: Any, c: Any, oh: Any, ow: Any) -> tuple[Any, Any]:
            ih = _window(oh, strides[0], pads[0], kh, dilations[0])
            iw = _window(ow, strides[1], pads[1], kw, dilations[1])
            inside = tirx.all(ih >= int64(0), ih < int64(h), iw >= int64(0), iw < int64(w))
            safe_h = tirx.max(tirx.min(ih, int64(h - 1)), int64(0))
            safe_w = tirx.max(tirx.min(iw, int64(w - 1)), int64(0))
            return inside, as_expr(x(n, c, safe_h, safe_w))

        if is_max:
            def max_body(n: Any, c: Any, oh: Any, ow: Any) -> Any:
                inside, v = read(n, c, oh, ow)
                return te.max(tirx.Select(inside, v, lowest(dtype)), axis=[kh, kw])

            return te.compute(out_shape, max_body, name="max_pool2d")

        def sum_body(n: Any, c: Any, oh: Any, ow: Any) -> Any:
            inside, v = read(n, c, oh, ow)
            return te.sum(tirx.Select(inside, v, const(0, dtype)), axis=[kh, kw])

        sums = te.compute(out_shape, sum_body, name="pool_sum")

        def counted(o: Any, stride: int, pad_lo: int, pad_hi: int, size: int, k: int) -> Any:
            # elements of the window [start, start + k) that count: the input, plus the explicit
            # pads with count_include_pad; the ceil-mode overhang past the pads never counts
            start = o * int64(stride) - int64(pad_lo)
            lo, hi = (-pad_lo, size + pad_hi) if include_pad else (0, size)
            return tirx.max(tirx.min(start + int64(k), int64(hi)) - tirx.max(start, int64(lo)), int64(0))

        def avg_body(n: Any, c: Any, oh: Any, ow: Any) -> Any:
            count = counted(oh, strides[0], pads[0], pads[2], h, kernel[0]) * \
                counted(ow, strides[1], pads[1], pads[3], w, kernel[1])
            return tirx.Select(count > int64(0), sums(n, c, oh, ow) / count.astype(dtype), const(0, dtype))

        return te.compute(out_shape, avg_body, name="avg_pool2d")

    return [t.emit_te(compute, t.arg(node.inputs[0]), name=node.op)]
