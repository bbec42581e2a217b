"""Unit-wise scorers of one forward and backward pass, and weight norms.

* :class:`MRS` -- mean replacement saliency (U. Evci, *Detecting Dead
  Weights and Units in Neural Networks*, MS thesis, NYU 2018,
  https://arxiv.org/abs/1806.06068 -- Evci 2018 -- Def. 3.1.2).
* :class:`UnitTaylor` -- Molchanov et al. 2017's Taylor criterion.
* :class:`Dormancy` -- ReDo's dormancy score (Sokar et al. 2023), or APoZ.
* :class:`Norm` -- L1 or squared L2 norm of a unit's incoming weights
  (thesis Table 4.1, ``normScorerL1`` / ``normScorerL2``).

The first three read :func:`saliency.unit_stats.unit_statistics`, which
computes all of them from the same single pass; ask it directly for several.
"""

from __future__ import annotations

import torch

from .base import UnitScorer
from .layers import effective_tensor
from .unit_stats import unit_statistics

__all__ = ["MRS", "UnitTaylor", "Dormancy", "Norm"]


class _StatScorer(UnitScorer):
    statistic = ""

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        stats = unit_statistics(model, graph, layers, data, loss_fn, stats=[self.statistic])
        return self._finish(stats)

    def _finish(self, stats):
        return stats[self.statistic]


class MRS(_StatScorer):
    """Mean replacement saliency: the first-order approximation of MRP.

    Evci 2018, Def. 3.1.2, eq. 3.3::

        MRS_i = sum_k | (mu_i - h_{k,i})^T dL_k/dh_{k,i} |

    with ``mu_i`` the unit's mean output over the data, the sum over samples
    ``k`` (and the inner product over a convolution's positions). All units of
    all layers come from one forward and one backward pass.

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
    zero, averaged over samples ``k`` and positions ``p``.
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
    """

    def __init__(self, statistic: str = "redo", **kwargs):
        super().__init__(**kwargs)
        if statistic not in ("redo", "apoz"):
            raise ValueError(f"statistic must be 'redo' or 'apoz', got {statistic!r}")
        self.statistic = statistic

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        key = "dormancy" if self.statistic == "redo" else "apoz"
        stats = unit_statistics(model, graph, layers, data, loss_fn, stats=[key])
        if self.statistic == "redo":
            return stats["dormancy"]
        return {n: 1.0 - v for n, v in stats["apoz"].items()}


class Norm(UnitScorer):
    """Norm of each unit's incoming weights (thesis Table 4.1).

    ``p="l1"``: ``||W_i||_1``; ``p="l2"``: ``||W_i||_2^2`` (squared, as the
    thesis's ``normScorerL2``), over the unit's weight row (a filter for a
    convolution), bias excluded. Needs no data (an ``example_input`` traces a
    convolutional model).
    """

    needs_data = False

    def __init__(self, p: str = "l1", **kwargs):
        super().__init__(**kwargs)
        if p not in ("l1", "l2"):
            raise ValueError(f"p must be 'l1' or 'l2', got {p!r}")
        self.p = p

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            w = effective_tensor(model.get_submodule(name), "weight").detach()
            w = w.reshape(w.shape[0], -1).to(torch.float64)
            out[name] = w.abs().sum(1) if self.p == "l1" else (w * w).sum(1)
        return out
