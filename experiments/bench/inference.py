"""Inference speed of physically pruned models against their unpruned originals.

``python -m experiments.bench.inference [--quick] [--repeats N] [--seed S]``

An MLP 784-1024-1024-10 and a small CNN (:func:`experiments.harness.models.small_cnn`)
are pruned *uniformly*: every prunable layer keeps the same fraction ``k`` of
its units (chosen at random with a fixed seed), with ``k`` found by bisection
so that the multiply-accumulates counted by :func:`pruners.count_macs` after
:func:`pruners.remove_units` fall by the target factor (2x, 3x, 5x, 10x). The
actual reduction is reported. Each pruned model is timed on CPU at batch 256
and batch 1 against the unpruned model in the same run, and so is the model
masked with :func:`pruners.mask_units` (the ``torch.nn.utils.prune`` layout)
at one reduction, which computes the same function but keeps dense shapes.

Timing: ``model.eval()`` under ``torch.inference_mode``, default thread
count, a warm-up per model, then ``--repeats`` rounds; each round times a
block of calls of every model in turn (rotating the order from round to
round), so machine noise hits the baseline and the pruned models alike. Each
call is timed with :func:`time.perf_counter`; a model's time is the median
per-call time.

For each case::

    speedup = median_ms(unpruned) / median_ms(pruned)
    ratio   = speedup / MAC reduction

A ratio of 1 means the MAC reduction turns fully into speed. For the masked
model the MAC reduction is that of the units it keeps (its removed twin's);
its dense cost is unchanged (``dense_mac_reduction`` = 1). Its time differs
from the original's for reasons unrelated to MACs: the ``torch.nn.utils.prune``
forward pre-hooks rebuild every masked weight on each call (costly at batch
1), and data-dependent kernels such as max pooling run faster on all-zero
channels. Targets (batch 256, removed units): ratio >= 0.8 for the MLP up to
5x MAC reduction, >= 0.5 for the CNN up to 3x.

Other processes on the machine distort the timings (with two threads on two
busy cores, a call can wait a whole scheduler tick); the CPU time other
processes used while timing is reported per case (``other_cpus_busy``, from
``/proc/stat``) and a warning is printed when it exceeds
:data:`BUSY_WARNING`.

Output: a table, then, last, one JSON line
``{"benchmark": "inference", "cases": [...], "targets": {...},
"targets_met": bool, "config": {...}}``.
"""

from __future__ import annotations

import argparse
import copy
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
from experiments.harness.models import mlp, small_cnn
from experiments.harness.tables import format_table
from experiments.harness.timing import BUSY_WARNING, loadavg, time_models, timed

__all__ = ["main", "TARGETS", "uniform_units", "prune_to_reduction", "time_models"]

#: The benchmark's targets, at batch 256 for physically removed units: the ratio
#: speedup / MAC reduction must reach ``min_ratio`` for every target reduction
#: up to ``max_reduction``.
TARGETS: dict[str, dict[str, float]] = {
    "mlp": {"batch": 256, "max_reduction": 5.0, "min_ratio": 0.8},
    "small_cnn": {"batch": 256, "max_reduction": 3.0, "min_ratio": 0.5},
}

DEFAULT_MLP_WIDTHS = (784, 1024, 1024, 10)
DEFAULT_CNN = {"in_channels": 1, "num_classes": 10, "widths": (32, 64), "hidden": 256,
               "image_size": 28}
DEFAULT_REDUCTIONS = (2.0, 3.0, 5.0, 10.0)


# ---------------------------------------------------------------------------
# pruning to a MAC reduction


def uniform_units(num_units: Mapping[str, int], keep: float,
                  order: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """Units to remove so that every layer keeps ``round(keep * n)`` of its ``n``.

    Each layer keeps at least one unit. The removed units of layer ``l`` are
    the first ones of the permutation ``order[l]``, so a smaller ``keep``
    removes a superset of the units a larger one removes.
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

    Every prunable layer of ``pruners.trace(model, example)`` keeps the same
    fraction ``k`` of its units (:func:`uniform_units`), chosen at random
    (fixed ``seed``). The selection is a step function of ``k``; ``k`` is
    found by bisection over its steps, measuring each candidate's MACs with
    :func:`pruners.count_macs` after :func:`pruners.remove_units` on a copy.
    Of the two neighbouring steps that bracket the target, the one nearer to
    it (in log scale) is returned. ``model`` is not changed.

    Raises:
        ValueError: ``target`` is not above 1, or cannot be reached even when
            every prunable layer keeps a single unit.
    """
    if not target > 1:
        raise ValueError(f"target MAC reduction must be > 1, got {target!r}")
    graph = pruners.trace(model, example)
    num_units = {n: graph.producers[n].num_units for n in graph.prunable}
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


# ---------------------------------------------------------------------------
# the benchmark


def _target_status(model: str, batch: int, method: str, target: float) -> tuple[bool, float]:
    t = TARGETS.get(model)
    if t is None or method != "remove" or batch != t["batch"]:
        return False, math.nan
    return target <= t["max_reduction"] + 1e-9, t["min_ratio"]


def _run_model(name: str, model: nn.Module, make_input, batches: Sequence[int],
               reductions: Sequence[float], mask_reduction: float | None, *, seed: int,
               timing: dict[str, Any], log) -> list[dict[str, Any]]:
    model.eval()
    example = make_input(1)
    macs_base = pruners.count_macs(model, example)
    params_base = pruners.count_params(model)
    variants: list[tuple[str, float, Pruned, nn.Module]] = []
    for target in reductions:
        p = prune_to_reduction(model, example, target, seed=seed)
        variants.append(("remove", float(target), p, p.model))
        log(f"  {name}: {target:g}x -> keep {p.keep:.3f}, units {p.kept}, "
            f"MACs {macs_base:,} -> {p.macs:,} ({p.reduction:.3f}x)")
    mask_diff = None
    if mask_reduction is not None:
        twin = next((v[2] for v in variants if v[1] == float(mask_reduction)), None)
        if twin is None:
            twin = prune_to_reduction(model, example, mask_reduction, seed=seed)
        masked = copy.deepcopy(model)
        pruners.mask_units(masked, twin.units, example_input=example)
        masked.eval()
        with torch.inference_mode():
            probe = make_input(8)
            mask_diff = float((masked(probe) - twin.model(probe)).abs().max())
        variants.append(("mask", float(mask_reduction), twin, masked))

    cases = []
    for batch in batches:
        torch.manual_seed(seed + batch)
        x = make_input(batch)
        # CPUs kept busy by other processes while timing (None off Linux)
        times, others = timed(lambda: time_models([model] + [v[3] for v in variants], x,
                                                  **timing))
        ms_base = statistics.median(times[0]) * 1e3
        spread_base = _spread(times[0])
        for (method, target, twin, net), t in zip(variants, times[1:]):
            ms = statistics.median(t) * 1e3
            macs_dense = pruners.count_macs(net, example)
            reduction = macs_base / twin.macs
            speedup = ms_base / ms
            ratio = speedup / reduction
            in_target, min_ratio = _target_status(name, batch, method, target)
            case = {
                "model": name, "batch": int(batch), "method": method,
                "target_reduction": target, "mac_reduction": reduction,
                "dense_mac_reduction": macs_base / macs_dense,
                "keep_fraction": twin.keep, "units": dict(twin.kept),
                "macs_base": macs_base, "macs": twin.macs,
                "params_base": params_base, "params": pruners.count_params(net),
                "ms_base": ms_base, "ms": ms,
                "calls_base": len(times[0]), "calls": len(t),
                "spread_base": spread_base, "spread": _spread(t),
                "other_cpus_busy": others,
                "speedup": speedup, "ratio": ratio,
                "in_target": in_target,
                "meets_target": (ratio >= min_ratio) if in_target else None,
            }
            if method == "mask":
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
         "status": "target"},
        formats={"target_reduction": lambda v: f"{v:g}x", "mac_reduction": lambda v: f"{v:.2f}x",
                 "keep_fraction": ".3f", "params": ",", "ms_base": ".3f", "ms": ".3f",
                 "speedup": lambda v: f"{v:.2f}x", "ratio": ".2f"})


def _report(log, cases: Sequence[Mapping[str, Any]], load_start, load_end) -> None:
    """The table, the targets, the load and a warning per case timed on a busy machine."""
    log("")
    log(_table(cases))
    log("")
    log("speedup = base ms / ms; ratio = speedup / MAC reduction; 'mask' keeps dense shapes "
        "(torch.nn.utils.prune masks), its MAC red. is that of its removed twin.")
    for name, t in TARGETS.items():
        log(f"target {name}: ratio >= {t['min_ratio']} at batch {t['batch']:g} up to "
            f"{t['max_reduction']:g}x")
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
                    "model; prints a table, then one JSON line.")
    ap.add_argument("--quick", action="store_true",
                    help="few repeats and short blocks (smoke test; numbers are noisy)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved timing rounds per case (default 40, 3 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and the "
                    "choice of removed units (default 0)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None, *,
         mlp_widths: Sequence[int] = DEFAULT_MLP_WIDTHS,
         cnn: Mapping[str, Any] | None = None,
         batches: Sequence[int] = (256, 1),
         reductions: Sequence[float] = DEFAULT_REDUCTIONS,
         mask_reduction: float | None = 5.0,
         file=None) -> dict[str, Any]:
    """Run the benchmark; print the table and the JSON line; return the JSON object.

    Args:
        argv: command-line arguments (``--quick``, ``--repeats N``, ``--seed S``);
            ``None`` reads ``sys.argv``.
        mlp_widths: widths of the MLP (:func:`experiments.harness.models.mlp`).
        cnn: keyword arguments of :func:`experiments.harness.models.small_cnn`
            (default: the 28x28 MNIST-sized CNN).
        batches: batch sizes to time.
        reductions: target MAC reductions.
        mask_reduction: the reduction at which the masked model is timed too
            (``None``: no masked model).
        file: where to print (default ``sys.stdout``).
    """
    args = _parse(argv)
    out = file if file is not None else sys.stdout
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 40)
    timing = ({"repeats": repeats, "block_seconds": 0.002, "warmup_seconds": 0.01,
               "min_warmup": 2} if args.quick else
              {"repeats": repeats, "block_seconds": 0.025, "warmup_seconds": 0.2,
               "min_warmup": 3})
    cnn_kw = {**DEFAULT_CNN, **(cnn or {})}

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    start = time.perf_counter()
    load_start = loadavg()
    log(f"inference benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"repeats {repeats}{' (quick)' if args.quick else ''}")
    torch.manual_seed(args.seed)
    models = {
        "mlp": (mlp(mlp_widths), lambda b: torch.randn(b, mlp_widths[0])),
        "small_cnn": (small_cnn(**cnn_kw), lambda b: torch.randn(
            b, cnn_kw["in_channels"], cnn_kw["image_size"], cnn_kw["image_size"])),
    }
    cases: list[dict[str, Any]] = []
    for name, (model, make_input) in models.items():
        cases += _run_model(name, model, make_input, batches, reductions, mask_reduction,
                            seed=args.seed, timing=timing, log=log)
    scoped = [c for c in cases if c["in_target"]]
    targets_met = bool(scoped) and all(c["meets_target"] for c in scoped)
    elapsed = time.perf_counter() - start
    load_end = loadavg()

    _report(log, cases, load_start, load_end)
    log(f"targets met: {targets_met}   ({elapsed:.1f} s)")
    result = {
        "benchmark": "inference",
        "cases": cases,
        "targets": TARGETS,
        "targets_met": targets_met,
        "config": {
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeats": repeats, "quick": bool(args.quick), "seed": args.seed,
            "mlp_widths": list(mlp_widths),
            "cnn": {k: (list(v) if isinstance(v, (tuple, list)) else v)
                    for k, v in cnn_kw.items()},
            "batches": [int(b) for b in batches],
            "reductions": [float(r) for r in reductions],
            "mask_reduction": mask_reduction, "seconds": round(elapsed, 2),
            "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
        },
    }
    print(json.dumps(result, allow_nan=False), file=out, flush=True)
    return result


if __name__ == "__main__":
    main()
