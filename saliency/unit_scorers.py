"""Unit-wise scorers of one forward and backward pass, and weight norms.

* :class:`MRS` -- mean replacement saliency (U. Evci, *Detecting Dead
  Weights and Units in Neural Networks*, MS thesis, NYU 2018,
  https://arxiv.org/abs/1806.06068 -- Evci 2018 -- Def. 3.1.2).
* :class:`UnitTaylor` -- Molchanov et al. 2017's Taylor criterion.
* :class:`Dormancy` -- ReDo's dormancy score (Sokar et al. 2023), or APoZ.
* :class:`Norm` -- L1 or squared L2 norm of a unit's incoming weights
  (thesis Table 4.1, ``normScorerL1`` / ``normScorerL2``).

The first three read :func:`saliency.unit_stats.unit_statistics`, which
computes all of them from the same single pass, attention heads included; ask it directly
for several.

Scores are keyed by group (:func:`saliency.trace`): a producer on a chain is its own group,
and coupled channels (the producers a residual add sums) get one score per group channel
under the group's name; each class gives its group formula.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import UnitScorer, select_heads, to_group
from .head_scores import head_norms, head_statistics
from .layers import effective_tensor
from .unit_stats import unit_statistics

__all__ = ["MRS", "UnitTaylor", "Dormancy", "Norm"]


def _one_pass(scorer: UnitScorer, model, data, loss_fn, key: str):
    """Statistic ``key`` of the selected groups and attention modules' heads, from one
    forward and one backward pass per batch (:func:`unit_statistics` with ``heads``)."""
    graph, layers = scorer.graph(model, data)
    heads = select_heads(graph, scorer.layers)
    if not layers and not heads:
        return {key: {}}
    return unit_statistics(model, graph, layers, data, loss_fn, stats=[key], heads=heads)


class _StatScorer(UnitScorer):
    statistic = ""

    def _score_all(self, model, data, loss_fn):
        """Units and heads together: one forward and one backward pass per batch (the same
        scores as :meth:`_score` and :meth:`_head_scores` in passes of their own)."""
        return self._finish(_one_pass(self, model, data, loss_fn, self.statistic))

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        stats = unit_statistics(model, graph, layers, data, loss_fn, stats=[self.statistic])
        return self._finish(stats)

    def _finish(self, stats):
        return stats[self.statistic]

    def _head_scores(self, model, graph, names, data, loss_fn):
        return head_statistics(model, graph.heads, names, data, loss_fn)[self.statistic]


class MRS(_StatScorer):
    """Mean replacement saliency: the first-order approximation of MRP.

    Evci 2018, Def. 3.1.2, eq. 3.3::

        MRS_i = sum_k | (mu_i - h_{k,i})^T dL_k/dh_{k,i} |

    with ``mu_i`` the unit's mean output over the data, the sum over samples
    ``k`` (and the inner product over a convolution's positions). All units of
    all layers come from one forward and one backward pass.

    For a group of coupled channels (members ``m``, each held at its own mean
    ``mu_{m,i}`` when the group channel ``i`` is removed)::

        MRS_i = sum_k | sum_m sum_p (mu_{m,i} - h_{k,m,i,p}) dL_k/dh_{k,m,i,p} |

    the first-order terms of every member summed before the absolute value,
    from the same single pass. For an attention head ``h`` (:mod:`saliency.attention`), ``h``'s
    output ``c`` (what the output projection reads) over its dimensions ``d`` and tokens
    ``t``: ``sum_k | sum_{t,d} (mu_{h,d} - c_{k,t,h,d}) dL_k/dc_{k,t,h,d} |``, from the
    same forward and backward pass as the other units.

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> MRS().score(net, data)["0"].shape
        torch.Size([6])
    """

    statistic = "mrs"
    approximates = "mrp"


class UnitTaylor(_StatScorer):
    """Molchanov et al. 2017 (ICLR), Taylor expansion criterion for units.

    ``Theta_i = | (1/N) sum_k (1/P) sum_p h_{k,i,p} dL_k/dh_{k,i,p} |``: the
    first-order estimate of the loss change when the unit's output is set to
    zero, averaged over samples ``k`` and positions ``p``. For a group of
    coupled channels, ``| (1/N) sum_k sum_m (1/P_m) sum_p h g |`` over its
    members ``m`` (``P_m`` positions each). For an attention head, the head's output ``c``
    summed over its dimensions: ``| (1/N) sum_k (1/T) sum_{t,d} c dL_k/dc |`` (the head
    importance of Michel, Levy, Neubig, *Are Sixteen Heads Really Better than One?*,
    NeurIPS 2019, https://arxiv.org/abs/1905.10650).
    """

    statistic = "taylor"


class Dormancy(UnitScorer):
    """Dormancy of units: ReDo's score (Sokar et al. 2023) or APoZ.

    ``statistic="redo"``: ``s_i = E|a_i| / ((1/C) sum_j E|a_j|)`` where ``a``
    is the unit's activation (after its BatchNorm and non-linearity, before
    pooling); a unit is tau-dormant when ``s_i <= tau``. ``statistic="apoz"``:
    the score is ``1 - APoZ``, with APoZ the fraction of samples (and
    positions) where the activation is exactly zero (Hu et al. 2016). Lower
    is more dormant in both cases.

    For a group with a residual join, ``a`` is what the group's consumers
    read at the group's positions (each consumer's input, pooling included;
    a flattened Linear input as channels x block), the statistic averaged
    over the consumers, and the ReDo denominator is the mean over the group
    channels. For an attention head, ``a`` is the head's output (all its dimensions and
    tokens), the denominator the mean over the module's heads.
    """

    def __init__(self, statistic: str = "redo", **kwargs: Any):
        super().__init__(**kwargs)
        if statistic not in ("redo", "apoz"):
            raise ValueError(f"statistic must be 'redo' or 'apoz', got {statistic!r}")
        self.statistic = statistic

    def _score_all(self, model, data, loss_fn):
        """Units and heads together, from one forward and one backward pass per batch."""
        return self._finish(_one_pass(self, model, data, loss_fn, self._key))

    @property
    def _key(self) -> str:
        return "dormancy" if self.statistic == "redo" else "apoz"

    def _finish(self, stats):
        if self.statistic == "redo":
            return stats["dormancy"]
        return {n: 1.0 - v for n, v in stats["apoz"].items()}

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        return self._finish(unit_statistics(model, graph, layers, data, loss_fn,
                                            stats=[self._key]))

    def _head_scores(self, model, graph, names, data, loss_fn):
        return self._finish(head_statistics(model, graph.heads, names, data, loss_fn))


class Norm(UnitScorer):
    """Norm of each unit's incoming weights (thesis Table 4.1).

    ``p="l1"``: ``||W_i||_1``; ``p="l2"``: ``||W_i||_2^2`` (squared, as the
    thesis's ``normScorerL2``), over the unit's weight row (a filter for a
    convolution), bias excluded. For a group of coupled channels, the sum over
    the members ``m`` whose channel maps to group channel ``i``:
    ``sum_m ||W_{m,i}||_1`` or ``sum_m ||W_{m,i}||_2^2`` (the squared L2 norm
    of all the group channel's incoming weights). For an attention head: its query rows,
    its key/value head's key and value rows (``1/G`` each when ``G`` query heads share
    them) and its output-projection columns (:func:`saliency.head_scores.head_norms`).
    Needs no data. A convolutional model is traced on an input batch given to the
    constructor, ``Norm(example_input=x).score(model)`` (``score`` itself takes no
    ``example_input``), or on the first batch of ``data``.

    Args:
        p: ``"l1"`` or ``"l2"``.
        **kwargs: ``layers``, ``exclude`` and ``example_input`` of
            :class:`~saliency.base.UnitScorer`.

    Raises:
        ValueError: an unknown ``p``; at :meth:`score`, a convolutional model without
            ``example_input`` or data (the message shows the call above).
    """

    needs_data = False

    def __init__(self, p: str = "l1", **kwargs: Any):
        super().__init__(**kwargs)
        if p not in ("l1", "l2"):
            raise ValueError(f"p must be 'l1' or 'l2', got {p!r}")
        self.p = p

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            group = graph.groups[name]
            rows = {}
            for m in group.members:
                w = effective_tensor(model.get_submodule(m), "weight").detach()
                w = w.reshape(w.shape[0], -1).to(torch.float64)
                rows[m] = w.abs().sum(1) if self.p == "l1" else (w * w).sum(1)
            out[name] = to_group(group, rows)
        return out

    def _head_scores(self, model, graph, names, data, loss_fn):
        return {n: head_norms(model, graph.heads[n], self.p) for n in names}
