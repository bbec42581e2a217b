"""The main job: ``python -m experiments demo`` (also ``python -m experiments run demo``).

Trains the CNN (App. C.1, 20,522 parameters) of U. Evci, *Detecting Dead
Weights and Units in Neural Networks*, MS thesis, NYU, 2018
(https://arxiv.org/abs/1806.06068; below: Evci 2018 or the thesis) on
Fashion-MNIST in the thesis's setting (Sec. 2.1: SGD, learning rate 0.01,
batch 32, 10 epochs, seed 0) twice from the same initialization:

* ``unpruned/`` -- no pruning;
* ``pruned/`` -- MRS unit pruning on the thesis's Ch. 4 schedule
  (:data:`pruners.schedules.THESIS_UNITS`: 10, 20, 40, 60% of every layer's
  units gone after epochs 2, 3, 4, 5, Table 4.2), each round replacing the
  removed units by their mean output folded into the next layer's bias
  (bias propagation) and removing them physically, so the optimizer and the
  network shrink while training goes on
  (``UnitPruner("mrs", THESIS_UNITS, replacement="mean", remove=True)``
  driven by :class:`experiments.harness.callbacks.PrunerCallback`).

Both runs follow the same data order, so they are identical up to the first
round. Then it compares the two trained networks -- parameters, MACs per
sample (:func:`pruners.count_macs`), test accuracy, and CPU inference time at
batch 256 (median of timed forward passes under ``torch.no_grad``, the two
models measured alternately in the same process so that machine noise hits
both alike) -- prints the table with the ratios, and writes into the output
folder (``runs/demo`` by default):

* ``summary.csv`` -- the before/after table; ``results.json`` (last) -- the
  same plus the rounds, both histories and the timing samples;
* ``pruning.png`` -- Fig. 4.6: training loss of both runs and the fraction
  of parameters pruned over steps, and the units left in each layer per round;
  ``curves.png`` -- test accuracy and parameters per epoch of both runs;
* ``pruned/`` and ``unpruned/``: ``checkpoint.pt`` (every epoch),
  ``history.csv``, ``steps.csv`` (loss per step), and ``rounds.csv`` (pruned).

A killed demo rerun with the same command resumes both runs from their last
epoch checkpoints (the pruner's state is in the checkpoint); a finished one
is not retrained. A folder holding a run with other settings is refused.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from experiments.harness import atomic
from experiments.harness.callbacks import EpochLog, PrunerCallback, StepLog
from experiments.harness.plots import plot_pruning
from experiments.harness.registry import register
from experiments.harness.run import RunContext, changed_settings, load_data, train_in_folder
from experiments.harness.timing import BUSY_WARNING, timed
from experiments.harness.training import Trainer, evaluate
from pruners import UnitPruner, count_macs, count_params, schedules

__all__ = ["time_inference", "format_table", "demo"]

#: settings whose change does not invalidate the checkpoints of a demo folder
_FREE = ("data_dir", "eval_batch_size", "timing_batch", "timing_repeats", "timing_warmup",
         "threads", "quick")
#: settings the unpruned run does not depend on
_PRUNING = ("scorer", "schedule", "replacement", "scope", "score_samples", "score_batch")

_DEFAULTS: dict[str, Any] = {
    # data (Fashion-MNIST; 55,000 training, 5,000 validation, 10,000 test images)
    "dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
    "data_seed": 0, "seed": 0,
    # the thesis's training setting (Sec. 2.1)
    "optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 10, "momentum": 0.0,
    "weight_decay": 0.0, "lr_rule": "constant", "eval_batch_size": 2000, "max_batches": None,
    # pruning (Sec. 4.2): "thesis" = pruners.schedules.THESIS_UNITS, or {epoch: fraction}
    "scorer": "mrs", "schedule": "thesis", "replacement": "mean", "scope": "layer",
    "score_samples": 1000, "score_batch": 500,
    # inference timing
    "timing_batch": 256, "timing_repeats": 200, "timing_warmup": 10,
    # torch intra-op threads for training and timing (0: torch's default, one per core)
    "threads": 0,
}
_QUICK = {"limit": 384, "epochs": 2, "schedule": {"1": 0.3, "2": 0.6}, "score_samples": 256,
          "score_batch": 256, "eval_batch_size": 384, "timing_repeats": 10,
          "timing_warmup": 2}


def _schedule(spec):
    if spec == "thesis":
        return schedules.THESIS_UNITS
    if isinstance(spec, Mapping):
        return schedules.table({int(k): v for k, v in spec.items()})
    raise ValueError(f"schedule must be 'thesis' or a {{epoch: fraction}} mapping, got {spec!r}")


def _check_folder(ctx: RunContext, cfg: Mapping[str, Any]) -> None:
    """Refuse to resume runs trained with other settings (ValueError); record ours.

    Both runs are checked before either trains; the unpruned run ignores the
    pruning settings.
    """
    settings = {}
    for sub, skip in (("unpruned", _FREE + _PRUNING), ("pruned", _FREE)):
        mine = {k: v for k, v in cfg.items() if k not in skip}
        path = ctx.path(f"{sub}/settings.json")
        if ctx.path(f"{sub}/checkpoint.pt").exists() and path.exists():
            what = changed_settings(atomic.read_json(path), mine)
            if what:
                raise ValueError(f"{ctx.out_dir} holds a demo run with other settings ({what}); "
                                 "rerun it as it was, pass another --out, or delete the folder")
        settings[path] = mine
    for path, mine in settings.items():
        atomic.write_json(path, mine)


def _train(cfg: Mapping[str, Any], ctx: RunContext, data, sub: str, callbacks: list,
           label: str) -> Trainer:
    return train_in_folder(cfg, ctx, data, sub, callbacks, label=label)


def time_inference(models: Mapping[str, nn.Module], x: torch.Tensor, *, repeats: int,
                   warmup: int = 5) -> dict[str, list[float]]:
    """Seconds per forward pass of each model on ``x``, measured alternately.

    The models are put in eval mode and run under ``torch.no_grad``: ``warmup``
    untimed passes each, then ``repeats`` rounds timing one pass of every
    model, the order reversed every other round, with the garbage collector
    off. Returns the per-pass times of each model.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    for m in models.values():
        m.eval()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                for k in names:
                    models[k](x)
            for r in range(repeats):
                for k in (names if r % 2 == 0 else names[::-1]):
                    t0 = time.perf_counter()
                    models[k](x)
                    times[k].append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return times


def _timing_input(test_set, batch: int) -> torch.Tensor:
    x = test_set.tensors[0]
    reps = -(-batch // x.shape[0])
    return (x.repeat(reps, *([1] * (x.dim() - 1))) if reps > 1 else x)[:batch].contiguous()


_ROWS = (("params", "parameters"), ("macs", "MACs per sample"), ("test_acc", "test accuracy"),
         ("infer_ms", "inference ms, batch {batch}"))


def format_table(before: Mapping[str, Any], after: Mapping[str, Any], batch: int = 256) -> str:
    """The before/after table the demo prints (see :func:`_summary_rows`)."""
    rows = _summary_rows(before, after, batch)
    head = ("", "before (unpruned)", "after (pruned)", "after / before")
    cells = [head] + [(r["metric"], r["before_text"], r["after_text"], r["ratio_text"])
                      for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [f"{c[0]:<{w[0]}}   {c[1]:>{w[1]}}   {c[2]:>{w[2]}}   {c[3]:<{w[3]}}".rstrip()
             for c in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _summary_rows(before: Mapping[str, Any], after: Mapping[str, Any],
                  batch: int) -> list[dict[str, Any]]:
    rows = []
    for key, label in _ROWS:
        b, a = before[key], after[key]
        ratio = a / b if b else float("nan")
        if key == "test_acc":
            bt, at = f"{100 * b:.2f}%", f"{100 * a:.2f}%"
            rt = f"{100 * (a - b):+.2f} points"
        elif key == "infer_ms":
            bt, at = f"{b:.3f}", f"{a:.3f}"
            rt = ((f"{ratio:.3f} ({b / a:.2f}x faster)" if a <= b
                   else f"{ratio:.3f} ({a / b:.2f}x slower)") if a else "-")
        else:
            bt, at = f"{b:,}", f"{a:,}"
            rt = f"{ratio:.3f} ({b / a:.2f}x fewer)" if a else "-"
        rows.append({"metric": label.format(batch=batch), "key": key, "before": b, "after": a,
                     "after_over_before": ratio, "before_text": bt, "after_text": at,
                     "ratio_text": rt})
    return rows


def _plot_curves(ctx: RunContext, histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, hist in histories.items():
        ep = [r["epoch"] for r in hist]
        sns.lineplot(x=ep, y=[100 * r["test_acc"] for r in hist], ax=axes[0], label=label,
                     marker="o")
        sns.lineplot(x=ep, y=[r["params"] for r in hist], ax=axes[1], label=label, marker="o")
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)")
    axes[1].set(xlabel="epoch", ylabel="parameters (end of epoch)", ylim=(0, None))
    fig.suptitle("thesis CNN on Fashion-MNIST: MRS unit pruning vs. unpruned")
    fig.tight_layout()
    ctx.save_figure(fig, "curves.png")


@register("demo",
          "the main job: thesis CNN on Fashion-MNIST, MRS unit pruning with mean replacement "
          "and removal vs. unpruned; before/after table",
          defaults=_DEFAULTS, quick=_QUICK,
          source="Evci 2018, Sec. 4.2, Table 4.2, Fig. 4.6")
def demo(cfg: dict, ctx: RunContext) -> dict:
    """Train unpruned and pruned, compare them, write the table and plots."""
    threads = int(cfg.get("threads") or 0)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")
    before_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _demo(cfg, ctx)
    finally:
        torch.set_num_threads(before_threads)


def _demo(cfg: dict, ctx: RunContext) -> dict:
    pruner = UnitPruner(cfg["scorer"], _schedule(cfg["schedule"]),
                        replacement=cfg["replacement"], remove=True, scope=cfg["scope"])
    _check_folder(ctx, cfg)
    data = load_data(cfg)
    ctx.log(f"Fashion-MNIST: {len(data.train):,} training, {len(data.val):,} validation, "
            f"{len(data.test):,} test images; thesis CNN, SGD lr {cfg['lr']}, batch "
            f"{cfg['batch_size']}, {cfg['epochs']} epochs, seed {cfg['seed']}")

    # 1. the unpruned network
    dense_log = StepLog()
    dense = _train(cfg, ctx, data, "unpruned", [dense_log, EpochLog(ctx.log, "unpruned")],
                   "[1/2] unpruned")

    # 2. the same network and data order with MRS unit pruning
    pcb = PrunerCallback(pruner, every="epoch", score_samples=cfg["score_samples"],
                         score_batch=cfg["score_batch"], seed=cfg["seed"])
    pruned = _train(cfg, ctx, data, "pruned", [pcb, EpochLog(ctx.log, "pruned", pcb)],
                    "[2/2] pruned (MRS, mean replacement, removal)")

    # 3. compare
    example = data.test.tensors[0][:1]
    x = _timing_input(data.test, int(cfg["timing_batch"]))
    times, busy = timed(lambda: time_inference(
        {"unpruned": dense.model, "pruned": pruned.model}, x,
        repeats=int(cfg["timing_repeats"]), warmup=int(cfg["timing_warmup"])))
    side: dict[str, dict[str, Any]] = {}
    for label, tr in (("unpruned", dense), ("pruned", pruned)):
        ev = evaluate(tr.model, data.test, batch_size=int(cfg["eval_batch_size"]))
        side[label] = {"params": count_params(tr.model), "macs": count_macs(tr.model, example),
                       "test_acc": ev["acc"], "test_loss": ev["loss"],
                       "infer_ms": 1000 * statistics.median(times[label]),
                       "widths": {n: int(m.weight.shape[0]) for n, m in tr.model.named_modules()
                                  if isinstance(m, (nn.Conv2d, nn.Linear))}}
    before, after = side["unpruned"], side["pruned"]
    batch = int(cfg["timing_batch"])
    rows = _summary_rows(before, after, batch)
    ctx.write_csv("summary.csv", rows, columns=["metric", "before", "after", "after_over_before"])

    # 4. rounds, steps, plots
    for sub, steps in (("unpruned", dense_log.steps), ("pruned", pcb.steps)):
        ctx.write_csv(f"{sub}/steps.csv", [dict(zip(("step", "loss", "fraction_pruned"), r))
                                           for r in steps])
    if pcb.rounds:
        ctx.write_csv("pruned/rounds.csv", pcb.rounds)
    start = [{"epoch": 0, **{f"remaining/{k}": v for k, v in pruner.initial.items()}}] \
        if pruner.initial else []
    plot_pruning(ctx, pcb.steps, dense_log.steps, rounds=start + list(pcb.rounds),
                 name="pruning.png", smooth=5 if cfg.get("quick") else 50,
                 title="thesis CNN on Fashion-MNIST: MRS unit pruning (Fig. 4.6)")
    _plot_curves(ctx, {"unpruned": dense.history, "pruned": pruned.history})

    ratios = {"params": after["params"] / before["params"],
              "macs": after["macs"] / before["macs"],
              "test_acc_points": 100 * (after["test_acc"] - before["test_acc"]),
              "speedup": before["infer_ms"] / after["infer_ms"]}
    table = format_table(before, after, batch)
    ctx.log("\n" + table)
    if busy is not None and busy > BUSY_WARNING:
        ctx.log(f"warning: other processes kept {busy:.1f} CPUs busy while the models were "
                "timed, so the inference times are unreliable; rerun the same command on a quiet "
                "machine (it does not retrain, it only measures again)")
    return {
        "final": {"test_acc": after["test_acc"], "params": after["params"],
                  "macs": after["macs"]},
        "before": before, "after": after, "ratios": ratios, "table": table,
        "summary": [{k: r[k] for k in ("metric", "key", "before", "after",
                                       "after_over_before")} for r in rows],
        "rounds": pcb.rounds,
        "timing": {"batch": batch, "repeats": int(cfg["timing_repeats"]),
                   "threads": torch.get_num_threads(), "no_grad": True,
                   "other_cpus_busy": busy,
                   "ms": {k: [1000 * t for t in v] for k, v in times.items()}},
        "history": {"unpruned": dense.history, "pruned": pruned.history},
        "files": {"summary": "summary.csv", "pruning_plot": "pruning.png",
                  "curves_plot": "curves.png", "pruned_checkpoint": "pruned/checkpoint.pt",
                  "unpruned_checkpoint": "unpruned/checkpoint.pt"},
    }
