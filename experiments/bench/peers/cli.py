"""``python -m experiments.bench.peers``: the command line, the run over the networks, the result.

:func:`main` runs the benchmark and prints the tables, then one JSON line; :func:`run` is the
command line around it (exit code 2 when Torch-Pruning is missing and was not waived).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from experiments.bench.peers.accuracy import run_accuracy
from experiments.bench.peers.constant import run_constant
from experiments.bench.peers.data import network_data, prepare_data, trained_model
from experiments.bench.peers.inference import run_inference
from experiments.bench.peers.methods import make_context
from experiments.bench.peers.report import print_report
from experiments.bench.peers.setting import DEFAULT, INFORMATIONAL, QUICK, TARGETS, Setting, \
    TorchPruningMissing, load_torch_pruning, network_setting, select_networks, setting_json, \
    tp_version
from experiments.bench.peers.summary import ratios_and_targets, targets_met
from experiments.bench.peers.timing import run_timing
from experiments.harness.timing import loadavg
from pruners import InexactReplacementWarning

__all__ = ["parse_args", "main", "run"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of ``python -m experiments.bench.peers``; exits (argparse) on bad ones."""
    ap = argparse.ArgumentParser(
        prog="python -m experiments.bench.peers",
        description="Head-to-head against Torch-Pruning and torch.nn.utils.prune: accuracy "
                    "at equal size, scoring and removal time, inference time, constant units. "
                    "Prints tables, then one JSON line.")
    ap.add_argument("--quick", action="store_true",
                    help="tiny networks and budgets (the test suite's mode; numbers mean little)")
    ap.add_argument("--without-torch-pruning", "--no-install", dest="without_torch_pruning",
                    action="store_true",
                    help="when torch_pruning is not installed, skip its parts instead of "
                         "stopping (install it with: pip install -e \".[peers]\")")
    ap.add_argument("--data", default=None,
                    help="data set: fashion-mnist (default) or synthetic (image-shaped, "
                         "generated; the default with --quick)")
    ap.add_argument("--cache", default="runs/bench-peers",
                    help="folder of the trained networks' checkpoints (default runs/bench-peers)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timing repeats of (b) (default 7, 2 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="prune in this many rounds, rescoring between them (default 1: one "
                         "shot); ours and Torch-Pruning on the same geometric schedule")
    ap.add_argument("--networks", default=None,
                    help="comma-separated networks to run, of mlp, cnn, resnet20, mobilenet_v2, vit "
                         "(default: all)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.data is not None and args.data not in ("fashion-mnist", "synthetic"):
        ap.error(f"--data must be fashion-mnist or synthetic, got {args.data!r}")
    if args.networks is not None:
        names = [n.strip() for n in args.networks.split(",") if n.strip()]
        try:
            select_networks(DEFAULT, names)
        except ValueError as exc:
            ap.error(f"--networks: {exc}")
        args.networks = names
    return args


def _setting(args: argparse.Namespace, setting: Setting | None) -> Setting:
    s = setting or (QUICK if args.quick else DEFAULT)
    if args.networks is not None:
        s = select_networks(s, args.networks)
    if args.repeats is not None:
        s = replace(s, repeats=args.repeats)
    if args.rounds is not None:
        s = replace(s, rounds=args.rounds)
    return s


def _run_networks(s: Setting, splits, finetune, scoring, tp, cache: Path, seed: int,
                  log) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Parts (a) to (d) on every network of ``s`` (each with its own setting,
    :func:`~experiments.bench.peers.setting.network_setting`): their rows, and each network's
    training record."""
    parts: dict[str, list[dict]] = {"accuracy": [], "timing": [], "inference": [],
                                    "constant_units": []}
    train_info = {}
    with warnings.catch_warnings():
        # Torch-Pruning warns about layers it leaves alone; our tables say what was pruned
        warnings.filterwarnings("ignore", module="torch_pruning")
        # mean replacement into zero-padded convolutions (ResNet-20) is inexact at the
        # borders: (d) measures by how much, the docs say so; one warning per removal would
        # drown the log
        warnings.filterwarnings("ignore", category=InexactReplacementWarning)
        for spec in s.models:
            sn = network_setting(s, spec)
            log(f"\n== {spec.name}: {spec.factory}({dict(spec.kwargs)})"
                + (f", setting {dict(spec.overrides)}" if spec.overrides else ""))
            base, train_info[spec.name] = trained_model(spec, splits, sn, cache, seed, log)
            net_splits, net_scoring = network_data(splits, scoring, sn)
            ctx = make_context(base, splits.train.tensors[0][:1].clone(), net_scoring, tp, sn,
                               spec.name)
            log("(a) accuracy at equal size")
            rows, models = run_accuracy(spec.name, base, ctx, net_splits, finetune, seed, log)
            parts["accuracy"] += rows
            log("(b) time to score and remove")
            parts["timing"] += run_timing(spec.name, base, ctx, log)
            log("(c) inference time")
            parts["inference"] += run_inference(spec.name, base, models, ctx, log)
            log("(d) planted constant units")
            parts["constant_units"] += run_constant(spec.name, base, ctx, net_splits.test,
                                                    seed, log)
    return parts, train_info


def main(argv: Sequence[str] | None = None, *, file=None, setting: Setting | None = None
         ) -> dict[str, Any]:
    """Run the benchmark; print the tables and the JSON line; return the JSON object.

    ``setting`` replaces :data:`DEFAULT` / :data:`QUICK`. Raises
    :class:`~experiments.bench.peers.setting.TorchPruningMissing` when ``torch_pruning`` is
    not installed and ``--without-torch-pruning`` (or ``--no-install``) was not given.
    """
    args = parse_args(argv)
    out = file if file is not None else sys.stdout
    s = _setting(args, setting)
    data_name = args.data or ("synthetic" if args.quick else "fashion-mnist")

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    start = time.perf_counter()
    load_start = loadavg()
    log(f"peers benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load_start}"
        f"{' (quick)' if args.quick else ''}"
        f"{'' if s.rounds == 1 else f'; pruning in {s.rounds} rounds'}")
    tp = load_torch_pruning(skip_missing=args.without_torch_pruning, log=log)
    splits, finetune, scoring = prepare_data(data_name, s, args.seed)
    log(f"data: {splits!r}; fine-tuning subset {len(finetune)} images, scoring data "
        f"{sum(len(b[1]) for b in scoring)} images")
    parts, train_info = _run_networks(s, splits, finetune, scoring, tp, Path(args.cache),
                                      args.seed, log)
    ratios, met = ratios_and_targets(parts["accuracy"], parts["timing"], parts["inference"],
                                     parts["constant_units"])
    elapsed = time.perf_counter() - start
    load_end = loadavg()
    print_report(log, s, parts, ratios, met)
    log(f"load average (1 min): {load_start} at start, {load_end} at end; "
        f"{elapsed:.0f} s")
    result = {
        "benchmark": "peers", **parts, "ratios": ratios,
        "targets": {k: {"target": TARGETS[k], "met": met.get(k)} for k in TARGETS},
        "targets_met": targets_met(met),
        "informational": {k: {"comparison": INFORMATIONAL[k], "holds": met.get(k)}
                          for k in INFORMATIONAL},
        "config": {"torch": torch.__version__, "torch_pruning": tp_version(tp),
                   "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "quick": bool(args.quick), "data": data_name, "seed": args.seed,
                   "setting": setting_json(s), "train": train_info,
                   "seconds": round(elapsed, 1), "loadavg_start": load_start,
                   "loadavg_end": load_end},
    }
    print(json.dumps(result, allow_nan=False, default=str), file=out, flush=True)
    return result


def run(argv: Sequence[str] | None = None) -> int:
    """The command line: :func:`main`; a missing Torch-Pruning is an error (exit code 2) that
    says how to install it."""
    try:
        main(argv)
    except TorchPruningMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
