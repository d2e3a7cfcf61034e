"""Decide which values get buffers, group the ops into kernels, order the kernels, lay out buffers.

A value is *materialized* (has a buffer) when something needs to read it from memory: graph
inputs, outputs and constants, anything read by an op that cannot compute it inline (a GEMM's
operands, attention's q/k/v), anything several kernels would otherwise recompute, and anything
crossing the border of a fused group. Every other value produced by an elementwise or index op is
computed inline by the kernel that reads it (see exprgen.py).

A kernel is rooted at a materialized value. A GEMM, conv, norm or softmax ("core") whose output is
read only by same-shaped elementwise ops is absorbed into the kernel of those ops as its epilogue;
a norm / softmax also pulls its input's inline chain in as its prologue, and stores a prologue value
that others need (the residual sum before an RMSNorm) on the way. Generation may still find an
index it cannot produce inline; the value is then materialized and the plan is redone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qjc.backends.cuda.cexpr import SymbolTable, itemsize, product
from qjc.backends.cuda.exprgen import ALIAS_OPS, ELEMENTWISE_OPS, GENERATOR_OPS, NotFusable
from qjc.backends.cuda.kernels.attention import attention_kernel
from qjc.backends.cuda.kernels.base import KernelSource
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.backends.cuda.kernels.conv import conv2d_kernel
from qjc.backends.cuda.kernels.elementwise import elementwise_kernel
from qjc.backends.cuda.kernels.gemm import gemm_kernel
from qjc.backends.cuda.kernels.paged import paged_attention_kernel, paged_kv_write_kernel
from qjc.backends.cuda.kernels.pool import pool2d_kernel
from qjc.backends.cuda.kernels.quant_weights import quant_parts
from qjc.backends.cuda.kernels.row_reduce import NORMS, ROW_CORES, SOFTMAXES, row_reduce_kernel
from qjc.backends.cuda.kernels.scan import cumsum_kernel
from qjc.backends.cuda.prepare import Prepared
from qjc.errors import BackendError, UnsupportedOpsError
from qjc.ir.dims import Dim, contiguous_strides
from qjc.ir.graph import Graph, Node, Value

GEMM_CORES = frozenset({"linear", "matmul"})
# elementwise ops that scale their operand (chain(c * x) = c * chain(x)): what may sit between a GEMM's
# RMSNorm prologue and its A operand
SCALING_OPS = frozenset({"cast", "mul", "div", "neg"})
NORM_PROLOGUE_MAX_K = 1024  # widest row a GEMM normalizes itself (see Planner.norm_prologue)
# fused kinds made of elementwise ops only: their borders are no barrier to fusing further
SOFT_KINDS = frozenset({"elementwise", "rope", "swiglu", "geglu"})
EPILOGUE_CORES = GEMM_CORES | frozenset(NORMS) | frozenset(SOFTMAXES) | {"conv2d"}
STANDALONE = {"sdpa": attention_kernel, "max_pool2d": pool2d_kernel, "avg_pool2d": pool2d_kernel,
              "cumsum": cumsum_kernel}
# ops whose output is their first input updated in place (the buffer is shared)
IN_PLACE_OPS = frozenset({"paged_kv_write"})
# inputs read through strided views (transposes / reshapes of a buffer), and whether the output may
# be written through one, per op
VIEWED_INPUTS = {"sdpa": (0, 1, 2)}
VIEWED_OUTPUT = frozenset({"sdpa", "paged_attention"})
# the input (by position) an op's kernel computes inline, element by element, from whatever buffer
# it derives from: the paged kernels apply RoPE / head splits of the QKV GEMM's output as they load
INLINE_INPUT = {"paged_kv_write": 3, "paged_attention": 0}
SUPPORTED_OPS = (GENERATOR_OPS | ROW_CORES | GEMM_CORES | {"conv2d", "paged_attention"} | frozenset(STANDALONE)
                 | IN_PLACE_OPS)
ALIGN = 256  # bytes; every buffer starts on this boundary (16-byte vector access, cp.async)


@dataclass
class KernelPlan:
    root: Value
    core: Node | None = None
    co_outputs: list[Value] = field(default_factory=list)  # prologue values also stored (row cores)
    extra_outputs: list[Value] = field(default_factory=list)  # more epilogue results stored
    inline: set[int] = field(default_factory=set)  # ids of values computed inside
    reads: set[int] = field(default_factory=set)  # ids of materialized values it loads
    partners: list[Node] = field(default_factory=list)  # more nodes of the core's op done by the same kernel
    prologue: Node | None = None  # an RMSNorm a GEMM core applies to its A operand as it loads it


@dataclass
class Buffer:
    id: int
    name: str
    dtype: str
    shape: tuple[Dim, ...]
    kind: str  # input | weight | temp | workspace | state (engine-owned, persistent: a KV pool)
    first: int = 0  # first step that writes it (inputs: 0)
    last: int = 0  # last step that reads it

    def numel(self) -> Dim:
        return product(self.shape)


@dataclass
class Step:
    kernel: str  # launcher name
    operands: list[int]  # buffer ids, in the launcher's order (then workspaces)
    label: str


@dataclass
class Program:
    graph: Graph
    syms: SymbolTable
    buffers: list[Buffer]
    steps: list[Step]
    kernels: dict[str, KernelSource]
    inputs: list[int]  # buffer id per graph input
    outputs: list[int]  # buffer id per graph output
    weights: list[tuple[str, int, str, str]]  # (name, buffer id, stored dtype, engine dtype)
    notes: list[str]

    def kernel_kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kernels.values():
            out[k.kind] = out.get(k.kind, 0) + 1
        return out


class Planner:
    def __init__(self, prepared: Prepared, local_fusion: bool, norm_prologue: bool = True,
                 blaslt: bool = False) -> None:
        self.p = prepared
        self.blaslt = blaslt
        self.g = prepared.graph
        self.local_fusion = local_fusion
        self.use_norm_prologue = norm_prologue
        self.syms = SymbolTable(self.g.symbols)
        self.ranges = {n: (r.lo, r.hi) for n, r in self.g.symbols.items()}
        self.users: dict[int, list[Node]] = {}
        for node in self.g.nodes:
            for v in node.inputs:
                self.users.setdefault(id(v), []).append(node)
        self.output_ids = {id(v) for v in self.g.outputs}
        self.position = {id(n): i for i, n in enumerate(self.g.nodes)}
        # quantized linear weights: their parts (codes, scales, zeros) become the device buffers
        self.quant_parts = {id(c.value): quant_parts(c.value) for c in self.g.constants.values()
                            if c.value.type.dtype.is_quant and c.value.type.rank == 2}
        self.forced: set[int] = set()  # values materialized after a failed generation
        self.no_merge: set[int] = set()  # kernel roots kept out of another kernel's epilogue
        self.attention_views()

    # ---- checks --------------------------------------------------------------------------------
    def check_supported(self) -> None:
        bad: dict[str, list[str]] = {}
        for node in self.g.nodes:
            why = ""
            if node.op not in SUPPORTED_OPS:
                why = "no CUDA lowering"
            else:
                for k, v in enumerate(node.inputs + node.outputs):
                    weight_ok = node.op == "linear" and k == 1 and id(v) in self.quant_parts
                    if (v.type.dtype.is_quant and not weight_ok) or v.type.dtype.name == "f8e4m3":
                        why = f"dtype {v.type.dtype} is not supported here (quantized only as linear weights)"
                if node.op in IN_PLACE_OPS and not self._updatable(node.inputs[0], node):
                    why = f"it writes %{node.inputs[0].name} in place, which something else also reads"
            if why:
                bad.setdefault(node.op, []).append(f"{node.label} ({why})")
        if bad:
            raise UnsupportedOpsError(f"target cuda (graph {self.g.name})", bad)

    def _only_reader(self, v: Value, node: Node) -> bool:
        """Whether ``node`` is the one op that reads ``v`` (graph outputs aside)."""
        users = self.users.get(id(v), [])
        return len(users) == 1 and users[0] is node

    def _updatable(self, v: Value, writer: Node) -> bool:
        """Whether ``writer`` may overwrite ``v``'s buffer: nothing else reads ``v``."""
        return self._only_reader(v, writer) and id(v) not in self.output_ids

    # ---- attention through views -----------------------------------------------------------------
    def attention_views(self) -> None:
        """q / k / v that are transposes / reshapes of another buffer are read through strides, and
        an output whose only use is such a chain is written straight into the chain's result."""
        self.in_views: dict[int, dict[int, tuple[Value, list[Dim]]]] = {}
        self.out_views: dict[int, tuple[Value, list[Dim]]] = {}
        self.out_view_nodes: dict[int, Node] = {}  # id(final value) -> the sdpa node writing it
        self.view_values: set[int] = set()  # values that exist only as views: never computed
        self.view_bases: set[int] = set()
        for node in self.g.nodes:
            if node.op not in VIEWED_INPUTS and node.op not in VIEWED_OUTPUT:
                continue
            for i in VIEWED_INPUTS.get(node.op, ()):
                chain, u = [], node.inputs[i]
                while (u.producer is not None and u.producer.op in VIEW_OPS and id(u) not in self.output_ids
                       and len(self.users.get(id(u), [])) == 1 and self._may_view(u.producer, node)):
                    chain.append(u.producer)
                    u = u.producer.inputs[0]
                if not chain or any(c.inputs[0] in node.inputs for c in chain):
                    continue
                strides: list[Dim] | None = contiguous_strides(u.type.shape)
                for n in reversed(chain):
                    strides = view_forward(n, strides) if strides is not None else None
                if strides is None or strides[-1] != 1:
                    continue
                self.in_views.setdefault(id(node), {})[i] = (u, strides)
                self.view_values |= {id(n.outputs[0]) for n in chain}
                self.view_bases.add(id(u))
            if node.op not in VIEWED_OUTPUT:
                continue
            chain, u = [], node.outputs[0]
            while (id(u) not in self.output_ids and len(self.users.get(id(u), [])) == 1
                   and self.users[id(u)][0].op in VIEW_OPS and self._may_view(self.users[id(u)][0], node)):
                n = self.users[id(u)][0]
                chain.append(n)
                u = n.outputs[0]
            if not chain:
                continue
            strides = contiguous_strides(u.type.shape)
            for n in reversed(chain):
                strides = view_backward(n, strides) if strides is not None else None
            if strides is None or strides[-1] != 1:
                continue
            self.out_views[id(node)] = (u, strides)
            self.out_view_nodes[id(u)] = node
            self.view_values |= {id(node.outputs[0])} | {id(n.outputs[0]) for n in chain[:-1]}

    def _may_view(self, layout_node: Node, sdpa: Node) -> bool:
        return self.local_fusion or self.region(layout_node) == self.region(sdpa)

    # ---- materialization -----------------------------------------------------------------------
    def region(self, node: Node | None) -> int | None:
        if node is None:
            return None
        r = self.p.regions.get(id(node))
        return r[0] if r else None

    def fusing(self, node: Node) -> bool:
        return self.local_fusion or self.region(node) is not None

    def soft(self, node: Node | None) -> bool:
        """Nodes outside fused groups, or in purely elementwise ones: with local fusion on, their
        values may be computed inside a neighbouring kernel (two elementwise groups, or an
        elementwise group and a GEMM epilogue, become one kernel)."""
        r = self.p.regions.get(id(node)) if node is not None else None
        return r is None or r[1] in SOFT_KINDS

    def joins(self, producer: Node, consumer: Node) -> bool:
        if self.region(producer) == self.region(consumer):
            return self.fusing(producer)
        return self.local_fusion and self.soft(producer)

    def _accepts_inline(self, consumer: Node, v: Value, producer: Node) -> bool:
        if consumer.op == "linear" and consumer.inputs[0] is v:
            return self.norm_prologue(consumer) is not None
        if consumer.op in INLINE_INPUT:
            k = INLINE_INPUT[consumer.op]
            return consumer.inputs[k] is v and v not in consumer.inputs[:k] + consumer.inputs[k + 1:]
        if consumer.op in VIEW_OPS and self._feeds_inline_inputs(consumer.outputs[0]):
            return True  # a head split on its way into a paged kernel, which computes it as it loads
        if not self.joins(producer, consumer):
            return False
        if consumer.op in GENERATOR_OPS:
            return True
        return consumer.op in ROW_CORES and consumer.inputs[0] is v and v not in consumer.inputs[1:]

    def _feeds_inline_inputs(self, v: Value) -> bool:
        """Whether ``v`` reaches only paged kernels' inline inputs, through layout ops."""
        if id(v) in self.output_ids:
            return False
        users = self.users.get(id(v), [])
        return bool(users) and all(
            (u.op in INLINE_INPUT and u.inputs[INLINE_INPUT[u.op]] is v)
            or (u.op in VIEW_OPS and self._feeds_inline_inputs(u.outputs[0])) for u in users)

    def norm_prologue(self, linear: Node) -> Node | None:
        """The RMSNorm over the last axis whose result reaches ``linear``'s A operand only through
        same-shaped elementwise ops (casts, the norm weight's product) used nowhere else: the GEMM
        kernel then normalizes A as it loads it, and the norm needs no kernel of its own. Decode
        steps read a 576-2048 wide row. The chain may only scale (casts between floats, products and
        quotients by other values), so A = 1/rms(row) * chain(x): a GEMV sums the row's squares in its
        main loop and scales its dot products at the end, with no pass over the row first.

        Only for K <= NORM_PROLOGUE_MAX_K: measured on an H200 (bf16 decode, batch 1), it made
        SmolLM2-135M faster (K = 576: 60 norm kernels fewer per step) and Llama-3.2-1B slower (K = 2048:
        1620 against 1435 us per step, the GEMVs paying more than the norm kernels cost)."""
        a = linear.inputs[0]
        k = a.type.shape[-1] if a.type.rank else None
        if (not self.local_fusion or not self.use_norm_prologue or a in linear.inputs[1:]
                or not isinstance(k, int) or k > NORM_PROLOGUE_MAX_K
                or a.type.dtype.name not in ("f32", "f16", "bf16")):
            return None
        shape = tuple(a.type.shape)
        v, consumer = a, linear
        while True:
            if id(v) in self.output_ids or id(v) in self.forced or len(self.users.get(id(v), [])) != 1:
                return None
            node = v.producer
            if node is None or not self.fusing(node):
                return None
            # every link must be computed inside the GEMM's kernel, else A would get no buffer and no writer
            if consumer is not linear and not self._computed_inline(node, consumer):
                return None
            if node.op == "rms_norm":
                rank = len(shape)
                return node if rank and node.attrs["axis"] % rank == rank - 1 else None
            if node.op not in SCALING_OPS or tuple(node.outputs[0].type.shape) != shape:
                return None
            same = [u for u in node.inputs if tuple(u.type.shape) == shape]
            if len(same) != 1 or (node.op == "div" and node.inputs[0] is not same[0]):
                return None
            # the GEMV rounds casts of x * weight before it scales by 1/rms: only casts to types with
            # f32's range (an unnormalized row may overflow f16)
            if node.op == "cast" and node.outputs[0].type.dtype.name not in ("f32", "bf16", "f64"):
                return None
            consumer, v = node, same[0]

    def _computed_inline(self, producer: Node, consumer: Node) -> bool:
        """Whether the planner computes ``producer``'s result inside ``consumer``'s kernel: a norm as the
        core of the elementwise ops after it (as ``_absorbable`` decides), anything else as ``joins``."""
        if producer.op == "rms_norm":
            return self._epilogue_of(consumer, producer)
        return self.joins(producer, consumer)

    def _epilogue_of(self, user: Node, core: Node) -> bool:
        """Whether ``user`` may run inside ``core``'s kernel, after it: same fused region, or a soft boundary
        that local fusion crosses."""
        return self.region(user) == self.region(core) or (self.local_fusion and self.soft(user))

    def _absorbable(self, core: Node) -> bool:
        if core.op not in EPILOGUE_CORES or not self.fusing(core):
            return False
        o = core.outputs[0]
        if id(o) in self.output_ids or id(o) in self.forced:
            return False
        users = self.users.get(id(o), [])
        if core.op == "rms_norm" and len(users) == 1 and users[0].op == "linear" and users[0].inputs[0] is o:
            return self.norm_prologue(users[0]) is core
        return bool(users) and all(
            u.op in ELEMENTWISE_OPS and self._epilogue_of(u, core)
            and tuple(u.outputs[0].type.shape) == tuple(o.type.shape) for u in users)

    def materialization(self) -> tuple[set[int], set[int]]:
        """(ids of materialized values, ids of absorbed core outputs)."""
        mat: set[int] = {id(v) for v in self.g.inputs} | self.output_ids | set(self.forced)
        mat |= {id(c.value) for c in self.g.constants.values()}
        mat |= self.view_bases | set(self.out_view_nodes)
        absorbed: set[int] = set()
        for node in self.g.nodes:
            for v in node.outputs:
                if id(v) in self.view_values:
                    continue
                if node.op not in GENERATOR_OPS:
                    if self._absorbable(node):
                        absorbed.add(id(v))
                    else:
                        mat.add(id(v))
                    continue
                users = self.users.get(id(v), [])
                if not users or not all(self._accepts_inline(u, v, node) for u in users):
                    mat.add(id(v))
        return mat, absorbed

    # ---- kernels -------------------------------------------------------------------------------
    def alias_source(self, v: Value, mat: set[int]) -> Value | None:
        """The materialized value whose buffer ``v`` shares: ``v`` is a zero-copy view of it, or its
        update in place (a KV-pool write)."""
        node = v.producer
        if node is not None and node.op in ALIAS_OPS | IN_PLACE_OPS and id(node.inputs[0]) in mat:
            src = node.inputs[0]
            return self.alias_source(src, mat) or src
        return None

    def form_kernels(self, mat: set[int], absorbed: set[int]) -> tuple[list[KernelPlan], set[int]]:
        """Kernel plans, and ids of values that must also be materialized (conflicts)."""
        plans: list[KernelPlan] = []
        owner: dict[int, int] = {}
        conflicts: set[int] = set()

        def walk(v: Value, k: int, plan: KernelPlan) -> None:
            node = v.producer
            if node is None:
                return
            if node.op in GENERATOR_OPS:
                sources = node.inputs
            elif node.op in ROW_CORES:
                sources = node.inputs[:1]
            elif node.op in INLINE_INPUT:
                sources = [node.inputs[INLINE_INPUT[node.op]]]
            elif node.op == "linear" and self.norm_prologue(node) is not None:
                sources = node.inputs[:1]
            else:
                sources = []
            for u in sources:
                if id(u) in mat:
                    plan.reads.add(id(u))
                    continue
                if id(u) in absorbed:
                    if plan.core is None or plan.core is u.producer:
                        plan.core = u.producer
                    elif plan.core.op == "linear" and self.norm_prologue(plan.core) is u.producer:
                        plan.prologue = u.producer
                    else:
                        conflicts.add(id(u))
                        continue
                elif u.producer is None or u.producer.op not in GENERATOR_OPS:
                    conflicts.add(id(u))
                    continue
                if owner.setdefault(id(u), k) != k:
                    conflicts.add(id(u))
                    continue
                if id(u) in plan.inline:
                    continue
                plan.inline.add(id(u))
                walk(u, k, plan)

        for node in self.g.nodes:
            for v in node.outputs:
                if id(v) in self.out_view_nodes:  # written by its attention kernel, through strides
                    plans.append(KernelPlan(v, core=self.out_view_nodes[id(v)]))
                    continue
                if id(v) not in mat or v.producer is None:
                    continue
                if node.op not in IN_PLACE_OPS and self.alias_source(v, mat) is not None:
                    continue
                plan = KernelPlan(v, core=None if node.op in GENERATOR_OPS else node)
                plans.append(plan)
                walk(v, len(plans) - 1, plan)
        return plans, conflicts

    def co_produce(self, plans: list[KernelPlan], mat: set[int]) -> list[KernelPlan]:
        """Merge a pure elementwise kernel into the row-reduction kernel that reads its output as
        its input (the residual add before a norm): one pass instead of a write and a re-read."""
        by_root = {id(p.root): p for p in plans}
        removed: set[int] = set()
        for plan in plans:
            core = plan.core
            if core is None or core.op not in ROW_CORES or not self.fusing(core):
                continue
            x = core.inputs[0]
            src = by_root.get(id(x))
            if src is None or src.core is not None or id(src.root) in removed or src is plan:
                continue
            if self.region(x.producer) != self.region(core) or x in core.inputs[1:]:
                continue
            plan.co_outputs.append(x)
            removed.add(id(src.root))
        return [p for p in plans if id(p.root) not in removed]

    def pair_cache_writes(self, plans: list[KernelPlan]) -> list[KernelPlan]:
        """A layer's K and V cache writes (same block table, positions and pool type) as one kernel:
        one launch instead of two on every decode step."""
        first: dict[tuple, KernelPlan] = {}
        removed: set[int] = set()
        for plan in plans:
            core = plan.core
            if core is None or core.op != "paged_kv_write":
                continue
            pool, table, positions, new = core.inputs
            key = (id(table), id(positions), core.attrs["layout"], pool.type, new.type)
            host = first.pop(key, None)
            if host is None:
                first[key] = plan
                continue
            host.partners.append(core)
            removed.add(id(plan.root))
        return [p for p in plans if id(p.root) not in removed]

    def fuse_cache_writes(self, plans: list[KernelPlan]) -> list[KernelPlan]:
        """A layer's K and V cache write (one kernel after pair_cache_writes) moves into the paged attention
        that reads those pools: on a decode step (one query per row) the CTA whose key slice holds the new
        position writes it and uses it; longer steps run the write kernel first from the same launcher. One
        launch less per layer and step."""
        if not self.local_fusion:
            return plans
        writes = {id(n.outputs[0]): plan for plan in plans if plan.core is not None
                  and plan.core.op == "paged_kv_write" for n in (plan.core, *plan.partners)}
        removed: set[int] = set()
        for plan in plans:
            core = plan.core
            if core is None or core.op != "paged_attention":
                continue
            _, k_pool, v_pool, table, positions = core.inputs
            host = writes.get(id(k_pool))
            if host is None or writes.get(id(v_pool)) is not host or id(host.root) in removed:
                continue
            nodes = {id(n.outputs[0]): n for n in (host.core, *host.partners)}
            if set(nodes) != {id(k_pool), id(v_pool)} or not all(
                    n.inputs[1] is table and n.inputs[2] is positions and self._only_reader(n.outputs[0], core)
                    and n.attrs["layout"] == core.attrs["layout"]  # the attention's pool strides serve the write
                    for n in nodes.values()):
                continue
            plan.partners = [nodes[id(k_pool)], nodes[id(v_pool)]]
            removed.add(id(host.root))
        return [p for p in plans if id(p.root) not in removed]

    def merge_epilogues(self, plans: list[KernelPlan]) -> list[KernelPlan]:
        """A pure elementwise kernel that reads the stored result of a GEMM / conv / norm kernel,
        element for element, becomes more outputs of that kernel's epilogue (a residual kept in
        bf16 and f32, say)."""
        by_root = {id(p.root): p for p in plans}
        removed: set[int] = set()
        for plan in plans:
            if plan.core is not None or id(plan.root) in self.no_merge:
                continue
            for rid in plan.reads:
                host = by_root.get(rid)
                if (host is None or host.core is None or host.core.op not in EPILOGUE_CORES or id(host.root) in removed
                        or tuple(host.root.type.shape) != tuple(plan.root.type.shape)):
                    continue
                same = self.region(plan.root.producer)
                if not (self.local_fusion or (same is not None and same == self.region(host.root.producer))):
                    continue
                host.extra_outputs.append(plan.root)
                removed.add(id(plan.root))
                break
        return [p for p in plans if id(p.root) not in removed]

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, plan: KernelPlan, ctx: KernelContext) -> KernelSource:
        core = plan.core
        if core is None:
            return elementwise_kernel(ctx, [plan.root])
        outputs = [plan.root, *plan.extra_outputs]
        if core.op in ROW_CORES:
            return row_reduce_kernel(ctx, core, outputs, plan.co_outputs)
        if core.op in GEMM_CORES:
            return gemm_kernel(ctx, core, outputs, plan.prologue)
        if core.op == "conv2d":
            return conv2d_kernel(ctx, core, outputs)
        if core.op == "sdpa":
            return attention_kernel(ctx, core, self.in_views.get(id(core)), self.out_views.get(id(core)))
        if core.op == "paged_attention":
            return paged_attention_kernel(ctx, core, self.out_views.get(id(core)), plan.partners)
        if core.op == "paged_kv_write":
            return paged_kv_write_kernel(ctx, [core, *plan.partners])
        if core.op in STANDALONE:
            return STANDALONE[core.op](ctx, core)
        raise BackendError(f"no CUDA kernel for {core.label}")

    def plan(self) -> Program:
        self.check_supported()
        for _ in range(10_000):
            mat, absorbed = self.materialization()
            plans, conflicts = self.form_kernels(mat, absorbed)
            if conflicts:
                self.forced |= conflicts
                continue
            plans = self.fuse_cache_writes(self.pair_cache_writes(self.merge_epilogues(self.co_produce(plans, mat))))
            ctx = KernelContext(self.syms, self.ranges, lambda v, mat=mat: id(v) in mat, self.quant_parts,
                                self.blaslt)
            try:
                sources = []
                for p in plans:
                    try:
                        sources.append(self.generate(p, ctx).finalize())
                    except NotFusable:
                        if not p.extra_outputs:
                            raise
                        # an epilogue output reads the core's result at another index: keep it apart
                        self.no_merge |= {id(v) for v in p.extra_outputs}
                        raise _Retry() from None
            except _Retry:
                continue
            except NotFusable as e:
                if id(e.value) in self.forced or id(e.value) in mat:
                    raise BackendError(f"cuda lowering: cannot produce {e}") from None
                self.forced.add(id(e.value))
                continue
            order = self.schedule(plans, sources, mat)
            if order is None:
                # a co-produced value or a merged epilogue made a cycle (the merged kernel also reads a
                # value computed from the host's result): plan without them
                # co-products first (those not yet forced apart); merged epilogues go only if the plan still
                # has a cycle without them
                co = {id(v) for p in plans for v in p.co_outputs} - self.forced
                merged = {id(v) for p in plans for v in p.extra_outputs} - self.no_merge
                if co:
                    self.forced |= co
                elif merged:
                    self.no_merge |= merged
                else:
                    raise BackendError("cuda lowering: the kernels depend on each other in a cycle")
                continue
            return self.build_program(mat, [plans[i] for i in order], [sources[i] for i in order])
        raise BackendError("cuda lowering did not converge")  # pragma: no cover

    # ---- ordering ------------------------------------------------------------------------------
    def schedule(self, plans: list[KernelPlan], sources: list[KernelSource], mat: set[int]) -> list[int] | None:
        writer: dict[int, int] = {}
        for i, src in enumerate(sources):
            for v in src.writes:
                writer[id(v)] = i
        deps: list[set[int]] = []
        for i, src in enumerate(sources):
            d = set()
            for v in src.operands:
                if v in src.writes:
                    continue
                # the kernel that wrote this value, else the one that wrote the buffer it views
                w = writer.get(id(v))
                if w is None:
                    w = writer.get(id(self.alias_source(v, mat) or v))
                if w is not None and w != i:
                    d.add(w)
            deps.append(d)
        key = [self.position.get(id(p.root.producer), 0) for p in plans]
        import heapq

        remaining = [len(d) for d in deps]
        users: dict[int, list[int]] = {}
        for i, d in enumerate(deps):
            for j in d:
                users.setdefault(j, []).append(i)
        ready = [(key[i], i) for i in range(len(plans)) if remaining[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            _, i = heapq.heappop(ready)
            order.append(i)
            for j in users.get(i, []):
                remaining[j] -= 1
                if remaining[j] == 0:
                    heapq.heappush(ready, (key[j], j))
        return order if len(order) == len(plans) else None

    # ---- buffers -------------------------------------------------------------------------------
    def build_program(self, mat: set[int], plans: list[KernelPlan], sources: list[KernelSource]) -> Program:
        buffers: list[Buffer] = []
        buf_of: dict[int, int] = {}

        def add(v: Value, kind: str) -> int:
            b = Buffer(len(buffers), v.name, v.type.dtype.name, tuple(v.type.shape), kind)
            buffers.append(b)
            buf_of[id(v)] = b.id
            return b.id

        state = set(self.g.state)
        inputs = [add(v, "state" if v.name in state else "input") for v in self.g.inputs]
        weights = []
        for name, c in sorted(self.g.constants.items()):
            if id(c.value) in buf_of:
                continue
            parts = self.quant_parts.get(id(c.value))
            if parts is not None:  # one weight buffer per stored part; the value maps to its codes
                for part in parts.values():
                    bid = add(part, "weight")
                    weights.append((part.name, bid, part.type.dtype.name, part.type.dtype.name))
                buf_of[id(c.value)] = buf_of[id(parts.data)]
                continue
            bid = add(c.value, "weight")
            weights.append((name, bid, self.p.stored_dtypes.get(name, c.value.type.dtype.name),
                            c.value.type.dtype.name))

        def buffer_of(v: Value) -> int:
            if id(v) in buf_of:
                return buf_of[id(v)]
            src = self.alias_source(v, mat)
            if src is not None:
                bid = buffer_of(src)
                buf_of[id(v)] = bid
                return bid
            return add(v, "temp")

        steps: list[Step] = []
        kernels: dict[str, KernelSource] = {}
        for i, (plan, src) in enumerate(zip(plans, sources)):
            operands = [buffer_of(v) for v in src.operands]
            for w in src.writes:
                b = buffers[buffer_of(w)]
                if b.kind == "temp" and b.first == 0 and b.last == 0:
                    b.first = i
            for ws in src.workspaces:
                kind = "state" if ws.persistent else "workspace"  # state: zeroed once, outside the arena
                b = Buffer(len(buffers), f"workspace{i}", ws.dtype.name, (ws.numel,), kind, i, i)
                buffers.append(b)
                operands.append(b.id)
            for bid in operands:
                buffers[bid].last = max(buffers[bid].last, i)
            steps.append(Step(src.name, operands, plan.root.name))
            kernels.setdefault(src.name, src)
        outputs = [buffer_of(v) for v in self.g.outputs]
        for bid in outputs:
            buffers[bid].last = len(steps)
        if self.g.state:
            # a stateful engine (a decoder) keeps its inputs intact through the forward: its
            # generation loop updates tokens and positions in place for the next step
            for bid in inputs:
                buffers[bid].last = len(steps)
        for b in buffers:
            if b.kind == "input":
                b.first = 0
        notes = list(self.p.notes)
        if self.forced:
            notes.append(f"{len(self.forced)} value(s) materialized after fusion conflicts")
        return Program(self.g, self.syms, buffers, steps, kernels, inputs, outputs, weights, notes)


# ---- strided views through layout ops ----------------------------------------------------------------

VIEW_OPS = frozenset({"transpose", "reshape", "squeeze", "unsqueeze", "flatten", "identity"})



def _is_contiguous(shape, strides) -> bool:
    return all(d == 1 or s == c for d, s, c in zip(shape, strides, contiguous_strides(shape)))


def view_forward(node: Node, strides: list[Dim]) -> list[Dim] | None:
    """Strides of ``node``'s output given its input's, or None if it is no longer a strided view."""
    in_shape, out_shape = node.inputs[0].type.shape, node.outputs[0].type.shape
    if node.op == "identity":
        return list(strides)
    if node.op == "transpose":
        perm = node.attrs["perm"] or tuple(reversed(range(len(in_shape))))
        return [strides[p] for p in perm]
    if node.op in ("squeeze", "unsqueeze", "reshape", "flatten"):
        if not _is_contiguous(in_shape, strides):
            kept = [s for d, s in zip(in_shape, strides) if d != 1]
            if node.op == "squeeze" or (node.op == "unsqueeze"):
                out, it = [], iter(kept)
                for d in out_shape:
                    out.append(0 if d == 1 else next(it))
                return out
            return None
        return contiguous_strides(out_shape)
    return None


def view_backward(node: Node, strides: list[Dim]) -> list[Dim] | None:
    """Strides of ``node``'s input given where its output lives (the inverse of view_forward)."""
    in_shape, out_shape = node.inputs[0].type.shape, node.outputs[0].type.shape
    if node.op == "identity":
        return list(strides)
    if node.op == "transpose":
        perm = node.attrs["perm"] or tuple(reversed(range(len(in_shape))))
        out: list[Dim] = [0] * len(perm)
        for k, p in enumerate(perm):
            out[p] = strides[k]
        return out
    if node.op in ("squeeze", "unsqueeze", "reshape", "flatten") and _is_contiguous(out_shape, strides):
        return contiguous_strides(in_shape)
    return None


class _Retry(Exception):
    """Plan again with what the last attempt learned."""


def plan_program(prepared: Prepared, local_fusion: bool = True, norm_prologue: bool = True,
                 blaslt: bool = False) -> Program:
    """``blaslt``: large-M GEMMs try cuBLASLt first (kernels/gemm.py)."""
    return Planner(prepared, local_fusion, norm_prologue, blaslt).plan()


# ---- arena layout (mirrored by the host engine's planner) ------------------------------------------


def arena_layout(buffers: list[Buffer], sizes: dict[int, int]) -> tuple[dict[int, int], int]:
    """Offsets of the arena buffers (inputs, temps, workspaces) and the arena size: greedy by
    decreasing size, each placed at the lowest aligned offset that no buffer alive at the same time
    overlaps. The C++ engine runs the same algorithm per input shape."""
    arena = [b for b in buffers if b.kind not in ("weight", "state")]
    order = sorted(arena, key=lambda b: (-sizes[b.id], b.id))
    placed: list[tuple[int, int, Buffer]] = []
    offsets: dict[int, int] = {}
    top = 0
    for b in order:
        size = _aligned(sizes[b.id])
        busy = sorted((o, o + s) for o, s, other in placed if not (other.last < b.first or b.last < other.first))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[b.id] = offset
        placed.append((offset, size, b))
        top = max(top, offset + size)
    return offsets, top


def _aligned(n: int) -> int:
    return max(ALIGN, (n + ALIGN - 1) // ALIGN * ALIGN)


def buffer_bytes(b: Buffer, env: dict[str, int]) -> int:
    from qjc.ir.dtypes import parse_dtype

    n = b.numel()
    count = n if isinstance(n, int) else n.evaluate(env)
    return count * itemsize(parse_dtype(b.dtype))


def peak_arena_bytes(program: Program) -> int:
    """The arena size at the top of every symbol's range (what the manifest reports)."""
    env = {name: hi for name, (_, hi) in ((n, (r.lo, r.hi)) for n, r in program.graph.symbols.items())}
    sizes = {b.id: buffer_bytes(b, env) for b in program.buffers}
    return arena_layout(program.buffers, sizes)[1]


__all__ = ["Program", "plan_program", "arena_layout", "peak_arena_bytes"]
