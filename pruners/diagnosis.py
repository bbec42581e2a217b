"""Diagnose a trained model on data: its dead, dormant and frozen units, what removing them saves.

:func:`diagnose` is the Python side of ``python -m experiments diagnose`` (which is a thin
command line over it): :func:`saliency.find_dead_units` flags the units by the criteria of U.
Evci, *Detecting Dead Weights and Units in Neural Networks* (MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068, Sec. 3.2), ReDo and APoZ; the units flagged by the chosen
criteria (default: the exactly replaceable ones, :data:`saliency.EXACT_CRITERIA`) are removed
from a copy with mean replacement and bias propagation (:func:`pruners.remove_units`), and the
parameters and MACs saved, the largest change of the outputs and the loss change on the data are
measured. The result, a :class:`Diagnosis`, prints as a table, turns into plain JSON values,
and draws its figures (:meth:`Diagnosis.figures`).

Any model and data work: ``data`` is anything :func:`batches_of` accepts (batches of ``(inputs,
targets)``, a ``Dataset``, a ``DataLoader``, tensors, batches that are dicts). Data without
targets gives every criterion but those that need the loss's gradient
(:data:`saliency.dead_units.TARGET_CRITERIA`), listed as skipped. Layers whose channels the
graph of units cannot represent are left out (``trace(..., on_unsupported="exclude")``) and
named, with the reason, in :attr:`Diagnosis.left_out`.

Examples:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> with torch.no_grad():
    ...     net[2].weight[:, 1] = 0           # unit 1 of layer "0" has no outgoing weight
    >>> d = diagnose(net, (torch.randn(64, 4), torch.randint(0, 3, (64,))))
    >>> d.plan
    {'0': [1]}
    >>> d.removal["params_before"] - d.removal["params_after"]
    8
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from saliency import EXACT_CRITERIA, DeadUnitReport, UnitGraph, find_dead_units, trace
from saliency.base import check_dtype
from saliency.progress import progress

from .metrics import count_macs, count_params
from .surgery import remove_units

__all__ = ["Diagnosis", "diagnose", "removal_plan", "batches_of", "INPUT_KEYS", "TARGET_KEYS"]

#: keys of a dict batch (or of a tensor file) read as the inputs, in the order tried
INPUT_KEYS = ("inputs", "input", "x", "input_ids", "images", "image", "pixel_values", "data")
#: keys read as the targets, in the order tried
TARGET_KEYS = ("targets", "target", "y", "labels", "label")


# --------------------------------------------------------------------------- data


def batches_of(data: Any, *, batch_size: int = 500, samples: int | None = None
               ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``data`` as a list of ``(inputs, targets)`` batches (targets None when it has none).

    Accepted: a tensor of inputs; a pair ``(inputs, targets)`` of tensors (a tuple; or a list
    whose second tensor has fewer dimensions than the first: a list of two batches of inputs
    is two batches); a dict of tensors
    (inputs and targets under :data:`INPUT_KEYS` / :data:`TARGET_KEYS`); a
    ``torch.utils.data.Dataset`` of samples (tensors, pairs or dicts); a ``DataLoader`` or any
    iterable of batches (tensors, pairs, dicts). Tensors and datasets are cut into batches of
    ``batch_size``; only the first ``samples`` samples are kept (None: all).

    Raises:
        TypeError: a form it does not know, with the forms it knows.
        ValueError: no inputs, inputs and targets of different lengths, or empty data.
    """
    if batch_size < 1 or (samples is not None and samples < 1):
        raise ValueError("batch_size and samples must be >= 1")
    x, y = _whole(data)
    if x is not None:
        return _cut(x, y, batch_size, samples)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and \
            not isinstance(data, torch.utils.data.IterableDataset):
        n = len(data) if samples is None else min(samples, len(data))
        if n == 0:
            raise ValueError("the data is empty: the Dataset has no sample")
        items = [_pair(data[i], f"sample {i}") for i in range(n)]
        xs = torch.stack([a for a, _ in items])
        ys = None if items[0][1] is None else torch.stack(
            [torch.as_tensor(b) for _, b in items])
        return _cut(xs, ys, batch_size, None)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        out, seen = [], 0
        for i, batch in enumerate(data):
            bx, by = _pair(batch, f"batch {i}")
            if samples is not None and seen + len(bx) > samples:
                bx, by = bx[:samples - seen], None if by is None else by[:samples - seen]
            out.append((bx, by))
            seen += len(bx)
            if samples is not None and seen >= samples:
                break
        if not out:
            raise ValueError("the data is empty: it yielded no batch")
        return out
    raise TypeError(f"data is a {type(data).__name__}; expected a tensor of inputs, a pair "
                    "(inputs, targets), a dict of tensors, a Dataset, a DataLoader or an "
                    "iterable of batches")


def _whole(data: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(inputs, targets)`` of data given whole (a tensor, a pair of tensors, a dict)."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            isinstance(data[0], torch.Tensor) and \
            (data[1] is None or isinstance(data[1], torch.Tensor)) and \
            (isinstance(data, tuple) or data[1] is None or data[1].dim() < data[0].dim()):
        return data[0], data[1]
    if isinstance(data, Mapping):
        return _from_dict(data, "the data")
    return None, None


def _from_dict(d: Mapping, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = next((d[k] for k in INPUT_KEYS if k in d), None)
    if x is None:
        raise ValueError(f"{what} is a dict with keys {sorted(map(str, d))[:8]} but no inputs "
                         f"under {list(INPUT_KEYS)}")
    y = next((d[k] for k in TARGET_KEYS if k in d), None)
    return torch.as_tensor(x), None if y is None else torch.as_tensor(y)


def _pair(item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, Mapping):
        return _from_dict(item, what)
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        y = item[1] if len(item) > 1 else None
        return item[0], None if y is None else torch.as_tensor(y)
    raise TypeError(f"{what} is a {type(item).__name__}; expected a tensor, a pair "
                    "(inputs, targets) or a dict of tensors")


def _cut(x: torch.Tensor, y: torch.Tensor | None, batch_size: int, samples: int | None):
    if y is not None and len(y) != len(x):
        raise ValueError(f"the data has {len(x)} inputs but {len(y)} targets")
    if samples is not None:
        x, y = x[:samples], None if y is None else y[:samples]
    if not len(x):
        raise ValueError("the data is empty")
    return [(x[i:i + batch_size], None if y is None else y[i:i + batch_size])
            for i in range(0, len(x), batch_size)]


# --------------------------------------------------------------------------- removal plan


def removal_plan(report: DeadUnitReport, criteria: Iterable[str] = EXACT_CRITERIA,
                 graph: UnitGraph | None = None) -> tuple[dict, dict]:
    """``({group: indices to remove}, {group: flagged indices kept})``: the units flagged by
    ``criteria``. A group (a layer on a chain) whose units are all flagged keeps its first;
    with the model's ``graph`` (:func:`saliency.trace`), every member of a group keeps a
    channel and a grouped convolution loses the same number of channels from each of its
    groups (the lowest flagged indices are removed, the others kept)."""
    dead = report.dead(list(criteria))
    plan, kept = {}, {}
    for layer, idx in dead.items():
        keep: list[int] = []
        if idx.numel() >= report.num_units[layer]:
            keep.append(int(idx[0]))
        group = graph.groups.get(layer) if graph is not None else None
        if group is not None:
            keep = _group_keeps(group, idx.tolist(), keep)
        if keep:
            kept[layer] = sorted(keep)
        rest = idx[~torch.isin(idx, torch.tensor(keep, dtype=idx.dtype))]
        if rest.numel():
            plan[layer] = rest
    return plan, kept


def _group_keeps(group, flagged: list[int], keep: list[int]) -> list[int]:
    """``keep`` grown until removing the rest of ``flagged`` leaves every member of ``group`` a
    channel and takes the same count from every conv group of its grouped convolutions."""
    keep = list(keep)
    while True:
        removed = set(flagged) - set(keep)
        grown = False
        for m in group.members:
            own = set(group.channels[m].tolist())
            if own <= removed:
                keep.append(min(own))
                grown = True
                break
        for parts in group.partitions.values():
            if grown:
                break
            sets = [set(p.tolist()) for p in parts]
            target = min(min(len(p & removed) for p in sets), min(len(p) for p in sets) - 1)
            for p in sets:
                extra = sorted(p & removed)[target:]
                if extra:
                    keep += extra
                    grown = True
        if not grown:
            return keep


# --------------------------------------------------------------------------- the diagnosis


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes:
        report: the :class:`saliency.DeadUnitReport` (per group, per unit: statistics, flags).
        criteria: the criteria whose units are removed.
        plan: ``{group: unit indices}`` removed (:func:`removal_plan`).
        kept: ``{group: unit indices}`` flagged but kept (a layer keeps a unit, every member
            of a group a channel, a grouped convolution as many channels per conv group).
        per_layer: per group: ``removed``, ``params_saved`` and ``macs_saved`` (removing that
            group's units alone) and its ``members``.
        removal: removing the whole plan at once: parameters and MACs before and after, the
            largest output deviation (absolute and relative to the largest output), the mean
            loss before and after (NaN without targets), the removal's warnings.
        params, macs: the model's size (MACs per sample of the example input).
        left_out: ``{layer: reason}``: layers whose units the graph cannot represent, left out
            of the diagnosis.
        smaller: the model with the plan removed (None when nothing is removed).
    """

    report: DeadUnitReport
    criteria: list[str]
    plan: dict[str, list[int]]
    kept: dict[str, list[int]]
    per_layer: dict[str, dict[str, Any]]
    removal: dict[str, Any]
    params: int
    macs: int
    left_out: dict[str, str] = field(default_factory=dict)
    smaller: nn.Module | None = field(default=None, repr=False)

    def table(self) -> str:
        """Per group: units, units flagged by each criterion, removed, parameters and MACs
        saved; a total row; the members of every group of several layers."""
        report = self.report
        crit = report.criteria
        cols = ["units", *crit, "removed", "params saved", "MACs saved"]
        names = {c: c.replace("constant_activation", "const_act").replace("zero_outgoing",
                                                                           "zero_out")
                 for c in cols}
        width = max(len(n) for n in report.layers + ["layer", "total"]) + 2
        widths = {c: max(len(names[c]), 6) + 2 for c in cols}
        lines = [f"{'layer':<{width}}" + "".join(f"{names[c]:>{widths[c]}}" for c in cols)]
        counts = report.counts()
        for layer in report.layers:
            pl = self.per_layer[layer]
            vals = {"units": report.num_units[layer], **counts[layer], "removed": pl["removed"],
                    "params saved": f"{pl['params_saved']:,}",
                    "MACs saved": f"{pl['macs_saved']:,}"}
            lines.append(f"{layer:<{width}}" + "".join(f"{vals[c]:>{widths[c]}}" for c in cols))
        rem = self.removal
        tot = {"units": sum(report.num_units.values()),
               **{c: sum(counts[layer][c] for layer in report.layers) for c in crit},
               "removed": rem["removed"],
               "params saved": f"{rem['params_before'] - rem['params_after']:,}",
               "MACs saved": f"{rem['macs_before'] - rem['macs_after']:,}"}
        lines.append(f"{'total':<{width}}" + "".join(f"{tot[c]:>{widths[c]}}" for c in cols))
        for layer in report.layers:
            members = report.members.get(layer, [layer])
            if len(members) > 1:
                lines.append(f"group {layer}: {len(members)} layers whose channels are removed "
                             f"together ({', '.join(members)})")
        if report.skipped:
            lines.append("not computed (the data has no targets): " + ", ".join(report.skipped))
        for layer, why in self.left_out.items():
            lines.append(f"left out: {layer}: {why}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """Everything but the smaller model, as plain JSON values (the report's
        :meth:`~saliency.DeadUnitReport.to_dict`, with each layer row holding its savings)."""
        out = {**self.report.to_dict(), "savings": self.per_layer,
               "removal_criteria": list(self.criteria), "params": self.params,
               "macs": self.macs, "removal": self.removal, "left_out": dict(self.left_out)}
        for row in out["layers"]:
            row.update(self.per_layer[row["layer"]])
        return out

    def figures(self, title: str | None = None) -> dict[str, Any]:
        """``{"statistics": Figure, "criteria": Figure}``: the unit statistics the criteria
        read, per layer, and the units by criteria, one panel per layer
        (:mod:`saliency.dead_unit_plots`); ``title`` names the model and data."""
        from saliency.dead_unit_plots import plot_criteria, plot_unit_statistics
        return {"statistics": plot_unit_statistics(self.report, title=title),
                "criteria": plot_criteria(self.report, title=title)}


def _outputs(model: nn.Module, data) -> list[torch.Tensor]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return [model(x) for x, _ in data]
    finally:
        for m, flag in flags:
            m.training = flag


def _mean_loss(outs, data, loss_fn) -> float:
    if data[0][1] is None:
        return math.nan
    total = sum(float(loss_fn(o, y, reduction="sum")) for o, (_, y) in zip(outs, data))
    return total / sum(int(x.shape[0]) for x, _ in data)


def _remove(model, plan, data, example):
    """Remove ``plan`` from a copy; ``(copy, RemovalReport, warnings)``. The means are taken on
    the inputs (targets are not needed)."""
    net = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = remove_units(net, plan, replacement="mean", data=[(x, y) for x, y in data],
                           example_input=example)
    return net, rep, [str(w.message) for w in caught]


def _default_loss(data) -> Callable:
    """Cross-entropy for integer targets, the mean squared error for float targets."""
    y = data[0][1]
    return F.mse_loss if y is not None and y.is_floating_point() else F.cross_entropy


def diagnose(model: nn.Module, data: Any, *, loss_fn: Callable | None = None,
             thresholds: Any = None, exact_mrp: bool = False,
             criteria: Sequence[str] | str = EXACT_CRITERIA, batch_size: int = 500,
             samples: int | None = None, exclude: Iterable[str] = ()) -> Diagnosis:
    """Flag the dead, dormant and frozen units of ``model`` on ``data``, remove those flagged
    by ``criteria`` from a copy, and measure what that saves and changes.

    Args:
        model: the model (never changed).
        data: anything :func:`batches_of` accepts; targets optional.
        loss_fn: ``loss_fn(output, target, reduction=...)`` (default: cross-entropy for
            integer targets, mean squared error for float ones).
        thresholds: a :class:`saliency.DeadUnitThresholds` or a dict of its fields.
        exact_mrp: also compute exact MRP and its ``low_mrp`` criterion (needs targets).
        criteria: the criteria whose units are removed (default: the exactly replaceable
            ones, :data:`saliency.EXACT_CRITERIA`).
        batch_size: the batch size :func:`batches_of` cuts ``data`` into.
        samples: the samples of ``data`` kept (None: all).
        exclude: layers to leave out (see :func:`saliency.trace`).

    Returns:
        A :class:`Diagnosis`.

    Raises:
        ValueError: an unknown criterion (with the known ones and why: ``low_mrp`` without
            exact MRP, a criterion that needs targets on data without them), checked before
            any work, or data :func:`batches_of` refuses.
        TypeError: floating inputs of another dtype than the model's parameters.
    """
    data = batches_of(data, batch_size=batch_size, samples=samples)
    criteria = [criteria] if isinstance(criteria, str) else list(criteria)
    _check_criteria(criteria, thresholds, exact_mrp, data[0][1] is not None)
    check_dtype(model, data[0][0], "the data")
    loss_fn = loss_fn or _default_loss(data)
    example = data[0][0][:1]
    graph = trace(model, example, exclude=exclude, on_unsupported="exclude")
    left_out = {layer: f"{u.node} {u.reason}" for u in graph.unsupported for layer in u.layers}
    report = find_dead_units(model, data, loss_fn=loss_fn, thresholds=thresholds,
                             exact_mrp=exact_mrp, example_input=example,
                             exclude=[*exclude, *left_out])
    plan, kept = removal_plan(report, criteria, graph)
    params, macs = count_params(model), count_macs(model, example)
    per_layer = _per_layer(model, report, plan, kept, data, example)
    before = _outputs(model, data)
    loss_before = _mean_loss(before, data, loss_fn)
    removal: dict[str, Any] = {"units": {}, "removed": 0, "params_before": params,
                               "params_after": params, "macs_before": macs, "macs_after": macs,
                               "max_output_deviation": 0.0, "max_abs_output": None,
                               "max_output_deviation_relative": 0.0,
                               "loss_before": loss_before, "loss_after": loss_before,
                               "loss_change": 0.0, "warnings": []}
    smaller = None
    if plan:
        smaller, rep, warned = _remove(model, plan, data, example)
        after = _outputs(smaller, data)
        dev = max(float((a - b).abs().max()) for a, b in zip(after, before))
        scale = max(float(b.abs().max()) for b in before)
        loss_after = _mean_loss(after, data, loss_fn)
        removal.update({
            "units": {k: v.tolist() for k, v in plan.items()},
            "removed": int(sum(v.numel() for v in plan.values())),
            "params_after": rep.params_after, "macs_after": rep.macs_after,
            "max_output_deviation": dev, "max_abs_output": scale,
            "max_output_deviation_relative": dev / scale if scale > 0 else 0.0,
            "loss_after": loss_after, "loss_change": loss_after - loss_before,
            "warnings": warned})
    return Diagnosis(report=report, criteria=criteria,
                     plan={k: v.tolist() for k, v in plan.items()}, kept=kept,
                     per_layer=per_layer, removal=removal, params=params, macs=macs,
                     left_out=left_out, smaller=smaller)


def _check_criteria(criteria: list[str], thresholds, exact_mrp: bool, targets: bool) -> None:
    """Refuse criteria the diagnosis will not have, before any work, saying why."""
    from saliency.dead_units import TARGET_CRITERIA, DeadUnitThresholds, criterion_names
    th = thresholds if isinstance(thresholds, DeadUnitThresholds) else \
        DeadUnitThresholds.from_mapping(thresholds or {})
    if not criteria:
        raise ValueError(f"no criteria given; known: {criterion_names(th, exact_mrp, targets)}")
    known = criterion_names(th, exact_mrp, targets)
    bad = [c for c in criteria if c not in known]
    if not bad:
        return
    why = []
    if "low_mrp" in bad and not exact_mrp:
        why.append("low_mrp needs exact MRP (exact_mrp=True, --exact-mrp)")
    if not targets and set(bad) & set(TARGET_CRITERIA):
        why.append(f"{', '.join(c for c in bad if c in TARGET_CRITERIA)} need targets, which "
                   "the data does not have")
    raise ValueError(f"unknown criteria {bad}" + (f" ({'; '.join(why)})" if why else "")
                     + f"; known: {known}")


def _per_layer(model, report, plan, kept, data, example) -> dict[str, dict[str, Any]]:
    """Per group, what removing its planned units alone saves."""
    per_layer: dict[str, dict[str, Any]] = {}
    for layer in progress(report.layers, "diagnose: removals", unit="layer"):
        if layer in plan:
            _, rep, _ = _remove(model, {layer: plan[layer]}, data, example)
            per_layer[layer] = {"removed": int(plan[layer].numel()),
                                "params_saved": rep.params_before - rep.params_after,
                                "macs_saved": rep.macs_before - rep.macs_after}
        else:
            per_layer[layer] = {"removed": 0, "params_saved": 0, "macs_saved": 0}
        per_layer[layer]["members"] = list(report.members.get(layer, [layer]))
        if layer in kept:
            per_layer[layer]["kept_flagged"] = kept[layer]
    return per_layer
