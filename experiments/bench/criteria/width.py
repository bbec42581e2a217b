"""The width-learning methods, which choose their own widths, compared at matched size.

ShrinkNets (a switch per unit, an L1 penalty on the switches, units whose switch is dead
removed; G. Leclerc et al., "Smallify: Learning Network Size while Training", 2018,
https://arxiv.org/abs/1806.03723) and proximal group lasso (exact zeros, the zeroed units
removed; J. M. Alvarez and M. Salzmann, "Learning the Number of Neurons in Deep Networks",
NeurIPS 2016) spend the first ``penalty_fraction`` of the same fine-tuning budget with their
penalty, remove the units it killed (mean replacement, the optimizer kept) and train the rest of
the budget. Their widths are then given to the network's recommended method and to every peer,
which prune the baseline to exactly those widths and fine-tune with the whole budget: the
comparison is at matched widths (so matched parameters and MACs), after fine-tuning.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch

import pruners
from experiments.bench.criteria.data import baseline, load_data
from experiments.bench.criteria.methods import Run, finetune_stream, make_run, \
    new_optimizer, run_method, train_steps
from experiments.bench.criteria.setting import Network
from experiments.bench.peers.methods import bias_free, fold_created_biases
from experiments.bench.peers.setting import load_torch_pruning
from experiments.bench.peers.widths import layer_widths
from pruners import ProximalGroupSparsity, remove_units
from pruners.shrinknets import fold_switches, insert_switches, shrinknets_penalty
from saliency import SCORERS

__all__ = ["WIDTH_METHODS", "SWITCH_THRESHOLD", "learn_widths", "run_width", "matched_name"]

WIDTH_METHODS = ("shrinknets", "group_lasso")
#: a switch at or below this magnitude is dead (the paper's threshold strategy)
SWITCH_THRESHOLD = 1e-2


def matched_name(learner: str, method: str) -> str:
    """The cell name of ``method`` run at the widths ``learner`` chose."""
    return f"{learner}+{method}"


def _dead_units(scores, groups, dead) -> dict[str, list[int]]:
    """The dead units of each group; a group whose units all died keeps its best one."""
    units = {}
    for g in groups:
        sc = scores[g].detach().abs().double()
        idx = torch.nonzero(dead(sc)).flatten()
        if len(idx) == len(sc):
            idx = idx[idx != int(torch.argmax(sc))]
        if len(idx):
            units[g] = sorted(idx.tolist())
    return units


def learn_widths(run: Run, learner: str) -> tuple[Any, dict[str, Any]]:
    """Train a copy of the baseline with ``learner``'s penalty, remove the units it killed,
    train the rest of the budget; returns the model and its figures (``kept``: its widths)."""
    t0 = time.perf_counter()
    net, s, seed = run.net, run.setting, run.data.seed
    example = run.data.example
    stream = finetune_stream(run.data, net, seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(run.base)
    penalty_steps = int(s.penalty_fraction * net.finetune_steps)
    groups = list(run.ctx.prunable)
    if learner == "shrinknets":
        model = insert_switches(model, example, parametrization="signed", init="constant",
                                value=1.0)
        opt = new_optimizer(model, s)
        lam = net.shrinknets_lam
        train_steps(model, opt, stream, penalty_steps,
                    penalty=lambda m: shrinknets_penalty(m, lam))
        scores = SCORERS["switch"](example_input=example).score(model)
        units = _dead_units(scores, groups, lambda a: a <= SWITCH_THRESHOLD)
    elif learner == "group_lasso":
        opt = new_optimizer(model, s)
        prox = ProximalGroupSparsity(model, strength=net.group_strength, example_input=example)
        train_steps(model, opt, stream, penalty_steps, after_step=prox.step)
        scores = SCORERS["group_norm"](example_input=example).score(model)
        units = _dead_units(scores, groups, lambda a: a == 0)
    else:
        raise ValueError(f"unknown width-learning method {learner!r}: choose from "
                         f"{', '.join(WIDTH_METHODS)}")
    without = bias_free(model)
    if units:
        remove_units(model, units, replacement="mean", data=run.data.scoring, optimizer=opt)
        fold_created_biases(model, example, without, opt)
    acc_cut = run.accuracy(model)
    train_steps(model, opt, stream, net.finetune_steps - penalty_steps)
    if learner == "shrinknets":
        model = fold_switches(model.eval(), example)
    params = pruners.count_params(model)
    macs = pruners.count_macs(model, example)
    row = {"network": net.name, "method": learner, "point": 0.0,
           "kept": layer_widths(model, groups), "params": params,
           "params_base": run.params_base, "macs": macs, "macs_base": run.macs_base,
           "mac_ratio": run.macs_base / macs, "param_ratio": run.params_base / params,
           "acc_base": run.acc_base, "acc_pruned": acc_cut,
           "acc_finetuned": run.accuracy(model), "finetune_steps": net.finetune_steps,
           "seconds": round(time.perf_counter() - t0, 2)}
    return model, row


def run_width(store, net: Network, seed: int, learners, matched: list[str],
              log: Callable[[str], None]) -> int:
    """The width phase of one (network, seed): each learner, then every method of ``matched``
    at the learner's widths; cells already in ``store`` are skipped. Returns the cells run."""
    s = store.setting
    names = [(lr, None) for lr in learners] + [(lr, m) for lr in learners for m in matched]
    pending = [(lr, m) for lr, m in names
               if not store.has("width", net.name, seed, lr if m is None else
                                matched_name(lr, m), 0.0)]
    if not pending:
        return 0
    tp = load_torch_pruning(skip_missing=False, log=log)
    base, _ = baseline(net, s, seed, Path(store.root) / "baselines", log)
    run = make_run(net, s, load_data(net, s, seed, "width"), base, tp)
    for learner, method in pending:
        if method is None:
            _model, row = learn_widths(run, learner)
        else:
            learned = store.rows("width", [seed], net.name)
            kept = next(r["kept"] for r in learned if r["method"] == learner)
            row = run_method(run, method, 0.0, kept=kept)
            row = {**row, "method": matched_name(learner, method), "learner": learner,
                   "matched": method}
        store.put("width", seed, row)
        log(f"  width {net.name} seed {seed} {row['method']}: {row['mac_ratio']:.2f}x fewer "
            f"MACs, {row['params']:,} parameters, after fine-tuning {row['acc_finetuned']:.4f}")
    return len(pending)
