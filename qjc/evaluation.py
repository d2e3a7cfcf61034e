"""Accuracy measurement for language models: a fixed English text and perplexity.

The text is CPython's own documentation (``pydoc_data.topics``, about 65,000 words, present in
every Python installation), read at run time: a fixed slice of it is the evaluation text and a
disjoint slice the calibration text, so nothing needs to be written or shipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# word offsets into the sorted-topic text; disjoint, so calibration never sees evaluation text
EVAL_WORDS = (30000, 2400)
CALIBRATION_WORDS = (50000, 600)


def english_text(offset: int, n_words: int) -> str:
    import pydoc_data.topics as topics

    words = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).split()
    return " ".join(words[offset:offset + n_words])


def eval_text() -> str:
    return english_text(*EVAL_WORDS)


def calibration_text() -> str:
    return english_text(*CALIBRATION_WORDS)


# run(tokens [1, L] i64, positions [L] i64) -> logits [1, L, V], with fresh (empty) caches
ChunkRunner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def perplexity(run_chunk: ChunkRunner, token_ids: Sequence[int], chunk: int) -> float:
    """exp(mean negative log-likelihood) of each token given the ones before it in its chunk."""
    ids = np.asarray(token_ids, np.int64)
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start:start + chunk + 1]
        if len(piece) < 2:
            break
        inputs, targets = piece[:-1], piece[1:]
        logits = np.asarray(run_chunk(inputs[None, :], np.arange(len(inputs), dtype=np.int64)), np.float64)[0]
        logits = logits - logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= float(log_probs[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(total / count)


def graph_chunk_runner(graph) -> ChunkRunner:
    """Run an LLM decoder graph (tokens, positions, caches...) on the reference interpreter."""
    from qjc.ir.interpreter import run

    def run_chunk(tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        caches = [np.zeros(tuple(v.type.shape), v.type.dtype.np_dtype) for v in graph.inputs[2:]]
        return run(graph, [tokens, positions] + caches)[0]

    return run_chunk
