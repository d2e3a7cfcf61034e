"""Converters for ONNX convolution, pooling and normalization layers.

qjc's conv2d and pooling ops are 2-D (NCHW); 1-D ONNX layers run as 2-D ones over a height of 1.
auto_pad (SAME_UPPER, SAME_LOWER, VALID) is resolved into explicit pads here, which needs the
spatial dims to be static, as qjc's window ops need anyway.
"""

from __future__ import annotations

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value
from qjc.ir.dtypes import f32

# ---- windows -----------------------------------------------------------------------------------------


def _auto_pads(ctx: NodeContext, auto_pad: str, sizes: list, kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int] | None:
    """ONNX-ordered pads [begins..., ends...] for ``auto_pad``; None for NOTSET (use ``pads``)."""
    if auto_pad in ("NOTSET", ""):
        return None
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"unknown auto_pad {auto_pad!r}")
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        if not isinstance(size, int):
            raise ctx.fail(f"auto_pad {auto_pad} needs static spatial dims, got {size}")
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        # SAME_UPPER puts the odd extra pad at the end, SAME_LOWER at the beginning
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


class _Window:
    """A convolution or pooling window's attributes, as 2-D lists (1-D layers get a unit height)."""

    def __init__(self, ctx: NodeContext, x: Value, kernel: list[int], dilated: bool = True) -> None:
        spatial = x.type.rank - 2
        if spatial not in (1, 2):
            raise ctx.fail(f"only 1-D and 2-D windows are supported, input has rank {x.type.rank}")
        self.one_d = spatial == 1
        strides = list(ctx.attr("strides", [1] * spatial))
        dilations = list(ctx.attr("dilations", [1] * spatial)) if dilated else [1] * spatial
        pads = _auto_pads(ctx, ctx.attr("auto_pad", "NOTSET"), list(x.type.shape[2:]), kernel, strides, dilations)
        if pads is None:
            pads = list(ctx.attr("pads", [0] * (2 * spatial)))
        if self.one_d:
            kernel, strides, dilations = [1] + kernel, [1] + strides, [1] + dilations
            pads = [0, pads[0], 0, pads[1]]
        self.kernel, self.strides, self.dilations, self.pads = kernel, strides, dilations, pads

    def lift(self, ctx: NodeContext, v: Value) -> Value:
        return ctx.op("unsqueeze", v, axes=[2]) if self.one_d else v

    def drop(self, ctx: NodeContext, v: Value) -> Value:
        return ctx.op("squeeze", v, axes=[2]) if self.one_d else v


@converter("Conv", since=1)
def conv(ctx: NodeContext):
    x, w, bias = ctx.value(0), ctx.value(1), ctx.optional_value(2)
    kernel = list(ctx.attr("kernel_shape", w.type.shape[2:]))
    win = _Window(ctx, x, kernel)
    inputs = [win.lift(ctx, x), win.lift(ctx, w)] + ([bias] if bias is not None else [])
    y = ctx.graph.add_node("conv2d", inputs, {"strides": win.strides, "pads": win.pads,
                                              "dilations": win.dilations, "groups": ctx.attr("group", 1)})[0]
    return win.drop(ctx, y)


@converter("MaxPool", since=1)
def max_pool(ctx: NodeContext):
    x = ctx.value(0)
    win = _Window(ctx, x, list(ctx.attr("kernel_shape")))
    y = ctx.op("max_pool2d", win.lift(ctx, x), kernel=win.kernel, strides=win.strides, pads=win.pads,
               dilations=win.dilations, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    return win.drop(ctx, y), None  # Indices (output 1) is not supported; an error if used


@converter("AveragePool", since=1)
def average_pool(ctx: NodeContext):
    x = ctx.value(0)
    dilations = ctx.attr("dilations", None)
    if dilations is not None and any(d != 1 for d in dilations):
        raise ctx.fail(f"dilated average pooling (dilations {list(dilations)}) is not supported")
    win = _Window(ctx, x, list(ctx.attr("kernel_shape")), dilated=False)
    y = ctx.op("avg_pool2d", win.lift(ctx, x), kernel=win.kernel, strides=win.strides, pads=win.pads,
               ceil_mode=bool(ctx.attr("ceil_mode", 0)),
               count_include_pad=bool(ctx.attr("count_include_pad", 0)))
    return win.drop(ctx, y)


def _global_pool(qjc_op: str):
    def convert(ctx: NodeContext):
        x = ctx.value(0)
        return ctx.op(qjc_op, x, axes=list(range(2, x.type.rank)), keepdims=True)

    return convert


converter("GlobalAveragePool", since=1)(_global_pool("mean"))
converter("GlobalMaxPool", since=1)(_global_pool("max"))

# ---- normalizations --------------------------------------------------------------------------------


@converter("BatchNormalization", since=9)
def batch_norm(ctx: NodeContext):
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1 is not supported; qjc compiles for inference")
    x = ctx.value(0)
    # opset 15 allows other types for the parameters than for x; qjc's batch_norm takes one
    params = [ctx.cast(ctx.value(i), x.type.dtype) for i in range(1, 5)]
    y = ctx.graph.add_node("batch_norm", [x, *params], {"eps": ctx.attr("epsilon", 1e-5)})[0]
    return [y] + [None] * (len(ctx.node.output) - 1)  # running statistics exist in training only


def _fits(param: Value, normalized: tuple) -> bool:
    return param.type.shape == tuple(normalized)


def _affine(ctx: NodeContext, y: Value, scale: Value | None, bias: Value | None) -> Value:
    if scale is not None:
        y = ctx.op("mul", y, scale)
    if bias is not None:
        y = ctx.op("add", y, bias)
    return y


@converter("LayerNormalization", since=17)
def layer_norm(ctx: NodeContext):
    x, scale, bias = ctx.value(0), ctx.value(1), ctx.optional_value(2)
    axis = ctx.attr("axis", -1) % x.type.rank
    eps = ctx.attr("epsilon", 1e-5)
    normalized = x.type.shape[axis:]
    if _fits(scale, normalized) and (bias is None or _fits(bias, normalized)):
        inputs = [x, scale] + ([bias] if bias is not None else [])
        y = ctx.graph.add_node("layer_norm", inputs, {"axis": axis, "eps": eps})[0]
    else:  # parameters that only broadcast to the normalized shape
        y = _affine(ctx, ctx.graph.add_node("layer_norm", [x], {"axis": axis, "eps": eps})[0], scale, bias)
    wants_stats = any(name for name in ctx.node.output[1:])
    if not wants_stats:
        return y
    # Mean and InvStdDev (training outputs) from plain ops, in f32 when stash_type says so
    axes = list(range(axis, x.type.rank))
    xs = ctx.cast(x, f32) if ctx.attr("stash_type", 1) == 1 and x.type.dtype.bits < 32 else x
    mean = ctx.op("mean", xs, axes=axes, keepdims=True)
    centered = ctx.op("sub", xs, mean)
    var = ctx.op("mean", ctx.op("mul", centered, centered), axes=axes, keepdims=True)
    inv_std = ctx.op("rsqrt", ctx.op("add", var, ctx.scalar(eps, var.type.dtype)))
    return y, mean, inv_std


@converter("RMSNormalization", since=23)
def rms_norm(ctx: NodeContext):
    x, scale = ctx.value(0), ctx.value(1)
    axis = ctx.attr("axis", -1) % x.type.rank
    eps = ctx.attr("epsilon", 1e-5)
    if _fits(scale, x.type.shape[axis:]):
        return ctx.graph.add_node("rms_norm", [x, scale], {"axis": axis, "eps": eps})[0]
    return _affine(ctx, ctx.graph.add_node("rms_norm", [x], {"axis": axis, "eps": eps})[0], scale, None)


@converter("InstanceNormalization", since=6)
def instance_norm(ctx: NodeContext):
    x, scale, bias = ctx.value(0), ctx.value(1), ctx.value(2)
    # normalizing each (n, c) over its spatial dims is a layer norm from axis 2 on
    y = ctx.graph.add_node("layer_norm", [x], {"axis": 2, "eps": ctx.attr("epsilon", 1e-5)})[0]
    per_channel = [-1] + [1] * (x.type.rank - 2)
    return _affine(ctx, y, ctx.op("reshape", scale, shape=per_channel), ctx.op("reshape", bias, shape=per_channel))


@converter("LpNormalization", since=1)
def lp_normalization(ctx: NodeContext):
    x = ctx.value(0)
    axis, p = ctx.attr("axis", -1) % x.type.rank, ctx.attr("p", 2)
    if p not in (1, 2):
        raise ctx.fail(f"p={p} is not supported (1 or 2)")
    magnitude = ctx.op("abs", x) if p == 1 else ctx.op("mul", x, x)
    norm = ctx.op("sum", magnitude, axes=[axis], keepdims=True)
    if p == 2:
        norm = ctx.op("sqrt", norm)
    zero = ctx.scalar(0, x.type.dtype)
    # a zero vector stays zero instead of becoming 0/0
    return ctx.op("where", ctx.op("eq", norm, zero), zero, ctx.op("div", x, norm))


@converter("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx: NodeContext):
    x = ctx.value(0)
    axes = list(ctx.attr("axes", [0, 2, 3]))
    mean = ctx.op("mean", x, axes=axes, keepdims=True)
    centered = ctx.op("sub", x, mean)
    std = ctx.op("sqrt", ctx.op("mean", ctx.op("mul", centered, centered), axes=axes, keepdims=True))
    # ONNX's function body adds 1e-9 to the standard deviation
    return ctx.op("div", centered, ctx.op("add", std, ctx.scalar(1e-9, x.type.dtype)))


def _group_norm(per_group_params: bool):
    def convert(ctx: NodeContext):
        x, scale, bias = ctx.value(0), ctx.value(1), ctx.value(2)
        groups = ctx.attr("num_groups")
        shape = list(x.type.shape)
        channels = shape[1]
        if not isinstance(channels, int) or channels % groups:
            raise ctx.fail(f"{channels} channels do not split into {groups} groups")
        per_group = channels // groups
        # each (n, group) is normalized over its channels and spatial dims: a layer norm from axis 2
        rest = per_group
        for d in shape[2:]:
            rest = rest * d
        grouped = ctx.op("reshape", x, shape=[shape[0], groups, rest])
        y = ctx.graph.add_node("layer_norm", [grouped], {"axis": 2, "eps": ctx.attr("epsilon", 1e-5)})[0]
        y = ctx.op("reshape", y, shape=shape)
        if per_group_params:  # opset 18: one scale and bias per group, shared by its channels
            scale, bias = (ctx.op("reshape", ctx.op("expand", ctx.op("reshape", p, shape=[groups, 1]),
                                                    shape=[groups, per_group]), shape=[channels])
                           for p in (scale, bias))
        per_channel = [channels] + [1] * (x.type.rank - 2)
        return _affine(ctx, y, ctx.op("reshape", scale, shape=per_channel),
                       ctx.op("reshape", bias, shape=per_channel))

    return convert


converter("GroupNormalization", since=18)(_group_norm(True))
converter("GroupNormalization", since=21)(_group_norm(False))
