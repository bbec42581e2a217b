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
from saliency.layers import effective_tensor

from .surgery import RemovalReport, remove_units

__all__ = ["nonzero_fractions", "sparse_units", "remove_sparse_units"]


def nonzero_fractions(model: nn.Module, *, example_input: torch.Tensor | None = None,
                      exclude: Iterable[str] = ()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per prunable layer, ``(incoming, outgoing)``: each unit's fraction of non-zero weights.

    Incoming: the unit's row of its layer's weight (for a convolution, all
    input channels and kernel taps). Outgoing: its columns (or input
    channels, or H*W column block after a flatten) in every consumer's
    weight. Masked (``torch.nn.utils.prune``) entries count as zero.
    """
    graph = trace(model, example_input, exclude=exclude)
    out = {}
    for name in graph.prunable:
        prod = graph.producers[name]
        w = effective_tensor(model.get_submodule(name), "weight").detach()
        rows = w.reshape(w.shape[0], -1)
        incoming = (rows != 0).sum(1).to(torch.float64) / rows.shape[1]
        nz = torch.zeros(prod.num_units, dtype=torch.float64)
        total = torch.zeros(prod.num_units, dtype=torch.float64)
        units = torch.arange(prod.num_units)
        for edge in prod.edges:
            wc = effective_tensor(model.get_submodule(edge.consumer), "weight").detach()
            cols = wc.index_select(1, edge.columns(units))  # (out, units * block, ...)
            per = cols.transpose(0, 1).reshape(prod.num_units, -1)
            nz += (per != 0).sum(1).to(torch.float64)
            total += per.shape[1]
        outgoing = nz / total.clamp_min(1)
        out[name] = (incoming, outgoing)
    return out


def sparse_units(model: nn.Module, f_nz: float = 0.0, *, example_input: torch.Tensor | None = None,
                 exclude: Iterable[str] = (), min_units: int = 1) -> dict[str, list[int]]:
    """Units whose fraction of non-zero incoming or outgoing weights is ``<= f_nz``.

    At most ``width - min_units`` per layer: if more qualify, the ones with
    the most live weights (largest ``min(incoming, outgoing)``) are kept.
    """
    if isinstance(f_nz, bool) or not isinstance(f_nz, (int, float)) or not 0.0 <= f_nz <= 1.0:
        raise ValueError(f"f_nz must be a fraction in [0, 1], got {f_nz!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"min_units must be an int >= 1, got {min_units!r}")
    result = {}
    for name, (inc, outg) in nonzero_fractions(model, example_input=example_input,
                                               exclude=exclude).items():
        live = torch.minimum(inc, outg)
        idx = torch.nonzero(live <= f_nz).flatten()
        room = inc.numel() - min_units
        if idx.numel() > room:  # keep the densest of them
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
    function is unchanged (exactly, up to rounding). Other arguments as
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
        consts = {}
        for name, idx in units.items():
            mod = model.get_submodule(name)
            b = effective_tensor(mod, "bias")
            w = effective_tensor(mod, "weight")
            consts[name] = (b.detach()[idx] if b is not None
                            else torch.zeros(len(idx), dtype=w.dtype, device=w.device))
        rep = consts
    else:
        rep = replacement
    return remove_units(model, units, replacement=rep, data=data, optimizer=optimizer,
                        example_input=example_input, exclude=exclude, min_units=min_units)
