"""Every registered scorer passes the same contract, and known answers hold."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from scipy import stats
from zoo import build

from pruners import prepare_for, remove_units
from saliency import SCORERS
from saliency.base import LayerRequirement, UnitScorer
from saliency.mrp import MRP
from saliency.replacement import unit_means
from saliency.unit_scorers import MRS


def make_data(shape, n=24, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def splits(x, y, cuts):
    edges = [0, *cuts, len(x)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


MODELS = ["cnn", "mlp_bn"]


def scorer_for(name, shape):
    cls = SCORERS[name]
    kwargs = {}
    if getattr(cls, "granularity", "") == "unit" and len(shape) > 1:
        kwargs["example_input"] = torch.zeros((1,) + shape, dtype=torch.float64)
    if "seed" in cls.__init__.__code__.co_varnames:
        kwargs["seed"] = 3
    return cls(**kwargs)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("name", sorted(SCORERS))
def test_contract(name, arch):
    model, shape = build(arch)
    try:  # switches / tri-state ReLUs for the scorers that read them
        model = prepare_for(SCORERS[name], model, torch.zeros((1,) + shape, dtype=torch.float64))
    except ValueError as exc:  # tri-state ReLUs replace ReLUs: mlp_bn has PReLUs only
        assert SCORERS[name].requires_layer.layer.__name__ == "TriStateReLU" \
            and "no hidden ReLU" in str(exc)
        pytest.skip(f"{name} does not apply to {arch}: {exc}")
    model.train()  # scoring must not change it, nor leave it in eval mode
    x, y = make_data(shape, classes=model.eval()(torch.zeros((1,) + shape,
                                                            dtype=torch.float64)).shape[1])
    model.train()
    scorer = scorer_for(name, shape)
    before = take(model)
    running = {k: v.clone() for k, v in model.state_dict().items()}
    scores = scorer.score(model, splits(x, y, [10]))
    assert_unchanged(before, model)
    for k, v in model.state_dict().items():  # BatchNorm running stats untouched
        assert torch.equal(v, running[k]), k

    if scorer.granularity == "parameter":
        params = dict(model.named_parameters())
        assert scores and set(scores) <= set(params)
        for k, v in scores.items():
            assert v.shape == params[k].shape, k
    else:
        from pruners import trace
        prunable = trace(model, x[:1]).prunable
        assert list(scores) == prunable
        for k, v in scores.items():
            n = model.get_submodule(k).weight.shape[0]
            assert v.shape == (n,), k
    for v in scores.values():
        assert torch.isfinite(v).all()

    # batching invariance: the same samples split differently
    again = scorer.score(model, splits(x, y, [3, 17, 20]))
    for k in scores:
        torch.testing.assert_close(again[k].double(), scores[k].double(), rtol=1e-6, atol=1e-9)
    # determinism
    third = scorer_for(name, shape).score(model, splits(x, y, [10]))
    for k in scores:
        assert torch.equal(third[k], scores[k]), k


@pytest.mark.parametrize("name", sorted(n for n in SCORERS if SCORERS[n].needs_data))
def test_errors_leave_the_model_untouched(name):
    model, shape = build("mlp")
    x, y = make_data(shape)
    before = take(model)
    scorer = scorer_for(name, shape)
    with pytest.raises(ValueError, match="empty"):
        scorer.score(model, [])
    with pytest.raises(ValueError, match="needs data"):
        scorer.score(model, None)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises((FloatingPointError, ValueError), match="finite"):
        scorer.score(model, [(bad, y)])
    assert_unchanged(before, model)


@pytest.mark.parametrize("name", sorted(n for n in SCORERS if SCORERS[n].granularity == "unit"))
def test_unit_scorer_errors(name):
    model, shape = build("mlp")
    x, y = make_data(shape)
    before = take(model)
    with pytest.raises(ValueError, match="non-prunable layers \\['nope'\\]"):
        SCORERS[name](layers=["nope"]).score(model, [(x, y)])
    with pytest.raises(ValueError, match="no prunable units"):
        SCORERS[name]().score(nn.Sequential(nn.Linear(6, 3)).double(), [(x, y)])
    assert_unchanged(before, model)


class Marker(nn.Identity):
    """The layer :class:`MarkedScorer` reads (it changes nothing)."""


def insert_markers(model, example_input=None):
    """A copy of ``model`` followed by a :class:`Marker`."""
    return nn.Sequential(copy.deepcopy(model), Marker())


class MarkedScorer(UnitScorer):
    """A scorer defined here, reading a layer of its own: one class, registered nowhere."""

    needs_data = False
    requires_layer = LayerRequirement(Marker, f"{__name__}:insert_markers")

    def _score(self, model, data, loss_fn):
        return {"markers": torch.tensor([float(isinstance(m, Marker)) for m in model.modules()])}


def test_prepare_for_inserts_the_layer_a_new_scorer_names():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    marked = prepare_for(MarkedScorer, net)
    assert isinstance(marked[1], Marker) and not any(isinstance(m, Marker) for m in net.modules())
    assert float(MarkedScorer().score(marked)["markers"].sum()) == 1.0
    assert prepare_for(MarkedScorer(), marked) is marked  # the layer is there already
    assert prepare_for(SCORERS["mrp"], net) is net         # no requirement
    direct = type("Direct", (MarkedScorer,), {"requires_layer": LayerRequirement(
        Marker, insert_markers)})                          # the inserter itself, not its path
    assert isinstance(prepare_for(direct, net)[1], Marker)
    missing = type("Missing", (MarkedScorer,), {"requires_layer": LayerRequirement(
        Marker, "no_such_module:insert")})
    with pytest.raises(ValueError, match="Missing: cannot import the inserter"):
        prepare_for(missing, net)
    with pytest.raises(ValueError, match="import path"):
        LayerRequirement(Marker, "insert_markers")
    with pytest.raises(TypeError, match="nn.Module subclass"):
        LayerRequirement(Marker(), insert_markers)


# ---------------------------------------------------------------------------
# known answers


def naive_mrp(model, x, y, layer, absolute=True):
    means = unit_means(model, [(x, y)], [layer])[layer]
    with torch.no_grad():
        base = F.cross_entropy(model(x), y, reduction="none")
    out = []
    for i in range(len(means)):
        h = model.get_submodule(layer).register_forward_hook(
            lambda m, inp, o, i=i: o.index_fill(1, torch.tensor([i]), float(means[i])))
        with torch.no_grad():
            d = F.cross_entropy(model(x), y, reduction="none") - base
        h.remove()
        out.append(float(d.abs().sum() if absolute else d.sum()))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["cnn", "mlp_bn", "vgg", "conv1d", "functional"])
def test_mrp_equals_a_naive_per_unit_loop(arch):
    model, shape = build(arch)
    model.eval()
    classes = model(torch.zeros((1,) + shape, dtype=torch.float64)).shape[1]
    x, y = make_data(shape, n=20, classes=classes, seed=4)
    scores = MRP().score(model, splits(x, y, [7]))
    for layer, s in scores.items():
        torch.testing.assert_close(s, naive_mrp(model, x, y, layer), rtol=0, atol=1e-6)


def test_signed_mrp_is_the_loss_change_of_mean_removal():
    model, shape = build("cnn")
    model.eval()
    x, y = make_data(shape, n=30, classes=4, seed=5)
    data = splits(x, y, [12])
    signed = MRP(absolute=False, reduction="mean").score(model, data)
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
    for layer, s in signed.items():
        for i in (0, 2):
            m = copy.deepcopy(model)
            remove_units(m, {layer: [i]}, replacement="mean", data=data)
            with torch.no_grad():
                after = F.cross_entropy(m(x), y).item()
            assert abs((after - base) - float(s[i])) <= 1e-10


def test_planted_constant_unit_scores_zero():
    model, shape = build("mlp_bn")
    model.eval()
    with torch.no_grad():
        model.fc1.weight[2] = 0.0  # unit 2 of fc1 outputs its bias for every sample
        model.fc2.weight[1] = 0.0
    x, y = make_data(shape, n=16, seed=6)
    data = splits(x, y, [5])
    mrp, mrs = MRP().score(model, data), MRS().score(model, data)
    assert float(mrp["fc1"][2]) <= 1e-12 and float(mrs["fc1"][2]) <= 1e-12
    assert float(mrp["fc2"][1]) <= 1e-12 and float(mrs["fc2"][1]) <= 1e-12
    assert float(mrp["fc1"].max()) > 1e-3  # the others are not zero


def logistic_data(n: int, seed: int, features: int = 128, relevant: int = 13, classes: int = 6):
    """Labels drawn from ``softmax(A x)`` with ``x ~ N(0, I)`` and ``A`` nonzero on the first
    ``relevant`` inputs only; ``(x_train, y_train, x_val, y_val)``, 80/20."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    a = torch.zeros(classes, features)
    a[:, :relevant] = torch.randn(classes, relevant, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(n, classes, generator=g).clamp_min(1e-30)))
    y = (x @ a.T + gumbel).argmax(dim=1)  # a draw from softmax(A x) (the Gumbel-max trick)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


@pytest.mark.parametrize("seed", [0, 1])
def test_mrs_ranks_like_mrp_on_a_trained_network(seed):
    """Molchanov et al. report 0.73 for Taylor against their oracle; we ask >= 0.7.

    The network is trained as in the thesis (SGD, lr 0.05 here, batch 32) on logistic
    classification data (:func:`logistic_data`); over seeds 0-4 the correlations measured
    0.965-0.981 (first layer) and 0.992-0.998 (second).
    """
    torch.manual_seed(seed)
    xtr, ytr, xval, yval = logistic_data(3000, seed)
    model = nn.Sequential(nn.Linear(xtr.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(1500):
        idx = torch.randint(0, len(xtr), (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
    data = [(xval, yval)]
    mrp, mrs = MRP().score(model, data), MRS().score(model, data)
    for layer in mrp:
        rho = stats.spearmanr(mrp[layer].numpy(), mrs[layer].numpy()).statistic
        assert rho >= 0.7, (layer, rho)
