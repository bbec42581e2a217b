"""The graph of units: producers, per-channel paths, consumers and channel maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from zoo import build

from pruners import UnsupportedArchitecture, count_macs, count_params, remove_units, trace


def path_kinds(edge):
    return [op.describe() for op in edge.path]


def test_cnn_graph_channel_maps():
    model, shape = build("cnn")
    g = trace(model, torch.zeros((1,) + shape, dtype=torch.float64))
    assert g.prunable == ["conv1", "conv2", "fc1"]
    (e1,) = g.producers["conv1"].edges
    assert (e1.consumer, e1.block) == ("conv2", 1)
    assert path_kinds(e1) == ["module:bn1", "function:relu", "module:pool"]
    assert g.producers["conv1"].channel_modules == ["bn1"]
    (e2,) = g.producers["conv2"].edges
    assert (e2.consumer, e2.block) == ("fc1", 9)  # 3x3 map flattened
    assert e2.columns(torch.tensor([0, 2])).tolist() == list(range(9)) + list(range(18, 27))
    assert not g.producers["fc2"].prunable
    assert "output" in g.producers["fc2"].reason
    assert [g.producers[n].num_units for n in g.producers] == [4, 5, 6, 4]


def test_functional_ops_and_scalar_arithmetic_are_per_channel():
    model, shape = build("functional")
    g = trace(model)
    assert g.prunable == ["a", "b", "c"]
    assert path_kinds(g.producers["a"].edges[0]) == ["function:leaky_relu", "function:mul"]
    assert path_kinds(g.producers["b"].edges[0]) == ["method:sigmoid", "function:add"]
    assert path_kinds(g.producers["c"].edges[0]) == ["function:tanh", "function:dropout"]


def test_view_flatten_and_conv1d():
    model, shape = build("nobias")
    g = trace(model, torch.zeros((1,) + shape, dtype=torch.float64))
    assert g.producers["conv2"].edges[0].block == 4  # x.view(B, -1) of a 2x2 map
    model, shape = build("conv1d")
    g = trace(model, torch.zeros((1,) + shape, dtype=torch.float64))
    assert g.producers["c2"].edges[0].block == 2  # adaptive pool to 2, torch.flatten
    assert g.producers["c1"].channel_modules == ["bn"]


def test_fan_out_to_two_heads():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.head_a = nn.Linear(6, 2)
            self.head_b = nn.Linear(6, 3)

        def forward(self, x):
            h = F.relu(self.body(x))
            return self.head_a(h), torch.sigmoid(self.head_b(h))

    g = trace(TwoHeads())
    assert sorted(e.consumer for e in g.producers["body"].edges) == ["head_a", "head_b"]
    assert g.prunable == ["body"]


def test_exclude_makes_a_layer_non_prunable():
    model, shape = build("mlp")
    g = trace(model, exclude=["fc1"])
    assert g.prunable == ["fc2"]
    assert g.producers["fc1"].reason == "excluded by the caller"


def test_trace_leaves_model_untouched():
    model, shape = build("cnn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model, torch.randn((4,) + shape, dtype=torch.float64))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_params_and_macs_by_hand():
    model, shape = build("cnn")
    # conv1 1*4*9+4, bn1 2*4, conv2 4*5*9+5, fc1 45*6+6, fc2 6*4+4
    assert count_params(model) == 40 + 8 + 185 + 276 + 28
    x = torch.zeros((3,) + shape, dtype=torch.float64)
    assert count_macs(model, x) == 4 * 100 * 9 + 5 * 9 * 4 * 9 + 45 * 6 + 6 * 4


# --------------------------------------------------------------------------- refusals
# graphs that the per-channel model of units cannot represent exactly are refused


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
