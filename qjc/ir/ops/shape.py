"""Shape ops: reshape, transpose, slice, concat, split, expand, squeeze, unsqueeze, gather,
gather_elements, flatten, pad, and the generators full and iota.

They move data without arithmetic, so none of them widens: bf16 and integer data pass through
bit-exact. Type inference keeps symbolic dims wherever the result is a polynomial in them and
raises ValueError where it would depend on a symbol's value.

Attributes of kind ``dims`` may hold symbolic entries. The interpreter substitutes the bound symbol
values before calling a reference; a reference that still sees a symbol resolves it from the data
where that is unambiguous and otherwise says so.
"""

from __future__ import annotations

import numpy as np

from qjc.ir.dims import Dim, SymExpr, product
from qjc.ir.dtypes import DType, boolean, f32, i64
from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import (
    broadcast_dim,
    dims_agree,
    exact_div,
    norm_axes,
    norm_axis,
    require_plain,
    same_dtype,
)
from qjc.ir.types import TensorType

# ONNX and torch exporters write "to the end" as INT32_MAX, INT64_MAX or 2**62; any end at least
# INT32_MAX is read that way on a symbolic dim (no tensor dim reaches it).
_TO_END = 2**31 - 1


def _plain(ts: list[TensorType]) -> None:
    for t in ts:
        require_plain(t)


def _require_rank(t: TensorType, what: str) -> None:
    if t.rank == 0:
        raise ValueError(f"{what} needs an input of rank >= 1, got a scalar")


def _unresolved(dims, op: str) -> ValueError:
    syms = sorted({s for d in dims if isinstance(d, SymExpr) for s in d.symbols})
    return ValueError(f"{op}: target shape ({', '.join(map(str, dims))}) names symbols {', '.join(syms)} "
                      "whose values the reference does not know here; run the graph through "
                      "qjc.ir.interpreter.run, which binds them from the inputs")


def _value_as(value: float, dtype: np.dtype) -> np.ndarray:
    # bool fill means "nonzero"; ints truncate toward zero, as a cast does
    if dtype == np.bool_:
        return np.asarray(value != 0)
    if dtype.kind in "iu":
        return np.asarray(int(value)).astype(dtype)
    return np.asarray(value).astype(dtype)


# ---- reshape -------------------------------------------------------------------------------------


def _numel_differs(a: Dim, b: Dim) -> bool:
    """True when two element counts provably differ (for any non-empty tensor)."""
    diff = a - b
    if isinstance(diff, int):
        return diff != 0
    if isinstance(a, SymExpr) and isinstance(b, SymExpr):
        # proportional polynomials with a ratio other than 1 (64*b*s vs 65*b*s) differ unless empty
        ca, cb = a.terms[0][1], b.terms[0][1]
        return a * cb - b * ca == 0 and ca != cb
    return False  # a symbol against a static count: it may match at run time


def _reshape_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    t = ts[0]
    _plain(ts)
    target = list(attrs["shape"])
    holes = [i for i, d in enumerate(target) if d == -1]
    if len(holes) > 1:
        raise ValueError(f"shape {tuple(map(str, target))} has more than one -1")
    bad = [d for d in target if isinstance(d, int) and d < -1]
    if bad:
        raise ValueError(f"shape has negative dim {bad[0]}")
    if holes:
        known = product(d for d in target if not (isinstance(d, int) and d == -1))
        if known == 0:
            raise ValueError("cannot infer the -1 of a shape whose other dims hold 0 elements")
        inferred = exact_div(t.numel, known)
        if inferred is None:
            raise ValueError(f"cannot infer the -1: {t.numel} elements are not a known multiple of {known}")
        target[holes[0]] = inferred
    elif _numel_differs(product(target), t.numel):
        shown = ", ".join(map(str, target))
        raise ValueError(f"cannot reshape {t.numel} elements into ({shown}), which holds {product(target)}")
    return [t.with_shape(target)]


def _reshape(x: np.ndarray, shape) -> np.ndarray:
    unknown = [i for i, d in enumerate(shape) if isinstance(d, SymExpr) or d == -1]
    if any(isinstance(d, SymExpr) for d in shape):
        # without symbol bindings one unknown entry can still be solved from the element count
        if len(unknown) > 1:
            raise _unresolved(shape, "reshape")
        shape = tuple(-1 if isinstance(d, SymExpr) else d for d in shape)
    return np.reshape(x, tuple(shape)).copy()


register(OpDef("reshape", "shape", (1, 1), _reshape_infer, _reshape, attrs={"shape": Attr("dims")},
               widen=False,
               doc="same elements in a new shape; entries may be symbolic, at most one -1 is inferred "
                   "(0 is a zero-size dim, not ONNX's 'copy')"))

# ---- transpose -----------------------------------------------------------------------------------


def _perm(perm: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    if perm is None:
        return tuple(reversed(range(rank)))
    if sorted(perm) != list(range(rank)):
        raise ValueError(f"perm {perm} is not a permutation of 0..{rank - 1}")
    return perm


def _transpose_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    return [t.with_shape([t.shape[p] for p in _perm(attrs["perm"], t.rank)])]


def _transpose(x: np.ndarray, perm=None) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, perm))


register(OpDef("transpose", "shape", (1, 1), _transpose_infer, _transpose,
               attrs={"perm": Attr("ints", None, optional=True)}, widen=False,
               doc="permute axes: output axis i is input axis perm[i]; no perm reverses them"))

# ---- slice ---------------------------------------------------------------------------------------


def slice_start(dim: Dim, start: Dim, step: int) -> Dim:
    """The first index a slice reads (ONNX / Python semantics: a negative start counts from the end,
    then clamped into the dim): an int where dim and start are static, else an expression of the
    symbols, for the forms _slice_len accepts. Backends turn it into their own index expressions."""
    if not isinstance(start, int):
        return start
    if isinstance(dim, int):
        return slice(start, None, step).indices(dim)[0]
    if step > 0:
        if start <= -_TO_END:
            return 0
        return dim + start if start < 0 else start
    if start == -1 or start >= _TO_END:  # negative steps from the end of a symbolic dim
        return dim - 1
    return dim + start if start < 0 else start


def _slice_len(dim: Dim, start: Dim, end: Dim, step: int) -> Dim:
    if isinstance(start, SymExpr) or isinstance(end, SymExpr):
        # bounds given by symbols (x[:, :seq] of a longer buffer) count from the front and are
        # taken to lie inside the dim, which the symbol's range guarantees for exported models
        if step != 1:
            raise ValueError(f"slice with symbolic bounds {start}:{end} needs step 1")
        return end - start
    if isinstance(dim, int):
        return len(range(*slice(start, end, step).indices(dim)))
    if step > 0 and start <= -_TO_END:
        start = 0  # "from the beginning"
    to_end = end >= _TO_END
    if step == 1:
        if start >= 0 and to_end:
            return dim - start
        if start < 0 and to_end:
            return -start  # the last -start elements (the dim must hold that many)
        if start < 0 and -_TO_END < end < 0:
            return max(end - start, 0)
        if start >= 0 and -_TO_END < end < 0:
            return dim + end - start
        if 0 <= start <= end:
            # a finite end is taken to lie inside the dim, as a negative start is (torch's select
            # and x[:, :1] lower to this); a slice meant to clamp a symbolic dim would be wrong here
            return end - start
        if start >= 0 and 0 <= end <= start:
            return 0
    if step == -1 and (start == -1 or start >= _TO_END) and end <= -_TO_END:
        return dim  # the whole dim reversed
    end_text = "end" if to_end else str(end)
    raise ValueError(f"slice {start}:{end_text}:{step} of symbolic dim {dim} has a length that depends on "
                     "its value; only step 1 with a start and an end counted from the same side, or "
                     "an open end, (or a full reversal) is supported there")


def _slice_params(rank: int, attrs) -> list[tuple[int, int, int, int]]:
    starts, ends = attrs["starts"], attrs["ends"]
    axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(starts)))
    steps = attrs["steps"] if attrs["steps"] is not None else (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(f"starts, ends, axes and steps differ in length "
                         f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})")
    if 0 in steps:
        raise ValueError("slice step 0")
    norm = [norm_axis(a, rank) for a in axes]
    if len(set(norm)) != len(norm):
        raise ValueError(f"repeated axis in {axes}")
    return list(zip(norm, starts, ends, steps, strict=True))


def _slice_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    _require_rank(t, "slice")
    shape = list(t.shape)
    for axis, start, end, step in _slice_params(t.rank, attrs):
        shape[axis] = _slice_len(shape[axis], start, end, step)
    return [t.with_shape(shape)]


def _slice(x: np.ndarray, starts, ends, axes=None, steps=None) -> np.ndarray:
    index = [slice(None)] * x.ndim
    attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    for axis, start, end, step in _slice_params(x.ndim, attrs):
        index[axis] = slice(start, end, step)  # Python slices clamp exactly as ONNX Slice does
    return x[tuple(index)].copy()


register(OpDef("slice", "shape", (1, 1), _slice_infer, _slice, widen=False,
               attrs={"starts": Attr("dims"), "ends": Attr("dims"), "axes": Attr("ints", None, optional=True),
                      "steps": Attr("ints", None, optional=True)},
               doc="ONNX Slice: negative indices count from the end, out-of-range ends clamp "
                   "(a huge end means 'to the end'); axes default to 0.., steps to 1"))

# ---- concat, split -------------------------------------------------------------------------------


def _concat_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    same_dtype(ts)
    rank = ts[0].rank
    if any(t.rank != rank for t in ts):
        raise ValueError(f"inputs differ in rank ({', '.join(str(t.rank) for t in ts)})")
    _require_rank(ts[0], "concat")
    axis = norm_axis(attrs["axis"], rank)
    shape = list(ts[0].shape)
    for i, t in enumerate(ts[1:], 1):
        for d in range(rank):
            if d == axis:
                shape[d] = shape[d] + t.shape[d]
                continue
            try:
                shape[d] = dims_agree(shape[d], t.shape[d])
            except ValueError:
                raise ValueError(f"input {i} has dim {t.shape[d]} on axis {d} where input 0 has "
                                 f"{ts[0].shape[d]}; only axis {axis} may differ") from None
    return [ts[0].with_shape(shape)]


def _concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(xs, axis=axis)


register(OpDef("concat", "shape", (1, -1), _concat_infer, _concat, attrs={"axis": Attr("int")}, widen=False,
               doc="join inputs of one dtype along `axis`; symbolic sizes add up"))


def _split_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    _require_rank(t, "split")
    axis = norm_axis(attrs["axis"], t.rank)
    sizes = attrs["sizes"]
    if not sizes:
        raise ValueError("split needs at least one size")
    if any(s < 0 for s in sizes):
        raise ValueError(f"negative size in {sizes}")
    dim = t.shape[axis]
    # a symbolic dim must equal the sum at run time; only a static one can be checked here
    if isinstance(dim, int) and sum(sizes) != dim:
        raise ValueError(f"sizes {sizes} add up to {sum(sizes)}, not to dim {dim} of axis {axis}")
    out = []
    for s in sizes:
        shape = list(t.shape)
        shape[axis] = s
        out.append(t.with_shape(shape))
    return out


def _split(x: np.ndarray, axis: int, sizes) -> tuple[np.ndarray, ...]:
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"sizes {sizes} add up to {sum(sizes)}, but axis {axis} has {x.shape[axis]}")
    parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    return tuple(p.copy() for p in parts)


register(OpDef("split", "shape", (1, 1), _split_infer, _split,
               attrs={"axis": Attr("int"), "sizes": Attr("ints")}, widen=False,
               doc="cut along `axis` into pieces of `sizes` (one output each), which add up to the dim"))

# ---- expand --------------------------------------------------------------------------------------


def _expand_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    target = attrs["shape"]
    rank = max(t.rank, len(target))
    src = (1,) * (rank - t.rank) + tuple(t.shape)
    tgt = (1,) * (rank - len(target)) + tuple(target)
    out: list[Dim] = []
    for i, (s, d) in enumerate(zip(src, tgt, strict=True)):
        if isinstance(d, int) and d == -1:
            if i < rank - t.rank:
                raise ValueError(f"-1 at position {i} has no input dim to keep")
            out.append(s)
        elif isinstance(d, int) and d < 0:
            raise ValueError(f"negative dim {d} in shape")
        else:
            out.append(broadcast_dim(s, d))
    return [t.with_shape(out)]


def _expand(x: np.ndarray, shape) -> np.ndarray:
    rank = max(x.ndim, len(shape))
    src = (1,) * (rank - x.ndim) + x.shape
    tgt = (1,) * (rank - len(shape)) + tuple(shape)
    concrete = []
    for s, d in zip(src, tgt, strict=True):
        if isinstance(d, SymExpr):
            if s == 1:
                raise _unresolved(shape, "expand")
            d = s  # broadcasting makes the symbol equal the data's dim
        concrete.append(s if d == -1 else d)
    out_shape = np.broadcast_shapes(src, tuple(concrete))
    return np.broadcast_to(x.reshape(src), out_shape).copy()


register(OpDef("expand", "shape", (1, 1), _expand_infer, _expand, attrs={"shape": Attr("dims")}, widen=False,
               doc="broadcast to `shape` (ONNX Expand: two-way broadcasting, either rank may be smaller; "
                   "-1 keeps the input dim)"))

# ---- squeeze, unsqueeze, flatten -----------------------------------------------------------------


def _squeeze_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    if attrs["axes"] is None:
        if not t.is_static:
            raise ValueError("squeeze without axes on a symbolic shape is ambiguous (a symbol may be 1); "
                             "name the axes")
        return [t.with_shape([d for d in t.shape if d != 1])]
    axes = norm_axes(attrs["axes"], t.rank) if t.rank else ()
    for a in axes:
        if isinstance(t.shape[a], int) and t.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {t.shape[a]}")
    return [t.with_shape([d for i, d in enumerate(t.shape) if i not in axes])]


def _squeeze(x: np.ndarray, axes=None) -> np.ndarray:
    if axes is not None:
        axes = tuple(a % x.ndim for a in axes) if x.ndim else ()
    return np.squeeze(x, axis=axes).copy()


register(OpDef("squeeze", "shape", (1, 1), _squeeze_infer, _squeeze,
               attrs={"axes": Attr("ints", None, optional=True)}, widen=False,
               doc="drop size-1 axes: the named ones (each must be 1), or all of them on a static shape"))


def _unsqueeze_axes(axes: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return norm_axes(axes, rank + len(axes))


def _unsqueeze_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    axes = _unsqueeze_axes(attrs["axes"], t.rank)
    rest = iter(t.shape)
    return [t.with_shape([1 if i in axes else next(rest) for i in range(t.rank + len(axes))])]


def _unsqueeze(x: np.ndarray, axes) -> np.ndarray:
    return np.expand_dims(x, _unsqueeze_axes(axes, x.ndim)).copy()


register(OpDef("unsqueeze", "shape", (1, 1), _unsqueeze_infer, _unsqueeze, attrs={"axes": Attr("ints")},
               widen=False, doc="insert size-1 axes at `axes`, positions in the output"))


def _flatten_axis(axis: int, rank: int) -> int:
    if not -rank <= axis <= rank:
        raise ValueError(f"axis {axis} is out of range for flatten of rank {rank}")
    return axis + rank if axis < 0 else axis


def _flatten_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    axis = _flatten_axis(attrs["axis"], t.rank)
    return [t.with_shape([product(t.shape[:axis]), product(t.shape[axis:])])]


def _flatten(x: np.ndarray, axis: int = 1) -> np.ndarray:
    axis = _flatten_axis(axis, x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))).copy()


register(OpDef("flatten", "shape", (1, 1), _flatten_infer, _flatten, attrs={"axis": Attr("int", 1)},
               widen=False, doc="ONNX Flatten: 2-D, axes before `axis` become rows, the rest columns"))

# ---- gather, gather_elements ---------------------------------------------------------------------


def _require_indices(t: TensorType) -> None:
    if not t.dtype.is_int:
        raise ValueError(f"indices must be an integer type, got {t.dtype}")


def _gather_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    data, indices = ts
    _require_indices(indices)
    _require_rank(data, "gather")
    axis = norm_axis(attrs["axis"], data.rank)
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    return [data.with_shape(shape)]


def _gather(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    # np.take wraps negative indices (as ONNX Gather does) and raises on out-of-range ones
    return np.take(data, indices, axis=axis)


register(OpDef("gather", "shape", (2, 2), _gather_infer, _gather, attrs={"axis": Attr("int", 0)}, widen=False,
               doc="np.take / ONNX Gather: pick slices of `data` along `axis` at integer `indices` "
                   "(negative ones count from the end)"))


def _gather_elements_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    data, indices = ts
    _require_indices(indices)
    _require_rank(data, "gather_elements")
    if data.rank != indices.rank:
        raise ValueError(f"data (rank {data.rank}) and indices (rank {indices.rank}) differ in rank")
    axis = norm_axis(attrs["axis"], data.rank)
    for d, (n, m) in enumerate(zip(data.shape, indices.shape, strict=True)):
        if d != axis and isinstance(n, int) and isinstance(m, int) and m > n:
            raise ValueError(f"indices dim {m} on axis {d} exceeds the data's {n}")
    return [TensorType(indices.shape, data.dtype)]


def _gather_elements(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    axis = axis % data.ndim
    # indices may be smaller than data off the gather axis (torch.gather): use the leading part
    window = tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(indices.shape))
    n = data.shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise IndexError(f"an index is out of range for axis {axis} of size {n}")
    return np.take_along_axis(data[window], np.where(indices < 0, indices + n, indices), axis=axis)


register(OpDef("gather_elements", "shape", (2, 2), _gather_elements_infer, _gather_elements,
               attrs={"axis": Attr("int", 0)}, widen=False,
               doc="ONNX GatherElements / torch.gather: out[i][j] = data[idx[i][j]][j] (axis 0); "
                   "the output has the shape of the indices"))

# ---- pad -----------------------------------------------------------------------------------------


def _pad_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _plain(ts)
    t = ts[0]
    pads = attrs["pads"]
    if len(pads) != 2 * t.rank:
        raise ValueError(f"pads has {len(pads)} entries; rank {t.rank} needs {2 * t.rank} "
                         "(all begins, then all ends)")
    shape = [d + pads[i] + pads[i + t.rank] for i, d in enumerate(t.shape)]
    for i, d in enumerate(shape):
        if isinstance(d, int) and d < 0:
            raise ValueError(f"pads crop axis {i} below zero")
    return [t.with_shape(shape)]


def _pad(x: np.ndarray, pads, mode: str = "constant", value: float = 0.0) -> np.ndarray:
    rank = x.ndim
    begins, ends = pads[:rank], pads[rank:]
    out_shape = tuple(d + b + e for d, b, e in zip(x.shape, begins, ends, strict=True))
    out = np.full(out_shape, _value_as(value, x.dtype), dtype=x.dtype)
    # negative pads crop: copy only the part of x that survives, to where it lands
    src, dst = [], []
    for d, b, e in zip(x.shape, begins, ends, strict=True):
        lo, hi = max(0, -b), d - max(0, -e)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(max(0, b), max(0, b) + hi - lo))
    out[tuple(dst)] = x[tuple(src)]
    return out


register(OpDef("pad", "shape", (1, 1), _pad_infer, _pad, widen=False,
               attrs={"pads": Attr("ints"), "mode": Attr("str", "constant", choices=("constant",)),
                      "value": Attr("float", 0.0)},
               doc="ONNX Pad, constant mode: pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...]; "
                   "negative pads crop"))

# ---- full, iota ----------------------------------------------------------------------------------


def _generated_shape(dims, what: str) -> tuple[Dim, ...]:
    """Symbolic dims are allowed: the interpreter binds them from the graph inputs before the
    reference runs, as a backend does at launch time."""
    if any(isinstance(d, int) and d < 0 for d in dims):
        raise ValueError(f"{what} shape has a negative dim: {dims}")
    return tuple(dims)


def _require_generated_dtype(dtype: DType) -> None:
    if dtype.is_quant:
        raise ValueError(f"cannot generate quantized type {dtype}")


def _full_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    _require_generated_dtype(attrs["dtype"])
    return [TensorType(_generated_shape(attrs["shape"], "full"), attrs["dtype"])]


def _full(shape, value: float = 0.0, dtype: DType = f32) -> np.ndarray:
    np_dtype = dtype.np_dtype
    return np.full(tuple(shape), _value_as(value, np_dtype), dtype=np_dtype)


def _iota_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    dtype = attrs["dtype"]
    _require_generated_dtype(dtype)
    if dtype == boolean:
        raise ValueError("iota of bool")
    shape = _generated_shape(attrs["shape"], "iota")
    if len(shape) != 1:
        raise ValueError(f"iota makes a 1-D tensor; shape has rank {len(shape)}")
    return [TensorType(shape, dtype)]


def _iota(shape, dtype: DType = i64, start: int = 0) -> np.ndarray:
    return np.arange(start, start + shape[0], dtype=np.int64).astype(dtype.np_dtype)


register(OpDef("full", "shape", (0, 0), _full_infer, _full, widen=False,
               attrs={"shape": Attr("dims"), "value": Attr("float", 0.0), "dtype": Attr("dtype", f32)},
               doc="a tensor of `shape` (symbolic dims allowed) filled with `value`"))
register(OpDef("iota", "shape", (0, 0), _iota_infer, _iota, widen=False,
               attrs={"shape": Attr("dims"), "dtype": Attr("dtype", i64), "start": Attr("int", 0)},
               doc="start, start+1, ... as a 1-D tensor of `shape` (symbolic allowed)"))

# ---- advanced indexing ---------------------------------------------------------------------------


def _index_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    data, indices = ts[0], ts[1:]
    axis = attrs["axis"]
    if not 0 <= axis or axis + len(indices) > data.rank:
        raise ValueError(f"{len(indices)} index tensors from axis {axis} do not fit rank {data.rank}")
    for t in indices:
        if not t.dtype.is_int:
            raise ValueError(f"index tensors must be integers, got {t.dtype}")
    from qjc.ir.ops.shape_rules import broadcast_shapes

    picked = broadcast_shapes(*[t.shape for t in indices])
    return [data.with_shape(data.shape[:axis] + picked + data.shape[axis + len(indices):])]


def _index(data: np.ndarray, *indices: np.ndarray, axis: int = 0) -> np.ndarray:
    return data[(slice(None),) * axis + tuple(indices)].copy()


register(OpDef("index", "shape", (2, -1), _index_infer, _index, widen=False,
               attrs={"axis": Attr("int", 0)},
               doc="numpy advanced indexing on consecutive axes from `axis`: data[..., i0, i1, ...] with the "
                   "index tensors broadcast together; negative indices wrap"))

# ---- index_copy (a functional cache write) -------------------------------------------------------


def _index_copy_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    x, index, src = ts
    axis = norm_axis(attrs["axis"], x.rank)
    if not index.dtype.is_int or index.rank != 1:
        raise ValueError(f"index must be a 1-D integer tensor, got {index}")
    if src.dtype != x.dtype or src.rank != x.rank:
        raise ValueError(f"source {src} must match the destination's dtype and rank ({x})")
    want = x.shape[:axis] + (index.shape[0],) + x.shape[axis + 1:]
    for a, b in zip(src.shape, want):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ValueError(f"source shape {src} does not fit {x} at {index.shape[0]} positions of axis {axis}")
    return [x]


def _index_copy(x: np.ndarray, index: np.ndarray, src: np.ndarray, axis: int = 0) -> np.ndarray:
    out = x.copy()
    out[(slice(None),) * (axis % x.ndim) + (index,)] = src
    return out


register(OpDef("index_copy", "shape", (3, 3), _index_copy_infer, _index_copy, widen=False,
               attrs={"axis": Attr("int")},
               doc="x with the slices at `index` along `axis` replaced by src (torch index_copy); "
                   "how a static KV cache is written"))
