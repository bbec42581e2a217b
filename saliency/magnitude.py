"""Magnitude saliency: ``S_i = |w_i|`` (the thesis's ``magnitudeScorer``).

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Table 2.1 and Sec.
2.1.6: the simplest score, needing no data, and the one that pruned best and
most stably there (Han et al. 2015 prune the same way).
"""

from __future__ import annotations

from .base import ParameterScorer
from .taylor import parameter_values

__all__ = ["Magnitude"]


class Magnitude(ParameterScorer):
    """Absolute value of every parameter entry: ``S_i = |w_i|``.

    Needs no data (``data`` and ``loss_fn`` are ignored). For a tensor pruned
    with :mod:`torch.nn.utils.prune` the score is that of the value the
    forward pass uses (``|w_orig * mask|``), so masked entries score 0.

    Args:
        params: parameter names to score (None = all trainable).

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[-3.0, 0.5]]))
        >>> Magnitude().score(net)["weight"]
        tensor([[3.0000, 0.5000]])

    Reference: Evci 2018, Table 2.1.
    """

    needs_data = False
    approximates = None

    def _score(self, model, data, loss_fn):
        return {k: w.abs() for k, w in parameter_values(model, self.selected(model)).items()}
