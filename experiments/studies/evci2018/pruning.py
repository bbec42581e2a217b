"""Reproductions of the pruning experiments of Evci 2018.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU, 2018 (https://arxiv.org/abs/1806.06068); below: Evci 2018 or the thesis.

* ``thesis-magnitude-pruning`` -- Sec. 2.2 "A Basic Pruning Experiment":
  global magnitude pruning of the thesis CNN's weights on the schedule of
  Table 2.2 (20, 50, 80, 90% of all weights zero after epochs 2, 3, 4, 5),
  the loss and fraction pruned over steps against the unpruned run (Fig. 2.8),
  then the unit cleanup of Fig. 2.11: units whose fraction of non-zero
  incoming or outgoing weights is at most ``f_nz`` are removed (bias
  propagation) and the parameters of the resulting *dense* network and its
  test accuracy are plotted against ``f_nz``.
* ``thesis-unit-pruning`` -- Sec. 4.2 "Pruning a small network with MRS":
  MRS unit pruning with mean replacement and physical removal on the schedule
  of Table 4.2 (10, 20, 40, 60% of every layer's units gone after epochs 2-5),
  the thesis's 20,522 -> 4,019 parameters, test accuracy against the unpruned
  run, Fig. 4.6.
* ``thesis-unit-pruning-zero`` -- the same with zero replacement (plain
  removal), trained beside the mean-replacement run: the loss jump of every
  round, both runs, to test the claim of Sec. 3.1 / 4.2 that mean replacement
  disturbs the network less than removal.

Every experiment trains the thesis CNN (App. C.1) in the thesis setting (Sec.
2.1: SGD, learning rate 0.01, batch 32, 10 epochs, no momentum or weight
decay, seed 0) once without pruning (``unpruned/``) and once (or twice) with
it, from the same initialization and the same data order, so the runs are
identical up to the first round. Each run checkpoints every epoch in its
sub-folder; rerunning the command resumes a killed run (the pruner's state is
in the checkpoint), and a finished run is not retrained. A folder holding runs
with other settings is refused.

Counterfactual rounds: at every round of a unit-pruning run, the units the
pruner removed are also removed from copies of the pre-round model with the
other replacements (``mean``, ``zero``, and ``activation_mean``: consumers fed
the mean of what they received, after ReLU and max-pooling), and the loss jump
on the same scoring samples recorded. So the replacements are compared at
identical states, not only across runs whose states diverge after the first
round.

Data: Fashion-MNIST by default (the thesis used MNIST); ``--set
dataset=mnist --set data_dir=DIR`` runs on MNIST.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import prune

from experiments.harness import atomic
from experiments.harness.callbacks import EpochLog, PrunerCallback, RecordingPruner, StepLog
from experiments.harness.plots import plot_pruning
from experiments.harness.registry import register
from experiments.harness.run import (RunContext, changed_settings, final_metrics, load_data,
                                     train_in_folder)
from experiments.harness.training import Callback, Trainer, evaluate
from pruners import (ParameterPruner, UnitPruner, count_params, mean_loss, remove_sparse_units,
                     remove_units, schedules)
from pruners.schedules import amount_to_count
from saliency.layers import effective_tensor

__all__ = ["Counterfactual", "activation_means", "fnz_sweep", "unmask",
           "nonzero_params", "plot_fnz", "FNZ_GRID", "THESIS", "THESIS_CNN_ACTIVATIONS"]

#: what the thesis reports (MNIST), for the results files and docs
THESIS = {
    "magnitude": {"final_fraction": 0.9, "note": "Fig. 2.8: loss recovers after the jumps at "
                  "f = 0.8 and 0.9; Fig. 2.11: the dense network can be halved (f_nz) "
                  "without accuracy penalty"},
    "units": {"params_before": 20522, "params_after": 4019, "test_acc_pruned": 0.9842,
              "test_acc_unpruned": 0.9842},
}

#: the f_nz grid of the cleanup sweep (Fig. 2.11)
FNZ_GRID = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]

_DATA = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
         "data_seed": 0, "seed": 0}
_TRAIN = {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 10, "momentum": 0.0,
          "weight_decay": 0.0, "lr_rule": "constant", "eval_batch_size": 2000,
          "max_batches": None}
_PRUNE = {"score_samples": 1000, "score_batch": 500, "smooth": 50}
#: the quick version keeps the thesis's schedule (rounds after epochs 2-5) on 384 samples
_QUICK = {"limit": 384, "epochs": 5, "score_samples": 128, "score_batch": 128,
          "eval_batch_size": 384, "smooth": 4}
#: settings that do not change what is trained (a folder may be rerun with other values)
_FREE = ("data_dir", "eval_batch_size", "smooth", "fnz", "quick")


def _table(spec: Mapping) -> schedules.table:
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"schedule must be a non-empty {{epoch: fraction}} mapping, got {spec!r}")
    return schedules.table({int(k): v for k, v in spec.items()})


def _points(s: schedules.table) -> dict[str, Any]:
    return {str(t): a for t, a in s.points}


# --------------------------------------------------------------------------- callbacks


#: where the thesis CNN's units reach their consumers: the output of the module after
#: each producer's activation and pooling (what ``"activation_mean"`` averages)
THESIS_CNN_ACTIVATIONS = {"conv1": "pool1", "conv2": "pool2", "fc1": "act3"}

#: replacements a :class:`Counterfactual` can evaluate
ALTERNATIVES = ("mean", "zero", "activation_mean")


def activation_means(model: nn.Module, data, units: Mapping[str, Sequence[int]],
                     modules: Mapping[str, str] = THESIS_CNN_ACTIVATIONS
                     ) -> dict[str, torch.Tensor]:
    """Mean of what each unit's consumers receive, ``E[g(y_i)]``, over ``data`` (eval mode).

    ``g`` is the unit's path to its consumers (ReLU, max-pooling): the output
    of ``modules[layer]``, averaged over samples and positions. With ReLU
    these means are >= 0, so :func:`~pruners.remove_units` given them as the
    units' constants feeds the consumers exactly these values (``relu(c) =
    c``, pooling keeps a constant). Compare ``"mean"``, which holds the
    *producer's* output at its mean ``E[y_i]``, so that consumers receive
    ``g(E[y_i])``: for a ReLU and max-pooling path, at most ``E[g(y_i)]``
    (Jensen's inequality) and 0 whenever ``E[y_i] <= 0``.

    Returns ``{layer: tensor}`` aligned with the sorted indices of ``units``.
    """
    mods = dict(model.named_modules())
    sums: dict[str, list] = {k: [] for k in units}
    hooks = []

    def make(layer):
        def hook(_m, _inp, out):
            dims = [d for d in range(out.dim()) if d != 1]
            sums[layer].append((out.detach().to(torch.float64).sum(dims),
                                out.numel() // out.shape[1]))
        return hook

    try:
        for layer in units:
            hooks.append(mods[modules[layer]].register_forward_hook(make(layer)))
        was = model.training
        model.eval()
        with torch.no_grad():
            for x, _ in data:
                model(x)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for layer, idx in units.items():
        total = sum(s for s, _ in sums[layer]) / sum(n for _, n in sums[layer])
        out[layer] = total[sorted(idx)]
        if (out[layer] < 0).any():
            raise ValueError(f"{layer}: negative activation means; activation_mean needs a "
                             "ReLU path to the consumers")
    return out


class Counterfactual(RecordingPruner):
    """A :class:`~pruners.UnitPruner` whose rounds are also evaluated with other replacements.

    Passed to :class:`~experiments.harness.callbacks.PrunerCallback` in place of the
    pruner. At every round it copies the model first, lets the pruner act on
    the model as usual, then removes the *same* units from fresh copies of
    the pre-round model with each of ``alternatives`` (``"mean"``,
    ``"zero"``: as the pruner does it; ``"activation_mean"``: see
    :func:`activation_means`), measuring the loss after on the round's
    scoring data. So the replacements are compared at identical states on
    identical data. The records (:attr:`rows`) are part of the state, so a
    resumed run keeps them. Other attributes are the pruner's.
    """

    state_key = "counterfactual"

    def __init__(self, pruner: UnitPruner, alternatives: Sequence[str]):
        bad = [a for a in alternatives if a not in ALTERNATIVES]
        if bad:
            raise ValueError(f"unknown alternatives {bad}; choose from {ALTERNATIVES}")
        super().__init__(pruner)
        self.alternatives = list(alternatives)

    def before_round(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def record(self, t: int, report, snapshot: nn.Module, data) -> dict[str, Any]:
        p = self.pruner
        units = {k: v.tolist() for k, v in report.removal.indices.items()}
        example = next(iter(data))[0][:1]
        row: dict[str, Any] = {"step": int(t), "loss_before": report.loss_before}
        for alt in self.alternatives:
            twin = copy.deepcopy(snapshot)
            rep = (activation_means(twin, data, units) if alt == "activation_mean" else alt)
            remove_units(twin, units, replacement=rep, data=data, example_input=example,
                         exclude=p.exclude, min_units=p.min_units)
            after = mean_loss(twin, data, p.loss_fn)
            row[f"loss_after_if_{alt}"] = after
            row[f"penalty_if_{alt}"] = after - report.loss_before
        return row


# --------------------------------------------------------------------------- runs


def _check_folder(ctx: RunContext, sub: str, cfg: Mapping[str, Any]) -> None:
    """Refuse to resume a sub-run trained with other settings; record ours."""
    path = ctx.path(f"{sub}/settings.json")
    mine = {k: v for k, v in cfg.items() if k not in _FREE}
    if ctx.path(f"{sub}/checkpoint.pt").exists() and path.exists():
        what = changed_settings(atomic.read_json(path), mine)
        if what:
            raise ValueError(f"{ctx.path(sub)} holds a run with other settings ({what}); rerun "
                             "it as it was, pass another --out, or delete the folder")
    atomic.write_json(path, mine)


def _train(cfg: Mapping[str, Any], ctx: RunContext, data, sub: str,
           callbacks: Sequence[Callback]) -> Trainer:
    """Train the thesis CNN into ``sub/`` (checkpoint every epoch, resumed when present)."""
    _check_folder(ctx, sub, cfg)
    return train_in_folder(cfg, ctx, data, sub, callbacks)


def _unpruned(cfg, ctx, data) -> tuple[Trainer, StepLog]:
    log = StepLog()
    trainer = _train(cfg, ctx, data, "unpruned", [log, EpochLog(ctx.log, "unpruned")])
    return trainer, log


def _pruner_callback(pruner, cfg) -> PrunerCallback:
    return PrunerCallback(pruner, every="epoch", score_samples=int(cfg["score_samples"]),
                          score_batch=int(cfg["score_batch"]), seed=int(cfg["seed"]))


def _identical_until(first_round_step: int | None, a: Sequence, b: Sequence) -> bool:
    """The two runs' per-step losses agree bit for bit before the first round."""
    if first_round_step is None:
        return False
    la = [r[1] for r in a if r[0] <= first_round_step]
    lb = [r[1] for r in b if r[0] <= first_round_step]
    return bool(la) and la == lb


def _accuracies(pruned: Trainer, dense: Trainer) -> dict[str, Any]:
    pa, da = pruned.history[-1]["test_acc"], dense.history[-1]["test_acc"]
    return {"test_acc_pruned": pa, "test_acc_unpruned": da,
            "test_acc_change_points": 100 * (pa - da)}


def _data_info(cfg, data) -> dict[str, Any]:
    return {"dataset": cfg["dataset"], "source": (data.info or {}).get("source"),
            "sizes": {k: len(getattr(data, k)) for k in ("train", "val", "test")
                      if getattr(data, k) is not None}}


def _steps_table(pruned_steps: Sequence, dense_steps: Sequence, labels=("pruned",)) -> list:
    """One row per step: the loss of each run and the fraction of parameters pruned."""
    dense = {int(r[0]): r[1] for r in dense_steps}
    rows = []
    for r in pruned_steps:
        rows.append({"step": int(r[0]), f"loss_{labels[0]}": r[1],
                     "loss_unpruned": dense.get(int(r[0])), "fraction_pruned": r[2]})
    return rows


# --------------------------------------------------------------------------- Sec. 2.2


def unmask(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn.utils.prune`` mask permanent (``prune.remove``), in place.

    The pruned entries become plain zeros of dense tensors: the function is
    unchanged, and :func:`~pruners.count_params` then counts every entry.
    """
    for mod in model.modules():
        for name in [n[:-5] for n in list(mod._parameters) if n.endswith("_orig")]:
            if hasattr(mod, name + "_mask"):
                prune.remove(mod, name)
    return model


def nonzero_params(model: nn.Module) -> int:
    """Parameter entries that are not zero (masked entries count as zero)."""
    total = 0
    for mod in model.modules():
        for pname, p in mod._parameters.items():
            if p is None:
                continue
            if pname.endswith("_orig") and pname[:-5] + "_mask" in mod._buffers:
                p = p * mod._buffers[pname[:-5] + "_mask"]
            total += int(p.detach().count_nonzero())
    return total


def _logits(model: nn.Module, dataset, batch: int) -> torch.Tensor:
    x = dataset.tensors[0]
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: int(getattr(m, "weight_orig", getattr(m, "weight")).shape[0])
            for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def fnz_sweep(model: nn.Module, test_set, grid: Sequence[float], *, batch_size: int = 2000
              ) -> list[dict[str, Any]]:
    """Fig. 2.11: remove the units with at most ``f_nz`` non-zero in- or outgoing weights.

    For each ``f_nz`` of ``grid``, a copy of ``model`` (masks made permanent
    by :func:`unmask`) loses the units of :func:`~pruners.sparse_units`
    through :func:`~pruners.remove_sparse_units` with ``replacement="bias"``
    (a removed unit is replaced by the output it gives with no incoming
    weight, folded into the next layer's bias: exact at ``f_nz = 0``).

    Returns one row per ``f_nz``: ``params_dense`` (every entry of the
    smaller dense network, zeros included: what the thesis plots),
    ``params_nonzero`` (its non-zero entries), the widths, the units
    removed, the test loss and accuracy, and ``max_logit_change`` (largest
    absolute change of a test logit against the model before cleanup).
    """
    base = unmask(copy.deepcopy(model))
    example = test_set.tensors[0][:1]
    ref = _logits(base, test_set, batch_size)
    rows = []
    for f in grid:
        m = copy.deepcopy(base)
        report = remove_sparse_units(m, float(f), replacement="bias", example_input=example)
        ev = evaluate(m, test_set, batch_size=batch_size)
        out = _logits(m, test_set, batch_size)
        rows.append({"f_nz": float(f), "params_dense": count_params(m),
                     "params_nonzero": nonzero_params(m),
                     "units_removed": int(sum(report.removed.values())),
                     **{f"width/{k}": v for k, v in _widths(m).items()},
                     "test_loss": ev["loss"], "test_acc": ev["acc"],
                     "max_logit_change": float((out - ref).abs().max())})
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def plot_fnz(rows: Sequence[Mapping[str, Any]], params_original: int, acc_pruned: float,
             acc_unpruned: float, ctx: RunContext, name: str = "fig2_11_fnz.png",
             title: str = "") -> None:
    """Fig. 2.11: dense parameters (left, blue) and test accuracy (right, red) against f_nz."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    f = [r["f_nz"] for r in rows]
    blue, red = sns.color_palette()[0], sns.color_palette()[3]
    sns.lineplot(x=f, y=[r["params_dense"] for r in rows], ax=ax, color=blue, marker="o",
                 label="parameters of the dense network after unit removal", legend=False)
    sns.lineplot(x=f, y=[r["params_nonzero"] for r in rows], ax=ax, color=blue, marker=".",
                 linestyle=":", label="of them non-zero", legend=False)
    ax.axhline(params_original, color=blue, linestyle="--", linewidth=1.2,
               label=f"original dense network ({params_original:,})")
    ax.set(xlabel="$f_{nz}$ (units with at most this fraction of non-zero in- or outgoing "
                  "weights removed)", ylabel="parameters", ylim=(0, params_original * 1.08))
    ax.tick_params(axis="y", colors=blue)
    ax2 = ax.twinx()
    sns.lineplot(x=f, y=[100 * r["test_acc"] for r in rows], ax=ax2, color=red, marker="s",
                 label="test accuracy after unit removal", legend=False)
    ax2.axhline(100 * acc_pruned, color=red, linestyle=":", linewidth=1,
                label=f"pruned, before removal ({100 * acc_pruned:.2f}%)")
    ax2.axhline(100 * acc_unpruned, color="0.4", linestyle="-.", linewidth=1,
                label=f"unpruned run ({100 * acc_unpruned:.2f}%)")
    ax2.set_ylabel("test accuracy (%)")
    ax2.tick_params(axis="y", colors=red)
    ax2.grid(False)
    lo = min([100 * r["test_acc"] for r in rows] + [100 * acc_unpruned])
    ax2.set_ylim(max(0.0, lo - 2), min(100.0, max(100 * acc_pruned, 100 * acc_unpruned) + 1))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    ax.set_title(title or "unit removal after magnitude pruning (Fig. 2.11)")
    ctx.save_figure(fig, name)


def _sparsity(pruner: ParameterPruner, model: torch.nn.Module, final: float) -> dict[str, Any]:
    """What magnitude pruning left: weights masked (and zero) against the schedule's last
    fraction ``final``, and the parameters counted three ways."""
    targets = pruner.targets(model)
    n_weights = sum(getattr(m, p + "_mask", getattr(m, p)).numel() for m, p in targets.values())
    masked = sum(int((getattr(m, p + "_mask") == 0).sum()) for m, p in targets.values()
                 if hasattr(m, p + "_mask"))
    zero = sum(int((effective_tensor(m, p) == 0).sum()) for m, p in targets.values())
    return {"weights": n_weights, "masked_weights": masked, "zero_weights": zero,
            "expected_masked": amount_to_count(final, n_weights),
            "fraction_masked": masked / n_weights, "schedule_final": final,
            "params_nonzero": nonzero_params(model),
            "params_dense": count_params(model, count_masked=True),
            "params_counted": count_params(model)}


def _log_magnitude(ctx: RunContext, acc: Mapping[str, float], sparsity: Mapping[str, Any],
                   rows: Sequence[Mapping[str, Any]]) -> None:
    masked, n_weights = sparsity["masked_weights"], sparsity["weights"]
    ctx.log(f"test accuracy: pruned {100 * acc['test_acc_pruned']:.2f}%, unpruned "
            f"{100 * acc['test_acc_unpruned']:.2f}% ({acc['test_acc_change_points']:+.2f} points)")
    ctx.log(f"masked weights {masked:,} of {n_weights:,} ({100 * masked / n_weights:.2f}%)")
    for r in rows:
        ctx.log(f"  f_nz={r['f_nz']:<5g} dense params {r['params_dense']:>6,} (non-zero "
                f"{r['params_nonzero']:,})  test acc {100 * r['test_acc']:.2f}%  "
                f"max logit change {r['max_logit_change']:.2g}")


@register("thesis-magnitude-pruning",
          "Sec. 2.2: global magnitude pruning to 90% on Table 2.2 vs the unpruned run "
          "(Fig. 2.8), then the f_nz unit removal of Fig. 2.11",
          defaults={**_DATA, **_TRAIN, **_PRUNE, "schedule": _points(schedules.THESIS_PARAMETERS),
                    "fnz": list(FNZ_GRID)},
          quick=_QUICK, source="Evci 2018, Sec. 2.2, Table 2.2, Fig. 2.8, 2.11")
def thesis_magnitude_pruning(cfg: dict, ctx: RunContext) -> dict:
    """Magnitude pruning during training and unit cleanup (Evci 2018, Sec. 2.2).

    Setting (Sec. 2.2): the thesis CNN trained 10 epochs (SGD 0.01, batch 32,
    seed 0); after epochs 2, 3, 4, 5 (Table 2.2) the fraction 0.2, 0.5, 0.8,
    0.9 of all Linear/Conv weights (20,424 of the 20,522 parameters; biases
    are not pruned) with the smallest magnitude is zeroed
    (``ParameterPruner("magnitude", THESIS_PARAMETERS, scope="global", prune_output=True)``:
    ``round(f * N)`` weights over all layers together, masks through
    ``torch.nn.utils.prune`` so pruned weights stay zero). The same run
    without pruning, same seed, is the reference.

    Then, on copies of the final pruned network, units whose fraction of
    non-zero incoming or outgoing weights is ``<= f_nz`` are removed with bias
    replacement, for each ``f_nz`` of ``fnz`` (see :func:`fnz_sweep`); the
    parameters of the resulting dense network (every entry, zeros included,
    as the thesis plots) and its test accuracy are recorded.

    What the thesis found (MNIST): fractions below 0.5 cost little loss, 0.8
    and 0.9 make the loss jump, and it recovers (Fig. 2.8); the dense network
    can be made half its size by unit removal without a performance penalty
    (Fig. 2.11; the thesis lost a little at ``f_nz = 0`` for lack of bias
    propagation, which is exact here).

    Outputs: ``unpruned/`` and ``pruned/`` (checkpoints, ``history.csv``),
    ``rounds.csv``, ``steps.csv`` (loss of both runs and fraction pruned per
    step), ``fnz_sweep.csv``, ``fig2_8_pruning.png``, ``fig2_11_fnz.png``,
    ``results.json``.
    """
    data = load_data(cfg)
    schedule = _table(cfg["schedule"])
    dense, dense_log = _unpruned(cfg, ctx, data)
    pruner = ParameterPruner("magnitude", schedule, scope="global", prune_output=True)
    cb = _pruner_callback(pruner, cfg)
    pruned = _train(cfg, ctx, data, "pruned", [cb, EpochLog(ctx.log, "pruned", cb)])
    model = pruned.model
    ds = cfg["dataset"]
    sparsity = _sparsity(pruner, model, schedule(pruned.epoch))

    rows = fnz_sweep(model, data.test, [float(f) for f in cfg["fnz"]],
                     batch_size=int(cfg["eval_batch_size"]))
    acc = _accuracies(pruned, dense)
    for r in rows:
        r["test_acc_change_points_vs_pruned"] = 100 * (r["test_acc"] - acc["test_acc_pruned"])
        r["params_dense_fraction"] = r["params_dense"] / sparsity["params_dense"]
    ctx.write_csv("fnz_sweep.csv", rows)
    ctx.write_csv("rounds.csv", cb.rounds)
    ctx.write_csv("steps.csv", _steps_table(cb.steps, dense_log.steps))
    plot_pruning(ctx, cb.steps, dense_log.steps, cb.rounds, name="fig2_8_pruning.png",
                 title=f"magnitude pruning on Table 2.2, thesis CNN on {ds} (Fig. 2.8)",
                 smooth=int(cfg["smooth"]))
    plot_fnz(rows, sparsity["params_dense"], acc["test_acc_pruned"], acc["test_acc_unpruned"],
             ctx, title=f"unit removal after magnitude pruning, {ds} (Fig. 2.11)")

    # the smallest dense network within half a point of the pruned model's accuracy
    ok = [r for r in rows if r["test_acc_change_points_vs_pruned"] >= -0.5]
    best = min(ok, key=lambda r: (r["params_dense"], r["f_nz"])) if ok else None
    first = cb.rounds[0]["train_step"] if cb.rounds else None
    _log_magnitude(ctx, acc, sparsity, rows)
    return {
        "data": _data_info(cfg, data), "final": final_metrics(pruned.history),
        "unpruned": final_metrics(dense.history), **acc,
        "within_1_point": abs(acc["test_acc_change_points"]) <= 1.0,
        "sparsity": sparsity,
        "rounds": cb.rounds, "fnz_sweep": rows,
        "fnz_smallest_within_half_point": best,
        "identical_before_first_round": _identical_until(first, cb.steps, dense_log.steps),
        "params_counting": "params_dense: every entry of the dense tensors after unit removal "
                           "(zeros included; what Fig. 2.11 plots); params_nonzero: non-zero "
                           "entries only",
        "schedule": _points(schedule), "thesis": THESIS["magnitude"],
        "figures": ["fig2_8_pruning.png", "fig2_11_fnz.png"],
    }


# --------------------------------------------------------------------------- Sec. 4.2


def _unit_run(cfg, ctx, data, sub: str, replacement: str
              ) -> tuple[Trainer, PrunerCallback, Counterfactual]:
    pruner = UnitPruner("mrs", _table(cfg["schedule"]), replacement=replacement, remove=True,
                        scope="layer")
    shadow = Counterfactual(pruner, [a for a in ALTERNATIVES if a != replacement])
    cb = _pruner_callback(shadow, cfg)
    trainer = _train(cfg, ctx, data, sub, [cb, EpochLog(ctx.log, sub, cb)])
    return trainer, cb, shadow


def _expected_widths(initial: Mapping[str, int], schedule: schedules.table, t: int
                     ) -> dict[str, int]:
    """The thesis's layer rule: ``n_l - floor(f * n_l)`` units left (at least 1)."""
    f = schedule(t)
    return {k: max(1, n - amount_to_count(f, n, "floor")) for k, n in initial.items()}


def _round_rows(cb: PrunerCallback, shadow: Counterfactual, label: str) -> list[dict]:
    """One row per round: the actual penalty and the alternatives' at the same state."""
    other = {r["step"]: r for r in shadow.rows}
    out = []
    for r in cb.rounds:
        o = other.get(r["step"], {})
        row = {"run": label, "epoch": r["epoch"], "target": r["target"],
               "params_after": r["params_after"], "loss_before": r["loss_before"],
               "loss_after": r["loss_after"], "penalty": r["penalty"],
               f"penalty_if_{label}": r["penalty"]}
        for alt in shadow.alternatives:
            row[f"penalty_if_{alt}"] = o.get(f"penalty_if_{alt}")
            row[f"loss_after_if_{alt}"] = o.get(f"loss_after_if_{alt}")
        row.update({k: v for k, v in r.items() if k.startswith("remaining/")})
        out.append(row)
    return out


def _unit_summary(trainer: Trainer, cb: PrunerCallback, shadow: Counterfactual,
                  cfg) -> dict[str, Any]:
    schedule = _table(cfg["schedule"])
    pruner = shadow.pruner
    widths = {k: v for k, v in _widths(trainer.model).items() if k in pruner.initial}
    expected = _expected_widths(pruner.initial, schedule, trainer.epoch)
    return {"params_initial": cb.initial_params, "params_final": count_params(trainer.model),
            "reduction": cb.initial_params / count_params(trainer.model),
            "initial_widths": dict(pruner.initial), "widths": widths,
            "expected_widths": expected, "widths_follow_floor_rule": widths == expected}


_COLORS = {"mean": 1, "zero": 7, "activation_mean": 3}  # indices into seaborn's "Paired"


def _plot_penalties(runs: Mapping[str, Sequence[Mapping[str, Any]]], ctx: RunContext,
                    name: str, title: str) -> None:
    """Loss jump of every round, one panel per run: its own replacement and the others
    applied to the same pre-round state (same units, same scoring samples)."""
    import pandas as pd

    plt, sns = _plt()
    paired = sns.color_palette("Paired")
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.2), squeeze=False,
                             sharey=True)
    for ax, (label, rows) in zip(axes.flat, runs.items()):
        long = []
        for r in rows:
            for alt in ALTERNATIVES:
                if r.get(f"penalty_if_{alt}") is not None:
                    long.append({"round": f"{r['epoch']}: {r['target']:g}",
                                 "replacement": alt + (" (actual)" if alt == label else ""),
                                 "penalty": r[f"penalty_if_{alt}"]})
        df = pd.DataFrame(long)
        order = [a + (" (actual)" if a == label else "") for a in ALTERNATIVES]
        sns.barplot(data=df, x="round", y="penalty", hue="replacement", hue_order=order,
                    palette={o: paired[_COLORS[a]] for o, a in zip(order, ALTERNATIVES)}, ax=ax)
        ax.axhline(0, color="0.2", linewidth=0.8)
        ax.set(xlabel="round (epoch: fraction of units gone)",
               ylabel="loss after - loss before (scoring data)",
               title=f"at the states of the {label}-replacement run")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, name)


def _count_lower(rows: Sequence[Mapping], a: str, b: str) -> int:
    return sum(1 for r in rows if r.get(a) is not None and r.get(b) is not None and r[a] < r[b])


def _versus(rows: Sequence[Mapping], a: str, b: str) -> dict[str, int]:
    """Rounds where replacement ``a``'s penalty is lower than, equal to or higher than ``b``'s
    (equal: the same operation, e.g. mean replacement of units whose mean is <= 0)."""
    out = {f"{a}_lower": 0, "equal": 0, f"{b}_lower": 0}
    for r in rows:
        x, y = r.get(f"penalty_if_{a}"), r.get(f"penalty_if_{b}")
        if x is None or y is None:
            continue
        out[f"{a}_lower" if x < y else "equal" if x == y else f"{b}_lower"] += 1
    return out


def _best(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many rounds each replacement had the lowest penalty at the same state (each of
    several tied replacements counts)."""
    wins = {a: 0 for a in ALTERNATIVES}
    for r in rows:
        vals = {a: r[f"penalty_if_{a}"] for a in ALTERNATIVES
                if r.get(f"penalty_if_{a}") is not None}
        if vals:
            low = min(vals.values())
            for a, v in vals.items():
                wins[a] += v == low
    return wins


def _distinct_states(rows: Sequence[Mapping]) -> list[Mapping]:
    """Rounds of two runs taken at the same state (same epoch, bit-identical loss before:
    the runs had not diverged yet) counted once."""
    seen, out = set(), []
    for r in rows:
        key = (r["epoch"], r["loss_before"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


_UNIT_DEFAULTS = {**_DATA, **_TRAIN, **_PRUNE, "schedule": _points(schedules.THESIS_UNITS)}


@register("thesis-unit-pruning",
          "Sec. 4.2: MRS unit pruning with mean replacement on Table 4.2 (20,522 -> 4,019 "
          "parameters) vs the unpruned run (Fig. 4.6)",
          defaults=_UNIT_DEFAULTS, quick=_QUICK, source="Evci 2018, Sec. 4.2, Table 4.2, Fig. 4.6")
def thesis_unit_pruning(cfg: dict, ctx: RunContext) -> dict:
    """MRS unit pruning during training with mean replacement (Evci 2018, Sec. 4.2).

    Setting (Sec. 4.2, "the same experimental setup in Section 2.2"): the
    thesis CNN trained 10 epochs (SGD 0.01, batch 32, seed 0); after epochs
    2, 3, 4, 5 (Table 4.2) the fraction 0.1, 0.2, 0.4, 0.6 of every layer's
    units (conv1 8, conv2 16, fc1 64) is gone: ``floor(f * n_l)`` per layer,
    the units with the lowest MRS on ``score_samples`` (1000) training
    samples drawn afresh each round, their mean output on the same samples
    folded into the next layer's bias, then removed physically
    (``UnitPruner("mrs", THESIS_UNITS, replacement="mean", remove=True)``).
    At 0.6: 4, 7, 26 units left and 4,019 parameters. Each round is also
    evaluated, on copies of the pre-round model, with zero replacement and
    with the mean activation (see :class:`Counterfactual`).

    What the thesis found (MNIST): small loss peaks after the rounds at 0.4
    and 0.6; both runs reach 98.42% test accuracy; 20,522 -> 4,019 parameters
    (5x).

    Outputs: ``unpruned/``, ``pruned/``, ``rounds.csv``, ``steps.csv``,
    ``fig4_6_pruning.png``, ``penalties.png`` (each round's loss jump with
    each replacement at the same state), ``results.json``.
    """
    data = load_data(cfg)
    ds = cfg["dataset"]
    dense, dense_log = _unpruned(cfg, ctx, data)
    pruned, cb, shadow = _unit_run(cfg, ctx, data, "pruned", "mean")
    rows = _round_rows(cb, shadow, "mean")
    ctx.write_csv("rounds.csv", rows)
    ctx.write_csv("steps.csv", _steps_table(cb.steps, dense_log.steps))
    plot_pruning(ctx, cb.steps, dense_log.steps, cb.rounds, name="fig4_6_pruning.png",
                 title=f"MRS unit pruning on Table 4.2, mean replacement, {ds} (Fig. 4.6)",
                 smooth=int(cfg["smooth"]))
    _plot_penalties({"mean": rows}, ctx, "penalties.png",
                    f"loss jump of each round, same units, three replacements ({ds})")
    acc = _accuracies(pruned, dense)
    size = _unit_summary(pruned, cb, shadow, cfg)
    first = cb.rounds[0]["train_step"] if cb.rounds else None
    ctx.log(f"parameters {size['params_initial']:,} -> {size['params_final']:,} "
            f"({size['reduction']:.2f}x); widths {size['widths']}")
    ctx.log(f"test accuracy: pruned {100 * acc['test_acc_pruned']:.2f}%, unpruned "
            f"{100 * acc['test_acc_unpruned']:.2f}% ({acc['test_acc_change_points']:+.2f} points)")
    for r in rows:
        ctx.log(f"  round after epoch {r['epoch']} (f={r['target']}): penalty mean "
                f"{r['penalty']:+.4f}; at the same state zero {r['penalty_if_zero']:+.4f}, "
                f"activation mean {r['penalty_if_activation_mean']:+.4f}")
    return {
        "data": _data_info(cfg, data), "final": final_metrics(pruned.history),
        "unpruned": final_metrics(dense.history), **acc, **size,
        "at_least_5x": size["reduction"] >= 5.0,
        "within_half_point": acc["test_acc_change_points"] >= -0.5,
        "rounds": rows,
        "mean_vs_zero_at_same_state": _versus(rows, "mean", "zero"),
        "activation_mean_vs_zero_at_same_state": _versus(rows, "activation_mean", "zero"),
        "lowest_penalty_at_same_state": _best(rows),
        "identical_before_first_round": _identical_until(first, cb.steps, dense_log.steps),
        "schedule": cfg["schedule"], "thesis": THESIS["units"],
        "figures": ["fig4_6_pruning.png", "penalties.png"],
    }


def _penalty_table(mean_rows: Sequence[Mapping], zero_rows: Sequence[Mapping]) -> list[dict]:
    """One row per round of the two runs side by side: each run's loss before the round and
    the penalty of every replacement at its state."""
    table = []
    for m, z in zip(mean_rows, zero_rows):
        row = {"epoch": m["epoch"], "target": m["target"]}
        for label, r in (("mean_run", m), ("zero_run", z)):
            row[f"{label}_loss_before"] = r["loss_before"]
            for alt in ALTERNATIVES:
                row[f"{label}_penalty_if_{alt}"] = r[f"penalty_if_{alt}"]
        row["mean_run_penalty"], row["zero_run_penalty"] = m["penalty"], z["penalty"]
        table.append(row)
    return table


def _zero_verdict(table: Sequence[Mapping], states: Sequence[Mapping]) -> dict[str, Any]:
    """The thesis's claim against the penalties: across the runs (``table``) and at the same
    state (``states``, from :func:`_distinct_states`)."""
    mz = _versus(states, "mean", "zero")
    return {
        "rounds": len(table),
        "across_runs": _versus([{"penalty_if_mean": r["mean_run_penalty"],
                                 "penalty_if_zero": r["zero_run_penalty"]} for r in table],
                               "mean", "zero"),
        "distinct_states": len(states),
        "states": [{"run": r["run"], "epoch": r["epoch"]} for r in states],
        "mean_vs_zero": mz,
        "activation_mean_vs_zero": _versus(states, "activation_mean", "zero"),
        "activation_mean_vs_mean": _versus(states, "activation_mean", "mean"),
        "lowest_penalty": _best(states),
        "sum_penalty": {a: sum(r[f"penalty_if_{a}"] for r in states) for a in ALTERNATIVES},
        "claim_supported": mz["zero_lower"] == 0 and mz["mean_lower"] > 0,
        "claim": "mean replacement never has a higher penalty than zero replacement at the "
                 "same state, and sometimes a lower one",
    }


@register("thesis-unit-pruning-zero",
          "Sec. 4.2 with zero replacement beside mean replacement: the loss jump of every "
          "round, across the runs and at the same state",
          defaults=_UNIT_DEFAULTS, quick=_QUICK, source="Evci 2018, Sec. 3.1, 4.2, Table 4.2")
def thesis_unit_pruning_zero(cfg: dict, ctx: RunContext) -> dict:
    """Does mean replacement disturb the network less than removal? (Evci 2018, Sec. 3.1, 4.2)

    The run of ``thesis-unit-pruning`` (``mean/``: mean replacement, the same
    settings, so the same numbers) beside the same run with
    ``replacement="zero"`` (``zero/``: the removed units simply vanish; the
    units are still chosen by MRS), and the unpruned run. For each round,
    the loss jump ``loss_after - loss_before`` on that round's scoring
    samples (``RoundReport.penalty``):

    * across runs: mean run vs zero run. Both runs are in the same state at
      the first round only; later rounds compare different networks;
    * at the same state (the fair comparison): every round of each run is
      also applied, on copies of the pre-round model, with the same units
      and the other replacements: ``mean`` (the toolkit's, eq. 1.5: the
      producer's output held at its mean ``E[y]``, so consumers see
      ``relu(E[y])``), ``zero``, and ``activation_mean`` (consumers see the
      mean of what they received, ``E[maxpool(relu(y))]``; see
      :func:`activation_means`).

    The thesis's claim (Sec. 3.1): removing a unit is replacing its output by
    zero, which fails for units with a constant non-zero output; replacing
    by the mean output disturbs the network less.

    Outputs: ``unpruned/``, ``mean/``, ``zero/``, ``penalties.csv`` (one row
    per round: every penalty), ``rounds.csv``, ``penalties.png``,
    ``pruning_zero.png`` and ``pruning_mean.png`` (Fig. 4.6 for each),
    ``results.json``.
    """
    data = load_data(cfg)
    ds = cfg["dataset"]
    dense, dense_log = _unpruned(cfg, ctx, data)
    mean, mean_cb, mean_shadow = _unit_run(cfg, ctx, data, "mean", "mean")
    zero, zero_cb, zero_shadow = _unit_run(cfg, ctx, data, "zero", "zero")
    mean_rows = _round_rows(mean_cb, mean_shadow, "mean")
    zero_rows = _round_rows(zero_cb, zero_shadow, "zero")
    ctx.write_csv("rounds.csv", mean_rows + zero_rows)
    table = _penalty_table(mean_rows, zero_rows)
    ctx.write_csv("penalties.csv", table)
    _plot_penalties({"mean": mean_rows, "zero": zero_rows}, ctx, "penalties.png",
                    f"loss jump of each round, mean vs zero replacement ({ds})")
    for cb, sub in ((mean_cb, "mean"), (zero_cb, "zero")):
        plot_pruning(ctx, cb.steps, dense_log.steps, cb.rounds, name=f"pruning_{sub}.png",
                     title=f"MRS unit pruning on Table 4.2, {sub} replacement, {ds}",
                     smooth=int(cfg["smooth"]))
    acc_mean, acc_zero = _accuracies(mean, dense), _accuracies(zero, dense)
    verdict = _zero_verdict(table, _distinct_states(mean_rows + zero_rows))
    for r in table:
        ctx.log(f"  round after epoch {r['epoch']} (f={r['target']}): "
                + "; ".join(f"{run} run: " + ", ".join(
                    f"{a} {r[f'{run}_run_penalty_if_{a}']:+.4f}" for a in ALTERNATIVES)
                    for run in ("mean", "zero")))
    ctx.log(f"test accuracy: mean {100 * acc_mean['test_acc_pruned']:.2f}%, zero "
            f"{100 * acc_zero['test_acc_pruned']:.2f}%, unpruned "
            f"{100 * acc_mean['test_acc_unpruned']:.2f}%")
    return {
        "data": _data_info(cfg, data), "final": final_metrics(zero.history),
        "final_mean": final_metrics(mean.history), "unpruned": final_metrics(dense.history),
        "test_acc_zero": acc_zero["test_acc_pruned"], "test_acc_mean": acc_mean["test_acc_pruned"],
        "test_acc_unpruned": acc_mean["test_acc_unpruned"],
        "test_acc_change_points_zero": acc_zero["test_acc_change_points"],
        "test_acc_change_points_mean": acc_mean["test_acc_change_points"],
        "size_mean": _unit_summary(mean, mean_cb, mean_shadow, cfg),
        "size_zero": _unit_summary(zero, zero_cb, zero_shadow, cfg),
        "penalties": table, "verdict": verdict, "rounds": mean_rows + zero_rows,
        "schedule": cfg["schedule"],
        "figures": ["penalties.png", "pruning_mean.png", "pruning_zero.png"],
    }
