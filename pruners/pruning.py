"""Scheduled pruners: a scorer says what, a schedule says how much, the pruner acts.

Both pruners are called from any training loop::

    pruner = UnitPruner("mrs", schedules.THESIS_UNITS, replacement="mean")
    for epoch in range(1, epochs + 1):
        train_one_epoch(model, optimizer)
        report = pruner.step(epoch, model, optimizer, data=scoring_batches)

``step(t, ...)`` asks the schedule for the cumulative target at ``t``; if the
model is already pruned that far it does nothing and returns None, otherwise
it scores, selects the lowest-scoring entries or units still alive, acts, and
returns a :class:`RoundReport` (also appended to ``pruner.history``).

* :class:`ParameterPruner` (U. Evci, *Detecting Dead Weights and Units in
  Neural Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068 --
  Evci 2018 -- Sec. 2.2: magnitude pruning on the
  schedule of Table 2.2) zeroes parameter entries through
  :func:`torch.nn.utils.prune.custom_from_mask`: the standard
  ``weight_orig``/``weight_mask`` layout, masks composing across rounds,
  pruned entries exactly zero whatever the optimizer does to ``weight_orig``.
* :class:`UnitPruner` (Sec. 4.2: MRS unit pruning with bias propagation on
  the schedule of Table 4.2) removes whole units with
  :func:`~pruners.remove_units` (physically, slicing the optimizer state) or
  masks them with :func:`~pruners.mask_units`, after folding their
  replacement constants into the next layer's bias.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from saliency import SCORERS
from saliency.base import Scorer, iter_batches, per_sample_loss, select_layers
from saliency.tracing import trace
from saliency.layers import eval_mode
from saliency.replacement import iter_inputs

from .metrics import count_macs, count_params
from .schedules import Amount, Schedule, amount_to_count, check_amount, constant, table
from .surgery import RemovalReport, mask_units, remove_units

__all__ = ["ParameterPruner", "UnitPruner", "RoundReport", "mean_loss"]

LossFn = Callable[..., torch.Tensor]
#: what the pruners accept as a schedule: a schedule, a ``{t: amount}`` table, an amount, or
#: any callable ``t -> amount``
ScheduleLike = Union[Schedule, Mapping[int, Amount], Amount, Callable[[int], Amount]]


@dataclass
class RoundReport:
    """What one pruning round did.

    Attributes:
        step: the ``t`` passed to ``pruner.step``.
        target: the schedule's cumulative amount at ``step``.
        kind: ``"parameter"`` or ``"unit"``.
        pruned: per tensor (parameter pruner) or layer (unit pruner), how
            many entries or units this round pruned.
        fraction: per tensor (of its size) or per layer (of its width when
            the pruner first acted), the fraction pruned so far.
        remaining: per layer, the units alive after the round (unit pruner).
        params_before, params_after: parameters (masked entries not counted).
        macs_before, macs_after: multiply-accumulates per sample (dense
            counts: masking entries does not lower them; removing units does).
        loss_before, loss_after: mean loss on the scoring data just before
            and just after the round (None without data).
        removal: the :class:`~pruners.RemovalReport` of a unit round.
    """

    step: int
    target: float | int
    kind: str
    pruned: dict[str, int]
    fraction: dict[str, float]
    remaining: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    removal: RemovalReport | None = None

    @property
    def penalty(self) -> float | None:
        """``loss_after - loss_before``: the pruning penalty of this round."""
        if self.loss_before is None or self.loss_after is None:
            return None
        return self.loss_after - self.loss_before

    def as_row(self) -> dict[str, Any]:
        """A flat dict (for CSV files and plots)."""
        row: dict[str, Any] = {
            "step": self.step, "target": self.target, "kind": self.kind,
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "loss_before": self.loss_before, "loss_after": self.loss_after,
            "penalty": self.penalty, "pruned_total": sum(self.pruned.values())}
        for k, v in self.fraction.items():
            row[f"fraction/{k}"] = v
        for k, v in self.remaining.items():
            row[f"remaining/{k}"] = v
        return row

    def __str__(self) -> str:
        what = "entries" if self.kind == "parameter" else "units"
        lines = [f"round at t={self.step}: target {self.target}, "
                 f"{sum(self.pruned.values())} {what} pruned"]
        width = max([len(k) for k in self.fraction] + [8])
        for k in self.fraction:
            extra = f"  {self.remaining[k]} left" if k in self.remaining else ""
            lines.append(f"  {k:<{width}}  +{self.pruned.get(k, 0):<6} "
                         f"{100 * self.fraction[k]:6.2f}% pruned{extra}")
        lines.append(f"  parameters {self.params_before:,} -> {self.params_after:,}")
        if self.macs_before is not None:
            lines.append(f"  MACs/sample {self.macs_before:,} -> {self.macs_after:,}")
        if self.penalty is not None:
            lines.append(f"  loss {self.loss_before:.5f} -> {self.loss_after:.5f} "
                         f"(penalty {self.penalty:+.5f})")
        return "\n".join(lines)


def mean_loss(model: nn.Module, data: Iterable, loss_fn: LossFn = F.cross_entropy) -> float:
    """Mean per-sample loss of ``model`` over ``data`` (eval mode, no gradient)."""
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model):
        for x, y in iter_batches(data):
            losses = per_sample_loss(loss_fn, model(x), y)
            total += float(losses.to(torch.float64).sum())
            count += losses.shape[0]
    return total / count


def _as_schedule(schedule) -> Callable[[int], float | int]:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        return table(schedule)
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return constant(schedule)
    if callable(schedule):
        return schedule
    raise TypeError("schedule must be a pruners.schedules schedule, a {step: amount} mapping, "
                    f"an amount, or a callable step -> amount; got {type(schedule).__name__}")


def _as_scorer(scorer, granularity: str) -> Scorer:
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}")
        scorer = SCORERS[scorer]()
    if not isinstance(scorer, Scorer) or getattr(scorer, "granularity", None) != granularity:
        kinds = sorted(k for k, c in SCORERS.items() if c.granularity == granularity)
        raise TypeError(f"a {granularity}-wise scorer is needed (one of {kinds}, or an "
                        f"instance), got {scorer!r}")
    return scorer


def _target(schedule, t: int):
    amount = schedule(t)
    try:
        return check_amount(amount, f"schedule({t})")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the schedule returned an invalid amount at t={t}: {exc}") from None


def _data_list(data):
    if data is None:
        return None
    if iter(data) is data:  # a one-pass iterator: read it once
        data = list(data)
    next(iter_batches(data))  # fail early on empty or malformed data
    return data


def _example(example_input, data):
    if example_input is not None:
        return example_input
    if data is not None:
        return next(iter_inputs(data))[:1]
    return None


class _Pruner:
    """Shared scheduling, history and state of both pruners."""

    granularity = ""

    def __init__(self, scorer, schedule, loss_fn: LossFn, example_input):
        self.scorer = _as_scorer(scorer, self.granularity)
        self.schedule = _as_schedule(schedule)
        self.loss_fn = loss_fn
        self.example_input = example_input
        self.history: list[RoundReport] = []
        #: the highest schedule target already acted on (None before the first call)
        self.reached: float | int | None = None

    def _check_data(self, data):
        data = _data_list(data)
        if data is None and self.scorer.needs_data:
            raise ValueError(f"{type(self.scorer).__name__} needs data: pass data= to step()")
        return data

    def _sizes(self, model, example):
        return count_params(model), (count_macs(model, example) if example is not None else None)

    def due(self, t: int) -> bool:
        """Whether ``step(t, ...)`` may prune: the schedule has risen since the last round.

        Cheap (no scoring, no tracing): callers can skip preparing scoring
        data when it is False. ``step`` itself checks the model as well.
        """
        target = _target(self.schedule, t)
        return self.reached is None or target > self.reached

    def state_dict(self) -> dict[str, Any]:
        """The pruner's progress (for resuming a training run)."""
        return {"history": [_report_state(r) for r in self.history], "reached": self.reached}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [RoundReport(**r) for r in state.get("history", [])]
        self.reached = state.get("reached")


def _report_state(r: RoundReport) -> dict[str, Any]:
    """A report's fields as plain values (the removal report is not kept)."""
    return {f: (dict(v) if isinstance(v, dict) else v) for f, v in
            ((f, getattr(r, f)) for f in RoundReport.__dataclass_fields__) if f != "removal"}


# ---------------------------------------------------------------------------


class ParameterPruner(_Pruner):
    """Scheduled pruning of parameter entries through ``torch.nn.utils.prune``.

    At each round the cumulative target ``f = schedule(t)`` is reached by
    zeroing, among the entries still alive, those with the lowest scores:
    ``round(f * N)`` entries of all selected tensors together
    (``scope="global"``, the thesis's "fraction f of all parameters", Sec.
    2.2) or of each tensor (``scope="layer"``). An int amount is a count.
    Already-pruned entries stay pruned (masks compose).

    Args:
        scorer: a parameter-wise scorer or its name in :data:`saliency.SCORERS`
            (``"magnitude"`` for the thesis's experiment).
        schedule: a :mod:`pruners.schedules` schedule, a ``{t: amount}``
            mapping (a table), an amount (from ``t = 0``) or a callable.
        scope: ``"global"`` or ``"layer"``.
        params: names of the tensors to prune (``"fc1.weight"``); default:
            the weight of every Linear / Conv1d / Conv2d module.
        include_bias: with the default selection, also prune their biases.
        loss_fn: the loss for data-driven scorers and the round report.
        example_input: one input batch, for MAC counts (default: from data).

    Examples:
        >>> import torch.nn as nn
        >>> from pruners import ParameterPruner, schedules
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> pruner = ParameterPruner("magnitude", schedules.table({1: 0.5}))
        >>> pruner.step(0, net) is None, pruner.step(1, net).fraction["0.weight"] >= 0
        (True, True)
        >>> float((net[0].weight == 0).float().mean() + (net[2].weight == 0).float().mean()) > 0
        True
    """

    granularity = "parameter"

    def __init__(self, scorer: Scorer | str = "magnitude", schedule: ScheduleLike | None = None,
                 *, scope: str = "global",
                 params: Iterable[str] | None = None, include_bias: bool = False,
                 loss_fn: LossFn = F.cross_entropy, example_input: torch.Tensor | None = None):
        if schedule is None:
            raise ValueError("a schedule is needed, e.g. pruners.schedules.THESIS_PARAMETERS")
        super().__init__(scorer, schedule, loss_fn, example_input)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.scope = scope
        self.params = None if params is None else list(params)
        self.include_bias = bool(include_bias)

    # -- what is pruned -------------------------------------------------------

    def targets(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        """``{"layer.weight": (module, "weight")}`` of the tensors this pruner prunes."""
        mods = dict(model.named_modules())
        out: dict[str, tuple[nn.Module, str]] = {}
        if self.params is None:
            for mname, mod in mods.items():
                if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                    for pname in ("weight", "bias") if self.include_bias else ("weight",):
                        if _tensor(mod, pname) is not None:
                            out[f"{mname}.{pname}" if mname else pname] = (mod, pname)
            if not out:
                raise ValueError(f"{type(model).__name__} has no Linear/Conv weights to prune")
            return out
        for key in self.params:
            mname, _, pname = key.rpartition(".")
            mod = mods.get(mname)
            if mod is None or _tensor(mod, pname) is None:
                raise ValueError(f"unknown parameter {key!r}: no module {mname!r} with a "
                                 f"tensor {pname!r}")
            out[key] = (mod, pname)
        return out

    # -- a round -----------------------------------------------------------------

    def step(self, t: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             data: Iterable | None = None) -> RoundReport | None:
        """Prune to ``schedule(t)`` if not there yet; return the round's report or None.

        ``optimizer`` is accepted for symmetry with :class:`UnitPruner`;
        masking keeps every parameter object, so its state needs no change.
        """
        target = _target(self.schedule, t)
        if self.reached is not None and target <= self.reached:
            return None
        targets = self.targets(model)
        masks = {k: _mask(mod, p) for k, (mod, p) in targets.items()}
        sizes = {k: m.numel() for k, m in masks.items()}
        dead = {k: int((m == 0).sum()) for k, m in masks.items()}
        if self.scope == "global":
            total = sum(sizes.values())
            want = {None: amount_to_count(target, total)}
            have = {None: sum(dead.values())}
        else:
            want = {k: amount_to_count(target, n) for k, n in sizes.items()}
            have = dict(dead)
        if all(want[k] <= have[k] for k in want):
            self.reached = target
            return None
        data = self._check_data(data)
        example = _example(self.example_input, data)
        scorer = copy.copy(self.scorer)
        scorer.params = list(targets)
        scores = scorer.score(model, data, self.loss_fn)
        flat = {}
        for k, m in masks.items():
            s = scores.get(k)
            if s is None or s.shape != m.shape:
                raise ValueError(f"{type(self.scorer).__name__} gave no scores shaped "
                                 f"{tuple(m.shape)} for {k!r}")
            s = s.detach().to(torch.float64).reshape(-1).clone()
            if torch.isnan(s).any():
                raise ValueError(f"{type(self.scorer).__name__} gave NaN scores for {k!r}")
            s[m.reshape(-1) == 0] = -math.inf  # pruned entries stay pruned
            flat[k] = s
        new_masks = {}
        if self.scope == "global":
            keys = list(flat)
            allscores = torch.cat([flat[k] for k in keys])
            order = torch.argsort(allscores, stable=True)[:want[None]]
            chosen = torch.zeros(allscores.numel(), dtype=torch.bool)
            chosen[order] = True
            offset = 0
            for k in keys:
                n = sizes[k]
                new_masks[k] = chosen[offset:offset + n]
                offset += n
        else:
            for k, s in flat.items():
                chosen = torch.zeros(s.numel(), dtype=torch.bool)
                chosen[torch.argsort(s, stable=True)[:max(want[k], dead[k])]] = True
                new_masks[k] = chosen
        loss_before = mean_loss(model, data, self.loss_fn) if data is not None else None
        params_before, macs_before = self._sizes(model, example)
        pruned, fraction = {}, {}
        for k, chosen in new_masks.items():
            mod, pname = targets[k]
            old = masks[k]
            keep = (~chosen).reshape(old.shape).to(old.dtype) * old
            pruned[k] = int((keep == 0).sum()) - dead[k]
            fraction[k] = float((keep == 0).sum()) / sizes[k]
            if pruned[k] > 0:
                with torch.no_grad():  # no autograd history on `weight`: the model stays copyable
                    prune.custom_from_mask(mod, pname, keep)
        params_after, macs_after = self._sizes(model, example)
        loss_after = mean_loss(model, data, self.loss_fn) if data is not None else None
        report = RoundReport(step=int(t), target=target, kind="parameter", pruned=pruned,
                             fraction=fraction, params_before=params_before,
                             params_after=params_after, macs_before=macs_before,
                             macs_after=macs_after, loss_before=loss_before,
                             loss_after=loss_after)
        self.reached = target
        self.history.append(report)
        return report


def _tensor(mod: nn.Module, name: str) -> torch.Tensor | None:
    t = getattr(mod, name + "_orig", None)
    if t is None:
        t = mod._parameters.get(name)
    return t


def _mask(mod: nn.Module, name: str) -> torch.Tensor:
    m = getattr(mod, name + "_mask", None)
    return m.detach() if m is not None else torch.ones_like(_tensor(mod, name)).detach()


# ---------------------------------------------------------------------------


_NORMALIZE = {
    None: lambda s: s.new_tensor(1.0),
    "l2": lambda s: s.norm(),
    "l1": lambda s: s.abs().sum(),
    "mean": lambda s: s.abs().mean(),
    "max": lambda s: s.abs().max(),
}


class UnitPruner(_Pruner):
    """Scheduled unit pruning with bias propagation (Evci 2018, Sec. 4.2).

    At each round the cumulative target ``f = schedule(t)`` says how many
    units of each layer's width at the first round are to be gone:
    ``floor(f * n_l)`` per layer (``scope="layer"``, the thesis's setting,
    which takes the 20,522-parameter CNN to 4,019 on Table 4.2) or
    ``floor(f * sum n_l)`` over all layers (``scope="global"``), never leaving
    a layer fewer than ``min_units``. The lowest-scoring live units are
    replaced by a constant folded into the next layer's bias (``"mean"``:
    their mean output on ``data``, the replacement MRP measures; ``"zero"``;
    None: no fold), then removed physically (``remove=True``:
    :func:`~pruners.remove_units`, which also slices the optimizer state) or
    masked (:func:`~pruners.mask_units`); both leave the same function.

    Raw scores of different layers are not comparable; global selection
    divides each layer's scores by a norm of that layer's live scores first
    (``normalize="l2"``, as Molchanov et al. 2017 do for Taylor scores;
    ``"l1"``, ``"mean"``, ``"max"`` or None).

    Args:
        scorer: a unit-wise scorer or its name (``"mrs"`` for the thesis).
        schedule: as :class:`ParameterPruner`.
        replacement: ``"mean"``, ``"zero"`` or None (see
            :func:`~pruners.remove_units`).
        remove: remove units physically (True) or mask them.
        min_units: fewest units a layer keeps (>= 1: a layer is never emptied).
        scope: ``"layer"`` or ``"global"``.
        normalize: per-layer score normalization for global selection.
        layers: producer names to prune (default: every prunable layer).
        exclude: producers left out of the graph (see :func:`~pruners.trace`).
        loss_fn: as :class:`ParameterPruner`.
        example_input: as :class:`ParameterPruner`.
    """

    granularity = "unit"

    def __init__(self, scorer: Scorer | str = "mrs", schedule: ScheduleLike | None = None, *,
                 replacement: str | None = "mean",
                 remove: bool = True, min_units: int = 1, scope: str = "layer",
                 normalize: str | None = "l2", layers: Iterable[str] | None = None,
                 exclude: Iterable[str] = (), loss_fn: LossFn = F.cross_entropy,
                 example_input: torch.Tensor | None = None):
        if schedule is None:
            raise ValueError("a schedule is needed, e.g. pruners.schedules.THESIS_UNITS")
        super().__init__(scorer, schedule, loss_fn, example_input)
        if replacement not in ("mean", "zero", None):
            raise ValueError(f"replacement must be 'mean', 'zero' or None, got {replacement!r}")
        if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
            raise ValueError(f"min_units must be an int >= 1 (a layer is never emptied), "
                             f"got {min_units!r}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {list(_NORMALIZE)}, got {normalize!r}")
        self.replacement, self.remove, self.min_units = replacement, bool(remove), min_units
        self.scope, self.normalize = scope, normalize
        self.layers = None if layers is None else list(layers)
        self.exclude = tuple(exclude)
        self.initial: dict[str, int] = {}  # width of each layer at the first round
        self.masked: dict[str, list[int]] = {}  # masked units (remove=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial": dict(self.initial),
                "masked": {k: list(v) for k, v in self.masked.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial = {k: int(v) for k, v in state.get("initial", {}).items()}
        self.masked = {k: [int(i) for i in v] for k, v in state.get("masked", {}).items()}

    def _layers(self, model, example) -> tuple[Any, list[str]]:
        graph = trace(model, example, exclude=self.exclude)
        return graph, select_layers(model, graph, self.layers)

    def step(self, t: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             data: Iterable | None = None) -> RoundReport | None:
        """Prune to ``schedule(t)`` if not there yet; return the round's report or None.

        ``optimizer`` (physical removal): its per-parameter state is sliced
        with the parameters, so training continues with the same optimizer.
        ``data``: scoring batches, also used for the mean replacement and
        the report's losses.
        """
        target = _target(self.schedule, t)
        if self.reached is not None and target <= self.reached:
            return None
        data = _data_list(data)
        example = _example(self.example_input, data)
        if example is None:
            raise ValueError("UnitPruner.step needs data= (or example_input=) to trace the model")
        graph, layers = self._layers(model, example)
        width = {n: graph.producers[n].num_units for n in layers}
        initial = {n: self.initial.get(n, width[n]) for n in layers}  # kept once a step succeeds
        gone = {n: initial[n] - width[n] + len(self.masked.get(n, ())) for n in layers}
        live = {n: width[n] - len(self.masked.get(n, ())) for n in layers}
        cap = {n: max(0, live[n] - self.min_units) for n in layers}  # most we may take now
        if self.scope == "layer":
            need = {n: min(cap[n], amount_to_count(target, initial[n], "floor") - gone[n])
                    for n in layers}
        else:
            total = amount_to_count(target, sum(initial[n] for n in layers), "floor")
            need = {None: min(sum(cap.values()), total - sum(gone.values()))}
        if all(v <= 0 for v in need.values()):
            self.initial.update(initial)
            self.reached = target
            return None
        if self.scorer.needs_data and data is None:
            raise ValueError(f"{type(self.scorer).__name__} needs data: pass data= to step()")
        if self.replacement == "mean" and data is None:
            raise ValueError("replacement='mean' needs data= (the units' mean outputs)")
        scorer = copy.copy(self.scorer)
        scorer.layers, scorer.exclude, scorer.example_input = list(layers), self.exclude, example
        scores = scorer.score(model, data, self.loss_fn)
        cand: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in layers:
            s = scores.get(n)
            if s is None or s.shape != (width[n],):
                raise ValueError(f"{type(self.scorer).__name__} gave no scores of shape "
                                 f"({width[n]},) for layer {n!r}")
            s = s.detach().to(torch.float64)
            if torch.isnan(s).any():
                bad = torch.nonzero(torch.isnan(s)).flatten().tolist()
                raise ValueError(f"{type(self.scorer).__name__} gave NaN scores for layer "
                                 f"{n!r}, units {bad[:10]}")
            alive = torch.ones(width[n], dtype=torch.bool)
            alive[list(self.masked.get(n, ()))] = False
            idx = torch.nonzero(alive).flatten()
            cand[n] = (idx, s[idx])
        chosen = self._select(layers, cand, need, cap)
        units = {n: sorted(v) for n, v in chosen.items() if v}
        loss_before = mean_loss(model, data, self.loss_fn) if data is not None else None
        params_before, macs_before = self._sizes(model, example)
        act = remove_units if self.remove else mask_units
        removal = act(model, units, replacement=self.replacement, data=data, optimizer=optimizer,
                      example_input=example, exclude=self.exclude, min_units=self.min_units)
        self.initial.update(initial)
        if not self.remove:
            for n, idx in units.items():
                self.masked[n] = sorted(set(self.masked.get(n, [])) | set(idx))
        params_after, macs_after = self._sizes(model, example)
        loss_after = mean_loss(model, data, self.loss_fn) if data is not None else None
        pruned = {n: len(chosen.get(n, ())) for n in layers}
        remaining = {n: live[n] - pruned[n] for n in layers}
        fraction = {n: (self.initial[n] - remaining[n]) / self.initial[n] for n in layers}
        report = RoundReport(step=int(t), target=target, kind="unit", pruned=pruned,
                             fraction=fraction, remaining=remaining,
                             params_before=params_before, params_after=params_after,
                             macs_before=macs_before, macs_after=macs_after,
                             loss_before=loss_before, loss_after=loss_after, removal=removal)
        self.reached = target
        self.history.append(report)
        return report

    def _select(self, layers, cand, need, cap) -> dict[str, list[int]]:
        if self.scope == "layer":
            out = {}
            for n in layers:
                idx, s = cand[n]
                k = max(0, need[n])
                out[n] = idx[torch.argsort(s, stable=True)[:k]].tolist()
            return out
        norm = _NORMALIZE[self.normalize]
        names, units, vals = [], [], []
        for n in layers:
            idx, s = cand[n]
            z = norm(s) if s.numel() else s.new_tensor(1.0)
            z = z if float(z) > 0 else s.new_tensor(1.0)
            names += [n] * idx.numel()
            units += idx.tolist()
            vals.append(s / z)
        order = torch.argsort(torch.cat(vals), stable=True).tolist()
        out: dict[str, list[int]] = {n: [] for n in layers}
        left = need[None]
        for i in order:
            if left <= 0:
                break
            n = names[i]
            if len(out[n]) < cap[n]:
                out[n].append(units[i])
                left -= 1
        return out
