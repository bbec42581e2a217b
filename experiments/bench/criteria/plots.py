"""The benchmark's pictures: accuracy against MAC reduction per network, right after pruning and
after fine-tuning, the mean over the held-out seeds drawn as a line and its 95% interval shaded;
and the exploratory screen (development seeds) as a heatmap of validation accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.harness import atomic  # noqa: E402

__all__ = ["plot_curves", "plot_screen", "STAGE_TITLES"]

STAGE_TITLES = {"acc_pruned": "right after pruning", "acc_finetuned": "after fine-tuning"}


def plot_curves(points: Sequence[Mapping[str, Any]], network: str, labels: Mapping[str, str],
                path: str | Path, baseline: float | None = None) -> list[dict[str, Any]]:
    """Two panels for ``network`` (right after pruning, after fine-tuning): test accuracy
    against times fewer MACs (log axis), one line per method of ``labels`` (in its order), the
    95% interval shaded. Returns the points drawn (method, stage, x, mean, interval)."""
    sns.set_theme(style="whitegrid", context="notebook")
    palette = dict(zip(labels, sns.color_palette("tab10", len(labels))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
    drawn = []
    for ax, stage in zip(axes, STAGE_TITLES):
        for method in labels:
            pts = sorted((p for p in points if p["network"] == network
                          and p["method"] == method and p["stage"] == stage),
                         key=lambda p: p["mac_ratio"])
            if not pts:
                continue
            x = np.array([p["mac_ratio"] for p in pts])
            y = np.array([p["mean"] for p in pts])
            lo = np.array([p["ci"][0] if p["ci"] else p["mean"] for p in pts])
            hi = np.array([p["ci"][1] if p["ci"] else p["mean"] for p in pts])
            ours = not method.startswith(("tp_", "ln_"))
            sns.lineplot(x=x, y=y * 100, ax=ax, color=palette[method], marker="o",
                         linewidth=2.4 if ours else 1.4, label=labels[method],
                         linestyle="-" if ours else "--", legend=False)
            ax.fill_between(x, lo * 100, hi * 100, color=palette[method], alpha=0.18,
                            linewidth=0)
            drawn += [{"method": method, "stage": stage, "x": float(a), "mean": float(b),
                       "lo": float(c), "hi": float(d)} for a, b, c, d in zip(x, y, lo, hi)]
        if baseline is not None:
            ax.axhline(baseline * 100, color="0.3", linestyle=":", linewidth=1.2,
                       label="unpruned (mean)")
        span = [v for d in drawn if d["stage"] == stage for v in (d["lo"], d["hi"])]
        if span:  # an interval of two seeds can reach past 0 or 100%: accuracies cannot
            ax.set_ylim(max(0.0, min(span) * 100 - 2), min(100.0, max(span) * 100 + 2))
        ax.set_xscale("log")
        ticks = sorted({round(p["x"], 2) for p in drawn})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("times fewer MACs")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{network}: {STAGE_TITLES[stage]}")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.1 + 0.035 * ((len(names) - 1) // 4), 1, 1))
    atomic.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return drawn


def plot_screen(table: Mapping[str, Mapping[str, float]], network: str, columns: Sequence[str],
                path: str | Path, chosen: Sequence[str] = ()) -> None:
    """Exploratory: the screen's mean validation accuracy (development seeds) of every method
    (rows, in the rule's order) at every figure (columns); the chosen methods' names marked."""
    methods = list(table)
    data = np.array([[table[m][c] * 100 for c in columns] for m in methods])
    sns.set_theme(style="white", context="notebook")
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 3.2, 0.32 * len(methods) + 1.6))
    sns.heatmap(data, ax=ax, annot=True, fmt=".1f", cmap="viridis", cbar=False,
                annot_kws={"size": 7})
    ax.set_yticks(np.arange(len(methods)) + 0.5)
    ax.set_yticklabels([f"{m}  *" if m in chosen else m for m in methods], rotation=0,
                       fontsize=8)
    ax.set_xticks(np.arange(len(columns)) + 0.5)
    names = {"acc_pruned": "right after pruning", "acc_finetuned": "after fine-tuning"}
    ax.set_xticklabels([" ".join(names.get(w, w) for w in c.split(" ")) for c in columns],
                       rotation=35, ha="right", fontsize=8)
    ax.set_title(f"{network}: screen, validation accuracy (%), development seeds "
                 f"(exploratory; * = selected)", fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    plt.close(fig)
