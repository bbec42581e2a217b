"""Taylor-expansion saliencies of single parameters (thesis Table 2.1).

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Ch. 2, eq. 2.1-2.3.
Changing the parameters by ``dw`` changes the (mean) loss by::

    L(w + dw) - L(w) = dw^T g + 1/2 dw^T H dw + O(|dw|^3)       (g = dL/dw, H = d2L/dw2)

and the saliency of parameter ``i`` keeps its share of that sum, with the
whole Hessian row (eq. 2.3) so that the dependencies between parameters
enter::

    taylor1:  S_i = dw_i g_i
    taylor2:  S_i = dw_i (g_i + lam sum_j H_ij dw_j)
    hessian:  S_i = dw_i sum_j H_ij dw_j

``dw`` is the change under study, for every selected parameter at once:
``-w`` for pruning (``delta="prune"``; the thesis's setting, with
``lam = 1``), or ``-eps sign(w)`` for sensitivity analysis
(``delta="sensitivity"``: each weight moved a little towards zero). ``H dw``
is one Hessian-vector product (:func:`saliency.hvp.grad_and_hvp`); the
Hessian is never formed. ``absolute=True`` gives the ``*Abs`` variants of
Table 2.1, which prune better (Sec. 2.1.5).

Note on ``lam``: the exact second-order term is ``1/2 dw^T H dw``, so with
``lam=0.5`` the scores of all selected parameters sum to the quadratic model
of the loss change when they are all changed together; the thesis's
``lam=1`` counts that term twice. Per parameter, ``taylor2`` with
``lam=0.5`` equals the exact single-parameter loss change
(:class:`~saliency.loss_change.LossChange`) only when the loss is quadratic
and ``H_ij dw_j`` vanishes for ``j != i``; otherwise the row sum adds the
pairwise terms on purpose.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from .base import ParameterScorer
from .hvp import grad_and_hvp, gradient
from .layers import effective_tensor

__all__ = ["Taylor1", "Taylor2", "Hessian", "parameter_values"]

_DELTAS = ("prune", "sensitivity")


def parameter_values(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """The values the forward pass uses for each selected parameter.

    Equal to the parameter itself, except for tensors pruned with
    :mod:`torch.nn.utils.prune` (selected under their base name, e.g.
    ``"fc.weight"`` for ``fc.weight_orig``): there, ``weight_orig * weight_mask``,
    so already-masked entries are zero.
    """
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod._parameters.items():
            if p is not None:
                owner.setdefault(id(p), (mod, pname))
    out = {}
    for key, p in params.items():
        mod, pname = owner[id(p)]
        if pname.endswith("_orig") and hasattr(mod, pname[: -len("_orig")] + "_mask"):
            out[key] = effective_tensor(mod, pname[: -len("_orig")]).detach()
        else:
            out[key] = p.detach()
    return out


class _TaylorScorer(ParameterScorer):
    """Shared part: validation of ``delta``/``epsilon`` and the step ``dw``."""

    _uses_hessian = True

    def __init__(self, *, absolute: bool = False, delta: str = "prune",
                 epsilon: float | None = None, params: Iterable[str] | None = None):
        super().__init__(params)
        if delta not in _DELTAS:
            raise ValueError(f"delta must be one of {_DELTAS}, got {delta!r}")
        if epsilon is not None:
            if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
                    or not math.isfinite(epsilon) or epsilon <= 0:
                raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
            epsilon = float(epsilon)
        self.absolute = bool(absolute)
        self.delta = delta
        self.epsilon = epsilon

    @property
    def step(self) -> float:
        """``eps``: 1 for pruning and 1e-3 for sensitivity analysis unless given."""
        if self.epsilon is not None:
            return self.epsilon
        return 1.0 if self.delta == "prune" else 1e-3

    def deltas(self, model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        """``dw`` per selected parameter: ``-eps w`` (prune) or ``-eps sign(w)``."""
        vals = parameter_values(model, params)
        eps = self.step
        if self.delta == "prune":
            return {k: -eps * w for k, w in vals.items()}
        return {k: -eps * torch.sign(w) for k, w in vals.items()}

    def _score(self, model, data, loss_fn):
        params = self.selected(model)
        dw = self.deltas(model, params)
        if self._uses_hessian:
            g, hv = grad_and_hvp(model, params, dw, data, loss_fn)
        else:
            g, hv = gradient(model, params, data, loss_fn), None
        scores = {k: self._combine(dw[k], g[k], None if hv is None else hv[k]) for k in params}
        if self.absolute:
            scores = {k: s.abs() for k, s in scores.items()}
        return scores

    def _combine(self, dw, g, hv):  # pragma: no cover
        raise NotImplementedError


class Taylor1(_TaylorScorer):
    """First-order Taylor saliency: ``S_i = dw_i (dL/dw)_i`` (``taylor1Scorer``).

    The first-order estimate of the loss change when parameter ``i`` alone
    changes by ``dw_i``; with ``dw = -w`` it approximates
    :class:`~saliency.loss_change.LossChange`. Cost: one forward+backward
    pass over the data.

    Args:
        absolute: return ``|S_i|`` (``taylor1ScorerAbs``).
        delta: ``"prune"`` (``dw = -eps w``, default) or ``"sensitivity"``
            (``dw = -eps sign(w)``).
        epsilon: ``eps``; default 1 for ``"prune"`` (weight removal), 1e-3
            for ``"sensitivity"``.
        params: parameter names to score (None = all trainable).

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> Taylor1(absolute=True).score(net, data)["0.weight"].shape
        torch.Size([6, 4])

    Reference: Evci 2018, eq. 2.1 and Table 2.1.
    """

    _uses_hessian = False
    approximates = "loss_change"

    def _combine(self, dw, g, hv):
        return dw * g


class Taylor2(_TaylorScorer):
    """Second-order Taylor saliency: ``S_i = dw_i (g_i + lam (H dw)_i)`` (``taylor2Scorer``).

    ``(H dw)_i = sum_j H_ij dw_j`` is the full Hessian row times the change
    of every selected parameter (eq. 2.3), from one Hessian-vector product.
    Cost: one double-backward pass (about 2.6 forward+backward passes).

    Args:
        lam: weight of the Hessian term; 1 is the thesis's pruning setting,
            0.5 the exact quadratic term (the scores then sum to
            ``dw^T g + 1/2 dw^T H dw``).
        absolute: return ``|S_i|`` (``taylor2ScorerAbs``).
        delta: as in :class:`Taylor1`.
        epsilon: as in :class:`Taylor1`.
        params: as in :class:`Taylor1`.

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> s = Taylor2(lam=0.5, params=["0.weight"]).score(net, data)
        >>> list(s), s["0.weight"].shape
        (['0.weight'], torch.Size([6, 4]))

    Reference: Evci 2018, eq. 2.3 and Table 2.1; Pearlmutter 1994 for ``H v``.
    """

    def __init__(self, *, lam: float = 1.0, absolute: bool = False, delta: str = "prune",
                 epsilon: float | None = None, params: Iterable[str] | None = None):
        super().__init__(absolute=absolute, delta=delta, epsilon=epsilon, params=params)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise ValueError(f"lam must be a finite number, got {lam!r}")
        self.lam = float(lam)

    def _combine(self, dw, g, hv):
        return dw * (g + self.lam * hv)


class Hessian(_TaylorScorer):
    """Hessian saliency: ``S_i = dw_i sum_j H_ij dw_j`` (``hessianScorer``).

    The second-order part of :class:`Taylor2` alone (twice the quadratic
    term's share of parameter ``i``), from one Hessian-vector product.

    Args:
        absolute: return ``|S_i|`` (``hessianScorerAbs``).
        delta: as in :class:`Taylor1`.
        epsilon: as in :class:`Taylor1`.
        params: as in :class:`Taylor1`.

    Examples:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> Hessian(absolute=True).score(net, data)["2.bias"].shape
        torch.Size([3])

    Reference: Evci 2018, eq. 2.3 and Table 2.1.
    """

    def _combine(self, dw, g, hv):
        return dw * hv
