"""Pieces every training experiment shares: data, model, trainer, outputs."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .datasets import get_dataset
from .models import build_model
from .registry import RunContext
from .training import Trainer, TrainConfig

__all__ = ["load_data", "train_run", "train_in_folder", "plot_history", "final_metrics",
           "log_count_axis"]


def load_data(cfg: Mapping[str, Any]):
    """The dataset a config names: ``dataset``, ``data_dir``, ``val_size``, ``limit``,
    ``data_seed``."""
    kw = {"val_size": cfg["val_size"]} if cfg.get("val_size") is not None else {}
    return get_dataset(cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                       limit=cfg.get("limit"), seed=cfg.get("data_seed", 0), **kw)


def log_count_axis(ax, axis: str = "x") -> None:
    """A log scale for a count (parameters, MACs), labelled in plain numbers with thousands
    separators at 1, 2 and 5 times each power of ten, so a range within one decade still has
    labels (matplotlib's default labels only the powers of ten there)."""
    import matplotlib.ticker as mt

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    fmt = mt.FuncFormatter(lambda v, _: f"{v:,.0f}")
    target.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(fmt)
    target.set_minor_locator(mt.LogLocator(base=10, subs=tuple(range(1, 10))))
    target.set_minor_formatter(mt.NullFormatter())


def plot_history(history: list[dict], ctx: RunContext, name: str = "curves.png",
                 title: str = "") -> None:
    """Loss and accuracy per epoch (seaborn), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation"),
                       ("test_loss", "test")):
        if key in history[0]:
            sns.lineplot(x=epochs, y=[r[key] for r in history], ax=axes[0], label=label,
                         marker="o")
    axes[0].set(xlabel="epoch", ylabel="loss")
    for key, label in (("val_acc", "validation"), ("test_acc", "test")):
        if key in history[0]:
            sns.lineplot(x=epochs, y=[100 * r[key] for r in history], ax=axes[1], label=label,
                         marker="o")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)")
    if title:
        fig.suptitle(title)
    ctx.save_figure(fig, name)


def final_metrics(history: list[dict]) -> dict[str, Any]:
    """The last epoch's metrics plus the best validation epoch's test accuracy."""
    last = dict(history[-1])
    out = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    if "val_acc" in last:
        best = max(history, key=lambda r: r["val_acc"])
        out["best_val_epoch"] = best["epoch"]
        out["best_val_acc"] = best["val_acc"]
        if "test_acc" in best:
            out["test_acc_at_best_val"] = best["test_acc"]
    return out


def train_in_folder(cfg: Mapping[str, Any], ctx: RunContext, data, sub: str, callbacks=(), *,
                    model: str = "thesis_cnn", label: str | None = None) -> Trainer:
    """Train a fresh ``model`` (seeded by ``cfg['seed']``) on ``data`` into the folder ``sub``
    of the run: a checkpoint every epoch, resumed when one is there, ``history.csv`` at the
    end. Logs whether it trains, resumes or finds the run finished."""
    label = label or sub
    torch.manual_seed(int(cfg["seed"]))
    trainer = Trainer(build_model(model), data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(cfg), arch={"model": model, "kwargs": {}},
                      callbacks=list(callbacks), checkpoint=ctx.path(f"{sub}/checkpoint.pt"),
                      progress=ctx.progress)
    if trainer.epoch >= trainer.config.epochs or trainer.stopped_reason:
        ctx.log(f"{label}: already trained ({trainer.epoch} epochs, {sub}/checkpoint.pt)")
    elif trainer.history:
        ctx.log(f"{label}: resuming after epoch {trainer.epoch} of {trainer.config.epochs}")
    else:
        ctx.log(f"{label}: training {trainer.config.epochs} epochs")
    history = trainer.fit()
    ctx.write_csv(f"{sub}/history.csv", history)
    return trainer


def train_run(cfg: Mapping[str, Any], ctx: RunContext, model_name: str,
              model_kwargs: Mapping[str, Any], callbacks=(), title: str = "") -> tuple:
    """Train ``model_name`` on ``cfg['dataset']`` and write the standard outputs.

    Writes ``history.csv`` and ``curves.png``; checkpoints to
    ``checkpoint.pt`` every epoch, so a killed run resumes. Returns
    ``(trainer, results)``.
    """
    data = load_data(cfg)
    torch.manual_seed(cfg.get("seed", 0))
    model = build_model(model_name, **model_kwargs)
    trainer = Trainer(model, data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(cfg),
                      arch={"model": model_name, "kwargs": dict(model_kwargs)},
                      callbacks=callbacks, checkpoint=ctx.path("checkpoint.pt"),
                      progress=ctx.progress)
    if trainer.history:
        ctx.log(f"resuming from epoch {trainer.epoch}")
    history = trainer.fit()
    ctx.write_csv("history.csv", history)
    plot_history(history, ctx, title=title)
    for row in history:
        ctx.log(f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  "
                + "  ".join(f"{k} {row[k]:.4f}" for k in ("val_acc", "test_acc") if k in row)
                + f"  {row['epoch_time_s']:.1f}s")
    results = {"final": final_metrics(history), "history": history,
               "stopped": trainer.stopped_reason}
    return trainer, results
