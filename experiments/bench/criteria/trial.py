"""One trial of the benchmark: the cells of one phase for one (network, seed), resumable.

A trial loads (or trains and caches) the seed's baseline, then runs every cell of the phase
that is not in the store yet, writing each one as soon as it is done. The local command runs
the trials in worker processes (:func:`experiments.harness.subruns.run_jobs`); the sweep engine
runs them as the trials of the registered experiment ``pruning-benchmark``, locally or on SLURM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

import pruners
from experiments.bench.criteria.data import baseline, load_data
from experiments.bench.criteria.methods import PEER_LABELS, make_run, run_method
from experiments.bench.criteria.rule import finalists, mode_methods, oneshot_methods, \
    select_pairs
from experiments.bench.criteria.setting import DEFAULT, QUICK, Network, Setting, network
from experiments.bench.criteria.store import PHASES, SettingMismatch, Store
from experiments.bench.criteria.width import WIDTH_METHODS, run_width
from experiments.bench.peers.setting import load_torch_pruning
from experiments.harness import atomic
from experiments.harness.models import build_model

__all__ = ["SETTINGS", "setting_named", "seeds_of", "peers_of", "read_selection", "example_input",
           "phase_methods", "run_trial"]

#: the settings a trial can be asked for by name (the sweep passes names, not objects)
SETTINGS = {"default": DEFAULT, "quick": QUICK}


def setting_named(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}: choose from {', '.join(SETTINGS)}")
    return SETTINGS[name]


def seeds_of(s: Setting, phase: str) -> tuple[int, ...]:
    """The seeds a phase runs on: development seeds for the screen, held-out ones after."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: choose from {', '.join(PHASES)}")
    return s.dev_seeds if phase.startswith("screen") else s.heldout_seeds


def peers_of(net: Network, s: Setting, example: torch.Tensor) -> list[str]:
    """The peers that apply to ``net``: BatchNorm scale only with BatchNorms, ``ln_structured``
    not on attention heads (a head spans rows of three projections and columns of a fourth)."""
    model = build_model(net.factory, **net.kwargs).eval()
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    heads = bool(pruners.trace(model, example).prunable_heads)
    return [p for p in s.peers if p in PEER_LABELS
            and not (p == "tp_bn_scale" and not has_bn)
            and not (p == "ln_structured" and heads)]


def read_selection(store: Store) -> dict[str, Any]:
    """The selection the rule made (``selection.json``); the held-out phases need it."""
    path = store.root / "selection.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the held-out seeds run the methods the "
                                f"rule selects on the development seeds; run the screen and "
                                f"then --step select first")
    sel = atomic.read_json(path)
    if sel.get("setting") != store.digest:
        raise SettingMismatch(f"{path} was made for setting {sel.get('setting')}, not "
                              f"{store.digest}")
    return sel


def phase_methods(store: Store, net: Network, phase: str, example: torch.Tensor) -> list[str]:
    """The methods of ``phase`` on ``net``."""
    if phase == "screen-oneshot":
        return oneshot_methods()
    if phase == "screen-modes":
        return mode_methods(select_pairs(store, net.name))
    if phase == "heldout":
        return finalists(read_selection(store), net.name) + peers_of(net, store.setting,
                                                                      example)
    if phase == "width":
        return [m for m in WIDTH_METHODS if _width_runs(net)]
    raise ValueError(f"unknown phase {phase!r}")


def _width_runs(net: Network) -> bool:
    return net.shrinknets_lam is not None and net.group_strength is not None


def run_trial(root: str, network_name: str, seed: int, phase: str, setting: str = "default",
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the missing cells of ``phase`` for ``network_name`` on ``seed`` into ``root``.

    Returns ``{"network", "seed", "phase", "cells", "ran", "seconds"}``. ValueError for a seed
    that is not one of the phase's (development seeds for the screen, held-out ones after).
    """
    log = log or (lambda msg: print(msg, flush=True))
    s = setting_named(setting)
    store = Store(root, s)
    net = network(s, network_name)
    if seed not in seeds_of(s, phase):
        raise ValueError(f"seed {seed} is not a seed of phase {phase!r}: it runs on "
                         f"{', '.join(map(str, seeds_of(s, phase)))}")
    t0 = time.perf_counter()
    example = example_input(s)
    methods = phase_methods(store, net, phase, example)
    if phase == "width":
        matched = ([read_selection(store)["networks"][net.name]["recommended"]]
                   + peers_of(net, s, example)) if methods else []
        ran = run_width(store, net, seed, methods, matched, log) if methods else 0
        return _summary(net, seed, phase, len(methods) * (1 + len(matched)), ran, t0)
    points = net.screened() if phase.startswith("screen") else net.points
    pending = [(m, p) for m in methods for p in points
               if not store.has(phase, net.name, seed, m, p)]
    if pending:
        tp = load_torch_pruning(skip_missing=False, log=log)
        base, _info = baseline(net, s, seed, Path(root) / "baselines", log)
        data = load_data(net, s, seed, phase)
        run = make_run(net, s, data, base, tp)
        for method, point in pending:
            row = run_method(run, method, point)
            store.put(phase, seed, row)
            log(f"  {phase} {net.name} seed {seed} {method} {point:g}x: right after pruning "
                f"{row['acc_pruned']:.4f}, after fine-tuning {row['acc_finetuned']:.4f} "
                f"({row['seconds']:.1f} s)")
    return _summary(net, seed, phase, len(methods) * len(points), len(pending), t0)


def example_input(s: Setting) -> torch.Tensor:
    """One input of the setting's data (every network of the benchmark reads 1x28x28 images)."""
    return torch.zeros(1, 1, 28, 28)


def _summary(net, seed, phase, cells, ran, t0) -> dict[str, Any]:
    return {"network": net.name, "seed": int(seed), "phase": phase, "cells": cells, "ran": ran,
            "seconds": round(time.perf_counter() - t0, 1)}
