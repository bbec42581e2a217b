"""Cost of dead-unit detection as a multiple of one forward+backward pass over the same data.

``python -m experiments.bench.diagnose [--quick] [--repeats N] [--samples N] [--batch N]
[--exact-mrp]``

Model: an MLP 784-1024-1024-10 (``experiments.harness.models.mlp``) on 10,000 random
28x28 inputs (cost does not depend on the values) in batches of 1000. The
reference is one plain forward+backward pass over those 10,000 samples
(``loss.backward()`` filling every parameter's ``.grad``, batch by batch);
the case is :func:`saliency.find_dead_units` with every criterion but exact
MRP (tracing, the one-pass statistics, the shifted moments, the weight
criteria and the report). Both run in eval mode. They are timed alternately,
and the fastest of the repeats of each is kept: on a shared machine the
speed drifts, and alternating compares both under the same load. Target:
the ratio is at most 3. ``--exact-mrp`` adds a row for the exact
MRP pass of all 2,048 hidden units (information only).

Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from experiments.harness.models import build_model
from experiments.harness.tables import format_table
from experiments.harness.timing import alternating
from saliency import MRP, find_dead_units

TARGET = 3.0


def main(argv: list[str] | None = None, file=None, widths=(784, 1024, 1024, 10)) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.diagnose")
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 2 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--exact-mrp", action="store_true",
                        help="also time the exact MRP of every hidden unit (slow)")
    args = parser.parse_args(argv)
    out = file or sys.stdout
    samples = 1000 if args.quick else args.samples
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(0)
    model = build_model("mlp", widths=list(widths)).eval()
    side = int(round(widths[0] ** 0.5))
    shape = (1, side, side) if side * side == widths[0] else (widths[0],)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((samples, *shape), generator=g)
    y = torch.randint(0, widths[-1], (samples,), generator=g)
    data = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, samples, args.batch)]

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        for xb, yb in data:
            F.cross_entropy(model(xb), yb, reduction="sum").backward()

    reports = []

    def diagnose():
        reports.append(find_dead_units(model, data))

    t_ref, t_case = alternating(fwd_bwd, diagnose, repeats)
    model.zero_grad(set_to_none=True)
    ratio = min(t_case) / min(t_ref)
    rows = [{"case": "forward+backward", "seconds": min(t_ref), "ratio": 1.0,
             "samples": t_ref},
            {"case": "find_dead_units (all criteria but exact MRP)", "seconds": min(t_case),
             "ratio": ratio, "samples": t_case}]
    if args.exact_mrp:
        r_ref, r_case = alternating(fwd_bwd, lambda: MRP().score(model, data), 1, warmup=0)
        rows.append({"case": "exact MRP, every hidden unit (extra pass)", "seconds": r_case[0],
                     "ratio": r_case[0] / r_ref[0], "samples": r_case})
    units = sum(reports[-1].num_units.values())
    print(f"dead-unit detection cost (torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads): MLP {'-'.join(map(str, widths))}, {samples:,} samples in batches of "
          f"{args.batch}, {units} units, best of {repeats} alternated runs", file=out)
    print(format_table(rows, {"case": "case", "seconds": "seconds", "ratio": "x fwd+bwd"},
                       formats={"seconds": ".3f", "ratio": ".2f"}), file=out)
    result = {"benchmark": "diagnose", "model": f"mlp {'-'.join(map(str, widths))}",
              "samples": samples, "batch": args.batch, "repeats": repeats,
              "threads": torch.get_num_threads(), "rows": rows,
              "ratios": {"find_dead_units_over_fwd_bwd": ratio},
              "target": f"<= {TARGET}", "target_met": ratio <= TARGET}
    print(json.dumps(result), file=out)
    return result


if __name__ == "__main__":
    main()
