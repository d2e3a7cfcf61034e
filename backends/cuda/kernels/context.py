"""What every kernel generator needs to know about the program it is generating for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qjc.backends.cuda.cexpr import SymbolTable, upper_bound
from qjc.backends.cuda.exprgen import ExprGen, Params
from qjc.ir.dims import Dim
from qjc.ir.graph import Value

INT32_LIMIT = 2**31 - 1


@dataclass
class KernelContext:
    syms: SymbolTable
    ranges: dict[str, tuple[int, int]]
    # whether a value has a buffer (else it is computed inline by the generator)
    materialized: Callable[[Value], bool]
    # id(quantized weight value) -> its QuantParts (kernels/quant_weights.py)
    quant_parts: dict[int, Any] = field(default_factory=dict)
    # large-M dense GEMMs try cuBLASLt first (blaslt.cu), falling back to qjc's own kernels at run time
    blaslt: bool = False

    def index_type(self, *extents: Dim) -> str:
        """int when every extent fits in 32 bits over the symbols' ranges (fast division)."""
        worst = max((upper_bound(e, self.ranges) for e in extents), default=0)
        return "int" if worst < INT32_LIMIT // 2 else "int64_t"

    def generator(self, params: Params, computed: list[Value] = (), vec: int | str = "VEC",
                  sym: str = "a.s") -> ExprGen:
        """A generator for one kernel; ``computed`` are the values this kernel produces, which it
        must compute rather than load even though they have buffers."""
        own = {id(v) for v in computed}
        return ExprGen(self.syms, params, lambda v: id(v) not in own and self.materialized(v), vec=vec, sym=sym)

    def host_dim(self, d: Dim) -> str:
        return self.syms.dim(d, "S")

    def kernel_dim(self, d: Dim) -> str:
        return self.syms.dim(d, "a.s")

    @property
    def nsym(self) -> int:
        return max(len(self.syms), 1)
