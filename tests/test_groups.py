"""Coupled units: residual groups, depthwise and grouped convolutions, concatenation.

Every check is against an independent reference in float64: the masked twin (shapes kept,
the same bias fold), a forward-hook reference that holds each removed producer channel at
its constant, hand-made constant channels, and a masked twin trained step for step.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from coupled import COUPLED, INPUT, build, conv_bn
from helpers_snapshot import assert_unchanged, take
from hypothesis import given, settings
from hypothesis import strategies as st

from pruners import (InexactReplacementWarning, UnsupportedArchitecture, mask_units,
                     remove_units, trace)

TOL = 1e-10


def inputs(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn((n,) + INPUT, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def random_units(graph, seed: int) -> dict[str, list[int]]:
    """Some units of every prunable group (never all); the same count from every conv group
    of a grouped convolution."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in graph.prunable:
        group = graph.groups[name]
        if group.partitions:
            parts = next(iter(group.partitions.values()))
            # balanced, and two inputs left in every conv group
            r = int(torch.randint(0, min(p.numel() for p in parts) - 1, (1,), generator=gen))
            idx = [int(c) for p in parts for c in p[torch.randperm(p.numel(), generator=gen)[:r]]]
        else:
            k = int(torch.randint(0, group.size, (1,), generator=gen))
            idx = torch.randperm(group.size, generator=gen)[:k].tolist()
        for m in group.members:  # every member keeps a channel
            own = group.channels[m].tolist()
            if all(c in idx for c in own):
                idx.remove(own[0])
        if idx:
            out[name] = idx
    return out


def held_reference(model: nn.Module, report) -> nn.Module:
    """A copy whose removed producer channels output their constants (forward hooks)."""
    ref = copy.deepcopy(model)
    for m, idx in report.member_indices.items():
        if idx.numel() and m in report.constants:
            vals = report.constants[m]

            def hook(_mod, _inp, out, idx=idx, vals=vals):
                out = out.clone()
                out[:, idx] = vals.to(out).reshape((1, -1) + (1,) * (out.dim() - 2))
                return out
            ref.get_submodule(m).register_forward_hook(hook)
    return ref


# --------------------------------------------------------------------------- the groups


GROUPS = {
    "basic_identity": {"stem.0": ["stem.0", "body.branch2.0"], "body.branch1.0": None},
    "basic_projection": {"stem.0": None, "body.branch1.0": None,
                         "body.branch2.0": ["body.branch2.0", "body.shortcut.0"]},
    "bottleneck": {"stem.0": None, "body.reduce.0": None, "body.spatial.0": None,
                   "body.expand.0": ["body.expand.0", "body.shortcut.0"]},
    "stage": {"stem.0": ["stem.0", "body.0.branch2.0", "body.1.branch2.0"],
              "body.0.branch1.0": None, "body.1.branch1.0": None, "body.2.branch1.0": None,
              "body.2.branch2.0": ["body.2.branch2.0", "body.2.shortcut.0", "body.3.branch2.0"],
              "body.3.branch1.0": None},
    "inverted_residual": {"stem.0": ["stem.0", "body.0.project.0", "body.1.project.0"],
                          "body.0.expand.0": None, "body.1.expand.0": None},
    "grouped": {"stem.0": None, "body.inner.0": None, "body.grouped.0": None,
                "body.out.0": None},
    "dense": {"stem.0": None, "body.layer1.2": None, "body.layer2.2": None,
              "body.transition.2": None},
    "residual_concat": {"stem.0": ["stem.0", "body.a.0", "body.b.0"], "body.c.0": None},
}


@pytest.mark.parametrize("name", list(COUPLED))
def test_the_groups_are_the_coupled_producers(name):
    graph = trace(build(name), inputs(1))
    expected = {g: members or [g] for g, members in GROUPS[name].items()}
    assert {g: graph.groups[g].members for g in graph.prunable} == expected
    for g, members in expected.items():
        for m in members:  # any member's name addresses its group
            assert graph.group_of(m).name == g and graph.producers[m].group == g
    assert not graph.groups["head.fc"].prunable


def test_group_channels_follow_the_concatenation():
    graph = trace(build("residual_concat"), inputs(1))
    group = graph.groups["stem.0"]
    assert group.size == 6
    assert group.channels["stem.0"].tolist() == [0, 1, 2, 3, 4, 5]
    assert group.channels["body.a.0"].tolist() == [0, 1]        # x + cat(a, b): a first
    assert group.channels["body.b.0"].tolist() == [2, 3, 4, 5]
    assert [n.kind for n in group.nodes].count("join") == 1
    # the head reads the stream at offset 0 and body.c's channels after it
    head = [c for c in graph.groups["body.c.0"].consumers if c.name == "head.fc"]
    assert len(head) == 1


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("replacement", [None, "zero", "mean"])
@pytest.mark.parametrize("name", list(COUPLED))
def test_masked_equals_removed(name, replacement, kernel):
    x = inputs()
    removed, masked = build(name, kernel), build(name, kernel)
    units = random_units(trace(removed, x[:1]), seed=len(name) + kernel)
    with _no_check():
        rep_r = remove_units(removed, units, replacement=replacement, data=[(x, None)])
        rep_m = mask_units(masked, units, replacement=replacement, data=[(x, None)])
    with torch.no_grad():
        assert (removed(x) - masked(x)).abs().max() <= TOL
    assert rep_r.removed == rep_m.removed == {g: len(i) for g, i in units.items()}
    assert rep_r.params_after == rep_m.params_after < rep_r.params_before
    # the shrunk model's widths: every member lost its channels of the removed group channels
    graph = trace(build(name, kernel), x[:1])
    for g, idx in units.items():
        group = graph.groups[g]
        for m in group.members:
            lost = int(torch.isin(group.channels[m], torch.tensor(idx)).sum())
            assert removed.get_submodule(m).weight.shape[0] == graph.producers[m].num_units - lost
            assert lost == len(idx) or len(group.members) > 1


@contextlib.contextmanager
def _no_check():
    """Padded layers make some folds inexact at the borders: masked and removed agree anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactReplacementWarning)
        yield


@pytest.mark.parametrize("name", list(COUPLED))
def test_mean_replacement_equals_the_held_reference(name):
    """No padding on the removed channels' paths: removal holds each channel at its mean."""
    x = inputs()
    model = build(name, kernel=1)
    original = copy.deepcopy(model)
    units = random_units(trace(model, x[:1]), seed=7)
    report = remove_units(model, units, replacement="mean", data=[(x, None)])
    assert report.inexact == []
    ref = held_reference(original, report)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-9
        # the constants are the members' means on the unmodified model
        for m, idx in report.member_indices.items():
            out = {}
            h = original.get_submodule(m).register_forward_hook(
                lambda _m, _i, o: out.__setitem__("o", o))
            original(x)
            h.remove()
            mean = out["o"].transpose(0, 1).reshape(out["o"].shape[1], -1).mean(1)
            torch.testing.assert_close(report.constants[m], mean[idx], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, group, consumer", [
    ("basic_identity", "stem.0", "body.branch1.0"),     # a 3x3 convolution reads the stream
    ("stage", "stem.0", "body.0.branch1.0"),
    ("inverted_residual", "body.0.expand.0", "body.0.project.0"),  # a padded depthwise first
])
def test_padding_on_the_path_is_exact_in_the_interior_and_reported(name, group, consumer):
    """Zero padding on the path of the held channels: the fold is exact away from the border,
    and the deviation the report measures is the deviation from the held reference."""
    x = inputs()
    for channel in range(4):  # a channel whose held value the border changes (not clamped)
        model = build(name, kernel=3)
        with torch.no_grad():  # activations past 0: a held value that padding can change
            for node in trace(model, x[:1]).groups[group].nodes:
                if node.kind == "op" and isinstance(model.get_submodule(str(node.op.target))
                                                    if node.op.kind == "module" else None,
                                                    nn.BatchNorm2d):
                    model.get_submodule(node.op.target).bias.add_(3.0)
        original = copy.deepcopy(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InexactReplacementWarning)
            report = remove_units(model, {group: [channel]}, replacement="mean",
                                  data=[(x, None)])
        assert bool(report.inexact) == any("inexact at the borders" in str(w.message)
                                           for w in caught)
        ref = held_reference(original, report)
        with torch.no_grad():
            deviation = float((model(x) - ref(x)).abs().max())
        if report.inexact:
            assert report.max_deviation == pytest.approx(deviation, rel=1e-12, abs=1e-15)
        else:
            assert deviation <= 1e-9  # a held 0 (a clamped activation) is exact everywhere
        if deviation > 1e-6:
            break
    assert deviation > 1e-6 and consumer in report.inexact
    outs = {}
    for tag, net in (("removed", model), ("reference", ref)):
        h = net.get_submodule(consumer).register_forward_hook(
            lambda _m, _i, o, tag=tag: outs.__setitem__(tag, o))
        with torch.no_grad():
            net(x)
        h.remove()
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (outs["removed"][inner] - outs["reference"][inner]).abs().max() <= 1e-9
    assert (outs["removed"] - outs["reference"]).abs().max() > 1e-6  # the border differs


def _constant_stream_channel(model: nn.Module, graph, channel: int, zero: bool) -> None:
    """Make every member's output channel constant (a zero filter): the stream channel is
    constant; with ``zero`` its BatchNorm outputs 0 as well."""
    group = graph.groups["stem.0"]
    with torch.no_grad():
        for m in group.members:
            model.get_submodule(m).weight[channel] = 0.0
        for node in group.nodes:
            if node.kind == "op" and isinstance(model.get_submodule(node.op.target)
                                                if node.op.kind == "module" else None,
                                                nn.BatchNorm2d) and zero:
                bn = model.get_submodule(node.op.target)
                bn.running_mean[channel] = 0.0
                bn.bias[channel] = 0.0


@pytest.mark.parametrize("name", ["basic_identity", "stage", "inverted_residual",
                                  "residual_concat"])
def test_a_constant_stream_channel_is_removed_exactly(name):
    x = inputs()
    for kernel, zero in ((1, False), (3, True)):  # 1x1 consumers, or a constant 0 everywhere
        model = build(name, kernel)
        graph = trace(model, x[:1])
        _constant_stream_channel(model, graph, 1, zero)
        before = copy.deepcopy(model)
        report = remove_units(model, {"stem.0": [1]}, replacement="mean", data=[(x, None)])
        assert report.inexact == []
        with torch.no_grad():
            assert (model(x) - before(x)).abs().max() <= TOL, (name, kernel)
        assert report.removed == {"stem.0": 1}


# --------------------------------------------------------------------------- training goes on


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
                                         (torch.optim.Adam, {"lr": 1e-2})])
def test_twenty_steps_after_removal_equal_a_masked_twin(opt_cls, kw):
    x = inputs(16)
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0))
    nets = [build("stage", kernel=3), build("stage", kernel=3)]
    for net in nets:
        net.train()
    opts = [opt_cls(n.parameters(), **kw) for n in nets]
    for _ in range(3):  # optimizer state before the removal
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    units = {"stem.0": [0, 3], "body.2.branch2.0": [1], "body.0.branch1.0": [2]}
    with _no_check():
        remove_units(nets[0], units, replacement="mean", data=[(x, None)], optimizer=opts[0])
        mask_units(nets[1], units, replacement="mean", data=[(x, None)], optimizer=opts[1])
    for step in range(20):
        losses = []
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert abs(losses[0] - losses[1]) <= 1e-6, step
    for net in nets:
        net.eval()
    with torch.no_grad():
        assert (nets[0](x) - nets[1](x)).abs().max() <= 1e-6


# --------------------------------------------------------------------------- refusals


class SE(nn.Module):
    """Squeeze-and-excitation: the channels are multiplied by a gate computed from them."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, 2), nn.Linear(2, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        return x * s[:, :, None, None]


class Unsupported18(nn.Module):
    """A ResNet-18-style stack with a gated block, a depthwise block with a channel
    multiplier, and a channel-mixing mean: three unsupported patterns at once."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(2, 4, 3)
        self.layer1 = nn.ModuleList([conv_bn(4, 4, 3), conv_bn(4, 4, 3)])
        self.se = SE(4)
        self.expand = conv_bn(4, 6, 1)
        self.dw = conv_bn(6, 12, 3, groups=6)
        self.layer2 = conv_bn(12, 8, 1)
        self.side = conv_bn(8, 5, 1)
        self.fc = nn.Linear(8 + 64, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.layer1[1](F.relu(self.layer1[0](x))))
        x = self.se(x)
        x = F.relu(self.layer2(F.relu(self.dw(F.relu(self.expand(x))))))
        mixed = F.relu(self.side(x)).mean(1).flatten(1)
        return self.fc(torch.cat([F.adaptive_avg_pool2d(x, 1).flatten(1), mixed], 1))


def test_every_unsupported_pattern_is_reported_at_once():
    model = Unsupported18().double().eval()
    x = inputs(1)
    with pytest.raises(UnsupportedArchitecture) as err:
        trace(model, x)
    lines = str(err.value).splitlines()
    assert lines[0] == "4 nodes cannot be represented per channel:"
    assert lines[1].startswith("node 'getitem' (call_function getitem) is not a per-channel "
                               "operation [reached from producer 'se.fc2']")
    assert lines[2].startswith("node 'mul' (call_function mul) combines the channels")
    assert lines[2].endswith("[reached from producers 'stem.0', 'layer1.1.0']")
    assert lines[3] == ("node 'dw_0' (call_module dw.0): depthwise convolution with a channel "
                        "multiplier (12 outputs from 6 inputs) is not supported [reached from "
                        "producers 'expand.0', 'dw.0']")
    assert lines[4] == ("node 'mean' (call_method mean) is not a per-channel operation "
                        "[reached from producer 'side.0']")
    assert lines[5].startswith("pass exclude=['dw.0', 'expand.0', 'layer1.1.0', 'se.fc2', "
                               "'side.0', 'stem.0']")
    graph = trace(model, x, on_unsupported="exclude")
    reached = {n for u in graph.unsupported for n in u.layers}
    assert reached == {"stem.0", "layer1.1.0", "se.fc2", "expand.0", "dw.0", "side.0"}
    assert graph.prunable == ["layer1.0.0", "se.fc1", "layer2.0"]
    for name in reached:
        assert not graph.producers[name].prunable and graph.producers[name].reason
    assert graph.unsupported_layers == sorted(reached)
    # the rest is removed exactly once the reported layers are excluded
    xs = inputs(4)
    units = {"layer1.0.0": [1], "layer2.0": [0, 5]}
    with pytest.raises(UnsupportedArchitecture):
        remove_units(model, units, example_input=x)
    masked = copy.deepcopy(model)
    kw = dict(replacement="mean", data=[(xs, None)], exclude=graph.unsupported_layers)
    with _no_check():
        remove_units(model, units, **kw)
        mask_units(masked, units, **kw)
    with torch.no_grad():
        assert (model(xs) - masked(xs)).abs().max() <= TOL


@pytest.mark.parametrize("fn", [remove_units, mask_units])
def test_bad_group_selections_are_refused_and_change_nothing(fn):
    model = build("stage", kernel=1)
    x = inputs(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model.train()(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()
    model.eval()
    cases = [
        ({"body.0.branch2.0": [4]},
         r"layer 'body.0.branch2.0 \(in group stem.0\)': index 4 is out of range \(the layer "
         r"has 4 units"),
        ({"stem.0": [0, 1, 2, 3]},
         r"group 'stem.0' \(stem.0, body.0.branch2.0, body.1.branch2.0\): removing 4 of 4 "
         r"units would leave 0"),
        ({"stem.0": [1], "body.1.branch2.0": [2]},
         r"layers 'stem.0' and 'body.1.branch2.0' are both in group 'stem.0' .* select "
         r"different channels \(\[1\] and \[2\]\)"),
    ]
    for units, match in cases:
        before = take(model, opt)
        with pytest.raises(ValueError, match=match):
            fn(model, units, optimizer=opt, example_input=x[:1])
        assert_unchanged(before, model, opt)
    # the same channels under two member names are one selection
    report = fn(model, {"stem.0": [1], "body.1.branch2.0": [1]}, optimizer=opt,
                example_input=x[:1])
    assert report.removed == {"stem.0": 1}
    assert report.members == {"stem.0": ["stem.0", "body.0.branch2.0", "body.1.branch2.0"]}


# --------------------------------------------------------------------------- random stacks


@st.composite
def stacks(draw):
    """Random stems, residual blocks (identity or projection), dense concatenations and a
    residual over a concatenation, in any order."""
    width = start = draw(st.integers(2, 5))
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["identity", "projection", "dense", "rescat"]))
        out = width if kind in ("identity", "rescat") else draw(st.integers(2, 6))
        blocks.append((kind, out, draw(st.integers(1, max(1, width - 1)))))
        width = out if kind != "dense" else width + out
    return start, blocks, draw(st.integers(0, 2 ** 16)), draw(st.sampled_from([None, "zero",
                                                                                "mean"]))


class Stack(nn.Module):
    def __init__(self, width, blocks):
        super().__init__()
        self.stem = conv_bn(2, width, 1)
        self.parts = nn.ModuleList()
        self.kinds = [k for k, _, _ in blocks]
        for kind, out, split in blocks:
            if kind == "identity":
                self.parts.append(Basic_(width, width))
            elif kind == "projection":
                self.parts.append(Basic_(width, out))
            elif kind == "dense":
                self.parts.append(conv_bn(width, out, 1))
            else:
                split = min(split, width - 1)
                self.parts.append(nn.ModuleList([conv_bn(width, split, 1),
                                                 conv_bn(width, width - split, 1)]))
            width = width + out if kind == "dense" else (width if kind == "rescat" else out)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for kind, part in zip(self.kinds, self.parts):
            if kind == "dense":
                x = torch.cat([x, F.relu(part(x))], 1)
            elif kind == "rescat":
                x = F.relu(x + torch.cat([part[0](x), part[1](x)], 1))
            else:
                x = part(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Basic_(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, 1), conv_bn(cout, cout, 1)
        self.s = nn.Identity() if cin == cout else conv_bn(cin, cout, 1)

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.s(x))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(stacks())
def test_random_stacks_masked_equals_removed_and_the_held_reference(case):
    width, blocks, seed, replacement = case
    from zoo import randomize_bn

    torch.manual_seed(seed)
    model = randomize_bn(Stack(width, blocks).double(),
                         torch.Generator().manual_seed(seed)).eval()
    masked, original = copy.deepcopy(model), copy.deepcopy(model)
    x = inputs(5, seed=seed % 97)
    units = random_units(trace(model, x[:1]), seed)
    if not units:
        return
    report = remove_units(model, units, replacement=replacement, data=[(x, None)])
    mask_units(masked, units, replacement=replacement, data=[(x, None)])
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() <= TOL
        if replacement is not None:
            assert (model(x) - held_reference(original, report)(x)).abs().max() <= 1e-9


def test_explicit_constants_per_member_of_a_group():
    """{member: values} holds each member's removed channels (ascending) at its values; the
    first member need not hold every selected channel."""
    x = inputs()
    model = build("residual_concat")
    original = copy.deepcopy(model)
    # group channels 1 and 3: stem.0's channels 1 and 3, a's channel 1, b's channel 1
    values = {"stem.0": torch.tensor([0.5, -0.25], dtype=torch.float64),
              "body.a.0": torch.tensor([1.5], dtype=torch.float64),
              "body.b.0": torch.tensor([-2.0], dtype=torch.float64)}
    report = remove_units(model, {"stem.0": [3, 1]}, replacement=values, example_input=x[:1])
    assert {m: i.tolist() for m, i in report.member_indices.items()} == {
        "stem.0": [1, 3], "body.a.0": [1], "body.b.0": [1]}
    for m, v in values.items():
        torch.testing.assert_close(report.constants[m], v, rtol=0, atol=0)
    with torch.no_grad():
        assert (model(x) - held_reference(original, report)(x)).abs().max() <= TOL
    with pytest.raises(ValueError, match="replacement gives no constants for layers "
                                         r"\['body.b.0'\]"):
        remove_units(build("residual_concat"), {"stem.0": [1]}, example_input=x[:1],
                     replacement={k: values[k] for k in ("stem.0", "body.a.0")})


def test_a_bias_created_on_a_masked_layer_stays_off_at_its_masked_rows():
    x = inputs()
    model = build("stage")
    mask_units(model, {"body.0.branch1.0": [0, 2]}, replacement="mean", data=[(x, None)])
    before = copy.deepcopy(model)
    mask_units(model, {"stem.0": [1]}, replacement="mean", data=[(x, None)])
    conv = model.get_submodule("body.0.branch1.0")
    assert torch.equal(conv.bias_mask, torch.tensor([0.0, 1, 0, 1], dtype=torch.float64))
    assert conv.bias[[0, 2]].abs().max() == 0 and conv.bias[[1, 3]].abs().max() > 0
    shrunk = copy.deepcopy(before)
    remove_units(shrunk, {"stem.0": [1]}, replacement="mean", data=[(x, None)])
    remove_units(shrunk, {"body.0.branch1.0": [0, 2]}, example_input=x[:1])
    from pruners import count_params
    assert count_params(model) == count_params(shrunk)
    with torch.no_grad():
        assert (model(x) - shrunk(x)).abs().max() <= TOL


# --------------------------------------------------------------------------- join forms, grouped


class Alpha(nn.Module):
    """``a - 2 b`` and ``a + 2 b`` written as torch.sub, a method and torch.add."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.a, self.b, self.d = conv_bn(2, 4, 1), conv_bn(2, 4, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.form == "sub":
            y = torch.sub(a, b, alpha=2)
        elif self.form == "method":
            y = a.add(b, alpha=2)
        else:
            y = torch.add(a, b, alpha=2)
        return F.adaptive_avg_pool2d(self.d(F.relu(y)), 1).flatten(1)


@pytest.mark.parametrize("form", ["sub", "method", "add"])
def test_every_join_form_folds_its_alpha(form):
    x = inputs()
    torch.manual_seed(0)
    model = Alpha(form).double().eval()
    original = copy.deepcopy(model)
    values = {"a.0": torch.tensor([1.0], dtype=torch.float64),
              "b.0": torch.tensor([-3.0], dtype=torch.float64)}
    report = remove_units(model, {"a.0": [1]}, replacement=values, example_input=x[:1])
    with torch.no_grad():
        assert (model(x) - held_reference(original, report)(x)).abs().max() <= TOL


class CatOfTwoGroups(nn.Module):
    """A grouped convolution (2 groups) reading cat([a, b]): a's channels in its first conv
    group, b's in its second."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(2, 4, 1), conv_bn(2, 4, 1)
        self.g = nn.Conv2d(8, 4, 1, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.g(y)), 1).flatten(1))


def test_a_grouped_convolution_is_balanced_over_all_the_groups_it_reads():
    x = inputs()
    torch.manual_seed(0)
    model = CatOfTwoGroups().double().eval()
    masked = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"layer 'a.0': 'g' is a grouped convolution with 2 "
                                         r"groups.*input channels.*removes \[1, 0\]"):
        remove_units(model, {"a.0": [0]}, example_input=x[:1])
    with pytest.raises(ValueError, match="fewer than 2 input channels"):
        remove_units(model, {"a.0": [0, 1, 2], "b.0": [0, 1, 2]}, example_input=x[:1])
    units = {"a.0": [0, 3], "b.0": [2, 1]}  # two from each conv group: valid together
    remove_units(model, units, replacement="mean", data=[(x, None)])
    mask_units(masked, units, replacement="mean", data=[(x, None)])
    assert model.g.weight.shape == (4, 2, 1, 1) and model.g.groups == 2
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() <= TOL
    assert trace(model, x[:1]).groups["a.0"].size == 2  # still a grouped convolution


def test_exclude_names_layers_only():
    model = build("stage")
    with pytest.raises(ValueError, match=r"not Linear or convolution layers: \['stem.1'\]"):
        trace(model, inputs(1), exclude=["stem.1"])
    assert not trace(model, inputs(1), exclude="stem.0").groups["stem.0"].prunable
