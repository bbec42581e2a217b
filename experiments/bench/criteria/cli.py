"""``python -m experiments.bench.criteria``: run the benchmark's phases in order, or one of them.

Every phase is resumable: killed and rerun with the same arguments, it runs only the cells that
are not written yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from experiments.bench.criteria.rule import select
from experiments.bench.criteria.setting import network
from experiments.bench.criteria.store import PHASES, Store
from experiments.bench.criteria.trial import run_trial, seeds_of, setting_named
from experiments.harness import atomic
from experiments.harness.subruns import run_jobs

__all__ = ["main", "parse_args", "run_phase", "run_select", "STEPS", "EXTRA_STEPS"]

#: the steps of a whole run, in order (``select`` between the screen and the held-out seeds;
#: ``timing`` and ``report`` read the cells)
STEPS = ("screen-oneshot", "screen-modes", "select", "heldout", "width", "timing", "report")
#: steps run only when asked (post hoc)
EXTRA_STEPS = ("diagnostic",)

#: the cost of a network's trial relative to the others, to start the slowest first
_COST = {"resnet20": 4, "vit": 2, "cnn": 2, "mlp": 1}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench.criteria",
        description="Which saliency prunes best: every unit criterion of ours, each way of "
                    "applying it, against Torch-Pruning and torch.nn.utils.prune on four "
                    "networks, with the method chosen on development seeds and judged on "
                    "held-out ones.")
    p.add_argument("--quick", action="store_true",
                   help="tiny networks on generated images (seconds; the test suite's mode)")
    p.add_argument("--root", default=None,
                   help="the benchmark's folder (default runs/bench-criteria, with --quick "
                        "runs/bench-criteria-quick)")
    p.add_argument("--step", choices=("all",) + STEPS + EXTRA_STEPS, default="all",
                   help="run one step (default: all, in order; diagnostic, post hoc, only "
                        "when asked)")
    p.add_argument("--networks", default=None,
                   help="comma-separated networks (default: every network of the setting)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, each with one torch thread (default 1)")
    p.add_argument("--docs", default=None, metavar="DIR",
                   help="the report step also writes its page and figures into DIR")
    return p.parse_args(argv)


def run_phase(root: str, setting: str, phase: str, networks: Sequence[str], workers: int,
              log) -> list[dict]:
    """Every (network, seed) trial of ``phase``, the slowest networks first."""
    s = setting_named(setting)
    order = sorted(networks, key=lambda n: -_COST.get(n, 1))
    jobs = [{"root": root, "network_name": n, "seed": seed, "phase": phase,
             "setting": setting} for n in order for seed in seeds_of(s, phase)]
    t0 = time.perf_counter()
    out = run_jobs(run_trial, jobs, workers)
    ran = sum(r["ran"] for r in out)
    log(f"{phase}: {ran} cells run, {sum(r['cells'] for r in out) - ran} already there "
        f"({time.perf_counter() - t0:.0f} s)")
    return out


def run_select(root: str, setting: str, log, networks: Sequence[str] | None = None) -> dict:
    """Apply the rule to the development seeds of ``networks`` (default: all) and write
    ``selection.json`` (atomically)."""
    store = Store(root, setting_named(setting))
    selection = select(store, networks)
    path = Path(root) / "selection.json"
    if path.exists() and atomic.read_json(path) != atomic.to_jsonable(selection):
        ran = [p for ph in ("heldout", "width")
               for p in (Path(root) / "cells" / ph).rglob("*.json")]
        if ran:
            raise RuntimeError(f"{path} already holds another selection and {len(ran)} held-out "
                               f"cells ran with it; the selection is made once, before the "
                               f"held-out seeds (delete the held-out cells to select again)")
    atomic.write_json(path, selection)
    for name, part in selection["networks"].items():
        log(f"select {name}: pairs {part['pairs']}, recommended {part['recommended']}")
    log(f"select overall: {selection['overall']}")
    return selection


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setting = "quick" if args.quick else "default"
    s = setting_named(setting)
    root = args.root or ("runs/bench-criteria-quick" if args.quick else "runs/bench-criteria")
    networks = [n.name for n in s.networks] if args.networks is None else \
        [network(s, n.strip()).name for n in args.networks.split(",")]
    Store(root, s)  # refuse a folder of another setting before any work

    def log(msg: str) -> None:
        print(msg, flush=True)

    steps = STEPS if args.step == "all" else (args.step,)
    for step in steps:
        if step in PHASES:
            run_phase(root, setting, step, networks, args.workers, log)
        elif step == "select":
            run_select(root, setting, log, networks)
        elif step == "timing":
            from experiments.bench.criteria.timing import run_timing
            run_timing(root, setting, networks, log)
        elif step == "diagnostic":
            from experiments.bench.criteria.diagnostic import run_diagnostic
            run_diagnostic(root, setting, networks, log)
        elif step == "report":
            from experiments.bench.criteria.report import write_report
            write_report(root, setting, log, docs=args.docs)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
