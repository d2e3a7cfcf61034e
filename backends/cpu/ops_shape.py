"""Shape and data-movement ops.

Pure views (reshape, squeeze, unsqueeze, flatten) become Relax reshapes, which the VM executes
without copying. Ops whose index arithmetic carries qjc semantics (slice with ONNX clamping,
gather with negative indices, index_copy for KV caches) are TE computations written here.
Output shapes always come from the node's inferred type, so symbolic dims stay consistent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qjc.backends.cpu.converters import converts
from qjc.backends.cpu.te_util import as_expr, broadcast_load, const, int64
from qjc.backends.cpu.translate import TVM_DTYPES
from qjc.backends.cpu.tvm_env import import_tvm
from qjc.ir.dims import SymExpr
from qjc.ir.ops.shape import slice_start

if TYPE_CHECKING:
    from qjc.backends.cpu.translate import Translator
    from qjc.ir.graph import Node

tvm = import_tvm()
te = tvm.te
tirx = tvm.tirx
relax = tvm.relax


@converts("reshape", "squeeze", "unsqueeze", "flatten")
def _convert_reshape(t: Translator, node: Node) -> list[Any]:
    return [t.reshape(t.arg(node.inputs[0]), t.shape(node.output))]


@converts("identity")
def _convert_identity(t: Translator, node: Node) -> list[Any]:
    return [t.arg(node.inputs[0])]


@converts("transpose")
def _convert_transpose(t: Translator, node: Node) -> list[Any]:
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"]
    perm = list(reversed(range(rank))) if perm is None else list(perm)
    return [t.emit(relax.op.permute_dims(t.arg(node.inputs[0]), perm))]


@converts("concat")
def _convert_concat(t: Translator, node: Node) -> list[Any]:
    rank = node.inputs[0].type.rank
    parts = [t.arg(v) for v in node.inputs]
    if len(parts) == 1:
        return [parts[0]]
    return [t.emit(relax.op.concat(parts, axis=node.attrs["axis"] % rank))]


@converts("split")
def _convert_split(t: Translator, node: Node) -> list[Any]:
    x = t.arg(node.inputs[0])
    axis = node.attrs["axis"] % node.inputs[0].type.rank
    sizes = list(node.attrs["sizes"])
    if len(sizes) == 1:
        return [x]
    bounds, total = [], 0
    for s in sizes[:-1]:
        total += s
        bounds.append(total)
    parts = t.emit(relax.op.split(x, bounds, axis=axis))
    return [t.emit(relax.TupleGetItem(parts, i)) for i in range(len(sizes))]


@converts("expand")
def _convert_expand(t: Translator, node: Node) -> list[Any]:
    return [t.emit(relax.op.broadcast_to(t.arg(node.inputs[0]), t.shape(node.output)))]


# ---- slice -------------------------------------------------------------------------------------------


def _slice_start(t: Translator, dim: int | SymExpr, start: int | SymExpr, step: int) -> Any:
    """The first element a slice reads (qjc.ir.ops.shape.slice_start) as a TVM expression."""
    first = slice_start(dim, start, step)
    return int64(first) if isinstance(first, int) else t.dim(first)


@converts("slice")
def _convert_slice(t: Translator, node: Node) -> list[Any]:
    from qjc.ir.ops.shape import _slice_params

    src = node.inputs[0]
    rank = src.type.rank
    starts = [int64(0)] * rank
    steps = [1] * rank
    for axis, start, _end, step in _slice_params(rank, node.attrs):
        starts[axis] = _slice_start(t, src.type.shape[axis], start, step)
        steps[axis] = step
    out_shape = t.shape(node.output)

    def compute(x: Any) -> Any:
        return te.compute(out_shape, lambda *i: x(*[s + j * int64(st) for s, j, st in zip(starts, i, steps)]),
                          name="slice")

    return [t.emit_te(compute, t.arg(src), name="slice")]


# ---- gathers -------------------------------------------------------------------------------------------


def _wrapped(index: Any, size: Any) -> Any:
    """A possibly negative index into a dim of ``size``, wrapped like numpy and clamped into range
    (an out-of-range index is an error in the reference; here it must at least not read wild memory)."""
    i = as_expr(index).astype("int64")
    i = tirx.Select(i < int64(0), i + size, i)
    return tirx.max(tirx.min(i, size - int64(1)), int64(0))


@converts("gather")
def _convert_gather(t: Translator, node: Node) -> list[Any]:
    data_v, idx_v = node.inputs
    axis = node.attrs["axis"] % data_v.type.rank
    k = idx_v.type.rank
    out_shape = t.shape(node.output)

    def compute(data: Any, indices: Any) -> Any:
        def body(*i: Any) -> Any:
            picked = _wrapped(indices(*i[axis:axis + k]) if k else indices(), data.shape[axis])
            return data(*i[:axis], picked, *i[axis + k:])

        return te.compute(out_shape, body, name="gather")

    return [t.emit_te(compute, t.arg(data_v), t.arg(idx_v), name="gather")]


@converts("gather_elements")
def _convert_gather_elements(t: Translator, node: Node) -> list[Any]:
    data_v, idx_v = node.inputs
    axis = node.attrs["axis"] % data_v.type.rank
    out_shape = t.shape(node.output)

    def compute(data: Any, indices: Any) -> Any:
        def body(*i: Any) -> Any:
            picked = _wrapped(indices(*i), data.shape[axis])
            return data(*i[:axis], picked, *i[axis + 1:])

        return te.compute(out_shape, body, name="gather_elements")

    return [t.emit_te(compute, t.arg(data_v), t.arg(idx_v), name="gather_elements")]


@converts("index")
def _convert_index(t: Translator, node: Node) -> list[Any]:
    data_v, idx_vs = node.inputs[0], node.inputs[1:]
    axis = node.attrs["axis"]
    picked_rank = node.output.type.rank - (data_v.type.rank - len(idx_vs))
    out_shape = t.shape(node.output)

    def compute(data: Any, *indices: Any) -> Any:
        def body(*i: Any) -> Any:
            b = i[axis:axis + picked_rank]
            picks = [_wrapped(broadcast_load(ix, b), data.shape[axis + n]) for n, ix in enumerate(indices)]
            return data(*i[:axis], *picks, *i[axis + picked_rank:])

        return te.compute(out_shape, body, name="index")

    return [t.emit_te(compute, t.arg(data_v), *(t.arg(v) for v in idx_vs), name="index")]


def _index_copy_inplace_source(rank: int, axis: int, x_shape: tuple, dtype: str, name: str) -> str:
    """TVMScript writing src's slices into x at the indexed positions of ``axis``, in place."""
    dims = [str(d) if isinstance(d, int) else f"d{i}" for i, d in enumerate(x_shape)]
    decls = [f"    d{i} = T.int64()" for i, d in enumerate(x_shape) if not isinstance(d, int)]
    src_dims = list(dims)
    src_dims[axis] = "n"
    loops = [f"i{k}" for k in range(rank)]
    src_index = ", ".join(loops)
    dst = list(loops)
    dst[axis] = f"T.max(T.min(T.Select(I[i{axis}] < 0, I[i{axis}] + {dims[axis]}, I[i{axis}]), {dims[axis]} - 1), 0)"
    # the indexed axis runs serially and in order, so the last duplicate index wins as in numpy
    order = [axis] + [k for k in range(rank) if k != axis]
    body = []
    for depth, k in enumerate(order):
        extent = src_dims[k]
        body.append("    " * (depth + 1) + f"for i{k} in range(T.int64({extent})):")
    body.append("    " * (rank + 1) + f"X[{', '.join(dst)}] = S[{src_index}]")
    return "\n".join([
        "@T.prim_func(s_tir=False)",
        f"def {name}(x_h: T.handle, i_h: T.handle, s_h: T.handle):",
        '    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})',
        "    n = T.int64()",
        *decls,
        f'    X = T.match_buffer(x_h, ({", ".join(dims)},), "{dtype}")',
        '    I = T.match_buffer(i_h, (n,), "int64")',
        f'    S = T.match_buffer(s_h, ({", ".join(src_dims)},), "{dtype}")',
        *body,
    ]) + "\n"


@converts("index_copy")
def _convert_index_copy(t: Translator, node: Node) -> list[Any]:
    x_v, idx_v, src_v = node.inputs
    axis = node.attrs["axis"] % x_v.type.rank
    out_shape = t.shape(node.output)
    if t.only_use_of_state(x_v, node) and idx_v.type.dtype.name == "i64":
        # a KV-cache write: store the new rows into the cache buffer instead of copying the cache
        from qjc.backends.cpu.tvm_env import parse_kernel

        dtype = t.dtype(x_v)
        key = ("index_copy_inplace", x_v.type.rank, axis, tuple(x_v.type.shape), dtype)

        def make(name: str) -> Any:
            src = _index_copy_inplace_source(x_v.type.rank, axis, tuple(x_v.type.shape), dtype, name)
            return parse_kernel(src)

        gvar = t.kernel(key, make)
        args = relax.Tuple([t.arg(x_v), t.arg(idx_v), t.arg(src_v)])
        return [t.emit(relax.call_tir_inplace(gvar, args, [0], relax.TensorType(out_shape, dtype)))]

    def compute(x: Any, index: Any, src: Any) -> Any:
        size = x.shape[axis]
        j = te.reduce_axis((int64(0), index.shape[0]), name="j")
        # for every position p of the axis, the last j with index[j] == p (-1: none), as numpy's
        # assignment lets the last duplicate win; this is a [dim]-sized table, not a copy
        source = te.compute(
            (size,),
            lambda p: te.max(tirx.Select(tirx.EQ(_wrapped(index(j), size), p), j, int64(-1)), axis=j),
            name="index_copy_source")

        def body(*i: Any) -> Any:
            s = source(i[axis])
            from_src = src(*i[:axis], tirx.max(s, int64(0)), *i[axis + 1:])
            return tirx.Select(s >= int64(0), from_src, x(*i))

        return te.compute(out_shape, body, name="index_copy")

    return [t.emit_te(compute, t.arg(x_v), t.arg(idx_v), t.arg(src_v), name="index_copy")]


# ---- pad, full, iota ---------------------------------------------------------------------------------


@converts("pad")
def _convert_pad(t: Translator, node: Node) -> list[Any]:
    x_v = node.inputs[0]
    rank = x_v.type.rank
    pads = node.attrs["pads"]
    begins = [int64(p) for p in pads[:rank]]
    out_shape, dtype = t.shape(node.output), t.dtype(node.output)
    fill = const(node.attrs["value"], dtype)

    def compute(x: Any) -> Any:
        def body(*i: Any) -> Any:
            src = [j - b for j, b in zip(i, begins)]
            inside = tirx.all(*[tirx.all(s >= int64(0), s < d) for s, d in zip(src, x.shape)]) if rank else True
            safe = [tirx.max(tirx.min(s, d - int64(1)), int64(0)) for s, d in zip(src, x.shape)]
            return tirx.Select(inside, as_expr(x(*safe)), fill)

        return te.compute(out_shape, body, name="pad")

    return [t.emit_te(compute, t.arg(x_v), name="pad")]


@converts("full")
def _convert_full(t: Translator, node: Node) -> list[Any]:
    dtype = t.dtype(node.output)
    fill = relax.const(_np_scalar(node.attrs["value"], dtype), dtype)
    return [t.emit(relax.op.full(relax.ShapeExpr(t.shape(node.output)), fill, dtype))]


@converts("iota")
def _convert_iota(t: Translator, node: Node) -> list[Any]:
    dtype = TVM_DTYPES[node.attrs["dtype"].name]
    start = int(node.attrs["start"])
    out_shape = t.shape(node.output)

    def compute() -> Any:
        return te.compute(out_shape, lambda i: (i + int64(start)).astype(dtype), name="iota")

    return [t.emit_te(compute, name="iota")]


def _np_scalar(value: float, dtype: str) -> Any:
    import numpy as np

    if dtype == "bool":
        return np.bool_(value != 0)
    if dtype.startswith(("int", "uint")):
        return np.array(int(value)).astype(dtype)
    return np.array(value).astype(dtype)
