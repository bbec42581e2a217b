"""(d) Planted constant units: made constant in a copy of a trained network, then removed three
ways, and the largest change of the logits measured in float64 and float32."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from experiments.bench.peers.methods import Context, batchnorm_of
from experiments.bench.peers.widths import layer_widths
from pruners import remove_units

__all__ = ["plant_constant", "run_constant"]


def plant_constant(model: nn.Module, ctx: Context, seed: int) -> tuple[str, list[int]]:
    """Make ``ctx.setting.constant_fraction`` of the first prunable layer's units constant, in
    place; returns the layer and the units (sorted).

    MLP: zero incoming weights and a bias drawn from U[0.5, 1.5]; with a BatchNorm (CNN): its
    scale 0 and its shift from U[0.5, 1.5], so the channel is constant after it.
    """
    first = next(iter(ctx.prunable))
    n = ctx.prunable[first]
    g = torch.Generator().manual_seed(seed + 17)
    count = max(1, int(round(ctx.setting.constant_fraction * n)))
    idx = sorted(torch.randperm(n, generator=g)[:count].tolist())
    values = 0.5 + torch.rand(count, generator=g)
    bn = batchnorm_of(model, first, ctx.example.to(next(model.parameters()).dtype))
    with torch.no_grad():
        if bn is not None:  # the channel is constant after its BatchNorm: scale 0, shift > 0
            bn.weight[idx] = 0.0
            bn.bias[idx] = values.to(bn.bias.dtype)
        else:  # the unit outputs its bias: zero incoming weights, bias > 0
            layer = model.get_submodule(first)
            layer.weight[idx] = 0.0
            layer.bias[idx] = values.to(layer.bias.dtype)
    return first, idx


def _removed(net0: nn.Module, layer: str, idx: list[int], ctx: Context, dtype: torch.dtype
             ) -> dict[str, nn.Module]:
    """Copies of the planted ``net0`` with the units removed: ours with mean replacement, ours
    dropping them, and (with Torch-Pruning) its dependency graph's drop."""
    example = ctx.example.to(dtype)
    data = [(xb.to(dtype), yb) for xb, yb in ctx.scoring]
    ours = copy.deepcopy(net0)
    remove_units(ours, {layer: idx}, replacement="mean", data=data, example_input=example)
    dropped = copy.deepcopy(net0)
    remove_units(dropped, {layer: idx}, example_input=example)
    variants = {"ours_mean_replacement": ours, "ours_drop": dropped}
    if ctx.tp is not None:
        theirs = copy.deepcopy(net0)
        dg = ctx.tp.DependencyGraph().build_dependency(theirs, example_inputs=example)
        mod = theirs.get_submodule(layer)
        fn = (ctx.tp.prune_linear_out_channels if isinstance(mod, nn.Linear)
              else ctx.tp.prune_conv_out_channels)
        dg.get_pruning_group(mod, fn, list(idx)).prune()
        variants["tp_drop"] = theirs
    return variants


def run_constant(name: str, base: nn.Module, ctx: Context, test: TensorDataset, seed: int,
                 log) -> list[dict]:
    """Plant constant units, remove them three ways, and measure the logit change.

    Variants: ours with mean replacement (bias propagation), ours dropping
    them (``remove_units`` without replacement: the consumers see 0), and
    Torch-Pruning's dependency graph (which drops them). Float32 rows also
    carry ``rounding_floor``: the largest difference between the planted,
    unpruned network evaluated in float32 and in float64, i.e. what float32
    evaluation alone costs on the same images.
    """
    rows = []
    x_test = test.tensors[0][:2000]
    planted = {}
    for dtype in (torch.float64, torch.float32):
        net = copy.deepcopy(base).to(dtype).eval()
        planted[dtype] = (net, plant_constant(net, ctx, seed))
    with torch.no_grad():
        floor = float((planted[torch.float32][0](x_test).double()
                       - planted[torch.float64][0](x_test.double())).abs().max())
    for dtype in (torch.float32, torch.float64):
        net0, (layer, idx) = planted[dtype]
        x = x_test.to(dtype)
        with torch.no_grad():
            ref = net0(x)
        scale = float(ref.abs().max())
        for method, net in _removed(net0, layer, idx, ctx, dtype).items():
            net.eval()
            if layer_widths(net, [layer])[layer] != ctx.prunable[layer] - len(idx):
                raise RuntimeError(f"{method} did not remove {len(idx)} units of {layer}")
            with torch.no_grad():
                change = float((net(x) - ref).abs().max())
            rows.append({"model": name, "dtype": str(dtype).replace("torch.", ""),
                         "method": method, "layer": layer, "units": len(idx),
                         "unit_indices": list(idx), "max_abs_change": change,
                         "max_abs_logit": scale,
                         "relative": change / scale if scale else None,
                         "rounding_floor": floor if dtype == torch.float32 else None})
    return rows
