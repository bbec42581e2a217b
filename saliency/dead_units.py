"""Dead-unit detection: which units of a model are dead, by which criterion.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 3.2:

* **Dead unit** (Def. 3.2.2): a unit replaceable with a constant,
  ``MRP_i ~ 0`` (MRP is the mean replacement penalty, Def. 3.1.1). The thesis
  names three situations that give a low MRP: (1) the unit generates a
  constant value; (2) every value it generates is mapped to one constant by
  the activation; (3) all its outgoing weights are zero.
* **Frozen unit** (Def. 3.2.1): a unit that receives a negligible output
  gradient ``dL/dh_i ~ 0`` for every sample. A unit in situation (2) on a
  flat region of its activation is also frozen; a frozen unit need not be
  dead (Sec. 3.4: BatchNorm can shrink the gradient of a useful unit).

The thesis sets no thresholds ("thresholds depend on the number of units in
a layer or the loss function used", Sec. 3.2), so every criterion below takes
one as a parameter (:class:`DeadUnitThresholds`), relative to the unit's layer
where the quantity has no natural scale. For unit ``i`` of a layer with
output ``h`` (before the non-linearity), activation ``a`` (after its
per-channel path: BatchNorm, activation, before pooling) over the samples
``k`` (and positions ``p`` of a convolution's map) of the data:

========================  ==========================================================  ==========
criterion                 flags unit ``i`` when                                       default
========================  ==========================================================  ==========
``low_mrp``               ``MRP_i <= mrp_rel * mean_j MRP_j`` (exact MRP, optional)   0.01
``low_mrs``               ``MRS_i <= mrs_rel * mean_j MRS_j`` (first-order MRP)       0.01
``constant``              ``Var_{k,p}(h_i) <= var_rel * mean_j Var(h_j)`` (situation   1e-6
                          1)
``constant_activation``   ``Var_{k,p}(a_i) <= var_rel * mean_j Var(a_j)`` (situation   1e-6
                          2)
``never_active``          ``APoZ_i >= apoz``: the activation is exactly 0 on every     1.0
                          sample and position (a ReLU that never fires; Hu et al.
                          2016)
``dormant@tau``           ReDo's score ``E|a_i| / mean_j E|a_j| <= tau`` (Sokar et     0, 0.025,
                          al. 2023), one criterion per ``tau``                        0.1
``zero_outgoing``         ``max |W_out[:, cols(i)]| <= outgoing_atol`` over every     0.0
                          consumer (situation 3)
``frozen``                ``G_i <= grad_rel * mean_j G_j``, ``G_i = sqrt((1/N)        1e-3
                          sum_k ||dL_k/dh_{k,i}||^2)`` (Def. 3.2.1)
========================  ==========================================================  ==========

``never_active`` and ``dormant@0`` coincide (``E|a_i| = 0`` exactly when
``a_i = 0`` everywhere); ReDo's larger ``tau`` also flag units that are
almost never active.

Every criterion that needs data comes from **one** forward and backward pass
over the data: :func:`saliency.unit_statistics` gives MRS, ReDo's score,
APoZ and the output-gradient norms, and forward hooks in the same pass
accumulate the variances of ``h`` and ``a`` around a shift taken from the
first sample (``Var = E[(x - c)^2] - E[x - c]^2``, so an exactly constant unit
has a variance of exactly 0 in any dtype). Weight criteria read the weights.
Exact MRP (:class:`saliency.MRP`, Def. 3.1.1) costs an extra pass and runs
only with ``exact_mrp=True``.

The units flagged by :data:`EXACT_CRITERIA` (constant output, never active,
zero outgoing weights) are exactly replaceable on the data: mean replacement
with bias propagation (:func:`pruners.remove_units` with
``replacement="mean"``) removes them without changing the outputs, which is
what ``python -m experiments diagnose --remove-dead`` does.

**Groups.** The report is per group of :func:`saliency.trace`: a producer on a
chain is its own group; channels that must be removed together (the
producers a residual add sums, with every consumer of the sum) are one group,
named after its first member, with one row per group channel ``i`` and its
members named (:attr:`DeadUnitReport.members`). For a group with members
``m``:

* ``constant``: every member's channel is constant, ``Var(h_i) = max_m
  Var(h_{m,i})``;
* ``constant_activation``, ``never_active``, ``dormant@tau``: the activation
  of a group with a residual join is what its consumers read at the group's
  positions (each consumer's input, pooling included; a flattened Linear input
  as channels x block), each statistic averaged over the consumers (so
  ``never_active`` flags a channel that every consumer reads as exactly 0);
* ``zero_outgoing``: the columns of every consumer at the group's positions;
* ``frozen``: ``G_i = sqrt((1/N) sum_k sum_m ||dL_k/dh_{k,m,i}||^2)``;
* ``low_mrs`` / ``low_mrp``: the group's MRS and MRP (every member held at its
  own mean; :class:`saliency.MRS`, :class:`saliency.MRP`);
* ``w_in_l1``: ``sum_m ||W_{m,i}||_1``; ``mean``: the first member's mean.

A group channel flagged by an exact criterion is removed exactly by
:func:`pruners.remove_units` on ``report.dead()`` (every member held at its
own mean).

Detection only measures, so it lives in :mod:`saliency` (which imports
nothing from :mod:`pruners`); the model is never changed (parameters,
gradients, training flags and hooks are restored, also on errors).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import iter_batches, preserved, select_layers, summing_loss, to_group
from .graph import Group, UnitGraph
from .tracing import trace
from .layers import channels_first, dense_weight, effective_tensor
from .mrp import MRP
from .replacement import current_token_mask, iter_inputs, position_mask
from .unit_stats import ConsumerMaps, activation, is_chain, unit_statistics

__all__ = ["DeadUnitThresholds", "DeadUnitReport", "find_dead_units", "criterion_names",
           "TARGET_CRITERIA",
           "EXACT_CRITERIA", "UNIT_STATISTICS"]

#: criteria whose flagged units are exactly replaceable by a constant on the data
EXACT_CRITERIA: tuple[str, ...] = ("constant", "never_active", "zero_outgoing")

#: the per-unit statistics of a report, in table order
UNIT_STATISTICS: tuple[str, ...] = (
    "mean", "out_var", "out_var_rel", "act_mean", "act_var", "act_var_rel", "mrs", "mrs_rel",
    "mrp", "mrp_rel", "redo", "apoz", "grad_norm", "grad_rel", "w_in_l1", "w_out_l1",
    "w_out_max")


@dataclass(frozen=True)
class DeadUnitThresholds:
    """Thresholds of the dead-unit criteria (see the module docstring's table).

    Attributes:
        mrp_rel: ``low_mrp`` when MRP is at most this fraction of the layer's
            mean MRP.
        mrs_rel: ``low_mrs``, the same for MRS.
        var_rel: ``constant`` / ``constant_activation`` when the variance of
            the output / activation is at most this fraction of the layer's
            mean variance.
        apoz: ``never_active`` when the fraction of zero activations is at
            least this (1.0: always zero).
        taus: ReDo's thresholds, one ``dormant@tau`` criterion each.
        outgoing_atol: ``zero_outgoing`` when every outgoing weight is at
            most this in absolute value.
        grad_rel: ``frozen`` when the output-gradient norm is at most this
            fraction of the layer's mean.
    """

    mrp_rel: float = 0.01
    mrs_rel: float = 0.01
    var_rel: float = 1e-6
    apoz: float = 1.0
    taus: tuple[float, ...] = (0.0, 0.025, 0.1)
    outgoing_atol: float = 0.0
    grad_rel: float = 1e-3

    def __post_init__(self) -> None:
        taus = self.taus
        if isinstance(taus, (int, float)):
            taus = (taus,)
        object.__setattr__(self, "taus", tuple(float(t) for t in taus))
        for name in ("mrp_rel", "mrs_rel", "var_rel", "outgoing_atol", "grad_rel", "apoz"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"threshold {name} must be a finite number >= 0, got {v!r}")
        if self.apoz > 1:
            raise ValueError(f"threshold apoz is a fraction in [0, 1], got {self.apoz!r}")
        if not self.taus:
            raise ValueError("taus needs at least one ReDo threshold")
        for t in self.taus:
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"ReDo thresholds taus must be finite and >= 0, got {t!r}")
        if len(set(self.taus)) != len(self.taus):
            raise ValueError(f"taus are repeated: {list(self.taus)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "DeadUnitThresholds":
        """Thresholds from a ``{name: value}`` dict; unknown names are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(values))


#: the criteria that read the loss's gradient, so need targets
TARGET_CRITERIA = ("low_mrp", "low_mrs", "frozen")


def criterion_names(thresholds: DeadUnitThresholds | None = None,
                    exact_mrp: bool = False, targets: bool = True) -> list[str]:
    """The criteria a report has, in order (``low_mrp`` only with exact MRP; without
    ``targets``, none of :data:`TARGET_CRITERIA`)."""
    th = thresholds or DeadUnitThresholds()
    names = ["low_mrp"] if exact_mrp else []
    names += ["low_mrs", "constant", "constant_activation", "never_active"]
    names += [f"dormant@{t:g}" for t in th.taus]
    names += ["zero_outgoing", "frozen"]
    return names if targets else [n for n in names if n not in TARGET_CRITERIA]


@dataclass
class DeadUnitReport:
    """The result of :func:`find_dead_units`: per group (a layer on a chain), per unit.

    Attributes:
        layers: the examined groups (a producer on a chain is its own group), in forward
            order.
        num_units: units per group (its group channels).
        stats: ``{statistic: {layer: 1-D float64 tensor}}`` (see
            :data:`UNIT_STATISTICS`; ``mrp`` / ``mrp_rel`` only with exact
            MRP).
        flags: ``{criterion: {layer: 1-D bool tensor}}``.
        thresholds: the thresholds used.
        samples: number of samples in the data.
        loss: mean loss on the data (eval mode).
        exact_mrp: whether exact MRP was computed.
        members: per group, its member layers (one, itself, on a chain).
        skipped: criteria not computed: those of :data:`TARGET_CRITERIA` when the data has no
            targets (batches ``(inputs, None)``; their statistics are NaN, ``loss`` too).
    """

    layers: list[str]
    num_units: dict[str, int]
    stats: dict[str, dict[str, torch.Tensor]]
    flags: dict[str, dict[str, torch.Tensor]]
    thresholds: DeadUnitThresholds
    samples: int
    loss: float
    exact_mrp: bool = False
    criteria: list[str] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def dead(self, criteria: Iterable[str] = EXACT_CRITERIA, *, how: str = "any"
             ) -> dict[str, torch.Tensor]:
        """``{layer: sorted indices}`` of units flagged by ``criteria``.

        ``how="any"`` (default) takes the union, ``"all"`` the intersection.
        Layers with no such unit are left out; the result can be passed to
        :func:`pruners.remove_units`.
        """
        criteria = list(criteria)
        unknown = [c for c in criteria if c not in self.flags]
        if unknown:
            raise ValueError(f"unknown criteria {unknown}; this report has {self.criteria}")
        if not criteria:
            raise ValueError("no criterion given")
        if how not in ("any", "all"):
            raise ValueError(f"how must be 'any' or 'all', got {how!r}")
        out = {}
        for layer in self.layers:
            masks = torch.stack([self.flags[c][layer] for c in criteria])
            sel = masks.any(0) if how == "any" else masks.all(0)
            if sel.any():
                out[layer] = sel.nonzero().reshape(-1)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """``{layer: {criterion: number of flagged units}}``."""
        return {layer: {c: int(self.flags[c][layer].sum()) for c in self.criteria}
                for layer in self.layers}

    def rows(self) -> list[dict[str, Any]]:
        """The per-unit table: one dict per unit (layer, unit, statistics, flags)."""
        out = []
        for layer in self.layers:
            for i in range(self.num_units[layer]):
                row: dict[str, Any] = {"layer": layer, "unit": i}
                for s in UNIT_STATISTICS:
                    if s in self.stats:
                        row[s] = float(self.stats[s][layer][i])
                for c in self.criteria:
                    row[c] = bool(self.flags[c][layer][i])
                row["dead_by"] = [c for c in self.criteria if row[c]]
                out.append(row)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One dict per group: units, flagged units per criterion, exactly removable, and
        its members (the layers whose channels are its units)."""
        exact = self.dead(EXACT_CRITERIA)
        counts = self.counts()
        return [{"layer": layer, "units": self.num_units[layer], **counts[layer],
                 "exactly_removable": int(exact[layer].numel()) if layer in exact else 0,
                 "members": list(self.members.get(layer, [layer]))}
                for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON values."""
        th = asdict(self.thresholds)
        th["taus"] = list(th["taus"])
        return {"thresholds": th, "samples": self.samples,
                "loss": self.loss, "exact_mrp": self.exact_mrp, "criteria": list(self.criteria),
                "exact_criteria": list(EXACT_CRITERIA), "skipped": list(self.skipped),
                "layers": self.summary(), "units": self.rows()}

    def __str__(self) -> str:
        cols = ["units", *self.criteria]
        width = max(len(n) for n in self.layers + ["layer"]) + 2
        head = f"{'layer':<{width}}" + "".join(f"{c:>{max(len(c), 5) + 2}}" for c in cols)
        lines = [head]
        for row in self.summary():
            lines.append(f"{row['layer']:<{width}}" + "".join(
                f"{row[c]:>{max(len(c), 5) + 2}}" for c in cols))
        for layer in self.layers:
            members = self.members.get(layer, [layer])
            if len(members) > 1:
                lines.append(f"group {layer}: {', '.join(members)}")
        if self.skipped:
            lines.append(f"not computed (the data has no targets): {', '.join(self.skipped)}")
        return "\n".join(lines)


def _relative(x: torch.Tensor) -> torch.Tensor:
    """``x / mean(x)`` over the layer (0 where the whole layer is 0)."""
    mean = x.mean()
    return x / mean if mean > 0 else torch.zeros_like(x)


class _ShiftedMoments:
    """Forward hooks accumulating ``sum (x - c)`` and ``sum (x - c)^2`` per unit.

    ``x`` is a producer's output ``h`` and its activation ``a``; ``c`` is the
    first sample's value at the first position (so an exactly constant unit
    gives exactly 0); positions a batch's token mask marks as padding are left out
    (:func:`saliency.replacement.current_token_mask`). Sums over positions run in the
    model's dtype, across batches in float64. For a group that is not a chain, every
    member's ``h`` is hooked and its activation is what its consumers read
    (:class:`ConsumerMaps`).
    """

    def __init__(self, model: nn.Module, graph: UnitGraph, layers: Sequence[str]):
        self.model, self.graph = model, graph
        self.sums: dict[tuple[str, str], list] = {}
        self.count: dict[str, int] = {}
        chains = [n for n in layers if is_chain(graph.groups[n])]
        coupled = [n for n in layers if n not in chains]
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n))
                        for n in chains]
        self.handles += [model.get_submodule(m).register_forward_hook(self._hook(m, False))
                         for n in coupled for m in graph.groups[n].members]
        self.maps = ConsumerMaps(model, graph, coupled) if coupled else None

    def _hook(self, name: str, chain: bool = True) -> Callable:
        edges = self.graph.producers[name].edges if chain else []

        def hook(m, _inp, out):
            with torch.no_grad():
                h = channels_first(m, out.detach())  # tokens: channels in dimension 1
                keep = position_mask(current_token_mask(), h, f"layer {name!r}")
                self._add(name, "h", h, keep)
                if chain:
                    a = activation(self.model, edges[0].path, h) if edges else h
                    self._add(name, "a", a, keep)
                kept = h.numel() // h.shape[1] if keep is None else int(keep.sum())
                self.count[name] = self.count.get(name, 0) + kept
        return hook

    def _add(self, name: str, kind: str, x: torch.Tensor, keep: torch.Tensor | None) -> None:
        b, c = x.shape[0], x.shape[1]
        flat = x.reshape(b, c, -1)
        key = (name, kind)
        if key not in self.sums:
            self.sums[key] = [flat[0, :, 0].clone(), None, None]
        entry = self.sums[key]
        d = flat - entry[0][None, :, None]
        if keep is not None:  # padding deviates by nothing
            d = torch.where(keep.reshape(b, 1, -1), d, torch.zeros((), dtype=d.dtype,
                                                                   device=d.device))
        s1 = d.sum((0, 2), dtype=torch.float64)
        s2 = d.square_().sum((0, 2), dtype=torch.float64)
        entry[1] = s1 if entry[1] is None else entry[1] + s1
        entry[2] = s2 if entry[2] is None else entry[2] + s2

    def remove(self) -> None:
        for hd in self.handles:
            hd.remove()
        if self.maps is not None:
            self.maps.remove()

    def moments(self, name: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (float64) of ``h`` (kind "h") or ``a`` (kind "a")."""
        shift, s1, s2 = self.sums[(name, kind)]
        n = self.count[name]
        m1 = s1 / n
        var = (s2 / n - m1 * m1).clamp_min(0)
        return shift.to(torch.float64) + m1, var

    def group_moments(self, group: Group) -> dict[str, torch.Tensor]:
        """A group's ``out_var`` (the largest member variance; for a group held at a product,
        the product's variance as its consumers read it), ``act_mean``, ``act_var``."""
        act = self.maps.statistics(group.name)
        if group.held is not None:  # held at a product: its variance, as the consumers read it
            return {"out_var": act["act_var"], "act_mean": act["act_mean"],
                    "act_var": act["act_var"]}
        out_var = to_group(group, {m: self.moments(m, "h")[1] for m in group.members}, "max")
        return {"out_var": out_var, "act_mean": act["act_mean"], "act_var": act["act_var"]}


def _weight_stats(model: nn.Module, graph: UnitGraph, name: str) -> dict[str, torch.Tensor]:
    group = graph.groups[name]
    if not is_chain(group):
        return _group_weight_stats(model, group)
    w = effective_tensor(model.get_submodule(name), "weight").detach()
    n = w.shape[0]
    w_in = w.reshape(n, -1).abs().sum(1, dtype=torch.float64)
    w_out = torch.zeros(n, dtype=torch.float64)
    w_max = torch.zeros(n, dtype=torch.float64)
    idx = torch.arange(n)
    for edge in graph.producers[name].edges:
        cmod = model.get_submodule(edge.consumer)
        cw = dense_weight(cmod).detach()
        cols = edge.columns(idx)
        block = cw.index_select(1, cols.to(cw.device)).abs().to(torch.float64)
        # (out, n * block, ...) -> per producer unit
        block = block.transpose(0, 1).reshape(n, edge.block, cw.shape[0], -1)
        w_out += block.sum((1, 2, 3))
        w_max = torch.maximum(w_max, block.amax((1, 2, 3)))
    return {"w_in_l1": w_in, "w_out_l1": w_out, "w_out_max": w_max}


def _group_weight_stats(model: nn.Module, group: Group) -> dict[str, torch.Tensor]:
    """``sum_m ||W_{m,i}||_1`` over the members, and the L1 norm and largest magnitude of
    every consumer's columns at the group's positions."""
    f64 = torch.float64
    rows = {}
    for m in group.members:
        w = effective_tensor(model.get_submodule(m), "weight").detach()
        rows[m] = w.reshape(w.shape[0], -1).abs().sum(1, dtype=f64)
    w_out = torch.zeros(group.size, dtype=f64)
    w_max = torch.zeros(group.size, dtype=f64)
    for c in group.consumers:
        labels = group.nodes[c.node].labels
        pos = (labels >= 0).nonzero().reshape(-1)
        cmod = model.get_submodule(c.name)
        cw = dense_weight(cmod).detach()  # (out, in, ...): a grouped conv's columns spread
        cols = (pos[:, None] * c.block + torch.arange(c.block)).reshape(-1)
        block = cw.index_select(1, cols.to(cw.device)).abs().to(f64)
        block = block.transpose(0, 1).reshape(pos.numel(), c.block, cw.shape[0], -1)
        w_out.index_add_(0, labels[pos], block.sum((1, 2, 3)).cpu())
        w_max.scatter_reduce_(0, labels[pos], block.amax((1, 2, 3)).cpu(), "amax")
    return {"w_in_l1": to_group(group, rows), "w_out_l1": w_out, "w_out_max": w_max}


def find_dead_units(model: nn.Module, data: Iterable, *, layers: Iterable[str] | None = None,
                    loss_fn: Callable = F.cross_entropy,
                    thresholds: DeadUnitThresholds | Mapping[str, Any] | None = None,
                    exact_mrp: bool = False, example_input: torch.Tensor | None = None,
                    exclude: Iterable[str] = ()) -> DeadUnitReport:
    """Flag the dead, dormant and frozen units of ``model`` on ``data``.

    See the module docstring for the criteria (thesis Def. 3.2.1-3.2.2, ReDo,
    APoZ) and their defaults. One forward and backward pass over ``data``
    gives every criterion but ``low_mrp``; ``exact_mrp=True`` adds the exact
    MRP (Def. 3.1.1) in a second pass.

    Args:
        model: the model (evaluated in eval mode, never changed).
        data: an iterable of ``(inputs, targets)`` batches. Batches ``(inputs, None)`` (data
            without targets) give every criterion but those of :data:`TARGET_CRITERIA`,
            which need the loss's gradient (listed in :attr:`DeadUnitReport.skipped`).
        layers: groups to examine by name (default: every prunable one of
            :func:`saliency.trace`; a producer on a chain is its own group).
        loss_fn: ``loss_fn(output, target, reduction="none")``.
        thresholds: a :class:`DeadUnitThresholds` or a dict of its fields.
        exact_mrp: also compute the exact MRP and the ``low_mrp`` criterion.
        example_input: an input batch to trace with (default: the first batch).
        exclude: producers left out of the graph (see :func:`saliency.trace`).

    Returns:
        A :class:`DeadUnitReport`.

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> with torch.no_grad():
        ...     net[2].weight[:, 1] = 0           # unit 1 has no outgoing weight
        >>> data = [(torch.randn(64, 4), torch.randint(0, 3, (64,)))]
        >>> report = find_dead_units(net, data)
        >>> report.dead(["zero_outgoing"])["0"].tolist()
        [1]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    th = _thresholds(thresholds)
    if data is None:
        raise ValueError("find_dead_units needs data: an iterable of (inputs, targets) batches")
    if iter(data) is data:
        data = list(data)
    targets = next(iter_batches(data))[1] is not None  # fails early on empty data too
    if not targets:
        if exact_mrp:
            raise ValueError("exact MRP (low_mrp) needs targets: it is a change of the loss, "
                             "and the data's batches have none (targets None); pass "
                             "(inputs, targets) batches, or leave exact_mrp off")
        loss_fn = _no_loss
    example = example_input if example_input is not None else next(iter_inputs(data))
    graph = trace(model, example, exclude=exclude)
    names = select_layers(model, graph, None if layers is None else list(layers))
    stats, total_loss = _unit_stats(model, graph, names, data, loss_fn)
    if exact_mrp:
        mrp = MRP(layers=names, exclude=exclude, example_input=example).score(model, data, loss_fn)
        for name in names:
            stats["mrp"][name] = mrp[name].to(torch.float64)
            stats["mrp_rel"][name] = _relative(stats["mrp"][name])
    else:
        del stats["mrp"], stats["mrp_rel"]
    criteria = criterion_names(th, exact_mrp, targets)
    samples = sum(int(x.shape[0]) for x in iter_inputs(data))
    if not targets:
        for key in ("mrs", "mrs_rel", "grad_norm", "grad_rel"):
            stats[key] = {n: torch.full_like(stats[key][n], math.nan) for n in names}
    return DeadUnitReport(
        layers=list(names), num_units={n: graph.groups[n].size for n in names},
        stats=stats, flags=_flags(stats, names, th, criteria), thresholds=th, samples=samples,
        loss=total_loss / max(samples, 1) if targets else math.nan, exact_mrp=bool(exact_mrp),
        criteria=criteria, members={n: list(graph.groups[n].members) for n in names},
        skipped=[] if targets else [c for c in criterion_names(th, exact_mrp)
                                    if c in TARGET_CRITERIA])


def _no_loss(out: torch.Tensor, y: Any, reduction: str = "mean") -> torch.Tensor:
    """A loss of 0 per sample (data without targets: the gradient criteria are skipped)."""
    zero = out.reshape(out.shape[0], -1).sum(1) * 0.0
    return zero if reduction == "none" else zero.sum()


def _thresholds(thresholds: DeadUnitThresholds | Mapping[str, Any] | None
                ) -> DeadUnitThresholds:
    """``thresholds`` as a :class:`DeadUnitThresholds` (None: the defaults)."""
    if thresholds is None:
        return DeadUnitThresholds()
    if isinstance(thresholds, DeadUnitThresholds):
        return thresholds
    if isinstance(thresholds, Mapping):
        return DeadUnitThresholds.from_mapping(thresholds)
    raise TypeError(f"thresholds must be DeadUnitThresholds or a dict, got "
                    f"{type(thresholds).__name__}")


def _unit_stats(model: nn.Module, graph: UnitGraph, names: Sequence[str], data,
                loss_fn: Callable) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """Every statistic of :data:`UNIT_STATISTICS` but MRP, from one forward and backward pass.

    Returns ``({statistic: {layer: tensor}}, summed per-sample loss)``; the
    ``mrp`` entries are empty.
    """
    total = {"loss": 0.0}
    with preserved(model):
        moments = _ShiftedMoments(model, graph, names)
        try:
            st = unit_statistics(model, graph, names, data, summing_loss(loss_fn, total),
                                 stats=["mean", "mrs", "dormancy", "apoz", "grad_norm"])
        finally:
            moments.remove()
    stats: dict[str, dict[str, torch.Tensor]] = {s: {} for s in UNIT_STATISTICS}
    for name in names:
        group = graph.groups[name]
        if is_chain(group):
            _, out_var = moments.moments(name, "h")
            act_mean, act_var = moments.moments(name, "a")
        else:
            gm = moments.group_moments(group)
            out_var, act_mean, act_var = gm["out_var"], gm["act_mean"], gm["act_var"]
        stats["mean"][name] = st["mean"][name]
        stats["out_var"][name] = out_var
        stats["out_var_rel"][name] = _relative(out_var)
        stats["act_mean"][name] = act_mean
        stats["act_var"][name] = act_var
        stats["act_var_rel"][name] = _relative(act_var)
        stats["mrs"][name] = st["mrs"][name]
        stats["mrs_rel"][name] = _relative(st["mrs"][name])
        stats["redo"][name] = st["dormancy"][name]
        stats["apoz"][name] = st["apoz"][name]
        stats["grad_norm"][name] = st["grad_norm"][name]
        stats["grad_rel"][name] = _relative(st["grad_norm"][name])
        for key, val in _weight_stats(model, graph, name).items():
            stats[key][name] = val
    return stats, total["loss"]


def _flags(stats: dict[str, dict[str, torch.Tensor]], names: Sequence[str],
           th: DeadUnitThresholds, criteria: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{criterion: {layer: bool tensor}}``: each criterion's threshold on its statistic."""
    flags: dict[str, dict[str, torch.Tensor]] = {c: {} for c in criteria}
    for name in names:
        if "low_mrp" in flags:
            flags["low_mrp"][name] = stats["mrp_rel"][name] <= th.mrp_rel
        if "low_mrs" in flags:
            flags["low_mrs"][name] = stats["mrs_rel"][name] <= th.mrs_rel
        flags["constant"][name] = stats["out_var_rel"][name] <= th.var_rel
        flags["constant_activation"][name] = stats["act_var_rel"][name] <= th.var_rel
        flags["never_active"][name] = stats["apoz"][name] >= th.apoz
        for t in th.taus:
            flags[f"dormant@{t:g}"][name] = stats["redo"][name] <= t
        flags["zero_outgoing"][name] = stats["w_out_max"][name] <= th.outgoing_atol
        if "frozen" in flags:
            flags["frozen"][name] = stats["grad_rel"][name] <= th.grad_rel
    return flags
