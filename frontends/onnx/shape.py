"""Converters for ONNX shape and data-movement ops: Reshape, Flatten, Transpose, Squeeze,
Unsqueeze, Concat, Split, Slice, Gather, GatherElements, Expand, Tile, Pad, Trilu.

Every one of them folds when its data is Known (shape arithmetic on Shape outputs flows through
Gather, Unsqueeze, Concat, Slice and Reshape before it reaches the op that needs it); a Known that
is a large tensor of data is left to run (FOLD_LIMIT), so weights are not copied at import.
"""

from __future__ import annotations

import numpy as np

from qjc.frontends.onnx.context import NodeContext
from qjc.frontends.onnx.known import Known, make_known
from qjc.frontends.onnx.registry import converter
from qjc.ir import Value
from qjc.ir.dims import Dim
from qjc.ir.dtypes import i64

# Knowns with more elements than this are computed at run time instead of folded at import.
FOLD_LIMIT = 4096


def _shape_of(entry: Value | Known) -> list[Dim]:
    return list(entry.shape) if isinstance(entry, Known) else list(entry.type.shape)


def _small(*knowns: Known) -> bool:
    return all(k.data.size <= FOLD_LIMIT for k in knowns)


def _object(k: Known) -> np.ndarray:
    return k.data.astype(object) if not k.symbolic else k.data


# ---- reshape, flatten, transpose -------------------------------------------------------------------


@converter("Reshape", since=5)
def reshape(ctx: NodeContext):
    x = ctx.input(0)
    target = ctx.known_dims(1, "shape")
    in_shape = _shape_of(x)
    if not ctx.attr("allowzero", 0):
        # 0 copies the input's dim at that position (qjc's reshape reads 0 as a zero-size dim)
        target = [in_shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(target)]
    if isinstance(x, Known) and all(isinstance(d, int) for d in target):
        return Known(x.data.reshape(target), x.dtype)
    return ctx.op("reshape", ctx.value(0), shape=target)


@converter("Flatten", since=1)
def flatten(ctx: NodeContext):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1)
    if isinstance(x, Known):
        rank = x.data.ndim
        axis = axis + rank if axis < 0 else axis
        rows, cols = (int(np.prod(part, dtype=np.int64)) for part in (x.shape[:axis], x.shape[axis:]))
        return Known(x.data.reshape(rows, cols), x.dtype)
    return ctx.op("flatten", ctx.value(0), axis=axis)


@converter("Transpose", since=1)
def transpose(ctx: NodeContext):
    x = ctx.input(0)
    perm = ctx.attr("perm", None)
    if isinstance(x, Known) and _small(x):
        return Known(np.transpose(x.data, perm), x.dtype)
    return ctx.op("transpose", ctx.value(0), perm=None if perm is None else list(perm))


# ---- squeeze, unsqueeze ----------------------------------------------------------------------------


def _squeeze(ctx: NodeContext, axes: list[int] | None):
    x = ctx.input(0)
    if isinstance(x, Known):
        axis = None if axes is None else tuple(a % x.data.ndim for a in axes) if x.data.ndim else ()
        return Known(np.squeeze(x.data, axis=axis), x.dtype)
    return ctx.op("squeeze", ctx.value(0), axes=axes)


def _unsqueeze(ctx: NodeContext, axes: list[int]):
    x = ctx.input(0)
    out_rank = len(_shape_of(x)) + len(axes)
    axes = sorted(a % out_rank for a in axes)
    if isinstance(x, Known):
        return Known(np.expand_dims(x.data, tuple(axes)), x.dtype)
    return ctx.op("unsqueeze", ctx.value(0), axes=axes)


@converter("Squeeze", since=1)
def squeeze_attrs(ctx: NodeContext):
    axes = ctx.attr("axes", None)
    return _squeeze(ctx, None if axes is None else list(axes))


@converter("Squeeze", since=13)
def squeeze(ctx: NodeContext):
    return _squeeze(ctx, ctx.known_ints(1, "axes") if ctx.has_input(1) else None)


@converter("Unsqueeze", since=1)
def unsqueeze_attrs(ctx: NodeContext):
    return _unsqueeze(ctx, list(ctx.attr("axes")))


@converter("Unsqueeze", since=13)
def unsqueeze(ctx: NodeContext):
    return _unsqueeze(ctx, ctx.known_ints(1, "axes"))


# ---- concat, split -----------------------------------------------------------------------------


@converter("Concat", since=4)
def concat(ctx: NodeContext):
    entries = [e for e in ctx.inputs() if e is not None]
    axis = ctx.attr("axis")
    if all(isinstance(e, Known) for e in entries):
        symbolic = any(e.symbolic for e in entries)
        parts = [_object(e) if symbolic else e.data for e in entries]
        return make_known(np.concatenate(parts, axis=axis), entries[0].dtype)
    values = ctx.values()
    if len(values) == 1:
        return ctx.op("identity", values[0])
    return ctx.op("concat", *values, axis=axis % values[0].type.rank)


def _split_sizes(ctx: NodeContext, dim: Dim, sizes: list[int] | None, parts: int, uneven: bool) -> list[int]:
    if sizes is not None:
        return sizes
    if not isinstance(dim, int):
        raise ctx.fail(f"splitting symbolic dim {dim} into equal parts is not supported; give the sizes")
    if uneven:
        # opset 18 num_outputs: ceil-sized chunks, the last one smaller
        chunk = -(-dim // parts)
        return [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
    if dim % parts:
        raise ctx.fail(f"dim {dim} does not split into {parts} equal parts")
    return [dim // parts] * parts


def _split(ctx: NodeContext, sizes: list[int] | None, parts: int, uneven: bool = False):
    x = ctx.input(0)
    shape = _shape_of(x)
    axis = ctx.attr("axis", 0) % len(shape)
    sizes = _split_sizes(ctx, shape[axis], sizes, parts, uneven)
    if isinstance(x, Known):
        cuts = np.cumsum(sizes)[:-1]
        return [Known(p, x.dtype) for p in np.split(x.data, cuts, axis=axis)]
    return ctx.ops("split", [ctx.value(0)], axis=axis, sizes=sizes)


@converter("Split", since=2)
def split_attrs(ctx: NodeContext):
    sizes = ctx.attr("split", None)
    return _split(ctx, None if sizes is None else list(sizes), len(ctx.node.output))


@converter("Split", since=13)
def split(ctx: NodeContext):
    sizes = ctx.known_ints(1, "split") if ctx.has_input(1) else None
    return _split(ctx, sizes, len(ctx.node.output))


@converter("Split", since=18)
def split_num_outputs(ctx: NodeContext):
    sizes = ctx.known_ints(1, "split") if ctx.has_input(1) else None
    parts = ctx.attr("num_outputs", len(ctx.node.output))
    return _split(ctx, sizes, parts, uneven=ctx.has_attr("num_outputs"))


# ---- slice -------------------------------------------------------------------------------------


def _slice(ctx: NodeContext, starts: list[Dim], ends: list[Dim], axes: list[int] | None,
           steps: list[int] | None):
    x = ctx.input(0)
    rank = len(_shape_of(x))
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if isinstance(x, Known) and all(isinstance(d, int) for d in starts + ends):
        index = [slice(None)] * rank
        for axis, start, end, step in zip(axes, starts, ends, steps):
            index[axis] = slice(start, end, step)  # Python clamps exactly as ONNX Slice does
        return Known(x.data[tuple(index)], x.dtype)
    return ctx.op("slice", ctx.value(0), starts=starts, ends=ends, axes=axes, steps=steps)


@converter("Slice", since=1)
def slice_attrs(ctx: NodeContext):
    axes = ctx.attr("axes", None)
    return _slice(ctx, list(ctx.attr("starts")), list(ctx.attr("ends")), None if axes is None else list(axes), None)


@converter("Slice", since=10)
def slice_(ctx: NodeContext):
    axes = ctx.known_ints(3, "axes") if ctx.has_input(3) else None
    steps = ctx.known_ints(4, "steps") if ctx.has_input(4) else None
    return _slice(ctx, ctx.known_dims(1, "starts"), ctx.known_dims(2, "ends"), axes, steps)


# ---- gather ------------------------------------------------------------------------------------------


@converter("Gather", since=1)
def gather(ctx: NodeContext):
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(data, Known) and isinstance(indices, Known) and not indices.symbolic and _small(data, indices):
        return Known(np.take(data.data, indices.data, axis=axis), data.dtype)
    x = ctx.value(0)
    return ctx.op("gather", x, ctx.value(1), axis=axis % x.type.rank)


@converter("GatherElements", since=11)
def gather_elements(ctx: NodeContext):
    x = ctx.value(0)
    return ctx.op("gather_elements", x, ctx.value(1), axis=ctx.attr("axis", 0) % x.type.rank)


# ---- expand, tile ------------------------------------------------------------------------------------


@converter("Expand", since=8)
def expand(ctx: NodeContext):
    x = ctx.input(0)
    shape = ctx.known_dims(1, "shape")
    if isinstance(x, Known) and all(isinstance(d, int) for d in shape):
        out_shape = np.broadcast_shapes(x.shape, tuple(shape))
        if int(np.prod(out_shape, dtype=np.int64)) <= FOLD_LIMIT:
            return Known(np.broadcast_to(x.data, out_shape).copy(), x.dtype)
    return ctx.op("expand", ctx.value(0), shape=shape)


@converter("Tile", since=6)
def tile(ctx: NodeContext):
    x_entry = ctx.input(0)
    repeats = ctx.known_ints(1, "repeats")
    if isinstance(x_entry, Known) and x_entry.data.size * int(np.prod(repeats)) <= FOLD_LIMIT:
        return Known(np.tile(x_entry.data, repeats), x_entry.dtype)
    x = ctx.value(0)
    if all(r == 1 for r in repeats):
        return ctx.op("identity", x)
    shape = list(x.type.shape)
    # [d0, d1, ...] -> [1, d0, 1, d1, ...] -> expand to [r0, d0, r1, d1, ...] -> [r0*d0, r1*d1, ...]
    interleaved = ctx.op("reshape", x, shape=[v for d in shape for v in (1, d)])
    grown = ctx.op("expand", interleaved, shape=[v for r, d in zip(repeats, shape) for v in (r, d)])
    return ctx.op("reshape", grown, shape=[r * d for r, d in zip(repeats, shape)])


# ---- pad ---------------------------------------------------------------------------------------------


_TO_END = 2**63 - 1  # ONNX's "to the end of the axis"


def _border(ctx: NodeContext, x: Value, axis: int, count: int, mode: str, before: bool) -> Value:
    """The ``count`` elements an edge / reflect / wrap pad puts before (or after) ``x`` on ``axis``."""
    if mode == "edge":  # the first (last) element, repeated
        start, end, step = (0, 1, 1) if before else (-1, _TO_END, 1)
    elif mode == "reflect":  # the elements next to the border, mirrored, the border itself left out
        start, end, step = (count, 0, -1) if before else (-2, -count - 2, -1)
    else:  # wrap: the elements from the other end
        start, end, step = (-count, _TO_END, 1) if before else (0, count, 1)
    part = ctx.op("slice", x, starts=[start], ends=[end], axes=[axis], steps=[step])
    if mode != "edge":
        return part
    target = list(part.type.shape)
    target[axis] = count
    return ctx.op("expand", part, shape=target)


def _pad_by_copies(ctx: NodeContext, x: Value, pads: list[int], mode: str) -> Value:
    """edge / reflect / wrap padding: slices of ``x`` concatenated around it, axis by axis."""
    rank = x.type.rank
    begins, ends = pads[:rank], pads[rank:]
    if any(p < 0 for p in pads):  # negative pads crop, before anything is copied
        x = ctx.op("slice", x, starts=[max(0, -b) for b in begins],
                   ends=[-e if e < 0 else _TO_END for e in ends], axes=list(range(rank)))
    for axis, (b, e) in enumerate(zip(begins, ends)):
        parts = ([_border(ctx, x, axis, b, mode, True)] if b > 0 else []) + [x]
        parts += [_border(ctx, x, axis, e, mode, False)] if e > 0 else []
        if len(parts) > 1:
            x = ctx.op("concat", *parts, axis=axis)
    return x


def _pad(ctx: NodeContext, pads: list[int], value: float, mode: str, axes: list[int] | None):
    x = ctx.value(0)
    rank = x.type.rank
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise ctx.fail(f"unknown pad mode {mode!r}")
    if axes is not None:
        if len(pads) != 2 * len(axes):
            raise ctx.fail(f"{len(pads)} pads for {len(axes)} axes")
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a % rank], full[a % rank + rank] = pads[i], pads[i + len(axes)]
        pads = full
    if mode != "constant":
        return _pad_by_copies(ctx, x, pads, mode)
    return ctx.op("pad", x, pads=pads, value=float(value))


@converter("Pad", since=2)
def pad_attrs(ctx: NodeContext):
    return _pad(ctx, list(ctx.attr("pads")), ctx.attr("value", 0.0), ctx.attr("mode", "constant"), None)


@converter("Pad", since=11)
def pad(ctx: NodeContext):
    value = ctx.known_scalar(2, "constant_value").item() if ctx.has_input(2) else 0.0
    axes = ctx.known_ints(3, "axes") if ctx.has_input(3) else None
    return _pad(ctx, ctx.known_ints(1, "pads"), value, ctx.attr("mode", "constant"), axes)


# ---- trilu -------------------------------------------------------------------------------------------


@converter("Trilu", since=14)
def trilu(ctx: NodeContext):
    x = ctx.value(0)
    k = int(ctx.known_scalar(1, "k")) if ctx.has_input(1) else 0
    rows, cols = x.type.shape[-2], x.type.shape[-1]
    row = ctx.op("unsqueeze", ctx.op("iota", shape=[rows], dtype=i64), axes=[1])  # [N, 1]
    col = ctx.op("iota", shape=[cols], dtype=i64)  # [M]
    diagonal = ctx.op("sub", col, row)  # [N, M]: j - i
    k_value = ctx.scalar(k, i64)
    keep = ctx.op("ge" if ctx.attr("upper", 1) else "le", diagonal, k_value)
    return ctx.op("where", keep, x, ctx.scalar(0, x.type.dtype))




# ---- gather_nd, one_hot, depth_to_space, space_to_depth -------------------------------------------


@converter("GatherND", since=11)
def gather_nd(ctx: NodeContext):
    data, indices = ctx.value(0), ctx.value(1)
    if ctx.attr("batch_dims", 0):
        raise ctx.fail("batch_dims > 0 is not supported")
    depth = indices.type.shape[-1]
    if not isinstance(depth, int):
        raise ctx.fail(f"the index depth (last dim of indices) must be static, got {depth}")
    # data[i0, i1, ...] with one index tensor per leading data axis: qjc's advanced indexing
    last = indices.type.rank - 1
    parts = ctx.ops("split", [indices], axis=last, sizes=[1] * depth) if depth > 1 else [indices]
    columns = [ctx.op("squeeze", p, axes=[last]) for p in parts]
    return ctx.graph.add_node("index", [data, *columns], {"axis": 0})[0]


@converter("OneHot", since=9)
def one_hot(ctx: NodeContext):
    indices, values = ctx.value(0), ctx.value(2)
    depth = int(ctx.known_scalar(1, "depth"))
    out_rank = indices.type.rank + 1
    axis = ctx.attr("axis", -1) % out_rank
    index = ctx.cast(indices, i64)  # float indices are allowed and truncated
    wrapped = ctx.op("where", ctx.op("lt", index, ctx.scalar(0, i64)),
                     ctx.op("add", index, ctx.scalar(depth, i64)), index)
    along = [1] * out_rank
    along[axis] = depth
    positions = ctx.op("reshape", ctx.op("iota", shape=[depth], dtype=i64), shape=along)
    hot = ctx.op("eq", ctx.op("unsqueeze", wrapped, axes=[axis]), positions)
    off, on = (ctx.op("reshape", ctx.op("slice", values, starts=[i], ends=[i + 1]), shape=[]) for i in (0, 1))
    return ctx.op("where", hot, on, off)


def _static_dims(ctx: NodeContext, x: Value, what: str) -> list[int]:
    dims = list(x.type.shape)
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ctx.fail(f"{what} needs static channel and spatial dims, got {x.type}")
    return dims


@converter("DepthToSpace", since=1)
def depth_to_space(ctx: NodeContext):
    x = ctx.value(0)
    b = ctx.attr("blocksize")
    n, c, h, w = _static_dims(ctx, x, "DepthToSpace")
    if ctx.attr("mode", "DCR") == "DCR":  # channels are (block row, block col, depth)
        split, perm = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    else:  # CRD: (depth, block row, block col)
        split, perm = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    moved = ctx.op("transpose", ctx.op("reshape", x, shape=split), perm=perm)
    return ctx.op("reshape", moved, shape=[n, c // (b * b), h * b, w * b])


@converter("SpaceToDepth", since=1)
def space_to_depth(ctx: NodeContext):
    x = ctx.value(0)
    b = ctx.attr("blocksize")
    n, c, h, w = _static_dims(ctx, x, "SpaceToDepth")
    blocks = ctx.op("reshape", x, shape=[n, c, h // b, b, w // b, b])
    # DCR: output channels are (block row, block col, depth); CRD (opset 28): (depth, row, col)
    perm = [0, 3, 5, 1, 2, 4] if ctx.attr("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
    moved = ctx.op("transpose", blocks, perm=perm)
    return ctx.op("reshape", moved, shape=[n, c * b * b, h // b, w // b])
