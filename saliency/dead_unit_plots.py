"""Pictures of a dead-unit report: the unit statistics, and which criteria flag which units.

Two figures of a :class:`saliency.DeadUnitReport` (:func:`saliency.find_dead_units`), one
panel per layer (per group of :func:`saliency.trace`):

* :func:`plot_unit_statistics` -- per layer, histograms of the unit statistics the criteria
  read (MRS, ReDo's score, APoZ, the output-gradient norm, the output variance, the outgoing
  weights; exact MRP when the report has it);
* :func:`plot_criteria` -- per layer, a units-by-criteria map (red = flagged), the units
  sorted so that the flagged ones come first. It stays readable for layers of thousands of
  units: the panels sit side by side in a grid of bounded size (at most 24 x 24 inches),
  each one labelled with its layer and unit count.

Both return the :class:`matplotlib.figure.Figure` and never call ``plt.show()``, so they
work with the Agg backend and in notebooks alike; they use seaborn's ``whitegrid`` style for
their own axes only (matplotlib's global settings are left alone).

Example (a notebook cell)::

    from saliency import find_dead_units
    from saliency.dead_unit_plots import plot_criteria, plot_unit_statistics
    report = find_dead_units(net, val_batches)
    plot_criteria(report, title="mlp on fashion-mnist").savefig("criteria.png")
    plot_unit_statistics(report, title="mlp on fashion-mnist").savefig("statistics.png")
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import torch

from .dead_units import EXACT_CRITERIA, DeadUnitReport

if TYPE_CHECKING:                       # matplotlib is imported when a plot is drawn
    from matplotlib.figure import Figure

__all__ = ["plot_unit_statistics", "plot_criteria", "STATISTIC_PANELS"]

#: the columns of :func:`plot_unit_statistics`: ``(statistic, axis title, log10 scale)``;
#: ``mrp_rel`` is drawn only when the report has exact MRP
STATISTIC_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("mrp_rel", "MRP / layer mean (log10)", True),
    ("mrs_rel", "MRS / layer mean (log10)", True),
    ("redo", "ReDo score E|a| / layer mean", False),
    ("apoz", "APoZ (fraction of zero activations)", False),
    ("grad_rel", "output-gradient norm / layer mean (log10)", True),
    ("out_var_rel", "Var(h) / layer mean (log10)", True),
    ("w_out_l1", "outgoing weights L1", False),
)

#: values below this are drawn at ``log10(_FLOOR)`` on a log10 axis (exact zeros)
_FLOOR = 1e-12
#: the largest side of a figure, in inches (2400 pixels at 100 dpi)
_MAX_INCHES = 24.0
#: estimated width, in inches, of one character of 10-point text (DejaVu Sans, with margin)
_CHAR_IN = 0.09
#: colours of a criterion map: not flagged, flagged
_COLORS = ("#f0f0f0", "#c0392b")


def _check(report: DeadUnitReport) -> None:
    if not isinstance(report, DeadUnitReport):
        raise TypeError(f"report must be a saliency.DeadUnitReport (find_dead_units' result), "
                        f"got {type(report).__name__}")
    if not report.layers:
        raise ValueError("the report has no layer to draw")


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines of at most ``width_in`` inches at ``fontsize`` points."""
    chars = max(20, int(width_in / (_CHAR_IN * fontsize / 10.0)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _panel_label(report: DeadUnitReport, layer: str) -> str:
    """The layer's name, with the number of its members for a group of several layers."""
    members = report.members.get(layer, [layer])
    return f"{layer} (+{len(members) - 1} layers)" if len(members) > 1 else layer


def plot_unit_statistics(report: DeadUnitReport, *, title: str | None = None) -> Figure:
    """Histograms of the unit statistics the dead-unit criteria read, one row per layer.

    The columns are :data:`STATISTIC_PANELS`: the relative MRS (and MRP, with
    exact MRP), ReDo's score, APoZ, the relative output-gradient norm and
    output variance, and the L1 norm of the outgoing weights. Relative
    quantities are drawn as ``log10``, with values below ``1e-12`` (exact
    zeros) at -12, marked by a dotted line where there are any. Each
    histogram counts every unit of its layer once.

    Args:
        report: the result of :func:`saliency.find_dead_units`.
        title: the model and data, e.g. ``"mlp on fashion-mnist"``, put before
            the figure's title.

    Returns:
        The Figure: ``len(report.layers)`` rows of histograms (``fig.axes`` in
        row order), one column per statistic.

    Raises:
        TypeError: ``report`` is not a :class:`saliency.DeadUnitReport`.
        ValueError: the report has no layer.

    Examples:
        >>> import torch, torch.nn as nn, matplotlib
        >>> matplotlib.use("Agg")
        >>> from saliency import find_dead_units
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,)))]
        >>> fig = plot_unit_statistics(find_dead_units(net, data))
        >>> len(fig.axes), int(sum(p.get_height() for p in fig.axes[0].patches))
        (6, 6)
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    _check(report)
    panels = [p for p in STATISTIC_PANELS if p[0] in report.stats
              and all(layer in report.stats[p[0]] for layer in report.layers)]
    if not report.exact_mrp:
        panels = [p for p in panels if p[0] != "mrp_rel"]
    # statistics not computed (data without targets: MRS and the gradient norms are NaN)
    panels = [p for p in panels if any(bool(torch.isfinite(report.stats[p[0]][layer]).any())
                                       for layer in report.layers)]
    palette = sns.color_palette()
    rows, cols = len(report.layers), len(panels)
    width = 3.0 * cols
    # at most 30 inches high (3,000 px at 100 dpi): many layers get thinner rows
    height = min(1.0 + 2.2 * rows, 30.0)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                                 layout="constrained")
    for r, layer in enumerate(report.layers):
        for c, (key, label, log) in enumerate(panels):
            ax = axes[r][c]
            v = report.stats[key][layer].detach().cpu().double().numpy()
            v = v[np.isfinite(v)]
            if log:
                v = np.log10(np.maximum(v, _FLOOR))
            ax.hist(v, bins=30, color=palette[2] if log else palette[0], edgecolor="none")
            if log and v.size and v.min() <= math.log10(_FLOOR):  # exact zeros: marked
                ax.axvline(math.log10(_FLOOR), color="0.5", lw=0.8, ls=":")
            if r == 0:
                ax.set_title(_wrap(label, 2.8, 9), fontsize=9)
            if r == rows - 1:
                ax.set_xlabel(f"log10 {key}" if log else key, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{_panel_label(report, layer)}\nunits (of "
                              f"{report.num_units[layer]:,})", fontsize=8)
            ax.tick_params(labelsize=7)
    head = (f"unit statistics on {report.samples:,} samples (log10 values at "
            f"{int(math.log10(_FLOOR))} are exactly 0)")
    if report.skipped:
        head += "; MRS and gradient norms not computed (the data has no targets)"
    fig.suptitle(_wrap(f"{title}: {head}" if title else head, width - 0.4, 10), fontsize=10)
    return fig


def _tie_statistic(report: DeadUnitReport) -> str:
    """The statistic :func:`plot_criteria` sorts equally flagged units by."""
    return "mrp_rel" if report.exact_mrp and report.stats.get("mrp_rel") else "mrs_rel"


def _unit_order(report: DeadUnitReport, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """``(order, flags)``: the units of ``layer`` as :func:`plot_criteria` sorts them, and
    the ``(units, criteria)`` 0/1 matrix in that order."""
    flags = np.stack([report.flags[c][layer].detach().cpu().numpy().astype(bool)
                      for c in report.criteria], axis=1)
    n, k = flags.shape
    key = _tie_statistic(report)
    score = (report.stats[key][layer].detach().cpu().double().numpy()
             if layer in report.stats.get(key, {}) else np.zeros(n))
    score = np.where(np.isnan(score), np.inf, score)
    pattern = (flags * (1 << np.arange(k - 1, -1, -1, dtype=np.int64))).sum(1)
    # np.lexsort sorts by the last key first: most criteria, then which ones (the first
    # criteria first), then the lowest score, then the index
    order = np.lexsort((np.arange(n), score, -pattern, -flags.sum(1)))
    return order, flags[order].astype(float)


def plot_criteria(report: DeadUnitReport, *, title: str | None = None,
                  max_units_per_layer: int | None = None) -> Figure:
    """Which criteria flag which units: one units-by-criteria map per layer.

    Each panel is a layer (a group of :func:`saliency.trace`): a row per unit,
    a column per criterion of ``report.criteria`` (named in full below it;
    the exact criteria of :data:`saliency.EXACT_CRITERIA`, whose units are
    exactly removable, in bold), red where the criterion flags the unit. The
    units are sorted: the most criteria first, units flagged by the same
    criteria together, then by ``mrs_rel`` (``mrp_rel`` with exact MRP),
    lowest first, then by index; a line separates the flagged units from the
    others. A layer of at most 40 units shown names its units on the y axis.

    The panels sit side by side, wrapping into rows, and the figure stays
    within 24 x 24 inches (2400 pixels at 100 dpi) however many units a layer
    has: a row of the map is then thinner than a pixel, and the sorting keeps
    the flagged units in one visible block.

    Args:
        report: the result of :func:`saliency.find_dead_units`.
        title: the model and data, e.g. ``"mlp on fashion-mnist"``, put before
            the figure's title.
        max_units_per_layer: show at most this many units of each layer, the
            first in the sorted order (the flagged units first); None shows
            every unit.

    Returns:
        The Figure: one Axes per layer, in ``report.layers`` order; each
        panel's image (``ax.collections[0].get_array()``) is the
        ``(units shown, criteria)`` matrix of 0/1 flags in sorted order.

    Raises:
        TypeError: ``report`` is not a :class:`saliency.DeadUnitReport`.
        ValueError: the report has no layer, or ``max_units_per_layer < 1``.

    Examples:
        >>> import torch, torch.nn as nn, matplotlib
        >>> matplotlib.use("Agg")
        >>> from saliency import find_dead_units
        >>> g = torch.Generator().manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> with torch.no_grad():
        ...     net[0].weight[1], net[0].bias[1] = 0, -1   # unit 1 is never active
        >>> data = [(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))]
        >>> fig = plot_criteria(find_dead_units(net, data), title="a tiny mlp")
        >>> ax, = fig.axes
        >>> ax.get_ylabel(), ax.get_yticklabels()[0].get_text()   # unit 1 on top
        ('units of 0 (6)', '1')
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import ListedColormap

    _check(report)
    if max_units_per_layer is not None and (isinstance(max_units_per_layer, bool) or
                                            int(max_units_per_layer) != max_units_per_layer
                                            or max_units_per_layer < 1):
        raise ValueError(f"max_units_per_layer must be an int >= 1 or None, got "
                         f"{max_units_per_layer!r}")
    criteria = list(report.criteria)
    if not criteria:
        raise ValueError("the report has no criterion to draw")
    maps = {}
    for layer in report.layers:
        order, mat = _unit_order(report, layer)
        if max_units_per_layer is not None:
            order, mat = order[:max_units_per_layer], mat[:max_units_per_layer]
        maps[layer] = (order, mat)
    shown = max(len(order) for order, _ in maps.values())
    ticks = shown <= 40

    # sizes in inches: a column per criterion, names written vertically below
    fs = 8.0
    text = _CHAR_IN * fs / 10.0
    labels = [f"units of {layer} ({report.num_units[layer]:,})" for layer in report.layers]
    panel_w = max(0.26 * len(criteria) + (0.95 if ticks else 0.6),
                  max(len(_panel_label(report, n)) for n in report.layers) * text * 9 / fs + 0.3,
                  1.6)
    names_h = max(len(c) for c in criteria) * text + 0.25
    fixed_h = 0.6 + names_h                       # the panel's title, the criteria names
    map_h = min(6.0, max(1.2, 0.16 * shown, max(len(s) for s in labels) * text + 0.2))
    ncols = max(1, min(len(maps), int(_MAX_INCHES // panel_w)))
    nrows = math.ceil(len(maps) / ncols)
    ncols = math.ceil(len(maps) / nrows)          # balanced rows
    head_h = 0.9
    if head_h + nrows * (fixed_h + map_h) > _MAX_INCHES:
        map_h = max(0.4, (_MAX_INCHES - head_h) / nrows - fixed_h)
    width = min(_MAX_INCHES, max(ncols * panel_w, 4.0))
    height = min(_MAX_INCHES, head_h + nrows * (fixed_h + map_h))

    cmap = ListedColormap(list(_COLORS))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False,
                                 layout="constrained")
    for ax, layer in zip(axes.flat, report.layers):
        order, mat = maps[layer]
        n_units = report.num_units[layer]
        big = mat.shape[0] > 200
        ax.pcolormesh(mat, cmap=cmap, vmin=0, vmax=1, edgecolors="white",
                      linewidth=0.0 if mat.shape[0] > 48 else 0.5, rasterized=big)
        ax.set_xlim(0, len(criteria))
        ax.set_ylim(mat.shape[0], 0)             # the first unit on top
        ax.grid(False)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        ax.set_xticks(np.arange(len(criteria)) + 0.5)
        ax.set_xticklabels(criteria, rotation=90, fontsize=fs)
        for t in ax.get_xticklabels():
            if t.get_text() in EXACT_CRITERIA:
                t.set_fontweight("bold")
        if ticks:
            ax.set_yticks(np.arange(len(order)) + 0.5)
            ax.set_yticklabels([str(int(i)) for i in order], fontsize=6)
        else:
            ax.set_yticks([])
        flagged = int((mat.sum(1) > 0).sum())
        if 0 < flagged < mat.shape[0]:
            ax.axhline(flagged, color="0.15", lw=1.0)
        total = int(np.any(np.stack([report.flags[c][layer].cpu().numpy() for c in criteria]),
                           axis=0).sum())
        ax.set_title(f"{_panel_label(report, layer)}\n{total:,} of {n_units:,} flagged",
                     fontsize=9)
        more = f"; first {mat.shape[0]:,} shown" if mat.shape[0] < n_units else ""
        ax.set_ylabel(f"units of {layer} ({n_units:,}){more}", fontsize=fs)
        ax.tick_params(axis="both", length=0, pad=2)
    for ax in axes.flat[len(maps):]:
        ax.set_visible(False)
    key = _tie_statistic(report)
    head = (f"units by dead-unit criteria on {report.samples:,} samples: red = flagged, "
            f"bold = exactly removable; units sorted by the criteria flagging them, then by "
            f"{key} (lowest first)")
    fig.suptitle(_wrap(f"{title}: {head}" if title else head, width - 0.3, 10), fontsize=10)
    return fig
