"""ShrinkNets against statically sized networks: the evaluation of the ShrinkNets paper, Sec. 5.

*ShrinkNets: Learning Network Size while Training* (2018 draft; public as G.
Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify:
Learning Network Size while Training*, https://arxiv.org/abs/1806.03723;
below: the ShrinkNets paper) gives every unit of an
over-sized network a switch, adds ``lambda ||beta||_1 + lambda_2
||theta||_p^p`` to the loss (eq. 2, 9), removes units whose switch dies while
training goes on (Sec. 4.1-4.2) and folds the switches away before inference
(Sec. 4.2). Its evaluation (Sec. 5.1) compares random searches of the two
methods: Adam, learning rate, batch size, ``lambda`` and ``lambda_2`` drawn
at random, the learning rate divided by 10 after 5 epochs without
validation improvement, training stopped at the epoch budget or once the
learning rate is under 1e-7; each trained model reports the test accuracy
of its best validation epoch **in the second half of training** and its
size in parameters **without the switch layers**.

Trial experiments (one training run each; the unit a sweep samples):

* ``shrinknets-mlp`` -- an over-sized MLP (784-1024-1024-10 on
  Fashion-MNIST, which stands in for COVERTYPE; the COVERTYPE network of
  Sec. 5.1.2, :func:`experiments.harness.models.covertype_net` at 1024-1024-1024,
  with ``--set dataset=covertype data_dir=...``) with a switch after every
  hidden layer (:func:`pruners.insert_switches`), trained with
  :class:`experiments.harness.callbacks.ShrinkNetsCallback`.
* ``static-mlp`` -- the same training without switches (the weight penalty
  ``lambda_2 ||theta||_p^p`` only), each hidden layer's width drawn
  independently (``width1``, ``width2``, and ``width3`` for COVERTYPE;
  log-uniform integers from 8 to 1024), as Sec. 5.1.2 samples static sizes.
* ``shrinknets-vgg`` -- a VGG with BatchNorm (:func:`experiments.harness.models.vgg`)
  started at 2x width, switches after each BatchNorm and after the hidden
  fully connected layer (Sec. 5.1.1). Fashion-MNIST stands in for CIFAR-10
  (``vgg-small``, four poolings for 28x28 images); CIFAR-10 runs with
  ``--set dataset=cifar10`` (``vgg16``). To fit 2 CPU cores, the channel
  counts are scaled by ``base_width`` (0.25: 2x start = 32-32-M-64-64-M-
  128-128-M-256-256-M, FC 256) and training uses the first ``limit`` (10,000)
  training images; ``--set base_width=1.0 limit=null`` is the paper's size.
* ``static-vgg`` -- the channel-doubling heuristic with one sampled width
  multiplier ``width_mult`` in [0.1, 2] (log-uniform; the paper does not say
  how it draws it), times the same ``base_width``.

Switches. The default (``switch="relu"``) is the ``g = max(0, theta)`` gate
of the paper's earlier draft (*Learning Network Size while Training with
ShrinkNets*, 2018; below: the ShrinkNets draft) collected with
``Threshold(0.0)``: a unit is removed exactly when its gate is 0, which
holds for good under gradient descent, so every removal leaves the network's
function unchanged, the collector's period (``gc_every``) does not change
what is removed, and there is no extra hyperparameter. ``switch="signed"``
is the paper's ``beta ~ N(0, 1)`` with its sign-variance strategy
(:class:`pruners.shrinknets.SignVariance`, ``inertia``,
``variance_threshold``); its removals are approximate (the gate is near, not
at, 0) and its decisions depend on how often the collector samples the
signs, which the paper does not give.

Each trial checkpoints every epoch (a killed run resumes) and saves the
folded network (:func:`pruners.shrinknets.fold_switches`; for static
networks the network itself) after every epoch's collection; at the end the
second-half rule picks the epoch and its folded network is kept as
``folded.pt`` (loadable on its own with
:func:`experiments.harness.checkpoint.model_from_checkpoint`). ``results.json`` has
``final``: ``test_acc`` (at the picked epoch), ``val_acc``, ``best_epoch``,
``params`` (folded network: switches excluded) and ``macs``,
``switched_params`` (the network trained, with its switches),
``initial_params``, ``width/<layer>`` (units per layer), ``train_time_s``
(training, without evaluation) and the run's history (widths per epoch in
``width/<layer>``). The accuracy of an epoch is measured before that epoch's
closing collection; with ``switch="relu"`` that collection removes only
units whose gate is exactly 0, so the folded network has that accuracy.

Drivers ``shrinknets-vs-static-mlp`` and ``shrinknets-vs-static-vgg`` run the
two sweeps with the same number of trials and sweep seed
(:func:`experiments.harness.sweep.run_sweep`, resumable: finished trials are not
rerun) and then write:

* ``pareto.png``, ``fronts.csv`` -- test accuracy against parameters for
  every trial of both methods, with both Pareto fronts (Fig. 1-2, top);
* ``size_ratios.csv`` -- smallest static network / smallest ShrinkNets
  network reaching the best static accuracy, and 0.5 and 1 point less
  (Sec. 5.1.1-5.1.2);
* ``speed.csv``, ``speed.png`` -- at each accuracy level (every trial's
  accuracy from ``speed_min_acc`` up, as the paper's 80-100%), the smallest
  ShrinkNets network (folded) timed against the smallest static network of
  at least that accuracy on CPU at batch 1 and 256: speedup and size ratio
  (Sec. 5.2, lower panels of Fig. 1-2). Timing as
  :func:`experiments.harness.timing.time_models` (interleaved blocks,
  median per call);
* ``widths.png``, ``widths.csv`` -- units per layer over training of the most
  accurate ShrinkNets trial and of the smallest one within 1 point of the
  best static accuracy (Fig. 3);
* ``results.json`` -- all of the above, the two fronts, the reproduction's
  targets (front within 0.3 points of the best static accuracy; >= 5x
  smaller at 1 point below it) and how many trials ran now (``ran_now``).

Budgets: a trial of the MLP runs ``epochs`` = 20 epochs over 55,000 images
(the paper's 400-epoch cap is out of reach on 2 cores; the learning-rate
rule still runs, but acts at most a few times). At 10 epochs the ShrinkNets
networks were still shrinking at a steady rate; at 20 they had mostly
settled. The driver's 2 x 8 trials (``workers=2``: two trials at a time, one
thread each) took 11-16 minutes on 2 cores shared with other jobs
(ShrinkNets trials 0.5-5.5 minutes each, static ones 15-90 s). A VGG trial
(10 epochs) at 2x (``base_width`` 0.25) costs about 1.5 s per 128-image
step on one busy core at the start, so 2-3 minutes per epoch over 10,000
images before it shrinks; a driver's 2 x 8 trials take a few hours.
``--quick`` runs 3 trials per method of 4 epochs of 4 batches each on a few
hundred images, in this process (seconds; its accuracies mean nothing).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from experiments.harness import atomic
from experiments.harness.callbacks import ShrinkNetsCallback
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from experiments.harness.models import build_model
from experiments.harness.plots import log_count_axis, plot_history
from experiments.harness.registry import register
from experiments.harness.run import RunContext, changed_settings, load_data
from experiments.harness.training import Callback, TrainConfig, Trainer
from pruners import count_macs, count_params, trace
from pruners.shrinknets import (GarbageCollector, SignVariance, Threshold, fold_switches,
                                insert_switches, shrinknets_penalty)

__all__ = ["best_second_half", "size_ratios", "smallest_at", "speed_levels",
           "FoldedSnapshots", "WeightPenalty"]

# --------------------------------------------------------------------------- settings

_DATA = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
         "data_seed": 0, "seed": 0}
#: Sec. 5.1: Adam; divide the learning rate by 10 after 5 epochs without validation
#: improvement; stop at the epoch budget or under 1e-7.
_TRAIN = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 10, "momentum": 0.0,
          "weight_decay": 0.0, "lr_rule": "plateau", "patience": 5, "factor": 0.1,
          "min_lr": 1e-7, "eval_batch_size": 2000, "max_batches": None}
_PENALTY = {"lam2": 1e-6, "p": 2}
_SWITCH = {"lam": 1e-3, "switch": "relu", "gc_every": 50, "inertia": 0.9,
           "variance_threshold": 1.0}
_QUICK = {"limit": 384, "epochs": 4, "max_batches": 4, "batch_size": 32,
          "eval_batch_size": 512}
_QUICK_SN = {**_QUICK, "gc_every": 2}

#: what both methods search (Sec. 5.1 "Setup")
_SPACE = {"lr": ("loguniform", 1e-4, 1e-2), "batch_size": ("choice", [64, 128, 256]),
          "lam2": ("loguniform", 1e-8, 1e-4)}
_SPACE_SN = {**_SPACE, "lam": ("loguniform", 1e-5, 1e-2)}

#: settings that may differ when a trial folder is resumed
_FREE = ("data_dir", "eval_batch_size", "quick")


# --------------------------------------------------------------------------- callbacks


class WeightPenalty(Callback):
    """``lambda_2 ||theta||_p^p`` on every parameter (the static networks' ``lambda_2``)."""

    def __init__(self, lam2: float, p: int = 2):
        self.lam2, self.p = float(lam2), int(p)

    def loss(self, trainer, loss):
        return loss + shrinknets_penalty(trainer.model, 0.0, self.lam2, self.p)


class FoldedSnapshots(Callback):
    """After each epoch, save the folded network and add its size to the epoch's row.

    Writes ``snapshots/epoch_<e>.pt`` (a checkpoint of the network without
    switch layers, :func:`pruners.shrinknets.fold_switches`, loadable with
    :func:`experiments.harness.checkpoint.model_from_checkpoint`) and adds
    ``folded_params``, ``folded_macs`` and ``width/<layer>`` (units of each
    prunable layer) to the row. Place it after the ShrinkNets callback, so it
    sees the network after the epoch's collection.
    """

    def __init__(self, ctx: RunContext, arch: Mapping[str, Any], example: torch.Tensor):
        self.ctx, self.arch, self.example = ctx, dict(arch), example

    def on_epoch_end(self, trainer, metrics):
        folded = fold_switches(trainer.model, self.example)
        save_checkpoint(self.ctx.path(f"snapshots/epoch_{trainer.epoch:04d}.pt"), folded,
                        self.arch, epoch=trainer.epoch)
        metrics["folded_params"] = count_params(folded)
        metrics["folded_macs"] = count_macs(folded, self.example)
        graph = trace(folded, self.example)
        for name in graph.prunable:
            metrics[f"width/{name}"] = graph.producers[name].num_units


# --------------------------------------------------------------------------- selection


def best_second_half(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row of the best validation accuracy among epochs ``e > n / 2`` (Sec. 5.1).

    ``n`` is the number of epochs trained (fewer than the budget when the
    learning rate fell under its floor); ties go to the earlier epoch.
    """
    if not history:
        raise ValueError("no epochs trained")
    n = len(history)
    second = [r for r in history if r["epoch"] > n / 2]
    return max(second, key=lambda r: r["val_acc"])


def smallest_at(rows: Sequence[Mapping[str, Any]], level: float,
                acc_key: str = "test_acc", size_key: str = "params"
                ) -> Mapping[str, Any] | None:
    """The row with the fewest parameters among those with accuracy >= ``level`` (or None).

    Ties in size go to the more accurate row, then the first.
    """
    ok = [r for r in rows if float(r[acc_key]) >= level - 1e-12]
    if not ok:
        return None
    return min(ok, key=lambda r: (float(r[size_key]), -float(r[acc_key])))


def size_ratios(static: Sequence[Mapping[str, Any]], shrink: Sequence[Mapping[str, Any]],
                drops: Sequence[float] = (0.0, 0.5, 1.0), acc_key: str = "test_acc",
                size_key: str = "params") -> list[dict[str, Any]]:
    """Smallest static / smallest ShrinkNets size at the best static accuracy minus ``drops``.

    Accuracies are fractions; a drop of 1 point is 0.01. ``ratio`` > 1 means
    ShrinkNets found a smaller network; None when a method has none there.
    """
    best = max(float(r[acc_key]) for r in static)
    out = []
    for d in drops:
        level = best - d / 100.0
        st, sn = smallest_at(static, level, acc_key, size_key), \
            smallest_at(shrink, level, acc_key, size_key)
        out.append({
            "drop_points": d, "level": level,
            "static_id": st["id"] if st else None,
            "static_params": float(st[size_key]) if st else None,
            "static_acc": float(st[acc_key]) if st else None,
            "shrinknets_id": sn["id"] if sn else None,
            "shrinknets_params": float(sn[size_key]) if sn else None,
            "shrinknets_acc": float(sn[acc_key]) if sn else None,
            "ratio": (float(st[size_key]) / float(sn[size_key])) if st and sn else None})
    return out


def speed_levels(static: Sequence[Mapping[str, Any]], shrink: Sequence[Mapping[str, Any]],
                 min_acc: float, acc_key: str = "test_acc", size_key: str = "params"
                 ) -> list[dict[str, Any]]:
    """Accuracy levels (every trial's accuracy >= ``min_acc``) that both methods reach.

    For each: the smallest static and smallest ShrinkNets row reaching it
    (Sec. 5.2: "we select the smallest model that achieves a given accuracy
    for both").
    """
    levels = sorted({float(r[acc_key]) for r in [*static, *shrink]
                     if float(r[acc_key]) >= min_acc})
    out = []
    for level in levels:
        st, sn = smallest_at(static, level, acc_key, size_key), \
            smallest_at(shrink, level, acc_key, size_key)
        if st is not None and sn is not None:
            out.append({"level": level, "static": st, "shrinknets": sn})
    return out


# --------------------------------------------------------------------------- one trial


def _check_folder(ctx: RunContext, cfg: Mapping[str, Any]) -> None:
    """Refuse to resume a trial trained with other settings; record ours."""
    path = ctx.path("settings.json")
    mine = atomic.to_jsonable({k: v for k, v in cfg.items() if k not in _FREE})
    if ctx.path("checkpoint.pt").exists() and path.exists():
        what = changed_settings(atomic.read_json(path), mine)
        if what:
            raise ValueError(f"{ctx.out_dir} holds a run with other settings ({what}); rerun "
                             "it as it was, pass another --out, or delete the folder")
    atomic.write_json(path, mine)


def _mlp_arch(cfg: Mapping[str, Any], data, method: str) -> tuple[str, dict[str, Any]]:
    covertype = cfg["dataset"] == "covertype"
    depth = 3 if covertype else 2
    if method == "shrinknets":
        hidden = list(cfg["start_widths"] or [1024] * depth)
    else:
        hidden = [int(cfg[f"width{i}"]) for i in range(1, depth + 1)]
    if covertype:
        if len(hidden) != 3:
            raise ValueError(f"the COVERTYPE network has three hidden layers, got {hidden}")
        return "covertype_net", {"widths": hidden, "in_features": int(data.input_shape[0]),
                                 "num_classes": int(data.num_classes)}
    return "mlp", {"widths": [math.prod(data.input_shape), *hidden, int(data.num_classes)]}


def _vgg_arch(cfg: Mapping[str, Any], data, method: str) -> tuple[str, dict[str, Any]]:
    if len(data.input_shape) != 3:
        raise ValueError(f"the VGG needs images, {cfg['dataset']} has inputs "
                         f"{tuple(data.input_shape)}")
    c, h, _ = data.input_shape
    config = cfg["config"] or ("vgg16" if h >= 32 else "vgg-small")
    mult = 2.0 if method == "shrinknets" else float(cfg["width_mult"])
    return "vgg", {"config": config, "width": mult * float(cfg["base_width"]),
                   "in_channels": int(c), "image_size": int(h),
                   "num_classes": int(data.num_classes), "hidden": int(cfg["hidden"])}


def _strategy(cfg: Mapping[str, Any]):
    if cfg["switch"] == "relu":
        return Threshold(0.0)
    if cfg["switch"] == "signed":
        return SignVariance(float(cfg["inertia"]), float(cfg["variance_threshold"]))
    raise ValueError(f"switch must be 'relu' or 'signed', got {cfg['switch']!r}")


def run_trial(cfg: Mapping[str, Any], ctx: RunContext, family: str, method: str
              ) -> dict[str, Any]:
    """Train one ShrinkNets or static network and report it by the second-half rule."""
    _check_folder(ctx, cfg)
    data = load_data(cfg)
    arch_fn = _mlp_arch if family == "mlp" else _vgg_arch
    name, kwargs = arch_fn(cfg, data, method)
    example = data.train.tensors[0][:1]
    torch.manual_seed(int(cfg["seed"]))
    base = build_model(name, **kwargs)
    arch = {"model": name, "kwargs": kwargs}
    initial_params = count_params(base)
    snaps = FoldedSnapshots(ctx, arch, example)
    if method == "shrinknets":
        switch = cfg["switch"]
        _strategy(cfg)  # validate before building
        model = insert_switches(base, example, parametrization=switch,
                                init="uniform" if switch == "relu" else "normal")
        collector = GarbageCollector(_strategy(cfg), example_input=example)
        callbacks = [ShrinkNetsCallback(collector, lam=float(cfg["lam"]),
                                        lam2=float(cfg["lam2"]), p=int(cfg["p"]),
                                        gc_every=int(cfg["gc_every"])), snaps]
    else:
        model = base
        callbacks = [WeightPenalty(float(cfg["lam2"]), int(cfg["p"])), snaps]
    trainer = Trainer(model, data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(cfg), arch=arch, callbacks=callbacks,
                      checkpoint=ctx.path("checkpoint.pt"), progress=ctx.progress,
                      example_input=example)
    if trainer.history:
        ctx.log(f"resuming after epoch {trainer.epoch}")
    history = trainer.fit()
    ctx.write_csv("history.csv", history)
    plot_history(history, ctx, title=f"{method} {family}: {name} {kwargs.get('widths', '')}")
    for row in history:
        ctx.log(f"epoch {row['epoch']:>3}  lr {row['lr']:.2e}  train loss "
                f"{row['train_loss']:.4f}  val {row['val_acc']:.4f}  test {row['test_acc']:.4f}"
                f"  params {row['folded_params']:,}  {row['epoch_time_s']:.1f}s")

    best = best_second_half(history)
    snap = ctx.path(f"snapshots/epoch_{best['epoch']:04d}.pt")
    if snap.exists():  # keep the picked epoch's folded network, drop the others
        atomic.write_bytes(ctx.path("folded.pt"), snap.read_bytes())
    ckpt = load_checkpoint(ctx.path("folded.pt"))
    if int(ckpt["epoch"]) != int(best["epoch"]):
        raise RuntimeError(f"{ctx.path('folded.pt')} holds epoch {ckpt['epoch']}, the "
                           f"second-half rule picks epoch {best['epoch']}")
    for p in sorted(ctx.path("snapshots").glob("epoch_*.pt")):
        p.unlink()
    folded = model_from_checkpoint(ckpt)
    params, macs = count_params(folded), count_macs(folded, example)
    if params != best["folded_params"]:
        raise RuntimeError(f"folded.pt has {params} parameters, epoch {best['epoch']} "
                           f"recorded {best['folded_params']}")
    widths = {k: v for k, v in best.items() if k.startswith("width/")}
    final = {"test_acc": best["test_acc"], "val_acc": best["val_acc"],
             "best_epoch": best["epoch"], "epochs_run": len(history), "params": params,
             "macs": macs, "switched_params": best["params"], "initial_params": initial_params,
             "train_time_s": sum(r["epoch_time_s"] for r in history),
             "final_lr": history[-1]["lr"], **widths}
    ctx.log(f"best second-half epoch {best['epoch']}/{len(history)}: test "
            f"{best['test_acc']:.4f}, {params:,} parameters folded ({best['params']:,} with "
            f"switches, {initial_params:,} at the start), {macs:,} MACs")
    return {"final": final, "model": arch, "method": method, "family": family,
            "stopped": trainer.stopped_reason, "history": history,
            "folded_checkpoint": "folded.pt"}


_MLP_DEFAULTS = {**_DATA, **_TRAIN, **_PENALTY, "epochs": 20}
_VGG_DEFAULTS = {**_DATA, **_TRAIN, **_PENALTY, "limit": 10000, "config": None,
                 "base_width": 0.25, "hidden": 512}
_VGG_QUICK = {**_QUICK, "base_width": 0.0625, "limit": 256}


@register("shrinknets-mlp",
          "ShrinkNets trial: over-sized MLP 784-1024-1024-10 with switches (Fashion-MNIST; "
          "COVERTYPE with dataset=covertype), second-half best epoch, folded size",
          defaults={**_MLP_DEFAULTS, **_SWITCH, "start_widths": None},
          quick={**_QUICK_SN, "start_widths": [256, 256]}, space=_SPACE_SN,
          source="the ShrinkNets paper, Sec. 4, 5.1, 5.1.2")
def shrinknets_mlp(cfg, ctx):
    return run_trial(cfg, ctx, "mlp", "shrinknets")


@register("static-mlp",
          "Static MLP trial: hidden widths sampled independently (8-1024), same training as "
          "shrinknets-mlp",
          defaults={**_MLP_DEFAULTS, "width1": 256, "width2": 256, "width3": 256},
          quick=_QUICK,
          space={**_SPACE, **{f"width{i}": ("logint", 8, 1024) for i in (1, 2, 3)}},
          source="the ShrinkNets paper, Sec. 5.1, 5.1.2")
def static_mlp(cfg, ctx):
    return run_trial(cfg, ctx, "mlp", "static")


@register("shrinknets-vgg",
          "ShrinkNets trial: VGG with BatchNorm at 2x width with switches (Fashion-MNIST for "
          "CIFAR-10), second-half best epoch, folded size",
          defaults={**_VGG_DEFAULTS, **_SWITCH}, quick={**_VGG_QUICK, "gc_every": 2},
          space=_SPACE_SN,
          source="the ShrinkNets paper, Sec. 5.1, 5.1.1")
def shrinknets_vgg(cfg, ctx):
    return run_trial(cfg, ctx, "vgg", "shrinknets")


@register("static-vgg",
          "Static VGG trial: channel doubling times a sampled width multiplier 0.1-2",
          defaults={**_VGG_DEFAULTS, "width_mult": 1.0}, quick=_VGG_QUICK,
          space={**_SPACE, "width_mult": ("loguniform", 0.1, 2.0)},
          source="the ShrinkNets paper, Sec. 5.1, 5.1.1")
def static_vgg(cfg, ctx):
    return run_trial(cfg, ctx, "vgg", "static")


# --------------------------------------------------------------------------- the drivers


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt


_COLORS = {"shrinknets": "C0", "static": "C1"}


def _plot_fronts(rows: Mapping[str, list], fronts: Mapping[str, list], ctx: RunContext,
                 title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, rs in rows.items():
        ax.scatter([float(r["params"]) for r in rs], [100 * float(r["test_acc"]) for r in rs],
                   s=22, color=_COLORS[method], alpha=0.45, label=f"{method} ({len(rs)} trials)")
        fr = fronts[method]
        ax.step([float(r["params"]) for r in fr], [100 * float(r["test_acc"]) for r in fr],
                where="post", color=_COLORS[method], lw=1.6, label=f"{method} Pareto front")
    log_count_axis(ax)
    ax.set(xlabel="parameters (folded, switches excluded)",
           ylabel="test accuracy (%) at the best second-half epoch", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ctx.save_figure(fig, "pareto.png")


def _plot_speed(speed: list[dict], batches: Sequence[int], ctx: RunContext, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 1 + len(batches), figsize=(4.2 * (1 + len(batches)), 3.4))
    lv = [100 * s["level"] for s in speed]
    axes[0].plot(lv, [s["size_ratio"] for s in speed], marker="o", drawstyle="steps-post")
    axes[0].set(xlabel="accuracy level (%)", ylabel="size ratio static / ShrinkNets",
                yscale="log")
    for ax, b in zip(axes[1:], batches):
        ax.plot(lv, [s[f"speedup_b{b}"] for s in speed], marker="o", drawstyle="steps-post",
                color="C2")
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set(xlabel="accuracy level (%)", ylabel=f"CPU speedup, batch {b}")
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, "speed.png")


def _plot_widths(picked: Mapping[str, Mapping[str, Any]], ctx: RunContext, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(picked), figsize=(5.6 * len(picked), 3.6), squeeze=False)
    cmap = plt.get_cmap("Blues")
    for ax, (label, p) in zip(axes[0], picked.items()):
        hist = p["history"]
        layers = [k.split("/", 1)[1] for k in hist[0] if k.startswith("width/")]
        x = list(range(len(layers)))
        ax.plot(x, [p["initial"][n] for n in layers], ls="--", color="0.3", label="start")
        n = len(hist)
        for i, r in enumerate(hist):
            ax.plot(x, [r[f"width/{k}"] for k in layers], color=cmap(0.25 + 0.75 * (i + 1) / n),
                    marker="o", ms=3, lw=1.2, label=f"epoch {r['epoch']}" if i in (0, n - 1)
                    else None)
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="units", yscale="log",
               title=f"{label}: {p['id']}, {100 * p['test_acc']:.2f}%")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, "widths.png")


def _finished(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "trials").glob("*/results.json")}


def _timing_input(cfg: Mapping[str, Any], batch: int) -> torch.Tensor:
    data = load_data({**cfg, "limit": max(batch, 1)})
    x = data.test.tensors[0]
    reps = -(-batch // x.shape[0])
    return x.repeat((reps,) + (1,) * (x.dim() - 1))[:batch]


def _run_sweeps(cfg: Mapping[str, Any], ctx: RunContext, names: Mapping[str, str],
                fixed: Mapping[str, Any]) -> tuple[dict[str, list], dict[str, list]]:
    """Run (or resume) the sweep of each method into ``<method>/``: the finished trials
    that report an accuracy, and the ids of those run now, per method."""
    from experiments.harness.sweep import run_sweep

    rows, ran = {}, {}
    for method, name in names.items():
        out = ctx.path(method)
        before = _finished(out)
        ctx.log(f"{name}: {cfg['trials']} trials (seed {cfg['seed']}) into {out}, "
                f"{len(before)} finished before")
        rows[method] = [r for r in run_sweep(
            name, random=int(cfg["trials"]), seed=int(cfg["seed"]), out_dir=out,
            workers=int(cfg["workers"]), quick=bool(cfg["quick"]), overrides=fixed,
            progress=False) if isinstance(r.get("test_acc"), (int, float))]
        ran[method] = sorted(_finished(out) - before)
        ctx.log(f"{name}: {len(rows[method])} trials finished, {len(ran[method])} run now")
    return rows, ran


def _pareto_fronts(rows: Mapping[str, list], ctx: RunContext, title: str) -> dict[str, list]:
    """Each method's Pareto front (fewest parameters, highest test accuracy); writes
    ``fronts.csv`` (every trial, flagged when on its front) and ``pareto.png``."""
    from experiments.harness.sweep import pareto_front

    fronts = {}
    for method, rs in rows.items():
        if not rs:
            raise RuntimeError(f"no {method} trial finished; see {ctx.path(method)}/trials/*/"
                               "error.txt")
        idx = pareto_front([float(r["params"]) for r in rs], [float(r["test_acc"]) for r in rs])
        fronts[method] = [rs[i] for i in idx]
    cols = ["method", "id", "test_acc", "val_acc", "params", "macs", "best_epoch", "epochs_run",
            "lr", "batch_size", "lam", "lam2", "train_time_s", "on_front"]
    table = [{"method": m, **r, "on_front": r in fronts[m]} for m, rs in rows.items()
             for r in rs]
    ctx.write_csv("fronts.csv", table, cols)
    _plot_fronts(rows, fronts, ctx, title)
    return fronts


def _speed(cfg: Mapping[str, Any], ctx: RunContext, rows: Mapping[str, list],
           fixed: Mapping[str, Any], title: str) -> list[dict[str, Any]]:
    """Inference speed of the smallest models per accuracy level (Sec. 5.2): at each level,
    the smallest static network against the smallest ShrinkNets one, timed together on CPU
    at each batch size; writes ``speed.csv`` and ``speed.png``."""
    from experiments.harness.timing import time_models

    levels = speed_levels(rows["static"], rows["shrinknets"], float(cfg["speed_min_acc"]))
    batches = [int(b) for b in cfg["timing_batches"]]
    timed: dict[tuple[str, str, int], tuple[float, float]] = {}
    models: dict[tuple[str, str], torch.nn.Module] = {}

    def model(method: str, tid: str) -> torch.nn.Module:
        if (method, tid) not in models:
            path = ctx.path(f"{method}/trials/{tid}/folded.pt")
            models[(method, tid)] = model_from_checkpoint(load_checkpoint(path)).eval()
        return models[(method, tid)]

    inputs = {b: _timing_input(fixed, b) for b in batches} if levels else {}
    speed = []
    for lv in levels:
        st, sn = lv["static"], lv["shrinknets"]
        row = {"level": lv["level"], "static_id": st["id"], "static_params": st["params"],
               "static_acc": st["test_acc"], "shrinknets_id": sn["id"],
               "shrinknets_params": sn["params"], "shrinknets_acc": sn["test_acc"],
               "size_ratio": float(st["params"]) / float(sn["params"])}
        for b in batches:
            key = (st["id"], sn["id"], b)
            if key not in timed:
                t = time_models([model("static", st["id"]), model("shrinknets", sn["id"])],
                                inputs[b], repeats=int(cfg["timing_repeats"]))
                timed[key] = (1e3 * statistics.median(t[0]), 1e3 * statistics.median(t[1]))
            ms_st, ms_sn = timed[key]
            row[f"static_ms_b{b}"], row[f"shrinknets_ms_b{b}"] = ms_st, ms_sn
            row[f"speedup_b{b}"] = ms_st / ms_sn
        speed.append(row)
    ctx.write_csv("speed.csv", speed)
    if speed:
        _plot_speed(speed, batches, ctx, title)
        for r in speed:
            ctx.log(f"level {100 * r['level']:.2f}%: size x{r['size_ratio']:.2f}, speedup "
                    + ", ".join(f"batch {b} x{r[f'speedup_b{b}']:.2f}" for b in batches))
    return speed


def _widths_over_training(ctx: RunContext, shrinknets: list, best_static: float,
                          fixed: Mapping[str, Any], title: str) -> dict[str, dict[str, Any]]:
    """Units per layer over training (Fig. 3) of the most accurate ShrinkNets trial and of
    the smallest within 1 point of the best static accuracy; writes ``widths.csv`` and
    ``widths.png``."""
    picks = {"most accurate": max(shrinknets, key=lambda r: float(r["test_acc"]))}
    small = smallest_at(shrinknets, best_static - 0.01)
    if small is not None and small["id"] != picks["most accurate"]["id"]:
        picks["smallest within 1 point of the best static"] = small
    picked, width_rows = {}, []
    for label, r in picks.items():
        res = atomic.read_json(ctx.path(f"shrinknets/trials/{r['id']}/results.json"))
        hist = res["history"]
        kw = res["model"]["kwargs"]
        start = build_model(res["model"]["model"], **kw)
        ex = torch.zeros((1,) + tuple(_timing_input(fixed, 1).shape[1:]))
        g = trace(start, ex)
        initial = {n: g.producers[n].num_units for n in g.prunable}
        picked[label] = {"id": r["id"], "test_acc": float(r["test_acc"]), "history": hist,
                         "initial": initial}
        for h in hist:
            width_rows.append({"trial": label, "id": r["id"], "epoch": h["epoch"],
                               **{k: v for k, v in h.items() if k.startswith("width/")}})
    ctx.write_csv("widths.csv", width_rows)
    _plot_widths(picked, ctx, title)
    return picked


def _targets(ratios: list[dict[str, Any]], best_static: float, best_sn: float,
             ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The reproduction's targets: ShrinkNets' front within 0.3 points of the best static
    accuracy, and a static network at least 5x larger at 1 point below it."""
    at1 = next(r for r in ratios if r["drop_points"] == 1.0)
    gap = 100 * (best_static - best_sn)
    targets = {
        "front_within_0.3_points": {"value": gap, "target": "<= 0.3 points below the best "
                                    "static accuracy", "met": gap <= 0.3},
        "ratio_at_minus_1_point": {"value": at1["ratio"], "target": ">= 5",
                                   "met": at1["ratio"] is not None and at1["ratio"] >= 5}}
    for k, t in targets.items():
        ctx.log(f"target {k}: {t['value']} ({t['target']}): {'met' if t['met'] else 'not met'}")
    return targets


def compare(cfg: Mapping[str, Any], ctx: RunContext, family: str) -> dict[str, Any]:
    """Run both sweeps, then fronts, size ratios, inference speed and widths (Sec. 5)."""
    fixed = {"dataset": cfg["dataset"], "data_dir": cfg["data_dir"],
             "val_size": cfg["val_size"], **dict(cfg["trial_overrides"] or {})}
    names = {"shrinknets": f"shrinknets-{family}", "static": f"static-{family}"}
    rows, ran = _run_sweeps(cfg, ctx, names, fixed)
    title = f"{names['shrinknets']} vs {names['static']} ({cfg['dataset']})"
    fronts = _pareto_fronts(rows, ctx, title)

    ratios = size_ratios(rows["static"], rows["shrinknets"])
    ctx.write_csv("size_ratios.csv", ratios)
    best_static = max(float(r["test_acc"]) for r in rows["static"])
    best_sn = max(float(r["test_acc"]) for r in rows["shrinknets"])
    for r in ratios:
        ctx.log(f"at {100 * r['level']:.2f}% (best static - {r['drop_points']:g}): static "
                f"{r['static_params']}, ShrinkNets {r['shrinknets_params']}, ratio {r['ratio']}")

    speed = _speed(cfg, ctx, rows, fixed, title)
    picked = _widths_over_training(ctx, rows["shrinknets"], best_static, fixed, title)
    targets = _targets(ratios, best_static, best_sn, ctx)
    return {
        "trials": int(cfg["trials"]), "seed": int(cfg["seed"]), "ran_now": ran,
        "best_static_acc": best_static, "best_shrinknets_acc": best_sn,
        "fronts": {m: [{"id": r["id"], "params": r["params"], "test_acc": r["test_acc"]}
                       for r in fr] for m, fr in fronts.items()},
        "size_ratios": ratios, "speed": speed, "widths": {k: v["id"] for k, v in picked.items()},
        "targets": targets,
        "trial_time_s": {m: sum(float(r.get("wall_time_s") or 0) for r in rs)
                         for m, rs in rows.items()},
        "train_time_s": {m: sum(float(r.get("train_time_s") or 0) for r in rs)
                         for m, rs in rows.items()}}


_DRIVER = {"trials": 8, "seed": 0, "workers": 2, "dataset": "fashion-mnist", "data_dir": "",
           "val_size": 5000, "trial_overrides": {}, "timing_repeats": 30,
           "timing_batches": [1, 256], "speed_min_acc": 0.8}
_DRIVER_QUICK = {"trials": 3, "workers": 1, "timing_repeats": 2, "speed_min_acc": 0.0}


@register("shrinknets-vs-static-mlp",
          "ShrinkNets vs static MLPs: two sweeps with the same budget, Pareto fronts, size "
          "ratios, CPU inference speed, widths over training (Fig. 2-3)",
          defaults=_DRIVER, quick=_DRIVER_QUICK,
          source="the ShrinkNets paper, Sec. 5.1.2, 5.2, 5.3, Fig. 2-3")
def shrinknets_vs_static_mlp(cfg, ctx):
    return compare(cfg, ctx, "mlp")


@register("shrinknets-vs-static-vgg",
          "ShrinkNets vs static VGGs (channel doubling x multiplier): fronts, size ratios, "
          "speed, widths (Fig. 1, 3)",
          defaults=_DRIVER, quick=_DRIVER_QUICK,
          source="the ShrinkNets paper, Sec. 5.1.1, 5.2, 5.3, Fig. 1, 3")
def shrinknets_vs_static_vgg(cfg, ctx):
    return compare(cfg, ctx, "vgg")
