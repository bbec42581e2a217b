"""MRP: the exact mean replacement penalty of every unit.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Def. 3.1.1:

    MRP_i = sum_{k in D} | L(h~_{k,i}) - L(h_k) |

where ``h~_{k,i}`` is sample ``k``'s output of the unit's layer with unit
``i`` replaced by its mean ``E_{k in D}[h_{k,i}]`` (the layer's output before
the non-linearity, as in the thesis). Replacing a unit by a constant is what
:func:`pruners.remove_units` with ``replacement="mean"`` does, with the same
means (:func:`saliency.unit_means`), so the signed variant of this score
(``absolute=False``) divided by the number of samples is exactly the loss
change that removal causes.

For channels removed together (a group of :func:`saliency.trace`: the
producers a residual add sums, with every consumer of the sum), group channel
``i`` is held at its mean in every member at once, each member ``m`` at its
own mean ``E[h_{m,i}]``, and ``h~`` is the network's output with all of
them replaced (a member that reads the group's channels is computed from its
changed input, then replaced):

    MRP_i = sum_{k in D} | L(h~_{k,i}) - L(h_k) |

which is the loss change of ``remove_units(model, {group: [i]},
replacement="mean", data=D)`` wherever its fold is exact (no zero padding
or average pooling over padding on the held channels' paths).

For channels joined by an elementwise product (a gated FFN, ``down(act(gate(x)) * up(x))``:
:attr:`saliency.graph.Group.held`), group channel ``i`` is the product's channel, held at its
mean over the data (:func:`saliency.replacement.held_means`), as ``remove_units(...,
replacement="mean")`` holds it. On token-shaped layers (a Linear on ``(batch, ...,
channels)``) means average over the batch and every token position, and a sample's loss is
the mean of its per-token losses when ``loss_fn`` returns them (padding targets left out,
:func:`saliency.base.per_sample_loss`).

Cost: one pass for the means, then per batch one cached forward pass and,
per unit, only the work that unit changes (:class:`saliency.engine.Downstream`):
on a chain, the unit's channel through its path and its consumers' change;
for a residual group, everything after its first member, for many group
channels at once.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .base import UnitScorer, iter_batches
from .engine import Downstream
from .head_scores import head_mrp
from .layers import channels_first
from .progress import progress
from .replacement import held_means, unit_means
from .unit_stats import is_chain

__all__ = ["MRP"]


class MRP(UnitScorer):
    """Mean replacement penalty (exact), one value per unit.

    Args:
        absolute: sum ``|L~ - L|`` over samples (Def. 3.1.1); False sums the
            signed changes (the loss change of mean replacement, times N).
        reduction: ``"sum"`` over samples (the definition) or ``"mean"``.
        layers: see :class:`~saliency.base.UnitScorer`.
        exclude: see :class:`~saliency.base.UnitScorer`.
        example_input: see :class:`~saliency.base.UnitScorer`.

    For an attention head (:mod:`saliency.attention`): the loss change of holding the
    head's output at its per-dimension mean over the batch and tokens, exactly what
    :func:`pruners.remove_units` with ``replacement="mean"`` does to it
    (:func:`saliency.head_scores.head_mrp`: one forward pass per head).

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> MRP().score(net, data)["0"].shape
        torch.Size([6])
    """

    approximates = None

    def __init__(self, absolute: bool = True, reduction: str = "sum", *,
                 layers: Iterable[str] | None = None, exclude: Iterable[str] = (),
                 example_input: torch.Tensor | None = None):
        super().__init__(layers, exclude=exclude, example_input=example_input)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.absolute, self.reduction = absolute, reduction

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        held = [n for n in layers if graph.groups[n].held is not None]
        means = unit_means(model, data, [m for n in layers if n not in held
                                         for m in graph.groups[n].members])
        means.update(held_means(model, graph, data, held))
        totals = {n: torch.zeros(graph.groups[n].size, dtype=torch.float64) for n in layers}
        count = 0
        batches = list(iter_batches(data))
        work = [(b, name) for b in range(len(batches)) for name in layers]
        current, ds, reduce = -1, None, None
        for b, name in progress(work, "exact MRP", unit="layer-batch"):
            if b != current:  # a new batch: its base losses, once for all its layers
                current = b
                x, y = batches[b]
                ds = Downstream(model, graph, x)
                base = ds.base_losses(y, loss_fn).to(torch.float64)
                count += x.shape[0]

                def reduce(losses, base=base):
                    d = losses.to(torch.float64) - base
                    return (d.abs() if self.absolute else d).sum(1)
            totals[name] += self._group_losses(model, graph, ds, name, means, held, y,
                                               loss_fn, reduce)
        if self.reduction == "mean":
            totals = {n: t / count for n, t in totals.items()}
        return totals

    @staticmethod
    def _group_losses(model, graph, ds, name, means, held, y, loss_fn, reduce):
        """The reduced loss changes of holding each channel of group ``name`` at its mean,
        on the batch of ``ds``."""
        group = graph.groups[name]
        if not is_chain(group):
            ch = torch.arange(group.size)
            vals = {name: means[name]} if name in held else \
                {m: means[m] for m in group.members}
            return ds.channel_losses(name, ch, vals, y, loss_fn, reduce=reduce)
        h = channels_first(model.get_submodule(name), ds.output_of(name))
        c = h.shape[1]
        vals = means[name].to(h).reshape((c, 1) + (1,) * (h.dim() - 2))
        return ds.channel_losses(name, torch.arange(c), vals, y, loss_fn, reduce=reduce)

    def _head_scores(self, model, graph, names, data, loss_fn):
        totals = head_mrp(model, graph.heads, names, data, loss_fn, absolute=self.absolute)
        if self.reduction == "mean":
            count = sum(x.shape[0] for x, _ in iter_batches(data))
            totals = {n: t / count for n, t in totals.items()}
        return totals
