"""Language-model frontend: a Hugging Face causal LM (a directory with config + safetensors, or a
GGUF file) becomes a qjc Graph with a static KV cache, through transformers and torch.export.

The model is loaded by transformers (GGUF tensors are dequantized by transformers for now; the
quantization issue maps them onto qjc's int4/int8 types). Its decoder is then re-expressed over the
model's own modules with the cache as module buffers written by ``index_copy_``, which torch.export
captures as buffer mutations and the torch frontend turns into graph state (``Graph.state``).

One graph serves prefill and decode: ``tokens: i64[batch, seq]`` with ``seq`` symbolic
(1..max_seq) and ``input_pos: i64[seq]`` the cache positions they occupy. Outputs: logits
``[batch, seq, vocab]`` then the new caches (k_cache_0, v_cache_0, k_cache_1, ...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qjc.errors import QJCError
from qjc.ir import Graph

# Architectures whose decoder layer follows the Llama layout (pre-norm, q/k/v/o projections with
# rotary embeddings, gated MLP); Qwen2's q/k/v biases and Mistral's config fit the same code.
SUPPORTED_ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


@dataclass
class LoadedLM:
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any | None
    source: str


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, tokenizer: bool = True) -> LoadedLM:
    """Load a local HF directory or .gguf file with transformers, with errors that name the file."""
    path = Path(path)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise QJCError("language models need transformers", "pip install 'qjc[llm]'") from None
    if not path.exists():
        raise QJCError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QJCError(f"{path}: not a Hugging Face model directory (no config.json)")
        where, kwargs = str(path), {}
    elif path.suffix.lower() == ".gguf":
        _check_gguf_header(path)
        where, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        raise QJCError(f"{path}: expected a Hugging Face model directory or a .gguf file")
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs).eval()
    except Exception as e:  # transformers raises many types for unreadable models
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QJCError(f"{path}: transformers could not load the model: {type(e).__name__}: {first}") from e
    tok = None
    if tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(where, **kwargs)
        except Exception:  # a model without tokenizer files still compiles; generate() then takes ids
            tok = None
    return LoadedLM(model, tok, str(path))


def _check_gguf_header(path: Path) -> None:
    """Fail early, naming the file, on something that is not GGUF at all."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise QJCError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except ImportError:
        raise QJCError("GGUF models need the gguf package", "pip install 'qjc[llm]'") from None
    except Exception as e:
        raise QJCError(f"{path}: the GGUF file does not parse: {type(e).__name__}: {e}") from e


class StaticCacheDecoder(torch.nn.Module):
    """A Llama-family decoder over a transformers model's own modules, with a static KV cache
    held as buffers ``k_cache_{i}`` / ``v_cache_{i}`` of shape [batch, kv_heads, max_seq, head_dim]."""

    def __init__(self, hf_model: Any, batch: int, max_seq: int) -> None:
        super().__init__()
        arch = type(hf_model).__name__
        if arch not in SUPPORTED_ARCHS:
            raise QJCError(f"architecture {arch} is not supported by the LLM frontend yet",
                           f"supported: {', '.join(SUPPORTED_ARCHS)}")
        cfg = hf_model.config
        self.hf = hf_model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.max_seq = max_seq
        layer0 = hf_model.model.layers[0].self_attn
        self._rotate = sys.modules[type(layer0).__module__].apply_rotary_pos_emb
        dtype = next(hf_model.parameters()).dtype
        for i in range(cfg.num_hidden_layers):
            shape = (batch, self.n_kv, max_seq, self.head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        # tokens: [B, S]; input_pos: [S] cache slots of these tokens
        m = self.hf.model
        b, s = tokens.shape
        x = m.embed_tokens(tokens)
        cos, sin = m.rotary_emb(x, input_pos.unsqueeze(0).expand(b, s))
        # key j is visible to query i iff j <= input_pos[i]: causal over the whole static cache
        mask = torch.arange(self.max_seq, device=tokens.device)[None, :] <= input_pos[:, None]  # [S, max_seq]
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, k, cos, sin)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            k_cache.index_copy_(2, input_pos, k)
            v_cache.index_copy_(2, input_pos, v)
            o = torch.nn.functional.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask,
                                                                 enable_gqa=self.n_kv != self.n_heads)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.hf.lm_head(m.norm(x))


def export_program(hf_model: Any, batch: int = 1, max_seq: int = 256):
    """torch.export (decomposed) of the static-cache decoder, and the dynamic shapes it used."""
    from qjc.frontends.torch_export import decompose, export_module

    decoder = StaticCacheDecoder(hf_model, batch, max_seq).eval()
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    example = (torch.zeros(batch, 2, dtype=torch.long), torch.arange(2))
    dynamic = ({1: seq}, {0: seq})
    return decompose(export_module(decoder, example, dynamic_shapes=dynamic)), dynamic


def export_decoder(hf_model: Any, batch: int = 1, max_seq: int = 256, name: str = "decoder") -> Graph:
    """The static-cache decoder of ``hf_model`` as a qjc Graph with symbolic ``seq``."""
    from qjc.frontends.torch_export import import_exported

    ep, dynamic = export_program(hf_model, batch, max_seq)
    return import_exported(ep, name, dynamic, type(hf_model).__name__)


def graph_name(path: str | Path) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in Path(path).stem)


def llm_meta(hf_model: Any, batch: int, max_seq: int) -> dict[str, Any]:
    """What a generation loop needs to know about the decoder, recorded in the artifact manifest."""
    cfg = hf_model.config
    gen = getattr(hf_model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = cfg.eos_token_id if eos is None else eos
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    n_heads = cfg.num_attention_heads
    return {
        "architecture": type(hf_model).__name__,
        "vocab_size": cfg.vocab_size,
        "batch": batch,
        "max_seq": max_seq,
        "num_layers": cfg.num_hidden_layers,
        "eos_token_ids": eos_ids,
        "bos_token_id": getattr(cfg, "bos_token_id", None),
        # the engine ABI: inputs tokens [batch, seq], input_pos [seq], then the caches
        "kv_cache": {"layout": "contiguous", "dims": ["batch", "kv_heads", "max_seq", "head_dim"],
                     "kv_heads": getattr(cfg, "num_key_value_heads", None) or n_heads,
                     "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads},
    }


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """The tokenizer saved as files, to travel inside the artifact under tokenizer/."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f"tokenizer/{p.name}": p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def from_llm(path: str | Path, batch: int = 1, max_seq: int = 256, gguf_quant: bool = True) -> Graph:
    """The LLM frontend's entry point: a HF directory or GGUF file -> decoder graph, with the
    model's generation facts and tokenizer in ``graph.meta`` for the artifact. With ``gguf_quant``
    the linear layers of a GGUF model keep the file's own quantized weights (Q4_0/Q4_1/Q8_0)."""
    loaded = load_causal_lm(path)
    graph = export_decoder(loaded.model, batch, max_seq, name=graph_name(path))
    if gguf_quant and Path(path).suffix.lower() == ".gguf":
        from qjc.frontends.gguf_weights import use_gguf_weights
        from qjc.passes.cleanup.dce import eliminate_dead_code

        graph.meta["quantization"] = use_gguf_weights(graph, path)
        eliminate_dead_code(graph)  # the float copies the quantized weights replaced
    graph.meta["llm"] = llm_meta(loaded.model, batch, max_seq)
    if loaded.tokenizer is not None:
        graph.meta["attachments"] = tokenizer_files(loaded.tokenizer)
        graph.meta["llm"]["tokenizer"] = "tokenizer"
    return graph
