"""(d) Planted constant units: made constant in a copy of a trained network, then removed three
ways, and the largest change of the logits measured in float64 and float32.

Cases (:func:`constant_cases`): a network without residual adds (the MLP, the CNN) gets one,
its first prunable layer (``"first_layer"``). A network with residual groups (ResNet-20,
MobileNetV2) gets two: the first residual stream group (``"stream"``: every member's channel
is made constant, so the summed stream is) and the first group on a chain after it, inside a
block (``"inner"``). A network with attention heads (the ViT) gets two: the first FFN's neurons
(``"ffn"``: zero incoming weights, a constant bias) and the first attention module's heads
(``"head"``: zero value-projection rows, a constant value bias, so the head outputs that bias);
Torch-Pruning drops the heads through its dependency graph from the value projection's channels.

Where a removed constant reaches a zero-padded convolution (ResNet-20's 3x3 convolutions read
both of its cases), no bias can stand for it at the border pixels, where the convolution reads
the padding's zeros instead of the constant: :func:`pruners.remove_units` warns that the fold is
inexact there, and the logits change. For every consumer of the group, :func:`consumer_changes`
therefore also compares the pruned consumer with the planted one on the same input (the one the
planted network gives it): a fold is exact when the consumer reads no padding (1x1 convolutions,
Linear layers), and in the interior pixels of a padded one; the border pixels are reported
apart.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import pruners
from experiments.bench.peers.methods import Context, bias_free, fold_created_biases
from experiments.bench.peers.widths import layer_widths
from pruners import remove_units
from saliency.graph import Group, UnitGraph

__all__ = ["constant_cases", "plant_constant", "consumer_changes", "run_constant"]


def constant_cases(ctx: Context) -> list[tuple[str, str]]:
    """``(case, group)`` pairs of the network of ``ctx``: ``[("first_layer", first prunable
    group)]`` without residual groups, else ``[("stream", first residual group), ("inner",
    first group on a chain after its first member)]``; with attention heads (the ViT),
    ``[("ffn", first FFN), ("head", first attention module)]``."""
    graph = ctx.graph
    groups = [g for g in ctx.prunable if g in graph.groups]
    heads = [h for h in ctx.prunable if h in graph.heads]
    if heads:  # a transformer: the first FFN's neurons and the first attention's heads
        return [("ffn", groups[0])] * bool(groups) + [("head", heads[0])]
    joined = [g for g in groups if graph.groups[g].joined]
    if not joined:
        return [("first_layer", groups[0])]
    stream = joined[0]
    after = groups[groups.index(stream) + 1:]
    inner = next((g for g in after if not graph.groups[g].joined), None)
    return [("stream", stream)] + ([("inner", inner)] if inner is not None else [])


def _path_batchnorm(model: nn.Module, group: Group, member: str) -> str | None:
    """The last BatchNorm on ``member``'s own per-channel path (its ops up to a residual join,
    a concatenation or the consumers), or None."""
    i = next(k for k, n in enumerate(group.nodes) if n.kind == "member" and n.member == member)
    found = None
    while True:
        nxt = next((k for k, n in enumerate(group.nodes)
                    if n.kind == "op" and n.inputs == (i,)), None)
        if nxt is None:
            return found
        op = group.nodes[nxt].op
        if op.kind == "module" and isinstance(model.get_submodule(op.target),
                                              nn.modules.batchnorm._BatchNorm):
            found = op.target
        i = nxt


def plant_constant(model: nn.Module, ctx: Context, seed: int, group: str | None = None
                   ) -> tuple[str, list[int]]:
    """Make ``ctx.setting.constant_fraction`` of a group's channels constant, in place; returns
    the group and the channels (sorted group channels).

    ``group``: the first prunable group if None. For every member, in forward order: with a
    BatchNorm on its own path (the last one before a residual join or the consumers), that
    BatchNorm's scale 0 and its shift drawn from U[0.5, 1.5], so the channel is constant after
    it (after the depthwise convolution too, in a MobileNetV2 block); without one (the MLP),
    zero incoming weights and a bias from U[0.5, 1.5]. Each member draws its own values, so a
    residual stream carries their sum.

    ``group`` naming an attention module: ``constant_fraction`` of its heads (at least one) get
    zero value-projection rows and a value bias from U[0.5, 1.5]: every token's value is then
    that bias, and so is the head's output (attention weights sum to one), a constant.
    """
    graph: UnitGraph = ctx.graph
    name = group if group is not None else next(iter(ctx.prunable))
    if name in graph.heads:
        return name, _plant_heads(model, ctx, seed, name)
    g = graph.groups[name]
    n = g.size
    gen = torch.Generator().manual_seed(seed + 17)
    count = max(1, int(round(ctx.setting.constant_fraction * n)))
    idx = sorted(torch.randperm(n, generator=gen)[:count].tolist())
    chosen = torch.tensor(idx, dtype=torch.long)
    with torch.no_grad():
        for member in g.members:
            rows = torch.isin(g.channels[member], chosen).nonzero().flatten()
            values = 0.5 + torch.rand(len(rows), generator=gen)
            bn_name = _path_batchnorm(model, g, member)
            if bn_name is not None:  # constant after its BatchNorm: scale 0, shift > 0
                bn = model.get_submodule(bn_name)
                bn.weight[rows] = 0.0
                bn.bias[rows] = values.to(bn.bias.dtype)
            else:  # the unit outputs its bias: zero incoming weights, bias > 0
                layer = model.get_submodule(member)
                if layer.bias is None:
                    raise ValueError(f"cannot plant a constant in {member!r}: no BatchNorm on "
                                     f"its path and no bias")
                layer.weight[rows] = 0.0
                layer.bias[rows] = values.to(layer.bias.dtype)
    return name, idx


def _plant_heads(model: nn.Module, ctx: Context, seed: int, name: str) -> list[int]:
    """:func:`plant_constant` on the heads of the attention module ``name``."""
    heads = ctx.graph.heads[name]
    n = heads.num_heads
    if heads.num_kv_heads != n:
        raise NotImplementedError(f"{name}: planting constant heads needs one key/value head "
                                  f"per query head")
    gen = torch.Generator().manual_seed(seed + 17)
    count = max(1, round(ctx.setting.constant_fraction * n))
    idx = sorted(torch.randperm(n, generator=gen)[:count].tolist())
    v = model.get_submodule(name).v_proj
    d = heads.head_dim
    with torch.no_grad():
        for h in idx:
            v.weight[h * d:(h + 1) * d] = 0.0
            v.bias[h * d:(h + 1) * d] = (0.5 + torch.rand(d, generator=gen)).to(v.bias.dtype)
    return idx


def _tp_drop_heads(tp, net: nn.Module, name: str, idx: list[int], example: torch.Tensor
                   ) -> None:
    """Torch-Pruning's dependency graph drops the heads ``idx`` of the attention module
    ``name``: their channels of the value projection, with everything its graph couples to
    them (the query and key projections' channels, the output projection's columns); then the
    module's ``num_heads`` is set, as Torch-Pruning's examples do by hand."""
    attn = net.get_submodule(name)
    d = attn.head_dim
    n = int(attn.q_proj.out_features // d)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    chans = [h * d + i for h in idx for i in range(d)]
    dg.get_pruning_group(attn.v_proj, tp.prune_linear_out_channels, chans).prune()
    widths = {p: int(getattr(attn, p).out_features) for p in ("q_proj", "k_proj", "v_proj")}
    if set(widths.values()) != {(n - len(idx)) * d} or attn.out_proj.in_features != \
            (n - len(idx)) * d:
        raise RuntimeError(f"Torch-Pruning's group of {name}.v_proj did not remove whole heads "
                           f"from every projection: {widths}, out_proj reads "
                           f"{attn.out_proj.in_features}")
    attn.num_heads = n - len(idx)
    if hasattr(attn, "num_kv_heads"):
        attn.num_kv_heads = n - len(idx)


def _padded(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution that reads zero padding."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return False
    if isinstance(module.padding, str):
        return module.padding != "valid"
    return any(p > 0 for p in module.padding)


def _border(conv: nn.Module, in_sizes: tuple[int, ...], out_shape: torch.Size) -> torch.Tensor:
    """The output positions of ``conv`` whose window reaches into its zero padding (numeric
    padding)."""
    spatial = out_shape[2:]
    mask = torch.zeros(tuple(spatial), dtype=torch.bool)
    for d, (size, k, s, p, dil) in enumerate(zip(in_sizes, conv.kernel_size, conv.stride,
                                                  conv.padding, conv.dilation)):
        o = torch.arange(spatial[d])
        start = o * s - p
        out = (start < 0) | (start + dil * (k - 1) > size - 1)
        shape = [1] * len(spatial)
        shape[d] = -1
        mask |= out.reshape(shape).expand(tuple(spatial))
    return mask


def consumer_changes(planted: nn.Module, pruned: nn.Module, graph: UnitGraph, group: str,
                     idx: list[int], x: torch.Tensor) -> list[dict[str, Any]]:
    """Per consumer of ``group``: the largest change of its output when the pruned consumer
    reads the planted network's input to it without the removed channels ``idx``.

    ``graph`` is the planted network's. Rows: ``consumer``, ``padded`` (a convolution with zero
    padding), ``max_change`` (every output), ``interior_change`` and ``border_change`` (a
    padded convolution's outputs whose window stays inside the input, and the others).
    """
    g = graph.groups[group]
    inputs, outputs = {}, {}
    handles = []
    for c in g.consumers:
        def hook(_m, args, out, name=c.name):
            inputs[name], outputs[name] = args[0].detach(), out.detach()
        handles.append(planted.get_submodule(c.name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            planted(x)
    finally:
        for h in handles:
            h.remove()
    removed = torch.tensor(idx, dtype=torch.long)
    rows = []
    for c in g.consumers:
        keep = ~torch.isin(g.nodes[c.node].labels, removed)
        if c.block > 1:
            keep = keep.repeat_interleave(c.block)
        module = pruned.get_submodule(c.name)
        with torch.no_grad():
            # a Linear reads its features in the last dimension (token-shaped inputs too)
            kept_in = (inputs[c.name][..., keep] if isinstance(module, nn.Linear)
                       else inputs[c.name][:, keep])
            diff = (module(kept_in) - outputs[c.name]).abs()
        padded = _padded(module)
        row = {"consumer": c.name, "padded": padded, "max_change": float(diff.max()),
               "interior_change": None, "border_change": None}
        if padded:
            border = _border(module, tuple(inputs[c.name].shape[2:]), diff.shape)
            per_pos = diff.amax(dim=(0, 1))
            row["interior_change"] = float(per_pos[~border].max()) if (~border).any() else 0.0
            row["border_change"] = float(per_pos[border].max()) if border.any() else 0.0
        rows.append(row)
    return rows


def _removed(net0: nn.Module, group: str, idx: list[int], ctx: Context, dtype: torch.dtype,
             x: torch.Tensor) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Copies of the planted ``net0`` with the channels removed: ours with mean replacement,
    ours dropping them, and (with Torch-Pruning) its dependency graph's drop; and what our
    removal with mean replacement reported (its inexact consumers; float64: the consumers'
    changes on ``x``)."""
    example = ctx.example.to(dtype)
    data = [(xb.to(dtype), yb) for xb, yb in ctx.scoring]
    graph = pruners.trace(net0, example)
    if group in graph.heads:
        return _removed_heads(net0, group, idx, ctx, example, data)
    ours = copy.deepcopy(net0)
    without = bias_free(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pruners.InexactReplacementWarning)
        report = remove_units(ours, {group: idx}, replacement="mean", data=data,
                              example_input=example)
    info: dict[str, Any] = {"inexact": list(report.inexact), "consumers": None,
                            "padded": [c.name for c in graph.groups[group].consumers
                                       if _padded(net0.get_submodule(c.name))]}
    if dtype == torch.float64:
        info["consumers"] = consumer_changes(net0, ours, graph, group, idx, x)
    fold_created_biases(ours, example, without)
    dropped = copy.deepcopy(net0)
    remove_units(dropped, {group: idx}, example_input=example)
    variants = {"ours_mean_replacement": ours, "ours_drop": dropped}
    if ctx.tp is not None:
        theirs = copy.deepcopy(net0)
        dg = ctx.tp.DependencyGraph().build_dependency(theirs, example_inputs=example)
        first = graph.groups[group].members[0]
        mod = theirs.get_submodule(first)
        own = torch.isin(graph.groups[group].channels[first],
                         torch.tensor(idx, dtype=torch.long)).nonzero().flatten().tolist()
        fn = (ctx.tp.prune_linear_out_channels if isinstance(mod, nn.Linear)
              else ctx.tp.prune_conv_out_channels)
        dg.get_pruning_group(mod, fn, own).prune()
        variants["tp_drop"] = theirs
    return variants, info


def _removed_heads(net0: nn.Module, name: str, idx: list[int], ctx: Context,
                   example: torch.Tensor, data: list):
    """:func:`_removed` for heads of the attention module ``name`` (no padding anywhere: every
    consumer of a head is the output projection)."""
    ours = copy.deepcopy(net0)
    report = remove_units(ours, {name: idx}, replacement="mean", data=data,
                          example_input=example)
    dropped = copy.deepcopy(net0)
    remove_units(dropped, {name: idx}, example_input=example)
    variants = {"ours_mean_replacement": ours, "ours_drop": dropped}
    if ctx.tp is not None:
        theirs = copy.deepcopy(net0)
        _tp_drop_heads(ctx.tp, theirs, name, idx, example)
        variants["tp_drop"] = theirs
    return variants, {"inexact": list(report.inexact), "consumers": None, "padded": []}


def _judged(change: float, consumers: list[dict] | None) -> float:
    """The figure the exactness target reads: the logit change when no consumer is padded;
    else the largest change of the unpadded consumers and of the padded ones' interior."""
    if consumers is None or not any(c["padded"] for c in consumers):
        return change
    return max(c["interior_change"] if c["padded"] else c["max_change"] for c in consumers)


def run_constant(name: str, base: nn.Module, ctx: Context, test: TensorDataset, seed: int,
                 log) -> list[dict]:
    """Plant constant units, remove them three ways, and measure the logit change.

    Variants: ours with mean replacement (bias propagation), ours dropping
    them (``remove_units`` without replacement: the consumers see 0), and
    Torch-Pruning's dependency graph (which drops them). Float32 rows also
    carry ``rounding_floor``: the largest difference between the planted,
    unpruned network evaluated in float32 and in float64, i.e. what float32
    evaluation alone costs on the same images. Rows of ours with mean replacement carry the
    consumers :func:`pruners.remove_units` reported inexact (zero padding) and, in float64,
    each consumer's change (:func:`consumer_changes`) and ``judged_change``, the figure the
    exactness target reads: the logit change where no consumer is zero-padded, else the
    largest change of the unpadded consumers and of the padded consumers' interior.
    """
    rows = []
    x_test = test.tensors[0][:ctx.setting.constant_images]
    for case, group in constant_cases(ctx):
        planted = {}
        for dtype in (torch.float64, torch.float32):
            net = copy.deepcopy(base).to(dtype).eval()
            planted[dtype] = (net, plant_constant(net, ctx, seed, group))
        with torch.no_grad():
            floor = float((planted[torch.float32][0](x_test).double()
                           - planted[torch.float64][0](x_test.double())).abs().max())
        for dtype in (torch.float32, torch.float64):
            net0, (layer, idx) = planted[dtype]
            x = x_test.to(dtype)
            with torch.no_grad():
                ref = net0(x)
            scale = float(ref.abs().max())
            variants, info = _removed(net0, layer, idx, ctx, dtype, x[:500])
            for method, net in variants.items():
                net.eval()
                members = ctx.members.get(layer, [layer])
                widths = layer_widths(net, members)
                if any(w != ctx.prunable[layer] - len(idx) for w in widths.values()):
                    raise RuntimeError(f"{method} did not remove {len(idx)} units of {layer}: "
                                       f"{widths}")
                with torch.no_grad():
                    change = float((net(x) - ref).abs().max())
                row = {"model": name, "case": case, "dtype": str(dtype).replace("torch.", ""),
                       "method": method, "layer": layer, "members": members,
                       "units": len(idx), "unit_indices": list(idx), "max_abs_change": change,
                       "max_abs_logit": scale,
                       "relative": change / scale if scale else None,
                       "rounding_floor": floor if dtype == torch.float32 else None}
                if method == "ours_mean_replacement":
                    row["inexact_consumers"] = info["inexact"]
                    row["consumers"] = info["consumers"]
                    row["padded_consumers"] = info["padded"]
                    row["judged_change"] = (_judged(change, info["consumers"])
                                            if dtype == torch.float64 else None)
                rows.append(row)
            what = "heads" if layer in ctx.graph.heads else "channels"
            log(f"  {name} {case} ({layer}, {len(idx)} of {ctx.prunable[layer]} {what}) "
                f"{row['dtype']}: "
                + ", ".join(f"{r['method']} {r['max_abs_change']:.3g}"
                            for r in rows[-len(variants):]))
    return rows
