"""Generate C code that computes a value of the graph at an index, pulling its producers inline.

Every kernel that evaluates elementwise work (the elementwise template, the prologue and epilogue
of row reductions, the GEMM epilogue) asks an ``ExprGen`` for "value v at index i". The generator
either loads v from its buffer (v is materialized) or recurses into v's producer, mapping the
index through it: broadcasting, transpose, slice, expand, reshape, concat, pad, gather, index and
the generators full / iota are all index arithmetic, so a chain of them costs no extra kernel.

Each thread of a kernel handles ``VEC`` consecutive elements of the output's last dim, the
"lanes". Index expressions are kept affine in the lane number where possible (``IX``): a load
whose offset is ``base + lane`` becomes one vector load hoisted before the lane loop (16-byte
``uint4`` / ``float4`` accesses when contiguous and aligned), a load whose offset does not depend
on the lane is hoisted as one scalar load, and everything else is loaded lane by lane.

Values are computed in their compute type (float for f32/f16/bf16, double, int64_t, int32_t,
bool): narrow floats stay in float between ops and are rounded once when stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qjc.backends.cuda.cexpr import SymbolTable, c_float, compute_ctype, ctype
from qjc.ir.dims import Dim
from qjc.ir.dtypes import DType
from qjc.ir.graph import Node, Value
from qjc.ir.ops.shape import slice_start


class NotFusable(Exception):
    """Raised when a value cannot be produced inline at the index asked; the planner then
    materializes ``value`` and tries again."""

    def __init__(self, value: Value, why: str) -> None:
        super().__init__(f"%{value.name}: {why}")
        self.value = value


# ---- index expressions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IX:
    """An index expression ``base + coef*lane``; ``coef`` None means ``base`` is an arbitrary
    expression that may mention ``lane`` itself."""

    base: str
    coef: int | None = 0

    @staticmethod
    def const(value: int | str) -> IX:
        return IX(str(value), 0)

    @property
    def lane_free(self) -> bool:
        return self.coef == 0

    def render(self) -> str:
        if self.coef is None or self.coef == 0:
            return self.base
        if self.base == "0":
            return "lane" if self.coef == 1 else f"({self.coef}*lane)"
        return f"({self.base} + lane)" if self.coef == 1 else f"({self.base} + {self.coef}*lane)"

    def __add__(self, other: IX) -> IX:
        if self.base == "0" and self.coef == 0:
            return other
        if other.base == "0" and other.coef == 0:
            return self
        if self.coef is None or other.coef is None:
            return IX(f"({self.render()} + {other.render()})", None)
        return IX(f"({self.base} + {other.base})", self.coef + other.coef)

    def plus(self, c: int | str) -> IX:
        if c == 0 or c == "0":
            return self
        return self + IX.const(c)

    def times(self, c: int | str) -> IX:
        if c == 1 or c == "1":
            return self
        if c == 0 or c == "0":
            return IX.const(0)
        if self.coef == 0:
            return IX(f"({self.base} * {c})", 0)
        if isinstance(c, int) and self.coef is not None:
            return IX(f"({self.base} * {c})" if self.base != "0" else "0", self.coef * c)
        return IX(f"({self.render()} * {c})", None)


@dataclass(frozen=True)
class Index:
    """Where a value is read: a flat offset into its contiguous layout, or one IX per dim."""

    flat: IX | None = None
    multi: tuple[IX, ...] | None = None

    def key(self) -> str:
        if self.flat is not None:
            return "f:" + self.flat.render()
        return "m:" + ",".join(ix.render() for ix in self.multi or ())


# ---- op expressions -------------------------------------------------------------------------------

_FLOAT_UNARY = {
    "neg": "(-{x})", "abs": "q_abs({x})", "exp": "q_exp({x})", "log": "q_log({x})", "sqrt": "q_sqrt({x})",
    "rsqrt": "q_rsqrt({x})", "reciprocal": "q_recip({x})", "sin": "q_sin({x})", "cos": "q_cos({x})",
    "tanh": "q_tanh({x})", "erf": "q_erf({x})", "sigmoid": "q_sigmoid({x})", "relu": "q_relu({x})",
    "silu": "q_silu({x})", "floor": "q_floor({x})", "ceil": "q_ceil({x})",
}
_BINARY = {
    "add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
    "pow": "q_pow({a}, {b})", "maximum": "q_max({a}, {b})", "minimum": "q_min({a}, {b})",
    "eq": "({a} == {b})", "ne": "({a} != {b})", "lt": "({a} < {b})", "le": "({a} <= {b})",
    "gt": "({a} > {b})", "ge": "({a} >= {b})",
    "logical_and": "({a} && {b})", "logical_or": "({a} || {b})", "logical_xor": "({a} != {b})",
}
ELEMENTWISE_OPS = frozenset(_FLOAT_UNARY) | frozenset(_BINARY) | {
    "where", "cast", "clamp", "identity", "gelu", "logical_not", "batch_norm"}
INDEX_OPS = frozenset({"transpose", "slice", "expand", "squeeze", "unsqueeze", "reshape", "flatten", "concat",
                       "pad", "gather", "gather_elements", "index", "full", "iota", "split"})
# Every op the generator produces inline.
GENERATOR_OPS = ELEMENTWISE_OPS | INDEX_OPS
# Ops whose output is its input's buffer read in the same order.
ALIAS_OPS = frozenset({"reshape", "squeeze", "unsqueeze", "flatten", "identity"})


def literal(value: float, dtype: DType) -> str:
    ct = compute_ctype(dtype)
    if dtype.name == "bool":
        return "true" if value != 0 else "false"
    if dtype.is_int:
        return f"(({ct}){int(math.trunc(value))}LL)"
    return c_float(value, ct)


# ---- the generator --------------------------------------------------------------------------------


class Params:
    """Pointer parameters a kernel reads and writes, in the order the launcher passes them."""

    def __init__(self) -> None:
        self.values: list[Value] = []
        self.writes: set[int] = set()

    def ptr(self, v: Value, write: bool = False) -> str:
        for i, u in enumerate(self.values):
            if u is v:
                if write:
                    self.writes.add(i)
                return f"p{i}"
        self.values.append(v)
        if write:
            self.writes.add(len(self.values) - 1)
        return f"p{len(self.values) - 1}"

    def declarations(self) -> list[str]:
        """``const T* __restrict__ pN = (const T*)a.p[N];`` for each parameter."""
        out = []
        for i, v in enumerate(self.values):
            t = ctype(v.type.dtype)
            if i in self.writes:
                out.append(f"{t}* __restrict__ p{i} = ({t}*)a.p[{i}];")
            else:
                out.append(f"const {t}* __restrict__ p{i} = (const {t}*)a.p[{i}];")
        return out


class ExprGen:
    """Emits statements computing values at indices into ``pre`` (lane-independent, before the
    lane loop) and ``body`` (inside ``for (int lane = 0; lane < VEC; ++lane)``).

    ``materialized(v)`` says whether v has a buffer to load from. ``bindings`` maps (value, index
    key) to a variable already holding it (a GEMM accumulator, a normalized row element)."""

    def __init__(self, syms: SymbolTable, params: Params, materialized: Callable[[Value], bool],
                 vec: int | str = "VEC", sym: str = "a.s") -> None:
        self.syms = syms
        self.params = params
        self.materialized = materialized
        self.vec = vec
        self.sym = sym
        self.pre: list[str] = []
        self.body: list[str] = []
        self._block: list[str] = self.body
        self._memo: list[dict[tuple[int, str], str]] = [{}]
        self._conditional = 0
        self._counter = 0
        self.bindings: dict[tuple[int, str], str] = {}
        self.vector_loads = 0

    # ---- helpers -------------------------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        self._counter += 1
        return f"{hint}{self._counter}"

    def dim(self, d: Dim) -> str:
        return self.syms.dim(d, self.sym) if not isinstance(d, int) else str(d)

    def idx_dim(self, d: Dim) -> int | str:
        """A dim as an index-expression factor: an int if static, else a cast C expression."""
        return d if isinstance(d, int) else f"(idx_t){self.syms.dim(d, self.sym)}"

    def _emit(self, stmt: str, lane_free: bool) -> None:
        if lane_free and self._conditional == 0:
            self.pre.append(stmt)
        else:
            self._block.append(stmt)

    def bind(self, v: Value, index: Index, var: str) -> None:
        self.bindings[(id(v), index.key())] = var

    # ---- index conversion ----------------------------------------------------------------------
    def linearize(self, multi: Sequence[IX], shape: Sequence[Dim]) -> IX:
        out = IX.const(0)
        stride: Dim = 1
        for ix, d in zip(reversed(multi), reversed(shape)):
            if d != 1:
                out = out + ix.times(self.idx_dim(stride))
            stride = stride * d
        return out

    def delinearize(self, flat: IX, shape: Sequence[Dim]) -> tuple[IX, ...]:
        if not shape:
            return ()
        if len(shape) == 1:
            return (flat,)
        lane_free = flat.lane_free
        var = self.fresh("q")
        self._emit(f"idx_t {var} = {flat.render()};", lane_free)
        out: list[IX] = []
        for d in reversed(shape[1:]):
            name = self.fresh("i")
            dd = self.idx_dim(d)
            self._emit(f"idx_t {name} = {var} % {dd}; {var} /= {dd};", lane_free)
            out.append(IX(name, 0) if lane_free else IX(name, None))
        out.append(IX(var, 0) if lane_free else IX(var, None))
        return tuple(reversed(out))

    def as_multi(self, index: Index, shape: Sequence[Dim]) -> tuple[IX, ...]:
        if index.multi is not None:
            return index.multi
        return self.delinearize(index.flat, shape)

    def as_flat(self, index: Index, shape: Sequence[Dim]) -> IX:
        if index.flat is not None:
            return index.flat
        return self.linearize(index.multi, shape)

    def broadcast_index(self, index: Index, out_shape: Sequence[Dim], in_shape: Sequence[Dim]) -> Index:
        """The index into an operand of shape ``in_shape`` broadcast to ``out_shape``."""
        if tuple(in_shape) == tuple(out_shape):
            return index
        multi = self.as_multi(index, out_shape)
        lead = len(out_shape) - len(in_shape)
        picked = [IX.const(0) if d == 1 and out_shape[lead + k] != 1 else multi[lead + k]
                  for k, d in enumerate(in_shape)]
        return Index(multi=tuple(picked))

    # ---- values --------------------------------------------------------------------------------
    def value(self, v: Value, index: Index) -> str:
        key = (id(v), index.key())
        if key in self.bindings:
            return self.bindings[key]
        for memo in reversed(self._memo):
            if key in memo:
                return memo[key]
        if self.materialized(v):
            var = self._load(v, index)
        else:
            node = v.producer
            if node is None:
                raise NotFusable(v, "has no producer and no buffer")
            if node.op not in GENERATOR_OPS:
                raise NotFusable(v, f"{node.op} cannot be computed inline at this index")
            var = self._compute(node, v, index)
        self._memo[-1][key] = var
        return var

    def _load(self, v: Value, index: Index) -> str:
        ptr = self.params.ptr(v)
        off = self.as_flat(index, v.type.shape)
        ct = compute_ctype(v.type.dtype)
        var = self.fresh("v")
        if off.lane_free:
            self._emit(f"const {ct} {var} = q_load({ptr}, {off.base});", True)
            return var
        if off.coef == 1 and self._conditional == 0 and self.vec != 1:
            arr = self.fresh("w")
            self.pre.append(f"{ctype(v.type.dtype)} {arr}[VEC]; q_load_vec<VEC>({ptr}, {off.base}, {arr});")
            self.vector_loads += 1
            self._block.append(f"const {ct} {var} = q_cvt({arr}[lane]);")
            return var
        self._block.append(f"const {ct} {var} = q_load({ptr}, {off.render()});")
        return var

    def _define(self, v: Value, expr: str, lane_free: bool = False) -> str:
        var = self.fresh("e")
        self._emit(f"const {compute_ctype(v.type.dtype)} {var} = {expr};", lane_free)
        return var

    def _compute(self, node: Node, v: Value, index: Index) -> str:
        op = node.op
        shape = v.type.shape
        if op in _FLOAT_UNARY or op in ("gelu", "logical_not", "identity", "cast", "clamp"):
            x = self.value(node.inputs[0], index)
            return self._define(v, self._unary(node, x))
        if op in _BINARY:
            a = self.value(node.inputs[0], self.broadcast_index(index, shape, node.inputs[0].type.shape))
            b = self.value(node.inputs[1], self.broadcast_index(index, shape, node.inputs[1].type.shape))
            return self._define(v, self._binary(op, a, b, node.inputs[0].type.dtype))
        if op == "where":
            c, a, b = (self.value(u, self.broadcast_index(index, shape, u.type.shape)) for u in node.inputs)
            return self._define(v, f"({c} ? {a} : {b})")
        if op == "batch_norm":
            return self._batch_norm(node, v, index)
        if op in ("reshape", "squeeze", "unsqueeze", "flatten"):
            src = node.inputs[0]
            return self.value(src, Index(flat=self.as_flat(index, shape)))
        if op == "transpose":
            multi = self.as_multi(index, shape)
            perm = node.attrs["perm"] or tuple(reversed(range(len(shape))))
            src = [IX.const(0)] * len(perm)
            for k, p in enumerate(perm):
                src[p] = multi[k]
            return self.value(node.inputs[0], Index(multi=tuple(src)))
        if op == "expand":
            return self.value(node.inputs[0], self.broadcast_index(index, shape, node.inputs[0].type.shape))
        if op == "slice":
            return self._slice(node, v, index)
        if op == "split":
            return self._split(node, v, index)
        if op == "concat":
            return self._concat(node, v, index)
        if op == "pad":
            return self._pad(node, v, index)
        if op in ("gather", "gather_elements", "index"):
            return self._gather(node, v, index)
        if op == "full":
            return literal(node.attrs["value"], v.type.dtype)
        if op == "iota":
            multi = self.as_multi(index, shape)
            ct = compute_ctype(v.type.dtype)
            return self._define(v, f"({ct})((int64_t){node.attrs['start']} + (int64_t){multi[0].render()})",
                                multi[0].lane_free)
        raise NotFusable(v, f"op {op} has no inline form")

    # ---- op bodies -----------------------------------------------------------------------------
    def _unary(self, node: Node, x: str) -> str:
        op = node.op
        src = node.inputs[0].type.dtype
        if op == "identity":
            return x
        if op == "logical_not":
            return f"(!{x})"
        if op == "gelu":
            return f"q_gelu_tanh({x})" if node.attrs["approximate"] == "tanh" else f"q_gelu({x})"
        if op == "clamp":
            out = x
            if node.attrs["min"] is not None:
                out = f"q_max({out}, {literal(node.attrs['min'], src)})"
            if node.attrs["max"] is not None:
                out = f"q_min({out}, {literal(node.attrs['max'], src)})"
            return out
        if op == "cast":
            return self._cast(x, src, node.attrs["to"])
        if op == "abs" and not src.is_float:
            return f"({x} < 0 ? -{x} : {x})"
        if op == "relu" and not src.is_float:
            return f"({x} > 0 ? {x} : 0)"
        return _FLOAT_UNARY[op].format(x=x)

    @staticmethod
    def _cast(x: str, src: DType, dst: DType) -> str:
        ct = compute_ctype(dst)
        if dst.name == "bool":
            return f"({x} != 0)"
        if dst.name in ("f16", "bf16"):
            # the cast is a rounding step even though the value stays in float registers
            return f"q_round<{ctype(dst)}>((float)({x}))"
        if dst.is_float:
            return f"({ct})({x})"
        if src.is_float:
            return f"({ct})(q_trunc({x}))"
        if dst.name in ("i8", "u8"):
            return f"({ct})({ctype(dst)})({x})"  # wrap as C does
        return f"({ct})({x})"

    @staticmethod
    def _binary(op: str, a: str, b: str, dtype: DType) -> str:
        if op == "pow" and not dtype.is_float:
            return f"q_ipow({a}, {b})"
        if op in ("maximum", "minimum") and not dtype.is_float:
            return f"({a} {'>' if op == 'maximum' else '<'} {b} ? {a} : {b})"
        return _BINARY[op].format(a=a, b=b)

    def _batch_norm(self, node: Node, v: Value, index: Index) -> str:
        shape = v.type.shape
        multi = self.as_multi(index, shape)
        x = self.value(node.inputs[0], index)
        channel = Index(multi=(multi[1],))
        scale, bias, mean, var = (self.value(u, channel) for u in node.inputs[1:])
        eps = c_float(node.attrs["eps"], compute_ctype(v.type.dtype))
        return self._define(v, f"(({x} - {mean}) * q_rsqrt_exact({var} + {eps}) * {scale} + {bias})")

    def _slice_params(self, node: Node) -> list[tuple[int, int | str, int]]:
        """(axis, start, step) for each sliced axis, starts resolved against the input's dims."""
        src = node.inputs[0].type.shape
        rank = len(src)
        axes = node.attrs["axes"] or tuple(range(len(node.attrs["starts"])))
        steps = node.attrs["steps"] or (1,) * len(axes)
        out = []
        for a, start, step in zip(axes, node.attrs["starts"], steps):
            a = a % rank
            out.append((a, self._slice_start(src[a], start, step), step))
        return out

    def _slice_start(self, dim: Dim, start: Dim, step: int) -> int | str:
        """The first index a slice reads (qjc.ir.ops.shape.slice_start) as C."""
        first = slice_start(dim, start, step)
        return first if isinstance(first, int) else f"(idx_t){self.syms.dim(first, self.sym)}"

    def _slice(self, node: Node, v: Value, index: Index) -> str:
        multi = list(self.as_multi(index, v.type.shape))
        for axis, start, step in self._slice_params(node):
            multi[axis] = multi[axis].times(step).plus(start)
        return self.value(node.inputs[0], Index(multi=tuple(multi)))

    def _split(self, node: Node, v: Value, index: Index) -> str:
        k = next(i for i, o in enumerate(node.outputs) if o is v)
        axis = node.attrs["axis"] % len(v.type.shape)
        multi = list(self.as_multi(index, v.type.shape))
        multi[axis] = multi[axis].plus(sum(node.attrs["sizes"][:k]))
        return self.value(node.inputs[0], Index(multi=tuple(multi)))

    def _branch(self, cond: str, compute: Callable[[], str], var: str, first: bool, last: bool) -> None:
        """One arm of an if / else-if chain assigning ``var``; arms may load out of range, so
        nothing computed inside is hoisted or shared outside."""
        head = "if" if first else "else if"
        if last and not first:
            self._block.append("else {")
        else:
            self._block.append(f"{head} ({cond}) {{")
        outer = self._block
        inner: list[str] = []
        self._block = inner
        self._conditional += 1
        self._memo.append({})
        try:
            result = compute()
        finally:
            self._memo.pop()
            self._conditional -= 1
            self._block = outer
        outer.extend("  " + s for s in inner)
        outer.append(f"  {var} = {result};")
        outer.append("}")

    def _concat(self, node: Node, v: Value, index: Index) -> str:
        shape = v.type.shape
        axis = node.attrs["axis"] % len(shape)
        multi = self.as_multi(index, shape)
        var = self.fresh("c")
        self._block.append(f"{compute_ctype(v.type.dtype)} {var};")
        at = multi[axis].render()
        offset: Dim = 0
        n = len(node.inputs)
        for k, u in enumerate(node.inputs):
            size = u.type.shape[axis]
            end = offset + size
            sub = list(multi)
            sub[axis] = IX(f"({at} - {self.idx_dim(offset)})", None) if offset != 0 else IX(at, None)
            cond = f"{at} < {self.idx_dim(end)}"
            self._branch(cond, lambda u=u, sub=sub: self.value(u, Index(multi=tuple(sub))), var,
                         first=k == 0, last=k == n - 1)
            offset = end
        return var

    def _pad(self, node: Node, v: Value, index: Index) -> str:
        shape = v.type.shape
        src = node.inputs[0]
        rank = len(shape)
        pads = node.attrs["pads"]
        multi = self.as_multi(index, shape)
        sub, conds = [], []
        for k in range(rank):
            begin = pads[k]
            at = multi[k].render()
            shifted = IX(f"({at} - ({begin}))", None) if begin else IX(at, None)
            sub.append(shifted)
            if begin > 0:
                conds.append(f"{at} >= {begin}")
            if begin != 0 or pads[k + rank] != 0:
                conds.append(f"{shifted.render()} < {self.idx_dim(src.type.shape[k])}")
                if begin < 0:
                    conds.append(f"{shifted.render()} >= 0")
        var = self.fresh("c")
        fill = literal(node.attrs["value"], v.type.dtype)
        self._block.append(f"{compute_ctype(v.type.dtype)} {var} = {fill};")
        if not conds:
            conds = ["true"]
        self._branch(" && ".join(conds), lambda: self.value(src, Index(multi=tuple(sub))), var, True, False)
        return var

    def _gather(self, node: Node, v: Value, index: Index) -> str:
        shape = v.type.shape
        data = node.inputs[0]
        multi = self.as_multi(index, shape)
        axis = node.attrs["axis"] % max(len(data.type.shape), 1)

        def wrapped(idx_var: str, dim: Dim) -> IX:
            n = self.idx_dim(dim)
            w = self.fresh("g")
            self._block.append(f"idx_t {w} = (idx_t){idx_var}; {w} = {w} < 0 ? {w} + {n} : {w};")
            return IX(w, None)

        if node.op == "gather":
            idx_shape = node.inputs[1].type.shape
            r = len(idx_shape)
            idx = self.value(node.inputs[1], Index(multi=tuple(multi[axis:axis + r])) if r else
                             Index(flat=IX.const(0)))
            sub = list(multi[:axis]) + [wrapped(idx, data.type.shape[axis])] + list(multi[axis + r:])
            return self.value(data, Index(multi=tuple(sub)))
        if node.op == "gather_elements":
            idx = self.value(node.inputs[1], index)
            sub = list(multi)
            sub[axis] = wrapped(idx, data.type.shape[axis])
            return self.value(data, Index(multi=tuple(sub)))
        # index: numpy advanced indexing on consecutive axes from `axis`
        tensors = node.inputs[1:]
        picked_rank = len(shape) - len(data.type.shape) + len(tensors)
        picked = multi[axis:axis + picked_rank]
        picked_shape = shape[axis:axis + picked_rank]
        chosen = []
        for k, t in enumerate(tensors):
            sub_index = self.broadcast_index(Index(multi=tuple(picked)), picked_shape, t.type.shape) \
                if t.type.shape else Index(flat=IX.const(0))
            idx = self.value(t, sub_index)
            chosen.append(wrapped(idx, data.type.shape[axis + k]))
        sub = list(multi[:axis]) + chosen + list(multi[axis + picked_rank:])
        return self.value(data, Index(multi=tuple(sub)))

    # ---- stores --------------------------------------------------------------------------------
    def store_lanes(self, out: Value, var: str, array: str) -> None:
        """``array[lane] = var`` rounded to the output's storage type."""
        self.body.append(f"{array}[lane] = q_store_cvt<{ctype(out.type.dtype)}>({var});")
