"""Ratios ``ours / peer`` for every comparison of a run, and the status of every target.

Accuracy compares MRS with mean replacement (our one-shot counterpart of the peers) with the
best peer at each network and size (after fine-tuning only where the network was fine-tuned);
the best of our methods is compared too, for information. Times compare medians; constant units
compare the largest logit change.
"""

from __future__ import annotations

from typing import Any

from experiments.bench.peers.accuracy import METHODS, OURS
from experiments.bench.peers.setting import CONSTANT_TOL, TARGETS
from experiments.bench.peers.timing import OURS_REMOVE, OURS_SCORE, OURS_SCORE_MRS, OURS_STEP, \
    TP_REMOVE, TP_REMOVE_WITH_GRAPH, TP_SCORE, TP_SCORE_WITH_GRAPH, TP_STEP

__all__ = ["TIME_COMPARISONS", "ratios_and_targets", "targets_met"]

#: timing comparison -> (our case, Torch-Pruning's case); those in :data:`TARGETS` are targets
TIME_COMPARISONS = {
    "scoring_time": (OURS_SCORE, TP_SCORE_WITH_GRAPH),
    "scoring_time_graph_prebuilt": (OURS_SCORE, TP_SCORE),
    "scoring_time_mrs": (OURS_SCORE_MRS, TP_SCORE_WITH_GRAPH),
    "removal_time": (OURS_REMOVE, TP_REMOVE_WITH_GRAPH),
    "removal_time_graph_prebuilt": (OURS_REMOVE, TP_REMOVE),
    "prune_step_time": (OURS_STEP, TP_STEP),
}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _accuracy_ratios(acc: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """MRS against every peer at both stages, the best of ours against the best peer after
    fine-tuning; the two accuracy targets and the best-of-ours comparison. A network that was
    not fine-tuned (``acc_finetuned`` None) counts right after pruning only."""
    ratios: list[dict] = []
    peers = [m for m in METHODS if m not in OURS]
    by = {(r["model"], r["target"], r["method"]): r for r in acc}
    fin_ok, pru_ok, best_ok, any_acc, any_fin = True, True, True, False, False
    for model, target in sorted({(r["model"], r["target"]) for r in acc}):
        ours = by.get((model, target, "ours_mrs"))
        present = [by[(model, target, p)] for p in peers if (model, target, p) in by]
        if ours is None or not present:
            continue
        any_acc = True
        tuned = ours["acc_finetuned"] is not None
        for metric in ("acc_pruned", "acc_finetuned") if tuned else ("acc_pruned",):
            for peer in present:
                ratios.append({"comparison": metric, "model": model, "target": target,
                               "ours": "ours_mrs", "peer": peer["method"],
                               "ours_value": ours[metric], "peer_value": peer[metric],
                               "ratio": _ratio(ours[metric], peer[metric])})
        pru_ok &= ours["acc_pruned"] > max(p["acc_pruned"] for p in present)
        if not tuned:
            continue
        any_fin = True
        fin_ok &= ours["acc_finetuned"] >= max(p["acc_finetuned"] for p in present)
        # informational: the best of our three methods against the best peer, same budget
        top = max((by[(model, target, m)] for m in OURS if (model, target, m) in by),
                  key=lambda r: r["acc_finetuned"])
        peer_top = max(present, key=lambda r: r["acc_finetuned"])
        ratios.append({"comparison": "acc_finetuned_best", "model": model, "target": target,
                       "ours": top["method"], "peer": peer_top["method"],
                       "ours_value": top["acc_finetuned"],
                       "peer_value": peer_top["acc_finetuned"],
                       "ratio": _ratio(top["acc_finetuned"], peer_top["acc_finetuned"])})
        best_ok &= top["acc_finetuned"] >= peer_top["acc_finetuned"]
    met = {"accuracy_after_finetune": fin_ok if any_fin else None,
           "accuracy_after_pruning": pru_ok if any_acc else None,
           "accuracy_after_finetune_best_of_ours": best_ok if any_fin else None}
    return ratios, met


def _timing_ratios(timing: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Every :data:`TIME_COMPARISONS` entry per network; the two timing targets."""
    ratios, met = [], {}
    tmap = {(r["model"], r["case"]): r["median_ms"] for r in timing}
    for comp, (a, b) in TIME_COMPARISONS.items():
        oks = []
        for model in sorted({r["model"] for r in timing}):
            if (model, a) in tmap and (model, b) in tmap:
                ra = _ratio(tmap[(model, a)], tmap[(model, b)])
                ratios.append({"comparison": comp, "model": model, "ours": a, "peer": b,
                               "ours_value": tmap[(model, a)], "peer_value": tmap[(model, b)],
                               "ratio": ra})
                oks.append(ra is not None and ra <= 1.0)
        if comp in TARGETS:
            met[comp] = all(oks) if oks else None
    return ratios, met


def _inference_ratios(inference: list[dict]) -> list[dict]:
    """Ours against Torch-Pruning magnitude and ``ln_structured``, per size and batch."""
    ratios = []
    for r in inference:
        for p in ("tp_magnitude", "ln_structured"):
            if p in r["ms"] and "ours_mrs" in r["ms"]:
                ratios.append({"comparison": f"inference_ms_batch{r['batch']}",
                               "model": r["model"], "target": r["target"], "ours": "ours_mrs",
                               "peer": p, "ours_value": r["ms"]["ours_mrs"],
                               "peer_value": r["ms"][p],
                               "ratio": _ratio(r["ms"]["ours_mrs"], r["ms"][p])})
    return ratios


def _constant_ratios(constant: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Ours (mean replacement) against Torch-Pruning's drop, per network, case and dtype (the
    largest logit change); the float64 target (on each row's ``judged_change``: where the fold
    is exact) and the float32 comparison (cases without a zero-padded consumer)."""
    ratios = []
    cmap = {(r["model"], r.get("case", "first_layer"), r["dtype"], r["method"]):
            r["max_abs_change"] for r in constant}
    for (model, case, dtype, method), change in cmap.items():
        if method == "tp_drop" and (model, case, dtype, "ours_mean_replacement") in cmap:
            o = cmap[(model, case, dtype, "ours_mean_replacement")]
            ratios.append({"comparison": f"constant_unit_change_{dtype}", "model": model,
                           "case": case, "ours": "ours_mean_replacement", "peer": "tp_drop",
                           "ours_value": o, "peer_value": change, "ratio": _ratio(o, change)})
    mine = [r for r in constant if r["method"] == "ours_mean_replacement"]
    f64 = [r.get("judged_change", r["max_abs_change"]) for r in mine if r["dtype"] == "float64"]
    f32 = [r["max_abs_change"] for r in mine
           if r["dtype"] == "float32" and not r.get("padded_consumers")]
    met = {"constant_unit_change": all(v <= CONSTANT_TOL for v in f64) if f64 else None,
           "constant_unit_change_float32": all(v <= CONSTANT_TOL for v in f32) if f32 else None}
    return ratios, met


def ratios_and_targets(acc: list[dict], timing: list[dict], inference: list[dict],
                       constant: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """``ours / peer`` for every comparison, and each target's status (None: not measured).

    The statuses cover :data:`~experiments.bench.peers.setting.TARGETS` and
    :data:`~experiments.bench.peers.setting.INFORMATIONAL`.
    """
    acc_ratios, met = _accuracy_ratios(acc)
    time_ratios, time_met = _timing_ratios(timing)
    const_ratios, const_met = _constant_ratios(constant)
    ratios = acc_ratios + time_ratios + _inference_ratios(inference) + const_ratios
    return ratios, {**met, **time_met, **const_met}


def targets_met(met: dict[str, Any]) -> bool:
    """Whether every target of :data:`TARGETS` was measured and met."""
    decided = [met.get(k) for k in TARGETS if met.get(k) is not None]
    return len(decided) == len(TARGETS) and all(decided)
