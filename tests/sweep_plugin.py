"""Test-only experiments for tests/test_sweep.py (loaded with ``plugins=["sweep_plugin"]``).

``_tiny`` computes fake, deterministic results from ``lr`` and ``width`` in
microseconds. Each invocation writes a marker file into ``marker_dir`` (so a
test counts the runs). The trial index is the leading number of the trial
folder's name (``0002-1a2b3c4d``); the invocation whose index equals
``$SWEEP_TINY_CRASH_AT`` (else the ``crash_at`` setting) kills its process
with ``os._exit(1)`` -- a real kill, no cleanup -- and the one whose index
equals ``fail_at`` raises. The environment variable lets a test crash a run
without changing the sweep's arguments, which a resumed sweep must repeat.

``_where`` reports the process it ran in and whether that process had imported
``experiments.catalog``: a spawned worker must find the experiment without it.
"""

from __future__ import annotations

import math
import os
import sys
import time

from experiments.harness.registry import register

TINY_SPACE = {"lr": ("loguniform", 1e-3, 1e-1), "width": ("int", 2, 64)}


def tiny_acc(lr: float, width: int) -> float:
    """Fake accuracy: best at lr = 1e-2, growing with width."""
    return round(0.9 - 0.05 * abs(math.log10(lr) + 2.0) - 1.0 / width, 10)


def _index(ctx) -> int:
    head = ctx.out_dir.name.split("-")[0]
    return int(head) if head.isdigit() else -1


@register("_tiny", "test-only: fake accuracy from lr and width",
          defaults={"lr": 0.1, "width": 4, "seed": 0, "crash_at": -1, "fail_at": -1,
                    "marker_dir": ""},
          quick={"width": 3}, space=TINY_SPACE, source="tests")
def tiny(cfg, ctx):
    index = _index(ctx)
    if cfg["marker_dir"]:
        os.makedirs(cfg["marker_dir"], exist_ok=True)
        marker = f"{ctx.out_dir.name}.{os.getpid()}.{time.time_ns()}"
        with open(os.path.join(cfg["marker_dir"], marker), "w") as fh:
            fh.write(f"{cfg['lr']} {cfg['width']} {cfg['seed']}\n")
    if index == int(os.environ.get("SWEEP_TINY_CRASH_AT", cfg["crash_at"])):
        time.sleep(0.2)  # lets concurrent trials finish first: the crash is attributable
        os._exit(1)
    if index == cfg["fail_at"]:
        raise RuntimeError(f"trial {index} fails on purpose")
    ctx.write_json("partial.json", {"index": index})
    return {"final": {"test_acc": tiny_acc(cfg["lr"], cfg["width"]),
                      "params": cfg["width"] * 10, "seed_seen": cfg["seed"]},
            "history": [{"epoch": 0}]}


#: one axis of every distribution kind; results without a "final" section
KINDS_SPACE = {"a": ("uniform", 0.0, 1.0), "b": ("loguniform", 1e-4, 1.0), "c": ("int", 1, 2),
               "d": ("logint", 1, 1000), "e": ("choice", ["x", "y", [1, 2]])}


@register("_kinds", "test-only: every distribution kind, no seed setting",
          defaults={"a": 0.5, "b": 0.1, "c": 1, "d": 10, "e": "x"}, space=KINDS_SPACE,
          source="tests")
def kinds(cfg, ctx):
    return {"score": cfg["a"] + cfg["c"], "label": str(cfg["e"]), "nested": {"skip": 1}}


@register("_where", "test-only: where the trial ran and what that process had imported",
          defaults={"width": 4, "seed": 0}, space={"width": ("int", 2, 64)}, source="tests")
def where(cfg, ctx):
    return {"final": {"test_acc": tiny_acc(1e-2, cfg["width"]), "params": cfg["width"] * 10,
                      "pid": os.getpid(),
                      "catalog_imported": "experiments.catalog" in sys.modules}}
