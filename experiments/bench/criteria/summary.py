"""The statistics of the held-out seeds: means and 95% intervals of every figure, the paired
differences of our finalists to the best peer, and the verdict against the goal.

Intervals are two-sided Student-t intervals of the mean over seeds
(:func:`experiments.harness.stats.t_interval`); a difference to a peer is taken seed by seed
(the same baseline, data and batches) before its mean and interval. The best peer of a figure is
the peer with the highest mean over the held-out seeds at that network, point and stage.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

from experiments.bench.criteria.rule import STAGES
from experiments.bench.criteria.setting import PEERS, Setting
from experiments.harness.stats import mean, t_interval

__all__ = ["seed_stats", "by_cell", "curves", "differences", "verdict", "GOAL",
           "comparisons"]

#: the goal, as the verdict checks it
GOAL = {
    "acc_finetuned": "at every operating point of every network, the recommended method's "
                     "mean difference to the best peer after fine-tuning is >= 0",
    "acc_pruned": "on at least three of the four networks, the recommended method is ahead of "
                  "the best peer right after pruning at every operating point (mean difference "
                  "> 0 and its 95% interval above zero)",
}


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% t-interval (None below two values) and count of per-seed values."""
    vals = [float(v) for v in values]
    return {"mean": mean(vals), "ci": t_interval(vals), "n": len(vals), "values": vals}


def by_cell(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, float], dict[int, Any]]:
    """``{(network, method, point): {seed: row}}``."""
    out: dict[tuple[str, str, float], dict[int, Any]] = defaultdict(dict)
    for r in rows:
        out[(r["network"], r["method"], float(r["point"]))][int(r["seed"])] = r
    return out


def curves(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One point per (network, method, operating point, stage): the MAC ratio, the parameter
    ratio, and the statistics of the accuracy over ``seeds`` (every seed must be there)."""
    out = []
    for (net, method, point), per_seed in sorted(by_cell(rows).items()):
        missing = [sd for sd in seeds if sd not in per_seed]
        if missing:
            raise ValueError(f"{net} {method} {point:g}x: no cell for seeds {missing}")
        first = per_seed[seeds[0]]
        for stage in STAGES:
            out.append({"network": net, "method": method, "point": point,
                        "mac_ratio": first["mac_ratio"], "param_ratio": first["param_ratio"],
                        "stage": stage,
                        **seed_stats([per_seed[sd][stage] for sd in seeds])})
    return out


def _peers_at(cells, net: str, point: float, expected: Sequence[str] | None) -> list[str]:
    found = [m for (n, m, p) in cells if n == net and p == point and m in PEERS]
    if expected is not None and sorted(found) != sorted(expected):
        raise ValueError(f"{net} {point:g}x: the held-out cells of the peers "
                         f"{sorted(set(expected) - set(found))} are missing (run the heldout "
                         f"step)")
    return found


def differences(rows: Sequence[Mapping[str, Any]], selection: Mapping[str, Any],
                s: Setting, peers: Mapping[str, Sequence[str]] | None = None
                ) -> list[dict[str, Any]]:
    """For every network, finalist, point and stage: the best peer (highest mean) and the
    statistics of the per-seed difference finalist minus that peer. ``peers``: the peers each
    network must have (ValueError if one has no cells)."""
    cells = by_cell(rows)
    seeds = list(s.heldout_seeds)
    peers_of = peers
    out = []
    for net in s.networks:
        if net.name not in selection["networks"]:
            continue
        part = selection["networks"][net.name]
        mine = list(dict.fromkeys([part["recommended"], selection["overall"]]))
        for method in mine:
            role = ("recommended" if method == part["recommended"] else "overall") + \
                (" and overall" if method == part["recommended"] == selection["overall"]
                 else "")
            for point in net.points:
                ours = cells.get((net.name, method, float(point)))
                peers = _peers_at(cells, net.name, float(point),
                                  None if peers_of is None else peers_of.get(net.name))
                if ours is None or not peers:
                    raise ValueError(f"{net.name} {point:g}x: the held-out cells of {method} or "
                                     f"of the peers are missing (run the heldout step)")
                for stage in STAGES:
                    means = {p: mean([cells[(net.name, p, float(point))][sd][stage]
                                      for sd in seeds]) for p in peers}
                    best = max(means, key=lambda p: (means[p], p))
                    diff = [ours[sd][stage] - cells[(net.name, best, float(point))][sd][stage]
                            for sd in seeds]
                    st = seed_stats(diff)
                    out.append({"network": net.name, "method": method, "role": role,
                                "point": float(point), "stage": stage, "best_peer": best,
                                "ours_mean": mean([ours[sd][stage] for sd in seeds]),
                                "peer_mean": means[best], **st,
                                "seeds_ahead": sum(d > 0 for d in diff)})
    return out


def comparisons(diffs: Sequence[Mapping[str, Any]]) -> int:
    """How many differences the verdict reads: the recommended method's, per network, point and
    stage (the overall method's differences are reported beside them, not judged)."""
    return sum(1 for d in diffs if d["role"].startswith("recommended"))


def verdict(diffs: Sequence[Mapping[str, Any]], s: Setting) -> dict[str, Any]:
    """The goal checked for each network's recommended method, over every network of ``s``: a
    network without differences makes the verdict incomplete (not met)."""
    rec = [d for d in diffs if d["role"].startswith("recommended")]
    finetuned = [d for d in rec if d["stage"] == "acc_finetuned"]
    pruned = [d for d in rec if d["stage"] == "acc_pruned"]
    ft_short = [d for d in finetuned if d["mean"] < 0]
    missing = [n.name for n in s.networks if not any(d["network"] == n.name for d in rec)]
    ahead = {}
    for net in s.networks:
        pts = [d for d in pruned if d["network"] == net.name]
        if pts:
            ahead[net.name] = all(d["mean"] > 0 and d["ci"] is not None and d["ci"][0] > 0
                                  for d in pts)
    need = min(3, len(s.networks))
    return {"acc_finetuned": {"goal": GOAL["acc_finetuned"], "met": not ft_short and not missing,
                              "short": [(d["network"], d["point"], d["mean"]) for d in ft_short]},
            "acc_pruned": {"goal": GOAL["acc_pruned"],
                           "met": sum(ahead.values()) >= need and not missing,
                           "ahead": ahead},
            "missing_networks": missing,
            "comparisons": comparisons(diffs)}
