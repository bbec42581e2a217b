"""Unit scores and dead-unit tools on groups of coupled channels.

Every check is against an independent float64 reference: a naive loop of
``remove_units(copy, {group: [i]}, replacement="mean")``, forward hooks that hold every
member's channel at its mean, autograd gradients of every member's output, the weights read
by hand, and the inputs the consumers receive (forward pre-hooks).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from coupled import COUPLED, INPUT, build
from helpers_snapshot import assert_unchanged, take
from zoo import randomize_bn

from pruners import prepare_for, remove_units
from saliency import (MRP, MRS, SCORERS, Dormancy, GroupNormScorer, Norm, UnitTaylor,
                      UnsupportedArchitecture, compare, find_dead_units, trace, unit_means,
                      unit_statistics)

UNIT_SCORERS = sorted(n for n, c in SCORERS.items() if c.granularity == "unit")


def batches(n: int = 10, seed: int = 1, cut: int = 4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + INPUT, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return [(x[:cut], y[:cut]), (x[cut:], y[cut:])], x, y


def losses(model: nn.Module, x, y) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y, reduction="none")


def outputs(model: nn.Module, x, members) -> dict[str, torch.Tensor]:
    """Every member's output on ``x`` (forward hooks)."""
    out = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda _m, _i, o, m=m: out.__setitem__(m, o)) for m in members]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


# --------------------------------------------------------------------------- exact MRP


@pytest.mark.parametrize("name", ["stage", "inverted_residual", "residual_concat", "dense",
                                  "basic_projection"])
def test_exact_mrp_equals_a_loop_of_removals(name):
    """MRP of every group channel (chains too) against removing it from a copy, one by one."""
    model = build(name, kernel=1)
    data, x, y = batches()
    graph = trace(model, x[:1])
    signed = MRP(absolute=False, reduction="mean").score(model, data)
    absolute = MRP().score(model, data)
    assert list(signed) == graph.prunable
    base = losses(model, x, y)
    for gname in graph.prunable:
        for i in range(graph.groups[gname].size):
            removed = copy.deepcopy(model)
            remove_units(removed, {gname: [i]}, replacement="mean", data=data)
            change = losses(removed, x, y) - base
            assert abs(float(change.mean()) - float(signed[gname][i])) <= 1e-8, (gname, i)
            assert abs(float(change.abs().sum()) - float(absolute[gname][i])) <= 1e-8, (gname, i)


def held_losses(model, graph, gname, i, means, x, y) -> torch.Tensor:
    """Per-sample losses with group channel ``i`` held at its mean in every member (forward
    hooks: a member reading the group's channels is computed, then replaced)."""
    group = graph.groups[gname]
    handles = []
    for m in group.members:
        own = (group.channels[m] == i).nonzero().reshape(-1)

        def hook(_mod, _inp, out, own=own, mu=means[m][own]):
            out = out.clone()
            out[:, own] = mu.reshape((1, -1) + (1,) * (out.dim() - 2))
            return out
        handles.append(model.get_submodule(m).register_forward_hook(hook))
    try:
        return losses(model, x, y)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", list(COUPLED))
def test_exact_mrp_equals_the_held_reference_with_padding(name):
    """Padded 3x3 convolutions (where removal is inexact at the borders): MRP is the loss
    change of holding every member's channel at its own mean, as forward hooks do."""
    model = build(name, kernel=3)
    data, x, y = batches()
    graph = trace(model, x[:1])
    scores = MRP().score(model, data)
    means = unit_means(model, data, list(graph.producers))
    base = losses(model, x, y)
    for gname in graph.prunable:
        ref = torch.stack([(held_losses(model, graph, gname, i, means, x, y) - base).abs().sum()
                           for i in range(graph.groups[gname].size)])
        assert (scores[gname] - ref).abs().max() <= 1e-10, gname


# --------------------------------------------------------------------------- MRS, taylor


@pytest.mark.parametrize("name", list(COUPLED))
def test_mrs_and_taylor_equal_the_formulas_from_autograd(name):
    model = build(name, kernel=3)
    data, x, y = batches()
    graph = trace(model, x[:1])
    mrs, taylor = MRS().score(model, data), UnitTaylor().score(model, data)
    members = [m for g in graph.prunable for m in graph.groups[g].members]
    hs = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda _m, _i, o, m=m: hs.__setitem__(m, o)) for m in members]
    loss = F.cross_entropy(model(x), y, reduction="sum")  # each sample's gradient is its own
    for h in handles:
        h.remove()
    grads = dict(zip(members, torch.autograd.grad(loss, [hs[m] for m in members])))
    n = x.shape[0]
    for gname in graph.prunable:
        group = graph.groups[gname]
        ref_mrs, ref_taylor = torch.zeros(group.size, dtype=torch.float64), \
            torch.zeros(group.size, dtype=torch.float64)
        for i in range(group.size):
            per_sample = torch.zeros(n, dtype=torch.float64)
            first = 0.0
            for m in group.members:
                for c in (group.channels[m] == i).nonzero().reshape(-1).tolist():
                    h, g = hs[m].detach()[:, c], grads[m][:, c]
                    mu = h.mean()
                    per_sample += ((mu - h) * g).reshape(n, -1).sum(1)
                    first += float((h * g).reshape(n, -1).mean(1).sum())
            ref_mrs[i] = per_sample.abs().sum()
            ref_taylor[i] = abs(first / n)
        assert (mrs[gname] - ref_mrs).abs().max() <= 1e-10, gname
        assert (taylor[gname] - ref_taylor).abs().max() <= 1e-10, gname


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("name", ["stage", "residual_concat", "inverted_residual"])
def test_norms_by_hand(name):
    model = build(name, kernel=3)
    graph = trace(model, torch.zeros((1,) + INPUT, dtype=torch.float64))
    l1 = Norm(example_input=torch.zeros((1,) + INPUT, dtype=torch.float64)).score(model)
    l2 = Norm("l2", example_input=torch.zeros((1,) + INPUT, dtype=torch.float64)).score(model)
    gn = GroupNormScorer(normalize=True,
                         example_input=torch.zeros((1,) + INPUT, dtype=torch.float64)).score(model)
    for gname in graph.prunable:
        group = graph.groups[gname]
        for i in range(group.size):
            a = b = sq = size = 0.0
            for m in group.members:
                mod = model.get_submodule(m)
                for c in (group.channels[m] == i).nonzero().reshape(-1).tolist():
                    row = mod.weight[c].detach()
                    a += float(row.abs().sum())
                    b += float((row ** 2).sum())
                    sq += float((row ** 2).sum())
                    size += row.numel()
                    if mod.bias is not None:
                        sq += float(mod.bias[c]) ** 2
                        size += 1
            assert abs(float(l1[gname][i]) - a) <= 1e-12 and abs(float(l2[gname][i]) - b) <= 1e-12
            assert abs(float(gn[gname][i]) - (sq / size) ** 0.5) <= 1e-12


# --------------------------------------------------------------------------- every scorer


@pytest.mark.parametrize("arch", list(COUPLED))
@pytest.mark.parametrize("scorer", UNIT_SCORERS)
def test_every_unit_scorer_gives_one_score_per_group_channel(scorer, arch):
    example = torch.zeros((1,) + INPUT, dtype=torch.float64)
    try:  # switches / tri-state ReLUs for the scorers that read them
        model = prepare_for(SCORERS[scorer], build(arch, kernel=3), example)
    except (ValueError, UnsupportedArchitecture) as exc:
        assert SCORERS[scorer].requires_layer.layer.__name__ == "TriStateReLU"
        pytest.skip(f"tri-state ReLUs cannot be inserted into {arch}: {exc}")
    data, x, _ = batches()
    graph = trace(model, x[:1])
    kwargs = {"example_input": example}
    if "seed" in SCORERS[scorer].__init__.__code__.co_varnames:
        kwargs["seed"] = 3
    expected = graph.prunable
    if scorer == "gate":  # tri-state ReLUs gate chains only: residual groups have none
        expected = [g for g in expected if not graph.groups[g].joined]
        if len(expected) < len(graph.prunable):
            with pytest.raises(ValueError, match="no tri-state ReLU"):
                SCORERS[scorer](**kwargs).score(model, data)
        kwargs["layers"] = expected
    model.train()
    before = take(model)
    scores = SCORERS[scorer](**kwargs).score(model, data)
    assert_unchanged(before, model)
    assert list(scores) == expected
    for g, v in scores.items():
        assert v.shape == (graph.groups[g].size,) and torch.isfinite(v).all(), g


def test_one_random_draw_per_group_channel_and_chains_as_before():
    model = build("stage")
    example = torch.zeros((1,) + INPUT, dtype=torch.float64)
    scores = SCORERS["random_unit"](seed=5, example_input=example).score(model)
    again = SCORERS["random_unit"](seed=5, layers=["stem.0"], example_input=example).score(model)
    assert torch.equal(again["stem.0"], scores["stem.0"]) and scores["stem.0"].shape == (4,)
    assert len(torch.cat(list(scores.values())).unique()) == sum(v.numel()
                                                                for v in scores.values())


def test_a_member_name_selects_its_group():
    model = build("stage")
    x = torch.zeros((1,) + INPUT, dtype=torch.float64)
    by_member = Norm(layers=["body.0.branch2.0", "stem.0"], example_input=x).score(model)
    assert list(by_member) == ["stem.0"]  # one group, named once, under its own name
    torch.testing.assert_close(by_member["stem.0"], Norm(example_input=x).score(model)["stem.0"],
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown or non-prunable layers \['stem.1'\]"):
        Norm(layers=["stem.1"], example_input=x).score(model)


# --------------------------------------------------------------------------- activations


def consumer_reference(model, graph, gname, x) -> dict[str, torch.Tensor]:
    """ReDo, APoZ and the activation moments of a joined group, from the consumers' inputs
    (forward pre-hooks), averaged over the consumers."""
    group = graph.groups[gname]
    seen = {}
    handles = [model.get_submodule(c.name).register_forward_pre_hook(
        lambda _m, args, j=j: seen.__setitem__(j, args[0].detach()))
        for j, c in enumerate(group.consumers)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    stats = {k: torch.zeros(group.size, dtype=torch.float64)
             for k in ("mean_abs", "apoz", "act_mean", "act_var")}
    for i in range(group.size):
        per = {k: [] for k in stats}
        for j, c in enumerate(group.consumers):
            a = seen[j]
            a = a.reshape(a.shape[0], -1, c.block) if c.block > 1 else a
            for p in (group.nodes[c.node].labels == i).nonzero().reshape(-1).tolist():
                v = a[:, p].reshape(-1)
                per["mean_abs"].append(v.abs().mean())
                per["apoz"].append((v == 0).double().mean())
                per["act_mean"].append(v.mean())
                per["act_var"].append(v.var(unbiased=False))
        for k in stats:
            stats[k][i] = torch.stack(per[k]).mean()
    stats["dormancy"] = stats["mean_abs"] / stats["mean_abs"].mean()
    return stats


@pytest.mark.parametrize("name, gname", [("stage", "stem.0"), ("stage", "body.2.branch2.0"),
                                         ("residual_concat", "stem.0"),
                                         ("basic_projection", "body.branch2.0")])
def test_dormancy_of_a_joined_group_from_the_consumers_inputs(name, gname):
    model = build(name, kernel=3)
    data, x, _ = batches()
    graph = trace(model, x[:1])
    assert graph.groups[gname].joined
    st = unit_statistics(model.eval(), graph, [gname], data, F.cross_entropy,
                         stats=["dormancy", "apoz", "act_mean", "act_var"])
    ref = consumer_reference(model, graph, gname, x)
    for k in ("dormancy", "apoz", "act_mean", "act_var"):
        assert (st[k][gname] - ref[k]).abs().max() <= 1e-10, k
    redo = Dormancy().score(model, data)[gname]
    apoz = Dormancy("apoz").score(model, data)[gname]
    assert (redo - ref["dormancy"]).abs().max() <= 1e-10
    assert (apoz - (1 - ref["apoz"])).abs().max() <= 1e-10


def test_group_output_statistics_from_the_members():
    """mean: the first member's; out_var: the largest member variance; grad_norm: the root of
    the summed member mean squares."""
    model = build("residual_concat", kernel=3)
    data, x, y = batches()
    graph = trace(model, x[:1])
    group = graph.groups["stem.0"]
    st = unit_statistics(model.eval(), graph, ["stem.0"], data, F.cross_entropy,
                         stats=["mean", "out_var", "grad_norm"])
    hs = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda _m, _i, o, m=m: hs.__setitem__(m, o)) for m in group.members]
    loss = F.cross_entropy(model(x), y, reduction="sum")
    for h in handles:
        h.remove()
    gs = dict(zip(group.members, torch.autograd.grad(loss, [hs[m] for m in group.members])))
    for i in range(group.size):
        owners = [(m, int(c)) for m in group.members
                  for c in (group.channels[m] == i).nonzero().reshape(-1)]
        m0, c0 = owners[0]
        assert abs(float(st["mean"]["stem.0"][i] - hs[m0][:, c0].detach().mean())) <= 1e-12
        var = max(float(hs[m][:, c].detach().var(unbiased=False)) for m, c in owners)
        assert abs(float(st["out_var"]["stem.0"][i]) - var) <= 1e-12
        sq = sum(float((gs[m][:, c] ** 2).sum()) for m, c in owners)
        assert abs(float(st["grad_norm"]["stem.0"][i]) - (sq / len(x)) ** 0.5) <= 1e-12


# --------------------------------------------------------------------------- dead units


def plant_constant_stream_channel(model, graph, gname: str, channel: int) -> None:
    """Every member's filter of ``channel`` is zero (the convolutions have no bias): every
    member outputs a constant 0 there, and the stream channel is constant."""
    with torch.no_grad():
        for m in graph.groups[gname].members:
            model.get_submodule(m).weight[channel] = 0.0


@pytest.mark.parametrize("name", ["basic_identity", "stage", "inverted_residual",
                                  "residual_concat"])
def test_find_dead_units_flags_a_constant_stream_channel_and_removal_is_exact(name):
    data, x, y = batches(n=12)
    model = build(name, kernel=1)
    graph = trace(model, x[:1])
    plant_constant_stream_channel(model, graph, "stem.0", 1)
    report = find_dead_units(model, data)
    assert report.members["stem.0"] == graph.groups["stem.0"].members
    assert report.num_units["stem.0"] == graph.groups["stem.0"].size
    assert bool(report.flags["constant"]["stem.0"][1])
    assert float(report.stats["out_var"]["stem.0"][1]) == 0.0
    assert float(report.stats["w_in_l1"]["stem.0"][1]) == 0.0
    summary = {r["layer"]: r for r in report.summary()}
    assert summary["stem.0"]["members"] == graph.groups["stem.0"].members
    assert "group stem.0: " in str(report)
    dead = report.dead()
    assert 1 in dead["stem.0"].tolist()
    before = copy.deepcopy(model)
    remove_units(model, dead, replacement="mean", data=data)
    with torch.no_grad():
        assert (model(x) - before(x)).abs().max() <= 1e-10
    assert model.get_submodule("stem.0").out_channels == graph.groups["stem.0"].size \
        - dead["stem.0"].numel()


def test_zero_outgoing_of_a_group_reads_every_consumer():
    data, x, _ = batches()
    model = build("residual_concat", kernel=1)
    graph = trace(model, x[:1])
    group = graph.groups["stem.0"]
    with torch.no_grad():
        for c in group.consumers:
            pos = (group.nodes[c.node].labels == 3).nonzero().reshape(-1)
            cols = (pos[:, None] * c.block + torch.arange(c.block)).reshape(-1)
            model.get_submodule(c.name).weight[:, cols] = 0.0
    report = find_dead_units(model, data, exact_mrp=True)
    assert report.flags["zero_outgoing"]["stem.0"].nonzero().reshape(-1).tolist() == [3]
    assert float(report.stats["mrp"]["stem.0"][3]) <= 1e-12  # nothing reaches the loss


# --------------------------------------------------------------------------- compare


def test_pruning_penalty_on_a_group_is_the_removal_loss():
    data, x, y = batches()
    model = build("stage", kernel=1)
    mrs = MRS().score(model, data)
    df = compare.pruning_penalty(model, {"mrs": mrs}, data, layer="stem.0",
                                 fractions=[0.25, 0.5])
    member = compare.pruning_penalty(model, {"mrs": mrs}, data, layer="body.1.branch2.0",
                                     fractions=[0.25, 0.5])
    assert df["loss_after"].tolist() == member["loss_after"].tolist()
    base = float(losses(model, x, y).mean())
    for (_, row), k in zip(df.iterrows(), (1, 2)):
        removed = copy.deepcopy(model)
        idx = torch.argsort(mrs["stem.0"], stable=True)[:k].tolist()
        remove_units(removed, {"stem.0": idx}, replacement="mean", data=data)
        assert row["n_pruned"] == k
        assert abs(row["loss_after"] - float(losses(removed, x, y).mean())) <= 1e-10
        assert abs(row["loss_before"] - base) <= 1e-12
    corr = compare.rank_correlations({"mrs": mrs, "mrp": MRP().score(model, data)})
    assert set(corr) >= {"global", "stem.0"}


def test_unit_tracker_follows_chains_and_refuses_residual_groups():
    from saliency import UnitTracker

    data, x, _ = batches()
    model = build("stage", kernel=1)
    with pytest.raises(ValueError, match="group of coupled channels"):
        UnitTracker(model, ["stem.0"], data)
    tracker = UnitTracker(model, {"body.0.branch1.0": [1, 2]}, data, histograms=())
    row = tracker.measure()["layers"]["body.0.branch1.0"]
    mrp = MRP(layers=["body.0.branch1.0"]).score(model, data)["body.0.branch1.0"]
    assert max(abs(a - float(b)) for a, b in zip(row["mrp"], mrp[[1, 2]])) <= 1e-10


# --------------------------------------------------------------------------- concatenation corners


class ReadTwice(nn.Module):
    """One consumer reads a producer twice: ``d(cat([y, tanh(y)]))``."""

    def __init__(self):
        super().__init__()
        self.a, self.d, self.fc = nn.Conv2d(2, 4, 1), nn.Conv2d(8, 3, 1), nn.Linear(3, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        z = F.relu(self.d(torch.cat([y, torch.tanh(y)], 1)))
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


class NormAfterCat(nn.Module):
    """A BatchNorm and a depthwise convolution over cat([a, b])."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 3, 1)
        self.bn, self.dw = nn.BatchNorm2d(7), nn.Conv2d(7, 7, 3, padding=1, groups=7)
        self.d, self.fc = nn.Conv2d(7, 3, 1), nn.Linear(3, 3)

    def forward(self, x):
        y = F.relu(self.dw(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.d(y)), 1).flatten(1))


def test_exact_mrp_adds_the_routes_of_a_consumer_that_reads_a_layer_twice():
    torch.manual_seed(0)
    model = ReadTwice().double().eval()
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
    mrp = MRP(absolute=False, reduction="mean").score(model, [(x, y)])["a"]
    base = F.cross_entropy(model(x), y)
    for i in range(4):
        removed = copy.deepcopy(model)
        remove_units(removed, {"a": [i]}, replacement="mean", data=[(x, y)])
        change = F.cross_entropy(removed(x), y) - base
        assert abs(float(mrp[i]) - float(change)) <= 1e-12


def test_activation_statistics_after_a_concatenation_with_per_channel_tensors():
    torch.manual_seed(0)
    model = randomize_bn(NormAfterCat().double()).eval()
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    seen = {}
    h = model.dw.register_forward_hook(lambda _m, _i, o: seen.__setitem__("a", F.relu(o)))
    with torch.no_grad():
        model(x)
    h.remove()
    act = seen["a"].abs().transpose(0, 1).reshape(7, -1).mean(1)  # E|a| per channel
    scores = Dormancy().score(model, [(x, torch.zeros(6, dtype=torch.long))])
    for name, sl in (("a", slice(0, 4)), ("b", slice(4, 7))):
        torch.testing.assert_close(scores[name], act[sl] / act[sl].mean(), rtol=1e-12, atol=0)
