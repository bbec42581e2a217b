"""Small statistics shared by the tools that read several seeds of one experiment."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["mean", "t_interval"]


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean of a non-empty sequence."""
    if not xs:
        raise ValueError("mean of no values")
    return sum(xs) / len(xs)


def t_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student-t interval of the mean of ``xs`` at ``level``.

    ``scipy.stats.t.interval`` with ``len(xs) - 1`` degrees of freedom, centred on the mean,
    scaled by the standard error (sample standard deviation over the square root of the count).
    ``None`` for fewer than two values (no spread to estimate). With identical values the
    interval is the single point ``(x, x)`` (scipy gives NaN for a zero scale).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_interval: level must be in (0, 1), got {level!r}")
    if len(xs) < 2:
        return None
    from scipy import stats

    m = mean(xs)
    sd = statistics.stdev(xs)
    if sd == 0:
        return (m, m)
    lo, hi = stats.t.interval(level, len(xs) - 1, loc=m, scale=sd / math.sqrt(len(xs)))
    return (float(lo), float(hi))
