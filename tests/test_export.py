"""The graph of units from torch.export: the same graph as the torch.fx route on every model
both can trace, and a model torch.fx cannot trace pruned exactly through it."""

from __future__ import annotations

import copy

import pytest
import test_heads
import test_tokens
import torch
import torch.nn.functional as F
from torch import nn
from zoo import ARCHS, build

from pruners import mask_units, remove_units, trace
from saliency import MRS, UnsupportedArchitecture
from saliency.export import exported_graph
from saliency.unit_stats import is_chain


def signature(graph) -> dict:
    """What the graph says publicly: its description, the consumers of every chain producer
    with the per-channel operations on the way (by name: ``x.sigmoid()`` and
    ``torch.sigmoid(x)`` are one operation), every group's consumers, and the heads."""
    def op_name(op):
        return op.describe().split(":", 1)[1]

    return {
        "describe": graph.describe(),
        "edges": {p: [(e.consumer, e.block, e.offset, [op_name(op) for op in e.path])
                      for e in prod.edges] for p, prod in graph.producers.items()
                  if is_chain(graph.groups[prod.group])},
        "consumers": {g: [(c.name, c.block) for c in group.consumers]
                      for g, group in graph.groups.items()},
        "heads": {n: h.describe() for n, h in graph.heads.items()},
    }


def routes_agree(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    fx_graph = trace(model, x, route="fx", on_unsupported="exclude")
    export_graph = trace(model, x, route="export", on_unsupported="exclude")
    assert signature(export_graph) == signature(fx_graph)


ZOO = list(ARCHS)
HEADS = list(test_heads.CASES)


pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("name", ZOO)
def test_both_routes_give_the_same_graph_on_the_zoo(name):
    model, shape = build(name)
    routes_agree(model, torch.randn(2, *shape))


@pytest.mark.slow
@pytest.mark.parametrize("case", HEADS)
def test_both_routes_give_the_same_graph_on_attention_blocks(case):
    make, _, _ = test_heads.CASES[case]
    routes_agree(make(), test_heads.batch(1)[0])


@pytest.mark.parametrize("gated", [False, True])
def test_both_routes_give_the_same_graph_on_ffn_blocks(gated):
    routes_agree(test_tokens.build(gated), test_tokens.batch()[0])


# --------------------------------------------------------------------------- beyond torch.fx


class Branching(nn.Module):
    """A residual CNN whose forward branches on its input's size (torch.fx cannot trace
    that), with a gated (GLU-like) unit group and a token-shaped tail."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.gate, self.up = nn.Linear(6, 10), nn.Linear(6, 10)
        self.down = nn.Linear(10, 4)

    def forward(self, x):
        if x.shape[-1] > 4:  # data-dependent on a size: torch.fx refuses this
            x = F.avg_pool2d(x, 2)
        h = F.relu(self.bn1(self.conv1(x)))
        h = h + F.relu(self.conv2(h))
        t = h.permute(0, 2, 3, 1)                      # (B, H, W, channels)
        return self.down(torch.sigmoid(self.gate(t)) * self.up(t)).mean((1, 2))


def branching():
    torch.manual_seed(0)
    net = Branching().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net


def data(n=2):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(5, 2, 8, 8, generator=g), torch.randint(0, 4, (5,), generator=g))
            for _ in range(n)]


def test_a_model_fx_cannot_trace_is_traced_through_export():
    net = branching()
    x = data()[0][0]
    with pytest.raises(UnsupportedArchitecture, match="torch.fx cannot trace"):
        trace(net, x, route="fx")
    graph = trace(net, x)                               # auto: export when fx fails
    assert graph.prunable == ["conv1", "gate"]
    assert graph.groups["conv1"].members == ["conv1", "conv2"]
    assert graph.groups["gate"].members == ["gate", "up"]
    gm = exported_graph(net, x)
    for xb in (x, torch.randn(3, 2, 8, 8)):             # any batch size
        assert torch.equal(gm(xb), net(xb))


@pytest.mark.parametrize("replacement", [None, "zero", "mean"])
def test_removal_through_export_equals_a_masked_twin(replacement):
    net, d = branching(), data()
    units = {"conv1": [1, 4], "gate": [0, 3, 7]}
    twin = copy.deepcopy(net)
    kw = {"data": d} if replacement == "mean" else {"example_input": d[0][0]}
    remove_units(net, units, replacement=replacement, **kw)
    mask_units(twin, units, replacement=replacement, **kw)
    assert (net.conv1.out_channels, net.gate.out_features) == (4, 7)
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        assert float((net(x) - twin(x)).abs().max()) <= 1e-10


def test_mrs_through_export_equals_autograd():
    """MRS of the gated group (held at the product) against hooks and autograd."""
    net, d = branching(), data()
    got = MRS().score(net, d)["gate"]
    hs, gs = [], []
    for x, y in d:
        seen = {}

        def keep(_m, args, seen=seen):
            args[0].retain_grad()
            seen["p"] = args[0]
        hd = net.down.register_forward_pre_hook(keep)
        F.cross_entropy(net(x), y, reduction="sum").backward()
        hd.remove()
        hs.append(seen["p"].detach())
        gs.append(seen["p"].grad)
    net.zero_grad()
    h, g = torch.cat(hs), torch.cat(gs)                 # (N, H, W, 10)
    ref = ((h.mean((0, 1, 2)) - h) * g).sum((1, 2)).abs().sum(0)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-13)


def test_a_model_neither_route_can_trace_names_both_failures():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            return h if h.sum() > 0 else -h                 # branches on values

    with pytest.raises(UnsupportedArchitecture, match=r"torch.fx cannot trace DataDependent: "
                                                      r".*; torch.export cannot trace it "
                                                      r"either: .*data-dependent"):
        trace(DataDependent(), torch.randn(2, 3))


def test_route_is_checked():
    with pytest.raises(ValueError, match=r"route must be one of \('auto', 'fx', 'export'\)"):
        trace(nn.Sequential(nn.Linear(2, 2)), route="onnx")
