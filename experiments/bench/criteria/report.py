"""The report of a benchmark folder: tables (printed and as Markdown), the curves, the verdict,
and a final JSON line with the differences to the best peer.

Written into ``ROOT/report/`` (``report.md``, ``results.json``, ``criteria_<network>.png``,
``criteria_screen_<network>.png``), every file atomically; ``docs=DIR`` also writes the figures into
``DIR`` for the documentation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments.bench.criteria.methods import PEER_LABELS
from experiments.bench.criteria.plots import STAGE_TITLES, plot_curves, plot_screen
from experiments.bench.criteria.rule import STAGES
from experiments.bench.criteria.setting import Setting, parse_ours
from experiments.bench.criteria.store import Store
from experiments.bench.criteria.summary import curves, differences, seed_stats, verdict
from experiments.bench.criteria.trial import example_input, peers_of, read_selection, \
    setting_named
from experiments.bench.criteria.width import WIDTH_METHODS
from experiments.harness import atomic
from experiments.harness.stats import mean

__all__ = ["write_report", "label", "fmt_ci", "differences_table", "means_table",
           "width_table", "screen_table"]


def label(method: str) -> str:
    """A method's name for tables and legends."""
    if method in PEER_LABELS:
        return PEER_LABELS[method]
    ours = parse_ours(method)
    if ours is None:
        return method
    scorer, rep, mode = ours
    modes = {"oneshot": "one shot", "rounds": "rounds", "rounds_ft": "rounds + fine-tuning",
             "during": "during training"}
    return f"ours: {scorer}, {'mean replacement' if rep == 'mean' else 'dropped'}, " \
           f"{modes[mode]}"


def fmt_ci(st: Mapping[str, Any], scale: float = 100.0, signed: bool = False) -> str:
    """``mean [lo, hi]`` in points (percent)."""
    sign = "+" if signed else ""
    m = f"{st['mean'] * scale:{sign}.2f}"
    if st.get("ci") is None:
        return m
    lo, hi = st["ci"]
    return f"{m} [{lo * scale:{sign}.2f}, {hi * scale:{sign}.2f}]"


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def differences_table(diffs: Sequence[Mapping[str, Any]], timing: Mapping[str, Any],
                      points: Sequence[Mapping[str, Any]]) -> str:
    """One row per network, finalist and point: both stages' difference to the best peer."""
    ratio = {(p["network"], p["point"]): (p["mac_ratio"], p["param_ratio"]) for p in points}
    speed = {(n, q["point"]): q["speedup"] for n, t in timing.items() for q in t["points"]}
    index = {(d["network"], d["method"], d["point"], d["stage"]): d for d in diffs}
    rows = []
    for (net, method, point, stage), d in index.items():
        if stage != "acc_pruned":
            continue
        ft = index[(net, method, point, "acc_finetuned")]
        macs, params = ratio[(net, point)]
        sp = speed.get((net, point))
        rows.append([net, f"{d['role']}: {method}", f"{macs:.2f}x / {params:.2f}x",
                     "-" if sp is None else f"{sp:.2f}x",
                     f"{d['ours_mean'] * 100:.2f}", f"{d['best_peer']} {d['peer_mean'] * 100:.2f}",
                     fmt_ci(d, signed=True), f"{d['seeds_ahead']}/{d['n']}",
                     f"{ft['ours_mean'] * 100:.2f}",
                     f"{ft['best_peer']} {ft['peer_mean'] * 100:.2f}",
                     fmt_ci(ft, signed=True), f"{ft['seeds_ahead']}/{ft['n']}"])
    return _md(["network", "method", "fewer MACs / params", "CPU speedup",
                "after pruning: ours", "best peer", "difference [95% CI]", "seeds ahead",
                "after fine-tuning: ours", "best peer", "difference [95% CI]", "seeds ahead"],
               rows)


def means_table(points: Sequence[Mapping[str, Any]], network: str) -> str:
    """Every held-out method of ``network``: mean accuracy [95% CI] at each point and stage."""
    methods = list(dict.fromkeys(p["method"] for p in points if p["network"] == network))
    pts = sorted({p["point"] for p in points if p["network"] == network})
    at = {(p["method"], p["point"], p["stage"]): p for p in points if p["network"] == network}
    rows = []
    for m in methods:
        for stage in STAGES:
            rows.append([label(m), STAGE_TITLES[stage]]
                        + [fmt_ci(at[(m, q, stage)]) if (m, q, stage) in at else "-"
                           for q in pts])
    return _md(["method", "stage"] + [f"{q:g}x" for q in pts], rows)


def width_table(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> str:
    """Each width-learning method beside the methods pruned to its widths (after fine-tuning,
    paired differences to the learner)."""
    by = {}
    for r in rows:
        by.setdefault((r["network"], r["method"]), {})[int(r["seed"])] = r
    out = []
    for (net, method), per_seed in sorted(by.items()):
        if method not in WIDTH_METHODS:
            continue
        learner = [per_seed[s] for s in seeds if s in per_seed]
        if len(learner) < len(seeds):
            continue
        acc = seed_stats([r["acc_finetuned"] for r in learner])
        out.append([net, label(method), f"{mean([r['mac_ratio'] for r in learner]):.2f}x",
                    f"{mean([r['param_ratio'] for r in learner]):.2f}x", fmt_ci(acc), "-"])
        for (net2, other), per in sorted(by.items()):
            if net2 != net or not other.startswith(method + "+"):
                continue
            if any(s not in per for s in seeds):
                continue
            st = seed_stats([per[s]["acc_finetuned"] for s in seeds])
            diff = seed_stats([per[s]["acc_finetuned"] - per_seed[s]["acc_finetuned"]
                               for s in seeds])
            out.append([net, f"  {label(other.split('+', 1)[1])} at its widths", "", "",
                        fmt_ci(st), fmt_ci(diff, signed=True)])
    return _md(["network", "method", "fewer MACs", "fewer params",
                "after fine-tuning [95% CI]", "minus the width learner [95% CI]"], out)


def screen_table(selection: Mapping[str, Any], network: str, top: int = 6) -> str:
    """Exploratory: the rule's ranking of ``network`` (development seeds, validation)."""
    part = selection["networks"][network]
    rows = []
    for i, r in enumerate(part["ranking"][:top]):
        figs = r["figures"]
        pr = mean([v for k, v in figs.items() if k.endswith("acc_pruned")])
        ft = mean([v for k, v in figs.items() if k.endswith("acc_finetuned")])
        rows.append([i + 1, label(r["method"]), f"{r['mean_rank']:.2f}", f"{pr * 100:.2f}",
                     f"{ft * 100:.2f}"])
    return _md(["", "method", "mean rank", "mean val. acc. right after pruning",
                "mean val. acc. after fine-tuning"], rows)


def _figures(store: Store, s: Setting, points, selection, rows, out: Path,
             docs: Path | None) -> dict[str, list]:
    drawn = {}
    for net in s.networks:
        if net.name not in selection["networks"]:
            continue
        methods = list(dict.fromkeys(r["method"] for r in rows if r["network"] == net.name))
        ours = [m for m in methods if parse_ours(m) is not None]
        labels = {m: label(m) for m in ours + [m for m in methods if m not in ours]}
        base = mean([r["acc_base"] for r in rows if r["network"] == net.name])
        for folder in [out] + ([docs] if docs else []):
            drawn[net.name] = plot_curves(points, net.name, labels,
                                          folder / f"criteria_{net.name}.png", baseline=base)
            ranking = selection["networks"][net.name]["ranking"]
            table = {r["method"]: r["figures"] for r in ranking}
            cols = list(ranking[0]["figures"])
            plot_screen(table, net.name, cols, folder / f"criteria_screen_{net.name}.png",
                        chosen=list(dict.fromkeys([selection["networks"][net.name]
                                                   ["recommended"], selection["overall"]])))
    return drawn


def write_report(root: str, setting: str, log: Callable[[str], None],
                 docs: str | None = None) -> dict[str, Any]:
    """Read the folder's held-out and width cells, write the report, print it; returns the
    results (also the final JSON line)."""
    s = setting_named(setting)
    store = Store(root, s)
    selection = read_selection(store)
    seeds = list(s.heldout_seeds)
    rows = [r for r in store.rows("heldout", seeds) if r["network"] in selection["networks"]]
    points = curves(rows, seeds)
    expected = {n.name: peers_of(n, s, example_input(s)) for n in s.networks
                if n.name in selection["networks"]}
    diffs = differences(rows, selection, s, expected)
    result = verdict(diffs, s)
    timing_path = store.root / "timing.json"
    timing = atomic.read_json(timing_path) if timing_path.exists() else {}
    width_rows = store.rows("width", seeds)
    out = store.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn = _figures(store, s, points, selection, rows, out, Path(docs) if docs else None)
    parts = ["# Criteria benchmark: report", "",
             f"Held-out seeds {seeds}; development seeds {list(s.dev_seeds)}. "
             f"Comparisons read by the verdict: {result['comparisons']} (the recommended "
             f"method's differences; the overall method's are reported beside them)."
             + (f" Not run: {', '.join(result['missing_networks'])}: the verdict is "
                f"incomplete." if result["missing_networks"] else ""), "",
             "## Differences to the best peer (held-out seeds, test accuracy, points)", "",
             differences_table(diffs, timing, points), ""]
    for net in s.networks:
        if net.name not in selection["networks"]:
            continue
        parts += [f"## {net.name}: every held-out method", "", means_table(points, net.name), "",
                  f"### {net.name}: the screen (exploratory, development seeds)", "",
                  screen_table(selection, net.name), ""]
    parts += ["## Width-learning methods at matched widths (after fine-tuning)", "",
              width_table(width_rows, seeds), "",
              "## Verdict", "",
              f"- after fine-tuning: {result['acc_finetuned']['goal']}: "
              f"{'met' if result['acc_finetuned']['met'] else 'NOT MET'}",
              f"- right after pruning: {result['acc_pruned']['goal']}: "
              f"{'met' if result['acc_pruned']['met'] else 'NOT MET'} "
              f"(ahead: {result['acc_pruned']['ahead']})", ""]
    text = "\n".join(parts)
    atomic.write_text(out / "report.md", text)
    results = {"benchmark": "criteria", "verdict": result, "selection": {
        "overall": selection["overall"],
        "recommended": {n: p["recommended"] for n, p in selection["networks"].items()}},
        "differences": diffs, "curves": points, "drawn": drawn, "timing": timing,
        "width": width_rows}
    atomic.write_json(out / "results.json", results)
    log(text)
    log(json.dumps({"benchmark": "criteria", "verdict": {
        k: v["met"] for k, v in result.items() if isinstance(v, dict)},
        "differences": [{k: d[k] for k in ("network", "method", "point", "stage", "best_peer",
                                           "mean", "ci")} for d in diffs]}))
    return results
