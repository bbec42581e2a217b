"""The group-sparsity saliency of a unit: the norm of its parameter group.

J. M. Alvarez and M. Salzmann, *Learning the Number of Neurons in Deep
Networks*, NeurIPS 2016,
https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks
(Alvarez & Salzmann 2016) group the parameters of neuron ``n`` of layer
``l`` as ``theta_l^n = [w_l^n, b_l^n]`` (its incoming weights and its bias)
and penalize

    gamma(Theta) = sum_l [ (1 - alpha) beta_l sqrt(P_l) sum_n ||theta_l^n||_2
                           + alpha beta_l ||theta_l||_1 ]

(``P_l`` the size of a group of layer ``l``). The proximal step of that
penalty sets a whole group to zero when its (soft-thresholded) norm falls
under ``t (1 - alpha) beta_l sqrt(P_l)``, and a neuron whose group is zero
outputs 0 for every input: it can be removed. The saliency that this
training acts on is therefore the group norm

    s_n = ||theta_l^n||_2 = sqrt(||w_l^n||_2^2 + (b_l^n)^2)

(optionally divided by ``sqrt(P_l)``, the root mean square of the group, to
compare layers whose groups differ in size). When the channels of several
layers must be removed together (the producers a residual add sums: a group
of :func:`saliency.trace`), the parameters of group channel ``i`` are every
member's row and bias for that channel, and

    s_i = sqrt( sum_m ||theta_{m,i}||_2^2 )

over the members ``m`` whose channel maps to ``i`` (``P_i`` the count of
those parameters). :class:`GroupNormScorer` is
``"group_norm"`` in :data:`saliency.SCORERS`; the penalty, the proximal
operator and the removal of zero groups are in
:mod:`pruners.group_sparsity`.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from .base import UnitScorer, to_group
from .head_scores import head_entries
from .layers import effective_tensor

__all__ = ["GroupNormScorer", "unit_groups"]


def unit_groups(module: nn.Module, *, bias: bool = True) -> torch.Tensor:
    """The parameter groups ``theta^n = [w^n, b^n]`` of a layer's units, one row each.

    The groups of Alvarez & Salzmann 2016.

    Row ``n`` holds unit ``n``'s incoming weights (its weight row, or its
    filter for a convolution, flattened) followed by its bias when the layer
    has one and ``bias`` is True: an ``N x P`` tensor, ``P`` the group size.
    Masked (:mod:`torch.nn.utils.prune`) tensors enter with their effective
    values. The result is differentiable with respect to the parameters.
    """
    w = effective_tensor(module, "weight")
    if not isinstance(w, torch.Tensor) or w.dim() < 2:
        raise ValueError(f"{type(module).__name__} has no weight matrix whose rows are units")
    rows = w.reshape(w.shape[0], -1)
    b = effective_tensor(module, "bias") if bias else None
    if isinstance(b, torch.Tensor):
        rows = torch.cat([rows, b.reshape(-1, 1)], dim=1)
    return rows


class GroupNormScorer(UnitScorer):
    """Unit saliency ``||theta_l^n||_2 = sqrt(||w_l^n||^2 + b_l^n^2)`` (group sparsity).

    The norm of each unit's parameter group of Alvarez & Salzmann 2016: its
    incoming weights and its bias; for coupled channels (a residual group),
    every member's row and bias for the group channel,
    ``s_i = sqrt(sum_m ||theta_{m,i}||_2^2)``. A unit whose group norm is 0 outputs 0 for
    every input, and the proximal step of
    the group-sparsity penalty (:mod:`pruners.group_sparsity`) makes groups
    exactly 0; lower is less important. For an attention head: its query, key and value
    rows with their biases (a key/value head's rows count ``1/G`` for each of the ``G``
    query heads sharing them) and its output-projection columns
    (:func:`saliency.head_scores.head_entries`). Needs no data: a convolutional model is
    traced on an ``example_input`` given to the constructor
    (``GroupNormScorer(example_input=x).score(model)``), or on the first batch of ``data``.

    Args:
        layers: groups to score (default: every prunable group).
        bias: include the bias in the group (the paper's ``theta = [w, b]``);
            False gives the L2 norm of the weight row only.
        normalize: divide by ``sqrt(P_l)`` (the group's root mean square), so
            that layers with different group sizes compare (``sqrt(P_i)`` for
            coupled channels).
        exclude: as in :class:`~saliency.base.UnitScorer`.
        example_input: as in :class:`~saliency.base.UnitScorer` (an input batch to trace
            a convolutional model with; ``score`` itself takes none).

    Raises:
        TypeError: ``bias`` or ``normalize`` is not a bool.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3., 0., 0.], [0., 0., 0.]]))
        ...     _ = net[0].bias.copy_(torch.tensor([4., 0.]))
        >>> GroupNormScorer().score(net)["0"]
        tensor([5., 0.], dtype=torch.float64)
    """

    needs_data = False

    def __init__(self, layers: Iterable[str] | None = None, *, bias: bool = True,
                 normalize: bool = False, exclude: Iterable[str] = (),
                 example_input: torch.Tensor | None = None):
        super().__init__(layers, exclude=exclude, example_input=example_input)
        if not isinstance(bias, bool) or not isinstance(normalize, bool):
            raise TypeError("bias and normalize must be True or False")
        self.bias = bias
        self.normalize = normalize

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            group = graph.groups[name]
            if len(group.members) == 1:
                rows = unit_groups(model.get_submodule(name), bias=self.bias).detach()
                rows = rows.to(torch.float64)
                s = torch.linalg.vector_norm(rows, dim=1)
                out[name] = s / math.sqrt(rows.shape[1]) if self.normalize else s
                continue
            squares, sizes = {}, {}
            for m in group.members:
                rows = unit_groups(model.get_submodule(m), bias=self.bias).detach()
                rows = rows.to(torch.float64)
                squares[m] = (rows * rows).sum(1)
                sizes[m] = torch.full((rows.shape[0],), float(rows.shape[1]),
                                      dtype=torch.float64)
            s = to_group(group, squares).sqrt()
            out[name] = s / to_group(group, sizes).sqrt() if self.normalize else s
        return out

    def _head_scores(self, model, graph, names, data, loss_fn):
        """Per head: ``sqrt`` of the weighted sum of squares of its query rows, its key and
        value rows (``1/G`` each when ``G`` query heads share them), with their biases when
        ``bias``, and its output-projection columns."""
        out = {}
        for name in names:
            h = graph.heads[name]
            sq = torch.zeros(h.num_heads, dtype=torch.float64)
            size = 0.0
            for mat, wt in head_entries(model, h, bias=self.bias):
                sq += wt * (mat * mat).sum(1)
                size += wt * mat.shape[1]
            s = sq.sqrt()
            out[name] = s / math.sqrt(size) if self.normalize else s
        return out
