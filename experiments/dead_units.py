"""The dead-unit tools inside the harness's :class:`~experiments.training.Trainer`.

* :class:`AttackCallback` runs a :class:`pruners.LRAttack` around the
  trainer's optimizer steps (Evci 2018, ``shared/seeds/004_...``, Sec. 3.3):
  the attacked entries are copied in :meth:`Callback.loss` (called after the
  forward pass, before ``backward()`` and ``optimizer.step()``, when the
  parameters still hold their old values) and rescaled in
  :meth:`Callback.on_step_end`, right after the step. Put it first in
  ``callbacks`` so that later callbacks (a proximal step, a pruner, a
  tracker) see the attacked update.
* :class:`TrackingCallback` records a :class:`saliency.UnitTracker` at step 0
  and every ``tracker.every`` steps (Fig. 3.1-3.10).

Both keep their state in the trainer's checkpoint, so a resumed run goes on
with the same attack schedule and the probes made so far.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from pruners.attacks import LRAttack
from saliency.tracking import UnitTracker

from .training import Callback

__all__ = ["AttackCallback", "TrackingCallback"]


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
