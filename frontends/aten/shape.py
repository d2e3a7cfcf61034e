"""Converters for ATen view, indexing and tensor-creation ops."""

from __future__ import annotations

import numpy as np

from qjc.frontends.aten import ConvertContext, converts
from qjc.frontends.torch_types import qjc_dtype
from qjc.ir import Value
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import i64

_TO_END = 2**62  # a slice end meaning "to the end of the axis"


@converts("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def view(ctx: ConvertContext, x: Value, shape):
    return ctx.op("reshape", x, shape=list(shape))


@converts("aten.permute.default")
def permute(ctx, x, dims):
    return ctx.op("transpose", x, perm=[d % x.type.rank for d in dims])


@converts("aten.transpose.int")
def transpose(ctx, x, d0, d1):
    perm = list(range(x.type.rank))
    d0, d1 = d0 % x.type.rank, d1 % x.type.rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return ctx.op("transpose", x, perm=perm)


@converts("aten.t.default")
def t(ctx, x):
    return x if x.type.rank < 2 else ctx.op("transpose", x, perm=[1, 0])


@converts("aten.expand.default")
def expand(ctx, x, sizes, implicit=False):
    return ctx.op("expand", x, shape=list(sizes))


@converts("aten.unsqueeze.default")
def unsqueeze(ctx, x, dim):
    return ctx.op("unsqueeze", x, axes=[dim % (x.type.rank + 1)])


@converts("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(ctx, x, dims=None):
    if dims is None:
        return ctx.op("squeeze", x)
    dims = [dims] if isinstance(dims, int) else list(dims)
    # torch silently skips axes that are not 1; qjc's squeeze insists, so drop them here
    keep = [d % x.type.rank for d in dims if x.type.shape[d] == 1]
    return ctx.op("squeeze", x, axes=keep) if keep else x


@converts("aten.slice.Tensor")
def slice_(ctx, x, dim=0, start=None, end=None, step=1):
    axis = dim % x.type.rank
    size = x.type.shape[axis]
    start = 0 if start is None else start
    if end is None or (isinstance(end, int) and isinstance(size, int) and end >= size) or end == size:
        end = _TO_END
    if isinstance(end, int) and end >= 2**62:
        end = _TO_END
    if start == 0 and end == _TO_END and step == 1:
        return x
    return ctx.op("slice", x, axes=[axis], starts=[start], ends=[end], steps=[step])


@converts("aten.select.int")
def select(ctx, x, dim, index):
    axis = dim % x.type.rank
    end = index + 1 if index != -1 else _TO_END
    part = ctx.op("slice", x, axes=[axis], starts=[index], ends=[end], steps=[1])
    return ctx.op("squeeze", part, axes=[axis])


@converts("aten.cat.default")
def cat(ctx, tensors, dim=0):
    tensors = [v for v in tensors if not (v.type.rank == 1 and v.type.shape[0] == 0)]  # torch allows empty 1-D
    if len(tensors) == 1:
        return tensors[0]
    dtype = ctx.out_dtype()
    return ctx.graph.add_node("concat", [ctx.cast(v, dtype) for v in tensors], {"axis": dim % tensors[0].type.rank})[0]


@converts("aten.split_with_sizes.default", "aten.split.Tensor")
def split(ctx, x, sizes, dim=0):
    axis = dim % x.type.rank
    total = x.type.shape[axis]
    if isinstance(sizes, int):
        if not isinstance(total, int):
            raise ctx.fail("split by chunk size needs a static axis")
        sizes = [min(sizes, total - i) for i in range(0, total, sizes)]
    return tuple(ctx.graph.add_node("split", [x], {"axis": axis, "sizes": list(sizes)}))


@converts("getitem")
def getitem(ctx, seq, index):
    return seq[index]


@converts("aten.embedding.default")
def embedding(ctx, weight, indices, padding_idx=-1, *args):
    return ctx.op("gather", weight, indices, axis=0)


@converts("aten.index_select.default")
def index_select(ctx, x, dim, index):
    return ctx.op("gather", x, index, axis=dim % x.type.rank)


@converts("aten.gather.default")
def gather(ctx, x, dim, index, sparse_grad=False):
    return ctx.op("gather_elements", x, index, axis=dim % x.type.rank)


@converts("aten.index.Tensor")
def index(ctx, x, indices):
    """x[..., i0, i1, ...]: one index tensor is a gather; several on consecutive axes are an index op."""
    used = [i for i, v in enumerate(indices) if v is not None]
    if used != list(range(used[0], used[-1] + 1)):
        raise ctx.fail("advanced indexing on non-consecutive axes is not supported")
    tensors = [indices[i] for i in used]
    if len(tensors) == 1:
        return ctx.op("gather", x, tensors[0], axis=used[0])
    return ctx.graph.add_node("index", [x, *tensors], {"axis": used[0]})[0]


def _creation(ctx: ConvertContext, shape, value) -> Value:
    dtype = ctx.out_dtype()
    shape = list(shape)
    if all(isinstance(d, int) for d in shape):
        return ctx.graph.add_constant("c", np.full(shape, value, dtype=dtype.np_dtype))
    return ctx.op("full", shape=shape, value=float(value), dtype=dtype)


@converts("aten.full.default")
def full(ctx, size, fill_value, **kwargs):
    return _creation(ctx, size, fill_value)


@converts("aten.zeros.default", "aten.new_zeros.default")
def zeros(ctx, *args, **kwargs):
    size = args[-1] if args else kwargs["size"]
    return _creation(ctx, size, 0)


@converts("aten.ones.default", "aten.new_ones.default")
def ones(ctx, *args, **kwargs):
    size = args[-1] if args else kwargs["size"]
    return _creation(ctx, size, 1)


@converts("aten.full_like.default")
def full_like(ctx, x, fill_value, **kwargs):
    return _creation(ctx, x.type.shape, fill_value)


@converts("aten.zeros_like.default")
def zeros_like(ctx, x, **kwargs):
    return _creation(ctx, x.type.shape, 0)


@converts("aten.ones_like.default")
def ones_like(ctx, x, **kwargs):
    return _creation(ctx, x.type.shape, 1)


@converts("aten.scalar_tensor.default")
def scalar_tensor(ctx, value, **kwargs):
    return _creation(ctx, (), value)


@converts("aten.arange.start_step", "aten.arange.default", "aten.arange.start")
def arange(ctx, *args, **kwargs):
    args = list(args)
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args + [1])[:3]
    dtype = ctx.out_dtype()
    if all(isinstance(v, (int, float)) for v in (start, end, step)):
        return ctx.graph.add_constant("c", np.arange(start, end, step).astype(dtype.np_dtype))
    if step != 1 or not isinstance(start, int):
        raise ctx.fail("arange with a symbolic bound needs an integer start and step 1")
    length = end - start
    return ctx.op("iota", shape=[length], dtype=dtype, start=start)


@converts("aten.index_copy.default")
def index_copy(ctx, x, dim, index, src):
    return ctx.op("index_copy", x, index, src, axis=dim % x.type.rank)


@converts("aten.index_put.default")
def index_put(ctx, x, indices, values, accumulate=False):
    """x[:, :, pos] = v with one index tensor is an index_copy; other forms are not supported."""
    used = [i for i, v in enumerate(indices) if v is not None]
    if accumulate or len(used) != 1 or indices[used[0]].type.rank != 1:
        raise ctx.fail("index_put is supported only as a write of whole slices along one axis")
    axis = used[0]
    if values.type.rank != x.type.rank:
        raise ctx.fail("index_put with a broadcast value is not supported")
    return ctx.op("index_copy", x, indices[axis], values, axis=axis)


@converts("aten.sym_size.int")
def sym_size(ctx, x, dim):
    return x.type.shape[dim]


def _dim(v):
    return v if isinstance(v, (int, SymExpr)) else int(v)


@converts("aten.cumsum.default")
def cumsum(ctx, x, dim, dtype=None):
    out = ctx.out_dtype()
    return ctx.op("cumsum", ctx.cast(x, out), axis=dim % x.type.rank)


@converts("aten.constant_pad_nd.default")
def constant_pad(ctx, x, pad, value=0.0):
    # torch lists (begin, end) pairs from the last axis backwards; qjc wants ONNX order
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    return ctx.op("pad", x, pads=begins + ends, value=float(value))


_ = (qjc_dtype, i64)
