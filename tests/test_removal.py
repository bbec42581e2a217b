"""Masked equals removed; constant units removed exactly; mean replacement."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruners import InexactReplacementWarning, count_params, mask_units, remove_units, trace
from zoo import ARCHS, EXACT_FOLD, build


def random_units(model, x, gen, max_frac=0.6):
    graph = trace(model, x[:1])
    units = {}
    for name in graph.prunable:
        n = graph.producers[name].num_units
        k = int(torch.randint(1, max(2, int(n * max_frac) + 1), (1,), generator=gen))
        k = min(k, n - 1)
        units[name] = torch.randperm(n, generator=gen)[:k].tolist()
    return units


def shrunk_widths(name, units):
    _, default, _ = ARCHS[name]
    return {k: v - len(units.get(k, [])) for k, v in default.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("replacement", [None, "zero", "mean"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_equals_removed(arch, replacement, dtype, tol):
    gen = torch.Generator().manual_seed(hash((arch, replacement)) % 2**31)
    model, shape = build(arch, dtype=dtype)
    x = torch.randn((16,) + shape, generator=gen).to(dtype)
    data = [(x[:8], None), (x[8:], None)]
    units = random_units(model, x, gen)
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactReplacementWarning)
        rm = mask_units(masked, units, replacement=replacement, data=data)
        rr = remove_units(removed, units, replacement=replacement, data=data)
    masked.eval(), removed.eval()
    with torch.no_grad():
        diff = (masked(x) - removed(x)).abs().max().item()
    assert diff <= tol

    # Independent reference for the size: the same architecture built with
    # the smaller widths. Its state dict must load strictly; consumers
    # without a bias get one only when a non-zero constant was folded.
    ref, _ = build(arch, shrunk_widths(arch, units), dtype=dtype)
    sd = removed.state_dict()
    created = [k for k in sd if k not in ref.state_dict()]
    assert all(k.endswith(".bias") for k in created)
    if replacement is None:
        assert created == []
    missing = ref.load_state_dict(sd, strict=False)
    assert missing.missing_keys == [] and missing.unexpected_keys == created
    extra = sum(sd[k].numel() for k in created)
    expected = count_params(ref) + extra
    assert rr.params_after == count_params(removed) == expected
    assert rm.params_after == expected  # masked entries are not counted
    assert rr.params_before == count_params(model)
    for name, idx in units.items():
        assert rr.removed[name] == len(idx)


CONSTANT_CASES = {
    # arch, layer whose unit is made constant: through BN, max-pool, flatten
    "cnn-conv1": ("cnn", "conv1"),  # BN2d + ReLU + MaxPool, conv consumer without padding
    "cnn-conv2": ("cnn", "conv2"),  # ReLU + flatten blocks of 9 columns
    "mlp_bn-fc1": ("mlp_bn", "fc1"),  # BN1d + per-channel PReLU
    "conv1d-c1": ("conv1d", "c1"),  # BN1d + ELU + max-pool 1d
    "conv1d-c2": ("conv1d", "c2"),  # GELU + adaptive avg pool + flatten
    "nobias-conv2": ("nobias", "conv2"),  # consumer without bias
    "functional-a": ("functional", "a"),  # leaky_relu(x, 0.1) * 2.0
}


@pytest.mark.parametrize("how", ["explicit", "mean"])
@pytest.mark.parametrize("case", list(CONSTANT_CASES))
def test_constant_unit_removed_exactly(case, how):
    arch, layer = CONSTANT_CASES[case]
    gen = torch.Generator().manual_seed(3)
    model, shape = build(arch)
    mod = model.get_submodule(layer)
    idx = [1, 2]
    consts = torch.tensor([0.7, -1.3], dtype=torch.float64)
    with torch.no_grad():
        mod.weight[idx] = 0
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=torch.float64))
        mod.bias[idx] = consts
    model.eval()
    x = torch.randn((32,) + shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    replacement = {layer: consts} if how == "explicit" else "mean"
    report = remove_units(model, {layer: idx}, replacement=replacement, data=[(x, None)])
    assert report.inexact == []
    torch.testing.assert_close(report.constants[layer], consts, rtol=0, atol=1e-12)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-10


def test_zero_replacement_is_not_plain_drop_through_batchnorm():
    """'zero' folds BN(0) through the activation; None drops the unit."""
    model, shape = build("cnn")
    model.eval()
    x = torch.randn((8,) + shape, dtype=torch.float64)
    with torch.no_grad():
        model.conv1.weight[0] = 0
        model.conv1.bias[0] = 0  # unit 0 outputs exactly zero
        model.bn1.running_mean[0] = 0.5
        model.bn1.bias[0] = 2.0  # BN(0) = 2 - 0.5 * w / sqrt(var) > 0 survives the ReLU
        model.bn1.weight[0] = 1.0
        before = model(x)
    zero, drop = copy.deepcopy(model), copy.deepcopy(model)
    remove_units(zero, {"conv1": [0]}, replacement="zero", example_input=x)
    remove_units(drop, {"conv1": [0]}, example_input=x)
    with torch.no_grad():
        assert (zero(x) - before).abs().max() <= 1e-10
        # dropping the unit loses the BN shift that 'zero' keeps
        assert (drop(x) - before).abs().max() > 1e-3


def mean_hooks(model, layers_idx, x):
    """Means of chosen units, computed with plain forward hooks (reference)."""
    outs = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outs.__setitem__(n, o.detach())) for n in layers_idx]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    means = {}
    for n, idx in layers_idx.items():
        o = outs[n]
        dims = [0] + list(range(2, o.dim()))
        means[n] = o.mean(dim=dims)[idx]
    return means


def hooked_loss(model, layers_idx, means, x, y):
    def make(n):
        idx = torch.tensor(layers_idx[n])
        shape_tail = None

        def hook(m, i, o):
            o = o.clone()
            view = (1, -1) + (1,) * (o.dim() - 2)
            o[:, idx] = means[n].reshape(view)
            return o
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make(n)) for n in layers_idx]
    try:
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ["mlp", "mlp_bn", "cnn", "conv1d", "functional"])
def test_mean_replacement_loss_equals_hooked_reference(arch):
    gen = torch.Generator().manual_seed(11)
    model, shape = build(arch)
    model.eval()
    x = torch.randn((64,) + shape, generator=gen, dtype=torch.float64)
    n_out = model(x[:1]).shape[1]
    y = torch.randint(0, n_out, (64,), generator=gen)
    units = random_units(model, x, gen, max_frac=0.5)
    means = mean_hooks(model, units, x)
    expected = hooked_loss(model, units, means, x, y)
    original = F.cross_entropy(model(x), y).item()
    report = remove_units(model, units, replacement="mean", data=[(x[:40], y[:40]), (x[40:], y[40:])])
    with torch.no_grad():
        got = F.cross_entropy(model(x), y).item()
    assert abs(got - expected) <= 1e-6
    assert abs(got - original) > 1e-6  # the units were not constant: the test has teeth
    for n in units:
        order = torch.argsort(torch.tensor(units[n]))
        torch.testing.assert_close(report.constants[n], means[n][order], rtol=0, atol=1e-10)


def test_zero_padded_conv_consumer_reports_deviation():
    model, shape = build("vgg")
    model.eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((10,) + shape, generator=gen, dtype=torch.float64)
    units = {"features.0": [0, 3]}
    with torch.no_grad():
        model.features[1].bias[[0, 3]] = 3.0  # the constants survive the ReLU
    means = mean_hooks(model, units, x)
    reference = copy.deepcopy(model)
    handles = [reference.features[0].register_forward_hook(
        lambda m, i, o: o.index_copy(1, torch.tensor([0, 3]),
                                     means["features.0"].view(1, -1, 1, 1).expand(
                                         o.shape[0], 2, *o.shape[2:]).contiguous()))]
    with torch.no_grad():
        ref_out = reference(x)
    with pytest.warns(InexactReplacementWarning, match="features.3"):
        report = remove_units(model, units, replacement="mean", data=[(x, None)])
    with torch.no_grad():
        dev = (model(x) - ref_out).abs().max().item()
    assert report.inexact == ["features.3"]
    assert report.max_deviation == pytest.approx(dev, rel=1e-9, abs=1e-12)
    assert dev > 1e-6  # the border effect is real ...
    # ... and confined to the borders: the interior of features.3's output is exact
    inner = {}
    h1 = model.features[3].register_forward_hook(lambda m, i, o: inner.__setitem__("a", o))
    h2 = reference.features[3].register_forward_hook(lambda m, i, o: inner.__setitem__("b", o))
    with torch.no_grad():
        model(x)
        reference(x)
    h1.remove(), h2.remove(), handles[0].remove()
    d = (inner["a"] - inner["b"]).abs()
    assert d[..., 1:-1, 1:-1].max() <= 1e-10
    assert d.max() > 1e-6


def test_masked_then_removed_equals_removed():
    """A model can be pruned with masks first and shrunk later."""
    model, shape = build("cnn")
    model.eval()
    x = torch.randn((8,) + shape, dtype=torch.float64)
    units = {"conv1": [1], "conv2": [0, 4], "fc1": [2]}
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    mask_units(a, units, replacement="mean", data=[(x, None)])
    remove_units(a, units, example_input=x)  # the fold already happened
    remove_units(b, units, replacement="mean", data=[(x, None)])
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() <= 1e-10
    assert count_params(a) == count_params(b)
    assert a.conv2.weight_orig.shape == b.conv2.weight.shape
    assert bool(a.conv2.weight_mask.all())


def test_report_counts_macs_by_hand():
    model, shape = build("cnn")
    x = torch.randn((2,) + shape, dtype=torch.float64)
    report = remove_units(model, {"conv1": [0], "fc1": [1, 2]}, example_input=x)
    # conv1 1->4 3x3 on 12x12 (10x10 out), conv2 4->5 3x3 on 5x5 (3x3 out),
    # fc1 45->6, fc2 6->4
    before = 4 * 100 * 9 + 5 * 9 * 4 * 9 + 45 * 6 + 6 * 4
    after = 3 * 100 * 9 + 5 * 9 * 3 * 9 + 45 * 4 + 4 * 4
    assert (report.macs_before, report.macs_after) == (before, after)
    assert report.remaining == {"conv1": 3, "fc1": 4}


# --------------------------------------------------------------------------- corner cases
# each case is exact against a forward-hook reference, or refused


def held(model, layer, idx, value):
    """Reference: a copy whose unit outputs are overwritten by a forward hook."""
    ref = copy.deepcopy(model)
    ref.get_submodule(layer).register_forward_hook(
        lambda m, i, o: o.index_fill(1, torch.tensor(idx), value))
    return ref


def test_masked_model_shrinks_after_a_forward_pass():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    mask_units(net, {"0": [1, 2]})
    net(x).sum().backward()  # builds a graph through the prune hooks
    remove_units(net, {"0": [1, 2]})
    net(x).sum().backward()
    assert net[0].weight_orig.grad.shape == (6, 4)


def test_inplace_op_that_is_the_only_user_is_fine():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    ref = held(net, "0", [0], -1.0)
    remove_units(net, {"0": [0]}, replacement=-1.0)
    with torch.no_grad():
        assert (net(x) - ref(x)).abs().max() <= 1e-12  # relu(-1) = 0 folded, not -1


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
