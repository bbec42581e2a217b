"""Reproductions of the saliency comparisons of Evci 2018.

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU, 2018 (https://arxiv.org/abs/1806.06068); below: Evci 2018 or the thesis.

* ``thesis-param-saliency`` -- Sec. 2.1, Fig. 2.1-2.3 and 2.5: while the
  thesis CNN trains, the weights of ``conv1`` (200 entries) are scored by the
  exact loss change of zeroing each one (``loss_change``, the oracle), its
  Taylor approximations (``taylor1``, ``taylor2``, ``hessian``), their
  absolute values, ``magnitude`` and ``random``; every probe records the
  fraction of negative saliencies and the pruning penalty (the change of the
  validation loss when the fraction ``f`` of lowest-scored weights is zeroed
  together).
* ``thesis-unit-saliency`` -- Sec. 4.1, Fig. 4.1-4.3: the same for units, with
  mean replacement (bias propagation), for ``conv1`` (8 filters) and ``fc1``.
* ``scorer-runtimes`` -- Table 2.1: the wall time of every registered scorer
  on the thesis CNN with 1000 validation samples, also as a multiple of one
  forward+backward pass.

The probes are :class:`experiments.harness.training.Callback` objects acting in
``on_step_end``. Scorers and :func:`saliency.compare.pruning_penalty` restore
the model (values, gradients, training flags, hooks) and draw random numbers
from private generators only, so a run with probes trains exactly as one
without (``tests/test_saliency_repro.py`` compares the final weights bit for
bit). The probe callbacks keep their rows in ``state_dict()``, so a killed
run resumes from its last epoch checkpoint with the probes made so far.

Data: Fashion-MNIST instead of the thesis's MNIST (the toolkit's reproductions
run on the locally installed Fashion-MNIST).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from experiments.harness.models import build_model
from experiments.harness.registry import register
from experiments.harness.run import RunContext, load_data, train_run
from experiments.harness.timing import loadavg
from experiments.harness.training import Callback, TrainConfig, Trainer
from pruners import prepare_for
from saliency import compare
from saliency.loss_change import LossChange
from saliency.magnitude import Magnitude
from saliency.mrp import MRP
from saliency.random_scores import RandomParameter, RandomUnit
from saliency.taylor import Hessian, Taylor1, Taylor2
from saliency.unit_scorers import MRS, Dormancy, Norm, UnitTaylor

__all__ = ["ParameterProbe", "UnitProbe", "PARAM_SIGNED", "PARAM_SCORER_NAMES",
           "UNIT_SCORER_NAMES", "param_scorers", "unit_scorers", "summarize_param",
           "summarize_unit"]

_DATA = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
         "data_seed": 0, "seed": 0}
_TRAIN = {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "momentum": 0.0,
          "weight_decay": 0.0, "lr_rule": "constant", "eval_batch_size": 2000,
          "max_batches": None}
_QUICK = {"limit": 512, "epochs": 1, "max_batches": 12, "probe_every": 4, "probe_size": 64,
          "eval_batch_size": 256, "smooth": 1}

#: the signed parameter scorers (their ``_abs`` variants are scored too)
PARAM_SIGNED: tuple[str, ...] = ("loss_change", "taylor1", "taylor2", "hessian")
#: every scorer of ``thesis-param-saliency``, in plotting order
PARAM_SCORER_NAMES: tuple[str, ...] = (*PARAM_SIGNED, *(f"{n}_abs" for n in PARAM_SIGNED),
                                       "magnitude", "random")
#: the absolute-valued scorers and magnitude (Fig. 2.5)
PARAM_ABS_SET: tuple[str, ...] = (*(f"{n}_abs" for n in PARAM_SIGNED), "magnitude")
#: the scorers whose fraction of negative scores is recorded (Fig. 2.1)
NEGATIVE_SCORERS: tuple[str, ...] = ("loss_change", "taylor1", "taylor2")
#: every scorer of ``thesis-unit-saliency``
UNIT_SCORER_NAMES: tuple[str, ...] = ("mrp", "mrs", "norm_l1", "norm_l2", "taylor", "dormancy",
                                      "random_unit")
#: the four scorers the thesis compares in Sec. 4.1 (Table 4.1, without random)
THESIS_UNIT_SET: tuple[str, ...] = ("mrp", "mrs", "norm_l1", "norm_l2")


# --------------------------------------------------------------------------- scorers

def param_scorers(layer: str, lam: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """The signed parameter scorers of Sec. 2.1 for one parameter tensor, plus magnitude and random.

    ``taylor2`` uses ``lam`` (the thesis: 1). The Taylor scorers take the
    pruning step ``dw = -w`` of ``layer`` only, so the Hessian row of
    ``taylor2`` / ``hessian`` runs over the weights that are pruned together.
    The ``*_abs`` variants are the absolute values of these scores (what the
    scorers return with ``absolute=True``), taken once instead of scoring
    twice.
    """
    p = [layer]
    return {"loss_change": LossChange(params=p), "taylor1": Taylor1(params=p),
            "taylor2": Taylor2(lam=lam, params=p), "hessian": Hessian(params=p),
            "magnitude": Magnitude(params=p), "random": RandomParameter(seed=seed, params=p)}


def unit_scorers(layers: Sequence[str], example_input: torch.Tensor,
                 seed: int = 0) -> dict[str, Any]:
    """The unit scorers of Sec. 4.1 (Table 4.1) plus Molchanov's Taylor and ReDo dormancy."""
    kw = {"layers": list(layers), "example_input": example_input}
    return {"mrp": MRP(**kw), "mrs": MRS(**kw), "norm_l1": Norm(p="l1", **kw),
            "norm_l2": Norm(p="l2", **kw), "taylor": UnitTaylor(**kw),
            "dormancy": Dormancy(**kw), "random_unit": RandomUnit(seed=seed, **kw)}


def _probe_seed(seed: int, step: int) -> int:
    """Fresh random scores at every probe, reproducible from the run's seed."""
    return int(seed) * 1_000_003 + int(step)


def _subset(dataset, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed random subset of ``size`` samples (all if fewer), as one batch."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    n = min(int(size), x.shape[0])
    if n < 1:
        raise ValueError("the probe subset is empty: the data split has no samples")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
    idx = idx.sort().values
    return [(x[idx], y[idx])]


# --------------------------------------------------------------------------- callbacks

class _Probe(Callback):
    """Probe at step 0 and after every ``every`` optimizer steps; rows kept in the state."""

    def __init__(self, every: int, size: int, seed: int = 0):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probe_every must be a positive int, got {every!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"probe_size must be a positive int, got {size!r}")
        self.every, self.size, self.seed = every, size, seed
        self.probes: list[dict[str, Any]] = []
        self.penalty: list[dict[str, Any]] = []
        self.data = None

    def _split(self, trainer: Trainer):  # pragma: no cover - overridden
        raise NotImplementedError

    def on_train_begin(self, trainer: Trainer) -> None:
        self.data = _subset(self._split(trainer), self.size, self.seed)
        if trainer.step == 0 and not self.probes:
            self._run(trainer)

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.step % self.every == 0:
            self._run(trainer)

    def _run(self, trainer: Trainer) -> None:
        start = time.perf_counter()
        row, penalty = self.probe(trainer.model, trainer.step)
        row = {"step": trainer.step, "epoch": trainer.epoch, **row,
               "probe_time_s": time.perf_counter() - start}
        self.probes.append(row)
        self.penalty.extend({"step": trainer.step, **r} for r in penalty)

    def probe(self, model, step: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        raise NotImplementedError  # pragma: no cover

    @property
    def n_samples(self) -> int:
        return int(self.data[0][0].shape[0]) if self.data else 0

    def state_dict(self) -> dict[str, Any]:
        return {"probes": list(self.probes), "penalty": list(self.penalty)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.probes = list(state.get("probes", []))
        self.penalty = list(state.get("penalty", []))


class ParameterProbe(_Probe):
    """Scores one parameter tensor and measures its pruning penalty (thesis Sec. 2.1).

    On a fixed subset of ``size`` validation samples (the thesis: 1000), at
    step 0 and every ``every`` steps: the scores of :func:`param_scorers`
    and their absolute values, the fraction of negative scores of
    ``loss_change``, ``taylor1`` and ``taylor2`` (Fig. 2.1), and
    :func:`saliency.compare.pruning_penalty` (``kind="parameter"``) at each
    of ``fractions`` for every scorer, on the same samples.

    Attributes:
        probes: one dict per probe (step, epoch, loss, ``neg_frac_<scorer>``,
            probe time).
        penalty: one dict per probe, scorer and fraction (the columns of
            ``pruning_penalty`` plus ``step``).
    """

    def __init__(self, layer: str = "conv1.weight", fractions: Sequence[float] = (0.01, 0.05, 0.8),
                 *, every: int = 50, size: int = 1000, lam: float = 1.0, seed: int = 0):
        super().__init__(every, size, seed)
        self.layer, self.fractions, self.lam = layer, [float(f) for f in fractions], float(lam)

    def _split(self, trainer):
        if trainer.val_set is None or not len(trainer.val_set):
            raise ValueError("thesis-param-saliency scores on validation data: set val_size > 0")
        return trainer.val_set

    def scores(self, model, step: int) -> dict[str, dict[str, torch.Tensor]]:
        """Every scorer's ``{layer: scores}`` at this probe (abs variants included)."""
        scorers = param_scorers(self.layer, self.lam, _probe_seed(self.seed, step))
        out = {name: dict(s.score(model, self.data)) for name, s in scorers.items()}
        for name in PARAM_SIGNED:
            out[f"{name}_abs"] = {k: v.abs() for k, v in out[name].items()}
        return {name: out[name] for name in PARAM_SCORER_NAMES}

    def probe(self, model, step):
        scores = self.scores(model, step)
        df = compare.pruning_penalty(model, scores, self.data, layer=self.layer,
                                     fractions=self.fractions, kind="parameter")
        row: dict[str, Any] = {"loss": float(df["loss_before"].iloc[0]),
                               "n_items": int(scores["magnitude"][self.layer].numel())}
        for name in NEGATIVE_SCORERS:
            row[f"neg_frac_{name}"] = float((scores[name][self.layer] < 0).double().mean())
        return row, df.to_dict("records")


class UnitProbe(_Probe):
    """Scores units and measures their mean-replacement pruning penalty (thesis Sec. 4.1).

    On a fixed subset of ``size`` training samples (the thesis: 1000), at
    step 0 and every ``every`` steps: the scores of :func:`unit_scorers` for
    the layers of ``fractions`` (``{layer: [f, ...]}``) and
    :func:`saliency.compare.pruning_penalty` (``kind="unit"``,
    ``replacement="mean"``) for each layer and fraction, on the same samples.
    """

    def __init__(self, fractions: Mapping[str, Sequence[float]], *, every: int = 100,
                 size: int = 1000, seed: int = 0):
        super().__init__(every, size, seed)
        if not isinstance(fractions, Mapping) or not fractions:
            raise ValueError("fractions must be a non-empty {layer: [fraction, ...]} dict")
        self.fractions = {k: [float(f) for f in v] for k, v in fractions.items()}

    def _split(self, trainer):
        return trainer.train_set

    def probe(self, model, step):
        x = self.data[0][0]
        scorers = unit_scorers(list(self.fractions), x[:1], _probe_seed(self.seed, step))
        scores = {name: dict(s.score(model, self.data)) for name, s in scorers.items()}
        rows, loss = [], math.nan
        for layer, fractions in self.fractions.items():
            df = compare.pruning_penalty(model, scores, self.data, layer=layer,
                                         fractions=fractions, kind="unit", replacement="mean")
            loss = float(df["loss_before"].iloc[0])
            n_units = int(scores["mrp"][layer].numel())
            rows.extend({"layer": layer, "n_units": n_units, **r} for r in df.to_dict("records"))
        return {"loss": loss}, rows


# --------------------------------------------------------------------------- summaries

def _second_half(df: pd.DataFrame) -> pd.DataFrame:
    """Rows probed after half of the run's last probed step (the thesis's "later in training")."""
    last = df["step"].max()
    late = df[df["step"] > last / 2]
    return late if len(late) else df


def _by_scorer(df: pd.DataFrame, fn: str, order: Sequence[str]) -> dict[str, float]:
    agg = df.groupby("scorer")["delta"].agg(fn)
    return {n: float(agg[n]) for n in order if n in agg.index}


def _tied(a: float, b: float) -> bool:
    """Equal up to rounding: scorers that prune the same items give the same deltas."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _lowest(d: Mapping[str, float], exclude: Sequence[str] = ()) -> list[str]:
    """Every scorer tied for the lowest value, in the mapping's order."""
    items = {k: v for k, v in d.items() if k not in exclude and math.isfinite(v)}
    if not items:
        return []
    low = min(items.values())
    return [k for k, v in items.items() if _tied(v, low)]


def _argmin(d: Mapping[str, float], exclude: Sequence[str] = ()) -> str | None:
    """The scorer with the lowest value (the first in the mapping's order among ties)."""
    low = _lowest(d, exclude)
    return low[0] if low else None


def _lowest_share(df: pd.DataFrame, names: Sequence[str]) -> dict[str, float]:
    """Per scorer, the fraction of probes at which its delta is the lowest of ``names``
    (ties count for every tied scorer, so the shares may sum to more than 1)."""
    wide = df[df["scorer"].isin(names)].pivot(index="step", columns="scorer", values="delta")
    wins = {n: 0 for n in names if n in wide.columns}
    for _, row in wide.iterrows():
        for n in _lowest(row.to_dict()):
            wins[n] += 1
    return {n: w / max(len(wide), 1) for n, w in wins.items()}


def _fkey(f: float) -> str:
    return f"{f:g}"


def summarize_param(probes: pd.DataFrame, penalty: pd.DataFrame,
                    fractions: Sequence[float]) -> dict[str, Any]:
    """The numbers ``thesis-param-saliency`` reports (see its docstring)."""
    late_probes = _second_half(probes)
    out: dict[str, Any] = {
        "negative_fraction_mean": {n: float(probes[f"neg_frac_{n}"].mean())
                                   for n in NEGATIVE_SCORERS},
        "negative_fraction_mean_second_half": {n: float(late_probes[f"neg_frac_{n}"].mean())
                                               for n in NEGATIVE_SCORERS},
        "penalty": {},
    }
    abs_beats, stable = {}, {}
    for f in fractions:
        sub = penalty[np.isclose(penalty["fraction"], f)]
        late = _second_half(sub)
        mean = _by_scorer(sub, "mean", PARAM_SCORER_NAMES)
        mean_late = _by_scorer(late, "mean", PARAM_SCORER_NAMES)
        std_late = _by_scorer(late, "std", PARAM_SCORER_NAMES)
        beats = {n: bool(mean[f"{n}_abs"] < mean[n]) for n in PARAM_SIGNED}
        most_stable = _argmin(std_late, exclude=("random",))
        out["penalty"][_fkey(f)] = {
            "n_pruned": int(sub["n_pruned"].iloc[0]),
            "mean_delta": mean, "mean_delta_second_half": mean_late,
            "std_delta_second_half": std_late,
            "lowest_mean": _argmin(mean), "tied_lowest_mean": _lowest(mean),
            "lowest_mean_second_half": _argmin(mean_late),
            "lowest_mean_excluding_oracle": _argmin(mean, exclude=("loss_change",)),
            "lowest_share": _lowest_share(sub, PARAM_SCORER_NAMES),
            "lowest_share_abs_and_magnitude": _lowest_share(sub, PARAM_ABS_SET),
            "abs_beats_signed": beats,
            "most_stable": most_stable,
        }
        abs_beats[_fkey(f)] = all(beats.values())
        stable[_fkey(f)] = most_stable == "magnitude"
    out["abs_beats_signed_all"] = abs_beats
    out["magnitude_most_stable"] = stable
    out["stability"] = ("std of delta over the second half of the probes (step > last step / 2), "
                        "random excluded")
    return out


def _ranks(mean: Mapping[str, float], names: Sequence[str]) -> dict[str, int]:
    """Competition ranks (1 = lowest mean): tied scorers share the better rank."""
    vals = {k: v for k, v in mean.items() if k in names}
    ranks = {k: 1 + sum(1 for o in vals.values() if o < v and not _tied(o, v))
             for k, v in vals.items()}
    return dict(sorted(ranks.items(), key=lambda kv: (kv[1], list(vals).index(kv[0]))))


def _then(rank: Mapping[str, int]) -> bool:
    """MRP strictly first and MRS strictly second (no ties)."""
    return (rank.get("mrp") == 1 and rank.get("mrs") == 2
            and sum(1 for r in rank.values() if r <= 2) == 2)


def summarize_unit(penalty: pd.DataFrame, fractions: Mapping[str, Sequence[float]]
                   ) -> dict[str, Any]:
    """The numbers ``thesis-unit-saliency`` reports (see its docstring)."""
    out: dict[str, Any] = {}
    for layer, fs in fractions.items():
        per_f = {}
        for f in fs:
            sub = penalty[(penalty["layer"] == layer) & np.isclose(penalty["fraction"], f)]
            late = _second_half(sub)
            mean = _by_scorer(sub, "mean", UNIT_SCORER_NAMES)
            mean_late = _by_scorer(late, "mean", UNIT_SCORER_NAMES)
            rank_all = _ranks(mean, UNIT_SCORER_NAMES)
            rank_late = _ranks(mean_late, UNIT_SCORER_NAMES)
            rank_thesis = _ranks(mean, THESIS_UNIT_SET)
            rank_thesis_late = _ranks(mean_late, THESIS_UNIT_SET)
            per_f[_fkey(f)] = {
                "n_pruned": int(sub["n_pruned"].iloc[0]), "n_units": int(sub["n_units"].iloc[0]),
                "mean_delta": mean, "mean_delta_second_half": mean_late,
                "std_delta_second_half": _by_scorer(late, "std", UNIT_SCORER_NAMES),
                "lowest_mean": _argmin(mean), "tied_lowest_mean": _lowest(mean),
                "lowest_mean_second_half": _argmin(mean_late),
                "tied_lowest_mean_second_half": _lowest(mean_late),
                "rank": rank_all, "rank_second_half": rank_late,
                "rank_thesis_set": rank_thesis, "rank_thesis_set_second_half": rank_thesis_late,
                "lowest_share_thesis_set": _lowest_share(sub, THESIS_UNIT_SET),
                "mrp_then_mrs": _then(rank_thesis),
                "mrp_then_mrs_second_half": _then(rank_thesis_late),
                "random_worst": rank_all.get("random_unit") == len(rank_all),
            }
        out[layer] = per_f
    return out


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def _role(name: str) -> str:
    low = name.lower()
    if low.startswith(compare.RANDOM_NAMES):
        return "random"
    if low.startswith(compare.ORACLE_NAMES) and not low.endswith("_abs"):
        return "oracle"
    return "scorer"


def _smooth_note(window: int) -> str:
    return f"smoothed over {window} probes" if window > 1 else "not smoothed"


def _smoothed(df: pd.DataFrame, column: str, window: int) -> pd.Series:
    s = df.sort_values("step")[column]
    return s.rolling(max(int(window), 1), center=True, min_periods=1).mean()


def _lines(ax, df: pd.DataFrame, names: Sequence[str], smooth: int, palette: Mapping[str, Any],
           yscale: str = "symlog") -> None:
    """Delta loss over steps, one line per scorer: random dashed grey, oracle bold."""
    _, sns = _plt()
    for name in names:
        sub = df[df["scorer"] == name].sort_values("step")
        if sub.empty:
            continue
        role = _role(name)
        style = {"random": dict(color="0.45", linestyle="--", linewidth=1.5),
                 "oracle": dict(color=palette.get(name), linewidth=3.0),
                 "scorer": dict(color=palette.get(name), linewidth=1.4)}[role]
        sns.lineplot(x=sub["step"].to_numpy(), y=_smoothed(sub, "delta", smooth).to_numpy(),
                     ax=ax, label=name, **style)
    if yscale == "symlog":
        nz = np.abs(df["delta"].to_numpy(dtype=float))
        nz = nz[np.isfinite(nz) & (nz > 0)]
        lin = 10.0 ** math.floor(math.log10(max(nz.min(), nz.max() * 1e-3))) if nz.size else 1e-3
        ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
    ax.axhline(0, color="0.2", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss change after pruning")
    ax.legend(fontsize=8)


def _palette(names: Sequence[str]) -> dict[str, Any]:
    _, sns = _plt()
    return dict(zip(names, sns.color_palette("tab10", n_colors=len(names))))


def plot_negative_fraction(probes: pd.DataFrame, ctx: RunContext, smooth: int) -> None:
    """Fig. 2.1: the smoothed fraction of negative saliencies over steps."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    pal = _palette(NEGATIVE_SCORERS)
    for name in NEGATIVE_SCORERS:
        col = f"neg_frac_{name}"
        steps = probes.sort_values("step")["step"].to_numpy()
        ax.plot(steps, probes.sort_values("step")[col].to_numpy(), color=pal[name], alpha=0.25,
                linewidth=0.8)
        sns.lineplot(x=steps, y=_smoothed(probes, col, smooth).to_numpy(), ax=ax, label=name,
                     color=pal[name], linewidth=3.0 if name == "loss_change" else 1.6)
    ax.set(xlabel="step", ylabel="fraction of negative saliencies", ylim=(0, 1),
           title=f"conv1 weights: negative saliencies ({_smooth_note(smooth)})")
    ctx.save_figure(fig, "fig2_1_negative_fraction.png")


def plot_param_penalty(penalty: pd.DataFrame, ctx: RunContext, f: float, smooth: int) -> str:
    """Fig. 2.2/2.3 (signed scores) and Fig. 2.5 (absolute scores) at one fraction."""
    plt, _ = _plt()
    sub = penalty[np.isclose(penalty["fraction"], f)]
    n_pruned = int(sub["n_pruned"].iloc[0])
    pal = _palette([n for n in PARAM_SCORER_NAMES if n != "random"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), sharey=True)
    _lines(axes[0], sub, [*PARAM_SIGNED, "random"], smooth, pal)
    axes[0].set_title("signed scores (Fig. 2.2, 2.3)")
    _lines(axes[1], sub, [*(f"{n}_abs" for n in PARAM_SIGNED), "magnitude", "random"], smooth,
           pal)
    axes[1].set_title("absolute scores and magnitude (Fig. 2.5)")
    fig.suptitle(f"pruning {n_pruned} of conv1's weights (f = {f:g}), validation loss change, "
                 f"{_smooth_note(smooth)}")
    name = f"fig2_penalty_f{_fkey(f)}.png"
    ctx.save_figure(fig, name)
    return name


def plot_unit_penalty(penalty: pd.DataFrame, ctx: RunContext, layer: str,
                      fractions: Sequence[float], smooth: int, name: str,
                      with_and_without_random: bool = False) -> None:
    """Fig. 4.1 (conv1: with and without random) and Fig. 4.3 (fc1: one panel per f)."""
    plt, _ = _plt()
    sub = penalty[penalty["layer"] == layer]
    names = [n for n in UNIT_SCORER_NAMES if n != "random_unit"]
    pal = _palette(names)
    if with_and_without_random:
        f = fractions[0]
        one = sub[np.isclose(sub["fraction"], f)]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
        _lines(axes[0], one, UNIT_SCORER_NAMES, smooth, pal)
        axes[0].set_title("random_unit included (Fig. 4.1a)")
        _lines(axes[1], one, names, smooth, pal)
        axes[1].set_title("random_unit not included (Fig. 4.1b)")
        fig.suptitle(f"{layer}: {int(one['n_pruned'].iloc[0])} of {int(one['n_units'].iloc[0])} "
                     f"units replaced by their means (f = {f:g}), training-subset loss change")
    else:
        ncols = min(3, len(fractions))
        nrows = math.ceil(len(fractions) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
        for ax, f in zip(axes.flat, fractions):
            one = sub[np.isclose(sub["fraction"], f)]
            _lines(ax, one, UNIT_SCORER_NAMES, smooth, pal)
            ax.set_title(f"f = {f:g} ({int(one['n_pruned'].iloc[0])} of "
                         f"{int(one['n_units'].iloc[0])} units)")
        for ax in list(axes.flat)[len(fractions):]:
            ax.set_visible(False)
        fig.suptitle(f"{layer}: mean replacement penalty over training (Fig. 4.2-4.3), "
                     f"{_smooth_note(smooth)}")
        fig.tight_layout()
    ctx.save_figure(fig, name)


# --------------------------------------------------------------------------- experiments

_PARAM_DEFAULTS = {**_DATA, **_TRAIN, "epochs": 5, "layer": "conv1.weight",
                   "fractions": [0.01, 0.05, 0.8], "probe_every": 100, "probe_size": 1000,
                   "taylor2_lam": 1.0, "smooth": 5}


@register("thesis-param-saliency",
          "Sec. 2.1: conv1 weight saliencies (loss change, Taylor, Hessian, abs, magnitude, "
          "random) and their pruning penalty while training",
          defaults=_PARAM_DEFAULTS, quick=_QUICK, source="Evci 2018, Sec. 2.1, Fig. 2.1-2.5")
def thesis_param_saliency(cfg: dict, ctx: RunContext) -> dict:
    """Parameter saliencies of the thesis CNN's ``conv1`` during training (Sec. 2.1).

    Setting (Sec. 2.1): thesis CNN, SGD lr 0.01, batch 32, 5 epochs; every
    ``probe_every`` steps, scores of ``conv1.weight`` (200 entries) on a fixed
    validation subset of ``probe_size`` (1000) samples, and the loss change
    on the same samples when the fraction ``f`` of lowest-scored weights is
    zeroed together. The thesis probed every 50 steps; the default here is
    100, so that the full run (86 probes of 2-4 s each, dominated by
    the exact ``loss_change`` oracle) stays under 10 minutes on 2 CPU cores.

    What the thesis found (on MNIST):

    * Fig. 2.1: about 35% of conv1's weights have a negative exact loss
      change (``lossChangeScorer``), constantly throughout training.
    * Fig. 2.2: pruning 2 weights (f = 0.01) by ``loss_change`` constantly
      improves the loss; at f = 0.05 (10 weights) the change becomes
      positive after about 1000 steps, sometimes worse than random.
    * Fig. 2.3: the Taylor approximations follow ``loss_change`` early in
      training, less so later, with occasional peaks.
    * Fig. 2.5 (f = 0.8, 160 of 200 weights): the absolute-valued scores
      prune much better than the signed ones, and ``magnitude`` best and
      most stably.

    Outputs: ``probes.csv`` (per probe: loss and negative fractions),
    ``penalty.csv`` (per probe, scorer and fraction), the figures
    ``fig2_1_negative_fraction.png`` and ``fig2_penalty_f<f>.png``, the
    training ``history.csv`` / ``curves.png``, and ``results.json`` with
    the summary of :func:`summarize_param`.
    """
    probe = ParameterProbe(cfg["layer"], cfg["fractions"], every=int(cfg["probe_every"]),
                           size=int(cfg["probe_size"]), lam=float(cfg["taylor2_lam"]),
                           seed=int(cfg["seed"]))
    _, results = train_run(cfg, ctx, "thesis_cnn", {}, callbacks=[probe],
                           title="thesis CNN on Fashion-MNIST (SGD 0.01, batch 32)")
    probes, penalty = pd.DataFrame(probe.probes), pd.DataFrame(probe.penalty)
    ctx.write_csv("probes.csv", probe.probes)
    ctx.write_csv("penalty.csv", probe.penalty)
    smooth = int(cfg["smooth"])
    plot_negative_fraction(probes, ctx, smooth)
    figures = ["fig2_1_negative_fraction.png"]
    figures += [plot_param_penalty(penalty, ctx, f, smooth) for f in cfg["fractions"]]
    summary = summarize_param(probes, penalty, cfg["fractions"])
    probe_time = float(probes["probe_time_s"].sum())
    ctx.log(f"{len(probes)} probes on {probe.n_samples} validation samples, "
            f"{probe_time:.1f}s of probing")
    for f, s in summary["penalty"].items():
        ctx.log(f"f={f}: lowest mean penalty {s['lowest_mean']}, most stable {s['most_stable']}, "
                f"abs beats signed {s['abs_beats_signed']}")
    results.update({"summary": summary, "n_probes": len(probes), "probe_samples": probe.n_samples,
                    "probe_time_s": probe_time, "figures": figures,
                    "scorers": list(PARAM_SCORER_NAMES)})
    return results


_UNIT_DEFAULTS = {**_DATA, **_TRAIN, "epochs": 10, "conv1_fractions": [0.5],
                  "fc1_fractions": [0.1, 0.2, 0.3, 0.4, 0.5], "probe_every": 100,
                  "probe_size": 1000, "smooth": 5}


@register("thesis-unit-saliency",
          "Sec. 4.1: unit saliencies (MRP, MRS, L1/L2 norms, Taylor, dormancy, random) and their "
          "mean-replacement pruning penalty while training",
          defaults=_UNIT_DEFAULTS, quick=_QUICK, source="Evci 2018, Sec. 4.1, Fig. 4.1-4.3")
def thesis_unit_saliency(cfg: dict, ctx: RunContext) -> dict:
    """Unit saliencies of the thesis CNN during training, pruned with mean replacement (Sec. 4.1).

    Setting (Sec. 4.1): thesis CNN, SGD lr 0.01, batch 32, 10 epochs; every
    ``probe_every`` (100) steps, the units of ``conv1`` (8 filters) and
    ``fc1`` are scored on a fixed subset of ``probe_size`` (1000) training
    samples by ``mrp`` (exact mean replacement penalty, Def. 3.1.1), ``mrs``
    (its first-order approximation), the L1 and squared-L2 norms of the
    incoming weights, Molchanov's Taylor criterion, ReDo dormancy and
    random; the lowest-scored fraction ``f`` of a layer's units is replaced
    by its mean output (bias propagation) and the loss change on the same
    samples recorded: ``conv1`` at f = 0.5, ``fc1`` at f = 0.1 ... 0.5.

    What the thesis found (on MNIST, ReLU):

    * Fig. 4.1: in conv1 (8 units) all scorers pick the same 4 units; random
      costs far more (up to 100x).
    * Fig. 4.2: in fc1 at f = 0.5 random is far worse; MRP has the lowest
      penalty in general, followed by MRS; the norms diverge after about
      5000 steps.
    * Fig. 4.3: at f = 0.1 the norms are worse early, then all four agree;
      at larger f MRP and MRS almost constantly have the lowest penalty.

    The thesis calls fc1 a layer of 256 units; in its CNN (App. C.1, 20,522
    parameters) fc1 maps 256 inputs to 64 units, which is what is pruned
    here (f = 0.1 prunes 6 units).

    Outputs: ``probes.csv``, ``penalty.csv`` (per probe, layer, scorer and
    fraction), ``fig4_1_conv1.png``, ``fig4_3_fc1.png``, the training
    ``history.csv`` / ``curves.png`` and ``results.json`` with the summary of
    :func:`summarize_unit`.
    """
    fractions = {"conv1": list(cfg["conv1_fractions"]), "fc1": list(cfg["fc1_fractions"])}
    fractions = {k: v for k, v in fractions.items() if v}
    probe = UnitProbe(fractions, every=int(cfg["probe_every"]), size=int(cfg["probe_size"]),
                      seed=int(cfg["seed"]))
    _, results = train_run(cfg, ctx, "thesis_cnn", {}, callbacks=[probe],
                           title="thesis CNN on Fashion-MNIST (SGD 0.01, batch 32)")
    probes, penalty = pd.DataFrame(probe.probes), pd.DataFrame(probe.penalty)
    ctx.write_csv("probes.csv", probe.probes)
    ctx.write_csv("penalty.csv", probe.penalty)
    smooth = int(cfg["smooth"])
    figures = []
    if "conv1" in fractions:
        plot_unit_penalty(penalty, ctx, "conv1", fractions["conv1"], smooth, "fig4_1_conv1.png",
                          with_and_without_random=True)
        figures.append("fig4_1_conv1.png")
    if "fc1" in fractions:
        plot_unit_penalty(penalty, ctx, "fc1", fractions["fc1"], smooth, "fig4_3_fc1.png")
        figures.append("fig4_3_fc1.png")
    summary = summarize_unit(penalty, fractions)
    probe_time = float(probes["probe_time_s"].sum())
    ctx.log(f"{len(probes)} probes on {probe.n_samples} training samples, "
            f"{probe_time:.1f}s of probing")
    for layer, per_f in summary.items():
        for f, s in per_f.items():
            ctx.log(f"{layer} f={f}: ranks {s['rank']}")
    results.update({"summary": summary, "n_probes": len(probes), "probe_samples": probe.n_samples,
                    "probe_time_s": probe_time, "figures": figures,
                    "scorers": list(UNIT_SCORER_NAMES)})
    return results


def _median_time(fn: Callable[[], Any], repeats: int, budget_s: float) -> tuple[float, int, bool]:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call.

    Stops early when the next call would exceed ``budget_s`` in total; if
    only the warm-up call fits, its time is returned (``warmup_only``).
    Returns ``(median seconds, calls timed, warmup_only)``.
    """
    times: list[float] = []
    total = 0.0
    while len(times) < repeats + 1:
        start = time.perf_counter()
        fn()
        t = time.perf_counter() - start
        times.append(t)
        total += t
        if total + statistics.median(times) > budget_s:
            break
    if len(times) == 1:
        return times[0], 1, True
    return statistics.median(times[1:]), len(times) - 1, False


def _scorers_to_time() -> tuple[dict[str, type], list[str]]:
    """Every registered scorer, plus the parameter scorers of Table 2.1 under their registry
    names until they are registered: ``(name -> class, the names added)``."""
    from saliency import SCORERS  # at run time: the registry may grow after import

    registry = dict(SCORERS)
    fallback = {"magnitude": Magnitude, "taylor1": Taylor1, "taylor2": Taylor2,
                "hessian": Hessian, "loss_change": LossChange, "random": RandomParameter,
                "random_unit": RandomUnit}
    missing = [n for n in fallback if n not in registry]
    for name in missing:
        registry[name] = fallback[name]
    return registry, missing


def _time_scorer(name: str, cls: type, registered: bool, model: torch.nn.Module, batch,
                 fb: float, repeats: int, budget: float) -> dict[str, Any]:
    """One row of ``runtimes.csv``: how long scorer ``cls`` (default arguments) takes to
    score ``model`` on ``batch``, in seconds and in forward+backward passes (``fb``
    seconds); a scorer that raises gets NaN and the error."""
    row: dict[str, Any] = {"scorer": name, "class": cls.__name__,
                           "granularity": getattr(cls, "granularity", ""),
                           "registered": registered}
    x = batch[0][0]
    try:
        scorer = cls()
        # a copy with the layers it reads (switch gates from N(0,1), tri-state gates 1)
        scored = prepare_for(cls, model, x[:1])
        out = scorer.score(scored, batch)
        row["items"] = int(sum(v.numel() for v in out.values()))
        seconds, n, warm = _median_time(lambda: scorer.score(scored, batch), repeats, budget)
        row.update({"seconds": seconds, "x_fwd_bwd": seconds / fb, "calls_timed": n,
                    "warmup_only": warm, "error": ""})
    except Exception as exc:  # noqa: BLE001 - one scorer failing must not hide the others
        row.update({"seconds": math.nan, "x_fwd_bwd": math.nan, "calls_timed": 0,
                    "warmup_only": False, "error": f"{type(exc).__name__}: {exc}"})
    return row


@register("scorer-runtimes",
          "Table 2.1: wall time of every registered scorer on the thesis CNN, 1000 validation "
          "samples, also in forward+backward passes",
          defaults={**_DATA, **_TRAIN, "epochs": 1, "train_steps": 500, "probe_size": 1000,
                    "repeats": 10, "budget_s": 60.0},
          quick={"limit": 512, "train_steps": 5, "probe_size": 64, "repeats": 2,
                 "budget_s": 2.0, "eval_batch_size": 256},
          source="Evci 2018, Table 2.1")
def scorer_runtimes(cfg: dict, ctx: RunContext) -> dict:
    """Runtime of every scorer in :data:`saliency.SCORERS` (thesis Table 2.1).

    The registry is read at run time; the parameter scorers of Table 2.1
    (``magnitude``, ``taylor1``, ``taylor2``, ``hessian``, ``loss_change``,
    ``random``, ``random_unit``) are added from their modules when not yet
    registered, and listed under ``not_in_registry``.

    The thesis CNN is trained briefly (``train_steps`` SGD steps, lr 0.01,
    batch 32: 500 by default, so ReLUs and gradients look like those of a
    network in training rather than at initialization), then each scorer,
    built with its default arguments, scores all parameters (parameter
    scorers) or all prunable units (unit scorers) on ``probe_size`` (1000)
    validation samples in one batch. Time: median of ``repeats`` calls
    after a warm-up call, fewer when a scorer's calls would exceed
    ``budget_s`` seconds in total (``loss_change`` on all 20,522 weights);
    as a multiple of one forward+backward pass over the same samples
    (median of ``repeats``), measured in the same run. The machine's
    1-minute load average at the start and end is recorded: other work on
    the same cores slows every timing.

    What the thesis found (MacBook Pro 2015, MNIST, all parameters, 1000
    samples, mean of 10 runs): taylor1 0.088 s, taylor2 0.564 s, hessian
    0.483 s, magnitude 0.00006 s; the second-order scorers take 6-7 times a
    single back-propagation pass.
    """
    registry, missing = _scorers_to_time()
    data = load_data(cfg)
    torch.manual_seed(int(cfg["seed"]))
    model = build_model("thesis_cnn")
    steps = int(cfg["train_steps"])
    if steps > 0:
        train_cfg = TrainConfig.from_mapping({**cfg, "epochs": 1, "max_batches": steps})
        Trainer(model, data.train, config=train_cfg, progress=ctx.progress).fit()
    if data.val is None or not len(data.val):
        raise ValueError("scorer-runtimes times scorers on validation data: set val_size > 0")
    batch = _subset(data.val, int(cfg["probe_size"]), int(cfg["seed"]))
    x, y = batch[0]
    repeats, budget = int(cfg["repeats"]), float(cfg["budget_s"])

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    load_start = loadavg()
    model.eval()
    fb, fb_n, _ = _median_time(fwd_bwd, repeats, budget)
    model.zero_grad(set_to_none=True)
    model.train()
    rows = []
    for name, cls in registry.items():
        row = _time_scorer(name, cls, name not in missing, model, batch, fb, repeats, budget)
        ctx.log(f"{name:>14}: " + (f"{row['seconds']:.5f}s = {row['x_fwd_bwd']:.2f} fwd+bwd"
                                   if not row["error"] else row["error"]))
        rows.append(row)
    ctx.write_csv("runtimes.csv", rows)
    _plot_runtimes(rows, fb, ctx)
    return {"fwd_bwd_s": fb, "fwd_bwd_calls": fb_n, "threads": torch.get_num_threads(),
            "load_average_1min": {"start": load_start, "end": loadavg()},
            "samples": int(x.shape[0]), "train_steps": steps,
            "not_in_registry": missing,
            "runtimes": {r["scorer"]: {k: r[k] for k in ("seconds", "x_fwd_bwd", "calls_timed",
                                                          "warmup_only", "items", "error")
                                       if k in r} for r in rows},
            "figures": ["runtimes.png"]}


def _plot_runtimes(rows: list[dict], fb: float, ctx: RunContext) -> None:
    plt, sns = _plt()
    ok = [r for r in rows if not r["error"]]
    ok.sort(key=lambda r: r["seconds"])
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(ok), 1) + 1.5))
    if ok:
        sns.barplot(x=[r["seconds"] for r in ok], y=[r["scorer"] for r in ok], ax=ax,
                    color=sns.color_palette()[0], orient="h")
        for i, r in enumerate(ok):
            ax.text(r["seconds"], i, f"  {r['x_fwd_bwd']:.2g}x", va="center", fontsize=8)
    ax.axvline(fb, color="0.3", linestyle="--", linewidth=1, label="one forward+backward")
    ax.set_xscale("log")
    if ok:
        ax.set_xlim(right=max(r["seconds"] for r in ok) * 8)
    ax.set(xlabel="seconds (median)", ylabel="",
           title="scorer runtime on the thesis CNN (all parameters / units)")
    ax.legend(loc="upper right", fontsize=8)
    ctx.save_figure(fig, "runtimes.png")
