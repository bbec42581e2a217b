"""Learning-rate attacks: scale the update of chosen units for chosen steps.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU
2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 3.3 ("How can a unit
die?: High Learning Rate"): a single learning rate may be too large for some
units and push their output into the flat region of the next non-linearity,
where they die (Def. 3.2.2). The thesis creates this situation on purpose by
*attacking* a unit: its learning rate is multiplied by ``m`` for one
iteration, starting at iteration ``S``, repeated ``N`` times with ``I``
iterations between attacks (Sec. 3.4-3.6 attack 10 times at 10-iteration
intervals with ``m = 100`` for ReLU+BatchNorm and ``m = 1000`` for Tanh).

:class:`LRAttack` scales the **update actually taken**, not the gradient. For
every attacked entry ``p`` of a parameter, around ``optimizer.step()``:

    p <- p_old + m * (p_new - p_old)

where ``p_old`` is the value before the step and ``p_new`` the value the
optimizer wrote. For plain SGD this is the thesis's learning-rate multiplier
(``-m * lr * g``); it is also a per-unit learning-rate multiplier for SGD with
momentum or Nesterov (``-m * lr * buf``), Adam/AdamW (``-m * lr * m_hat /
(sqrt(v_hat) + eps)``, decoupled weight decay included), RMSprop, Adagrad,
... -- for any optimizer, because it only reads values before and after the
step. Scaling the gradient instead would not work with Adam, whose step is
almost invariant to the gradient's scale. The optimizer's state (momentum
buffers, moments) is what the optimizer computed; only the parameter values
of the attacked entries change.

A unit's update covers its incoming weights (the producer's weight row, a
filter for a convolution) and, with ``bias=True``, its bias entry; with
``outgoing=True`` also its outgoing weights (the consumers' columns, input
channels or flattened column blocks, from :func:`saliency.trace`). The
thesis attacks the incoming weights only (Sec. 3.3: "without changing the
learning rate for the rest of the network and the bias of the unit"): pass
``bias=False`` for that. An entry selected twice (a unit's incoming row
crossing another attacked unit's outgoing column) is scaled once.

This module lives in :mod:`pruners` because it acts on training; the
measurements that show the effect (:mod:`saliency.tracking`,
:mod:`saliency.dead_units`) only measure and live in :mod:`saliency`.

Example (a plain training loop)::

    attack = LRAttack(model, {"conv1": [0]}, multiplier=100, start=2000,
                      repeats=10, interval=10, bias=False, example_input=x[:1])
    for step, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        with attack.step(step):          # step = updates taken so far
            optimizer.step()

In the harness, :class:`experiments.harness.callbacks.AttackCallback` does the same
around the :class:`~experiments.harness.training.Trainer`'s steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from saliency.graph import as_index_tensor, default_example_input
from saliency.tracing import trace
from saliency.layers import PRODUCERS, input_mask

__all__ = ["LRAttack", "attack_steps"]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def attack_steps(start: int, steps: int = 1, repeats: int = 1,
                 interval: int | None = None) -> list[int]:
    """The attacked step indices: ``start + r * interval + j``.

    For ``r = 0 .. repeats - 1`` and ``j = 0 .. steps - 1``: ``steps``
    consecutive updates starting at ``start``, repeated ``repeats`` times,
    ``interval`` updates apart (start to start; the thesis's ``I``, Sec. 3.3:
    "we basically don't modify the learning rate for I-1 many iterations after
    each attack"). ``interval`` defaults to ``steps`` (back to back) and must
    be at least ``steps`` when ``repeats > 1``, so attacks never overlap.

    Step ``t`` is the update taken when ``t`` updates have been taken before
    it (``t = 0`` is the first ``optimizer.step()``).

    Examples:
        >>> attack_steps(2000, repeats=10, interval=10)[:3]
        [2000, 2010, 2020]
        >>> attack_steps(5, steps=2, repeats=2, interval=4)
        [5, 6, 9, 10]
    """
    _check_int("start", start, 0)
    _check_int("steps", steps, 1)
    _check_int("repeats", repeats, 1)
    if interval is None:
        interval = steps
    _check_int("interval", interval, 1)
    if repeats > 1 and interval < steps:
        raise ValueError(f"interval ({interval}) must be >= steps ({steps}): consecutive "
                         "attacks would overlap")
    return [start + r * interval + j for r in range(repeats) for j in range(steps)]


class _Slot:
    """One parameter tensor of a module and the attacked entries of it."""

    def __init__(self, module: nn.Module, mname: str, tname: str, shape: torch.Size):
        self.module, self.mname, self.tname = module, mname, tname
        self.shape = shape
        self.mask = torch.zeros(shape, dtype=torch.bool)

    def tensor(self) -> nn.Parameter:
        p = self.module._parameters.get(self.tname)
        if p is None or p.shape != self.shape:
            now = None if p is None else tuple(p.shape)
            raise RuntimeError(
                f"LRAttack: parameter {self.mname}.{self.tname} is now shaped {now}, not "
                f"{tuple(self.shape)} as when the attack was built (units removed or the "
                "model reloaded at another size?); build the LRAttack again")
        return p


def _param_name(module: nn.Module, name: str) -> str | None:
    """The parameter behind ``module.<name>`` (``<name>_orig`` when pruned)."""
    if isinstance(module._parameters.get(name + "_orig"), nn.Parameter):
        return name + "_orig"
    if isinstance(module._parameters.get(name), nn.Parameter):
        return name
    return None


class LRAttack:
    """Multiply the update of chosen units by ``multiplier`` on scheduled steps.

    See the module docstring for the formula and the thesis's setting.

    Args:
        model: the model being trained (its parameters are changed in place
            by :meth:`after_step` only).
        units: ``{layer name: unit indices}``; layers are Linear/Conv modules
            (``model.named_modules()`` names). Any producer may be attacked,
            including the output layer (which has no outgoing weights).
        multiplier: the factor ``m`` on the update (any finite number; 1 is
            the identity and writes nothing, so training is bit-identical to
            training without the attack).
        start: the first attacked step (the schedule is :func:`attack_steps`).
        steps: consecutive updates scaled per attack.
        repeats: number of attacks.
        interval: updates from one attack's start to the next (default
            ``steps``).
        bias: include the unit's bias entry (default True).
        outgoing: include the unit's outgoing weights (default False).
        example_input: an input batch to trace a convolutional model's graph
            (needed with ``outgoing=True`` unless the first layer is Linear).
        exclude: passed to :func:`saliency.trace`.

    Attributes:
        schedule: the sorted attacked steps.
        applied: the steps at which an update was scaled so far.

    Raises:
        ValueError: an unknown or non-Linear/Conv layer, a bad, duplicate or
            out-of-range index, a bad multiplier or schedule, ``outgoing``
            for a layer without consumers or for a member of a residual group
            (its output is summed into a stream the consumers read; its
            incoming weights can be attacked). Raised at construction, before
            anything happens.
    """

    def __init__(self, model: nn.Module, units: Mapping[str, Iterable[int]], multiplier: float,
                 *, start: int, steps: int = 1, repeats: int = 1, interval: int | None = None,
                 bias: bool = True, outgoing: bool = False,
                 example_input: torch.Tensor | None = None, exclude: Iterable[str] = ()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) \
                or not math.isfinite(multiplier):
            raise ValueError(f"multiplier must be a finite number, got {multiplier!r}")
        if not isinstance(units, Mapping) or not units:
            raise ValueError("units must be a non-empty {layer name: indices} mapping")
        self.schedule = attack_steps(start, steps, repeats, interval)
        self._steps = set(self.schedule)
        self.multiplier = float(multiplier)
        self.bias, self.outgoing = bool(bias), bool(outgoing)
        modules = dict(model.named_modules())
        chosen: dict[str, torch.Tensor] = {}
        for name, idx in units.items():
            mod = modules.get(name)
            if mod is None:
                raise ValueError(f"unknown layer {name!r}: the model has no such module")
            spec = PRODUCERS.get(type(mod))
            if spec is None:
                raise ValueError(f"layer {name!r} is a {type(mod).__name__}; units are the "
                                 "output channels of Linear/Conv1d/Conv2d layers")
            n = getattr(mod, spec.out_attr)
            t = as_index_tensor(name, idx)
            if t.numel() == 0:
                raise ValueError(f"layer {name!r}: no unit index given")
            bad = t[(t < 0) | (t >= n)]
            if bad.numel():
                raise ValueError(f"layer {name!r}: index {int(bad[0])} is out of range (the "
                                 f"layer has {n} units, indices 0..{n - 1})")
            uniq, counts = torch.unique(t, return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"layer {name!r}: index {int(uniq[counts > 1][0])} is given "
                                 "more than once")
            chosen[name] = uniq
        graph = None
        if self.outgoing:
            example = example_input if example_input is not None else default_example_input(model)
            graph = trace(model, example, exclude=exclude)
            for name in chosen:
                prod = graph.producers.get(name)
                group = graph.group_of(name) if prod is not None else None
                if group is not None and group.joined:
                    raise ValueError(
                        f"layer {name!r} belongs to the residual group {group.name!r} "
                        f"({', '.join(group.members)}): its channels are summed with the other "
                        "members' before any layer reads them, so it has no outgoing weights of "
                        "its own; attack its incoming weights (outgoing=False)")
                if prod is None or not prod.edges:
                    why = prod.reason if prod is not None and prod.reason else \
                        "its output is the model's output"
                    raise ValueError(f"layer {name!r} has no outgoing weights to attack ({why}); "
                                     "pass outgoing=False")
        self.units = chosen
        slots: dict[tuple[str, str], _Slot] = {}

        def mark(mname: str, base: str, dim: int, idx: torch.Tensor) -> None:
            mod = modules[mname]
            tname = _param_name(mod, base)
            if tname is None:
                return
            key = (mname, tname)
            if key not in slots:
                slots[key] = _Slot(mod, mname, tname, mod._parameters[tname].shape)
            slots[key].mask.index_fill_(dim, idx, True)

        def mark_inputs(mname: str, cols: torch.Tensor) -> None:
            """The consumer's entries that read input channels ``cols`` (a grouped
            convolution's only in the rows of each channel's conv group)."""
            mod = modules[mname]
            tname = _param_name(mod, "weight")
            if tname is None:
                return
            key = (mname, tname)
            if key not in slots:
                slots[key] = _Slot(mod, mname, tname, mod._parameters[tname].shape)
            slots[key].mask |= input_mask(mod, cols).to(slots[key].mask.device)

        for name, idx in chosen.items():
            mark(name, "weight", 0, idx)
            if self.bias:
                mark(name, "bias", 0, idx)
            if graph is not None:
                for edge in graph.producers[name].edges:
                    mark_inputs(edge.consumer, edge.columns(idx))
        self._slots = list(slots.values())
        self._pending: list[tuple[_Slot, torch.Tensor]] | None = None
        self._pending_step: int | None = None
        self.applied: list[int] = []

    # -- the schedule ------------------------------------------------------

    def is_attacked(self, step: int) -> bool:
        """Whether update ``step`` (updates taken before it) is attacked."""
        return int(step) in self._steps

    @property
    def last_step(self) -> int:
        """The last attacked step."""
        return self.schedule[-1]

    def parameters(self) -> dict[str, int]:
        """``{parameter name: number of attacked entries}``."""
        return {f"{s.mname}.{s.tname}": int(s.mask.sum()) for s in self._slots}

    # -- around optimizer.step() -------------------------------------------

    def before_step(self, step: int) -> bool:
        """Call right before ``optimizer.step()`` for update ``step``.

        On an attacked step (and ``multiplier != 1``) it keeps a copy of the
        attacked entries. Returns whether the step is attacked.
        """
        self._pending, self._pending_step = None, None
        if not self.is_attacked(step):
            return False
        self._pending_step = int(step)
        if self.multiplier != 1.0:
            with torch.no_grad():
                pending = []
                for slot in self._slots:
                    p = slot.tensor()
                    mask = slot.mask.to(p.device)
                    pending.append((slot, p.detach().masked_select(mask).clone()))
            self._pending = pending
        return True

    def after_step(self) -> None:
        """Call right after ``optimizer.step()``: ``p <- p_old + m (p_new - p_old)``."""
        pending, step = self._pending, self._pending_step
        self._pending, self._pending_step = None, None
        if step is None:
            return
        if pending is not None:
            m = self.multiplier
            with torch.no_grad():
                for slot, old in pending:
                    p = slot.tensor()
                    mask = slot.mask.to(p.device)
                    new = p.detach().masked_select(mask)
                    p.masked_scatter_(mask, old + m * (new - old))
        self.applied.append(step)

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[bool]:
        """Context manager around ``optimizer.step()`` for update ``step``.

        Yields whether the step is attacked. If the body raises, nothing is
        scaled.
        """
        attacked = self.before_step(step)
        try:
            yield attacked
        except BaseException:
            self._pending, self._pending_step = None, None
            raise
        self.after_step()

    # -- resume --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.applied = [int(s) for s in state.get("applied", [])]

    def __repr__(self) -> str:
        units = {k: v.tolist() for k, v in self.units.items()}
        return (f"LRAttack(units={units}, multiplier={self.multiplier:g}, steps="
                f"{self.schedule[0]}..{self.schedule[-1]} ({len(self.schedule)} updates), "
                f"bias={self.bias}, outgoing={self.outgoing})")
