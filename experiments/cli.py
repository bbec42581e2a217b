"""Command line: ``python -m experiments list | run NAME | sweep NAME | demo | diagnose CKPT``.

``demo`` trains the CNN of U. Evci, *Detecting Dead Weights and Units in Neural
Networks*, MS thesis, NYU, 2018 (https://arxiv.org/abs/1806.06068; below: the
thesis) with and without MRS unit pruning (:mod:`experiments.tools.demo`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import experiments.catalog  # noqa: F401 - registers the built-in experiments
from experiments.harness.registry import EXPERIMENTS, load_plugins, parse_overrides
from experiments.harness.run import run_experiment

__all__ = ["main"]


def _cmd_list(args) -> int:
    load_plugins(args.plugin)
    names = sorted(n for n in EXPERIMENTS if not n.startswith("_"))
    width = max((len(n) for n in names), default=10)
    for name in names:
        print(f"{name:<{width}}  {EXPERIMENTS[name].summary}")
    return 0


def _cmd_run(args) -> int:
    load_plugins(args.plugin)
    overrides = parse_overrides(args.set)
    out = args.out
    results = run_experiment(args.name, overrides, quick=args.quick, out_dir=out,
                             progress=None)
    final = results.get("final", {})
    shown = {k: final[k] for k in ("test_acc", "test_acc_at_best_val", "params", "macs")
             if k in final}
    print(f"{args.name}: done in {results['wall_time_s']:.1f}s; "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in shown.items()))
    return 0


def _cmd_demo(args) -> int:
    overrides = parse_overrides(args.set)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.threads is not None:
        overrides["threads"] = args.threads
    out = Path(args.out if args.out is not None
               else Path("runs") / ("demo-quick" if args.quick else "demo"))
    results = run_experiment("demo", overrides, quick=args.quick, out_dir=out,
                             progress=args.progress)
    r = results["ratios"]
    seconds = results["wall_time_s"]
    took = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.1f} s"
    print(f"\nDemo done in {took}. Unit pruning kept "
          f"{100 * r['params']:.1f}% of the parameters and {100 * r['macs']:.1f}% of the MACs "
          f"({r['test_acc_points']:+.2f} accuracy points, "
          + (f"{r['speedup']:.2f}x faster" if r["speedup"] >= 1 else f"{1 / r['speedup']:.2f}x slower")
          + f" at batch {results['timing']['batch']}).")
    print(f"Written to {out}/:")
    for name, what in (("summary.csv", "the table above"),
                       ("pruning.png", "loss and fraction pruned over steps, widths per round "
                                       "(thesis Fig. 4.6)"),
                       ("curves.png", "test accuracy and parameters per epoch, both runs"),
                       ("results.json", "all numbers: rounds, histories, timings"),
                       ("pruned/checkpoint.pt", "the pruned network (unpruned/ holds the other)")):
        print(f"  {name:<22} {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments",
                                     description="Reproductions, sweeps and tools.")
    parser.add_argument("--plugin", action="append", default=[],
                        help="extra module that registers experiments (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the experiments, one line each")
    p_list.set_defaults(func=_cmd_list)
    p_run = sub.add_parser("run", help="run one experiment")
    p_run.add_argument("name")
    p_run.add_argument("--quick", action="store_true", help="a seconds-long version")
    p_run.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting (JSON values), repeatable")
    p_run.set_defaults(func=_cmd_run)
    p_demo = sub.add_parser(
        "demo", help="the main job: train the thesis CNN on Fashion-MNIST with and without "
                     "MRS unit pruning; print and plot before/after")
    p_demo.add_argument("--quick", action="store_true",
                        help="a seconds-long version on a few hundred samples")
    p_demo.add_argument("--out", default=None,
                        help="output folder (default runs/demo, runs/demo-quick with --quick)")
    p_demo.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the Fashion-MNIST IDX files (default: "
                             "$FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist, the cache, "
                             "a download)")
    p_demo.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads (default: one per core; 1 is faster on a machine "
                             "busy with other work)")
    p_demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (JSON values), repeatable")
    p_demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: when stderr is a terminal)")
    p_demo.set_defaults(func=_cmd_demo)
    from experiments.tools import diagnose
    p_diag = sub.add_parser(
        "diagnose", help="dead, dormant and frozen units of a checkpoint on a data set; "
                         "optionally remove them exactly (--remove-dead OUT.pt)")
    diagnose.add_arguments(p_diag)
    p_diag.set_defaults(func=diagnose.run_from_args)
    try:
        from experiments.harness import sweep
    except ImportError:  # pragma: no cover - sweep is part of the package
        sweep = None
    if sweep is not None and hasattr(sweep, "add_arguments"):
        p_sweep = sub.add_parser("sweep", help="random or grid search over an experiment")
        sweep.add_arguments(p_sweep)
        p_sweep.set_defaults(func=lambda a: sweep.run_from_args(a))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
