"""Comparing scorers: rank correlations, top-k overlap, pruning penalty, fidelity.

The functions work on already-computed scores (``{name: scores}`` where each
``scores`` follows the scorer contract of :mod:`saliency.base`), so a notebook
scores a model once and reuses the result for every comparison.
:func:`compute_scores` runs a set of scorers to produce that mapping;
:func:`pruning_penalty` also accepts scorer objects and runs them itself.

* :func:`rank_correlations` -- Spearman's rho or Kendall's tau-b
  (:mod:`scipy.stats`) between every pair of scorers, per layer and over all
  layers together (``"global"``).
* :func:`topk_overlap` -- the fraction of the ``k`` lowest-scored items (the
  ones a pruner removes) that two scorers share.
* :func:`pruning_penalty` -- the pruning-penalty curve of U. Evci,
  *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU 2018,
  https://arxiv.org/abs/1806.06068 (Evci 2018): the change of the mean loss
  on held-out data when the fraction ``f`` of a layer's parameters or units
  with the lowest scores is pruned, for each scorer, with the model restored
  after every probe. Draw it against the random scorer (the floor a scorer
  must beat) and the exact oracle: ``loss_change`` for parameters, ``mrp``
  (the mean replacement penalty, :class:`saliency.mrp.MRP`) for units; the
  caller passes them in like any other scorer.
* :func:`fidelity` -- how well an approximation (``taylor1``, ``mrs``) ranks
  compared with its exact counterpart (``loss_change``, ``mrp``).

Each has a one-line plot (:func:`plot_correlations`, :func:`plot_topk`,
:func:`plot_penalty`, :func:`plot_fidelity`) drawn with seaborn on a
matplotlib Axes; nothing calls ``plt.show()``, so the plots work with the Agg
backend and in notebooks alike. A figure a plot creates is sized to its labels
(long scorer names are shown in full, bar labels never overlap); the
pruning-penalty plot names the layer it pruned.

Example (a notebook cell)::

    from saliency import MRP, MRS, compare
    scores = compare.compute_scores({"mrs": MRS(), "mrp": MRP(), "random": random_scorer},
                                    net, train)
    compare.plot_fidelity(compare.fidelity(scores, {"mrs": "mrp"}))
    compare.plot_correlations(compare.rank_correlations(scores)["global"])
    compare.plot_penalty(compare.pruning_penalty(net, scores, test, layer="fc1",
                                                 fractions=[0.1, 0.2, 0.5]))
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from .base import per_sample_loss, preserved
from .graph import Group
from .progress import progress
from .replacement import iter_inputs, replacement_hooks, unit_means
from .tracing import trace

if TYPE_CHECKING:                       # matplotlib is imported when a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["UndefinedComparisonWarning", "compute_scores", "rank_correlations", "topk_overlap",
           "pruning_penalty", "fidelity", "plot_correlations", "plot_topk", "plot_penalty",
           "plot_fidelity", "RANDOM_NAMES", "ORACLE_NAMES"]

LossFn = Callable[..., torch.Tensor]
Scores = Mapping[str, torch.Tensor]

#: name prefixes :func:`plot_penalty` draws as the random baseline (dashed)
RANDOM_NAMES: tuple[str, ...] = ("random",)
#: name prefixes :func:`plot_penalty` draws as exact oracles (bold)
ORACLE_NAMES: tuple[str, ...] = ("loss_change", "mrp", "oracle")

_METHODS = ("spearman", "kendall")


class UndefinedComparisonWarning(RuntimeWarning):
    """A comparison is undefined -- constant scores or < 2 items (rank correlation), a
    ``k`` selecting no item (overlap) -- and was set to NaN. One warning per call."""


# --------------------------------------------------------------------------- helpers

def _materialize(data: Iterable | None) -> Iterable | None:
    """Read a one-pass iterator once, so it can be iterated several times."""
    if data is not None and not isinstance(data, torch.Tensor) and iter(data) is data:
        return list(data)
    return data


def _as_numpy(t: torch.Tensor, where: str) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()


def _check_scores(scores: Mapping[str, Scores]) -> list[str]:
    """Validate everything up front: mappings of tensors, no NaN, one shape per layer."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping {scorer name: {layer: tensor}}")
    shapes: dict[str, tuple[str, tuple]] = {}
    for name, s in scores.items():
        if not isinstance(s, Mapping):
            raise TypeError(f"scores[{name!r}] must be a dict {{layer: tensor}}, got "
                            f"{type(s).__name__}")
        for layer, t in s.items():
            where = f"scores[{name!r}][{layer!r}]"
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: scores must be tensors, got {type(t).__name__}")
            if t.is_floating_point() and torch.isnan(t).any():
                raise ValueError(f"{where}: scores contain NaN")
            first = shapes.setdefault(layer, (name, tuple(t.shape)))
            if first[1] != tuple(t.shape):
                raise ValueError(f"layer {layer!r}: scorer {first[0]!r} gives shape {first[1]}, "
                                 f"{name!r} gives {tuple(t.shape)}")
    return list(scores)


def _granularity(scores: Scores) -> str:
    """``"parameter"`` for parameter-wise scores (a tensor that is not 1-D, or a key naming a
    parameter: ``fc1.weight``, ``fc1.bias``, ``fc1.weight_orig``), else ``"unit"``."""
    for key, t in scores.items():
        last = str(key).rsplit(".", 1)[-1]
        if t.dim() != 1 or last.endswith(("weight", "bias", "_orig")):
            return "parameter"
    return "unit"


def _check_granularity(scores: Mapping[str, Scores], what: str) -> None:
    """Raise a ValueError naming the scorers whose granularity differs from the others'.

    Parameter-wise and unit-wise scores rank different items (weights vs. units) and share
    no layer key, so a comparison between them is undefined, not merely NaN.
    """
    kinds: dict[str, list[str]] = {"parameter": [], "unit": []}
    for name, s in scores.items():
        kinds[_granularity(s)].append(name)
    if not kinds["parameter"] or not kinds["unit"]:
        return
    # the minority is the odd one out (a tie names the parameter scorers)
    odd, usual = (("unit", "parameter") if len(kinds["unit"]) < len(kinds["parameter"])
                  else ("parameter", "unit"))

    def example(kind: str) -> str:
        return repr(next((k for n in kinds[kind] for k in scores[n]), ""))

    raise ValueError(
        f"{what}: scorer(s) {kinds[odd]} are {odd}-wise (keys like {example(odd)}) but "
        f"{kinds[usual]} are {usual}-wise (keys like {example(usual)}); they rank different "
        "items and cannot be compared. Compare parameter scorers with parameter scorers and "
        "unit scorers with unit scorers: call it once per granularity, e.g. with "
        f"{{name: scores[name] for name in {kinds[usual]}}}")


def _warn_undefined(notes: list[str], what: str) -> None:
    """One warning per call, listing the undefined entries (NaN in the result)."""
    if notes:
        more = f" (and {len(notes) - 5} more)" if len(notes) > 5 else ""
        warnings.warn(f"{what}: {len(notes)} undefined entries set to NaN: "
                      + "; ".join(notes[:5]) + more, UndefinedComparisonWarning, stacklevel=3)


def _layers(scores: Mapping[str, Scores]) -> list[str]:
    """Every layer key, in first-seen order."""
    out: dict[str, None] = {}
    for s in scores.values():
        out.update(dict.fromkeys(s))
    return list(out)


def _common(a: Scores, b: Scores) -> list[str]:
    return [k for k in a if k in b]


def _pair_vectors(scores: Mapping[str, Scores], a: str, b: str,
                  layers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flattened scores of scorers ``a`` and ``b`` over ``layers``, concatenated."""
    xs, ys = [], []
    for layer in layers:
        ta, tb = scores[a][layer], scores[b][layer]
        xs.append(_as_numpy(ta, f"scores[{a!r}][{layer!r}]"))
        ys.append(_as_numpy(tb, f"scores[{b!r}][{layer!r}]"))
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def _corr(x: np.ndarray, y: np.ndarray, method: str, what: str, notes: list[str]) -> float:
    """Spearman's rho or Kendall's tau-b; NaN (noted in ``notes``) when undefined."""
    if x.size < 2:
        notes.append(f"{what}: fewer than 2 items")
        return math.nan
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        notes.append(f"{what}: constant scores")
        return math.nan
    if method == "spearman":
        return float(stats.spearmanr(x, y).statistic)
    return float(stats.kendalltau(x, y).statistic)  # tau-b: corrected for ties


def _n_of(k: int | float, n: int) -> int:
    """Items to take: ``k`` itself (int) or ``floor(k * n)`` (float fraction).

    The fraction follows the thesis ("256 units and a pruning factor of 0.1:
    we prune floor(256/10) = 25"); the product is rounded to 9 decimals first,
    so ``0.29 * 100`` gives 29, not 28.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"k must be an int (count) or a float (fraction), got {k!r}")
    if isinstance(k, (int, np.integer)):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return min(int(k), n)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"a fractional k must be in [0, 1], got {k}")
    return int(math.floor(round(k * n, 9)))


def _lowest(x: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Indices of the ``k`` lowest entries; ties broken by position (stable sort)."""
    x = np.asarray(x.detach().cpu().double().reshape(-1) if isinstance(x, torch.Tensor) else x)
    return np.argsort(x, kind="stable")[:k]


# --------------------------------------------------------------------------- scoring

def compute_scores(scorers: Mapping[str, Any], model: nn.Module, data: Iterable | None = None,
                   loss_fn: LossFn = F.cross_entropy) -> dict[str, dict[str, torch.Tensor]]:
    """Run every scorer on ``model`` and ``data``.

    Args:
        scorers: ``{name: scorer}``; each has ``score(model, data, loss_fn)``
            (:class:`saliency.base.Scorer`).
        model: the model; scorers never change it.
        data: iterable of ``(inputs, targets)`` batches (a one-pass iterator is
            read once and reused for every scorer).
        loss_fn: loss with a ``reduction`` argument.

    Returns:
        ``{name: {parameter or layer name: scores}}``, ready for every function
        of this module.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from saliency.mrp import MRP
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> scores = compute_scores({"mrp": MRP(), "mrp_signed": MRP(absolute=False)}, net, data)
        >>> sorted(scores), scores["mrp"]["0"].shape
        (['mrp', 'mrp_signed'], torch.Size([6]))
    """
    if not isinstance(scorers, Mapping) or not scorers:
        raise ValueError("scorers must be a non-empty mapping {name: scorer}")
    for name, s in scorers.items():
        if not callable(getattr(s, "score", None)):
            raise TypeError(f"scorers[{name!r}] has no score(model, data, loss_fn) method")
    data = _materialize(data)
    return {name: dict(s.score(model, data, loss_fn)) for name, s in scorers.items()}


# --------------------------------------------------------------------------- rankings

def rank_correlations(scores: Mapping[str, Scores], method: str = "spearman",
                      per_layer: bool = True) -> dict[str, pd.DataFrame]:
    """Rank-correlation matrices between scorers, per layer and global.

    For two scorers ``a`` and ``b`` and a layer, the entry is Spearman's rho
    (Pearson correlation of the ranks, ties ranked by their average) or
    Kendall's tau-b (concordant minus discordant pairs, corrected for ties),
    computed by :func:`scipy.stats.spearmanr` / :func:`scipy.stats.kendalltau`
    on the flattened scores. 1 = same order, -1 = reversed order.

    ``"global"`` concatenates, in a fixed order, the flattened scores of every
    layer the two scorers share: the ranking a global pruner (one threshold
    over all layers) would use. Scorers of different granularity rank
    different items (weights vs. units) and cannot be compared: mixing
    parameter-wise scores (``{"fc1.weight": ...}``) with unit-wise ones
    (``{"fc1": ...}``) is a ValueError naming the odd ones out; compare each
    granularity in its own call.

    An undefined correlation (a constant score vector, or fewer than two
    items) is NaN, with a :class:`UndefinedComparisonWarning`.

    Args:
        scores: ``{scorer name: {layer: tensor}}`` (see :func:`compute_scores`).
        method: ``"spearman"`` or ``"kendall"``.
        per_layer: also return one matrix per layer (else only ``"global"``).

    Returns:
        ``{layer or "global": DataFrame}``; each a symmetric scorer x scorer
        matrix over the scorers that have that layer (``"global"``: all
        scorers), index and columns named ``"scorer"``.

    Raises:
        ValueError: an unknown ``method``, scores of different shapes for a
            layer, NaN scores, or parameter-wise and unit-wise scorers mixed.

    Examples:
        >>> import torch
        >>> s = {"a": {"fc": torch.tensor([1., 2., 3.])},
        ...      "b": {"fc": torch.tensor([3., 2., 1.])}}
        >>> float(rank_correlations(s)["fc"].loc["a", "b"])
        -1.0
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    names = _check_scores(scores)
    _check_granularity(scores, "rank_correlations")
    notes: list[str] = []
    out: dict[str, pd.DataFrame] = {}
    if per_layer:
        for layer in _layers(scores):
            have = [n for n in names if layer in scores[n]]
            out[layer] = _matrix(have, lambda a, b, layer=layer: _corr(
                *_pair_vectors(scores, a, b, [layer]), method, f"({a}, {b}) on {layer}", notes))
    out["global"] = _matrix(names, lambda a, b: _corr(
        *_pair_vectors(scores, a, b, _common(scores[a], scores[b])), method,
        f"({a}, {b}) global", notes))
    _warn_undefined(notes, f"rank_correlations({method})")
    return out


def _matrix(names: list[str], fn: Callable[[str, str], float]) -> pd.DataFrame:
    m = np.full((len(names), len(names)), np.nan)
    for i, j in itertools.combinations_with_replacement(range(len(names)), 2):
        m[i, j] = m[j, i] = fn(names[i], names[j])
    idx = pd.Index(names, name="scorer")
    return pd.DataFrame(m, index=idx, columns=idx.copy())


def _overlap(x: np.ndarray, y: np.ndarray, k: int | float, what: str,
             notes: list[str]) -> float:
    n = _n_of(k, x.size)
    if isinstance(k, (float, np.floating)) and k > 0 and x.size:
        n = max(n, 1)  # a positive fraction of a small layer compares its lowest item
    if n == 0:
        notes.append(f"{what}: k selects no item")
        return math.nan
    a, b = _lowest(x, n), _lowest(y, n)
    return len(np.intersect1d(a, b)) / n


def topk_overlap(scores: Mapping[str, Scores], k: int | float = 0.1,
                 per_layer: bool = True) -> dict[str, pd.DataFrame]:
    """Overlap of the ``k`` lowest-scored items between every pair of scorers.

    For scorers ``a`` and ``b`` the entry is ``|L_a ∩ L_b| / k`` where ``L_s``
    is the set of the ``k`` items with the lowest scores under ``s`` -- the
    items a pruner using ``s`` removes first. Ties are broken by position
    (stable sort), as a pruner would. 1 = same pruned set; a random pair
    overlaps by about ``k / n``. Parameter-wise and unit-wise scorers cannot
    be mixed (a ValueError, as in :func:`rank_correlations`).

    Args:
        scores: ``{scorer name: {layer: tensor}}``.
        k: an int is a count; a float in ``[0, 1]`` is a fraction of the
            layer's items, ``max(1, floor(k * n))`` (so 10% of a 6-unit layer
            compares the lowest unit). ``k = 0`` selects no item: NaN with a
            :class:`UndefinedComparisonWarning`.
        per_layer: also return one matrix per layer; ``"global"`` takes the
            lowest ``k`` over the concatenation of the layers a pair shares
            (a global pruner).

    Returns:
        ``{layer or "global": DataFrame}`` of scorer x scorer overlaps in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> s = {"a": {"fc": torch.tensor([1., 2., 3., 4.])},
        ...      "b": {"fc": torch.tensor([2., 1., 4., 3.])}}
        >>> float(topk_overlap(s, k=2)["fc"].loc["a", "b"])
        1.0
    """
    names = _check_scores(scores)
    _check_granularity(scores, "topk_overlap")
    _n_of(k, 1 << 30)  # validate k before any work
    notes: list[str] = []
    out: dict[str, pd.DataFrame] = {}
    if per_layer:
        for layer in _layers(scores):
            have = [n for n in names if layer in scores[n]]
            out[layer] = _matrix(have, lambda a, b, layer=layer: _overlap(
                *_pair_vectors(scores, a, b, [layer]), k, f"({a}, {b}) on {layer}", notes))
    out["global"] = _matrix(names, lambda a, b: _overlap(
        *_pair_vectors(scores, a, b, _common(scores[a], scores[b])), k, f"({a}, {b}) global",
        notes))
    _warn_undefined(notes, f"topk_overlap(k={k})")
    return out


def fidelity(scores: Mapping[str, Scores], pairs: Mapping[str, str],
             k: int | float = 0.1) -> pd.DataFrame:
    """How well each approximation ranks compared with its exact counterpart.

    For every ``approximation -> exact`` pair (e.g. ``{"taylor1":
    "loss_change", "mrs": "mrp"}``) and every layer both score, plus a
    ``"global"`` row over all those layers together: Spearman's rho,
    Kendall's tau-b (see :func:`rank_correlations`) and the overlap of the
    ``k`` lowest-scored items (see :func:`topk_overlap`; 10% by default, at
    least one item). All
    three are 1 for a perfect approximation.

    Args:
        scores: ``{scorer name: {layer: tensor}}``.
        pairs: ``{approximation name: exact name}``.
        k: the top-k of the overlap column (int count or float fraction).

    Returns:
        DataFrame with columns ``approximation, exact, layer, n, spearman,
        kendall, topk_overlap`` (``n``: items compared), one row per pair and
        layer, the ``"global"`` row last for each pair.

    Examples:
        >>> import torch
        >>> s = {"approx": {"fc": torch.tensor([1., 3., 2., 4.])},
        ...      "exact": {"fc": torch.tensor([1., 2., 3., 4.])}}
        >>> fidelity(s, {"approx": "exact"}, k=2)[["layer", "spearman", "topk_overlap"]]
            layer  spearman  topk_overlap
        0      fc       0.8           0.5
        1  global       0.8           0.5
    """
    _check_scores(scores)
    if not isinstance(pairs, Mapping) or not pairs:
        raise ValueError("pairs must be a non-empty mapping {approximation: exact}")
    missing = sorted({n for kv in pairs.items() for n in kv if n not in scores})
    if missing:
        raise ValueError(f"pairs names scorers without scores: {missing}; scores has "
                         f"{sorted(scores)}")
    _n_of(k, 1 << 30)
    notes: list[str] = []
    rows = []
    for approx, exact in pairs.items():
        common = _common(scores[approx], scores[exact])
        if not common:
            raise ValueError(f"{approx!r} and {exact!r} share no layer (different "
                             "granularity?)")
        for layer in [*common, "global"]:
            x, y = _pair_vectors(scores, approx, exact, common if layer == "global" else [layer])
            what = f"({approx}, {exact}) on {layer}"
            rows.append({"approximation": approx, "exact": exact, "layer": layer, "n": x.size,
                         "spearman": _corr(x, y, "spearman", what, notes),
                         "kendall": _corr(x, y, "kendall", what, notes),
                         "topk_overlap": _overlap(x, y, k, what, notes)})
    _warn_undefined(notes, "fidelity")
    return pd.DataFrame(rows, columns=["approximation", "exact", "layer", "n", "spearman",
                                       "kendall", "topk_overlap"])


# --------------------------------------------------------------------------- penalty

def _mean_loss(model: nn.Module, data: Iterable, loss_fn: LossFn) -> float:
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for batch in data:
            x, y = batch[0], batch[1]
            total += per_sample_loss(loss_fn, model(x), y).to(torch.float64).sum()
            count += x.shape[0]
    if count == 0:
        raise ValueError("data is empty: it yielded no sample")
    return float(total / count)


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by name; ``torch.nn.utils.prune``'d ones also under their base name."""
    out = dict(model.named_parameters(remove_duplicate=False))
    for name, p in list(out.items()):
        if name.endswith("_orig"):
            out.setdefault(name[: -len("_orig")], p)
    return out


def pruning_penalty(model: nn.Module, scorers_or_scores: Mapping[str, Any],
                    data: Iterable, *, layer: str, fractions: Iterable[float],
                    loss_fn: LossFn = F.cross_entropy, kind: str = "unit",
                    replacement: str = "mean",
                    score_data: Iterable | None = None) -> pd.DataFrame:
    """The pruning-penalty curve: loss change when each scorer prunes a fraction of a layer.

    For every scorer ``s`` and fraction ``f`` the probe prunes the
    ``n_pruned = floor(f * n)`` items of ``layer`` with the lowest scores
    under ``s`` (ties broken by position) and measures, on ``data``,

        delta = L(pruned model) - L(model),   L = mean per-sample loss,

    restoring the model after every probe. A good scorer keeps ``delta``
    small for large ``f``. Draw the curve against the random scorer (the
    baseline to beat) and the exact oracle, which prunes by the true loss
    change: ``loss_change`` for parameters, ``mrp`` (:class:`saliency.mrp.MRP`)
    for units; pass them in ``scorers_or_scores`` like any other scorer
    (:func:`plot_penalty` dashes names starting with ``"random"`` and draws
    ``loss_change`` / ``mrp`` bold).

    * ``kind="parameter"``: ``layer`` is a parameter name (``"fc1.weight"``;
      a module name means its ``weight``); the selected entries are set to
      zero under ``torch.no_grad()`` and restored from a saved clone in a
      ``finally``, so the model is bit-identical afterwards.
    * ``kind="unit"``: ``layer`` is a producer module (``"fc1"``); the
      selected units' outputs are replaced by forward hooks
      (:func:`saliency.replacement.replacement_hooks`) with their mean over
      ``data`` (:func:`saliency.replacement.unit_means`, ``replacement=
      "mean"``) or by 0 (``"zero"``). The loss is exactly that of
      ``pruners.remove_units(model, units, replacement=..., data=data)``,
      without changing the model. (``"zero"`` holds the producer output at 0,
      so a following BatchNorm's shift still reaches the consumer, as in
      ``remove_units(replacement="zero")``.) For a group of coupled channels
      of :func:`saliency.trace` (the producers a residual add sums), ``layer``
      is the group's name (the key of its scores) or any member's name: a
      selected group channel is held in every member, each at its own mean (or
      0), as ``remove_units`` does with the group.

    Probes run in eval mode under ``torch.no_grad()``; training flags,
    hooks, ``.grad`` and ``requires_grad`` are restored, also on error. On a
    terminal a progress bar counts the probes (:func:`saliency.progress.progress`).

    Args:
        model: the model; unchanged afterwards.
        scorers_or_scores: ``{name: scorer or scores dict}``; scorer objects
            are run on ``score_data`` (default ``data``).
        data: held-out iterable of ``(inputs, targets)`` batches.
        layer: the parameter (``kind="parameter"``) or producer module / group
            (``kind="unit"``) to prune.
        fractions: fractions in ``[0, 1]``.
        loss_fn: loss with a ``reduction`` argument.
        kind: ``"unit"`` or ``"parameter"``.
        replacement: ``"mean"`` or ``"zero"`` (units only).
        score_data: data for scorer objects (e.g. the training set).

    Returns:
        DataFrame with columns ``scorer, fraction, n_pruned, loss_before,
        loss_after, delta``, one row per scorer and fraction. Its ``attrs``
        record what was pruned: ``layer`` (the parameter, or the layer or
        group whose units), ``kind``, ``n_items``, ``replacement`` (None for
        parameters) and ``members`` (a group's layers);
        :func:`plot_penalty` names them in its title.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from saliency.mrp import MRP
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,)))]
        >>> scorers = {"mrp": MRP(), "random": {"0": torch.rand(8)}}
        >>> df = pruning_penalty(net, scorers, data, layer="0", fractions=[0.25, 0.5])
        >>> df[["scorer", "fraction", "n_pruned"]].values.tolist()
        [['mrp', 0.25, 2], ['mrp', 0.5, 4], ['random', 0.25, 2], ['random', 0.5, 4]]
        >>> df.attrs["layer"], df.attrs["n_items"]
        ('0', 8)
    """
    fractions = _check_penalty_args(model, scorers_or_scores, fractions, data, kind,
                                    replacement)
    data = _materialize(data)
    score_data = data if score_data is None else _materialize(score_data)
    target = _PenaltyTarget.of(model, layer, kind, data)
    vectors = _penalty_vectors(model, scorers_or_scores, target, score_data, loss_fn)
    rows = _penalty_rows(model, target, vectors, fractions, data, loss_fn, replacement)
    df = pd.DataFrame(rows, columns=_PENALTY_COLUMNS)
    df.attrs.update({"layer": target.key, "kind": kind, "n_items": target.n_items,
                     "replacement": replacement if kind == "unit" else None,
                     "members": list(target.group.members) if target.group is not None
                     else [target.key]})
    return df


_PENALTY_COLUMNS = ["scorer", "fraction", "n_pruned", "loss_before", "loss_after", "delta"]


def _check_penalty_args(model, scorers_or_scores, fractions, data, kind: str,
                        replacement: str) -> list[float]:
    """Validate :func:`pruning_penalty`'s arguments before the model is touched; the fractions."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if kind not in ("unit", "parameter"):
        raise ValueError(f"kind must be 'unit' or 'parameter', got {kind!r}")
    if kind == "unit" and replacement not in ("mean", "zero"):
        raise ValueError(f"replacement must be 'mean' or 'zero', got {replacement!r}")
    if not isinstance(scorers_or_scores, Mapping) or not scorers_or_scores:
        raise ValueError("scorers_or_scores must be a non-empty mapping {name: scorer or "
                         "scores}")
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("fractions is empty")
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"fractions must be in [0, 1], got {bad}")
    if data is None:
        raise ValueError("pruning_penalty needs data: an iterable of (inputs, targets) batches")
    return fractions


@dataclass
class _PenaltyTarget:
    """What :func:`pruning_penalty` prunes: a parameter's entries or a producer's units.

    ``key`` is the parameter name or the producer's module name (the key of
    the scores), ``param`` the parameter (``kind="parameter"``), ``n_items``
    the number of entries or units (None when the module does not say).
    """

    kind: str
    key: str
    param: nn.Parameter | None
    n_items: int | None
    group: Group | None = None  # a group of several layers: each member is held

    @classmethod
    def of(cls, model: nn.Module, layer: str, kind: str, data=None) -> "_PenaltyTarget":
        if kind == "parameter":
            params = _named_params(model)
            key = layer if layer in params else f"{layer}.weight"
            if key not in params:
                raise ValueError(f"kind='parameter': {layer!r} is neither a parameter nor a "
                                 f"module with a weight; parameters are {sorted(params)}")
            return cls(kind, key, params[key], params[key].numel())
        group = _coupled_group(model, layer, data)
        if group is not None:
            return cls(kind, group.name, None, group.size, group)
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            raise ValueError(f"kind='unit': {layer!r} is not a module of the model")
        mod = modules[layer]
        return cls(kind, layer, None,
                   getattr(mod, "out_features", getattr(mod, "out_channels", None)))

    def check(self, name: str, t: torch.Tensor) -> None:
        """Raise unless ``t`` are scores of this target's entries or units, without NaN."""
        if self.kind == "parameter" and tuple(t.shape) != tuple(self.param.shape):
            raise ValueError(f"scorer {name!r}: scores for {self.key!r} have shape "
                             f"{tuple(t.shape)}, the parameter {tuple(self.param.shape)}")
        if self.kind == "unit":
            if t.dim() != 1 or (self.n_items is not None and t.numel() != self.n_items):
                raise ValueError(f"scorer {name!r}: unit scores for {self.key!r} must be 1-D "
                                 f"over its {self.n_items} units, got shape {tuple(t.shape)}")
        if torch.isnan(t).any():
            raise ValueError(f"scorer {name!r}: scores for {self.key!r} contain NaN")


def _coupled_group(model: nn.Module, layer: str, data) -> Group | None:
    """The group of several layers ``layer`` names (the group or a member), or None (a
    chain, a model :func:`saliency.trace` cannot read, no data to trace with)."""
    if data is None:
        return None
    try:
        graph = trace(model, next(iter_inputs(data)), on_unsupported="exclude")
        group = graph.group_of(layer)
    except Exception:  # noqa: BLE001 - not traceable: the layer is held on its own
        return None
    return group if len(group.members) > 1 or group.joined else None


def _held(target: _PenaltyTarget, idx: torch.Tensor, means) -> dict[str, tuple]:
    """``{module: (channels, values)}`` holding the units ``idx`` of the target at ``means``
    (``{module: per-channel means}``, or None for zeros)."""
    def values(name, sel):
        if means is None:
            return torch.zeros(sel.numel(), dtype=torch.float64)
        return means[name][sel.to(means[name].device)]

    if target.group is None:
        return {target.key: (idx, values(target.key, idx))}
    held = {}
    for m in target.group.members:
        sel = torch.isin(target.group.channels[m], idx).nonzero().reshape(-1)
        held[m] = (sel, values(m, sel))
    return held


def _penalty_vectors(model: nn.Module, scorers_or_scores: Mapping[str, Any],
                     target: _PenaltyTarget, score_data, loss_fn: LossFn
                     ) -> dict[str, torch.Tensor]:
    """``{name: flattened scores of the target}``, running the scorer objects on ``score_data``.

    For units, ``target.n_items`` becomes the length of the score vectors.
    """
    key, kind = target.key, target.kind
    vectors: dict[str, torch.Tensor] = {}
    for name, s in scorers_or_scores.items():
        if callable(getattr(s, "score", None)):
            s = s.score(model, score_data, loss_fn)
        if not isinstance(s, Mapping):
            raise TypeError(f"scorers_or_scores[{name!r}] is neither a scorer nor a scores dict")
        if key not in s:
            hint = (" (parameter-wise scores for kind='unit'?)" if kind == "unit"
                    and any(k.startswith(key + ".") for k in s) else "")
            raise ValueError(f"scorer {name!r} has no scores for {key!r}{hint}; it scores "
                             f"{sorted(s)}")
        t = s[key].detach()
        target.check(name, t)
        vectors[name] = t.reshape(-1)
    if kind == "unit":
        target.n_items = next(iter(vectors.values())).numel()
    return vectors


def _penalty_rows(model: nn.Module, target: _PenaltyTarget, vectors: dict[str, torch.Tensor],
                  fractions: list[float], data, loss_fn: LossFn, replacement: str
                  ) -> list[dict[str, Any]]:
    """One row per scorer and fraction: the probe of the lowest-scored items, model restored."""
    counts = {f: _n_of(f, target.n_items) for f in fractions}
    rows = []
    with preserved(model), torch.no_grad():
        loss_before = _mean_loss(model, data, loss_fn)
        means = None
        if target.kind == "unit" and replacement == "mean":
            layers = target.group.members if target.group is not None else [target.key]
            means = unit_means(model, data, layers)
        probes = [(name, f) for name in vectors for f in fractions]
        for name, f in progress(probes, f"pruning-penalty probes of {target.key}", unit="probe"):
            idx = torch.as_tensor(_lowest(vectors[name], counts[f]), dtype=torch.long)
            if target.kind == "parameter":
                loss_after = _probe_parameter(model, target.param, idx, data, loss_fn)
            else:
                loss_after = _probe_unit(model, _held(target, idx, means), data, loss_fn)
            rows.append({"scorer": name, "fraction": f, "n_pruned": int(idx.numel()),
                         "loss_before": loss_before, "loss_after": loss_after,
                         "delta": loss_after - loss_before})
    return rows


def _probe_parameter(model, param, idx, data, loss_fn) -> float:
    saved = param.detach().clone()
    try:
        mask = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
        mask[idx.to(param.device)] = True
        param.masked_fill_(mask.view(param.shape), 0)
        return _mean_loss(model, data, loss_fn)
    finally:
        param.copy_(saved)


def _probe_unit(model, held, data, loss_fn) -> float:
    handles = replacement_hooks(model, held)
    try:
        return _mean_loss(model, data, loss_fn)
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- plots
#
# A figure a plot creates is sized from its labels (estimated from their number of
# characters) and laid out by matplotlib's constrained layout ("compressed" for the square
# heatmaps), so no label is cut; on an Axes the caller passes, long labels are rotated and
# the layout is the caller's.

#: estimated width, in inches, of one character of 10-point text (DejaVu Sans, with margin)
_CHAR_IN = 0.09
#: widest bar chart (inches) before the labels of its bars turn vertical
_MAX_BARS_INCHES = 16.0
#: inches per heatmap cell: room for an annotation such as "-0.12"
_CELL = 0.62
_SIN45 = math.sqrt(0.5)


def _text_inches(labels: Iterable[Any], fontsize: float = 10.0) -> float:
    """Estimated width (inches) of the longest line of ``labels`` at ``fontsize`` points."""
    longest = max((len(line) for lab in labels for line in str(lab).splitlines()), default=0)
    return longest * _CHAR_IN * fontsize / 10.0


def _new_axes(figsize: tuple[float, float], layout: str = "constrained") -> Axes:
    import matplotlib.pyplot as plt
    _, ax = plt.subplots(figsize=figsize, layout=layout)
    return ax


def _rotate_x(ax: Axes, degrees: float) -> None:
    """Rotate the x tick labels, anchored at their right end under the tick."""
    for t in ax.get_xticklabels():
        t.set_rotation(degrees)
        t.set_horizontalalignment("right" if degrees else "center")
        t.set_rotation_mode("anchor" if degrees else "default")


def _heatmap_inches(df: pd.DataFrame, title: str) -> tuple[float, float]:
    """``(width, height)`` in inches of one annotated heatmap, from its labels and title."""
    n_rows, n_cols = df.shape
    y_w = _text_inches(df.index) + 0.55            # tick labels, ticks, the axis label
    x_w = _text_inches(df.columns)
    rotate = x_w > 0.9 * _CELL
    x_h = (_SIN45 * x_w + 0.2 if rotate else 0.25) + 0.35
    left = max(y_w, _SIN45 * x_w - _CELL / 2 + 0.3 if rotate else 0.0)
    width = max(left + n_cols * _CELL + 1.2, _text_inches([title], 12) + 0.5)
    return width, 0.55 + n_rows * _CELL + x_h + 0.2


def _heatmaps(mats, ax, *, vmin, vmax, cmap, title):
    import seaborn as sns

    def label(name):
        return f"{title}: {name}" if name else title

    def one(df, ax, name, given=False):
        ax = sns.heatmap(df, ax=ax, annot=True, fmt=".2f", vmin=vmin, vmax=vmax, cmap=cmap,
                         square=True, cbar_kws={"shrink": 0.8})
        ax.set_title(label(name))
        ax.tick_params(axis="y", labelrotation=0)
        _rotate_x(ax, 45 if _text_inches(df.columns) > 0.9 * _CELL else 0)
        if given and df.size:  # the caller's Axes: annotations as small as its cells
            pos, fig = ax.get_position(), ax.figure
            cell = min(pos.width * fig.get_figwidth() / df.shape[1],
                       pos.height * fig.get_figheight() / df.shape[0])
            if cell < _CELL:
                for t in ax.texts:
                    t.set_fontsize(max(5.0, 10.0 * cell / _CELL))
        return ax

    if isinstance(mats, pd.DataFrame):
        if ax is not None:
            return one(mats, ax, None, given=True)
        return one(mats, _new_axes(_heatmap_inches(mats, title), "compressed"), None)
    if not isinstance(mats, Mapping) or not mats:
        raise TypeError("expected a DataFrame or a non-empty {layer: DataFrame} dict")
    if len(mats) == 1:
        (name, df), = mats.items()
        if ax is not None:
            return one(df, ax, name, given=True)
        return one(df, _new_axes(_heatmap_inches(df, label(name)), "compressed"), name)
    if ax is not None:
        raise ValueError("several matrices need a figure of their own: pass ax=None, or one "
                         "DataFrame (e.g. result['global'])")
    import matplotlib.pyplot as plt
    ncols = min(3, len(mats))
    nrows = math.ceil(len(mats) / ncols)
    sizes = [_heatmap_inches(df, label(name)) for name, df in mats.items()]
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, layout="compressed")
    for a, (name, df) in zip(axes.flat, mats.items()):
        one(df, a, name)
    for a in axes.flat[len(mats):]:
        a.set_visible(False)
    return fig


def plot_correlations(corr: pd.DataFrame | Mapping[str, pd.DataFrame], ax: Axes | None = None,
                      title: str = "rank correlation") -> Axes | Figure:
    """Annotated heatmap(s) of :func:`rank_correlations` (colour scale -1..1).

    A figure drawn here is sized from the number and length of the scorer
    names, so long names (``random_unit``, ``loss_change``) are shown in
    full; long column labels are rotated by 45 degrees.

    Args:
        corr: one matrix (returns its Axes) or ``{layer: matrix}`` (a grid of
            heatmaps: returns the Figure; a one-entry dict returns the Axes).
        ax: Axes to draw one matrix on (new figure when None; the layout of a
            figure passed in is the caller's, e.g. ``fig.tight_layout()``).
        title: the title; a panel of a dict adds ``": <layer>"``.

    Returns:
        The Axes of one heatmap, or the Figure of a grid.

    Examples:
        >>> import torch, matplotlib
        >>> matplotlib.use("Agg")
        >>> s = {"a": {"fc": torch.arange(5.)}, "b": {"fc": -torch.arange(5.)}}
        >>> ax = plot_correlations(rank_correlations(s)["global"])
        >>> len(ax.texts)
        4
    """
    return _heatmaps(corr, ax, vmin=-1, vmax=1, cmap="vlag", title=title)


def plot_topk(overlap: pd.DataFrame | Mapping[str, pd.DataFrame], ax: Axes | None = None,
              title: str = "top-k overlap") -> Axes | Figure:
    """Annotated heatmap(s) of :func:`topk_overlap` (colour scale 0..1).

    Takes one matrix (returns its Axes) or ``{layer: matrix}`` (returns the
    Figure of a grid), and sizes its figure to the labels, like
    :func:`plot_correlations`.

    Examples:
        >>> import torch, matplotlib
        >>> matplotlib.use("Agg")
        >>> s = {"a": {"fc": torch.arange(10.)}, "b": {"fc": torch.rand(10)}}
        >>> fig = plot_topk(topk_overlap(s, k=0.3))   # fc and global: a Figure
        >>> len(fig.axes) >= 2
        True
    """
    return _heatmaps(overlap, ax, vmin=0, vmax=1, cmap="rocket", title=title)


def _role(name: str, random: Sequence[str], oracles: Sequence[str]) -> str:
    low = name.lower()
    if any(low.startswith(p) for p in random):
        return "random"
    if any(low.startswith(p) for p in oracles):
        return "oracle"
    return "scorer"


def _penalty_subject(df: pd.DataFrame, layer: str | None) -> str | None:
    """What the penalty frame pruned, for a title: ``"layer fc1 (64 units, mean
    replacement)"``, ``"fc2.weight (2,048 weights set to 0)"``; None when nothing says."""
    attrs = dict(getattr(df, "attrs", None) or {})
    if layer is None and "layer" in df.columns:
        layer = ", ".join(dict.fromkeys(str(v) for v in df["layer"]))
    if layer is None:
        layer = attrs.get("layer")
    if layer is None:
        return None
    if attrs.get("layer") != layer:
        return str(layer)
    n = attrs.get("n_items")
    if attrs.get("kind") == "parameter":
        return f"{layer} ({n:,} weights set to 0)" if n else f"{layer} (weights set to 0)"
    how = {"mean": "mean replacement", "zero": "held at 0"}.get(attrs.get("replacement"),
                                                                "removed")
    members = attrs.get("members") or [layer]
    what = f"group {layer} of {len(members)} layers" if len(members) > 1 else f"layer {layer}"
    return f"{what} ({n:,} units, {how})" if n else f"{what} (units, {how})"


def plot_penalty(df: pd.DataFrame, ax: Axes | None = None, *, yscale: str = "symlog",
                 random: Sequence[str] = RANDOM_NAMES,
                 oracles: Sequence[str] = ORACLE_NAMES, layer: str | None = None,
                 title: str | None = None) -> Axes:
    """Pruning-penalty curves of :func:`pruning_penalty`: loss change vs. fraction pruned.

    One line per scorer (``delta`` against ``fraction``); the random
    baseline (names starting with one of ``random``) is dashed grey, the
    exact oracles (names starting with one of ``oracles``: ``loss_change``,
    ``mrp``) bold. Several rows per scorer and fraction (e.g. the frames of
    several random seeds concatenated) are averaged, with a +-1 sd band.

    The title names what was pruned: ``layer``, else a ``layer`` column of
    ``df``, else what :func:`pruning_penalty` recorded in ``df.attrs`` (the
    layer, its number of units or entries, and how they were pruned), e.g.
    ``"pruning penalty of layer fc1 (64 units, mean replacement)"``.

    Args:
        df: the DataFrame of :func:`pruning_penalty`.
        ax: Axes to draw on (new figure when None, its legend beside the
            plot).
        yscale: ``"symlog"`` (default: log-like, yet defined for negative and
            zero deltas), ``"log"`` or ``"linear"``.
        random: name prefixes drawn as the random baseline (dashed).
        oracles: name prefixes drawn as the exact oracles (bold).
        layer: the pruned layer or parameter to name in the title (default:
            read from ``df``).
        title: a first title line above the one naming the layer, e.g. the
            model and data (``"mlp on fashion-mnist"``).

    Returns:
        The Axes.

    Examples:
        >>> import pandas as pd, matplotlib
        >>> matplotlib.use("Agg")
        >>> df = pd.DataFrame({"scorer": ["mrp", "mrp", "random", "random"],
        ...                    "fraction": [0.1, 0.5, 0.1, 0.5],
        ...                    "delta": [0.0, 0.2, 0.1, 0.9]})
        >>> ax = plot_penalty(df, layer="fc1", title="mlp, fashion-mnist")
        >>> len(ax.get_lines()), ax.get_title()
        (2, 'mlp, fashion-mnist\\npruning penalty of fc1')
    """
    import seaborn as sns

    missing = {"scorer", "fraction", "delta"} - set(df.columns)
    if missing:
        raise ValueError(f"df lacks columns {sorted(missing)} (expected pruning_penalty's "
                         "output)")
    if yscale not in ("symlog", "log", "linear"):
        raise ValueError(f"yscale must be 'symlog', 'log' or 'linear', got {yscale!r}")
    own = ax is None
    names = list(dict.fromkeys(df["scorer"]))
    if own:
        ax = _new_axes((6.0 + max(1.0, _text_inches(names) + 0.6), 4.2))
    others = [n for n in names if _role(n, random, oracles) != "random"]
    palette = dict(zip(others, sns.color_palette(n_colors=max(len(others), 1))))
    for name in names:
        sub = df[df["scorer"] == name]
        role = _role(name, random, oracles)
        style = {"random": dict(color="0.45", linestyle="--", linewidth=1.5),
                 "oracle": dict(color=palette.get(name), linestyle="-", linewidth=3.0),
                 "scorer": dict(color=palette.get(name), linestyle="-", linewidth=1.5)}[role]
        repeated = sub.duplicated(["fraction"]).any()
        sns.lineplot(data=sub, x="fraction", y="delta", ax=ax, label=name, marker="o",
                     errorbar="sd" if repeated else None, **style)
    if yscale == "symlog":
        nz = np.abs(df["delta"].to_numpy(dtype=float))
        nz = nz[np.isfinite(nz) & (nz > 0)]
        # linear within the smallest non-zero |delta| (rounded down to a power of 10,
        # and at most 4 decades below the largest): log-like beyond, defined at 0 and below
        lin = 10.0 ** math.floor(math.log10(max(nz.min(), nz.max() * 1e-4))) if nz.size else 1e-3
        ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
    else:
        ax.set_yscale(yscale)
    ax.set_xlabel("fraction pruned")
    ax.set_ylabel("loss change (held-out)")
    subject = _penalty_subject(df, layer)
    line = f"pruning penalty of {subject}" if subject else "pruning penalty"
    ax.set_title(f"{title}\n{line}" if title else line)
    if own:
        ax.legend(title="scorer", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)
    else:
        ax.legend(title="scorer")
    return ax


def plot_fidelity(df: pd.DataFrame, ax: Axes | None = None, *,
                  layer: str | None = "global", title: str | None = None) -> Axes:
    """Bar chart of :func:`fidelity`: Spearman, Kendall and top-k overlap per pair.

    Each pair is labelled on two lines (``taylor1`` / ``vs loss_change``,
    and the layer on a third with ``layer=None``); a figure drawn here gives
    every label its own slot (up to a width of 16 inches), and where the
    slots are too narrow for them (many pairs, or a narrow Axes passed in)
    each label is written vertically on one line, so they never run into
    each other.

    Args:
        df: the DataFrame of :func:`fidelity`.
        ax: Axes to draw on (new figure when None, its legend beside the
            bars).
        layer: which rows to draw (``"global"`` by default); ``None`` draws
            every row, one group per ``approximation / layer``.
        title: a first title line above ``"fidelity"``, e.g. the model and
            data.

    Returns:
        The Axes; one bar per pair (and layer) and metric.

    Examples:
        >>> import torch, matplotlib
        >>> matplotlib.use("Agg")
        >>> s = {"approx": {"fc": torch.tensor([1., 3., 2., 4.])},
        ...      "exact": {"fc": torch.tensor([1., 2., 3., 4.])}}
        >>> ax = plot_fidelity(fidelity(s, {"approx": "exact"}, k=2))
        >>> len(ax.containers)   # one bar group per metric
        3
    """
    import seaborn as sns

    need = {"approximation", "exact", "layer", "spearman", "kendall", "topk_overlap"}
    if need - set(df.columns):
        raise ValueError(f"df lacks columns {sorted(need - set(df.columns))} (expected "
                         "fidelity's output)")
    rows = df if layer is None else df[df["layer"] == layer]
    if rows.empty:
        raise ValueError(f"no rows for layer {layer!r}; layers are {sorted(set(df['layer']))}")
    label = rows["approximation"].astype(str) + "\nvs " + rows["exact"].astype(str)
    if layer is None:
        label = label + "\n(" + rows["layer"].astype(str) + ")"
    pairs = list(dict.fromkeys(label))
    label_w = _text_inches(pairs) + 0.1     # inches the widest label takes
    slot = max(1.0, label_w + 0.25)         # inches per pair in a figure drawn here
    lines = 3 if layer is None else 2
    if slot * len(pairs) > _MAX_BARS_INCHES:  # too many pairs: narrower slots
        slot = max(0.3, _MAX_BARS_INCHES / len(pairs))
    level = slot > label_w                  # labels level, else each on one vertical line
    one_line = [p.replace("\n", " ") for p in pairs]
    long = (rows.assign(pair=label)
            .melt(id_vars=["pair"], value_vars=["spearman", "kendall", "topk_overlap"],
                  var_name="metric", value_name="value"))
    own = ax is None
    if own:
        ax = _new_axes((1.0 + slot * len(pairs) + 1.7,
                        3.6 + (0.2 * lines if level else _text_inches(one_line) + 0.1)))
    sns.barplot(data=long, x="pair", y="value", hue="metric", ax=ax, errorbar=None)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_ylim(min(-0.05, float(np.nanmin(long["value"])) - 0.05) if long["value"].notna().any()
                else -0.05, 1.05)
    if not own:  # the caller's Axes: turn the labels when their slots are too narrow
        level = ax.get_position().width * ax.figure.get_figwidth() / len(pairs) > label_w
    if not level:  # vertical, on one line: each label as wide as a line is high
        ax.set_xticks(ax.get_xticks(), one_line, rotation=90)
    ax.set_xlabel("approximation vs exact" + ("" if layer is None else f" ({layer})"))
    ax.set_ylabel("agreement")
    ax.set_title(f"{title}\nfidelity" if title else "fidelity")
    if own:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                        title="metric")
    return ax
