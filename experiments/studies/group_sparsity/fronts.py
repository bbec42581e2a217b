"""Several ``group-sparsity`` runs side by side: their fronts against the reproduction's target.

Each run of :mod:`experiments.studies.group_sparsity.repro` selects one point per
``(network, alpha)`` on validation accuracy. Whether the method reaches the
target (``TARGET``: at least 50% fewer parameters than the unregularized run
of the same seed at a test loss of at most 0.5 points) is a question about
that selected point, and one seed cannot answer it when the point sits at the
target's edge. This module reads finished run folders (``config.json`` and
``results.json``), lists every point with its change against its own
baseline, and draws all fronts in one figure with the target region shaded::

    python -m experiments.studies.group_sparsity.fronts --out docs/img/fronts.png \\
        "kept, seed 0=runs/group-sparsity-long" "release 5, seed 0=runs/group-sparsity-release5"

It prints a Markdown table of the selected points and, for every run, whether
its selected point meets the target; ``--points`` lists all the points.
``--mean`` adds the seed means of every label (:func:`seed_means`): each
strength's reduction and changes averaged over the label's seeds, the strength
selected on the mean validation change by the reproduction's own rule, and the
target checked on the selected strength's means.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.harness import atomic
from experiments.harness.stats import t_interval
from experiments.harness.subruns import select_matched, within_tolerance
from experiments.studies.group_sparsity.repro import TARGET, target_met

__all__ = ["load_front", "meets_target", "seed_means", "plot_fronts", "fronts_table",
           "means_table", "main"]


def meets_target(point: Mapping[str, Any], target: Mapping[str, Any] = TARGET) -> bool:
    """Whether a point removes ``>= min_reduction`` of the parameters at a test loss of at most
    ``max_loss_points``: :func:`experiments.studies.group_sparsity.repro.target_met`, the rule
    ``group-sparsity`` writes into ``results.json``."""
    return target_met(point["reduction"], point["test_change_points"], target)


def _within(point: Mapping[str, Any], tol_points: float) -> bool:
    # select_matched's own test, on the validation change in points
    return within_tolerance(point["val_change_points"], 0.0, tol_points)


#: settings that must agree between the runs averaged under one label
_SETUP = ("epochs", "release_after", "first_layers", "first_ratio", "select_within")


def load_front(folder: str | os.PathLike, label: str | None = None, *,
               network: str = TARGET["network"], alpha: str = "0") -> dict[str, Any]:
    """One finished ``group-sparsity`` run's front for ``network`` at ``alpha``.

    Returns ``{"label", "folder", "seed", "epochs", "release_after", "first_layers",
    "first_ratio", "select_within", "baseline": {"val_acc", "test_acc", "params"},
    "points": [...], "selected": point, "met": bool}`` (``select_within`` in points, as the
    changes are); the points (sorted by reduction) carry ``beta``,
    ``params``, ``reduction``, ``val_change_points``, ``test_change_points`` and
    ``selected``, and ``within``: whether the point is within ``select_within`` of the
    baseline's validation accuracy (a selected point that is not was the fallback of
    :func:`experiments.harness.subruns.select_matched`: no point was within). Raises
    ``FileNotFoundError`` for an unfinished folder (no ``results.json``) and
    ``ValueError`` naming what is missing or ambiguous otherwise.
    """
    folder = os.fspath(folder)
    res_path = os.path.join(folder, "results.json")
    if not os.path.exists(res_path):
        raise FileNotFoundError(f"{folder}: no results.json (the run has not finished)")
    res = atomic.read_json(res_path)
    cfg = atomic.read_json(os.path.join(folder, "config.json"))
    if cfg.get("experiment") != "group-sparsity":
        raise ValueError(f"{folder}: a {cfg.get('experiment')!r} run, expected 'group-sparsity'")
    nets = res["networks"]
    if network not in nets:
        raise ValueError(f"{folder}: no network {network!r} (it has {sorted(nets)})")
    entry = nets[network]
    if alpha not in entry["by_alpha"]:
        raise ValueError(f"{folder}: {network} has no alpha {alpha!r} "
                         f"(it has {sorted(entry['by_alpha'])})")
    sel = entry["by_alpha"][alpha]
    betas = [p["beta"] for p in sel["points"]]
    if len(set(betas)) != len(betas):
        raise ValueError(f"{folder}: {network} alpha={alpha} lists strength(s) "
                         f"{sorted({b for b in betas if betas.count(b) > 1})} more than once")
    tol = 100 * res["select_within"]
    keys = ("beta", "params", "reduction", "val_change_points", "test_change_points")
    points = [{**{k: p[k] for k in keys}, "widths": p["widths"],
               "selected": p["beta"] == sel["selected"]["beta"]} for p in sel["points"]]
    for p in points:
        p["within"] = _within(p, tol)
    points.sort(key=lambda p: p["reduction"])
    selected = next(p for p in points if p["selected"])
    conf = cfg["config"]
    base = entry["baseline"]
    return {"label": label or os.path.basename(folder.rstrip("/")), "folder": folder,
            "seed": conf["seed"], "epochs": conf["networks"][network]["epochs"],
            "release_after": entry.get("release_after"),
            "first_layers": res["first_layers"], "first_ratio": res["first_ratio"],
            "select_within": tol,
            "baseline": {k: base[k] for k in ("val_acc", "test_acc", "params")},
            "points": points, "selected": selected, "met": meets_target(selected)}


_MEAN_KEYS = ("reduction", "val_change_points", "test_change_points")


def seed_means(fronts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per label, every strength averaged over the label's runs (its seeds).

    For each label: ``{"label", "seeds", "points", "left_out", "selected", "met"}``. A point
    holds ``beta``, ``n`` (the runs averaged), the means of ``reduction``,
    ``val_change_points`` and ``test_change_points`` (each against its own seed's
    baseline), and ``ci95``: each mean's two-sided 95% Student-t interval over the seeds
    (``None`` for one seed); it is reported, the selection and ``met`` use the means.
    Strengths are matched to 12 significant digits. Strengths that not every run of the
    label trained are averaged over the runs that have them but are ``left_out`` of the
    selection, so every candidate is the mean of the same seeds. The selection is
    :func:`experiments.harness.subruns.select_matched` on the means: the strength with the
    largest mean reduction whose mean validation change is within the runs'
    ``select_within``; if none is, the one with the best mean validation change, and the
    selected point's ``within`` is False. ``met``: :func:`meets_target` on the selected
    means. Test accuracy plays no part in the selection. The runs of a label must share
    their settings (epochs, release epoch, per-layer strengths, tolerance) and differ in
    their seeds; ``ValueError`` says which setting or seed does not.
    """
    out = []
    for label in dict.fromkeys(f["label"] for f in fronts):
        runs = [f for f in fronts if f["label"] == label]
        for key in _SETUP:
            vals = list(dict.fromkeys(repr(f.get(key)) for f in runs))
            if len(vals) != 1:
                raise ValueError(f"seed_means: the runs labelled {label!r} differ in {key} "
                                 f"({', '.join(vals)}); average only runs of one setting")
        tol = runs[0]["select_within"]
        seeds = [f["seed"] for f in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seed_means: label {label!r} has seed(s) "
                             f"{sorted({s for s in seeds if seeds.count(s) > 1})} more than once")
        by_beta: dict[float, list[Mapping[str, Any]]] = {}
        for f in runs:
            keys = [float(f"{p['beta']:.12g}") for p in f["points"]]
            if len(set(keys)) != len(keys):
                raise ValueError(f"seed_means: the run labelled {label!r} with seed {f['seed']} "
                                 f"lists a strength more than once")
            for key, p in zip(keys, f["points"]):
                by_beta.setdefault(key, []).append(p)
        points = []
        for beta in sorted(by_beta):
            ps = by_beta[beta]
            points.append({"beta": beta, "n": len(ps), **{
                k: sum(p[k] for p in ps) / len(ps) for k in _MEAN_KEYS},
                "ci95": {k: t_interval([p[k] for p in ps]) for k in _MEAN_KEYS}})
        full = [p for p in points if p["n"] == len(runs)]
        if not full:
            raise ValueError(f"seed_means: no strength was trained by every run labelled "
                             f"{label!r}")
        for p in points:
            p["within"] = _within(p, tol)
        sel = select_matched([{**p, "kept": 1.0 - p["reduction"]} for p in full], 0.0,
                             tol, size_key="kept", val_key="val_change_points")
        sel = next(p for p in points if p["beta"] == sel["beta"])
        out.append({"label": label, "seeds": seeds, "points": points,
                    "left_out": [p["beta"] for p in points if p["n"] < len(runs)],
                    "selected": sel, "met": meets_target(sel)})
    return out


_FALLBACK = " (fallback: none within the tolerance)"


def means_table(means: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`seed_means`: every strength, the selected one in bold."""
    head = ("| run | seeds | β | runs | fewer (mean) | val change (mean) | test change (mean) "
            "| target |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for m in means:
        for p in m["points"]:
            mark = "**" if p is m["selected"] else ""
            note = " (left out: not every seed)" if p["beta"] in m["left_out"] else ""
            note += _FALLBACK if p is m["selected"] and not p["within"] else ""
            rows.append(f"| {m['label']} | {', '.join(map(str, m['seeds']))} "
                        f"| {mark}{p['beta']:g}{mark}{note} | {p['n']} "
                        f"| {100 * p['reduction']:.1f}% | {p['val_change_points']:+.2f} "
                        f"| {p['test_change_points']:+.2f} "
                        f"| {'met' if meets_target(p) else 'missed'} |")
    return "\n".join([head, *rows])


def fronts_table(fronts: Sequence[Mapping[str, Any]], *, all_points: bool = False) -> str:
    """A Markdown table: one row per run (its selected point), or per point."""
    head = ("| run | seed | baseline test | β | fewer | val change | test change | target |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for f in fronts:
        for p in (f["points"] if all_points else [f["selected"]]):
            mark = "**" if p["selected"] and all_points else ""
            note = _FALLBACK if p["selected"] and not p["within"] else ""
            rows.append(f"| {f['label']} | {f['seed']} | {100 * f['baseline']['test_acc']:.2f}% "
                        f"| {mark}{p['beta']:g}{mark}{note} | {100 * p['reduction']:.1f}% "
                        f"| {p['val_change_points']:+.2f} | {p['test_change_points']:+.2f} "
                        f"| {'met' if meets_target(p) else 'missed'} |")
    return "\n".join([head, *rows])


def plot_fronts(fronts: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                means: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Validation (the selection) and test (the target) change against the fraction removed,
    one line per run (a color per label, a line style per seed), selected points circled, the
    target region shaded, each run's selection limit dashed; with ``means`` (from
    :func:`seed_means`), each label's mean front as a thick line over the strengths every
    seed trained, its selected strength as a square; written atomically. The axes stop
    at 4 points lost: collapsed networks (tens of points) would flatten every other front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not fronts:
        raise ValueError("plot_fronts: no runs given")
    sns.set_theme(style="whitegrid")
    labels = list(dict.fromkeys(f["label"] for f in fronts))
    seeds = list(dict.fromkeys(f["seed"] for f in fronts))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for row, (key, name) in enumerate((("val_change_points", "validation"),
                                       ("test_change_points", "test"))):
        ax = axes[row]
        for f in fronts:
            # one color per label (a configuration), one line style and marker per seed
            color = f"C{labels.index(f['label']) % 10}"
            style = seeds.index(f["seed"])
            xs = [100 * p["reduction"] for p in f["points"]]
            ax.plot(xs, [p[key] for p in f["points"]], lw=1, color=color, alpha=0.7,
                    ls=("-", "--", ":", "-.")[style % 4], marker="osD^v"[style % 5],
                    label=f"{f['label']}, seed {f['seed']}")
            s = f["selected"]
            ax.scatter([100 * s["reduction"]], [s[key]], s=150, facecolors="none",
                       edgecolors=color, lw=2)
        for m in means or ():
            if len(m["seeds"]) < 2:  # the mean of one run is that run's line
                continue
            color = f"C{labels.index(m['label']) % 10}"
            full = [p for p in m["points"] if p["beta"] not in m["left_out"]]
            ax.plot([100 * p["reduction"] for p in full], [p[key] for p in full], lw=3.5,
                    color=color, alpha=0.85, solid_capstyle="round",
                    label=f"{m['label']}, mean of seeds {', '.join(map(str, m['seeds']))}")
            s = m["selected"]
            ax.scatter([100 * s["reduction"]], [s[key]], marker="s", s=90, color=color,
                       edgecolors="k", zorder=6)
        lo = min(p[key] for f in fronts for p in f["points"])
        xs_all = [100 * p["reduction"] for f in fronts for p in f["points"]]
        xlim = (max(0.0, min(xs_all) - 5), min(100.0, max(xs_all) + 5))
        if key == "test_change_points":
            ax.fill_between([100 * TARGET["min_reduction"], xlim[1]], -TARGET["max_loss_points"],
                            max(0.5, max(p[key] for f in fronts for p in f["points"]) + 0.1),
                            color="g", alpha=0.12, label="target (>= 50% fewer, <= 0.5 lost)")
        else:
            for tol in dict.fromkeys(f["select_within"] for f in fronts):
                ax.axhline(-tol, color="0.4", ls="--", lw=1, label=f"selection limit (-{tol:g})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="parameters removed (%)", ylabel=f"{name} accuracy change (points)",
               title=f"{name} accuracy against the same seed's unregularized run"
               + (" (selection)" if row == 0 else ""), xlim=xlim,
               ylim=(max(lo, -4.0) - 0.2, None))
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic.save_figure(fig, path)


def _parse_run(text: str) -> tuple[str | None, str]:
    label, sep, folder = text.rpartition("=")
    return (label if sep else None), folder


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.studies.group_sparsity.fronts [--out PNG] [--points] [LABEL=]FOLDER...``."""
    ap = argparse.ArgumentParser(prog="python -m experiments.studies.group_sparsity.fronts",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished group-sparsity run folders, "
                                            "optionally as LABEL=FOLDER")
    ap.add_argument("--network", default=TARGET["network"])
    ap.add_argument("--alpha", default="0")
    ap.add_argument("--out", help="write the figure here (PNG)")
    ap.add_argument("--points", action="store_true", help="list every point, not only the "
                                                          "selected ones")
    ap.add_argument("--mean", action="store_true", help="add the seed means per label, "
                                                        "selected on the mean validation change")
    ap.add_argument("--json", action="store_true", help="print the fronts as JSON instead")
    args = ap.parse_args(argv)
    try:
        fronts = [load_front(folder, label, network=args.network, alpha=args.alpha)
                  for label, folder in map(_parse_run, args.runs)]
        means = seed_means(fronts) if args.mean else None
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"fronts": fronts, "means": means}))
    else:
        print(fronts_table(fronts, all_points=args.points))
        met = sum(f["met"] for f in fronts)
        print(f"\ntarget met by the selected point of {met} of {len(fronts)} runs")
        if means is not None:
            print("\nseed means (the strength selected on the mean validation change):\n")
            print(means_table(means))
            for m in means:
                s = m["selected"]
                print(f"{m['label']}: beta={s['beta']:g} over seeds {m['seeds']}: "
                      f"{100 * s['reduction']:.1f}% fewer, val {s['val_change_points']:+.2f}, "
                      f"test {s['test_change_points']:+.2f}: target "
                      f"{'met' if m['met'] else 'missed'}"
                      + ("" if s["within"] else "; no strength was within the selection "
                                                "tolerance, this is the most accurate"))
                if s["n"] > 1:
                    (r0, r1), (t0, t1) = s["ci95"]["reduction"], s["ci95"]["test_change_points"]
                    print(f"  95% intervals over the {s['n']} seeds: "
                          f"{100 * r0:.1f}-{100 * r1:.1f}% fewer, test {t0:+.2f} to {t1:+.2f}")
    if args.out:
        plot_fronts(fronts, args.out, means)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
