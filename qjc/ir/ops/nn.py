"""Neural-network layers: normalizations (layer_norm, rms_norm, batch_norm), conv2d and 2-D pooling.

Image ops use NCHW activations and OIHW weights. Batch and channel dims of pooling inputs may be
symbolic; spatial dims (and conv channels, fixed by the weight) must be static, since kernels are
specialized on them. ``pads`` are ONNX-ordered ``[top, left, bottom, right]``.
"""

from __future__ import annotations

import numpy as np

from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import (
    norm_axis,
    require_float,
    require_rank,
    require_same_dim,
    require_shape,
    require_static,
)
from qjc.ir.types import TensorType

# ---- normalizations ------------------------------------------------------------------------


def _norm_infer(what: str):
    """Inference for layer_norm / rms_norm: x [..., *normalized], optional params of the normalized shape."""

    def infer(ts: list[TensorType], attrs) -> list[TensorType]:
        x = ts[0]
        require_float(x)
        if x.rank < 1:
            raise ValueError(f"{what} needs rank >= 1")
        axis = norm_axis(attrs["axis"], x.rank)
        normalized = x.shape[axis:]
        for name, t in zip(("weight", "bias"), ts[1:], strict=False):
            if t.dtype != x.dtype:
                raise ValueError(f"{name} dtype {t.dtype} differs from input dtype {x.dtype}")
            require_shape(t, normalized, f"{name} (the normalized dims x.shape[{axis}:])")
        return [x]

    return infer


def _layer_norm(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                axis: int = -1, eps: float = 1e-5) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    centered = x - x.mean(axis=axes, keepdims=True)
    var = (centered * centered).mean(axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.asarray(eps, x.dtype))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(x: np.ndarray, weight: np.ndarray | None = None, axis: int = -1,
              eps: float = 1e-6) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    ms = (x * x).mean(axis=axes, keepdims=True)
    y = x / np.sqrt(ms + np.asarray(eps, x.dtype))
    return y if weight is None else y * weight


register(OpDef("layer_norm", "nn", (1, 3), _norm_infer("layer_norm"), _layer_norm,
               attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-5)},
               doc="(x - mean) / sqrt(var + eps) * weight + bias over dims axis..end (ONNX style); "
                   "weight and bias (optional, in that order) have the normalized shape"))

register(OpDef("rms_norm", "nn", (1, 2), _norm_infer("rms_norm"), _rms_norm,
               attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-6)},
               doc="x / sqrt(mean(x^2) + eps) * weight over dims axis..end; weight optional"))


def _batch_norm_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    x = ts[0]
    require_float(x)
    if x.rank < 2:
        raise ValueError(f"batch_norm needs rank >= 2 ([N, C, ...]), got {x}")
    for name, t in zip(("scale", "bias", "mean", "var"), ts[1:], strict=True):
        if t.dtype != x.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from input dtype {x.dtype}")
        require_rank(t, 1, f"{name} ([C])")
        require_same_dim(t.shape[0], x.shape[1], f"{name} length and channel dim differ")
    return [x]


def _batch_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                eps: float = 1e-5) -> np.ndarray:
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    inv_std = 1.0 / np.sqrt(var.reshape(per_channel) + np.asarray(eps, x.dtype))
    return (x - mean.reshape(per_channel)) * inv_std * scale.reshape(per_channel) + bias.reshape(per_channel)


register(OpDef("batch_norm", "nn", (5, 5), _batch_norm_infer, _batch_norm,
               attrs={"eps": Attr("float", 1e-5)},
               doc="inference batch norm over channel axis 1: (x - mean) / sqrt(var + eps) * scale + bias; "
                   "inputs x, scale, bias, mean, var"))

# ---- windows: shared by conv2d and pooling -------------------------------------------------


def _check_ints(attrs: dict, name: str, length: int, minimum: int) -> tuple[int, ...]:
    values = attrs[name]
    if len(values) != length or any(v < minimum for v in values):
        raise ValueError(f"{name} must be {length} ints >= {minimum}, got {list(values)}")
    return values


def _window_out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                     ceil_mode: bool, what: str) -> int:
    span = dilation * (kernel - 1) + 1
    room = size + pad_begin + pad_end - span
    if room < 0:
        raise ValueError(f"{what}: window of {span} does not fit in {size} + pads {pad_begin}+{pad_end}")
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    # as torch and ONNX do: the last window must start inside the input or its leading pad
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def _spatial_out(x: TensorType, kernel, strides, pads, dilations, ceil_mode: bool) -> tuple[int, int]:
    h = require_static(x.shape[2], "input height")
    w = require_static(x.shape[3], "input width")
    return (_window_out_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode, "height"),
            _window_out_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode, "width"))


def _pad_to_windows(x: np.ndarray, pads, out_hw, kernel, strides, dilations, fill) -> np.ndarray:
    """``x`` padded by ``pads`` and, past the bottom/right pad, by as much as ceil-mode windows
    overhang; every new element is ``fill``."""
    extra = []
    for i in range(2):
        needed = (out_hw[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        extra.append(max(0, needed - (x.shape[2 + i] + pads[i] + pads[i + 2])))
    widths = ((0, 0), (0, 0), (pads[0], pads[2] + extra[0]), (pads[1], pads[3] + extra[1]))
    return np.pad(x, widths, constant_values=fill)


def _windows(xp: np.ndarray, kernel, strides, dilations, out_hw) -> np.ndarray:
    """Every window of the padded ``xp`` [N, C, Hp, Wp] as [N, C, kH, kW, OH, OW] (one strided
    slice per kernel position, so the loop is kH * kW long, not OH * OW)."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilations, out_hw
    cols = np.empty(xp.shape[:2] + (kh, kw, oh, ow), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            cols[:, :, i, j] = xp[:, :, rows, columns]
    return cols


# ---- conv2d --------------------------------------------------------------------------------


def _conv2d_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    x, w = ts[0], ts[1]
    require_float(x)
    require_rank(x, 4, "input ([N, C, H, W])")
    require_rank(w, 4, "weight ([O, C/groups, kH, kW])")
    if w.dtype != x.dtype:
        raise ValueError(f"weight dtype {w.dtype} differs from input dtype {x.dtype}")
    strides = _check_ints(attrs, "strides", 2, 1)
    pads = _check_ints(attrs, "pads", 4, 0)
    dilations = _check_ints(attrs, "dilations", 2, 1)
    groups = attrs["groups"]
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    c = require_static(x.shape[1], "input channels")
    o, cg, kh, kw = (require_static(d, "weight dims") for d in w.shape)
    if c % groups or o % groups:
        raise ValueError(f"channels in ({c}) and out ({o}) must be divisible by groups ({groups})")
    if cg * groups != c:
        raise ValueError(f"weight takes {cg} channels per group x {groups} groups, input has {c}")
    if len(ts) == 3:
        bias = ts[2]
        if bias.dtype != x.dtype:
            raise ValueError(f"bias dtype {bias.dtype} differs from input dtype {x.dtype}")
        require_shape(bias, (o,), "bias ([O])")
    oh, ow = _spatial_out(x, (kh, kw), strides, pads, dilations, False)
    return [TensorType((x.shape[0], o, oh, ow), x.dtype)]


def _conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, strides=(1, 1), pads=(0, 0, 0, 0),
            dilations=(1, 1), groups: int = 1) -> np.ndarray:
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    oh = _window_out_size(x.shape[2], kh, strides[0], pads[0], pads[2], dilations[0], False, "height")
    ow = _window_out_size(x.shape[3], kw, strides[1], pads[1], pads[3], dilations[1], False, "width")
    xp = _pad_to_windows(x, pads, (oh, ow), (kh, kw), strides, dilations, 0)
    # im2col per group: [N, G, Cg*kH*kW, OH*OW]; weights [G, O/G, Cg*kH*kW]; one batched matmul
    cols = _windows(xp, (kh, kw), strides, dilations, (oh, ow)).reshape(n, groups, cg * kh * kw, oh * ow)
    out = np.matmul(w.reshape(groups, o // groups, cg * kh * kw)[None], cols).reshape(n, o, oh, ow)
    return out if bias is None else out + bias.reshape(1, o, 1, 1)


register(OpDef("conv2d", "nn", (2, 3), _conv2d_infer, _conv2d,
               attrs={"strides": Attr("ints", (1, 1)), "pads": Attr("ints", (0, 0, 0, 0)),
                      "dilations": Attr("ints", (1, 1)), "groups": Attr("int", 1)},
               doc="2-D convolution (cross-correlation), x [N, C, H, W], w [O, C/groups, kH, kW], bias [O]; "
                   "pads [top, left, bottom, right]"))

# ---- pooling -------------------------------------------------------------------------------


def _pool_infer(is_max: bool):
    def infer(ts: list[TensorType], attrs) -> list[TensorType]:
        x = ts[0]
        require_rank(x, 4, "input ([N, C, H, W])")
        if is_max and not (x.dtype.is_float or x.dtype.is_int):
            raise ValueError(f"max_pool2d takes float or integer input, got {x.dtype}")
        if not is_max:
            require_float(x)
        kernel = _check_ints(attrs, "kernel", 2, 1)
        strides = kernel if attrs["strides"] is None else _check_ints(attrs, "strides", 2, 1)
        pads = _check_ints(attrs, "pads", 4, 0)
        dilations = _check_ints(attrs, "dilations", 2, 1) if is_max else (1, 1)
        oh, ow = _spatial_out(x, kernel, strides, pads, dilations, attrs["ceil_mode"])
        return [TensorType(x.shape[:2] + (oh, ow), x.dtype)]

    return infer


def _pool_geometry(x: np.ndarray, kernel, strides, pads, dilations, ceil_mode):
    strides = kernel if strides is None else strides
    out_hw = tuple(_window_out_size(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + 2], dilations[i],
                                    ceil_mode, what) for i, what in enumerate(("height", "width")))
    return strides, out_hw


def _max_pool2d(x: np.ndarray, kernel=(1, 1), strides=None, pads=(0, 0, 0, 0), dilations=(1, 1),
                ceil_mode: bool = False) -> np.ndarray:
    strides, out_hw = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad_to_windows(x, pads, out_hw, kernel, strides, dilations, lowest)
    return _windows(xp, kernel, strides, dilations, out_hw).max(axis=(2, 3))


def _avg_pool2d(x: np.ndarray, kernel=(1, 1), strides=None, pads=(0, 0, 0, 0), ceil_mode: bool = False,
                count_include_pad: bool = False) -> np.ndarray:
    no_dilation = (1, 1)
    strides, out_hw = _pool_geometry(x, kernel, strides, pads, no_dilation, ceil_mode)
    h, w = x.shape[2:]
    xp = _pad_to_windows(x, pads, out_hw, kernel, strides, no_dilation, 0)
    sums = _windows(xp.astype(np.float64), kernel, strides, no_dilation, out_hw).sum(axis=(2, 3))
    # The divisor counts the input elements under each window, plus the explicit pads when
    # count_include_pad; the ceil-mode overhang past the pads never counts (as in torch).
    counted = np.zeros((1, 1) + xp.shape[2:], np.float64)
    if count_include_pad:
        counted[..., : h + pads[0] + pads[2], : w + pads[1] + pads[3]] = 1.0
    else:
        counted[..., pads[0]: pads[0] + h, pads[1]: pads[1] + w] = 1.0
    counts = _windows(counted, kernel, strides, no_dilation, out_hw).sum(axis=(2, 3))
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0).astype(x.dtype)


register(OpDef("max_pool2d", "nn", (1, 1), _pool_infer(True), _max_pool2d,
               attrs={"kernel": Attr("ints"), "strides": Attr("ints", None, optional=True),
                      "pads": Attr("ints", (0, 0, 0, 0)), "dilations": Attr("ints", (1, 1)),
                      "ceil_mode": Attr("bool", False)},
               doc="2-D max pooling over NCHW; strides default to the kernel; pads count as -inf"))

register(OpDef("avg_pool2d", "nn", (1, 1), _pool_infer(False), _avg_pool2d,
               attrs={"kernel": Attr("ints"), "strides": Attr("ints", None, optional=True),
                      "pads": Attr("ints", (0, 0, 0, 0)), "ceil_mode": Attr("bool", False),
                      "count_include_pad": Attr("bool", False)},
               doc="2-D average pooling over NCHW; strides default to the kernel; pads are left out of the "
                   "divisor unless count_include_pad (the ceil-mode overhang never counts)"))
