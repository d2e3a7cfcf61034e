"""KV-cache layout for ONNX decoders with past/present pairs: the same paged form PagedKVCache
(kv_cache.py) gives the torch-exported static cache.

What an exported decoder holds (one layer, after RecognizeDecomposed turned its attention into sdpa):

    present.N.key   = concat(past_key_values.N.key, k) {axis=2}   # inputs [B, kv_heads, past, D]
    present.N.value = concat(past_key_values.N.value, v) {axis=2}
    o               = sdpa(q, present.N.key, present.N.value, mask)  # mask from attention_mask

becomes

    k_pool_N' = paged_kv_write(k_pool_N, block_table, positions, k)   # state, as PagedKVCache makes it
    o         = paged_attention(q, k_pool_N', v_pool_N', block_table, positions)

The past inputs, the present outputs and ``attention_mask`` leave the signature; ``position_ids``
becomes the new input ``positions: i64[B, seq]`` (< 0 = padding), and ``block_table: i32[B,
max_blocks]`` is added. The mask is dropped only where kv_cache_mask.py proves it is "key position
<= query position, padding keys excluded"; otherwise the pass fails, naming the node. The result
computes what the ONNX model computes whenever each sequence's tokens sit at positions 0, 1, ...
with no left padding (``position_ids[b, s] == past_len + s``, padding only after a sequence's end),
which is how the runtime feeds a paged decoder.

The pool length comes from the ``max_seq`` option (the ONNX graph's past length is dynamic).

Only a concat of a past input along axis 2 whose result is a graph output read by nothing but its
attention counts as a cache; anything else (an encoder's memory tokens given as an input, say) is left
alone. Where the pair cannot be paged (a mask the proof does not understand, a static shape it does
not cover), the standard pipeline's instance leaves the whole graph as it was and says why in a note,
so the model still compiles with its caches as ordinary inputs and outputs; ``strict=True`` raises
instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import parse_dtype
from qjc.ir.graph import Node, Value
from qjc.ir.ops.paged import pool_dims
from qjc.ir.types import TensorType
from qjc.passes.kv_cache import PagedLayout, _Rewriter, layout_from
from qjc.passes.kv_cache_mask import MaskProver, check_causal_mask
from qjc.passes.manager import PassContext


class PagedKVCacheONNX:
    name = "kv_cache_onnx"

    def __init__(self, layout: PagedLayout | None = None, max_seq: int | None = None,
                 position_input: str = "position_ids", mask_input: str = "attention_mask",
                 token_input: str = "input_ids", strict: bool = False) -> None:
        self.layout = layout  # None: decided by the context (backend preference + options)
        self.max_seq = max_seq  # None: the max_seq option
        self.position_input = position_input
        self.mask_input = mask_input
        self.token_input = token_input
        self.strict = strict  # False: a cache that cannot be paged leaves the graph as it was, with a note

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        layout = self.layout or layout_from(ctx)
        if layout is None:
            return graph
        if self.strict:
            return self._page(graph, layout, ctx)
        try:
            if not _PastPresent(graph, layout, self.position_input, self.mask_input).find():
                return graph  # no past/present pair (every torch-exported decoder, every encoder): nothing to copy
            return self._page(graph.copy(), layout, ctx)  # on a copy: a failure half way leaves nothing changed
        except QJCError as e:
            ctx.note(self.name, f"caches left unpaged: {e}")
            return graph

    def _page(self, graph: Graph, layout: PagedLayout, ctx: PassContext) -> Graph:
        rewriter = _PastPresent(graph, layout, self.position_input, self.mask_input)
        layers = rewriter.find()
        if not layers:
            return graph
        max_seq = self.max_seq if self.max_seq is not None else ctx.options.get("max_seq")
        if not isinstance(max_seq, int) or max_seq < 1:
            raise rewriter.fail(f"the past/present cache of {layers[0].sdpa.label} has a dynamic length; the "
                                f"paged pool needs the max_seq option (a positive int), got {max_seq!r}")
        rewriter.rewrite(layers, max_seq, ctx.options.get("batch"))
        ctx.note(self.name, f"{len(layers)} attention layer(s) on a paged cache: {rewriter.num_blocks} blocks of "
                            f"{layout.block_size} ({layout.order}), {rewriter.max_blocks} per sequence")
        why_not = rewriter.record_decoder(self.token_input, max_seq, len(layers))
        if why_not:
            ctx.note(self.name, f"no native generation loop: {why_not}")
        return graph


@dataclass
class _Layer:
    sdpa: Node
    k_concat: Node
    v_concat: Node


class _PastPresent(_Rewriter):
    """Reuses PagedKVCache's pool construction and manifest entry; finds and rewrites its own form."""

    def __init__(self, graph: Graph, layout: PagedLayout, position_input: str, mask_input: str) -> None:
        super().__init__(graph, layout)
        by_name = {v.name: v for v in graph.inputs}
        self.pos = by_name.get(position_input)
        self.am = by_name.get(mask_input)
        self.prover = MaskProver(graph, self.pos, self.am)  # one for all layers: they often share a mask

    def fail(self, message: str) -> QJCError:
        return QJCError(f"kv_cache_onnx: graph {self.g.name}: {message}")

    # ---- matching ------------------------------------------------------------------------------
    def _past_concat(self, v: Value) -> Node | None:
        node = v.producer
        if node is None or node.op != "concat" or len(node.inputs) != 2 or node.inputs[0] not in self.g.inputs:
            return None
        return node if node.inputs[0].type.rank == 4 else None

    def find(self) -> list[_Layer]:
        """The attentions that read a past/present pair for both k and v; other sdpas stay as they are."""
        layers = [_Layer(node, k, v) for node in self.g.nodes if node.op == "sdpa"
                  for k, v in [[self._past_concat(x) for x in node.inputs[1:3]]]
                  if k is not None and v is not None and self._is_cache(k, node) and self._is_cache(v, node)]
        for layer in layers:
            self._check_layer(layer)
        return layers

    def _is_cache(self, cat: Node, sdpa: Node) -> bool:
        """past [B, kv_heads, past_len, D] extended along axis 2 into a present output only ``sdpa`` reads."""
        past, new = cat.inputs
        return (cat.attrs["axis"] % 4 == 2 and len(self.users.get(past, [])) == 1
                and id(cat.outputs[0]) in {id(o) for o in self.g.outputs}
                and all(u is sdpa for u in self.users.get(cat.outputs[0], []))
                and tuple(past.type.shape[::3]) == tuple(new.type.shape[::3])
                and past.type.shape[1] == new.type.shape[1])

    def _check_layer(self, layer: _Layer) -> None:
        past_len = layer.k_concat.inputs[0].type.shape[2]
        if layer.v_concat.inputs[0].type.shape[2] != past_len:
            raise self.fail(f"{layer.sdpa.label}: past k and v have different lengths")
        check_causal_mask(self.prover, layer.sdpa, past_len, self.fail)

    # ---- rewriting -----------------------------------------------------------------------------
    def rewrite(self, layers: list[_Layer], max_seq: int, batch_option) -> None:
        g = self.g
        q = layers[0].sdpa.inputs[0]
        batch, seq = q.type.shape[0], q.type.shape[2]
        bs = self.layout.block_size
        self.max_blocks = math.ceil(max_seq / bs)
        if self.layout.num_blocks is not None:
            self.num_blocks = self.layout.num_blocks
        elif isinstance(batch, int) or isinstance(batch_option, int):
            self.num_blocks = (batch if isinstance(batch, int) else batch_option) * self.max_blocks
        else:
            raise self.fail(f"batch {batch} is dynamic: set the kv_blocks (pool size) or batch option")
        if self.pos is not None and tuple(self.pos.type.shape) != (batch, seq):
            raise self.fail(f"%{self.pos.name} is {self.pos.type}; expected [{batch}, {seq}] like the queries")
        # the model's own position dtype (i32 or i64, both of which the paged ops take): its other uses
        # (the rotary embedding) read the new input in its place
        pos_dtype = self.pos.type.dtype if self.pos is not None and self.pos.type.dtype.name == "i32" else \
            parse_dtype("i64")
        positions = g.add_input("positions", TensorType((batch, seq), pos_dtype))
        table = g.add_input("block_table", TensorType((batch, self.max_blocks), parse_dtype("i32")))
        self.positions, self.table = positions, table
        if self.pos is not None:
            g.replace_uses(self.pos, positions)
        pools, updates = [], []
        for i, layer in enumerate(layers):
            new_kv = []
            for which, cat in (("k", layer.k_concat), ("v", layer.v_concat)):
                pool = self._pool(f"{which}_pool_{i}", cat.inputs[0])
                pools.append(pool)
                new_kv.append(g.op("paged_kv_write", pool, table, positions, cat.inputs[1], layout=self.layout.order))
                updates.append(new_kv[-1])
            sdpa = layer.sdpa
            out = g.op("paged_attention", sdpa.inputs[0], *new_kv, table, positions,
                       layout=self.layout.order, scale=sdpa.attrs.get("scale"))
            g.replace_uses(sdpa.outputs[0], out)
        presents = {id(c.outputs[0]) for layer in layers for c in (layer.k_concat, layer.v_concat)}
        g.set_outputs(*[o for o in g.outputs if id(o) not in presents], *updates)
        self._finish(layers, positions, table, pools)

    def record_decoder(self, token_input: str, max_seq: int, num_layers: int) -> str | None:
        """Mark the paged graph a language model (``graph.meta["llm"]``), so that a backend with a native
        generation loop builds one: the token ids input becomes ``tokens`` (the loop's ABI, as the LLM
        frontend names it), and the facts the loop needs come from the shapes. Returns why not, if not.

        An ONNX file carries no generation config: no stop tokens are recorded (the caller passes its
        own) and no tokenizer travels with the artifact."""
        g = self.g
        by_name = {v.name: v for v in g.inputs}
        tokens, positions, logits = by_name.get(token_input), self.positions, g.outputs[0]
        if tokens is None:
            return f"no input named {token_input!r} holds the token ids"
        if (positions.name, self.table.name) != ("positions", "block_table"):
            return f"the names 'positions' and 'block_table' are taken (got {positions.name}, {self.table.name})"
        batch, vocab = positions.type.shape[0], logits.type.shape[-1]
        if tuple(tokens.type.shape) != tuple(positions.type.shape) or tokens.type.dtype.name != "i64":
            return f"%{tokens.name} is {tokens.type}; the loop feeds i64 token ids shaped like positions"
        if positions.type.dtype.name != "i64":
            return f"the positions are {positions.type.dtype.name}; the loop feeds i64 positions"
        if logits.type.rank != 3 or not logits.type.dtype.is_float:
            return f"the first output %{logits.name} ({logits.type}) is not [batch, seq, vocab] logits"
        if not isinstance(batch, int) or not isinstance(vocab, int):
            return (f"batch {batch} and vocabulary {vocab} must be static (compile with a fixed batch, "
                    "--dim NAME=B:B)")
        if token_input != "tokens":
            if g.fresh_name("tokens") != "tokens":
                return "the name 'tokens' is taken"
            renamed = g.add_input("tokens", tokens.type)
            g.inputs.pop()
            g.inputs[g.inputs.index(tokens)] = renamed
            g.replace_uses(tokens, renamed)
            g.forget_names([tokens])
        _, kv_heads, _, head_dim = pool_dims(self.pools[0].type, self.layout.order)
        g.meta["llm"] = {
            "architecture": f"ONNX decoder {g.name}", "vocab_size": vocab, "batch": batch, "max_seq": max_seq,
            "num_layers": num_layers, "eos_token_ids": [], "bos_token_id": None,
            "kv_cache": self.manifest_section(self.pools[0], {"kv_heads": kv_heads, "head_dim": head_dim}),
        }
        return None

    def _pool(self, name: str, past: Value) -> Value:
        _, heads, _, dim = past.type.shape
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise self.fail(f"the past input %{past.name} ({past.type}) needs static kv heads and head dim")
        bs, n = self.layout.block_size, self.num_blocks
        shape = (n, heads, bs, dim) if self.layout.order == "bhsd" else (n, bs, heads, dim)
        return self.g.add_input(name, TensorType(shape, past.type.dtype))

    def _finish(self, layers: list[_Layer], positions: Value, table: Value, pools: list[Value]) -> None:
        from qjc.passes.cleanup.dce import eliminate_dead_code

        g = self.g
        g.toposort()
        eliminate_dead_code(g)
        pasts = [c.inputs[0] for layer in layers for c in (layer.k_concat, layer.v_concat)]
        dropped = pasts + [v for v in (self.pos, self.am) if v is not None]
        users = g.users()
        for v in dropped:
            if users.get(v):
                raise self.fail(f"%{v.name} is still used by {users[v][0].label} after the rewrite; a paged cache "
                                "replaces only its uses by the cache, the mask and the rotary embedding")
        new = [positions, table, *pools]
        self.pools = pools
        g.inputs = [v for v in g.inputs if v not in dropped and v not in new] + new
        g.state = [p.name for p in pools]
        g.forget_names(dropped)
        self._drop_unused_symbols()

    def _drop_unused_symbols(self) -> None:
        """The past and mask lengths leave with their inputs; any op still sized by them is an error."""
        g = self.g
        live = {s for v in g.inputs for d in v.type.shape if isinstance(d, SymExpr) for s in d.symbols}
        for node in g.nodes:
            for v in node.outputs:
                stray = {s for d in v.type.shape if isinstance(d, SymExpr) for s in d.symbols} - live
                if stray:
                    raise self.fail(f"{node.label} is sized by {', '.join(sorted(stray))}, a length only the "
                                    "removed past / mask inputs gave")
        g.symbols = {k: r for k, r in g.symbols.items() if k in live}
