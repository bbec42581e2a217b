"""The common widths: how many units every method keeps per layer, and which ones a score drops.

Every method of the benchmark prunes to the same kept counts (:func:`widths_for_reduction`), in
one shot or through the same intermediate widths (:func:`round_widths`); it only chooses
*which* units go (:func:`lowest_units` for a score).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

import pruners
from experiments.bench.inference import keep_fractions, nearest_reduction, uniform_units
from pruners import remove_units

__all__ = ["prunable_units", "widths_for_reduction", "common_model", "shapes", "lowest_units", "layer_widths",
           "tp_ratio", "geometric_ratios", "round_widths"]

#: what :func:`widths_for_reduction` can reduce: the name in messages and the counter
MEASURES = {"params": ("parameters", lambda model, example: pruners.count_params(model)),
            "macs": ("MACs", pruners.count_macs)}


def prunable_units(graph) -> dict[str, int]:
    """The units of every prunable group (its channels, by group name) and of every attention
    module whose heads may be removed (its heads, by the module's name), from ``graph``
    (:func:`pruners.trace`)."""
    out = {n: graph.groups[n].size for n in graph.prunable}
    out.update({n: graph.heads[n].num_heads for n in graph.prunable_heads})
    return out


def _prunable(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """:func:`prunable_units` of ``model`` traced on ``example``."""
    return prunable_units(pruners.trace(model, example))


def common_model(model: nn.Module, example: torch.Tensor, kept: Mapping[str, int]
                 ) -> nn.Module:
    """A copy of ``model`` at the widths ``kept`` (each group's first channels kept, the
    others dropped): the shapes, parameter count and MACs every method must end at."""
    num = _prunable(model, example)
    twin = copy.deepcopy(model)
    units = {n: list(range(k, num[n])) for n, k in kept.items() if k < num[n]}
    if units:
        remove_units(twin, units, example_input=example)
    return twin


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape by name (``weight`` for a ``torch.nn.utils.prune``-masked
    ``weight_orig``)."""
    return {n.replace("_orig", ""): tuple(p.shape) for n, p in model.named_parameters()}


def widths_for_reduction(model: nn.Module, example: torch.Tensor, target: float,
                         measure: str = "params") -> tuple[dict[str, int], int]:
    """Kept units per prunable group for ``target`` times fewer parameters (or MACs).

    Every prunable group (a layer on a chain; the layers a residual add sums, with one width:
    the stream's channels) keeps ``round(k n_l)`` of its ``n_l`` units (at least one), for
    the uniform fraction ``k`` whose parameter count (``measure="params"``) or
    multiply-accumulates per sample (``"macs"``, :func:`pruners.count_macs` on ``example``),
    after physical removal, is nearest to ``base / target`` in log scale. Returns the kept
    counts and that count.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 1:
        raise ValueError(f"target parameter reduction must be a number > 1, got {target!r}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, got {measure!r}")
    what, count = MEASURES[measure]
    num = _prunable(model, example)
    base = count(model, example)
    identity = {n: torch.arange(u) for n, u in num.items()}
    keeps = keep_fractions(num)
    cache: dict[int, tuple[dict[str, int], int]] = {}

    def size(i: int) -> tuple[dict[str, int], int]:
        if i not in cache:
            units = uniform_units(num, keeps[i], identity)
            twin = copy.deepcopy(model)
            if units:
                remove_units(twin, units, example_input=example)
            kept = {n: num[n] - len(units.get(n, ())) for n in num}
            cache[i] = (kept, count(twin, example))
        return cache[i]

    return size(nearest_reduction(lambda i: size(i)[1], len(keeps), base, target, what))


def lowest_units(scores: Mapping[str, torch.Tensor], kept: Mapping[str, int]
                 ) -> dict[str, list[int]]:
    """The ``n_l - kept_l`` lowest-scoring units of each layer of ``kept`` (ties: lower index),
    sorted; layers that keep every unit are left out."""
    units = {}
    for layer, k in kept.items():
        s = scores[layer].detach().double()
        drop = s.numel() - k
        if drop > 0:
            order = torch.sort(s, stable=True).indices
            units[layer] = sorted(order[:drop].tolist())
    return units


def layer_widths(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """The current number of units (output features or channels) of each of ``layers`` (of a
    group: its first member's, which every member of a residual group shares; of an attention
    module: its query heads, read from its query projection's rows, not from its ``num_heads``
    attribute, which a pruner may leave stale)."""
    out = {}
    for n in layers:
        m = model.get_submodule(n)
        if isinstance(m, nn.Linear):
            out[n] = int(m.out_features)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out[n] = int(m.out_channels)
        elif hasattr(m, "q_proj") and hasattr(m, "head_dim"):
            out[n] = int(m.q_proj.out_features // m.head_dim)
        else:
            raise TypeError(f"layer_widths: {n!r} ({type(m).__name__}) is neither a Linear, a "
                            f"convolution nor an attention module with q_proj and head_dim")
    return out


def tp_ratio(n: int, k: int) -> float:
    """The pruning ratio that makes Torch-Pruning's ``MetaPruner`` keep ``k`` of ``n`` units.

    It keeps ``int(n (1 - ratio))`` units of a layer: the ratio aims at ``k + 1/2``.
    """
    return 1.0 - (k + 0.5) / n


def geometric_ratios(ratio: float, steps: int) -> list[float]:
    """Cumulative pruning ratios ``1 - (1 - ratio)^(i / steps)``, ``i = 0 .. steps``.

    Every round removes the same fraction of the units still there. This is
    the rounds schedule of both sides: Torch-Pruning's ``MetaPruner`` takes it
    as its ``iterative_pruning_ratio_scheduler`` (in place of its linear
    default), and :func:`round_widths` turns it into our widths.

    Example:
        >>> [round(r, 4) for r in geometric_ratios(0.75, 2)]
        [0.0, 0.5, 0.75]
    """
    return [1.0 - (1.0 - ratio) ** (i / steps) for i in range(steps + 1)]


def round_widths(start: Mapping[str, int], kept: Mapping[str, int], rounds: int
                 ) -> list[dict[str, int]]:
    """The widths after each of ``rounds`` rounds, the last one ``kept``.

    After round ``r`` layer ``l`` keeps ``int(n_l (1 - ratio_r))`` units, with
    the ratios of :func:`geometric_ratios` for the layer's target ratio
    ``1 - (k_l + 1/2) / n_l``: the counts Torch-Pruning's ``MetaPruner`` keeps
    on the same schedule (``int(n (1 - ratio))``, aimed at ``k + 1/2``), so both
    sides prune through the same widths.

    Example:
        >>> round_widths({"fc1": 512}, {"fc1": 77}, 3)
        [{'fc1': 272}, {'fc1': 145}, {'fc1': 77}]
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if set(start) != set(kept):
        raise ValueError(f"start and kept name different layers: {sorted(start)} against "
                         f"{sorted(kept)}")
    for n in kept:
        if not 1 <= kept[n] <= start[n]:
            raise ValueError(f"layer {n!r}: cannot keep {kept[n]} of {start[n]} units")
    ratios = {n: geometric_ratios(tp_ratio(start[n], kept[n]), rounds) for n in kept}
    return [{n: kept[n] if r == rounds else
             max(kept[n], min(start[n], int(start[n] * (1.0 - ratios[n][r])))) for n in kept}
            for r in range(1, rounds + 1)]
