"""qjc's graph IR: dtypes, tensor types, the op registry, graphs, text form, verifier, interpreter."""

from qjc.ir.dims import Dim, SymExpr
from qjc.ir.dtypes import (
    DType,
    QuantScheme,
    bf16,
    boolean,
    f8e4m3,
    f16,
    f32,
    f64,
    i8,
    i32,
    i64,
    parse_dtype,
    u8,
)
from qjc.ir.graph import Constant, Graph, Node, Value
from qjc.ir.types import SymRange, TensorType, parse_type

__all__ = [
    "Dim", "SymExpr", "DType", "QuantScheme", "bf16", "boolean", "f8e4m3", "f16", "f32", "f64", "i8", "i32",
    "i64", "u8", "parse_dtype", "Constant", "Graph", "Node", "Value", "SymRange", "TensorType", "parse_type",
]
