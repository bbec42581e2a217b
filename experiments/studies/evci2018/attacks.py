"""Reproductions of the learning-rate attacks of Evci 2018, Ch. 3.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU, 2018 (https://arxiv.org/abs/1806.06068); below: Evci 2018 or the thesis.

* ``thesis-attack-relu-bn`` -- Sec. 3.4, ReLU with BatchNorm, multiplier 100;
* ``thesis-attack-tanh`` -- Sec. 3.5, Tanh, multiplier 1000;
* ``thesis-attack-relu`` -- Sec. 3.6, plain ReLU (the thesis gives no
  multiplier for it; 100, as for ReLU+BatchNorm, so the two compare);
* ``thesis-attacks`` -- the three in sub-folders and their comparison.

Setting (Sec. 3.3): the thesis's CIFAR CNN (App. C.2: conv 8 and 16 filters
5x5, max-pooling, FC 64, FC 10) built by
``thesis_cifar_cnn(in_channels, image_size, activation, batchnorm)`` -- on
Fashion-MNIST (1 x 28 x 28, the default; ``--set dataset=cifar10`` runs it
on CIFAR-10 when its files are provided), PyTorch's default initialization
(``U(-1/sqrt(n_in), 1/sqrt(n_in))``, the thesis's ``n_unit`` fan-in
uniform), SGD without momentum at learning rate 0.01, batch 32. Each
attacked unit is its own run: its learning rate is multiplied by ``m`` for one
update at steps 2000, 2010, ..., 2090 (10 attacks at 10-step intervals),
through :class:`pruners.LRAttack` on the unit's incoming weights only (Sec.
3.3: not its bias). Every ``probe_every`` steps a
:class:`saliency.UnitTracker` records, for every unit of the attacked layer,
MRP and MRS (Def. 3.1.1-3.1.2), the output-gradient norm, the L1 norms of
the incoming and outgoing weights, activation moments, and histograms of
the outputs and activations, on a fixed probe of 1000 validation samples
(the thesis's validation set of 1000). The *original* run is the same run
with ``m = 1`` (bit-identical to no attack, tested). Attacked runs start from
the original's checkpoint at the last epoch end before the attack (training
is identical until then, so the branch is the run from scratch).

Units: four per variant, in the layer the thesis attacks there (conv1 for
ReLU+BatchNorm and Tanh, Fig. 3.1 and 3.5; conv2 for ReLU, Fig. 3.9).

Shortened (to fit three full runs into about 45-60 minutes on 2 shared CPU
cores): 5 epochs instead of 10 for the ReLU variants and 10 instead of 30
for Tanh (the attack still starts at step 2000, ~1.2 epochs in, leaving
~6,500 and ~15,100 steps after it), a probe every 100 steps (the thesis's
figures look denser), four attacked units per variant (the thesis shows 2-4).

Reported per attacked unit (``summary.csv``, ``results.json``), with
``r_t = MRP_attacked(t) / MRP_original(t)`` at the probes ``t`` after the
last attacked step:

* ``killed``: the unit lost most of its MRP and stayed low: over the second
  half of the post-attack period, the ratio of the mean MRPs is below
  ``killed_ratio`` (0.5) and at least :data:`KILLED_SHARE` (90%) of the
  probes have ``r_t < killed_ratio``. ``killed_strict`` asks it of every
  probe (the first definition, which one noisy probe out of 33 defeats; both
  are reported). Also ``ratio_first`` (right after the attacks),
  ``ratio_end`` (means over the last 5 probes) and ``ratio_min``;
* ``mrs_picks_min_mrp``: the fraction of post-attack probes at which the
  unit with the smallest MRS in the layer has the smallest MRP, up to
  :data:`PICK_TOL` (0.1%) of the layer's mean MRP -- several all but dead
  units tie at ~0 -- (the thesis, Sec. 3.7: MRS "never failed at choosing
  the smallest MRP unit"); ``mrs_picks_min_mrp_first`` at the first probe
  after the attack; ``mrs_argmin_is_mrp_argmin`` the strict index equality;
  ``mrs_picks_min_mrp_original`` the same in the original run;
  ``attacked_is_min_mrp``: how often the attacked unit has the layer's
  smallest MRP;
* the final test accuracy of the attacked run against the original (Sec.
  3.4: "none of the attacks change the loss curves").

Every run checkpoints each epoch (the tracker's probes and the attack's
state are in the checkpoint), so a killed reproduction resumes; a folder
holding runs with other settings is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from experiments.harness import atomic
from experiments.harness.callbacks import AttackCallback, TrackingCallback
from experiments.harness.models import build_model
from experiments.harness.registry import register
from experiments.harness.run import RunContext, changed_settings, final_metrics, load_data
from experiments.harness.training import TrainConfig, Trainer
from pruners import LRAttack
from saliency import UnitTracker

__all__ = ["VARIANTS", "THESIS", "KILLED_SHARE", "PICK_TOL", "attack_summary", "rebin", "run_variant"]

#: "stayed low": the share of the second half's probes below ``killed_ratio``
KILLED_SHARE = 0.9
#: MRS "picks" the lowest-MRP unit when that unit's MRP is within this fraction of the
#: layer's mean MRP of the minimum (several dead units tie at ~0)
PICK_TOL = 1e-3

#: the three variants: model options, attacked layer and multiplier, epochs (shortened)
VARIANTS: dict[str, dict[str, Any]] = {
    "relu-bn": {"activation": "relu", "batchnorm": True, "layer": "conv1", "multiplier": 100.0,
                "epochs": 5},
    "tanh": {"activation": "tanh", "batchnorm": False, "layer": "conv1", "multiplier": 1000.0,
             "epochs": 10},
    "relu": {"activation": "relu", "batchnorm": False, "layer": "conv2", "multiplier": 100.0,
             "epochs": 5},
}

#: what the thesis reports (CIFAR-10), for results.json and the docs
THESIS: dict[str, dict[str, Any]] = {
    "relu-bn": {"section": "3.4", "epochs": 10, "multiplier": 100, "test_acc": 0.67,
                "claim": "the attack lowers the MRP of some units a lot (unit 0 of conv1) and "
                         "leaves others (unit 4) unchanged; none of the attacks change the loss "
                         "curves"},
    "tanh": {"section": "3.5", "epochs": 30, "multiplier": 1000, "test_acc": 0.64,
             "claim": "all four attacked conv1 units drop to an MRP of 0.2-0.3 (two of them from "
                      "about twice the others'); MRS approximates MRP very well"},
    "relu": {"section": "3.6", "epochs": 10, "multiplier": None, "test_acc": 0.61,
             "claim": "ReLU units are hard to attack: most attacked units' MRP increases; 2 of "
                      "4 attacked units of the second layer died (MRP 0)"},
    "all": {"section": "3.7",
            "claim": "MRS never failed at choosing the smallest MRP unit; ReLU+BatchNorm behaves "
                     "like a bounded activation and its units die more easily than plain ReLU's"},
}

_DATA = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
         "data_seed": 0, "seed": 0}
_TRAIN = {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "momentum": 0.0,
          "weight_decay": 0.0, "lr_rule": "constant", "eval_batch_size": 2000,
          "max_batches": None}
_ATTACK = {"units": [0, 1, 2, 3], "start": 2000, "steps": 1, "repeats": 10, "interval": 10,
           "attack_bias": False, "outgoing": False, "probe_every": 100, "probe_size": 1000,
           "bins": 40, "threads": 1, "killed_ratio": 0.5}
#: a seconds-long version: 400 samples per split (13 steps per epoch), attacks at 14, 16, 18
_QUICK = {"limit": 400, "val_size": 100, "epochs": 2, "start": 14, "repeats": 3, "interval": 2,
          "probe_every": 2, "probe_size": 64, "units": [1], "eval_batch_size": 400,
          "bins": 10}
#: settings that do not change what is trained
_FREE = ("data_dir", "eval_batch_size", "threads", "killed_ratio", "quick", "variants")


def _defaults(variant: str) -> dict[str, Any]:
    return {**_DATA, **_TRAIN, **_ATTACK, **VARIANTS[variant]}


# --------------------------------------------------------------------------- runs


def _check_folder(folder: Path, cfg: Mapping[str, Any]) -> None:
    """Refuse to resume runs trained with other settings; record ours."""
    path = folder / "settings.json"
    mine = {k: v for k, v in cfg.items() if k not in _FREE}
    if path.exists():
        what = changed_settings(atomic.read_json(path), mine)
        if what:
            raise ValueError(f"{folder} holds runs with other settings ({what}); rerun them as "
                             "they were, pass another --out, or delete the folder")
    atomic.write_json(path, mine)


def _probe(dataset, size: int) -> list:
    x, y = dataset.tensors[0][:size], dataset.tensors[1][:size]
    if not len(x):
        raise ValueError("the probe is empty: the validation split has no samples")
    return [(x[i:i + 500], y[i:i + 500]) for i in range(0, len(x), 500)]


def _trainer(cfg: Mapping[str, Any], data, probe, folder: Path, *, epochs: int,
             units: Sequence[int], multiplier: float, progress) -> Trainer:
    """A run of the thesis CNN with an attack on ``units`` and tracking of the whole layer."""
    torch.manual_seed(int(cfg["seed"]))
    shape = data.input_shape
    kwargs = {"in_channels": int(shape[0]), "image_size": int(shape[1]),
              "activation": cfg["activation"], "batchnorm": bool(cfg["batchnorm"])}
    model = build_model("thesis_cifar_cnn", **kwargs)
    example = probe[0][0][:1]
    attack = LRAttack(model, {cfg["layer"]: list(units)}, multiplier, start=int(cfg["start"]),
                      steps=int(cfg["steps"]), repeats=int(cfg["repeats"]),
                      interval=int(cfg["interval"]), bias=bool(cfg["attack_bias"]),
                      outgoing=bool(cfg["outgoing"]), example_input=example)
    tracker = UnitTracker(model, {cfg["layer"]: None}, probe, every=int(cfg["probe_every"]),
                          histograms=("activation", "output"), bins=int(cfg["bins"]),
                          example_input=example)
    train_cfg = TrainConfig.from_mapping({**cfg, "epochs": epochs})
    return Trainer(model, data.train, val_set=data.val, test_set=data.test, config=train_cfg,
                   arch={"model": "thesis_cifar_cnn", "kwargs": kwargs},
                   callbacks=[AttackCallback(attack), TrackingCallback(tracker)],
                   checkpoint=folder / "checkpoint.pt", progress=progress)


def _steps_per_epoch(cfg: Mapping[str, Any], n_train: int) -> int:
    n = math.ceil(n_train / int(cfg["batch_size"]))
    return min(n, int(cfg["max_batches"])) if cfg.get("max_batches") else n


def run_variant(cfg: Mapping[str, Any], ctx: RunContext, folder: Path) -> dict[str, Any]:
    """Train the original and every attacked run of one variant into ``folder``; summarize."""
    folder.mkdir(parents=True, exist_ok=True)
    _check_folder(folder, cfg)
    data = load_data(cfg)
    probe = _probe(data.val, int(cfg["probe_size"]))
    epochs, units = int(cfg["epochs"]), [int(u) for u in cfg["units"]]
    if not units:
        raise ValueError("units names no unit to attack")
    spe = _steps_per_epoch(cfg, len(data.train))
    branch_epoch = min(int(cfg["start"]) // spe, epochs)
    branch = folder / "branch.pt"
    orig = folder / "original"

    def log(msg):
        ctx.log(f"[{folder.name}] {msg}")

    if branch_epoch > 0 and not branch.exists():
        tr = _trainer(cfg, data, probe, orig, epochs=branch_epoch, units=units, multiplier=1.0,
                      progress=ctx.progress)
        if tr.epoch > branch_epoch:
            raise ValueError(f"{orig} is past epoch {branch_epoch} but {branch} is missing; "
                             "delete the folder to rerun")
        log(f"original run to epoch {branch_epoch} (step {branch_epoch * spe}), the branch point")
        tr.fit()
        atomic.write_bytes(branch, (orig / "checkpoint.pt").read_bytes())
    runs: dict[str, Trainer] = {}
    log(f"original run (multiplier 1), {epochs} epochs")
    runs["original"] = _trainer(cfg, data, probe, orig, epochs=epochs, units=units,
                                multiplier=1.0, progress=ctx.progress)
    runs["original"].fit()
    for u in units:
        sub = folder / f"unit{u}"
        sub.mkdir(parents=True, exist_ok=True)
        if branch_epoch > 0 and not (sub / "checkpoint.pt").exists():
            atomic.write_bytes(sub / "checkpoint.pt", branch.read_bytes())
        log(f"attack on {cfg['layer']} unit {u}: multiplier {cfg['multiplier']:g} at steps "
            f"{cfg['start']}+{cfg['interval']}k, {cfg['repeats']} times")
        runs[f"unit{u}"] = _trainer(cfg, data, probe, sub, epochs=epochs, units=[u],
                                    multiplier=float(cfg["multiplier"]), progress=ctx.progress)
        runs[f"unit{u}"].fit()
    records = {name: tr.callbacks[1].tracker.records for name, tr in runs.items()}
    histories = {name: tr.history for name, tr in runs.items()}
    attack = runs[f"unit{units[0]}"].callbacks[0].attack
    summary = attack_summary(records, cfg["layer"], units, attack.schedule,
                             float(cfg["killed_ratio"]), histories)
    for name, tr in runs.items():
        h = tr.history[-1]
        log(f"{name:>9}: test acc {h.get('test_acc', float('nan')):.4f}, "
            f"{len(records[name])} probes, applied attacks {tr.callbacks[0].attack.applied[:3]}"
            f"{'...' if len(tr.callbacks[0].attack.applied) > 3 else ''}")
    _write_outputs(folder, cfg, records, histories, summary, attack.schedule)
    for row in summary["units"]:
        log(f"unit {row['unit']}: MRP ratio first {row['ratio_first']:.3f}, end "
            f"{row['ratio_end']:.3f}, killed {row['killed']}; MRS picks min MRP "
            f"{row['mrs_picks_min_mrp']:.2f} of post-attack probes")
    return {"summary": summary, "branch_step": branch_epoch * spe, "steps_per_epoch": spe,
            "final": {name: final_metrics(h) for name, h in histories.items()},
            "attacked_steps": attack.schedule}


# --------------------------------------------------------------------------- summary


def _layer_series(records: list, layer: str, quantity: str) -> dict[int, list[float]]:
    return {r["step"]: r["layers"][layer][quantity] for r in records}


def _argmin(values: Sequence[float]) -> int:
    return int(np.argmin(np.asarray(values, dtype=np.float64)))


def _picks(mrs: Sequence[float], mrp: Sequence[float]) -> bool:
    """Whether the unit MRS ranks lowest has the layer's smallest MRP, up to
    :data:`PICK_TOL` times the layer's mean MRP (units that are all but dead tie)."""
    mrp = np.asarray(mrp, dtype=np.float64)
    return bool(mrp[_argmin(mrs)] <= mrp.min() + PICK_TOL * mrp.mean())


def attack_summary(records: Mapping[str, list], layer: str, units: Sequence[int],
                   schedule: Sequence[int], killed_ratio: float = 0.5,
                   histories: Mapping[str, list] | None = None) -> dict[str, Any]:
    """The numbers of one variant (see the module docstring) from the tracker records.

    ``records`` maps ``"original"`` and ``"unit<u>"`` to a tracker's records
    (every unit of ``layer`` tracked).
    """
    last = max(schedule)
    orig_mrp = _layer_series(records["original"], layer, "mrp")
    rows = []
    for u in units:
        recs = records[f"unit{u}"]
        mrp = _layer_series(recs, layer, "mrp")
        mrs = _layer_series(recs, layer, "mrs")
        w_in = _layer_series(recs, layer, "w_in_l1")
        units_of = recs[0]["layers"][layer]["units"]
        j = units_of.index(u)
        post = [t for t in sorted(mrp) if t > last and t in orig_mrp]
        before = [t for t in sorted(mrp) if t <= min(schedule)]
        if not post:
            raise ValueError(f"no probe after the last attacked step {last}: train longer or "
                             "probe more often")
        ratio = {t: (mrp[t][j] / orig_mrp[t][j] if orig_mrp[t][j] > 0 else math.inf)
                 for t in post}
        mid = (post[0] + post[-1]) / 2
        late = [t for t in post if t >= mid]
        tail = post[-5:]
        end = (sum(mrp[t][j] for t in tail) / len(tail)) / max(
            sum(orig_mrp[t][j] for t in tail) / len(tail), 1e-300)
        orig_mrs = _layer_series(records["original"], layer, "mrs")
        picks = [_picks(mrs[t], mrp[t]) for t in post]
        strict = [_argmin(mrs[t]) == _argmin(mrp[t]) for t in post]
        orig_picks = [_picks(orig_mrs[t], orig_mrp[t]) for t in post]
        row = {
            "unit": u, "mrp_before": mrp[before[-1]][j] if before else None,
            "mrp_original_end": sum(orig_mrp[t][j] for t in tail) / len(tail),
            "mrp_attacked_end": sum(mrp[t][j] for t in tail) / len(tail),
            "ratio_first": ratio[post[0]], "ratio_end": end, "ratio_min": min(ratio.values()),
            "ratio_max_second_half": max(ratio[t] for t in late),
            "ratio_second_half": (sum(mrp[t][j] for t in late)
                                  / max(sum(orig_mrp[t][j] for t in late), 1e-300)),
            "below_ratio_share": sum(ratio[t] < killed_ratio for t in post) / len(post),
            "below_ratio_share_second_half": sum(ratio[t] < killed_ratio for t in late)
            / len(late),
            "killed_strict": all(ratio[t] < killed_ratio for t in late),
            "mrs_picks_min_mrp": sum(picks) / len(picks),
            "mrs_picks_min_mrp_first": bool(picks[0]),
            "mrs_argmin_is_mrp_argmin": sum(strict) / len(strict),
            "mrs_picks_min_mrp_original": sum(orig_picks) / len(orig_picks),
            "attacked_is_min_mrp": sum(_argmin(mrp[t]) == j for t in post) / len(post),
            "w_in_l1_ratio": (w_in[post[0]][j] / w_in[before[-1]][j]) if before else None,
            "post_probes": len(post),
        }
        row["killed"] = bool(row["ratio_second_half"] < killed_ratio
                             and row["below_ratio_share_second_half"] >= KILLED_SHARE)
        if histories is not None:
            row["test_acc_attacked"] = histories[f"unit{u}"][-1].get("test_acc")
            row["test_acc_original"] = histories["original"][-1].get("test_acc")
        rows.append(row)
    killed = sum(r["killed"] for r in rows)
    return {
        "layer": layer, "units": rows, "killed": killed, "attacked": len(rows),
        "killed_fraction": killed / len(rows),
        "killed_strict": sum(r["killed_strict"] for r in rows),
        "mrs_picks_min_mrp": sum(r["mrs_picks_min_mrp"] for r in rows) / len(rows),
        "mrs_picks_min_mrp_first": sum(r["mrs_picks_min_mrp_first"] for r in rows) / len(rows),
        "mrs_argmin_is_mrp_argmin": sum(r["mrs_argmin_is_mrp_argmin"] for r in rows) / len(rows),
        "mrs_picks_min_mrp_original": rows[0]["mrs_picks_min_mrp_original"],
        "median_ratio_end": float(np.median([r["ratio_end"] for r in rows])),
        "killed_ratio": killed_ratio, "last_attacked_step": last,
    }


# --------------------------------------------------------------------------- outputs


def rebin(edges: Sequence[float], counts: Sequence[int], grid: np.ndarray) -> np.ndarray:
    """Counts of a histogram redistributed onto ``grid`` edges (uniform within bins).

    For display only: probes record histograms over their own ranges.
    """
    e = np.asarray(edges, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=np.float64))])
    return np.diff(np.interp(grid, e, cdf, left=0.0, right=cdf[-1]))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def _plot_metrics(folder: Path, cfg, records, units, schedule, title: str) -> None:
    """Fig. 3.1 / 3.3 / 3.9: per attacked unit, six quantities, attacked vs original."""
    plt, _ = _plt()
    from matplotlib.ticker import MaxNLocator
    layer = cfg["layer"]
    cols = [("mrp", "MRP"), ("mrs", "MRS"), ("w_out_l1", "outgoing weights (L1)"),
            ("grad_norm", "output gradient (RMS norm)"), ("w_in_l1", "incoming weights (L1)"),
            ("loss", "probe loss")]
    fig, axes = plt.subplots(len(units), len(cols), figsize=(3.1 * len(cols), 2.3 * len(units)),
                             squeeze=False)
    for r, u in enumerate(units):
        for c, (q, label) in enumerate(cols):
            ax = axes[r][c]
            for name, style, color in (("original", "--", "0.4"), (f"unit{u}", "-", "C3")):
                recs = records[name]
                j = recs[0]["layers"][layer]["units"].index(u)
                steps = [rec["step"] for rec in recs]
                vals = [rec["loss"] if q == "loss" else rec["layers"][layer][q][j] for rec in recs]
                ax.plot(steps, vals, style, color=color, lw=1.2,
                        label="original" if name == "original" else f"attacked x{cfg['multiplier']:g}")
            ax.axvspan(min(schedule), max(schedule), color="C1", alpha=0.25, lw=0)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{layer} unit {u}", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == len(units) - 1:
                ax.set_xlabel("step", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic.save_figure(fig, folder / "fig3_metrics.png")


def _plot_histograms(folder: Path, cfg, records, units, schedule, title: str) -> None:
    """Fig. 3.2 / 3.6 / 3.8 / 3.10: output and activation histograms over steps."""
    plt, _ = _plt()
    from matplotlib.ticker import MaxNLocator
    layer = cfg["layer"]
    kinds = [("output", "output h"), ("activation", "activation a")]
    fig, axes = plt.subplots(len(units), 4, figsize=(13, 2.4 * len(units)), squeeze=False)
    for r, u in enumerate(units):
        for k, (kind, label) in enumerate(kinds):
            runs = (("original", "original"), (f"unit{u}", f"attacked x{cfg['multiplier']:g}"))
            lo = min(min(h["edges"][0] for h in _hists(records[n], layer, kind, u)) for n, _ in runs)
            hi = max(max(h["edges"][-1] for h in _hists(records[n], layer, kind, u)) for n, _ in runs)
            grid = np.linspace(lo, hi, 61)
            for c, (name, what) in enumerate(runs):
                ax = axes[r][2 * k + c]
                hs = _hists(records[name], layer, kind, u)
                steps = [rec["step"] for rec in records[name]]
                mat = np.stack([rebin(h["edges"], h["counts"], grid) for h in hs], axis=1)
                mat = mat / np.maximum(mat.sum(0, keepdims=True), 1)
                ax.imshow(np.log10(mat + 1e-4), origin="lower", aspect="auto", cmap="magma",
                          extent=(steps[0], steps[-1], lo, hi), vmin=-4, vmax=0)
                ax.grid(False)
                ax.xaxis.set_major_locator(MaxNLocator(4))
                ax.axvline(min(schedule), color="c", lw=0.8, ls=":")
                ax.set_title(f"{label}, {what}", fontsize=8)
                if c == 0 and k == 0:
                    ax.set_ylabel(f"{layer} unit {u}\nvalue", fontsize=8)
                ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}: log10 fraction of values per bin over steps (dotted: first attack)",
                 fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, folder / "fig3_histograms.png")


def _hists(recs, layer, kind, u):
    j = recs[0]["layers"][layer]["units"].index(u)
    return [rec["histograms"][layer][kind][j] for rec in recs]


def _plot_mrs_mrp(folder: Path, cfg, records, units, title: str) -> None:
    """MRS against MRP of every unit of the layer at the last probe (Sec. 3.7)."""
    plt, _ = _plt()
    layer = cfg["layer"]
    fig, axes = plt.subplots(1, len(units), figsize=(3.2 * len(units), 3.0), squeeze=False)
    for c, u in enumerate(units):
        ax = axes[0][c]
        row = records[f"unit{u}"][-1]["layers"][layer]
        mrp = np.maximum(np.asarray(row["mrp"]), 1e-12)
        mrs = np.maximum(np.asarray(row["mrs"]), 1e-12)
        j = row["units"].index(u)
        ax.scatter(mrp, mrs, s=18, color="0.5")
        ax.scatter([mrp[j]], [mrs[j]], s=40, color="C3", label=f"attacked unit {u}")
        ax.set(xscale="log", yscale="log", xlabel="MRP", ylabel="MRS" if c == 0 else "")
        ax.set_title(f"run unit{u}, step {records[f'unit{u}'][-1]['step']}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: MRS vs MRP of every {layer} unit at the last probe", fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, folder / "mrs_vs_mrp.png")


def _write_outputs(folder: Path, cfg, records, histories, summary, schedule) -> None:
    units = [int(u) for u in cfg["units"]]
    rows = []
    for name, recs in records.items():
        for rec in recs:
            row = rec["layers"][cfg["layer"]]
            for j, unit in enumerate(row["units"]):
                rows.append({"run": name, "step": rec["step"], "loss": rec["loss"],
                             "unit": unit, **{q: row[q][j] for q in row if q != "units"}})
    atomic.write_csv(folder / "tracking.csv", rows)
    atomic.write_csv(folder / "summary.csv", summary["units"])
    hist_rows = [{"run": name, **row} for name, h in histories.items() for row in h]
    atomic.write_csv(folder / "history.csv", hist_rows)
    title = (f"{cfg['activation']}{'+BatchNorm' if cfg['batchnorm'] else ''}, "
             f"{cfg['layer']}, x{cfg['multiplier']:g} at steps {min(schedule)}-{max(schedule)}")
    _plot_metrics(folder, cfg, records, units, schedule, title)
    _plot_histograms(folder, cfg, records, units, schedule, title)
    _plot_mrs_mrp(folder, cfg, records, units, title)


# --------------------------------------------------------------------------- experiments


def _with_threads(cfg, fn):
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _variant_experiment(variant: str):
    def fn(cfg: dict, ctx: RunContext) -> dict:
        out = _with_threads(cfg, lambda: run_variant(cfg, ctx, ctx.out_dir))
        return {"variant": variant, "thesis": THESIS[variant], **out}

    fn.__name__ = f"thesis_attack_{variant.replace('-', '_')}"
    fn.__doc__ = (f"Learning-rate attacks, {variant} (Evci 2018, Sec. {THESIS[variant]['section']})"
                  "; see the module docstring.")
    return fn


for _v, _sec, _what in (("relu-bn", "3.4", "ReLU+BatchNorm"), ("tanh", "3.5", "Tanh"),
                        ("relu", "3.6", "plain ReLU")):
    register(f"thesis-attack-{_v}",
             f"Sec. {_sec}: learning-rate attacks on {_what} units of the thesis CNN "
             f"(x{VARIANTS[_v]['multiplier']:g}, 10 times from step 2000), MRP/MRS tracked",
             defaults=_defaults(_v), quick=_QUICK, source=f"Evci 2018, Sec. 3.3, {_sec}")(
        _variant_experiment(_v))


#: the combined experiment: ``epochs`` / ``multiplier`` None = each variant's own
_ALL_DEFAULTS = {**_DATA, **_TRAIN, **_ATTACK, "epochs": None, "multiplier": None,
                 "variants": list(VARIANTS)}


@register("thesis-attacks",
          "Sec. 3.4-3.7: the three attack reproductions (ReLU+BatchNorm, Tanh, ReLU) and "
          "their comparison: how many units die, whether MRS finds the lowest-MRP unit",
          defaults=_ALL_DEFAULTS, quick=_QUICK, source="Evci 2018, Sec. 3.3-3.7")
def thesis_attacks(cfg: dict, ctx: RunContext) -> dict:
    """All three variants into ``relu-bn/``, ``tanh/``, ``relu/`` (each as its own
    experiment would run it, so ``--out runs/thesis-attacks/tanh`` of
    ``thesis-attack-tanh`` fills the same folder) and the comparison of Sec. 3.7."""
    names = list(cfg["variants"])
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise ValueError(f"variants must be a non-empty subset of {list(VARIANTS)}, got {names}")
    out: dict[str, Any] = {"variants": {}, "thesis": THESIS}
    for name in names:
        vcfg = {**_defaults(name), **{k: v for k, v in cfg.items()
                                      if k in _defaults(name) and v is not None}}
        vcfg["quick"] = cfg.get("quick", False)
        res = _with_threads(vcfg, lambda vcfg=vcfg, name=name: run_variant(
            vcfg, ctx, ctx.out_dir / name))
        out["variants"][name] = res
    frac = {n: r["summary"]["killed_fraction"] for n, r in out["variants"].items()}
    ratio_end = {n: r["summary"]["median_ratio_end"] for n, r in out["variants"].items()}
    picks = {n: r["summary"]["mrs_picks_min_mrp"] for n, r in out["variants"].items()}
    out["comparison"] = {"killed_fraction": frac, "median_ratio_end": ratio_end,
                         "mrs_picks_min_mrp": picks}
    if {"relu", "relu-bn", "tanh"} <= set(frac):
        others = min(frac["relu-bn"], frac["tanh"])
        out["comparison"]["relu_harder_to_kill"] = bool(
            frac["relu"] < others or (frac["relu"] == others
                                      and ratio_end["relu"] > max(ratio_end["relu-bn"],
                                                                  ratio_end["tanh"])))
    rows = [{"variant": n, **{k: r["summary"][k] for k in (
        "layer", "attacked", "killed", "killed_strict", "killed_fraction", "median_ratio_end",
        "mrs_picks_min_mrp", "mrs_picks_min_mrp_first")}} for n, r in out["variants"].items()]
    ctx.write_csv("comparison.csv", rows)
    for r in rows:
        ctx.log(f"{r['variant']:>8}: {r['killed']}/{r['attacked']} attacked units killed, median "
                f"MRP ratio at the end {r['median_ratio_end']:.3f}, MRS picks the min-MRP unit "
                f"at {100 * r['mrs_picks_min_mrp']:.0f}% of post-attack probes")
    return out
