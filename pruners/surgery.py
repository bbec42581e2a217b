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

from saliency.attention import PrunedMultiheadAttention, set_head_counts
from saliency.head_scores import head_means
from saliency.switch import head_switch_of
from saliency.graph import UnitGraph, as_index_tensor, default_example_input
from saliency.tracing import trace
from saliency.layers import CHANNEL_MODULES, PRODUCERS, effective_tensor, eval_mode
from saliency.replacement import (fold_deltas, held_means, iter_inputs, member_indices,
                                  replacement_hooks, unit_means)

from .metrics import count_macs, count_params
from .optim_state import Journal, check_optimizer_state, reshape_param

__all__ = ["RemovalReport", "InexactReplacementWarning", "remove_units", "mask_units"]

Replacement = Union[None, str, float, torch.Tensor, Mapping[str, Union[float, torch.Tensor]]]


class InexactReplacementWarning(UserWarning):
    """A folded constant is not exact everywhere (zero-padded conv consumer)."""


@dataclass
class RemovalReport:
    """What :func:`remove_units` or :func:`mask_units` did.

    Attributes:
        removed: units removed (or masked) per group (on a chain: per layer).
        remaining: units left per touched group.
        indices: the removed units per group, sorted (group channels: on a chain, the
            layer's own indices).
        constants: per member layer, the replacement value of each removed output channel
            (the value its module was taken to output), in the order of
            :attr:`member_indices`; for a group joined by an elementwise product (a gated
            FFN), under the group's name, the product's value of each removed group channel
            (in the order of :attr:`indices`); empty without replacement.
        members: per touched group, its member layers (one on a chain).
        member_indices: per member layer, its removed output channels, sorted.
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
    members: dict[str, list[str]] = field(default_factory=dict)
    member_indices: dict[str, torch.Tensor] = field(default_factory=dict)

    def __str__(self) -> str:
        verb = "masked" if self.masked else "removed"
        lines = [f"{'layer':<24}{verb:>10}{'remaining':>11}"]
        for name in self.removed:
            lines.append(f"{name:<24}{self.removed[name]:>10}{self.remaining[name]:>11}")
            others = [m for m in self.members.get(name, [name]) if m != name]
            if others:
                lines.append(f"  (a group: with {', '.join(others)})")
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
        units: ``{layer name: indices to remove}``: a layer on a chain, or a group (its
            name, or any member's name with that member's own channel indices; every member
            of the group loses the channels).
        replacement: ``None`` drops the units (consumers see 0 where the unit
            was); ``"zero"`` holds the producer's output at 0 (its BatchNorm
            shift and activation still reach the consumer); ``"mean"`` holds
            it at each unit's mean output over ``data`` (mean replacement; in a
            group, each member's channel at its own mean; in a group joined by an
            elementwise product, a gated FFN's ``act(gate(x)) * up(x)``, the product's channel
            at its mean, :func:`saliency.replacement.held_means`); a float, a tensor (one
            layer on a chain) or ``{layer: tensor or float}`` gives the constants: for a
            layer on a chain aligned with the indices as given, for every member of a group
            aligned with that member's removed output channels in ascending order
            (``report.member_indices``); for a group joined by a product, the product's
            values, under the group's name. On token-shaped layers (a Linear on
            ``(batch, ..., channels)``) means average over the batch and every token.
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
        min_units: fewest units any group (a layer on a chain) may keep (>= 1).

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
    chosen = graph.validate_units(units, min_units=min_units)
    heads = {n: i for n, i in chosen.items() if n in graph.heads and i.numel()}
    removed = {n: i for n, i in chosen.items() if n not in graph.heads and i.numel()}
    members = {g: member_indices(graph, g, chans) for g, chans in removed.items()}
    chain_units = {n: v for n, v in units.items() if n not in graph.heads}
    chain_replacement = replacement
    if isinstance(replacement, Mapping):
        chain_replacement = {n: v for n, v in replacement.items() if n not in graph.heads}
    elif isinstance(replacement, torch.Tensor) and not chain_units:
        chain_replacement = None
    constants = _constants(model, graph, chain_units, members, chain_replacement, data,
                           removed)
    head_constants = _head_constants(model, graph, units, heads, replacement, data)
    cuts = _plan(model, graph, removed, members) + _head_plan(model, graph, heads, physical)
    check_optimizer_state(optimizer, _touched_params(model, cuts))
    deltas, inexact = fold_deltas(model, graph, removed, constants)
    for name, vals in head_constants.items():
        h = graph.heads[name]
        w = effective_tensor(model.get_submodule(h.out), "weight")
        cols = torch.as_tensor(h.positions(heads[name])[" out"], device=w.device)
        with torch.no_grad():
            delta = w[:, cols] @ vals.reshape(-1).to(w)
        deltas[h.out] = deltas.get(h.out, 0) + delta
    constants.update(head_constants)
    reference = None
    if inexact and data is not None:
        held = {m: (idx, constants[m]) for g, mi in members.items() for m, idx in mi.items()
                if m in constants and idx.numel() and graph.groups[g].held is None}
        reference = _outputs(model, data, held)
    params_before, macs_before = count_params(model), count_macs(model, example)

    # --- everything is validated: mutate, with an undo log as a safety net ---
    journal = Journal()
    try:
        with torch.no_grad():
            for consumer, delta in deltas.items():
                _add_to_bias(model.get_submodule(consumer), delta, optimizer, journal)
            if physical:
                _slice(model, cuts, optimizer, journal)
                for name, idx in heads.items():
                    _set_heads(model, graph.heads[name], idx, journal)
            else:
                _mask(model, cuts, journal)
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
    remaining = {n: graph.groups[n].size - int(i.numel()) for n, i in removed.items()}
    remaining.update({n: graph.heads[n].num_heads - int(i.numel()) for n, i in heads.items()})
    return RemovalReport(
        removed={n: int(i.numel()) for n, i in {**removed, **heads}.items()},
        remaining=remaining,
        indices={**removed, **heads}, constants=constants,
        params_before=params_before, params_after=params_after,
        macs_before=macs_before, macs_after=macs_after,
        inexact=inexact, max_deviation=deviation, masked=not physical,
        members={**{n: list(graph.groups[n].members) for n in removed},
                 **{n: graph.heads[n].members for n in heads}},
        member_indices={m: idx for mi in members.values() for m, idx in mi.items()})


def _constants(model, graph: UnitGraph, units, members, replacement, data, removed
               ) -> dict[str, torch.Tensor]:
    """Replacement value per removed output channel of every member (sorted order),
    validated; for a group held at a product (a gated FFN), per removed group channel of the
    product, under the group's name."""
    if replacement is None:
        return {}
    held = {m: idx for g, mi in members.items() if graph.groups[g].held is None
            for m, idx in mi.items()}
    held.update({g: removed[g] for g in members if graph.groups[g].held is not None})
    if isinstance(replacement, str):
        if replacement == "zero":
            return {m: torch.zeros(i.numel(), dtype=torch.float64) for m, i in held.items()}
        if replacement != "mean":
            raise ValueError(f'replacement must be None, "zero", "mean", a number or '
                             f'constants per layer, got {replacement!r}')
        if data is None:
            raise ValueError('replacement="mean" needs data= to measure the unit means')
        products = [g for g in members if graph.groups[g].held is not None]
        means = unit_means(model, data, [m for m in held if m not in products])
        means.update(held_means(model, graph, data, products))
        return {m: means[m][i] for m, i in held.items()}
    if isinstance(replacement, bool):
        raise TypeError(f"replacement must be None, \"zero\", \"mean\", a number or constants "
                        f"per layer, got the bool {replacement!r}")
    if isinstance(replacement, (int, float)):
        out = {m: torch.full((i.numel(),), float(replacement), dtype=torch.float64)
               for m, i in held.items()}
    elif isinstance(replacement, torch.Tensor):
        (name,) = units if len(units) == 1 else (None,)
        group = graph.group_of(name) if name is not None else None
        if group is not None and group.held is not None and name == group.name:
            return _checked({name: _aligned(name, replacement, units[name], held[name])})
        if group is None or len(group.members) > 1:
            raise ValueError("a replacement tensor needs exactly one layer in units, on a chain;"
                             " pass {layer: tensor} for several layers or for every member of a "
                             "group")
        out = {group.members[0]: _aligned(name, replacement, units[name], held[group.members[0]])}
    elif isinstance(replacement, Mapping):
        extra = set(replacement) - set(held)
        if extra:
            raise ValueError(f"replacement names layers not in units: {sorted(extra)} (the "
                             "members of a group in units may be named too)")
        missing = sorted(set(held) - set(replacement))
        if missing:
            raise ValueError(f"replacement gives no constants for layers {missing} (every "
                             "member of a group is held at its own constants)")
        out = {}
        for m, val in replacement.items():
            if isinstance(val, bool):
                raise TypeError(f"layer {m!r}: a replacement constant must be a number, got "
                                f"the bool {val!r}")
            if isinstance(val, (int, float)):
                out[m] = torch.full((held[m].numel(),), float(val), dtype=torch.float64)
            else:  # in the order given for a layer on a chain; by channel within a group
                group = graph.group_of(m)
                alone = m in units and (len(group.members) == 1 or group.held is not None)
                out[m] = _aligned(m, val, units[m] if alone else held[m], held[m])
    else:
        raise TypeError(f"unsupported replacement {type(replacement).__name__}")
    return _checked(out)


def _head_constants(model, graph: UnitGraph, units, heads: Mapping[str, torch.Tensor],
                    replacement, data) -> dict[str, torch.Tensor]:
    """Replacement values of removed heads: per attention module, ``(removed heads,
    head_dim)``, the value of each dimension of each removed head's output (what its output
    projection reads), sorted by head."""
    if replacement is None or not heads:
        return {}
    dims = {n: graph.heads[n].head_dim for n in heads}
    if isinstance(replacement, str):
        if replacement == "zero":
            return {n: torch.zeros(i.numel(), dims[n], dtype=torch.float64)
                    for n, i in heads.items()}
        if replacement != "mean":
            raise ValueError(f'replacement must be None, "zero", "mean", a number or '
                             f'constants per layer, got {replacement!r}')
        if data is None:
            raise ValueError('replacement="mean" needs data= to measure the heads\' means')
        means = head_means(model, graph.heads, data, list(heads))
        return {n: means[n][i.to(means[n].device)] for n, i in heads.items()}
    if isinstance(replacement, bool):
        raise TypeError(f"replacement must be None, \"zero\", \"mean\", a number or constants "
                        f"per layer, got the bool {replacement!r}")
    if isinstance(replacement, (int, float)):
        return {n: torch.full((i.numel(), dims[n]), float(replacement), dtype=torch.float64)
                for n, i in heads.items()}
    if isinstance(replacement, torch.Tensor):
        if len(units) != 1:
            raise ValueError("a replacement tensor needs exactly one attention module in "
                             "units; pass {name: tensor} for several")
        replacement = {next(iter(heads)): replacement}
    if not isinstance(replacement, Mapping):
        raise TypeError(f"unsupported replacement {type(replacement).__name__}")
    out = {}
    for n, idx in heads.items():
        if n not in replacement:
            raise ValueError(f"replacement gives no constants for attention {n!r}")
        val = replacement[n]
        if isinstance(val, bool):
            raise TypeError(f"attention {n!r}: a replacement constant must be a number")
        if isinstance(val, (int, float)):
            out[n] = torch.full((idx.numel(), dims[n]), float(val), dtype=torch.float64)
            continue
        val = torch.as_tensor(val, dtype=torch.float64)
        if val.numel() != idx.numel() * dims[n]:
            raise ValueError(f"attention {n!r}: the replacement has {val.numel()} values; "
                             f"expected (removed heads, head_dim) = ({idx.numel()}, {dims[n]})")
        given = as_index_tensor(n, units[n])
        out[n] = val.reshape(idx.numel(), dims[n])[torch.argsort(given)]
    return _checked(out)


def _head_plan(model, graph: UnitGraph, heads: Mapping[str, torch.Tensor], physical: bool
               ) -> list[_Cut]:
    """The rows of the query, key and value projections and the output projection's columns
    that go with the removed heads (masks: the output columns only where the output
    projection is called, not inside ``nn.MultiheadAttention``, whose masked value rows
    already make the heads' output 0), and the heads' gates in the module's head switch."""
    cuts = []
    for name, idx in heads.items():
        h = graph.heads[name]
        for key, pos in h.positions(idx).items():
            if not pos:
                continue
            if key == " out":
                if h.kind == "mha" and not physical:
                    continue
                mod, tensors, dim, attrs = h.out, ("weight",), 1, ("in_features",)
            else:
                mod, tensors = key
                dim = 0
                attrs = ("out_features",) if h.kind == "linear" else ()
            m = model.get_submodule(mod)
            present = [t for t in (effective_tensor(m, n) for n in tensors) if t is not None]
            if not present:
                continue
            cuts.append(_Cut(mod, dim, tuple(tensors), size=present[0].shape[dim],
                             attrs=attrs, masks=tuple(tensors), positions=set(pos)))
        switch = head_switch_of(model, h)
        if switch is not None:  # one gate per head (saliency.switch.HeadSwitch)
            cuts.append(_Cut(switch[0], 0, ("weight",), size=h.num_heads,
                             attrs=("num_channels",), masks=("weight",),
                             positions=set(idx.tolist())))
    return cuts


def _set_heads(model, heads, idx: torch.Tensor, journal: Journal) -> None:
    """The attention module's head counts after removal (an ``nn.MultiheadAttention``
    becomes a :class:`saliency.attention.PrunedMultiheadAttention`)."""
    mod = model.get_submodule(heads.name)
    left = heads.num_heads - idx.numel()
    if heads.kind == "mha":
        old_cls = type(mod)
        old_same = mod._qkv_same_embed_dim
        PrunedMultiheadAttention.convert(mod)

        def undo(mod=mod, old_cls=old_cls, old_same=old_same):
            mod.__class__ = old_cls
            mod._qkv_same_embed_dim = old_same
        journal.add(undo)
        _set_attr(mod, "num_heads", left, journal)
        return
    set_head_counts(mod, heads.spec, left, heads.num_kv_heads - heads.removed_kv(idx).numel(),
                    heads.head_dim, lambda m, a, v: _set_attr(m, a, v, journal))


def _checked(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for name, val in out.items():
        if not torch.isfinite(val).all():
            raise ValueError(f"layer {name!r}: replacement values must be finite")
    return out


def _aligned(name: str, val, order, held: torch.Tensor) -> torch.Tensor:
    """Values given in the order of ``order`` (the indices as the caller gave them), sorted."""
    if not isinstance(val, torch.Tensor):
        val = torch.as_tensor(val, dtype=torch.float64)
    val = val.reshape(-1)
    order = torch.as_tensor(list(order) if not isinstance(order, torch.Tensor)
                            else order).reshape(-1)
    if val.numel() != order.numel() or val.numel() != held.numel():
        raise ValueError(f"layer {name!r}: {val.numel()} replacement values for "
                         f"{held.numel()} indices")
    return val[torch.argsort(order)]


def _tensor_slots(module: nn.Module, name: str) -> list[torch.Tensor]:
    """The parameters behind ``module.<name>`` (the ``_orig`` one if pruned)."""
    p = module._parameters.get(name + "_orig", module._parameters.get(name))
    return [p] if isinstance(p, nn.Parameter) else []


@dataclass
class _Cut:
    """Positions removed from one module along one dimension of some of its tensors.

    ``dim`` 0 removes output channels (rows; per-channel tensors), 1 input columns.
    ``attrs`` are the size attributes set to the new count; ``masks`` the tensors to mask
    (:func:`mask_units`); ``groups`` the conv groups of a grouped convolution's columns.
    """

    module: str
    dim: int
    tensors: tuple[str, ...]
    size: int
    attrs: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    groups: int = 1
    positions: set = field(default_factory=set)


def _plan(model, graph: UnitGraph, removed, members) -> list[_Cut]:
    """Every module the removal changes, what and where (before any change)."""
    cuts: dict[tuple[str, int], _Cut] = {}

    def cut(module, dim, positions, **kw):
        mod = model.get_submodule(module)
        key = (module, dim)
        if key not in cuts:
            size = next(t for t in (effective_tensor(mod, n) for n in kw["tensors"])
                        if t is not None).shape[dim]
            if dim == 1:
                size *= getattr(mod, "groups", 1)
            cuts[key] = _Cut(module, dim, size=size, **kw)
        cuts[key].positions.update(int(p) for p in positions)

    for gname, chans in removed.items():
        group = graph.groups[gname]
        for m, idx in members[gname].items():
            spec = PRODUCERS[type(model.get_submodule(m))]
            cut(m, 0, idx.tolist(), tensors=("weight", "bias"), attrs=(spec.out_attr,),
                masks=("weight", "bias"))
        for node in group.nodes:
            if node.kind != "op" or node.op.kind not in ("module", "depthwise"):
                continue
            pos = torch.isin(node.labels, chans).nonzero().reshape(-1).tolist()
            mod = model.get_submodule(node.op.target)
            if node.op.kind == "depthwise":
                cut(node.op.target, 0, pos, tensors=("weight", "bias"), masks=("weight", "bias"),
                    attrs=("in_channels", "out_channels", "groups"))
                continue
            spec = CHANNEL_MODULES[type(mod)]
            if spec.tensors(mod):
                cut(node.op.target, 0, pos, tensors=tuple(spec.tensors(mod)),
                    attrs=(spec.count_attr,) if spec.count_attr else (),
                    masks=tuple(spec.masks(mod)))
        for c in group.consumers:
            labels = group.nodes[c.node].labels
            pos = torch.isin(labels, chans).nonzero().reshape(-1)
            if c.block > 1:
                pos = (pos[:, None] * c.block + torch.arange(c.block)).reshape(-1)
            cmod = model.get_submodule(c.name)
            cut(c.name, 1, pos.tolist(), tensors=("weight",), masks=("weight",),
                attrs=(PRODUCERS[type(cmod)].in_attr,), groups=getattr(cmod, "groups", 1))
    return list(cuts.values())


def _touched_params(model, cuts: list[_Cut]) -> dict[str, torch.Tensor]:
    """Parameters whose shape changes, by qualified name."""
    out: dict[str, torch.Tensor] = {}
    for c in cuts:
        mod = model.get_submodule(c.module)
        for t in c.tensors:
            for p in _tensor_slots(mod, t):
                out[f"{c.module}.{t}"] = p
    return out


def _add_to_bias(module: nn.Module, delta: torch.Tensor, optimizer, journal: Journal) -> None:
    slots = _tensor_slots(module, "bias")
    if slots:
        old = slots[0].detach().clone()
        slots[0].add_(delta.to(slots[0]))
        journal.add(lambda b=slots[0], old=old: b.copy_(old))
        return
    # rows masked earlier (units of this layer already masked) stay off: no bias there
    mask = module._buffers.get("weight_mask")
    dead = None if mask is None else ~mask.reshape(mask.shape[0], -1).any(1)
    if dead is not None and dead.any():
        delta = delta.clone()
        delta[dead.to(delta.device)] = 0
    if not bool((delta != 0).any()):
        return  # nothing to fold: no need for a bias
    w = _tensor_slots(module, "weight")[0]
    bias = nn.Parameter(delta.to(w).clone(), requires_grad=w.requires_grad)
    journal.snapshot_module(module)
    module.bias = bias
    if dead is not None and dead.any():
        prune.custom_from_mask(module, "bias", (~dead).to(bias))
    if optimizer is not None:
        for group in optimizer.param_groups:
            if any(p is w for p in group["params"]):
                group["params"].append(bias)
                journal.add(lambda ps=group["params"]: ps.pop())
                break


def _complement(n: int, idx, device) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.as_tensor(sorted(idx), dtype=torch.long)] = False
    return keep.nonzero().reshape(-1).to(device)


def _grouped_columns(c: _Cut, t: torch.Tensor) -> torch.Tensor:
    """Each conv group's rows of a grouped weight keep their own input columns."""
    per_in = c.size // c.groups
    keep = [[p - k * per_in for p in range(k * per_in, (k + 1) * per_in) if p not in c.positions]
            for k in range(c.groups)]
    rows = t.shape[0] // c.groups
    index = torch.tensor([keep[r // rows] for r in range(t.shape[0])], device=t.device)
    index = index.reshape(index.shape + (1,) * (t.dim() - 2)).expand(
        (t.shape[0], index.shape[1]) + tuple(t.shape[2:]))
    return t.gather(1, index)


def _cut_tensor(module: nn.Module, name: str, c: _Cut, keep: torch.Tensor, optimizer,
                journal: Journal) -> None:
    if c.dim == 1 and c.groups > 1:
        fn = lambda t: _grouped_columns(c, t)  # noqa: E731
    else:
        fn = lambda t: t.index_select(c.dim, keep.to(t.device))  # noqa: E731
    if name + "_orig" in module._parameters:
        journal.snapshot_module(module)
        p = module._parameters[name + "_orig"]
        reshape_param(p, fn, optimizer, journal)
        module._buffers[name + "_mask"] = fn(module._buffers[name + "_mask"])
        setattr(module, name, p * module._buffers[name + "_mask"])
    elif module._parameters.get(name) is not None:
        reshape_param(module._parameters[name], fn, optimizer, journal)
    elif module._buffers.get(name) is not None:
        journal.snapshot_module(module)
        module._buffers[name] = fn(module._buffers[name])


def _set_attr(module: nn.Module, attr: str, value, journal: Journal) -> None:
    """Set an attribute, journaled (one the module did not have, a head count its config
    held, is deleted on undo)."""
    if attr not in module.__dict__:
        setattr(module, attr, value)
        journal.add(lambda: delattr(module, attr))
        return
    old = getattr(module, attr)
    setattr(module, attr, value)
    journal.add(lambda: setattr(module, attr, old))


def _slice(model, cuts: list[_Cut], optimizer, journal: Journal) -> None:
    for c in sorted(cuts, key=lambda c: c.dim):  # rows before the columns of the same weight
        mod = model.get_submodule(c.module)
        keep = _complement(c.size, c.positions, effective_tensor(mod, c.tensors[0]).device)
        for t in c.tensors:
            _cut_tensor(mod, t, c, keep, optimizer, journal)
        for attr in c.attrs:
            _set_attr(mod, attr, int(keep.numel()), journal)


def _mask(model, cuts: list[_Cut], journal: Journal) -> None:
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for c in cuts:
        mod = model.get_submodule(c.module)
        for tname in c.masks:
            t = effective_tensor(mod, tname)
            if t is None:
                continue
            m = masks.setdefault((c.module, tname), torch.ones_like(t))
            idx = torch.as_tensor(sorted(c.positions), dtype=torch.long, device=m.device)
            if c.dim == 1 and c.groups > 1:
                per_in, rows = c.size // c.groups, t.shape[0] // c.groups
                for p in idx.tolist():
                    k = p // per_in
                    m[k * rows:(k + 1) * rows, p - k * per_in] = 0
            else:
                m.index_fill_(c.dim, idx, 0)
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
