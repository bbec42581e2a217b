"""Replacement (bias propagation): feed consumers a constant in place of a unit.

Removing unit ``i`` of layer ``l`` while its consumers receive a constant
``c_i`` instead of the unit's output is exact once the constant is folded into
the consumers' biases (U. Evci, *Detecting Dead Weights and Units in Neural
Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068 -- Evci 2018
-- Sec. 1.2.4, eq. 1.5-1.6):

    b_j^{l+1} <- b_j^{l+1} + sum_i W_{j,i}^{l+1} g(c_i)

where ``g`` is the per-channel path between the layers (BatchNorm in eval
mode, activation; pooling maps a constant map to itself). ``c = 0`` is plain
removal of a unit whose output is zero; ``c = E[y_i]`` over data is *mean
replacement*, the operation whose loss change is the mean replacement penalty
(MRP, Def. 3.1.1). The scorers and :func:`pruners.remove_units` share these
functions, so a score and a removal measure the same thing.

The functions here only compute; they never change the model.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
from torch import fx
import torch.nn.functional as F

from .graph import ChannelOp, Group, UnitGraph, symbolic_trace
from .kernels import call_function, call_module
from .layers import (CHANNEL_MODULES, DROPOUT_FUNCTIONS, PRODUCERS, channels_first,
                     depthwise_push, eval_mode)

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_CHANNEL_DROPOUT = {F.dropout1d, F.dropout2d}

__all__ = ["iter_batches", "iter_masked_batches", "iter_inputs", "position_mask", "masked_sums",
           "batch_token_mask", "current_token_mask",
           "unit_means", "apply_op", "run_path", "fold_deltas",
           "member_indices", "region_constants", "replacement_hooks", "held_means",
           "NodeRecorder"]


def iter_batches(data: Iterable) -> Iterator[tuple[torch.Tensor, Any]]:
    """Yield ``(inputs, targets)`` from ``data``; clear errors for bad data.

    ``data`` is an iterable of ``(inputs, targets)`` batches (a list, a
    DataLoader), or ``(inputs, targets, mask)`` batches with a token mask
    (:func:`iter_masked_batches`); inputs must be tensors. Empty data is an error.
    """
    for x, y, _ in iter_masked_batches(data):
        yield x, y


def iter_masked_batches(data: Iterable) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor | None]]:
    """Yield ``(inputs, targets, mask)`` from ``data``: ``mask`` is a batch's third element
    when it has one (None otherwise, or when the third element is None).

    The **token mask** of a batch is a boolean tensor ``(batch, tokens...)``, True at the
    positions that hold real tokens and False at padding. Statistics averaged over token
    positions (the means that mean replacement holds units and heads at, MRS's means,
    dormancy, APoZ and the moments) leave the padding out; see :func:`position_mask` for
    which tensors a mask applies to. Losses leave padding out through the targets
    (``ignore_index``, :func:`saliency.base.per_sample_loss`): give padded targets that
    value, as ``F.cross_entropy`` expects.
    """
    if data is None:
        raise ValueError("this operation needs data: an iterable of (inputs, targets) batches")
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be an iterable of (inputs, targets) batches, got a Tensor; "
                        "wrap it as [(x, y)]")
    n = 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(f"batch {n} of data is a {type(batch).__name__}, expected an "
                            "(inputs, targets) pair")
        x = batch[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"batch {n}: inputs are a {type(x).__name__}, expected a "
                            "Tensor")
        mask = batch[2] if len(batch) >= 3 else None
        if mask is not None:
            _check_mask(mask, x, n)
        n += 1
        yield x, batch[1], mask
    if n == 0:
        raise ValueError("data is empty: it yielded no batch")


def _check_mask(mask: Any, x: torch.Tensor, n: int) -> None:
    """Raise a clear error unless ``mask`` is a boolean ``(batch, tokens...)`` tensor for
    inputs ``x`` of batch ``n``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        what = (f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor)
                else f"a {type(mask).__name__}")
        raise TypeError(f"batch {n}: the third element (the token mask) is {what}; expected a "
                        "bool tensor (batch, tokens...), True at real tokens (for an "
                        "attention mask of 0/1 integers, pass mask.bool())")
    if mask.dim() < 2 or mask.shape[0] != x.shape[0]:
        raise ValueError(f"batch {n}: the token mask has shape {tuple(mask.shape)}; expected "
                         f"(batch, tokens...) with batch {x.shape[0]}, like the inputs "
                         f"{tuple(x.shape)}")


_BATCH_MASK: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "batch_token_mask", default=None)


@contextlib.contextmanager
def batch_token_mask(mask: torch.Tensor | None):
    """Within the block, :func:`current_token_mask` is ``mask``: a pass over data sets it
    around each batch's forward pass, so hooks that observe the pass (statistics taken by
    another module's hooks) leave the same padding out."""
    token = _BATCH_MASK.set(mask)
    try:
        yield
    finally:
        _BATCH_MASK.reset(token)


def current_token_mask() -> torch.Tensor | None:
    """The token mask of the batch being run (:func:`batch_token_mask`), or None."""
    return _BATCH_MASK.get()


def position_mask(mask: torch.Tensor | None, t: torch.Tensor, where: str
                  ) -> torch.Tensor | None:
    """The positions of ``t`` a token mask keeps, as a ``(batch, 1, positions...)`` bool
    tensor, or None when every position counts.

    ``t`` has its channels in dimension 1 (:func:`saliency.layers.channels_first`): a
    token-shaped ``(batch, tokens..., channels)`` tensor is ``(batch, channels,
    tokens...)``. The mask applies when ``t``'s positions are the mask's tokens; a tensor
    with one position per sample (``(batch, channels)``, after pooling) has none to leave
    out. Any other shape is an error that names ``where``.

    Examples:
        >>> m = torch.tensor([[True, True, False]])
        >>> position_mask(m, torch.zeros(1, 4, 3), "fc").shape
        torch.Size([1, 1, 3])
        >>> position_mask(m, torch.zeros(1, 4), "head") is None
        True
    """
    if mask is None or t.dim() == 2:
        return None
    if tuple(t.shape[2:]) != tuple(mask.shape[1:]) or t.shape[0] != mask.shape[0]:
        raise ValueError(
            f"the token mask of shape {tuple(mask.shape)} does not fit {where}, whose output "
            f"has batch {t.shape[0]} and positions {tuple(t.shape[2:])} (channels in "
            "dimension 1): a mask must have the shape (batch, tokens...) of the token "
            "positions of every layer it is measured on; leave the mask out for layers whose "
            "positions are not tokens")
    return mask.unsqueeze(1).to(t.device)


def masked_sums(t: torch.Tensor, mask: torch.Tensor | None, where: str
                ) -> tuple[torch.Tensor, int]:
    """``(per-channel sum over samples and kept positions in float64, number of kept
    (sample, position) pairs)`` of a channels-first ``t`` (:func:`position_mask`)."""
    m = position_mask(mask, t, where)
    dims = [d for d in range(t.dim()) if d != 1]
    if m is None:
        return t.to(torch.float64).sum(dim=dims), t.numel() // t.shape[1]
    kept = torch.where(m, t, torch.zeros((), dtype=t.dtype, device=t.device))
    return kept.to(torch.float64).sum(dim=dims), int(m.sum())


def iter_inputs(data: Iterable) -> Iterator[torch.Tensor]:
    """Yield the inputs of an iterable of ``(inputs, targets)`` batches."""
    for x, _ in iter_batches(data):
        yield x


def unit_means(model: nn.Module, data: Iterable, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Mean output of every unit of ``layers`` over ``data``, in eval mode.

    The mean of unit ``i`` is taken over samples and, for convolutions, over
    positions (for a Linear on token-shaped inputs ``(batch, ..., channels)``, over every
    token position, padding left out where a batch has a token mask:
    :func:`iter_masked_batches`): ``E[y_i]`` of eq. 1.5. All layers are measured in one
    pass on the unmodified model. Accumulation is in float64.

    Returns:
        ``{layer name: 1-D tensor of means}`` in the layer's dtype.
    """
    layers = list(layers)
    mods = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {n: 0 for n in layers}
    handles = []

    def make_hook(name: str):
        def hook(m, _inp, out):
            s, k = masked_sums(channels_first(m, out.detach()), current_token_mask(),
                               f"layer {name!r}")
            sums[name] = sums[name] + s if name in sums else s
            counts[name] += k
        return hook

    try:
        for n in layers:
            handles.append(mods[n].register_forward_hook(make_hook(n)))
        with eval_mode(model), torch.no_grad():
            for x, _, mask in iter_masked_batches(data):
                with batch_token_mask(mask):
                    model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).to(mods[n].weight.dtype) for n in layers}


def apply_op(model: nn.Module, op: ChannelOp, x: torch.Tensor,
             channels: torch.Tensor | None = None, maps: bool = False) -> torch.Tensor:
    """One per-channel op on ``x`` (channels ``channels`` along dim 1), eval mode.

    With ``maps=False`` (constants), pooling is skipped: a constant map pools
    to itself (times the op's scale). With ``maps=True`` pooling runs.
    Dropout is the identity (eval mode). The op's ``offset`` (after a concatenation) shifts
    the channels to its own tensor's positions.
    """
    if op.kind == "layout":  # a reshape or permute that keeps every channel whole
        return x
    if op.kind in ("module", "depthwise"):
        # per-channel tensors are picked at the positions of these channels in the op's own
        # tensor, which may be wider (a concatenation): the producer's channel 0 sits at
        # ``op.offset`` there
        channels = (torch.arange(x.shape[1]) if channels is None else channels) + op.offset
    elif op.offset and channels is not None:
        channels = channels + op.offset
    if op.kind == "depthwise":
        return depthwise_push(model.get_submodule(op.target), x, channels, maps)
    if op.kind == "module":
        mod = model.get_submodule(op.target)
        spec = CHANNEL_MODULES[type(mod)]
        if maps and not spec.tensors(mod) and not isinstance(mod, _DROPOUTS):
            return call_module(mod, (x,))
        return spec.push(mod, x, channels)
    if op.shape_only:
        if maps and op.target not in DROPOUT_FUNCTIONS and op.target not in _CHANNEL_DROPOUT:
            return call_function(op.target, (x, *op.args), dict(op.kwargs))
        return x * op.scale if (op.scale != 1.0 and not maps) else x
    if op.kind == "function":
        return op.target(x, *op.args, **dict(op.kwargs))
    return getattr(x, op.target)(*op.args, **dict(op.kwargs))


def run_path(model: nn.Module, path: Iterable[ChannelOp], x: torch.Tensor,
             channels: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a per-channel path to real maps ``x`` (eval mode, pooling included).

    ``x`` holds, along dimension 1, the producer channels ``channels`` (all
    channels in order when None): any subset can be pushed on its own,
    because every op on the path acts channel by channel.
    """
    for op in path:
        x = apply_op(model, op, x, channels, maps=True)
    return x


def member_indices(graph: UnitGraph, group: str, channels: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """The output channels of each member of ``group`` that are group channels ``channels``.

    On a chain the group is its one layer and these are ``channels`` themselves; in a
    residual group every member loses the same channels.
    """
    g = graph.groups[group]
    chosen = torch.zeros(g.size, dtype=torch.bool)
    chosen[channels] = True
    return {m: chosen[g.channels[m]].nonzero().reshape(-1) for m in g.members}


def region_constants(model: nn.Module, group: Group, values: Mapping[str, torch.Tensor],
                     channels: torch.Tensor | None = None
                     ) -> tuple[list[torch.Tensor], list[bool]]:
    """Every region node's value when each member outputs one constant per channel.

    ``values`` gives, per member, a full-length vector over its output channels (for a group
    held at a product, :attr:`Group.held`, one value per group channel under the group's
    name instead: the product's value; the nodes before the product, which reach no consumer,
    are zeros). The
    constants pass through the per-channel ops (BatchNorm in eval mode, activations; pooling
    keeps a constant), residual joins add them, concatenations put them side by side (zeros
    for the channels of other groups). Returns each node's value, shaped ``(1, C, 1, ...)``,
    and whether it is exact everywhere (False once zero padding has been crossed with a
    non-zero constant on the group channels ``channels``, all when None: average pooling or
    a depthwise convolution over a padded border).
    """
    out: list[torch.Tensor] = []
    exact: list[bool] = []
    ref = next(iter(values.values()))
    for j, node in enumerate(group.nodes):
        shape = (1, -1) if node.channel_last else (1, -1) + (1,) * (node.out_ndim - 2)
        ins = [out[i] if i >= 0 else None for i in node.inputs]
        ok = all(exact[i] for i in node.inputs if i >= 0)
        if group.held is not None and j <= group.held:
            x = ref.new_zeros(node.labels.numel()).reshape(shape)
            if j == group.held:
                x = values[group.name].to(ref)[node.labels.clamp_min(0).to(ref.device)]
                x = x.masked_fill((node.labels < 0).to(ref.device), 0).reshape(shape)
            ok = True
        elif node.kind == "member":
            x = values[node.member].reshape(shape)
        elif node.kind == "op":
            x = apply_op(model, node.op, ins[0])
            if not node.op.keeps_constant:  # a held 0 stays 0 at the border too
                held = node.labels >= 0 if channels is None else torch.isin(node.labels, channels)
                ok = ok and not bool((ins[0].reshape(-1)[held.to(x.device)] != 0).any())
        elif node.kind == "join":
            x = node.coefs[0] * ins[0] + node.coefs[1] * ins[1]
        elif node.kind == "product":  # (after the product a group holds: never reached)
            x = ins[0] * ins[1]
        elif node.kind == "cat":
            x = torch.cat([v.reshape(shape) if v is not None else
                           ref.new_zeros((1, n) + (1,) * (len(shape) - 2))
                           for v, n in zip(ins, node.sizes)], dim=1)
        else:  # flatten: one constant per channel still (the consumer expands its block)
            x = ins[0].reshape(1, -1)
        x = x.reshape(shape)
        out.append(x)
        exact.append(ok)
    return out, exact


def fold_deltas(model: nn.Module, graph: UnitGraph, removed: Mapping[str, torch.Tensor],
                constants: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Bias changes of every consumer when removed units are held constant.

    Args:
        removed: ``{group: sorted group channels}`` (on a chain, the layer's units).
        constants: ``{member layer: values}``, one value per removed output channel of the
            member (:func:`member_indices`, in order): the value its module outputs there.
            A group held at a product (:attr:`Group.held`, a gated FFN) has instead, under the
            group's name, one value per removed group channel (in ``removed``'s order): the
            product's value. A group without constants is dropped (its consumers see 0),
            nothing is folded.

    Returns:
        ``({consumer: bias delta}, inexact)`` where ``inexact`` lists the
        consumers whose fold is not exact everywhere (zero-padded convolution,
        average pooling or a depthwise convolution over zero padding) for a non-zero constant.
    """
    deltas: dict[str, torch.Tensor] = {}
    inexact: list[str] = []
    for gname, chans in removed.items():
        group = graph.groups[gname]
        if chans.numel() == 0 or not any(m in constants for m in group.members):
            continue
        full = {}
        if group.held is not None:
            ref = model.get_submodule(group.members[0]).weight
            full[gname] = torch.zeros(group.size, dtype=ref.dtype, device=ref.device)
            if gname in constants:
                full[gname][chans.to(ref.device)] = constants[gname].to(full[gname])
        for m, idx in member_indices(graph, gname, chans).items():
            if group.held is not None:
                break
            w = model.get_submodule(m).weight
            full[m] = torch.zeros(graph.producers[m].num_units, dtype=w.dtype, device=w.device)
            if m in constants:
                full[m][idx.to(w.device)] = constants[m].to(full[m])
        values, exact = region_constants(model, group, full, chans)
        for c in group.consumers:
            delta, ok = _consumer_delta(model, group, c, chans, values[c.node].reshape(-1),
                                        exact[c.node])
            deltas[c.name] = deltas.get(c.name, 0) + delta
            if not ok and c.name not in inexact:
                inexact.append(c.name)
    return deltas, inexact


def _consumer_delta(model: nn.Module, group: Group, consumer, chans: torch.Tensor,
                    value: torch.Tensor, exact: bool) -> tuple[torch.Tensor, bool]:
    cmod = model.get_submodule(consumer.name)
    spec = PRODUCERS[type(cmod)]
    labels = group.nodes[consumer.node].labels
    pos = torch.isin(labels, chans).nonzero().reshape(-1)
    v = value[pos.to(value.device)]
    nonzero = bool((v != 0).any())
    ok = not nonzero or (spec.fold_exact(cmod) and exact)
    cols, vals = pos, v
    if consumer.block > 1:
        cols = (pos[:, None] * consumer.block + torch.arange(consumer.block)).reshape(-1)
        vals = v.repeat_interleave(consumer.block)
    with torch.no_grad():
        delta = spec.fold(cmod, cols.to(value.device), vals)
    return delta, ok


def replacement_hooks(model: nn.Module, constants: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
    """Forward hooks that overwrite chosen units' outputs with constants.

    ``constants`` maps a layer name to ``(indices, values)`` (output channels: the last
    dimension of a Linear on token-shaped inputs). Returns the hook handles; the caller
    removes them (in a ``finally``).
    """
    handles = []
    for name, (idx, vals) in constants.items():
        def hook(m, _inp, out, idx=idx, vals=vals):
            out = out.clone()
            view = channels_first(m, out)  # a view: writing it writes ``out``
            shape = (1, -1) + (1,) * (view.dim() - 2)
            view[:, idx.to(out.device)] = vals.to(out).reshape(shape)
            return out
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return handles


class NodeRecorder(fx.Interpreter):
    """Runs a traced model (:attr:`UnitGraph.gm`, which calls the model's own modules) and
    keeps the values of the nodes named in ``names`` (``recorder.values[name]``), with their
    autograd history."""

    def __init__(self, gm: fx.GraphModule, names: Iterable[str]):
        super().__init__(gm)
        self.names = set(names)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = result
        return result


def held_means(model: nn.Module, graph: UnitGraph, data: Iterable, groups: Iterable[str]
               ) -> dict[str, torch.Tensor]:
    """The mean of every group channel at the node where each group is held.

    For a group joined by an elementwise product (:attr:`Group.held`, a gated FFN's
    ``act(gate(x)) * up(x)``): the mean of the product over samples and positions (every token
    position of a token-shaped tensor, padding left out where a batch has a token mask),
    measured on the unmodified model in eval mode and
    accumulated in float64; what mean replacement holds the group's removed channels at.
    Groups held at their members' outputs are left out (:func:`unit_means` gives theirs).

    Returns:
        ``{group: 1-D tensor over its group channels}`` in the model's dtype.
    """
    groups = [g for g in groups if graph.groups[g].held is not None]
    if not groups:
        return {}
    nodes = {g: graph.groups[g].nodes[graph.groups[g].held] for g in groups}
    gm = graph.gm if graph.gm is not None else symbolic_trace(model)
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {g: 0 for g in groups}
    with eval_mode(model), eval_mode(gm), torch.no_grad():
        for x, _, mask in iter_masked_batches(data):
            rec = NodeRecorder(gm, [n.name for n in nodes.values()])
            rec.run(x)
            for g, node in nodes.items():
                v = rec.values[node.name]
                v = v.movedim(-1, 1) if node.channel_last and v.dim() > 2 else v
                s, k = masked_sums(v, mask, f"the product of group {g!r}")
                sums[g] = sums[g] + s if g in sums else s
                count[g] += k
    out = {}
    for g, node in nodes.items():
        dtype = model.get_submodule(graph.groups[g].members[0]).weight.dtype
        pos = (node.labels >= 0).nonzero().reshape(-1)
        mean = torch.zeros(graph.groups[g].size, dtype=torch.float64)
        mean[node.labels[pos]] = (sums[g] / count[g]).cpu()[pos]
        out[g] = mean.to(dtype)
    return out
