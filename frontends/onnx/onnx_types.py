"""ONNX element types <-> qjc dtypes, and ONNX tensors (initializers, Constant values) as numpy arrays."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from qjc.errors import QJCError
from qjc.ir import dtypes as qd

ONNX_TO_QJC: dict[int, qd.DType] = {
    TensorProto.FLOAT: qd.f32,
    TensorProto.FLOAT16: qd.f16,
    TensorProto.BFLOAT16: qd.bf16,
    TensorProto.DOUBLE: qd.f64,
    TensorProto.FLOAT8E4M3FN: qd.f8e4m3,
    TensorProto.INT64: qd.i64,
    TensorProto.INT32: qd.i32,
    TensorProto.INT8: qd.i8,
    TensorProto.UINT8: qd.u8,
    TensorProto.BOOL: qd.boolean,
}
QJC_TO_ONNX: dict[qd.DType, int] = {v: k for k, v in ONNX_TO_QJC.items()}


def onnx_type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"#{elem_type}"


def qjc_dtype(elem_type: int, what: str) -> qd.DType:
    """The qjc dtype of ONNX element type ``elem_type``; ``what`` names the tensor for the error."""
    try:
        return ONNX_TO_QJC[elem_type]
    except KeyError:
        known = ", ".join(onnx_type_name(t) for t in ONNX_TO_QJC)
        raise QJCError(f"{what} has ONNX dtype {onnx_type_name(elem_type)}, which has no qjc equivalent "
                       f"(qjc takes {known})") from None


def tensor_to_array(tensor: TensorProto, what: str, external: np.ndarray | None = None) -> np.ndarray:
    """The data of ``tensor`` in its qjc dtype's numpy dtype. External data must already be read
    by qjc's own loader and is passed as ``external``."""
    dtype = qjc_dtype(tensor.data_type, what)
    if external is not None:
        return external
    if tensor.data_location == TensorProto.EXTERNAL:
        raise QJCError(f"{what} keeps its data in an external file, which was not read",
                       "pass the model's path (not a ModelProto) so qjc can read external data beside it")
    array = numpy_helper.to_array(tensor)
    return np.asarray(array, order="C").astype(dtype.np_dtype, copy=False)
