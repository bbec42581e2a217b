"""Group sparsity reproduction: learning the number of neurons (Alvarez & Salzmann 2016).

J. M. Alvarez and M. Salzmann, *Learning the Number of Neurons in Deep
Networks*, NeurIPS 2016
(https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks;
below: Alvarez & Salzmann 2016), put the parameters of each neuron in a
group, ``theta_l^n = [w_l^n, b_l^n]``, and train with the sparse group lasso

    gamma(Theta) = sum_l [ (1 - alpha) beta_l sqrt(P_l) sum_n ||theta_l^n||_2
                           + alpha beta_l ||theta_l||_1 ]

by proximal stochastic gradient descent: after each mini-batch gradient step
of size ``t`` every group becomes

    theta~ = (1 - t (1 - alpha) beta_l sqrt(P_l) / ||S(theta^, t alpha beta_l)||_2)_+
             * S(theta^, t alpha beta_l),        S(a, b) = sign(a) (|a| - b)_+

(:class:`pruners.ProximalGroupSparsity`, driven by
:class:`experiments.harness.callbacks.GroupSparsityCallback`). "When the learning steps
terminate, we remove the neurons whose parameters have gone to zero"
(:func:`pruners.remove_zero_groups`, exact: the model in eval mode computes
what it computed). They use ``alpha = 0`` (group lasso) and ``alpha = 0.5``
(sparse group lasso), and "a relatively small [beta] for the first few
layers, and a larger weight for the remaining layers", e.g. ``beta_l =
0.102`` for the first three layers and ``0.255`` for the rest; they report
up to 80% fewer parameters without accuracy loss.

``group-sparsity`` runs, on Fashion-MNIST, for each network of ``networks``
(the CNN of U. Evci, *Detecting Dead Weights and Units in Neural Networks*,
MS thesis, NYU, 2018, https://arxiv.org/abs/1806.06068 -- below: Evci 2018
or the thesis -- in its own setting, SGD 0.01, batch 32, 10 epochs; LeNet-5
with plain SGD 0.1, batch 128, 6 epochs, the rate multiplied by 0.1 after
epoch 4 (:class:`StepDecay`)):

* ``<net>/baseline/``: the unregularized run;
* ``<net>/alpha=<a>-beta=<b>/``: the same initialization and data order
  with the proximal step, for every ``alpha`` of ``alphas`` and every
  ``beta`` of the network's ``strengths``. ``beta`` is the strength of the
  later layers; the first ``first_layers`` grouped layers get ``first_ratio
  * beta`` (0.4 = 0.102 / 0.255, the paper's ratio).

A network's ``release_after: E`` (not in the paper, which keeps the penalty
to the end; added after the LeNet-5 target was missed with it) removes the
zero groups after epoch ``E`` and trains the remaining epochs without the
penalty (:class:`experiments.harness.callbacks.GroupSparsityCallback`), so the
surviving groups re-fit without its shrinkage within the same epoch budget;
those sub-runs are ``<net>/alpha=<a>-beta=<b>-release=<E>/``. Their
point's ``released`` holds the units removed at the release and the
parameters, penalty and accuracies of that epoch; its ``zero_groups`` and
``group_penalty`` describe the network at the end (no zero groups left, the
penalty of the refitted weights), so they do not compare with a run that
kept the penalty.

Several runs of this experiment (other seeds, other settings) are compared,
and averaged over their seeds, by :mod:`experiments.studies.group_sparsity.fronts`.

Plain SGD (no momentum) makes the step exactly proximal SGD, and ``beta``
keeps one meaning for every network: a group that is zero stays zero while
its mini-batch gradient satisfies ``||S(g, alpha beta)||_2 <= (1 - alpha)
beta sqrt(P)``, so ``beta`` is compared with the gradient norm per
``sqrt(P)`` of a group. At the end of training the zero groups are removed
(``shrunk.pt``, a checkpoint of the architecture at the learned widths),
and the shrunk network is evaluated again on validation and test. For each
``(network, alpha)`` the smallest shrunk network whose validation accuracy is
within ``select_within`` (0.5 points) of the baseline's is selected
(:func:`experiments.harness.subruns.select_matched`); test accuracy is only
reported. Outputs: ``summary.csv`` (every grid point and the baseline),
``results.json`` (all numbers, the selections, the LeNet-5 target :data:`TARGET`),
``accuracy_vs_params.png``; each sub-run has ``settings.json``,
``checkpoint.pt`` (every epoch: a killed run resumes), ``history.csv``,
``shrunk.pt`` and ``point.json``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from experiments.harness import atomic
from experiments.harness.callbacks import GroupSparsityCallback
from experiments.harness.checkpoint import save_checkpoint
from experiments.harness.models import build_model
from experiments.harness.plots import log_count_axis
from experiments.harness.registry import register
from experiments.harness.run import RunContext, final_metrics
from experiments.harness.subruns import check_folder, load_data_cached, run_jobs, select_matched
from experiments.harness.training import Callback, TrainConfig, Trainer, evaluate
from pruners import (ProximalGroupSparsity, count_macs, count_params, group_layout,
                     remove_zero_groups, zero_groups)

__all__ = ["PAPER", "TARGET", "target_met", "StepDecay", "layer_strengths", "shrunk_arch",
           "train_point", "max_logit_change"]

#: what the source (Alvarez & Salzmann 2016) reports, for results.json and the docs
PAPER = {"claim": "up to 80% fewer parameters without accuracy loss (ICDAR Dec3, group "
                  "sparsity: 82.35% fewer parameters); BNet^C on ImageNet: 12% fewer "
                  "neurons, 14% fewer parameters, +1.6% accuracy",
         "strengths": "beta_l = 0.102 for the first three layers, 0.255 for the rest "
                      "(ImageNet); 5.1 for the first layer, 10.2 for the rest (ICDAR)",
         "alphas": [0.0, 0.5]}

#: the reproduction's target for LeNet-5: removed fraction of the parameters
#: ``1 - params / params_baseline >= 0.5`` at a test accuracy loss of at most 0.5 points
TARGET = {"network": "lenet5", "min_reduction": 0.5, "max_loss_points": 0.5}


def target_met(reduction: float, test_change_points: float,
               target: Mapping[str, Any] = TARGET) -> bool:
    """Whether ``reduction >= min_reduction`` and ``test_change_points >= -max_loss_points``.

    Both edges are inclusive, with a margin of 1e-9 (as
    :func:`experiments.harness.subruns.select_matched`): a loss of exactly 50 of 10,000 test
    images is ``100 * (a - b)``, which floating point puts just below -0.5 for most
    accuracies ``a``, ``b``.

        >>> target_met(0.5, 100 * (0.8994 - 0.9044))
        True
    """
    return bool(reduction >= target["min_reduction"] - 1e-9
                and test_change_points >= -target["max_loss_points"] - 1e-9)


_NETWORKS = {
    # the thesis's setting (Evci 2018, Sec. 2.1): SGD 0.01, batch 32, 10 epochs
    "thesis-cnn": {"model": "thesis_cnn", "kwargs": {}, "optimizer": "sgd", "lr": 0.01,
                   "batch_size": 32, "epochs": 10, "strengths": [1.5e-4, 2.5e-4, 4e-4]},
    # plain SGD, so the proximal step is exact proximal SGD (see the module docstring);
    # the learning rate multiplied by 0.1 after epoch 4, as the paper's schedules do
    "lenet5": {"model": "lenet5", "kwargs": {}, "optimizer": "sgd", "lr": 0.1,
               "batch_size": 128, "epochs": 6, "lr_steps": {"4": 0.1},
               "strengths": [1e-4, 2e-4, 3e-4, 1e-3]},
}
_DEFAULTS = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
             "data_seed": 0, "seed": 0, "networks": _NETWORKS, "alphas": [0.0, 0.5],
             "first_ratio": 0.4, "first_layers": 1, "momentum": 0.0, "weight_decay": 0.0,
             "lr_rule": "constant", "eval_batch_size": 2000, "max_batches": None,
             "select_within": 0.005, "workers": 2}
_QUICK = {"limit": 384, "eval_batch_size": 384, "workers": 1,
          "networks": {
              "thesis-cnn": {"model": "thesis_cnn", "kwargs": {}, "optimizer": "sgd",
                             "lr": 0.1, "batch_size": 32, "epochs": 3,
                             "strengths": [1e-3, 0.03, 0.3]},
              "lenet5": {"model": "lenet5", "kwargs": {}, "optimizer": "sgd", "lr": 0.05,
                         "batch_size": 32, "epochs": 3, "lr_steps": {"2": 0.1},
                         "strengths": [1e-3, 0.03, 0.3]}}}
#: settings that do not change what a sub-run trains
_FREE = ("data_dir", "eval_batch_size", "quick", "workers", "select_within")
_TRAIN_KEYS = ("dataset", "data_dir", "val_size", "limit", "data_seed", "seed", "momentum",
               "weight_decay", "lr_rule", "eval_batch_size", "max_batches")


class StepDecay(Callback):
    """Multiply the learning rate by ``factor`` after the epochs of ``steps`` (``{epoch: factor}``).

    The schedule of Alvarez & Salzmann 2016: "the learning rate was
    initialized by 0.01 and then multiplied by 0.1". The rate after epoch
    ``e`` is ``lr_0 * prod_{e' <= e} factor_{e'}``; the proximal step reads it from the optimizer, so its threshold ``t (1 -
    alpha) beta_l sqrt(P_l)`` falls with it and the surviving groups re-fit
    with little shrinkage while the zeroed ReLU units stay zero. The rate is
    part of the trainer's checkpoint, so a resumed run continues on it.

    Example:
        >>> [StepDecay({"4": 0.1}).rate(0.1, e) for e in (0, 3, 4, 6)]
        [0.1, 0.1, 0.010000000000000002, 0.010000000000000002]
    """

    def __init__(self, steps: Mapping[Any, float]):
        self.steps = {int(k): float(v) for k, v in dict(steps or {}).items()}
        for e, f in self.steps.items():
            if e < 1 or not f > 0:
                raise ValueError(f"lr_steps needs epochs >= 1 and factors > 0, got {steps!r}")

    def rate(self, lr0: float, epoch: int) -> float:
        """The learning rate after ``epoch`` epochs."""
        out = float(lr0)
        for e in sorted(self.steps):
            if e <= epoch:
                out *= self.steps[e]
        return out

    def on_epoch_end(self, trainer, metrics) -> None:
        if trainer.epoch in self.steps:
            trainer.set_lr(self.rate(trainer.config.lr, trainer.epoch))


def layer_strengths(layers: list[str], beta: float, first_ratio: float, first_layers: int
                    ) -> dict[str, float]:
    """``{layer: beta_l}``: ``first_ratio * beta`` for the first ``first_layers`` layers, else
    ``beta`` (Alvarez & Salzmann 2016: "a relatively small one for the first few layers").

    Example:
        >>> layer_strengths(["conv1", "conv2", "fc1"], 1e-3, 0.4, 1)
        {'conv1': 0.0004, 'conv2': 0.001, 'fc1': 0.001}
    """
    if not beta >= 0 or not first_ratio >= 0:
        raise ValueError(f"beta and first_ratio must be >= 0, got {beta!r}, {first_ratio!r}")
    return {n: (first_ratio * beta if i < int(first_layers) else beta) * 1.0
            for i, n in enumerate(layers)}


def shrunk_arch(model_name: str, kwargs: Mapping[str, Any], widths: Mapping[str, int]
                ) -> dict[str, Any]:
    """The :data:`experiments.harness.models.MODELS` entry of a shrunk thesis CNN / LeNet-5.

    After the removal of Alvarez & Salzmann 2016, "a smaller network at test
    time": layer ``l`` keeps ``N_l - #{n :
    theta_l^n = 0}`` units (at least one).

    Both factories take ``widths=(conv1, conv2)`` and ``hidden=fc1``; the
    shrunk network is that architecture at the learned widths, so
    ``build_model(**arch)`` followed by ``load_state_dict`` rebuilds it.
    """
    if model_name not in ("thesis_cnn", "lenet5"):
        raise ValueError(f"no width map for model {model_name!r}")
    return {"model": model_name, "kwargs": {**dict(kwargs),
                                            "widths": [int(widths["conv1"]),
                                                       int(widths["conv2"])],
                                            "hidden": int(widths["fc1"])}}


def max_logit_change(a: torch.nn.Module, b: torch.nn.Module, dataset, batch: int) -> float:
    """``max |a(x) - b(x)|`` over ``dataset`` in eval mode (the exactness of a removal)."""
    x = dataset.tensors[0]
    flags = [(m, m.training) for m in (*a.modules(), *b.modules())]
    a.eval()
    b.eval()
    out = 0.0
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                out = max(out, float((a(x[i:i + batch]) - b(x[i:i + batch])).abs().max()))
    finally:
        for m, f in flags:
            m.training = f
    return out


def _sub(alpha: float | None, beta: float | None, release: int | None = None) -> str:
    if beta is None:
        return "baseline"
    return f"alpha={alpha:g}-beta={beta:g}" + ("" if release is None else f"-release={release}")


def _release(spec: Mapping[str, Any], net: str = "") -> int | None:
    """The network's ``release_after`` epoch (``None``: the penalty runs to the end), checked."""
    r = spec.get("release_after")
    if r is None:
        return None
    e = spec.get("epochs")
    if isinstance(e, bool) or not isinstance(e, int) or e < 1:
        raise ValueError(f"networks.{net}.epochs must be an int >= 1, got {e!r}")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r < e:
        raise ValueError(f"networks.{net}.release_after must be an epoch in [1, epochs) = "
                         f"[1, {e}), got {r!r}")
    return r


def _validate(cfg: Mapping[str, Any]) -> None:
    """Refuse, before anything is written, settings the run cannot use."""
    for a in cfg["alphas"]:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ValueError(f"alphas must be numbers in [0, 1], got {a!r}")
    for net, spec in dict(cfg["networks"]).items():
        missing = {"model", "kwargs", "optimizer", "lr", "batch_size", "epochs",
                   "strengths"} - set(spec)
        if missing:
            raise ValueError(f"networks.{net} lacks {sorted(missing)}")
        _release(spec, net)


def _point_settings(cfg: Mapping[str, Any], spec: Mapping[str, Any], alpha: float | None,
                    beta: float | None, release: int | None) -> dict[str, Any]:
    """What a sub-run trains with (recorded in its ``settings.json``)."""
    run = {**{k: cfg[k] for k in _TRAIN_KEYS},
           **{k: spec[k] for k in ("model", "kwargs", "optimizer", "lr", "batch_size",
                                   "epochs")}, "lr_steps": dict(spec.get("lr_steps") or {}),
           "alpha": alpha, "beta": beta, "first_ratio": cfg["first_ratio"],
           "first_layers": cfg["first_layers"]}
    if release is not None:  # only then, so the settings of earlier runs stay what they were
        run["release_after"] = release
    return run


def _released(history: list[dict], release: int, removals, layers) -> dict[str, Any]:
    """The release's epoch (the penalty's last): the units removed then, per layer, and that
    epoch's parameters, penalty and accuracies."""
    last = history[release - 1]
    return {"removed": {n: sum(k for _, m, k in removals if m == n) for n in layers},
            "params": last["params"], "group_penalty": last["group_penalty"],
            "val_acc": last["val_acc"], "test_acc": last["test_acc"]}


def train_point(cfg: Mapping[str, Any], out_dir: str, net: str, alpha: float | None = None,
                beta: float | None = None) -> dict[str, Any]:
    """Train one sub-run (``beta=None``: the baseline), remove its zero groups, evaluate.

    Alvarez & Salzmann 2016: minimize ``(1/N) sum_i l(y_i, f(x_i, Theta)) +
    gamma(Theta)`` by proximal SGD (every step
    followed by the closed-form proximal operator of ``t gamma``, with
    ``beta_l`` from :func:`layer_strengths`), then remove the neurons whose
    ``theta_l^n`` is exactly zero. The baseline trains ``gamma = 0`` from
    the same seed and data order.

    Resumes from ``<net>/<sub>/checkpoint.pt``; writes ``history.csv``,
    ``shrunk.pt`` (:func:`experiments.harness.checkpoint.save_checkpoint` with
    :func:`shrunk_arch`) and ``point.json``, and returns the point.
    """
    spec = cfg["networks"][net]
    release = _release(spec, net) if beta is not None else None
    sub = f"{net}/{_sub(alpha, beta, release)}"
    run = _point_settings(cfg, spec, alpha, beta, release)
    ctx = RunContext(out_dir, progress=False)
    check_folder(ctx, sub, run, _FREE)
    data = load_data_cached(cfg)
    example = data.train.tensors[0][:1]
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(spec["model"], **spec["kwargs"])
    layers = list(group_layout(model, None, example_input=example))
    strengths = None
    callbacks: list[Callback] = [StepDecay(run["lr_steps"])]
    if beta is not None:
        strengths = layer_strengths(layers, float(beta), float(cfg["first_ratio"]),
                                    int(cfg["first_layers"]))
        prox = ProximalGroupSparsity(model, strengths, float(alpha), example_input=example)
        gs_cb = GroupSparsityCallback(prox, log_every=100, release_after=release)
        callbacks.append(gs_cb)
    trainer = Trainer(model, data.train, val_set=data.val, test_set=data.test,
                      config=TrainConfig.from_mapping(run),
                      arch={"model": spec["model"], "kwargs": dict(spec["kwargs"])},
                      callbacks=callbacks, checkpoint=ctx.path(f"{sub}/checkpoint.pt"),
                      progress=False, example_input=example)
    resumed = trainer.epoch
    history = trainer.fit()
    ctx.write_csv(f"{sub}/history.csv", history)
    if resumed < len(history):
        ctx.log(f"{sub}: trained epochs {resumed + 1}-{len(history)}; last epoch val "
                f"{history[-1]['val_acc']:.4f} test {history[-1]['test_acc']:.4f}, "
                f"{sum(r['epoch_time_s'] for r in history):.0f} s training")

    # "when the learning steps terminate, we remove the neurons whose parameters have gone
    # to zero": exactly, with bias propagation of the (zero) constant they output
    trained = trainer.model
    zeros = {n: int(v.numel()) for n, v in
             zero_groups(trained, None, example_input=example).items()}
    shrunk = copy.deepcopy(trained)
    remove_zero_groups(shrunk, example_input=example)
    widths = {n: int(getattr(shrunk, n).weight.shape[0]) for n in layers}
    arch = shrunk_arch(spec["model"], spec["kwargs"], widths)
    save_checkpoint(ctx.path(f"{sub}/shrunk.pt"), shrunk, arch, epoch=trainer.epoch)
    released = (None if release is None or len(history) < release
                else _released(history, release, gs_cb.removals, layers))
    bs = int(cfg["eval_batch_size"])
    val, test = evaluate(shrunk, data.val, batch_size=bs), evaluate(shrunk, data.test,
                                                                     batch_size=bs)
    last = final_metrics(history)
    point = {"network": net, "alpha": alpha, "beta": beta, "strengths": strengths,
             "sub": sub, "val_acc": val["acc"], "test_acc": test["acc"],
             "val_loss": val["loss"], "test_loss": test["loss"],
             "params": count_params(shrunk), "macs": count_macs(shrunk, example),
             "widths": widths, "zero_groups": zeros, "arch": arch,
             "trained_params": count_params(trained),
             "trained_val_acc": last["val_acc"], "trained_test_acc": last["test_acc"],
             "max_logit_change": max_logit_change(trained, shrunk, data.val, bs),
             "group_penalty": history[-1].get("group_penalty"),
             "release_after": release, "released": released,
             "epochs": len(history), "train_time_s": sum(r["epoch_time_s"] for r in history)}
    atomic.write_json(ctx.path(f"{sub}/point.json"), point)
    return point


def _plot(ctx: RunContext, out: Mapping[str, Any], tol: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    nets = list(out)
    fig, axes = plt.subplots(2, len(nets), figsize=(5.6 * len(nets), 7.2), squeeze=False)
    colors = {0: "C0", 1: "C1", 2: "C2", 3: "C3"}
    for j, net in enumerate(nets):
        entry = out[net]
        base = entry["baseline"]
        for row, key in ((0, "val_acc"), (1, "test_acc")):
            ax = axes[row, j]
            # networks that collapsed (more than 8 points lost) are drawn at the lower edge
            floor = 100 * base[key] - 8.0
            accs = [100 * p[key] for e in entry["by_alpha"].values() for p in e["points"]]
            lo = max(floor, min([*accs, 100 * base[key]]) - 0.3)
            for k, (a, sel) in enumerate(entry["by_alpha"].items()):
                pts = sel["points"]
                ys = [max(100 * p[key], lo) for p in pts]
                ax.plot([p["params"] for p in pts], ys, marker="o",
                        ls="-", lw=1, color=colors.get(k, f"C{k}"),
                        label=f"alpha = {a} ({'group lasso' if float(a) == 0 else 'sparse group lasso'})")
                for p, y in zip(pts, ys):
                    text = f"{p['beta']:g}" + ("" if 100 * p[key] >= lo
                                               else f" ({100 * p[key]:.1f}%, off scale)")
                    ax.annotate(text, (p["params"], y), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))
                s = sel["selected"]
                ax.scatter([s["params"]], [max(100 * s[key], lo)], s=160, facecolors="none",
                           edgecolors=colors.get(k, f"C{k}"), lw=2,
                           label=f"selected, alpha = {a}")
            ax.set_ylim(lo - 0.2, 100 * base[key] + 0.6)
            ax.scatter([base["params"]], [100 * base[key]], marker="*", s=220, color="k",
                       zorder=5, label="unregularized")
            if key == "val_acc":
                ax.axhline(100 * (base["val_acc"] - tol), color="0.4", ls="--", lw=1,
                           label=f"baseline - {100 * tol:g} points")
            log_count_axis(ax)
            ax.set(xlabel="parameters after removing zero groups",
                   ylabel=("validation" if key == "val_acc" else "test") + " accuracy (%)",
                   title=f"{net}" + ("" if entry.get("release_after") is None else
                                     f", penalty off after epoch {entry['release_after']}")
                   + (" (selection on validation)" if row == 0 else ""))
            ax.legend(fontsize=7, loc="center left" if lo == floor else "lower right")
    fig.tight_layout()
    ctx.save_figure(fig, "accuracy_vs_params.png")


def _fmt_widths(w: Mapping[str, int]) -> str:
    return "-".join(str(v) for v in w.values())


@register("group-sparsity",
          "Alvarez & Salzmann 2016: group lasso / sparse group lasso (alpha 0, 0.5) per neuron "
          "by proximal SGD on the thesis CNN and LeNet-5 (Fashion-MNIST), zero neurons "
          "removed, vs the unregularized run from the same seed",
          defaults=_DEFAULTS, quick=_QUICK,
          source="Alvarez & Salzmann 2016 (group lasso per neuron)", validate=_validate)
def group_sparsity(cfg: dict, ctx: RunContext) -> dict:
    """Train every (network, alpha, beta) and the baselines; remove zero groups; select."""
    _validate(cfg)
    nets = dict(cfg["networks"])
    alphas = [float(a) for a in cfg["alphas"]]
    tol = float(cfg["select_within"])
    jobs = []
    for net, spec in nets.items():
        jobs.append({"net": net})
        jobs += [{"net": net, "alpha": a, "beta": float(b)} for a in alphas
                 for b in spec["strengths"]]
    # the costliest networks first, so the workers finish together
    cost = {net: count_macs(build_model(s["model"], **s["kwargs"]), torch.zeros(1, 1, 28, 28))
            * int(s["epochs"]) for net, s in nets.items()}
    jobs.sort(key=lambda j: -cost[j["net"]])
    ctx.log(f"group-sparsity: {len(jobs)} sub-runs, {cfg['workers']} worker(s)")
    points = run_jobs(train_point, [{"cfg": cfg, "out_dir": str(ctx.out_dir), **j}
                                    for j in jobs], int(cfg["workers"]))
    out: dict[str, Any] = {}
    rows = []
    for net in nets:
        base = next(p for p in points if p["network"] == net and p["beta"] is None)
        entry = {"baseline": base, "by_alpha": {}, "release_after": _release(nets[net], net)}
        for a in alphas:
            pts = [p for p in points if p["network"] == net and p["beta"] is not None
                   and p["alpha"] == a]
            for p in pts:
                p["reduction"] = 1.0 - p["params"] / base["params"]
                p["macs_reduction"] = 1.0 - p["macs"] / base["macs"]
                p["val_change_points"] = 100 * (p["val_acc"] - base["val_acc"])
                p["test_change_points"] = 100 * (p["test_acc"] - base["test_acc"])
            sel = select_matched(pts, base["val_acc"], tol)
            entry["by_alpha"][f"{a:g}"] = {"points": pts, "selected": sel}
            ctx.log(f"{net} alpha={a:g}: selected beta={sel['beta']:g} "
                    f"({sel['params']:,} params, {100 * sel['reduction']:.1f}% fewer, widths "
                    f"{_fmt_widths(sel['widths'])}); val {100 * sel['val_acc']:.2f}% "
                    f"({sel['val_change_points']:+.2f}), test {100 * sel['test_acc']:.2f}% "
                    f"({sel['test_change_points']:+.2f}) against the baseline's "
                    f"{100 * base['test_acc']:.2f}% with {base['params']:,} params")
        out[net] = entry
        rows.append(_row(net, None, base, base, False))
        for a, e in entry["by_alpha"].items():
            for p in e["points"]:
                rows.append(_row(net, a, p, base, p is e["selected"]))
    ctx.write_csv("summary.csv", rows)
    _plot(ctx, out, tol)
    target = None
    if TARGET["network"] in out:
        e = out[TARGET["network"]]
        sels = {a: s["selected"] for a, s in e["by_alpha"].items()}
        target = {**TARGET, "by_alpha": {
            a: {"reduction": s["reduction"], "test_change_points": s["test_change_points"],
                "met": target_met(s["reduction"], s["test_change_points"])}
            for a, s in sels.items()}}
        target["met"] = any(v["met"] for v in target["by_alpha"].values())
    return {"networks": out, "alphas": alphas, "select_within": tol,
            "first_ratio": cfg["first_ratio"], "first_layers": cfg["first_layers"],
            "paper": PAPER, "target": target, "figures": ["accuracy_vs_params.png"]}


def _row(net: str, alpha: str | None, p: Mapping[str, Any], base: Mapping[str, Any],
         selected: bool) -> dict[str, Any]:
    s = p.get("strengths") or {}
    return {"network": net, "alpha": "" if alpha is None else alpha,
            "beta": "" if p["beta"] is None else p["beta"],
            "release_after": "" if p.get("release_after") is None else p["release_after"],
            "beta_first": "" if not s else next(iter(s.values())),
            "params": p["params"], "macs": p["macs"],
            "params_removed_pct": 100 * (1.0 - p["params"] / base["params"]),
            "widths": _fmt_widths(p["widths"]), "val_acc": p["val_acc"],
            "test_acc": p["test_acc"],
            "val_change_points": 100 * (p["val_acc"] - base["val_acc"]),
            "test_change_points": 100 * (p["test_acc"] - base["test_acc"]),
            "max_logit_change": p["max_logit_change"], "selected": selected}
