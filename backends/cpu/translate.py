"""qjc Graph -> one Relax function ``main`` in an IRModule.

The function takes the graph inputs (state inputs included) followed by the weights, and returns a
tuple of the graph outputs. Symbolic dims become int64 TIR variables shared across the function, so
one build serves every batch / sequence length in the graph's ranges. Weights are parameters rather
than constants baked into the library: the runtime reads them from the artifact's
weights.safetensors, repacking the GEMM weights into the layout the kernels want (``ParamSpec``);
a quantized linear weight becomes the quantized GEMM's parameters (codes, scales, zeros), and where no
kernel takes it, one f32 parameter dequantized at load time (listed in ``dequantized_at_load``).
Constants of a few elements are inlined. Fused groups are translated op by op in place; TVM's
FuseOps / FuseTIR regroup them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.backends.cpu.converters import load_all
from qjc.backends.cpu.quant_layout import PARTS, kernel_format, part_dtype, part_shape
from qjc.backends.cpu.tvm_env import CpuTarget, import_tvm
from qjc.backends.cpu.weights import ParamSpec, packed_shape
from qjc.errors import BackendError
from qjc.ir.dims import SymExpr
from qjc.ir.graph import Constant, Graph, Node, Value
from qjc.ir.quant import QuantizedArray

tvm = import_tvm()
relax = tvm.relax
tirx = tvm.tirx

TVM_DTYPES = {
    "f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16",
    "i64": "int64", "i32": "int32", "i8": "int8", "u8": "uint8", "bool": "bool",
}
# Constants up to this many elements are compiled in; larger ones are weights.
INLINE_CONSTANT_ELEMENTS = 16


@dataclass(frozen=True)
class KernelConfig:
    """Shapes of the hand-written kernels for one CPU: SIMD lanes and the GEMM register tile."""

    lanes: int  # f32 lanes of one vector register
    gemm_rows: int  # rows of the register tile (MR)
    gemm_cols: int  # columns of the register tile (NB): the weight packing block, a multiple of lanes
    qgemm_rows: int  # rows of the quantized GEMM's register tile

    @staticmethod
    def for_target(target: CpuTarget) -> KernelConfig:
        lanes = target.f32_lanes
        # 32 vector registers with AVX-512 (8 x 2 accumulators), 16 with AVX2 (6 x 2); measured best
        # on the register file sizes, leaving room for the weight vectors and one broadcast. The
        # quantized tile also holds a group's scales and offsets and the dequantized weights.
        wide = lanes >= 16
        return KernelConfig(lanes, 8 if wide else 6, 2 * lanes, 8 if wide else 4)


class Deferred:
    """A value emitted only if something reads it (``Translator.arg``): a dequantized weight that a
    quantized GEMM reads in its packed form needs no float copy."""

    def __init__(self, make: Any) -> None:
        self.make = make


def tvm_dtype(value: Value) -> str:
    name = value.type.dtype.name
    if name not in TVM_DTYPES:
        raise BackendError(f"the cpu backend has no dtype {name} (value %{value.name})")
    return TVM_DTYPES[name]



def _param_name(constant: str, layout: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", constant)
    return base if layout == "plain" else f"{base}__{layout}"


class Translator:
    """Walks a graph once and emits its Relax function. Converters call back into it."""

    def __init__(self, graph: Graph, config: KernelConfig) -> None:
        self.graph = graph
        self.config = config
        self.bb = relax.BlockBuilder()
        self.env: dict[Value, Any] = {}
        self.params: list[ParamSpec] = []
        self.dequantized_at_load: list[str] = []  # quantized constants no kernel reads as such
        self._param_vars: dict[tuple[str, str], Any] = {}
        self._kernels: dict[Any, Any] = {}
        # subgraph inputs of fused groups bound to constants outside: converters must see the
        # constant (to pack a GEMM weight), not an anonymous value
        self._alias: dict[Value, Value] = {}
        self._constants: dict[Value, Constant] = {
            c.value: c for g in graph.all_graphs() for c in g.constants.values()}
        names = set(graph.symbols)
        for v in graph.inputs:
            for d in v.type.shape:
                if isinstance(d, SymExpr):
                    names |= d.symbols
        self.symbols: dict[str, Any] = {name: tirx.Var(name, "int64") for name in sorted(names)}
        self.converters = load_all()
        self._main_users = graph.users()
        self._state_inputs = {v for v in graph.inputs if v.name in set(graph.state)}
        # the fused node being translated op by op with its subgraph's users, and the outer value of
        # each subgraph input: a KV-cache write inside an attention group still updates in place
        self._groups: list[tuple[Node, dict[Value, list[Node]]]] = []
        self._outer_of: dict[Value, Value] = {}

    # ---- dims and types ---------------------------------------------------------------------------
    def dim(self, d: int | SymExpr) -> Any:
        """A dim as an int64 PrimExpr over the function's symbolic variables."""
        if isinstance(d, int):
            return tirx.IntImm("int64", d)
        total: Any = None
        for monomial, coefficient in d.terms:
            term: Any = None if coefficient == 1 and monomial else tirx.IntImm("int64", coefficient)
            for name in monomial:
                if name not in self.symbols:
                    self.symbols[name] = tirx.Var(name, "int64")
                term = self.symbols[name] if term is None else term * self.symbols[name]
            total = term if total is None else total + term
        return total

    def shape(self, value: Value) -> list[Any]:
        return [self.dim(d) for d in value.type.shape]

    def dtype(self, value: Value) -> str:
        return tvm_dtype(value)

    def only_use_of_state(self, value: Value, node: Node) -> bool:
        """``value`` is a state input of the graph (a KV cache) and ``node`` its only user, so ``node`` may
        overwrite it in place (Graph.state: the backend may update state in place)."""
        if self._groups:
            group, inner_users = self._groups[-1]
            assert group.subgraph is not None
            if inner_users.get(value, []) != [node] or value in group.subgraph.outputs or value not in self._outer_of:
                return False
            value, node = self._outer_of[value], group
        value = self.resolve(value)
        users = self._main_users.get(value, [])
        return value in self._state_inputs and users == [node] and value not in self.graph.outputs

    # ---- operands -----------------------------------------------------------------------------------
    def resolve(self, value: Value) -> Value:
        while value in self._alias:
            value = self._alias[value]
        return value

    def constant_of(self, value: Value) -> Constant | None:
        return self._constants.get(self.resolve(value))

    def constant_data(self, value: Value) -> np.ndarray | None:
        c = self.constant_of(value)
        return c.data if c is not None and isinstance(c.data, np.ndarray) else None

    def quantized_data(self, value: Value) -> QuantizedArray | None:
        c = self.constant_of(value)
        return c.data if c is not None and isinstance(c.data, QuantizedArray) else None

    def arg(self, value: Value) -> Any:
        """The Relax expression holding ``value``: a computed value, an input, a weight parameter, or
        an inlined small constant."""
        value = self.resolve(value)
        if value in self.env:
            expr = self.env[value]
            if isinstance(expr, Deferred):
                expr = self.env[value] = expr.make()
            return expr
        const = self._constants.get(value)
        if const is None:
            raise BackendError(f"cpu backend: value %{value.name} is used before it is defined (a bug)")
        data = const.data
        if isinstance(data, QuantizedArray):
            raise BackendError(f"cpu backend: quantized constant %{value.name} ({value.type}) is read as a "
                               "tensor; it can only be a linear weight or the input of dequantize")
        if isinstance(data, np.ndarray) and data.size <= INLINE_CONSTANT_ELEMENTS:
            expr = relax.const(np.ascontiguousarray(data), self.dtype(value))
        else:
            expr = self.param(value, "plain")
        self.env[value] = expr
        return expr

    def param(self, value: Value, layout: str) -> Any:
        """The function parameter that carries constant ``value`` in ``layout`` ("plain", or a packed
        GEMM layout made at load time; see weights.py)."""
        value = self.resolve(value)
        key = (value.name, layout)
        if key in self._param_vars:
            return self._param_vars[key]
        const = self._constants[value]
        shape = tuple(int(d) for d in value.type.shape)
        block = self.config.gemm_cols if layout != "plain" else 0
        name = _param_name(value.name, layout)
        if isinstance(const.data, QuantizedArray):
            q = const.data
            if layout in PARTS:
                fmt = kernel_format(q.scheme, shape[1])
                assert fmt is not None, "the converter checks kernel_format first"
                spec = ParamSpec(name, value.name, layout, block, part_shape(fmt, layout, *shape, block),
                                 part_dtype(fmt, layout), q.scheme.name, shape)
            else:
                spec = ParamSpec(name, value.name, layout, block, packed_shape(shape, layout, block), "f32",
                                 q.scheme.name, shape)
                self.dequantized_at_load.append(value.name)
                self.log(f"cpu: {value.name} ({q.scheme.name}) is dequantized to f32 at load time: no "
                         "quantized kernel reads it")
        else:
            spec = ParamSpec(name, value.name, layout, block, packed_shape(shape, layout, block),
                             const.value.type.dtype.name)
        var = relax.Var(spec.name, relax.TensorType([tirx.IntImm("int64", d) for d in spec.shape],
                                                    TVM_DTYPES[spec.dtype]))
        self.params.append(spec)
        self._param_vars[key] = var
        return var

    # ---- emission --------------------------------------------------------------------------------------
    def emit(self, expr: Any, name: str = "") -> Any:
        return self.bb.emit(expr, name_hint=name) if name else self.bb.emit(expr)

    def emit_te(self, fn: Any, *args: Any, name: str = "") -> Any:
        if name:
            return self.bb.emit_te(fn, *args, primfunc_name_hint=name)
        return self.bb.emit_te(fn, *args)

    def log(self, message: str) -> None:
        """Decisions worth seeing at QJC_DEBUG >= 2."""
        from qjc import knobs

        if knobs.DEBUG.get() >= 2:
            import sys

            print(message, file=sys.stderr)

    def kernel(self, key: Any, make: Any) -> Any:
        """The GlobalVar of a hand-written PrimFunc, built by ``make(name)`` once per distinct ``key``
        (every linear of one shape shares its kernel)."""
        if key not in self._kernels:
            name = f"{key[0]}{len(self._kernels)}"
            self._kernels[key] = self.bb.add_func(make(name), name)
        return self._kernels[key]

    def reshape(self, expr: Any, shape: list[Any]) -> Any:
        """``expr`` viewed as ``shape``; no reshape is emitted when it already has that shape (every
        VM instruction costs about a microsecond, which adds up in a decode step)."""
        shape = [tirx.IntImm("int64", d) if isinstance(d, int) else d for d in shape]
        ty = getattr(expr, "ty", None)
        have = getattr(getattr(ty, "shape", None), "values", None)
        if have is not None and len(have) == len(shape):
            analyzer = tvm.sym.Analyzer()
            if all(analyzer.can_prove_equal(a, b) for a, b in zip(have, shape, strict=True)):
                return expr
        return self.emit(relax.op.reshape(expr, shape))

    def call_kernel(self, gvar: Any, args: list[Any], out_shape: list[Any], dtype: str) -> Any:
        return self.emit(relax.call_tir(gvar, relax.Tuple(args), relax.TensorType(out_shape, dtype)))

    def translate_nodes(self, nodes: list[Node]) -> None:
        for node in nodes:
            if node.op == "fused":
                self._translate_fused(node)
                continue
            convert = self.converters.get(node.op)
            if convert is None:
                raise BackendError(f"cpu backend: no converter for op {node.op} ({node.label})")
            outs = convert(self, node)
            if len(outs) != len(node.outputs):
                raise BackendError(f"cpu backend: converter of {node.op} gave {len(outs)} results for "
                                   f"{len(node.outputs)} outputs (a bug)")
            for v, expr in zip(node.outputs, outs, strict=True):
                self.env[v] = expr

    def _translate_fused(self, node: Node) -> None:
        sub = node.subgraph
        assert sub is not None
        for inner, outer in zip(sub.inputs, node.inputs, strict=True):
            # constants and deferred values stay visible as what they are (a GEMM packs the weight)
            if self.constant_of(outer) is not None or isinstance(self.env.get(self.resolve(outer)), Deferred):
                self._alias[inner] = self.resolve(outer)
            else:
                self.env[inner] = self.arg(outer)
                self._outer_of[inner] = outer
        from qjc.backends.cpu.fused_groups import translate_group

        self._groups.append((node, sub.users()))
        try:
            whole = translate_group(self, node)
            if whole is None:
                self.translate_nodes(sub.nodes)
        finally:
            self._groups.pop()
        self.log(f"cpu: fused {node.attrs.get('kind')} group {node.attrs.get('name')}: "
                 + ("one qjc kernel" if whole is not None else "op by op, fused by TVM"))
        if whole is not None:
            for v, expr in zip(node.outputs, whole, strict=True):
                self.env[v] = expr
            return
        for v, inner in zip(node.outputs, sub.outputs, strict=True):
            self.env[v] = self.arg(inner)

    def _define_symbols_of_compound_dims(self) -> None:
        """A symbol that appears in input shapes only inside an expression (an input of [seq+1, ...]) has
        no parameter dim that binds it; for seq + c, bind the dim itself and read seq as (dim - c)."""
        bound = {d.terms[0][0][0] for v in self.graph.inputs for d in v.type.shape
                 if isinstance(d, SymExpr) and len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1}
        for v in self.graph.inputs:
            for axis, d in enumerate(v.type.shape):
                if not isinstance(d, SymExpr) or d.symbols <= bound:
                    continue
                linear = [(m, c) for m, c in d.terms if m]
                if len(linear) != 1 or linear[0][1] != 1 or len(linear[0][0]) != 1:
                    raise BackendError(f"cpu backend: input %{v.name} has dim {d} whose symbols no input dim "
                                       "binds on its own", "give some input a dim that is exactly the symbol")
                symbol = linear[0][0][0]
                constant = sum(c for m, c in d.terms if not m)
                dim_var = tirx.Var(f"{v.name}_dim{axis}", "int64")
                self.symbols[symbol] = dim_var - tirx.IntImm("int64", constant)
                self._input_dims[(v.name, axis)] = dim_var
                bound.add(symbol)

    def run(self) -> tuple[Any, list[ParamSpec]]:
        """The IRModule with ``main`` and the weight parameters it takes after the inputs."""
        g = self.graph
        self._input_dims: dict[tuple[str, int], Any] = {}
        self._define_symbols_of_compound_dims()
        inputs = []
        for v in g.inputs:
            shape = [self._input_dims.get((v.name, axis), d) for axis, d in enumerate(self.shape(v))]
            var = relax.Var(_param_name(v.name, "plain"), relax.TensorType(shape, self.dtype(v)))
            self.env[v] = var
            inputs.append(var)
        with self.bb.function("main"):
            with self.bb.dataflow():
                self.translate_nodes(g.nodes)
                outs = [self.arg(v) for v in g.outputs]
                result = self.bb.emit_output(relax.Tuple(outs))
            weights = [self._param_vars[(s.constant, s.layout)] for s in self.params]
            self.bb.emit_func_output(result, params=inputs + weights)
        return self.bb.get(), list(self.params)


def translate(graph: Graph, config: KernelConfig) -> tuple[Any, list[ParamSpec], list[str]]:
    """The IRModule, its weight parameters, and the quantized constants dequantized at load time."""
    t = Translator(graph, config)
    mod, params = t.run()
    return mod, params, list(t.dequantized_at_load)
