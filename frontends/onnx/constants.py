"""Converters for ops that make tensors rather than transform them: Constant, ConstantOfShape,
Range, and Shape / Size, which read a tensor's (possibly symbolic) dims as compile-time data."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.external_data import constant_key
from qjc.frontends.onnx.known import Known, dims_known, make_known
from qjc.frontends.onnx.onnx_types import ONNX_TO_QJC, qjc_dtype, tensor_to_array
from qjc.frontends.onnx.registry import converter
from qjc.frontends.onnx.shape import FOLD_LIMIT
from qjc.ir.dims import SymExpr, product
from qjc.ir.dtypes import f32, i64


@converter("Constant", since=1)
def constant(ctx: NodeContext):
    what = f"Constant {ctx.node.output[0]!r}"
    if ctx.has_attr("value"):
        tensor: TensorProto = ctx.attr("value")
        external = ctx.state.external.get(constant_key(ctx.node.output[0]))
        data = tensor_to_array(tensor, what, external)
        return make_known(data, ONNX_TO_QJC[tensor.data_type])
    if ctx.has_attr("value_float"):
        return make_known(np.asarray(ctx.attr("value_float"), np.float32), f32)
    if ctx.has_attr("value_floats"):
        return make_known(np.asarray(ctx.attr("value_floats"), np.float32), f32)
    if ctx.has_attr("value_int"):
        return make_known(np.asarray(ctx.attr("value_int"), np.int64), i64)
    if ctx.has_attr("value_ints"):
        return make_known(np.asarray(ctx.attr("value_ints"), np.int64), i64)
    kinds = [a.name for a in ctx.node.attribute]
    raise ctx.fail(f"a Constant holding {', '.join(kinds) or 'nothing'} is not supported "
                   "(qjc takes value, value_float(s) and value_int(s))")


@converter("ConstantOfShape", since=9)
def constant_of_shape(ctx: NodeContext):
    shape = ctx.known_dims(0, "shape")
    if ctx.has_attr("value"):
        tensor: TensorProto = ctx.attr("value")
        value = tensor_to_array(tensor, "ConstantOfShape value").reshape(-1)
        dtype = qjc_dtype(tensor.data_type, "ConstantOfShape value")
    else:
        value, dtype = np.zeros(1, np.float32), f32
    if all(isinstance(d, int) for d in shape) and math.prod(shape) <= FOLD_LIMIT:
        return make_known(np.full(shape, value[0], dtype=dtype.np_dtype), dtype)
    return ctx.op("full", shape=shape, value=float(value[0]), dtype=dtype)


@converter("Range", since=11)
def range_(ctx: NodeContext):
    start, limit, delta = (ctx.known(i, name) for i, name in enumerate(("start", "limit", "delta")))
    dtype = start.dtype
    if not (start.symbolic or limit.symbolic or delta.symbolic):
        s, l_, d = (k.data.reshape(-1)[0] for k in (start, limit, delta))
        if d == 0:
            raise ctx.fail("delta is 0")
        count = max(math.ceil((float(l_) - float(s)) / float(d)), 0)
        data = np.arange(count, dtype=dtype.np_dtype) * dtype.np_dtype.type(d) + dtype.np_dtype.type(s)
        return make_known(data.astype(dtype.np_dtype), dtype)
    s, l_, d = (k.dims()[0] if k.symbolic else k.data.reshape(-1)[0].item() for k in (start, limit, delta))
    if d != 1 or not isinstance(s, int):
        raise ctx.fail(f"a symbolic range {s}..{l_} needs an integer start and delta 1, got delta {d}")
    return ctx.op("iota", shape=[l_ - s], dtype=dtype, start=s)


@converter("Shape", since=1)
def shape(ctx: NodeContext):
    x = ctx.input(0)
    dims = list(x.shape) if isinstance(x, Known) else list(x.type.shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)  # opset 15; clamped like a Python slice
    return dims_known(dims[start:end], i64)


@converter("Size", since=1)
def size(ctx: NodeContext):
    x = ctx.input(0)
    n = product(x.shape) if isinstance(x, Known) else product(x.type.shape)
    if isinstance(n, SymExpr):
        data = np.empty((), dtype=object)
        data[()] = n
        return Known(data, i64)
    return make_known(np.asarray(n, np.int64), i64)


@converter("EyeLike", since=9)
def eye_like(ctx: NodeContext):
    x = ctx.input(0)
    shape = list(x.shape) if isinstance(x, Known) else list(x.type.shape)
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        raise ctx.fail(f"EyeLike needs a static 2-D input, got shape {shape}")
    like = x.dtype if isinstance(x, Known) else x.type.dtype
    dtype = qjc_dtype(ctx.attr("dtype"), "the EyeLike dtype") if ctx.has_attr("dtype") else like
    return make_known(np.eye(shape[0], shape[1], k=ctx.attr("k", 0), dtype=dtype.np_dtype), dtype)
