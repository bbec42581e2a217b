"""Tri-state ReLU reproduction: learned widths and depths (Srinivas & Babu 2016).

S. Srinivas and R. V. Babu, *Learning Neural Network Architectures using
Backpropagation*, BMVC 2016 (https://arxiv.org/abs/1511.05497; below:
Srinivas & Babu 2016), train a network whose hidden ReLUs are tri-state ReLUs
(:class:`saliency.tristate.TriStateReLU`) with the objective ``L + lam_b R_b +
lam_m R_m`` (:func:`pruners.tristate.tristate_penalty`), the gates clipped to
``[0, 1]`` after each step; then they binarize the gates, remove the units
whose width gate is 0, and merge the layers whose depth gate selects the
identity. They report, on MNIST with a LeNet-like network, smaller learned
architectures "without affecting prediction accuracy", and that the learned
depth stays about constant when the initial depth changes a little.

``tristate-relu`` runs, on Fashion-MNIST, for each network of ``networks``
(default LeNet-300-100 and an MLP with 4 hidden layers of 256):

* ``<net>/baseline/``: the plain ReLU network (no gates, no penalty);
* ``<net>/tristate-lam_m=<x>[-ste]/``: the same initialization with tri-state
  ReLUs (``w = 1, d = 0``: the same function at the start) and the penalty,
  for each ``lam_m`` of the grid, with straight-through gates (``-ste``:
  the forward pass sees the binarized gates) and, at ``real_valued_lam_m``,
  with the paper's real-valued gates;

both trained identically (Adam, ``lr``, ``batch_size``, ``epochs``, the same
data order). At the end the gated network is finalized
(:func:`pruners.tristate.finalize_tristate`: binarized gates, units with
``w = 0`` removed, identity layers merged) and evaluated on the test set. It
writes per network the learned widths and depths, parameters, MACs and test
accuracy of the three networks (baseline, gated before binarization,
finalized) into ``summary.csv`` and ``results.json``, the gates over
training into ``<net>/tristate-.../gates.csv`` and a figure ``widths.png``
(units per layer and depth gates over epochs). Per network the *selected*
point is the smallest finalized network within ``select_within`` (0.5
points) of the baseline's validation accuracy, chosen on validation. Each run
checkpoints every epoch and resumes when killed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from experiments.harness import atomic
from experiments.harness.callbacks import TriStateCallback
from experiments.harness.models import build_model
from experiments.harness.registry import register
from experiments.harness.run import RunContext, final_metrics, load_data
from experiments.harness.subruns import check_folder, select_matched
from experiments.harness.training import Callback, TrainConfig, Trainer, evaluate
from pruners import count_macs, count_params
from pruners.tristate import finalize_tristate, insert_tristate, tristates

__all__ = ["GateLog"]

_NETWORKS = {"lenet-300-100": [784, 300, 100, 10],
             "mlp-4x256": [784, 256, 256, 256, 256, 10]}
_DEFAULTS = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
             "data_seed": 0, "seed": 0, "networks": _NETWORKS,
             "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 15,
             "weight_decay": 0.0, "momentum": 0.0, "lr_rule": "constant",
             "eval_batch_size": 2000, "max_batches": None,
             "lam_b": 3e-3, "lam_m": [0.3, 0.5, 0.7, 1.0, 3.0], "depth_weight": 0.01,
             "straight_through": [True, False], "real_valued_lam_m": [0.3, 1.0, 3.0],
             "threshold": 0.5,
             "select_within": 0.005}
_QUICK = {"limit": 384, "epochs": 2, "batch_size": 32, "eval_batch_size": 256, "lr": 0.03,
          "lam_m": [0.0, 30.0], "straight_through": [True], "real_valued_lam_m": None,
          "networks": {"mlp-small": [784, 32, 16, 10], "mlp-4x16": [784, 16, 16, 16, 16, 10]}}
_FREE = ("data_dir", "eval_batch_size", "quick", "networks", "select_within",
         "real_valued_lam_m")


class GateLog(Callback):
    """Records every tri-state ReLU's live units (``w >= 1/2``), ``sum w`` and ``d`` per epoch."""

    def __init__(self):
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer, metrics) -> None:
        for name, m in tristates(trainer.model).items():
            w = m.width.detach()
            row = {"epoch": trainer.epoch, "layer": name, "units": int((w >= 0.5).sum()),
                   "width_sum": float(w.sum()), "depth": float(m.depth.detach()),
                   "binary_fraction": float(((w == 0) | (w == 1)).double().mean())}
            self.rows.append(row)
            metrics[f"units/{name}"] = row["units"]
            metrics[f"depth/{name}"] = row["depth"]

    def state_dict(self):
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state):
        self.rows = [dict(r) for r in state.get("rows", [])]


#: settings of the tri-state runs only (a baseline does not depend on them)
_GATE_KEYS = ("lam_b", "lam_m", "depth_weight", "straight_through", "threshold")


def _train(cfg, ctx, data, widths, sub: str, gated: bool) -> tuple[Trainer, GateLog | None]:
    mine = {k: v for k, v in cfg.items() if gated or k not in _GATE_KEYS}
    check_folder(ctx, sub, {**mine, "widths": widths, "gated": gated}, free=_FREE)
    torch.manual_seed(int(cfg["seed"]))
    model = build_model("mlp", widths=list(widths))
    callbacks: list[Callback] = []
    log = None
    if gated:
        model = insert_tristate(model, straight_through=bool(cfg["straight_through"]))
        log = GateLog()
        callbacks = [TriStateCallback(lam_b=float(cfg["lam_b"]), lam_m=float(cfg["lam_m"]),
                                      depth_weight=float(cfg["depth_weight"])), log]
    trainer = Trainer(model, data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(cfg),
                      arch={"model": "mlp", "kwargs": {"widths": list(widths)}},
                      callbacks=callbacks, checkpoint=ctx.path(f"{sub}/checkpoint.pt"),
                      progress=ctx.progress)
    if trainer.history and trainer.epoch < trainer.config.epochs:
        ctx.log(f"{sub}: resuming after epoch {trainer.epoch}")
    history = trainer.fit()
    ctx.write_csv(f"{sub}/history.csv", history)
    for row in history:
        extra = ""
        if gated:
            extra = "  units " + " ".join(str(row[k]) for k in row if k.startswith("units/")) \
                + "  d " + " ".join(f"{row[k]:.2f}" for k in row if k.startswith("depth/"))
        ctx.log(f"  {sub} epoch {row['epoch']:>2}  train loss {row['train_loss']:.4f}  val "
                f"{row['val_acc']:.4f}  test {row['test_acc']:.4f}{extra}")
    return trainer, log


def _size(model, example) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, example)}


def _plot(ctx: RunContext, logs: Mapping[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(2, len(logs), figsize=(5 * len(logs), 6.5), squeeze=False)
    for j, (net, rows) in enumerate(logs.items()):
        layers = sorted({r["layer"] for r in rows}, key=lambda s: (len(s), s))
        for k, layer in enumerate(layers):
            rs = [r for r in rows if r["layer"] == layer]
            e = [r["epoch"] for r in rs]
            axes[0, j].plot(e, [r["units"] for r in rs], marker="o", label=f"after {layer}")
            axes[1, j].plot(e, [r["depth"] for r in rs], marker="o", label=f"d of {layer}")
        axes[0, j].set(title=net, xlabel="epoch", ylabel="live units (w >= 1/2)")
        axes[1, j].set(xlabel="epoch", ylabel="depth gate d (1 = identity)", ylim=(-0.05, 1.05))
        axes[0, j].legend(fontsize=8)
        axes[1, j].legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure(fig, "widths.png")


@register("tristate-relu",
          "Srinivas & Babu 2016: tri-state ReLUs learn widths and depths of LeNet-300-100 and a "
          "4-hidden-layer MLP on Fashion-MNIST, vs the unregularized run from the same seed",
          defaults=_DEFAULTS, quick=_QUICK, source="Srinivas & Babu 2016 (tri-state ReLU)")
def tristate_relu(cfg: dict, ctx: RunContext) -> dict:
    """Train each network without and with tri-state ReLUs (each ``lam_m``); finalize; compare."""
    data = load_data(cfg)
    example = data.train.tensors[0][:1]
    nets = dict(cfg["networks"])
    lams = cfg["lam_m"] if isinstance(cfg["lam_m"], (list, tuple)) else [cfg["lam_m"]]
    sts = cfg["straight_through"]
    sts = [bool(v) for v in (sts if isinstance(sts, (list, tuple)) else [sts])]
    real = cfg.get("real_valued_lam_m")  # the real-valued gates at these only (None: all)
    grid = [(float(lam), st) for st in sts for lam in lams
            if st or real is None or float(lam) in {float(v) for v in real}]
    tol = float(cfg["select_within"])
    rows, out, logs = [], {}, {}
    for net, widths in nets.items():
        base, _ = _train(cfg, ctx, data, widths, f"{net}/baseline", gated=False)
        b = final_metrics(base.history)
        base_entry = {"test_acc": b["test_acc"], "val_acc": b["val_acc"],
                      **_size(base.model, example)}
        points = []
        for lam_m, st in grid:
            tag = f"lam_m={lam_m:g}" + ("-ste" if st else "")
            sub = f"{net}/tristate-{tag}"
            gated, log = _train({**cfg, "lam_m": lam_m, "straight_through": st}, ctx, data,
                                widths, sub, gated=True)
            logs[f"{net}, {tag}"] = log.rows
            ctx.write_csv(f"{sub}/gates.csv", log.rows)
            plain, report = finalize_tristate(gated.model, example,
                                              threshold=float(cfg["threshold"]))
            val = evaluate(plain, data.val, batch_size=int(cfg["eval_batch_size"]))
            test = evaluate(plain, data.test, batch_size=int(cfg["eval_batch_size"]))
            atomic.write_json(ctx.path(f"{sub}/finalized.json"), report.as_dict())
            torch.save(plain.state_dict(), ctx.path(f"{sub}/finalized_state.pt"))
            g = final_metrics(gated.history)
            point = {"network": net, "lam_m": lam_m, "straight_through": st,
                     "lam_b": float(cfg["lam_b"]), "depth_weight": float(cfg["depth_weight"]),
                     "gated_val_acc": g["val_acc"], "gated_test_acc": g["test_acc"],
                     "val_acc": val["acc"], "test_acc": test["acc"], **_size(plain, example),
                     "widths": dict(report.widths), "depth": dict(report.depth),
                     "merged": [list(p) for p in report.merged],
                     "linear_layers": sum(isinstance(m, torch.nn.Linear)
                                          for m in plain.modules()),
                     "reduction": base_entry["params"] / count_params(plain),
                     "acc_change_points": 100 * (test["acc"] - b["test_acc"])}
            points.append(point)
            rows.append({"network": net, "lam_m": lam_m, "straight_through": st,
                         "baseline_acc": b["test_acc"], "baseline_params": base_entry["params"],
                         "gated_acc": g["test_acc"], "finalized_val_acc": val["acc"],
                         "finalized_acc": test["acc"], "finalized_params": point["params"],
                         "finalized_macs": point["macs"], "reduction": point["reduction"],
                         "acc_change_points": point["acc_change_points"],
                         "widths": " ".join(str(v) for v in report.widths.values()),
                         "identity_layers": " ".join(k for k, d in report.depth.items() if d),
                         "merged": " ".join(f"{a}+{c}" for a, c in report.merged),
                         "linear_layers": point["linear_layers"]})
            ctx.log(f"{net} {tag}: baseline {100 * b['test_acc']:.2f}% "
                    f"({base_entry['params']:,} params); tri-state {100 * g['test_acc']:.2f}% "
                    f"gated, {100 * test['acc']:.2f}% finalized with {point['params']:,} params "
                    f"({point['reduction']:.2f}x fewer), widths {report.widths}, identity "
                    f"layers {[k for k, d in report.depth.items() if d == 1]}, merged "
                    f"{report.merged}")
        pick = dict(select_matched(points, b["val_acc"], tol))
        out[net] = {"widths": list(widths), "baseline": base_entry, "points": points,
                    "selected": pick}
        ctx.log(f"{net}: selected lam_m={pick['lam_m']:g}"
                f"{' straight-through' if pick['straight_through'] else ''} (smallest within "
                f"{100 * tol:g} validation points of the baseline): {pick['params']:,} params, "
                f"{100 * pick['test_acc']:.2f}% test ({pick['acc_change_points']:+.2f} points)")
    ctx.write_csv("summary.csv", rows)
    _plot(ctx, logs)
    return {"networks": out, "lam_b": cfg["lam_b"], "lam_m": list(lams),
            "straight_through": sts, "depth_weight": cfg["depth_weight"],
            "select_within": tol, "figures": ["widths.png"]}
