"""Converters for ONNX activation functions, each lowered to a few existing qjc elementwise ops
(qjc keeps only the activations backends fuse by name: relu, gelu, silu, sigmoid, tanh)."""

from __future__ import annotations

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value


def _c(ctx: NodeContext, value: float, like: Value) -> Value:
    return ctx.scalar(value, like.type.dtype)


def _softplus(ctx: NodeContext, x: Value) -> Value:
    # log(1 + exp(x)) written as max(x, 0) + log(1 + exp(-|x|)): equal, and no overflow for large x
    tail = ctx.op("log", ctx.op("add", _c(ctx, 1.0, x), ctx.op("exp", ctx.op("neg", ctx.op("abs", x)))))
    return ctx.op("add", ctx.op("relu", x), tail)


@converter("LeakyRelu", since=6)
def leaky_relu(ctx: NodeContext):
    x = ctx.value(0)
    alpha = ctx.attr("alpha", 0.01)
    return ctx.op("where", ctx.op("lt", x, _c(ctx, 0.0, x)), ctx.op("mul", x, _c(ctx, alpha, x)), x)


@converter("PRelu", since=7)
def prelu(ctx: NodeContext):
    x, slope = ctx.value(0), ctx.value(1)
    return ctx.op("where", ctx.op("lt", x, _c(ctx, 0, x)), ctx.op("mul", x, slope), x)


@converter("ThresholdedRelu", since=10)
def thresholded_relu(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("where", ctx.op("gt", x, _c(ctx, ctx.attr("alpha", 1.0), x)), x, _c(ctx, 0.0, x))


def _elu(ctx: NodeContext, x: Value, alpha: float) -> Value:
    negative = ctx.op("mul", _c(ctx, alpha, x), ctx.op("sub", ctx.op("exp", x), _c(ctx, 1.0, x)))
    return ctx.op("where", ctx.op("lt", x, _c(ctx, 0.0, x)), negative, x)


@converter("Elu", since=6)
def elu(ctx: NodeContext):
    return _elu(ctx, ctx.value(0), ctx.attr("alpha", 1.0))


@converter("Selu", since=6)
def selu(ctx: NodeContext):
    x = ctx.value(0)
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    negative = ctx.op("sub", ctx.op("mul", _c(ctx, alpha, x), ctx.op("exp", x)), _c(ctx, alpha, x))
    inner = ctx.op("where", ctx.op("le", x, _c(ctx, 0.0, x)), negative, x)
    return ctx.op("mul", _c(ctx, gamma, x), inner)


@converter("Celu", since=12)
def celu(ctx: NodeContext):
    x = ctx.value(0)
    alpha = ctx.attr("alpha", 1.0)
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
    scaled = ctx.op("mul", _c(ctx, alpha, x),
                    ctx.op("sub", ctx.op("exp", ctx.op("div", x, _c(ctx, alpha, x))), _c(ctx, 1.0, x)))
    return ctx.op("add", ctx.op("relu", x), ctx.op("minimum", _c(ctx, 0.0, x), scaled))


def _hard_sigmoid(ctx: NodeContext, x: Value, alpha: float, beta: float) -> Value:
    linear = ctx.op("add", ctx.op("mul", x, _c(ctx, alpha, x)), _c(ctx, beta, x))
    return ctx.op("clamp", linear, min=0.0, max=1.0)


@converter("HardSigmoid", since=6)
def hard_sigmoid(ctx: NodeContext):
    return _hard_sigmoid(ctx, ctx.value(0), ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5))


@converter("HardSwish", since=14)
def hard_swish(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("mul", x, _hard_sigmoid(ctx, x, 1.0 / 6.0, 0.5))


@converter("Softplus", since=1)
def softplus(ctx: NodeContext):
    return _softplus(ctx, ctx.value(0))


@converter("Softsign", since=1)
def softsign(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("div", x, ctx.op("add", _c(ctx, 1.0, x), ctx.op("abs", x)))


@converter("Mish", since=18)
def mish(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("mul", x, ctx.op("tanh", _softplus(ctx, x)))


@converter("Gelu", since=20)
def gelu(ctx: NodeContext):
    return ctx.op("gelu", ctx.value(0), approximate=ctx.attr("approximate", "none"))


@converter("Swish", since=24)
def swish(ctx: NodeContext):
    x = ctx.value(0)
    alpha = ctx.attr("alpha", 1.0)
    if alpha == 1.0:
        return ctx.op("silu", x)
    return ctx.op("mul", x, ctx.op("sigmoid", ctx.op("mul", x, _c(ctx, alpha, x))))


@converter("Shrink", since=9)
def shrink(ctx: NodeContext):
    x = ctx.value(0)
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    low = ctx.op("lt", x, _c(ctx, -lambd, x))
    high = ctx.op("gt", x, _c(ctx, lambd, x))
    inner = ctx.op("where", high, ctx.op("sub", x, _c(ctx, bias, x)), _c(ctx, 0, x))
    return ctx.op("where", low, ctx.op("add", x, _c(ctx, bias, x)), inner)
