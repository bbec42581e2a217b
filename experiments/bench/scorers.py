"""Cost of every scorer as a multiple of one plain forward+backward pass.

``python -m experiments.bench.scorers [--quick] [--repeats N]``

Models: an MLP 784-512-512-10 at batch 256 and the thesis CNN (the CNN of U. Evci,
"Detecting Dead Weights and Units in Neural Networks", MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068, App. C.1; 20,522 parameters) at batch 1000, random inputs
(cost does not depend on the values). For each model the reference is one plain
forward+backward pass (``loss.backward()`` filling every parameter's ``.grad``), timed in the
same run; each scorer's time is divided by it. Each case is timed alternately with its
reference, and the fastest of the repeats of each is kept (the machine's speed drifts;
alternating compares both under the same load). Targets:

* ``mrs`` (with ``taylor`` and ``dormancy`` from the same pass): <= 1.3
* exact ``mrp`` for all units: <= 50 (a one-forward-per-unit loop costs ~200)
* one Hessian-vector product (what ``taylor2``/``hessian`` add): <= 3
* exact ``loss_change`` over the 200 weights of the thesis CNN's ``conv1``:
  >= 20x faster than one forward pass per weight

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
from pruners import prepare_for
from saliency import SCORERS, trace
from saliency.base import preserved
from saliency.hvp import hvp
from saliency.unit_stats import unit_statistics

TARGETS = {"mrs_pass": ("<=", 1.3), "mrp_all_units": ("<=", 50.0), "hvp": ("<=", 3.0),
           "loss_change_conv1_speedup": (">=", 20.0)}


def _paired(ref, case, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Best-of-``repeats`` times of ``ref`` and ``case``, measured alternately."""
    t_ref, t_case = alternating(ref, case, repeats, warmup)
    return min(t_ref), min(t_case)


def _setup(name: str, quick: bool):
    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", widths=[784, 512, 512, 10])
        batch = 64 if quick else 256
    else:
        model = build_model("thesis_cnn")
        batch = 200 if quick else 1000
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return model, [(x, y)]


def measure(name: str, repeats: int, quick: bool) -> list[dict]:
    model, data = _setup(name, quick)
    x, y = data[0]
    model.eval()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()

    def fwd():
        with torch.no_grad():
            model(x)

    t_fb, _ = _paired(fwd_bwd, fwd_bwd, repeats)
    model.zero_grad(set_to_none=True)
    rows = [{"model": name, "case": "forward+backward", "seconds": t_fb, "ratio": 1.0}]

    def row(case, fn, reps, note="", ref=fwd_bwd):
        t_ref, t = _paired(ref, fn, reps)
        model.zero_grad(set_to_none=True)
        rows.append({"model": name, "case": case, "seconds": t, "ratio": t / t_ref,
                     "note": note})
        return t_ref, t

    graph = trace(model, x[:1])
    layers = graph.prunable

    def stats_pass():
        with preserved(model):
            unit_statistics(model, graph, layers, data, F.cross_entropy,
                            stats=["mrs", "taylor", "dormancy", "apoz"])

    row("mrs_pass", stats_pass, repeats, "mrs, taylor, dormancy, apoz, moments in one pass")
    for sname in sorted(SCORERS):
        cls = SCORERS[sname]
        kwargs = {}
        if sname == "loss_change":
            kwargs["params"] = ["fc3.weight"] if name == "mlp" else ["conv1.weight"]
        scorer = cls(**kwargs)
        scored = prepare_for(cls, model, x[:1])  # switches / tri-state ReLUs if it reads them
        reps = max(1, repeats // 2) if sname in ("mrp", "loss_change") else repeats
        row(f"scorer:{sname}", lambda: scorer.score(scored, data), reps)
        if sname == "mrp":
            units = sum(graph.producers[n].num_units for n in layers)
            rows.append(dict(rows[-1], case="mrp_all_units", note=f"{units} units"))
    params = {n: p for n, p in model.named_parameters()}
    vec = {n: torch.randn_like(p) for n, p in params.items()}
    row("hvp", lambda: hvp(model, params, vec, data, F.cross_entropy), repeats)
    if name == "thesis_cnn":
        n_w = model.conv1.weight.numel()
        lc = SCORERS["loss_change"](params=["conv1.weight"])
        t_f, t = _paired(fwd, lambda: lc.score(model, data), max(2, repeats // 2))
        rows.append({"model": name, "case": "loss_change_conv1_speedup", "seconds": t,
                     "ratio": n_w * t_f / t,
                     "note": f"{n_w} weights; one forward {t_f * 1e3:.2f} ms each"})
    return rows


def main(argv: list[str] | None = None, file=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.scorers")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = file or sys.stdout
    repeats = 2 if args.quick else args.repeats
    rows = []
    for name in ("mlp", "thesis_cnn"):
        rows += measure(name, repeats, args.quick)
    print(f"scorer costs (torch {torch.__version__}, {torch.get_num_threads()} threads)", file=out)
    print(format_table(rows, {"model": "model", "case": "case", "seconds": "ms",
                              "ratio": "x fwd+bwd", "note": "note"},
                       formats={"seconds": lambda v: f"{v * 1e3:.2f}", "ratio": ".2f"},
                       missing=""), file=out)
    met = {}
    for case, (op, bound) in TARGETS.items():
        vals = [r["ratio"] for r in rows if r["case"] == case]
        ok = all(v <= bound if op == "<=" else v >= bound for v in vals) and bool(vals)
        met[case] = {"values": vals, "target": f"{op} {bound}", "met": ok}
    result = {"benchmark": "scorers", "rows": rows, "targets": met,
              "targets_met": all(m["met"] for m in met.values())}
    print(json.dumps(result), file=out)
    return result


if __name__ == "__main__":
    main()
