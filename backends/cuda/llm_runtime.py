"""Generation on a cuda decoder artifact through the engine's native loop (templates/llm_engine.cpp.j2).

Python only queues requests and collects finished tokens: prefill, decode (CUDA-graph replays),
sampling and stop checks run inside the engine library. ``NativeGenerator`` is what
``CudaEngine.generate`` uses for artifacts whose decoder has a paged KV cache; it also exposes the
continuous-batching calls (``add``, ``step``, ``finished``) and ``decode_benchmark``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qjc.errors import BackendError, QJCError
from qjc.runtime.generation import ArtifactTokenizer, Sampling

_I32P = ctypes.POINTER(ctypes.c_int32)
GREEDY = Sampling()


def bind_llm(lib: ctypes.CDLL) -> bool:
    """Declare the loop's C functions; False if the library has none (not a paged decoder)."""
    if not hasattr(lib, "qjc_llm_add"):
        return False
    vp, i, i64p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)
    sig = {
        "qjc_llm_info": (i, [vp, i64p]),
        "qjc_llm_add": (i, [vp, _I32P, i, i, ctypes.c_float, i, ctypes.c_float, ctypes.c_uint64, _I32P, i,
                            ctypes.POINTER(i)]),
        "qjc_llm_step": (i, [vp, i, ctypes.POINTER(i)]),
        "qjc_llm_poll": (i, [vp, i, _I32P, i, ctypes.POINTER(i), ctypes.POINTER(i)]),
        "qjc_llm_release": (i, [vp, i]),
        "qjc_llm_free_blocks": (i, [vp, i64p]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return True


class NativeGenerator(ArtifactTokenizer):
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.lib = engine._lib
        self.handle = engine._handle
        info = (ctypes.c_int64 * 5)()
        self._check(self.lib.qjc_llm_info(self.handle, info))
        self.slots, self.max_seq, self.block_size, self.num_blocks, self.vocab = (int(x) for x in info)
        self.llm = engine.manifest.get("llm") or {}
        self._tokenizer = None

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise QJCError(self.engine._error())

    # ---- continuous batching -------------------------------------------------------------------
    def add(self, prompt: Sequence[int], max_new_tokens: int = 64, sampling: Sampling = GREEDY,
            stop_ids: Sequence[int] | None = None) -> int:
        """Queue a request; it joins a free slot at the next step. Returns its id."""
        ids = np.ascontiguousarray(np.asarray(list(prompt), dtype=np.int32))
        stops = np.ascontiguousarray(np.asarray(
            list(self.llm.get("eos_token_ids", []) if stop_ids is None else stop_ids), dtype=np.int32))
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(np.random.bytes(8), "little")
        rid = ctypes.c_int()
        self._check(self.lib.qjc_llm_add(
            self.handle, ids.ctypes.data_as(_I32P), len(ids), int(max_new_tokens), float(sampling.temperature),
            int(sampling.top_k), float(sampling.top_p), ctypes.c_uint64(seed & (2**64 - 1)),
            stops.ctypes.data_as(_I32P), len(stops), ctypes.byref(rid)))
        return rid.value

    def step(self, max_steps: int = 1) -> int:
        """Run up to ``max_steps`` steps natively; returns how many requests are not done."""
        pending = ctypes.c_int()
        self._check(self.lib.qjc_llm_step(self.handle, int(max_steps), ctypes.byref(pending)))
        return pending.value

    def tokens(self, request: int) -> tuple[list[int], bool]:
        """(tokens generated so far, done) of a request."""
        n, done = ctypes.c_int(), ctypes.c_int()
        cap = self.max_seq
        buf = (ctypes.c_int32 * cap)()
        self._check(self.lib.qjc_llm_poll(self.handle, request, buf, cap, ctypes.byref(n), ctypes.byref(done)))
        return list(buf[: min(n.value, cap)]), bool(done.value)

    def finished(self, request: int) -> bool:
        return self.tokens(request)[1]

    def release(self, request: int) -> None:
        self._check(self.lib.qjc_llm_release(self.handle, request))

    def free_blocks(self) -> int:
        n = ctypes.c_int64()
        self._check(self.lib.qjc_llm_free_blocks(self.handle, ctypes.byref(n)))
        return n.value

    # ---- generation ----------------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                       sampling: Sampling = GREEDY, stop_ids: Sequence[int] | None = None,
                       on_token: Callable[[int], None] | None = None) -> list[list[int]]:
        """New tokens for each prompt; more prompts than slots queue and join as others finish."""
        ids: list[int] = []
        try:
            for p in prompts:  # a refused prompt releases the ones queued before it (finally below)
                ids.append(self.add(p, max_new_tokens, sampling, stop_ids))
            if on_token is not None and len(ids) == 1:
                seen = 0
                while True:
                    pending = self.step(1)
                    toks, done = self.tokens(ids[0])
                    for t in toks[seen:]:
                        on_token(t)
                    seen = len(toks)
                    if done or pending == 0:
                        break
            else:
                while self.step(1 << 20):
                    pass
            return [self.tokens(r)[0] for r in ids]
        finally:
            for r in ids:
                self.release(r)

    def generate(self, prompt: Any, max_new_tokens: int = 64, **options: Any) -> Any:
        """Text in -> text out; token ids in -> ids out; a list of prompts -> a list of results."""
        sampling = Sampling(**{k: options.pop(k) for k in list(options) if k in Sampling.__dataclass_fields__})
        stop_ids, on_token = options.pop("stop_ids", None), options.pop("on_token", None)
        if options:
            raise QJCError(f"generate: unknown option(s) {sorted(options)}",
                           "options: temperature, top_k, top_p, seed, stop_ids, on_token")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            out = self.generate_batch([ids], max_new_tokens, sampling, stop_ids, on_token)[0]
            return self.tokenizer.decode(out, skip_special_tokens=True)
        prompt = list(prompt)
        if prompt and isinstance(prompt[0], str):
            batches = self.generate_batch([self.tokenizer.encode(p) for p in prompt], max_new_tokens, sampling,
                                          stop_ids)
            return [self.tokenizer.decode(t, skip_special_tokens=True) for t in batches]
        if prompt and isinstance(prompt[0], (list, tuple, np.ndarray)):
            return self.generate_batch([list(p) for p in prompt], max_new_tokens, sampling, stop_ids)
        return self.generate_batch([prompt], max_new_tokens, sampling, stop_ids, on_token)[0]

    # ---- timing --------------------------------------------------------------------------------
    def _prefill(self, requests: Sequence[int]) -> None:
        """Step until every request has its prompt in the cache and its first token."""
        while any(not self.tokens(r)[0] for r in requests):
            self.step(1)

    def decode_benchmark(self, batch: int | None = None, context: int = 512, steps: int = 128,
                         warmup: int = 16, seed: int = 0) -> dict[str, float]:
        """Greedy decode of ``batch`` sequences with ``context`` tokens already in the cache: wall
        time per step of the native loop (host waits included), after ``warmup`` steps."""
        batch = self.slots if batch is None else batch
        if not 1 <= batch <= self.slots:
            raise QJCError(f"decode_benchmark: batch {batch} is outside 1..{self.slots} (the engine's slots)")
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, self.vocab, context).tolist() for _ in range(batch)]
        total = warmup + steps + 1
        ids = [self.add(p, total, Sampling(), stop_ids=[]) for p in prompts]
        try:
            start = time.perf_counter()
            self._prefill(ids)
            prefill = time.perf_counter() - start
            self.step(warmup)
            start = time.perf_counter()
            self.step(steps)
            elapsed = time.perf_counter() - start
            produced = min(len(self.tokens(r)[0]) for r in ids)
            if produced < warmup + steps + 1:
                raise BackendError(f"decode_benchmark: only {produced} tokens were produced")
        finally:
            for r in ids:
                self.release(r)
        us = elapsed / steps * 1e6
        return {"us_per_step": us, "tokens_per_s": batch * steps / elapsed, "prefill_ms": prefill * 1e3}

    def token_latencies(self, context: int = 128, steps: int = 64, seed: int = 0) -> list[float]:
        """Milliseconds per token of one sequence stepped one token at a time (what a streaming
        client sees: a step, a host round trip, the token)."""
        rng = np.random.default_rng(seed)
        rid = self.add(rng.integers(0, self.vocab, max(1, context)).tolist(), steps + 1, GREEDY, stop_ids=[])
        out = []
        try:
            self._prefill([rid])
            for _ in range(steps):
                start = time.perf_counter()
                self.step(1)
                out.append((time.perf_counter() - start) * 1e3)
        finally:
            self.release(rid)
        return out
