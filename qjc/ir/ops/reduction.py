"""Reductions over axes (sum, mean, max, min, prod, argmax, argmin), softmax / log_softmax and cumsum.

Narrow floats reach the references as f32 (the registry's ``widen``), so sums of f16 / bf16
accumulate in f32 and are rounded once at the end, as GPU kernels do. Integer sums and products keep
the input dtype (wrapping on overflow, like C), rather than numpy's promotion to int64.
"""

from __future__ import annotations

import numpy as np

from qjc.ir.dims import Dim
from qjc.ir.dtypes import boolean, i64
from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import norm_axes, norm_axis, require_float, require_plain
from qjc.ir.types import TensorType

# ---- shared helpers ------------------------------------------------------------------------------


def _require_numeric(t: TensorType) -> None:
    require_plain(t)
    if t.dtype == boolean:
        raise ValueError("needs a numeric input, got bool; cast first")


def _reduce_axes(axes: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    # a scalar has nothing to reduce: axis 0 / -1 of it (as ONNX exporters write) is a no-op
    if rank == 0:
        if axes is not None and any(a not in (0, -1) for a in axes):
            raise ValueError(f"axes {axes} are out of range for a scalar")
        return ()
    return norm_axes(axes, rank)


def _reduced_shape(shape: tuple[Dim, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[Dim, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _np_axes(x: np.ndarray, axes: tuple[int, ...] | None) -> tuple[int, ...]:
    return _reduce_axes(axes, x.ndim)


def _keep_int_dtype(x: np.ndarray) -> np.dtype | None:
    # numpy promotes small-int sums to int64; the IR keeps the input dtype
    return x.dtype if x.dtype.kind in "iu" else None


def _require_rank(t: TensorType, what: str) -> None:
    if t.rank == 0:
        raise ValueError(f"{what} needs an input of rank >= 1, got a scalar")


# ---- sum, mean, max, min, prod -------------------------------------------------------------------


def _reduce_infer(name: str):
    def infer(ts: list[TensorType], attrs) -> list[TensorType]:
        t = ts[0]
        if name == "mean":
            require_float(t)
        elif name in ("max", "min"):
            require_plain(t)  # bool max / min are any / all
        else:
            _require_numeric(t)
        axes = _reduce_axes(attrs["axes"], t.rank)
        if name in ("max", "min"):
            empty = [a for a in axes if t.shape[a] == 0]
            if empty:
                raise ValueError(f"{name} over axis {empty[0]} of size 0 has no identity")
        return [TensorType(_reduced_shape(t.shape, axes, attrs["keepdims"]), t.dtype)]

    return infer


def _sum(x: np.ndarray, axes=None, keepdims: bool = False) -> np.ndarray:
    return np.sum(x, axis=_np_axes(x, axes), keepdims=keepdims, dtype=_keep_int_dtype(x))


def _prod(x: np.ndarray, axes=None, keepdims: bool = False) -> np.ndarray:
    return np.prod(x, axis=_np_axes(x, axes), keepdims=keepdims, dtype=_keep_int_dtype(x))


def _mean(x: np.ndarray, axes=None, keepdims: bool = False) -> np.ndarray:
    return np.mean(x, axis=_np_axes(x, axes), keepdims=keepdims)


def _max(x: np.ndarray, axes=None, keepdims: bool = False) -> np.ndarray:
    return np.max(x, axis=_np_axes(x, axes), keepdims=keepdims)


def _min(x: np.ndarray, axes=None, keepdims: bool = False) -> np.ndarray:
    return np.min(x, axis=_np_axes(x, axes), keepdims=keepdims)


_REDUCE_ATTRS = {"axes": Attr("ints", None, optional=True), "keepdims": Attr("bool", False)}

for _name, _fn, _doc in [
    ("sum", _sum, "sum over `axes` (None: all; an empty list reduces nothing); ints keep their dtype"),
    ("mean", _mean, "arithmetic mean over `axes` (None: all); float only"),
    ("max", _max, "maximum over `axes` (None: all)"),
    ("min", _min, "minimum over `axes` (None: all)"),
    ("prod", _prod, "product over `axes` (None: all); ints keep their dtype"),
]:
    register(OpDef(_name, "reduction", (1, 1), _reduce_infer(_name), _fn, attrs=dict(_REDUCE_ATTRS),
                   doc=_doc))

# ---- argmax, argmin ------------------------------------------------------------------------------


def _arg_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    t = ts[0]
    _require_numeric(t)
    _require_rank(t, "arg-reduction")
    axis = norm_axis(attrs["axis"], t.rank)
    if t.shape[axis] == 0:
        raise ValueError(f"axis {attrs['axis']} has size 0: no element to pick")
    return [TensorType(_reduced_shape(t.shape, (axis,), attrs["keepdims"]), i64)]


def _argmax(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    return np.argmax(x, axis=axis, keepdims=keepdims)  # ties: the first index, as torch and ONNX


def _argmin(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    return np.argmin(x, axis=axis, keepdims=keepdims)


_ARG_ATTRS = {"axis": Attr("int"), "keepdims": Attr("bool", False)}
register(OpDef("argmax", "reduction", (1, 1), _arg_infer, _argmax, attrs=dict(_ARG_ATTRS),
               doc="index (i64) of the first maximum along `axis`"))
register(OpDef("argmin", "reduction", (1, 1), _arg_infer, _argmin, attrs=dict(_ARG_ATTRS),
               doc="index (i64) of the first minimum along `axis`"))

# ---- softmax, log_softmax ------------------------------------------------------------------------


def _softmax_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    t = ts[0]
    require_float(t)
    _require_rank(t, "softmax")
    norm_axis(attrs["axis"], t.rank)
    return [t]


def _shifted(x: np.ndarray, axis: int) -> np.ndarray:
    # subtracting the maximum keeps exp() from overflowing; the result is mathematically unchanged
    return x - np.max(x, axis=axis, keepdims=True)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.shape[axis] == 0:
        return x.copy()
    e = np.exp(_shifted(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.shape[axis] == 0:
        return x.copy()
    z = _shifted(x, axis)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


register(OpDef("softmax", "reduction", (1, 1), _softmax_infer, _softmax, attrs={"axis": Attr("int", -1)},
               doc="exp(x) / sum(exp(x)) along `axis`, computed stably; float only"))
register(OpDef("log_softmax", "reduction", (1, 1), _softmax_infer, _log_softmax,
               attrs={"axis": Attr("int", -1)},
               doc="x - log(sum(exp(x))) along `axis`, computed stably; float only"))

# ---- cumsum --------------------------------------------------------------------------------------


def _cumsum_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    t = ts[0]
    _require_numeric(t)
    _require_rank(t, "cumsum")
    norm_axis(attrs["axis"], t.rank)
    return [t]


def _cumsum(x: np.ndarray, axis: int, exclusive: bool = False, reverse: bool = False) -> np.ndarray:
    axis = axis % x.ndim
    src = np.flip(x, axis) if reverse else x
    out = np.cumsum(src, axis=axis, dtype=x.dtype)
    if exclusive:
        # shift by one along the axis: element i holds the sum of elements before i
        out = np.roll(out, 1, axis=axis)
        first = [slice(None)] * x.ndim
        first[axis] = slice(0, 1)
        out[tuple(first)] = 0
    return np.flip(out, axis) if reverse else out


register(OpDef("cumsum", "reduction", (1, 1), _cumsum_infer, _cumsum,
               attrs={"axis": Attr("int"), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)},
               doc="running sum along `axis` (ONNX CumSum: `exclusive` skips the current element, "
                   "`reverse` runs from the end); ints keep their dtype"))
