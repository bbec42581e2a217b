"""A post-hoc diagnostic of the accuracy right after pruning (exploratory: chosen after the
held-out figures were seen, not part of the verdict).

A network with BatchNorm keeps the running statistics of the unpruned network; after a cut they
describe activations that no longer exist, which may alone put a pruned network at chance. Here
every held-out method of a network is pruned again exactly as in its cell
(:func:`~experiments.bench.criteria.methods.prune_copy`: same seed, same batches), then its
BatchNorm running statistics are re-estimated on ``images`` fine-tuning images (forward passes in
train mode, no gradient, cumulative averages), and its test accuracy is measured again.
``python -m experiments.bench.criteria --step diagnostic`` writes ``ROOT/diagnostic.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from experiments.bench.criteria.data import baseline, load_data
from experiments.bench.criteria.methods import finetune_stream, make_run, prune_copy
from experiments.bench.criteria.store import Store
from experiments.bench.criteria.summary import seed_stats
from experiments.bench.criteria.trial import setting_named
from experiments.bench.peers.methods import common_widths
from experiments.bench.peers.setting import load_torch_pruning
from experiments.harness import atomic

__all__ = ["recalibrate_batchnorm", "run_diagnostic"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 128) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``images`` (their cumulative
    average over the batches, in train mode, no gradient); returns how many were reset."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was = model.training
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(images), batch):
        model(images[i:i + batch])
    for m, mom in saved.items():
        m.momentum = mom
    model.train(was)
    return len(norms)


def run_diagnostic(root: str, setting: str, networks: Sequence[str],
                   log: Callable[[str], None], images: int = 512) -> dict:
    """Right-after-pruning accuracy with and without re-estimated BatchNorm statistics, for every
    held-out method of the networks with BatchNorm, written to ``ROOT/diagnostic.json`` after
    every seed (a killed run resumes at the next seed): per network, ``seeds`` (the values of
    each cut, by seed) and ``summary`` (their statistics over the seeds done)."""
    s = setting_named(setting)
    store = Store(root, s)
    path = Path(root) / "diagnostic.json"
    out = atomic.read_json(path) if path.exists() else {}
    tp = load_torch_pruning(skip_missing=False, log=log)
    for net in s.networks:
        if net.name not in networks:
            continue
        rows = store.rows("heldout", s.heldout_seeds, net.name)
        methods = sorted({r["method"] for r in rows})
        part = out.setdefault(net.name, {"seeds": {}, "summary": {}})
        for seed in s.heldout_seeds:
            if str(seed) in part["seeds"]:
                continue
            base, _ = baseline(net, s, seed, store.root / "baselines", log)
            if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in base.modules()):
                out.pop(net.name)
                break
            run = make_run(net, s, load_data(net, s, seed, "heldout"), base, tp)
            calib = run.data.finetune.tensors[0][:images]
            cuts = {}
            for method in methods:
                for point in net.points:
                    kept = common_widths(run.base, run.ctx, point)
                    stream = finetune_stream(run.data, net, seed)
                    model, acc, _spent, _opt = prune_copy(run, method, kept, stream)
                    recalibrate_batchnorm(model, calib)
                    cuts[f"{method}@{point:g}x"] = {"as_pruned": acc,
                                                    "recalibrated": run.accuracy(model)}
            part["seeds"][str(seed)] = cuts
            part["summary"] = _summary(part["seeds"])
            atomic.write_json(path, out)
            log(f"diagnostic {net.name} seed {seed}: {len(cuts)} cuts re-measured with "
                f"BatchNorm statistics of {len(calib)} images")
    return out


def _summary(seeds: dict) -> dict:
    keys = next(iter(seeds.values())).keys()
    return {k: {stage: seed_stats([seeds[sd][k][stage] for sd in sorted(seeds)])
                for stage in ("as_pruned", "recalibrated")} for k in keys}
