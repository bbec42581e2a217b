"""saliency.dead_unit_plots: the unit-statistics histograms and the units-by-criteria maps."""

from __future__ import annotations

import doctest
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import saliency.dead_unit_plots as dead_unit_plots  # noqa: E402
from saliency import EXACT_CRITERIA, find_dead_units  # noqa: E402
from saliency.dead_unit_plots import (STATISTIC_PANELS, plot_criteria,  # noqa: E402
                                      plot_unit_statistics)
from figure_checks import assert_inside_figure  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def small_model():
    """4-8-6-3 with three dead units: 0:2 never active, 0:5 without outgoing weights, 2:1
    constant."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight[2] = 0
        net[0].bias[2] = -1.0
        net[2].weight[:, 5] = 0
        net[2].weight[1] = 0
        net[2].bias[1] = 0.5
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))]
    return net, data


@pytest.fixture(scope="module")
def report():
    net, data = small_model()
    return find_dead_units(net, data)


@pytest.fixture(scope="module")
def wide_report():
    """A layer of 3000 units, 200 never active and 60 more without outgoing weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3000), nn.ReLU(), nn.Linear(3000, 40), nn.ReLU(),
                        nn.Linear(40, 3))
    with torch.no_grad():
        net[0].weight[:200] = 0
        net[0].bias[:200] = -1.0
        net[2].weight[:, 200:260] = 0
    g = torch.Generator().manual_seed(2)
    return find_dead_units(net, [(torch.randn(128, 4, generator=g),
                                  torch.randint(0, 3, (128,), generator=g))])


def flags_of(report, layer):
    """``(units, criteria)`` bool matrix of the report."""
    return np.stack([report.flags[c][layer].numpy() for c in report.criteria], axis=1)


def panel_matrix(ax, n_criteria):
    return np.asarray(ax.collections[0].get_array()).reshape(-1, n_criteria)


# ----------------------------------------------------------------- plot_criteria

def test_the_small_model_has_the_planted_dead_units(report):
    assert report.layers == ["0", "2"] and report.num_units == {"0": 8, "2": 6}
    assert report.dead(["never_active"])["0"].tolist() == [2]
    assert report.dead(["zero_outgoing"])["0"].tolist() == [5]
    assert report.dead(["constant"])["2"].tolist() == [1]


def test_criteria_map_one_labelled_panel_per_layer_with_the_report_flags(report):
    fig = plot_criteria(report, title="mlp 4-8-6-3 on noise")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(fig.axes) == len(report.layers) == 2
    k = len(report.criteria)
    for ax, layer in zip(axes, report.layers):
        n = report.num_units[layer]
        assert ax.get_ylabel() == f"units of {layer} ({n})"
        assert [t.get_text() for t in ax.get_xticklabels()] == report.criteria   # in full
        bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
        assert bold == [c for c in report.criteria if c in EXACT_CRITERIA]
        # the rows name their units (a small layer): every unit once, with its flags
        units = [int(t.get_text()) for t in ax.get_yticklabels()]
        assert sorted(units) == list(range(n))
        mat = panel_matrix(ax, k)
        assert mat.shape == (n, k)
        flags = flags_of(report, layer)
        np.testing.assert_array_equal(mat, flags[units].astype(float))
        # sorted: the most criteria first, the flagged units above the line
        hits = mat.sum(1)
        assert np.all(np.diff(hits) <= 0)
        flagged = int(flags.any(1).sum())
        assert ax.get_title().splitlines() == [layer, f"{flagged} of {n} flagged"]
        lines = [ln.get_ydata()[0] for ln in ax.get_lines()]
        assert lines == [flagged]
    # the planted units come first, their criteria red
    top0 = int(axes[0].get_yticklabels()[0].get_text())
    assert top0 == 2                                   # never active: most criteria
    second = [int(t.get_text()) for t in axes[0].get_yticklabels()][:2]
    assert set(second) == {2, 5}
    assert int(axes[1].get_yticklabels()[0].get_text()) == 1
    assert fig.get_suptitle().startswith("mlp 4-8-6-3 on noise: units by dead-unit criteria")
    # nothing is cut: tick labels, axis labels, titles
    texts = [t for ax in axes for t in [*ax.get_xticklabels(), *ax.get_yticklabels(),
                                         ax.title, ax.yaxis.label]]
    assert assert_inside_figure(fig, [*texts, fig._suptitle]) == len(texts) + 1


def test_criteria_map_stays_bounded_for_thousands_of_units(wide_report, tmp_path):
    r = wide_report
    assert r.num_units == {"0": 3000, "2": 40}
    fig = plot_criteria(r, title="wide mlp")
    w, h = fig.get_size_inches() * fig.dpi
    assert fig.dpi == 100 and w <= 2400 and h <= 2400
    assert max(w, h) / min(w, h) <= 3                 # no 755 x 3077 strip
    path = tmp_path / "criteria.png"
    fig.savefig(path)
    png = mpimg.imread(path)
    assert png.shape[0] <= 2400 and png.shape[1] <= 2400
    k = len(r.criteria)
    wide, small = fig.axes
    assert wide.get_ylabel() == "units of 0 (3,000)" and small.get_ylabel() == "units of 2 (40)"
    assert [t.get_text() for t in wide.get_xticklabels()] == r.criteria
    assert wide.get_yticks().size == 0                # 3000 rows: no unit names
    flags = flags_of(r, "0")
    mat = panel_matrix(wide, k)
    assert mat.shape == (3000, k)
    # the rows are the units' flag rows, each once, sorted by the number of criteria
    assert Counter(map(tuple, mat.astype(bool))) == Counter(map(tuple, flags))
    assert np.all(np.diff(mat.sum(1)) <= 0)
    flagged = int(flags.any(1).sum())
    assert flagged >= 260 and mat[:flagged].sum(1).min() >= 1 and mat[flagged:].sum() == 0
    assert wide.get_title().splitlines()[1] == f"{flagged} of 3,000 flagged"
    # ties between equally flagged units are broken by mrs_rel, lowest first
    mrs = r.stats["mrs_rel"]["0"].numpy()
    order = np.lexsort((np.arange(3000), mrs, -(flags * (1 << np.arange(k)[::-1])).sum(1),
                        -flags.sum(1)))
    np.testing.assert_array_equal(mat, flags[order].astype(float))
    # at most 256 units of a layer: the flagged ones first
    fig = plot_criteria(r, max_units_per_layer=256)
    wide, small = fig.axes
    assert wide.get_ylabel() == "units of 0 (3,000); first 256 shown"
    np.testing.assert_array_equal(panel_matrix(wide, k), flags[order[:256]].astype(float))
    assert panel_matrix(small, k).shape == (40, k)
    with pytest.raises(ValueError, match="max_units_per_layer"):
        plot_criteria(r, max_units_per_layer=0)


def test_criteria_map_of_many_layers_is_a_bounded_grid():
    torch.manual_seed(0)
    hidden = [m for _ in range(24) for m in (nn.Linear(16, 16), nn.ReLU())]
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), *hidden, nn.Linear(16, 3))
    r = find_dead_units(net, [(torch.randn(32, 4), torch.randint(0, 3, (32,)))])
    assert len(r.layers) == 25
    fig = plot_criteria(r)
    w, h = fig.get_size_inches()
    assert w <= 24 and h <= 24
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 25
    assert [ax.get_ylabel() for ax in shown] == [f"units of {n} (16)" for n in r.layers]
    rows = {round(ax.get_position().y0, 6) for ax in shown}
    cols = {round(ax.get_position().x0, 6) for ax in shown}
    assert len(rows) > 1 and len(cols) > 1           # side by side, wrapping into rows


# ----------------------------------------------------------------- plot_unit_statistics

def test_unit_statistics_one_row_per_layer_counting_every_unit(report):
    style = dict(plt.rcParams)
    fig = plot_unit_statistics(report, title="mlp 4-8-6-3 on noise")
    assert dict(plt.rcParams) == style                # seaborn's style stays local
    keys = [k for k, _, _ in STATISTIC_PANELS if k != "mrp_rel"]
    assert len(fig.axes) == len(report.layers) * len(keys) == 12
    grid = np.array(fig.axes).reshape(len(report.layers), len(keys))
    for row, layer in zip(grid, report.layers):
        n = report.num_units[layer]
        assert row[0].get_ylabel().splitlines() == [layer, f"units (of {n})"]
        for ax in row:
            counts = [p.get_height() for p in ax.patches]
            assert len(counts) == 30 and sum(counts) == n
    assert [ax.get_xlabel() for ax in grid[-1]] == [
        "log10 mrs_rel", "redo", "apoz", "log10 grad_rel", "log10 out_var_rel", "w_out_l1"]
    # the never-active unit of layer 0: APoZ 1 falls in the last bin of its histogram
    apoz = report.stats["apoz"]["0"].numpy()
    assert (apoz == 1).sum() == 1
    last = max(grid[0][2].patches, key=lambda p: p.get_x())
    assert last.get_height() == (apoz >= last.get_x()).sum()
    # the exact zeros (the never-active and the no-outgoing unit's MRS) sit at -12, marked
    mrs = report.stats["mrs_rel"]["0"].numpy()
    first = min(grid[0][0].patches, key=lambda p: p.get_x())
    assert first.get_x() == pytest.approx(-12) and first.get_height() == (mrs <= 1e-12).sum()
    assert [ln.get_xdata()[0] for ln in grid[0][0].get_lines()] == [-12]
    assert fig.get_suptitle().startswith("mlp 4-8-6-3 on noise: unit statistics on 64 samples")


def test_unit_statistics_with_exact_mrp_adds_its_column():
    net, data = small_model()
    r = find_dead_units(net, data, exact_mrp=True)
    fig = plot_unit_statistics(r)
    assert len(fig.axes) == 2 * 7
    assert fig.axes[0].get_title() == "MRP / layer mean (log10)"
    assert sum(p.get_height() for p in fig.axes[7].patches) == r.num_units["2"]
    assert plot_criteria(r).axes[0].get_xticklabels()[0].get_text() == "low_mrp"


def test_bad_inputs(report):
    for fn in (plot_criteria, plot_unit_statistics):
        with pytest.raises(TypeError, match="DeadUnitReport"):
            fn({"layers": []})
    with pytest.raises(ValueError, match="max_units_per_layer"):
        plot_criteria(report, max_units_per_layer=2.5)


def test_docstring_examples_run():
    res = doctest.testmod(dead_unit_plots, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 10 and res.failed == 0
