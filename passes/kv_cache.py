"""KV-cache layout: a decoder's static per-sequence cache becomes a paged cache owned by the runtime.

What the LLM frontend's torch.export gives (one layer; ``input_pos [seq]`` shared by the batch):

    k_cache' = index_copy(k_cache, input_pos, k) {axis=2}     # state [B, kv_heads, max_seq, D]
    o        = sdpa(q, k_cache', v_cache', mask)              # mask[i, j] = (j <= input_pos[i])

becomes

    k_pool'  = paged_kv_write(k_pool, block_table, positions, k)  # state [blocks, ...] (layout)
    o        = paged_attention(q, k_pool', v_pool', block_table, positions)

with new graph inputs ``positions: i64[B, seq]`` (per sequence, < 0 = padding) and ``block_table:
i32[B, max_blocks]``. Sequences of different lengths then share one pool, and the runtime decides
which blocks each one owns. The rewritten graph computes the same as the original whenever every
row of ``positions`` equals the old ``input_pos`` and each sequence's blocks are its own.

``input_pos`` may feed only the cache writes, the causal mask and the rotary embedding's
``unsqueeze -> expand`` to [B, seq]; anything else is reported, naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.dtypes import parse_dtype
from qjc.ir.graph import Node, Value
from qjc.ir.ops.paged import LAYOUTS
from qjc.ir.types import TensorType
from qjc.passes.manager import PassContext


@dataclass(frozen=True)
class PagedLayout:
    block_size: int = 16
    num_blocks: int | None = None  # None: every batch row can reach max_seq
    order: str = "bhsd"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise QJCError(f"kv_cache: block size must be a power of two, got {self.block_size}")
        if self.order not in LAYOUTS:
            raise QJCError(f"kv_cache: layout must be one of {', '.join(LAYOUTS)}, got {self.order!r}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise QJCError(f"kv_cache: the pool needs at least one block, got {self.num_blocks}")


def layout_from(ctx: PassContext) -> PagedLayout | None:
    """The paged layout to use, or None when the target keeps the contiguous cache. A backend
    asks for paging with ``Capabilities.layouts["kv_cache"] = "paged:<order>"``."""
    caps = ctx.capabilities
    want = (caps.layout("kv_cache") if caps is not None else None) or "contiguous"
    if not want.startswith("paged"):
        return None
    order = want.split(":", 1)[1] if ":" in want else "bhsd"
    return PagedLayout(int(ctx.options.get("kv_block_size") or 16), ctx.options.get("kv_blocks"), order)


class PagedKVCache:
    name = "kv_cache"

    def __init__(self, layout: PagedLayout | None = None) -> None:
        self.layout = layout  # None: decided by the context (backend preference + options)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        layout = self.layout or layout_from(ctx)
        if layout is None or not graph.state:
            return graph
        rewriter = _Rewriter(graph, layout)
        layers = rewriter.rewrite()
        if layers:
            ctx.note(self.name, f"{layers} attention layer(s) on a paged cache: {rewriter.num_blocks} blocks of "
                                f"{layout.block_size} ({layout.order}), {rewriter.max_blocks} per sequence")
        return graph


class _Rewriter:
    def __init__(self, graph: Graph, layout: PagedLayout) -> None:
        self.g = graph
        self.layout = layout
        self.users = graph.users()
        self.state = {v.name: v for v in graph.inputs if v.name in set(graph.state)}

    def fail(self, message: str) -> QJCError:
        return QJCError(f"kv_cache: graph {self.g.name}: {message}")

    def rewrite(self) -> int:
        pairs = self.attention_pairs()
        if not pairs:
            return 0
        layers = self.by_sdpa(pairs)
        input_pos = self.shared_positions(pairs, layers)
        batch = pairs[0][1].inputs[0].type.shape[0]
        cache_t = pairs[0][1].inputs[0].type
        max_seq = cache_t.shape[2]
        if not all(isinstance(d, int) for d in (batch, max_seq)):
            raise self.fail(f"the cache {cache_t} needs static batch and length to be paged")
        bs = self.layout.block_size
        self.max_blocks = math.ceil(max_seq / bs)
        self.num_blocks = self.layout.num_blocks or batch * self.max_blocks
        seq = input_pos.type.shape[0]
        positions = self.g.add_input("positions", TensorType((batch, seq), parse_dtype("i64")))
        table = self.g.add_input("block_table", TensorType((batch, self.max_blocks), parse_dtype("i32")))
        self.replace_position_uses(input_pos, positions, pairs)
        renamed: dict[str, Value] = {}
        for sdpa, k_write, v_write in layers:
            k_pool = self.pool_for(k_write, renamed)
            v_pool = self.pool_for(v_write, renamed)
            new_k = self.g.op("paged_kv_write", k_pool, table, positions, k_write.inputs[2], layout=self.layout.order)
            new_v = self.g.op("paged_kv_write", v_pool, table, positions, v_write.inputs[2], layout=self.layout.order)
            out = self.g.op("paged_attention", sdpa.inputs[0], new_k, new_v, table, positions,
                            layout=self.layout.order, scale=sdpa.attrs.get("scale"))
            self.g.replace_uses(sdpa.outputs[0], out)
            self.g.replace_uses(k_write.outputs[0], new_k)
            self.g.replace_uses(v_write.outputs[0], new_v)
        self.finish(input_pos, positions, table, renamed)
        return len(layers)

    # ---- matching ------------------------------------------------------------------------------
    def attention_pairs(self) -> list[tuple[Node, Node]]:
        """(sdpa, index_copy) for every cache write whose result an sdpa reads as k or v."""
        pairs = []
        for node in self.g.nodes:
            if node.op != "index_copy" or node.inputs[0].name not in self.state:
                continue
            if node.attrs.get("axis") != 2 or node.inputs[0].type.rank != 4:
                raise self.fail(f"{node.label} writes the cache along axis {node.attrs.get('axis')}; "
                                "a paged cache needs the [B, kv_heads, max_seq, head_dim] layout (axis 2)")
            readers = [u for u in self.users.get(node.outputs[0], []) if u.op == "sdpa"]
            others = [u for u in self.users.get(node.outputs[0], []) if u.op != "sdpa"]
            if len(readers) != 1 or others:
                raise self.fail(f"cache write {node.label} is read by {len(readers)} attention op(s) and "
                                f"{', '.join(u.label for u in others) or 'nothing else'}; expected one attention")
            if len(self.users.get(node.inputs[0], [])) != 1:
                raise self.fail(f"the cache %{node.inputs[0].name} is read before {node.label} writes it")
            pairs.append((readers[0], node))
        return pairs

    def by_sdpa(self, pairs: list[tuple[Node, Node]]) -> list[tuple[Node, Node, Node]]:
        found: dict[int, dict[int, Node]] = {}
        nodes: dict[int, Node] = {}
        for sdpa, write in pairs:
            nodes[id(sdpa)] = sdpa
            slot = 1 if sdpa.inputs[1] is write.outputs[0] else 2 if sdpa.inputs[2] is write.outputs[0] else 0
            if not slot:
                raise self.fail(f"{sdpa.label} reads the cache write {write.label} as its mask")
            found.setdefault(id(sdpa), {})[slot] = write
        out = []
        for key, slots in found.items():
            sdpa = nodes[key]
            if set(slots) != {1, 2}:
                raise self.fail(f"{sdpa.label} reads only one of k / v from the cache")
            if sdpa.attrs.get("causal"):
                raise self.fail(f"{sdpa.label} is causal over the whole cache; expected the frontend's position mask")
            out.append((sdpa, slots[1], slots[2]))
        return out

    def shared_positions(self, pairs: list[tuple[Node, Node]], layers: list[tuple[Node, Node, Node]]) -> Value:
        positions = {id(w.inputs[1]): w.inputs[1] for _, w in pairs}
        if len(positions) != 1:
            raise self.fail("the cache writes use different position inputs")
        pos = next(iter(positions.values()))
        if pos not in self.g.inputs or pos.type.rank != 1:
            raise self.fail(f"cache positions %{pos.name} must be a graph input of shape [seq]")
        for sdpa, _, _ in layers:
            self.check_mask(sdpa, pos)
        return pos

    def check_mask(self, sdpa: Node, pos: Value) -> None:
        """The mask must be (j <= input_pos[i]) over the cache's length: causal by position."""
        if len(sdpa.inputs) != 4:
            raise self.fail(f"{sdpa.label} has no mask; expected the causal position mask")
        mask = sdpa.inputs[3].producer
        ok = mask is not None and mask.op == "le"
        if ok:
            keys, rows = mask.inputs
            key_data = self.g.constant_data(keys) if self.g.is_constant(keys) else self._arange_of(keys)
            row_src = rows.producer
            max_seq = sdpa.inputs[1].type.shape[2]
            ok = (key_data is not None and np.array_equal(np.asarray(key_data).reshape(-1), np.arange(max_seq))
                  and row_src is not None and row_src.op == "unsqueeze" and row_src.inputs[0] is pos
                  and list(row_src.attrs["axes"]) == [1])
        if not ok:
            raise self.fail(f"{sdpa.label}: its mask is not the causal mask over the cache positions "
                            "(key j visible iff j <= input_pos[i])")

    def _arange_of(self, v: Value) -> Any:
        node = v.producer
        if node is not None and node.op == "unsqueeze" and self.g.is_constant(node.inputs[0]):
            return self.g.constant_data(node.inputs[0])
        return None

    # ---- rewriting -----------------------------------------------------------------------------
    def replace_position_uses(self, input_pos: Value, positions: Value, pairs) -> None:
        """Old uses of input_pos: cache writes and masks (replaced), and the rotary embedding's
        broadcast to [B, seq], which becomes the per-sequence positions."""
        writes = {id(w) for _, w in pairs}
        batch_shape = tuple(positions.type.shape)
        for node in list(self.users.get(input_pos, [])):
            if id(node) in writes:
                continue
            if node.op == "unsqueeze" and list(node.attrs["axes"]) == [1]:
                continue  # the mask's row index, dropped with the sdpa
            if node.op == "unsqueeze" and list(node.attrs["axes"]) == [0]:
                row = node.outputs[0]
                for user in list(self.users.get(row, [])):
                    if user.op == "expand" and tuple(user.outputs[0].type.shape) == batch_shape:
                        self.g.replace_uses(user.outputs[0], positions)
                    elif tuple(row.type.shape) == batch_shape:
                        user.inputs = [positions if v is row else v for v in user.inputs]
                    else:
                        raise self.fail(f"input_pos reaches {user.label} in a form the paged cache cannot "
                                        "give per sequence")
                continue
            raise self.fail(f"input_pos is used by {node.label}; a paged cache can only replace its uses by "
                            "the cache writes, the causal mask and the rotary embedding")

    def pool_for(self, write: Node, renamed: dict[str, Value]) -> Value:
        cache = write.inputs[0]
        if cache.name in renamed:
            return renamed[cache.name]
        _, heads, _, dim = cache.type.shape
        bs, n = self.layout.block_size, self.num_blocks
        shape = (n, heads, bs, dim) if self.layout.order == "bhsd" else (n, bs, heads, dim)
        pool = self.g.add_input(_pool_name(cache.name), TensorType(shape, cache.type.dtype))
        renamed[cache.name] = pool
        return pool

    def finish(self, input_pos: Value, positions: Value, table: Value, renamed: dict[str, Value]) -> None:
        from qjc.passes.cleanup.dce import eliminate_dead_code

        g = self.g
        old_state = [self.state[name] for name in g.state]
        missing = [v.name for v in old_state if v.name not in renamed]
        if missing:
            raise self.fail(f"state {', '.join(missing)} is not an attention cache; cannot page it")
        pools = [renamed[v.name] for v in old_state]
        keep = [v for v in g.inputs if v is not input_pos and v not in old_state and v not in pools
                and v is not positions and v is not table]
        g.inputs = keep + [positions, table] + pools
        g.state = [p.name for p in pools]
        g.toposort()
        eliminate_dead_code(g)
        g.forget_names([input_pos, *old_state])
        llm = g.meta.get("llm")
        if llm is not None:
            g.meta["llm"] = dict(llm, kv_cache=self.manifest_section(pools[0], llm.get("kv_cache", {})))

    def manifest_section(self, pool: Value, old: dict[str, Any]) -> dict[str, Any]:
        dims = ["num_blocks", "kv_heads", "block_size", "head_dim"] if self.layout.order == "bhsd" else \
            ["num_blocks", "block_size", "kv_heads", "head_dim"]
        return dict(old, layout="paged", order=self.layout.order, dims=dims, block_size=self.layout.block_size,
                    num_blocks=self.num_blocks, max_blocks_per_seq=self.max_blocks, dtype=pool.type.dtype.name,
                    inputs=["tokens", "positions", "block_table"])


def _pool_name(cache_name: str) -> str:
    return cache_name.replace("_cache_", "_pool_") if "_cache_" in cache_name else f"{cache_name}_pool"
