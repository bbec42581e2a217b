"""The graph of units: which producer channels feed which consumer inputs, in groups.

A *unit* is one output channel of a producer layer (``nn.Linear``, ``nn.Conv1d``,
``nn.Conv2d``). Channels that must be removed together form a *group*: the producers whose
outputs a residual add sums (all of them, through BatchNorm, activations, identity and
projection shortcuts and the activation after the add), with every consumer of the summed
stream. A producer on a chain is a group of one. :func:`saliency.trace` builds the graph
(:mod:`saliency.tracing`); this module holds what it returns:

* :class:`UnitGraph` -- the producers, the groups, and what could not be represented;
* :class:`Group` -- its member producers, its *group channels* (each member channel maps to
  one), and its *region*: the nodes that carry its channels from the members' outputs to
  its consumers (:class:`RegionNode`: per-channel ops, residual joins, concatenations,
  flattens) and the consumers themselves (:class:`GroupConsumer`);
* :class:`Producer`, :class:`Edge`, :class:`ChannelOp` -- per producer, the consumers and the
  per-channel path to each: defined for producers whose group has no residual join (a chain,
  possibly through concatenations and depthwise convolutions);
* :class:`Unsupported` -- a node the graph cannot represent exactly, and the layers whose
  channels reach it (left out of the prunable groups).

Reference: U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU
2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 1.2.3: a unit is one output channel
of a layer, ``h_i = W_i . a + b_i``, ``a_i = g(h_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn as nn

from .layers import CHANNEL_MODULES, PRODUCERS, is_channel_norm

__all__ = ["UnsupportedArchitecture", "ChannelOp", "Edge", "Producer", "RegionNode",
           "GroupConsumer", "Group", "Unsupported", "UnitGraph", "module_on_path", "clause",
           "as_index_tensor", "default_example_input", "symbolic_trace"]


class UnsupportedArchitecture(ValueError):
    """The model holds patterns the graph of units cannot represent exactly.

    The message names each ``torch.fx`` node, why it is refused, and the producers whose
    channels reach it. ``trace(..., on_unsupported="exclude")`` leaves those producers out
    instead (:attr:`UnitGraph.unsupported` lists them), ``exclude=[...]`` names some by hand.
    """


@dataclass(frozen=True)
class ChannelOp:
    """One per-channel step on the path from a producer to a consumer.

    ``kind`` is ``"module"`` (``target`` is the module name; its
    :class:`~saliency.layers.ChannelSpec` says how constants pass through),
    ``"depthwise"`` (``target`` is a depthwise convolution: channel ``c`` out from channel
    ``c`` in, its weight row and bias sliced with the channel), ``"function"`` (``target`` is
    the callable) or ``"method"`` (``target`` is the method name). ``args``/``kwargs`` are the
    call's other arguments, with the data argument removed (it is always the first).
    ``keeps_constant`` is False when a spatially constant input does not give a constant
    output (average pooling or a depthwise convolution over zero padding). ``shape_only``
    functions (pooling, channel dropout) map a constant ``c`` to ``scale * c`` (``scale`` is
    1 but for average pooling with a ``divisor_override``). ``offset`` is the position of the
    producer's channel 0 in the op's tensor (non-zero after a concatenation).
    """

    kind: str
    target: Any
    args: tuple = ()
    kwargs: tuple = ()
    keeps_constant: bool = True
    shape_only: bool = False
    scale: float = 1.0
    offset: int = 0

    def describe(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(
            self.target, "__name__", repr(self.target))
        return f"{self.kind}:{name}"


@dataclass(frozen=True)
class Edge:
    """A consumer of a producer's channels, reached along one path.

    Attributes:
        consumer: module name of the consuming Linear/Conv layer.
        path: per-channel ops between the producer and the consumer.
        block: consumer input columns per producer channel: 1, or H*W for a
            Linear after a Flatten of a C x H x W map (channel ``i`` owns
            columns ``i*block ... (i+1)*block - 1``).
        offset: the consumer input channel that the producer's channel 0 reaches (non-zero
            when a concatenation puts other channels before it).
    """

    consumer: str
    path: tuple[ChannelOp, ...]
    block: int = 1
    offset: int = 0

    def columns(self, channels: torch.Tensor) -> torch.Tensor:
        """Consumer input columns (or channels) owned by the given units."""
        channels = channels + self.offset
        if self.block == 1:
            return channels
        offs = torch.arange(self.block, device=channels.device)
        return (channels[:, None] * self.block + offs[None, :]).reshape(-1)


@dataclass
class Producer:
    """A layer whose output channels are units.

    Attributes:
        name: module name (as in ``model.named_modules()``).
        num_units: number of output channels.
        group: the name of its :class:`Group` (its own name on a chain).
        prunable: False when its group may not be pruned (it reaches the model's output, is
            excluded, or reaches an unsupported node).
        reason: why it is not prunable.
        out_ndim: number of dimensions of its output (2 for Linear, 3 or 4 for
            convolutions; 3 or more for a Linear on token-shaped inputs).
        channel_last: whether its channels are the last dimension of a tensor of more than 2
            dimensions (a Linear on ``(batch, ..., channels)`` inputs): its statistics
            average over the batch and every token position.
        channel_modules: names of per-channel modules with per-channel tensors on its paths.
    """

    name: str
    num_units: int
    group: str = ""
    prunable: bool = True
    reason: str = ""
    out_ndim: int = 2
    channel_modules: list[str] = field(default_factory=list)
    channel_last: bool = False
    _edges: list[Edge] | None = field(default_factory=list, repr=False)
    _joined_group: str = field(default="", repr=False)

    @property
    def edges(self) -> list[Edge]:
        """The consumers of its channels with the per-channel path to each.

        Paths exist for producers whose group has no residual join; for a member of a
        residual group the value a consumer receives depends on every member, so this raises
        :class:`UnsupportedArchitecture` naming the group (group-aware code reads
        :attr:`Group.nodes` and :attr:`Group.consumers` instead).
        """
        if self._joined_group:
            raise UnsupportedArchitecture(
                f"layer {self.name!r} belongs to the residual group {self._joined_group!r}, "
                "whose channels are summed by a residual add: this operation works per layer "
                "on chains only")
        return self._edges


@dataclass(frozen=True)
class RegionNode:
    """A node of a group's region: a tensor that carries some of the group's channels.

    Attributes:
        name: the ``torch.fx`` node's name.
        kind: ``"member"`` (a member's output), ``"op"`` (a per-channel op), ``"join"`` (a
            residual add or subtraction of its inputs), ``"product"`` (the elementwise product
            of two tensors whose same-index channels are coupled: a gated FFN's
            ``act(gate(x)) * up(x)``), ``"cat"`` (a concatenation along channels) or
            ``"flatten"``.
        inputs: indices of the input nodes in :attr:`Group.nodes`, ``-1`` for an input
            that carries none of the group's channels (a piece of a concatenation).
        labels: the group channel of each channel of the tensor, ``-1`` for channels of other
            groups or of no group.
        op: the per-channel op (``"op"`` nodes).
        member: the member's name (``"member"`` nodes).
        sizes: the channel count of every input (``"cat"``: in order).
        coefs: the factor of each input of a ``"join"`` (``a + alpha b``, ``a - b``).
        out_ndim: dimensions of the tensor.
        block: columns per channel once flattened, else None.
        channel_last: whether the channels are the tensor's last dimension (token-shaped,
            ``(batch, ..., channels)``, more than 2 dimensions); else dimension 1.
    """

    name: str
    kind: str
    inputs: tuple[int, ...]
    labels: torch.Tensor
    op: ChannelOp | None = None
    member: str | None = None
    sizes: tuple[int, ...] = ()
    coefs: tuple[float, ...] = ()
    out_ndim: int = 2
    block: int | None = None
    channel_last: bool = False


@dataclass(frozen=True)
class GroupConsumer:
    """A layer that consumes some of a group's channels.

    Attributes:
        name: the consumer's module name.
        node: index of the :class:`RegionNode` it reads.
        block: input columns per channel (a Linear after a flatten), else 1.
    """

    name: str
    node: int
    block: int = 1


@dataclass
class Group:
    """Channels that are removed together, and everything they reach.

    Attributes:
        name: its name: the name of its first member (in forward order). Any member's name
            addresses the group.
        members: the producers whose channels are its channels, in forward order.
        size: the number of group channels (units).
        channels: per member, the group channel of each of its output channels.
        nodes: its region, in forward order (:class:`RegionNode`).
        consumers: the layers that read its channels (:class:`GroupConsumer`).
        prunable: whether its channels may be removed.
        reason: why not.
        partitions: grouped convolutions that read or produce its channels, with the group
            channels of each convolution group: a removal must take the same number from
            each (``{key: [channels of conv group 0, ...]}``, the key the convolution's name
            for the channels it produces, ``"<name> (input)"`` for those it reads).
        held: the index in :attr:`nodes` of the node where a removed channel is held at its
            constant, or None: the members' outputs. A group whose channels are joined by an
            elementwise product (a gated FFN, ``down(act(gate(x)) * up(x))``) is held at the
            product: its replacement constants (the mean for mean replacement) are values of
            the product, keyed by the group's name, and nothing before the product reaches a
            consumer.
    """

    name: str
    members: list[str]
    size: int
    channels: dict[str, torch.Tensor]
    nodes: list[RegionNode] = field(default_factory=list)
    consumers: list[GroupConsumer] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    partitions: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    held: int | None = None

    @property
    def joined(self) -> bool:
        """Whether its region has a residual join or a product (several members' channels
        summed or multiplied)."""
        return any(n.kind in ("join", "product") for n in self.nodes)

    def describe(self) -> str:
        """One line: the group's name, size and members."""
        if len(self.members) == 1:
            return f"{self.name} ({self.size} units)"
        return (f"{self.name} ({self.size} units; group of {len(self.members)} layers: "
                f"{', '.join(self.members)})")


#: reasons that read as a predicate of the node ("node 'x' (...) takes more than one input")
_PREDICATES = ("is", "takes", "reshapes", "modifies", "adds", "concatenates", "combines",
               "consumes", "does", "maps", "has", "multiplies", "normalizes", "permutes",
               "moves", "acts", "reads")


def clause(node: str, reason: str) -> str:
    """``node`` and ``reason`` as one sentence: a predicate follows the node, anything else
    comes after a colon."""
    return f"{node} {reason}" if reason.split(" ", 1)[0] in _PREDICATES else f"{node}: {reason}"


@dataclass(frozen=True)
class Unsupported:
    """A node the graph of units cannot represent exactly.

    Attributes:
        node: the ``torch.fx`` node, described (``"node 'add_3' (call_function mul)"``).
        reason: why it is refused.
        layers: the producers whose channels reach it (left out of the prunable groups).
    """

    node: str
    reason: str
    layers: tuple[str, ...]

    def __str__(self) -> str:
        return f"{clause(self.node, self.reason)} [reached from {', '.join(self.layers)}]"


@dataclass
class UnitGraph:
    """Result of :func:`saliency.trace`: producers and groups by name, in forward order.

    Only prunable groups (:attr:`prunable`) have units that can be scored or removed. Unit
    selections and scores are keyed by group name; a producer on a chain is its own group.
    """

    producers: dict[str, Producer]
    groups: dict[str, Group] = field(default_factory=dict)
    unsupported: list[Unsupported] = field(default_factory=list)
    #: grouped convolutions: ``{(conv name, "input" or "output"): [{group: channels} per conv
    #: group]}``, the units each conv group reads or produces (see :meth:`validate_units`)
    grouped: dict[tuple[str, str], list[dict[str, torch.Tensor]]] = field(default_factory=dict)
    gm: fx.GraphModule | None = field(default=None, repr=False, compare=False)
    #: attention modules whose heads are units, by module name
    #: (:class:`saliency.attention.Heads`; heads are addressed by the module's name)
    heads: dict[str, Any] = field(default_factory=dict)

    @property
    def prunable_heads(self) -> list[str]:
        """Names of the attention modules whose heads may be removed, in model order."""
        return [n for n, h in self.heads.items() if h.prunable]

    @property
    def prunable(self) -> list[str]:
        """Names of the groups whose units may be removed, in forward order."""
        return [n for n, g in self.groups.items() if g.prunable]

    @property
    def unsupported_layers(self) -> list[str]:
        """The producers whose channels reach an unsupported node, sorted: pass them as
        ``exclude=`` to prune the rest of the model."""
        return sorted({n for u in self.unsupported for n in u.layers})

    def group_of(self, name: str) -> Group:
        """The group a producer belongs to (a group's own name works too)."""
        if name in self.groups:
            return self.groups[name]
        if name in self.producers:
            return self.groups[self.producers[name].group]
        raise ValueError(f"unknown layer {name!r}: prunable layers are {self.prunable}")

    def consumers_of(self, name: str) -> list[Edge]:
        return self.producers[name].edges

    def describe(self) -> str:
        """Every prunable group, one line each, then what is left out and why."""
        lines = [self.groups[n].describe() for n in self.prunable]
        closed = [g for g in self.groups.values() if not g.prunable]
        lines += [f"not prunable: {g.name}: {g.reason}" for g in closed]
        lines += [h.describe() if h.prunable else f"not prunable: {h.name} (heads): {h.reason}"
                  for h in self.heads.values()]
        return "\n".join(lines)

    def validate_units(self, units: Mapping[str, Iterable[int]], *, min_units: int = 1
                       ) -> dict[str, torch.Tensor]:
        """Check a ``{layer: indices}`` selection; return ``{group: sorted group channels}``.

        A key names a group or any of its members; a member's indices are its own channel
        indices, mapped to the group's channels (under the group's name they are the group
        channels, which are the first member's own indices). Two members of one group must
        select the same group channels.

        Raises ValueError naming the layer (and its group) and the index for an unknown or
        non-prunable layer, a non-integer, out-of-range or duplicate index, members of one
        group given different channels, a selection that leaves fewer than ``min_units``
        units, or one that removes a different number of channels from the groups of a
        grouped convolution.
        """
        if not isinstance(units, Mapping):
            raise TypeError(f"units must map layer names to indices, got {type(units).__name__}")
        if min_units < 1:
            raise ValueError(f"min_units must be >= 1, got {min_units}")
        out: dict[str, torch.Tensor] = {}
        given: dict[str, str] = {}
        for name, idx in units.items():
            if name in self.heads:
                out[name] = self._head_indices(name, idx, min_units)
                continue
            group = self._prunable_group(name)
            chans = self._group_channels(name, group, idx)
            if group.name in out and not torch.equal(out[group.name], chans):
                raise ValueError(
                    f"layers {given[group.name]!r} and {name!r} are both in group "
                    f"{group.name!r} ({', '.join(group.members)}) but select different "
                    f"channels ({out[group.name].tolist()} and {chans.tolist()}): give the "
                    "group once")
            out[group.name], given[group.name] = chans, name
        for gname, chans in out.items():
            if gname in self.heads:
                continue
            self._check_left(self.groups[gname], given[gname], chans, min_units)
        self._check_grouped(out, given)
        return out

    def _head_indices(self, name: str, idx: Any, min_units: int) -> torch.Tensor:
        """Query-head indices of attention ``name``, checked (range, duplicates, heads left,
        grouped-query consistency), sorted."""
        heads = self.heads[name]
        if not heads.prunable:
            raise ValueError(f"attention {name!r}: its heads are not prunable: {heads.reason}")
        t = as_index_tensor(name, idx)
        bad = t[(t < 0) | (t >= heads.num_heads)]
        if bad.numel():
            raise ValueError(f"attention {name!r}: head index {int(bad[0])} is out of range "
                             f"(it has {heads.num_heads} heads, indices 0..{heads.num_heads - 1})")
        uniq, counts = torch.unique(t, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"attention {name!r}: head {int(uniq[counts > 1][0])} is given "
                             "more than once")
        heads.check(uniq, min_units)
        return uniq

    def _check_grouped(self, chosen: Mapping[str, torch.Tensor], given: Mapping[str, str]) -> None:
        """A grouped convolution must lose the same number of channels from each of its conv
        groups (of every group whose units it reads or produces, together), and keep two input
        channels in each (with one it would become a depthwise convolution, another structure).
        """
        for (conv, side), parts in self.grouped.items():
            touched = [g for g in chosen if any(g in part for part in parts)]
            if not touched:
                continue
            counts = [sum(int(torch.isin(part[g], chosen[g]).sum()) for g in part if g in chosen)
                      for part in parts]
            what = ", ".join(f"layer {given[g]!r}" for g in touched)
            if len(set(counts)) > 1:
                raise ValueError(
                    f"{what}: {conv!r} is a grouped convolution with {len(parts)} groups, which "
                    f"must lose the same number of {side} channels from each group; this "
                    f"selection removes {counts}. Remove the same count from each (UnitPruner "
                    "does)")
            sizes = [sum(int(c.numel()) for c in part.values()) for part in parts]
            if side == "input" and min(n - c for n, c in zip(sizes, counts)) < 2:
                raise ValueError(
                    f"{what}: the selection leaves a group of the grouped convolution {conv!r} "
                    "with fewer than 2 input channels (it would become a depthwise "
                    "convolution); keep at least 2 in each")
            if side == "output" and min(n - c for n, c in zip(sizes, counts)) < 1:
                raise ValueError(f"{what}: the selection empties a group of the grouped "
                                 f"convolution {conv!r}")

    def _prunable_group(self, name: str) -> Group:
        if name not in self.producers and name not in self.groups:
            heads = f"; attention modules with heads: {self.prunable_heads}" if self.heads else ""
            raise ValueError(f"unknown layer {name!r}: prunable layers are {self.prunable}{heads}")
        group = self.group_of(name)
        if not group.prunable:
            where = "" if group.name == name else f" (in group {group.name!r})"
            raise ValueError(f"layer {name!r}{where} is not prunable: {group.reason}")
        return group

    def _group_channels(self, name: str, group: Group, idx: Any) -> torch.Tensor:
        t = as_index_tensor(name, idx)
        n = group.size if name == group.name else self.producers[name].num_units
        bad = t[(t < 0) | (t >= n)]
        label = name if name == group.name or len(group.members) == 1 else \
            f"{name} (in group {group.name})"
        if bad.numel():
            what = "layer" if name != group.name or len(group.members) == 1 else "group"
            raise ValueError(f"layer {label!r}: index {int(bad[0])} is out of range (the {what} "
                             f"has {n} units, indices 0..{n - 1})")
        uniq, counts = torch.unique(t, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"layer {label!r}: index {int(uniq[counts > 1][0])} is given more than once")
        if name != group.name:
            uniq = torch.unique(group.channels[name][uniq])
        return uniq

    def _check_left(self, group: Group, given: str, chans: torch.Tensor, min_units: int) -> None:
        left = group.size - chans.numel()
        what = f"layer {given!r}" if len(group.members) == 1 else \
            f"group {group.name!r} ({', '.join(group.members)})"
        if left < min_units:
            raise ValueError(f"{what}: removing {chans.numel()} of {group.size} units would "
                             f"leave {left}, fewer than min_units={min_units}")
        for m in group.members:
            if bool(torch.isin(group.channels[m], chans).all()):
                raise ValueError(f"{what}: removing channels {chans.tolist()} would leave layer "
                                 f"{m!r} with no output channel (its channels are "
                                 f"{sorted(set(group.channels[m].tolist()))} of the group)")


def as_index_tensor(name: str, idx: Any) -> torch.Tensor:
    """The unit indices ``idx`` of layer ``name`` as a 1-D int64 tensor on the CPU.

    ``idx`` is an int, a sequence of ints (Python or NumPy integers) or an
    integer tensor; the order and any repetitions are kept. Bounds are not
    checked (:meth:`UnitGraph.validate_units` does, with the layer's size).

    Raises:
        ValueError: naming the layer and the offending entry, for a bool,
            float or complex entry or tensor, or nested (not 1-D) indices.

    Examples:
        >>> as_index_tensor("fc1", [3, 1])
        tensor([3, 1])
        >>> as_index_tensor("fc1", 2)
        tensor([2])
        >>> as_index_tensor("fc1", [1.0])
        Traceback (most recent call last):
        ...
        ValueError: layer 'fc1': index 1.0 at position 0 is not an integer
    """
    if isinstance(idx, torch.Tensor):
        t = idx.detach().cpu()
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(f"layer {name!r}: indices must be integers, got dtype {t.dtype}")
    else:
        items = [idx] if isinstance(idx, int) else idx
        try:
            items = list(items)
        except TypeError as exc:
            raise ValueError(f"layer {name!r}: indices must be integers, got {idx!r}") from exc
        for pos, v in enumerate(items):
            if isinstance(v, (list, tuple)):
                raise ValueError(f"layer {name!r}: indices must be 1-D, got a nested {v!r}")
            ok = isinstance(v, int) and not isinstance(v, bool)
            ok = ok or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0
                        and "int" in str(v.dtype))
            if not ok:
                raise ValueError(f"layer {name!r}: index {v!r} at position {pos} is not an "
                                 "integer")
        t = torch.tensor([int(v) for v in items], dtype=torch.long)
    if t.dim() > 1:
        raise ValueError(f"layer {name!r}: indices must be 1-D, got shape {tuple(t.shape)}")
    return t.reshape(-1).long()


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A one-sample input for a model whose first layer is a Linear, or token ids (one
    sequence of 8 tokens) for a model whose first layer is an ``nn.Embedding``.

    Convolutional models need an explicit ``example_input`` (the spatial size
    cannot be inferred from the weights).
    """
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            return torch.zeros(1, 8, dtype=torch.long, device=mod.weight.device)
        if isinstance(mod, nn.Linear):
            return torch.zeros(1, mod.in_features, dtype=mod.weight.dtype,
                               device=mod.weight.device)
        if isinstance(mod, tuple(PRODUCERS)):
            break
    raise ValueError(
        "cannot infer an input shape for this model: pass example_input= "
        "(a batch of one input) or data=")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every registered layer type kept as one call.

    Layer types registered outside ``torch.nn`` (switch layers, say) would
    otherwise be traced through, and their parameters read directly. Attention modules
    whose heads are known are one call; ``nn.TransformerEncoderLayer`` /
    ``nn.TransformerDecoderLayer`` are traced through their written-out forward once
    :func:`saliency.attention.check_transformer_layers` has checked them.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from .attention import KNOWN_LAYERS, is_attention, layer_forward
        if is_attention(m):  # one call: its heads are units (saliency.attention)
            return True
        if layer_forward(m) is not None:  # a checked transformer layer: traced through
            return False
        if isinstance(m, tuple(KNOWN_LAYERS)):  # unchecked, or a subclass: one call
            return True
        return type(m) in CHANNEL_MODULES or type(m) in PRODUCERS or is_channel_norm(m) or \
            super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        """A known transformer layer that passed its check is traced through its
        written-out forward (:func:`saliency.attention.layer_forward`)."""
        from .attention import layer_forward
        fn = layer_forward(m)
        if fn is not None:
            return super().call_module(m, lambda *a, **k: fn(m, *a, **k), args, kwargs)
        return super().call_module(m, forward, args, kwargs)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` keeping registered layer types as leaf calls."""
    graph = _Tracer().trace(model)
    name = model.__class__.__name__ if isinstance(model, nn.Module) else model.__name__
    return fx.GraphModule(model, graph, name)


def module_on_path(model: nn.Module, graph: UnitGraph, producer: str, cls: type,
                   what: str = "modules") -> tuple[str, nn.Module] | None:
    """The one ``cls`` module on the channels of ``producer``'s group, as ``(name, module)``.

    None if none of the group's region passes through one. Raises ValueError, naming them,
    if the region passes through different ``cls`` modules (``what`` names them in the
    message: "switches", "tri-state ReLUs"); one module called at several places (one switch
    after every member of a residual group) counts once.
    """
    group = graph.group_of(producer)
    found = {node.op.target for node in group.nodes
             if node.kind == "op" and node.op.kind == "module"
             and isinstance(model.get_submodule(node.op.target), cls)}
    if len(found) > 1:
        raise ValueError(f"layer {producer!r} passes through several {what} {sorted(found)}")
    if not found:
        return None
    name = found.pop()
    return name, model.get_submodule(name)
