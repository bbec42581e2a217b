"""(a) Accuracy at equal size: every method pruned to the common widths, then fine-tuned with the
same budget (the same batches in the same order), test accuracy right after pruning and after.

A network whose setting has no fine-tuning (``finetune_epochs = 0``) is compared right after
pruning only; its rows have ``acc_finetuned = None``. Every network of the default setting is
fine-tuned with the same budget.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import pruners
from experiments.bench.peers.methods import Context, common_widths, ln_structured_prune, \
    mrp_drop_rounds, mrs_rounds, physical_params, tp_prune
from experiments.bench.peers.setting import Setting
from experiments.bench.peers.widths import common_model, lowest_units, shapes
from experiments.harness.datasets import Splits
from experiments.harness.training import batches, evaluate
from pruners import ProximalGroupSparsity, remove_units
from pruners.shrinknets import fold_switches, insert_switches, shrinknets_penalty
from saliency import SCORERS

__all__ = ["accuracy_of", "METHODS", "OURS", "PENALTY", "run_accuracy", "methods_of"]


def accuracy_of(model, test: TensorDataset, s: Setting) -> float:
    """Test accuracy of ``model`` on ``test``, in eval mode, in batches of ``s.eval_batch``."""
    return evaluate(model, test, batch_size=s.eval_batch)["acc"]


# ---------------------------------------------------------------------------
# fine-tuning with the same budget


def _epoch_batches(train: TensorDataset, s: Setting, seed: int, epoch: int):
    gen = torch.Generator().manual_seed(seed * 100_003 + 7919 * (epoch + 1))
    return batches(train, s.finetune_batch, shuffle=True, generator=gen)


def _train_epochs(model, opt, train, s: Setting, seed: int, epochs: range, *,
                  penalty=None, after_step=None) -> None:
    model.train()
    for epoch in epochs:
        for x, y in _epoch_batches(train, s, seed, epoch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if penalty is not None:
                loss = loss + penalty(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite fine-tuning loss in epoch {epoch}")
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(opt)
    model.eval()


def _sgd(model, s: Setting):
    return torch.optim.SGD(model.parameters(), lr=s.finetune_lr, momentum=s.momentum)


# ---------------------------------------------------------------------------
# the two kinds of method


def _run_one_shot(method: str, base: nn.Module, kept, ctx: Context, train, test, seed,
                  reference=None):
    """Prune a copy of ``base`` (in ``ctx.setting.rounds`` rounds), then fine-tune it with a new
    optimizer for the whole budget (none without fine-tuning epochs)."""
    s = ctx.setting
    model = copy.deepcopy(base).eval()
    if method == "ours_mrs":
        mrs_rounds(model, kept, ctx, s.rounds)
    elif method == "ours_mrp_drop":
        mrp_drop_rounds(model, kept, ctx, s.rounds)
    elif method == "ln_structured":
        ln_structured_prune(model, kept, ctx)
    elif method.startswith("tp_"):
        tp_prune(model, kept, ctx, method[3:], s.rounds)
    else:  # pragma: no cover - the caller passes known names
        raise ValueError(method)
    after_pruning = accuracy_of(model, test, s)
    params_pruned = physical_params(model, method, kept, ctx, test.tensors[0][:256], reference)
    if s.finetune_epochs > 0:
        opt = _sgd(model, s)
        _train_epochs(model, opt, train, s, seed, range(s.finetune_epochs))
    return model, after_pruning, params_pruned


def _run_penalty(method: str, base: nn.Module, kept, ctx: Context, train, test, seed,
                 reference=None):
    """ShrinkNets or group sparsity: penalty epochs, cut to ``kept``, plain epochs."""
    s = ctx.setting
    if method == "ours_shrinknets":
        model = insert_switches(copy.deepcopy(base), ctx.example, parametrization="signed",
                                init="constant", value=1.0)
        lam = s.shrinknets_lam[ctx.model_name]
        penalty, after = (lambda m: shrinknets_penalty(m, lam)), None
        score = lambda m: SCORERS["switch"](example_input=ctx.example).score(m)  # noqa: E731
    else:
        model = copy.deepcopy(base)
        prox = ProximalGroupSparsity(model, strength=s.group_strength[ctx.model_name],
                                     example_input=ctx.example)
        penalty, after = None, prox.step
        score = lambda m: SCORERS["group_norm"](example_input=ctx.example).score(m)  # noqa
    opt = _sgd(model, s)
    _train_epochs(model, opt, train, s, seed, range(s.penalty_epochs), penalty=penalty,
                  after_step=after)
    scores = score(model)
    remove_units(model, lowest_units({l: scores[l] for l in kept}, kept), replacement="mean",
                 data=ctx.scoring, optimizer=opt)
    after_pruning = accuracy_of(model, test, s)
    _train_epochs(model, opt, train, s, seed, range(s.penalty_epochs, s.finetune_epochs))
    if method == "ours_shrinknets":
        model = fold_switches(model.eval(), ctx.example)
    params_pruned = physical_params(model, method, kept, ctx, test.tensors[0][:256], reference)
    return model, after_pruning, params_pruned


#: method -> (label, runner, needs Torch-Pruning, needs BatchNorm); a run uses those of its
#: setting's ``methods``
METHODS: dict[str, tuple[str, Callable, bool, bool]] = {
    "ours_mrs": ("ours: MRS + mean replacement", _run_one_shot, False, False),
    "ours_mrp_drop": ("ours: exact MRP ranking, dropped", _run_one_shot, False, False),
    "ours_shrinknets": ("ours: ShrinkNets (penalty, cut by |g|)", _run_penalty, False, False),
    "ours_group_sparsity": ("ours: group sparsity (prox, cut by norm)", _run_penalty, False,
                            False),
    "tp_magnitude": ("Torch-Pruning: MagnitudeImportance", _run_one_shot, True, False),
    "tp_taylor": ("Torch-Pruning: TaylorImportance", _run_one_shot, True, False),
    "tp_bn_scale": ("Torch-Pruning: BNScaleImportance", _run_one_shot, True, True),
    "ln_structured": ("torch.nn.utils.prune.ln_structured", _run_one_shot, False, False),
}
#: our methods; the others of :data:`METHODS` are the peers
OURS = ("ours_mrs", "ours_mrp_drop", "ours_shrinknets", "ours_group_sparsity")
#: the methods that train while they prune: they need fine-tuning epochs
PENALTY = ("ours_shrinknets", "ours_group_sparsity")


def methods_of(ctx: Context, base: nn.Module) -> list[str]:
    """The methods of :data:`METHODS` that run on ``base``: those of the setting, less
    Torch-Pruning's without it (and on a network with attention heads in more than one round),
    BatchNorm scale without a BatchNorm, and the penalty methods without fine-tuning epochs."""
    s = ctx.setting
    unknown = sorted(set(s.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in base.modules())
    # Torch-Pruning's head pruning runs in one step here (its per-step head ratio applies to
    # the heads left, not the original count: it cannot follow our rounds' widths)
    heads_in_rounds = s.rounds > 1 and ctx.graph is not None and bool(ctx.graph.prunable_heads)
    out = []
    for method, (_label, _runner, needs_tp, needs_bn) in METHODS.items():
        if method not in s.methods or (needs_tp and (ctx.tp is None or heads_in_rounds)) or \
                (needs_bn and not has_bn) or (method in PENALTY and s.finetune_epochs < 1):
            continue
        out.append(method)
    return out


def run_accuracy(name: str, base: nn.Module, ctx: Context, splits: Splits, finetune,
                 seed: int, log) -> tuple[list[dict], dict[float, dict[str, nn.Module]]]:
    """Every method at every size of ``ctx.setting.reductions`` on the network ``base``.

    The sizes are ``reduce_by`` (parameters or MACs) reductions. Returns one row per size and
    method (widths, parameter counts, MACs, accuracies) and the fine-tuned models (without
    fine-tuning: the pruned ones) by size and method. RuntimeError if a method's layer shapes
    or parameter count after pruning or after fine-tuning are not the common ones.
    """
    s = ctx.setting
    rows, models = [], {}
    params_base = pruners.count_params(base)
    macs_base = pruners.count_macs(base, ctx.example)
    acc_base = accuracy_of(base, splits.test, s)
    methods = methods_of(ctx, base)
    for target in s.reductions:
        kept = common_widths(base, ctx, target)
        common = common_model(base, ctx.example, kept)
        reference = shapes(common)
        params_target = pruners.count_params(common)
        macs_target = pruners.count_macs(common, ctx.example)
        models[target] = {}
        log(f"  {name} {target:g}x: widths {kept}, {params_target:,} of {params_base:,} "
            f"parameters ({params_base / params_target:.2f}x), {macs_target:,} of "
            f"{macs_base:,} MACs ({macs_base / macs_target:.2f}x)")
        for method in methods:
            label, runner, _, _ = METHODS[method]
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            model, after_pruning, params_pruned = runner(method, base, kept, ctx, finetune,
                                                         splits.test, seed, reference)
            tuned = s.finetune_epochs > 0
            acc = accuracy_of(model, splits.test, s) if tuned else None
            physical = (physical_params(model, method, kept, ctx, splits.test.tensors[0][:256],
                                        reference) if tuned else params_pruned)
            if physical != params_target or params_pruned != params_target:
                raise RuntimeError(f"{method} on {name} at {target}x has {params_pruned:,} "
                                   f"parameters after pruning and {physical:,} after "
                                   f"fine-tuning, not {params_target:,}")
            row = {"model": name, "target": float(target), "method": method, "label": label,
                   "kept": kept, "params": physical, "params_base": params_base,
                   "reduction": params_base / physical, "macs": macs_target,
                   "macs_base": macs_base, "mac_reduction": macs_base / macs_target,
                   "reduce_by": s.reduce_by, "nonzero_params": pruners.count_params(model),
                   "acc_base": acc_base, "acc_pruned": after_pruning, "acc_finetuned": acc,
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            models[target][method] = model
            log(f"    {method:<20} after pruning {after_pruning:.4f}  after fine-tuning "
                f"{'-' if acc is None else f'{acc:.4f}'}  ({row['seconds']:.1f} s)")
    return rows, models
