"""Removal aggressiveness gamma: final loss and training cost (ShrinkNets draft Sec. 5.2, Fig. 2).

``python -m experiments run shrinknets-gamma [--quick]``

The ShrinkNets draft, *Learning Network Size while Training with ShrinkNets*
(2018; the earlier draft of *ShrinkNets: Learning Network Size while
Training*, public as G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska,
S. Madden, *Smallify: Learning Network Size while Training*,
https://arxiv.org/abs/1806.03723), Sec. 5.2 "Neuron Removal strategies",
removes neurons during training with an aggressiveness
parameter ``gamma`` and measures, for each ``gamma``, the loss after
convergence and the cost of training, "the number of input neurons at each
epoch", summed; a model trained without removal is the reference ("theoretical
baseline"); 30 repetitions, +-1 standard deviation (Fig. 2: rows scm1d and
oes97 at lambda = 0.1, multi-target linear regressions whose *inputs* are
filtered).

What runs here, per row ``(dataset, lambda)`` of ``rows``, per ``gamma`` of
``gammas`` and per seed ``0 .. repetitions - 1``:

* **Model.** Multi-target linear regression (``synthetic-regression``: 280
  inputs, 28 relevant, 16 targets, MSE) or multinomial logistic regression
  (``synthetic-classification``: 128 inputs, 13 relevant, 6 classes,
  cross-entropy), optionally with ``hidden`` ReLU layers, with the draft's
  filter switch ``max(0, theta)``, ``theta ~ U[0, 1]`` (draft eq. 1), on the
  **input features** and on every hidden layer.
* **Switching the inputs.** The unit graph's units are the outputs of
  Linear/Conv layers, and the model's input is no layer. So the model starts
  with a *selector*: an ``nn.Linear(p, p, bias=False)`` fixed to the identity
  (``requires_grad=False``, never trained). Its ``p`` outputs are the ``p``
  input features, one unit each, and :func:`pruners.shrinknets.insert_switches`
  puts the switch after it. Removing unit ``j`` deletes row ``j`` of the
  identity and column ``j`` of the regression weights: exactly what dropping
  input ``j`` does, through the toolkit's own removal (bias fold, Adam state
  sliced). The selector computes ``x`` itself. Deployed, it would be the
  column gather ``x[:, kept]``, so it is left out of every cost below. Its
  rows stay one-hot, so they name the input features that were kept.
* **Training.** Adam, loss ``L + lambda ||max(0, theta)||_1 + lambda_2
  ||W||_2^2`` (draft eq. 2; paper eq. 9, without which the linear problem
  has no minimum, draft Prop. A.3) through
  :class:`experiments.harness.callbacks.ShrinkNetsCallback`, a fixed number of epochs
  with a constant learning rate (the same number of steps for every
  ``gamma``, so that cost differences come from removal alone).
* **Removal.** A :class:`pruners.shrinknets.GarbageCollector` with
  :class:`pruners.shrinknets.Aggressiveness` every ``gc_every`` steps. The
  draft does not define gamma. The toolkit reads it as: unit ``i`` is dead
  when ``|g_i| <= gamma * mean_j |g_j|`` over the layer's live units.
  ``gamma = 0`` removes only units whose gate is exactly 0. With
  ``max(0, theta)`` these are off for good: a unit gets no gradient once
  ``theta <= 0``, and Adam's momentum only pushes it further down. So
  ``gamma = 0`` trains the same function as no removal, only cheaper.
* **Baseline** ("no removal", the draft's reference): the same collector at
  ``gamma = 0`` *masking* instead of removing (the masked twin). Nothing
  changes shape, so every step pays for the full network. The masked units
  have gate 0, so the function is that of the network with all its neurons,
  which the draft asks of its baseline.

Seeds: seed ``s`` sets the initialization (weights and ``theta``) and the
data order of every run with that seed, baseline included, so runs with one
seed differ only by ``gamma``. The data set is the same for all runs
(``data_seed``).

Measured per run (``runs.csv``; per epoch in ``history.csv``):

* final loss on the training, validation and test sets, evaluated on the
  final model in eval mode (MSE per target for regression, cross-entropy and
  accuracy for classification);
* ``cost_neurons``: the draft's cost, ``sum over epochs`` of the input
  neurons the epoch ran with. Input neurons are the in-features of every
  Linear layer but the selector: the live inputs for the linear model. An
  epoch's count is its mean over the epoch's steps, because collection acts
  within epochs. Each step counts the network that computed it: the count is
  taken in the loss hook, before that step's collection;
* ``cost_macs``: the sum over training steps of the live multiply-accumulates
  per sample (forward, selector excluded); times the batch size this is the
  forward work of the training;
* the input features kept, how many of the data's relevant ones, and every
  removal (step, layer, count, largest gate removed, mean live gate).

Per ``(row, gamma)`` (``summary.csv``, ``results.json``): mean and sample
standard deviation (``ddof=1``) over seeds of each measure. Paired
differences to the baseline of the same seed: the final loss minus the
baseline's, and the cost as a fraction of the baseline's.
``fig2_gamma.png``: per row, the final losses, the paired loss difference
and the relative cost against gamma, with +-1 standard deviation bands. The
baseline is the reference line.

Resumable: each ``(row, gamma, seed)`` run is written to
``runs/<name>/pairs/<key>.json`` when it finishes, with the settings it ran
with. A rerun reuses every file whose settings match and trains only the
missing runs. A killed run loses at most the run in progress, a few seconds.

Reproduces the ShrinkNets draft, Sec. 5.2 / Fig. 2, on the harness's
synthetic data, which stand in for scm1d / oes97.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.harness import atomic
from experiments.harness.callbacks import ShrinkNetsCallback
from experiments.harness.datasets import get_dataset
from experiments.harness.registry import register
from experiments.harness.run import RunContext
from experiments.harness.training import Callback, TrainConfig, Trainer, evaluate
from pruners.shrinknets import Aggressiveness, GarbageCollector, insert_switches, switches

__all__ = ["SELECTOR", "build_model", "live_cost", "mse_per_target", "load_synthetic", "CostMeter",
           "RemovalLog", "run_one", "summarize", "plot_gamma", "MEASURES"]

#: module name of the identity selector in the switched model
SELECTOR = "0"

#: the per-run measures summarized per gamma (mean and sd over seeds)
MEASURES = ("final_train_loss", "final_val_loss", "final_test_loss", "cost_neurons",
            "cost_macs", "features_kept", "relevant_kept", "irrelevant_kept",
            "delta_val_loss", "delta_train_loss", "cost_neurons_ratio", "cost_macs_ratio")

#: keys of the config that decide a run's numbers (a saved run is reused only if they match)
_RUN_KEYS = ("n_samples", "noise", "data_seed", "hidden", "epochs", "batch_size", "optimizer",
             "lr", "lam2", "p", "gc_every", "min_units", "dtype")

_DEFAULTS: dict[str, Any] = {
    "rows": [["synthetic-regression", 0.01], ["synthetic-classification", 0.01]],
    "gammas": [0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
    "repetitions": 5,
    "baseline": True,
    "hidden": [],
    "n_samples": 2000,
    "noise": 1.0,
    "data_seed": 0,
    "epochs": 60,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 3e-3,
    "lam2": 1e-4,
    "p": 2,
    "gc_every": 5,
    "min_units": 1,
    "threads": 1,
    "dtype": "float32",
}
_QUICK: dict[str, Any] = {
    "rows": [["synthetic-regression", 0.03], ["synthetic-classification", 0.03]],
    "gammas": [0.0, 0.3, 1.0],
    "repetitions": 2,
    "n_samples": 400,
    "epochs": 4,
}


# --------------------------------------------------------------------------- model and costs

def mse_per_target(out: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
                   ) -> torch.Tensor:
    """Squared error averaged over targets, then averaged (or summed) over samples.

    With the harness's unit-variance noise, the best possible value is 1.
    """
    per = ((out - target) ** 2).mean(dim=1)
    return per.mean() if reduction == "mean" else per.sum()


def build_model(n_in: int, n_out: int, hidden: Sequence[int] = (), *,
                dtype: torch.dtype = torch.float32, parametrization: str = "relu",
                init: str = "uniform", selector: bool = True, switched: bool = True
                ) -> nn.Module:
    """Selector (identity, frozen), optional ReLU hidden layers, output layer; switched.

    Switches: the draft's filter ``max(0, theta)``, ``theta ~ U[0, 1]``, after
    the selector (the input features) and after every hidden layer; none on
    the output layer (:func:`pruners.shrinknets.insert_switches`). Draws from
    torch's global generator: seed it first.

    ``parametrization`` / ``init`` choose the switches (``"signed"`` /
    ``"normal"``: the paper's ``beta ~ N(0, 1)``). ``selector=False`` leaves
    the identity selector out: the input switch is then the model's first
    module (``"0"``), which trains and is penalized alike but is on no
    unit's path, so a garbage collector cannot remove inputs (the forward
    pass saves the ``n_in x n_in`` product); without hidden layers the model
    is ``Sequential(switch, linear)``. ``switched=False`` builds the same
    network without any switch; seeded alike, its layers get the same weights
    as the switched one (switches are drawn after the layers).
    """
    from saliency.switch import Switch

    layers: list[nn.Module] = []
    if selector:
        sel = nn.Linear(n_in, n_in, bias=False)
        with torch.no_grad():
            sel.weight.copy_(torch.eye(n_in))
        sel.weight.requires_grad_(False)
        layers.append(sel)
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, n_out))
    net = nn.Sequential(*layers).to(dtype)
    if not switched:
        return net
    if selector:
        return insert_switches(net, torch.zeros(1, n_in, dtype=dtype),
                               parametrization=parametrization, init=init)
    if not hidden:
        return nn.Sequential(Switch(n_in, parametrization, init).to(dtype), *net)
    net = insert_switches(net, torch.zeros(1, n_in, dtype=dtype),
                          parametrization=parametrization, init=init)
    return nn.Sequential(Switch(n_in, parametrization, init).to(dtype), net)


def live_cost(model: nn.Module, skip: Sequence[str] = (SELECTOR,)) -> tuple[int, int]:
    """``(input neurons, MACs per sample)`` of the model's Linear layers, ``skip`` excluded.

    Input neurons: the sum of ``in_features`` (the draft's cost); MACs:
    ``in_features * out_features`` summed. Shapes only: a masked layer counts
    in full, as it computes in full.
    """
    neurons = macs = 0
    for name, m in model.named_modules():
        if name in skip:
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            raise TypeError("live_cost counts Linear layers only")
        if isinstance(m, nn.Linear):
            neurons += m.in_features
            macs += m.in_features * m.out_features
    return neurons, macs


class CostMeter(Callback):
    """The live cost of every training step, and its sums per epoch.

    It measures in the loss hook, after the forward pass and before the step's
    collection, so each step counts the network that computed it.

    Attributes:
        changes: ``[step, input neurons, MACs per sample]`` whenever the size
            changes (step 1 holds the initial size); step ``s`` ran with the
            last entry at or before ``s``.

    Each epoch's history row gets ``steps_epoch``, ``input_neurons`` (mean
    over the epoch's steps), ``input_neuron_steps`` (their sum) and
    ``macs_steps`` (sum of MACs per sample over the steps).
    """

    def __init__(self, skip: Sequence[str] = (SELECTOR,)):
        self.skip = tuple(skip)
        self.changes: list[list[int]] = []
        self._acc = [0, 0, 0]

    def loss(self, trainer, loss):
        n, m = live_cost(trainer.model, self.skip)
        if not self.changes or self.changes[-1][1:] != [n, m]:
            self.changes.append([trainer.step + 1, n, m])
        self._acc[0] += 1
        self._acc[1] += n
        self._acc[2] += m
        return loss

    def on_epoch_end(self, trainer, metrics):
        steps, neurons, macs = self._acc
        metrics["steps_epoch"] = steps
        metrics["input_neurons"] = neurons / steps if steps else 0.0
        metrics["input_neuron_steps"] = neurons
        metrics["macs_steps"] = macs
        self._acc = [0, 0, 0]


def _gates(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every switch's effective gate ``max(0, theta)`` (masked entries 0), on the CPU."""
    out = {}
    for name, sw in switches(model).items():
        w = sw._parameters.get("weight_orig")
        w = sw.weight if w is None else w * sw.weight_mask
        out[name] = sw.gate(w).detach().cpu().clone()
    return out


class RemovalLog(Callback):
    """Record every unit the collector removes (or masks) with its gate.

    Put it before the :class:`~experiments.harness.callbacks.ShrinkNetsCallback`. After
    each step it saves the gates (before that step's collection), and reads
    the collector's new reports at its next call.

    Attributes:
        events: ``[step, layer, units, largest gate removed, mean live gate]``
            (live: not masked, as the collector counts them).
    """

    def __init__(self, collector: GarbageCollector):
        self.collector = collector
        self.events: list[list[Any]] = []
        self._seen = 0
        self._gates: dict[str, torch.Tensor] = {}
        self._live: dict[str, torch.Tensor] = {}

    def on_train_begin(self, trainer):
        self._seen = len(self.collector.history)
        self._snapshot(trainer.model)

    @staticmethod
    def _switch(layer: str) -> str:
        """The module name of ``layer``'s switch (as :func:`insert_switches` names it)."""
        return f"switches.{layer.replace('.', '_')}"

    def _snapshot(self, model):
        self._gates = _gates(model)
        masked = {self._switch(k): v for k, v in self.collector.masked.items()}
        self._live = {}
        for name, g in self._gates.items():
            live = torch.ones(g.numel(), dtype=torch.bool)
            live[masked.get(name, [])] = False
            self._live[name] = live

    def flush(self) -> None:
        """Log the reports made since the last snapshot."""
        for report in self.collector.history[self._seen:]:
            for layer, idx in report.removal.indices.items():
                g, live = self._gates[self._switch(layer)], self._live[self._switch(layer)]
                removed = g[idx.cpu()]
                self.events.append([int(report.step), layer, int(idx.numel()),
                                    float(removed.max()), float(g[live].mean())])
        self._seen = len(self.collector.history)

    def on_step_end(self, trainer, loss):
        self.flush()
        self._snapshot(trainer.model)

    def on_epoch_end(self, trainer, metrics):
        self.flush()
        self._snapshot(trainer.model)


def _kept_features(model: nn.Module) -> list[int]:
    """Input features the selector still passes on (its rows are one-hot)."""
    sel = model.get_submodule(SELECTOR)
    w = sel._parameters.get("weight_orig")
    w = sel.weight if w is None else w * sel.weight_mask
    w = w.detach()
    return sorted(int(r.argmax()) for r in w if bool((r != 0).any()))


# --------------------------------------------------------------------------- one run

def load_synthetic(dataset: str, cfg: Mapping[str, Any]):
    """A synthetic regression or classification problem of the harness, cast to ``cfg["dtype"]``.

    ``cfg`` gives ``data_seed``, ``n_samples`` and (regression) ``noise``. Returns
    ``(splits, train, val, test)``: the :class:`~experiments.harness.datasets.Splits` (with
    the planted ``relevant`` features) and its three parts as cast ``TensorDataset`` s.
    """
    kw: dict[str, Any] = {"seed": int(cfg["data_seed"]), "n_samples": int(cfg["n_samples"])}
    if dataset.replace("_", "-").lower() == "synthetic-regression":
        kw["noise"] = float(cfg["noise"])
    data = get_dataset(dataset, **kw)
    if data.relevant is None:
        raise ValueError(f"shrinknets-gamma needs a synthetic dataset, got {dataset!r}")
    dtype = getattr(torch, cfg["dtype"])

    def cast(ds):
        x, y = ds.tensors
        return TensorDataset(x.to(dtype), y.to(dtype) if y.is_floating_point() else y)

    return data, cast(data.train), cast(data.val), cast(data.test)


def _key(dataset: str, lam: float, gamma: float | None, seed: int) -> str:
    setting = "baseline" if gamma is None else f"g{gamma:g}"
    return f"{dataset}_lam{lam:g}_{setting}_s{seed}"


def _settings(cfg: Mapping[str, Any], dataset: str, lam: float, gamma: float | None,
              seed: int) -> dict[str, Any]:
    out = {k: cfg[k] for k in _RUN_KEYS}
    out.update({"dataset": dataset, "lam": float(lam),
                "gamma": None if gamma is None else float(gamma), "seed": int(seed)})
    return atomic.to_jsonable(out)


def run_one(cfg: Mapping[str, Any], loaded, dataset: str, lam: float, gamma: float | None,
            seed: int) -> dict[str, Any]:
    """Train one ShrinkNets model at ``gamma`` (None: the masked baseline); return its record."""
    data, train, val, test = loaded
    regression = data.num_classes == 0
    n_in = data.input_shape[0]
    n_out = train.tensors[1].shape[1] if regression else data.num_classes
    dtype = getattr(torch, cfg["dtype"])
    torch.manual_seed(int(seed))
    model = build_model(n_in, n_out, cfg["hidden"], dtype=dtype)
    collector = GarbageCollector(Aggressiveness(0.0 if gamma is None else float(gamma)),
                                 remove=gamma is not None, replacement="zero",
                                 min_units=int(cfg["min_units"]))
    meter, log = CostMeter(), RemovalLog(collector)
    shrink = ShrinkNetsCallback(collector, lam=float(lam), lam2=float(cfg["lam2"]),
                                p=int(cfg["p"]), gc_every=int(cfg["gc_every"]))
    loss_fn = mse_per_target if regression else F.cross_entropy
    tcfg = TrainConfig(epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]),
                       optimizer=cfg["optimizer"], lr=float(cfg["lr"]), seed=int(seed),
                       lr_rule="constant")
    trainer = Trainer(model, train, val_set=val, test_set=test, config=tcfg,
                      callbacks=[meter, log, shrink], loss_fn=loss_fn, progress=False)
    start = time.perf_counter()
    history = trainer.fit()
    log.flush()
    seconds = time.perf_counter() - start
    final = {}
    for split, ds in (("train", train), ("val", val), ("test", test)):
        for k, v in evaluate(model, ds, loss_fn=loss_fn).items():
            final[f"final_{split}_{k}"] = v
    kept = _kept_features(model)
    relevant = set(data.relevant.tolist())
    keep_cols = ("epoch", "step", "train_loss", "val_loss", "test_loss", "val_acc", "test_acc",
                 "steps_epoch", "input_neurons", "input_neuron_steps", "macs_steps")
    hist = [{k: r[k] for k in keep_cols if k in r}
            | {k: r[k] for k in r if k.startswith("units/")} for r in history]
    return {
        "key": _key(dataset, lam, gamma, seed),
        "settings": _settings(cfg, dataset, lam, gamma, seed),
        "row": f"{dataset} lambda={lam:g}", "dataset": dataset, "lam": float(lam),
        "gamma": None if gamma is None else float(gamma),
        "method": "masked (no removal)" if gamma is None else "removal",
        "seed": int(seed),
        **final,
        "cost_neurons": float(sum(r["input_neurons"] for r in history)),
        "cost_neuron_steps": int(sum(r["input_neuron_steps"] for r in history)),
        "cost_macs": int(sum(r["macs_steps"] for r in history)),
        "steps": int(trainer.step),
        "initial_neurons": meter.changes[0][1], "initial_macs": meter.changes[0][2],
        "final_neurons": live_cost(model)[0], "final_macs": live_cost(model)[1],
        "features_kept": len(kept), "relevant_kept": len(relevant & set(kept)),
        "irrelevant_kept": len(set(kept) - relevant), "n_relevant": len(relevant),
        "n_features": n_in,
        "widths": {k.split("/", 1)[1]: v for k, v in history[-1].items()
                   if k.startswith("units/")},
        "removal_events": len(log.events),
        "max_removed_gate": max((e[3] for e in log.events), default=None),
        "kept": kept, "removals": log.events, "cost_changes": meter.changes,
        "history": hist, "time_s": seconds,
    }


# --------------------------------------------------------------------------- summaries

def _paired(runs: list[dict[str, Any]]) -> None:
    """Add each run's differences to the baseline run of its row and seed (in place)."""
    base = {(r["row"], r["seed"]): r for r in runs if r["gamma"] is None}
    for r in runs:
        b = base.get((r["row"], r["seed"]))
        if b is None:
            continue
        r["delta_val_loss"] = r["final_val_loss"] - b["final_val_loss"]
        r["delta_train_loss"] = r["final_train_loss"] - b["final_train_loss"]
        r["cost_neurons_ratio"] = r["cost_neurons"] / b["cost_neurons"]
        r["cost_macs_ratio"] = r["cost_macs"] / b["cost_macs"]


def _setting(gamma: float | None) -> str:
    return "baseline" if gamma is None else f"{gamma:g}"


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per row and gamma (baseline last): ``n``, and ``<measure>_mean`` / ``<measure>_sd``.

    ``sd`` is the sample standard deviation (``numpy.std(ddof=1)``; NaN for a
    single seed), the band seaborn draws with ``errorbar="sd"``.
    """
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["row"], r["gamma"] is None, r["gamma"] or 0.0), []).append(r)
    out = []
    for (row, is_base, gamma), rs in sorted(groups.items(), key=lambda kv: kv[0]):
        first = rs[0]
        entry: dict[str, Any] = {"row": row, "dataset": first["dataset"], "lam": first["lam"],
                                 "gamma": None if is_base else gamma,
                                 "setting": "baseline" if is_base else f"{gamma:g}",
                                 "n": len(rs)}
        for m in MEASURES + ("final_train_acc", "final_val_acc", "final_test_acc"):
            vals = [r[m] for r in rs if r.get(m) is not None]
            if len(vals) != len(rs):
                continue
            a = np.asarray(vals, dtype=np.float64)
            entry[f"{m}_mean"] = float(a.mean())
            entry[f"{m}_sd"] = float(a.std(ddof=1)) if a.size > 1 else math.nan
        out.append(entry)
    return out


# --------------------------------------------------------------------------- figure

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def plot_gamma(runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
               ctx: RunContext, name: str = "fig2_gamma.png") -> None:
    """Draft Fig. 2: per row, loss, paired loss difference and relative cost against gamma."""
    import pandas as pd

    plt, sns = _plt()
    df = pd.DataFrame([r for r in runs if r["gamma"] is not None])
    rows = list(dict.fromkeys(r["row"] for r in runs))
    fig, axes = plt.subplots(len(rows), 4, figsize=(20, 3.6 * len(rows)), squeeze=False)
    pos = sorted({g for g in df["gamma"] if g > 0}) if len(df) else []
    base = {s["row"]: s for s in summary if s["gamma"] is None}
    colors = sns.color_palette()

    def reference(ax, row, measure, color, label):
        b = base.get(row)
        if b is None:
            return
        m, s = b[f"{measure}_mean"], b[f"{measure}_sd"]
        ax.axhline(m, color=color, linestyle=":", linewidth=1.2, label=label)
        if math.isfinite(s) and s > 0:
            ax.axhspan(m - s, m + s, color=color, alpha=0.08)

    for i, row in enumerate(rows):
        d = df[df["row"] == row] if len(df) else df
        ax_loss, ax_delta, ax_cost, ax_ratio = axes[i]
        loss_name = "MSE per target" if d["dataset"].iloc[0] == "synthetic-regression" \
            else "cross-entropy"
        for j, split in enumerate(("val", "train")):
            what = "validation" if split == "val" else "training"
            sns.lineplot(data=d, x="gamma", y=f"final_{split}_loss", errorbar="sd", marker="o",
                         ax=ax_loss, color=colors[j], linestyle="-" if j == 0 else "--",
                         label=what)
            reference(ax_loss, row, f"final_{split}_loss", colors[j], f"no removal ({what})")
        ax_loss.set(xlabel="gamma", ylabel=f"final loss ({loss_name})", title=row)
        ax_loss.legend(fontsize=7)
        if "delta_val_loss" in d:
            for j, split in enumerate(("val", "train")):
                sns.lineplot(data=d, x="gamma", y=f"delta_{split}_loss", errorbar="sd",
                             marker="o", ax=ax_delta, color=colors[j],
                             label="validation" if split == "val" else "training")
            ax_delta.axhline(0.0, color="0.3", linestyle=":", label="no removal")
            ax_delta.legend(fontsize=7)
        ax_delta.set(xlabel="gamma", ylabel="final loss - no removal (same seed)",
                     title="loss difference (paired by seed)")
        sns.lineplot(data=d, x="gamma", y="cost_neurons", errorbar="sd", marker="o",
                     ax=ax_cost, color=colors[2], label="ShrinkNets")
        reference(ax_cost, row, "cost_neurons", "0.3", "no removal")
        ax_cost.set_ylim(bottom=0)
        ax_cost.legend(fontsize=7)
        ax_cost.set(xlabel="gamma", ylabel="sum over epochs of input neurons",
                    title="training cost (the draft's)")
        if "cost_neurons_ratio" in d:
            sns.lineplot(data=d, x="gamma", y="cost_neurons_ratio", errorbar="sd", marker="o",
                         ax=ax_ratio, color=colors[2], label="input neurons per epoch")
            sns.lineplot(data=d, x="gamma", y="cost_macs_ratio", errorbar="sd", marker="s",
                         ax=ax_ratio, color=colors[3], linestyle="--",
                         label="MACs over steps")
            ax_ratio.axhline(1.0, color="0.3", linestyle=":", label="no removal")
            ax_ratio.set_ylim(bottom=0)
            ax_ratio.legend(fontsize=7)
        ax_ratio.set(xlabel="gamma", ylabel="cost / no removal (same seed)",
                     title="relative training cost")
        ax_loss.set_yscale("log")  # gamma = 1 loses everything: orders of magnitude apart
        ax_delta.set_yscale("symlog", linthresh=0.01)
        for ax in axes[i]:
            if pos:  # gamma = 0 on a linear stretch, the positive gammas logarithmic
                ax.set_xscale("symlog", linthresh=pos[0])
                ax.set_xlim(0.0, pos[-1] * 1.15)
    fig.suptitle("ShrinkNets removal aggressiveness (draft Fig. 2): mean +- 1 sd over seeds")
    fig.tight_layout()
    ctx.save_figure(fig, name)


# --------------------------------------------------------------------------- the experiment

def _validate(cfg: Mapping[str, Any]) -> list[tuple[str, float]]:
    rows = [(str(r[0]), float(r[1])) for r in cfg["rows"]]
    if not rows:
        raise ValueError("rows must list at least one [dataset, lambda] pair")
    for _, lam in rows:
        if not lam >= 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
    gammas = [float(g) for g in cfg["gammas"]]
    if any(not g >= 0 for g in gammas) or len(set(gammas)) != len(gammas):
        raise ValueError(f"gammas must be distinct numbers >= 0, got {cfg['gammas']}")
    if int(cfg["repetitions"]) < 1:
        raise ValueError("repetitions must be >= 1")
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg['dtype']!r}")
    return rows


@register("shrinknets-gamma",
          "ShrinkNets draft Sec. 5.2, Fig. 2: final loss and training cost against the removal "
          "aggressiveness gamma (switched inputs of synthetic linear / logistic regressions)",
          defaults=_DEFAULTS, quick=_QUICK, source="the ShrinkNets draft, Sec. 5.2, Fig. 2")
def shrinknets_gamma(cfg: dict, ctx: RunContext) -> dict:
    """Final loss and training cost against gamma, with the no-removal baseline (module doc)."""
    rows = _validate(cfg)
    gammas = [float(g) for g in cfg["gammas"]]
    settings: list[float | None] = ([None] if cfg["baseline"] else []) + gammas
    seeds = list(range(int(cfg["repetitions"])))
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"]))
    runs: list[dict[str, Any]] = []
    computed = reused = 0
    total = len(rows) * len(settings) * len(seeds)
    try:
        for dataset, lam in rows:
            loaded = load_synthetic(dataset, cfg)
            for seed in seeds:
                for gamma in settings:
                    key = _key(dataset, lam, gamma, seed)
                    path = ctx.path(f"pairs/{key}.json")
                    want = _settings(cfg, dataset, lam, gamma, seed)
                    rec = atomic.read_json(path) if path.exists() else None
                    if rec is not None and rec.get("settings") == want:
                        reused += 1
                    else:
                        if rec is not None:
                            ctx.log(f"{key}: saved with other settings, run again")
                        rec = atomic.to_jsonable(run_one(cfg, loaded, dataset, lam, gamma, seed))
                        ctx.write_json(f"pairs/{key}.json", rec)
                        computed += 1
                        ctx.log(f"[{computed + reused}/{total}] {rec['row']} gamma "
                                f"{_setting(gamma)} seed {seed}: val loss "
                                f"{rec['final_val_loss']:.4f}, train {rec['final_train_loss']:.4f}"
                                f", cost {rec['cost_neurons']:.0f} neurons, "
                                f"{rec['features_kept']} inputs kept "
                                f"({rec['relevant_kept']}/{rec['n_relevant']} relevant), "
                                f"{rec['time_s']:.1f}s")
                    runs.append(rec)
    finally:
        torch.set_num_threads(threads)
    if reused:
        ctx.log(f"reused {reused} finished runs from {ctx.path('pairs')}")
    _paired(runs)
    summary = summarize(runs)
    flat = [{k: v for k, v in r.items()
             if k not in ("settings", "kept", "removals", "cost_changes", "history", "widths")}
            for r in runs]
    ctx.write_csv("runs.csv", flat)
    ctx.write_csv("history.csv", [{"key": r["key"], "row": r["row"], "gamma": r["gamma"],
                                   "seed": r["seed"], **h} for r in runs for h in r["history"]])
    ctx.write_csv("summary.csv", summary)
    plot_gamma(runs, summary, ctx)
    for s in summary:
        ctx.log(f"{s['row']:<38} gamma {s['setting']:>8}: val loss "
                f"{s['final_val_loss_mean']:.4f} +- {s['final_val_loss_sd']:.4f}, train "
                f"{s['final_train_loss_mean']:.4f} +- {s['final_train_loss_sd']:.4f}, cost "
                f"{s['cost_neurons_mean']:.0f} +- {s['cost_neurons_sd']:.0f} neurons"
                + (f" ({s['cost_neurons_ratio_mean']:.3f}x)" if "cost_neurons_ratio_mean" in s
                   else ""))
    return {"summary": summary, "runs": len(runs), "runs_computed": computed,
            "runs_reused": reused, "seeds": seeds, "gammas": gammas,
            "rows": [[d, lam] for d, lam in rows], "figures": ["fig2_gamma.png"],
            "threads": int(cfg["threads"])}
