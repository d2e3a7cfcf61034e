"""The host generation loop over a decoder that takes its KV cache as past inputs and returns it as present
outputs (an ONNX export: ``input_ids``, optional ``attention_mask`` / ``position_ids``, then
``past_key_values.<i>.key`` ... in; ``logits``, then ``present.<i>.key`` ... out).

Each step feeds the presents of the step before back as pasts; the first step (the prompt) starts from pasts
with no positions, so the past length's symbol must range from 0 (``dims={"past": (0, N)}`` at compile time,
``--dim past=0:N`` on the command line). Batch 1 per sequence; a list of prompts runs one after another.
Targets with a paged KV cache (cuda) rewrite such caches into their pool instead (passes/kv_cache_onnx.py).
"""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.errors import QJCError
from qjc.runtime.generation import PromptLoop, _np_dtype

TOKEN_INPUTS = ("input_ids",)
PAST_PREFIXES = (("past_key_values", "present"), ("past", "present"))


@dataclass(frozen=True)
class PastPresentSignature:
    """Which input / output of the engine plays which part, and the symbol of the past length."""

    tokens: int
    mask: int | None
    positions: int | None
    pasts: list[int]  # input index of each past, in input order
    presents: list[int]  # output index of the present that feeds each past
    logits: int
    past_symbol: str


def _present_name(past: str) -> str | None:
    for prefix, replacement in PAST_PREFIXES:
        if past.startswith(prefix + "."):
            return replacement + past[len(prefix):]
    return None


def match_signature(engine: Any) -> PastPresentSignature | None:
    """The roles of a past/present decoder's inputs and outputs, or None if the engine is not one."""
    ins = [s.name for s in engine.signature.inputs]
    outs = {s.name: k for k, s in enumerate(engine.signature.outputs)}
    if not any(n in ins for n in TOKEN_INPUTS):
        return None
    pasts, presents = [], []
    for k, name in enumerate(ins):
        present = _present_name(name)
        if present is not None and present in outs:
            pasts.append(k)
            presents.append(outs[present])
    if not pasts:
        return None
    tokens = next(ins.index(n) for n in TOKEN_INPUTS if n in ins)
    known = {tokens, *pasts}
    mask = ins.index("attention_mask") if "attention_mask" in ins else None
    positions = ins.index("position_ids") if "position_ids" in ins else None
    known |= {k for k in (mask, positions) if k is not None}
    unknown = [ins[k] for k in range(len(ins)) if k not in known]
    if unknown:
        raise QJCError(f"{engine.path}: a past/present decoder, but the generation loop does not know what to feed "
                       f"input(s) {', '.join(unknown)}")
    logits = outs.get("logits", 0)
    batch_dim = engine.signature.inputs[tokens].shape[0]
    symbols = {d for d in engine.signature.inputs[pasts[0]].shape if isinstance(d, str)} - {batch_dim}
    if len(symbols) != 1:
        raise QJCError(f"{engine.path}: past input {ins[pasts[0]]} should have one symbolic length besides the "
                       f"batch, got {sorted(symbols) or 'none'}")
    return PastPresentSignature(tokens, mask, positions, pasts, presents, logits, symbols.pop())


class PastPresentGenerator(PromptLoop):
    """Prefill + token-by-token decode over one past/present engine (see the module docstring). Token ids
    only: an ONNX file carries no tokenizer."""

    def __init__(self, engine: Any, roles: PastPresentSignature) -> None:
        self.engine = engine
        self.roles = roles
        specs = engine.signature.inputs
        lo, hi = engine.signature.symbol_ranges.get(roles.past_symbol, (1, None))
        if lo > 0:
            raise QJCError(f"{engine.path}: the past length {roles.past_symbol} ranges from {lo}, so the prompt "
                           "(which has no past) cannot run",
                           f"compile with dims={{'{roles.past_symbol}': (0, N)}} (qjc compile --dim "
                           f"{roles.past_symbol}=0:N)")
        self.max_past = hi
        batch = specs[roles.tokens].shape[0]
        if isinstance(batch, int) and batch != 1:
            raise QJCError(f"{engine.path} was compiled for a batch of {batch}; the host loop runs one sequence at "
                           "a time", "compile with a symbolic batch or dims={'batch': (1, 1)}")
        # the first step's pasts: batch 1 (axis 0), no positions, the static dims as the signature has them
        self.empty_pasts = [np.zeros(tuple(1 if axis == 0 else 0 if isinstance(d, str) else d
                                           for axis, d in enumerate(specs[k].shape)), dtype=_np_dtype(specs[k].dtype))
                            for k in roles.pasts]

    def _check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        # the last step reads the prompt and every new token but the last two as its past
        if self.max_past is not None and prompt_len + max_new_tokens - 2 > self.max_past:
            raise QJCError(f"generate: prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                           f"past length the engine was compiled for ({self.max_past})",
                           f"compile with a larger range for {self.roles.past_symbol}")

    def _decode(self, prompt: list[int]) -> collections.abc.Generator[np.ndarray, int, None]:
        roles, specs = self.roles, self.engine.signature.inputs
        pasts, past_len, step = list(self.empty_pasts), 0, prompt
        while True:
            feeds: list[Any] = [None] * len(specs)
            feeds[roles.tokens] = np.asarray([step], dtype=_np_dtype(specs[roles.tokens].dtype))
            if roles.mask is not None:
                feeds[roles.mask] = np.ones((1, past_len + len(step)), dtype=_np_dtype(specs[roles.mask].dtype))
            if roles.positions is not None:
                feeds[roles.positions] = np.arange(past_len, past_len + len(step),
                                                   dtype=_np_dtype(specs[roles.positions].dtype))[None]
            for k, past in zip(roles.pasts, pasts):
                feeds[k] = past
            results = self.engine(*feeds)
            token = yield np.asarray(results[roles.logits])[0, -1]
            pasts = [results[k] for k in roles.presents]
            past_len += len(step)
            step = [token]


__all__ = ["PastPresentGenerator", "PastPresentSignature", "match_signature"]
