"""ResNet-20 on Fashion-MNIST pruned by units to 2x and 5x fewer multiply-accumulates.

The network: ResNet-20 of K. He, X. Zhang, S. Ren, J. Sun, *Deep Residual Learning for Image
Recognition*, CVPR 2016 (https://arxiv.org/abs/1512.03385; below: He et al. 2016), as the zoo
builds it for 1x28x28 inputs (``resnet20``: 272,186 parameters, 31,021,952 MACs per sample;
projection shortcuts where the shape changes). The pruning: MRS unit pruning with mean
replacement and physical removal during training, as U. Evci, *Detecting Dead Weights and
Units in Neural Networks*, MS thesis, NYU 2018 (https://arxiv.org/abs/1806.06068; below: Evci
2018 or the thesis), Sec. 4.2, does it on a small CNN, here on the groups of the graph of units:
the layers a residual add sums lose their channels together (three stage streams of 16, 32 and
64 channels, each shared by four or five layers) and every block's first convolution is a
group of its own (nine groups), twelve prunable groups in all.

``resnet20-unit-pruning`` trains three runs from the same initialization and data order,
under the same budget (same epochs, same learning-rate schedule):

* ``unpruned/`` -- the baseline;
* ``macs2x/`` and ``macs5x/`` -- the same run with ``UnitPruner("mrs", schedule,
  replacement="mean", remove=True, scope="layer")`` called after epochs 1-4 through
  :class:`~experiments.harness.callbacks.PrunerCallback`: the lowest-MRS channels of every
  group are replaced by their mean output (folded into the consumers' biases) and removed
  physically; the optimizer is kept, its momentum sliced with the parameters.

Design choices (ours, stated before the runs):

* **Training**: SGD with momentum 0.9, learning rate 0.05 decayed to 0 by a cosine over every
  optimizer step of the run (:class:`CosineLR`; the harness's own rules are constant and
  plateau), weight decay 5e-4, batch 128, 6 epochs, seed 0; 55,000 training images, 5,000 held
  out for validation, the 10,000 test images. The budget is CPU time: an epoch of the unpruned
  network took 2-3.5 minutes with one thread (``OMP_NUM_THREADS=1``) on a shared 2-core machine,
  where two threads competing with other jobs were several times slower; the whole study 46
  minutes.
* **Schedule**: rounds after epochs 1, 2, 3 and 4 in the shape of the thesis's Table 4.2 (0.1,
  0.2, 0.4, 0.6: 1/6, 1/3, 2/3 and all of the final fraction ``f``), then two epochs of
  training at the final size. ``scope="layer"``: every group loses ``floor(f_k * n_g)`` of its
  ``n_g`` channels by round ``k``. The final widths therefore depend on ``f`` only, so ``f`` is
  computed before training, for each target ``R`` (2 and 5), as the smallest fraction whose
  widths give at least ``R`` times fewer MACs than the unpruned network
  (:func:`fraction_for`: bisection over the fractions ``k / n_g`` where a width changes, with
  :func:`pruners.count_macs` on a pruned copy). The achieved reduction is at least ``R`` and
  the next smaller fraction gives less than ``R``: it equals ``R`` within the rounding of the
  widths. A global ranking weighted by cost (``cost="macs"``) would reach the target only
  approximately, as its widths depend on the scores.
* **Scoring data**: each round scores MRS (and takes the means of the replacement) on 1000
  training images drawn without replacement by the harness with a fixed seed (``seed * 7919 +
  epoch``), so both pruned runs and every rerun score a round on the same images.
* **MRS against exact MRP**: on the trained unpruned network, both scorers
  (``saliency.SCORERS["mrs"]`` and ``["mrp"]``, the latter holding each group channel at its
  mean in every member and measuring the loss change exactly) on one fixed sample of 500
  training images; per group, Spearman's rank correlation of the two scores, with the group's
  size and members. A figure of the study, not a threshold.
* **Inference time**: the three final networks in eval mode on a batch of 256 test images,
  timed interleaved (:func:`experiments.harness.timing.time_models`, 30 rounds, rotating
  order) with torch's thread count; medians per call.

The accuracy a history row reports at a round's epoch is the network's before that round (the
trainer evaluates, then the pruner acts); its ``params`` and ``macs`` are after the round.

Outputs: ``summary.csv`` (one row per target: parameters, MACs, test and validation accuracy,
inference time before and after), ``rounds.csv`` (every round of both pruned runs),
``mrs_vs_mrp.csv`` (per group) and ``unit_scores.csv`` (per group channel, the scores the table
is computed from), ``accuracy_macs.png`` (accuracy and MACs over epochs, three runs),
``mrs_vs_mrp.png``, ``results.json``; each run's ``checkpoint.pt`` (every epoch: a killed run
resumes, a finished one is not retrained; a folder holding runs with other settings is refused),
``history.csv`` and ``settings.json``. ``--quick`` runs the same on 384 images per split with a
ResNet-20 of widths 4, 8, 8 in seconds.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from experiments.harness import atomic
from experiments.harness.callbacks import (CosineLR, EpochLog, PrunerCallback, RecordingPruner,
                                           StepLog, scoring_batches)
from experiments.harness.models import build_model
from experiments.harness.registry import register
from experiments.harness.plots import log_count_axis
from experiments.harness.run import RunContext, final_metrics, load_data, train_in_folder
from experiments.harness.subruns import check_folder
from experiments.harness.timing import cpu_mark, loadavg, others_busy, time_models
from experiments.harness.training import TrainConfig, Trainer
from pruners import (InexactReplacementWarning, UnitPruner, count_macs, count_params,
                     remove_units, schedules, trace)
from pruners.schedules import amount_to_count
from saliency import SCORERS

__all__ = ["FoldRecorder", "widths_after", "shrunk_copy", "fraction_for",
           "schedule_for", "mrs_vs_mrp", "run_name", "THESIS_SHAPE", "MODELS"]

#: the thesis's Table 4.2 (cumulative fractions of units gone after its four rounds): the
#: shape of this study's schedule, scaled to each target's final fraction
THESIS_SHAPE = [0.1, 0.2, 0.4, 0.6]
#: the zoo's networks this study builds (both take ``widths``)
MODELS = ("resnet20", "resnet56")

_DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
    "data_seed": 0, "seed": 0,
    "model": "resnet20", "widths": [16, 32, 64],
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
    "epochs": 6, "lr_schedule": "cosine", "eval_batch_size": 1000, "max_batches": None,
    "targets": [2, 5], "round_epochs": [1, 2, 3, 4], "shape": list(THESIS_SHAPE),
    "min_units": 1, "score_samples": 1000, "score_batch": 250,
    "compare_samples": 500, "compare_batch": 250,
    "time_batch": 256, "time_repeats": 30,
}
#: seconds: 384 images per split, widths 4, 8, 8, the same rounds over 5 short epochs
_QUICK: dict[str, Any] = {
    "limit": 384, "widths": [4, 8, 8], "epochs": 5, "batch_size": 32, "eval_batch_size": 384,
    "score_samples": 64, "score_batch": 64, "compare_samples": 32, "compare_batch": 32,
    "time_repeats": 2,
}
#: settings that change nothing trained (a folder may be rerun with other values)
_FREE = ("data_dir", "eval_batch_size", "quick", "compare_samples", "compare_batch",
         "time_batch", "time_repeats")
#: settings of the pruning only (the unpruned run does not depend on them)
_PRUNING = ("targets", "round_epochs", "shape", "min_units", "score_samples", "score_batch")


def run_name(target: float) -> str:
    """The folder of the run pruned to ``target`` times fewer MACs: ``macs2x``, ``macs5x``."""
    return f"macs{target:g}x"


# --------------------------------------------------------------------------- pieces


class FoldRecorder(RecordingPruner):
    """A :class:`~pruners.UnitPruner` whose rounds record how exact their bias fold was.

    Removing a channel of a residual stream with mean replacement folds its mean into the
    biases of the 3x3 convolutions that read the stream; at their zero-padded borders the fold
    is not exact, and :func:`~pruners.remove_units` warns
    (:class:`~pruners.InexactReplacementWarning`) with the largest output deviation on the
    scoring data. This wrapper silences that warning and keeps, per round, the number of
    inexact consumers and the deviation (:attr:`rows`, saved with the pruner's state). Passed
    to :class:`~experiments.harness.callbacks.PrunerCallback` in place of the pruner; other
    attributes are the pruner's.
    """

    state_key = "folds"

    def step(self, t: int, model: nn.Module, optimizer=None, data=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InexactReplacementWarning)
            return super().step(t, model, optimizer, data)

    def record(self, t: int, report, before, data) -> dict[str, Any] | None:
        if report.removal is None:
            return None
        return {"step": int(t), "inexact_consumers": len(report.removal.inexact),
                "fold_max_deviation": report.removal.max_deviation}


def _group_widths(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    graph = trace(model, example)
    return {name: graph.groups[name].size for name in graph.prunable}


def widths_after(initial: Mapping[str, int], fraction: float, min_units: int = 1
                 ) -> dict[str, int]:
    """The widths layer-scope unit pruning to ``fraction`` leaves: ``n - floor(f * n)`` of
    every group's ``n`` channels, at least ``min_units`` (what :class:`~pruners.UnitPruner`
    with ``scope="layer"`` removes).

    Examples:
        >>> widths_after({"conv1": 16, "layer3.0.conv1": 64}, 0.5625)
        {'conv1': 7, 'layer3.0.conv1': 28}
    """
    return {name: max(int(min_units), n - amount_to_count(float(fraction), n, "floor"))
            for name, n in initial.items()}


def shrunk_copy(model: nn.Module, example: torch.Tensor, fraction: float,
                min_units: int = 1) -> nn.Module:
    """A copy of ``model`` with every prunable group cut to :func:`widths_after` (its last
    channels removed, nothing folded): the size of the pruned network, not its function."""
    m = copy.deepcopy(model)
    initial = _group_widths(m, example)
    keep = widths_after(initial, fraction, min_units)
    units = {n: list(range(keep[n], initial[n])) for n in initial if keep[n] < initial[n]}
    if units:
        remove_units(m, units, example_input=example, min_units=min_units)
    return m


def fraction_for(model: nn.Module, example: torch.Tensor, reduction: float,
                 min_units: int = 1) -> dict[str, Any]:
    """The smallest layer-scope fraction that divides the MACs of ``model`` by ``reduction``.

    The widths :func:`widths_after` gives change only at the fractions ``k / n_g`` (``n_g``
    the width of group ``g``); MACs fall as the fraction grows. A bisection over these
    fractions, each measured with :func:`pruners.count_macs` on :func:`shrunk_copy`, finds the
    first one with ``macs_before >= reduction * macs_after``; the fraction just below it
    (``previous_*``) gives a reduction under ``reduction``.

    Returns ``target``, ``fraction``, ``initial_widths``, ``widths``, ``macs_before``,
    ``macs_after``, ``reduction`` (achieved), ``previous_fraction``, ``previous_macs``,
    ``previous_reduction`` and ``evaluations`` (MAC counts taken).
    """
    if not reduction > 1:
        raise ValueError(f"a MAC reduction must be > 1, got {reduction!r}")
    macs0 = count_macs(model, example)
    initial = _group_widths(model, example)
    fractions = sorted({k / n for n in initial.values() for k in range(1, n)})
    if not fractions:
        raise ValueError("no prunable group has more than one channel")
    cache: dict[int, int] = {}

    def macs(i: int) -> int:
        if i not in cache:
            cache[i] = count_macs(shrunk_copy(model, example, fractions[i], min_units), example)
        return cache[i]

    lo, hi = 0, len(fractions) - 1
    if macs0 < reduction * macs(hi):
        raise ValueError(f"{reduction}x fewer MACs cannot be reached by layer-scope pruning "
                         f"with min_units={min_units}: at most {macs0 / macs(hi):.2f}x")
    while lo < hi:
        mid = (lo + hi) // 2
        if macs0 >= reduction * macs(mid):
            hi = mid
        else:
            lo = mid + 1
    prev_f, prev_macs = (fractions[lo - 1], macs(lo - 1)) if lo > 0 else (0.0, macs0)
    return {"target": reduction, "fraction": fractions[lo], "initial_widths": initial,
            "widths": widths_after(initial, fractions[lo], min_units),
            "macs_before": macs0, "macs_after": macs(lo), "reduction": macs0 / macs(lo),
            "previous_fraction": prev_f, "previous_macs": prev_macs,
            "previous_reduction": macs0 / prev_macs, "evaluations": len(cache)}


def schedule_for(fraction: float, round_epochs: Sequence[int], shape: Sequence[float]
                 ) -> dict[int, float]:
    """Cumulative fractions after ``round_epochs``: ``shape`` scaled so that its last value is
    ``fraction`` (which the last round reaches exactly).

    Examples:
        >>> schedule_for(0.3, [1, 2, 3, 4], [0.1, 0.2, 0.4, 0.6])
        {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.3}
    """
    last = float(shape[-1])
    points = {int(e): round(float(fraction) * float(s) / last, 12)
              for e, s in zip(round_epochs, shape)}
    points[int(round_epochs[-1])] = float(fraction)
    return points


def mrs_vs_mrp(model: nn.Module, data: Sequence) -> tuple[list[dict], list[dict], dict]:
    """MRS and exact MRP of every group channel of ``model`` on ``data``, and per group
    Spearman's rank correlation of the two (``scipy.stats.spearmanr``).

    Returns ``(scores, table, seconds)``: one row per group channel (``group``, ``channel``,
    ``mrs``, ``mrp``), one row per group (``group``, ``kind``: ``"residual stream"`` for a
    group of several layers, else ``"chain"``; ``size``, ``members`` (layers), ``member_layers``,
    ``spearman``, ``p_value``; None where a score is constant over the group), and the
    scorers' times in seconds.
    """
    from scipy.stats import spearmanr

    example = data[0][0][:1]
    graph = trace(model, example)
    seconds, scores = {}, {}
    for name in ("mrs", "mrp"):
        start = time.perf_counter()
        scores[name] = SCORERS[name]().score(model, data)
        seconds[name] = time.perf_counter() - start
    rows, table = [], []
    for g in graph.prunable:
        group = graph.groups[g]
        mrs = [float(v) for v in scores["mrs"][g].to(torch.float64)]
        mrp = [float(v) for v in scores["mrp"][g].to(torch.float64)]
        rows += [{"group": g, "channel": i, "mrs": a, "mrp": b}
                 for i, (a, b) in enumerate(zip(mrs, mrp))]
        rho, p = (float(v) for v in spearmanr(mrs, mrp))
        table.append({"group": g, "kind": "residual stream" if len(group.members) > 1
                      else "chain", "size": group.size, "members": len(group.members),
                      "member_layers": " ".join(group.members),
                      "spearman": rho if math.isfinite(rho) else None,  # None: constant scores
                      "p_value": p if math.isfinite(p) else None})
    return rows, table, seconds


# --------------------------------------------------------------------------- runs


def _steps_per_epoch(cfg: Mapping[str, Any], n: int) -> int:
    steps = math.ceil(n / int(cfg["batch_size"]))
    return min(steps, int(cfg["max_batches"])) if cfg.get("max_batches") else steps


def _train(cfg: Mapping[str, Any], ctx: RunContext, data, sub: str, callbacks: Sequence,
           free: Sequence[str]) -> Trainer:
    """Train a fresh network (seeded by ``cfg['seed']``) into ``sub/``, the learning rate on
    the cosine when asked (:func:`experiments.harness.run.train_in_folder`)."""
    check_folder(ctx, sub, cfg, free)
    total = int(cfg["epochs"]) * _steps_per_epoch(cfg, len(data.train))
    schedule = [CosineLR(float(cfg["lr"]), total)] if cfg["lr_schedule"] == "cosine" else []
    return train_in_folder(cfg, ctx, data, sub, [*schedule, *callbacks], model=cfg["model"],
                           model_kwargs={"widths": [int(w) for w in cfg["widths"]]},
                           config=TrainConfig.from_mapping({**cfg, "lr_rule": "constant"}))


def _identical_until(step: int | None, a: Sequence, b: Sequence) -> bool:
    """The two runs' per-step training losses agree bit for bit up to ``step``."""
    if step is None:
        return False
    la = [r[1] for r in a if r[0] <= step]
    lb = [r[1] for r in b if r[0] <= step]
    return bool(la) and la == lb


def _pruned_run(cfg, ctx, data, target: Mapping[str, Any]
                ) -> tuple[Trainer, PrunerCallback, FoldRecorder]:
    sub = run_name(target["target"])
    points = schedule_for(target["fraction"], cfg["round_epochs"], cfg["shape"])
    pruner = FoldRecorder(UnitPruner("mrs", schedules.table(points), replacement="mean",
                                     remove=True, scope="layer", min_units=int(cfg["min_units"])))
    cb = PrunerCallback(pruner, every="epoch", score_samples=int(cfg["score_samples"]),
                        score_batch=int(cfg["score_batch"]), seed=int(cfg["seed"]))
    own = {**cfg, "target": target["target"], "schedule": {str(k): v for k, v in points.items()}}
    own.pop("targets")
    trainer = _train(own, ctx, data, sub, [cb, EpochLog(ctx.log, sub, cb)], _FREE)
    return trainer, cb, pruner


def _widths(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> dict[str, int]:
    got = _group_widths(model, example)
    return {n: got.get(n) for n in names}


def _round_rows(sub: str, cb: PrunerCallback, pruner: FoldRecorder) -> list[dict[str, Any]]:
    folds = {r["step"]: r for r in pruner.rows}
    return [{"run": sub, **r, **{k: v for k, v in folds.get(r["step"], {}).items() if k != "step"}}
            for r in cb.rounds]


def _scores(cfg, ctx, data, trainer: Trainer) -> tuple[list[dict], list[dict], dict]:
    """MRS and MRP on the trained unpruned network; reused from ``unit_scores.json`` when that
    was computed with the same settings on the same trained network."""
    settings = {k: cfg[k] for k in ("compare_samples", "compare_batch", "seed", "dataset",
                                    "limit", "val_size", "data_seed")}
    settings["unpruned_step"] = trainer.step
    cache = ctx.path("unit_scores.json")
    if cache.exists():
        saved = atomic.read_json(cache)
        if saved.get("settings") == atomic.to_jsonable(settings):
            ctx.log("MRS and MRP: found in unit_scores.json")
            return saved["scores"], saved["table"], saved["seconds"]
    sample = scoring_batches(data.train, int(cfg["compare_samples"]), int(cfg["compare_batch"]),
                             int(cfg["seed"]))
    ctx.log(f"MRS and exact MRP of every group channel on {sum(len(b[0]) for b in sample)} "
            "training images")
    model = copy.deepcopy(trainer.model).eval()
    scores, table, seconds = mrs_vs_mrp(model, sample)
    atomic.write_json(cache, {"settings": settings, "scores": scores, "table": table,
                              "seconds": seconds})
    return scores, table, seconds


def _time(models: Mapping[str, nn.Module], data, cfg) -> dict[str, Any]:
    """Per-call times of the final networks on one test batch, interleaved."""
    x = data.test.tensors[0]
    b = int(cfg["time_batch"])
    if x.shape[0] < b:
        x = x.repeat(math.ceil(b / x.shape[0]), *([1] * (x.dim() - 1)))
    x = x[:b].contiguous()
    mark, load = cpu_mark(), loadavg()
    times = time_models([copy.deepcopy(m).eval() for m in models.values()], x,
                        repeats=int(cfg["time_repeats"]))
    busy = others_busy(mark)
    out = {"batch": b, "repeats": int(cfg["time_repeats"]), "threads": torch.get_num_threads(),
           "others_busy_cpus": busy, "loadavg_1min": load, "models": {}}
    for name, t in zip(models, times):
        t = sorted(t)
        out["models"][name] = {"median_ms": 1000 * statistics.median(t),
                               "best_ms": 1000 * t[0], "calls": len(t),
                               "q1_ms": 1000 * t[len(t) // 4], "q3_ms": 1000 * t[3 * len(t) // 4]}
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def _plot_runs(ctx: RunContext, runs: Mapping[str, Sequence[Mapping[str, Any]]], macs0: int,
               rounds: Sequence[int], title: str) -> None:
    """Test (solid) and validation (dashed) accuracy, and MACs per sample, over epochs."""
    plt, sns = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = sns.color_palette()
    for color, (name, history) in zip(colors, runs.items()):
        epochs = [r["epoch"] for r in history]
        ax.plot(epochs, [100 * r["test_acc"] for r in history], "o-", color=color,
                label=f"{name}, test")
        if "val_acc" in history[0]:
            ax.plot(epochs, [100 * r["val_acc"] for r in history], "s--", color=color,
                    alpha=0.7, markersize=4, label=f"{name}, validation")
        bx.plot([0] + epochs, [macs0 / 1e6] + [r["macs"] / 1e6 for r in history], "o-",
                color=color, label=name, drawstyle="steps-post")
    for e in rounds:
        for a in (ax, bx):
            a.axvline(e, color="0.6", linewidth=0.8, linestyle=":")
    ax.set(xlabel="epoch (dotted: a pruning round at its end, after the evaluation)",
           ylabel="accuracy (%)", title="accuracy")
    ax.legend(fontsize=7)
    bx.set(xlabel="epoch", ylabel="MACs per sample (millions)",
           title="multiply-accumulates after the epoch's round")
    log_count_axis(bx, "y")
    bx.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, "accuracy_macs.png")


def _plot_scores(ctx: RunContext, scores: Sequence[Mapping[str, Any]],
                 table: Sequence[Mapping[str, Any]], title: str) -> None:
    """MRS against MRP, one panel per group (log axes; zeros drawn at the panel's floor)."""
    plt, sns = _plt()
    n = len(table)
    cols = 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax, t in zip(axes.flat, table):
        pts = [r for r in scores if r["group"] == t["group"]]
        xs = [r["mrs"] for r in pts]
        ys = [r["mrp"] for r in pts]
        pos_x = [v for v in xs if v > 0] or [1.0]
        pos_y = [v for v in ys if v > 0] or [1.0]
        fx, fy = min(pos_x) / 3, min(pos_y) / 3
        color = sns.color_palette()[0 if t["kind"] == "chain" else 3]
        ax.scatter([max(v, fx) for v in xs], [max(v, fy) for v in ys], s=12, color=color)
        log_count_axis(ax, "x")
        log_count_axis(ax, "y")
        rho = t["spearman"]
        ax.set_title(f"{t['group']}: {t['size']} ch, {t['members']} layer"
                     f"{'s' if t['members'] > 1 else ''}\nSpearman "
                     + ("n/a" if rho is None else f"{rho:.2f}"), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("MRS")
    for ax in axes[:, 0]:
        ax.set_ylabel("MRP (exact)")
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, "mrs_vs_mrp.png")


def _validate(cfg: Mapping[str, Any]) -> None:
    if cfg["model"] not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {cfg['model']!r}")
    widths = cfg["widths"]
    if not isinstance(widths, (list, tuple)) or len(widths) != 3 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be three positive integers, got {widths!r}")
    targets = cfg["targets"]
    if not isinstance(targets, (list, tuple)) or not targets or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 1
            for t in targets) or len({run_name(t) for t in targets}) != len(targets):
        raise ValueError(f"targets must be distinct MAC reductions > 1, got {targets!r}")
    epochs, shape = cfg["round_epochs"], cfg["shape"]
    if not isinstance(epochs, (list, tuple)) or not epochs or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs) \
            or list(epochs) != sorted(set(epochs)):
        raise ValueError(f"round_epochs must be increasing epochs >= 1, got {epochs!r}")
    if epochs[-1] > int(cfg["epochs"]):
        raise ValueError(f"the last round (after epoch {epochs[-1]}) is past the last epoch "
                         f"({cfg['epochs']})")
    if not isinstance(shape, (list, tuple)) or len(shape) != len(epochs) or any(
            not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0 for s in shape) \
            or list(shape) != sorted(shape):
        raise ValueError(f"shape must be {len(epochs)} increasing positive numbers (one per "
                         f"round), got {shape!r}")
    if cfg["lr_schedule"] not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got "
                         f"{cfg['lr_schedule']!r}")


def _summary(dense: Trainer, runs: Mapping[float, tuple], timing: Mapping[str, Any],
             example: torch.Tensor) -> list[dict[str, Any]]:
    d = dense.history[-1]
    p0, m0 = count_params(dense.model), count_macs(dense.model, example)
    t0 = timing["models"]["unpruned"]["median_ms"]
    rows = []
    for target, (trainer, cb, _pruner, info) in runs.items():
        sub = run_name(target)
        h = trainer.history[-1]
        p, m = count_params(trainer.model), count_macs(trainer.model, example)
        t = timing["models"][sub]["median_ms"]
        rows.append({
            "target": f"{target:g}x", "run": sub, "fraction": info["fraction"],
            "params_before": p0, "params_after": p, "params_reduction": p0 / p,
            "macs_before": m0, "macs_after": m, "macs_reduction": m0 / m,
            "test_acc_before": d["test_acc"], "test_acc_after": h["test_acc"],
            "test_acc_change_points": 100 * (h["test_acc"] - d["test_acc"]),
            "val_acc_before": d.get("val_acc"), "val_acc_after": h.get("val_acc"),
            "val_acc_change_points": (100 * (h["val_acc"] - d["val_acc"])
                                      if "val_acc" in d else None),
            "time_ms_before": t0, "time_ms_after": t, "speedup": t0 / t,
            "speedup_per_mac_reduction": (t0 / t) / (m0 / m),
            "train_time_s_before": sum(r["epoch_time_s"] for r in dense.history),
            "train_time_s_after": sum(r["epoch_time_s"] for r in trainer.history)})
    return rows


@register("resnet20-unit-pruning",
          "ResNet-20 on Fashion-MNIST: MRS unit pruning by groups (mean replacement, removal "
          "during training) to 2x and 5x fewer MACs vs unpruned; MRS vs exact MRP per group",
          defaults=_DEFAULTS, quick=_QUICK, validate=_validate,
          source="He et al. 2016 (ResNet-20); Evci 2018, Sec. 4.2 (MRS unit pruning)")
def resnet20_unit_pruning(cfg: dict, ctx: RunContext) -> dict:
    """ResNet-20 pruned by units during training to 2x and 5x fewer MACs (see the module).

    Trains ``unpruned/`` and one run per target (``macs2x/``, ``macs5x/``) from the same
    initialization and data order; computes each target's fraction before training
    (:func:`fraction_for`); then MRS against exact MRP on the trained unpruned network and the
    inference times of the three final networks. Writes ``summary.csv``, ``rounds.csv``,
    ``mrs_vs_mrp.csv``, ``unit_scores.csv``, ``accuracy_macs.png``, ``mrs_vs_mrp.png`` and
    returns the results (``results.json``).
    """
    data = load_data(cfg)
    example = data.train.tensors[0][:1]
    ds = cfg["dataset"]
    min_units = int(cfg["min_units"])
    probe = build_model(cfg["model"], widths=[int(w) for w in cfg["widths"]])
    macs0 = count_macs(probe, example)
    targets = {}
    for t in cfg["targets"]:
        info = fraction_for(probe, example, float(t), min_units)
        targets[float(t)] = info
        ctx.log(f"{t:g}x fewer MACs: fraction {info['fraction']:.6g} of every group "
                f"(MACs {info['macs_before']:,} -> {info['macs_after']:,}, "
                f"{info['reduction']:.4f}x; the next smaller fraction "
                f"{info['previous_fraction']:.6g} gives {info['previous_reduction']:.4f}x); "
                f"widths {info['widths']}")

    log = StepLog()
    dense = _train(cfg, ctx, data, "unpruned", [log, EpochLog(ctx.log, "unpruned")],
                   _FREE + _PRUNING)
    runs = {}
    for t, info in targets.items():
        trainer, cb, pruner = _pruned_run(cfg, ctx, data, info)
        runs[t] = (trainer, cb, pruner, info)

    scores, table, seconds = _scores(cfg, ctx, data, dense)
    ctx.write_csv("unit_scores.csv", scores)
    ctx.write_csv("mrs_vs_mrp.csv", table)

    models = {"unpruned": dense.model, **{run_name(t): r[0].model for t, r in runs.items()}}
    ctx.log(f"timing the {len(models)} networks on a batch of {cfg['time_batch']}, "
            f"{cfg['time_repeats']} interleaved rounds")
    timing = _time(models, data, cfg)
    summary = _summary(dense, runs, timing, example)
    ctx.write_csv("summary.csv", summary)
    rounds = [row for t, (_, cb, pruner, _) in runs.items()
              for row in _round_rows(run_name(t), cb, pruner)]
    ctx.write_csv("rounds.csv", rounds)

    width_label = "-".join(str(w) for w in cfg["widths"])
    _plot_runs(ctx, {"unpruned": dense.history,
                     **{run_name(t): r[0].history for t, r in runs.items()}},
               macs0, cfg["round_epochs"],
               f"{cfg['model']} (widths {width_label}) on {ds}: MRS unit pruning, mean "
               "replacement, to " + " and ".join(f"{t:g}x" for t in targets) + " fewer MACs")
    _plot_scores(ctx, scores, table,
                 f"MRS against exact MRP per group, trained unpruned {cfg['model']} "
                 f"({cfg['compare_samples']} training images)")

    per_run = {}
    for t, (trainer, cb, pruner, info) in runs.items():
        sub = run_name(t)
        first = cb.rounds[0]["train_step"] if cb.rounds else None
        widths = _widths(trainer.model, example, list(info["widths"]))
        per_run[sub] = {
            "target": t, "fraction": info["fraction"],
            "schedule": {str(k): v for k, v in schedule_for(
                info["fraction"], cfg["round_epochs"], cfg["shape"]).items()},
            "final": final_metrics(trainer.history), "widths": widths,
            "expected_widths": info["widths"], "widths_as_computed": widths == info["widths"],
            "identical_before_first_round": _identical_until(first, cb.steps, log.steps),
            "rounds": _round_rows(sub, cb, pruner),
            "train_time_s": sum(r["epoch_time_s"] for r in trainer.history)}
    for r in summary:
        ctx.log(f"{r['target']}: parameters {r['params_before']:,} -> {r['params_after']:,} "
                f"({r['params_reduction']:.2f}x), MACs {r['macs_before']:,} -> "
                f"{r['macs_after']:,} ({r['macs_reduction']:.3f}x); test accuracy "
                f"{100 * r['test_acc_before']:.2f}% -> {100 * r['test_acc_after']:.2f}% "
                f"({r['test_acc_change_points']:+.2f} points); {r['time_ms_before']:.1f} -> "
                f"{r['time_ms_after']:.1f} ms per batch of {cfg['time_batch']} "
                f"({r['speedup']:.2f}x)")
    for r in table:
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        ctx.log(f"  {r['group']:<16} {r['kind']:<15} {r['size']:>3} channels, "
                f"{r['members']} layer(s): Spearman {rho}")
    rhos = [r["spearman"] for r in table if r["spearman"] is not None]
    by_kind = {k: [r["spearman"] for r in table if r["kind"] == k
                   and r["spearman"] is not None] for k in ("residual stream", "chain")}
    return {
        "data": {"dataset": ds, "source": (data.info or {}).get("source"),
                 "sizes": {k: len(getattr(data, k)) for k in ("train", "val", "test")
                           if getattr(data, k) is not None}},
        "model": {"name": cfg["model"], "widths": list(cfg["widths"]),
                  "params": count_params(dense.model), "macs": count_macs(dense.model, example)},
        "baseline": final_metrics(dense.history),
        "baseline_train_time_s": sum(r["epoch_time_s"] for r in dense.history),
        "targets": {run_name(t): info for t, info in targets.items()},
        "runs": per_run, "summary": summary, "timing": timing,
        "mrs_vs_mrp": {"samples": int(cfg["compare_samples"]), "table": table,
                       "seconds": seconds,
                       "median_spearman": statistics.median(rhos) if rhos else None,
                       "mean_spearman_by_kind": {k: (sum(v) / len(v) if v else None)
                                                 for k, v in by_kind.items()}},
        "figures": ["accuracy_macs.png", "mrs_vs_mrp.png"],
    }
