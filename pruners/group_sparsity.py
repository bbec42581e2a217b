"""Proximal group sparsity: learning the number of neurons with a sparse group lasso.

J. M. Alvarez and M. Salzmann, *Learning the Number of Neurons in Deep
Networks*, NeurIPS 2016,
https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks
(Alvarez & Salzmann 2016) group the parameters of neuron
``n`` of layer ``l`` as ``theta_l^n = [w_l^n, b_l^n]`` (its incoming weights
and its bias, ``P_l`` numbers) and train with the regularizer

    gamma(Theta) = sum_l [ (1 - alpha) beta_l sqrt(P_l) sum_n ||theta_l^n||_2
                           + alpha beta_l ||theta_l||_1 ]                       (SGL)

``alpha = 0`` is the group lasso (group sparsity), ``alpha in [0, 1]`` the
sparse group lasso; ``beta_l >= 0`` is the strength of layer ``l``. They
minimize it by proximal gradient descent: after each (mini-batch) gradient
step of size ``t`` giving ``theta_hat``, every group is replaced by

    theta~ = argmin_x (1 / 2t) ||x - theta_hat||_2^2 + gamma(x)
           = (1 - t (1 - alpha) beta_l sqrt(P_l) / ||S(theta_hat, t alpha beta_l)||_2)_+
             * S(theta_hat, t alpha beta_l),        S(a, b) = sign(a) (|a| - b)_+   (PROX)

(Simon et al. 2013), and "when the learning steps terminate, we remove the
neurons whose parameters have gone to zero". *Learning Network Size while
Training with ShrinkNets* (2018; "the ShrinkNets draft"), eq. 5-8, uses the
same penalty with other groups:
the *columns* ``(A^T)_j`` of a fully connected layer ``A x + b``, whose zero
columns remove input ``j`` (eq. 6).

What this module provides:

* **Groupings** (:data:`GROUPINGS`): how a layer's parameters are cut into
  groups, as ``(tensor, dim)`` slices (group ``n`` = index ``n`` along ``dim``
  of every listed tensor). ``"units"`` (the default: weight row or filter and
  bias of each output unit), ``"columns"`` (the input columns of a Linear,
  draft eq. 6) and ``"in_channels"`` (the input channels of a convolution). A
  new grouping is one more :class:`Grouping` entry
  (:func:`register_grouping`).
* :func:`group_layout`: resolve ``{layer: grouping}`` (default: ``"units"`` on
  every prunable producer of :func:`pruners.trace`) into
  :class:`LayerGroups`.
* :func:`soft_threshold` and :func:`prox_sparse_group_lasso`: ``S`` and the
  closed form (PROX) on any ``N x P`` tensor of groups.
* :func:`group_sparsity_penalty` and :func:`group_norms`: the penalty (SGL)
  as a differentiable tensor (for logging, or for subgradient training), and
  the group norms.
* :class:`ProximalGroupSparsity`: the proximal step applied in place right
  after ``optimizer.step()``, with each parameter's step size ``t`` read from
  the learning rate of its optimizer param group (so learning-rate schedulers
  are honoured).
* :func:`zero_groups` and :func:`remove_zero_groups`: the groups that are
  exactly zero, and their physical removal through
  :func:`pruners.remove_units` (bias propagation, optimizer state sliced).

Everything validates first and mutates after: an error leaves the model and
the optimizer as they were.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Union

import torch
import torch.nn as nn

from saliency.graph import UnitGraph
from saliency.tracing import trace
from saliency.layers import PRODUCERS

from .surgery import InexactReplacementWarning, RemovalReport, remove_units

__all__ = [
    "Grouping",
    "GROUPINGS",
    "register_grouping",
    "LayerGroups",
    "group_layout",
    "soft_threshold",
    "prox_sparse_group_lasso",
    "group_norms",
    "group_sparsity_penalty",
    "zero_groups",
    "remove_zero_groups",
    "ProximalGroupSparsity",
]

Strength = Union[float, Mapping[str, float]]
GroupSpec = Union[None, Mapping[str, str], Mapping[str, "LayerGroups"]]


# --------------------------------------------------------------------------- groupings


@dataclass(frozen=True)
class Grouping:
    """A way of cutting a layer's parameters into non-overlapping groups ``theta_l^n``.

    The groups of the penalty ``sum_l (1 - alpha) beta_l sqrt(P_l) sum_n
    ||theta_l^n||_2 + alpha beta_l ||theta_l||_1``: Alvarez & Salzmann 2016
    use ``theta_l^n = [w_l^n, b_l^n]`` (``"units"``), the ShrinkNets draft
    (eq. 6) the columns
    ``(A^T)_j`` of a layer (``"columns"``).

    Attributes:
        name: registry name (``"units"``, ``"columns"``, ...).
        applies: ``applies(module) -> str | None``: why this grouping does not
            fit ``module`` (None if it does).
        slices: ``slices(module) -> ((tensor name, dim), ...)``: group ``n``
            is index ``n`` along ``dim`` of every listed tensor, so all of them
            have the same size along their ``dim`` (the number of groups).
        removal: ``removal(model, graph, layer, indices) -> {producer: units}``:
            the units of the graph that zero groups ``indices`` of ``layer``
            allow to remove exactly, or None if this grouping has no removal
            rule. It raises ValueError (naming the layer) when the zero groups
            cannot be removed.
        description: one line for the docs.
    """

    name: str
    applies: Callable[[nn.Module], str | None]
    slices: Callable[[nn.Module], tuple[tuple[str, int], ...]]
    removal: Callable[[nn.Module, UnitGraph, str, torch.Tensor], dict[str, torch.Tensor]] | None
    description: str = ""


def _units_applies(m: nn.Module) -> str | None:
    if type(m) not in PRODUCERS:
        return (f"{type(m).__name__} is not a producer layer (one of "
                f"{sorted(t.__name__ for t in PRODUCERS)})")
    return None


def _units_slices(m: nn.Module) -> tuple[tuple[str, int], ...]:
    return (("weight", 0),) + ((("bias", 0),) if getattr(m, "bias", None) is not None else ())


def _units_removal(model: nn.Module, graph: UnitGraph, layer: str, idx: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    prod = graph.producers.get(layer)
    if prod is None or not prod.prunable:
        why = "it is not a layer of the graph" if prod is None else prod.reason
        raise ValueError(f"layer {layer!r}: its zero unit groups cannot be removed ({why})")
    group = graph.group_of(layer)
    if group.joined:
        raise ValueError(_joined_refusal(layer, group, "its zero unit groups cannot be removed"))
    return {layer: idx}


def _joined_refusal(layer: str, group, what: str) -> str:
    return (f"layer {layer!r}: {what}: the residual group {group.name!r} "
            f"({', '.join(group.members)}) sums its channels over its members, and a channel is "
            "removed from every member and every reader at once; group sparsity removes "
            "neurons of chains only")


def _feeding_producer(graph: UnitGraph, layer: str):
    for prod in graph.producers.values():
        group = graph.groups[prod.group]
        if group.joined:
            if any(c.name == layer for c in group.consumers):
                return prod, None
            continue
        for edge in prod.edges:
            if edge.consumer == layer:
                return prod, edge
    return None, None


def _unused_units(model: nn.Module, prod) -> torch.Tensor:
    """Units of ``prod`` whose columns are exactly zero in every consumer (bool mask)."""
    from saliency.layers import dense_weight

    dead = torch.ones(prod.num_units, dtype=torch.bool)
    units = torch.arange(prod.num_units)
    for edge in prod.edges:
        w = dense_weight(model.get_submodule(edge.consumer)).detach()
        cols = w.index_select(1, edge.columns(units).to(w.device))
        per = cols.transpose(0, 1).reshape(prod.num_units, -1)
        dead &= (per == 0).all(dim=1).cpu()
    return dead


def _inputs_removal(model: nn.Module, graph: UnitGraph, layer: str, idx: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """Zero input groups of ``layer`` -> the feeding producer's units nobody reads."""
    prod, edge = _feeding_producer(graph, layer)
    if prod is None:
        raise ValueError(
            f"layer {layer!r}: its zero input groups cannot be removed: no layer of the graph "
            "produces its inputs (it reads the model's input). Put an identity layer before "
            "it (see experiments.studies.shrinknets.gamma) or drop those input features from the data")
    if not prod.prunable:
        raise ValueError(f"layer {layer!r}: its zero input groups cannot be removed: their "
                         f"producer {prod.name!r} is not prunable ({prod.reason})")
    if edge is None:
        raise ValueError(_joined_refusal(layer, graph.group_of(prod.name),
                                         "its zero input groups cannot be removed"))
    zero = torch.zeros(getattr(model.get_submodule(layer), PRODUCERS[type(
        model.get_submodule(layer))].in_attr), dtype=torch.bool)
    zero[idx.cpu()] = True
    units = torch.arange(prod.num_units)
    cols = edge.columns(units).reshape(prod.num_units, -1)
    covered = zero[cols].all(dim=1)
    removable = covered & _unused_units(model, prod)
    return {prod.name: removable.nonzero().reshape(-1)}


#: name -> Grouping. ``"units"`` is the grouping of Alvarez & Salzmann (one
#: group per output unit); ``"columns"`` the ShrinkNets draft's eq. 6.
GROUPINGS: dict[str, Grouping] = {}


def register_grouping(grouping: Grouping) -> None:
    """Add a grouping to :data:`GROUPINGS` (its name must be new).

    A new way of grouping parameters for the sparse group lasso (Alvarez &
    Salzmann 2016) is one call, e.g. for the rows of a weight without the
    bias::

        register_grouping(Grouping("rows", lambda m: None, lambda m: (("weight", 0),),
                                   None, "weight rows only"))
    """
    if not isinstance(grouping, Grouping):
        raise TypeError(f"expected a Grouping, got {type(grouping).__name__}")
    if grouping.name in GROUPINGS:
        raise ValueError(f"grouping {grouping.name!r} is already registered")
    GROUPINGS[grouping.name] = grouping


register_grouping(Grouping(
    "units", _units_applies, _units_slices, _units_removal,
    "theta_n = [w_n, b_n]: the weight row (filter) and bias of output unit n "
    "(Alvarez & Salzmann 2016)"))
register_grouping(Grouping(
    "columns",
    lambda m: None if isinstance(m, nn.Linear) else
    f"'columns' groups the input columns of an nn.Linear, not of {type(m).__name__}",
    lambda m: (("weight", 1),), _inputs_removal,
    "theta_j = (A^T)_j: the column of input j of a Linear layer A x + b (ShrinkNets draft eq. 6)"))
register_grouping(Grouping(
    "in_channels",
    lambda m: None if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1 else
    f"'in_channels' groups the input channels of an ungrouped Conv1d/Conv2d, not of "
    f"{type(m).__name__}" + (f" with groups={m.groups}" if hasattr(m, "groups") else ""),
    lambda m: (("weight", 1),), _inputs_removal,
    "theta_c = W[:, c]: every kernel of input channel c of a convolution"))


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class LayerGroups:
    """The groups ``theta_l^1 .. theta_l^N`` of one layer: ``grouping`` applied to ``layer``.

    :meth:`matrix` stacks them as the rows of an ``N x P_l`` tensor, the
    layout on which the penalty and the proximal step of Alvarez & Salzmann
    2016 act. Shapes are read from the module at every call, so a layout
    stays valid when units are removed (the number of groups and ``P_l``
    follow).
    """

    layer: str
    grouping: str

    def slices(self, model: nn.Module) -> tuple[tuple[str, int], ...]:
        return GROUPINGS[self.grouping].slices(model.get_submodule(self.layer))

    def parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
        """``(qualified name, parameter, dim)`` of every tensor of the groups.

        Raises ValueError for a tensor masked with :mod:`torch.nn.utils.prune`
        (the proximal step writes parameters; remove the mask first) or one
        that is not a parameter.
        """
        mod = model.get_submodule(self.layer)
        out = []
        for tname, dim in self.slices(model):
            q = f"{self.layer}.{tname}" if self.layer else tname
            if tname + "_orig" in mod._parameters:
                raise ValueError(f"layer {self.layer!r}: {tname!r} is masked with "
                                 "torch.nn.utils.prune; call prune.remove first (the proximal "
                                 "step writes the parameter itself)")
            p = mod._parameters.get(tname)
            if not isinstance(p, nn.Parameter):
                raise ValueError(f"layer {self.layer!r}: {tname!r} is not a parameter")
            out.append((q, p, dim))
        return out

    def num_groups(self, model: nn.Module) -> int:
        _, p, dim = self.parameters(model)[0]
        return int(p.shape[dim])

    def group_size(self, model: nn.Module) -> int:
        """``P_l``: the number of parameters in one group."""
        return sum(p.numel() // max(p.shape[dim], 1) for _, p, dim in self.parameters(model))

    def matrix(self, model: nn.Module) -> torch.Tensor:
        """The groups as rows of an ``N x P`` tensor (differentiable; a new tensor)."""
        parts = [p.movedim(dim, 0).reshape(p.shape[dim], -1)
                 for _, p, dim in self.parameters(model)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def write(self, model: nn.Module, matrix: torch.Tensor) -> None:
        """Copy rows of ``matrix`` back into the parameters, in place (call under no_grad)."""
        start = 0
        for _, p, dim in self.parameters(model):
            moved = p.movedim(dim, 0)
            width = moved[0].numel() if moved.shape[0] else 0
            chunk = matrix[:, start:start + width].reshape(moved.shape)
            p.copy_(chunk.movedim(0, dim))
            start += width


def group_layout(model: nn.Module, groups: GroupSpec = None, *,
                 example_input: torch.Tensor | None = None,
                 exclude: Iterable[str] = ()) -> dict[str, LayerGroups]:
    """Resolve a grouping spec into ``{layer: LayerGroups}``.

    Args:
        model: the model.
        groups: ``{layer name: grouping name of GROUPINGS}``; None: ``"units"``
            on every prunable producer of :func:`pruners.trace` (the layers
            whose output feeds another layer), the grouping of Alvarez &
            Salzmann 2016, except the members of residual groups (layers whose
            outputs a residual add sums): their neurons are not one layer's
            rows, and this method removes neurons of chains only.
        example_input: an input batch, to trace convolutional models (only
            needed when ``groups`` is None).
        exclude: producers left out of the default layout.

    Raises:
        ValueError: unknown layer or grouping, a grouping that does not fit
            its layer, two layers sharing a parameter (overlapping groups, for
            which (PROX) is not the proximal operator), no prunable layer.
    """
    if groups is None:
        graph = trace(model, example_input, exclude=exclude)
        if not graph.prunable:
            raise ValueError(f"{type(model).__name__} has no prunable units (no Linear/Conv "
                             "layer whose output feeds another layer); pass groups= explicitly")
        spec: dict[str, str] = {name: "units" for name in graph.prunable
                                if not graph.groups[name].joined}
        if not spec:
            raise ValueError(f"{type(model).__name__} has no prunable layer outside residual "
                             "groups; pass groups= explicitly")
    elif isinstance(groups, Mapping):
        spec = {}
        for layer, kind in groups.items():
            spec[layer] = kind.grouping if isinstance(kind, LayerGroups) else kind
    else:
        raise TypeError(f"groups must map layer names to grouping names, got "
                        f"{type(groups).__name__}")
    if not spec:
        raise ValueError("groups is empty: name at least one layer")
    modules = dict(model.named_modules())
    out: dict[str, LayerGroups] = {}
    owner: dict[int, str] = {}
    for layer, kind in spec.items():
        if not isinstance(layer, str) or layer not in modules:
            known = [n for n, m in modules.items() if type(m) in PRODUCERS]
            raise ValueError(f"unknown layer {layer!r}; layers with weights: {known}")
        if kind not in GROUPINGS:
            raise ValueError(f"layer {layer!r}: unknown grouping {kind!r}; known: "
                             f"{sorted(GROUPINGS)}")
        why = GROUPINGS[kind].applies(modules[layer])
        if why:
            raise ValueError(f"layer {layer!r}: {why}")
        lg = LayerGroups(layer, kind)
        sizes = set()
        for q, p, dim in lg.parameters(model):
            if id(p) in owner:
                raise ValueError(f"layer {layer!r}: parameter {q!r} is also grouped by layer "
                                 f"{owner[id(p)]!r}; groups must not overlap")
            owner[id(p)] = layer
            sizes.add(int(p.shape[dim]))
        if len(sizes) != 1:
            raise ValueError(f"layer {layer!r}: its tensors disagree on the number of groups "
                             f"({sorted(sizes)})")
        out[layer] = lg
    return out


def _layout(model, groups, example_input=None, exclude=()) -> dict[str, LayerGroups]:
    if isinstance(groups, Mapping) and groups and all(
            isinstance(v, LayerGroups) for v in groups.values()):
        return dict(groups)
    return group_layout(model, groups, example_input=example_input, exclude=exclude)


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _alpha(alpha) -> float:
    a = _number("alpha", alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


def _strengths(strength: Strength, layers: Iterable[str]) -> dict[str, float]:
    layers = list(layers)
    if isinstance(strength, Mapping):
        unknown = [k for k in strength if k not in layers]
        if unknown:
            raise ValueError(f"strength names layers without groups: {unknown}; grouped layers "
                             f"are {layers}")
        missing = [k for k in layers if k not in strength]
        if missing:
            raise ValueError(f"strength gives no value for layers {missing} (give 0 to leave a "
                             "layer unpenalized)")
        out = {k: _number(f"strength of layer {k!r}", strength[k]) for k in layers}
    else:
        v = _number("strength", strength)
        out = {k: v for k in layers}
    bad = {k: v for k, v in out.items() if v < 0}
    if bad:
        raise ValueError(f"strengths must be >= 0, got {bad}")
    return out


# --------------------------------------------------------------------------- the operators


def soft_threshold(a: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
    """``S(a, b) = sign(a) (|a| - b)_+``, elementwise: the soft threshold.

    The proximal operator of ``b ||.||_1`` and the inner step of the sparse
    group lasso's proximal operator (Alvarez & Salzmann 2016; Simon et al.
    2013).

    Examples:
        >>> soft_threshold(torch.tensor([-3.0, 0.5, 2.0]), 1.0)
        tensor([-2.,  0.,  1.])
    """
    return torch.sign(a) * torch.clamp(a.abs() - b, min=0)


def prox_sparse_group_lasso(v: torch.Tensor, t: float, strength: float, alpha: float = 0.0,
                            group_size: int | None = None) -> torch.Tensor:
    """The proximal operator of the sparse group lasso, group by group (closed form).

    For every row ``v_n`` of ``v`` (one group), returns the minimizer of

        (1 / 2t) ||x - v_n||_2^2 + (1 - alpha) beta sqrt(P) ||x||_2 + alpha beta ||x||_1

    which is (Alvarez & Salzmann 2016; Simon et al. 2013)

        x* = (1 - t (1 - alpha) beta sqrt(P) / ||S(v_n, t alpha beta)||_2)_+ S(v_n, t alpha beta)

    with ``S`` the soft threshold (:func:`soft_threshold`). A group whose
    ``||S||_2`` is at most ``t (1 - alpha) beta sqrt(P)`` becomes exactly
    zero, including ``||S|| = 0`` (no division, no NaN). ``alpha = 0`` is the
    group lasso (whole groups vanish or shrink towards 0); ``alpha = 1`` is
    elementwise soft thresholding at ``t beta``.

    Args:
        v: ``N x P`` groups as rows (a 1-D tensor is one group).
        t: the step size (> 0).
        strength: ``beta >= 0``.
        alpha: in ``[0, 1]``.
        group_size: ``P`` in ``sqrt(P)`` (default: the rows' length).

    Returns:
        A new tensor shaped like ``v``.

    Examples:
        >>> v = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> prox_sparse_group_lasso(v, t=1.0, strength=0.5 / 2 ** 0.5)
        tensor([[2.7000, 3.6000],
                [0.0000, 0.0000]])
    """
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError("v must be a floating-point tensor")
    t = _number("t", t)
    if t <= 0:
        raise ValueError(f"the step size t must be > 0, got {t!r}")
    beta = _number("strength", strength)
    if beta < 0:
        raise ValueError(f"strength must be >= 0, got {strength!r}")
    a = _alpha(alpha)
    rows = v.reshape(1, -1) if v.dim() == 1 else v
    if rows.dim() != 2:
        raise ValueError(f"v must be 1-D or N x P, got shape {tuple(v.shape)}")
    p = rows.shape[1] if group_size is None else group_size
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    return _prox(rows, t, beta, a, p).reshape(v.shape)


def _prox(rows: torch.Tensor, t: float, beta: float, alpha: float, p: int) -> torch.Tensor:
    s = soft_threshold(rows, t * alpha * beta) if alpha > 0 else rows
    thr = t * (1.0 - alpha) * beta * math.sqrt(p)
    norm = torch.linalg.vector_norm(s, dim=1, keepdim=True)
    keep = norm > thr  # a zero S (norm 0) is never kept, also when thr = 0
    scale = torch.where(keep, 1.0 - thr / torch.where(keep, norm, torch.ones_like(norm)),
                        torch.zeros_like(norm))
    return s * scale


def group_norms(model: nn.Module, groups: GroupSpec = None, *,
                example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``||theta_l^n||_2`` of every group, ``{layer: 1-D tensor}`` (detached).

    The norms the group-sparsity penalty sums (Alvarez & Salzmann 2016):
    ``sum_l beta_l sqrt(P_l) sum_n ||theta_l^n||_2``.
    ``groups`` as in :func:`group_layout`.
    """
    layout = _layout(model, groups, example_input)
    with torch.no_grad():
        return {n: torch.linalg.vector_norm(lg.matrix(model), dim=1)
                for n, lg in layout.items()}


def group_sparsity_penalty(model: nn.Module, strength: Strength, alpha: float = 0.0,
                           groups: GroupSpec = None, *,
                           example_input: torch.Tensor | None = None) -> torch.Tensor:
    """The sparse group lasso penalty (Alvarez & Salzmann 2016)::

        gamma(Theta) = sum_l [ (1 - alpha) beta_l sqrt(P_l) sum_n ||theta_l^n||_2
                               + alpha beta_l ||theta_l||_1 ]

    over the grouped layers ``l`` (``||theta_l||_1`` is the L1 norm of the
    layer's grouped parameters, ``sum_n ||theta_l^n||_1``). ``alpha = 0`` is
    group sparsity (the ShrinkNets draft's eq. 5 with ``lambda = beta_l``).

    Args:
        model: the model.
        strength: ``beta_l``: one number for every layer, or ``{layer: beta}``
            naming every grouped layer.
        alpha: in ``[0, 1]``.
        groups: the grouping spec of :func:`group_layout` (default: the units
            of every prunable layer).
        example_input: to trace a convolutional model for the default groups.

    Returns:
        A scalar tensor, differentiable (the subgradient at a zero group is
        0), in the parameters' dtype: log it, or add it to a loss to train by
        subgradient descent instead of with the proximal step.
    """
    a = _alpha(alpha)
    layout = _layout(model, groups, example_input)
    betas = _strengths(strength, layout)
    total = None
    for name, lg in layout.items():
        m = lg.matrix(model)
        term = ((1.0 - a) * betas[name] * math.sqrt(lg.group_size(model))
                * torch.linalg.vector_norm(m, dim=1).sum() + a * betas[name] * m.abs().sum())
        total = term if total is None else total + term
    return total


def zero_groups(model: nn.Module, groups: GroupSpec = None, *,
                example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Indices of the groups whose every entry is exactly 0, per layer (sorted int64).

    ``{layer: n with theta_l^n = 0}``: the neurons (or inputs) the proximal
    step of the sparse group lasso has switched off, the ones Alvarez &
    Salzmann 2016 remove when training ends (:func:`remove_zero_groups`).
    ``groups`` as in :func:`group_layout`.
    """
    layout = _layout(model, groups, example_input)
    with torch.no_grad():
        return {n: (lg.matrix(model) == 0).all(dim=1).nonzero().reshape(-1).cpu()
                for n, lg in layout.items()}


def remove_zero_groups(model: nn.Module, groups: GroupSpec = None, *,
                       optimizer: torch.optim.Optimizer | None = None,
                       example_input: torch.Tensor | None = None, exclude: Iterable[str] = (),
                       layers: Iterable[str] | None = None, min_units: int = 1
                       ) -> RemovalReport | None:
    """Remove the neurons whose group is exactly zero, exactly, with :func:`pruners.remove_units`.

    Alvarez & Salzmann 2016: "when the learning steps terminate, we remove
    the neurons whose parameters have gone to zero". Usable after training or
    on a schedule during it (the optimizer's state is sliced, so the same
    optimizer goes on).

    * ``"units"`` groups: a unit with ``w_n = 0`` and ``b_n = 0`` outputs 0 for
      every input. It is removed with ``replacement="zero"``: the constant its
      per-channel path makes of 0 (an eval-mode BatchNorm's shift, the
      activation of 0) is folded into the consumers' biases (bias
      propagation), so the model in eval mode computes exactly what it
      computed. (In training mode a BatchNorm normalizes with batch
      statistics, and a constant channel gives its bias ``beta``, not the
      eval-mode constant.)
    * ``"columns"`` / ``"in_channels"`` groups: a zero input column ``j`` of a
      layer reads unit ``j`` of the layer feeding it; that unit is removed
      when no consumer reads it any more (all its columns zero), which changes
      nothing. A layer reading the model's input has no such unit: its zero
      columns cannot be removed (a ValueError says so).
    * Residual groups (see :func:`pruners.trace`): zero groups of a member's
      units, or of the inputs of a layer reading a residual stream, are
      refused with a ValueError naming the group: a stream channel is removed
      from every member and every reader at once.

    Args:
        model: changed in place.
        groups: the grouping spec (default: units of every prunable layer).
        optimizer: its per-parameter state is sliced with the parameters.
        example_input: an input batch (needed for convolutional models).
        exclude: passed to :func:`pruners.trace`.
        layers: grouped layers whose zero groups to remove (default: all).
        min_units: fewest units a layer keeps: if more of its units are zero,
            the ones with the lowest indices stay (they output constants).

    Returns:
        The :class:`~pruners.RemovalReport`, or None when no group is zero.

    Raises:
        ValueError: zero groups that cannot be removed, unknown layers, and
            the errors of :func:`pruners.remove_units`; nothing is changed.
    """
    layout = _selected_layout(_layout(model, groups, example_input, exclude), layers)
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"min_units must be an int >= 1, got {min_units!r}")
    zeros = {n: i for n, i in zero_groups(model, layout).items() if i.numel()}
    if not zeros:
        return None
    graph = trace(model, example_input, exclude=exclude)
    plan = _removal_plan(graph, _units_of_zero_groups(model, graph, layout, zeros), min_units)
    if not plan:
        return None
    # A removed unit whose columns are zero in every consumer folds nothing: a warning about
    # a zero-padded consumer's borders would be about a fold of exactly 0.
    silent = all(bool(_unused_units(model, graph.producers[p])[u].all()) for p, u in plan.items())
    with warnings.catch_warnings():
        if silent:
            warnings.simplefilter("ignore", InexactReplacementWarning)
        return remove_units(model, {p: u.tolist() for p, u in plan.items()}, replacement="zero",
                            optimizer=optimizer, example_input=example_input, exclude=exclude,
                            min_units=min_units)


def _selected_layout(layout: dict[str, LayerGroups], layers: Iterable[str] | None
                     ) -> dict[str, LayerGroups]:
    """``layout`` restricted to ``layers`` (None: all), which must all be grouped."""
    if layers is None:
        return layout
    layers = list(layers)
    unknown = [n for n in layers if n not in layout]
    if unknown:
        raise ValueError(f"layers {unknown} have no groups; grouped layers are {list(layout)}")
    return {n: layout[n] for n in layers}


def _units_of_zero_groups(model: nn.Module, graph: UnitGraph, layout: dict[str, LayerGroups],
                          zeros: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{producer: units}`` the zero groups free, by each grouping's removal rule."""
    units: dict[str, torch.Tensor] = {}
    for name, idx in zeros.items():
        rule = GROUPINGS[layout[name].grouping].removal
        if rule is None:
            raise ValueError(f"layer {name!r}: grouping {layout[name].grouping!r} has no "
                             "removal rule")
        for prod, u in rule(model, graph, name, idx).items():
            if u.numel():
                units[prod] = torch.unique(torch.cat([units[prod], u])) if prod in units else u
    return units


def _removal_plan(graph: UnitGraph, units: dict[str, torch.Tensor], min_units: int
                  ) -> dict[str, torch.Tensor]:
    """``units`` sorted, each layer keeping at least ``min_units`` (the lowest indices stay)."""
    plan = {}
    for prod, u in units.items():
        room = graph.producers[prod].num_units - min_units
        u = u.sort().values
        if u.numel() > room:
            u = u[u.numel() - max(room, 0):] if room > 0 else u[:0]
        if u.numel():
            plan[prod] = u
    return plan


# --------------------------------------------------------------------------- the step


class ProximalGroupSparsity:
    """Proximal gradient descent with the sparse group lasso, after each optimizer step.

    Alvarez & Salzmann 2016: a gradient step of size ``t`` on the loss gives
    ``theta_hat``; then every group is replaced by

        theta~ = (1 - t (1 - alpha) beta_l sqrt(P_l) / ||S(theta_hat, t alpha beta_l)||_2)_+
                 * S(theta_hat, t alpha beta_l)

    the minimizer of ``(1 / 2t) ||x - theta_hat||^2 + gamma(x)``. Call
    :meth:`step` right after ``optimizer.step()``: ``t`` is the current
    learning rate of the param group holding the group's parameters (so a
    learning-rate scheduler changes it). With plain SGD this is exactly
    proximal stochastic gradient descent; after SGD with momentum or Adam it
    is the usual heuristic (the step is not ``t`` times the gradient).

    Args:
        model: the model whose parameters are updated in place.
        strength: ``beta_l``: a number, or ``{layer: beta}`` for every grouped
            layer (the paper uses smaller values for the first layers).
        alpha: ``0`` group lasso, in ``[0, 1]`` sparse group lasso.
        groups: ``{layer: grouping}`` (:func:`group_layout`); default: the
            units of every prunable layer.
        example_input: an input batch, for convolutional models.
        exclude: producers left out of the default layout and of the graph.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> prox = ProximalGroupSparsity(net, strength=10.0)   # units of '0' (P = 4 + 1)
        >>> prox.step(opt)      # t = 0.1: every ||theta_n|| <= 1.12 < 0.1 * 10 * sqrt(5)
        {'0': 8}
    """

    def __init__(self, model: nn.Module, strength: Strength, alpha: float = 0.0,
                 groups: GroupSpec = None, *, example_input: torch.Tensor | None = None,
                 exclude: Iterable[str] = ()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.alpha = _alpha(alpha)
        self.layout = group_layout(model, groups, example_input=example_input, exclude=exclude)
        self.strengths = _strengths(strength, self.layout)
        self.model = model
        self.example_input = example_input
        self.exclude = tuple(exclude)

    @property
    def groups(self) -> dict[str, str]:
        """``{layer: grouping}`` of this object."""
        return {n: lg.grouping for n, lg in self.layout.items()}

    def penalty(self) -> torch.Tensor:
        """``gamma(Theta)`` now (differentiable; see :func:`group_sparsity_penalty`)."""
        return group_sparsity_penalty(self.model, self.strengths, self.alpha, self.layout)

    def norms(self) -> dict[str, torch.Tensor]:
        """``||theta_l^n||_2`` per layer (see :func:`group_norms`)."""
        return group_norms(self.model, self.layout)

    def zero_groups(self) -> dict[str, torch.Tensor]:
        """Indices of the exactly-zero groups per layer (see :func:`zero_groups`)."""
        return zero_groups(self.model, self.layout)

    def step_sizes(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """``t`` of every grouped layer: its parameters' learning rate, validated.

        Raises ValueError naming the layer if a parameter of its groups is not
        in the optimizer, or if they sit in param groups with different
        learning rates (a group needs one step size), or if the rate is not
        a positive number.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        lr_of: dict[int, float] = {}
        for gi, g in enumerate(optimizer.param_groups):
            if "lr" not in g:
                raise ValueError(f"optimizer param group {gi} has no learning rate 'lr'")
            for p in g["params"]:
                lr_of[id(p)] = float(g["lr"])
        out = {}
        for name, lg in self.layout.items():
            rates = {}
            for q, p, _ in lg.parameters(self.model):
                if id(p) not in lr_of:
                    raise ValueError(f"layer {name!r}: parameter {q!r} is not in the optimizer; "
                                     "the proximal step takes its step size from the optimizer")
                rates[q] = lr_of[id(p)]
            if len(set(rates.values())) != 1:
                raise ValueError(f"layer {name!r}: the parameters of one group have different "
                                 f"learning rates {rates}; a group needs one step size")
            t = next(iter(rates.values()))
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"layer {name!r}: learning rate {t!r} is not a positive number")
            out[name] = t
        return out

    def step(self, optimizer: torch.optim.Optimizer) -> dict[str, int]:
        """Apply the proximal operator to every group, in place; call after ``optimizer.step()``.

        Everything is validated and every new value computed before any
        parameter is written, so an error leaves model and optimizer as they
        were. The optimizer's state is not touched.

        Returns:
            ``{layer: number of groups exactly zero after the step}``.
        """
        rates = self.step_sizes(optimizer)
        new = {}
        with torch.no_grad():
            for name, lg in self.layout.items():
                rows = lg.matrix(self.model)
                if not bool(torch.isfinite(rows).all()):
                    raise ValueError(f"layer {name!r}: parameters are not finite")
                new[name] = _prox(rows, rates[name], self.strengths[name], self.alpha,
                                  lg.group_size(self.model))
            for name, lg in self.layout.items():
                lg.write(self.model, new[name])
        return {name: int((m == 0).all(dim=1).sum()) for name, m in new.items()}

    __call__ = step

    def remove_zero_groups(self, optimizer: torch.optim.Optimizer | None = None, *,
                           layers: Iterable[str] | None = None, min_units: int = 1
                           ) -> RemovalReport | None:
        """Remove the neurons whose group is exactly zero (see :func:`remove_zero_groups`)."""
        return remove_zero_groups(self.model, self.layout, optimizer=optimizer,
                                  example_input=self.example_input, exclude=self.exclude,
                                  layers=layers, min_units=min_units)

    def __repr__(self) -> str:
        return (f"ProximalGroupSparsity(groups={self.groups}, strengths={self.strengths}, "
                f"alpha={self.alpha})")
