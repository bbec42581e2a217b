"""The library's methods as callbacks of the training loop (:mod:`experiments.harness.training`).

:class:`PrunerCallback` calls ``pruner.step(t, model, optimizer, data)`` after
every epoch (``t`` = epochs completed, as the schedules of U. Evci, *Detecting
Dead Weights and Units in Neural Networks*, MS thesis, NYU, 2018,
https://arxiv.org/abs/1806.06068, count: "after each scheduled epoch is
done", Sec. 2.2; below: Evci 2018 or the thesis) or after every optimizer
step, with scoring data drawn at random from the training set ("a randomly
sampled subset of the training data", Sec. 4.2). It logs the training loss
and the fraction of parameters pruned at every step (Fig. 2.8 and 4.6) and
every round's report, and keeps all of it in its state so a killed run
resumes where it stopped.

:class:`ShrinkNetsCallback` trains with the penalty and garbage collection of
*ShrinkNets: Learning Network Size while Training* (2018 draft; public as G.
Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify:
Learning Network Size while Training*, https://arxiv.org/abs/1806.03723;
below: the ShrinkNets paper); :class:`GroupSparsityCallback` applies the
proximal step of the (sparse) group lasso after every optimizer step (J. M.
Alvarez and M. Salzmann, *Learning the Number of Neurons in Deep Networks*,
NeurIPS 2016,
https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks;
below: Alvarez & Salzmann 2016); :class:`TriStateCallback` trains the
tri-state ReLUs of S. Srinivas and R. V. Babu, *Learning Neural Network
Architectures using Backpropagation*, BMVC 2016,
https://arxiv.org/abs/1511.05497 (below: Srinivas & Babu 2016).

The dead-unit tools:

* :class:`AttackCallback` runs a :class:`pruners.LRAttack` around the
  trainer's optimizer steps (Evci 2018, Sec. 3.3): the attacked entries are
  copied in :meth:`Callback.loss` (called after the forward pass, before
  ``backward()`` and ``optimizer.step()``, when the parameters still hold
  their old values) and rescaled in :meth:`Callback.on_step_end`, right after
  the step. Put it first in ``callbacks`` so that later callbacks (a proximal
  step, a pruner, a tracker) see the attacked update.
* :class:`TrackingCallback` records a :class:`saliency.UnitTracker` at step 0
  and every ``tracker.every`` steps (Fig. 3.1-3.10).

Every callback keeps its state in the trainer's checkpoint, so a resumed run goes on where
it stopped (the same schedule, attack and probes). :func:`experiments.harness.plots.plot_pruning`
draws what :class:`PrunerCallback` logged.
"""

from __future__ import annotations

import math

from typing import Any, Mapping

import torch

from experiments.harness.training import Callback
from pruners import ProximalGroupSparsity, count_macs, count_params
from pruners.attacks import LRAttack
from pruners.pruning import RoundReport
from saliency.tracking import UnitTracker

__all__ = ["CosineLR", "StepLog", "EpochLog", "PrunerCallback", "RecordingPruner",
           "ShrinkNetsCallback", "GroupSparsityCallback", "TriStateCallback", "AttackCallback",
           "TrackingCallback", "scoring_batches"]


def scoring_batches(dataset, samples: int, batch_size: int, seed: int) -> list:
    """``samples`` training samples drawn without replacement (seeded), in batches."""
    x, y = dataset.tensors[:2]
    n = min(int(samples), x.shape[0])
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
    return [(x[idx[i:i + batch_size]], y[idx[i:i + batch_size]])
            for i in range(0, n, batch_size)]


class CosineLR(Callback):
    """Cosine decay of the learning rate over the optimizer steps of a run.

    Before step ``t`` of ``total_steps`` the rate is ``lr * (1 + cos(pi * t / total_steps)) /
    2``: ``lr`` at the first step, 0 after the last (I. Loshchilov, F. Hutter, *SGDR:
    Stochastic Gradient Descent with Warm Restarts*, ICLR 2017,
    https://arxiv.org/abs/1608.03983, without restarts). Set after every step and when
    training begins or resumes (from ``trainer.step``), so a resumed run follows the same
    rates; a history row's ``lr`` is the rate after the epoch's last step.
    """

    def __init__(self, lr: float, total_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.lr, self.total = float(lr), int(total_steps)

    def at(self, step: int) -> float:
        """The rate before optimizer step ``step`` (0-based)."""
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))

    def on_train_begin(self, trainer) -> None:
        trainer.set_lr(self.at(trainer.step))

    def on_step_end(self, trainer, loss: float) -> None:
        trainer.set_lr(self.at(trainer.step))


class PrunerCallback(Callback):
    """Run a pruner from :class:`~experiments.harness.training.Trainer`.

    Args:
        pruner: a :class:`~pruners.ParameterPruner` or :class:`~pruners.UnitPruner`.
        every: ``"epoch"`` (``t`` = epochs completed) or ``"step"`` (``t`` =
            optimizer steps taken).
        score_samples: training samples drawn (fresh each round) to score on.
        score_batch: batch size of the scoring data.
        seed: seed of the draws (round ``t`` uses ``seed * 7919 + t``).
        log_every: record the training loss every this many steps.

    Attributes:
        rounds: one dict per round (:meth:`RoundReport.as_row` plus the epoch).
        steps: ``[step, loss, fraction of parameters pruned]`` rows.
    """

    def __init__(self, pruner, *, every: str = "epoch", score_samples: int = 1000,
                 score_batch: int = 500, seed: int = 0, log_every: int = 1):
        if every not in ("epoch", "step"):
            raise ValueError(f"every must be 'epoch' or 'step', got {every!r}")
        self.pruner, self.every = pruner, every
        self.score_samples, self.score_batch, self.seed = score_samples, score_batch, seed
        self.log_every = max(1, int(log_every))
        self.rounds: list[dict[str, Any]] = []
        self.steps: list[list[float]] = []
        self.initial_params: int | None = None
        self._params: int | None = None

    def on_train_begin(self, trainer) -> None:
        if self.initial_params is None:
            self.initial_params = count_params(trainer.model)
        self._params = count_params(trainer.model)

    def _round(self, trainer, t: int) -> RoundReport | None:
        if not self.pruner.due(t):  # skip drawing scoring data when no round can come
            return None
        data = scoring_batches(trainer.train_set, self.score_samples, self.score_batch,
                               self.seed * 7919 + t)
        report = self.pruner.step(t, trainer.model, trainer.optimizer, data)
        if report is not None:
            self._params = report.params_after
            self.rounds.append({"epoch": trainer.epoch, "train_step": trainer.step,
                                **report.as_row()})
        return report

    def on_step_end(self, trainer, loss: float) -> None:
        if self.every == "step":
            self._round(trainer, trainer.step)
        if trainer.step % self.log_every == 0:
            self.steps.append([trainer.step, float(loss), self.fraction_pruned])

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        if self.every == "epoch":
            report = self._round(trainer, trainer.epoch)
            if report is not None:
                metrics["params"] = report.params_after
                if report.macs_after is not None:
                    metrics["macs"] = report.macs_after
                metrics["pruning_penalty"] = report.penalty
        metrics["fraction_pruned"] = self.fraction_pruned

    @property
    def fraction_pruned(self) -> float:
        """Fraction of the initial parameters pruned so far."""
        if not self.initial_params or self._params is None:
            return 0.0
        return 1.0 - self._params / self.initial_params

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "rounds": list(self.rounds),
                "steps": [list(r) for r in self.steps], "initial_params": self.initial_params,
                "params": self._params}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.rounds = list(state["rounds"])
        self.steps = [list(r) for r in state["steps"]]
        self.initial_params = state["initial_params"]
        self._params = state["params"]


class RecordingPruner:
    """A :class:`~pruners.UnitPruner` that also records one row per round it acts.

    Passed to :class:`PrunerCallback` in place of the pruner; every other attribute is the
    pruner's. A subclass defines :meth:`record` (and :meth:`before_round` when it needs the
    model as it was before the round); the rows are part of the state under
    :attr:`state_key`, so a resumed run keeps them.
    """

    state_key = "rows"

    def __init__(self, pruner):
        self.pruner = pruner
        self.rows: list[dict[str, Any]] = []

    def __getattr__(self, name: str):  # history, reached, schedule, ... of the pruner
        if name == "pruner":  # not yet set (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.pruner, name)

    def due(self, t: int) -> bool:
        return self.pruner.due(t)

    def before_round(self, model) -> Any:
        """What :meth:`record` needs of the model before a round that will act (default
        nothing)."""
        return None

    def record(self, t: int, report, before: Any, data) -> dict[str, Any] | None:
        """The row of a round that acted (``report``), or None."""
        raise NotImplementedError

    def step(self, t: int, model, optimizer=None, data=None):
        before = self.before_round(model) if self.pruner.due(t) else None
        report = self.pruner.step(t, model, optimizer, data)
        if report is not None:
            row = self.record(t, report, before, data)
            if row is not None:
                self.rows.append(row)
        return report

    def state_dict(self) -> dict[str, Any]:
        return {**self.pruner.state_dict(), self.state_key: [dict(r) for r in self.rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruner.load_state_dict(state)
        self.rows = [dict(r) for r in state.get(self.state_key, [])]


class ShrinkNetsCallback(Callback):
    """ShrinkNets training in the harness (the ShrinkNets paper, eq. 2 and Sec. 4.2).

    Adds ``shrinknets_penalty(model, lam, lam2, p)`` to the training loss and
    runs a :class:`pruners.shrinknets.GarbageCollector` after every
    ``gc_every`` optimizer steps (removing dead units and slicing the
    optimizer state). Each epoch's row gets the live parameters, the MACs per
    sample, the units per switched layer, and the running cost of the epoch:
    the draft's sum of input neurons over the epoch's steps and the sum of
    MACs per sample over them, each step counted at the size it ran with
    (before that step's collection; the initial size before the first).

    Args:
        collector: the garbage collector (its strategy decides what is dead).
        lam, lam2, p: the penalty's weights and norm.
        gc_every: steps between collections (0: only at epoch ends); every
            epoch also ends with one.
    """

    def __init__(self, collector, *, lam: float, lam2: float = 0.0, p: int = 2,
                 gc_every: int = 1):
        self.collector, self.lam, self.lam2, self.p = collector, lam, lam2, p
        self.gc_every = int(gc_every)
        self._epoch_cost = [0.0, 0.0]
        self._size: list[float] | None = None   # the model's size now, as the cost records it

    def loss(self, trainer, loss):
        from pruners.shrinknets import shrinknets_penalty

        return loss + shrinknets_penalty(trainer.model, self.lam, self.lam2, self.p)

    def _collect(self, trainer) -> None:
        example = trainer.example_input
        self.collector.example_input = example
        self.collector.step(trainer.step, trainer.model, trainer.optimizer)
        self._size = list(self.collector.cost[-1][1:3])

    def _current_size(self, trainer) -> list[float]:
        """``[input neurons, MACs per sample]`` of the model as it is now: the latest
        collection's record, or (before the first one, or after a resume) measured."""
        if self._size is None:
            from pruners.shrinknets import input_neurons

            example = trainer.example_input
            self._size = [input_neurons(trainer.model),
                          count_macs(trainer.model, example) if example is not None else 0]
        return self._size

    def on_step_end(self, trainer, loss: float) -> None:
        # the step just taken ran at the size before this step's collection
        size = self._current_size(trainer)
        self._epoch_cost[0] += size[0]
        self._epoch_cost[1] += size[1]
        if self.gc_every and trainer.step % self.gc_every == 0:
            self._collect(trainer)

    def on_epoch_end(self, trainer, metrics) -> None:
        from pruners.shrinknets import switches

        if not self.gc_every or trainer.step % self.gc_every:  # end every epoch collected
            self._collect(trainer)
        metrics["params"] = count_params(trainer.model)
        metrics["input_neurons_epoch"] = self._epoch_cost[0]
        metrics["macs_epoch"] = self._epoch_cost[1]
        self._epoch_cost = [0.0, 0.0]
        for name, sw in switches(trainer.model).items():  # live units (masks not counted)
            mask = getattr(sw, "weight_mask", None)
            metrics[f"units/{name}"] = sw.num_channels if mask is None else int(mask.sum())

    def state_dict(self):
        return {"strategy": self.collector.strategy.state_dict(),
                "masked": {k: list(v) for k, v in self.collector.masked.items()},
                "cost": [list(r) for r in self.collector.cost], "epoch_cost": self._epoch_cost}

    def load_state_dict(self, state):
        self.collector.strategy.load_state_dict(state["strategy"])
        self.collector.masked = {k: list(v) for k, v in state["masked"].items()}
        self.collector.cost = [list(r) for r in state["cost"]]
        self._epoch_cost = list(state["epoch_cost"])
        self._size = None                         # measured again on the resumed model


class GroupSparsityCallback(Callback):
    """Proximal group sparsity in the harness (Alvarez & Salzmann 2016).

    After every optimizer step it applies ``prox.step(trainer.optimizer)``,
    the closed-form proximal operator of

        gamma(Theta) = sum_l [ (1 - alpha) beta_l sqrt(P_l) sum_n ||theta_l^n||_2
                               + alpha beta_l ||theta_l||_1 ]

    with the step size ``t`` of each layer read from the optimizer's current
    learning rate (the trainer's plateau rule and any scheduler included), so
    the trainer performs proximal (stochastic) gradient descent on
    ``loss + gamma``. Optionally it removes the neurons whose group is exactly
    zero every ``remove_every`` steps (and always at the end of training when
    ``remove_at_end``), slicing the trainer's optimizer state.

    Args:
        prox: a :class:`pruners.ProximalGroupSparsity` built on the trainer's
            model.
        remove_every: steps between removals of zero groups (0: never during
            training).
        remove_at_end: remove zero groups at the end of the last epoch
            (``config.epochs`` reached). The removal is exact in eval mode, so
            that epoch's evaluation holds for the shrunk model; its row's
            ``params`` counts the shrunk model.
        log_every: record ``[step, data loss, penalty, zero groups]`` every
            this many steps (the penalty after that step's proximal step).
        release_after: after this many epochs, remove the zero groups (slicing
            the optimizer state) and stop the proximal step, so the surviving
            groups re-fit without the penalty's shrinkage for the remaining
            epochs (the "refit" of a relaxed group lasso). Not in Alvarez &
            Salzmann 2016, who keep the penalty to the end; ``None`` (default)
            keeps it to the end too. The removed units stay removed, so the
            structure is the one the penalty chose at that epoch.

    Each epoch's history row gets ``group_penalty`` (gamma of the parameters
    the epoch trained, before that epoch's removal if any),
    ``objective`` (the epoch's mean training loss + ``group_penalty`` while
    the penalty is applied, the training loss after the release),
    ``zero_groups/<layer>`` and ``groups/<layer>``.

    Attributes:
        steps: the per-step log.
        removals: ``[step, layer, units removed]`` of every removal.
    """

    def __init__(self, prox: ProximalGroupSparsity, *, remove_every: int = 0,
                 remove_at_end: bool = False, log_every: int = 1,
                 release_after: int | None = None):
        if not isinstance(prox, ProximalGroupSparsity):
            raise TypeError(f"prox must be a pruners.ProximalGroupSparsity, got "
                            f"{type(prox).__name__}")
        if isinstance(remove_every, bool) or not isinstance(remove_every, int) \
                or remove_every < 0:
            raise ValueError(f"remove_every must be an int >= 0, got {remove_every!r}")
        if release_after is not None and (isinstance(release_after, bool) or not isinstance(
                release_after, int) or release_after < 1):
            raise ValueError(f"release_after must be None or an int >= 1 (epochs), got "
                             f"{release_after!r}")
        self.release_after = release_after
        self.prox = prox
        self.remove_every = remove_every
        self.remove_at_end = bool(remove_at_end)
        self.log_every = max(1, int(log_every))
        self.steps: list[list[float]] = []
        self.removals: list[list] = []

    def on_train_begin(self, trainer) -> None:
        if trainer.model is not self.prox.model:
            raise ValueError("GroupSparsityCallback: prox was built on another model than the "
                             "trainer's")
        if self.release_after is not None and self.release_after > trainer.config.epochs:
            raise ValueError(f"GroupSparsityCallback: release_after={self.release_after} is past "
                             f"the last epoch ({trainer.config.epochs}); the penalty would never "
                             "be released")

    def _remove(self, trainer) -> None:
        report = self.prox.remove_zero_groups(trainer.optimizer)
        if report is not None:
            for layer, n in report.removed.items():
                self.removals.append([trainer.step, layer, int(n)])

    def released(self, trainer) -> bool:
        """Whether the proximal step has stopped (``release_after`` epochs done)."""
        return self.release_after is not None and trainer.epoch >= self.release_after

    def on_step_end(self, trainer, loss: float) -> None:
        if self.released(trainer):
            return
        zeros = self.prox.step(trainer.optimizer)
        if trainer.step % self.log_every == 0:
            with torch.no_grad():
                pen = float(self.prox.penalty())
            self.steps.append([trainer.step, float(loss), pen, int(sum(zeros.values()))])
        if self.remove_every and trainer.step % self.remove_every == 0:
            self._remove(trainer)

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        # the penalty of the parameters this epoch trained, before any removal: removing a
        # unit slices its input column out of the next grouped layer, which changes that
        # layer's group norms and sizes
        with torch.no_grad():
            pen = float(self.prox.penalty())
        # the release's removal is this epoch's last act of the penalty: the rows of later
        # epochs count the network it left
        if (self.remove_at_end and trainer.epoch >= trainer.config.epochs) \
                or trainer.epoch == self.release_after:
            self._remove(trainer)
            metrics["params"] = count_params(trainer.model)
            metrics["macs"] = count_macs(trainer.model, trainer.example_input)
        metrics["group_penalty"] = pen
        metrics["objective"] = metrics["train_loss"] + (
            pen if self.release_after is None or trainer.epoch <= self.release_after else 0.0)
        for layer, idx in self.prox.zero_groups().items():
            metrics[f"zero_groups/{layer}"] = int(idx.numel())
            metrics[f"groups/{layer}"] = self.prox.layout[layer].num_groups(trainer.model)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [list(r) for r in self.steps],
                "removals": [list(r) for r in self.removals]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = [list(r) for r in state["steps"]]
        self.removals = [list(r) for r in state["removals"]]


class TriStateCallback(Callback):
    """Tri-state ReLU training in the harness (Srinivas & Babu 2016).

    Adds ``lam_b R_b + lam_m R_m`` (:func:`pruners.tristate.tristate_penalty`:
    the binarizing regularizer and the model-complexity term) to the training
    loss and clips every gate to ``[0, 1]`` after each optimizer step. Each
    epoch's history row gets ``binarizing`` and ``complexity`` (the two
    terms after the epoch).

    Args:
        lam_b, lam_m: the strengths of the two terms.
        normalize: divide widths by their initial values in ``R_m``.
        depth_weight: weight of ``R_m``'s depth part (see
            :func:`pruners.tristate.complexity_term`).
    """

    def __init__(self, *, lam_b: float, lam_m: float, normalize: bool = True,
                 depth_weight: float = 1.0):
        for name, v in (("lam_b", lam_b), ("lam_m", lam_m)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.lam_b, self.lam_m, self.normalize = float(lam_b), float(lam_m), bool(normalize)
        self.depth_weight = float(depth_weight)

    def loss(self, trainer, loss):
        from pruners.tristate import tristate_penalty

        return loss + tristate_penalty(trainer.model, self.lam_b, self.lam_m,
                                       trainer.example_input, normalize=self.normalize,
                                       depth_weight=self.depth_weight)

    def on_step_end(self, trainer, loss: float) -> None:
        from pruners.tristate import clip_gates

        clip_gates(trainer.model)

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        from pruners.tristate import binarizing_regularizer, complexity_term

        with torch.no_grad():
            metrics["binarizing"] = float(binarizing_regularizer(trainer.model))
            metrics["complexity"] = float(complexity_term(
                trainer.model, trainer.example_input, normalize=self.normalize,
                depth_weight=self.depth_weight))


class StepLog(Callback):
    """``[step, training loss, 0.0]`` rows, like :attr:`PrunerCallback.steps` (the curve of an
    unpruned run beside a pruned one, the thesis's Fig. 2.8 / 4.6); kept in the checkpoint."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_step_end(self, trainer, loss: float) -> None:
        self.steps.append([trainer.step, float(loss), 0.0])

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [list(r) for r in self.steps]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = [list(r) for r in state["steps"]]


class EpochLog(Callback):
    """One line per epoch through ``log`` (e.g. ``RunContext.log``) and, when the epoch ended
    with a round of ``pruner_cb``, one line for that round: the target, the units left per
    layer, the parameters and the loss on the scoring samples before and after."""

    def __init__(self, log, label: str, pruner_cb: PrunerCallback | None = None):
        self.log, self.label, self.pruner_cb = log, label, pruner_cb

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        acc = metrics.get("test_acc")
        params = metrics.get("params")
        self.log(f"  {self.label} epoch {trainer.epoch:>2}/{trainer.config.epochs}  "
                 f"train loss {metrics['train_loss']:.4f}  "
                 + (f"test acc {100 * acc:.2f}%  " if acc is not None else "")
                 + (f"params {params:,}  " if params is not None else "")
                 + f"{metrics['epoch_time_s']:.1f}s")
        cb = self.pruner_cb
        if cb is not None and cb.rounds and cb.rounds[-1]["epoch"] == trainer.epoch:
            r = cb.rounds[-1]
            widths = ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in r.items()
                               if k.startswith("remaining/"))
            target = r["target"]
            target = f"{100 * target:g}% pruned" if isinstance(target, float) else f"{target}"
            self.log(f"    then pruning round: target {target}"
                     + (f", {widths} left" if widths else "")
                     + f"; parameters {r['params_before']:,} -> {r['params_after']:,}"
                     + (f"; loss on the scoring samples {r['loss_before']:.4f} -> "
                        f"{r['loss_after']:.4f}" if r.get("loss_before") is not None else ""))



class AttackCallback(Callback):
    """Apply ``attack`` to the trainer's updates (step ``t`` = ``trainer.step``
    before the update, so ``attack.start = 0`` attacks the first update)."""

    def __init__(self, attack: LRAttack):
        if not isinstance(attack, LRAttack):
            raise TypeError(f"attack must be a pruners.LRAttack, got {type(attack).__name__}")
        self.attack = attack

    def loss(self, trainer, loss: torch.Tensor) -> torch.Tensor:
        self.attack.before_step(trainer.step)
        return loss

    def on_step_end(self, trainer, loss: float) -> None:
        self.attack.after_step()

    def state_dict(self) -> dict[str, Any]:
        return self.attack.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.attack.load_state_dict(state)


class TrackingCallback(Callback):
    """Record ``tracker`` before training (step 0) and every ``tracker.every`` steps.

    The tracker must be built on the trainer's model. Each epoch's history
    row gets ``probes`` (records so far).
    """

    def __init__(self, tracker: UnitTracker):
        if not isinstance(tracker, UnitTracker):
            raise TypeError(f"tracker must be a saliency.UnitTracker, got "
                            f"{type(tracker).__name__}")
        self.tracker = tracker

    def on_train_begin(self, trainer) -> None:
        if trainer.model is not self.tracker.model:
            raise ValueError("TrackingCallback: the tracker was built on another model than "
                             "the trainer's")
        self.tracker.maybe_record(trainer.step)

    def on_step_end(self, trainer, loss: float) -> None:
        self.tracker.maybe_record(trainer.step)

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        metrics["probes"] = len(self.tracker.records)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state)
