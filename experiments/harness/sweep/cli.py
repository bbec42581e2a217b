"""The ``sweep`` command: ``python -m experiments sweep NAME (--random N | --grid) ...``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from experiments.harness.registry import parse_overrides
from experiments.harness.sweep.driver import _sweep
from experiments.harness.sweep.executors import SubmititMissingError

__all__ = ["add_arguments", "run_from_args", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``sweep`` arguments to ``parser`` (the CLI's ``sweep`` subparser)."""
    parser.add_argument("name", help="experiment to sweep (python -m experiments list)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--random", type=int, metavar="N", help="N random trials")
    how.add_argument("--grid", action="store_true", help="the grid over the search space")
    parser.add_argument("--points", type=int, default=None, metavar="K",
                        help="grid values per continuous range (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default runs/sweeps/NAME)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--workers", type=int, default=None,
                        help="local processes (default: the CPUs available; 1 = in-process)")
    parser.add_argument("--quick", action="store_true", help="each trial's --quick version")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a setting for every trial (JSON values), repeatable")
    parser.add_argument("--plugin", dest="sweep_plugin", action="append", default=[],
                        metavar="MODULE", help="module registering experiments, repeatable")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="submitit parameter (timeout_min, slurm_partition, cpus_per_task, "
                             "mem_gb, gpus_per_node, slurm_array_parallelism, cluster, ...)")
    parser.add_argument("--acc-key", default="test_acc", help="Pareto plot y (default test_acc)")
    parser.add_argument("--size-key", default="params", help="Pareto plot x (default params)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the sweep ``args`` describes; 0 if every trial finished, 1 if some failed.

    Invalid arguments raise ValueError (the CLI prints it); a missing
    submitit prints how to install it and returns 2.
    """
    if args.points is not None and not args.grid:
        raise ValueError("--points goes with --grid")
    plugins = list(getattr(args, "plugin", None) or []) + list(args.sweep_plugin or [])
    try:
        outcome = _sweep(args.name, random=args.random,
                         grid=(args.points or 3) if args.grid else None, seed=args.seed,
                         out_dir=args.out, executor=args.executor, workers=args.workers,
                         quick=args.quick, overrides=parse_overrides(args.set), plugins=plugins,
                         slurm=parse_overrides(args.slurm), acc_key=args.acc_key,
                         size_key=args.size_key)
    except SubmititMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = len(outcome.rows)
    print(f"sweep {args.name}: {done}/{len(outcome.trials)} trials finished "
          f"({len(outcome.ran) - len(outcome.failed)} run now, {len(outcome.failed)} failed); "
          f"{outcome.out / 'results.csv'}" + (f", {outcome.out / 'pareto.png'}"
                                                 if outcome.plotted else ""), flush=True)
    if outcome.failed:
        print("failed trials (see trials/<id>/error.txt; rerun to retry): "
              + ", ".join(outcome.failed), file=sys.stderr)
    return 0 if done == len(outcome.trials) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.harness.sweep NAME ...`` (the arguments after ``sweep``)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m experiments sweep",
        description="Random or grid search over an experiment's search space; resumable."))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
