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
  replacement constants into the next layer's bias. Units are the channels
  of the groups of the graph of units (a layer on a chain; every layer a
  residual add sums, together), every selection one the graph accepts;
  global ranking can weigh each unit by what its removal frees
  (:func:`unit_costs`).
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from saliency import SCORERS
from saliency.base import (Scorer, check_dtype, check_materialized, default_parameters,
                           iter_batches, per_sample_loss, select_layers, unknown_parameter)
from saliency.graph import default_example_input, symbolic_trace
from saliency.tracing import trace
from saliency.layers import CHANNEL_MODULES, eval_mode
from saliency.replacement import iter_inputs

from .metrics import count_macs, count_params
from .schedules import Amount, Schedule, amount_to_count, check_amount, constant, table
from .surgery import RemovalReport, mask_units, remove_units

__all__ = ["ParameterPruner", "UnitPruner", "RoundReport", "mean_loss", "unit_costs",
           "head_costs", "head_items", "output_layers", "OutputLayerWarning",
           "EmptiedTensorWarning"]

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
        pruned: per tensor (parameter pruner) or group (unit pruner: a layer
            on a chain, a residual group by its name), how many entries or
            units this round pruned.
        fraction: per tensor (of its size) or per group (of its width when
            the pruner first acted), the fraction pruned so far.
        remaining: per group, the units alive after the round (unit pruner).
        params_before, params_after: parameters (masked entries not counted).
        macs_before, macs_after: multiply-accumulates per sample (dense
            counts: masking entries does not lower them; removing units does).
        loss_before, loss_after: mean loss on the scoring data just before
            and just after the round (None without data).
        removal: the :class:`~pruners.RemovalReport` of a unit round.
        left_out: the model's output layers (:func:`output_layers`) this round left
            alone: by default :class:`ParameterPruner` does not prune them, and the units
            of :class:`UnitPruner` never include them; for a :class:`UnitPruner` with
            ``on_unsupported="exclude"``, also the layers the graph of units cannot
            represent (:attr:`UnitPruner.unsupported` gives the reasons).
        unsupported: those last layers (of :attr:`left_out`).
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
    left_out: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

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
        outputs = [n for n in self.left_out if n not in self.unsupported]
        if outputs:
            lines.append(f"  left alone (the model's output layer): {', '.join(outputs)}")
        if self.unsupported:
            lines.append(f"  left out (the graph of units cannot represent them): "
                         f"{', '.join(self.unsupported)}")
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


def data_list(data):
    """``data`` as an iterable that can be read several times (a one-pass iterator is read
    into a list), checked to hold at least one well-formed batch; None stays None."""
    if data is None:
        return None
    if iter(data) is data:  # a one-pass iterator: read it once
        data = list(data)
    next(iter_batches(data))  # fail early on empty or malformed data
    return data


def example_of(example_input, data):
    """The example input to trace with: ``example_input``, else one sample of ``data``."""
    if example_input is not None:
        return example_input
    if data is not None:
        return next(iter_inputs(data))[:1]
    return None


class OutputLayerWarning(UserWarning):
    """:class:`ParameterPruner` left the model's output layer out of its default selection."""


class EmptiedTensorWarning(UserWarning):
    """A pruning round masked every entry of a tensor (a layer left with no weights)."""


#: the layers whose weights :class:`ParameterPruner` prunes by default
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


#: functional layers: the walk back from the output stops there (a tied output embedding
#: ``F.linear(h, embedding.weight)`` is the output layer, not the module before it)
_FUNCTIONAL_LAYERS = {F.linear, F.conv1d, F.conv2d, torch.matmul, torch.mm, torch.bmm,
                      operator.matmul}


def output_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """The Linear / Conv1d / Conv2d layers whose output is the model's output.

    Read from the ``torch.fx`` graph of ``model`` (no input needed): walking back from the
    model's output through every operation that is not such a layer (activations,
    softmax, flatten, residual adds...), the first layer met on each path is an output
    layer: the classifier of a classification network, the last layer of an MLP; every
    layer summed into the output when the output is a residual sum. A module called as one
    unit (an attention module) stands for its last Linear. When ``torch.fx`` cannot trace
    the model, the last such layer called on ``example_input`` (or on the input
    :func:`saliency.graph.default_example_input` infers) is the output layer; without an
    input, the last one registered.

    Args:
        model: the model (not changed; at most run once in eval mode without gradients).
        example_input: an input batch, used only when ``torch.fx`` cannot trace the model.

    Returns:
        The names of the output layers in model order (empty when the model has no such
        layer).

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(1))
        >>> output_layers(net)
        ['2']
    """
    mods = dict(model.named_modules())
    layers = [n for n, m in mods.items() if isinstance(m, WEIGHTED)]
    if not layers:
        return []
    try:
        with eval_mode(model):
            gm = symbolic_trace(model)
    except Exception:  # noqa: BLE001 - fall back to running the model
        gm = None
    found: set[str] = set()
    functional = False
    if gm is not None:
        stack = [n for node in gm.graph.nodes if node.op == "output"
                 for n in node.all_input_nodes]
        seen = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node.op == "call_module":
                mod = mods.get(node.target)
                if isinstance(mod, WEIGHTED):
                    found.add(node.target)
                    continue
                subs = mod.named_modules() if mod is not None else ()
                inner = [f"{node.target}.{n}" for n, m in subs if n and isinstance(m, WEIGHTED)]
                if inner:
                    found.add(inner[-1])
                    continue
            if node.op == "call_function" and node.target in _FUNCTIONAL_LAYERS:
                # a layer of its own: the module whose weight it reads when that is a layer
                # (a traced Linear's own F.linear), else none (a tied embedding's weight)
                functional = True
                owners = [a.target.rpartition(".")[0] for a in node.all_input_nodes
                          if a.op == "get_attr"]
                found.update(o for o in owners if o in layers)
                continue
            stack.extend(node.all_input_nodes)
        if found or functional:
            return [n for n in layers if n in found]
    called: list[str] = []
    x = example_input
    if x is None:
        try:
            x = default_example_input(model)
        except ValueError:
            x = None
    if x is not None:
        handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: called.append(n))
                   for n in layers]
        try:
            with eval_mode(model), torch.no_grad():
                model(x)
        except Exception:  # noqa: BLE001 - the registration order decides
            called.clear()
        finally:
            for h in handles:
                h.remove()
    return [called[-1] if called else layers[-1]]


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
        data = data_list(data)
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
    return {f: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for f, v in
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

    **The output layer is left alone by default.** The default selection is the weight of
    every Linear / Conv1d / Conv2d module except the model's output layers
    (:func:`output_layers`: the classifier, the last layer of an MLP), whose weights make
    the model's outputs directly; the first round that acts warns once
    (:class:`OutputLayerWarning`) naming the layers left out, and every report lists them
    in :attr:`RoundReport.left_out`. ``prune_output=True`` prunes them too (what Evci 2018,
    Sec. 2.2 does: "all parameters"); tensors named in ``params`` are pruned as asked.

    **Emptied tensors.** A round that masks every entry of a tensor (an amount of 1.0,
    or a global ranking that takes all of a small layer) leaves that layer's output
    independent of its input; it is done as asked, with an :class:`EmptiedTensorWarning`
    naming the tensors.

    Args:
        scorer: a parameter-wise scorer or its name in :data:`saliency.SCORERS`
            (``"magnitude"`` for the thesis's experiment).
        schedule: a :mod:`pruners.schedules` schedule, a ``{t: amount}``
            mapping (a table), an amount (from ``t = 0``) or a callable.
        scope: ``"global"`` or ``"layer"``.
        params: names of the tensors to prune (``"fc1.weight"``, not the module's name
            ``"fc1"``; one name may be given as a string); default: the weight of every Linear / Conv1d / Conv2d module but the
            output layers (see ``prune_output``).
        include_bias: with the default selection, also prune their biases.
        prune_output: with the default selection, also prune the output layers' weights
            (and biases with ``include_bias``).
        loss_fn: the loss for data-driven scorers and the round report.
        example_input: one input batch, for MAC counts (default: from data), and to find
            the output layer of a model ``torch.fx`` cannot trace.

    Raises:
        ValueError: no schedule, an unknown ``scope``; at :meth:`step`, a name of
            ``params`` that is not a parameter of the model (a module's name gets the
            suggestion ``"fc1.weight"``), or a default selection left empty by the output
            layer (pass ``prune_output=True``).
        TypeError: a scorer that is not parameter-wise, a bad schedule, a non-bool
            ``prune_output``.

    Examples:
        >>> import torch.nn as nn
        >>> from pruners import ParameterPruner, schedules
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> pruner = ParameterPruner("magnitude", schedules.table({1: 0.5}))
        >>> list(pruner.targets(net))       # the output layer "2" is left alone
        ['0.weight']
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", OutputLayerWarning)
        ...     report = pruner.step(1, net)
        >>> report.fraction["0.weight"], report.left_out, bool((net[2].weight == 0).any())
        (0.5, ['2'], False)
        >>> everything = ParameterPruner("magnitude", 0.5, prune_output=True)
        >>> list(everything.targets(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))))
        ['0.weight', '2.weight']
    """

    granularity = "parameter"

    def __init__(self, scorer: Scorer | str = "magnitude", schedule: ScheduleLike | None = None,
                 *, scope: str = "global",
                 params: Iterable[str] | None = None, include_bias: bool = False,
                 prune_output: bool = False,
                 loss_fn: LossFn = F.cross_entropy, example_input: torch.Tensor | None = None):
        if schedule is None:
            raise ValueError("a schedule is needed, e.g. pruners.schedules.THESIS_PARAMETERS")
        super().__init__(scorer, schedule, loss_fn, example_input)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        if not isinstance(prune_output, bool):
            raise TypeError(f"prune_output must be True or False, got {prune_output!r}")
        self.scope = scope
        if isinstance(params, str):
            params = [params]
        self.params = None if params is None else list(params)
        self.include_bias = bool(include_bias)
        self.prune_output = prune_output
        #: the output layers the default selection left out at the last :meth:`targets`
        self.left_out: list[str] = []
        self._warned = False

    # -- what is pruned -------------------------------------------------------

    def targets(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        """The tensors this pruner prunes.

        Args:
            model: the model.

        Returns:
            ``{"layer.weight": (module, "weight")}``: the tensors of ``params``, or the
            default selection (every Linear / Conv1d / Conv2d weight, biases with
            ``include_bias``, the output layers' only with ``prune_output``). The output
            layers left out are in :attr:`left_out`.

        Raises:
            ValueError: a name of ``params`` is not a parameter (a module's name gets the
                suggestion ``"fc1.weight"``); the model has no Linear/Conv weights, or only
                those of its output layer (pass ``prune_output=True``).
        """
        mods = dict(model.named_modules())
        out: dict[str, tuple[nn.Module, str]] = {}
        self.left_out = []
        if self.params is None:
            skip = set() if self.prune_output else set(output_layers(model, self.example_input))
            for mname, mod in mods.items():
                if isinstance(mod, WEIGHTED):
                    if mname in skip:
                        self.left_out.append(mname)
                        continue
                    for pname in ("weight", "bias") if self.include_bias else ("weight",):
                        if _tensor(mod, pname) is not None:
                            out[f"{mname}.{pname}" if mname else pname] = (mod, pname)
            if not out and self.left_out:
                raise ValueError(
                    f"{type(model).__name__}'s only Linear/Conv weights are those of its output "
                    f"layer {', '.join(map(repr, self.left_out))}, which ParameterPruner leaves "
                    "alone by default: pass prune_output=True to prune it")
            if not out:
                raise ValueError(f"{type(model).__name__} has no Linear/Conv weights to prune")
            return out
        known = None
        for key in self.params:
            mname, _, pname = key.rpartition(".")
            mod = mods.get(mname)
            if mod is None or _tensor(mod, pname) is None:
                known = list(default_parameters(model)) if known is None else known
                raise ValueError(unknown_parameter(model, key, known))
            out[key] = (mod, pname)
        return out

    # -- a round -----------------------------------------------------------------

    def step(self, t: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             data: Iterable | None = None) -> RoundReport | None:
        """Prune to ``schedule(t)`` if not there yet; return the round's report or None.

        Args:
            t: the step (epoch, iteration) the schedule is read at.
            model: the model, pruned in place (masks of :mod:`torch.nn.utils.prune`).
            optimizer: accepted for symmetry with :class:`UnitPruner`; masking keeps every
                parameter object, so its state needs no change.
            data: scoring batches (needed by data-driven scorers; also the report's losses).

        Returns:
            The round's :class:`RoundReport` (also appended to :attr:`history`), or None
            when the model is already pruned to ``schedule(t)``.

        Raises:
            ValueError: see :meth:`targets`; the model is on the ``meta`` device; the
                scorer needs data and none is given; the scores are NaN or misshaped.
            TypeError: the data's (or ``example_input``'s) floating dtype is not the
                parameters' (``model.double()`` or ``x.float()``).

        Warns:
            OutputLayerWarning: once per pruner, at its first round, when the default
                selection left the output layer out (see the class docstring).
            EmptiedTensorWarning: when the round masks every entry of a tensor.
        """
        target = _target(self.schedule, t)
        if self.reached is not None and target <= self.reached:
            return None
        check_materialized(model)
        targets = self.targets(model)
        left_out = list(self.left_out)
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
        example = example_of(self.example_input, data)
        if data is not None:
            check_dtype(model, next(iter_inputs(data)), "the data")
        if self.example_input is not None:
            check_dtype(model, self.example_input, "example_input")
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
        emptied = [k for k, chosen in new_masks.items()
                   if bool(chosen.all()) and dead[k] < sizes[k]]
        loss_before = mean_loss(model, data, self.loss_fn) if data is not None else None
        params_before, macs_before = self._sizes(model, example)
        if left_out and not self._warned:
            self._warned = True
            warnings.warn(
                f"ParameterPruner leaves the output layer {', '.join(map(repr, left_out))} "
                "alone (its output is the model's output); pass prune_output=True to prune it "
                "too, or params= to choose the tensors", OutputLayerWarning, stacklevel=2)
        if emptied:
            warnings.warn(
                f"pruning to {target} at t={t} masks every entry of {emptied}: a layer with "
                "no weights outputs its bias whatever its input; to keep part of every tensor, "
                "use an amount below 1.0 with scope='layer' (with scope='global' a tensor whose "
                "scores are all low can go entirely)",
                EmptiedTensorWarning, stacklevel=2)
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
                             loss_after=loss_after, left_out=left_out)
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


# units of groups: what removing one frees, and which selections the graph accepts

#: what :class:`UnitPruner` may weigh a unit's score by (None: nothing)
COSTS = (None, "params", "macs")


def unit_costs(model: nn.Module, example_input: torch.Tensor | None = None, *,
               cost: str = "macs", layers: Iterable[str] | None = None,
               exclude: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """What removing each unit alone frees: parameters, or multiply-accumulates per sample.

    One value per group channel of every prunable group (``{group: float64 tensor}``; on a
    chain the group is its layer), read from the graph of units (:func:`pruners.trace`).
    Removing group channel ``i`` takes, in every layer it touches, the weight entries

    * of the member rows ``W_m[o]`` of every member ``m`` whose output channel ``o`` is
      channel ``i`` (and their bias entries ``b_m[o]``),
    * of the rows of the depthwise convolutions on the group's region,
    * of the consumer columns ``W_c[:, cols_c(i)]`` (an input channel; in a grouped
      convolution only its conv group's rows; ``H*W`` columns after a flatten),

    an entry in both a row and a column counted once, and the entries of the per-channel
    modules on the region (BatchNorm weight and bias, a switch). Then

        params(i) = sum over the layers and per-channel modules of the entries taken
        macs(i)   = sum over the layers l of (weight entries taken from l) * HW_l

    where ``HW_l`` is the number of output positions of layer ``l`` per sample in the traced
    shapes (1 for a Linear on ``(batch, channels)``, its tokens on ``(batch, ..., channels)``):
    a convolution does one multiply-accumulate per weight entry and
    output position. Entries masked with :mod:`torch.nn.utils.prune` are not counted, so a
    masked model gives the values of its physically shrunk twin; on an unmasked model
    ``params(i)`` and ``macs(i)`` are the drops of :func:`pruners.count_params` and
    :func:`pruners.count_macs` when channel ``i`` alone is removed without a replacement. A
    channel of a residual stream frees the rows of every layer summed into the stream and
    the columns of every layer reading it: far more than a channel inside a block.

    Args:
        model: the model (not changed).
        example_input: an input batch (convolutional models): its spatial size sets ``HW``.
        cost: ``"macs"`` or ``"params"``.
        layers: groups (or any of their members) and attention modules to cost (default:
            every prunable group and every attention module with prunable heads, whose
            heads cost :func:`head_costs`).
        exclude: passed to :func:`pruners.trace`.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> unit_costs(net, cost="params")["0"]    # row (4) + bias (1) + column (2)
        tensor([7., 7., 7.], dtype=torch.float64)
    """
    if cost not in ("macs", "params"):
        raise ValueError(f"cost must be 'macs' or 'params', got {cost!r}")
    graph = trace(model, example_input, exclude=exclude)
    heads = head_names(graph, layers)
    groups = None if layers is None else [n for n in layers if n not in heads]
    out = {g: group_costs(model, graph, g, cost)
           for g in (group_names(model, graph, groups) if groups is None or groups else [])}
    if heads:
        out.update(head_costs(model, graph, heads, cost, example_input))
    return out


def head_names(graph, layers: Iterable[str] | None) -> list[str]:
    """The attention modules among ``layers`` whose heads are pruned (None: every module
    with prunable heads, in model order). An attention module whose heads are not prunable
    raises ValueError with the reason."""
    if layers is None:  # with the modules already down to one head (nothing to take)
        return [n for n, h in graph.heads.items() if h.prunable or (
            h.num_heads == 1 and h.reason == "it has a single head")]
    out = []
    for n in dict.fromkeys(layers):
        if n in graph.heads:
            if not graph.heads[n].prunable and graph.heads[n].num_heads > 1:
                raise ValueError(f"attention {n!r}: its heads are not prunable: "
                                 f"{graph.heads[n].reason}")
            out.append(n)
    return out


def _attention_tokens(model: nn.Module, graph, names: list[str], example_input
                      ) -> dict[str, tuple[float, float]]:
    """Query and key tokens per sample ``(L, S)`` of each attention module of ``names`` on
    ``example_input`` (one forward pass, eval mode, fast paths off)."""
    from saliency.attention import fastpath_disabled

    def tokens(t: torch.Tensor) -> int:
        return t.numel() // t.shape[-1]

    seen: dict[str, dict[str, float]] = {n: {} for n in names}
    handles = []
    for n in names:
        h = graph.heads[n]
        mod = model.get_submodule(n)
        if h.kind == "mha":
            def pre(m, args, kwargs, n=n):
                q = args[0] if args else kwargs["query"]
                k = args[1] if len(args) > 1 else kwargs["key"]
                if q.dim() == 2:
                    seen[n].update(tgt=q.shape[0], src=k.shape[0])
                else:
                    seen[n].update(tgt=q.shape[1 if m.batch_first else 0],
                                   src=k.shape[1 if m.batch_first else 0])
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            continue

        def kv(m, inp, out, n=n):
            seen[n]["keys"] = tokens(out)

        def o(m, inp, out, n=n):
            x = inp[0]
            batch = x.shape[0] if x.dim() > 2 else 1
            seen[n]["tgt"] = tokens(x) / batch
            seen[n]["batch"] = batch
        spec = h.spec
        handles.append(mod.get_submodule(spec.k or spec.qkv).register_forward_hook(kv))
        handles.append(model.get_submodule(h.out).register_forward_hook(o))
    if example_input is None:
        raise ValueError("the MACs of attention heads need an example input (or data)")
    try:
        with eval_mode(model), torch.no_grad(), fastpath_disabled():
            model(example_input)
    finally:
        for hd in handles:
            hd.remove()
    out = {}
    for n in names:
        s = seen[n]
        if "tgt" not in s:
            raise ValueError(f"attention {n!r} was not called on the example input")
        src = s["src"] if "src" in s else s.get("keys", s["tgt"] * s["batch"]) / s["batch"]
        out[n] = (float(s["tgt"]), float(src))
    return out


def head_costs(model: nn.Module, graph, names: Iterable[str], cost: str,
               example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What removing each attention head alone frees (:func:`unit_costs` of heads).

    For head ``h`` of ``head_dim`` ``d``: the ``d`` rows of the query projection (weight and
    bias entries), the ``d`` columns of the output projection and, when the head is the only
    query head of its key/value head (``num_kv_heads == num_heads``), the ``d`` rows of the
    key and value projections; with grouped-query attention a key/value head's rows are
    freed only with its whole group, not by one head alone. Per sample, with ``L`` query and
    ``S`` key tokens::

        params(h) = entries of those rows and columns (masked entries not counted)
        macs(h)   = L * (query rows' and output columns' weight entries)
                    + S * (key and value rows' weight entries) + 2 * L * S * d

    the last term being the head's two attention products ``Q_h K_h^T`` and ``A_h V_h``
    (A. Vaswani et al., *Attention Is All You Need*, NeurIPS 2017,
    https://arxiv.org/abs/1706.03762). These are the drops of :func:`pruners.count_params`
    and :func:`pruners.count_macs` when the head alone is removed without a replacement.

    Returns:
        ``{attention module: (H,) float64}``.
    """
    names = list(names)
    toks = _attention_tokens(model, graph, names, example_input) if cost == "macs" else {}
    out = {}
    for n in names:
        h = graph.heads[n]
        d, H = h.head_dim, h.num_heads
        total = torch.zeros(H, dtype=torch.float64)
        L, S = toks.get(n, (1.0, 1.0))
        for mod, tensors, start, which in h.rows:
            if which != "q" and h.group != 1:
                continue
            m = model.get_submodule(mod)
            for tname in tensors:
                live = _live(m, tname)
                if live is None:
                    continue
                rows = live[start:start + H * d].reshape(H, -1).sum(1).to(torch.float64)
                if cost == "params":
                    total += rows
                elif "weight" in tname:
                    total += rows * (L if which == "q" else S)
        live = _live(model.get_submodule(h.out), "weight")
        cols = live[:, :H * d].reshape(live.shape[0], H, d).sum((0, 2)).to(torch.float64)
        total += cols * (L if cost == "macs" else 1.0)
        if cost == "macs":
            total += 2 * L * S * d
        out[n] = total
    return out


def group_names(model: nn.Module, graph, layers: Iterable[str] | None) -> list[str]:
    """The prunable groups ``layers`` name (a group, or any of its members), in the order
    given; every prunable group, in forward order, when None."""
    if layers is None:
        return select_layers(model, graph, None)
    names, bad = [], []
    for name in layers:
        if name in graph.groups or name in graph.producers:
            group = graph.group_of(name)
            if group.prunable:
                names.append(group.name)
                continue
        bad.append(name)
    if bad:
        select_layers(model, graph, bad)  # raises, naming them
    return list(dict.fromkeys(names))


def group_costs(model: nn.Module, graph, group: str, cost: str) -> torch.Tensor:
    """:func:`unit_costs` of one group of ``graph`` (``cost``: "macs" or "params")."""
    g = graph.groups[group]
    rows: dict[str, torch.Tensor] = dict(g.channels)
    cols: dict[str, torch.Tensor] = {}
    per_channel: dict[str, torch.Tensor] = {}
    for node in g.nodes:
        if node.kind == "op" and node.op.kind == "depthwise":
            rows.setdefault(node.op.target, node.labels)
        elif node.kind == "op" and node.op.kind == "module":
            per_channel.setdefault(node.op.target, node.labels)
    for c in g.consumers:
        labels = g.nodes[c.node].labels
        cols.setdefault(c.name, labels.repeat_interleave(c.block) if c.block > 1 else labels)
    positions = _positions(graph) if cost == "macs" else {}  # cached per graph
    total = torch.zeros(g.size, dtype=torch.float64)
    for name in dict.fromkeys(list(rows) + list(cols)):
        weights, biases = _layer_freed(model.get_submodule(name), rows.get(name),
                                       cols.get(name), g.size)
        total += weights * positions.get(name, 1) if cost == "macs" else weights + biases
    if cost == "params":
        for name, labels in per_channel.items():
            total += _channel_module_freed(model.get_submodule(name), labels, g.size)
    return total


_POSITIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _positions(graph) -> dict[str, int]:
    """Output positions per sample of every module call in the traced shapes."""
    if graph.gm is None:
        raise ValueError("the graph of units holds no traced shapes; trace the model again")
    if graph.gm in _POSITIONS:
        return _POSITIONS[graph.gm]
    out = {}
    modules = dict(graph.gm.named_modules())
    for node in graph.gm.graph.nodes:
        shape = node.meta.get("unit_graph_shape") if node.op == "call_module" else None
        if shape is not None:  # a Linear's positions are its tokens (..., channels last)
            linear = isinstance(modules.get(node.target), nn.Linear)
            out[node.target] = math.prod(shape[1:-1] if linear else shape[2:])
    _POSITIONS[graph.gm] = out
    return out


def _live(module: nn.Module, name: str) -> torch.Tensor | None:
    """Which entries of ``module.<name>`` (a parameter) are not masked, or None."""
    p = module._parameters.get(name + "_orig", module._parameters.get(name))
    if p is None:
        return None
    mask = module._buffers.get(name + "_mask")
    return (mask != 0).cpu() if mask is not None else torch.ones(p.shape, dtype=torch.bool)


def _entry_counts(module: nn.Module) -> torch.Tensor:
    """Unmasked weight entries per (output row, input column) of a Linear/Conv, float64: the
    kernel size everywhere on an unmasked layer (no weight-sized temporary)."""
    p = module._parameters.get("weight_orig", module._parameters.get("weight"))
    mask = module._buffers.get("weight_mask")
    if mask is None:
        return torch.full(tuple(p.shape[:2]), float(math.prod(p.shape[2:])),
                          dtype=torch.float64)
    return (mask != 0).reshape(p.shape[0], p.shape[1], -1).sum(-1).to(torch.float64).cpu()


def _layer_freed(module: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias entries of a Linear/Conv that each group channel takes, given the
    group channel of every output row and of every input column (-1: none)."""
    counts = _entry_counts(module)  # (out, in/groups): live weight entries of each pair
    out, in_per_group = counts.shape
    weights = torch.zeros(size, dtype=torch.float64)
    if rows is not None:
        hit = rows >= 0
        weights.index_add_(0, rows[hit], counts[hit].sum(1))
    if cols is not None:
        groups = getattr(module, "groups", 1)
        conv_group = torch.arange(out) // (out // groups)
        labels = cols.reshape(groups, in_per_group)[conv_group]  # (out, in/groups)
        hit = labels >= 0
        weights.index_add_(0, labels[hit], counts[hit])
        if rows is not None:  # a member reading its own group: W[o, p] counted once
            both = hit & (labels == rows[:, None])
            weights.index_add_(0, labels[both], -counts[both])
    biases = torch.zeros(size, dtype=torch.float64)
    live_bias = _live(module, "bias")
    if rows is not None and live_bias is not None:
        hit = rows >= 0
        biases.index_add_(0, rows[hit], live_bias[hit].to(torch.float64))
    return weights, biases


def _channel_module_freed(module: nn.Module, labels: torch.Tensor, size: int) -> torch.Tensor:
    """Parameter entries of a per-channel module (BatchNorm, switch) each group channel takes."""
    out = torch.zeros(size, dtype=torch.float64)
    for name in CHANNEL_MODULES[type(module)].tensors(module):
        live = _live(module, name)
        if live is None or live.dim() == 0 or live.shape[0] != labels.numel():
            continue  # a buffer (running statistics), or not per channel
        hit = labels >= 0
        out.index_add_(0, labels[hit], live.reshape(live.shape[0], -1)[hit].sum(1)
                       .to(torch.float64))
    return out


def _cells(group) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """The group's channels sorted for balanced removal: ``(cells, free, floors)``.

    A grouped convolution reading or producing the group's channels must lose the same
    number from each of its conv groups. Channels in the same conv group of every such
    convolution form a *cell*; removing ``size(c) / gcd`` channels from every cell ``c`` (one
    *step*) keeps every convolution balanced. ``free`` channels are in no conv group. A
    convolution whose conv groups hold different numbers of the group's channels (it reads
    another group's channels too) cannot lose any of them: those channels are in neither.
    ``floors`` are the conv groups of the convolutions that read the group's channels: each
    keeps two input channels (with one it would turn into a depthwise convolution, another
    structure).
    """
    parts = [list(ps) for ps in group.partitions.values()]
    frozen = torch.zeros(group.size, dtype=torch.bool)
    changed = True
    while changed:  # a convolution touching frozen channels cannot stay balanced either
        changed = False
        for ps in parts:
            chans = torch.cat(ps) if ps else torch.empty(0, dtype=torch.long)
            uneven = len({int(p.numel()) for p in ps}) > 1
            if chans.numel() and (uneven or frozen[chans].any()) and not frozen[chans].all():
                frozen[chans] = True
                changed = True
    code = torch.full((len(parts), group.size), -1, dtype=torch.long)
    for j, ps in enumerate(parts):
        for k, p in enumerate(ps):
            code[j, p] = k
    constrained = (code >= 0).any(0) & ~frozen
    cells: dict[tuple[int, ...], list[int]] = {}
    for ch in constrained.nonzero().reshape(-1).tolist():
        cells.setdefault(tuple(code[:, ch].tolist()), []).append(ch)
    free = ((code < 0).all(0) & ~frozen).nonzero().reshape(-1)
    floors = [p for conv, ps in group.partitions.items() if conv not in group.members
              for p in ps if p.numel() and not frozen[p].any()]
    return [torch.tensor(v, dtype=torch.long) for v in cells.values()], free, floors


def _keys_and_masks(size: int, num: torch.Tensor, den: torch.Tensor | None, gone,
                    candidates) -> tuple[torch.Tensor, ...]:
    """``(num, den, key, gone, candidates)`` over ``size`` channels or heads, in float64 on the
    CPU: ``den`` 1 when None, ``key = num / den`` (``inf`` where ``den`` is 0), and boolean
    masks of the ``gone`` indices and of the ``candidates`` not gone."""
    num = num.detach().to(torch.float64).cpu()
    den = torch.ones(size, dtype=torch.float64) if den is None else \
        den.detach().to(torch.float64).cpu()
    key = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                      torch.full_like(num, math.inf))
    gone_mask = torch.zeros(size, dtype=torch.bool)
    gone_mask[torch.as_tensor(list(gone), dtype=torch.long)] = True
    cand = torch.zeros(size, dtype=torch.bool)
    cand[torch.as_tensor(candidates, dtype=torch.long).reshape(-1).cpu()] = True
    return num, den, key, gone_mask, cand & ~gone_mask


def removal_items(group, candidates: torch.Tensor, num: torch.Tensor,
                  den: torch.Tensor | None = None, *, gone: Iterable[int] = (),
                  limit: int | None = None) -> list[tuple[list[int], float]]:
    """Sets of group channels that may be removed, cheapest first, each with its key.

    Every union of the returned sets is a selection :meth:`~saliency.UnitGraph.validate_units`
    accepts together with the channels already ``gone`` (masked), and keeps the graph's
    structure: a free channel is a set of one; in a grouped convolution's channels a set is
    one balanced step (:func:`_cells`), steps taken from the lowest keys of each cell up, no
    cell emptied and every conv group of a grouped convolution keeping two input channels;
    every member keeps a channel; at most ``limit`` channels are taken in all. A set's key is
    ``sum(num) / sum(den)`` over its channels (``den`` 1 when None; ``inf`` when
    ``sum(den)`` is 0); a step's key is at least the key of the step before it. Only
    ``candidates`` are taken.
    """
    size = group.size
    num, den, key, gone_mask, cand = _keys_and_masks(size, num, den, gone, candidates)
    cells, free, floors = _cells(group)
    items: list[tuple[list[int], float]] = [([ch], float(key[ch]))
                                            for ch in free[cand[free]].tolist()]
    if cells:
        gcd = math.gcd(*[int(c.numel()) for c in cells])
        step = [int(c.numel()) // gcd for c in cells]
        per_step = torch.zeros(size, dtype=torch.long)  # channels a step takes, per cell
        for c, t in zip(cells, step):
            per_step[c[0]] = t
        room = min([(int((~gone_mask[c]).sum()) - 1) // t for c, t in zip(cells, step)]
                   + [(int((~gone_mask[p]).sum()) - 2) // max(1, int(per_step[p].sum()))
                      for p in floors])
        pools = []
        for c in cells:
            pool = c[cand[c]]
            pools.append(pool[torch.argsort(key[pool], stable=True)])
        prev = -math.inf
        for j in range(max(0, min([room] + [p.numel() // t for p, t in zip(pools, step)]))):
            chans = torch.cat([p[j * t:(j + 1) * t] for p, t in zip(pools, step)])
            d = float(den[chans].sum())
            prev = max(prev, float(num[chans].sum()) / d if d > 0 else math.inf)
            items.append((sorted(chans.tolist()), prev))
    members = [group.channels[m] for m in group.members]
    removed, total, out = gone_mask.clone(), 0, []
    for chans, k in sorted(items, key=lambda item: item[1]):
        if limit is not None and total + len(chans) > limit:
            continue
        trial = removed.clone()
        trial[chans] = True
        if any(bool(trial[mc].all()) for mc in members):
            continue  # every member keeps a channel
        removed, total = trial, total + len(chans)
        out.append((chans, k))
    return out


def head_items(heads, candidates: torch.Tensor, num: torch.Tensor,
               den: torch.Tensor | None = None, *, gone: Iterable[int] = (),
               limit: int | None = None) -> list[tuple[list[int], float]]:
    """Sets of query heads of one attention module that may be removed, cheapest first,
    each with its key (as :func:`removal_items` for groups).

    Without grouped-query constraints (one live query head per key/value head, or a single
    key/value head with live heads) a set is one head (with one query head per key/value
    head, removing it removes its key/value head). Otherwise heads go **evenly within the
    key/value groups**: a set (a step) is the lowest-keyed live head of every group that
    still has live heads, the ``j``-th step taking each group's ``j``-th lowest, so every
    group keeps the same number of query heads and no key/value head is removed while its
    group has more than one query head (counts are rounded down to whole steps). A set's key is
    ``sum(num) / sum(den)`` over its heads (``den`` 1 when None, ``inf`` when its sum is 0),
    a step's key at least the key of the step before it. At least one head stays, at most
    ``limit`` heads are taken in all, and only ``candidates`` (not ``gone``) are taken.
    """
    size = heads.num_heads
    num, den, key, gone_mask, cand = _keys_and_masks(size, num, den, gone, candidates)
    limit = size - 1 if limit is None else min(limit, size - 1 - int(gone_mask.sum()))
    items: list[tuple[list[int], float]] = []
    groups = torch.arange(size).reshape(heads.num_kv_heads, heads.group)
    live = [g for g in groups if bool((~gone_mask[g]).any())]
    counts = [int((~gone_mask[g]).sum()) for g in live]
    if len(live) > 1 and max(counts) > 1:  # grouped: one head of every live group per step
        room = min(counts) - 1
        pools = [g[cand[g]][torch.argsort(key[g[cand[g]]], stable=True)] for g in live]
        prev = -math.inf
        for j in range(max(0, min([room] + [p.numel() for p in pools]))):
            chans = torch.stack([p[j] for p in pools])
            d = float(den[chans].sum())
            prev = max(prev, float(num[chans].sum()) / d if d > 0 else math.inf)
            items.append((sorted(chans.tolist()), prev))
    else:
        idx = cand.nonzero().reshape(-1)
        items = [([int(i)], float(key[i])) for i in idx[torch.argsort(key[idx], stable=True)]]
    out, total = [], 0
    for chans, k in items:
        if total + len(chans) > limit:
            continue
        total += len(chans)
        out.append((chans, k))
    return out


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
    units of each group's width at the first round are to be gone:
    ``floor(f * n_g)`` per group (``scope="layer"``, the thesis's setting,
    which takes the 20,522-parameter CNN to 4,019 on Table 4.2) or
    ``floor(f * sum n_g)`` over all groups (``scope="global"``), never leaving
    a group fewer than ``min_units``. The lowest-scoring live units are
    replaced by a constant folded into the next layer's bias (``"mean"``:
    their mean output on ``data``, the replacement MRP measures; ``"zero"``;
    None: no fold), then removed physically (``remove=True``:
    :func:`~pruners.remove_units`, which also slices the optimizer state) or
    masked (:func:`~pruners.mask_units`); both leave the same function.

    **Groups.** Units are the channels of the groups of the graph of units
    (:func:`pruners.trace`): on a chain a group is one layer; the layers whose
    outputs a residual add sums form one group, whose channel ``i`` is channel
    ``i`` of every member. Scores come one per group channel, keyed by group
    name, and each group is ranked once. A selection always satisfies the
    graph: every member keeps a channel, a grouped convolution loses the same
    number of channels from each of its conv groups (its channels go in
    balanced steps, one or more channels per conv group; the count is rounded
    down to whole steps), and ``min_units`` holds. Reports are keyed by group.

    **The output layer is never pruned.** Its units are the model's outputs (the classes
    of a classifier), so the graph of units makes the groups whose channels reach the
    model's output not prunable: they are not in the default selection, naming one in
    ``layers`` raises ValueError saying why, and every report lists the output layers
    (:func:`output_layers`) in :attr:`RoundReport.left_out`. (Unlike
    :class:`ParameterPruner` there is no ``prune_output``: removing an output unit would
    change what the model outputs.)

    **Attention heads.** The heads of every attention module with prunable heads
    (:attr:`saliency.UnitGraph.heads`; ``layers`` may name attention modules) are units too,
    scored one per head under the module's name, counted in the schedule like a group's
    units (``floor(f * H_0)`` per module in layer scope, ``H_0`` its heads at the first
    round; ranked with every other unit in global scope) and removed with the output
    projection's bias fold. A module never loses its last head (``min_units`` holds). With
    grouped-query attention heads go **evenly within the key/value groups**
    (:func:`head_items`): a removal step takes the lowest-scoring live query head of every
    key/value group, so the counts are rounded down to whole multiples of the number of
    key/value groups, every group keeps the same number of query heads and no key/value
    head is removed while its group has two or more live query heads; once each group has
    one, heads go one at a time, each taking its key/value head. With ``cost=`` a head's
    cost is :func:`head_costs` (its query rows, output columns, attention products, and its
    key and value rows when it is the only query head of its key/value head). Masked heads
    (``remove=False``) are masked again with each round's new ones (a no-op on them), so
    the grouped-query check sees the heads that are left.

    Raw scores of different groups are not comparable; global selection
    divides each group's scores by a norm of its live scores first
    (``normalize="l2"``, as Molchanov et al. 2017 do for Taylor scores;
    ``"l1"``, ``"mean"``, ``"max"`` or None).

    **Cost weighting.** With ``cost="macs"`` (or ``"params"``) a unit is
    ranked by its score per unit of what its removal frees::

        key(i) = (s_i / z_g) / cost(i)

    ``s_i`` the score of group channel ``i``, ``z_g`` the group's norm
    (``normalize``; 1 in layer scope) and ``cost(i)`` the multiply-accumulates
    per sample (parameters) that removing channel ``i`` alone frees
    (:func:`unit_costs`: member rows, per-channel modules and consumer
    columns, MACs with each layer's output positions). A residual-stream
    channel frees far more than an inner one, so it goes sooner than its score
    alone would say. A balanced step of several channels has the key
    ``sum (s_i / z_g) / sum cost(i)``. The schedule still counts units.

    Args:
        scorer: a unit-wise scorer or its name (``"mrs"`` for the thesis).
        schedule: as :class:`ParameterPruner`.
        replacement: ``"mean"``, ``"zero"`` or None (see
            :func:`~pruners.remove_units`).
        remove: remove units physically (True) or mask them.
        min_units: fewest units a group keeps (>= 1: a layer is never emptied).
        scope: ``"layer"`` (per group) or ``"global"``.
        normalize: per-group score normalization for global selection.
        cost: None, ``"macs"`` or ``"params"``: divide each (normalized) score
            by what removing the unit frees.
        layers: groups to prune, by group name or any member's name, and attention
            modules whose heads to prune (default: every prunable group and every
            attention module with prunable heads).
        exclude: producers left out of the graph (see :func:`~pruners.trace`).
        on_unsupported: ``"raise"`` (default): a model with layers the graph of units cannot
            represent is refused at :meth:`step`, every such layer listed at once (as
            :func:`~pruners.trace` does); ``"exclude"``: those layers are left out, named with
            the reason in :attr:`unsupported` (warned once) and in every round's
            :attr:`RoundReport.left_out`.
        loss_fn: as :class:`ParameterPruner`.
        example_input: one input batch, to trace the model and for MAC counts (default:
            the first batch of the data given to :meth:`step`).

    Raises:
        ValueError: no schedule, or an invalid ``replacement``, ``min_units``, ``scope``,
            ``normalize``, ``cost`` or ``on_unsupported``; at :meth:`step`, see there.
        TypeError: a scorer that is not unit-wise, a bad schedule.
    """

    granularity = "unit"

    def __init__(self, scorer: Scorer | str = "mrs", schedule: ScheduleLike | None = None, *,
                 replacement: str | None = "mean",
                 remove: bool = True, min_units: int = 1, scope: str = "layer",
                 normalize: str | None = "l2", cost: str | None = None,
                 layers: Iterable[str] | None = None,
                 exclude: Iterable[str] = (), on_unsupported: str = "raise",
                 loss_fn: LossFn = F.cross_entropy,
                 example_input: torch.Tensor | None = None):
        if schedule is None:
            raise ValueError("a schedule is needed, e.g. pruners.schedules.THESIS_UNITS")
        if on_unsupported not in ("raise", "exclude"):
            raise ValueError(f"on_unsupported must be 'raise' or 'exclude', got "
                             f"{on_unsupported!r}")
        self.on_unsupported = on_unsupported
        #: layers the graph of units cannot represent, left out with ``on_unsupported=
        #: "exclude"``: ``{layer: reason}`` (filled at the first step)
        self.unsupported: dict[str, str] = {}
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
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {list(COSTS)}, got {cost!r}")
        self.replacement, self.remove, self.min_units = replacement, bool(remove), min_units
        self.scope, self.normalize, self.cost = scope, normalize, cost
        self.layers = None if layers is None else list(layers)
        self.exclude = tuple(exclude)
        self.initial: dict[str, int] = {}  # width of each group at the first round
        self.masked: dict[str, list[int]] = {}  # masked group channels (remove=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial": dict(self.initial),
                "masked": {k: list(v) for k, v in self.masked.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial = {k: int(v) for k, v in state.get("initial", {}).items()}
        self.masked = {k: [int(i) for i in v] for k, v in state.get("masked", {}).items()}

    def _layers(self, model, example) -> tuple[Any, list[str]]:
        """The graph, and the groups and attention modules (heads) this pruner prunes; with
        ``on_unsupported="exclude"``, the layers the graph cannot represent join
        :attr:`exclude` (named in :attr:`unsupported`, warned about once)."""
        graph = trace(model, example, exclude=self.exclude, on_unsupported=self.on_unsupported)
        found = {layer: f"{u.node} {u.reason}" for u in graph.unsupported for layer in u.layers
                 if layer not in self.exclude}
        if found:
            new = {k: v for k, v in found.items() if k not in self.unsupported}
            if new:
                warnings.warn("UnitPruner leaves out the layers the graph of units cannot "
                              "represent: " + "; ".join(f"{k}: {v}" for k, v in new.items()),
                              stacklevel=3)
            exclude = tuple(dict.fromkeys([*self.exclude, *found]))
            graph = trace(model, example, exclude=exclude)
            self.unsupported.update(found)
            self.exclude = exclude
        heads = head_names(graph, self.layers)
        groups = None if self.layers is None else [n for n in self.layers if n not in heads]
        names = group_names(model, graph, groups) if groups is None or groups else []
        return graph, names + heads

    def step(self, t: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             data: Iterable | None = None) -> RoundReport | None:
        """Prune to ``schedule(t)`` if not there yet; return the round's report or None.

        ``optimizer`` (physical removal): its per-parameter state is sliced
        with the parameters, so training continues with the same optimizer.
        ``data``: scoring batches, also used for the mean replacement and
        the report's losses.

        Returns:
            The round's :class:`RoundReport` (also appended to :attr:`history`; its
            ``left_out`` names the output layers), or None when the model is already
            pruned to ``schedule(t)``.

        Raises:
            ValueError: neither ``data`` nor the constructor's ``example_input`` to trace
                the model with; the model is on the ``meta`` device; ``layers`` names an
                unknown or non-prunable layer (the output layer: the message says so); the
                scorer or the mean replacement needs data and none is given; NaN or
                misshaped scores.
            TypeError: the data's (or ``example_input``'s) floating dtype is not the
                parameters' (``model.double()`` or ``x.float()``).
        """
        target = _target(self.schedule, t)
        if self.reached is not None and target <= self.reached:
            return None
        data = data_list(data)
        example = example_of(self.example_input, data)
        if example is None:
            raise ValueError("UnitPruner.step needs data= (scoring batches) to trace the model, "
                             "or an input batch given to the constructor: "
                             "UnitPruner(..., example_input=x)")
        check_materialized(model)
        check_dtype(model, example, "the data" if self.example_input is None else
                    "example_input")
        graph, layers = self._layers(model, example)
        width = {n: graph.heads[n].num_heads if n in graph.heads else graph.groups[n].size
                 for n in layers}
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
        scored = [n for n in layers if cap[n] > 0]  # a module down to one head is not scored
        scorer.layers, scorer.exclude, scorer.example_input = scored, self.exclude, example
        scores = scorer.score(model, data, self.loss_fn)
        cand: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in scored:
            s = scores.get(n)
            if s is None or s.shape != (width[n],):
                raise ValueError(f"{type(self.scorer).__name__} gave no scores of shape "
                                 f"({width[n]},) for layer {n!r}")
            s = s.detach().to(torch.float64).cpu()
            if torch.isnan(s).any():
                bad = torch.nonzero(torch.isnan(s)).flatten().tolist()
                raise ValueError(f"{type(self.scorer).__name__} gave NaN scores for layer "
                                 f"{n!r}, units {bad[:10]}")
            alive = torch.ones(width[n], dtype=torch.bool)
            alive[list(self.masked.get(n, ()))] = False
            idx = torch.nonzero(alive).flatten()
            cand[n] = (idx, s)
        costs = {}
        if self.cost is not None:
            heads = [n for n in scored if n in graph.heads]
            costs = {n: group_costs(model, graph, n, self.cost) for n in scored
                     if n not in graph.heads}
            costs.update(head_costs(model, graph, heads, self.cost, example) if heads else {})
        chosen = self._select(graph, scored, cand, need, cap, costs)
        units = {n: sorted(v) for n, v in chosen.items() if v}
        if not self.remove:  # masked heads are re-masked with the new ones (a no-op on
            # them: their output columns or value rows are masked, so their fold is 0), so
            # that the grouped-query check sees the heads that are left
            units.update({n: sorted(set(v) | set(self.masked.get(n, ())))
                          for n, v in units.items() if n in graph.heads})
        loss_before = mean_loss(model, data, self.loss_fn) if data is not None else None
        params_before, macs_before = self._sizes(model, example)
        left_out = [n for n in output_layers(model, example) if n not in layers]
        left_out += [n for n in self.unsupported if n not in left_out]
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
                             loss_before=loss_before, loss_after=loss_after, removal=removal,
                             left_out=left_out, unsupported=list(self.unsupported))
        self.reached = target
        self.history.append(report)
        return report

    def _select(self, graph, layers, cand, need, cap, costs) -> dict[str, list[int]]:
        """The units to remove: per group, the items of :func:`removal_items` in key order
        while they fit the count asked (per group, or in all for global scope)."""
        norm = _NORMALIZE[self.normalize if self.scope == "global" else None]
        pool = []
        for n in layers:
            idx, s = cand[n]
            live = s[idx]
            z = norm(live) if live.numel() else live.new_tensor(1.0)
            z = z if float(z) > 0 else live.new_tensor(1.0)
            if n in graph.heads:
                items = head_items(graph.heads[n], idx, s / z, costs.get(n),
                                   gone=self.masked.get(n, ()), limit=cap[n])
            else:
                items = removal_items(graph.groups[n], idx, s / z, costs.get(n),
                                      gone=self.masked.get(n, ()), limit=cap[n])
            pool.append([(k, n, chans) for chans, k in items])
        out: dict[str, list[int]] = {n: [] for n in layers}
        if self.scope == "layer":
            for n, items in zip(layers, pool):
                left = max(0, need[n])
                for _, _, chans in items:
                    if len(chans) <= left:
                        out[n] += chans
                        left -= len(chans)
            return out
        flat = [item for items in pool for item in items]
        left = need[None]
        for i in sorted(range(len(flat)), key=lambda i: flat[i][0]):
            _, n, chans = flat[i]
            if len(chans) <= left:
                out[n] += chans
                left -= len(chans)
        return out
