"""Pruning methods on groups of coupled units: scheduled unit pruning, what a unit's removal
frees, ShrinkNets switches (insertion, folding, garbage collection), unit cleanup, and the
methods that work on chains only (learning-rate attacks on outgoing weights, tri-state ReLUs,
group sparsity) refusing residual groups by name.

Every check is against an independent reference in float64: brute-force selections of the
lowest scores written out here, the drop of ``count_params``/``count_macs`` when one unit
alone is removed, the masked twin trained step for step, the original model with forward
hooks multiplying each member's output by its group's gates, and weight counts by hand.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from coupled import COUPLED, INPUT, build

from pruners import (InexactReplacementWarning, LRAttack, UnitPruner, complexity_term,
                     count_macs, count_params, finalize_tristate, group_layout, insert_tristate,
                     mask_units, nonzero_fractions, remove_sparse_units, remove_units,
                     remove_zero_groups, trace)
from pruners.pruning import unit_costs
from pruners.shrinknets import (GarbageCollector, Threshold, fold_switches, insert_switches,
                                switches)
from pruners.tristate import tristates
from saliency.base import UnitScorer
from saliency.layers import effective_tensor
from saliency.switch import switch_of

TOL = 1e-10
RESIDUAL = ["basic_identity", "basic_projection", "bottleneck", "stage", "inverted_residual",
            "residual_concat"]


def inputs(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn((n,) + INPUT, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def labels(n: int = 6, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))


def frac_floor(f, n: int) -> int:
    return math.floor(Fraction(repr(f)) * n)


def row_l1(model: nn.Module, graph, group: str) -> torch.Tensor:
    """The reference score of every group channel: the L1 norm of its rows in every member."""
    g = graph.groups[group]
    out = torch.zeros(g.size, dtype=torch.float64)
    for m in g.members:
        w = effective_tensor(model.get_submodule(m), "weight").detach().to(torch.float64)
        out.index_add_(0, g.channels[m], w.reshape(w.shape[0], -1).abs().sum(1))
    return out


class RowL1(UnitScorer):
    """A data-free unit scorer keyed by group: :func:`row_l1` of every group."""

    needs_data = False

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        return {g: row_l1(model, graph, g) for g in layers}


def empties_a_member(group, removed: set[int]) -> bool:
    return any(set(group.channels[m].tolist()) <= removed for m in group.members)


@contextlib.contextmanager
def quiet():
    """Padded layers make some folds inexact at the borders (the twins agree anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactReplacementWarning)
        yield


# --------------------------------------------------------------------------- UnitPruner


def expected_layer_selection(group, scores: torch.Tensor, k: int) -> set[int]:
    """Brute force: the ``k`` lowest scores, no member emptied, a group kept; a grouped
    convolution's conv groups each lose ``k // groups`` (its readers keep two inputs each)."""
    if group.partitions:
        (conv, parts), = group.partitions.items()
        keep = 1 if conv in group.members else 2
        per = min(k // len(parts), min(int(p.numel()) for p in parts) - keep)
        return {int(c) for p in parts for c in sorted(p.tolist(), key=lambda c: scores[c])[:per]}
    chosen: set[int] = set()
    for c in sorted(range(group.size), key=lambda c: (float(scores[c]), c)):
        if len(chosen) == min(k, group.size - 1):
            break
        if not empties_a_member(group, chosen | {c}):
            chosen.add(c)
    return chosen


@pytest.mark.parametrize("name", list(COUPLED))
def test_layer_scope_prunes_each_group_as_the_schedule_asks(name):
    x, y = inputs(), labels()
    model = build(name, kernel=3)
    schedule = {1: 0.25, 2: 0.5}
    pruner = UnitPruner(RowL1(), schedule, replacement="mean")
    initial = {g: trace(model, x[:1]).groups[g].size for g in trace(model, x[:1]).prunable}
    gone = {g: 0 for g in initial}
    for t, f in schedule.items():
        graph = trace(model, x[:1])
        expected = {}
        for g in graph.prunable:
            k = frac_floor(f, initial[g]) - gone[g]
            expected[g] = expected_layer_selection(graph.groups[g], row_l1(model, graph, g), k)
        with quiet():
            report = pruner.step(t, model, data=[(x, y)])
        got = {g: set(report.removal.indices[g].tolist()) if g in report.removal.indices
               else set() for g in graph.prunable}
        assert got == expected, t
        for g in graph.prunable:
            gone[g] += len(expected[g])
            assert report.pruned[g] == len(expected[g])
            assert report.remaining[g] == initial[g] - gone[g]
            assert report.fraction[g] == pytest.approx(gone[g] / initial[g], abs=1e-15)
            if not graph.groups[g].partitions:  # exactly what the schedule asks
                assert gone[g] == frac_floor(f, initial[g]), (g, t)
    # the pruned model is what the graph says: the members lost their channels
    graph = trace(model, x[:1])
    for g in graph.prunable:
        assert graph.groups[g].size == initial[g] - gone[g]
        for m in graph.groups[g].members:
            assert model.get_submodule(m).weight.shape[0] >= 1


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_member_keeps_a_channel(scope):
    """residual_concat: x + cat(a(x), b(x)); a's two channels score lowest, yet one stays."""
    x = inputs()
    model = build("residual_concat", kernel=1)
    with torch.no_grad():
        model.get_submodule("body.a.0").weight.mul_(1e-3)
    graph = trace(model, x[:1])
    scores = row_l1(model, graph, "stem.0")
    order = sorted(range(6), key=lambda c: float(scores[c]))
    assert set(order[:2]) == {0, 1}  # the members' channels: a has 0-1, b has 2-5
    pruner = UnitPruner(RowL1(), 0.5, scope=scope, normalize=None, replacement=None,
                        layers=["stem.0"], example_input=x[:1])
    report = pruner.step(0, model)
    assert report.removal.indices["stem.0"].tolist() == sorted([order[0]] + order[2:4])
    assert model.get_submodule("body.a.0").out_channels == 1


def expected_global_selection(graph, scores, costs, k: int, gone: dict[str, set]) -> set:
    """Brute force over every live unit of every group: ascending score (per cost), a group
    keeps a unit, a member keeps a channel."""
    entries = []
    for gi, g in enumerate(graph.prunable):
        for c in range(graph.groups[g].size):
            if c not in gone[g]:
                entries.append((float(scores[g][c]) / float(costs[g][c]), gi, c, g))
    entries.sort()
    chosen = {g: set(gone[g]) for g in graph.prunable}
    taken = set()
    for _, _, c, g in entries:
        if len(taken) == k:
            break
        group = graph.groups[g]
        if len(chosen[g]) + 1 > group.size - 1 or empties_a_member(group, chosen[g] | {c}):
            continue
        chosen[g].add(c)
        taken.add((g, c))
    return taken


@pytest.mark.parametrize("name", ["stage", "inverted_residual", "residual_concat"])
def test_global_scope_ranks_each_group_once(name):
    x = inputs()
    model = build(name, kernel=3)
    schedule = {1: 0.3, 2: 0.7}
    pruner = UnitPruner(RowL1(), schedule, scope="global", normalize=None, remove=False,
                        replacement=None, example_input=x[:1])
    graph = trace(model, x[:1])
    total = sum(graph.groups[g].size for g in graph.prunable)
    gone = {g: set() for g in graph.prunable}
    ones = {g: torch.ones(graph.groups[g].size) for g in graph.prunable}
    for t, f in schedule.items():
        scores = {g: row_l1(model, graph, g) for g in graph.prunable}
        k = frac_floor(f, total) - sum(len(v) for v in gone.values())
        expected = expected_global_selection(graph, scores, ones, k, gone)
        report = pruner.step(t, model)
        got = {(g, int(c)) for g, idx in report.removal.indices.items() for c in idx}
        assert got == expected
        assert len(got) == k  # no constraint binds on these models at these fractions
        for g, c in got:
            gone[g].add(c)
        assert pruner.masked == {g: sorted(v) for g, v in gone.items() if v}


def test_layers_name_groups_by_any_member():
    x = inputs()
    model = build("stage", kernel=1)
    pruner = UnitPruner(RowL1(), 0.5, layers=["body.1.branch2.0", "stem.0", "body.0.branch1.0"],
                        replacement=None, example_input=x[:1])
    report = pruner.step(0, model)
    assert report.pruned == {"stem.0": 2, "body.0.branch1.0": 2}
    with pytest.raises(ValueError, match=r"unknown or non-prunable layers \['head.fc'\]"):
        UnitPruner(RowL1(), 0.5, layers=["head.fc"], example_input=x[:1]).step(0, model)


# --------------------------------------------------------------------------- costs


@functools.lru_cache(maxsize=None)
def brute_force_costs(name: str) -> dict[str, dict[str, list[int]]]:
    """The drop of count_params and count_macs when each unit alone is removed."""
    x = inputs(1)
    model = build(name, kernel=3)
    graph = trace(model, x)
    params, macs = count_params(model), count_macs(model, x)
    out: dict[str, dict[str, list[int]]] = {"params": {}, "macs": {}}
    for g in graph.prunable:
        out["params"][g], out["macs"][g] = [], []
        for c in range(graph.groups[g].size):
            shrunk = copy.deepcopy(model)
            remove_units(shrunk, {g: [c]}, example_input=x)
            out["params"][g].append(params - count_params(shrunk))
            out["macs"][g].append(macs - count_macs(shrunk, x))
    return out


@pytest.mark.parametrize("kind", ["params", "macs"])
@pytest.mark.parametrize("name", ["stage", "inverted_residual"])
def test_the_cost_of_a_unit_is_the_drop_when_it_alone_is_removed(name, kind):
    x = inputs(1)
    model = build(name, kernel=3)
    costs = unit_costs(model, x, cost=kind)
    reference = brute_force_costs(name)[kind]
    assert set(costs) == set(reference)
    for g, values in reference.items():
        assert costs[g].dtype == torch.float64
        assert costs[g].tolist() == [float(v) for v in values], g
    # a channel of the residual stream frees far more than one inside a block
    stream, inner = ("stem.0", "body.0.branch1.0") if name == "stage" else \
        ("stem.0", "body.0.expand.0")
    assert float(costs[stream].min()) > 2 * float(costs[inner].max())


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_masked_entries_are_not_counted_so_a_masked_twin_costs_as_its_shrunk_model(kind):
    x = inputs(1)
    removed, masked = build("stage", kernel=3), build("stage", kernel=3)
    units = {"stem.0": [1], "body.2.branch2.0": [0, 4], "body.0.branch1.0": [2]}
    remove_units(removed, units, example_input=x)
    mask_units(masked, units, example_input=x)
    shrunk, twin = unit_costs(removed, x, cost=kind), unit_costs(masked, x, cost=kind)
    for g, values in twin.items():
        live = [c for c in range(values.numel()) if c not in units.get(g, [])]
        assert values[live].tolist() == shrunk[g].tolist(), g


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_cost_weighted_global_ranking_divides_each_score_by_its_cost(kind):
    x = inputs(1)
    model = build("stage", kernel=3)
    graph = trace(model, x)
    scores = {g: row_l1(model, graph, g) for g in graph.prunable}
    costs = {g: torch.tensor(v, dtype=torch.float64)
             for g, v in brute_force_costs("stage")[kind].items()}
    total = sum(graph.groups[g].size for g in graph.prunable)
    k = frac_floor(0.4, total)
    expected = expected_global_selection(graph, scores, costs, k, {g: set() for g in scores})
    pruner = UnitPruner(RowL1(), 0.4, scope="global", normalize=None, cost=kind,
                        replacement=None, example_input=x)
    report = pruner.step(0, model)
    got = {(g, int(c)) for g, idx in report.removal.indices.items() for c in idx}
    assert got == expected and len(got) == k
    plain = UnitPruner(RowL1(), 0.4, scope="global", normalize=None, replacement=None,
                       example_input=x).step(0, build("stage", kernel=3))
    unweighted = {(g, int(c)) for g, idx in plain.removal.indices.items() for c in idx}
    assert unweighted != got  # the stream's expensive channels go first once weighted
    assert sum(1 for g, _ in got if g == "stem.0") > sum(1 for g, _ in unweighted
                                                          if g == "stem.0")


# --------------------------------------------------------------------------- grouped convolutions


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_grouped_convolution_stays_balanced_across_rounds(scope):
    x, y = inputs(), labels()
    removed, masked = build("grouped", kernel=3), build("grouped", kernel=3)
    schedule = {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.9}
    pruners = [UnitPruner(RowL1(), schedule, scope=scope, replacement="mean", remove=r)
               for r in (True, False)]
    conv = removed.get_submodule("body.grouped.0")
    for t in schedule:
        parts = {g: trace(removed, x[:1]).groups[g].partitions for g in
                 ("body.inner.0", "body.grouped.0")}
        with quiet():
            reports = [p.step(t, m, data=[(x, y)]) for p, m in zip(pruners, (removed, masked))]
        for g, partition in parts.items():
            idx = reports[0].removal.indices.get(g, torch.empty(0, dtype=torch.long))
            for chans in partition.values():  # the same count from each conv group
                assert len({int(torch.isin(p, idx).sum()) for p in chans}) == 1, (t, g)
        assert reports[0].pruned == reports[1].pruned
        # still a grouped convolution (two inputs per conv group at least), balanced
        assert conv.groups == 2 and conv.in_channels // conv.groups >= 2
        assert conv.in_channels % 2 == 0 and conv.out_channels % 2 == 0
        with torch.no_grad():
            assert (removed(x) - masked(x)).abs().max() <= TOL
    # the masked twin's masks are balanced too, in the original numbering
    for g in ("body.inner.0", "body.grouped.0"):
        gone = torch.tensor(pruners[1].masked[g])
        assert torch.isin(gone, torch.arange(4)).sum() == torch.isin(gone, torch.arange(4, 8)).sum()
    assert pruners[0].history[-1].remaining["body.grouped.0"] == 2  # 0.9 of 8, in whole steps


# --------------------------------------------------------------------------- the masked twin


def lockstep(nets, opts, x, y) -> None:
    """One training step of the pruned network and of its masked twin on the same batch; their
    losses agree (<= 1e-9)."""
    losses = []
    for net, opt in zip(nets, opts):
        net.train()
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert abs(losses[0] - losses[1]) <= 1e-9


def test_removal_equals_the_masked_twin_step_for_step_while_training():
    x, y = inputs(16), labels(16)
    nets = [build("stage", kernel=3), build("stage", kernel=3)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
            for n in nets]
    schedule = {1: 0.2, 2: 0.35, 3: 0.5}
    pruners = [UnitPruner(RowL1(), schedule, scope="global", cost="macs", replacement="mean",
                          remove=r) for r in (True, False)]
    alive = {g: list(range(trace(nets[0], x[:1]).groups[g].size))
             for g in trace(nets[0], x[:1]).prunable}  # original numbering, physical model
    for t in schedule:
        for _ in range(3):
            lockstep(nets, opts, x, y)
        with quiet():
            reports = [p.step(t, n, o, data=[(x, y)]) for p, n, o in zip(pruners, nets, opts)]
        assert reports[0].pruned == reports[1].pruned and sum(reports[0].pruned.values()) > 0
        assert reports[0].loss_after == pytest.approx(reports[1].loss_after, abs=1e-9)
        for g, idx in reports[0].removal.indices.items():
            original = [alive[g][i] for i in idx.tolist()]
            assert original == reports[1].removal.indices[g].tolist()
            alive[g] = [c for c in alive[g] if c not in original]
    for net in nets:
        net.eval()
    with torch.no_grad():
        assert (nets[0](x) - nets[1](x)).abs().max() <= 1e-9
    assert count_macs(nets[0], x[:1]) < count_macs(nets[1], x[:1])  # masks keep dense MACs


# --------------------------------------------------------------------------- ShrinkNets


def after(model: nn.Module, member: str) -> str:
    """The module a switch follows: the member's BatchNorm when one follows it, else it."""
    parent, _, idx = member.rpartition(".")
    if idx.isdigit():
        nxt = dict(model.named_modules()).get(f"{parent}.{int(idx) + 1}")
        if isinstance(nxt, nn.BatchNorm2d):
            return f"{parent}.{int(idx) + 1}"
    return member


def gated_reference(model: nn.Module, switched, x: torch.Tensor) -> nn.Module:
    """The original model with forward hooks multiplying channel ``o`` of each member (after
    its BatchNorm) by the gate of its group channel: what one switch per group means."""
    ref = copy.deepcopy(model)
    graph = trace(model, x[:1])
    for g in graph.prunable:
        gate = switched.switches[g.replace(".", "_")].effective_gate().detach()
        for m in graph.groups[g].members:
            scale = gate[graph.groups[g].channels[m]].reshape(1, -1, 1, 1)
            ref.get_submodule(after(model, m)).register_forward_hook(
                lambda _m, _i, out, scale=scale: out * scale)
    return ref


@pytest.mark.parametrize("name", list(COUPLED))
def test_one_switch_per_group_gates_every_member(name):
    x = inputs()
    model = build(name, kernel=3)
    switched = insert_switches(model, x[:1]).eval()
    graph, check = trace(model, x[:1]), trace(switched, x[:1])
    assert sorted(switches(switched)) == sorted(f"switches.{g.replace('.', '_')}"
                                                for g in graph.prunable)
    calls = {}
    for node in switched.graph.nodes:
        if node.op == "call_module" and node.target.startswith("switches."):
            calls[node.target] = calls.get(node.target, 0) + 1
    for g in graph.prunable:
        key = f"switches.{g.replace('.', '_')}"
        assert switched.get_submodule(key).num_channels == graph.groups[g].size
        assert switch_of(switched, check, g)[0] == key  # on the group's region
        members = len(graph.groups[g].members)
        assert calls[key] == (2 if name == "residual_concat" and g == "stem.0" else members)
    with torch.no_grad():
        assert (switched(x) - gated_reference(model, switched, x)(x)).abs().max() <= TOL
    with pytest.raises(ValueError, match="already has a switch"):
        insert_switches(switched, x[:1], layers=[graph.prunable[0]])


@pytest.mark.parametrize("parametrization, init", [("signed", "normal"), ("relu", "uniform")])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("name", list(COUPLED))
def test_fold_switches_is_exact_on_groups_and_chains(name, kernel, parametrization, init):
    x = inputs()
    switched = insert_switches(build(name, kernel), x[:1], parametrization=parametrization,
                               init=init).eval()
    if parametrization == "signed":
        assert any(bool((s.weight < 0).any()) for s in switches(switched).values())
    plain = fold_switches(switched, x[:1])
    assert switches(plain) == {}
    with torch.no_grad():
        assert (plain(x) - switched(x)).abs().max() <= TOL
    assert count_params(plain) == count_params(build(name, kernel))


def test_insert_switches_names_groups_by_any_member():
    x = inputs(1)
    switched = insert_switches(build("stage", 1), x, layers=["body.1.branch2.0"])
    assert list(switches(switched)) == ["switches.stem_0"]


def _trained_switched(name: str, x, y, steps: int = 3):
    """A switched model and its masked twin, trained a few steps with Adam (state to slice)."""
    torch.manual_seed(0)
    nets = [insert_switches(build(name, kernel=1), x[:1])]
    nets.append(copy.deepcopy(nets[0]))
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in nets]
    for _ in range(steps):
        for net, opt in zip(nets, opts):
            net.train()
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return nets, opts


def test_garbage_collection_removes_dead_group_channels_and_keeps_the_optimizer_state():
    x, y = inputs(16), labels(16)
    nets, opts = _trained_switched("stage", x, y)
    dead = {"stem_0": [1], "body_2_branch2_0": [0, 4], "body_0_branch1_0": [2]}
    for net in nets:
        with torch.no_grad():
            for key, idx in dead.items():
                net.switches[key].weight[idx] = 0.0
        net.eval()
    with torch.no_grad():
        before = nets[0](x)
    state = opts[0].state[nets[0].switches["stem_0"].weight]["exp_avg"].clone()
    rows = opts[0].state[nets[0].get_submodule("body.1.branch2.0").weight]["exp_avg_sq"].clone()
    collectors = [GarbageCollector(Threshold(0.0), remove=r, example_input=x[:1])
                  for r in (True, False)]
    reports = [c.step(0, n, o) for c, n, o in zip(collectors, nets, opts)]
    assert reports[0].pruned == reports[1].pruned == {"stem.0": 1, "body.0.branch1.0": 1,
                                                      "body.2.branch2.0": 2}
    with torch.no_grad():
        assert (nets[0](x) - before).abs().max() <= TOL  # a gate at 0: removal is exact
        assert (nets[1](x) - before).abs().max() <= TOL
    for m in ("stem.0", "body.0.branch2.0", "body.1.branch2.0"):  # every member lost it
        assert nets[0].get_submodule(m).weight.shape[0] == 3
    keep = [0, 2, 3]
    assert torch.equal(opts[0].state[nets[0].switches["stem_0"].weight]["exp_avg"], state[keep])
    assert torch.equal(opts[0].state[nets[0].get_submodule("body.1.branch2.0").weight]
                       ["exp_avg_sq"], rows[keep])
    for _ in range(5):  # training goes on with the same optimizer, as the masked twin does
        lockstep(nets, opts, x, y)


def test_garbage_collection_keeps_grouped_convolutions_balanced_and_members_alive():
    x, y = inputs(8), labels(8)
    nets, opts = _trained_switched("grouped", x, y, steps=1)
    with torch.no_grad():  # three weak gates in conv group 0, one in conv group 1
        nets[0].switches["body_grouped_0"].weight[[0, 1, 2, 5]] = torch.tensor(
            [2e-4, 1e-4, 3e-4, 5e-4], dtype=torch.float64)
    report = GarbageCollector(Threshold(1e-3), example_input=x[:1]).step(0, nets[0], opts[0])
    assert {g: i.tolist() for g, i in report.removal.indices.items()} == \
        {"body.grouped.0": [1, 5]}  # the weakest of each conv group
    assert nets[0].get_submodule("body.grouped.0").out_channels == 6
    # residual_concat: every gate of member body.a.0 dead, yet it keeps a channel
    nets, opts = _trained_switched("residual_concat", x, y, steps=1)
    with torch.no_grad():
        nets[0].switches["stem_0"].weight[[0, 1]] = 0.0
        before = nets[0].eval()(x)
    report = GarbageCollector(Threshold(0.0), example_input=x[:1]).step(0, nets[0], opts[0])
    assert {g: i.tolist() for g, i in report.removal.indices.items()} == {"stem.0": [0]}
    assert nets[0].get_submodule("body.a.0").out_channels == 1
    with torch.no_grad():
        assert (nets[0](x) - before).abs().max() <= TOL


# --------------------------------------------------------------------------- cleanup


def test_nonzero_fractions_of_a_residual_group_count_every_member_and_reader():
    x = inputs(1)
    model = build("stage", kernel=3)
    with torch.no_grad():
        model.get_submodule("body.0.branch2.0").weight[1, :2] = 0.0
        model.get_submodule("body.2.shortcut.0").weight[:, 3] = 0.0
    graph = trace(model, x)
    fractions = nonzero_fractions(model, example_input=x)
    for g in ("stem.0", "body.2.branch2.0"):
        group = graph.groups[g]
        inc, out = fractions[g]
        for c in range(group.size):
            nz = total = 0
            for m in group.members:
                w = model.get_submodule(m).weight
                nz += int((w[c] != 0).sum())
                total += w[c].numel()
            assert inc[c] == nz / total
            nz = total = 0
            for reader in {r.name for r in group.consumers}:
                w = model.get_submodule(reader).weight
                cols = w[:, c] if reader != "head.fc" else w[:, c * 16:(c + 1) * 16]
                nz += int((cols != 0).sum())
                total += cols.numel()
            assert out[c] == nz / total, (g, c)


def test_sparse_stream_channels_are_removed_exactly():
    x = inputs()
    model = build("stage", kernel=1)
    graph = trace(model, x[:1])
    with torch.no_grad():
        for m in graph.groups["stem.0"].members:  # no incoming weight: a sum of constants
            model.get_submodule(m).weight[2] = 0.0
        for reader in ("body.3.branch1.0", "head.fc"):  # nobody reads channel 3
            w = model.get_submodule(reader).weight
            if reader == "head.fc":
                w[:, 3 * 16:4 * 16] = 0.0
            else:
                w[:, 3] = 0.0
        before = model(x)
    report = remove_sparse_units(model, 0.0, example_input=x[:1])
    assert {g: i.tolist() for g, i in report.indices.items()} == {"stem.0": [2],
                                                                  "body.2.branch2.0": [3]}
    assert report.inexact == []
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= TOL


class CatFirst(nn.Module):
    """cat(a(x), b(x)) + c(x): the group's first member, a, holds only channels 0-1."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 4, 1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.out(F.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x)))


def test_each_member_is_held_at_its_own_bias():
    torch.manual_seed(0)
    model = CatFirst().double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():  # channel 3 = bias of b's channel 1 + bias of c's channel 3
        model.b.weight[1] = 0.0
        model.c.weight[3] = 0.0
        before = model(x)
    biases = (float(model.b.bias[1].detach()), float(model.c.bias[3].detach()))
    report = remove_sparse_units(model, 0.0, example_input=x[:1])
    assert {g: i.tolist() for g, i in report.indices.items()} == {"a": [3]}
    assert report.member_indices["a"].tolist() == []
    assert (report.constants["b"].tolist(), report.constants["c"].tolist()) == \
        ([biases[0]], [biases[1]])
    assert (model.a.out_channels, model.b.out_channels, model.c.out_channels) == (2, 1, 3)
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= TOL


# --------------------------------------------------------------------------- chain-only methods


def test_attacking_outgoing_weights_of_a_residual_member_is_refused():
    x = inputs(1)
    model = build("stage", kernel=1)
    with pytest.raises(ValueError, match=r"layer 'body.0.branch2.0' belongs to the residual "
                                         r"group 'stem.0' \(stem.0, body.0.branch2.0, "
                                         r"body.1.branch2.0\).*outgoing=False"):
        LRAttack(model, {"body.0.branch2.0": [0]}, 10.0, start=0, outgoing=True,
                 example_input=x)
    incoming = LRAttack(model, {"body.0.branch2.0": [0]}, 10.0, start=0, example_input=x)
    assert incoming.parameters() == {"body.0.branch2.0.weight": 4 * 1 * 1}
    chain = LRAttack(model, {"body.0.branch1.0": [0]}, 10.0, start=0, outgoing=True,
                     bias=False, example_input=x)
    assert chain.parameters() == {"body.0.branch1.0.weight": 4, "body.0.branch2.0.weight": 4}


def test_tri_state_relus_gate_chains_and_refuse_residual_groups():
    x = inputs()
    model = build("stage", kernel=1)
    gated = insert_tristate(model, x[:1])
    chains = ["body.0.branch1.0", "body.1.branch1.0", "body.2.branch1.0", "body.3.branch1.0"]
    assert sorted(tristates(gated)) == sorted(f"tristate.{n.replace('.', '_')}" for n in chains)
    with torch.no_grad():
        assert (gated(x) - model(x)).abs().max() <= TOL
    with pytest.raises(ValueError, match=r"layer 'body.0.branch2.0' belongs to the residual "
                                         r"group 'stem.0'"):
        insert_tristate(model, x[:1], layers=["body.0.branch2.0"])
    # the complexity term counts every weight of the network, a stream read once per reader
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d,
                                                                              nn.Linear)))
    assert float(complexity_term(gated, x[:1], normalize=False, depth_weight=0.0).detach()) \
        == weights
    with torch.no_grad():
        gated.tristate["body_0_branch1_0"].width.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]))
        reference = gated(x)
    plain, report = finalize_tristate(gated, x[:1])
    assert report.removed == {"body.0.branch1.0": 1}
    assert plain.get_submodule("body.0.branch1.0").out_channels == 3
    with torch.no_grad():
        assert (plain(x) - reference).abs().max() <= TOL


def test_group_sparsity_works_on_chains_and_refuses_residual_groups():
    x = inputs()
    model = build("stage", kernel=1)
    layout = group_layout(model, example_input=x[:1])
    assert list(layout) == ["body.0.branch1.0", "body.1.branch1.0", "body.2.branch1.0",
                            "body.3.branch1.0"]
    with torch.no_grad():
        model.get_submodule("body.1.branch1.0").weight[2] = 0.0
        before = model(x)
    report = remove_zero_groups(model, example_input=x[:1])
    assert {g: i.tolist() for g, i in report.indices.items()} == {"body.1.branch1.0": [2]}
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= TOL
    with torch.no_grad():
        model.get_submodule("body.0.branch2.0").weight[1] = 0.0
        model.get_submodule("body.0.branch1.0").weight[:, 2] = 0.0
    with pytest.raises(ValueError, match=r"layer 'body.0.branch2.0': its zero unit groups cannot "
                                         r"be removed: the residual group 'stem.0'"):
        remove_zero_groups(model, {"body.0.branch2.0": "units"}, example_input=x[:1])
    with pytest.raises(ValueError, match=r"layer 'body.0.branch1.0': its zero input groups "
                                         r"cannot be removed: the residual group 'stem.0'"):
        remove_zero_groups(model, {"body.0.branch1.0": "in_channels"}, example_input=x[:1])


class SummedPieces(nn.Module):
    """s + cat(a(s) + c(s), b(s)): a and c hold channels 0-1 of the stream and are summed
    before the concatenation completes them, so no place sees every channel once per member."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.a, self.c, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        return self.out(F.relu(s + torch.cat([self.a(s) + self.c(s), self.b(s)], 1)))


def test_a_group_without_a_place_for_its_switch_is_refused_by_name():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    model = SummedPieces().double()
    assert trace(model, x).groups["stem"].members == ["stem", "a", "c", "b"]
    with pytest.raises(ValueError, match=r"group 'stem' \(stem, a, c, b\): layer 'a' outputs "
                                         r"channels \[0, 1\] of the group's 4.*one switch per "
                                         r"group cannot be placed"):
        insert_switches(model, x)
    assert list(switches(insert_switches(model, x, layers=[]))) == []


class OneReLUBlock(nn.Module):
    """A block with one ReLU module, called after its first layer and after the residual add
    (as torchvision's BasicBlock)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def test_a_relu_module_called_twice_is_gated_at_the_chains_call_only():
    from zoo import randomize_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), OneReLUBlock(4),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    model = randomize_bn(model, torch.Generator().manual_seed(0)).eval()
    x = inputs()
    gated = insert_tristate(model, x[:1])
    assert list(tristates(gated)) == ["tristate.3_conv1"]
    calls = [n.target for n in gated.graph.nodes if n.op == "call_module"]
    assert calls.count("3.relu") == 1 and calls.count("tristate.3_conv1") == 1
    with torch.no_grad():
        assert (gated(x) - model(x)).abs().max() <= TOL
        gated.tristate["3_conv1"].width.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0]))
        reference = gated(x)
    plain, report = finalize_tristate(gated, x[:1])
    assert report.removed == {"3.conv1": 1}
    with torch.no_grad():
        assert (plain(x) - reference).abs().max() <= TOL


# --------------------------------------------------------------------------- grouped consumers


class IntoGrouped(nn.Module):
    """A chain read by a grouped convolution (2 groups): its channel p reaches only the rows
    of p's conv group, through column p mod 4."""

    def __init__(self):
        super().__init__()
        self.inner, self.g, self.fc = nn.Conv2d(2, 8, 1), nn.Conv2d(8, 8, 1, groups=2), \
            nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.g(F.relu(self.inner(x)))), 1)
                       .flatten(1))


def test_chain_tools_read_a_grouped_consumer_by_its_conv_groups():
    from pruners import nonzero_fractions

    torch.manual_seed(0)
    model = IntoGrouped().double().eval()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        model.g.weight[4:, 1] = 0.0  # inner's channel 5 reaches rows 4-7 through column 1
    incoming, outgoing = nonzero_fractions(model, example_input=x[:1])["inner"]
    assert outgoing.tolist() == [1.0] * 5 + [0.0] + [1.0] * 2
    attack = LRAttack(model, {"inner": [1]}, 10.0, start=0, outgoing=True, example_input=x[:1])
    slot = next(s for s in attack._slots if s.mname == "g")
    assert slot.mask[:, :, 0, 0].nonzero().tolist() == [[r, 1] for r in range(4)]


def test_a_switch_before_a_grouped_consumer_folds_exactly():
    torch.manual_seed(0)
    model = IntoGrouped().double().eval()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    switched = insert_switches(model, x[:1], layers=["inner"], parametrization="signed")
    with torch.no_grad():
        next(iter(switches(switched).values())).weight.copy_(
            torch.linspace(-1.0, 1.5, 8, dtype=torch.float64))
        expected = switched(x)
    folded = fold_switches(switched, x[:1])
    with torch.no_grad():
        assert (folded(x) - expected).abs().max() <= 1e-12
