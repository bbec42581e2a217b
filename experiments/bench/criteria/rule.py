"""The selection rule, written before any held-out seed ran: which of our methods go on to the
held-out seeds, decided from the development seeds' validation figures alone.

The rule (:data:`RULE`, also written into ``selection.json``):

1. **Figures.** A method's screen figures are its validation accuracies right after pruning and
   after fine-tuning at each operating point of the network, each averaged over the development
   seeds (2 stages x the screen's operating points, 3 of the 5: 6 figures per method and
   network).
2. **Mean rank.** At each figure the methods compared are ranked (1 = most accurate; ties get
   the mean of their ranks); a method's score is its mean rank over the figures. Ties of the
   score go to the higher mean accuracy after fine-tuning, then to the name.
3. **Stage A, pairs.** Among the one-shot methods (every scorer x replacement), the
   ``pairs_to_modes`` best (scorer, replacement) pairs of a network go on to the other modes
   (rounds, rounds with fine-tuning between them, during training) on that network.
4. **Per network.** Among every method screened on the network (the one-shot ones and the
   modes of its best pairs), the best score is the network's recommended method.
5. **Overall.** Among the methods screened on every network, the lowest mean over the networks
   of their per-network scores (ranks within each network among all its screened methods) is
   the overall recommendation.
6. **Finalists.** On the held-out seeds each network runs its recommended method and the
   overall one (one method when they coincide) beside every peer; nothing else of ours.

Only the folders of the development seeds are read (:meth:`~experiments.bench.criteria.store.
Store.rows` with ``setting.dev_seeds``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

from scipy.stats import rankdata

from experiments.bench.criteria.setting import REPLACEMENTS, SCORERS_OF_OURS, Network, \
    Setting, network, ours_name
from experiments.bench.criteria.store import Store

__all__ = ["RULE", "STAGES", "oneshot_methods", "mode_methods", "screen_figures",
           "mean_ranks", "select_pairs", "select", "finalists", "ScreenIncomplete"]

RULE = __doc__.split("The rule (:data:`RULE`, also written into ``selection.json``):")[1] \
    .split("Only the folders")[0].strip()

#: the two figures of a cell the rule reads
STAGES = ("acc_pruned", "acc_finetuned")


class ScreenIncomplete(RuntimeError):
    """The rule was asked to choose before every cell it reads exists."""


def oneshot_methods() -> list[str]:
    """Stage A: every scorer x replacement, one shot."""
    return [ours_name(sc, rep, "oneshot") for sc in SCORERS_OF_OURS for rep in REPLACEMENTS]


def mode_methods(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Stage B: the other modes of the chosen (scorer, replacement) pairs."""
    return [ours_name(sc, rep, mode) for sc, rep in pairs
            for mode in ("rounds", "rounds_ft", "during")]


def screen_figures(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], net: Network,
                   seeds: Sequence[int]) -> dict[str, dict[tuple[float, str], float]]:
    """``{method: {(point, stage): mean over seeds}}``; ScreenIncomplete naming the missing
    cells."""
    got: dict[tuple[str, float, int], Mapping[str, Any]] = {
        (r["method"], float(r["point"]), int(r["seed"])): r for r in rows}
    missing = [f"{m}@{p:g}x seed {sd}" for m in methods for p in net.screened() for sd in seeds
               if (m, float(p), int(sd)) not in got]
    if missing:
        raise ScreenIncomplete(f"{net.name}: {len(missing)} screen cells are missing (run the "
                               f"screen first): " + ", ".join(missing[:6])
                               + (" ..." if len(missing) > 6 else ""))
    return {m: {(float(p), st): sum(got[(m, float(p), int(sd))][st] for sd in seeds) / len(seeds)
                for p in net.screened() for st in STAGES} for m in methods}


def mean_ranks(figures: Mapping[str, Mapping[tuple[float, str], float]]
               ) -> dict[str, float]:
    """Each method's mean rank over the figures (1 = most accurate, ties share ranks)."""
    methods = list(figures)
    keys = list(next(iter(figures.values())))
    totals = defaultdict(float)
    for key in keys:
        ranks = rankdata([-figures[m][key] for m in methods], method="average")
        for m, r in zip(methods, ranks):
            totals[m] += float(r)
    return {m: totals[m] / len(keys) for m in methods}


def _order(ranks: Mapping[str, float], figures) -> list[str]:
    def finetuned(m):
        vals = [v for (p, st), v in figures[m].items() if st == "acc_finetuned"]
        return sum(vals) / len(vals)
    return sorted(ranks, key=lambda m: (ranks[m], -finetuned(m), m))


def _dev_rows(store: Store, phase: str, net: Network) -> list[dict[str, Any]]:
    return store.rows(phase, store.setting.dev_seeds, net.name)


def select_pairs(store: Store, net_name: str) -> list[tuple[str, str]]:
    """Step 3: the (scorer, replacement) pairs of ``net_name`` that go on to the other modes."""
    s = store.setting
    net = network(s, net_name)
    methods = oneshot_methods()
    figures = screen_figures(_dev_rows(store, "screen-oneshot", net), methods, net, s.dev_seeds)
    best = _order(mean_ranks(figures), figures)[:s.pairs_to_modes]
    return [tuple(m.split("-")[:2]) for m in best]  # type: ignore[misc]


def _network_table(store: Store, net: Network) -> tuple[dict[str, float], dict]:
    s = store.setting
    pairs = select_pairs(store, net.name)
    methods = oneshot_methods() + mode_methods(pairs)
    rows = _dev_rows(store, "screen-oneshot", net) + _dev_rows(store, "screen-modes", net)
    figures = screen_figures(rows, methods, net, s.dev_seeds)
    return mean_ranks(figures), figures


def select(store: Store, networks: Sequence[str] | None = None) -> dict[str, Any]:
    """Steps 1-5 on the development seeds: the pairs, every network's scores and recommended
    method, and the overall one (over ``networks``, default every network of the setting).
    ScreenIncomplete if a cell it reads is missing."""
    s = store.setting
    nets = [n for n in s.networks if networks is None or n.name in networks]
    per_network, scores = {}, {}
    for net in nets:
        ranks, figures = _network_table(store, net)
        order = _order(ranks, figures)
        scores[net.name] = ranks
        per_network[net.name] = {
            "pairs": [list(p) for p in select_pairs(store, net.name)],
            "recommended": order[0],
            "ranking": [{"method": m, "mean_rank": ranks[m],
                         "figures": {f"{p:g}x {st}": v for (p, st), v in figures[m].items()}}
                        for m in order]}
    common = set.intersection(*(set(r) for r in scores.values()))
    overall_score = {m: sum(scores[n][m] for n in scores) / len(scores) for m in common}
    finetuned = {m: sum(r["figures"][k] for part in per_network.values()
                        for r in part["ranking"] if r["method"] == m
                        for k in r["figures"] if k.endswith("acc_finetuned"))
                 for m in common}
    overall = sorted(overall_score, key=lambda m: (overall_score[m], -finetuned[m], m))
    return {"rule": RULE, "dev_seeds": list(s.dev_seeds), "networks": per_network,
            "selected_over": [n.name for n in nets],
            "overall": overall[0],
            "overall_ranking": [{"method": m, "mean_rank": overall_score[m]} for m in overall],
            "setting": store.digest}


def finalists(selection: Mapping[str, Any], net_name: str) -> list[str]:
    """Step 6: the methods of ours that run on ``net_name``'s held-out seeds (ValueError for a
    network the selection was not made over)."""
    if net_name not in selection["networks"]:
        raise ValueError(f"the selection was made over {', '.join(selection['networks'])}, not "
                         f"{net_name}: run its screen, then --step select with it")
    rec = selection["networks"][net_name]["recommended"]
    return list(dict.fromkeys([rec, selection["overall"]]))
