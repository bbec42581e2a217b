"""A training loop with pruning hooks, the ShrinkNets learning-rate rule and resumable checkpoints.

:class:`Trainer` trains a classifier (or regressor) on in-memory tensor
datasets with SGD or Adam. Callbacks act at three points: on the loss (a
regularizer adds its penalty), after each optimizer step (a pruner or a
proximal step acts), and after each epoch (a scheduled pruner, logging). A
callback may physically shrink the model: the trainer keeps the same
optimizer, whose state the foundation's surgery slices.

Learning-rate rule ``"plateau"`` is the one of Sec. 5.1 of *ShrinkNets:
Learning Network Size while Training* (2018 draft; public as G. Leclerc, M.
Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify: Learning
Network Size while Training*, https://arxiv.org/abs/1806.03723; below: the
ShrinkNets paper): divide the learning rate by 10 after ``patience`` (5) epochs
without improvement of the validation accuracy; stop at ``epochs`` or when the
learning rate falls under ``min_lr`` (1e-7).

Runs are deterministic for a seed: the data order of epoch ``e`` comes from a
generator seeded with ``(seed, e)``, and the global torch RNG state (dropout)
is saved in each checkpoint, so a resumed run continues exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.harness.checkpoint import fit_to_state_dict, load_checkpoint, save_checkpoint
from pruners import count_macs, count_params

__all__ = ["TrainConfig", "Callback", "Trainer", "make_optimizer", "batches", "evaluate",
           "seed_everything", "token_cross_entropy"]


@dataclass
class TrainConfig:
    """Hyperparameters of :class:`Trainer`.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training batch size.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay of the optimizer.
        lr_rule: ``"constant"`` or ``"plateau"`` (the ShrinkNets paper, Sec. 5.1).
        patience: epochs without validation improvement before dividing.
        factor: the division, as a multiplier (0.1).
        min_lr: stop once the learning rate falls under it.
        seed: seed of initialization-independent randomness (data order,
            dropout).
        eval_batch_size: batch size of evaluation passes.
        max_batches: cap on batches per epoch (quick runs); None = all.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_rule: str = "constant"
    patience: int = 5
    factor: float = 0.1
    min_lr: float = 1e-7
    seed: int = 0
    eval_batch_size: int = 1000
    max_batches: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_rule not in ("constant", "plateau"):
            raise ValueError(f"lr_rule must be 'constant' or 'plateau', got {self.lr_rule!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
        """Take the fields of this class from a larger config dict."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


class Callback:
    """Hooks into :class:`Trainer`. Override what you need.

    A callback with state to keep across a resume implements
    ``state_dict()`` / ``load_state_dict()`` (plain Python values and tensors).
    """

    def on_train_begin(self, trainer: "Trainer") -> None:
        """Before the first epoch (also after a resume)."""

    def loss(self, trainer: "Trainer", loss: torch.Tensor) -> torch.Tensor:
        """Return the training loss to minimize (add a penalty here)."""
        return loss

    def on_step_end(self, trainer: "Trainer", loss: float) -> None:
        """After ``optimizer.step()``; ``trainer.step`` counts steps taken."""

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """After evaluation; may add entries to ``metrics`` (the history row)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (initialization, dropout)."""
    torch.manual_seed(seed)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or Adam, with ``weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def batches(dataset: TensorDataset, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, limit: int | None = None):
    """Yield ``(inputs, targets)`` batches from an in-memory TensorDataset."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else None
    count = 0
    for start in range(0, n, batch_size):
        if limit is not None and count >= limit:
            return
        idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        yield x[idx], y[idx]
        count += 1


def token_cross_entropy(output: torch.Tensor, target: torch.Tensor, *,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the last dimension, one term per token: a language model's loss.

    ``output`` holds logits ``(..., V)`` and ``target`` class indices shaped like ``output``
    without its last dimension: ``(B, T, V)`` and ``(B, T)`` for a language model, ``(B, C)``
    and ``(B,)`` for a classifier (then it is ``F.cross_entropy``). The tokens are flattened,
    ``l_t = -log softmax(output_t)[target_t]``, because ``F.cross_entropy`` wants the classes
    in dimension 1 (``(B, V, T)``), not last.

    Args:
        output: logits, classes last.
        target: int64 class indices, ``output.shape[:-1]``.
        reduction: ``"mean"``: the mean over every token of the batch (its exponential is
            the perplexity); ``"sum"``: their sum; ``"none"``: the per-token losses, shaped
            like ``target`` (the library's scorers average them per sample).

    Example:
        >>> logits = torch.zeros(2, 5, 7)                # uniform over 7 symbols
        >>> round(float(token_cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long))), 5)
        1.94591
    """
    if output.dim() < 2 or tuple(output.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"token_cross_entropy needs logits (..., V) and targets shaped like "
                         f"their leading dimensions, got {tuple(output.shape)} and "
                         f"{tuple(target.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    flat = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1),
                           reduction=reduction)
    return flat.reshape(target.shape) if reduction == "none" else flat


def _predictions(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The predicted classes of integer targets ``y``: classes last when ``out`` is ``y``'s
    shape plus one trailing dimension (tokens, :func:`token_cross_entropy`), else in
    dimension 1 (``F.cross_entropy``'s layout)."""
    if out.dim() > 2 and tuple(out.shape[:-1]) == tuple(y.shape):
        return out.argmax(dim=-1)
    return out.argmax(dim=1)


def evaluate(model: nn.Module, dataset: TensorDataset, *, batch_size: int = 1000,
             loss_fn: Callable = F.cross_entropy) -> dict[str, float]:
    """Mean loss (and accuracy for integer targets) of ``model`` in eval mode.

    With integer targets the loss and the accuracy are means over target elements: per
    sample for a classifier (targets ``(B,)``), per token for a language model (targets
    ``(B, T)``, logits ``(B, T, V)``, ``loss_fn=token_cross_entropy``: the loss is the mean
    per-token cross-entropy, the accuracy that of the next-token argmax). With float
    targets (regression) the loss is ``loss_fn(..., reduction="sum")`` per sample. The
    model's train/eval flags are restored.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    total, correct, n = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in batches(dataset, batch_size):
                out = model(x)
                total += float(loss_fn(out, y, reduction="sum"))
                if not y.is_floating_point():
                    correct += int((_predictions(out, y) == y).sum())
                    n += y.numel()
                else:
                    n += x.shape[0]
    finally:
        for m, flag in flags:
            m.training = flag
    res = {"loss": total / max(n, 1)}
    if n and not dataset.tensors[1].is_floating_point():
        res["acc"] = correct / n
    return res


def _seeded(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


class Trainer:
    """Train ``model`` with callbacks, evaluation each epoch and checkpoints.

    Args:
        model: the model (changed in place; callbacks may shrink it).
        train_set, val_set, test_set: in-memory ``TensorDataset`` splits
            (val and test optional).
        config: a :class:`TrainConfig` (or a dict of its fields).
        arch: ``{"model": name, "kwargs": {...}}`` of
            :data:`experiments.harness.models.MODELS`, recorded in checkpoints.
        callbacks: :class:`Callback` objects, called in order.
        loss_fn: ``loss_fn(output, target, reduction=...)``; for a language model
            (logits ``(B, T, V)``, targets ``(B, T)``) :func:`token_cross_entropy`.
        checkpoint: path of the checkpoint written after every epoch
            (atomically); if it exists when :meth:`fit` starts, training
            resumes from it.
        progress: show a tqdm bar (None: only when stderr is a terminal).
        example_input: one input, to count MACs per epoch (default: the
            first training sample).

    Attributes:
        model, optimizer, config, history (one dict per epoch), step, epoch,
        lr, stopped_reason.
    """

    def __init__(self, model: nn.Module, train_set: TensorDataset, *,
                 val_set: TensorDataset | None = None, test_set: TensorDataset | None = None,
                 config: TrainConfig | Mapping[str, Any] | None = None,
                 arch: Mapping[str, Any] | None = None, callbacks: Sequence[Callback] = (),
                 loss_fn: Callable = F.cross_entropy, checkpoint: str | os.PathLike | None = None,
                 progress: bool | None = None, example_input: torch.Tensor | None = None):
        if config is None:
            config = TrainConfig()
        elif not isinstance(config, TrainConfig):
            config = TrainConfig.from_mapping(config)
        self.config = config
        self.model = model
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.arch = dict(arch) if arch is not None else None
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.progress = progress
        self.example_input = (example_input if example_input is not None
                              else train_set.tensors[0][:1])
        self.optimizer = make_optimizer(model.parameters(), config)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.epoch = 0
        self.lr = config.lr
        self.best_val = -math.inf
        self.bad_epochs = 0
        self.stopped_reason = ""
        if self.checkpoint is not None and self.checkpoint.exists():
            self._resume()

    # -- checkpoints -------------------------------------------------------

    def _param_names(self) -> list[list[str]]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [[names.get(id(p), "?") for p in g["params"]] for g in self.optimizer.param_groups]

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write a resumable checkpoint (atomically)."""
        path = path or self.checkpoint
        if path is None:
            raise ValueError("no checkpoint path")
        if self.arch is None:
            raise ValueError("Trainer(arch=...) is needed to write checkpoints")
        save_checkpoint(
            path, self.model, self.arch, optimizer=self.optimizer,
            param_names=self._param_names(), epoch=self.epoch, step=self.step,
            history=self.history, lr=self.lr, best_val=self.best_val,
            bad_epochs=self.bad_epochs, stopped_reason=self.stopped_reason,
            config=asdict(self.config), rng=torch.get_rng_state(),
            callbacks=[cb.state_dict() for cb in self.callbacks])

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.checkpoint)
        fit_to_state_dict(self.model, ckpt["state_dict"])
        self.model.load_state_dict(ckpt["state_dict"])
        named = dict(self.model.named_parameters())
        groups = [[named[n] for n in names] for names in ckpt["param_names"]]
        self.optimizer = make_optimizer(
            [{"params": ps} for ps in groups] if len(groups) > 1 else groups[0], self.config)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.history = list(ckpt["history"])
        self.lr, self.best_val = float(ckpt["lr"]), float(ckpt["best_val"])
        self.bad_epochs = int(ckpt["bad_epochs"])
        self.stopped_reason = ckpt.get("stopped_reason", "")
        torch.set_rng_state(ckpt["rng"])
        for cb, state in zip(self.callbacks, ckpt.get("callbacks", [])):
            cb.load_state_dict(state)

    # -- training ------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def evaluate(self, dataset: TensorDataset) -> dict[str, float]:
        return evaluate(self.model, dataset, batch_size=self.config.eval_batch_size,
                        loss_fn=self.loss_fn)

    def _train_epoch(self) -> float:
        from tqdm.auto import tqdm

        cfg = self.config
        self.model.train()
        gen = _seeded(cfg.seed, self.epoch)
        n_batches = math.ceil(len(self.train_set) / cfg.batch_size)
        if cfg.max_batches is not None:
            n_batches = min(n_batches, cfg.max_batches)
        bar = tqdm(batches(self.train_set, cfg.batch_size, shuffle=True, generator=gen,
                           limit=cfg.max_batches),
                   total=n_batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=(None if self.progress is None else not self.progress))
        total, n = 0.0, 0
        for x, y in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            data_loss = loss.item()
            for cb in self.callbacks:
                loss = cb.loss(self, loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {self.step}")
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += data_loss * x.shape[0]
            n += x.shape[0]
            for cb in self.callbacks:
                cb.on_step_end(self, data_loss)
            bar.set_postfix(loss=f"{data_loss:.4f}", refresh=False)
        bar.close()
        return total / max(n, 1)

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``epochs`` or the learning-rate rule stops; return the history."""
        cfg = self.config
        for cb in self.callbacks:
            cb.on_train_begin(self)
        while self.epoch < cfg.epochs and not self.stopped_reason:
            start = time.perf_counter()
            train_loss = self._train_epoch()
            seconds = time.perf_counter() - start
            self.epoch += 1
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "lr": self.lr,
                                   "train_loss": train_loss, "epoch_time_s": seconds}
            for name, ds in (("val", self.val_set), ("test", self.test_set)):
                if ds is not None and len(ds):
                    for k, v in self.evaluate(ds).items():
                        row[f"{name}_{k}"] = v
            row["params"] = count_params(self.model)
            row["macs"] = count_macs(self.model, self.example_input)
            for cb in self.callbacks:
                cb.on_epoch_end(self, row)
            self.history.append(row)
            self._lr_rule(row)
            if self.checkpoint is not None:
                self.save()
        if not self.stopped_reason:
            self.stopped_reason = "max_epochs"
        return self.history

    def _lr_rule(self, row: Mapping[str, Any]) -> None:
        cfg = self.config
        if cfg.lr_rule != "plateau":
            return
        score = row.get("val_acc", -row.get("val_loss", math.inf))
        if score > self.best_val:
            self.best_val, self.bad_epochs = score, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= cfg.patience:
            self.set_lr(self.lr * cfg.factor)
            self.bad_epochs = 0
            if self.lr < cfg.min_lr:
                self.stopped_reason = "min_lr"
