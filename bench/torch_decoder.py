"""A gpt-fast-style Llama decoder in plain PyTorch: the torch.compile peer of bench/decode.py.

It takes a transformers ``LlamaForCausalLM`` state_dict and keeps everything static so that
``torch.compile(mode="reduce-overhead")`` can capture a decode step in one CUDA graph: KV caches are
fixed buffers [batch, kv_heads, max_seq, head_dim] written in place with ``index_copy_``, RoPE
cos/sin come from a precomputed table indexed by position, and attention always spans the whole
cache with a causal mask row picked by position (as gpt-fast does: no shape ever depends on how many
tokens are in the cache). q/k/v and gate/up are each merged into one matrix so a step runs one GEMM
for each pair instead of two.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GQA_MODES = ("repeat", "sdpa")


def rope_theta_of(config: Any) -> float:
    """The RoPE base of a LlamaConfig (transformers 4.x keeps it in ``rope_theta``, 5.x in
    ``rope_parameters``); scaled RoPE kinds are not implemented here."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise NotImplementedError(f"TorchDecoder: rope type {kind!r} of the config is not supported (default only)")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("TorchDecoder: the config has no rope_theta")
    return float(theta)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # statistics in f32 and the scale applied after casting back, the order transformers uses
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class DecoderLayer(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], prefix: str, heads: int, kv_heads: int, head_dim: int,
                 eps: float, batch: int, max_seq: int, gqa: str, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.eps, self.gqa = heads, kv_heads, head_dim, eps, gqa

        def w(name: str) -> torch.Tensor:
            return weights[prefix + name].to(device=device, dtype=dtype)

        self.attn_norm = _frozen(w("input_layernorm.weight"))
        self.wqkv = _frozen(torch.cat([w("self_attn.q_proj.weight"), w("self_attn.k_proj.weight"),
                                       w("self_attn.v_proj.weight")]))
        self.wo = _frozen(w("self_attn.o_proj.weight"))
        self.mlp_norm = _frozen(w("post_attention_layernorm.weight"))
        self.w_gate_up = _frozen(torch.cat([w("mlp.gate_proj.weight"), w("mlp.up_proj.weight")]))
        self.w_down = _frozen(w("mlp.down_proj.weight"))
        cache_shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape, dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = F.linear(rms_norm(x, self.attn_norm, self.eps), self.wqkv).split([q_size, kv_size, kv_size], -1)
        q = q.view(bsz, seqlen, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # a smaller batch (the correctness check) uses the leading rows of the cache
        k_cache = self.k_cache if bsz == self.k_cache.shape[0] else self.k_cache[:bsz]
        v_cache = self.v_cache if bsz == self.v_cache.shape[0] else self.v_cache[:bsz]
        k_cache.index_copy_(2, input_pos, k)
        v_cache.index_copy_(2, input_pos, v)
        if self.gqa == "repeat":
            groups = self.heads // self.kv_heads
            keys, values = k_cache.repeat_interleave(groups, dim=1), v_cache.repeat_interleave(groups, dim=1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)
        x = x + F.linear(y.transpose(1, 2).reshape(bsz, seqlen, q_size), self.wo)
        gate, up = F.linear(rms_norm(x, self.mlp_norm, self.eps), self.w_gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.w_down)


class TorchDecoder(nn.Module):
    """Llama decoder over static KV caches of ``batch`` rows and ``max_seq`` positions.

    ``gqa``: "repeat" expands the KV heads with ``repeat_interleave`` before SDPA (gpt-fast's way);
    "sdpa" passes them as they are with ``enable_gqa=True``."""

    def __init__(self, config: Any, state_dict: dict[str, torch.Tensor], batch: int, max_seq: int,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda", gqa: str = "repeat") -> None:
        super().__init__()
        if gqa not in GQA_MODES:
            raise ValueError(f"TorchDecoder: gqa must be one of {GQA_MODES}, got {gqa!r}")
        device = torch.device(device)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if heads % kv_heads:
            raise ValueError(f"TorchDecoder: {heads} attention heads are not a multiple of {kv_heads} KV heads")
        self.batch, self.max_seq, self.vocab_size, self.eps = batch, max_seq, config.vocab_size, config.rms_norm_eps
        self.embed = _frozen(state_dict["model.embed_tokens.weight"].to(device=device, dtype=dtype))
        head = state_dict.get("lm_head.weight")
        tied = head is None or getattr(config, "tie_word_embeddings", False)
        # tied: the output projection reads the embedding itself, one copy in memory
        self.lm_head = None if tied else _frozen(head.to(device=device, dtype=dtype))
        self.norm = _frozen(state_dict["model.norm.weight"].to(device=device, dtype=dtype))
        self.layers = nn.ModuleList(
            DecoderLayer(state_dict, f"model.layers.{i}.", heads, kv_heads, head_dim, self.eps, batch, max_seq, gqa,
                         dtype, device)
            for i in range(config.num_hidden_layers))
        # RoPE table in f32 and cast afterwards, matching transformers' rotary embedding
        theta = rope_theta_of(config)
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        freqs = torch.arange(max_seq, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("rope_sin", angles.sin().to(dtype), persistent=False)
        causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool, device=device))
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] (T = 1 with ``last_only``) of ``tokens`` [B, T] at cache positions
        ``input_pos`` [T]; their keys and values are written into the caches."""
        cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        mask = self.causal_mask[input_pos][None, None]
        x = F.embedding(tokens, self.embed)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        if last_only:
            x = x[:, -1:]
        return F.linear(rms_norm(x, self.norm, self.eps), self.embed if self.lm_head is None else self.lm_head)

    def prefill(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Fill cache positions 0..T-1 with ``tokens`` [B, T]; logits as ``forward``."""
        if tokens.shape[1] > self.max_seq:
            raise ValueError(f"TorchDecoder: prompt of {tokens.shape[1]} tokens exceeds max_seq {self.max_seq}")
        return self.forward(tokens, torch.arange(tokens.shape[1], device=tokens.device), last_only)

    def decode_one(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] of one new token per row, ``tokens`` [B, 1] at position ``input_pos`` [1]."""
        return self.forward(tokens, input_pos)[:, -1]

    def greedy_step(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The next tokens [B, 1] by argmax; compiled whole so the argmax joins the step's CUDA graph."""
        return self.decode_one(tokens, input_pos).argmax(dim=-1, keepdim=True)
