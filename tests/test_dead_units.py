"""Dead-unit detection (saliency.dead_units): planted dead units are flagged by exactly the
right criteria, every statistic matches an independent reference, and the exactly
replaceable units are removed without changing the outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from zoo import thesis_cnn

from pruners import remove_units
from saliency import EXACT_CRITERIA, MRP, MRS, DeadUnitThresholds, Dormancy, find_dead_units
from saliency.dead_units import UNIT_STATISTICS, criterion_names


def _planted(seed=0):
    """A float64 MLP whose layer "0" has four planted units (see EXPECTED)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(),
                        nn.Linear(7, 3)).double()
    with torch.no_grad():
        net[0].weight[1] = 0.0       # 1: zero incoming weights, bias 0.8 -> constant output
        net[0].bias[1] = 0.8
        net[2].weight[:, 2] = 0.0    # 2: zero outgoing weights
        net[0].bias[3] = -50.0       # 3: always-negative pre-activation (never active)
        net[0].weight[5] = 0.0       # 5: zero incoming weights and bias: outputs 0
        net[0].bias[5] = 0.0
    return net


#: criterion -> the planted units of layer "0" it must flag (and no other unit)
EXPECTED = {
    "low_mrp": {1, 2, 3, 5}, "low_mrs": {1, 2, 3, 5},
    "constant": {1, 5}, "constant_activation": {1, 3, 5},
    "never_active": {3, 5}, "dormant@0": {3, 5}, "dormant@0.025": {3, 5}, "dormant@0.1": {3, 5},
    "zero_outgoing": {2}, "frozen": {2, 3, 5},
}


def _data(n=120, d=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[:50], y[:50]), (x[50:], y[50:])], x, y


def test_planted_units_are_flagged_by_the_right_criteria_only():
    net = _planted()
    data, _, _ = _data()
    snap = take(net)
    report = find_dead_units(net, iter(data), exact_mrp=True)  # a one-pass iterator is fine
    assert_unchanged(snap, net)
    assert report.criteria == list(EXPECTED)
    for crit, units in EXPECTED.items():
        flagged = set(report.flags[crit]["0"].nonzero().reshape(-1).tolist())
        assert flagged == units, (crit, flagged)
    assert report.dead()["0"].tolist() == [1, 2, 3, 5]       # the exact criteria
    assert report.dead(["constant", "frozen"], how="all")["0"].tolist() == [5]
    rows = {r["unit"]: r for r in report.rows() if r["layer"] == "0"}
    for i in (0, 4, 6, 7):
        assert rows[i]["dead_by"] == []
    assert rows[2]["dead_by"] == ["low_mrp", "low_mrs", "zero_outgoing", "frozen"]
    assert rows[1]["out_var"] == 0.0 and rows[5]["act_var"] == 0.0   # exactly, by the shift
    summary = {r["layer"]: r for r in report.summary()}
    assert summary["0"]["units"] == 8 and summary["0"]["constant"] == 2
    assert summary["0"]["exactly_removable"] == 4
    assert report.samples == 120


def test_statistics_match_independent_references():
    net = _planted(seed=3)
    data, x, y = _data(seed=4)
    report = find_dead_units(net, data, exact_mrp=True)
    cache = {}
    hooks = [net[i].register_forward_hook(lambda m, inp, o, i=i: cache.__setitem__(i, o))
             for i in (0, 2)]
    losses = F.cross_entropy(net(x), y, reduction="none")
    g0, g2 = torch.autograd.grad(losses.sum(), [cache[0], cache[2]])
    for hk in hooks:
        hk.remove()
    for name, h, g, consumer in (("0", cache[0].detach(), g0, net[2]),
                                 ("2", cache[2].detach(), g2, net[4])):
        a = torch.relu(h)
        s = report.stats
        assert torch.allclose(s["mean"][name], h.mean(0), rtol=1e-12)
        assert torch.allclose(s["out_var"][name], h.var(0, unbiased=False), rtol=1e-9, atol=1e-15)
        assert torch.allclose(s["act_mean"][name], a.mean(0), rtol=1e-12, atol=1e-15)
        assert torch.allclose(s["act_var"][name], a.var(0, unbiased=False), rtol=1e-9,
                              atol=1e-15)
        assert torch.equal(s["apoz"][name], (a == 0).double().mean(0))
        mean_abs = a.abs().mean(0)
        assert torch.allclose(s["redo"][name], mean_abs / mean_abs.mean(), rtol=1e-12)
        assert torch.allclose(s["grad_norm"][name], (g.square().sum(0) / x.shape[0]).sqrt(),
                              rtol=1e-12)
        mrs = ((h.mean(0) - h) * g).abs().sum(0)
        assert torch.allclose(s["mrs"][name], mrs, rtol=1e-10, atol=1e-15)
        w = consumer.weight.detach()
        assert torch.allclose(s["w_out_l1"][name], w.abs().sum(0), rtol=1e-12)
        assert torch.equal(s["w_out_max"][name], w.abs().amax(0))
        assert torch.allclose(s["w_in_l1"][name], net[int(name)].weight.abs().sum(1).detach())
        rel = s["mrs"][name] / s["mrs"][name].mean()
        assert torch.allclose(s["mrs_rel"][name], rel)
    # exact MRP is the scorer's; MRS and ReDo the scorers' too
    assert torch.equal(report.stats["mrp"]["0"], MRP().score(net, data)["0"])
    assert torch.allclose(report.stats["mrs"]["2"], MRS().score(net, data)["2"])
    assert torch.allclose(report.stats["redo"]["2"], Dormancy().score(net, data)["2"])
    assert report.loss == pytest.approx(float(losses.detach().mean()), rel=1e-12)


def test_thresholds_are_parameters():
    net = _planted()
    data, _, _ = _data()
    report = find_dead_units(net, data, thresholds={"taus": (0.5,), "grad_rel": 0.0,
                                                    "outgoing_atol": 10.0})
    assert "dormant@0.5" in report.criteria and "dormant@0.1" not in report.criteria
    assert "low_mrp" not in report.criteria and "mrp" not in report.stats
    assert report.flags["zero_outgoing"]["0"].all()   # every weight is below 10
    redo = report.stats["redo"]["0"]
    assert torch.equal(report.flags["dormant@0.5"]["0"], redo <= 0.5)
    assert torch.equal(report.flags["frozen"]["0"], report.stats["grad_norm"]["0"] == 0)
    assert criterion_names(DeadUnitThresholds(taus=(0.2,)), exact_mrp=True)[:2] == [
        "low_mrp", "low_mrs"]
    with pytest.raises(ValueError, match="unknown thresholds"):
        find_dead_units(net, data, thresholds={"nope": 1})
    for bad in ({"var_rel": -1.0}, {"apoz": 1.5}, {"taus": ()}, {"taus": (0.1, 0.1)},
                {"grad_rel": float("inf")}):
        with pytest.raises(ValueError):
            DeadUnitThresholds(**bad)
    with pytest.raises(ValueError, match="unknown criteria"):
        report.dead(["low_mrp"])
    with pytest.raises(ValueError, match="data is empty"):
        find_dead_units(net, [])
    with pytest.raises(ValueError, match="unknown or non-prunable"):
        find_dead_units(net, data, layers=["4"])


def _planted_cnn():
    """The thesis's CNN (1 x 28 x 28, BatchNorm, float32) with three planted units."""
    torch.manual_seed(0)
    net = thesis_cnn(batchnorm=True)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            n = bn.num_features
            bn.running_mean.copy_(torch.linspace(-0.2, 0.2, n))
            bn.running_var.copy_(torch.linspace(0.5, 1.5, n))
        net.conv1.weight[0] = 0.0          # constant filter, output 0.37 everywhere
        net.conv1.bias[0] = 0.37
        net.bn2.bias[4] = -100.0           # BatchNorm pushes conv2 unit 4 below zero
        net.fc1.weight[:, 7 * 16:8 * 16] = 0.0   # conv2 unit 7: no outgoing weight
    return net


def test_float32_cnn_with_batchnorm_and_exact_removal():
    net = _planted_cnn()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    data = [(x[:48], y[:48]), (x[48:], y[48:])]
    report = find_dead_units(net, data)
    assert report.layers == ["conv1", "conv2", "fc1"]
    dead = report.dead()
    assert {k: v.tolist() for k, v in dead.items() if k != "fc1"} == {"conv1": [0],
                                                                       "conv2": [4, 7]}
    assert report.stats["out_var"]["conv1"][0] == 0.0  # float32 maps, exactly 0
    assert report.flags["constant"]["conv1"].nonzero().reshape(-1).tolist() == [0]
    assert report.flags["never_active"]["conv2"].nonzero().reshape(-1).tolist() == [4]
    assert report.flags["zero_outgoing"]["conv2"].nonzero().reshape(-1).tolist() == [7]
    assert report.flags["frozen"]["conv2"][[4, 7]].all()
    net.eval()
    with torch.no_grad():
        before = net(x)
    rep = remove_units(net, {k: v for k, v in dead.items()}, replacement="mean", data=data)
    with torch.no_grad():
        after = net(x)
    assert rep.removed["conv1"] == 1 and rep.removed["conv2"] == 2
    assert rep.removed["fc1"] == len(dead["fc1"]) > 0   # never active at this init
    assert float((after - before).abs().max()) <= 1e-6


def test_every_statistic_is_in_the_table():
    net = _planted()
    data, _, _ = _data()
    report = find_dead_units(net, data, exact_mrp=True)
    row = report.rows()[0]
    assert [k for k in row if k in UNIT_STATISTICS] == list(UNIT_STATISTICS)
    d = report.to_dict()
    assert d["exact_criteria"] == list(EXACT_CRITERIA)
    assert len(d["units"]) == 8 + 7 and d["thresholds"]["taus"] == [0.0, 0.025, 0.1]
    assert "constant" in str(report).splitlines()[0]


def test_data_without_targets_gives_every_criterion_but_the_gradient_ones():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[0].weight[2] = 0
        net[0].bias[2] = -1.0           # unit 2 never fires
        net[2].weight[:, 4] = 0         # unit 4 has no outgoing weight
    x = torch.randn(50, 4, dtype=torch.float64)
    with_targets = find_dead_units(net, [(x, torch.randint(0, 3, (50,)))])
    without = find_dead_units(net, [(x, None)])
    assert without.skipped == ["low_mrs", "frozen"] and with_targets.skipped == []
    assert without.criteria == [c for c in with_targets.criteria
                                if c not in ("low_mrs", "frozen")]
    for c in without.criteria:         # the target-free criteria are the same
        assert torch.equal(without.flags[c]["0"], with_targets.flags[c]["0"]), c
    assert without.dead(["never_active"])["0"].tolist() == [2]
    assert without.dead(["zero_outgoing"])["0"].tolist() == [4]
    assert math.isnan(without.loss) and torch.isnan(without.stats["mrs"]["0"]).all()
    assert "not computed (the data has no targets): low_mrs, frozen" in str(without)
    with pytest.raises(ValueError, match=r"exact MRP \(low_mrp\) needs targets"):
        find_dead_units(net, [(x, None)], exact_mrp=True)
