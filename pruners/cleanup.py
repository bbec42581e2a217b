"""Unit cleanup after parameter pruning.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU
2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 2.2, Fig. 2.11.

After magnitude pruning many units keep few non-zero weights. The thesis
counts, per unit, the fraction of non-zero incoming weights (its row of the
producer's weight) and of non-zero outgoing weights (its columns in every
consumer) and removes the units where either fraction is ``<= f_nz``:

* a unit with no live outgoing weight affects nothing downstream;
* a unit with no live incoming weight outputs its bias ``b_i`` for every
  input, a constant that is folded into the consumers' biases (eq. 1.6).

So ``f_nz = 0`` removes units without changing the function (the thesis
skipped the bias fold and lost a little accuracy; here it is exact). For
``f_nz > 0`` the removed units still carried a few weights, and the
replacement decides what the consumers see instead: ``"bias"`` (the output
the unit would give with all its incoming weights pruned, the default),
``"mean"`` (its mean output over ``data``), ``"zero"`` or None.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from saliency.tracing import trace
from saliency.layers import PRODUCERS, dense_weight, effective_tensor
from saliency.replacement import member_indices

from .pruning import removal_items
from .surgery import RemovalReport, remove_units

__all__ = ["nonzero_fractions", "sparse_units", "remove_sparse_units"]


def nonzero_fractions(model: nn.Module, *, example_input: torch.Tensor | None = None,
                      exclude: Iterable[str] = ()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per prunable layer, ``(incoming, outgoing)``: each unit's fraction of non-zero weights.

    Incoming: the unit's row of its layer's weight (for a convolution, all
    input channels and kernel taps). Outgoing: its columns (or input
    channels, or H*W column block after a flatten) in every consumer's
    weight. Masked (``torch.nn.utils.prune``) entries count as zero.

    A residual group (layers whose outputs a residual add sums, see
    :func:`pruners.trace`) is keyed by its name with one pair per group
    channel: incoming counts the rows of every member for that channel
    together, outgoing the columns of every layer that reads the summed
    stream. A group channel without live incoming weights is a sum of
    constants (the members' biases), one without live outgoing weights is
    read by nobody: both are removed exactly with ``f_nz = 0``.
    """
    graph = trace(model, example_input, exclude=exclude)
    out = {}
    for name in graph.prunable:
        if graph.groups[name].joined:
            out[name] = _group_fractions(model, graph.groups[name])
            continue
        prod = graph.producers[name]
        w = effective_tensor(model.get_submodule(name), "weight").detach()
        rows = w.reshape(w.shape[0], -1)
        incoming = (rows != 0).sum(1).to(torch.float64) / rows.shape[1]
        nz = torch.zeros(prod.num_units, dtype=torch.float64)
        total = torch.zeros(prod.num_units, dtype=torch.float64)
        units = torch.arange(prod.num_units)
        for edge in prod.edges:
            cmod = model.get_submodule(edge.consumer)
            wc = dense_weight(cmod).detach()  # a grouped conv's columns spread, zeros between
            there = dense_weight(cmod, torch.ones_like(effective_tensor(cmod, "weight")))
            cols = edge.columns(units)  # (out, units * block, ...) -> per unit
            per = wc.index_select(1, cols).transpose(0, 1).reshape(prod.num_units, -1)
            real = there.index_select(1, cols).transpose(0, 1).reshape(prod.num_units, -1) > 0
            nz += ((per != 0) & real).sum(1).to(torch.float64)
            total += real.sum(1).to(torch.float64)
        outgoing = nz / total.clamp_min(1)
        out[name] = (incoming, outgoing)
    return out


def sparse_units(model: nn.Module, f_nz: float = 0.0, *, example_input: torch.Tensor | None = None,
                 exclude: Iterable[str] = (), min_units: int = 1) -> dict[str, list[int]]:
    """Units whose fraction of non-zero incoming or outgoing weights is ``<= f_nz``.

    At most ``width - min_units`` per layer: if more qualify, the ones with
    the most live weights (largest ``min(incoming, outgoing)``) are kept. In a
    residual group every member keeps a channel, and the channels of a grouped
    convolution go in balanced steps (the same number from each conv group).
    """
    if isinstance(f_nz, bool) or not isinstance(f_nz, (int, float)) or not 0.0 <= f_nz <= 1.0:
        raise ValueError(f"f_nz must be a fraction in [0, 1], got {f_nz!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"min_units must be an int >= 1, got {min_units!r}")
    result = {}
    graph = trace(model, example_input, exclude=exclude)
    for name, (inc, outg) in nonzero_fractions(model, example_input=example_input,
                                               exclude=exclude).items():
        live = torch.minimum(inc, outg)
        idx = torch.nonzero(live <= f_nz).flatten()
        room = inc.numel() - min_units
        group = graph.groups[name]
        if len(group.members) > 1 or group.partitions:  # what the graph accepts, sparsest first
            items = removal_items(group, idx, live, limit=max(room, 0))
            idx = torch.tensor([c for chans, _ in items for c in chans], dtype=torch.long)
        elif idx.numel() > room:  # keep the densest of them
            idx = idx[torch.argsort(live[idx], stable=True)[:max(room, 0)]]
        if idx.numel():
            result[name] = sorted(idx.tolist())
    return result


def remove_sparse_units(model: nn.Module, f_nz: float = 0.0, *, replacement: str | None = "bias",
                        data: Iterable | None = None,
                        optimizer: torch.optim.Optimizer | None = None,
                        example_input: torch.Tensor | None = None, exclude: Iterable[str] = (),
                        min_units: int = 1) -> RemovalReport:
    """Remove the :func:`sparse_units` physically, folding their replacement into biases.

    With ``f_nz = 0`` and the default ``replacement="bias"`` the model's
    function is unchanged (exactly, up to rounding; in a residual group each
    member is held at its own bias). Other arguments as
    :func:`~pruners.remove_units`; ``"mean"`` needs ``data``.

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
        >>> with torch.no_grad():
        ...     net[0].weight[1] = 0.0  # unit 1 outputs relu(bias) for every input
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> with torch.no_grad():
        ...     before = net(x)
        ...     report = remove_sparse_units(net, 0.0, example_input=x)
        ...     after = net(x)
        >>> report.removed, bool((after - before).abs().max() < 1e-12)
        ({'0': 1}, True)
    """
    if replacement not in ("bias", "mean", "zero", None):
        raise ValueError(f"replacement must be 'bias', 'mean', 'zero' or None, got "
                         f"{replacement!r}")
    units = sparse_units(model, f_nz, example_input=example_input, exclude=exclude,
                         min_units=min_units)
    if replacement == "bias":
        graph = trace(model, example_input, exclude=exclude) if units else None
        consts = {}
        for name, idx in list(units.items()):
            rows = member_indices(graph, name, torch.tensor(idx)) \
                if len(graph.groups[name].members) > 1 else {name: idx}
            for member, own in rows.items():  # each member outputs its bias there
                mod = model.get_submodule(member)
                b = effective_tensor(mod, "bias")
                w = effective_tensor(mod, "weight")
                consts[member] = (b.detach()[own] if b is not None
                                  else torch.zeros(len(own), dtype=w.dtype, device=w.device))
        rep = consts
    else:
        rep = replacement
    return remove_units(model, units, replacement=rep, data=data, optimizer=optimizer,
                        example_input=example_input, exclude=exclude, min_units=min_units)


def _group_fractions(model: nn.Module, group) -> tuple[torch.Tensor, torch.Tensor]:
    """``(incoming, outgoing)`` per channel of a residual group: every member's rows, every
    reader's columns (a grouped convolution: its conv group's rows only)."""
    nz = {k: torch.zeros(group.size, dtype=torch.float64) for k in ("in", "out")}
    total = {k: torch.zeros(group.size, dtype=torch.float64) for k in ("in", "out")}
    for m in group.members:
        rows = effective_tensor(model.get_submodule(m), "weight").detach().cpu()
        rows = rows.reshape(rows.shape[0], -1)
        nz["in"].index_add_(0, group.channels[m], (rows != 0).sum(1).to(torch.float64))
        total["in"].index_add_(0, group.channels[m],
                               torch.full((rows.shape[0],), float(rows.shape[1]),
                                          dtype=torch.float64))
    for c in group.consumers:
        mod = model.get_submodule(c.name)
        w = effective_tensor(mod, "weight").detach().cpu()
        groups = getattr(mod, "groups", 1)
        # per input column: its conv group's rows, all kernel taps
        per = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)
        live = (per != 0).sum(dim=(1, 3)).reshape(-1).to(torch.float64)
        size = float(per.shape[1] * per.shape[3])
        labels = group.nodes[c.node].labels
        if c.block > 1:
            labels = labels.repeat_interleave(c.block)
        hit = labels >= 0
        if labels.numel() != getattr(mod, PRODUCERS[type(mod)].in_attr):
            raise ValueError(f"layer {c.name!r} reads {labels.numel()} columns of group "
                             f"{group.name!r}, not its {live.numel()} inputs")
        nz["out"].index_add_(0, labels[hit], live[hit])
        total["out"].index_add_(0, labels[hit], torch.full((int(hit.sum()),), size,
                                                           dtype=torch.float64))
    return nz["in"] / total["in"].clamp_min(1), nz["out"] / total["out"].clamp_min(1)
