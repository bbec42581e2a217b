"""Exact unit removal (physical or masked) with bias propagation.

:func:`remove_units` shrinks a live model in place: the producer's weight rows
and bias, the per-channel modules between it and its consumers (BatchNorm
weight, bias, running statistics), and the consumers' weight columns, input
channels or flattened column blocks. With a replacement constant, the value
the consumers would have received from a removed unit is folded into their
biases (bias propagation: U. Evci, *Detecting Dead Weights and Units in
Neural Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068 --
Evci 2018 -- eq. 1.5-1.6), so the model computes exactly what it computed
with those units held constant. Optimizer state is sliced with the
parameters, so training goes on with the same optimizer object (the "neural
garbage collection" of *ShrinkNets: Learning Network Size while Training*,
2018 draft, public as G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska,
S. Madden, *Smallify: Learning Network Size while Training*,
https://arxiv.org/abs/1806.03723, Sec. 4.2).

:func:`mask_units` applies the same selection and the same bias fold as
masks through :mod:`torch.nn.utils.prune`: shapes are unchanged, and the
masked model computes what the removed model computes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Union

import torch
import torch.nn as nn
from torch.nn.utils import prune

from saliency.graph import UnitGraph, default_example_input, trace
from saliency.layers import CHANNEL_MODULES, PRODUCERS, effective_tensor, eval_mode
from saliency.replacement import fold_deltas, iter_inputs, replacement_hooks, unit_means

from .metrics import count_macs, count_params
from .optim_state import Journal, check_optimizer_state, slice_param

__all__ = ["RemovalReport", "InexactReplacementWarning", "remove_units", "mask_units"]

Replacement = Union[None, str, float, torch.Tensor, Mapping[str, Union[float, torch.Tensor]]]


class InexactReplacementWarning(UserWarning):
    """A folded constant is not exact everywhere (zero-padded conv consumer)."""


@dataclass
class RemovalReport:
    """What :func:`remove_units` or :func:`mask_units` did.

    Attributes:
        removed: units removed (or masked) per layer.
        remaining: units left per touched layer.
        indices: the removed indices per layer, sorted.
        constants: per layer, the replacement value of each removed unit (the
            value its producer module was taken to output), aligned with
            ``indices``; empty without replacement.
        params_before, params_after: parameter counts (masked entries not
            counted).
        macs_before, macs_after: multiply-accumulates per sample for the
            example input (dense: masking does not lower them).
        inexact: consumers whose bias fold is not exact at the borders.
        max_deviation: maximum absolute output change on ``data`` against the
            model with the units held at their constants, when measured.
        masked: True for :func:`mask_units`.
    """

    removed: dict[str, int]
    remaining: dict[str, int]
    indices: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    inexact: list[str] = field(default_factory=list)
    max_deviation: float | None = None
    masked: bool = False

    def __str__(self) -> str:
        verb = "masked" if self.masked else "removed"
        lines = [f"{'layer':<24}{verb:>10}{'remaining':>11}"]
        for name in self.removed:
            lines.append(f"{name:<24}{self.removed[name]:>10}{self.remaining[name]:>11}")
        lines.append(f"parameters {self.params_before:,} -> {self.params_after:,}; "
                     f"MACs/sample {self.macs_before:,} -> {self.macs_after:,}")
        if self.max_deviation is not None:
            lines.append(f"max output deviation on data: {self.max_deviation:.3g}")
        return "\n".join(lines)


def remove_units(model: nn.Module, units: Mapping[str, Iterable[int]], *,
                 replacement: Replacement = None, data: Iterable | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 example_input: torch.Tensor | None = None, exclude: Iterable[str] = (),
                 min_units: int = 1) -> RemovalReport:
    """Physically remove units from ``model``, in place, exactly.

    For producer ``l`` and removed unit ``i`` with replacement constant
    ``c_i`` (the value the producer outputs for that unit), every consumer
    ``j`` gets

        b_j <- b_j + sum_i sum_{k in cols(i)} W_{j,k} g(c_i)

    (eq. 1.6 of Evci 2018), where ``g`` is the per-channel path (BatchNorm in
    eval mode, activation; pooling keeps a constant) and ``cols(i)`` is the
    consumer's input column, input channel, or block of H*W columns after a
    flatten. A consumer without bias gets one.

    Args:
        model: the model, changed in place.
        units: ``{producer layer name: indices to remove}``.
        replacement: ``None`` drops the units (consumers see 0 where the unit
            was); ``"zero"`` holds the producer's output at 0 (its BatchNorm
            shift and activation still reach the consumer); ``"mean"`` holds
            it at each unit's mean output over ``data`` (mean replacement);
            a float, a tensor (one layer) or ``{layer: tensor or float}``
            gives the constants, aligned with the indices as given.
        data: iterable of ``(inputs, targets)`` batches: needed for
            ``"mean"``; also used to measure the output deviation of an
            inexact fold (zero-padded conv consumer) and to infer the input
            shape.
        optimizer: if given, every per-parameter state tensor shaped like a
            sliced parameter (momentum, ``exp_avg``, ``exp_avg_sq``, ...) is
            sliced the same way; scalar state such as ``step`` is kept. A
            created bias joins the param group of its layer's weight.
        example_input: an input batch used to trace shapes and count MACs.
        exclude: producers to leave out of the graph (see :func:`trace`).
        min_units: fewest units any layer may keep (>= 1).

    Returns:
        A :class:`RemovalReport`.

    Raises:
        ValueError: unknown or non-prunable layer, bad or duplicate index,
            too few units left, missing data, optimizer state that cannot be
            sliced. Nothing is changed when an error is raised.
        UnsupportedArchitecture: the model cannot be traced exactly.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> rep = remove_units(net, {"0": [1]})
        >>> net[0].weight.shape, net[2].weight.shape
        (torch.Size([2, 4]), torch.Size([2, 2]))
    """
    return _apply(model, units, replacement, data, optimizer, example_input, exclude,
                  min_units, physical=True)


def mask_units(model: nn.Module, units: Mapping[str, Iterable[int]], *,
               replacement: Replacement = None, data: Iterable | None = None,
               optimizer: torch.optim.Optimizer | None = None,
               example_input: torch.Tensor | None = None, exclude: Iterable[str] = (),
               min_units: int = 1) -> RemovalReport:
    """Mask units instead of removing them: same selection, same bias fold.

    Masks go through :func:`torch.nn.utils.prune.custom_from_mask` on the
    producer's weight rows and bias, the per-channel modules' affine
    parameters, and the consumers' weight columns, so the standard
    ``weight_orig``/``weight_mask`` layout results, masks compose with earlier
    ones, and masked weights stay zero through training. The masked model
    computes what :func:`remove_units` would leave; a masked model can be
    shrunk later by :func:`remove_units` with the same units.

    Arguments and errors are those of :func:`remove_units`.
    """
    return _apply(model, units, replacement, data, optimizer, example_input, exclude,
                  min_units, physical=False)


# ---------------------------------------------------------------------------


def _example(model: nn.Module, example_input: torch.Tensor | None, data) -> torch.Tensor:
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise TypeError("example_input must be a Tensor")
        return example_input
    if data is not None:
        return next(iter_inputs(data))
    return default_example_input(model)


def _apply(model, units, replacement, data, optimizer, example_input, exclude, min_units,
           *, physical: bool) -> RemovalReport:
    if isinstance(units, Mapping):  # one-pass iterators (generators) are read once here
        units = {k: (list(v) if isinstance(v, Iterator) else v) for k, v in units.items()}
    if data is not None:
        if iter(data) is data:
            data = list(data)  # a one-pass iterator is read several times below
        next(iter_inputs(data))  # fail early on empty or malformed data
    example = _example(model, example_input, data)
    graph = trace(model, example, exclude=exclude)
    removed = {n: i for n, i in graph.validate_units(units, min_units=min_units).items()
               if i.numel()}
    constants = _constants(model, graph, units, removed, replacement, data)
    check_optimizer_state(optimizer, _touched_params(model, graph, removed))
    deltas, inexact = fold_deltas(model, graph, removed, constants)
    reference = None
    if inexact and data is not None:
        reference = _outputs(model, data, {n: (removed[n], constants[n]) for n in constants})
    params_before, macs_before = count_params(model), count_macs(model, example)

    # --- everything is validated: mutate, with an undo log as a safety net ---
    journal = Journal()
    try:
        with torch.no_grad():
            for consumer, delta in deltas.items():
                _add_to_bias(model.get_submodule(consumer), delta, optimizer, journal)
            if physical:
                _slice_units(model, graph, removed, optimizer, journal)
            else:
                _mask_units(model, graph, removed, journal)
        params_after, macs_after = count_params(model), count_macs(model, example)
    except Exception as exc:
        journal.rollback()
        raise RuntimeError(f"unit {'removal' if physical else 'masking'} failed and was "
                           f"undone; the model and optimizer are as before: {exc}") from exc

    deviation = None
    if reference is not None:
        after = _outputs(model, data, {})
        deviation = max(float((a - r).abs().max()) for a, r in zip(after, reference))
    if inexact:
        where = (f"max output deviation on data {deviation:.3g}" if deviation is not None
                 else "pass data= to measure the deviation")
        warnings.warn(
            f"folding constants into {inexact} is inexact at the borders (zero padding or "
            f"average pooling over padding; {where})", InexactReplacementWarning, stacklevel=3)
    return RemovalReport(
        removed={n: int(i.numel()) for n, i in removed.items()},
        remaining={n: graph.producers[n].num_units - int(i.numel()) for n, i in removed.items()},
        indices=removed, constants=constants,
        params_before=params_before, params_after=params_after,
        macs_before=macs_before, macs_after=macs_after,
        inexact=inexact, max_deviation=deviation, masked=not physical)


def _constants(model, graph: UnitGraph, units, removed, replacement, data
               ) -> dict[str, torch.Tensor]:
    """Replacement value per removed unit (sorted index order), validated."""
    if replacement is None:
        return {}
    out: dict[str, torch.Tensor] = {}
    if isinstance(replacement, str):
        if replacement == "zero":
            return {n: torch.zeros(i.numel(), dtype=torch.float64) for n, i in removed.items()}
        if replacement == "mean":
            if data is None:
                raise ValueError('replacement="mean" needs data= to measure the unit means')
            means = unit_means(model, data, list(removed))
            out = {n: means[n][i] for n, i in removed.items()}
        else:
            raise ValueError(f'replacement must be None, "zero", "mean", a number or '
                             f'constants per layer, got {replacement!r}')
    else:
        if isinstance(replacement, (int, float)):
            given = {n: float(replacement) for n in removed}
        elif isinstance(replacement, torch.Tensor):
            if len(units) != 1:
                raise ValueError("a replacement tensor needs exactly one layer in units; "
                                 "pass {layer: tensor} for several")
            given = {next(iter(units)): replacement}
        elif isinstance(replacement, Mapping):
            extra = set(replacement) - set(units)
            if extra:
                raise ValueError(f"replacement names layers not in units: {sorted(extra)}")
            missing = set(removed) - set(replacement)
            if missing:
                raise ValueError(f"replacement gives no constants for layers {sorted(missing)}")
            given = dict(replacement)
        else:
            raise TypeError(f"unsupported replacement {type(replacement).__name__}")
        for name, idx in removed.items():
            val = given[name]
            if isinstance(val, (int, float)):
                out[name] = torch.full((idx.numel(),), float(val), dtype=torch.float64)
                continue
            if not isinstance(val, torch.Tensor):
                val = torch.as_tensor(val, dtype=torch.float64)
            val = val.reshape(-1)
            order = torch.as_tensor(list(units[name]) if not isinstance(units[name], torch.Tensor)
                                    else units[name]).reshape(-1)
            if val.numel() != order.numel():
                raise ValueError(f"layer {name!r}: {val.numel()} replacement values for "
                                 f"{order.numel()} indices")
            out[name] = val[torch.argsort(order)]
    for name, val in out.items():
        if not torch.isfinite(val).all():
            raise ValueError(f"layer {name!r}: replacement values must be finite")
    return out


def _tensor_slots(module: nn.Module, name: str) -> list[torch.Tensor]:
    """The parameters behind ``module.<name>`` (the ``_orig`` one if pruned)."""
    p = module._parameters.get(name + "_orig", module._parameters.get(name))
    return [p] if isinstance(p, nn.Parameter) else []


def _touched_params(model, graph: UnitGraph, removed) -> dict[str, torch.Tensor]:
    """Parameters whose shape changes, by qualified name."""
    out: dict[str, torch.Tensor] = {}
    for name in removed:
        prod = graph.producers[name]
        mods = [(name, ("weight", "bias"))]
        for cm in prod.channel_modules:
            mods.append((cm, CHANNEL_MODULES[type(model.get_submodule(cm))].tensors(
                model.get_submodule(cm))))
        mods += [(e.consumer, ("weight",)) for e in prod.edges]
        for mname, tnames in mods:
            mod = model.get_submodule(mname)
            for t in tnames:
                for p in _tensor_slots(mod, t):
                    out[f"{mname}.{t}"] = p
    return out


def _add_to_bias(module: nn.Module, delta: torch.Tensor, optimizer, journal: Journal) -> None:
    slots = _tensor_slots(module, "bias")
    if slots:
        old = slots[0].detach().clone()
        slots[0].add_(delta.to(slots[0]))
        journal.add(lambda b=slots[0], old=old: b.copy_(old))
        return
    if not bool((delta != 0).any()):
        return  # nothing to fold: no need for a bias
    w = _tensor_slots(module, "weight")[0]
    bias = nn.Parameter(delta.to(w).clone(), requires_grad=w.requires_grad)
    journal.snapshot_module(module)
    module.bias = bias
    if optimizer is not None:
        for group in optimizer.param_groups:
            if any(p is w for p in group["params"]):
                group["params"].append(bias)
                journal.add(lambda ps=group["params"]: ps.pop())
                break


def _complement(n: int, idx: torch.Tensor, device) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx.cpu()] = False
    return keep.nonzero().reshape(-1).to(device)


def _slice_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor,
                  optimizer, journal: Journal) -> None:
    if name + "_orig" in module._parameters:
        journal.snapshot_module(module)
        p = module._parameters[name + "_orig"]
        slice_param(p, dim, keep.to(p.device), optimizer, journal)
        mask = module._buffers[name + "_mask"]
        module._buffers[name + "_mask"] = mask.index_select(dim, keep.to(mask.device))
        setattr(module, name, p * module._buffers[name + "_mask"])
    elif module._parameters.get(name) is not None:
        p = module._parameters[name]
        slice_param(p, dim, keep.to(p.device), optimizer, journal)
    elif module._buffers.get(name) is not None:
        journal.snapshot_module(module)
        b = module._buffers[name]
        module._buffers[name] = b.index_select(dim, keep.to(b.device))


def _set_attr(module: nn.Module, attr: str, value, journal: Journal) -> None:
    old = getattr(module, attr)
    setattr(module, attr, value)
    journal.add(lambda: setattr(module, attr, old))


def _slice_units(model, graph: UnitGraph, removed, optimizer, journal: Journal) -> None:
    for name, idx in removed.items():
        prod = graph.producers[name]
        pmod = model.get_submodule(name)
        spec = PRODUCERS[type(pmod)]
        keep = _complement(prod.num_units, idx, pmod.weight.device)
        for t in ("weight", "bias"):
            _slice_tensor(pmod, t, 0, keep, optimizer, journal)
        _set_attr(pmod, spec.out_attr, int(keep.numel()), journal)
        for cm in prod.channel_modules:
            cmod = model.get_submodule(cm)
            cspec = CHANNEL_MODULES[type(cmod)]
            for t in cspec.tensors(cmod):
                _slice_tensor(cmod, t, 0, keep, optimizer, journal)
            if cspec.count_attr:
                _set_attr(cmod, cspec.count_attr, int(keep.numel()), journal)
        for edge in prod.edges:
            cmod = model.get_submodule(edge.consumer)
            cspec_p = PRODUCERS[type(cmod)]
            n_in = getattr(cmod, cspec_p.in_attr)
            keep_cols = _complement(n_in, edge.columns(idx), pmod.weight.device)
            _slice_tensor(cmod, "weight", 1, keep_cols, optimizer, journal)
            _set_attr(cmod, cspec_p.in_attr, int(keep_cols.numel()), journal)


def _mask_units(model, graph: UnitGraph, removed, journal: Journal) -> None:
    masks: dict[tuple[str, str], torch.Tensor] = {}

    def zero(mname: str, tname: str, dim: int, idx: torch.Tensor) -> None:
        mod = model.get_submodule(mname)
        t = effective_tensor(mod, tname)
        if t is None:
            return
        m = masks.setdefault((mname, tname), torch.ones_like(t))
        m.index_fill_(dim, idx.to(m.device), 0)

    for name, idx in removed.items():
        prod = graph.producers[name]
        zero(name, "weight", 0, idx)
        zero(name, "bias", 0, idx)
        for cm in prod.channel_modules:
            cmod = model.get_submodule(cm)
            for t in CHANNEL_MODULES[type(cmod)].masks(cmod):
                zero(cm, t, 0, idx)
        for edge in prod.edges:
            zero(edge.consumer, "weight", 1, edge.columns(idx))
    for (mname, tname), mask in masks.items():
        mod = model.get_submodule(mname)
        journal.snapshot_module(mod)
        prune.custom_from_mask(mod, tname, mask)


def _outputs(model: nn.Module, data, constants) -> list[torch.Tensor]:
    """Eval-mode outputs over data, with optional units held at constants."""
    handles = replacement_hooks(model, constants)
    try:
        with eval_mode(model), torch.no_grad():
            return [model(x).detach().clone() for x in iter_inputs(data)]
    finally:
        for h in handles:
            h.remove()
