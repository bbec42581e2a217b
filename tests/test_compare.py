"""saliency.compare: correlations, top-k overlap, pruning penalty, fidelity, plots."""

from __future__ import annotations

import copy
import doctest
import itertools
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import stats  # noqa: E402

import saliency.compare as compare  # noqa: E402
from pruners import remove_units  # noqa: E402
from saliency.base import ParameterScorer, UnitScorer  # noqa: E402
from saliency.compare import (UndefinedComparisonWarning, compute_scores, fidelity,  # noqa: E402
                              plot_correlations, plot_fidelity, plot_penalty, plot_topk,
                              pruning_penalty, rank_correlations, topk_overlap)
from saliency.mrp import MRP  # noqa: E402
from zoo import build  # noqa: E402
from figure_checks import assert_inside_figure  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------- stand-in scorers

class FixedParams(ParameterScorer):
    """Stand-in parameter scorer: returns fixed tensors."""

    needs_data = False

    def __init__(self, scores):
        super().__init__()
        self.fixed = scores

    def _score(self, model, data, loss_fn):
        return {k: v.clone() for k, v in self.fixed.items()}


class FixedUnits(UnitScorer):
    """Stand-in unit scorer: returns fixed 1-D tensors."""

    needs_data = False

    def __init__(self, scores):
        super().__init__()
        self.fixed = scores

    def _score(self, model, data, loss_fn):
        return {k: v.clone() for k, v in self.fixed.items()}


class Magnitude(ParameterScorer):
    """Stand-in magnitude scorer |w|."""

    needs_data = False

    def _score(self, model, data, loss_fn):
        return {n: p.detach().abs() for n, p in self.selected(model).items()}


def hand_scores():
    g = torch.Generator().manual_seed(0)
    a1 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a2 = torch.randn(5, generator=g, dtype=torch.float64)
    tied1 = torch.tensor([[1., 1., 2., 2.], [3., 3., 3., 0.], [0., 1., 5., 5.]],
                         dtype=torch.float64)
    tied2 = torch.tensor([2., 2., 1., 7., 7.], dtype=torch.float64)
    return {
        "a": {"fc1.weight": a1, "fc2": a2},
        "anti": {"fc1.weight": -a1, "fc2": -a2},
        "same": {"fc1.weight": a1.clone(), "fc2": a2.clone()},
        "ties": {"fc1.weight": tied1, "fc2": tied2},
    }


def flat(scores, name, layers):
    return np.concatenate([scores[name][k].reshape(-1).numpy() for k in layers])


# ----------------------------------------------------------------- rank correlations

@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_rank_correlations_equal_scipy(method):
    s = hand_scores()
    ref = stats.spearmanr if method == "spearman" else stats.kendalltau
    out = rank_correlations(s, method=method)
    assert list(out) == ["fc1.weight", "fc2", "global"]
    names = list(s)
    for key, layers in [("fc1.weight", ["fc1.weight"]), ("fc2", ["fc2"]),
                        ("global", ["fc1.weight", "fc2"])]:
        df = out[key]
        assert list(df.index) == names and list(df.columns) == names
        for a, b in itertools.product(names, names):
            want = ref(flat(s, a, layers), flat(s, b, layers)).statistic
            assert df.loc[a, b] == pytest.approx(want, abs=1e-12), (key, a, b)
        assert np.allclose(df.to_numpy(), df.to_numpy().T)
        assert df.loc["a", "anti"] == pytest.approx(-1.0, abs=1e-12)
        assert df.loc["a", "same"] == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(np.diag(df.to_numpy()), 1.0)
    # the tied scorer really has ties and a value strictly between -1 and 1
    assert -1 < out["global"].loc["a", "ties"] < 1


def test_rank_correlations_constant_vector_is_nan_with_warning():
    s = {"a": {"l": torch.tensor([1., 2., 3.])}, "const": {"l": torch.ones(3)},
         "b": {"l": torch.tensor([3., 1., 2.])}}
    with pytest.warns(UndefinedComparisonWarning, match="constant") as rec:
        out = rank_correlations(s, method="kendall")
    assert len(rec) == 1  # one warning per call, listing the undefined entries
    df = out["l"]
    assert math.isnan(df.loc["a", "const"]) and math.isnan(df.loc["const", "const"])
    assert df.loc["a", "b"] == pytest.approx(stats.kendalltau([1, 2, 3], [3, 1, 2]).statistic)
    assert df.loc["a", "a"] == pytest.approx(1.0, abs=1e-12)


def test_rank_correlations_global_only():
    s = {"p": {"fc.weight": torch.tensor([[1., 2.], [4., 3.]])},
         "q": {"fc.weight": torch.tensor([[1., 3.], [4., 2.]])}}
    out = rank_correlations(s, per_layer=False)
    assert list(out) == ["global"]
    g = out["global"]
    assert g.loc["p", "q"] == pytest.approx(stats.spearmanr([1, 2, 4, 3], [1, 3, 4, 2]).statistic)
    assert g.loc["q", "q"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [rank_correlations, lambda s: topk_overlap(s, 1)])
def test_mixed_granularity_is_an_error_naming_the_odd_scorers(fn):
    s = {"p": {"fc.weight": torch.tensor([[1., 2.], [4., 3.]])},
         "mrp": {"fc": torch.tensor([2., 1.])},
         "random_unit": {"fc": torch.tensor([1., 2.])}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # an error, not a NaN matrix with a warning
        with pytest.raises(ValueError) as err:
            fn(s)
    msg = str(err.value)
    assert "['p'] are parameter-wise" in msg and "['mrp', 'random_unit'] are unit-wise" in msg
    assert "'fc.weight'" in msg and "parameter scorers with parameter scorers" in msg
    assert "unit scorers with unit scorers" in msg
    # a parameter scorer of biases only (1-D) is still parameter-wise
    bias = {"b": {"fc.bias": torch.tensor([1., 2.])}, **s}
    with pytest.raises(ValueError, match=r"\['b', 'p'\] are parameter-wise"):
        fn(bias)
    # either granularity alone is fine, and the correlations are numbers
    units = {k: s[k] for k in ("mrp", "random_unit")}
    assert fn(units)["global"].loc["mrp", "random_unit"] == pytest.approx(
        -1.0 if fn is rank_correlations else 0.0)


def test_rank_correlations_validation():
    with pytest.raises(ValueError, match="method"):
        rank_correlations(hand_scores(), method="pearson")
    with pytest.raises(ValueError, match="shape"):
        rank_correlations({"a": {"l": torch.arange(3.)}, "b": {"l": torch.arange(4.)}})
    with pytest.raises(TypeError, match="tensors"):
        topk_overlap({"a": {"l": [1, 2]}}, 1)
    with pytest.raises(ValueError, match="NaN"):
        rank_correlations({"a": {"l": torch.tensor([1., float("nan")])}})
    with pytest.raises(ValueError, match="non-empty"):
        rank_correlations({})


# ----------------------------------------------------------------- top-k overlap

def brute_lowest(x, k):
    return set(sorted(range(len(x)), key=lambda i: x[i])[:k])


@pytest.mark.parametrize("k", [1, 3, 7, 0.1, 0.25, 0.5, 1.0])
def test_topk_overlap_brute_force(k):
    g = torch.Generator().manual_seed(1)
    s = {n: {"w": torch.randn(4, 5, generator=g), "u": torch.randn(8, generator=g)}
         for n in ["a", "b", "c"]}
    s["neg"] = {key: -v for key, v in s["a"].items()}
    out = topk_overlap(s, k=k)
    for key, layers in [("w", ["w"]), ("u", ["u"]), ("global", ["w", "u"])]:
        for a, b in itertools.product(s, s):
            x, y = flat(s, a, layers), flat(s, b, layers)
            n = k if isinstance(k, int) else max(1, math.floor(round(k * len(x), 9)))
            want = len(brute_lowest(list(x), n) & brute_lowest(list(y), n)) / n
            assert out[key].loc[a, b] == pytest.approx(want), (key, a, b)
        assert (np.diag(out[key].to_numpy()) == 1).all()


def test_topk_overlap_known_values_and_floor():
    s = {"a": {"l": torch.arange(10.)},
         "b": {"l": torch.tensor([0., 1., 9., 8., 2., 7., 6., 5., 4., 3.])}}
    # floor(0.29 * 10) = 2: lowest of a = {0, 1}, of b = {0, 1}
    assert topk_overlap(s, 0.29)["l"].loc["a", "b"] == 1.0
    # k = 3: a -> {0, 1, 2}, b -> {0, 1, 4}
    assert topk_overlap(s, 3)["l"].loc["a", "b"] == pytest.approx(2 / 3)
    # a positive fraction takes at least one item: floor(0.05 * 10) = 0 -> 1
    assert topk_overlap(s, 0.05)["l"].loc["a", "b"] == 1.0
    with pytest.warns(UndefinedComparisonWarning, match="no item"):
        assert math.isnan(topk_overlap(s, 0)["l"].loc["a", "b"])
    with pytest.warns(UndefinedComparisonWarning, match="no item"):
        assert math.isnan(topk_overlap(s, 0.0)["l"].loc["a", "b"])
    with pytest.raises(ValueError):
        topk_overlap(s, 1.5)
    with pytest.raises(TypeError):
        topk_overlap(s, "10%")


# ----------------------------------------------------------------- fidelity

def test_fidelity_self_is_one_and_matches_scipy():
    s = hand_scores()
    df = fidelity(s, {"a": "a", "ties": "a", "anti": "a"})
    assert list(df.columns) == ["approximation", "exact", "layer", "n", "spearman", "kendall",
                                "topk_overlap"]
    assert df.shape[0] == 9
    self_rows = df[df["approximation"] == "a"]
    assert list(self_rows["layer"]) == ["fc1.weight", "fc2", "global"]
    np.testing.assert_allclose(self_rows[["spearman", "kendall", "topk_overlap"]], 1.0,
                               rtol=0, atol=1e-12)
    anti = df[(df["approximation"] == "anti")].set_index("layer")
    np.testing.assert_allclose(anti[["spearman", "kendall"]], -1.0, rtol=0, atol=1e-12)
    t = df[(df["approximation"] == "ties") & (df["layer"] == "global")].iloc[0]
    x, y = flat(s, "ties", ["fc1.weight", "fc2"]), flat(s, "a", ["fc1.weight", "fc2"])
    assert t["n"] == 17
    assert t["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert t["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    k = 1  # floor(0.1 * 17)
    assert t["topk_overlap"] == len(brute_lowest(list(x), k) & brute_lowest(list(y), k)) / k


def test_fidelity_validation():
    s = hand_scores()
    with pytest.raises(ValueError, match="without scores"):
        fidelity(s, {"taylor1": "loss_change"})
    with pytest.raises(ValueError, match="share no layer"):
        fidelity({"p": {"fc.weight": torch.ones(2, 2)}, "u": {"fc": torch.ones(2)}}, {"p": "u"})


# ----------------------------------------------------------------- compute_scores

def test_compute_scores_runs_scorers_on_a_one_pass_iterator():
    model, shape = build("mlp")
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(10, *shape, generator=g, dtype=torch.float64),
                torch.randint(0, 3, (10,), generator=g)) for _ in range(2)]
    fixed = {"fc1": torch.arange(7.)}
    scores = compute_scores({"fixed": FixedUnits(fixed), "mrp": MRP(reduction="mean"),
                             "mag": Magnitude()}, model, iter(batches))
    assert torch.equal(scores["fixed"]["fc1"], fixed["fc1"])
    want = MRP(reduction="mean").score(model, batches)
    assert set(scores["mrp"]) == set(want)
    for k in want:
        assert torch.equal(scores["mrp"][k], want[k])
    assert torch.equal(scores["mag"]["fc2.weight"], model.fc2.weight.detach().abs())
    with pytest.raises(TypeError, match="score"):
        compute_scores({"x": object()}, model, batches)


# ----------------------------------------------------------------- pruning penalty

def make_data(shape, n_classes, sizes=(7, 5), seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g, dtype=torch.float64),
             torch.randint(0, n_classes, (n,), generator=g)) for n in sizes]


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        x = torch.cat([b[0] for b in data])
        y = torch.cat([b[1] for b in data])
        return F.cross_entropy(model(x), y).item()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, snap):
    sd = model.state_dict()
    assert set(sd) == set(snap)
    for k, v in snap.items():
        a, b = sd[k], v
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.is_floating_point():
            assert torch.equal(a.view(torch.int64 if a.dtype == torch.float64 else torch.int32),
                               b.view(torch.int64 if b.dtype == torch.float64 else torch.int32)), k
        else:
            assert torch.equal(a, b), k


def test_parameter_probe_equals_independent_computation_and_restores_bits():
    model, shape = build("mlp")
    data = make_data(shape, 3)
    g = torch.Generator().manual_seed(4)
    w = model.fc2.weight  # 5 x 7 = 35 entries
    distinct = torch.randperm(w.numel(), generator=g).to(torch.float64).reshape(w.shape)
    model.train()
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.5)
    model.fc2.bias.requires_grad_(False)
    snap = snapshot(model)
    fractions = [0.0, 0.1, 0.5, 1.0]
    df = pruning_penalty(model, {"fixed": FixedParams({"fc2.weight": distinct}),
                                 "magnitude": Magnitude()}, data, layer="fc2.weight",
                         fractions=fractions, kind="parameter")
    assert list(df.columns) == ["scorer", "fraction", "n_pruned", "loss_before", "loss_after",
                                "delta"]
    assert df.shape[0] == 8
    # unchanged model: bits, flags, grads, requires_grad, no hooks left
    assert_bit_identical(model, snap)
    assert all(m.training for m in model.modules())
    assert torch.equal(model.fc1.weight.grad, torch.full_like(model.fc1.weight, 0.5))
    assert model.fc2.weight.grad is None and not model.fc2.bias.requires_grad
    assert not any(m._forward_hooks for m in model.modules())

    base = mean_loss(copy.deepcopy(model), data)
    for name, scores in [("fixed", distinct), ("magnitude", w.detach().abs())]:
        flat_s = scores.reshape(-1).tolist()
        for f in fractions:
            k = math.floor(f * w.numel() + 1e-9)  # 0.1 * 35 -> 3
            ref = copy.deepcopy(model)
            with torch.no_grad():
                ww = ref.fc2.weight.view(-1)
                for i in sorted(range(len(flat_s)), key=lambda i: flat_s[i])[:k]:
                    ww[i] = 0.0
            row = df[(df["scorer"] == name) & (df["fraction"] == f)].iloc[0]
            assert row["n_pruned"] == k
            assert row["loss_before"] == pytest.approx(base, abs=1e-12)
            assert row["loss_after"] == pytest.approx(mean_loss(ref, data), abs=1e-12)
            assert row["delta"] == pytest.approx(mean_loss(ref, data) - base, abs=1e-12)
    assert df[df["fraction"] == 0.0]["delta"].abs().max() == 0.0
    assert (df[df["fraction"] == 0.1]["n_pruned"] == 3).all()


def test_parameter_probe_accepts_module_name_and_restores_after_error():
    model, shape = build("mlp")
    data = make_data(shape, 3)
    snap = snapshot(model)
    df = pruning_penalty(model, {"mag": Magnitude()}, data, layer="fc1", fractions=[0.5],
                         kind="parameter")
    assert df["n_pruned"].tolist() == [21]  # floor(0.5 * 42)

    def bad_loss(out, y, reduction="mean"):
        if not torch.is_grad_enabled() and bad_loss.calls == 1:
            raise RuntimeError("boom")
        bad_loss.calls += 1
        return F.cross_entropy(out, y, reduction=reduction)
    bad_loss.calls = 0
    with pytest.raises(RuntimeError, match="boom"):
        pruning_penalty(model, {"mag": {"fc1.weight": torch.rand(7, 6)}}, data[:1],
                        layer="fc1.weight", fractions=[1.0], kind="parameter",
                        loss_fn=bad_loss)
    assert_bit_identical(model, snap)


def test_parameter_probe_on_a_torch_pruned_parameter():
    """A ``torch.nn.utils.prune``'d weight is probed through ``weight_orig``."""
    from torch.nn.utils import prune
    model, shape = build("mlp")
    data = make_data(shape, 3)
    prune.l1_unstructured(model.fc1, "weight", amount=0.25)
    snap = snapshot(model)
    scores = torch.arange(42, dtype=torch.float64).flip(0).reshape(7, 6)  # last entries lowest
    df = pruning_penalty(model, {"s": {"fc1.weight": scores}}, data, layer="fc1.weight",
                         fractions=[0.5], kind="parameter")
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.fc1.weight_orig.view(-1)[21:] = 0.0
    assert df["loss_after"].iloc[0] == pytest.approx(mean_loss(ref, data), abs=1e-12)
    assert df["loss_before"].iloc[0] == pytest.approx(mean_loss(copy.deepcopy(model), data),
                                                      abs=1e-12)
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("arch,layer,n_classes", [("mlp_bn", "fc1", 3), ("cnn", "conv1", 4),
                                                  ("cnn", "fc1", 4)])
@pytest.mark.parametrize("replacement", ["mean", "zero"])
def test_unit_probe_equals_remove_units(arch, layer, n_classes, replacement):
    model, shape = build(arch)
    data = make_data(shape, n_classes)
    model.train()
    snap = snapshot(model)
    n = dict(model.named_modules())[layer].weight.shape[0]
    g = torch.Generator().manual_seed(5)
    fixed = torch.randperm(n, generator=g).to(torch.float64)
    scorers = {"fixed": FixedUnits({layer: fixed}), "mrp": MRP(layers=[layer])}
    fractions = [0.25, 0.5, 1.0]
    df = pruning_penalty(model, scorers, data, layer=layer, fractions=fractions,
                         replacement=replacement)
    assert_bit_identical(model, snap)
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())

    base = mean_loss(copy.deepcopy(model), data)
    mrp = MRP(layers=[layer]).score(model, data)[layer]
    for name, scores in [("fixed", fixed), ("mrp", mrp)]:
        for f in fractions:
            k = math.floor(f * n + 1e-9)
            idx = sorted(range(n), key=lambda i: (scores[i].item(), i))[:k]
            row = df[(df["scorer"] == name) & (df["fraction"] == f)].iloc[0]
            assert row["n_pruned"] == k
            assert row["loss_before"] == pytest.approx(base, abs=1e-12)
            if k == n:  # remove_units keeps >= 1 unit; check the all-units probe directly
                continue
            ref = copy.deepcopy(model)
            remove_units(ref, {layer: idx}, replacement=replacement, data=data)
            assert abs(row["loss_after"] - mean_loss(ref, data)) <= 1e-10
            assert abs(row["delta"] - (mean_loss(ref, data) - base)) <= 1e-10


def test_unit_probe_of_one_unit_is_the_signed_mrp():
    """The oracle: pruning one unit by mean replacement changes the loss by its signed MRP."""
    model, shape = build("mlp")
    data = make_data(shape, 3, sizes=(9, 4, 6))
    signed = MRP(absolute=False, reduction="mean").score(model, data)["fc2"]
    df = pruning_penalty(model, {"signed_mrp": {"fc2": signed}}, data, layer="fc2",
                         fractions=[0.2])  # floor(0.2 * 5) = 1
    assert df["n_pruned"].tolist() == [1]
    assert df["delta"].iloc[0] == pytest.approx(signed.min().item(), abs=1e-12)


def test_unit_probe_all_units_mean_replaced_is_constant_output():
    model, shape = build("mlp")
    data = make_data(shape, 3)
    df = pruning_penalty(model, {"r": {"fc2": torch.rand(5)}}, data, layer="fc2",
                         fractions=[1.0])
    ref = copy.deepcopy(model)
    from saliency.replacement import unit_means
    means = unit_means(ref, data, ["fc2"])["fc2"]
    with torch.no_grad():
        ref.fc2.weight.zero_()
        ref.fc2.bias.copy_(means)
    assert df["loss_after"].iloc[0] == pytest.approx(mean_loss(ref, data), abs=1e-12)


def test_pruning_penalty_validation_leaves_model_alone():
    model, shape = build("mlp")
    data = make_data(shape, 3)
    snap = snapshot(model)
    good = {"s": {"fc1": torch.rand(7)}}
    cases = [
        (dict(layer="fc1", fractions=[1.5]), ValueError, "fractions"),
        (dict(layer="fc1", fractions=[]), ValueError, "empty"),
        (dict(layer="nope", fractions=[0.5]), ValueError, "not a module"),
        (dict(layer="fc1", fractions=[0.5], kind="channel"), ValueError, "kind"),
        (dict(layer="fc1", fractions=[0.5], replacement="median"), ValueError, "replacement"),
        (dict(layer="fc2", fractions=[0.5]), ValueError, "no scores"),
        (dict(layer="fc1.weight", fractions=[0.5], kind="parameter"), ValueError, "no scores"),
        (dict(layer="nope", fractions=[0.5], kind="parameter"), ValueError, "neither"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            pruning_penalty(model, good, data, **kwargs)
    with pytest.raises(ValueError, match="1-D"):
        pruning_penalty(model, {"s": {"fc1": torch.rand(6)}}, data, layer="fc1",
                        fractions=[0.5])
    with pytest.raises(ValueError, match="shape"):
        pruning_penalty(model, {"s": {"fc1.weight": torch.rand(6, 7)}}, data,
                        layer="fc1.weight", fractions=[0.5], kind="parameter")
    assert_bit_identical(model, snap)


# ----------------------------------------------------------------- plots

def test_plot_correlations_heatmap_cells_and_png(tmp_path):
    s = hand_scores()
    corr = rank_correlations(s)
    ax = plot_correlations(corr["global"])
    n = len(s)
    mesh = ax.collections[0]
    assert mesh.get_array().size == n * n
    assert len(ax.texts) == n * n
    assert [t.get_text() for t in ax.get_xticklabels()] == list(s)
    values = sorted(float(t.get_text()) for t in ax.texts)
    assert values[0] == -1.0 and values[-1] == 1.0
    path = tmp_path / "corr.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = plot_correlations(corr)  # a grid: one heatmap per layer and the global one
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == [f"rank correlation: {k}" for k in corr]
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="figure of their own"):
        plot_correlations(corr, ax=plt.subplots()[1])


def test_plot_topk_heatmap(tmp_path):
    s = hand_scores()
    ov = topk_overlap(s, 0.5)
    ax = plot_topk(ov["fc2"])
    assert ax.collections[0].get_array().size == len(s) ** 2
    assert len(ax.texts) == len(s) ** 2
    assert {float(t.get_text()) for t in ax.texts} <= {0.0, 0.5, 1.0}
    ax.figure.savefig(tmp_path / "topk.png")
    assert (tmp_path / "topk.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_penalty_one_line_per_scorer(tmp_path):
    model, shape = build("mlp")
    data = make_data(shape, 3)
    g = torch.Generator().manual_seed(6)
    scorers = {"mrp": MRP(layers=["fc1"]), "fixed": FixedUnits({"fc1": torch.arange(7.)}),
               "random": {"fc1": torch.rand(7, generator=g)}}
    df = pruning_penalty(model, scorers, data, layer="fc1", fractions=[0.1, 0.3, 0.6, 1.0])
    ax = plot_penalty(df)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(ax.get_lines()) == 3 and set(lines) == set(scorers)
    assert lines["random"].get_linestyle() == "--"
    assert lines["mrp"].get_linewidth() == 3.0 > lines["fixed"].get_linewidth()
    np.testing.assert_allclose(lines["mrp"].get_ydata(), df[df.scorer == "mrp"]["delta"])
    assert ax.get_yscale() == "symlog"
    assert len(ax.get_legend().get_texts()) == 3
    ax.figure.savefig(tmp_path / "penalty.png")
    assert (tmp_path / "penalty.png").read_bytes()[:4] == b"\x89PNG"

    # several random draws concatenated: averaged into one line
    seeds = pd.concat([df, df.assign(delta=df["delta"] + 0.01)])
    ax2 = plot_penalty(seeds, yscale="linear")
    assert len(ax2.get_lines()) == 3
    mean = seeds[seeds.scorer == "random"].groupby("fraction")["delta"].mean()
    rnd = [ln for ln in ax2.get_lines() if ln.get_label() == "random"][0]
    np.testing.assert_allclose(rnd.get_ydata(), mean.to_numpy())


def test_plot_fidelity_bars(tmp_path):
    s = hand_scores()
    df = fidelity(s, {"ties": "a", "anti": "a"})
    ax = plot_fidelity(df)
    bars = [p for c in ax.containers for p in c]
    assert len(ax.containers) == 3 and len(bars) == 2 * 3
    heights = sorted(p.get_height() for p in bars)
    g = df[df.layer == "global"]
    assert heights == pytest.approx(sorted(g[["spearman", "kendall", "topk_overlap"]]
                                           .to_numpy().ravel()))
    ax.figure.savefig(tmp_path / "fid.png")
    assert (tmp_path / "fid.png").read_bytes()[:4] == b"\x89PNG"
    ax_all = plot_fidelity(df, layer=None)
    assert sum(len(c) for c in ax_all.containers) == 3 * df.shape[0]


# ----------------------------------------------------------------- pictures that read

LONG_NAMES = ["mrp", "random_unit", "loss_change", "taylor2", "signed_loss_change"]


def long_name_scores():
    g = torch.Generator().manual_seed(11)
    return {n: {"fc1": torch.rand(9, generator=g), "fc2": torch.rand(5, generator=g)}
            for n in LONG_NAMES}


def drawn_ticks(axis):
    """The tick labels drawn: those of ticks inside the view limits."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks() if lo - 1e-9 <= t.get_loc() <= hi + 1e-9]


def labels_of(ax):
    ax.figure.canvas.draw()            # the ticks of the final layout
    return [*drawn_ticks(ax.xaxis), *drawn_ticks(ax.yaxis), ax.title, ax.xaxis.label,
            ax.yaxis.label, *ax.texts]


def test_heatmap_shows_long_scorer_names_uncut():
    corr = rank_correlations(long_name_scores())
    ax = plot_correlations(corr["global"])
    assert [t.get_text() for t in ax.get_xticklabels()] == LONG_NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == LONG_NAMES
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {45.0}
    assert {t.get_rotation() for t in ax.get_yticklabels()} == {0.0}
    n = len(LONG_NAMES)
    assert assert_inside_figure(ax.figure, labels_of(ax)) == 2 * n + 3 + n * n
    # the figure grew with the labels: wider than the default 5 x 4 inches
    assert ax.figure.get_figwidth() > 5 and ax.figure.get_figheight() > 4
    # a grid of per-layer heatmaps (and top-k overlaps): every label of every panel fits
    for fig in (plot_correlations(corr), plot_topk(topk_overlap(long_name_scores(), 0.3))):
        panels = [a for a in fig.axes if a.get_title()]
        assert len(panels) == 3
        for a in panels:
            assert [t.get_text() for t in a.get_yticklabels()] == LONG_NAMES
        assert assert_inside_figure(fig, [t for a in panels for t in labels_of(a)]) == \
            3 * (2 * n + 3 + n * n)


def test_heatmap_on_a_given_axes_rotates_and_shrinks_to_its_cells():
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    ax = plot_correlations(rank_correlations(long_name_scores())["global"], ax=axes[1])
    assert ax is axes[1] and fig.get_size_inches().tolist() == [8, 3.5]   # not resized
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {45.0}
    sizes = {t.get_fontsize() for t in ax.texts}
    assert len(sizes) == 1 and 5 <= sizes.pop() < 10      # annotations fit the small cells


def test_fidelity_labels_do_not_overlap():
    s = long_name_scores()
    s.update({f"approximation_{i}": {"fc1": torch.rand(9), "fc2": torch.rand(5)}
              for i in range(14)})
    few = fidelity(s, {"taylor2": "loss_change", "signed_loss_change": "loss_change",
                       "random_unit": "mrp", "approximation_0": "mrp"})
    many = fidelity(s, {f"approximation_{i}": "loss_change" for i in range(14)})

    def check(ax, rotation):
        fig = ax.figure
        labels = ax.get_xticklabels()
        assert {t.get_rotation() for t in labels} == {rotation}
        assert_inside_figure(fig, labels_of(ax))
        boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
        for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
            assert not a.overlaps(b), (labels[i].get_text(), labels[j].get_text())
        return labels

    labels = check(plot_fidelity(few), 0.0)          # level, two lines each
    assert [t.get_text() for t in labels] == [
        "taylor2\nvs loss_change", "signed_loss_change\nvs loss_change", "random_unit\nvs mrp",
        "approximation_0\nvs mrp"]
    two = fidelity(s, {"taylor2": "loss_change", "random_unit": "mrp"})
    labels = check(plot_fidelity(two, layer=None), 0.0)   # and a third line: the layer
    assert len(labels) == 6 and labels[0].get_text() == "taylor2\nvs loss_change\n(fc1)"
    for df, n in [(few, 12), (many, 42)]:                 # many pairs: vertical, one line each
        ax = plot_fidelity(df, layer=None)
        labels = check(ax, 90.0)
        assert len(labels) == n and ax.figure.get_figwidth() <= 16 + 3
        assert labels[0].get_text() == ("taylor2 vs loss_change (fc1)" if n == 12 else
                                        "approximation_0 vs loss_change (fc1)")
    fig, narrow = plt.subplots(figsize=(5, 4.5))      # a small Axes of the caller, who
    plot_fidelity(few, ax=narrow)                     # lays the figure out
    fig.tight_layout()
    check(narrow, 90.0)


def test_penalty_plot_names_its_layer_and_the_probes_show_progress(capsys):
    from saliency.progress import show_progress
    model, shape = build("mlp")
    data = make_data(shape, 3)
    g = torch.Generator().manual_seed(6)
    scorers = {"mrp": MRP(layers=["fc1"]), "random": {"fc1": torch.rand(7, generator=g)}}
    capsys.readouterr()
    with show_progress(True):
        df = pruning_penalty(model, scorers, data, layer="fc1", fractions=[0.2, 0.6])
    err = capsys.readouterr().err
    assert "pruning-penalty probes of fc1" in err and "/4" in err   # 2 scorers x 2 fractions
    assert df.attrs == {"layer": "fc1", "kind": "unit", "n_items": 7, "replacement": "mean",
                        "members": ["fc1"]}
    ax = plot_penalty(df)
    assert ax.get_title() == "pruning penalty of layer fc1 (7 units, mean replacement)"
    assert_inside_figure(ax.figure, [ax.title, *ax.get_legend().get_texts()])
    ax = plot_penalty(df, title="mlp on noise")
    assert ax.get_title().splitlines() == ["mlp on noise",
                                           "pruning penalty of layer fc1 (7 units, mean "
                                           "replacement)"]
    # several seeds concatenated keep the record; a frame without one is named by `layer`
    seeds = pd.concat([df, df.assign(delta=df["delta"] + 0.01)])
    assert "layer fc1" in plot_penalty(seeds).get_title()
    bare = pd.DataFrame(df[["scorer", "fraction", "delta"]].to_dict("list"))
    assert bare.attrs == {} and plot_penalty(bare).get_title() == "pruning penalty"
    assert plot_penalty(bare, layer="fc1").get_title() == "pruning penalty of fc1"
    assert plot_penalty(bare.assign(layer="fc2")).get_title() == "pruning penalty of fc2"
    # parameters, and zero replacement
    pdf = pruning_penalty(model, {"mag": Magnitude(params=["fc2.weight"])}, data,
                          layer="fc2.weight", fractions=[0.5], kind="parameter")
    n = model.fc2.weight.numel()
    assert plot_penalty(pdf).get_title() == f"pruning penalty of fc2.weight ({n} weights set to 0)"
    zdf = pruning_penalty(model, scorers, data, layer="fc1", fractions=[0.5], replacement="zero")
    assert plot_penalty(zdf).get_title().endswith("(7 units, held at 0)")


# ----------------------------------------------------------------- docstrings

def test_docstring_examples_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedComparisonWarning)
        res = doctest.testmod(compare, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 20 and res.failed == 0


def test_fidelity_of_mrs_to_mrp_on_real_scorers():
    """The spec's example pair, with the scorers from the registry."""
    from saliency.unit_scorers import MRS
    model, shape = build("cnn")
    data = make_data(shape, 4, sizes=(8, 8))
    scores = compute_scores({"mrs": MRS(), "mrp": MRP()}, model, data)
    df = fidelity(scores, {"mrs": "mrp"})
    assert list(df["layer"]) == [*scores["mrp"], "global"]
    for _, row in df.iterrows():
        layers = list(scores["mrp"]) if row["layer"] == "global" else [row["layer"]]
        x, y = flat(scores, "mrs", layers), flat(scores, "mrp", layers)
        assert row["n"] == x.size
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    self_df = fidelity(scores, {"mrp": "mrp"})
    np.testing.assert_allclose(self_df[["spearman", "kendall", "topk_overlap"]], 1.0, atol=1e-12)
