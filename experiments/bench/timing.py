"""Timing that compares two pieces of work under the same machine load."""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["alternating"]


def alternating(ref: Callable[[], object], case: Callable[[], object], repeats: int,
                warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall times in seconds of ``ref()`` and ``case()``, run alternately ``repeats`` times each
    after ``warmup`` untimed rounds.

    On a shared machine the speed drifts over seconds; alternating the two puts both under the
    same load, so their ratio (of medians, or of bests) is what a benchmark should report.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        ref()
        case()
    t_ref, t_case = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ref()
        t_ref.append(time.perf_counter() - t)
        t = time.perf_counter()
        case()
        t_case.append(time.perf_counter() - t)
    return t_ref, t_case
