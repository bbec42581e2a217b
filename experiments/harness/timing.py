"""Timing on a shared machine: work compared under the same load, and that load measured.

* :func:`alternating` and :func:`time_models` time pieces of work in turn, so
  that drifts in the machine's speed hit all of them alike (ratios of their
  medians are what a benchmark reports);
* :func:`busy_cpu_seconds`, :func:`cpu_mark` and :func:`others_busy` measure
  how many CPUs other processes kept busy meanwhile (Linux ``/proc/stat``),
  :func:`loadavg` the 1-minute load average; timings taken while others used
  more than :data:`BUSY_WARNING` CPUs deserve a warning.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["alternating", "time_models", "busy_cpu_seconds", "cpu_mark", "others_busy",
           "timed", "loadavg", "BUSY_WARNING"]

#: mean CPUs used by other processes while timing above which timings are flagged as noisy
BUSY_WARNING = 0.25


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


def time_models(models: Sequence[nn.Module], x: torch.Tensor, *, repeats: int,
                block_seconds: float = 0.025, warmup_seconds: float = 0.1,
                min_warmup: int = 3) -> list[list[float]]:
    """Per-call times (seconds) of each model on ``x``, interleaved.

    Each model is warmed up (at least ``min_warmup`` calls and
    ``warmup_seconds``), which also estimates its call time and so the number
    of calls in its block (about ``block_seconds``, at least one). Then
    ``repeats`` rounds time one block of every model, in an order rotated by
    one model per round. The garbage collector is off while timing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for m in models:
        m.eval()
    times: list[list[float]] = [[] for _ in models]
    calls: list[int] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            for m in models:
                warm: list[float] = []
                start = time.perf_counter()
                while len(warm) < min_warmup or time.perf_counter() - start < warmup_seconds:
                    t0 = time.perf_counter()
                    m(x)
                    warm.append(time.perf_counter() - t0)
                    if len(warm) >= 1000:
                        break
                est = statistics.median(warm[len(warm) // 2:])
                calls.append(max(1, min(1000, round(block_seconds / max(est, 1e-7)))))
            n = len(models)
            for r in range(repeats):
                for j in range(n):
                    i = (j + r) % n
                    m, out = models[i], times[i]
                    for _ in range(calls[i]):
                        t0 = time.perf_counter()
                        m(x)
                        out.append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return times


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None


def cpu_mark() -> tuple[float | None, float, float]:
    """``(all processes' CPU seconds, this process's CPU seconds, wall clock)`` now, for
    :func:`others_busy`."""
    return busy_cpu_seconds(), time.process_time(), time.perf_counter()


def others_busy(mark: tuple[float | None, float, float]) -> float | None:
    """Mean number of CPUs that other processes kept busy since ``mark`` (:func:`cpu_mark`):
    ``((all CPU seconds) - (own CPU seconds)) / wall seconds``, None off Linux."""
    busy0, own0, wall0 = mark
    busy1, own1, wall1 = cpu_mark()
    if busy0 is None or busy1 is None or wall1 <= wall0:
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


def timed(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """``(fn(), mean CPUs other processes kept busy while it ran)`` (see :func:`others_busy`)."""
    mark = cpu_mark()
    out = fn()
    return out, others_busy(mark)


def loadavg() -> float | None:
    """The 1-minute load average (how busy the machine was), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on POSIX
        return None
