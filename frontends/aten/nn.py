"""Converters for ATen normalization, convolution, pooling and attention ops."""

from __future__ import annotations

from qjc.frontends.aten import ConvertContext, converts


@converts("aten.native_layer_norm.default")
def layer_norm(ctx: ConvertContext, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    inputs = [x] + ([weight] if weight is not None else [])
    if bias is not None:
        if weight is None:
            raise ctx.fail("layer_norm with a bias but no weight is not supported")
        inputs.append(bias)
    axis = x.type.rank - len(normalized_shape)
    y = ctx.graph.add_node("layer_norm", inputs, {"axis": axis, "eps": float(eps)})[0]
    return (y, None, None)  # mean and rstd are for training


@converts("aten.rms_norm.default")
def rms_norm(ctx, x, normalized_shape, weight=None, eps=None):
    if len(normalized_shape) != 1:
        raise ctx.fail("rms_norm over more than the last axis is not supported")
    inputs = [x] + ([weight] if weight is not None else [])
    attrs = {"axis": -1}
    if eps is not None:
        attrs["eps"] = float(eps)
    return ctx.graph.add_node("rms_norm", inputs, attrs)[0]


@converts("aten._native_batch_norm_legit_no_training.default")
def batch_norm(ctx, x, weight, bias, mean, var, momentum, eps):
    if weight is None or bias is None:
        raise ctx.fail("batch_norm without affine weights is not supported")
    y = ctx.graph.add_node("batch_norm", [x, weight, bias, mean, var], {"eps": float(eps)})[0]
    return (y, None, None)


@converts("aten.convolution.default")
def convolution(ctx, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise ctx.fail("transposed convolution is not supported")
    if x.type.rank != 4:
        raise ctx.fail(f"only 2-D convolution is supported (input rank {x.type.rank})")
    inputs = [x, w] + ([bias] if bias is not None else [])
    pads = list(padding) * 2  # torch pads symmetrically: [top, left] then [bottom, right]
    return ctx.graph.add_node("conv2d", inputs, {"strides": list(stride), "pads": pads,
                                                 "dilations": list(dilation), "groups": groups})[0]


def _pair(v):
    return list(v) * 2 if len(v) == 1 else list(v)


@converts("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default")
def max_pool2d(ctx, x, kernel, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    kernel = _pair(kernel)
    stride = _pair(stride) if stride else kernel
    y = ctx.op("max_pool2d", x, kernel=kernel, strides=stride, pads=_pair(padding) * 2,
               dilations=_pair(dilation), ceil_mode=ceil_mode)
    if str(ctx.node.target).endswith("with_indices.default"):
        return (y, None)
    return y


@converts("aten.avg_pool2d.default")
def avg_pool2d(ctx, x, kernel, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    if divisor_override is not None:
        raise ctx.fail("avg_pool2d with divisor_override is not supported")
    kernel = _pair(kernel)
    stride = _pair(stride) if stride else kernel
    return ctx.op("avg_pool2d", x, kernel=kernel, strides=stride, pads=_pair(padding) * 2, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)


@converts("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def adaptive_avg_pool2d(ctx, x, output_size):
    if list(output_size) != [1, 1]:
        raise ctx.fail(f"adaptive_avg_pool2d to {list(output_size)} is not supported (only 1x1)")
    return ctx.op("mean", x, axes=[2, 3], keepdims=True)


@converts("aten.scaled_dot_product_attention.default")
def sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    sq, sk = q.type.shape[-2], k.type.shape[-2]
    if is_causal and sq != sk:
        # torch aligns its causal mask to the top-left corner; qjc's sdpa to the bottom-right
        raise ctx.fail("is_causal with different query and key lengths is not supported")
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    return ctx.graph.add_node("sdpa", inputs, {"causal": bool(is_causal), "scale": scale})[0]
