"""Turn `--quant MODE [--group-size N] [--keep PATTERN]` into the quantization pass for a graph,
calibrating first when the mode asks for it (on the fixed calibration text, for language models)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qjc.errors import QJCError
from qjc.ir import Graph
from qjc.passes.quantize.awq import calibrate
from qjc.passes.quantize.modes import is_calibrated, scheme_for
from qjc.passes.quantize.weights import QuantizeWeights


def calibration_inputs(graph: Graph, n_tokens: int = 256) -> list[np.ndarray]:
    """Inputs of an LLM decoder graph holding the calibration text, tokenized with the tokenizer
    the frontend attached to the graph."""
    import tempfile
    from pathlib import Path

    from qjc.evaluation import calibration_text

    llm = graph.meta.get("llm")
    files = graph.meta.get("attachments", {})
    if not llm or not llm.get("tokenizer"):
        raise QJCError("calibrated quantization needs a language model with its tokenizer",
                       "use --quant int4 (round to nearest) for other models")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for rel, data in files.items():
            dest = Path(tmp) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(str(Path(tmp) / llm["tokenizer"]))
    n = min(n_tokens, int(llm["max_seq"]))
    ids = np.asarray(tokenizer(calibration_text()).input_ids[:n], np.int64)
    caches = [np.zeros(tuple(v.type.shape), v.type.dtype.np_dtype) for v in graph.inputs[2:]]
    return [np.repeat(ids[None, :], int(llm["batch"]), axis=0), np.arange(len(ids), dtype=np.int64)] + caches


def quantization_pass(graph: Graph, mode: str, group_size: int = 128, keep: Sequence[str] = (),
                      log=None) -> QuantizeWeights | None:
    """The weight pass of ``mode`` (None for "none"); fp8 also needs ``activation_pass``."""
    scheme = scheme_for(mode, group_size)
    if scheme is None:
        return None
    scales = None
    if is_calibrated(mode):
        scales, notes = calibrate(graph, calibration_inputs(graph), scheme, skip=keep)
        for note in notes if log is not None else ():
            log(note)
    return QuantizeWeights(scheme, keep, scales)


def activation_pass(mode: str):
    """The pass that quantizes activations for ``mode``, or None (only fp8 has one)."""
    from qjc.passes.quantize.activations import QuantizeActivationsFp8

    return QuantizeActivationsFp8() if mode == "fp8" else None
