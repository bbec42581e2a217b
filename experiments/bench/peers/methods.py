"""The pruning methods compared: ours (MRS with mean replacement, in one shot or in rounds),
Torch-Pruning's ``MetaPruner``, and ``torch.nn.utils.prune.ln_structured`` with its physical twin.

Each takes a network and the kept counts of
:func:`~experiments.bench.peers.widths.widths_for_reduction` and prunes it in place to exactly
those widths. The penalty methods (ShrinkNets, group sparsity),
which train while they prune, are in :mod:`experiments.bench.peers.accuracy`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

import pruners
from experiments.bench.peers.setting import Setting
from experiments.bench.peers.widths import geometric_ratios, layer_widths, lowest_units, \
    round_widths, tp_ratio
from pruners import remove_units
from saliency import SCORERS
from saliency.graph import module_on_path

__all__ = ["Context", "make_context", "mrs_prune", "mrs_rounds", "ln_structured_prune",
           "physical_twin", "physical_params", "tp_gradients", "tp_prune", "batchnorm_of"]


@dataclass
class Context:
    """What every method needs about one trained network.

    ``example``: one input; ``scoring``: the scoring batches; ``prunable``: the units of each
    prunable layer of the unpruned network; ``output_layers``: the layers that are not pruned;
    ``tp``: the ``torch_pruning`` module, or None without it.
    """

    example: torch.Tensor
    scoring: list
    prunable: dict[str, int]
    output_layers: list[str]
    tp: Any
    setting: Setting
    model_name: str


def make_context(base: nn.Module, example: torch.Tensor, scoring: list, tp: Any, s: Setting,
                 model_name: str) -> Context:
    """What every method needs about one trained network (its graph's prunable layers)."""
    graph = pruners.trace(base, example)
    return Context(example=example, scoring=scoring,
                   prunable={n: graph.producers[n].num_units for n in graph.prunable},
                   output_layers=[n for n in graph.producers if n not in graph.prunable],
                   tp=tp, setting=s, model_name=model_name)


# ---------------------------------------------------------------------------
# ours


def mrs_prune(model, kept, ctx: Context, opt=None) -> dict[str, list[int]]:
    """MRS scores on the scoring data, then removal with mean replacement; the units removed.

    MRS is the first-order estimate of the loss change of replacing a unit by its mean
    output (U. Evci, "Detecting Dead Weights and Units in Neural Networks", MS thesis, NYU
    2018, https://arxiv.org/abs/1806.06068, Def. 3.1.2). ``opt``: an optimizer whose state
    :func:`pruners.remove_units` slices along.
    """
    scores = SCORERS["mrs"]().score(model, ctx.scoring)
    units = lowest_units(scores, kept)
    remove_units(model, units, replacement="mean", data=ctx.scoring, optimizer=opt)
    return units


def mrs_rounds(model, kept, ctx: Context, rounds: int) -> list[dict[str, list[int]]]:
    """MRS pruning to ``kept`` in ``rounds`` rounds (:func:`round_widths`), rescoring each one.

    Each round scores the network as the previous rounds left it, with the
    mean replacement of the units already removed folded into the biases,
    and removes its lowest-scoring units with mean replacement (:func:`mrs_prune`).
    Returns every round's removed units, in the numbering of that round.
    """
    start = layer_widths(model, list(kept))
    return [mrs_prune(model, k, ctx) for k in round_widths(start, kept, rounds)]


# ---------------------------------------------------------------------------
# torch.nn.utils.prune.ln_structured and its physical twin


def ln_structured_prune(model, kept, ctx: Context):
    """``ln_structured`` (L2 over output rows) masking ``n - kept`` units of every layer."""
    for layer, k in kept.items():
        n = ctx.prunable[layer]
        tprune.ln_structured(model.get_submodule(layer), "weight", amount=n - k, n=2, dim=0)
    return model


def _masked_units(model: nn.Module, layers: Sequence[str]) -> dict[str, list[int]]:
    """The output units whose whole weight row ``ln_structured`` masked, per layer.

    Raises RuntimeError if a layer has no ``weight_mask`` or a row is only
    partly masked (then the unit is not structurally pruned).
    """
    out = {}
    for layer in layers:
        mask = getattr(model.get_submodule(layer), "weight_mask", None)
        if mask is None:
            raise RuntimeError(f"{layer} has no weight_mask: ln_structured did not prune it")
        zero = mask.flatten(1).eq(0)
        rows = zero.all(1)
        if bool((zero.any(1) & ~rows).any()):
            raise RuntimeError(f"{layer}: ln_structured masked rows only in part")
        out[layer] = rows.nonzero().flatten().tolist()
    return out


def physical_twin(model: nn.Module, layers: Sequence[str], example: torch.Tensor
                  ) -> tuple[nn.Module, dict[str, list[int]]]:
    """The ``ln_structured``-masked ``model`` with its masked units physically removed.

    A masked unit's weight row is zero, so it outputs its bias (0 without
    one), a constant: removing it with that constant folded into its
    consumers (:func:`pruners.remove_units`, replacement = the bias) computes
    the same function. This gives the masked model's parameter count at equal
    function. ``model``'s function is not changed (its masked weights are only
    recomputed without autograd history, as its next forward pass would, so
    that it can be copied). Returns the twin and the removed units.
    """
    with torch.no_grad():
        for layer in layers:
            mod = model.get_submodule(layer)
            if hasattr(mod, "weight_orig") and hasattr(mod, "weight_mask"):
                mod.weight = mod.weight_orig * mod.weight_mask
    twin = copy.deepcopy(model)
    units = _masked_units(twin, layers)
    consts = {}
    for layer in layers:
        mod = twin.get_submodule(layer)
        tprune.remove(mod, "weight")
        idx = units[layer]
        consts[layer] = (mod.bias.detach()[idx].clone() if mod.bias is not None
                         else torch.zeros(len(idx), dtype=mod.weight.dtype))
    todo = {l: i for l, i in units.items() if i}
    if todo:
        remove_units(twin, todo, replacement={l: consts[l] for l in todo},
                     example_input=example)
    return twin.eval(), units


def physical_params(model: nn.Module, method: str, kept: Mapping[str, int], ctx: Context,
                    check: torch.Tensor) -> int:
    """The parameter count of ``model`` once physically pruned, checked.

    Physically pruned methods: their count, after checking the kept widths.
    ``ln_structured``: the count of :func:`physical_twin`, after checking that
    it masked ``n - kept`` units per layer and that the twin's outputs on
    ``check`` match the masked model's.
    """
    if method != "ln_structured":
        widths = layer_widths(model, list(kept))
        if widths != dict(kept):
            raise RuntimeError(f"{method} kept {widths}, not {dict(kept)}")
        return pruners.count_params(model)
    twin, units = physical_twin(model, list(kept), ctx.example)
    counts = {l: ctx.prunable[l] - len(i) for l, i in units.items()}
    if counts != dict(kept):
        raise RuntimeError(f"ln_structured kept {counts}, not {dict(kept)}")
    was = model.training
    model.eval()
    with torch.no_grad():
        ref, out = model(check), twin(check)
    model.train(was)
    dev = float((out - ref).abs().max())
    if dev > 1e-4 * max(1.0, float(ref.abs().max())):
        raise RuntimeError(f"ln_structured's physical twin deviates by {dev:.3g}")
    return pruners.count_params(twin)


# ---------------------------------------------------------------------------
# Torch-Pruning


def _tp_importance(tp, name: str):
    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"unknown Torch-Pruning importance {name!r}")


def tp_gradients(model, data) -> None:
    """Accumulate the cross-entropy gradients of ``data`` in ``model`` (for Torch-Pruning's
    ``TaylorImportance``)."""
    model.zero_grad(set_to_none=True)
    for x, y in data:
        F.cross_entropy(model(x), y).backward()


def tp_prune(model, kept, ctx: Context, importance: str, rounds: int = 1,
             trace: list | None = None):
    """Torch-Pruning's ``MetaPruner`` to the kept counts, in ``rounds`` iterative steps.

    ``importance``: ``"magnitude"`` (L2), ``"taylor"`` (gradients of the scoring data,
    recomputed before every step) or ``"bn_scale"`` (the BatchNorm'd layers; the others by
    magnitude). The steps follow :func:`geometric_ratios`, the schedule of our rounds; the
    output layers are left alone. ``trace``: if given, the widths of the kept layers after
    every step are appended to it.
    """
    tp = ctx.tp
    if importance == "bn_scale":
        bn_layers = [l for l in kept if batchnorm_of(model, l, ctx.example) is not None]
        if not bn_layers:
            raise ValueError("BNScaleImportance needs BatchNorm'd layers")
        parts = [("bn_scale", {l: kept[l] for l in bn_layers}),
                 ("magnitude", {l: kept[l] for l in kept if l not in bn_layers})]
    else:
        parts = [(importance, dict(kept))]
    for imp_name, sub in parts:
        if not sub:
            continue
        ratios = {model.get_submodule(l): tp_ratio(ctx.prunable[l], k) for l, k in sub.items()}
        scorer = _tp_importance(tp, imp_name)
        pruner = tp.pruner.MetaPruner(
            model, ctx.example, importance=scorer, pruning_ratio=0.0,
            pruning_ratio_dict=ratios, iterative_steps=rounds,
            iterative_pruning_ratio_scheduler=geometric_ratios,
            ignored_layers=[model.get_submodule(l) for l in ctx.output_layers])
        for _ in range(rounds):
            if imp_name == "taylor":
                tp_gradients(model, ctx.scoring)
            pruner.step()
            model.zero_grad(set_to_none=True)
            if trace is not None:
                trace.append(layer_widths(model, list(sub)))
        if pruner.current_step != rounds:
            raise RuntimeError(f"Torch-Pruning ran {pruner.current_step} of {rounds} steps")
    return model


def batchnorm_of(model: nn.Module, layer: str, example: torch.Tensor):
    """The BatchNorm on ``layer``'s per-channel path, or None."""
    found = module_on_path(model, pruners.trace(model, example), layer,
                           nn.modules.batchnorm._BatchNorm, "BatchNorms")
    return None if found is None else found[1]
