"""The host-side generation loop over a decoder engine with a static KV cache.

Works with any backend's engine whose artifact carries an ``llm`` manifest section (written by
the LLM frontend): inputs ``tokens [batch, seq]``, ``input_pos [seq]``, then the cache state;
outputs logits ``[batch, seq, vocab]`` then the new caches. Backends with a native loop (CUDA)
override this; it is the reference loop and the CPU path.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjc.errors import QJCError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise QJCError(f"bad sampling options {self}: temperature >= 0, top_k >= 0, 0 < top_p <= 1")


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token id from a row of logits."""
    logits = logits.astype(np.float64)
    if sampling.temperature == 0.0:
        return int(np.argmax(logits))
    logits = logits / sampling.temperature
    order = np.argsort(-logits, kind="stable")
    if sampling.top_k:
        order = order[: sampling.top_k]
    probs = np.exp(logits[order] - logits[order[0]])
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)  # smallest set reaching top_p
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


class ArtifactTokenizer:
    """The tokenizer stored in ``self.engine``'s artifact, loaded on first use."""

    engine: Any
    _tokenizer: Any = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.engine)
        return self._tokenizer


class PromptLoop(ArtifactTokenizer):
    """What every host generation loop shares: prompts as text (through the artifact's tokenizer), token ids or
    a list of either, and the sampling options; a subclass generates the ids of one prompt."""

    def _check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise a QJCError if the engine cannot hold the prompt and ``max_new_tokens`` more."""
        raise NotImplementedError

    def _default_stops(self) -> set[int]:
        return set()

    def _decode(self, prompt: list[int]) -> collections.abc.Generator[np.ndarray, int, None]:
        """Run the prompt, yield its last position's logits; each token sent in runs one step more."""
        raise NotImplementedError

    def generate_ids(self, prompt: Sequence[int], max_new_tokens: int = 64, sampling: Sampling | None = None,
                     stop_ids: Sequence[int] | None = None, on_token: Callable[[int], None] | None = None) -> list[int]:
        """New token ids after ``prompt`` (the prompt itself is not repeated)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise QJCError("generate: the prompt is empty")
        self._check_fits(len(prompt), max_new_tokens)
        sampling = sampling or Sampling()
        stops = self._default_stops() if stop_ids is None else set(stop_ids)
        rng = np.random.default_rng(sampling.seed)
        steps = self._decode(prompt)
        logits = next(steps)
        out: list[int] = []
        for i in range(max_new_tokens):
            token = sample(logits, sampling, rng)
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in stops:
                break
            if i + 1 < max_new_tokens:  # one engine run per token produced
                logits = steps.send(token)
        steps.close()
        return out

    def generate(self, prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
                 max_new_tokens: int = 64, **options: Any):
        """Text in -> text out; token ids in -> ids out; a list of prompts -> a list of results."""
        sampling = Sampling(**{k: options.pop(k) for k in list(options) if k in Sampling.__dataclass_fields__})
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            return self.tokenizer.decode(self.generate_ids(ids, max_new_tokens, sampling, **options),
                                         skip_special_tokens=True)
        prompt = list(prompt)
        if prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
            return [self.generate(p if isinstance(p, str) else list(p), max_new_tokens, **dict(options, **{
                k: getattr(sampling, k) for k in Sampling.__dataclass_fields__})) for p in prompt]
        return self.generate_ids(prompt, max_new_tokens, sampling, **options)


class Generator(PromptLoop):
    """Prefill + token-by-token decode over one engine; the caches live here between steps."""

    def __init__(self, engine: Any) -> None:
        llm = engine.manifest.get("llm")
        if not llm:
            raise QJCError(f"{engine.path} is not a language-model artifact (no llm section in its manifest)",
                           "compile a Hugging Face directory or a .gguf file")
        self.engine = engine
        self.llm = llm
        if llm["batch"] != 1:
            raise QJCError(f"{engine.path}: the host generation loop runs batch-1 decoders; "
                           f"this one was compiled for batch {llm['batch']}")
        self.max_seq = int(llm["max_seq"])
        self.state_specs = engine.signature.inputs[2:]

    def _fresh_state(self) -> list[np.ndarray]:
        return [np.zeros(tuple(int(d) for d in s.shape), dtype=_np_dtype(s.dtype)) for s in self.state_specs]

    def _check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len + max_new_tokens > self.max_seq:
            raise QJCError(f"generate: prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                           f"the engine's max_seq {self.max_seq}", "compile with a larger max_seq")

    def _default_stops(self) -> set[int]:
        return set(self.llm.get("eos_token_ids", []))

    def _decode(self, prompt: list[int]) -> collections.abc.Generator[np.ndarray, int, None]:
        state = self._fresh_state()
        tokens = np.asarray([prompt], dtype=np.int64)
        positions = np.arange(len(prompt), dtype=np.int64)
        while True:
            logits, *state = self.engine(tokens, positions, *state)
            token = yield np.asarray(logits)[0, -1]
            positions = np.asarray([positions[-1] + 1], dtype=np.int64)
            tokens = np.asarray([[token]], dtype=np.int64)


class TextStream:
    """An ``on_token`` callback that writes the newly decoded text as tokens arrive. It decodes the
    whole continuation each time: several tokens can merge into one character."""

    def __init__(self, tokenizer: Any, write: Callable[[str], Any] | None = None) -> None:
        import sys

        self.tokenizer = tokenizer
        self.write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        self.tokens: list[int] = []
        self.text = ""

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.write(text[len(self.text):])
        self.text = text


def load_tokenizer(engine: Any):
    """The tokenizer stored in the artifact (transformers is used only at this edge)."""
    rel = (engine.manifest.get("llm") or {}).get("tokenizer")
    if not rel:
        raise QJCError(f"{engine.path} has no tokenizer (an ONNX file carries none); pass token ids instead of text",
                       "generate from token ids in Python: qjc.load(path).generate([ids...])")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise QJCError("text prompts need transformers for the tokenizer", "pip install transformers") from None
    return AutoTokenizer.from_pretrained(str(engine.path / rel))


def _np_dtype(name: str) -> np.dtype:
    from qjc.ir.dtypes import parse_dtype

    return parse_dtype(name).np_dtype
