"""The accuracy targets of the peers benchmark read over several of its seeds.

One run of :mod:`experiments.bench.peers` compares the methods on one pair of
trained networks and one fine-tuning order. The gaps it finds after fine-tuning
are a few tenths of a point, and which peer is best changes from seed to seed.
This module reads finished runs (their logs, or files holding their final JSON
line) of one setting and different seeds, and decides the two accuracy targets
on the seed means::

    OMP_NUM_THREADS=1 python -m experiments.bench.peers --seed 2 > runs/bench-peers-seed2.log
    python -m experiments.bench.peers_seeds --out docs/img/peers_seeds.png \\
        runs/bench-peers.log runs/bench-peers-seed1.log runs/bench-peers-seed2.log

The rule (:func:`seed_summary`): at every network, size and stage (right after
pruning, after fine-tuning) each method's test accuracy is averaged over the
seeds; the best peer is the peer method with the highest mean; the fine-tuning
target holds at a point if the mean of MRS is no lower than that (a 1e-9 margin
for floating point), the pruning target if it is higher. A target holds if it
holds at every point. The per-seed differences between MRS and that peer, with
their 95% Student-t interval (the spread over training and fine-tuning; every
seed is tested on the same test set), and each seed's own verdict are reported
beside it and do not decide.

A network the benchmark compares right after pruning only (ResNet-20 and MobileNetV2, which
it does not fine-tune: their rows have no fine-tuned accuracy) has that stage only; the
fine-tuning target is read on the other networks.

It prints a Markdown table, the verdicts, and one JSON line last; ``--out``
draws the differences. Errors (an unfinished run, runs of different settings,
a seed given twice) go to stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.bench.peers import CLASSIC_METHODS, METHODS, OURS, TARGETS
from experiments.harness import atomic
from experiments.harness.stats import mean, t_interval
from experiments.harness.tables import format_table

__all__ = ["load_result", "seed_summary", "summary_table", "means_table", "md_cell", "plot_gaps",
           "run_setting", "normalize_setting", "main"]

PEERS = tuple(m for m in METHODS if m not in OURS)
MRS = "ours_mrs"
STAGES = {"acc_pruned": "right after pruning", "acc_finetuned": "after fine-tuning"}
# the benchmark's two accuracy targets, by the stage they are read at
STAGE_TARGET = {"acc_pruned": "accuracy_after_pruning",
                "acc_finetuned": "accuracy_after_finetune"}
MARGIN = 1e-9
SHORT = {"tp_magnitude": "TP magnitude", "tp_taylor": "TP Taylor", "tp_bn_scale": "TP BN scale",
         "ln_structured": "ln_structured"}


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """The result of one finished peers run: the last line of ``path`` that is the
    benchmark's JSON object (a log may end with other lines, e.g. ``time``'s)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")  # FileNotFoundError names the path
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("benchmark") == "peers":
            return obj
    raise ValueError(f"{path}: no result line of the peers benchmark (the JSON object it "
                     f"prints last); was the run finished?")


#: fields a peers setting gained over time, with the value the runs made before them had
_SETTING_DEFAULTS = {"rounds": 1, "methods": list(CLASSIC_METHODS), "reduce_by": "params",
                     "constant_images": 2000, "test_images": None}


def normalize_setting(setting: Mapping[str, Any]) -> dict[str, Any]:
    """A peers setting (JSON) with the fields added since a run was made filled in as that run
    had them: ``rounds = 1`` (before ``--rounds``, runs pruned in one shot), the MLP and CNN's
    methods, sizes by parameters, 2,000 constant-unit images, the whole test set, and no
    per-network overrides."""
    out = dict(setting)
    for key, value in _SETTING_DEFAULTS.items():
        out.setdefault(key, value)
    if isinstance(out.get("models"), list):
        out["models"] = [{**m, "overrides": m.get("overrides", {})} if isinstance(m, Mapping)
                         else m for m in out["models"]]
    return out


def run_setting(result: Mapping[str, Any]) -> dict[str, Any]:
    """A peers result's setting, completed for runs logged before some of its fields existed
    (:func:`normalize_setting`)."""
    return normalize_setting(result["config"]["setting"])


def _setting(result: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that must be equal for runs to be averaged: the setting (``rounds``
    defaults to 1, for runs made before it existed), the data, quick mode, the torch and
    Torch-Pruning versions."""
    c = result["config"]
    setting = run_setting(result)
    return {**{f"setting.{k}": v for k, v in setting.items()}, "data": c["data"],
            "quick": c["quick"], "torch": c.get("torch"), "torch_pruning": c["torch_pruning"]}


_CONFIG_KEYS = ("seed", "setting", "data", "quick", "torch_pruning")
_ROW_KEYS = ("model", "target", "method", "label", "kept", "params", *STAGES)


def _check_result(name: str, result: Any) -> None:
    """``ValueError`` naming the run and the field when ``result`` is not a peers result."""
    if not isinstance(result, Mapping) or not isinstance(result.get("config"), Mapping):
        raise ValueError(f"seed_summary: {name} has no 'config'; is it a peers result?")
    lacks = [k for k in _CONFIG_KEYS if k not in result["config"]]
    if lacks:
        raise ValueError(f"seed_summary: {name}'s config lacks {lacks}")
    if not isinstance(result.get("accuracy"), list):
        raise ValueError(f"seed_summary: {name} has no 'accuracy' list")
    untuned = {}
    for i, row in enumerate(result["accuracy"]):
        lacks = [k for k in _ROW_KEYS if not isinstance(row, Mapping) or k not in row]
        if lacks:
            raise ValueError(f"seed_summary: {name}'s accuracy row {i} lacks {lacks}")
        none = row["acc_finetuned"] is None
        if untuned.setdefault(row["model"], none) != none:
            raise ValueError(f"seed_summary: {name}'s accuracy row {i} ({row['model']} "
                             f"{row['target']}x {row['method']}): acc_finetuned is "
                             f"{row['acc_finetuned']!r}, while other rows of {row['model']} "
                             f"are {'' if none else 'not '}fine-tuned")
        for stage in STAGES:
            v = row[stage]
            if stage == "acc_finetuned" and none:
                continue  # a network compared right after pruning only
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"seed_summary: {name}'s accuracy row {i} "
                                 f"({row['model']} {row['target']}x {row['method']}): "
                                 f"{stage} is {v!r}, not an accuracy in [0, 1]")


def _stage_met(stage: str, gap: float) -> bool:
    """The benchmark's rule at one point: no lower after fine-tuning, higher right after pruning
    (``MARGIN`` absorbs floating point; accuracies differ by at least 0.01 points)."""
    return gap >= -MARGIN if stage == "acc_finetuned" else gap > MARGIN


def _differences(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    d = [x - y for x, y in zip(a, b)]
    return {"per_seed": d, "mean": mean(d), "ci95": t_interval(d)}


def _same_setting(results: Sequence[Mapping[str, Any]], names: Sequence[str]
                  ) -> dict[str, Any]:
    """The runs' common setting (:func:`_setting`); ``ValueError`` naming the run and the fields
    that differ from the first run's."""
    ref = _setting(results[0])
    for name, r in zip(names, results):
        mine = _setting(r)
        diff = sorted(k for k in ref.keys() | mine.keys() if ref.get(k) != mine.get(k))
        if diff:
            raise ValueError(
                f"seed_summary: {name} was run with another setting than {names[0]}: "
                + "; ".join(f"{k} {mine.get(k)!r} against {ref.get(k)!r}" for k in diff)
                + " (only the seed may differ)")
    return ref


def _distinct_seeds(results: Sequence[Mapping[str, Any]]) -> list[int]:
    seeds = [r["config"]["seed"] for r in results]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seed_summary: seed(s) {twice} given more than once")
    return seeds


def _rows_by_key(name: str, result: Mapping[str, Any]) -> dict[tuple, Mapping[str, Any]]:
    """A run's accuracy rows by (network, size, method); ``ValueError`` on a repeated key."""
    by = {}
    for row in result["accuracy"]:
        key = (row["model"], float(row["target"]), row["method"])
        if key in by:
            raise ValueError(f"seed_summary: {name} has two rows for {key}")
        by[key] = row
    return by


def _point_keys(tables: Sequence[Mapping[tuple, Any]], names: Sequence[str]) -> list[tuple]:
    """The (network, size) points of the first run, MLP first; every run must have no other."""
    keys = sorted({k[:2] for k in tables[0]}, key=lambda k: (k[0] != "mlp", k[0], k[1]))
    if not keys:
        raise ValueError(f"seed_summary: {names[0]} has no accuracy rows")
    for name, by in zip(names, tables):
        other = {k[:2] for k in by} - set(keys)
        if other:
            raise ValueError(f"seed_summary: {name} has points {sorted(other)} that "
                             f"{names[0]} lacks")
    return keys


def _methods_at(model: str, target: float, tables: Sequence[Mapping[tuple, Any]],
                names: Sequence[str]) -> list[str]:
    """The methods of the first run at a point, which every run must have, no more, no less;
    they must include MRS and a peer."""
    methods = [m for m in METHODS if (model, target, m) in tables[0]]
    for name, by in zip(names, tables):
        missing = [m for m in methods if (model, target, m) not in by]
        extra = {k[2] for k in by if k[:2] == (model, target)} - set(methods)
        if missing or extra:
            raise ValueError(f"seed_summary: {name} at {model} {target:g}x lacks "
                             f"{missing or '-'} or has extra {sorted(extra) or '-'} "
                             f"against {names[0]}")
    if MRS not in methods or not any(p in methods for p in PEERS):
        raise ValueError(f"seed_summary: {model} {target:g}x needs MRS and a peer")
    return methods


def _stage(stage: str, acc: Mapping[str, Mapping[str, list[float]]], peers: Sequence[str],
           ours: Sequence[str]) -> dict[str, Any]:
    """One stage of a point: the best peer on the means, MRS's gap to it and its verdict, the
    per-seed differences, each seed's own verdict, and the best of ours likewise."""
    best = max(peers, key=lambda m: mean(acc[m][stage]))
    gap = mean(acc[MRS][stage]) - mean(acc[best][stage])
    top = max(ours, key=lambda m: mean(acc[m][stage]))
    top_gap = mean(acc[top][stage]) - mean(acc[best][stage])
    # each seed alone, against its own best peer: the single run's verdict
    alone = [_stage_met(stage, acc[MRS][stage][i] - max(acc[m][stage][i] for m in peers))
             for i in range(len(acc[MRS][stage]))]
    return {"best_peer": best, "gap": gap, "met": _stage_met(stage, gap),
            "differences": _differences(acc[MRS][stage], acc[best][stage]),
            "met_alone": alone,
            "best_of_ours": {"method": top, "gap": top_gap, "met": _stage_met(stage, top_gap)}}


def _point(model: str, target: float, tables: Sequence[Mapping[tuple, Any]],
           names: Sequence[str]) -> dict[str, Any]:
    """A point of :func:`seed_summary`: every method's accuracies, per stage the verdicts (a
    network that was not fine-tuned has the stage right after pruning only)."""
    methods = _methods_at(model, target, tables, names)
    rows0 = tables[0][(model, target, MRS)]
    stages = [st for st in STAGES
              if all(by[(model, target, m)][st] is not None for by in tables for m in methods)]
    acc = {m: {stage: [round(100 * by[(model, target, m)][stage], 9) for by in tables]
               for stage in stages} for m in methods}
    peers = [m for m in PEERS if m in methods]
    ours = [m for m in OURS if m in methods]
    return {"model": model, "target": target, "kept": rows0["kept"], "params": rows0["params"],
            "methods": {m: {"label": tables[0][(model, target, m)]["label"],
                            **{stage: {"per_seed": v, "mean": mean(v), "ci95": t_interval(v)}
                               for stage, v in acc[m].items()}} for m in methods},
            "stages": {stage: _stage(stage, acc, peers, ours) for stage in stages}}


def seed_summary(results: Sequence[Mapping[str, Any]],
                 names: Sequence[str] | None = None) -> dict[str, Any]:
    """The accuracy comparison of several peers runs, decided on the seed means.

    ``results`` are the JSON objects of finished runs of one setting with different
    seeds (``names``, e.g. their files, only label the errors). Accuracies are in
    points (percent). Returns ``{"seeds", "rounds", "points", "targets",
    "best_of_ours"}``: a point per network and size with, for every method, its
    per-seed and mean accuracy at each stage and, per stage, the best peer on the
    means, the gap of MRS to it (``gap``), whether the target holds there (``met``)
    (decided on ``gap``, the difference of the means), the per-seed differences
    with their 95% t-interval (``differences``, reported only: it covers the spread
    of training and fine-tuning, not the sampling of the one test set all seeds
    share, and not that the peer was chosen as the best on these same runs), and
    ``met_alone``, each seed's verdict against its own best peer (the single run's
    rule); ``best_of_ours`` does the same for the best of our methods on the
    means. ``targets`` maps each of the two accuracy targets to whether it holds at
    every point. ``ValueError`` names the run that is not a peers result, has another
    setting (and which fields differ), repeats a seed, or lacks or adds a method or
    point.
    """
    if not results:
        raise ValueError("seed_summary: no runs given")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(results))]
    for name, r in zip(names, results):
        _check_result(name, r)
    ref = _same_setting(results, names)
    seeds = _distinct_seeds(results)
    tables = [_rows_by_key(name, r) for name, r in zip(names, results)]
    points = [_point(model, target, tables, names)
              for model, target in _point_keys(tables, names)]
    by_target = {t: stage for stage, t in STAGE_TARGET.items()}
    def at(stage):
        return [p["stages"][stage] for p in points if stage in p["stages"]]

    targets = {key: {"target": TARGETS[key],
                     "met": all(st["met"] for st in at(by_target[key])) if at(by_target[key])
                     else None,
                     "points_met": sum(st["met"] for st in at(by_target[key])),
                     "points": len(at(by_target[key]))}
               for key in TARGETS if key in by_target}
    best_of_ours = {stage: all(st["best_of_ours"]["met"] for st in at(stage)) if at(stage)
                    else None for stage in STAGES}
    return {"seeds": seeds, "rounds": ref["setting.rounds"], "points": points,
            "targets": targets, "best_of_ours": best_of_ours}


def md_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (what
    :func:`experiments.harness.tables.format_table` does to every cell with ``markdown=True``)."""
    return text.replace("|", "\\|")


def _interval(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:+.2f} to {ci[1]:+.2f}"


def summary_table(summary: Mapping[str, Any]) -> str:
    """A Markdown table: per point and stage, the means of MRS and of the best peer, the
    gap, the per-seed differences' 95% t-interval, on how many seeds the single run's
    verdict (against that seed's own best peer) was met, and the verdict on the means."""
    n = len(summary["seeds"])
    rows = []
    for p in summary["points"]:
        for stage, desc in STAGES.items():
            if stage not in p["stages"]:
                continue
            st = p["stages"][stage]
            best = p["methods"][st["best_peer"]]
            rows.append({"model": p["model"].upper(), "target": p["target"], "stage": desc,
                         "mrs": p["methods"][MRS][stage]["mean"],
                         "best": f"{best['label']} ({best[stage]['mean']:.2f})",
                         "gap": st["gap"], "interval": _interval(st["differences"]["ci95"]),
                         "alone": f"{sum(st['met_alone'])} of {n}",
                         "verdict": "met" if st["met"] else "missed"})
    return format_table(
        rows, {"model": "network", "target": "size", "stage": "stage", "mrs": "MRS mean",
               "best": "best peer (mean)", "gap": "gap", "interval": "95% t-interval",
               "alone": "seeds met alone", "verdict": "target on the means"},
        formats={"target": lambda t: f"{t:g}x", "mrs": ".2f", "gap": "+.2f"},
        align={"alone": ">"}, markdown=True)


def means_table(summary: Mapping[str, Any], model: str) -> str:
    """A Markdown table of every method's seed means on ``model``: a row per method, a
    column per size, each cell "right after pruning / after fine-tuning" (points; right after
    pruning only for a network that was not fine-tuned), the highest mean of each stage in
    bold."""
    pts = [p for p in summary["points"] if p["model"] == model]
    if not pts:
        raise ValueError(f"means_table: no points of network {model!r}")
    methods = [m for m in METHODS if all(m in p["methods"] for p in pts)]
    best = {(p["target"], stage): max(p["methods"][m][stage]["mean"] for m in methods)
            for p in pts for stage in p["stages"]}

    def cell(p, m):
        return " / ".join(
            (f"**{v:.2f}**" if v == best[(p["target"], stage)] else f"{v:.2f}")
            for stage in STAGES if stage in p["stages"]
            for v in [p["methods"][m][stage]["mean"]])

    columns = {"method": "method", **{i: f"{p['target']:g}x ({p['params']:,})"
                                      for i, p in enumerate(pts)}}
    rows = [{"method": pts[0]["methods"][m]["label"], **{i: cell(p, m) for i, p in enumerate(pts)}}
            for m in methods]
    return format_table(rows, columns, markdown=True)


def plot_gaps(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """MRS minus the best peer (on the means), per point, one panel per stage: each seed
    as a dot, the mean as a bar (green where the target holds) with its 95% t-interval
    from three seeds on (with two, one degree of freedom makes it uninformative); the axes
    fit the dots and bars, an interval running past them is clipped. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    pts = summary["points"]
    n = len(summary["seeds"])
    fig, axes = plt.subplots(2, 1, figsize=(10, 8.5))
    xs = list(range(len(pts)))
    for ax, (stage, desc) in zip(axes, STAGES.items()):
        values = [0.0]
        for x, p in zip(xs, pts):
            if stage not in p["stages"]:
                continue
            st = p["stages"][stage]
            d = st["differences"]
            values += [d["mean"], *d["per_seed"]]
            ax.bar([x], [d["mean"]], color="C2" if st["met"] else "C3", alpha=0.55, width=0.6)
            if d["ci95"] is not None and n >= 3:
                lo, hi = d["ci95"]
                ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - lo], [hi - d["mean"]]],
                            color="k", capsize=4, lw=1)
            ax.scatter([x] * len(d["per_seed"]), d["per_seed"], color="k", s=12, zorder=5)
        pad = 0.15 * (max(values) - min(values) or 1.0)
        ax.set_ylim(min(values) - pad, max(values) + pad)
        ax.set_xticks(xs, [f"{p['model'].upper()} {p['target']:g}x\nvs "
                           + SHORT.get(p["stages"][stage]["best_peer"],
                                       p["stages"][stage]["best_peer"])
                           if stage in p["stages"] else
                           f"{p['model'].upper()} {p['target']:g}x\n(not fine-tuned)"
                           for p in pts], fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(ylabel="MRS - best peer (accuracy points)",
               title=f"{desc} ({n} seed{'s' * (n != 1)})")
    bars = "the mean with its 95% t-interval" if n >= 3 else "the mean"
    fig.suptitle(f"MRS minus the best peer on the means: dots per seed, bars {bars} "
                 f"(green: the target holds)", fontsize=11)
    fig.tight_layout()
    atomic.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.bench.peers_seeds [--out PNG] RUN...``; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m experiments.bench.peers_seeds",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="logs (or JSON files) of finished peers runs")
    ap.add_argument("--out", help="write the figure of the differences here (PNG)")
    args = ap.parse_args(argv)
    try:
        results = [load_result(p) for p in args.runs]
        summary = seed_summary(results, args.runs)
        if args.out:  # before printing: a figure that cannot be written fails the command
            plot_gaps(summary, args.out)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rounds = summary["rounds"]
    print(f"peers benchmark over seeds {summary['seeds']}"
          f"{'' if rounds == 1 else f', pruning in {rounds} rounds'}\n")
    print(summary_table(summary))
    for model in dict.fromkeys(p["model"] for p in summary["points"]):
        print(f"\n{model.upper()}, every method's seed means (right after pruning / after "
              f"fine-tuning):\n")
        print(means_table(summary, model))
    print()
    for key, t in summary["targets"].items():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        print(f"target {key}: {t['target']}, on the seed means: "
              f"{verdict} ({t['points_met']} of {t['points']} points)")
    for stage, ok in summary["best_of_ours"].items():
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[ok]
        print(f"(not a target) best of our methods, {STAGES[stage]}, on the seed means: "
              f"{verdict}")
    print(json.dumps({"benchmark": "peers_seeds", **summary}, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
