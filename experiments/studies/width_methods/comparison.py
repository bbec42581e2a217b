"""One network, four ways to learn its width: the shared comparison table.

``width-methods`` starts every method from the same LeNet-300-100
(784-300-100-10, :func:`experiments.harness.models.mlp`) on Fashion-MNIST: the same
seed (so the same initial weights), the same data order, and the same
training (Adam, learning rate 1e-3, batch 128, 15 epochs). The methods, each
over a grid of three strengths:

* ``shrinknets`` -- ShrinkNets (*ShrinkNets: Learning Network Size while
  Training*, 2018 draft, public as G. Leclerc, M. Vartak, R. Castro
  Fernandez, T. Kraska, S. Madden, *Smallify: Learning Network Size while
  Training*, https://arxiv.org/abs/1806.03723 -- below: the ShrinkNets paper
  -- and its earlier draft, *Learning Network Size while Training with
  ShrinkNets*, 2018 -- below: the ShrinkNets draft): a ``max(0, theta)``
  switch after each hidden layer
  (:func:`pruners.insert_switches`, ``theta ~ U[0, 1]``), the loss ``L +
  lam ||g||_1 + lam2 ||theta||_2^2``, and a
  :class:`pruners.shrinknets.GarbageCollector` with ``Threshold(0)`` that
  removes a unit as soon as its gate is exactly 0 (every ``gc_every`` steps;
  :class:`experiments.harness.callbacks.ShrinkNetsCallback`). The switches are folded
  into the weights at the end (:func:`pruners.shrinknets.fold_switches`).
* ``group-sparsity`` -- J. M. Alvarez and M. Salzmann, *Learning the Number of
  Neurons in Deep Networks*, NeurIPS 2016
  (https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks;
  below: Alvarez & Salzmann 2016):
  the group lasso (``alpha = 0``) on every hidden neuron's ``[w_n, b_n]``,
  ``gamma = sum_l beta_l sqrt(P_l) sum_n ||theta_l^n||_2``, by the proximal
  step after every Adam step (:class:`experiments.harness.callbacks.GroupSparsityCallback`,
  ``t`` = the learning rate), the first layer at ``gs_first_ratio * beta``
  ("smaller strengths on the first layers"); the zero groups are removed at
  the end (:func:`pruners.remove_zero_groups`). After Adam the proximal step
  is the usual heuristic, not exact proximal SGD: Adam moves a coordinate by
  about ``lr`` per step, and a group that is zero stays zero while its Adam
  update has an RMS per coordinate of at most ``beta``, so ``beta`` is a
  fraction of Adam's step, not a gradient norm.
* ``tristate`` -- tri-state ReLUs (S. Srinivas and R. V. Babu, *Learning Neural
  Network Architectures using Backpropagation*, BMVC 2016,
  https://arxiv.org/abs/1511.05497; below: Srinivas & Babu 2016)
  trained as the ``tristate-relu`` reproduction trains them (straight-through
  gates, ``lam_b = 3e-3``, ``depth_weight = 0.01``), finalized by
  :func:`pruners.tristate.finalize_tristate` (off units removed, linear layers
  merged), over a grid of ``lam_m``.
* ``mrs`` -- MRS unit pruning (Sec. 4.2 of U. Evci, *Detecting Dead Weights and
  Units in Neural Networks*, MS thesis, NYU, 2018,
  https://arxiv.org/abs/1806.06068; below: Evci 2018):
  ``UnitPruner("mrs", schedule, replacement="mean", remove=True)`` through
  :class:`experiments.harness.callbacks.PrunerCallback`, on the thesis's Ch. 4 schedule
  shape (1/6, 1/3, 2/3 and all of the final fraction of every layer's units
  gone after epochs 2, 3, 4, 5), over a grid of final fractions.

plus the unregularized ``baseline``. Every final network is converted to the
plain MLP at its widths (:func:`as_mlp`, checked to give the same logits),
saved as ``final.pt`` (loadable with
:func:`experiments.harness.checkpoint.model_from_checkpoint`) and evaluated on
validation and test. For each method the smallest network whose validation
accuracy is within ``select_within`` (0.5 points) of the baseline's
validation accuracy is the method's "matched accuracy" network
(:func:`experiments.harness.subruns.select_matched`); test accuracy is only reported.

Outputs: ``table.csv`` (one row per method at matched accuracy, and the
baseline: setting, parameters, MACs, test accuracy, change against the
baseline, widths), ``points.csv`` (every grid point), ``results.json``,
``accuracy_vs_params.png``; each sub-run folder has ``settings.json``, a
``checkpoint.pt`` written every epoch (a killed run resumes), ``history.csv``,
``final.pt`` and ``point.json``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from experiments.harness import atomic
from experiments.harness.callbacks import (GroupSparsityCallback, PrunerCallback,
                                           ShrinkNetsCallback, TriStateCallback)
from experiments.harness.checkpoint import save_checkpoint
from experiments.harness.models import build_model, mlp
from experiments.harness.plots import log_count_axis
from experiments.harness.registry import register
from experiments.harness.run import RunContext
from experiments.harness.subruns import check_folder, load_data_cached, run_jobs, select_matched
from experiments.harness.training import TrainConfig, Trainer, evaluate
from pruners import (ProximalGroupSparsity, UnitPruner, count_macs, count_params, group_layout,
                     remove_zero_groups, schedules)
from pruners.shrinknets import GarbageCollector, Threshold, fold_switches, insert_switches
from pruners.tristate import finalize_tristate, insert_tristate

__all__ = ["METHODS", "as_mlp", "mrs_schedule", "train_method"]

#: method -> (the grid's setting in the config, the name of the swept value): ShrinkNets
#: (the ShrinkNets paper and draft), group sparsity (Alvarez & Salzmann 2016), tri-state
#: ReLU (Srinivas & Babu 2016), MRS unit pruning (Evci 2018)
METHODS = {"shrinknets": ("sn_lam", "lam"), "group-sparsity": ("gs_beta", "beta"),
           "tristate": ("ts_lam_m", "lam_m"), "mrs": ("mrs_final", "final")}

_DEFAULTS = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
             "data_seed": 0, "seed": 0, "widths": [784, 300, 100, 10],
             "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 15,
             "momentum": 0.0, "weight_decay": 0.0, "lr_rule": "constant",
             "eval_batch_size": 2000, "max_batches": None,
             "sn_lam": [1e-3, 1.7e-3, 3e-3], "sn_lam2": 1e-6, "sn_gc_every": 50,
             "gs_beta": [0.015, 0.025, 0.035], "gs_first_ratio": 0.4,
             "ts_lam_m": [0.9, 0.95, 1.0], "ts_lam_b": 3e-3, "ts_depth_weight": 0.01,
             "ts_threshold": 0.5,
             "mrs_final": [0.5, 0.65, 0.8], "mrs_epochs": [2, 3, 4, 5],
             "mrs_score_samples": 1000, "mrs_score_batch": 500,
             "select_within": 0.005, "workers": 2}
_QUICK = {"limit": 384, "epochs": 6, "batch_size": 32, "eval_batch_size": 384, "lr": 0.02,
          "widths": [784, 48, 24, 10], "sn_lam": [1e-3, 0.1], "sn_gc_every": 4,
          "gs_beta": [0.01, 0.5], "ts_lam_m": [0.1, 30.0], "mrs_final": [0.5, 0.9],
          "mrs_score_samples": 128, "mrs_score_batch": 128, "workers": 1}
_FREE = ("data_dir", "eval_batch_size", "quick", "workers", "select_within")
_COMMON = ("dataset", "data_dir", "val_size", "limit", "data_seed", "seed", "widths",
           "optimizer", "lr", "batch_size", "epochs", "momentum", "weight_decay", "lr_rule",
           "eval_batch_size", "max_batches")


def mrs_schedule(final: float, epochs: Sequence[int]) -> schedules.table:
    """The thesis's Ch. 4 schedule shape scaled to ``final``.

    ``THESIS_UNITS`` is 10, 20, 40, 60% after epochs 2-5, i.e. 1/6, 1/3, 2/3
    and 1 of its final 60%; with four ``epochs`` the rounds remove
    ``final * (1/6, 1/3, 2/3, 1)`` of every layer's units (Evci 2018, Table 4.2).

    Example:
        >>> mrs_schedule(0.6, [2, 3, 4, 5]).points == schedules.THESIS_UNITS.points
        True
    """
    epochs = [int(e) for e in epochs]
    if len(epochs) != 4:
        raise ValueError(f"mrs_epochs needs four epochs (the thesis's four rounds), got {epochs}")
    shape = [p[1] / schedules.THESIS_UNITS.final for p in schedules.THESIS_UNITS.points]
    return schedules.table({e: round(float(final) * s, 12) for e, s in zip(epochs, shape)})


_ALLOWED = (nn.Linear, nn.ReLU, nn.Identity, nn.Flatten)


def as_mlp(model: nn.Module, check: torch.Tensor, *, atol: float = 1e-5) -> nn.Sequential:
    """The plain :func:`experiments.harness.models.mlp` at ``model``'s widths, with its weights.

    ``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` with the ``W_l, b_l``
    of ``model``'s Linear layers in order: the common form in which the
    comparison saves every method's final network.

    ``model`` must be a chain of Linear layers with ReLUs between them (plus
    Flatten and Identity modules: a finalized tri-state network, folded
    ShrinkNets, a network whose units were removed). The copy's logits on
    ``check`` are compared with ``model``'s; a difference over ``atol``
    raises ValueError (the model was not such a chain).
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    bad = sorted({type(m).__name__ for m in leaves if not isinstance(m, _ALLOWED)})
    if bad:
        raise ValueError(f"as_mlp: the model has layers other than Linear/ReLU/Flatten/"
                         f"Identity: {bad}")
    lin = [m for m in leaves if isinstance(m, nn.Linear)]
    widths = [lin[0].in_features] + [m.out_features for m in lin]
    net = mlp(widths)
    with torch.no_grad():
        for i, m in enumerate(lin, start=1):
            getattr(net, f"fc{i}").weight.copy_(m.weight)
            getattr(net, f"fc{i}").bias.copy_(m.bias)
    was = model.training
    model.eval()
    net.eval()
    with torch.no_grad():
        gap = float((model(check) - net(check)).abs().max())
    model.train(was)
    if not gap <= atol:
        raise ValueError(f"as_mlp: the plain MLP's logits differ by {gap:.3g} (> {atol})")
    return net


def _sub(method: str, value: float | None) -> str:
    return "baseline" if method == "baseline" else f"{method}-{METHODS[method][1]}={value:g}"


def _trainer(cfg, ctx, data, sub, model, callbacks, example) -> Trainer:
    trainer = Trainer(model, data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(cfg),
                      arch={"model": "mlp", "kwargs": {"widths": list(cfg["widths"])}},
                      callbacks=callbacks, checkpoint=ctx.path(f"{sub}/checkpoint.pt"),
                      progress=False, example_input=example)
    start = trainer.epoch
    history = trainer.fit()
    ctx.write_csv(f"{sub}/history.csv", history)
    if start < len(history):
        ctx.log(f"{sub}: trained epochs {start + 1}-{len(history)}; last epoch val "
                f"{history[-1]['val_acc']:.4f} test {history[-1]['test_acc']:.4f}, "
                f"params {history[-1]['params']:,}")
    return trainer


def _train_tristate(cfg: Mapping[str, Any], ctx: RunContext, data, sub: str,
                    common: Mapping[str, Any], value: float, example: torch.Tensor) -> tuple:
    """Tri-state ReLUs, trained as the tri-state reproduction trains its networks (the same
    model, gates, penalty and optimizer; kept here rather than imported, so the two studies
    stay independent), then finalized: ``(trainer, plain network, extra point entries)``."""
    run = {**common, "lam_m": float(value), "lam_b": float(cfg["ts_lam_b"]),
           "depth_weight": float(cfg["ts_depth_weight"]), "straight_through": True}
    check_folder(ctx, sub, run, _FREE)
    torch.manual_seed(int(cfg["seed"]))
    model = insert_tristate(build_model("mlp", widths=list(cfg["widths"])),
                            straight_through=True)
    callback = TriStateCallback(lam_b=run["lam_b"], lam_m=run["lam_m"],
                                depth_weight=run["depth_weight"])
    trainer = _trainer(run, ctx, data, sub, model, [callback], example)
    plain, report = finalize_tristate(trainer.model, example,
                                      threshold=float(cfg["ts_threshold"]))
    return trainer, plain, {"depth": dict(report.depth),
                            "merged": [list(p) for p in report.merged]}


def _settings(method: str, cfg: Mapping[str, Any], common: Mapping[str, Any],
              value: float | None) -> dict[str, Any]:
    """What a sub-run of ``method`` (not tri-state) trains with (its ``settings.json``)."""
    run = dict(common)
    if method == "shrinknets":
        run.update(lam=float(value), lam2=float(cfg["sn_lam2"]),
                   gc_every=int(cfg["sn_gc_every"]), switch="relu")
    elif method == "group-sparsity":
        run.update(alpha=0.0, beta=float(value), first_ratio=float(cfg["gs_first_ratio"]))
    elif method == "mrs":
        run.update(final=float(value), schedule_epochs=list(cfg["mrs_epochs"]),
                   score_samples=int(cfg["mrs_score_samples"]),
                   score_batch=int(cfg["mrs_score_batch"]))
    return run


def _with_method(method: str, cfg: Mapping[str, Any], model: nn.Module, value: float | None,
                 example: torch.Tensor) -> tuple[nn.Module, list, dict[str, Any]]:
    """The model to train for ``method`` (with switches for ShrinkNets), the callbacks that
    apply the method, and extra point entries: ``(model, callbacks, extra)``."""
    callbacks: list = []
    extra: dict[str, Any] = {}
    if method == "shrinknets":
        model = insert_switches(model, example, parametrization="relu", init="uniform")
        callbacks = [ShrinkNetsCallback(GarbageCollector(Threshold(0.0),
                                                         example_input=example),
                                        lam=float(value), lam2=float(cfg["sn_lam2"]), p=2,
                                        gc_every=int(cfg["sn_gc_every"]))]
    elif method == "group-sparsity":
        layers = list(group_layout(model, None, example_input=example))
        strengths = {n: float(value) * (float(cfg["gs_first_ratio"]) if i == 0 else 1.0)
                     for i, n in enumerate(layers)}
        extra = {"strengths": strengths}
        callbacks = [GroupSparsityCallback(ProximalGroupSparsity(model, strengths, 0.0),
                                           log_every=100)]
    elif method == "mrs":
        pruner = UnitPruner("mrs", mrs_schedule(float(value), cfg["mrs_epochs"]),
                            replacement="mean", remove=True)
        callbacks = [PrunerCallback(pruner, every="epoch",
                                    score_samples=int(cfg["mrs_score_samples"]),
                                    score_batch=int(cfg["mrs_score_batch"]),
                                    seed=int(cfg["seed"]))]
    return model, callbacks, extra


def _train_plain(method: str, cfg: Mapping[str, Any], ctx: RunContext, data, sub: str,
                 common: Mapping[str, Any], value: float | None,
                 example: torch.Tensor) -> tuple:
    """The baseline, ShrinkNets, group sparsity or MRS on the plain MLP, then its switches
    folded or its zero groups removed: ``(trainer, plain network, extra point entries)``."""
    run = _settings(method, cfg, common, value)
    check_folder(ctx, sub, run, _FREE)
    torch.manual_seed(int(cfg["seed"]))
    model = build_model("mlp", widths=list(cfg["widths"]))
    model, callbacks, extra = _with_method(method, cfg, model, value, example)
    trainer = _trainer(run, ctx, data, sub, model, callbacks, example)
    plain = trainer.model
    if method == "shrinknets":
        plain = fold_switches(plain, example)
    elif method == "group-sparsity":
        remove_zero_groups(plain, example_input=example)
    return trainer, plain, extra


def train_method(cfg: Mapping[str, Any], out_dir: str, method: str,
                 value: float | None = None) -> dict[str, Any]:
    """Train one grid point of ``method`` (or the ``"baseline"``), finalize it, evaluate it.

    ``value`` is the method's strength: ShrinkNets' ``lam`` in ``L + lam
    ||g||_1 + lam2 ||theta||_2^2`` (the ShrinkNets draft, eq. 2, 9); group
    sparsity's ``beta`` in ``sum_l beta_l sqrt(P_l) sum_n ||theta_l^n||_2``
    (Alvarez & Salzmann 2016); tri-state's ``lam_m`` in ``L + lam_b R_b +
    lam_m R_m`` (Srinivas & Babu 2016); MRS's final fraction of units removed
    per layer (Evci 2018, Sec. 4.2). Every run starts from
    ``torch.manual_seed(seed); mlp(widths)`` and the same data order.

    Returns the point (also written to ``<sub>/point.json``): validation and
    test accuracy, parameters, MACs and widths of the final plain MLP, saved
    as ``<sub>/final.pt``.
    """
    if method != "baseline" and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: baseline, {', '.join(METHODS)}")
    ctx = RunContext(out_dir, progress=False)
    sub = _sub(method, value)
    common = {k: cfg[k] for k in _COMMON}
    data = load_data_cached(cfg)
    example = data.train.tensors[0][:1]
    if method == "tristate":
        trainer, plain, extra = _train_tristate(cfg, ctx, data, sub, common, value, example)
    else:
        trainer, plain, extra = _train_plain(method, cfg, ctx, data, sub, common, value,
                                             example)
    check = data.val.tensors[0][:1000]
    net = as_mlp(plain, check)
    widths = [net.fc1.in_features] + [m.out_features for m in net if isinstance(m, nn.Linear)]
    save_checkpoint(ctx.path(f"{sub}/final.pt"), net, {"model": "mlp",
                                                       "kwargs": {"widths": widths}})
    bs = int(cfg["eval_batch_size"])
    val, test = evaluate(net, data.val, batch_size=bs), evaluate(net, data.test, batch_size=bs)
    history = trainer.history
    point = {"method": method, "setting": (None if method == "baseline"
                                           else f"{METHODS[method][1]}={value:g}"),
             "value": value, "sub": sub, "val_acc": val["acc"], "test_acc": test["acc"],
             "params": count_params(net), "macs": count_macs(net, example), "widths": widths,
             "trained_val_acc": history[-1]["val_acc"],
             "trained_test_acc": history[-1]["test_acc"],
             "train_time_s": sum(r["epoch_time_s"] for r in history), **extra}
    atomic.write_json(ctx.path(f"{sub}/point.json"), point)
    return point


_MARKERS = {"baseline": ("*", "k"), "shrinknets": ("o", "C0"), "group-sparsity": ("s", "C1"),
            "tristate": ("^", "C2"), "mrs": ("D", "C3")}


def _plot(ctx: RunContext, base: Mapping, by_method: Mapping, tol: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key in zip(axes, ("test_acc", "val_acc")):
        for method, e in by_method.items():
            m, c = _MARKERS[method]
            pts = e["points"]
            ax.scatter([p["params"] for p in pts], [100 * p[key] for p in pts], marker=m,
                       color=c, s=45, label=method)
            s = e["selected"]
            ax.scatter([s["params"]], [100 * s[key]], marker=m, s=240, facecolors="none",
                       edgecolors=c, lw=1.8)
            for p in pts:
                ax.annotate(p["setting"], (p["params"], 100 * p[key]), fontsize=6,
                            textcoords="offset points", xytext=(4, 3))
        ax.scatter([base["params"]], [100 * base[key]], marker="*", color="k", s=260,
                   label="unregularized", zorder=5)
        if key == "val_acc":
            ax.axhline(100 * (base["val_acc"] - tol), color="0.4", ls="--", lw=1,
                       label=f"baseline - {100 * tol:g} points")
        log_count_axis(ax)
        ax.set(xlabel="parameters of the final network",
               ylabel=("test" if key == "test_acc" else "validation") + " accuracy (%)",
               title=("LeNet-300-100 on Fashion-MNIST (circled: matched accuracy)"
                      if key == "test_acc" else "selection on validation"))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    ctx.save_figure(fig, "accuracy_vs_params.png")


@register("width-methods",
          "ShrinkNets, group sparsity, tri-state ReLU and MRS unit pruning from the same "
          "LeNet-300-100 (Fashion-MNIST, Adam, 15 epochs): smallest network of each within 0.5 "
          "validation points of the unregularized run",
          defaults=_DEFAULTS, quick=_QUICK,
          source="the ShrinkNets paper and draft, Alvarez & Salzmann 2016, Srinivas & Babu "
                 "2016, Evci 2018 (Sec. 4.2)")
def width_methods(cfg: dict, ctx: RunContext) -> dict:
    """Train the baseline and every method's grid; select each at matched accuracy; tabulate."""
    tol = float(cfg["select_within"])
    jobs = [{"method": "baseline"}]
    for method, (key, _) in METHODS.items():
        jobs += [{"method": method, "value": float(v)} for v in cfg[key]]
    ctx.log(f"width-methods: {len(jobs)} sub-runs, {cfg['workers']} worker(s)")
    # the slowest first (tri-state and group sparsity keep their width until the end), so
    # the workers finish together; the points come back in the order of ``jobs``
    slow = {"tristate": 0, "group-sparsity": 1, "baseline": 2, "shrinknets": 3, "mrs": 4}
    order = sorted(range(len(jobs)), key=lambda i: slow[jobs[i]["method"]])
    done = run_jobs(train_method, [{"cfg": cfg, "out_dir": str(ctx.out_dir), **jobs[i]}
                                   for i in order], int(cfg["workers"]))
    points = [p for _, p in sorted(zip(order, done))]
    base = points[0]
    for p in points:
        p["reduction"] = 1.0 - p["params"] / base["params"]
        p["test_change_points"] = 100 * (p["test_acc"] - base["test_acc"])
        p["val_change_points"] = 100 * (p["val_acc"] - base["val_acc"])
    by_method = {}
    for method in METHODS:
        pts = [p for p in points if p["method"] == method]
        by_method[method] = {"points": pts, "selected": select_matched(pts, base["val_acc"], tol)}
    table = [_table_row(base, base)]
    for method, e in by_method.items():
        s = e["selected"]
        row = _table_row(s, base)
        row["within_tolerance"] = bool(s["val_acc"] >= base["val_acc"] - tol)
        table.append(row)
        ctx.log(f"{method}: matched accuracy at {s['setting']}: {s['params']:,} params "
                f"({100 * s['reduction']:.1f}% fewer), widths {_w(s['widths'])}, test "
                f"{100 * s['test_acc']:.2f}% ({s['test_change_points']:+.2f} points), val "
                f"{s['val_change_points']:+.2f}"
                + ("" if row["within_tolerance"] else "  [no grid point within tolerance]"))
    table[0]["within_tolerance"] = True
    ctx.write_csv("table.csv", table)
    ctx.write_csv("points.csv", [_table_row(p, base) for p in points])
    _plot(ctx, base, by_method, tol)
    return {"baseline": base, "methods": by_method, "table": table, "select_within": tol,
            "widths": list(cfg["widths"]), "figures": ["accuracy_vs_params.png"]}


def _w(widths: Sequence[int]) -> str:
    return "-".join(str(v) for v in widths)


def _table_row(p: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    return {"method": p["method"], "setting": p["setting"] or "", "params": p["params"],
            "macs": p["macs"], "params_removed_pct": 100 * (1 - p["params"] / base["params"]),
            "val_acc": p["val_acc"], "test_acc": p["test_acc"],
            "test_change_points": 100 * (p["test_acc"] - base["test_acc"]),
            "val_change_points": 100 * (p["val_acc"] - base["val_acc"]),
            "widths": _w(p["widths"])}
