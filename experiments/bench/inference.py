"""Inference speed of physically pruned models against their unpruned originals.

``python -m experiments.bench.inference [--quick] [--repeats N] [--seed S]``

Five networks from :mod:`experiments.harness.models`, on 1x28x28 inputs: an
MLP 784-1024-1024-10, the small CNN (:func:`~experiments.harness.models.small_cnn`),
ResNet-20 (:func:`~experiments.harness.models.resnet20`: residual adds), the
small MobileNetV2 (:func:`~experiments.harness.models.mobilenet_v2`: depthwise
convolutions and residual adds) and ViT-tiny
(:func:`~experiments.harness.models.vit_tiny`: attention heads and FFN neurons),
each with the zoo's default widths. Each is pruned *uniformly*: every prunable
group of :func:`pruners.trace` (a layer on a chain, or the layers whose
channels a residual add sums) and every attention module with prunable heads
keeps the same fraction ``k`` of its channels or heads (whole heads; chosen at
random with a fixed seed), with ``k`` found by bisection so that the
multiply-accumulates counted by :func:`pruners.count_macs` (attention products
included) after :func:`pruners.remove_units` fall by the target factor (2x, 3x,
5x, 10x for the MLP and the CNN; 1.5x, 2x, 3x for ResNet-20, MobileNetV2 and
ViT-tiny). The actual reduction is reported. Each pruned model
is timed on CPU at batch 256 and batch 1 against the unpruned model in the same
run. For the MLP and the CNN, so is the model masked with
:func:`pruners.mask_units` (the ``torch.nn.utils.prune`` layout) at one
reduction, which computes the same function but keeps dense shapes.

ResNet-20, MobileNetV2 and ViT-tiny are also timed beside their *dense twins*
(:func:`dense_twin`, :func:`vit_dense_twin`): the same architecture built
afresh, with freshly initialised layers of exactly the pruned model's shapes
(same parameter count, same MACs; checked); the ViT's twin has, in every
block, a :class:`~experiments.harness.models.SelfAttention` constructed with
the pruned block's head count and an FFN constructed at its pruned width. A
dense twin is what a network designed at the pruned widths costs on this CPU,
the limit unit removal can reach; the pruned model's time over its twin's
(``vs_dense_twin``) shows what removal leaves on the table.

Timing: ``model.eval()`` under ``torch.inference_mode``, default thread
count, a warm-up per model, then ``--repeats`` rounds; each round times a
block of calls of every model in turn (rotating the order from round to
round), so machine noise hits the baseline, the pruned models and the dense
twins alike. Each call is timed with :func:`time.perf_counter`; a model's time
is the median per-call time.

For each case::

    speedup       = median_ms(unpruned) / median_ms(pruned)
    ratio         = speedup / MAC reduction
    vs_dense_twin = median_ms(pruned) / median_ms(dense twin)

A ratio of 1 means the MAC reduction turns fully into speed; a
``vs_dense_twin`` of 1 means the pruned model runs as fast as a network built
at its widths. For the masked model the MAC reduction is that of the units it
keeps (its removed twin's); its dense cost is unchanged
(``dense_mac_reduction`` = 1). Its time differs from the original's for reasons
unrelated to MACs: the ``torch.nn.utils.prune`` forward pre-hooks rebuild every
masked weight on each call (costly at batch 1), and data-dependent kernels such
as max pooling run faster on all-zero channels.

Targets (:data:`TARGETS`; batch 256, removed units): ratio >= 0.8 for the MLP
up to 5x MAC reduction, >= 0.5 for the CNN up to 3x, >= 0.6 for ResNet-20 and
ViT-tiny up to 2x; and for ResNet-20, MobileNetV2 and ViT-tiny at every
reduction, the pruned model within 10% of its dense twin's time
(``vs_dense_twin`` <= 1.1).

``--quick`` (a smoke test: few repeats, short blocks) shrinks ResNet-20,
MobileNetV2 and ViT-tiny to tiny widths on 12x12 inputs (:data:`QUICK_RESNET`,
:data:`QUICK_MOBILENET`, :data:`QUICK_VIT`) so that the whole run takes seconds.

Other processes on the machine distort the timings (with two threads on two
busy cores, a call can wait a whole scheduler tick); the CPU time other
processes used while timing is reported per case (``other_cpus_busy``, from
``/proc/stat``) and a warning is printed when it exceeds
:data:`BUSY_WARNING`.

Output: a table, then, last, one JSON line
``{"benchmark": "inference", "cases": [...], "targets": {...},
"targets_met": bool, "config": {...}}``. Each case records the checks of the
targets that apply to it in ``target_checks`` (``{"ratio": {"value", "min",
"met"}, "vs_dense_twin": {"value", "max", "met"}}``), ``in_target`` (any
applies) and ``meets_target`` (all applicable met; ``None`` out of scope).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

import pruners
from experiments.harness.checkpoint import fit_to_state_dict
from experiments.harness.models import (
    SelfAttention,
    ViT,
    mlp,
    mobilenet_v2,
    resnet20,
    small_cnn,
    vit_tiny,
)
from experiments.harness.tables import format_table
from experiments.harness.timing import BUSY_WARNING, loadavg, time_models, timed

__all__ = ["main", "TARGETS", "uniform_units", "prune_to_reduction", "dense_twin",
           "vit_dense_twin", "time_models", "target_checks"]

#: The benchmark's targets, at batch 256 for physically removed units: the ratio
#: speedup / MAC reduction must reach ``min_ratio`` for every target reduction
#: up to ``max_reduction``; where ``max_vs_dense_twin`` is set, the pruned model's
#: time over its dense twin's must not exceed it at any reduction.
TARGETS: dict[str, dict[str, float]] = {
    "mlp": {"batch": 256, "max_reduction": 5.0, "min_ratio": 0.8},
    "small_cnn": {"batch": 256, "max_reduction": 3.0, "min_ratio": 0.5},
    "resnet20": {"batch": 256, "max_reduction": 2.0, "min_ratio": 0.6,
                 "max_vs_dense_twin": 1.1},
    "mobilenet_v2": {"batch": 256, "max_vs_dense_twin": 1.1},
    "vit_tiny": {"batch": 256, "max_reduction": 2.0, "min_ratio": 0.6,
                 "max_vs_dense_twin": 1.1},
}

DEFAULT_MLP_WIDTHS = (784, 1024, 1024, 10)
DEFAULT_CNN = {"in_channels": 1, "num_classes": 10, "widths": (32, 64), "hidden": 256,
               "image_size": 28}
DEFAULT_REDUCTIONS = (2.0, 3.0, 5.0, 10.0)
#: keyword arguments of :func:`~experiments.harness.models.resnet20` and
#: :func:`~experiments.harness.models.mobilenet_v2`: the zoo defaults (1x28x28 inputs)
DEFAULT_RESNET: dict[str, Any] = {}
DEFAULT_MOBILENET: dict[str, Any] = {}
#: the tiny versions ``--quick`` times (12x12 inputs)
QUICK_RESNET: dict[str, Any] = {"widths": (4, 8, 16), "image_size": 12}
QUICK_MOBILENET: dict[str, Any] = {"width": 0.25, "image_size": 12}
#: target MAC reductions of ResNet-20 and MobileNetV2
DEFAULT_CONV_REDUCTIONS = (1.5, 2.0, 3.0)
#: keyword arguments of :func:`~experiments.harness.models.vit_tiny`: the zoo default (patch 7,
#: 4 blocks, width 64, 4 heads, FFN 256, on 1x28x28)
DEFAULT_VIT: dict[str, Any] = {}
#: the tiny ViT ``--quick`` times (9 tokens of 12x12 inputs, 2 blocks of 4 heads of 8)
QUICK_VIT: dict[str, Any] = {"patch_size": 4, "depth": 2, "width": 32, "heads": 4, "ffn": 64,
                             "image_size": 12}
#: target MAC reductions of ViT-tiny
DEFAULT_VIT_REDUCTIONS = (1.5, 2.0, 3.0)


# ---------------------------------------------------------------------------
# pruning to a MAC reduction


def uniform_units(num_units: Mapping[str, int], keep: float,
                  order: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """Units to remove so that every layer (or group) keeps ``round(keep * n)`` of its ``n``.

    Each keeps at least one unit. The removed units of ``l`` are the first
    ones of the permutation ``order[l]``, so a smaller ``keep`` removes a
    superset of the units a larger one removes.
    """
    units = {}
    for name, n in num_units.items():
        kept = min(n, max(1, math.floor(keep * n + 0.5)))
        if kept < n:
            units[name] = order[name][: n - kept].tolist()
    return units


@dataclass
class Pruned:
    """A model pruned to a target MAC reduction by :func:`prune_to_reduction`."""

    model: nn.Module
    units: dict[str, list[int]]
    keep: float
    macs: int
    macs_base: int
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def reduction(self) -> float:
        return self.macs_base / self.macs



def keep_fractions(num_units: Mapping[str, int]) -> list[float]:
    """One uniform keep fraction ``k`` per distinct selection, in increasing order.

    The kept count ``round(k n)`` of a layer of ``n`` units steps up at ``k = (j - 1/2) / n``;
    one ``k`` inside each interval between the steps of all layers (and 0, 1) represents every
    selection :func:`uniform_units` can make.
    """
    steps = sorted({(j - 0.5) / n for n in num_units.values() for j in range(1, n + 1)})
    return [0.0] + [(a + b) / 2 for a, b in zip(steps, steps[1:])] + [1.0]


def nearest_reduction(size: Callable[[int], float], n: int, base: float, target: float,
                      what: str) -> int:
    """The index ``i`` in ``0..n-1`` whose ``base / size(i)`` is nearest to ``target`` (log scale).

    ``size`` must not decrease with ``i`` (``size(n - 1)`` is the unpruned size, ``base``): a
    bisection finds the two neighbours that bracket ``target``, calling ``size`` about
    ``log2(n)`` times. ``what`` names the quantity in the error when even ``size(0)`` (one unit
    per prunable layer) is not ``target`` times smaller.
    """
    lo, hi = 0, n - 1                      # reduction(lo) >= target > reduction(hi) = 1
    if base / size(lo) < target:
        raise ValueError(f"{target}x fewer {what} is out of reach: keeping one unit per "
                         f"prunable layer gives {base / size(lo):.3g}x")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if base / size(mid) >= target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda i: abs(math.log(base / size(i) / target)))


def prune_to_reduction(model: nn.Module, example: torch.Tensor, target: float, *,
                       seed: int = 0) -> Pruned:
    """Copy of ``model`` with units removed uniformly to cut MACs by ``target``.

    Every prunable group of ``pruners.trace(model, example)`` (a layer on a
    chain, or the layers whose channels a residual add sums) keeps the same
    fraction ``k`` of its channels, and every attention module with prunable
    heads the same fraction of its heads (whole heads; :func:`uniform_units`),
    chosen at random (fixed ``seed``). The selection is a step function of
    ``k``; ``k`` is found by bisection over its steps, measuring each
    candidate's MACs with :func:`pruners.count_macs` after
    :func:`pruners.remove_units` on a copy.
    Of the two neighbouring steps that bracket the target, the one nearer to
    it (in log scale) is returned. ``model`` is not changed.

    Raises:
        ValueError: ``target`` is not above 1, or cannot be reached even when
            every prunable group keeps a single unit.
    """
    if not target > 1:
        raise ValueError(f"target MAC reduction must be > 1, got {target!r}")
    graph = pruners.trace(model, example)
    num_units = {n: graph.groups[n].size for n in graph.prunable}
    num_units.update({n: graph.heads[n].num_heads for n in graph.prunable_heads})
    gen = torch.Generator().manual_seed(seed)
    order = {n: torch.randperm(u, generator=gen) for n, u in num_units.items()}
    macs_base = pruners.count_macs(model, example)
    keeps = keep_fractions(num_units)
    measured: dict[int, tuple[dict[str, list[int]], nn.Module, int]] = {}

    def prune(i: int) -> tuple[dict[str, list[int]], nn.Module, int]:
        if i not in measured:
            units = uniform_units(num_units, keeps[i], order)
            twin = copy.deepcopy(model)
            macs = macs_base
            if units:
                macs = pruners.remove_units(twin, units, example_input=example).macs_after
            measured[i] = (units, twin, macs)
        return measured[i]

    best = nearest_reduction(lambda i: prune(i)[2], len(keeps), macs_base, target, "MACs")
    units, twin, macs = prune(best)
    kept = {n: num_units[n] - len(units.get(n, ())) for n in num_units}
    return Pruned(twin, units, keeps[best], macs, macs_base, kept)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def dense_twin(pruned: nn.Module, build: Callable[[], nn.Module],
               example: torch.Tensor) -> nn.Module:
    """A freshly built, freshly initialised model with exactly the layer shapes of ``pruned``.

    ``build()`` must make the architecture ``pruned`` was cut from (the same
    factory and arguments). Its layers are resized to the shapes of
    ``pruned``'s state dict (:func:`experiments.harness.checkpoint.fit_to_state_dict`:
    a depthwise convolution stays depthwise) and initialised anew with each
    module's ``reset_parameters``, so the twin is the network one would build
    directly at the pruned widths: the cost unit removal can at best reach. It
    does not compute what ``pruned`` computes until given its weights
    (``twin.load_state_dict(pruned.state_dict())``). Its mode (train or eval)
    follows ``pruned``.

    Raises:
        ValueError: ``build()`` lacks a layer of ``pruned``; a module with
            tensors has no ``reset_parameters`` (it cannot be initialised); or
            the twin's tensor shapes, parameter count or MACs on ``example``
            (:func:`pruners.count_macs`) differ from ``pruned``'s.
    """
    twin = build()
    state = pruned.state_dict()
    fit_to_state_dict(twin, state)
    for name, mod in twin.named_modules():
        own = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        if not own:
            continue
        if not hasattr(mod, "reset_parameters"):
            raise ValueError(f"module {name!r} ({type(mod).__name__}) has no reset_parameters: "
                             "its resized tensors cannot be initialised")
        mod.reset_parameters()
    return _checked_twin(twin, pruned, example)


def _checked_twin(twin: nn.Module, pruned: nn.Module, example: torch.Tensor) -> nn.Module:
    """``twin`` in ``pruned``'s mode, once its tensor shapes, parameter count and MACs on
    ``example`` are checked to be ``pruned``'s (``ValueError`` otherwise)."""
    twin.train(pruned.training)
    got, want = _shapes(twin), _shapes(pruned)
    if got != want:
        diff = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
        raise ValueError(f"the dense twin's tensors differ from the pruned model's at {diff}")
    for what, count in (("parameters", pruners.count_params),
                        ("MACs", lambda m: pruners.count_macs(m, example))):
        a, b = count(twin), count(pruned)
        if a != b:
            raise ValueError(f"the dense twin has {a:,} {what}, the pruned model {b:,}")
    return twin


def vit_dense_twin(pruned: ViT, vit_kwargs: Mapping[str, Any],
                   example: torch.Tensor) -> ViT:
    """A ViT built directly at the pruned widths of ``pruned``: in every block, a freshly
    constructed :class:`~experiments.harness.models.SelfAttention` with the block's remaining
    heads (the head dimension kept) and an FFN ``fc1``/``fc2`` constructed at the block's
    remaining neurons.

    ``vit_kwargs`` are the keyword arguments of
    :func:`~experiments.harness.models.vit_tiny` ``pruned`` was built with. Unlike
    :func:`dense_twin` (which resizes a fresh model's tensors to a state dict), the twin's
    attention modules and FFN layers are constructed at their sizes, as a network designed
    with fewer heads and a smaller FFN would be; their weights are PyTorch's default
    initialisation. Its mode follows ``pruned``.

    Raises:
        ValueError: the twin's tensor shapes, parameter count or MACs on ``example``
            (:func:`pruners.count_macs`, attention products included) differ from
            ``pruned``'s.
    """
    twin = vit_tiny(**vit_kwargs)
    for block, cut in zip(twin.blocks, pruned.blocks):
        width = block.fc1.in_features
        attn = cut.attn
        block.attn = SelfAttention(width, attn.num_heads, attn.num_kv_heads,
                                   head_dim=attn.head_dim,
                                   bias=attn.q_proj.bias is not None, causal=attn.causal)
        ffn = cut.fc1.out_features
        block.fc1 = nn.Linear(width, ffn)
        block.fc2 = nn.Linear(ffn, width)
    return _checked_twin(twin, pruned, example)


# ---------------------------------------------------------------------------
# the benchmark


def target_checks(model: str, batch: int, method: str, target: float, ratio: float,
                  vs_dense_twin: float | None = None,
                  targets: Mapping[str, Mapping[str, float]] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """The targets that apply to one case, each with its value, threshold and verdict.

    Targets (default :data:`TARGETS`) cover removed units (``method ==
    "remove"``) at their model's batch size. ``"ratio"`` applies while
    ``target`` (the target MAC reduction) is at most ``max_reduction`` and is
    met when ``ratio >= min_ratio``; ``"vs_dense_twin"`` applies at every
    reduction of a model with ``max_vs_dense_twin`` that was timed beside a
    dense twin, and is met when ``vs_dense_twin <= max_vs_dense_twin``.

    Returns:
        ``{"ratio": {"value", "min", "met"}, "vs_dense_twin": {"value", "max",
        "met"}}``, with only the checks that apply (empty: out of scope).
    """
    t = (TARGETS if targets is None else targets).get(model)
    if t is None or method != "remove" or batch != t["batch"]:
        return {}
    checks: dict[str, dict[str, Any]] = {}
    if "min_ratio" in t and target <= t["max_reduction"] + 1e-9:
        checks["ratio"] = {"value": ratio, "min": t["min_ratio"],
                           "met": bool(ratio >= t["min_ratio"])}
    if "max_vs_dense_twin" in t and vs_dense_twin is not None:
        checks["vs_dense_twin"] = {"value": vs_dense_twin, "max": t["max_vs_dense_twin"],
                                   "met": bool(vs_dense_twin <= t["max_vs_dense_twin"])}
    return checks


@dataclass
class _Variant:
    method: str                    # "remove" or "mask"
    target: float
    pruned: Pruned                 # the removal (for "mask": the removed twin of the mask)
    net: nn.Module                 # the timed model
    twin: nn.Module | None = None  # its dense twin, if timed


def _run_model(name: str, model: nn.Module, make_input, batches: Sequence[int],
               reductions: Sequence[float], mask_reduction: float | None, *, seed: int,
               timing: dict[str, Any], log,
               twin_of: Callable[[nn.Module, torch.Tensor], nn.Module] | None = None
               ) -> list[dict[str, Any]]:
    model.eval()
    example = make_input(1)
    macs_base = pruners.count_macs(model, example)
    params_base = pruners.count_params(model)
    variants: list[_Variant] = []
    for target in reductions:
        p = prune_to_reduction(model, example, target, seed=seed)
        twin = twin_of(p.model, example).eval() if twin_of is not None else None
        variants.append(_Variant("remove", float(target), p, p.model, twin))
        log(f"  {name}: {target:g}x -> keep {p.keep:.3f}, units {p.kept}, "
            f"MACs {macs_base:,} -> {p.macs:,} ({p.reduction:.3f}x)"
            + (", dense twin: same parameters and MACs" if twin is not None else ""))
    mask_diff = None
    if mask_reduction is not None:
        removed = next((v.pruned for v in variants if v.target == float(mask_reduction)), None)
        if removed is None:
            removed = prune_to_reduction(model, example, mask_reduction, seed=seed)
        masked = copy.deepcopy(model)
        pruners.mask_units(masked, removed.units, example_input=example)
        masked.eval()
        with torch.inference_mode():
            probe = make_input(8)
            mask_diff = float((masked(probe) - removed.model(probe)).abs().max())
        variants.append(_Variant("mask", float(mask_reduction), removed, masked))

    twins = [v for v in variants if v.twin is not None]
    cases = []
    for batch in batches:
        torch.manual_seed(seed + batch)
        x = make_input(batch)
        # CPUs kept busy by other processes while timing (None off Linux)
        timed_models = [model] + [v.net for v in variants] + [v.twin for v in twins]
        times, others = timed(functools.partial(time_models, timed_models, x, **timing))
        ms_base = statistics.median(times[0]) * 1e3
        spread_base = _spread(times[0])
        twin_times = {id(v): t for v, t in zip(twins, times[1 + len(variants):])}
        for v, t in zip(variants, times[1:]):
            ms = statistics.median(t) * 1e3
            macs_dense = pruners.count_macs(v.net, example)
            reduction = macs_base / v.pruned.macs
            speedup = ms_base / ms
            ratio = speedup / reduction
            t_twin = twin_times.get(id(v))
            ms_twin = statistics.median(t_twin) * 1e3 if t_twin is not None else None
            vs_twin = ms / ms_twin if ms_twin is not None else None
            checks = target_checks(name, batch, v.method, v.target, ratio, vs_twin)
            case = {
                "model": name, "batch": int(batch), "method": v.method,
                "target_reduction": v.target, "mac_reduction": reduction,
                "dense_mac_reduction": macs_base / macs_dense,
                "keep_fraction": v.pruned.keep, "units": dict(v.pruned.kept),
                "macs_base": macs_base, "macs": v.pruned.macs,
                "params_base": params_base, "params": pruners.count_params(v.net),
                "ms_base": ms_base, "ms": ms,
                "calls_base": len(times[0]), "calls": len(t),
                "spread_base": spread_base, "spread": _spread(t),
                "other_cpus_busy": others,
                "speedup": speedup, "ratio": ratio,
                "ms_dense_twin": ms_twin,
                "vs_dense_twin": vs_twin,
                "dense_twin_speedup": ms_base / ms_twin if ms_twin is not None else None,
                "dense_twin_params": (pruners.count_params(v.twin)
                                      if v.twin is not None else None),
                "dense_twin_macs": (pruners.count_macs(v.twin, example)
                                    if v.twin is not None else None),
                "calls_dense_twin": len(t_twin) if t_twin is not None else None,
                "spread_dense_twin": _spread(t_twin) if t_twin is not None else None,
                "target_checks": checks,
                "in_target": bool(checks),
                "meets_target": all(c["met"] for c in checks.values()) if checks else None,
            }
            if v.method == "mask":
                case["max_abs_diff_vs_removed"] = mask_diff
            cases.append(case)
    return cases


def _spread(times: Sequence[float]) -> float:
    """Interquartile range over median of per-call times: a noise indicator."""
    if len(times) < 2:
        return 0.0
    q = statistics.quantiles(times, n=4)
    return (q[2] - q[0]) / q[1]


def _table(cases: Sequence[Mapping[str, Any]]) -> str:
    status = {True: "ok", False: "MISSED", None: ""}
    return format_table(
        [{**c, "status": status[c["meets_target"]]} for c in cases],
        {"model": "model", "batch": "batch", "method": "method", "target_reduction": "target",
         "mac_reduction": "MAC red.", "keep_fraction": "keep", "params": "params",
         "ms_base": "base ms", "ms": "ms", "speedup": "speedup", "ratio": "ratio",
         "ms_dense_twin": "twin ms", "vs_dense_twin": "vs twin", "status": "target"},
        formats={"target_reduction": lambda v: f"{v:g}x", "mac_reduction": lambda v: f"{v:.2f}x",
                 "keep_fraction": ".3f", "params": ",", "ms_base": ".3f", "ms": ".3f",
                 "speedup": lambda v: f"{v:.2f}x", "ratio": ".2f", "ms_dense_twin": ".3f",
                 "vs_dense_twin": ".2f"},
        missing="")


def _describe_target(name: str, t: Mapping[str, float]) -> str:
    parts = []
    if "min_ratio" in t:
        parts.append(f"ratio >= {t['min_ratio']} up to {t['max_reduction']:g}x")
    if "max_vs_dense_twin" in t:
        parts.append(f"ms / dense twin ms <= {t['max_vs_dense_twin']:g} at every reduction")
    return f"target {name} (batch {t['batch']:g}): " + "; ".join(parts)


def _report(log, cases: Sequence[Mapping[str, Any]], load_start, load_end) -> None:
    """The table, the targets, the load and a warning per case timed on a busy machine."""
    log("")
    log(_table(cases))
    log("")
    log("speedup = base ms / ms; ratio = speedup / MAC reduction; 'mask' keeps dense shapes "
        "(torch.nn.utils.prune masks), its MAC red. is that of its removed twin; twin ms: "
        "a fresh model built at the pruned widths; vs twin = ms / twin ms.")
    for name, t in TARGETS.items():
        log(_describe_target(name, t))
    if load_start is not None:
        log(f"load average (1 min): {load_start:.2f} at start, {load_end:.2f} at end, "
            f"{os.cpu_count()} CPUs")
    busy = {(c["model"], c["batch"]): c["other_cpus_busy"] for c in cases
            if c["other_cpus_busy"] is not None and c["other_cpus_busy"] > BUSY_WARNING}
    for (name, batch), others in busy.items():
        log(f"WARNING: other processes kept {others:.2f} CPUs busy while {name} was timed "
            f"at batch {batch}; those timings are unreliable")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.bench.inference",
        description="CPU inference time of uniformly pruned models against the unpruned "
                    "model (and, for ResNet-20, MobileNetV2 and ViT-tiny, against dense "
                    "models built at the pruned widths); prints a table, then one JSON line.")
    ap.add_argument("--quick", action="store_true",
                    help="few repeats and short blocks, tiny ResNet-20, MobileNetV2 and "
                         "ViT-tiny (smoke test; numbers are noisy)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved timing rounds per case (default 40, 3 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and the "
                    "choice of removed units (default 0)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def _image_input(kwargs: Mapping[str, Any]) -> Callable[[int], torch.Tensor]:
    channels, size = kwargs.get("in_channels", 1), kwargs.get("image_size", 28)
    return lambda b: torch.randn(b, channels, size, size)


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in kwargs.items()}


def main(argv: Sequence[str] | None = None, *,
         mlp_widths: Sequence[int] = DEFAULT_MLP_WIDTHS,
         cnn: Mapping[str, Any] | None = None,
         resnet: Mapping[str, Any] | None = None,
         mobilenet: Mapping[str, Any] | None = None,
         vit: Mapping[str, Any] | None = None,
         batches: Sequence[int] = (256, 1),
         reductions: Sequence[float] = DEFAULT_REDUCTIONS,
         conv_reductions: Sequence[float] = DEFAULT_CONV_REDUCTIONS,
         vit_reductions: Sequence[float] = DEFAULT_VIT_REDUCTIONS,
         mask_reduction: float | None = 5.0,
         file=None) -> dict[str, Any]:
    """Run the benchmark; print the table and the JSON line; return the JSON object.

    Args:
        argv: command-line arguments (``--quick``, ``--repeats N``, ``--seed S``);
            ``None`` reads ``sys.argv``.
        mlp_widths: widths of the MLP (:func:`experiments.harness.models.mlp`).
        cnn: keyword arguments of :func:`experiments.harness.models.small_cnn`
            (default: the 28x28 MNIST-sized CNN).
        resnet: keyword arguments of :func:`experiments.harness.models.resnet20`
            (default: the zoo's ResNet-20 on 1x28x28; with ``--quick``
            :data:`QUICK_RESNET`).
        mobilenet: keyword arguments of :func:`experiments.harness.models.mobilenet_v2`
            (default: the zoo's MobileNetV2 on 1x28x28; with ``--quick``
            :data:`QUICK_MOBILENET`).
        vit: keyword arguments of :func:`experiments.harness.models.vit_tiny`
            (default: the zoo's ViT-tiny on 1x28x28; with ``--quick``
            :data:`QUICK_VIT`).
        batches: batch sizes to time.
        reductions: target MAC reductions of the MLP and the CNN.
        conv_reductions: target MAC reductions of ResNet-20 and MobileNetV2.
        vit_reductions: target MAC reductions of ViT-tiny (heads and FFN neurons).
        mask_reduction: the reduction at which the masked MLP and CNN are timed
            too (``None``: no masked model).
        file: where to print (default ``sys.stdout``).
    """
    args = _parse(argv)
    out = file if file is not None else sys.stdout
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 40)
    timing = _timing(args.quick, repeats)
    cnn_kw = {**DEFAULT_CNN, **(cnn or {})}
    resnet_kw = dict(resnet if resnet is not None else
                     (QUICK_RESNET if args.quick else DEFAULT_RESNET))
    mobilenet_kw = dict(mobilenet if mobilenet is not None else
                        (QUICK_MOBILENET if args.quick else DEFAULT_MOBILENET))
    vit_kw = dict(vit if vit is not None else (QUICK_VIT if args.quick else DEFAULT_VIT))

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    start = time.perf_counter()
    load_start = loadavg()
    log(f"inference benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"repeats {repeats}{' (quick)' if args.quick else ''}")
    torch.manual_seed(args.seed)
    models = _models(mlp_widths, cnn_kw, resnet_kw, mobilenet_kw, vit_kw, reductions,
                     conv_reductions, vit_reductions, mask_reduction)
    cases: list[dict[str, Any]] = []
    for name, (model, make_input, model_reductions, masked_at, twin_of) in models.items():
        cases += _run_model(name, model, make_input, batches, model_reductions, masked_at,
                            seed=args.seed, timing=timing, log=log, twin_of=twin_of)
    scoped = [c for c in cases if c["in_target"]]
    targets_met = bool(scoped) and all(c["meets_target"] for c in scoped)
    elapsed = time.perf_counter() - start
    load_end = loadavg()

    _report(log, cases, load_start, load_end)
    log(f"targets met: {targets_met}   ({elapsed:.1f} s)")
    config = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "repeats": repeats, "quick": bool(args.quick), "seed": args.seed,
        "mlp_widths": list(mlp_widths), "cnn": _jsonable(cnn_kw),
        "resnet20": _jsonable(resnet_kw), "mobilenet_v2": _jsonable(mobilenet_kw),
        "vit_tiny": _jsonable(vit_kw),
        "batches": [int(b) for b in batches], "reductions": [float(r) for r in reductions],
        "conv_reductions": [float(r) for r in conv_reductions],
        "vit_reductions": [float(r) for r in vit_reductions],
        "mask_reduction": mask_reduction, "seconds": round(elapsed, 2),
        "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
    }
    result = {"benchmark": "inference", "cases": cases, "targets": TARGETS,
              "targets_met": targets_met, "config": config}
    print(json.dumps(result, allow_nan=False), file=out, flush=True)
    return result


def _models(mlp_widths, cnn_kw, resnet_kw, mobilenet_kw, vit_kw, reductions, conv_reductions,
            vit_reductions, mask_reduction) -> dict[str, tuple]:
    """name -> (model, input maker, reductions, masked reduction, maker of its dense twins:
    ``(pruned, example) -> twin``)."""
    return {
        "mlp": (mlp(mlp_widths), lambda b: torch.randn(b, mlp_widths[0]), reductions,
                mask_reduction, None),
        "small_cnn": (small_cnn(**cnn_kw), _image_input(cnn_kw), reductions, mask_reduction,
                      None),
        "resnet20": (resnet20(**resnet_kw), _image_input(resnet_kw), conv_reductions, None,
                     lambda p, x: dense_twin(p, lambda: resnet20(**resnet_kw), x)),
        "mobilenet_v2": (mobilenet_v2(**mobilenet_kw), _image_input(mobilenet_kw),
                         conv_reductions, None,
                         lambda p, x: dense_twin(p, lambda: mobilenet_v2(**mobilenet_kw), x)),
        "vit_tiny": (vit_tiny(**vit_kw), _image_input(vit_kw), vit_reductions, None,
                     lambda p, x: vit_dense_twin(p, vit_kw, x)),
    }


def _timing(quick: bool, repeats: int) -> dict[str, Any]:
    """The arguments of :func:`~experiments.harness.timing.time_models`: short blocks for the
    seconds-long ``--quick`` run."""
    if quick:
        return {"repeats": repeats, "block_seconds": 0.002, "warmup_seconds": 0.01,
                "min_warmup": 2}
    return {"repeats": repeats, "block_seconds": 0.025, "warmup_seconds": 0.2, "min_warmup": 3}


if __name__ == "__main__":
    main()
