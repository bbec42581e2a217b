"""Is MRS's miss right after pruning its approximation's fault, or its criterion's?

A diagnostic of the pruning target of :mod:`experiments.bench.peers` (MRS above the best peer
right after pruning). Right after a one-shot cut, MRS (U. Evci, "Detecting Dead Weights and
Units in Neural Networks", MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068, Def. 3.1.2)
trails Torch-Pruning's magnitude criterion by 5-13 points on the benchmark's five-seed means at
the 10x cuts and at CNN 5x. MRS is the first-order estimate of MRP (Evci 2018, Def. 3.1.1),
each unit's loss change when it alone is replaced by its mean. If the exact quantity ranked
units better, a better estimate (our second-order scorers) could close the gap; if it does not,
no estimate of it can.

This module takes the benchmark's trained MLP and CNN (:data:`NETWORKS`; its cache: the same
seeds train the same networks, or loads them), its scoring data and its widths, cuts
each network once per criterion, and reports test accuracy right after the cut
(no fine-tuning):

- ``mrs``: the benchmark's MRS, removed with mean replacement (its figures must
  equal the benchmark's; :func:`check_against` compares them);
- ``mrp``: exact MRP, the sum over samples of each sample's ``|loss change|``;
- ``loss_change``: the exact loss change of mean-replacing the unit alone,
  ``|sum over samples|`` (signed MRP), which is what removal does to the loss;
- ``mrs_drop`` / ``mrp_drop``: the MRS and exact MRP rankings with the units
  dropped instead: the ranking and the replacement, separated;
- ``mrs_seq``: the MRS ranking with mean replacement applied layer by layer in
  forward order, each layer's means measured on the network as the earlier
  layers' removal left it (one call of ``remove_units`` measures every mean
  on the unpruned network);
- ``norm_mean`` / ``norm_drop``: the squared L2 norm of the unit's incoming
  weights (Evci 2018, Table 4.1), removed with mean replacement or dropped: the
  effect of the replacement alone;
- ``tp_magnitude``: Torch-Pruning's magnitude importance and pruner, as in the
  benchmark (skipped with ``--without-torch-pruning`` when Torch-Pruning is not
  installed).

It also gives the Spearman rank correlation of MRS with MRP per layer, the
fidelity of the estimate. Each seed's result is written atomically to
``OUT/seed<K>.json``; a rerun loads the seeds already done, if their version,
setting, criteria and library versions are this run's and they are complete::

    OMP_NUM_THREADS=1 python -m experiments.bench.peers_oracle --seeds 0 1 2 3 4

It prints a table of the seed means and one JSON line last. Exit code 1 if a
``--check`` figure differs, 2 on bad input (a log of another seed or setting) or when
Torch-Pruning is missing and ``--without-torch-pruning`` was not given.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from experiments.bench import peers as P
from experiments.bench.peers_seeds import load_result, normalize_setting, run_setting
from experiments.harness import atomic
from experiments.harness.stats import mean, t_interval
from experiments.harness.tables import format_table
from pruners import remove_units
from saliency import SCORERS

__all__ = ["CRITERIA", "VERSION", "NETWORKS", "score_units", "run_seed", "check_against",
           "summarize",
           "oracle_table", "fidelity_table", "main"]

#: criterion -> (label, the ranking's scorer, replacement used at removal)
CRITERIA: dict[str, tuple[str, str, str | None]] = {
    "mrs": ("MRS (first order; the benchmark's)", "mrs", "mean"),
    "mrp": ("exact MRP (sum of per-sample |loss change|)", "mrp", "mean"),
    "loss_change": ("exact |loss change| of the unit alone", "loss_change", "mean"),
    "mrs_drop": ("MRS ranking, dropped", "mrs", None),
    "mrp_drop": ("exact MRP ranking, dropped", "mrp", None),
    "mrs_seq": ("MRS ranking, means re-measured layer by layer", "mrs", "mean_sequential"),
    "norm_mean": ("incoming-weight L2, mean replacement", "norm", "mean"),
    "norm_drop": ("incoming-weight L2, dropped", "norm", None),
    "tp_magnitude": ("Torch-Pruning: MagnitudeImportance", "tp_magnitude", None),
}
#: bump when a criterion or the measurement changes: seed files of another version are
#: recomputed, never reused
VERSION = 3
#: the benchmark's networks this diagnostic studies (the MLP and the CNN, which the benchmark
#: fine-tunes; its other networks are left out)
NETWORKS = ("mlp", "cnn")


def score_units(criterion: str, model: nn.Module, ctx: P.Context) -> dict[str, torch.Tensor]:
    """Every prunable unit's score under the ranking ``criterion`` (``"mrs"``, ``"mrp"``,
    ``"loss_change"``, ``"norm"``; lower goes first), on the benchmark's scoring data."""
    if criterion == "mrs":
        return SCORERS["mrs"]().score(model, ctx.scoring)
    if criterion == "mrp":
        return SCORERS["mrp"]().score(model, ctx.scoring)
    if criterion == "loss_change":
        signed = SCORERS["mrp"](absolute=False).score(model, ctx.scoring)
        return {n: s.abs() for n, s in signed.items()}
    if criterion == "norm":
        return SCORERS["norm"](p="l2", example_input=ctx.example).score(model)
    raise ValueError(f"score_units: unknown ranking {criterion!r}; choose from "
                     f"mrs, mrp, loss_change, norm")


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy import stats

    return float(stats.spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def run_seed(seed: int, s: P.Setting, data: str, cache: Path, tp: Any,
             log: Callable[[str], None]) -> dict[str, Any]:
    """One seed: every criterion's accuracy right after the cut, per network and size,
    and MRS's rank correlation with MRP per layer."""
    splits, _finetune, scoring = P.prepare_data(data, s, seed)
    rows, fidelity = [], []
    for spec in s.models:
        base, info = P.trained_model(spec, splits, s, cache, seed, log)
        ctx = P.make_context(base, splits.train.tensors[0][:1].clone(), scoring, tp, s,
                             spec.name)
        acc_base = P.accuracy_of(base, splits.test, s)
        mrs = score_units("mrs", copy.deepcopy(base).eval(), ctx)
        mrp = score_units("mrp", copy.deepcopy(base).eval(), ctx)
        for layer in mrs:
            fidelity.append({"model": spec.name, "layer": layer, "units": int(mrs[layer].numel()),
                             "spearman_mrs_mrp": _spearman(mrs[layer], mrp[layer])})
        rankings: dict[str, dict[str, torch.Tensor]] = {"mrs": mrs, "mrp": mrp}
        for target in s.reductions:
            kept, params = P.widths_for_reduction(base, ctx.example, target)
            for crit, (label, ranking, replacement) in CRITERIA.items():
                if crit == "tp_magnitude" and tp is None:
                    continue
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                model = copy.deepcopy(base).eval()
                if crit == "tp_magnitude":
                    P.tp_prune(model, kept, ctx, "magnitude")
                else:
                    if ranking not in rankings:  # scores of the unpruned network, once
                        rankings[ranking] = score_units(ranking, copy.deepcopy(base).eval(), ctx)
                    units = P.lowest_units(rankings[ranking], kept)
                    if replacement == "mean_sequential":
                        # layer by layer in forward order, each layer's means measured on the
                        # network as the earlier layers' removal left it
                        for layer in ctx.prunable:
                            if layer in units:
                                remove_units(model, {layer: units[layer]}, replacement="mean",
                                             data=ctx.scoring)
                    else:
                        remove_units(model, units, replacement=replacement, data=ctx.scoring)
                got = P.layer_widths(model, list(kept))
                if got != dict(kept):
                    raise RuntimeError(f"{crit} on {spec.name} at {target:g}x left widths "
                                       f"{got}, expected {dict(kept)}")
                acc = P.accuracy_of(model, splits.test, s)
                rows.append({"model": spec.name, "target": target, "criterion": crit,
                             "label": label, "kept": dict(kept), "params": params,
                             "acc_base": acc_base, "acc_pruned": acc,
                             "seconds": round(time.perf_counter() - t0, 2)})
                log(f"  seed {seed} {spec.name} {target:g}x {crit:<13} {100 * acc:6.2f}%")
    return {**_identity(seed, s, data, tp), "accuracy": rows, "fidelity": fidelity}


def _identity(seed: int, s: P.Setting, data: str, tp: Any) -> dict[str, Any]:
    """What a seed's result depends on; a stored result is reused only if all of it is equal."""
    return {"version": VERSION, "seed": seed, "data": data, "setting": P.setting_json(s),
            "criteria": sorted(c for c in CRITERIA if c != "tp_magnitude" or tp is not None),
            "torch": torch.__version__, "torch_pruning": P.tp_version(tp)}


def _complete(result: Mapping[str, Any], s: P.Setting) -> bool:
    """Whether a stored result has a row for every network, size and criterion."""
    have = {(r["model"], float(r["target"]), r["criterion"]) for r in result.get("accuracy", [])}
    return all((spec.name, float(t), c) in have for spec in s.models for t in s.reductions
               for c in result.get("criteria", []))


def check_against(result: Mapping[str, Any], peers_result: Mapping[str, Any]
                  ) -> tuple[int, list[str]]:
    """Compare this seed's ``mrs`` and ``tp_magnitude`` accuracies with the peers
    benchmark's right-after-pruning figures of the same seed and setting.

    Returns ``(figures compared, mismatches)``. ``ValueError`` if the log is of another
    seed, data set or setting (a run with ``--rounds`` is another setting), or if it has
    none of the figures to compare.
    """
    c = peers_result["config"]
    mine_setting = normalize_setting(result["setting"])
    theirs_setting = run_setting(peers_result)
    # a log may hold more networks (ResNet-20, MobileNetV2) than this diagnostic studies
    names = {m["name"] for m in mine_setting.get("models", [])}
    theirs_setting["models"] = [m for m in theirs_setting.get("models", [])
                                if m.get("name") in names]
    for key, mine, theirs in (("seed", result["seed"], c["seed"]),
                              ("data", result["data"], c["data"]),
                              ("setting", mine_setting, theirs_setting)):
        if mine != theirs:
            raise ValueError(f"check_against: the log's {key} differs from this run's"
                             + (f" ({theirs!r} against {mine!r})" if key != "setting" else
                                ": " + ", ".join(sorted(
                                    k for k in mine.keys() | theirs.keys()
                                    if mine.get(k) != theirs.get(k)))))
    theirs = {(r["model"], float(r["target"]), r["method"]): r["acc_pruned"]
              for r in peers_result["accuracy"]}
    compared, out = 0, []
    for r in result["accuracy"]:
        method = {"mrs": "ours_mrs", "tp_magnitude": "tp_magnitude"}.get(r["criterion"])
        key = (r["model"], float(r["target"]), method)
        if method is None or key not in theirs:
            continue
        compared += 1
        if theirs[key] != r["acc_pruned"]:
            out.append(f"{r['model']} {r['target']:g}x {r['criterion']}: {r['acc_pruned']} "
                       f"here, {theirs[key]} in the benchmark")
    if compared == 0:
        raise ValueError("check_against: the log has none of this run's MRS or magnitude "
                         "figures")
    return compared, out


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per network, size and criterion: the per-seed accuracies (points), their mean and
    95% t-interval; per layer, the mean Spearman correlation of MRS with MRP."""
    if not results:
        raise ValueError("summarize: no seeds")
    by: dict[tuple, list[float]] = {}
    for res in results:
        for r in res["accuracy"]:
            by.setdefault((r["model"], r["target"], r["criterion"]), []).append(
                round(100 * r["acc_pruned"], 9))
    n = len(results)
    points = [{"model": m, "target": t, "criterion": c, "per_seed": v, "mean": mean(v),
               "ci95": t_interval(v)} for (m, t, c), v in by.items()]
    short = [p for p in points if len(p["per_seed"]) != n]
    if short:
        raise ValueError(f"summarize: {short[0]['model']} {short[0]['target']:g}x "
                         f"{short[0]['criterion']} has {len(short[0]['per_seed'])} of {n} seeds")
    fid: dict[tuple, list[float]] = {}
    for res in results:
        for f in res["fidelity"]:
            fid.setdefault((f["model"], f["layer"]), []).append(f["spearman_mrs_mrp"])
    return {"seeds": [r["seed"] for r in results], "points": points,
            "fidelity": [{"model": m, "layer": l, "spearman_mrs_mrp": v, "mean": mean(v)}
                         for (m, l), v in fid.items()]}


def oracle_table(summary: Mapping[str, Any], model: str) -> str:
    """A Markdown table of ``model``'s seed means right after the cut: a row per criterion,
    a column per size, the best of each column in bold."""
    pts = [p for p in summary["points"] if p["model"] == model]
    if not pts:
        raise ValueError(f"oracle_table: no points of network {model!r}")
    targets = sorted({p["target"] for p in pts})
    crits = [c for c in CRITERIA if any(p["criterion"] == c for p in pts)]
    cell = {(p["target"], p["criterion"]): p["mean"] for p in pts}
    best = {t: max(cell[(t, c)] for c in crits) for t in targets}
    sizes = {t: f"{t:g}x" for t in targets}
    rows = [{"criterion": CRITERIA[c][0],
             **{sizes[t]: f"**{cell[(t, c)]:.2f}**" if cell[(t, c)] == best[t]
                else f"{cell[(t, c)]:.2f}" for t in targets}} for c in crits]
    return format_table(rows, {"criterion": f"{model.upper()}, right after the cut",
                               **{v: v for v in sizes.values()}},
                        align={v: ">" for v in sizes.values()}, markdown=True)


def fidelity_table(summary: Mapping[str, Any]) -> str:
    """Per network and layer, the mean Spearman correlation of MRS with exact MRP."""
    return format_table(summary["fidelity"], {"model": "network", "layer": "layer",
                                              "mean": "Spearman (mean over the seeds)"},
                        formats={"mean": ".3f"})


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m experiments.bench.peers_oracle",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    ap.add_argument("--quick", action="store_true", help="the benchmark's tiny setting")
    ap.add_argument("--data", default=None, help="fashion-mnist (default) or synthetic "
                                                 "(the default with --quick)")
    ap.add_argument("--cache", default="runs/bench-peers", help="the benchmark's network cache")
    ap.add_argument("--out", default="runs/peers-oracle", help="folder of the per-seed results")
    ap.add_argument("--without-torch-pruning", "--no-install", dest="without_torch_pruning",
                    action="store_true",
                    help="when torch_pruning is not installed, skip its criterion instead of "
                         "stopping (install it with: pip install -e \".[peers]\")")
    ap.add_argument("--check", nargs="*", default=[], metavar="LOG",
                    help="peers benchmark logs of the same seeds: MRS's and Torch-Pruning "
                         "magnitude's figures must match theirs")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds lists a seed twice: {args.seeds}")
    if args.data is not None and args.data not in ("fashion-mnist", "synthetic"):
        ap.error(f"--data must be fashion-mnist or synthetic, got {args.data!r}")
    return args


def main(argv: Sequence[str] | None = None, *, file=None) -> dict[str, Any]:
    """Run (or load) every seed, print the tables and the JSON line; return the JSON object."""
    args = _parse(argv)
    out = file if file is not None else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    s = P.select_networks(P.QUICK if args.quick else P.DEFAULT, NETWORKS)
    data = args.data or ("synthetic" if args.quick else "fashion-mnist")
    checks = [load_result(p) for p in args.check]  # fail early on a bad log
    missing = sorted({c["config"]["seed"] for c in checks} - set(args.seeds))
    if missing:
        raise ValueError(f"--check: logs of seed(s) {missing}, which --seeds does not run")
    tp = P.load_torch_pruning(skip_missing=args.without_torch_pruning, log=log)
    folder = Path(args.out)
    results = []
    for seed in args.seeds:
        path = folder / f"seed{seed}.json"
        want = _identity(seed, s, data, tp)
        if path.exists():
            done = atomic.read_json(path)
            if isinstance(done.get("setting"), dict):  # stored before some fields existed
                done["setting"] = normalize_setting(done["setting"])
            if all(done.get(k) == v for k, v in want.items()) and _complete(done, s):
                log(f"seed {seed}: loaded {path}")
                results.append(done)
                continue
            log(f"seed {seed}: {path} is of another version, setting or set of criteria, or "
                f"incomplete; recomputing")
        res = run_seed(seed, s, data, Path(args.cache), tp, log)
        atomic.write_json(path, res)
        results.append(res)
    mismatches, compared = [], 0
    for peers_result in checks:
        mine = next(r for r in results if r["seed"] == peers_result["config"]["seed"])
        n, bad = check_against(mine, peers_result)
        compared += n
        mismatches += [f"seed {mine['seed']}: {m}" for m in bad]
    summary = summarize(results)
    for model in dict.fromkeys(p["model"] for p in summary["points"]):
        log("")
        log(oracle_table(summary, model))
    log("\nSpearman correlation of MRS with exact MRP, per layer:")
    log(fidelity_table(summary))
    if checks:
        log(f"\nagainst the benchmark's logs: {compared} figures compared, "
            f"{'every one matches' if not mismatches else 'MISMATCHES: ' + '; '.join(mismatches)}")
    result = {"benchmark": "peers_oracle", **summary, "checked_logs": len(checks),
              "checked_figures": compared, "mismatches": mismatches}
    print(json.dumps(result, allow_nan=False), file=out, flush=True)
    return result


def _cli() -> int:
    try:
        result = main()
    except (ValueError, P.TorchPruningMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(_cli())
