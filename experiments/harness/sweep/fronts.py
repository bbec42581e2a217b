"""Pareto fronts of a sweep's trials (smallest size, highest accuracy) and their plot."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from experiments.harness import atomic

__all__ = ["pareto_front", "plot_pareto"]


def pareto_front(sizes: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points: smallest size, highest accuracy.

    Point ``j`` dominates point ``i`` when ``sizes[j] <= sizes[i]`` and
    ``accs[j] >= accs[i]`` with one of the two strict; the front is the set of
    points no point dominates (identical points are all on it). Points with a
    non-finite coordinate are ignored. Returned sorted by size, then index;
    ``O(n log n)``.
    """
    if len(sizes) != len(accs):
        raise ValueError(f"{len(sizes)} sizes but {len(accs)} accuracies")
    pts = [(float(s), float(a), i) for i, (s, a) in enumerate(zip(sizes, accs))
           if math.isfinite(float(s)) and math.isfinite(float(a))]
    pts.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[int] = []
    best: tuple[float, float] | None = None  # (acc, size) of the last front point
    for size, acc, i in pts:
        if best is None or acc > best[0] or (acc == best[0] and size == best[1]):
            front.append(i)
            best = (acc, size)
    return front


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                acc_key: str = "test_acc", size_key: str = "params",
                title: str = "") -> bool:
    """Write ``path`` (PNG): ``acc_key`` against ``size_key`` (log x), Pareto front as a step line.

    Uses the rows holding numeric values for both keys; returns False (and
    writes nothing) when there are none.
    """
    pts = [(float(r[size_key]), float(r[acc_key])) for r in rows
           if _is_number(r.get(size_key)) and _is_number(r.get(acc_key))]
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return False
    from matplotlib.figure import Figure  # no pyplot: works without a display

    sizes, accs = zip(*pts)
    front = pareto_front(sizes, accs)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.scatter(sizes, accs, s=18, color="0.55", label=f"trials ({len(pts)})")
    fs, fa = [sizes[i] for i in front], [accs[i] for i in front]
    ax.step(fs, fa, where="post", color="C3", lw=1.5)
    ax.scatter(fs, fa, s=30, color="C3", zorder=3, label=f"Pareto front ({len(front)})")
    if min(sizes) > 0:
        from experiments.harness.plots import log_count_axis

        log_count_axis(ax)
    ax.set(xlabel=size_key, ylabel=acc_key, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    atomic.save_figure(fig, path)
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)

