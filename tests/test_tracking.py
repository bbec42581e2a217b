"""Per-unit tracking (saliency.tracking): every quantity against an independent reference
on a float64 model, and training with tracking is bit-identical to training without."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, same_bits, take

from pruners import LRAttack
from saliency import MRP, UnitTracker
from saliency.tracking import QUANTITIES


class Net(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(4 * 9, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc2(torch.tanh(self.fc1(self.drop(self.flatten(x)))))


def _net(seed=0):
    torch.manual_seed(seed)
    net = Net().double()
    with torch.no_grad():
        net.bn1.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05, 0.3]))
        net.bn1.running_var.copy_(torch.tensor([0.5, 1.5, 0.8, 1.1]))
        net.bn1.weight.copy_(torch.tensor([1.2, 0.7, -0.9, 1.0]))
        net.bn1.bias.copy_(torch.tensor([0.1, -0.3, 0.2, 0.0]))
    return net


def _probe(n=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[:25], y[:25]), (x[25:], y[25:])], x, y


def _reference(net, x, y):
    """Every quantity of conv1 and fc1 by brute force (hooks, autograd, explicit formulas)."""
    net.eval()
    cache = {}
    hooks = [getattr(net, n).register_forward_hook(
        lambda m, i, o, n=n: cache.__setitem__(n, o)) for n in ("conv1", "fc1")]
    out = net(x)
    losses = F.cross_entropy(out, y, reduction="none")
    grads = torch.autograd.grad(losses.sum(), [cache["conv1"], cache["fc1"]])
    for hk in hooks:
        hk.remove()
    bn = net.bn1
    h1 = cache["conv1"].detach()
    a1 = torch.relu((h1 - bn.running_mean[None, :, None, None])
                    / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
                    * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]).detach()
    h2 = cache["fc1"].detach()
    a2 = torch.tanh(h2)
    ref = {}
    for name, h, a, g in (("conv1", h1, a1, grads[0]), ("fc1", h2, a2, grads[1])):
        c = h.shape[1]
        hf, af, gf = (t.transpose(0, 1).reshape(c, x.shape[0], -1) for t in (h, a, g))
        mu = hf.mean((1, 2))
        mrp = []
        for i in range(c):
            def replace(m, inp, o, i=i):
                o = o.clone()
                o[:, i] = mu[i]
                return o
            hk = getattr(net, name).register_forward_hook(replace)
            with torch.no_grad():
                mrp.append((F.cross_entropy(net(x), y, reduction="none") - losses).abs().sum())
            hk.remove()
        mean_abs = af.abs().mean((1, 2))
        ref[name] = {
            "mrp": torch.stack(mrp),
            "mrs": ((mu[:, None, None] - hf) * gf).sum(2).abs().sum(1),
            "grad_norm": (gf.square().sum((1, 2)) / x.shape[0]).sqrt(),
            "w_in_l1": getattr(net, name).weight.detach().reshape(c, -1).abs().sum(1),
            "out_mean": mu, "out_var": hf.var((1, 2), unbiased=False),
            "act_mean": af.mean((1, 2)), "act_var": af.var((1, 2), unbiased=False),
            "apoz": (af == 0).double().mean((1, 2)), "dormancy": mean_abs / mean_abs.mean(),
            "act_values": af.detach(), "out_values": hf.detach(),
        }
    w = net.fc1.weight.detach()
    ref["conv1"]["w_out_l1"] = torch.stack([w[:, 9 * i:9 * i + 9].abs().sum() for i in range(4)])
    ref["fc1"]["w_out_l1"] = net.fc2.weight.detach().abs().sum(0)
    ref["loss"] = float(losses.detach().mean())
    return ref


def test_every_quantity_matches_its_reference():
    net = _net()
    data, x, y = _probe()
    snap = take(net)
    tracker = UnitTracker(net, {"conv1": [2, 0], "fc1": None}, data, every=3,
                          histograms=("activation", "output"), bins=7)
    rec = tracker.record(9)
    assert_unchanged(snap, net)
    ref = _reference(net, x, y)
    assert rec["step"] == 9 and rec["loss"] == pytest.approx(ref["loss"], rel=1e-12)
    for name, idx in (("conv1", [2, 0]), ("fc1", list(range(6)))):
        row = rec["layers"][name]
        assert row["units"] == idx
        for q in QUANTITIES:
            got = torch.tensor(row[q], dtype=torch.float64)
            want = ref[name][q][idx]
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (name, q, got, want)
        for kind, key in (("activation", "act_values"), ("output", "out_values")):
            for j, i in enumerate(idx):
                hist = rec["histograms"][name][kind][j]
                v = ref[name][key][i].reshape(-1)
                counts, edges = torch.histogram(v, bins=7, range=(float(v.min()), float(v.max())))
                assert hist["counts"] == counts.long().tolist()
                assert torch.allclose(torch.tensor(hist["edges"], dtype=torch.float64), edges)
                assert sum(hist["counts"]) == v.numel() and hist["below"] == hist["above"] == 0
    # the tracker's MRP is the MRP scorer's, restricted to the tracked units
    full = MRP(layers=["conv1"]).score(net, data)["conv1"]
    got = torch.tensor(rec["layers"]["conv1"]["mrp"], dtype=torch.float64)
    assert torch.allclose(got, full[[2, 0]], rtol=1e-12, atol=0)


def test_fixed_histogram_range_counts_what_falls_outside():
    net = _net()
    data, x, y = _probe()
    tracker = UnitTracker(net, {"fc1": [1]}, data, quantities=["act_mean"], bins=4,
                          hist_range=(-0.5, 0.5))
    hist = tracker.record(0)["histograms"]["fc1"]["activation"][0]
    a = _reference(net, x, y)["fc1"]["act_values"][1].reshape(-1)
    assert hist["below"] == int((a < -0.5).sum()) and hist["above"] == int((a > 0.5).sum())
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == a.numel()
    assert hist["edges"] == [-0.5, -0.25, 0.0, 0.25, 0.5]


def test_maybe_record_follows_every_and_start():
    net = _net()
    data, _, _ = _probe()
    tracker = UnitTracker(net, ["fc1"], data, every=4, start=8, quantities=["mrs"],
                          histograms=())
    done = [s for s in range(20) if tracker.maybe_record(s)]
    assert done == [8, 12, 16]
    assert not tracker.maybe_record(16)  # already probed
    steps, values = tracker.series("fc1", 3, "mrs")
    assert steps == [8, 12, 16] and len(values) == 3
    assert tracker.series("fc1", 3, "loss")[0] == [8, 12, 16]
    rows = tracker.rows()
    assert len(rows) == 3 * 6 and set(rows[0]) == {"step", "loss", "layer", "unit", "mrs"}
    other = UnitTracker(net, ["fc1"], data, quantities=["mrs"], histograms=())
    other.load_state_dict(tracker.state_dict())
    assert other.records == tracker.records


def test_bad_arguments_are_clear():
    net = _net()
    data, _, _ = _probe()
    cases = [
        (dict(units={"nope": None}), "unknown or non-prunable layers"),
        (dict(units={"fc2": None}), "unknown or non-prunable layers"),
        (dict(units={"fc1": [6]}), "index 6 is out of range"),
        (dict(units={"fc1": [1, 1]}), "more than once"),
        (dict(units={}), "names no layer"),
        (dict(quantities=["mrp", "nope"]), "unknown quantities"),
        (dict(histograms=["weights"]), "unknown histograms"),
        (dict(every=0), "every must be"),
        (dict(hist_range=(1.0, 1.0)), "hist_range"),
        (dict(data=[]), "data is empty"),
    ]
    for kw, msg in cases:
        args = dict(units={"fc1": None}, data=data)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            UnitTracker(net, args.pop("units"), args.pop("data"), **args)
    assert math.isfinite(UnitTracker(net, ["conv1"], data).measure()["loss"])


def test_a_training_loop_with_tracking_is_bit_identical_to_one_without():
    """Recording every step (with an identity attack on conv1, which also copies and rescales
    entries around each step) changes neither the weights, the BatchNorm statistics nor the
    global random stream that dropout draws from."""

    def fit(track: bool):
        torch.manual_seed(0)
        model = Net(dropout=0.3)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        tracker = attack = None
        if track:
            attack = LRAttack(model, {"conv1": [1]}, 1.0, start=2, repeats=3, interval=2,
                              outgoing=True, example_input=x[:1])
            tracker = UnitTracker(model, {"conv1": None, "fc1": [0, 5]}, [(x[:20], y[:20])],
                                  every=1, histograms=("activation", "output"))
            tracker.maybe_record(0)
        step = 0
        for epoch in range(2):
            order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
            for i in range(0, 64, 16):
                idx = order[i:i + 16]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                if attack is not None:
                    attack.before_step(step)
                opt.step()
                if attack is not None:
                    attack.after_step()
                step += 1
                if tracker is not None:
                    tracker.maybe_record(step)
        return model, tracker, attack, torch.get_rng_state()

    plain, _, _, rng_plain = fit(False)
    tracked, tracker, attack, rng_tracked = fit(True)
    assert [r["step"] for r in tracker.records] == list(range(9))  # step 0 and every step
    assert attack.applied == [2, 4, 6]
    for (k, a), (_, b) in zip(plain.state_dict().items(), tracked.state_dict().items()):
        assert same_bits(a, b), k  # BatchNorm running statistics included
    assert torch.equal(rng_plain, rng_tracked)
    assert plain.training and tracked.training
