"""Recompute only what changes: per-sample losses when units or weights change.

:class:`Downstream` runs a model's ``torch.fx`` graph once on a batch and keeps
every intermediate value. It then answers, for ``K`` variants at once, "what
is each sample's loss when channel ``c_k`` of producer ``P`` outputs
``v_k`` instead?" -- without a full forward pass per variant:

1. the new channel goes through the per-channel path alone
   (:func:`saliency.replacement.run_path` on the ``K`` chosen channels);
2. each consumer's output changes by a *linear* term that involves only that
   channel's weights: ``dz = W[:, cols(c)] . (a_new - a)`` for a Linear
   consumer, a one-input-channel convolution for a Conv consumer -- a
   fraction ``1/C`` of the consumer's cost;
3. only the nodes downstream of the consumers are recomputed, for the ``K``
   variants stacked along the batch dimension.

This makes the exact mean replacement penalty (MRP; U. Evci, *Detecting Dead
Weights and Units in Neural Networks*, MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068 -- Evci 2018 -- Def. 3.1.1)
of every unit and the exact loss change of zeroing each weight (the thesis's
``lossChangeScorer``, Sec. 2.1) affordable. Producers that feed the model's
output directly are recomputed from their own output instead.

A group of coupled channels with a residual join (:class:`saliency.graph.Group`) is
recomputed from its members: for ``K`` variants stacked along the batch dimension, every
member's output channels of the variant's group channel are replaced by the member's own
values, and everything after the first member runs again. A member downstream of another
member (it reads the group's channels) is recomputed from its changed input and then has its
channels replaced: the replacement is applied after its computation, not fixed in advance.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .base import per_sample_loss
from .graph import UnitGraph, symbolic_trace
from .kernels import call_function, call_module
from .layers import channels_first, effective_tensor
from .replacement import run_path

__all__ = ["Downstream"]

#: elements of the stacked downstream activations allowed per chunk
DEFAULT_BUDGET = 2 ** 25


class Downstream:
    """A cached forward pass of ``model`` on ``x`` (eval mode, no gradient).

    Args:
        model: the model (it must be in eval mode; scorers ensure this).
        graph: its :class:`~saliency.graph.UnitGraph` (``trace(model, ...)``).
        x: one input batch.
        budget: elements of stacked activations per chunk of variants.
    """

    def __init__(self, model: nn.Module, graph: UnitGraph, x: torch.Tensor,
                 budget: int = DEFAULT_BUDGET):
        self.model, self.graph, self.budget = model, graph, budget
        self.gm = graph.gm if graph.gm is not None else symbolic_trace(model)
        self.batch = x.shape[0]
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        with torch.no_grad():
            self.out = interp.run(x)
        if not isinstance(self.out, torch.Tensor):
            raise TypeError("scoring needs a model whose output is one tensor")
        self.env: dict[fx.Node, Any] = interp.env
        self.nodes: dict[str, fx.Node] = {}
        self._calls: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module":
                self.nodes[n.target] = n
                self._calls[n.target] = self._calls.get(n.target, 0) + 1
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        self.by_name = {n.name: n for n in self.gm.graph.nodes}
        self._dependents: dict[tuple, list[fx.Node]] = {}

    # -- cached values ----------------------------------------------------

    def _node(self, module: str) -> fx.Node:
        if module not in self.nodes:
            raise ValueError(f"module {module!r} is not called in the model's forward")
        if self._calls[module] > 1:
            raise ValueError(f"module {module!r} is called {self._calls[module]} times; its "
                             "output is not one tensor")
        return self.nodes[module]

    def output_of(self, module: str) -> torch.Tensor:
        """The cached output of module ``module`` on this batch."""
        return self.env[self._node(module)]

    def input_of(self, module: str) -> torch.Tensor:
        """The cached (first) input of module ``module`` on this batch."""
        return self.env[self._node(module).args[0]]

    def base_losses(self, y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
        """Per-sample losses of the unchanged model (FloatingPointError if not finite)."""
        losses = per_sample_loss(loss_fn, self.out, y)
        if not torch.isfinite(losses).all():
            raise FloatingPointError("the loss on data is not finite")
        return losses

    # -- recomputation -----------------------------------------------------

    def _descendants(self, starts: tuple[fx.Node, ...]) -> list[fx.Node]:
        key = starts
        if key not in self._dependents:
            seen: set[fx.Node] = set()
            stack = list(starts)
            while stack:
                n = stack.pop()
                for u in n.users:
                    if u not in seen:
                        seen.add(u)
                        stack.append(u)
            self._dependents[key] = sorted(seen, key=self.order.__getitem__)
        return self._dependents[key]

    def _rerun(self, overrides: dict[fx.Node, torch.Tensor], k: int,
               post: dict[fx.Node, Callable[[torch.Tensor], torch.Tensor]] | None = None
               ) -> torch.Tensor:
        """Recompute the nodes after ``overrides`` for ``k`` stacked variants; the nodes of
        ``post`` are replaced by ``post[node](computed value)`` once computed."""
        post = post or {}
        local = dict(overrides)
        b = self.batch

        def value(n):
            if n in local:
                return local[n]
            v = self.env[n]
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b:
                return v.repeat((k,) + (1,) * (v.dim() - 1))
            return v

        out = None
        for node in self._descendants(tuple(overrides)):
            args = fx.node.map_arg(node.args, value)
            kwargs = fx.node.map_arg(node.kwargs, value)
            if node.op == "call_module":
                res = call_module(self.gm.get_submodule(node.target), args, kwargs)
            elif node.op == "call_function":
                res = call_function(node.target, args, kwargs)
            elif node.op == "call_method":
                res = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "output":
                out = args[0]
                continue
            else:  # pragma: no cover - placeholders/get_attr are never downstream
                res = self.env[node]
            if node in post:
                res = post[node](res)
            local[node] = res
        return out

    def _chunk(self, starts: tuple[fx.Node, ...]) -> int:
        per_variant = 0
        for n in self._descendants(starts):
            v = self.env.get(n)
            if isinstance(v, torch.Tensor):
                per_variant += v.numel()
        return max(1, self.budget // max(per_variant, 1))

    def channel_losses(self, producer: str, channels: torch.Tensor, values: torch.Tensor,
                       y: torch.Tensor, loss_fn: Callable,
                       reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """Per-sample losses when channel ``channels[k]`` of ``producer`` outputs ``values[k]``.

        Args:
            producer: a Linear/Conv module name, or the name of a group of coupled channels
                (several members, or a residual join; see below).
            channels: ``(K,)`` channel indices (repeats allowed); group channels for a
                group.
            values: ``(K, B or 1, *spatial)``: the new output of that channel
                for each sample (1 broadcasts over the batch). For a group, a mapping
                ``{member: values over the member's output channels}``, each ``(C_m,)`` (one
                constant per channel, its mean say) or ``(C_m, B or 1, *spatial)``: variant
                ``k`` replaces, in every member, the channels of group channel
                ``channels[k]`` by the member's values there.
            y: targets of the batch.
            reduce: optional map of each chunk's ``(k, B)`` losses to a smaller
                tensor (``(k,)`` say), to save memory.

        Returns:
            ``(K, B)`` per-sample losses, or the concatenated reductions.
        """
        group = (self.graph.groups or {}).get(producer)
        if group is not None and (group.joined or len(group.members) > 1):
            return self._group_losses(group, channels, values, y, loss_fn, reduce)
        if isinstance(values, Mapping):
            raise TypeError(f"{producer!r} is not a group of several layers: pass its values "
                            "as one tensor")
        with torch.no_grad():
            prod = self.graph.producers.get(producer)
            fast = prod is not None and prod.prunable and \
                not self.graph.group_of(producer).joined and prod.edges and \
                not prod.channel_last and \
                not any(op.kind == "layout" for e in prod.edges for op in e.path)
            node = self._node(producer)
            starts = (tuple(self.nodes[e.consumer] for e in prod.edges) if fast else (node,))
            step = self._chunk(starts)
            pieces = []
            after = set(self._descendants(starts)) if fast else set()
            for lo in range(0, channels.numel(), step):
                ch, val = channels[lo:lo + step], values[lo:lo + step]
                post = {}
                if fast:
                    overrides, post = self._consumer_overrides(prod, ch, val, after)
                else:
                    overrides = {node: self._replaced_output(node, ch, val)}
                out = self._rerun(overrides, ch.numel(), post)
                losses = per_sample_loss(loss_fn, out, y.repeat(
                    (ch.numel(),) + (1,) * (y.dim() - 1))).reshape(ch.numel(), -1)
                pieces.append(reduce(losses) if reduce is not None else losses)
            return torch.cat(pieces)

    def _group_losses(self, group, channels: torch.Tensor,
                      values: Mapping[str, torch.Tensor], y: torch.Tensor, loss_fn: Callable,
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """:meth:`channel_losses` of a group: every member's channels of group channel
        ``channels[k]`` replaced in variant ``k``, recomputed from the members."""
        if group.held is not None:
            return self._held_losses(group, channels, values, y, loss_fn, reduce)
        if not isinstance(values, Mapping) or set(values) != set(group.members):
            raise ValueError(f"group {group.name!r}: values must map each member "
                             f"{group.members} to its channels' values")
        with torch.no_grad():
            nodes = {m: self._node(m) for m in group.members}
            after = set(self._descendants(tuple(nodes.values())))
            first = tuple(n for n in nodes.values() if n not in after)
            step = self._chunk(first)
            pieces = []
            for lo in range(0, channels.numel(), step):
                ch = channels[lo:lo + step]
                k = ch.numel()
                overrides, post = {}, {}
                for m, node in nodes.items():
                    h = self.env[node]
                    own = group.channels[m].to(ch.device)
                    mask = (own[None, :] == ch[:, None])  # (k, C_m)
                    last = self.graph.producers[m].channel_last
                    replace = _member_replacement(mask, values[m], h, last)
                    if node in after:
                        post[node] = replace
                    else:
                        overrides[node] = replace(h.repeat((k,) + (1,) * (h.dim() - 1)))
                out = self._rerun(overrides, k, post)
                losses = per_sample_loss(loss_fn, out, y.repeat(
                    (k,) + (1,) * (y.dim() - 1))).reshape(k, -1)
                pieces.append(reduce(losses) if reduce is not None else losses)
            return torch.cat(pieces)

    def _held_losses(self, group, channels: torch.Tensor, values: Mapping[str, torch.Tensor],
                     y: torch.Tensor, loss_fn: Callable,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """:meth:`channel_losses` of a group held at a product (:attr:`Group.held`): in
        variant ``k`` the product's channels of group channel ``channels[k]`` take
        ``values[group]`` there, and everything after the product is recomputed."""
        if not isinstance(values, Mapping) or set(values) != {group.name}:
            raise ValueError(f"group {group.name!r} is held at its product: values must map "
                             f"the group's name to one value per group channel")
        held = group.nodes[group.held]
        node = self.by_name[held.name]
        h = self.env[node]
        labels = held.labels.to(h.device)
        vals = values[group.name].to(h)[labels.clamp_min(0)]
        with torch.no_grad():
            step = self._chunk((node,))
            pieces = []
            for lo in range(0, channels.numel(), step):
                ch = channels[lo:lo + step]
                k = ch.numel()
                mask = labels[None, :] == ch.to(h.device)[:, None]
                replace = _member_replacement(mask, vals, h, held.channel_last)
                out = self._rerun({node: replace(h.repeat((k,) + (1,) * (h.dim() - 1)))}, k)
                losses = per_sample_loss(loss_fn, out, y.repeat(
                    (k,) + (1,) * (y.dim() - 1))).reshape(k, -1)
                pieces.append(reduce(losses) if reduce is not None else losses)
            return torch.cat(pieces)

    def _replaced_output(self, node: fx.Node, ch: torch.Tensor, val: torch.Tensor
                         ) -> torch.Tensor:
        h = self.env[node]
        k, b = ch.numel(), h.shape[0]
        view = channels_first(self.gm.get_submodule(node.target), h)
        stacked = view.unsqueeze(0).repeat((k,) + (1,) * h.dim())
        stacked[torch.arange(k), :, ch] = val.expand((k, b) + tuple(view.shape[2:])).to(h)
        if view is not h:  # channels back to the last dimension
            stacked = stacked.movedim(2, -1)
        return stacked.reshape((k * b,) + tuple(h.shape[1:]))

    def _consumer_overrides(self, prod, ch: torch.Tensor, val: torch.Tensor,
                            after: set[fx.Node]
                            ) -> tuple[dict[fx.Node, torch.Tensor], dict[fx.Node, Callable]]:
        """Each consumer's new output (``overrides``), or, for a consumer downstream of
        another consumer (a concatenation feeds both), the change to add once it is
        recomputed from its other inputs (``post``: it is linear in its input)."""
        h = self.env[self.nodes[prod.name]]
        k, b = ch.numel(), h.shape[0]
        spatial = tuple(h.shape[2:])
        val = val.to(h).expand((k, val.shape[1]) + spatial)
        new_in = val.transpose(0, 1)  # (B or 1, K, *spatial): channels ch along dim 1
        old_in = None
        changes: dict[fx.Node, torch.Tensor] = {}  # one consumer may read the channels twice
        for edge in prod.edges:
            a_new = run_path(self.model, edge.path, new_in, ch)
            cnode = self.nodes[edge.consumer]
            a_old = self._cached_path_output(edge, cnode, h.shape[1], ch, a_new)
            if a_old is None:
                if old_in is None:
                    old_in = h[:, ch]  # (B, K, *spatial)
                a_old = run_path(self.model, edge.path, old_in, ch)
            delta = a_new - a_old  # (B, K, *spatial')
            cmod = self.gm.get_submodule(edge.consumer)
            change = _consumer_update(cmod, torch.zeros_like(self.env[cnode]), delta,
                                      ch + edge.offset, edge.block)  # (K, B, ...)
            changes[cnode] = changes[cnode] + change if cnode in changes else change
        overrides, post = {}, {}
        for cnode, change in changes.items():
            z = self.env[cnode]
            rest = tuple(z.shape[1:])
            if cnode in after:  # recomputed from its other inputs first, the change added after
                post[cnode] = lambda res, change=change, rest=rest: (
                    res.reshape((k, b) + rest) + change).reshape((k * b,) + rest)
            else:
                overrides[cnode] = change.add_(z.unsqueeze(0)).reshape((k * b,) + rest)
        return overrides, post


    def _cached_path_output(self, edge, cnode: fx.Node, channels: int, ch: torch.Tensor,
                            a_new: torch.Tensor) -> torch.Tensor | None:
        """The unchanged channels ``ch`` after ``edge.path``, read from the cached forward.

        The consumer's cached input is the path's output for every channel.
        It is used when every op on the path is parameter-free (activations,
        pooling, dropout, shape functions): the same functions on the same
        values, so only the changed channels need the path. Paths with
        per-channel tensors (BatchNorm) are recomputed, so that an unchanged
        channel gives a difference of exactly zero.
        """
        for op in edge.path:
            if op.kind == "module":
                mod = self.model.get_submodule(op.target)
                if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
                    return None
        if not cnode.args or not isinstance(cnode.args[0], fx.Node):
            return None
        a = self.env.get(cnode.args[0])
        per_channel = a_new[0, 0].numel()
        if not isinstance(a, torch.Tensor) or a.shape[0] != self.batch or \
                a.numel() != self.batch * channels * per_channel:
            return None
        a = a.reshape(self.batch, channels, per_channel).index_select(1, ch)
        return a.reshape((self.batch,) + tuple(a_new.shape[1:]))


def _member_replacement(mask: torch.Tensor, values: torch.Tensor, h: torch.Tensor,
                        last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that replaces, in ``k`` stacked copies ``(k * B, C, ...)`` of a member's
    output, the channels ``mask[j]`` of copy ``j`` by ``values`` (``(C,)`` or
    ``(C, B or 1, *spatial)``). ``last``: the channels are the last dimension of ``h``
    (token-shaped, ``(B, ..., C)``); ``spatial`` is then the token dimensions."""
    if last:
        inner = _member_replacement(mask, values, h.movedim(-1, 1))
        shape = tuple(h.shape)

        def replace_last(stacked: torch.Tensor) -> torch.Tensor:
            out = inner(stacked.movedim(-1, 1))
            return out.movedim(1, -1).reshape((-1,) + shape[1:])
        return replace_last
    k, b, c = mask.shape[0], h.shape[0], h.shape[1]
    spatial = tuple(h.shape[2:])
    vals = values.to(h)
    if vals.dim() == 1:
        vals = vals.reshape((1, 1, c) + (1,) * len(spatial))
    else:  # (C, B|1, *spatial) -> (1, B|1, C, *spatial)
        vals = vals.transpose(0, 1).unsqueeze(0)
    where = mask.to(h.device).reshape((k, 1, c) + (1,) * len(spatial))

    def replace(stacked: torch.Tensor) -> torch.Tensor:
        x = stacked.reshape((k, b, c) + spatial)
        return torch.where(where, vals, x).reshape((k * b, c) + spatial)
    return replace


def _consumer_update(cmod: nn.Module, z: torch.Tensor, delta: torch.Tensor, ch: torch.Tensor,
                     block: int) -> torch.Tensor:
    """A consumer's output when its input channels ``ch`` change by ``delta``.

    ``z`` is its cached output ``(B, out, ...)``; ``delta`` is ``(B or 1, K,
    *spatial)``; returns ``(K, B, out, ...)``: ``z + W[:, cols(ch_k)] delta_k``,
    the consumer being linear in its input.
    """
    w = effective_tensor(cmod, "weight")
    k = ch.numel()
    bsz = z.shape[0]
    if isinstance(cmod, nn.Linear):
        d = delta.reshape(delta.shape[0], k, block).transpose(0, 1)  # (K, B|1, block)
        wk = w.reshape(w.shape[0], -1, block)[:, ch].permute(1, 2, 0)  # (K, block, out)
        d = d.expand(k, bsz, block)
        return torch.baddbmm(z.unsqueeze(0).expand(k, bsz, z.shape[1]), d, wk)
    out_ch = w.shape[0]
    groups = getattr(cmod, "groups", 1)
    if groups > 1:  # input channel c reaches the rows of its conv group, column c % per_in
        per_in, rows = w.shape[1], out_ch // groups
        wk = w[:, ch % per_in].transpose(0, 1)  # (K, out, *kernel)
        own = (torch.arange(out_ch, device=w.device)[None, :] // rows
               == (ch.to(w.device) // per_in)[:, None])
        wk = wk * own.reshape(own.shape + (1,) * (w.dim() - 2)).to(wk.dtype)
    else:
        wk = w[:, ch].transpose(0, 1)  # (K, out, *kernel)
    weight = wk.reshape((k * out_ch, 1) + tuple(w.shape[2:]))
    conv = F.conv1d if isinstance(cmod, nn.Conv1d) else F.conv2d
    x = delta
    padding = cmod.padding
    if cmod.padding_mode != "zeros":
        x = F.pad(x, cmod._reversed_padding_repeated_twice, mode=cmod.padding_mode)
        padding = 0
    res = conv(x, weight, None, cmod.stride, padding, cmod.dilation, groups=k)
    res = res.reshape((res.shape[0], k, out_ch) + tuple(res.shape[2:])).transpose(0, 1)
    if res.shape[1] == bsz and res.dtype == z.dtype:
        return res.add_(z.unsqueeze(0))  # in place: no second K x B x ... temporary
    return z.unsqueeze(0) + res
