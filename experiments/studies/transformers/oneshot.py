"""One-shot pruning of attention heads and FFN neurons: scores, selection, grid, correlations.

What both transformer experiments (:mod:`~experiments.studies.transformers.vit`,
:mod:`~experiments.studies.transformers.decoder`) do once their network is trained:

1. **Scores** (:func:`score_units`): every scorer of ``SCORERS`` named in the config scores
   every unit of the trained network, on one fixed sample of training data
   (:func:`experiments.harness.callbacks.scoring_batches`): the heads of every attention module
   (keyed by the module's name, ``"blocks.0.attn"``) and the neurons of every FFN (keyed by
   ``fc1``, or by the gate/up group ``"blocks.0.gate"`` of a SwiGLU FFN). Exact ``mrp`` is the
   oracle: the loss change of holding that one unit at its mean (Evci 2018, Def. 3.1.1).
2. **Selection** (:func:`removal_counts`, :func:`select_units`): at fraction ``f`` every layer
   loses ``round(f n)`` of its ``n`` units (Python's ``round``, as ``torch.nn.utils.prune``;
   :func:`pruners.schedules.amount_to_count`), at most ``n - 1``: the lowest-scored ones, ties
   to the lower index (a stable sort). Heads are whole heads. With grouped-query attention
   (``num_kv_heads < num_heads``, ``G`` query heads per key/value head) the count is taken
   per key/value group, ``round(f G)`` of its ``G`` query heads, at most ``G - 1``, so every
   group keeps the same number of query heads (what the toolkit's removal requires).
3. **Grid** (:func:`run_grid`): for every scorer and fraction, a copy of the trained network
   loses the selected units with ``remove_units(..., replacement="mean")`` (the means on the
   scoring sample, folded into the output projection's and the down projection's biases),
   is evaluated, then fine-tuned for the same short recovery (a fresh Adam, the same fixed
   subset of the training data, the same steps for every cell) and evaluated again. Each cell
   lives in its own folder: ``pruned.pt`` (the network right after pruning, a checkpoint of the
   harness), ``pruned.json`` (the selection and the figures right after pruning),
   ``checkpoint.pt`` (the recovery's :class:`~experiments.harness.training.Trainer`, every
   epoch), ``history.csv`` and ``settings.json``; a killed grid resumes at the cell it was in.
4. **Correlations** (:func:`spearman_rows`): per layer (heads and FFN neurons separately),
   Spearman's rank correlation (``scipy.stats.spearmanr``) of each scorer's scores with exact
   MRP's.

Sources: U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068 (MRS, MRP, mean replacement); P. Michel, O. Levy, G. Neubig,
*Are Sixteen Heads Really Better than One?*, NeurIPS 2019, https://arxiv.org/abs/1905.10650
(head importance by the gradient of a head mask, pruning heads); P. Molchanov, S. Tyree, T.
Karras, T. Aila, J. Kautz, *Pruning Convolutional Neural Networks for Resource Efficient
Inference*, ICLR 2017, https://arxiv.org/abs/1611.06440 (the Taylor criterion).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from experiments.harness import atomic
from experiments.harness.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from experiments.harness.callbacks import CosineLR
from experiments.harness.run import RunContext, train_in_folder
from experiments.harness.subruns import check_folder
from experiments.harness.training import TrainConfig, Trainer, evaluate
from pruners import count_macs, count_params, remove_units, trace
from pruners.schedules import amount_to_count
from saliency import SCORERS

__all__ = [
    "FREE",
    "ORACLE",
    "PRUNING",
    "cell_name",
    "layer_sizes",
    "plot_grid",
    "recovery_subset",
    "removal_counts",
    "run_grid",
    "run_study",
    "score_units",
    "select_units",
    "spearman_rows",
    "unit_rows",
    "validate",
]

#: the scorer every ranking is correlated with
ORACLE = "mrp"


def layer_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, dict[str, Any]]:
    """The prunable layers of a transformer, in model order: ``{name: {"kind": "heads" |
    "ffn", "size": units, "kv_heads": key/value heads (heads only)}}``.

    Heads: the attention modules of :attr:`saliency.UnitGraph.prunable_heads`, ``size`` their
    ``num_heads``; FFN neurons: the prunable groups of the graph (the residual stream is not
    one: LayerNorm and RMSNorm mix its channels).
    """
    graph = trace(model, example)
    out: dict[str, dict[str, Any]] = {}
    for name in graph.prunable_heads:
        heads = graph.heads[name]
        out[name] = {"kind": "heads", "size": int(heads.num_heads),
                     "kv_heads": int(heads.num_kv_heads)}
    for name in graph.prunable:
        out[name] = {"kind": "ffn", "size": int(graph.groups[name].size)}
    return out


def removal_counts(layers: Mapping[str, Mapping[str, Any]], fraction: float
                   ) -> dict[str, int]:
    """Units each layer loses at ``fraction``: ``min(n - 1, round(f n))`` of its ``n`` units;
    for heads under grouped-query attention ``kv_heads * min(G - 1, round(f G))`` with ``G =
    heads / kv_heads`` (the same count in every key/value group).

    Examples:
        >>> removal_counts({"a": {"kind": "heads", "size": 8, "kv_heads": 8},
        ...                 "f": {"kind": "ffn", "size": 256}}, 0.3)
        {'a': 2, 'f': 77}
        >>> removal_counts({"a": {"kind": "heads", "size": 8, "kv_heads": 2}}, 0.3)
        {'a': 2}
    """
    out = {}
    for name, info in layers.items():
        n = int(info["size"])
        kv = int(info.get("kv_heads", n)) if info["kind"] == "heads" else n
        if info["kind"] == "heads" and 1 < kv < n:
            g = n // kv
            out[name] = kv * min(g - 1, amount_to_count(float(fraction), g, "round"))
        else:
            out[name] = min(n - 1, amount_to_count(float(fraction), n, "round"))
    return out


def select_units(scores: Mapping[str, Sequence[float]], layers: Mapping[str, Mapping[str, Any]],
                 fraction: float) -> dict[str, list[int]]:
    """The units to remove at ``fraction``: per layer the :func:`removal_counts` lowest-scored
    (a stable sort: ties go to the lower index), per key/value group under grouped-query
    attention (query heads ``j G .. (j + 1) G - 1`` share key/value head ``j``). Sorted
    indices; layers losing nothing are left out.

    Example:
        >>> select_units({"a": [3.0, 1.0, 2.0, 0.5]}, {"a": {"kind": "heads", "size": 4,
        ...               "kv_heads": 2}}, 0.5)
        {'a': [1, 3]}
    """
    counts = removal_counts(layers, fraction)
    out = {}
    for name, info in layers.items():
        s = torch.as_tensor([float(v) for v in scores[name]], dtype=torch.float64)
        if s.numel() != int(info["size"]):
            raise ValueError(f"{name}: {s.numel()} scores for {info['size']} units")
        k = counts[name]
        if not k:
            continue
        n = int(info["size"])
        kv = int(info.get("kv_heads", n)) if info["kind"] == "heads" else n
        if info["kind"] == "heads" and 1 < kv < n:
            g, per = n // kv, k // kv
            chosen = [j * g + int(i) for j in range(kv)
                      for i in torch.argsort(s[j * g:(j + 1) * g], stable=True)[:per]]
        else:
            chosen = [int(i) for i in torch.argsort(s, stable=True)[:k]]
        out[name] = sorted(chosen)
    return out


# --------------------------------------------------------------------------- scores


def score_units(model: nn.Module, sample: Sequence, scorers: Sequence[str], *,
                loss_fn: Callable, seed: int, layers: Mapping[str, Any]
                ) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Every scorer's scores of every unit of ``layers`` on ``sample`` (a list of batches),
    as plain lists (``{scorer: {layer: [score per unit]}}``), and each scorer's seconds.

    ``random_unit`` is seeded with ``seed``; the others take their defaults (``norm``: the L1
    norm of the unit's weights; ``mrp``: the absolute loss change, exactly). The model is
    scored in eval mode, unchanged.
    """
    model = copy.deepcopy(model).eval()
    out, seconds = {}, {}
    for name in scorers:
        scorer = SCORERS[name](seed=int(seed)) if name == "random_unit" else SCORERS[name]()
        start = time.perf_counter()
        scores = scorer.score(model, sample, loss_fn)
        seconds[name] = time.perf_counter() - start
        missing = sorted(set(layers) - set(scores))
        if missing:
            raise RuntimeError(f"scorer {name!r} gave no scores for {missing}")
        out[name] = {layer: [float(v) for v in scores[layer].detach().to(torch.float64)]
                     for layer in layers}
    return out, seconds


def spearman_rows(scores: Mapping[str, Mapping[str, Sequence[float]]],
                  layers: Mapping[str, Mapping[str, Any]], oracle: str = ORACLE
                  ) -> list[dict[str, Any]]:
    """Per layer and scorer, Spearman's rank correlation of the scorer's scores with the
    oracle's (``scipy.stats.spearmanr``; ``spearman`` and ``p_value`` None where either score is
    constant over the layer)."""
    from scipy.stats import spearmanr

    rows = []
    for layer, info in layers.items():
        ref = list(scores[oracle][layer])
        for name, by_layer in scores.items():
            if name == oracle:
                continue
            rho, p = (float(v) for v in spearmanr(list(by_layer[layer]), ref))
            rows.append({"layer": layer, "kind": info["kind"], "units": int(info["size"]),
                         "scorer": name,
                         "spearman": rho if math.isfinite(rho) else None,
                         "p_value": p if math.isfinite(p) else None})
    return rows


def unit_rows(scores: Mapping[str, Mapping[str, Sequence[float]]],
              layers: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per unit: ``layer``, ``kind``, ``unit`` and every scorer's score."""
    return [{"layer": layer, "kind": info["kind"], "unit": i,
             **{name: float(scores[name][layer][i]) for name in scores}}
            for layer, info in layers.items() for i in range(int(info["size"]))]


# --------------------------------------------------------------------------- the grid


def recovery_subset(dataset: TensorDataset, samples: int, seed: int) -> TensorDataset:
    """The fixed subset every cell recovers on: ``samples`` training samples drawn without
    replacement with a generator seeded ``seed * 7919 + 1`` (other draws than the scoring
    sample's), in the order drawn."""
    x, y = dataset.tensors[:2]
    n = min(int(samples), x.shape[0])
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 1)
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return TensorDataset(x[idx], y[idx])


def cell_name(scorer: str, fraction: float) -> str:
    """The folder of one cell of the grid: ``cells/mrs-f0.3``."""
    return f"cells/{scorer}-f{fraction:g}"


def _metrics(model: nn.Module, data, batch_size: int, loss_fn: Callable, prefix: str
             ) -> dict[str, float]:
    out = {}
    for split in ("val", "test"):
        ds = getattr(data, split, None)
        if ds is not None and len(ds):
            for k, v in evaluate(model, ds, batch_size=batch_size, loss_fn=loss_fn).items():
                out[f"{split}_{k}_{prefix}"] = v
    return out


def run_grid(ctx: RunContext, cfg: Mapping[str, Any], data, baseline: nn.Module, *,
             arch: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]],
             scores: Mapping[str, Mapping[str, Sequence[float]]], sample: Sequence,
             example: torch.Tensor, loss_fn: Callable, settings: Mapping[str, Any],
             recover_set: TensorDataset, report: tuple[str, str] = ("test", "acc")
             ) -> list[dict[str, Any]]:
    """Prune ``baseline`` once per scorer and fraction, evaluate, recover, evaluate again.

    ``settings`` (the run's settings that determine the trained baseline, the scores and the
    recovery) are recorded in every cell's ``settings.json`` with the cell's scorer and
    fraction; a cell folder trained with other settings is refused
    (:func:`experiments.harness.subruns.check_folder`). ``report`` (split, metric) is the
    figure each cell logs. Returns one row per cell: the scorer,
    the fraction, the heads and neurons removed (in all and per layer), parameters and MACs
    after pruning, and ``{val,test}_{loss,acc}_{pruned,recovered}``.
    """
    rows = []
    fractions = [float(f) for f in cfg["fractions"]]
    eval_bs = int(cfg["eval_batch_size"])
    recover = TrainConfig(epochs=int(cfg["recover_epochs"]), batch_size=int(cfg["batch_size"]),
                          optimizer="adam", lr=float(cfg["recover_lr"]), seed=int(cfg["seed"]),
                          eval_batch_size=eval_bs)
    for name in cfg["scorers"]:
        for f in fractions:
            sub = cell_name(name, f)
            own = {**settings, "scorer": name, "fraction": f}
            check_folder(ctx, sub, own)
            info_path, pruned_path = ctx.path(f"{sub}/pruned.json"), ctx.path(f"{sub}/pruned.pt")
            saved = atomic.read_json(info_path) if info_path.exists() else None
            if (saved is not None and pruned_path.exists()
                    and saved.get("settings") == atomic.to_jsonable(own)):
                model = model_from_checkpoint(load_checkpoint(pruned_path))
                info = saved["info"]
            else:
                units = select_units(scores[name], layers, f)
                model = copy.deepcopy(baseline).eval()
                start = time.perf_counter()
                removal = remove_units(model, units, replacement="mean", data=sample,
                                       example_input=example)
                seconds = time.perf_counter() - start
                info = {"units": units, "removal_s": seconds,
                        "inexact": list(removal.inexact), "max_deviation": removal.max_deviation,
                        "params": count_params(model), "macs": count_macs(model, example),
                        **_metrics(model, data, eval_bs, loss_fn, "pruned")}
                save_checkpoint(pruned_path, model, arch, units=units)
                atomic.write_json(info_path, {"settings": own, "info": info})
            trainer = Trainer(model, recover_set, val_set=data.val, test_set=data.test,
                              config=recover, arch=arch, loss_fn=loss_fn,
                              checkpoint=ctx.path(f"{sub}/checkpoint.pt"), progress=ctx.progress,
                              example_input=example)
            done = trainer.epoch >= recover.epochs
            trainer.fit()
            ctx.write_csv(f"{sub}/history.csv", trainer.history)
            last = trainer.history[-1]
            units = info["units"]
            row = {"scorer": name, "fraction": f,
                   "heads_removed": sum(len(units.get(n, [])) for n, i in layers.items()
                                        if i["kind"] == "heads"),
                   "heads_total": sum(int(i["size"]) for i in layers.values()
                                      if i["kind"] == "heads"),
                   "neurons_removed": sum(len(units.get(n, [])) for n, i in layers.items()
                                          if i["kind"] == "ffn"),
                   "neurons_total": sum(int(i["size"]) for i in layers.values()
                                        if i["kind"] == "ffn"),
                   "params": info["params"], "macs": info["macs"],
                   **{k: v for k, v in info.items() if k.endswith("_pruned")},
                   **{f"{k}_recovered": last[k] for k in last
                      if k.startswith(("val_", "test_"))},
                   "recover_steps": trainer.step, "recover_time_s": last["epoch_time_s"],
                   "removal_s": info["removal_s"], "max_deviation": info["max_deviation"],
                   "removed_per_layer": {n: len(units.get(n, [])) for n in layers}}
            rows.append(row)
            split, metric = report
            fmt = ((lambda v: f"{100 * v:.2f}%") if metric == "acc" else (lambda v: f"{v:.4f}"))
            ctx.log(f"  {name:<11} f={f:<4g} heads -{row['heads_removed']}/{row['heads_total']}"
                    f" neurons -{row['neurons_removed']}/{row['neurons_total']}  "
                    f"{split} {metric} pruned {fmt(row[f'{split}_{metric}_pruned'])}, "
                    f"recovered {fmt(row[f'{split}_{metric}_recovered'])}"
                    + ("  (found)" if done else ""))
    return rows


# --------------------------------------------------------------------------- the figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def _block(layer: str) -> str:
    """The block index in a layer's name (``"blocks.2.attn"``, ``"model.model.layers.2.mlp.
    gate_proj"``: ``"2"``), else the name."""
    digits = [part for part in layer.split(".") if part.isdigit()]
    return digits[0] if digits else layer


def plot_grid(ctx: RunContext, rows: Sequence[Mapping[str, Any]],
              spearman: Sequence[Mapping[str, Any]], *, key: str, label: str,
              baseline: float, title: str, name: str = "pruning.png",
              scale: float = 1.0) -> None:
    """Three panels: ``key`` right after pruning and after recovery against the fraction, one
    line per scorer, the unpruned network dashed; and Spearman's correlation with exact MRP per
    layer (bars per scorer, heads then FFN layers)."""
    plt, sns = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))
    colors = dict(zip(scorers, sns.color_palette(n_colors=len(scorers))))
    markers = dict(zip(scorers, "osD^vP*"))
    for ax, stage in zip(axes[:2], ("pruned", "recovered")):
        for s in scorers:
            pts = sorted((r["fraction"], r[f"{key}_{stage}"]) for r in rows if r["scorer"] == s)
            ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker=markers[s],
                    color=colors[s], label=s)
        ax.axhline(scale * baseline, color="0.3", linestyle="--", linewidth=1,
                   label="unpruned")
        ax.set(xlabel="fraction of every layer's heads and FFN neurons removed", ylabel=label,
               title="right after pruning (mean replacement)" if stage == "pruned"
               else "after the recovery fine-tuning")
        ax.legend(fontsize=8)
    lo = min(min(scale * r[f"{key}_{st}"] for r in rows) for st in ("pruned", "recovered"))
    hi = max(max(scale * r[f"{key}_{st}"] for r in rows) for st in ("pruned", "recovered"))
    hi = max(hi, scale * baseline)
    pad = 0.04 * (hi - lo or 1.0)
    for ax in axes[:2]:
        ax.set_ylim(lo - pad, hi + pad)
    ax = axes[2]
    layer_names = list(dict.fromkeys((r["kind"], r["layer"]) for r in spearman))
    others = [s for s in scorers if s != ORACLE]
    width = 0.8 / max(len(others), 1)
    for j, s in enumerate(others):
        vals = []
        for kind, layer in layer_names:
            v = [r["spearman"] for r in spearman if r["layer"] == layer and r["scorer"] == s]
            vals.append(v[0] if v and v[0] is not None else float("nan"))
        ax.bar([i + (j - (len(others) - 1) / 2) * width for i in range(len(layer_names))], vals,
               width=width, color=colors.get(s), label=s)
    ax.set_xticks(range(len(layer_names)))
    ax.set_xticklabels([f"{'heads' if k == 'heads' else 'FFN'}\nblock {_block(n)}"
                        for k, n in layer_names], fontsize=7)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set(ylabel="Spearman with exact MRP", title="rank correlation with exact MRP per layer",
           ylim=(-1.05, 1.05))
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, name)


# --------------------------------------------------------------------------- the study


#: settings that change nothing trained or scored (a folder may be rerun with other values)
FREE = ("data_dir", "eval_batch_size", "quick")
#: settings of the pruning only (the trained network does not depend on them)
PRUNING = ("scorers", "fractions", "score_samples", "score_batch", "recover_samples",
           "recover_epochs", "recover_lr")


def _steps_per_epoch(cfg: Mapping[str, Any], n: int) -> int:
    steps = math.ceil(n / int(cfg["batch_size"]))
    return min(steps, int(cfg["max_batches"])) if cfg.get("max_batches") else steps


def _train_baseline(cfg: Mapping[str, Any], ctx: RunContext, data, callbacks: Sequence, *,
                    model: str, model_kwargs: Mapping[str, Any], loss_fn: Callable) -> Trainer:
    """Train a fresh ``model`` (seeded by ``cfg['seed']``) into ``baseline/`` with the loss
    ``loss_fn`` (:func:`experiments.harness.run.train_in_folder`); the schedule is the
    callbacks' (the harness's own rule stays constant)."""
    return train_in_folder(cfg, ctx, data, "baseline", callbacks, model=model,
                           model_kwargs=model_kwargs, loss_fn=loss_fn,
                           config=TrainConfig.from_mapping({**cfg, "lr_rule": "constant"}))


def validate(cfg: Mapping[str, Any]) -> None:
    """The checks both experiments share: scorers, fractions, the recovery and the schedule."""
    scorers = cfg["scorers"]
    if (not isinstance(scorers, (list, tuple)) or not scorers
            or len(set(scorers)) != len(scorers)
            or any(s not in SCORERS for s in scorers) or ORACLE not in scorers):
        raise ValueError(f"scorers must be distinct names of saliency.SCORERS including "
                         f"{ORACLE!r} (the oracle), got {scorers!r}")
    fr = cfg["fractions"]
    if (not isinstance(fr, (list, tuple)) or not fr or len(set(fr)) != len(fr)
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1
                   for f in fr)):
        raise ValueError(f"fractions must be distinct numbers in (0, 1), got {fr!r}")
    for key in ("score_samples", "score_batch", "recover_samples", "recover_epochs", "epochs",
                "batch_size"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    if not (isinstance(cfg["recover_lr"], (int, float)) and cfg["recover_lr"] > 0):
        raise ValueError(f"recover_lr must be > 0, got {cfg['recover_lr']!r}")
    if cfg["lr_schedule"] not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got "
                         f"{cfg['lr_schedule']!r}")


def run_study(cfg: Mapping[str, Any], ctx: RunContext, data, *, model: str,
              model_kwargs: Mapping[str, Any], loss_fn: Callable, report: tuple[str, str],
              title: str) -> dict[str, Any]:
    """Train (or resume) ``baseline/``, score every unit once, run the grid, write the tables
    and the figure; return the results (see the experiments' modules)."""
    from experiments.harness.callbacks import EpochLog, scoring_batches
    from experiments.harness.run import final_metrics
    from experiments.harness.timing import cpu_mark, loadavg, others_busy

    mark, load0 = cpu_mark(), loadavg()
    base_cfg = {k: v for k, v in cfg.items() if k not in PRUNING}
    check_folder(ctx, "baseline", base_cfg, FREE)
    total = int(cfg["epochs"]) * _steps_per_epoch(cfg, len(data.train))
    schedule = [CosineLR(float(cfg["lr"]), total)] if cfg["lr_schedule"] == "cosine" else []
    trainer = _train_baseline(base_cfg, ctx, data, [*schedule, EpochLog(ctx.log, "baseline")],
                              model=model, model_kwargs=model_kwargs, loss_fn=loss_fn)
    baseline = trainer.model.eval()
    arch = {"model": model, "kwargs": dict(model_kwargs)}
    example = data.train.tensors[0][:1]
    layers = layer_sizes(baseline, example)
    kinds = {"heads": "heads", "ffn": "neurons"}
    ctx.log("prunable: " + ", ".join(f"{n} ({i['size']} {kinds[i['kind']]})"
                                     for n, i in layers.items()))

    settings = {k: v for k, v in cfg.items() if k not in FREE and k not in ("scorers", "fractions")}
    settings["baseline_step"] = trainer.step
    sample = scoring_batches(data.train, int(cfg["score_samples"]), int(cfg["score_batch"]),
                             int(cfg["seed"]))
    cache = ctx.path("scores.json")
    saved = atomic.read_json(cache) if cache.exists() else None
    want = atomic.to_jsonable({**settings, "scorers": list(cfg["scorers"])})
    if saved is not None and saved.get("settings") == want:
        ctx.log("scores: found in scores.json")
        scores, seconds = saved["scores"], saved["seconds"]
    else:
        ctx.log(f"scoring every head and neuron with {', '.join(cfg['scorers'])} on "
                f"{sum(len(b[0]) for b in sample)} training samples")
        scores, seconds = score_units(baseline, sample, cfg["scorers"], loss_fn=loss_fn,
                                      seed=int(cfg["seed"]), layers=layers)
        atomic.write_json(cache, {"settings": want, "scores": scores, "seconds": seconds})
    for name, s in seconds.items():
        ctx.log(f"  {name}: {s:.1f} s")
    ctx.write_csv("unit_scores.csv", unit_rows(scores, layers))
    spearman = spearman_rows(scores, layers)
    ctx.write_csv("spearman.csv", spearman)

    recover_set = recovery_subset(data.train, int(cfg["recover_samples"]), int(cfg["seed"]))
    ctx.log(f"grid: {len(cfg['scorers'])} scorers x {len(cfg['fractions'])} fractions; recovery "
            f"{cfg['recover_epochs']} epoch(s) of {len(recover_set)} training samples, Adam "
            f"{cfg['recover_lr']:g}")
    rows = run_grid(ctx, cfg, data, baseline, arch=arch, layers=layers, scores=scores,
                    sample=sample, example=example, loss_fn=loss_fn, settings=settings,
                    recover_set=recover_set, report=report)
    flat = [{k: v for k, v in r.items() if k != "removed_per_layer"}
            | {f"removed/{n}": c for n, c in r["removed_per_layer"].items()} for r in rows]
    ctx.write_csv("pruning.csv", flat)

    base = final_metrics(trainer.history)
    split, metric = report
    key = f"{split}_{metric}"
    plot_grid(ctx, rows, spearman, key=key,
              label=(f"{split} accuracy (%)" if metric == "acc"
                     else f"{split} loss per "
                          f"{'character' if model in ('decoder_lm', 'hf_llama') else 'token'}"
                          " (nats)"),
              baseline=base[key], title=title, scale=100.0 if metric == "acc" else 1.0)
    summary = {}
    for kind in ("heads", "ffn"):
        for name in cfg["scorers"]:
            if name == ORACLE:
                continue
            v = [r["spearman"] for r in spearman if r["kind"] == kind and r["scorer"] == name
                 and r["spearman"] is not None]
            summary.setdefault(kind, {})[name] = {"mean": sum(v) / len(v) if v else None,
                                                  "min": min(v) if v else None,
                                                  "max": max(v) if v else None,
                                                  "layers": len(v)}
    busy = others_busy(mark)
    return {
        "data": {"dataset": cfg["dataset"], "source": (data.info or {}).get("source"),
                 "sizes": {k: len(getattr(data, k)) for k in ("train", "val", "test")
                           if getattr(data, k, None) is not None}},
        "model": {"name": model, "kwargs": dict(model_kwargs), "params": count_params(baseline),
                  "macs": count_macs(baseline, example), "layers": layers},
        "baseline": base,
        "baseline_train_time_s": sum(r["epoch_time_s"] for r in trainer.history),
        "scoring": {"samples": sum(len(b[0]) for b in sample), "seconds": seconds},
        "recovery": {"samples": len(recover_set), "epochs": int(cfg["recover_epochs"]),
                     "lr": float(cfg["recover_lr"]), "optimizer": "adam",
                     "batch_size": int(cfg["batch_size"])},
        "grid": rows, "spearman": spearman, "spearman_summary": summary,
        "machine": {"threads": torch.get_num_threads(), "loadavg_1min_start": load0,
                    "loadavg_1min_end": loadavg(), "others_busy_cpus": busy},
        "figures": ["pruning.png"],
    }
