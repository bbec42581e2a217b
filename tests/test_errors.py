"""Errors of remove_units / mask_units: the right exception, the right message,
and model and optimizer exactly as before (validate first, then mutate).

Every case runs through both ``remove_units`` and ``mask_units``; the snapshot
(:mod:`helpers_snapshot`) compares every state_dict tensor bit for bit, the
in/out feature and channel attributes, the parameter objects and shapes, the
grads, train/eval modes, hooks, and the optimizer's state and param groups.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pruners
from helpers_snapshot import assert_unchanged, take
from pruners import UnsupportedArchitecture, mask_units, remove_units

FNS = pytest.mark.parametrize("fn", [remove_units, mask_units], ids=["remove", "mask"])
NAN, INF = float("nan"), float("inf")


def mlp() -> nn.Sequential:
    """fc1 (8 units) -> BN -> ReLU -> fc2 (6 units, no bias) -> Tanh -> fc3 (output, no bias).

    The bias-free consumers would get a bias from any fold, so a fold that
    happened before an error would show in the snapshot.
    """
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        fc1=nn.Linear(5, 8), bn1=nn.BatchNorm1d(8), act1=nn.ReLU(),
        fc2=nn.Linear(8, 6, bias=False), act2=nn.Tanh(), fc3=nn.Linear(6, 3, bias=False)))
    with torch.no_grad():
        net.bn1.running_mean.normal_()
        net.bn1.running_var.uniform_(0.5, 1.5)
        net.bn1.weight.normal_()
        net.bn1.bias.normal_()
    return net.double()


def trained(model: nn.Module, opt_cls=torch.optim.Adam, **kw):
    """The model after one optimizer step (so the optimizer has per-parameter state)."""
    opt = opt_cls(model.parameters(), **kw)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    model.eval()
    return model, opt


def inputs(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def expect_error(fn, model, units, exc, match, optimizer=None, **kwargs):
    """Call ``fn``; it must raise ``exc`` matching ``match`` and change nothing."""
    before = take(model, optimizer)
    with pytest.raises(exc, match=match):
        fn(model, units, optimizer=optimizer, **kwargs)
    assert_unchanged(before, model, optimizer)


# ---------------------------------------------------------------------------
# selection errors: (units, kwargs, exception, message)

X = inputs()
DATA = [(X, torch.zeros(4, dtype=torch.long))]

SELECTION_CASES = {
    "unknown_layer": ({"nope": [0]}, {}, ValueError, r"unknown layer 'nope'"),
    "not_a_producer": ({"bn1": [0]}, {}, ValueError, r"unknown layer 'bn1'"),
    "out_of_range": ({"fc1": [0, 8]}, {}, ValueError,
                     r"layer 'fc1': index 8 is out of range \(the layer has 8 units"),
    "out_of_range_in_second_layer": ({"fc1": [0], "fc2": [1, 6]}, {}, ValueError,
                                     r"layer 'fc2': index 6 is out of range"),
    "negative": ({"fc1": [-1]}, {}, ValueError, r"layer 'fc1': index -1 is out of range"),
    "negative_tensor": ({"fc2": torch.tensor([2, -3])}, {}, ValueError,
                        r"layer 'fc2': index -3 is out of range"),
    "duplicate": ({"fc1": [3, 1, 3]}, {}, ValueError,
                  r"layer 'fc1': index 3 is given more than once"),
    "duplicate_tensor": ({"fc2": torch.tensor([5, 5])}, {}, ValueError,
                         r"layer 'fc2': index 5 is given more than once"),
    "float_list": ({"fc1": [0.0, 1.0]}, {}, ValueError,
                   r"layer 'fc1': index 0\.0 at position 0 is not an integer"),
    "float_scalar": ({"fc1": 1.5}, {}, ValueError,
                     r"layer 'fc1': indices must be integers, got 1\.5"),
    "float_tensor": ({"fc2": torch.tensor([1.0])}, {}, ValueError,
                     r"layer 'fc2': indices must be integers, got dtype torch.float32"),
    "bool_list": ({"fc1": [True, False]}, {}, ValueError,
                  r"layer 'fc1': index True at position 0 is not an integer"),
    "bool_scalar": ({"fc1": True}, {}, ValueError,
                    r"layer 'fc1': index True at position 0 is not an integer"),
    "bool_mask_tensor": ({"fc1": torch.zeros(8, dtype=torch.bool)}, {}, ValueError,
                         r"layer 'fc1': indices must be integers, got dtype torch.bool"),
    "string": ({"fc1": "01"}, {}, ValueError,
               r"layer 'fc1': index '0' at position 0 is not an integer"),
    "two_dim": ({"fc1": [[0, 1]]}, {}, ValueError, r"layer 'fc1': indices must be 1-D"),
    "every_unit": ({"fc1": range(8)}, {}, ValueError,
                   r"layer 'fc1': removing 8 of 8 units would leave 0, fewer than min_units=1"),
    "min_units": ({"fc2": [0, 1, 2]}, {"min_units": 4}, ValueError,
                  r"layer 'fc2': removing 3 of 6 units would leave 3, fewer than min_units=4"),
    "min_units_zero": ({"fc2": [0]}, {"min_units": 0}, ValueError, r"min_units must be >= 1"),
    "output_layer": ({"fc3": [0]}, {}, ValueError,
                     r"layer 'fc3' is not prunable: its output is the model's output"),
    "output_layer_after_valid_one": ({"fc1": [0], "fc3": [0]}, {}, ValueError,
                                     r"layer 'fc3' is not prunable"),
    "excluded_layer": ({"fc1": [0]}, {"exclude": ["fc1"]}, ValueError,
                       r"layer 'fc1' is not prunable: excluded by the caller"),
    "exclude_unknown": ({"fc1": [0]}, {"exclude": ["nope"]}, ValueError,
                        r"exclude names unknown modules: \['nope'\]"),
    "units_not_a_mapping": ([("fc1", [0])], {}, TypeError,
                            r"units must map layer names to indices, got list"),
    # replacement
    "mean_without_data": ({"fc1": [0]}, {"replacement": "mean", "example_input": X}, ValueError,
                          r'replacement="mean" needs data='),
    "unknown_replacement": ({"fc1": [0]}, {"replacement": "median"}, ValueError,
                            r"replacement must be None, \"zero\", \"mean\".*got 'median'"),
    "replacement_wrong_length": ({"fc1": [4, 0]},
                                 {"replacement": torch.tensor([1.0, 2.0, 3.0])}, ValueError,
                                 r"layer 'fc1': 3 replacement values for 2 indices"),
    "replacement_dict_wrong_length": ({"fc1": [0, 1], "fc2": [3]},
                                      {"replacement": {"fc1": 0.5,
                                                       "fc2": torch.tensor([1.0, 2.0])}},
                                      ValueError, r"layer 'fc2': 2 replacement values for 1 "),
    "replacement_tensor_two_layers": ({"fc1": [0], "fc2": [0]},
                                      {"replacement": torch.tensor([1.0])}, ValueError,
                                      r"a replacement tensor needs exactly one layer"),
    "replacement_extra_layer": ({"fc1": [0]}, {"replacement": {"fc1": 1.0, "fc2": 1.0}},
                                ValueError, r"replacement names layers not in units: \['fc2'\]"),
    "replacement_missing_layer": ({"fc1": [0], "fc2": [1]}, {"replacement": {"fc1": 1.0}},
                                  ValueError,
                                  r"replacement gives no constants for layers \['fc2'\]"),
    "replacement_nan": ({"fc1": [0]}, {"replacement": NAN}, ValueError,
                        r"layer 'fc1': replacement values must be finite"),
    "replacement_inf_tensor": ({"fc2": [0, 1]}, {"replacement": torch.tensor([1.0, INF])},
                               ValueError, r"layer 'fc2': replacement values must be finite"),
    "replacement_neg_inf_in_dict": ({"fc1": [0], "fc2": [1]},
                                    {"replacement": {"fc1": 0.0, "fc2": -INF}}, ValueError,
                                    r"layer 'fc2': replacement values must be finite"),
    "replacement_list": ({"fc1": [0, 1]}, {"replacement": [1.0, 2.0]}, TypeError,
                         r"unsupported replacement list"),
    # data and inputs
    "empty_data": ({"fc1": [0]}, {"data": []}, ValueError, r"data is empty"),
    "empty_data_for_mean": ({"fc1": [0]}, {"data": [], "replacement": "mean",
                                           "example_input": X}, ValueError, r"data is empty"),
    "empty_generator_for_mean": ({"fc1": [0]}, {"data": (b for b in []), "replacement": "mean"},
                                 ValueError, r"data is empty"),
    "data_is_a_tensor": ({"fc1": [0]}, {"data": X}, TypeError,
                         r"data must be an iterable of \(inputs, targets\) batches, got a Tensor"),
    "data_batch_not_a_pair": ({"fc1": [0]}, {"data": [X], "example_input": X,
                                             "replacement": "mean"}, TypeError,
                              r"batch 0 of data is a Tensor"),
    "example_input_not_a_tensor": ({"fc1": [0]}, {"example_input": [[0.0] * 5]}, TypeError,
                                   r"example_input must be a Tensor"),
    "example_input_wrong_shape": ({"fc1": [0]},
                                  {"example_input": torch.zeros(1, 7, dtype=torch.float64)},
                                  ValueError,
                                  r"does not run on example_input of shape \(1, 7\)"),
    "optimizer_not_an_optimizer": ({"fc1": [0]}, {"optimizer": {"lr": 0.1}}, TypeError,
                                   r"optimizer must be a torch.optim.Optimizer, got dict"),
}


@FNS
@pytest.mark.parametrize("case", list(SELECTION_CASES))
def test_selection_error_changes_nothing(fn, case):
    units, kwargs, exc, match = SELECTION_CASES[case]
    model, opt = trained(mlp())
    kwargs = dict(kwargs)
    if "optimizer" not in kwargs:
        kwargs["optimizer"] = opt
    optimizer = kwargs.pop("optimizer")
    before = take(model, opt)
    with pytest.raises(exc, match=match):
        fn(model, units, optimizer=optimizer, **kwargs)
    assert_unchanged(before, model, opt)
    # the model still works and is still the same function
    ref, _ = trained(mlp())
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))


@FNS
def test_errors_leave_a_train_mode_model_in_train_mode(fn):
    model, opt = trained(mlp())
    model.train()
    expect_error(fn, model, {"fc1": [8]}, ValueError, r"index 8 is out of range", opt,
                 replacement="mean", data=DATA)
    expect_error(fn, model, {"fc1": [0]}, ValueError, r"must be finite", opt,
                 replacement=NAN, data=DATA)


# ---------------------------------------------------------------------------
# optimizer state that cannot be sliced


@FNS
def test_lbfgs_state_cannot_be_sliced(fn):
    model, opt = trained(mlp(), torch.optim.LBFGS, max_iter=3)
    assert opt.state[model.fc1.weight]  # L-BFGS keeps one flat state on the first parameter
    expect_error(fn, model, {"fc1": [0, 5]}, ValueError,
                 r"optimizer state '\w+' of parameter 'fc1.weight' (is a list|has shape \(\d+,\)), "
                 r"neither a scalar nor shaped like the parameter \(8, 5\): LBFGS state cannot "
                 r"be sliced",
                 opt, replacement="zero")


@FNS
@pytest.mark.parametrize("where", ["producer_bias", "channel_module", "consumer_weight"])
def test_hand_made_state_of_wrong_shape(fn, where):
    model, opt = trained(mlp(), torch.optim.SGD, lr=0.1, momentum=0.9)
    param, name, shape = {
        "producer_bias": (model.fc1.bias, "fc1.bias", (3,)),
        "channel_module": (model.bn1.weight, "bn1.weight", (8, 1)),
        "consumer_weight": (model.fc2.weight, "fc2.weight", (3, 8)),
    }[where]
    opt.state[param]["momentum_buffer"] = torch.zeros(shape, dtype=torch.float64)
    expect_error(fn, model, {"fc1": [2]}, ValueError,
                 rf"optimizer state 'momentum_buffer' of parameter '{name}' has shape "
                 rf"\({', '.join(map(str, shape))},?\)", opt,
                 replacement="mean", data=DATA)


# ---------------------------------------------------------------------------
# graph errors


class Residual(nn.Module):
    """fc1 and fc2 are summed: one group, consumed by fc2 (the inner branch) and fc3."""

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(5, 6)
        self.fc1 = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.fc0(x))
        a = self.fc1(h)
        b = self.fc2(torch.relu(a))
        return self.fc3(torch.relu(a + b))


class Gated(nn.Module):
    """An elementwise product of a layer's output and the model's input: not per channel (a
    product of two layers' same-index channels is, see tests/test_tokens.py)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) * x)


class AddInput(nn.Module):
    """A layer's output added to the model's input: those channels are not units alone."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x) + x))


class ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):  # 6x6 -> 4x4, averaged over the channels
        return self.fc(F.relu(self.conv1(x)).mean(1).flatten(1))


class Multiplier(nn.Module):
    """A depthwise convolution with two outputs per input channel."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.conv2 = nn.Conv2d(4, 8, 3, groups=4)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x):  # 6x6 -> 4x4 -> 2x2
        return self.fc(torch.flatten(F.relu(self.conv2(F.relu(self.conv1(x)))), 1))


class GroupedConv(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3, groups=groups)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):  # 6x6 -> 4x4 -> 2x2
        return self.fc(torch.flatten(F.relu(self.conv2(F.relu(self.conv1(x)))), 1))


class ViewNotFlatten(nn.Module):
    """x.view(B, C, -1) into a Linear over positions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):  # 6x6 -> 4x4
        h = F.relu(self.conv1(x))
        return self.fc(h.view(h.size(0), h.size(1), -1)).sum(dim=1)


class Transpose(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x)).transpose(1, 2)
        return self.fc(h.reshape(h.size(0), -1))


class LinearOverPositions(nn.Module):
    """A Linear applied to the last (spatial) dimension of a conv map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv1(x))).flatten(1)


class SharedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.shared(h))
        h = torch.relu(self.shared(h))
        return self.out(h)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):  # (L, E) unbatched self-attention over the rows
        h = self.fc1(x)
        a, _ = self.attn(h, h, h)
        return self.fc2(a)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 0:
            h = -h
        return self.fc2(h)


IMG = torch.randn(2, 2, 6, 6, dtype=torch.float64)
VEC = torch.randn(2, 5, dtype=torch.float64)

GRAPH_CASES = {
    "elementwise_product": (Gated, VEC, "fc1",
                            r"node 'mul' \(call_function mul\) multiplies the channels by a "
                            r"tensor that is not units.*\[reached from producer 'fc1'\]"),
    "added_to_the_input": (AddInput, VEC, "fc1",
                           r"node 'add' \(call_function add\) adds the channels to channels that "
                           r"are not units \(the model's input.*\[reached from producer 'fc1'\]"),
    "channel_mean": (ChannelMean, IMG, "conv1",
                     r"node 'mean' \(call_method mean\) is not a per-channel operation "
                     r"\[reached from producer 'conv1'"),
    "depthwise_multiplier": (Multiplier, IMG, "conv1",
                             r"node 'conv2' \(call_module conv2\): depthwise convolution with a "
                             r"channel multiplier \(8 outputs from 4 inputs\) is not supported "
                             r"\[reached from producers 'conv1', 'conv2'\]"),
    "view_not_flatten": (ViewNotFlatten, IMG, "conv1",
                         r"node 'view' \(call_method view\) is a reshape other than flatten.*"
                         r"producer 'conv1'"),
    "transpose": (Transpose, IMG, "conv1",
                  r"node 'transpose' \(call_method transpose\) is not a per-channel operation"),
    "linear_over_positions": (LinearOverPositions, IMG, "conv1",
                              r"node 'fc' \(call_module fc\): Linear applied to a 4-D tensor"),
    "shared_linear": (SharedLinear, VEC, "fc1",
                      r"node 'shared' \(call_module shared\): layer 'shared' is called 2 times"),
    "multihead_attention": (Attention, VEC, "fc1",
                            r"node 'attn' \(call_module attn\) reads the channels in attention"
                            r".*producer 'fc1'"),
    "fx_cannot_trace": (DataDependent, VEC, "fc1", r"torch.fx cannot trace DataDependent"),
}


def _graph_model(factory):
    torch.manual_seed(0)
    return factory().double().eval()


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_trace_raises_unsupported_architecture(case):
    factory, x, _, match = GRAPH_CASES[case]
    model = _graph_model(factory)
    before = take(model)
    with pytest.raises(UnsupportedArchitecture, match=match):
        pruners.trace(model, x[:1])
    assert_unchanged(before, model)


@FNS
@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_graph_error_changes_nothing(fn, case):
    factory, x, layer, match = GRAPH_CASES[case]
    model = _graph_model(factory)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    assert issubclass(UnsupportedArchitecture, ValueError)
    expect_error(fn, model, {layer: [0]}, UnsupportedArchitecture, match, opt,
                 replacement="mean", data=[(x, None)])


@FNS
def test_excluding_one_member_excludes_its_group(fn):
    model = _graph_model(Residual)
    x = torch.randn(16, 5, dtype=torch.float64)
    graph = pruners.trace(model, x[:1], exclude=["fc1"])
    assert graph.prunable == ["fc0"]
    for name in ("fc1", "fc2"):  # fc2 is summed with fc1: the group goes as a whole
        assert graph.producers[name].reason == "its member 'fc1' is excluded by the caller"
    expect_error(fn, model, {"fc2": [0]}, ValueError,
                 r"layer 'fc2' \(in group 'fc1'\) is not prunable: its member 'fc1' is excluded",
                 exclude=["fc1"])
    assert pruners.trace(model, x[:1], exclude="fc2").groups["fc1"].reason == \
        "its member 'fc2' is excluded by the caller"
    with pytest.raises(ValueError, match=r"exclude names modules that are not Linear or "
                                         r"convolution layers: \['bn1'\]"):
        pruners.trace(mlp(), exclude=["bn1", "fc1"])

    # the units of fc0 (consumed by fc1 only) are still removed exactly
    reference = copy.deepcopy(model)
    consts = torch.tensor([0.25, -1.5], dtype=torch.float64)
    reference.fc0.register_forward_hook(
        lambda m, i, o: o.index_copy(1, torch.tensor([1, 4]), consts.expand(len(o), 2)))
    report = fn(model, {"fc0": [4, 1]}, replacement={"fc0": consts.flip(0)},
                exclude=["fc1"], data=[(x, None)])
    assert report.removed == {"fc0": 2}
    torch.testing.assert_close(report.constants["fc0"], consts, rtol=0, atol=0)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-12
    if fn is remove_units:
        assert model.fc0.out_features == 4 and model.fc1.in_features == 4


# ---------------------------------------------------------------------------
# the snapshot itself has teeth


def _prune_mask(m, o):
    torch.nn.utils.prune.custom_from_mask(m.fc2, "weight", torch.ones_like(m.fc2.weight))


def _slice(m, o):
    m.fc1.bias.data = m.fc1.bias.data[:-1]


MUTATIONS = {
    "bias_one_ulp": lambda m, o: m.fc1.bias.data[:1].copy_(
        torch.nextafter(m.fc1.bias.data[:1], torch.tensor(INF, dtype=torch.float64))),
    "created_bias": lambda m, o: setattr(m.fc2, "bias", nn.Parameter(torch.zeros(6).double())),
    "sliced_param": _slice,
    "out_features": lambda m, o: setattr(m.fc1, "out_features", 7),
    "running_stats": lambda m, o: m.bn1.running_var.add_(1),
    "grad": lambda m, o: m.fc1.weight.grad.mul_(2),
    "train_mode": lambda m, o: m.act1.train(not m.act1.training),
    "forward_hook": lambda m, o: m.fc2.register_forward_hook(lambda *a: None),
    "forward_pre_hook": lambda m, o: m.fc2.register_forward_pre_hook(lambda *a: None),
    "prune_mask": _prune_mask,
    "optimizer_state": lambda m, o: o.state[m.fc2.weight]["exp_avg"].mul_(-1),
    "optimizer_state_sliced": lambda m, o: o.state[m.fc1.bias].__setitem__(
        "exp_avg", o.state[m.fc1.bias]["exp_avg"][:-1]),
    "optimizer_step": lambda m, o: o.state[m.fc2.weight].__setitem__(
        "step", o.state[m.fc2.weight]["step"] + 1),
    "param_group_grows": lambda m, o: o.param_groups[0]["params"].append(
        nn.Parameter(torch.zeros(3))),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_snapshot_detects_changes(mutation):
    model, opt = trained(mlp())
    before = take(model, opt)
    assert_unchanged(before, model, opt)
    with torch.no_grad():
        MUTATIONS[mutation](model, opt)
    with pytest.raises(AssertionError):
        assert_unchanged(before, model, opt)


# ---------------------------------------------------------------------------
# regressions: library bugs found while writing these tests


@FNS
def test_empty_index_list_is_not_an_error(fn):
    model = mlp().eval()
    report = fn(model, {"fc1": [], "fc2": [1]})
    assert report.removed == {"fc2": 1}


def test_lbfgs_state_checked_when_first_param_is_untouched():
    model, opt = trained(mlp(), torch.optim.LBFGS, max_iter=3)
    expect_error(remove_units, model, {"fc2": [0]}, ValueError, r"LBFGS state cannot be sliced",
                 opt)


@FNS
def test_mixed_train_eval_modes_are_restored(fn):
    model, opt = trained(mlp())
    model.train()
    model.bn1.eval()  # frozen BatchNorm statistics, a common fine-tuning setup
    expect_error(fn, model, {"fc1": [8]}, ValueError, r"index 8 is out of range", opt)


@FNS
def test_unbalanced_grouped_convolution_is_rejected_before_any_change(fn):
    model = _graph_model(lambda: GroupedConv(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(IMG).sum().backward()
    opt.step()
    # conv2 reads conv1's channels 0-1 in its first group and 2-3 in its second
    expect_error(fn, model, {"conv1": [0]}, ValueError,
                 r"layer 'conv1': 'conv2' is a grouped convolution with 2 groups, which must "
                 r"lose the same number of input channels from each group; this selection "
                 r"removes \[1, 0\]", opt, example_input=IMG)
    expect_error(fn, model, {"conv2": [3]}, ValueError,
                 r"'conv2' is a grouped convolution with 2 groups.*removes \[0, 1\]", opt,
                 example_input=IMG)


@FNS
def test_excluded_shared_layer_still_rejected_as_consumer(fn):
    model = _graph_model(SharedLinear)
    expect_error(fn, model, {"fc1": [0]}, UnsupportedArchitecture, r"node 'shared.*called 2",
                 exclude=["shared"])
