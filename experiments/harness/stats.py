"""Small statistics shared by the tools that read several seeds of one experiment."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["mean", "t_interval"]


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean of a non-empty sequence."""
    if not xs:
        raise ValueError("mean of no values")
    return sum(xs) / len(xs)


def t_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student-t interval of the mean of ``xs`` at ``level``.

    ``None`` for fewer than two values (no spread to estimate). With identical values the
    interval is the single point ``(x, x)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_interval: level must be in (0, 1), got {level!r}")
    if len(xs) < 2:
        return None
    from scipy import stats

    n = len(xs)
    m = mean(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (n - 1)) ** 0.5
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / n ** 0.5
    return (m - half, m + half)
