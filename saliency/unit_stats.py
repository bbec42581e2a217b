"""Every first-order unit statistic from one forward and one backward pass.

:func:`unit_statistics` runs the model over the data once (eval mode), keeps
each prunable producer's output ``h`` and its per-sample output gradient
``g = dL_k/dh`` (the loss is the sum of per-sample losses, so each sample's
gradient is its own), and accumulates, per unit ``i`` (positions ``p`` of a
convolution's map, ``P`` of them, ``N`` samples):

* ``mean``: ``mu_i = E_{k,p}[h]``, the unit's mean output (eq. 1.5);
* ``mrs``: mean replacement saliency (Evci 2018, Def. 3.1.2), the first-order
  approximation of MRP: ``MRS_i = sum_k |sum_p (mu_i - h_{k,i,p}) g_{k,i,p}|``.
  It needs ``mu_i``, known only at the end; storing ``sum_p h g`` and
  ``sum_p g`` per sample gives it exactly from the same single pass;
* ``taylor``: Molchanov et al. 2017, ``|(1/N) sum_k (1/P) sum_p h g|``
  (computed on the layer output; for a ReLU right after it this equals the
  criterion on the activation, since ``relu(h) g_a = h g_h``);
* ``dormancy``: ReDo (Sokar et al. 2023), the mean ``|a|`` of the unit's
  activation ``a`` (the output after its per-channel path, BatchNorm and
  activation, before pooling) divided by the layer's average of that mean;
* ``apoz``: the fraction of samples and positions where the activation is
  exactly zero (Hu et al. 2016);
* ``act_mean``, ``act_var``, ``out_var``: moments of the activation and the
  output; ``grad_norm``: the root mean square of ``g`` per sample.

Only the gradients with respect to the layer outputs are computed
(``torch.autograd.grad``), never the weight gradients.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from .base import iter_batches, loss_sum
from .graph import ChannelOp, UnitGraph
from .layers import CHANNEL_MODULES
from .replacement import _apply_op

__all__ = ["unit_statistics", "STATISTICS", "activation"]

STATISTICS = ("mean", "mrs", "taylor", "dormancy", "apoz", "act_mean", "act_var", "out_var",
              "grad_norm")


def _is_pool(model: nn.Module, op: ChannelOp) -> bool:
    if op.kind == "module":
        mod = model.get_submodule(op.target)
        spec = CHANNEL_MODULES[type(mod)]
        return not spec.tensors(mod) and spec.push.__name__ in ("_identity", "_avgpool_push")
    return op.shape_only


def activation(model: nn.Module, path: Iterable[ChannelOp], h: torch.Tensor) -> torch.Tensor:
    """The unit activations: ``h`` through its path's per-channel ops, before pooling."""
    for op in path:
        if not _is_pool(model, op):
            h = _apply_op(model, op, h, None, maps=True)
    return h


_NEEDS = {  # per statistic, the per-sample sums over positions it is built from
    "mean": {"h"}, "mrs": {"h", "g", "hg"}, "taylor": {"hg"}, "dormancy": {"absa"},
    "apoz": {"zero"}, "act_mean": {"a"}, "act_var": {"a", "a2"}, "out_var": {"h", "h2"},
    "grad_norm": {"g2"},
}


def unit_statistics(model: nn.Module, graph: UnitGraph, layers: list[str], data,
                    loss_fn: Callable, stats: Iterable[str] | None = None
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of :data:`STATISTICS` (all, or ``stats``) for ``layers``, in one pass.

    Reductions over positions run in the model's dtype and are accumulated in
    float64. The model must be in eval mode (the scorers ensure it). Returns
    ``{statistic: {layer: 1-D float64 tensor}}``.
    """
    wanted = list(STATISTICS if stats is None else stats)
    unknown = set(wanted) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {STATISTICS}")
    need = set().union(*(_NEEDS[k] for k in wanted))
    mods = {n: model.get_submodule(n) for n in layers}
    outs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
             for n in layers]
    f64 = torch.float64
    acc: dict[str, dict[str, torch.Tensor]] = {}
    s_hg: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    s_g: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    n_samples = 0
    positions: dict[str, int] = {}
    for p in model.parameters():
        p.requires_grad_(True)  # restored by the scorer's `preserved`
    try:
        for x, y in iter_batches(data):
            outs.clear()
            loss = loss_sum(loss_fn, model(x), y)
            hs = [outs[n] for n in layers]
            grads = torch.autograd.grad(loss, hs, allow_unused=True)
            n_samples += x.shape[0]
            with torch.no_grad():
                for name, h, g in zip(layers, hs, grads):
                    if g is None:
                        g = torch.zeros_like(h)
                    b, c = h.shape[0], h.shape[1]
                    h2 = h.reshape(b, c, -1)
                    g2 = g.reshape(b, c, -1)
                    positions[name] = h2.shape[2]
                    sums = {}
                    if need & {"h"}:
                        sums["h"] = h2.sum(2)
                    if need & {"g"}:
                        sums["g"] = g2.sum(2)
                    if need & {"hg"}:
                        sums["hg"] = torch.einsum("bcp,bcp->bc", h2, g2)
                    if need & {"h2"}:
                        sums["h2"] = torch.einsum("bcp,bcp->bc", h2, h2)
                    if need & {"g2"}:
                        sums["g2"] = torch.einsum("bcp,bcp->bc", g2, g2)
                    if need & {"a", "a2", "absa", "zero"}:
                        edges = graph.producers[name].edges
                        a = activation(model, edges[0].path, h) if edges else h
                        a2 = a.reshape(b, c, -1)
                        if "a" in need:
                            sums["a"] = a2.sum(2)
                        if "a2" in need:
                            sums["a2"] = torch.einsum("bcp,bcp->bc", a2, a2)
                        if "absa" in need:
                            sums["absa"] = a2.abs().sum(2)
                        if "zero" in need:
                            sums["zero"] = (a2 == 0).sum(2)
                    if "hg" in sums:
                        s_hg[name].append(sums["hg"].to(f64))
                    if "g" in sums:
                        s_g[name].append(sums["g"].to(f64))
                    d = acc.setdefault(name, {})
                    for key, val in sums.items():
                        val = val.to(f64).sum(0)
                        d[key] = d[key] + val if key in d else val
    finally:
        for hk in hooks:
            hk.remove()
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in wanted}
    for name in layers:
        d, npos = acc[name], positions[name]
        count = n_samples * npos
        mu = d["h"] / count if "h" in d else None
        if "mean" in out:
            out["mean"][name] = mu
        if "mrs" in out:
            out["mrs"][name] = (mu * torch.cat(s_g[name]) - torch.cat(s_hg[name])).abs().sum(0)
        if "taylor" in out:
            out["taylor"][name] = (d["hg"] / count).abs()
        if "dormancy" in out:
            mean_abs = d["absa"] / count
            layer_mean = mean_abs.mean()
            out["dormancy"][name] = (mean_abs / layer_mean if layer_mean > 0
                                     else torch.zeros_like(mean_abs))
        if "apoz" in out:
            out["apoz"][name] = d["zero"] / count
        if "act_mean" in out or "act_var" in out:
            act_mean = d["a"] / count
            if "act_mean" in out:
                out["act_mean"][name] = act_mean
            if "act_var" in out:
                out["act_var"][name] = (d["a2"] / count - act_mean ** 2).clamp_min(0)
        if "out_var" in out:
            out["out_var"][name] = (d["h2"] / count - mu ** 2).clamp_min(0)
        if "grad_norm" in out:
            out["grad_norm"][name] = (d["g2"] / n_samples).sqrt()
    return out

