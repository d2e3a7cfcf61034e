"""Activation-aware weight scaling (AWQ-style) for int4 weight-only quantization.

Input channels that carry large activations matter more. For each linear layer, scale the weight's
columns by s = mean|x|^alpha before quantizing and divide the input by s at run time (exact in
float arithmetic), choosing alpha on calibration activations to minimize the output error of the
quantized layer. alpha = 0 is plain round-to-nearest, so calibration never does worse on the
calibration data than RTN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qjc.ir import Graph, Node
from qjc.ir.dtypes import QuantScheme
from qjc.ir.interpreter import run
from qjc.ir.quant import QuantizedArray, dequantize, quantize

MAX_ROWS = 256  # calibration rows kept per layer: enough to rank alphas, cheap to search over
ALPHAS = np.linspace(0.0, 1.0, 11)


def collect_linear_inputs(graph: Graph, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """The input rows ([rows, K], float64) each constant-weight linear sees, keyed by weight name."""
    seen: dict[str, np.ndarray] = {}

    def observe(node: Node, args: list[Any], outs: list[Any]) -> None:
        if node.op == "linear" and graph.is_constant(node.inputs[1]):
            if isinstance(graph.constant_data(node.inputs[1]), QuantizedArray):
                return
            rows = np.asarray(args[0], np.float64).reshape(-1, args[0].shape[-1])
            prev = seen.get(node.inputs[1].name)
            seen[node.inputs[1].name] = rows if prev is None else np.concatenate([prev, rows])[:MAX_ROWS]

    run(graph, list(inputs), observer=observe)
    return {name: rows[:MAX_ROWS] for name, rows in seen.items()}


def best_scales(weight: np.ndarray, rows: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray | None, float, float]:
    """(per-input-channel scales or None for plain RTN, error with them, RTN error)."""
    w = np.asarray(weight, np.float64)
    ref = rows @ w.T
    magnitude = np.abs(rows).mean(axis=0) + 1e-8
    best_err, best_s, rtn_err = np.inf, None, np.inf
    for alpha in ALPHAS:
        s = magnitude**alpha
        s = s / np.sqrt(s.max() * s.min())  # centre the scales around 1 so the scale dtype keeps precision
        wq = dequantize(quantize(w * s[None, :], scheme), np.float64)
        err = float(np.mean(((rows / s[None, :]) @ wq.T - ref) ** 2))
        if alpha == 0.0:
            rtn_err = err
        if err < best_err:
            best_err, best_s = err, (None if alpha == 0.0 else s)
    return best_s, best_err, rtn_err


def calibrate(graph: Graph, inputs: Sequence[Any], scheme: QuantScheme,
              skip: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scales for every linear weight where they beat RTN on the calibration inputs, and notes."""
    import re

    patterns = [re.compile(p) for p in skip]
    scales: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for name, rows in collect_linear_inputs(graph, inputs).items():
        if any(p.search(name) for p in patterns):
            continue
        weight = graph.constants[name].data
        if scheme.group_size and weight.shape[-1] % scheme.group_size:
            continue
        s, err, rtn = best_scales(weight, rows, scheme)
        if s is not None:
            scales[name] = s
        notes.append(f"{name}: output error {err:.3g} (RTN {rtn:.3g})")
    return scales, notes
