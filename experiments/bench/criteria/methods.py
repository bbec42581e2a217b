"""Every method of the benchmark, run in one cell: prune a trained network to the common widths
of an operating point, fine-tune it with the shared budget, and measure it.

Ours: a unit scorer of :data:`saliency.SCORERS` crossed with a replacement (``mean``: the
removed units' mean output on the scoring data folded into the consumers' biases, U. Evci,
"Detecting Dead Weights and Units in Neural Networks", MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068, Sec. 3.1; ``drop``: removed, the consumers see zero) and a
mode (:data:`~experiments.bench.criteria.setting.MODES`). The peers: Torch-Pruning's
``MetaPruner`` under its importances (:func:`experiments.bench.peers.methods.tp_prune`) and
``torch.nn.utils.prune.ln_structured``. Every method ends at exactly the same widths (checked),
spends exactly ``finetune_steps`` SGD steps on the same batches in the same order, and is
measured right after its last pruning round and after the budget.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import pruners
from experiments.bench.criteria.data import Data
from experiments.bench.criteria.setting import Network, Setting, parse_ours
from experiments.bench.peers import setting as peers_setting
from experiments.bench.peers.methods import Context, bias_free, common_widths, \
    fold_created_biases, ln_structured_prune, make_context, physical_params, tp_prune
from experiments.bench.peers.widths import common_model, layer_widths, lowest_units, \
    round_widths, shapes
from experiments.harness.training import evaluate
from pruners import remove_units
from saliency import SCORERS

__all__ = ["Run", "make_run", "run_method", "prune_copy", "finetune_stream",
           "train_steps", "new_optimizer", "PEER_LABELS"]

#: what each peer is, for tables
PEER_LABELS = {
    "tp_l2": "Torch-Pruning MagnitudeImportance (L2)",
    "tp_l1": "Torch-Pruning MagnitudeImportance (L1)",
    "tp_bn_scale": "Torch-Pruning BNScaleImportance",
    "tp_taylor": "Torch-Pruning TaylorImportance",
    "tp_hessian": "Torch-Pruning HessianImportance",
    "ln_structured": "torch.nn.utils.prune.ln_structured (L2)",
}


class Run:
    """One trained network of one seed, ready for its cells: the data, the baseline, the
    context the peers' drivers need (:class:`experiments.bench.peers.methods.Context`), and a
    cache of its scores (the one-shot rankings are computed once per scorer)."""

    def __init__(self, net: Network, s: Setting, data: Data, base: nn.Module, tp: Any):
        self.net, self.setting, self.data, self.base, self.tp = net, s, data, base.eval(), tp
        shim = peers_setting.Setting(models=(), reduce_by="macs")
        self.ctx: Context = make_context(self.base, data.example, data.scoring, tp, shim,
                                         net.name)
        self.scores: dict[str, dict[str, torch.Tensor]] = {}
        self.acc_base = self.accuracy(self.base)
        self.params_base = pruners.count_params(self.base)
        self.macs_base = pruners.count_macs(self.base, data.example)

    def accuracy(self, model: nn.Module) -> float:
        """Accuracy on the phase's evaluation set, in eval mode."""
        return float(evaluate(model, self.data.eval, batch_size=self.net.eval_batch)["acc"])


def make_run(net: Network, s: Setting, data: Data, base: nn.Module, tp: Any) -> Run:
    """The :class:`Run` of a trained network."""
    return Run(net, s, data, base, tp)


# ---------------------------------------------------------------------------
# the shared fine-tuning budget


def finetune_stream(data: Data, net: Network, seed: int) -> Iterator[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
    """The fine-tuning batches, endlessly: epoch after epoch over the fixed subset, each epoch
    shuffled by its own seeded generator, so every method sees the same batches in the same
    order."""
    xs, ys = data.finetune.tensors
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 100_003 + 7919 * (epoch + 1))
        order = torch.randperm(len(ys), generator=gen)
        for i in range(0, len(ys) - net.finetune_batch + 1, net.finetune_batch):
            idx = order[i:i + net.finetune_batch]
            yield xs[idx], ys[idx]
        epoch += 1


def new_optimizer(model: nn.Module, s: Setting) -> torch.optim.Optimizer:
    """The fine-tuning optimizer: SGD with the setting's learning rate and momentum."""
    return torch.optim.SGD(model.parameters(), lr=s.finetune_lr, momentum=s.momentum)


def train_steps(model: nn.Module, opt, stream, steps: int, after_step=None, penalty=None
                ) -> None:
    """``steps`` SGD steps of cross-entropy (plus ``penalty(model)``) on the next batches of
    ``stream``; ``after_step(opt)`` after each (a proximal step)."""
    model.train()
    for _ in range(steps):
        x, y = next(stream)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty(model)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite fine-tuning loss")
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(opt)
    model.eval()


# ---------------------------------------------------------------------------
# ours


def _scorer(name: str, seed: int):
    return SCORERS[name](seed=seed) if name == "random_unit" else SCORERS[name]()


def _score(run: Run, model: nn.Module, scorer: str, data) -> dict[str, torch.Tensor]:
    return _scorer(scorer, run.data.seed).score(model, data)


def _base_scores(run: Run, scorer: str) -> dict[str, torch.Tensor]:
    if scorer not in run.scores:
        run.scores[scorer] = _score(run, run.base, scorer, run.data.scoring)
    return run.scores[scorer]


def _remove(run: Run, model: nn.Module, units, replacement: str, data, opt=None) -> None:
    """Remove ``units`` with the replacement; a bias that mean replacement gives a bias-free
    layer moves into the BatchNorm that reads it, so the shapes stay the peers' shapes."""
    if not units:
        return
    if replacement == "mean":
        without = bias_free(model)
        remove_units(model, units, replacement="mean", data=data, optimizer=opt)
        fold_created_biases(model, run.data.example, without, opt)
    else:
        remove_units(model, units, example_input=run.data.example, optimizer=opt)


def _gaps(run: Run) -> list[int]:
    """The fine-tuning steps between consecutive rounds (``rounds_ft``, ``during``)."""
    s, steps = run.setting, run.net.finetune_steps
    between = int(math.floor(s.between_fraction * steps))
    n = s.rounds - 1
    return [between // n + (1 if i < between % n else 0) for i in range(n)] if n else []


def _ours(run: Run, model: nn.Module, kept, scorer: str, replacement: str, mode: str,
          stream) -> tuple[float, int, Any]:
    """Prune ``model`` to ``kept`` by one of our methods; returns the accuracy right after the
    last round, the fine-tuning steps already spent, and the optimizer to go on with (None:
    a new one)."""
    if mode == "oneshot":
        units = lowest_units(_base_scores(run, scorer), kept)
        _remove(run, model, units, replacement, run.data.scoring)
        return run.accuracy(model), 0, None
    widths = round_widths(layer_widths(model, list(kept)), kept, run.setting.rounds)
    if mode == "rounds":
        for k in widths:
            scores = _score(run, model, scorer, run.data.scoring)
            _remove(run, model, lowest_units(scores, k), replacement, run.data.scoring)
        return run.accuracy(model), 0, None
    gaps = _gaps(run) + [0]
    if mode == "rounds_ft":
        for k, gap in zip(widths, gaps):
            scores = _score(run, model, scorer, run.data.scoring)
            _remove(run, model, lowest_units(scores, k), replacement, run.data.scoring)
            if gap:
                train_steps(model, new_optimizer(model, run.setting), stream, gap)
        return run.accuracy(model), sum(gaps), None
    if mode == "during":
        return _during(run, model, widths, gaps, scorer, replacement, stream)
    raise ValueError(f"unknown mode {mode!r}")


def _during(run: Run, model: nn.Module, widths, gaps, scorer: str, replacement: str,
            stream) -> tuple[float, int, Any]:
    """Pruning during training: one :class:`pruners.UnitPruner` per group (each on its own
    schedule, so every group passes through the rounds' widths and ends at its kept count),
    stepped inside the training loop with the training optimizer, whose state it slices; each
    round is scored on the next training batches (which are then trained on), not on the
    scoring set."""
    opt = new_optimizer(model, run.setting)
    start = layer_widths(model, list(widths[-1]))
    per_round = max(1, math.ceil(run.net.scoring_images / run.net.finetune_batch))
    unit_pruners = {
        g: pruners.UnitPruner(_scorer(scorer, run.data.seed), schedule=_schedule(g, start,
                                                                                 widths),
                              replacement="mean" if replacement == "mean" else None,
                              layers=[g], example_input=run.data.example)
        for g in start}
    spent, acc_pruned = 0, None
    for r, gap in enumerate(gaps):
        batches = [next(stream) for _ in range(per_round)]
        without = bias_free(model)
        for unit_pruner in unit_pruners.values():
            unit_pruner.step(r + 1, model, optimizer=opt, data=batches)
        fold_created_biases(model, run.data.example, without, opt)
        last = r + 1 == len(gaps)
        if last:  # measured straight after the last removal, as every other mode is
            acc_pruned = run.accuracy(model)
        # the scoring batches are training batches: trained on, counted in the budget
        train_steps(model, opt, iter(batches), len(batches))
        spent += len(batches)
        steps = 0 if last else max(0, gap - len(batches))
        train_steps(model, opt, stream, steps)
        spent += steps
    got = layer_widths(model, list(widths[-1]))
    if got != dict(widths[-1]):
        raise RuntimeError(f"pruning during training ended at {got}, not {dict(widths[-1])}")
    return acc_pruned, spent, opt


def _schedule(group: str, start, widths):
    """The cumulative fractions of ``group``'s units gone after each round (round ``r`` at
    ``t = r``), aimed half a unit inside the count so ``floor`` lands on it."""
    n = start[group]
    marks = [(n - k[group] + 0.5) / n for k in widths]
    return lambda t: 0.0 if t < 1 else marks[min(int(t), len(marks)) - 1]


# ---------------------------------------------------------------------------
# a cell


def prune_copy(run: Run, method: str, kept: dict[str, int], stream
               ) -> tuple[nn.Module, float, int, Any]:
    """A copy of the baseline pruned by ``method`` to ``kept``: the model, its accuracy right
    after the last pruning round, the training steps spent while pruning (drawn from
    ``stream``), and the optimizer to go on with (None: a new one). RuntimeError if pruning
    spent more than the budget."""
    net = run.net
    torch.manual_seed(run.data.seed)
    model = copy.deepcopy(run.base).eval()
    ours = parse_ours(method)
    opt = None
    if ours is not None:
        acc_pruned, spent, opt = _ours(run, model, kept, *ours, stream)
    else:
        if method == "ln_structured":
            ln_structured_prune(model, kept, run.ctx)
        else:
            tp_prune(model, kept, run.ctx, method[3:])
        acc_pruned, spent = run.accuracy(model), 0
    if spent > net.finetune_steps:
        raise RuntimeError(f"{method} spent {spent} training steps while pruning, more than the "
                           f"budget of {net.finetune_steps}: raise finetune_steps or lower "
                           f"the rounds or the scoring images")
    return model, acc_pruned, spent, opt


def run_method(run: Run, method: str, point: float, kept: dict[str, int] | None = None
               ) -> dict[str, Any]:
    """Prune a copy of the baseline by ``method`` to the widths of ``point`` (times fewer
    MACs; or to ``kept``, units per group, when given), fine-tune it with the budget, and
    return the cell's figures.

    RuntimeError if the method's widths, shapes or parameter count differ from the common
    ones, before or after fine-tuning.
    """
    t0 = time.perf_counter()
    net, s = run.net, run.setting
    kept = dict(kept) if kept is not None else common_widths(run.base, run.ctx, point)
    common = common_model(run.base, run.data.example, kept)
    reference, params = shapes(common), pruners.count_params(common)
    macs = pruners.count_macs(common, run.data.example)
    stream = finetune_stream(run.data, net, run.data.seed)
    model, acc_pruned, spent, opt = prune_copy(run, method, kept, stream)
    check = run.data.eval.tensors[0][:256]
    pruned_params = physical_params(model, method, kept, run.ctx, check, reference)
    train_steps(model, opt if opt is not None else new_optimizer(model, s), stream,
                net.finetune_steps - spent)
    final_params = physical_params(model, method, kept, run.ctx, check, reference)
    if not pruned_params == final_params == params:
        raise RuntimeError(f"{method} at {point:g}x has {pruned_params:,} parameters after "
                           f"pruning and {final_params:,} after fine-tuning, not {params:,}")
    return {"network": net.name, "method": method, "point": float(point), "kept": kept,
            "params": params, "params_base": run.params_base, "macs": macs,
            "macs_base": run.macs_base, "mac_ratio": run.macs_base / macs,
            "param_ratio": run.params_base / params, "acc_base": run.acc_base,
            "acc_pruned": acc_pruned, "acc_finetuned": run.accuracy(model),
            "finetune_steps": net.finetune_steps,
            "seconds": round(time.perf_counter() - t0, 2)}
