"""Regressions for defects found in review: each case is refused or exact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers_snapshot import assert_unchanged, take
from pruners import (UnsupportedArchitecture, count_params, mask_units, remove_units, trace)
from pruners.optim_state import Journal, slice_param


def held(model, layer, idx, value):
    """Reference: a copy whose unit outputs are overwritten by a forward hook."""
    ref = copy.deepcopy(model)
    ref.get_submodule(layer).register_forward_hook(
        lambda m, i, o: o.index_fill(1, torch.tensor(idx), value))
    return ref


def test_training_continues_while_an_old_graph_is_alive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    w = net[0].weight
    losses = []
    for step in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)  # `loss` keeps the previous graph alive
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            remove_units(net, {"0": [2]}, optimizer=opt)
    assert net[0].weight is w and w.shape == (7, 4)
    assert opt.state[w]["momentum_buffer"].shape == (7, 4)
    assert losses[-1] < losses[1]


def test_masked_model_shrinks_after_a_forward_pass():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    mask_units(net, {"0": [1, 2]})
    net(x).sum().backward()  # builds a graph through the prune hooks
    remove_units(net, {"0": [1, 2]})
    net(x).sum().backward()
    assert net[0].weight_orig.grad.shape == (6, 4)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(4, 8), nn.MaxPool1d(2), nn.Linear(4, 2)),  # maxout
    lambda: nn.Sequential(nn.Linear(4, 8), nn.AdaptiveAvgPool1d(4), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6, 2)),
])
def test_pooling_across_channels_is_refused(make):
    model = make()
    x = torch.randn(3, 4) if isinstance(model[0], nn.Linear) else torch.randn(3, 2, 8)
    with pytest.raises(UnsupportedArchitecture, match="per channel|channel dimensions"):
        trace(model, x)


class InplaceAlias(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(4, 6), nn.Linear(6, 2), how
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.a(x)
        if self.how == "function":
            F.relu(h, inplace=True)
        elif self.how == "method":
            h.relu_()
        else:
            self.act(h)
        return self.b(h)


@pytest.mark.parametrize("how", ["function", "method", "module"])
def test_inplace_op_on_an_aliased_tensor_is_refused(how):
    with pytest.raises(UnsupportedArchitecture, match="in place"):
        trace(InplaceAlias(how))


def test_inplace_op_that_is_the_only_user_is_fine():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    ref = held(net, "0", [0], -1.0)
    remove_units(net, {"0": [0]}, replacement=-1.0)
    with torch.no_grad():
        assert (net(x) - ref(x)).abs().max() <= 1e-12  # relu(-1) = 0 folded, not -1


def test_tied_weights_are_refused_and_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    m = Tied()
    assert count_params(m) == 64 + 8 + 8 + 16 + 2
    with pytest.raises(UnsupportedArchitecture, match="shares a parameter"):
        trace(m)


def test_functionally_read_weight_is_refused():
    class FT(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x):
            return F.linear(self.b(torch.relu(self.a(x))), self.a.weight)

    m = FT()
    before = take(m, None)
    with pytest.raises(UnsupportedArchitecture, match="read directly"):
        remove_units(m, {"a": [0]}, exclude=["b"])
    assert_unchanged(before, m, None)


def test_fixed_size_view_is_refused():
    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.f1, self.f2 = nn.Linear(400, 120), nn.Linear(120, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c1(x)), 2)
            x = F.max_pool2d(F.relu(self.c2(x)), 2)
            return self.f2(F.relu(self.f1(x.view(-1, 16 * 5 * 5))))

    with pytest.raises(UnsupportedArchitecture, match="fixed size 400"):
        trace(LeNet(), torch.randn(1, 1, 32, 32))


def test_batchnorm_called_twice_is_refused():
    class S(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.a, self.b = nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.bn(self.a(self.bn(x)))))

    m = S()
    before = take(m, None)
    with pytest.raises(UnsupportedArchitecture, match="called 2 times"):
        remove_units(m, {"a": [0]})
    assert_unchanged(before, m, None)


@pytest.mark.parametrize("pool", [
    lambda: nn.AvgPool2d(2, divisor_override=1),
    lambda: nn.AvgPool2d((2, 3), divisor_override=4),
    "function",
])
def test_avg_pool_divisor_override_scales_the_constant(pool):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 3, 1)
            self.pool = pool() if callable(pool) else None

        def forward(self, x):
            h = torch.relu(self.c1(x))
            h = self.pool(h) if self.pool is not None else F.avg_pool2d(h, 2,
                                                                        divisor_override=3)
            return self.c2(h)

    torch.manual_seed(0)
    m = Net().double()
    x = torch.randn(4, 1, 9, 9, dtype=torch.float64)
    ref = held(m, "c1", [0], 0.7)
    report = remove_units(m, {"c1": [0]}, replacement=0.7, example_input=x)
    assert report.inexact == []
    with torch.no_grad():
        assert (m(x) - ref(x)).abs().max() <= 1e-12


def test_example_input_batch_is_used_as_given():
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(),
                      nn.Linear(8, 3))
    report = remove_units(m, {"0": [1]}, example_input=torch.randn(16, 4))
    assert report.macs_after == 4 * 7 + 7 * 3


def test_generator_indices_with_tensor_replacement():
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    report = remove_units(m, {"0": (i for i in (5, 2))},
                          replacement=torch.tensor([0.5, -0.5], dtype=torch.float64))
    assert report.indices["0"].tolist() == [2, 5]
    assert report.constants["0"].tolist() == [-0.5, 0.5]


def test_journal_rolls_back_a_slice_with_optimizer_state():
    p = nn.Parameter(torch.arange(12.0).reshape(3, 4))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3, 4)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    journal = Journal()
    slice_param(p, 0, torch.tensor([0, 2]), opt, journal)
    assert p.shape == (2, 4) and opt.state[p]["exp_avg"].shape == (2, 4)
    journal.rollback()
    assert p.shape == (3, 4) and p.grad.shape == (3, 4)
    for k, v in state.items():
        assert torch.equal(opt.state[p][k], v)


@pytest.mark.parametrize("fn", [remove_units, mask_units])
def test_failure_after_mutation_is_rolled_back(fn, monkeypatch):
    """If the shrunk model fails its check run, every change is undone."""
    import pruners.surgery as surgery

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(8, 4)
    opt = torch.optim.Adam(model.parameters())
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()
    mask_units(model, {"3": [4]})  # an existing prune mask must survive the rollback too
    before = take(model, opt)
    calls = {"n": 0}
    real = surgery.count_macs

    def failing(m, ex):
        calls["n"] += 1
        if calls["n"] == 2:  # the check run after the mutation
            raise RuntimeError("simulated failure")
        return real(m, ex)

    monkeypatch.setattr(surgery, "count_macs", failing)
    with pytest.raises(RuntimeError, match="undone.*simulated failure"):
        fn(model, {"0": [1, 3], "3": [0]}, replacement="zero", data=[(x, None)], optimizer=opt)
    assert_unchanged(before, model, opt)
