"""Paged KV-cache ops: a pool of fixed-size blocks shared by all sequences, addressed through a
block table per sequence (what passes/kv_cache.py rewrites a static cache into).

Pool layouts (attr ``layout``), named by the order of the pool's four dims:
- ``"bhsd"``: [num_blocks, kv_heads, block_size, head_dim] -- one head's slots of a block are
  contiguous (what the CUDA decode-attention kernel reads best);
- ``"bshd"``: [num_blocks, block_size, kv_heads, head_dim] -- one token's heads are contiguous.

Token position ``p`` of sequence ``b`` lives in block ``block_table[b, p // block_size]`` at slot
``p % block_size``. A position < 0 marks padding: nothing is written for it, and its attention
output is zeros.
"""

from __future__ import annotations

import math

import numpy as np

from qjc.ir.ops.registry import Attr, OpDef, register
from qjc.ir.ops.shape_rules import require_float, require_rank, require_same_dim
from qjc.ir.types import TensorType

LAYOUTS = ("bhsd", "bshd")


def pool_dims(pool: TensorType, layout: str) -> tuple:
    """(num_blocks, kv_heads, block_size, head_dim) of a pool type in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    n, a, b, d = pool.shape
    return (n, a, b, d) if layout == "bhsd" else (n, b, a, d)


def _check_table(table: TensorType, positions: TensorType) -> tuple:
    require_rank(table, 2, "block_table ([B, max_blocks])")
    require_rank(positions, 2, "positions ([B, S])")
    if table.dtype.name != "i32":
        raise ValueError(f"block_table must be i32, got {table.dtype}")
    if positions.dtype.name not in ("i32", "i64"):
        raise ValueError(f"positions must be i32 or i64, got {positions.dtype}")
    b = require_same_dim(table.shape[0], positions.shape[0], "block_table and positions batch differ")
    return b, positions.shape[1]


def _write_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    pool, table, positions, new = ts
    require_float(pool, "pool")
    require_rank(pool, 4, "pool")
    require_rank(new, 4, "new ([B, kv_heads, S, head_dim])")
    if new.dtype != pool.dtype:
        raise ValueError(f"new dtype {new.dtype} differs from the pool's {pool.dtype}")
    _, heads, _, dim = pool_dims(pool, attrs["layout"])
    b, s = _check_table(table, positions)
    require_same_dim(new.shape[0], b, "new and positions batch differ")
    require_same_dim(new.shape[1], heads, "new and pool kv heads differ")
    require_same_dim(new.shape[2], s, "new and positions sequence lengths differ")
    require_same_dim(new.shape[3], dim, "new and pool head dims differ")
    return [pool]


def _slots(table: np.ndarray, positions: np.ndarray, block_size: int):
    """(b, s, block, slot) for every non-padding position, checked against the table."""
    out = []
    for b, s in zip(*np.nonzero(positions >= 0)):
        p = int(positions[b, s])
        j = p // block_size
        if j >= table.shape[1]:
            raise ValueError(f"position {p} of sequence {b} is past the block table ({table.shape[1]} blocks "
                             f"of {block_size})")
        out.append((b, s, int(table[b, j]), p % block_size))
    return out


def _as_bhsd(pool: np.ndarray, layout: str) -> np.ndarray:
    """A [num_blocks, kv_heads, block_size, head_dim] view of a pool (writes go through to it)."""
    return pool if layout == "bhsd" else pool.transpose(0, 2, 1, 3)


def _paged_kv_write(pool: np.ndarray, table: np.ndarray, positions: np.ndarray, new: np.ndarray,
                    layout: str = "bhsd") -> np.ndarray:
    out = pool.copy()
    view = _as_bhsd(out, layout)
    for b, s, block, slot in _slots(table, positions, view.shape[2]):
        view[block, :, slot, :] = new[b, :, s, :]
    return out


def _gather_sequence(pool: np.ndarray, table: np.ndarray, b: int, length: int) -> np.ndarray:
    """Positions 0..length-1 of sequence b of a bhsd ``pool`` as [kv_heads, length, head_dim]."""
    block_size = pool.shape[2]
    rows = [pool[int(table[b, p // block_size]), :, p % block_size, :] for p in range(length)]
    return np.stack(rows, axis=1) if rows else np.zeros((pool.shape[1], 0, pool.shape[3]), pool.dtype)


def _attention_infer(ts: list[TensorType], attrs) -> list[TensorType]:
    q, k_pool, v_pool, table, positions = ts
    require_float(q, "q")
    require_rank(q, 4, "q ([B, H, S, head_dim])")
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool)):
        require_rank(t, 4, name)
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
    if tuple(k_pool.shape) != tuple(v_pool.shape):
        raise ValueError(f"k_pool {k_pool} and v_pool {v_pool} differ")
    _, heads, _, dim = pool_dims(k_pool, attrs["layout"])
    b, s = _check_table(table, positions)
    require_same_dim(q.shape[0], b, "q and positions batch differ")
    require_same_dim(q.shape[2], s, "q and positions sequence lengths differ")
    require_same_dim(q.shape[3], dim, "q and pool head dims differ")
    hq = q.shape[1]
    if isinstance(hq, int) and isinstance(heads, int) and hq % heads:
        raise ValueError(f"query heads ({hq}) must be a multiple of the pool's kv heads ({heads})")
    return [q]


def _paged_attention(q: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray, table: np.ndarray,
                     positions: np.ndarray, layout: str = "bhsd", scale: float | None = None) -> np.ndarray:
    ct = np.result_type(q.dtype, np.float32)
    batch, hq, seq, dim = q.shape
    k_pool, v_pool = _as_bhsd(k_pool, layout), _as_bhsd(v_pool, layout)
    group = hq // k_pool.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = np.zeros(q.shape, ct)
    for b in range(batch):
        last = int(positions[b].max(initial=-1))
        if last < 0:
            continue
        k = _gather_sequence(k_pool, table, b, last + 1).astype(ct)
        v = _gather_sequence(v_pool, table, b, last + 1).astype(ct)
        for s in range(seq):
            p = int(positions[b, s])
            if p < 0:
                continue
            for h in range(hq):
                logits = k[h // group, : p + 1] @ q[b, h, s].astype(ct) * ct.type(scale)
                w = np.exp(logits - logits.max())
                out[b, h, s] = (w / w.sum()) @ v[h // group, : p + 1]
    return out


register(OpDef("paged_kv_write", "attention", (4, 4), _write_infer, _paged_kv_write, widen=False,
               attrs={"layout": Attr("str", "bhsd")},
               doc="pool with new[b, :, s, :] stored at position positions[b, s] of sequence b: block "
                   "block_table[b, p // block_size], slot p % block_size. Inputs: pool (see layout), "
                   "block_table i32 [B, max_blocks], positions i32/i64 [B, S] (< 0: padding, not written), "
                   "new [B, kv_heads, S, head_dim]. Functional; backends update the pool in place."))

register(OpDef("paged_attention", "attention", (5, 5), _attention_infer, _paged_attention,
               attrs={"layout": Attr("str", "bhsd"), "scale": Attr("float", None, optional=True)},
               doc="causal attention of q [B, Hq, S, D] over a paged KV cache: query (b, s) at position "
                   "p = positions[b, s] attends positions 0..p of sequence b, read from k_pool / v_pool "
                   "through block_table. Grouped-query: kv head h serves query heads h*r..h*r+r-1. "
                   "scale defaults to 1/sqrt(D); softmax in f32 or wider; padding queries (p < 0) give 0."))
