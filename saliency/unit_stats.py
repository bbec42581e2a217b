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

**Groups.** Channels removed together (the producers a residual add sums, with every
consumer of the sum) form a group (:class:`saliency.graph.Group`); each statistic has one
value per *group channel* ``i``, under the group's name. Every member ``m`` is hooked; ``h``
and ``g = dL/dh`` are the member's own output and gradient (a member that reads the group's
channels is differentiated as it is: its gradient is the total derivative), ``P_m`` its
positions, ``mu_{m,i}`` its own mean, and ``sum_m`` runs over the members whose channel maps
to ``i``:

* ``mrs``: ``sum_k | sum_m sum_p (mu_{m,i} - h_{k,m,i,p}) g_{k,m,i,p} |``, the first-order
  terms of every member (each held at its own mean, as removing the group channel holds it)
  summed before the absolute value;
* ``taylor``: ``| (1/N) sum_k sum_m (1/P_m) sum_p h g |``;
* ``mean``: the mean of the first member (in forward order) that has channel ``i``;
* ``out_var``: the largest member variance (the channel is constant when every member's is);
* ``grad_norm``: ``sqrt((1/N) sum_k sum_m ||g_{k,m,i}||^2)``;
* ``dormancy``, ``apoz``, ``act_mean``, ``act_var`` of a group with a residual join are read
  on the maps its consumers read: each consumer's input at the group's positions (a
  flattened Linear input as channels x its block of columns), after everything between the
  members and the consumer (pooling included), one statistic per consumer, averaged over the
  consumers that read the channel. ReDo's denominator is the mean over the group channels.

A chain (a group of one, no residual join) is computed exactly as before: activation
statistics on the path to its first consumer, before pooling.

**Products.** A group joined by an elementwise product (a gated FFN, ``down(act(gate(x)) *
up(x))``; :attr:`saliency.graph.Group.held`) is held at the product, so ``h`` and ``g`` are
the product ``p`` and ``dL/dp`` (one value per group channel, read from the traced graph):
``mean``, ``mrs``, ``taylor``, ``out_var`` and ``grad_norm`` are those of a chain whose output
is ``p``; the activation statistics are read on what the consumers read, as for a residual
group.

**Tokens.** On token-shaped layers (a Linear on ``(batch, ..., channels)``) the token
positions are the positions ``p`` above: every statistic averages (or, for MRS within a
sample, sums) over them as over a convolution's positions, and a sample's loss is the mean of
its per-token losses when ``loss_fn`` returns them (padding targets left out,
:func:`saliency.base.per_sample_loss`). A batch ``(inputs, targets, mask)`` with a token mask
(:func:`saliency.replacement.iter_masked_batches`) leaves padded positions out of every sum of
outputs and activations and of the counts that divide them (``mean``, ``taylor``'s
average, ``dormancy``, ``apoz``, the moments); the gradient terms of ``mrs``, ``taylor`` and
``grad_norm`` run over every position, since holding a unit at its mean holds it at padding
too (``dL/dh`` there is non-zero only where a real token reads it).

**Heads.** Attention modules named in ``heads`` have their heads' ``mrs``, ``taylor``,
``dormancy`` and ``apoz`` (:mod:`saliency.head_scores`) computed in the same forward and
backward pass: hooks keep each module's heads' output (what its output projection reads), the
backward pass differentiates the loss with respect to it alongside the layers' outputs, and
:class:`saliency.head_scores.HeadSums` accumulates the per-sample sums MRS needs and the heads'
means, so no pass runs for the means.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .attention import context_hooks
from .base import loss_sum, to_group
from .graph import ChannelOp, Group, UnitGraph
from .head_scores import HEAD_STATISTICS, HeadSums
from .layers import CHANNEL_MODULES, channels_first
from .replacement import (NodeRecorder, apply_op, batch_token_mask, current_token_mask,
                          iter_masked_batches, position_mask)

__all__ = ["unit_statistics", "STATISTICS", "activation", "is_chain", "is_pool", "ConsumerMaps"]

STATISTICS = ("mean", "mrs", "taylor", "dormancy", "apoz", "act_mean", "act_var", "out_var",
              "grad_norm")


def is_pool(model: nn.Module, op: ChannelOp) -> bool:
    """Whether ``op`` combines positions within a channel (pooling): activation statistics
    are taken before it."""
    if op.kind == "module":
        return CHANNEL_MODULES[type(model.get_submodule(op.target))].pools
    return op.shape_only


def activation(model: nn.Module, path: Iterable[ChannelOp], h: torch.Tensor) -> torch.Tensor:
    """The unit activations: ``h`` through its path's per-channel ops, before pooling."""
    for op in path:
        if not is_pool(model, op):
            h = apply_op(model, op, h, None, maps=True)
    return h


_NEEDS = {  # per statistic, the per-sample sums over positions it is built from
    "mean": {"h"}, "mrs": {"h", "g", "hg"}, "taylor": {"hg"}, "dormancy": {"absa"},
    "apoz": {"zero"}, "act_mean": {"a"}, "act_var": {"a", "a2"}, "out_var": {"h", "h2"},
    "grad_norm": {"g2"},
}


def _position_sums(model: nn.Module, graph: UnitGraph, name: str, h: torch.Tensor,
                   g: torch.Tensor, need: set[str], g_owned: bool,
                   keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-sample sums over positions (``B x C``, model dtype) of what ``need`` lists.

    ``keep`` (``(B, 1, positions...)`` bool, :func:`~saliency.replacement.position_mask`)
    leaves padded positions out of the sums of outputs and activations; the gradient terms
    (``g``, ``g^2``, ``h g``) run over every position, since holding a unit at a constant
    holds it at padding too. Full-size temporaries cost more than the reductions (fresh
    allocations of a convolution's maps), so the few needed are reused in place: ``g``
    (when ``g_owned``: nothing else holds it) becomes ``h * g``, and the activation becomes
    ``|a|`` and then ``sign(|a|)`` (the non-zero count).
    """
    b, c = h.shape[0], h.shape[1]
    flat = h.dim() == 2  # one position per unit: sums are the tensors themselves

    def psum(t):
        return t if flat else t.reshape(b, c, -1).sum(2)

    def ksum(t):  # over the kept positions
        if keep is None:
            return psum(t)
        return psum(torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device)))

    sums = {}
    if "h" in need:
        sums["h"] = ksum(h)
    if "h2" in need:
        sums["h2"] = ksum(h * h)
    if "g" in need:
        sums["g"] = psum(g)
    if "g2" in need:
        sums["g2"] = psum(g * g)
    if "hg" in need:
        sums["hg"] = psum(g.mul_(h) if g_owned and not flat else g * h)  # g is done with
    if need & _ACTIVATION_SUMS:
        sums.update(_activation_sums(model, graph, name, h, need, keep, ksum))
    return sums


def _activation_sums(model: nn.Module, graph: UnitGraph, name: str, h: torch.Tensor,
                     need: set[str], keep: torch.Tensor | None, ksum: Callable
                     ) -> dict[str, torch.Tensor]:
    """The sums of :func:`_position_sums` over the activation ``a`` (``h`` through its path's
    per-channel ops), over the kept positions ``ksum`` sums."""
    flat = h.dim() == 2
    edges = graph.producers[name].edges
    a = activation(model, edges[0].path, h) if edges else h
    a_owned = not flat and a.untyped_storage().data_ptr() != h.untyped_storage().data_ptr()
    sums = {}
    if "a" in need:
        sums["a"] = ksum(a)
    if "a2" in need:
        sums["a2"] = ksum(a * a)
    if "absa" in need or "zero" in need:
        if flat:
            if "absa" in need:
                sums["absa"] = a.abs()
            if "zero" in need:
                sums["zero"] = a == 0
        else:
            t = a.abs_() if a_owned else a.abs()
            if "absa" in need:
                sums["absa"] = ksum(t)
            if "zero" in need:
                kept = (t[0, 0].numel() if keep is None
                        else keep.reshape(a.shape[0], -1).sum(1, keepdim=True))
                sums["zero"] = kept - ksum(t.sign_())
    return sums


def unit_statistics(model: nn.Module, graph: UnitGraph, layers: list[str], data,
                    loss_fn: Callable, stats: Iterable[str] | None = None,
                    heads: Iterable[str] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of :data:`STATISTICS` (all, or ``stats``) for ``layers``, in one pass.

    ``layers`` are group names (:attr:`UnitGraph.prunable`; a chain producer is its own
    group). ``heads`` names attention modules (:attr:`UnitGraph.prunable_heads`) whose heads'
    statistics among ``stats`` that heads have (``mrs``, ``taylor``, ``dormancy``, ``apoz``:
    :data:`saliency.head_scores.HEAD_STATISTICS`) come from the same pass, under the
    module's name (one value per head, equal to
    :func:`saliency.head_scores.head_statistics`'). Reductions over positions run in the
    model's dtype and are accumulated in float64. The model must be in eval mode (the
    scorers ensure it). Returns ``{statistic: {group or attention module: 1-D float64
    tensor over its group channels or heads}}``.
    """
    wanted = list(STATISTICS if stats is None else stats)
    unknown = set(wanted) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {STATISTICS}")
    heads = list(dict.fromkeys(heads))
    bad = [n for n in heads if n not in graph.prunable_heads]
    if bad:
        raise ValueError(f"{bad[0]!r} is not an attention module with prunable heads; they "
                         f"are {graph.prunable_heads}")
    head_sums = HeadSums(model, graph.heads, heads) if heads else None
    need = set().union(*(_NEEDS[k] for k in wanted))
    groups = {}
    for name in layers:
        if name not in graph.groups:
            raise ValueError(f"{name!r} is not a group of the graph; groups are "
                             f"{graph.prunable}")
        groups[name] = graph.groups[name]
    chains = [n for n, g in groups.items() if is_chain(g)]
    coupled = [n for n in groups if n not in chains]
    members = {m: need for n in chains for m in groups[n].members}
    member_need = need & _MEMBER_SUMS
    members.update({m: member_need for n in coupled if groups[n].held is None
                    for m in groups[n].members})
    held = {_held_key(n): groups[n].nodes[groups[n].held] for n in coupled
            if groups[n].held is not None}
    members.update({k: member_need for k in held})
    maps = None
    if coupled and need & _ACTIVATION_SUMS:
        maps = ConsumerMaps(model, graph, coupled)
    try:
        sums = _accumulate(model, graph, members, data, loss_fn,
                           {k: (node.name, node.channel_last) for k, node in held.items()},
                           head_sums)
    finally:
        if maps is not None:
            maps.remove()
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in wanted}
    for name in layers:
        if name in chains:
            values = _finish(sums, name, wanted)
        elif groups[name].held is not None:
            values = _finish_held(sums, maps, groups[name], wanted)
        else:
            values = _finish_group(sums, maps, groups[name], wanted)
        for key, value in values.items():
            out[key][name] = value
    if head_sums is not None:
        for key, values in head_sums.finish([k for k in wanted if k in HEAD_STATISTICS]
                                            ).items():
            out[key].update(values)
    return out


def is_chain(group: Group) -> bool:
    """Whether a group is a chain: one member and no residual join (its per-channel paths
    are the producer's :attr:`~saliency.graph.Producer.edges`)."""
    return len(group.members) == 1 and not group.joined


#: per-sample sums read from a member's own output and gradient
_MEMBER_SUMS = {"h", "h2", "g", "g2", "hg"}
#: sums over what a unit's consumers read (its activation)
_ACTIVATION_SUMS = {"a", "a2", "absa", "zero"}


class _Sums:
    """What one pass accumulates, per layer: sums over samples and positions (float64) of
    the per-sample sums :func:`_position_sums` gives, and the per-sample sums of ``h g``
    and ``g`` that MRS needs (kept per sample, in the model's dtype)."""

    def __init__(self, layers: Iterable[str]):
        self.acc: dict[str, dict[str, torch.Tensor]] = {}
        self.s_hg: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self.s_g: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self.n_samples = 0
        self.count: dict[str, int] = {}

    def add(self, name: str, sums: dict[str, torch.Tensor], count: int) -> None:
        """Add a batch's per-sample sums of layer ``name`` over ``count`` (sample, position)
        pairs (the kept ones under a token mask)."""
        self.count[name] = self.count.get(name, 0) + count
        if "hg" in sums:
            self.s_hg[name].append(sums["hg"])
        if "g" in sums:
            self.s_g[name].append(sums["g"])
        d = self.acc.setdefault(name, {})
        for key, val in sums.items():
            val = val.sum(0).to(torch.float64)
            d[key] = d[key] + val if key in d else val


def _held_key(group: str) -> str:
    return f"{group} (held)"


def _accumulate(model: nn.Module, graph: UnitGraph, members: dict[str, set[str]], data,
                loss_fn: Callable, nodes: dict[str, tuple[str, bool]] | None = None,
                head_sums: HeadSums | None = None) -> _Sums:
    """The pass: forward hooks keep each member's output ``h``, ``torch.autograd.grad`` gives
    ``g = dL/dh``, and the sums ``members[name]`` lists are accumulated batch by batch.
    ``head_sums`` (optional) takes the heads' outputs and their gradients from the same
    forward and backward pass (:func:`~saliency.attention.context_hooks`).

    ``nodes`` maps keys of ``members`` that are not modules to ``(torch.fx node name,
    channels last)``: their ``h`` is that node's value, read while the traced graph runs.
    Token-shaped outputs are read with their channels in dimension 1
    (:func:`~saliency.layers.channels_first`)."""
    nodes = nodes or {}
    layers = list(members)
    mods = {n: model.get_submodule(n) for n in layers if n not in nodes}
    outs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
             for n in mods]
    sums = _Sums(layers)
    for p in model.parameters():
        p.requires_grad_(True)  # restored by the scorer's `preserved`
    try:
        for x, y, mask in iter_masked_batches(data):
            outs.clear()
            with contextlib.ExitStack() as stack:
                stack.enter_context(batch_token_mask(mask))
                if head_sums is not None:
                    stack.enter_context(context_hooks(model, graph.heads, head_sums.hooks()))
                if nodes:
                    rec = NodeRecorder(graph.gm, [name for name, _ in nodes.values()])
                    loss = loss_sum(loss_fn, rec.run(x), y)
                    outs.update({k: rec.values[name] for k, (name, _) in nodes.items()})
                else:
                    loss = loss_sum(loss_fn, model(x), y)
            hs = [outs[n] for n in layers]
            ctxs = head_sums.outputs() if head_sums is not None else []
            grads = torch.autograd.grad(loss, hs + ctxs, allow_unused=True)
            if head_sums is not None:
                head_sums.add(grads[len(hs):], x.shape[0], mask)
                grads = grads[:len(hs)]
            sums.n_samples += x.shape[0]
            with torch.no_grad():
                grads = [None if g is None else _first(n, mods, nodes, g)
                         for n, g in zip(layers, grads)]
                hs = [_first(n, mods, nodes, h) for n, h in zip(layers, hs)]
                storages = [t.untyped_storage().data_ptr() for t in (*hs, *grads)
                            if t is not None]
                for name, h, g in zip(layers, hs, grads):
                    if g is None:
                        g = torch.zeros_like(h)
                    owned = storages.count(g.untyped_storage().data_ptr()) == 1
                    keep = position_mask(mask, h, f"layer {name!r}")
                    count = h.numel() // h.shape[1] if keep is None else int(keep.sum())
                    sums.add(name, _position_sums(model, graph, name, h, g, members[name],
                                                  owned, keep), count)
    finally:
        for hk in hooks:
            hk.remove()
    return sums


def _first(key: str, mods: dict[str, nn.Module], nodes: dict[str, tuple[str, bool]],
           t: torch.Tensor) -> torch.Tensor:
    """``t`` (a member's output or gradient, or a node's) with its channels in dimension 1."""
    if key in nodes:
        return t.movedim(-1, 1) if nodes[key][1] and t.dim() > 2 else t
    return channels_first(mods[key], t)


def _finish_held(sums: _Sums, maps: ConsumerMaps | None, group: Group,
                 wanted: list[str]) -> dict[str, torch.Tensor]:
    """The statistics ``wanted`` of a group held at a product: those of the product's
    channels (as for a chain whose output is the product), mapped to the group channels, and
    the activation statistics of what its consumers read."""
    own = [k for k in wanted if k in ("mean", "mrs", "taylor", "out_var", "grad_norm")]
    values = _finish(sums, _held_key(group.name), own)
    labels = group.nodes[group.held].labels
    pos = (labels >= 0).nonzero().reshape(-1)
    out = {}
    for key, v in values.items():
        full = torch.zeros(group.size, dtype=torch.float64)
        full[labels[pos]] = v.cpu().to(torch.float64)[pos]
        out[key] = full
    out.update(_consumer_statistics(maps, group, wanted))
    return out


class ConsumerMaps:
    """What the consumers of groups read, per consumer and position, in one pass.

    Forward pre-hooks on every consumer of the groups take its input at the group's
    positions (a flattened Linear input as channels x its block of columns) and accumulate,
    per position, around a shift taken from the first sample (so an exactly constant map has
    a variance of exactly 0): ``sum (x - c)``, ``sum (x - c)^2``, ``sum |x|`` and the number
    of zeros, over samples and positions (the batch's token mask, when it has one, leaving
    padding out: :func:`~saliency.replacement.current_token_mask`), in float64.
    :meth:`statistics` gives each group channel's statistics, averaged over the consumers
    that read it.
    """

    def __init__(self, model: nn.Module, graph: UnitGraph, groups: Iterable[str]):
        self.graph = graph
        self.reads: dict[str, list[tuple[str, int, torch.Tensor, int]]] = {}
        for name in groups:
            group = graph.groups[name]
            for j, c in enumerate(group.consumers):
                pos = (group.nodes[c.node].labels >= 0).nonzero().reshape(-1)
                self.reads.setdefault(c.name, []).append((name, j, pos, c.block))
        self.acc: dict[tuple[str, int], list] = {}
        self.handles = [model.get_submodule(c).register_forward_pre_hook(self._hook(c))
                        for c in self.reads]

    def _hook(self, consumer: str):
        reads = self.reads[consumer]

        def hook(m, args):
            with torch.no_grad():
                x = channels_first(m, args[0].detach())
                b = x.shape[0]
                keep = position_mask(current_token_mask(), x, f"the input of {consumer!r}")
                keep = None if keep is None else keep.reshape(b, 1, -1)
                for name, j, pos, block in reads:
                    t = x.reshape(b, -1, block) if block > 1 else x.reshape(b, x.shape[1], -1)
                    self._add((name, j), t.index_select(1, pos.to(t.device)), keep)
        return hook

    def _add(self, key: tuple[str, int], t: torch.Tensor, keep: torch.Tensor | None) -> None:
        f64 = torch.float64
        if key not in self.acc:
            self.acc[key] = [t[0, :, 0].clone(), 0.0, 0.0, 0.0, 0.0, 0]
        entry = self.acc[key]
        d = t - entry[0][None, :, None]
        zeros = t == 0
        if keep is not None:  # padding: no deviation, no magnitude, not a zero
            d = torch.where(keep, d, torch.zeros((), dtype=d.dtype, device=d.device))
            zeros &= keep
        entry[1] = entry[1] + d.sum((0, 2), dtype=f64)
        entry[2] = entry[2] + d.square_().sum((0, 2), dtype=f64)
        entry[3] = entry[3] + (t.abs() if keep is None else t.abs() * keep).sum((0, 2), dtype=f64)
        entry[4] = entry[4] + zeros.sum((0, 2)).to(f64)
        entry[5] += t.shape[0] * t.shape[2] if keep is None else int(keep.sum())

    def remove(self) -> None:
        for hd in self.handles:
            hd.remove()

    def statistics(self, name: str) -> dict[str, torch.Tensor]:
        """``{"act_mean", "act_var", "mean_abs", "apoz"}`` of group ``name``'s channels
        (float64), each the mean over the consumers (and positions) that read the channel; a
        channel no consumer reads counts as a zero activation."""
        group = self.graph.groups[name]
        f64 = torch.float64
        tot = {k: torch.zeros(group.size, dtype=f64)
               for k in ("act_mean", "act_var", "mean_abs", "apoz")}
        reads = torch.zeros(group.size, dtype=f64)
        for j, c in enumerate(group.consumers):
            if (name, j) not in self.acc:
                continue
            shift, s1, s2, sabs, zeros, n = self.acc[(name, j)]
            labels = group.nodes[c.node].labels
            lab = labels[labels >= 0]
            m1 = s1 / n
            per = {"act_mean": shift.to(f64) + m1, "act_var": (s2 / n - m1 * m1).clamp_min(0),
                   "mean_abs": sabs / n, "apoz": zeros / n}
            for k, v in per.items():
                tot[k].index_add_(0, lab, v.cpu())
            reads.index_add_(0, lab, torch.ones(lab.numel(), dtype=f64))
        seen = reads > 0
        out = {k: torch.where(seen, v / reads.clamp_min(1), torch.zeros_like(v))
               for k, v in tot.items()}
        out["apoz"] = torch.where(seen, out["apoz"], torch.ones_like(out["apoz"]))
        return out


def _finish_group(sums: _Sums, maps: "ConsumerMaps | None", group: Group,
                  wanted: list[str]) -> dict[str, torch.Tensor]:
    """The statistics ``wanted`` of a group's channels from its members' sums and what its
    consumers read (see the module docstring)."""
    f64 = torch.float64
    n_samples = sums.n_samples
    d = {m: sums.acc[m] for m in group.members}
    count = sums.count
    mu = {m: d[m]["h"] / count[m] for m in group.members if "h" in d[m]}
    out: dict[str, torch.Tensor] = {}
    if "mean" in wanted:
        out["mean"] = to_group(group, mu, "first")
    if "mrs" in wanted:
        r = {m: (torch.cat(sums.s_g[m]).to(f64) * mu[m] - torch.cat(sums.s_hg[m]).to(f64))
             for m in group.members}
        out["mrs"] = to_group(group, r).abs().sum(0)
    if "taylor" in wanted:
        out["taylor"] = to_group(group, {m: d[m]["hg"] / count[m]
                                         for m in group.members}).abs()
    if "out_var" in wanted:
        out["out_var"] = to_group(group, {m: (d[m]["h2"] / count[m] - mu[m] ** 2).clamp_min(0)
                                          for m in group.members}, "max")
    if "grad_norm" in wanted:
        out["grad_norm"] = (to_group(group, {m: d[m]["g2"] for m in group.members})
                            / n_samples).sqrt()
    out.update(_consumer_statistics(maps, group, wanted))
    return out


def _consumer_statistics(maps: ConsumerMaps | None, group: Group, wanted: list[str]
                         ) -> dict[str, torch.Tensor]:
    """``dormancy``, ``apoz``, ``act_mean``, ``act_var`` of a group from what its consumers
    read."""
    out: dict[str, torch.Tensor] = {}
    if maps is not None and set(wanted) & {"dormancy", "apoz", "act_mean", "act_var"}:
        act = maps.statistics(group.name)
        if "dormancy" in wanted:
            mean_abs = act["mean_abs"]
            group_mean = mean_abs.mean()
            out["dormancy"] = (mean_abs / group_mean if group_mean > 0
                               else torch.zeros_like(mean_abs))
        for key in ("apoz", "act_mean", "act_var"):
            if key in wanted:
                out[key] = act[key]
    return out


def _finish(sums: _Sums, name: str, wanted: list[str]) -> dict[str, torch.Tensor]:
    """The statistics ``wanted`` of layer ``name`` from the accumulated sums."""
    f64 = torch.float64
    d, count = sums.acc[name], sums.count[name]
    n_samples = sums.n_samples
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
