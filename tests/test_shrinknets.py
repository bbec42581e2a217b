"""ShrinkNets: switch layers, placement, folding, penalty, removal strategies, garbage collection.

Every test checks numbers against an independent reference: the switch's
product written out channel by channel, torch's own RNG streams for the
initializations, the unswitched model's outputs (a switch with gates 1 is the
identity; a folded network computes what the switched one did), weights
scaled by hand (rows, input columns, BatchNorm affine), the penalty and its
derivative written out from ShrinkNets eq. 2 / 9 and the draft's eq. 2,
scripted gate trajectories with closed-form moving variances, masked twins of
physically collected networks (same losses step after step, same Adam state
at the kept positions), and sizes counted from the weight shapes. Models are
tiny and float64 (tolerance 1e-10 unless a test says otherwise).
"""

from __future__ import annotations

import copy
import io
import math
from collections import OrderedDict

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from zoo import build, randomize_bn, thesis_cnn

from pruners import count_macs, count_params, mask_units, remove_units, trace
from pruners.shrinknets import (Aggressiveness, GarbageCollector, RemovalStrategy, SignChange,
                                SignVariance, Threshold, fold_switches, input_neurons,
                                insert_switches, shrinknets_penalty, switches)
from saliency import SCORERS
from saliency.switch import INITS, PARAMETRIZATIONS, Switch, SwitchScorer

TOL = 1e-10
PRODUCER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


# ---------------------------------------------------------------------------
# helpers


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def outputs(model, x):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).clone()
    finally:
        model.train(was)


def maxdiff(a, b) -> float:
    return float((a - b).abs().max())


def set_gates(model, seed=1, negative=True):
    """Random gates, some negative (signed), none tiny."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sw in switches(model).values():
            w = 0.5 + torch.rand(sw.num_channels, generator=gen, dtype=torch.float64)
            if negative:
                sign = torch.where(torch.arange(sw.num_channels) % 2 == 0, 1.0, -1.0)
                w = w * sign.to(w)
            sw.weight.copy_(w)
    return model


def effective(mod, name):
    orig = mod._parameters.get(name + "_orig")
    if orig is not None:
        return orig * mod._buffers[name + "_mask"]
    return getattr(mod, name)


def hand_input_neurons(model) -> int:
    """Sum of the input widths of the Linear/Conv layers, from the weight shapes."""
    return sum(int(effective(m, "weight").shape[1]) for m in model.modules()
               if isinstance(m, PRODUCER_TYPES))


def hand_mlp_macs(model) -> int:
    """MACs per sample of an all-Linear model: sum of in * out (dense: masks do not count)."""
    return sum(int(effective(m, "weight").numel()) for m in model.modules()
               if isinstance(m, nn.Linear))


def anchors(gm: fx.GraphModule) -> dict[str, str]:
    """switch module name -> the module its input comes from (the node before it)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), Switch):
            (arg,) = node.args
            assert arg.op == "call_module", f"{node.target} follows {arg.op} {arg.target}"
            assert list(arg.users) == [node], f"{arg.target} feeds more than its switch"
            out[node.target] = arg.target
    return out


# ---------------------------------------------------------------------------
# 1. the switch layer (eq. 1; draft eq. 1-2)


SHAPES = [(5, 4), (5, 4, 7), (5, 4, 3, 6)]  # Linear B x C, Conv1d B x C x L, Conv2d B x C x H x W


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_switch_with_all_gates_one_is_the_identity(shape, parametrization):
    s = Switch(4, parametrization, init="constant").double()
    x = randn(*shape)
    assert torch.equal(s.weight, torch.ones(4, dtype=torch.float64))
    assert torch.equal(s(x), x)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_switch_scales_each_channel_by_its_gate(shape, parametrization):
    s = Switch(4, parametrization).double()
    theta = [0.7, -1.3, 0.0, 2.5]
    with torch.no_grad():
        s.weight.copy_(torch.tensor(theta, dtype=torch.float64))
    gates = theta if parametrization == "signed" else [max(0.0, t) for t in theta]
    x = randn(*shape, seed=3)
    expected = torch.empty_like(x)
    for i, g in enumerate(gates):  # channel by channel, dimension 1
        expected[:, i] = x[:, i] * g
    assert torch.equal(s(x), expected)
    assert s.gate().tolist() == gates


def test_switch_gradients_are_the_channel_sums():
    """d(sum(w * S(x)))/d theta_i = sum over channel i of w * x, times 1[theta_i > 0] (relu)."""
    x, w = randn(3, 4, 5, seed=1), randn(3, 4, 5, seed=2)
    theta = torch.tensor([0.5, -0.5, 0.0, 2.0], dtype=torch.float64)
    for parametrization, active in (("signed", [1, 1, 1, 1]), ("relu", [1, 0, 0, 1])):
        s = Switch(4, parametrization).double()
        with torch.no_grad():
            s.weight.copy_(theta)
        (w * s(x)).sum().backward()
        hand = torch.tensor([float((w[:, i] * x[:, i]).sum()) * a for i, a in enumerate(active)],
                            dtype=torch.float64)
        assert maxdiff(s.weight.grad, hand) <= TOL


def test_switch_initializations_follow_torch_streams_and_moments():
    torch.manual_seed(7)
    s = Switch(20000)  # default: N(0, 1), the paper's
    torch.manual_seed(7)
    ref = torch.empty(20000).normal_(0.0, 1.0)
    assert torch.equal(s.weight.detach(), ref)
    assert abs(float(s.weight.mean())) < 0.03 and abs(float(s.weight.std()) - 1.0) < 0.03

    torch.manual_seed(7)
    u = Switch(20000, "relu", init="uniform")  # the draft's U[0, 1]
    torch.manual_seed(7)
    assert torch.equal(u.weight.detach(), torch.empty(20000).uniform_(0.0, 1.0))
    assert float(u.weight.min()) >= 0.0 and float(u.weight.max()) <= 1.0
    assert abs(float(u.weight.mean()) - 0.5) < 0.01

    c = Switch(6, init="constant", value=0.25)
    assert c.weight.tolist() == [0.25] * 6
    c.weight.data.zero_()
    c.reset_parameters()
    assert c.weight.tolist() == [0.25] * 6
    assert Switch(3, init="constant").weight.tolist() == [1.0, 1.0, 1.0]
    assert set(INITS) == {"normal", "uniform", "constant"}
    assert set(PARAMETRIZATIONS) == {"signed", "relu"}


@pytest.mark.parametrize("kwargs", [
    dict(num_channels=0), dict(num_channels=-2), dict(num_channels=2.0),
    dict(num_channels=True), dict(num_channels=3, parametrization="abs"),
    dict(num_channels=3, init="xavier"),
])
def test_switch_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Switch(**kwargs)


@pytest.mark.parametrize("shape", [(5, 3), (5,), (5, 3, 2)])
def test_switch_rejects_inputs_with_other_channel_counts(shape):
    s = Switch(4).double()
    with pytest.raises(ValueError, match="Switch\\(4\\)"):
        s(randn(*shape))


# ---------------------------------------------------------------------------
# 2. insert_switches (Sec. 5.1.1)


def _zoo(name):
    model, shape = build(name)
    return model, randn(*((6,) + shape), seed=11)


def _thesis(**kw):
    torch.manual_seed(0)
    model = thesis_cnn(image_size=16, widths=(3, 4), hidden=5, num_classes=3, **kw).double()
    randomize_bn(model)
    return model, randn(6, 1, 16, 16, seed=11)


# model -> {switch: the module it follows}: after the BatchNorm when one follows
# the layer, else after the layer; never after the layer producing the output
PLACEMENTS = {
    "zoo-mlp": (lambda: _zoo("mlp"), {"switches.fc1": "fc1", "switches.fc2": "fc2"}),
    "zoo-mlp_bn": (lambda: _zoo("mlp_bn"), {"switches.fc1": "bn1", "switches.fc2": "fc2"}),
    "zoo-cnn": (lambda: _zoo("cnn"), {"switches.conv1": "bn1", "switches.conv2": "conv2",
                                      "switches.fc1": "fc1"}),
    "zoo-conv1d": (lambda: _zoo("conv1d"), {"switches.c1": "bn", "switches.c2": "c2"}),
    "zoo-nobias": (lambda: _zoo("nobias"), {"switches.conv1": "bn1", "switches.conv2": "conv2",
                                            "switches.fc1": "fc1"}),
    "zoo-vgg": (lambda: _zoo("vgg"), {
        "switches.features_0": "features.1", "switches.features_3": "features.4",
        "switches.features_7": "features.8", "switches.classifier_1": "classifier.1"}),
    "thesis_cnn-bn": (lambda: _thesis(batchnorm=True),
                      {"switches.conv1": "bn1", "switches.conv2": "bn2", "switches.fc1": "fc1"}),
    "thesis_cnn": (lambda: _thesis(),
                   {"switches.conv1": "conv1", "switches.conv2": "conv2", "switches.fc1": "fc1"}),
}


@pytest.mark.parametrize("case", sorted(PLACEMENTS))
def test_insert_switches_places_them_as_in_sec_5_1_1(case):
    factory, expected = PLACEMENTS[case]
    model, x = factory()
    before = take(model)
    gm = insert_switches(model, x, parametrization="relu", init="uniform")
    assert_unchanged(before, model)  # the original is not changed
    assert isinstance(gm, fx.GraphModule)
    assert anchors(gm) == expected
    assert sorted(switches(gm)) == sorted(expected)
    widths = {n: m.weight.shape[0] for n, m in model.named_modules()
              if isinstance(m, PRODUCER_TYPES)}
    for sname, sw in switches(gm).items():
        layer = sname[len("switches."):]
        layer = next(n for n in widths if n.replace(".", "_") == layer)
        assert sw.num_channels == widths[layer] == sw.weight.shape[0]
        assert sw.parametrization == "relu" and sw.weight.dtype == torch.float64
        assert 0.0 <= float(sw.weight.min()) and float(sw.weight.max()) <= 1.0
    # shares nothing with the original
    assert not {id(p) for p in gm.parameters()} & {id(p) for p in model.parameters()}
    # the graph of units sees each switch on its layer's path
    graph = trace(gm, x)
    assert sorted(graph.prunable) == sorted(
        next(n for n in widths if n.replace(".", "_") == s[len("switches."):]) for s in expected)
    for s in expected:
        layer = next(n for n in widths if n.replace(".", "_") == s[len("switches."):])
        assert s in graph.producers[layer].channel_modules


@pytest.mark.parametrize("case", sorted(PLACEMENTS))
def test_switches_with_gates_one_keep_the_outputs(case):
    factory, _ = PLACEMENTS[case]
    model, x = factory()
    ref = outputs(model, x)
    gm = insert_switches(model, x, init="constant")
    assert maxdiff(outputs(gm, x), ref) <= 1e-12
    if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        model.train()  # batch statistics too
        gm.train()
        with torch.no_grad():
            assert maxdiff(gm(x), model(x)) <= 1e-12


def test_insert_switches_refuses_a_forward_that_reads_self_training():
    """fx would freeze ``F.dropout(training=self.training)`` at True: eval outputs would be random.

    A constant flag (Monte-Carlo dropout, ``training=True`` written out) is
    not mode-dependent and is accepted.
    """
    model, x = _zoo("functional")
    before = take(model)
    with pytest.raises(ValueError, match="self.training"):
        insert_switches(model, x)
    assert_unchanged(before, model)

    class MC(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.dropout(torch.relu(self.a(x)), 0.5, training=True))

    mc = MC().double()
    gm = insert_switches(mc, init="constant")
    assert anchors(gm) == {"switches.a": "a"}
    torch.manual_seed(3)
    ref = outputs(mc, x)
    torch.manual_seed(3)
    assert maxdiff(outputs(gm, x), ref) <= 1e-12


def test_insert_switches_options_and_errors():
    model, x = _zoo("cnn")
    gm = insert_switches(model, x, layers=["conv2"], init="constant", value=0.5)
    assert anchors(gm) == {"switches.conv2": "conv2"}
    assert gm.switches.conv2.weight.tolist() == [0.5] * 5
    gm2 = insert_switches(model, x, exclude=["conv1"])
    assert sorted(anchors(gm2)) == ["switches.conv2", "switches.fc1"]
    with pytest.raises(ValueError, match="fc2"):  # the output layer is not prunable
        insert_switches(model, x, layers=["fc2"])
    with pytest.raises(ValueError, match="nope"):
        insert_switches(model, x, layers=["nope"])
    with pytest.raises(ValueError, match="already has a switch"):
        insert_switches(gm, x, layers=["conv2"])
    # a second round on the other layers adds to the same ModuleDict
    gm3 = insert_switches(gm, x, layers=["conv1"], init="constant")
    assert sorted(switches(gm3)) == ["switches.conv1", "switches.conv2"]
    assert maxdiff(outputs(gm3, x), outputs(gm, x)) <= 1e-12


@pytest.mark.parametrize("arch,units", [
    ("mlp", {"fc1": [1, 4], "fc2": [0]}),
    ("mlp_bn", {"fc1": [0, 6], "fc2": [2, 3]}),
    ("cnn", {"conv1": [2], "conv2": [0, 4], "fc1": [5]}),
    ("vgg", {"features.3": [1], "classifier.1": [0, 6]}),
])
def test_remove_units_slices_the_switch_and_folds_its_gate(arch, units):
    """Removal with replacement "zero" pushes the producer's 0 through BN, switch, activation.

    Reference: the same network with those gates set to 0 (a unit switched
    off). Removing from that network must give exactly its outputs -- which
    holds only if the gate (0) is on the constant path.
    """
    model, x = _zoo(arch)
    gm = set_gates(insert_switches(model, x), seed=4)
    with torch.no_grad():
        for layer, idx in units.items():
            gm.switches[layer.replace(".", "_")].weight[idx] = 0.0
    ref = outputs(gm, x)
    old = {k: v.weight.detach().clone() for k, v in switches(gm).items()}
    rep = remove_units(gm, units, replacement="zero", example_input=x)
    assert maxdiff(outputs(gm, x), ref) <= TOL
    for layer, idx in units.items():
        sname = "switches." + layer.replace(".", "_")
        keep = [i for i in range(old[sname].numel()) if i not in idx]
        sw = gm.get_submodule(sname)
        assert sw.num_channels == len(keep) == gm.get_submodule(layer).weight.shape[0]
        assert torch.equal(sw.weight.detach(), old[sname][keep])
        assert rep.remaining[layer] == len(keep)


# ---------------------------------------------------------------------------
# 3. fold_switches (Sec. 4.2, "Preparing for Inference")


@pytest.mark.parametrize("case", sorted(PLACEMENTS))
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_fold_switches_keeps_outputs_of_inserted_switches(case, parametrization):
    model, x = PLACEMENTS[case][0]()
    gm = insert_switches(model, x, parametrization=parametrization)
    set_gates(gm, seed=5)  # signed: half negative; relu: those are off (g = 0)
    if parametrization == "relu":
        assert any(float(sw.gate().min()) == 0.0 for sw in switches(gm).values())
    before = take(gm)
    folded = fold_switches(gm, x)
    assert_unchanged(before, gm)
    assert maxdiff(outputs(folded, x), outputs(gm, x)) <= TOL
    assert not switches(folded) and not any(isinstance(m, Switch) for m in folded.modules())
    n_switch = sum(sw.num_channels for sw in switches(gm).values())
    assert count_params(folded) == count_params(gm) - n_switch == count_params(model)


def _seq(*named):
    return nn.Sequential(OrderedDict(named)).double()


def _with_gates(model, gates, parametrization_module="sw"):
    with torch.no_grad():
        model.get_submodule(parametrization_module).weight.copy_(
            torch.tensor(gates, dtype=torch.float64))
    return model


G6 = [1.5, -0.7, 0.3, -2.0, 0.9, -0.4]
G4 = [0.8, -1.2, 1.7, -0.5]


def test_fold_after_a_relu_goes_into_the_consumer_columns():
    torch.manual_seed(0)
    m = _with_gates(_seq(("fc1", nn.Linear(5, 6)), ("act", nn.ReLU()), ("sw", Switch(6)),
                         ("fc2", nn.Linear(6, 3))), G6)
    x = randn(8, 5)
    folded = fold_switches(m)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL
    g = torch.tensor(G6, dtype=torch.float64)
    assert torch.equal(folded.fc1.weight, m.fc1.weight) and torch.equal(folded.fc1.bias, m.fc1.bias)
    assert maxdiff(folded.fc2.weight, m.fc2.weight * g) <= TOL  # column j times g_j
    assert torch.equal(folded.fc2.bias, m.fc2.bias)
    assert isinstance(folded.sw, nn.Identity)
    assert count_params(folded) == count_params(m) - 6


def test_fold_before_an_activation_goes_into_the_producer_rows():
    torch.manual_seed(0)
    m = _with_gates(_seq(("fc1", nn.Linear(5, 6)), ("sw", Switch(6)), ("act", nn.Tanh()),
                         ("fc2", nn.Linear(6, 3))), G6)
    x = randn(8, 5)
    folded = fold_switches(m)
    g = torch.tensor(G6, dtype=torch.float64)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL
    assert maxdiff(folded.fc1.weight, m.fc1.weight * g[:, None]) <= TOL
    assert maxdiff(folded.fc1.bias, m.fc1.bias * g) <= TOL
    assert torch.equal(folded.fc2.weight, m.fc2.weight)


def test_fold_after_batchnorm_goes_into_its_affine_parameters():
    torch.manual_seed(0)
    m = _with_gates(_seq(("conv1", nn.Conv2d(2, 4, 3)), ("bn", nn.BatchNorm2d(4)),
                         ("sw", Switch(4)), ("act", nn.ReLU()), ("conv2", nn.Conv2d(4, 3, 3))),
                    G4)
    randomize_bn(m)
    x = randn(3, 2, 9, 9)
    folded = fold_switches(m, x)
    g = torch.tensor(G4, dtype=torch.float64)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL
    assert maxdiff(folded.bn.weight, m.bn.weight * g) <= TOL
    assert maxdiff(folded.bn.bias, m.bn.bias * g) <= TOL
    assert torch.equal(folded.conv1.weight, m.conv1.weight)
    assert torch.equal(folded.bn.running_mean, m.bn.running_mean)


@pytest.mark.parametrize("consumer", ["conv", "conv-padded", "flatten-linear"])
def test_fold_after_relu_and_max_pooling_goes_into_the_consumer(consumer):
    torch.manual_seed(0)
    head = [("conv1", nn.Conv2d(2, 4, 3)), ("act", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
            ("sw", Switch(4))]
    if consumer == "conv":
        tail = [("conv2", nn.Conv2d(4, 3, 3)), ("flat", nn.Flatten()), ("fc", nn.Linear(3, 2))]
    elif consumer == "conv-padded":
        tail = [("conv2", nn.Conv2d(4, 3, 3, padding=1)), ("flat", nn.Flatten()),
                ("fc", nn.Linear(27, 2))]
    else:
        tail = [("flat", nn.Flatten()), ("fc", nn.Linear(4 * 9, 2))]
    m = _with_gates(_seq(*head, *tail), G4)
    x = randn(3, 2, 8, 8)  # 8 -> 6 -> 3
    folded = fold_switches(m, x)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL
    g = torch.tensor(G4, dtype=torch.float64)
    assert torch.equal(folded.conv1.weight, m.conv1.weight)
    if consumer == "flatten-linear":  # H*W = 9 columns per channel
        assert maxdiff(folded.fc.weight, m.fc.weight * g.repeat_interleave(9)) <= TOL
    else:
        assert maxdiff(folded.conv2.weight, m.conv2.weight * g[None, :, None, None]) <= TOL


def test_fold_of_nonnegative_gates_passes_through_relu():
    torch.manual_seed(0)
    m = _seq(("fc1", nn.Linear(5, 6)), ("a1", nn.ReLU()), ("sw", Switch(6, "relu")),
             ("a2", nn.ReLU()), ("fc2", nn.Linear(6, 3)))
    _with_gates(m, G6)  # g = max(0, theta): three units off
    x = randn(8, 5)
    folded = fold_switches(m)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL
    g = torch.tensor([max(0.0, v) for v in G6], dtype=torch.float64)
    # into the rows: relu(g z) = g relu(z) for g >= 0
    assert maxdiff(folded.fc1.weight, m.fc1.weight * g[:, None]) <= TOL


@pytest.mark.parametrize("gates", [G6, [abs(v) for v in G6]])
def test_fold_between_two_nonlinearities_raises_naming_the_switch(gates):
    torch.manual_seed(0)
    m = _with_gates(_seq(("fc1", nn.Linear(5, 6)), ("a1", nn.Tanh()), ("gate", Switch(6)),
                         ("a2", nn.Tanh()), ("fc2", nn.Linear(6, 3))), gates, "gate")
    before = take(m)
    with pytest.raises(ValueError, match="'gate'"):
        fold_switches(m)
    assert_unchanged(before, m)


def test_fold_of_negative_gates_between_relu_and_batchnorm_raises():
    torch.manual_seed(0)
    m = _with_gates(_seq(("conv1", nn.Conv2d(2, 4, 3)), ("a1", nn.ReLU()), ("sw", Switch(4)),
                         ("bn", nn.BatchNorm2d(4)), ("a2", nn.ReLU()),
                         ("conv2", nn.Conv2d(4, 3, 3))), G4)
    x = randn(3, 2, 9, 9)
    with pytest.raises(ValueError, match="'sw'.*negative"):
        fold_switches(m, x)
    _with_gates(m, [abs(v) for v in G4])  # g >= 0 goes back through the ReLU
    folded = fold_switches(m, x)
    assert maxdiff(outputs(folded, x), outputs(m, x)) <= TOL


def test_fold_without_switches_is_a_copy():
    model, x = _zoo("mlp")
    folded = fold_switches(model)
    assert folded is not model and maxdiff(outputs(folded, x), outputs(model, x)) == 0.0


# ---------------------------------------------------------------------------
# 4. the penalty (eq. 2 and 9; draft eq. 2)


def hand_penalty(model, lam, lam2, p):
    """lam * sum |g| + lam2 * sum over non-switch parameters of |theta|^p, from the definitions."""
    total = 0.0
    for name, mod in model.named_modules():
        for pname in list(mod._parameters):
            if mod._parameters[pname] is None:
                continue
            base = pname[:-5] if pname.endswith("_orig") else pname
            t = effective(mod, base).detach().reshape(-1).tolist()
            if isinstance(mod, Switch):
                gates = t if mod.parametrization == "signed" else [max(0.0, v) for v in t]
                total += lam * math.fsum(abs(v) for v in gates)
            else:
                total += lam2 * math.fsum(abs(v) ** p for v in t)
    return total


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_penalty_and_its_gradient_by_hand(arch, parametrization, p):
    model, x = _zoo(arch)
    gm = set_gates(insert_switches(model, x, parametrization=parametrization), seed=6)
    lam, lam2 = 0.3, 0.05
    pen = shrinknets_penalty(gm, lam, lam2, p)
    assert pen.dim() == 0 and pen.dtype == torch.float64
    assert abs(float(pen) - hand_penalty(gm, lam, lam2, p)) <= TOL
    pen.backward()
    for name, q in gm.named_parameters():
        w = q.detach()
        if name.startswith("switches."):
            if parametrization == "signed":
                hand = lam * torch.sign(w)
            else:
                hand = lam * (w > 0).to(w)  # d|max(0, theta)|: 1 above 0, else 0
        else:
            hand = lam2 * torch.sign(w) if p == 1 else 2 * lam2 * w
        assert maxdiff(q.grad, hand) <= TOL, name
    # the pieces
    assert abs(float(shrinknets_penalty(gm, lam, 0.0, p)) - hand_penalty(gm, lam, 0.0, p)) <= TOL
    assert abs(float(shrinknets_penalty(gm, 0.0, lam2, p)) - hand_penalty(gm, 0.0, lam2, p)) <= TOL


def test_penalty_counts_what_the_forward_pass_uses_on_masked_models():
    """A masked unit counts as removed: the masked twin's penalty equals the shrunk model's."""
    model, x = _zoo("mlp_bn")
    gm = set_gates(insert_switches(model, x), seed=6)
    shrunk, masked = copy.deepcopy(gm), copy.deepcopy(gm)
    units = {"fc1": [0, 3], "fc2": [1]}
    remove_units(shrunk, units, example_input=x)
    mask_units(masked, units, example_input=x)
    for p in (1, 2):
        a = float(shrinknets_penalty(shrunk, 0.2, 0.07, p))
        b = float(shrinknets_penalty(masked, 0.2, 0.07, p))
        assert abs(a - hand_penalty(shrunk, 0.2, 0.07, p)) <= TOL
        assert abs(b - hand_penalty(masked, 0.2, 0.07, p)) <= TOL
        assert abs(a - b) <= TOL


def test_penalty_errors_and_zero():
    model, x = _zoo("mlp")
    gm = insert_switches(model, x)
    for bad in (dict(p=3), dict(p=0), dict(lam=-0.1), dict(lam2=-1e-3), dict(lam=True),
                dict(lam="1")):
        kw = {**dict(lam=0.1, lam2=0.0, p=2), **bad}
        with pytest.raises(ValueError):
            shrinknets_penalty(gm, **kw)
    with pytest.raises(ValueError, match="no switch"):
        shrinknets_penalty(model, 0.1)
    zero = shrinknets_penalty(gm, 0.0, 0.0)
    assert zero.dim() == 0 and float(zero) == 0.0
    # weight decay alone needs no switches
    alone = float(shrinknets_penalty(model, 0.0, 0.5, 1))
    assert abs(alone - hand_penalty(model, 0, 0.5, 1)) <= TOL


# ---------------------------------------------------------------------------
# 5. removal strategies (Sec. 4.1; draft Sec. 5.2) on scripted gate trajectories


def T(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_threshold_strategy():
    s = Threshold(0.1)
    assert s("fc", T(0.05, -0.1, 0.2, -0.3, 0.0, 0.1000001)).tolist() == [
        True, True, False, False, True, False]
    assert Threshold(0.0)("fc", T(0.0, 1e-300, -0.0, -1e-300)).tolist() == [
        True, False, True, False]
    assert Threshold().threshold == 1e-3
    for bad in (-0.1, True, "0.1"):
        with pytest.raises(ValueError):
            Threshold(bad)


def test_sign_change_strategy_first_crossing_and_zero_gates():
    s = SignChange()
    traj = [T(1.0, -1.0, 0.5, 0.0, 2.0),
            T(0.5, -0.5, -0.2, 0.3, 1.0),
            T(0.1, -0.7, -0.3, 0.4, 0.0),
            T(-0.1, -0.2, -0.4, 0.2, 0.5)]
    expected = [[False, False, False, True, False],   # a zero gate is dead
                [False, False, True, False, False],   # unit 2 crosses; 0 -> + is no crossing
                [False, False, False, False, True],   # unit 4 at 0; unit 2 stays negative
                [True, False, False, False, False]]   # unit 0 crosses; unit 4 back to + (memory +)
    for gate, exp in zip(traj, expected):
        assert s("fc", gate).tolist() == exp
    # layers are independent
    assert s("other", T(-1.0, 1.0)).tolist() == [False, False]
    assert s("other", T(1.0, 1.0)).tolist() == [True, False]


def _flips_needed(a, thr):
    """Smallest n with 2 (1 - a^n) > thr: a sign flipping at every step, from v = 0."""
    n = 1
    while not 2.0 * (1.0 - a ** n) > thr:
        n += 1
    return n


@pytest.mark.parametrize("inertia,threshold", [(0.9, 1.0), (0.5, 1.5), (0.99, 0.5)])
def test_sign_variance_closed_forms(inertia, threshold):
    """v <- a v + (1 - a) (s_t - s_{t-1})^2 / 2, s in {-1, 1}, 0 counting as -1.

    Units: 0 always +; 1 crosses once at t = 2 and stays; 2 flips at every
    step; 3 goes from + to exactly 0 at t = 1 and stays (the draft's off
    state); 4 goes from - to 0 (no change of s). Closed forms: v_1 = 2 (1-a)
    a^(t-2), v_2 = 2 (1 - a^t), v_3 = 2 (1-a) a^(t-1), v_0 = v_4 = 0. Only
    unit 2 dies, first after the number of flips the formula implies.
    """
    a = inertia
    n_star = _flips_needed(a, threshold)
    s = SignVariance(inertia, threshold)
    first_dead = None
    for t in range(n_star + 40):
        gate = T(0.8, 0.6 if t < 2 else -0.6, 0.3 if t % 2 == 0 else -0.3,
                 0.5 if t < 1 else 0.0, -0.4 if t < 1 else 0.0)
        dead = s("fc", gate)
        v = s.state_dict()["state"]["fc"]["var"]
        hand = [0.0,
                0.0 if t < 2 else 2 * (1 - a) * a ** (t - 2),
                2 * (1 - a ** t),
                0.0 if t < 1 else 2 * (1 - a) * a ** (t - 1),
                0.0]
        assert maxdiff(v, T(*hand)) <= 1e-12, t
        assert dead.tolist() == [False, False, hand[2] > threshold, False, False]
        if dead[2] and first_dead is None:
            first_dead = t
    assert first_dead == n_star  # t flips have happened at call t
    # the paper's default: ~7 flips in a row at a = 0.9, a single crossing peaks at 0.2
    assert _flips_needed(0.9, 1.0) == 7


def test_sign_variance_step_by_step_against_a_hand_recursion():
    gen = torch.Generator().manual_seed(3)
    a, thr = 0.8, 0.6
    s = SignVariance(a, thr)
    v, prev = [0.0] * 4, None
    for t in range(60):
        # units flip with probabilities 0, 0.1, 0.5, 0.9 per step
        u = torch.rand(4, generator=gen)
        if prev is None:
            signs = [1.0, 1.0, -1.0, 1.0]
        else:
            signs = [-p if float(ui) < q else p for p, ui, q in zip(prev, u, (0.0, 0.1, 0.5, 0.9))]
        gate = T(*[sg * (0.1 + float(ui)) for sg, ui in zip(signs, u)])
        dead = s("fc", gate)
        if prev is not None:
            v = [a * vi + (1 - a) * (sg - p) ** 2 / 2 for vi, sg, p in zip(v, signs, prev)]
        prev = signs
        assert maxdiff(s.state_dict()["state"]["fc"]["var"], T(*v)) <= 1e-12
        assert dead.tolist() == [vi > thr for vi in v]
    assert v[0] == 0.0 and v[3] > thr  # the steady unit never, the jittering one dies


def test_sign_variance_errors():
    for kw in (dict(inertia=0.0), dict(inertia=1.0), dict(inertia=-0.5), dict(inertia=True),
               dict(threshold=0.0), dict(threshold=-1.0), dict(threshold=True)):
        with pytest.raises(ValueError):
            SignVariance(**kw)


def test_aggressiveness_strategy():
    assert Aggressiveness(0.0)("fc", T(0.0, 0.3, -0.2, 0.0, 1e-9)).tolist() == [
        True, False, False, True, False]  # gamma = 0: only the gates already off
    # gamma = 0.5: mean |g| = 3.6 / 5 = 0.72, threshold 0.36
    assert Aggressiveness(0.5)("fc", T(0.1, 1.0, 2.0, -0.5, 0.0)).tolist() == [
        True, False, False, False, True]
    gen = torch.Generator().manual_seed(0)
    for gamma in (0.1, 0.5, 1.0, 2.0):
        g = torch.randn(40, generator=gen, dtype=torch.float64)
        mean = math.fsum(abs(v) for v in g.tolist()) / 40
        assert Aggressiveness(gamma)("fc", g).tolist() == [
            abs(v) <= gamma * mean for v in g.tolist()]
    for bad in (-0.1, True, "1"):
        with pytest.raises(ValueError):
            Aggressiveness(bad)


def test_strategy_memory_is_sliced_by_position_after_a_removal():
    a = 0.7
    s = SignVariance(a, 1.0)
    steps = [T(1, -1, 1, 1, -1), T(-1, -1, 1, -1, 1), T(1, 1, 1, -1, -1)]
    for g in steps:
        s("fc", g)
    s("other", T(1.0, -1.0))
    old = s.state_dict()["state"]["fc"]
    s.keep("fc", torch.tensor([0, 2, 4]))
    new = s.state_dict()["state"]["fc"]
    assert torch.equal(new["var"], old["var"][[0, 2, 4]])
    assert torch.equal(new["sign"], old["sign"][[0, 2, 4]])
    assert torch.equal(s.state_dict()["state"]["other"]["sign"], T(1.0, -1.0))  # untouched
    s.keep("never-seen", torch.tensor([0]))  # no memory: nothing to slice
    # the next step continues the survivors' recursion
    g = T(-1, 1, 1)
    s("fc", g)
    d = g - old["sign"][[0, 2, 4]]
    assert maxdiff(s.state_dict()["state"]["fc"]["var"],
                   a * old["var"][[0, 2, 4]] + (1 - a) * d * d / 2) <= 1e-12

    c = SignChange()
    c("fc", T(1.0, -1.0, 1.0))
    c.keep("fc", torch.tensor([1, 2]))
    assert c("fc", T(1.0, 1.0)).tolist() == [True, False]  # unit 1 (was -) crossed


@pytest.mark.parametrize("factory", [lambda: SignVariance(0.8, 0.9), SignChange,
                                     lambda: Threshold(0.2), lambda: Aggressiveness(0.5)])
def test_strategy_state_dict_round_trip(factory):
    gen = torch.Generator().manual_seed(1)
    gates = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(12)]
    s = factory()
    for g in gates[:6]:
        s("fc", g)
        s("fc2", g[:3])
    sd = s.state_dict()
    frozen = copy.deepcopy(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)  # checkpoints load with weights_only=True
    buf.seek(0)
    restored = factory()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    for g in gates[6:]:
        assert torch.equal(s("fc", g), restored("fc", g))
        assert torch.equal(s("fc2", g[:3]), restored("fc2", g[:3]))
    a, b = s.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    for layer, fields in a.get("state", {}).items():
        for k, v in fields.items():
            assert torch.equal(v, b["state"][layer][k])
    # the saved dict was a copy: later steps did not change it
    for layer, fields in sd.get("state", {}).items():
        for k, v in fields.items():
            assert torch.equal(v, frozen["state"][layer][k])


# ---------------------------------------------------------------------------
# 6. the draft's max(0, theta): dead units stay dead under gradient descent


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_relu_switches_keep_dead_units_dead(opt):
    model, x = _zoo("mlp")
    torch.manual_seed(2)
    gm = insert_switches(model, x, parametrization="relu", init="uniform")
    dead = {"fc1": [1, 3], "fc2": [2]}
    with torch.no_grad():
        gm.switches.fc1.weight[1] = -0.5
        gm.switches.fc1.weight[3] = 0.0  # exactly at the kink
        gm.switches.fc2.weight[2] = -1e-3
    start = {k: v.weight.detach().clone() for k, v in gm.switches.items()}
    optimizer = (torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9) if opt == "sgd"
                 else torch.optim.Adam(gm.parameters(), lr=0.05))
    seen = {}
    hooks = [gm.switches[k].register_forward_hook(
        lambda m, i, o, k=k: seen.__setitem__(k, o.detach())) for k in dead]
    gen = torch.Generator().manual_seed(5)
    for _ in range(40):
        xb = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        yb = torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        loss = F.cross_entropy(gm(xb), yb) + shrinknets_penalty(gm, 0.02, 1e-3, 2)
        loss.backward()
        for k, idx in dead.items():
            assert torch.equal(gm.switches[k].weight.grad[idx], torch.zeros(len(idx),
                                                                           dtype=torch.float64))
            assert torch.equal(seen[k][:, idx], torch.zeros(16, len(idx), dtype=torch.float64))
        optimizer.step()
    for h in hooks:
        h.remove()
    for k, idx in dead.items():
        w = gm.switches[k].weight.detach()
        assert torch.equal(w[idx], start[k][idx])  # bit for bit
        alive = [i for i in range(w.numel()) if i not in idx]
        assert not torch.equal(w[alive], start[k][alive])  # the others did train

    # the signed beta has no off state: beta = 0 still gets a gradient from the data
    # (fc2 -> switch -> tanh: d/d beta_i = sum over the batch of dL/dtanh * fc2(x)_i)
    s = insert_switches(model, x, layers=["fc2"], init="constant", value=0.0)
    F.cross_entropy(s(x), torch.zeros(6, dtype=torch.long)).backward()
    assert bool((s.switches.fc2.weight.grad != 0).all())


# ---------------------------------------------------------------------------
# 7. neural garbage collection (Sec. 4.2) against its masked twin


ZOO_WIDTHS = {"mlp": {"fc1": 12, "fc2": 10}, "cnn": {"conv1": 6, "conv2": 6, "fc1": 8},
              "nobias": {"conv1": 5, "conv2": 5, "fc1": 6}}

# arch, parametrization, strategy, lambda, units switched off by hand before any step
TWINS = {
    "mlp-relu-threshold": ("mlp", "relu", lambda: Threshold(0.0), 0.02,
                           {"fc1": [1, 5, 11], "fc2": [0]}),
    "mlp-relu-aggressiveness": ("mlp", "relu", lambda: Aggressiveness(0.3), 0.02, {}),
    "mlp-signed-signvariance": ("mlp", "signed", lambda: SignVariance(0.5, 0.9), 0.02, {}),
    "cnn-relu-signchange": ("cnn", "relu", SignChange, 0.05, {"conv1": [0, 2], "fc1": [3]}),
    "cnn-signed-threshold": ("cnn", "signed", lambda: Threshold(0.3), 0.02, {}),
    "nobias-signed-threshold": ("nobias", "signed", lambda: Threshold(0.3), 0.02, {}),
}


def _twin_run(case, steps=20):
    arch, parametrization, strategy, lam, kill = TWINS[case]
    model, shape = build(arch, ZOO_WIDTHS[arch])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((1,) + shape, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    gm = insert_switches(model, x0, parametrization=parametrization,
                         init="uniform" if parametrization == "relu" else "normal")
    n_out = gm(x0).shape[1]
    data = [(torch.randn((16,) + shape, generator=gen, dtype=torch.float64),
             torch.randint(0, n_out, (16,), generator=gen)) for _ in range(steps)]
    runs = {}
    for remove in (True, False):
        m = copy.deepcopy(gm)
        with torch.no_grad():  # the same units, before any removal shifts indices
            for layer, idx in kill.items():
                m.switches[layer].weight[idx] = -0.1
        opt = torch.optim.Adam(m.parameters(), lr=0.02)
        gc = GarbageCollector(strategy(), remove=remove, example_input=x0)
        losses, costs = [], []
        for t, (x, y) in enumerate(data):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y) + shrinknets_penalty(m, lam, 1e-3, 2)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            gc.step(t, m, opt)
            # the running cost, recomputed by hand from the model as it is now
            costs.append([t, hand_input_neurons(m), count_macs(m, x0), count_params(m)])
            if arch == "mlp":
                assert costs[-1][2] == hand_mlp_macs(m)
            assert input_neurons(m) == costs[-1][1]
        runs[remove] = (m, opt, gc, losses, costs)
    return gm, data, runs


@pytest.mark.parametrize("case", sorted(TWINS))
def test_garbage_collection_matches_the_masked_twin(case):
    gm, data, runs = _twin_run(case)
    (shrunk, opt_s, gc_s, loss_s, cost_s), (masked, opt_m, gc_m, loss_m, cost_m) = (
        runs[True], runs[False])
    # same losses (task loss + penalty) at every step
    assert max(abs(a - b) for a, b in zip(loss_s, loss_m)) <= 1e-9
    # the same rounds, and units were removed mid-training (not only at the first call)
    rounds = [(r.step, r.pruned, r.remaining) for r in gc_s.history]
    assert rounds == [(r.step, r.pruned, r.remaining) for r in gc_m.history]
    assert len({r[0] for r in rounds}) >= 2 and rounds[-1][0] > 0
    # cost rows: [t, input neurons, MACs, params] of the model after each call
    assert gc_s.cost == cost_s and gc_m.cost == cost_m
    assert [r[3] for r in cost_s] == [r[3] for r in cost_m]  # masks do not count as params
    assert all(r[1] == cost_m[0][1] and r[2] == cost_m[0][2] for r in cost_m)  # dense twin
    assert cost_s[-1][1] < cost_m[-1][1] and cost_s[-1][2] < cost_m[-1][2]
    # physically smaller, same function
    x = data[0][0]
    assert maxdiff(outputs(shrunk, x), outputs(masked, x)) <= 1e-9
    for layer, sw in switches(shrunk).items():
        mk = masked.get_submodule(layer)
        keep = torch.nonzero(mk.weight_mask).flatten() if hasattr(mk, "weight_mask") else \
            torch.arange(mk.num_channels)
        assert sw.num_channels == keep.numel()
        orig = getattr(mk, "weight_orig", mk.weight)
        assert maxdiff(sw.weight, orig[keep]) <= 1e-9
        # the optimizer state was sliced with the parameters
        for k in ("exp_avg", "exp_avg_sq"):
            assert maxdiff(opt_s.state[sw.weight][k], opt_m.state[orig][k][keep]) <= 1e-9
    for p in shrunk.parameters():
        assert opt_s.state[p]["exp_avg"].shape == p.shape == opt_s.state[p]["exp_avg_sq"].shape
    assert {id(p) for g in opt_s.param_groups for p in g["params"]} == \
        {id(p) for p in shrunk.parameters()}


def test_garbage_collection_of_an_mlp_keeps_every_tensor_of_the_masked_twin():
    """MLP: each weight of the shrunk net is the masked twin's at (kept rows, kept columns)."""
    _, _, runs = _twin_run("mlp-relu-threshold")
    (shrunk, opt_s, *_), (masked, opt_m, gc_m, *_) = runs[True], runs[False]
    keep = {n: [i for i in range(ZOO_WIDTHS["mlp"][n]) if i not in gc_m.masked.get(n, [])]
            for n in ("fc1", "fc2")}
    rows = {"fc1": keep["fc1"], "fc2": keep["fc2"], "fc3": list(range(3))}
    cols = {"fc1": list(range(6)), "fc2": keep["fc1"], "fc3": keep["fc2"]}
    for n in ("fc1", "fc2", "fc3"):
        for t in ("weight", "bias"):
            ps, pm = getattr(shrunk, n)._parameters[t], getattr(masked, n)._parameters.get(
                t + "_orig", getattr(masked, n)._parameters.get(t))
            sel = (lambda v: v[rows[n]][:, cols[n]]) if t == "weight" else (lambda v: v[rows[n]])
            assert maxdiff(ps, sel(pm)) <= 1e-9, (n, t)
            for k in ("exp_avg", "exp_avg_sq"):
                assert maxdiff(opt_s.state[ps][k], sel(opt_m.state[pm][k])) <= 1e-9, (n, t, k)


def test_garbage_collector_honors_min_units():
    model, x = _zoo("mlp")
    gm = set_gates(insert_switches(model, x), seed=8)
    gates = {k: v.weight.detach().clone() for k, v in switches(gm).items()}
    shrunk, masked = copy.deepcopy(gm), copy.deepcopy(gm)
    GarbageCollector(Threshold(10.0), min_units=3, example_input=x).step(0, shrunk)
    gc_m = GarbageCollector(Threshold(10.0), remove=False, min_units=3, example_input=x)
    gc_m.step(0, masked)
    for k, g in gates.items():  # everything is dead: the 3 largest |g| stay, in order
        top = sorted(sorted(range(g.numel()), key=lambda i: -abs(float(g[i])))[:3])
        assert torch.equal(shrunk.get_submodule(k).weight.detach(), g[top])
        layer = k[len("switches."):]
        assert gc_m.masked[layer] == [i for i in range(g.numel()) if i not in top]
    # nothing left to remove: a second call keeps 3 (the masked twin counts its masks)
    assert gc_m.step(1, masked) is None
    assert all(sw.num_channels == 3 for sw in switches(shrunk).values())
    # a floor at the width removes nothing, and the cost is still recorded
    gc = GarbageCollector(Threshold(10.0), min_units=7, example_input=x)
    other = copy.deepcopy(gm)
    assert gc.step(5, other) is None
    assert gc.cost == [[5, 6 + 7 + 5, 6 * 7 + 7 * 5 + 5 * 3, count_params(gm)]]


def test_garbage_collector_errors():
    model, x = _zoo("mlp")
    gm = insert_switches(model, x)
    with pytest.raises(TypeError):
        GarbageCollector(lambda layer, gate: gate == 0)
    with pytest.raises(ValueError):
        GarbageCollector(Threshold(), replacement="median")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            GarbageCollector(Threshold(), min_units=bad)
    with pytest.raises(ValueError, match="mean"):
        GarbageCollector(Threshold(), replacement="mean", example_input=x).step(0, gm)
    assert isinstance(Threshold(), RemovalStrategy)


def test_input_neurons_is_the_sum_of_input_widths():
    model, x = _zoo("cnn")
    assert input_neurons(model) == 1 + 4 + 5 * 9 + 6
    assert input_neurons(insert_switches(model, x)) == input_neurons(model)


# ---------------------------------------------------------------------------
# 8. the "switch" scorer


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_switch_scorer_is_the_gate_magnitude(parametrization):
    model, x = _zoo("cnn")
    gm = set_gates(insert_switches(model, x, parametrization=parametrization), seed=9)
    mask_units(gm, {"conv2": [1]}, example_input=x)  # a masked gate scores 0
    assert SCORERS["switch"] is SwitchScorer
    before = take(gm)
    scores = SCORERS["switch"](example_input=x).score(gm)
    assert_unchanged(before, gm)
    assert sorted(scores) == ["conv1", "conv2", "fc1"]
    for layer, sc in scores.items():
        w = effective(gm.get_submodule("switches." + layer), "weight").detach()
        hand = w.abs() if parametrization == "signed" else w.clamp(min=0)
        assert sc.dtype == torch.float64 and torch.equal(sc, hand)
    assert float(scores["conv2"][1]) == 0.0
    sub = SwitchScorer(["fc1"], example_input=x).score(gm)
    assert list(sub) == ["fc1"] and torch.equal(sub["fc1"], scores["fc1"])


def test_switch_scorer_needs_switches():
    model, x = _zoo("mlp")
    with pytest.raises(ValueError, match="no switch"):
        SwitchScorer().score(model)
    gm = insert_switches(model, x, layers=["fc2"])
    with pytest.raises(ValueError, match="'fc1'"):
        SwitchScorer().score(gm)
    assert list(SwitchScorer(["fc2"]).score(gm)) == ["fc2"]
