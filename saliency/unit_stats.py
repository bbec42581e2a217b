"""Every first-order unit statistic from one forward and one backward pass.

:func:`unit_statistics` runs the model over the data once (eval mode), keeps
each prunable producer's output ``h`` and its per-sample output gradient
``g = dL_k/dh`` (the loss is the sum of per-sample losses, so each sample's
gradient is its own), and accumulates, per unit ``i`` (positions ``p`` of a
convolution's map, ``P`` of them, ``N`` samples):

* ``mean``: ``mu_i = E_{k,p}[h]``, the unit's mean output (eq. 1.5);
* ``mrs``: mean replacement saliency (U. Evci, *Detecting Dead Weights and
  Units in Neural Networks*, MS thesis, NYU 2018,
  https://arxiv.org/abs/1806.06068 -- Evci 2018 -- Def. 3.1.2), the first-order
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
        return CHANNEL_MODULES[type(model.get_submodule(op.target))].pools
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


def _position_sums(model: nn.Module, graph: UnitGraph, name: str, h: torch.Tensor,
                   g: torch.Tensor, need: set[str], g_owned: bool) -> dict[str, torch.Tensor]:
    """Per-sample sums over positions (``B x C``, model dtype) of what ``need`` lists.

    Full-size temporaries cost more than the reductions (fresh allocations of
    a convolution's maps), so the few needed are reused in place: ``g``
    (when ``g_owned``: nothing else holds it) becomes ``h * g``, and the
    activation becomes ``|a|`` and then ``sign(|a|)`` (the non-zero count).
    """
    b, c = h.shape[0], h.shape[1]
    flat = h.dim() == 2  # one position per unit: sums are the tensors themselves

    def psum(t):
        return t if flat else t.reshape(b, c, -1).sum(2)

    sums = {}
    if "h" in need:
        sums["h"] = psum(h)
    if "h2" in need:
        sums["h2"] = psum(h * h)
    if "g" in need:
        sums["g"] = psum(g)
    if "g2" in need:
        sums["g2"] = psum(g * g)
    if "hg" in need:
        sums["hg"] = psum(g.mul_(h) if g_owned and not flat else g * h)  # g is done with
    if need & {"a", "a2", "absa", "zero"}:
        edges = graph.producers[name].edges
        a = activation(model, edges[0].path, h) if edges else h
        a_owned = not flat and a.untyped_storage().data_ptr() != h.untyped_storage().data_ptr()
        if "a" in need:
            sums["a"] = psum(a)
        if "a2" in need:
            sums["a2"] = psum(a * a)
        if "absa" in need or "zero" in need:
            if flat:
                if "absa" in need:
                    sums["absa"] = a.abs()
                if "zero" in need:
                    sums["zero"] = a == 0
            else:
                t = a.abs_() if a_owned else a.abs()
                if "absa" in need:
                    sums["absa"] = psum(t)
                if "zero" in need:
                    positions = t[0, 0].numel()
                    sums["zero"] = positions - psum(t.sign_())
    return sums


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
    sums = _accumulate(model, graph, layers, data, loss_fn, need)
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in wanted}
    for name in layers:
        for key, value in _finish(sums, name, wanted).items():
            out[key][name] = value
    return out


class _Sums:
    """What one pass accumulates, per layer: sums over samples and positions (float64) of
    the per-sample sums :func:`_position_sums` gives, and the per-sample sums of ``h g``
    and ``g`` that MRS needs (kept per sample, in the model's dtype)."""

    def __init__(self, layers: list[str]):
        self.acc: dict[str, dict[str, torch.Tensor]] = {}
        self.s_hg: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self.s_g: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self.n_samples = 0
        self.positions: dict[str, int] = {}

    def add(self, name: str, sums: dict[str, torch.Tensor], positions: int) -> None:
        self.positions[name] = positions
        if "hg" in sums:
            self.s_hg[name].append(sums["hg"])
        if "g" in sums:
            self.s_g[name].append(sums["g"])
        d = self.acc.setdefault(name, {})
        for key, val in sums.items():
            val = val.sum(0).to(torch.float64)
            d[key] = d[key] + val if key in d else val


def _accumulate(model: nn.Module, graph: UnitGraph, layers: list[str], data,
                loss_fn: Callable, need: set[str]) -> _Sums:
    """The pass: forward hooks keep each layer's output ``h``, ``torch.autograd.grad`` gives
    ``g = dL/dh``, and the sums ``need`` lists are accumulated batch by batch."""
    mods = {n: model.get_submodule(n) for n in layers}
    outs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
             for n in layers]
    sums = _Sums(layers)
    for p in model.parameters():
        p.requires_grad_(True)  # restored by the scorer's `preserved`
    try:
        for x, y in iter_batches(data):
            outs.clear()
            loss = loss_sum(loss_fn, model(x), y)
            hs = [outs[n] for n in layers]
            grads = torch.autograd.grad(loss, hs, allow_unused=True)
            sums.n_samples += x.shape[0]
            with torch.no_grad():
                storages = [t.untyped_storage().data_ptr() for t in (*hs, *grads)
                            if t is not None]
                for name, h, g in zip(layers, hs, grads):
                    if g is None:
                        g = torch.zeros_like(h)
                    owned = storages.count(g.untyped_storage().data_ptr()) == 1
                    sums.add(name, _position_sums(model, graph, name, h, g, need, owned),
                             h[0, 0].numel())
    finally:
        for hk in hooks:
            hk.remove()
    return sums


def _finish(sums: _Sums, name: str, wanted: list[str]) -> dict[str, torch.Tensor]:
    """The statistics ``wanted`` of layer ``name`` from the accumulated sums."""
    f64 = torch.float64
    d, npos = sums.acc[name], sums.positions[name]
    n_samples = sums.n_samples
    count = n_samples * npos
    mu = d["h"] / count if "h" in d else None
    out: dict[str, torch.Tensor] = {}
    if "mean" in wanted:
        out["mean"] = mu
    if "mrs" in wanted:
        # in place, in the model's dtype: no fresh B x C float64 temporaries
        s_g, s_hg = sums.s_g[name], sums.s_hg[name]
        r = torch.cat(s_g) if len(s_g) > 1 else s_g[0].clone()
        r.mul_(mu.to(r.dtype)).sub_(torch.cat(s_hg)).abs_()
        out["mrs"] = r.sum(0, dtype=f64)
    if "taylor" in wanted:
        out["taylor"] = (d["hg"] / count).abs()
    if "dormancy" in wanted:
        mean_abs = d["absa"] / count
        layer_mean = mean_abs.mean()
        out["dormancy"] = (mean_abs / layer_mean if layer_mean > 0
                           else torch.zeros_like(mean_abs))
    if "apoz" in wanted:
        out["apoz"] = d["zero"] / count
    if "act_mean" in wanted or "act_var" in wanted:
        act_mean = d["a"] / count
        if "act_mean" in wanted:
            out["act_mean"] = act_mean
        if "act_var" in wanted:
            out["act_var"] = (d["a2"] / count - act_mean ** 2).clamp_min(0)
    if "out_var" in wanted:
        out["out_var"] = (d["h2"] / count - mu ** 2).clamp_min(0)
    if "grad_norm" in wanted:
        out["grad_norm"] = (d["g2"] / n_samples).sqrt()
    return out
