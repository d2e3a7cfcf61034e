"""Greedy tokens of two engines compared the way float rounding allows: equal, or equal up to a first
divergence at a near-tie of the reference's top two logits (there either token is a right answer, and the
sequences differ from then on)."""

from __future__ import annotations

import numpy as np


def top2_gap(logits: np.ndarray) -> float:
    """The gap between the largest and the second largest of a row of logits."""
    a, b = np.partition(np.asarray(logits, np.float64).ravel(), -2)[-2:]
    return float(abs(b - a))


def assert_greedy_matches(got: list[int], want: list[int], gaps: list[float], near: float = 1e-3,
                          what: str = "") -> int | None:
    """Returns the step of the first divergence (None where the tokens are equal), for a test's report."""
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if first is None:
        assert len(got) == len(want), f"{what}: {len(got)} tokens where the reference has {len(want)}: {got} / {want}"
        return None
    assert gaps[first] < near, (f"{what}: diverges at step {first} ({got} / {want}), where the reference's top-2 "
                                f"logit gap is {gaps[first]:.2e}, not a near-tie (< {near})")
    return first
