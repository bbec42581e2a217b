"""The benchmark as a registered experiment, ``pruning-benchmark``: one trial is the cells of one
phase for one (network, seed), so the sweep engine runs a phase's trials in parallel, locally or
as a SLURM job array, unchanged::

    python -m experiments sweep pruning-benchmark --grid --set phase=screen-oneshot \\
        --executor slurm --slurm timeout_min=240 --slurm cpus_per_task=1
    python -m experiments sweep pruning-benchmark --grid --set phase=screen-modes ...
    python -m experiments.bench.criteria --step select
    python -m experiments sweep pruning-benchmark --grid --set phase=heldout ...
    python -m experiments sweep pruning-benchmark --grid --set phase=width ...
    python -m experiments.bench.criteria --step timing
    python -m experiments.bench.criteria --step report

Every trial writes into the benchmark's folder (``root``, an absolute path on a cluster's shared
file system), whatever the sweep's own output folder; a trial whose seed is not one of its
phase's seeds does nothing (the grid spans every seed, those of the default and of the quick
setting, and every phase takes its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.bench.criteria.setting import DEFAULT, QUICK, network
from experiments.bench.criteria.store import PHASES
from experiments.bench.criteria.trial import run_trial, seeds_of, setting_named
from experiments.harness.registry import register

__all__ = ["run_cell_trial", "validate"]


def validate(cfg: dict[str, Any]) -> None:
    """ValueError for a phase, setting or network this benchmark does not have."""
    s = setting_named(cfg["setting"])
    if cfg["phase"] not in PHASES:
        raise ValueError(f"unknown phase {cfg['phase']!r}: choose from {', '.join(PHASES)} "
                         f"(select, timing and report are steps of python -m "
                         f"experiments.bench.criteria)")
    network(s, cfg["network"])


@register("pruning-benchmark",
          "Which saliency prunes best: one (phase, network, seed) of the criteria benchmark",
          defaults={"phase": "screen-oneshot", "network": "mlp", "seed": DEFAULT.dev_seeds[0],
                    "root": "runs/bench-criteria", "setting": "default"},
          quick={"setting": "quick", "root": "runs/bench-criteria-quick", "seed": 0},
          space={"network": ("choice", [n.name for n in DEFAULT.networks]),
                 "seed": ("choice", sorted(set(DEFAULT.dev_seeds + DEFAULT.heldout_seeds
                                               + QUICK.dev_seeds + QUICK.heldout_seeds)))},
          source="Blalock et al., What is the State of Neural Network Pruning?, MLSys 2020",
          validate=validate)
def run_cell_trial(cfg: dict[str, Any], ctx) -> dict[str, Any]:
    """Run the missing cells of ``cfg["phase"]`` for ``cfg["network"]`` on ``cfg["seed"]``."""
    s = setting_named(cfg["setting"])
    if int(cfg["seed"]) not in seeds_of(s, cfg["phase"]):
        return {"skipped": f"seed {cfg['seed']} is not a seed of phase {cfg['phase']}"}
    return run_trial(str(Path(cfg["root"]).absolute()), cfg["network"], int(cfg["seed"]),
                     cfg["phase"], cfg["setting"], log=ctx.log)
