"""Running an experiment: its output folder, its writers, and the standard training runs.

:func:`run_experiment` gives every run of a registered experiment
(:mod:`experiments.harness.registry`) the same output folder layout:
``config.json``, ``results.json`` (written last, so its presence means the run
finished), CSV tables and PNG plots written by the experiment through
:class:`RunContext`, all atomically (:mod:`experiments.harness.atomic`).

:func:`train_run` and :func:`train_in_folder` are the training runs most
experiments share: data from the config (:func:`load_data`), a model of the
zoo, the harness's :class:`~experiments.harness.training.Trainer` checkpointing
every epoch (a killed run resumes), and the history written as CSV.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from experiments.harness import atomic
from experiments.harness.datasets import get_dataset
from experiments.harness.models import build_model
from experiments.harness.plots import plot_history
from experiments.harness.registry import get_experiment, resolve_config
from experiments.harness.training import TrainConfig, Trainer

__all__ = ["RunContext", "run_experiment", "load_data", "train_run", "train_in_folder",
           "final_metrics", "changed_settings"]


class RunContext:
    """What an experiment gets besides its config: its output folder and writers.

    All writers are atomic. ``ctx.path(name)`` gives a path inside the folder.
    """

    def __init__(self, out_dir: str | os.PathLike, progress: bool | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        atomic.write_json(self.path(name), obj)
        return self.path(name)

    def write_csv(self, name: str, rows, columns=None) -> Path:
        atomic.write_csv(self.path(name), rows, columns)
        return self.path(name)

    def save_figure(self, fig, name: str) -> Path:
        atomic.save_figure(fig, self.path(name))
        return self.path(name)

    def log(self, msg: str) -> None:
        """Print ``msg`` and append it to ``log.txt`` in the output folder."""
        print(msg, flush=True)
        with open(self.path("log.txt"), "a", encoding="utf-8") as fh:
            fh.write(msg + "\n")


def run_experiment(name: str, overrides: Mapping[str, Any] | None = None, *,
                   quick: bool = False, out_dir: str | os.PathLike | None = None,
                   progress: bool | None = None) -> dict[str, Any]:
    """Run one experiment into ``out_dir`` (default ``runs/NAME``).

    Writes ``config.json`` first and ``results.json`` last; returns the
    results. An experiment that checkpoints (through the training loop)
    resumes where a killed run stopped. A configuration the experiment's
    ``validate`` refuses raises before the output folder is touched.
    """
    exp = get_experiment(name)
    cfg = resolve_config(exp, overrides, quick)
    if exp.validate is not None:
        exp.validate(cfg)
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    ctx = RunContext(out, progress)
    ctx.write_json("config.json", {"experiment": name, "config": cfg})
    start = time.perf_counter()
    results = exp.fn(cfg, ctx)
    results = dict(results or {})
    results.setdefault("experiment", name)
    results["wall_time_s"] = time.perf_counter() - start
    ctx.write_json("results.json", results)
    return results


def load_data(cfg: Mapping[str, Any]):
    """The dataset a config names: ``dataset``, ``data_dir``, ``val_size``, ``limit``,
    ``data_seed``."""
    kw = {"val_size": cfg["val_size"]} if cfg.get("val_size") is not None else {}
    return get_dataset(cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                       limit=cfg.get("limit"), seed=cfg.get("data_seed", 0), **kw)


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
                    model: str = "thesis_cnn", label: str | None = None,
                    model_kwargs: Mapping[str, Any] | None = None,
                    config: TrainConfig | None = None,
                    loss_fn: Callable | None = None) -> Trainer:
    """Train a fresh ``model`` (``build_model(model, **model_kwargs)``, seeded by
    ``cfg['seed']``) on ``data`` into the folder ``sub`` of the run: a checkpoint every epoch,
    resumed when one is there, ``history.csv`` at the end. ``config`` overrides the training
    settings read from ``cfg``; ``loss_fn`` the trainer's loss (default its own,
    ``F.cross_entropy``). Logs whether it trains, resumes or finds the run finished."""
    label = label or sub
    kwargs = dict(model_kwargs or {})
    config = config if config is not None else TrainConfig.from_mapping(cfg)
    torch.manual_seed(int(cfg["seed"]))
    trainer = Trainer(build_model(model, **kwargs), data.train, val_set=data.val,
                      test_set=data.test, config=config, arch={"model": model, "kwargs": kwargs},
                      callbacks=list(callbacks), checkpoint=ctx.path(f"{sub}/checkpoint.pt"),
                      progress=ctx.progress, **({"loss_fn": loss_fn} if loss_fn else {}))
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


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """The settings in which a run folder's recorded settings and the current ones differ.

    Both are compared as JSON values (a tuple equals the list it is saved as), so a folder
    written by an earlier run compares equal when nothing changed. Returns ``"key: old ->
    new"`` for every differing key, sorted and joined by ``", "``, or ``""``; the experiments
    refuse to resume a folder for which it is not empty.

    Examples:
        >>> changed_settings({"lr": 0.1, "widths": [8, 4]}, {"lr": 0.2, "widths": (8, 4)})
        'lr: 0.1 -> 0.2'
    """
    old, new = atomic.to_jsonable(dict(recorded)), atomic.to_jsonable(dict(current))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
