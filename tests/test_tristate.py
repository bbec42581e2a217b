"""Tri-state ReLU (Srinivas & Babu 2016): the gate function, regularizers, clipping, finalization.

References: the gate function written out elementwise with Python floats;
the three binary states against zero, ``torch.relu`` and the identity; the
regularizers computed by hand from the gate values; autograd gradients
against their closed forms; the finalized network against the binarized one
(float64, 1e-10) and its parameter count against the widths; a physically
removed model against its masked twin.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruners import count_params, mask_units, remove_units, trace
from pruners.tristate import (FinalizeReport, binarize_gates, binarizing_regularizer,
                              clip_gates, complexity_term, finalize_tristate, insert_tristate,
                              tristate_penalty, tristates)
from saliency.tristate import GateScorer, TriStateReLU

TOL = 1e-10


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def maxdiff(a, b) -> float:
    return float((a - b).detach().abs().max())


def mlp(widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


class ConvNet(nn.Module):
    """LeNet-5-like: conv-ReLU-pool twice, then fc-ReLU-fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.act2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(6 * 2 * 2, 5)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.fc2(self.act3(self.fc1(self.flat(x))))


def set_gates(model, widths: dict, depths: dict):
    with torch.no_grad():
        for name, m in tristates(model).items():
            if name in widths:
                m.width.copy_(torch.as_tensor(widths[name], dtype=m.width.dtype))
            if name in depths:
                m.depth.fill_(depths[name])


# ---------------------------------------------------------------------------
# the gate function


def test_gate_function_elementwise_by_hand():
    act = TriStateReLU(3).double()
    w, d = [0.3, 1.0, 0.7], 0.4
    with torch.no_grad():
        act.width.copy_(torch.tensor(w, dtype=torch.float64))
        act.depth.fill_(d)
    x = randn(4, 3, 2, 5)
    y = act(x).detach()
    for idx in itertools.product(range(4), range(3), range(2), range(5)):
        v = float(x[idx])
        want = w[idx[1]] * (v if v >= 0 else d * v)
        assert abs(float(y[idx]) - want) <= 1e-15


@pytest.mark.parametrize("shape", [(7, 4), (3, 4, 9), (2, 4, 5, 5)])
def test_three_binary_states_are_zero_relu_and_identity(shape):
    x = randn(*shape)
    act = TriStateReLU(4).double()
    with torch.no_grad():
        act.width.zero_()
        act.depth.fill_(0.0)
    assert torch.equal(act(x), torch.zeros_like(x))
    with torch.no_grad():
        act.depth.fill_(1.0)
    assert torch.equal(act(x), torch.zeros_like(x))  # w = 0 is off whatever d
    with torch.no_grad():
        act.width.fill_(1.0)
        act.depth.fill_(0.0)
    assert torch.equal(act(x), torch.relu(x))
    with torch.no_grad():
        act.depth.fill_(1.0)
    assert torch.equal(act(x), x)
    # per channel: unit 1 off, the others ReLU
    with torch.no_grad():
        act.width.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
        act.depth.fill_(0.0)
    want = torch.relu(x).clone()
    want[:, 1] = 0
    assert torch.equal(act(x), want)


def test_gate_gradients_are_their_closed_forms():
    act = TriStateReLU(3).double()
    with torch.no_grad():
        act.width.copy_(torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64))
        act.depth.fill_(0.3)
    x = randn(6, 3)
    g = randn(6, 3, seed=1)
    (act(x) * g).sum().backward()
    pos = (x >= 0).double()
    slope = pos + (1 - pos) * 0.3
    assert torch.allclose(act.width.grad, (g * x * slope).sum(0), atol=1e-14, rtol=0)
    want_d = (g * x * (1 - pos) * act.width.detach()).sum()
    assert abs(float(act.depth.grad) - float(want_d)) <= 1e-14


def test_module_errors():
    with pytest.raises(ValueError, match="num_channels"):
        TriStateReLU(0)
    with pytest.raises(ValueError, match="width_init"):
        TriStateReLU(3, width_init=1.5)
    with pytest.raises(ValueError, match="depth_init"):
        TriStateReLU(3, depth_init=-0.1)
    with pytest.raises(ValueError, match="expected B x 3"):
        TriStateReLU(3)(torch.zeros(2, 4))


# ---------------------------------------------------------------------------
# insertion


def test_insert_replaces_hidden_relus_and_keeps_the_function():
    net = mlp([6, 8, 7, 5, 3])
    m = insert_tristate(net)
    assert list(tristates(m)) == ["1", "3", "5"]
    assert [tristates(m)[k].num_channels for k in ("1", "3", "5")] == [8, 7, 5]
    assert all(type(mod) is nn.ReLU for mod in net if not isinstance(mod, nn.Linear))  # untouched
    x = randn(9, 6)
    assert torch.equal(m(x), net(x))
    cnn = ConvNet().double()
    mc = insert_tristate(cnn, randn(1, 1, 10, 10))
    assert sorted(tristates(mc)) == ["act1", "act2", "act3"]
    z = randn(3, 1, 10, 10)
    assert torch.equal(mc(z), cnn(z))


class Functional(nn.Module):
    """ReLUs as a function and as a tensor method, a BatchNorm in between."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Linear(4, 5), nn.BatchNorm1d(5)
        self.b, self.c = nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.bn(self.a(x)))
        return self.c(self.b(x).relu())


def test_insert_replaces_functional_relus_in_a_traced_copy():
    net = Functional().double().eval()
    with torch.no_grad():
        net.bn.running_mean.copy_(randn(5, seed=4))
        net.bn.running_var.copy_(randn(5, seed=5).abs() + 0.5)
    m = insert_tristate(net).eval()
    assert sorted(tristates(m)) == ["tristate.a", "tristate.b"]
    x = randn(7, 4)
    assert torch.equal(m(x), net(x))
    set_gates(m, {"tristate.a": [1, 0, 1, 1, 0], "tristate.b": [1, 1, 0, 1, 1, 1]},
              {"tristate.a": 0.0, "tristate.b": 1.0})
    plain, rep = finalize_tristate(m)
    assert rep.widths == {"a": 3, "b": 5} and rep.merged == [("b", "c")]
    assert maxdiff(plain(x), _binarized(m)(x)) <= TOL


def test_insert_errors():
    class Smooth(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    with pytest.raises(ValueError, match="no hidden ReLU"):
        insert_tristate(Smooth())
    with pytest.raises(ValueError, match="no ReLU on its path"):
        insert_tristate(Smooth(), layers=["a"])
    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(4, 5), shared, nn.Linear(5, 5), shared, nn.Linear(5, 2))
    with pytest.raises(ValueError, match="shared by layers '0' and '2'"):
        insert_tristate(net)
    with pytest.raises(ValueError, match="unknown layers"):
        insert_tristate(mlp([4, 5, 2]), layers=["nope"])
    with pytest.raises(ValueError, match="not prunable"):
        insert_tristate(mlp([4, 5, 2]), layers=["2"])


# ---------------------------------------------------------------------------
# regularizers and clipping


def test_binarizing_regularizer_by_hand():
    m = insert_tristate(mlp([4, 3, 2, 2]))
    set_gates(m, {"1": [0.1, 0.5, 1.0], "3": [0.25, 0.0]}, {"1": 0.3, "3": 1.0})
    want = (0.1 * 0.9 + 0.25 + 0.0) + 0.3 * 0.7 + (0.25 * 0.75 + 0.0) + 0.0
    assert abs(float(binarizing_regularizer(m).detach()) - want) <= 1e-15
    binarizing_regularizer(m).backward()
    w1 = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(tristates(m)["1"].width.grad, 1 - 2 * w1, atol=1e-15, rtol=0)
    assert abs(float(tristates(m)["1"].depth.grad) - (1 - 2 * 0.3)) <= 1e-15


def test_complexity_term_by_hand_and_its_gradient():
    # 4 -> [3] -> [4] -> 2: gated layers "0" (gate "1", 3 units) and "2" (gate "3", 4 units)
    m = insert_tristate(mlp([4, 3, 4, 2]))
    set_gates(m, {"1": [0.2, 0.6, 1.0], "3": [1.0, 0.5, 0.5, 0.0]}, {"1": 0.2, "3": 0.7})
    s1, s3 = 1.8, 2.0
    full = 4 * 3 + 3 * 4 + 4 * 2
    # layer "2" is linear (d >= 1/2): merged into "4", which takes its inputs (s1);
    # the weights left are 4 x s1 (layer 0) and s1 x 2 (merged layer)
    want = (4 * s1 + s1 * 2) / full + (1 - 0.2) + (1 - 0.7)
    assert abs(float(complexity_term(m).detach()) - want) <= 1e-14
    raw = 4 * s1 + s1 * 2 + 0.8 + 0.3
    assert abs(float(complexity_term(m, normalize=False).detach()) - raw) <= 1e-14
    complexity_term(m).backward()
    g1, g3 = tristates(m)["1"], tristates(m)["3"]
    assert torch.allclose(g1.width.grad, torch.full((3,), 6 / full, dtype=torch.float64),
                          atol=1e-15, rtol=0)
    assert g3.width.grad is None or torch.equal(g3.width.grad, torch.zeros(4, dtype=torch.float64))
    assert float(g1.depth.grad) == -1.0 and float(g3.depth.grad) == -1.0
    # layer "2" non-linear: 4 x s1 + s1 x s3 + s3 x 2
    set_gates(m, {}, {"3": 0.1})
    m.zero_grad()
    want = (4 * s1 + s1 * s3 + s3 * 2) / full + 0.8 + 0.9
    assert abs(float(complexity_term(m).detach()) - want) <= 1e-14
    complexity_term(m).backward()
    assert torch.allclose(g1.width.grad, torch.full((3,), (4 + s3) / full, dtype=torch.float64),
                          atol=1e-15, rtol=0)
    assert torch.allclose(g3.width.grad, torch.full((4,), (s1 + 2) / full, dtype=torch.float64),
                          atol=1e-15, rtol=0)
    half = (4 * s1 + s1 * s3 + s3 * 2) / full + 0.5 * (0.8 + 0.9)
    assert abs(float(complexity_term(m, depth_weight=0.5).detach()) - half) <= 1e-14
    pen = tristate_penalty(m, 0.5, 2.0)
    assert abs(float(pen.detach()) - (0.5 * float(binarizing_regularizer(m).detach())
                                      + 2.0 * want)) <= 1e-14
    with pytest.raises(ValueError, match="lam_b"):
        tristate_penalty(m, -1.0, 0.0)
    with pytest.raises(ValueError, match="depth_weight"):
        complexity_term(m, depth_weight=-1)


def test_complexity_term_counts_what_finalization_keeps():
    # with binary gates, the width part is exactly the finalized network's weight count
    m = insert_tristate(mlp([5, 6, 4, 3, 2], seed=3))
    set_gates(m, {"1": [1, 1, 1, 0, 0, 1], "3": [1, 0, 1, 1], "5": [1, 0, 1]},
              {"1": 0.0, "3": 1.0, "5": 0.0})
    plain, _ = finalize_tristate(m)
    weights = sum(mod.weight.numel() for mod in plain.modules() if isinstance(mod, nn.Linear))
    got = float(complexity_term(m, normalize=False, depth_weight=0.0).detach())
    assert got == weights == 5 * 4 + 4 * 2 + 2 * 2
    cnn = insert_tristate(ConvNet().double(), randn(1, 1, 10, 10))
    set_gates(cnn, {"act1": [1, 0, 1, 1], "act2": [0, 1, 1, 0, 1, 1], "act3": [1, 1, 0, 1, 1]},
              {})
    plain, _ = finalize_tristate(cnn, randn(1, 1, 10, 10))
    weights = sum(mod.weight.numel() for mod in plain.modules()
                  if isinstance(mod, (nn.Linear, nn.Conv2d)))
    got = float(complexity_term(cnn, randn(1, 1, 10, 10), normalize=False,
                                depth_weight=0.0).detach())
    assert got == weights == 1 * 3 * 9 + 3 * 4 * 9 + 4 * 4 * 4 + 4 * 3


def test_clipping_keeps_the_gates_in_the_unit_interval():
    m = insert_tristate(mlp([5, 6, 4, 3]))
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    x, y = randn(16, 5), torch.arange(16) % 3
    for _ in range(5):
        opt.zero_grad()
        (F.cross_entropy(m(x), y) - 3 * binarizing_regularizer(m)).backward()
        opt.step()
        clip_gates(m)
        for g in tristates(m).values():
            for t in (g.width, g.depth):
                assert float(t.detach().min()) >= 0.0 and float(t.detach().max()) <= 1.0
    set_gates(m, {"1": [-2.0, 0.5, 3.0, 1.0, 0.0, 7.0]}, {"1": 4.0})
    clip_gates(m)
    assert tristates(m)["1"].width.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0, 1.0]
    assert float(tristates(m)["1"].depth.detach()) == 1.0


def test_binarize_gates():
    m = insert_tristate(mlp([3, 4, 2]))
    set_gates(m, {"1": [0.49, 0.5, 0.51, 0.0]}, {"1": 0.7})
    binarize_gates(m)
    assert tristates(m)["1"].width.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert float(tristates(m)["1"].depth.detach()) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        binarize_gates(m, 1.0)


# ---------------------------------------------------------------------------
# removal, masking, finalization


def test_removal_slices_width_keeps_depth_and_equals_the_masked_twin():
    m = insert_tristate(mlp([5, 6, 4, 3]))
    set_gates(m, {"1": [0.3, 0.9, 0.1, 0.6, 1.0, 0.2]}, {"1": 0.4, "3": 0.8})
    twin = copy.deepcopy(m)
    x = randn(10, 5)
    units = {"0": [1, 4], "2": [3]}
    remove_units(m, units, replacement="mean", data=[(x, None)])
    mask_units(twin, units, replacement="mean", data=[(x, None)])
    assert tristates(m)["1"].num_channels == 4
    assert tristates(m)["1"].width.tolist() == pytest.approx([0.3, 0.1, 0.6, 0.2], abs=0)
    assert float(tristates(m)["1"].depth.detach()) == 0.4
    z = randn(7, 5, seed=3)
    assert maxdiff(m(z), twin(z)) <= TOL


def _binarized(model, threshold=0.5):
    b = copy.deepcopy(model)
    binarize_gates(b, threshold)
    return b


def test_finalize_merges_identity_layer_pairs_exactly():
    # 4 hidden layers; "1" identity (merged with layer 2), "5" identity (merged with 6),
    # "3" and "7" stay ReLU; some units off
    m = insert_tristate(mlp([7, 9, 8, 6, 5, 3], seed=4))
    set_gates(m, {"1": [1, 1, 0.2, 1, 0.9, 1, 1, 0.0, 1], "3": [1, 0, 1, 1, 1, 1, 0.4, 1],
                  "5": [1, 1, 1, 0, 1, 1], "7": [1, 1, 1, 1, 0.1]},
              {"1": 0.8, "3": 0.1, "5": 1.0, "7": 0.0})
    plain, rep = finalize_tristate(m)
    assert isinstance(rep, FinalizeReport)
    assert not tristates(plain)
    x = randn(11, 7, seed=5)
    assert maxdiff(plain(x), _binarized(m)(x)) <= TOL
    assert rep.removed == {"0": 2, "2": 2, "4": 1, "6": 1}
    assert rep.widths == {"0": 7, "2": 6, "4": 5, "6": 4}
    assert rep.depth == {"0": 1, "2": 0, "4": 1, "6": 0}
    assert rep.merged == [("0", "2"), ("4", "6")]
    # 7 -> 6 (merged 0+2), ReLU, 6 -> 5... layer 4 merged with 6: 6 -> 4, ReLU, 4 -> 3
    linears = [mod for mod in plain if isinstance(mod, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(7, 6), (6, 4), (4, 3)]
    assert rep.params_after == count_params(plain) == 7 * 6 + 6 + 6 * 4 + 4 + 4 * 3 + 3
    assert sum(isinstance(mod, nn.ReLU) for mod in plain) == 2
    assert rep.params_before == count_params(m)


def test_finalize_without_merge_and_on_a_cnn():
    m = insert_tristate(mlp([5, 6, 4, 3]))
    set_gates(m, {"1": [1, 0, 1, 1, 0, 1]}, {"1": 1.0, "3": 0.0})
    plain, rep = finalize_tristate(m, merge=False)
    assert rep.merged == [] and isinstance(plain[1], nn.Identity)
    x = randn(6, 5)
    assert maxdiff(plain(x), _binarized(m)(x)) <= TOL
    cnn = insert_tristate(ConvNet().double(), randn(1, 1, 10, 10))
    set_gates(cnn, {"act1": [1, 0, 1, 1], "act2": [0, 1, 1, 0, 1, 1], "act3": [1, 1, 0, 1, 1]},
              {"act1": 0.0, "act2": 1.0, "act3": 0.0})
    plain, rep = finalize_tristate(cnn, randn(1, 1, 10, 10))
    z = randn(4, 1, 10, 10, seed=2)
    assert maxdiff(plain(z), _binarized(cnn)(z)) <= TOL
    assert rep.widths == {"conv1": 3, "conv2": 4, "fc1": 4}
    assert plain.conv1.out_channels == 3 and plain.conv2.out_channels == 4
    assert plain.fc1.in_features == 16 and isinstance(plain.act2, nn.Identity)
    assert rep.merged == []  # a convolution is not merged


def test_finalize_keeps_one_zeroed_unit_of_an_all_off_layer():
    m = insert_tristate(mlp([4, 5, 3, 2]))
    set_gates(m, {"1": [0.0] * 5}, {})
    plain, rep = finalize_tristate(m)
    assert rep.widths["0"] == 0 and plain[0].out_features == 1
    x = randn(5, 4)
    assert maxdiff(plain(x), _binarized(m)(x)) <= TOL
    # the network's output no longer depends on the input
    assert maxdiff(plain(x), plain(x[:1])) <= TOL


def test_gate_scorer_reads_the_width_gates():
    m = insert_tristate(mlp([4, 5, 3, 2]))
    set_gates(m, {"1": [0.1, 0.2, 0.3, 0.4, 0.5], "3": [1.0, 0.0, 0.7]}, {})
    s = GateScorer().score(m)
    assert s["0"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-15)
    assert s["2"].tolist() == [1.0, 0.0, 0.7]
    with pytest.raises(ValueError, match="no tri-state ReLU"):
        GateScorer().score(mlp([4, 5, 2]))


def test_finalize_merges_a_chain_of_identity_layers_into_one():
    m = insert_tristate(mlp([6, 8, 7, 5, 3], seed=2))
    set_gates(m, {"1": [1, 1, 1, 0, 1, 1, 1, 1]}, {"1": 1.0, "3": 1.0, "5": 0.0})
    plain, rep = finalize_tristate(m)
    assert rep.merged == [("0", "2"), ("0", "4")]
    linears = [mod for mod in plain if isinstance(mod, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(6, 5), (5, 3)]
    x = randn(9, 6, seed=8)
    assert maxdiff(plain(x), _binarized(m)(x)) <= TOL
    # Linear pairs the model had without a gate in between are not merged
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    g = insert_tristate(net)
    set_gates(g, {}, {"2": 1.0})
    plain, rep = finalize_tristate(g)
    assert rep.merged == [("1", "3")]
    assert [type(mod) for mod in plain] == [nn.Linear, nn.Linear, nn.Identity, nn.Identity]
    z = randn(5, 4, seed=9)
    assert maxdiff(plain(z), _binarized(g)(z)) <= TOL


def test_straight_through_forward_is_the_binarized_network_and_passes_gradients():
    net = mlp([5, 6, 4, 3], seed=6)
    soft = insert_tristate(net)
    hard = insert_tristate(net, straight_through=True)
    gates = {"1": [0.9, 0.2, 0.5, 0.49, 1.0, 0.7], "3": [0.3, 0.8, 0.6, 0.1]}
    set_gates(soft, gates, {"1": 0.6, "3": 0.4})
    set_gates(hard, gates, {"1": 0.6, "3": 0.4})
    x = randn(8, 5, seed=7)
    assert torch.equal(hard(x), _binarized(soft)(x))
    # d/dw of the straight-through network = d/dw of the binarized one, at the real w
    bin_net = _binarized(soft)
    g = randn(8, 3, seed=8)
    (hard(x) * g).sum().backward()
    (bin_net(x) * g).sum().backward()
    for name in ("1", "3"):
        assert torch.allclose(tristates(hard)[name].width.grad,
                              tristates(bin_net)[name].width.grad, atol=1e-14, rtol=0)
        assert torch.allclose(tristates(hard)[name].depth.grad,
                              tristates(bin_net)[name].depth.grad, atol=1e-14, rtol=0)
    # and finalization changes nothing it computes
    plain, _ = finalize_tristate(hard)
    assert maxdiff(plain(x), hard(x)) <= TOL
    assert "straight_through=True" in repr(tristates(hard)["1"])
