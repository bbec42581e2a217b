"""Harness: model zoo, checkpoints, training loop, atomic writes."""

from __future__ import annotations

import copy
import operator
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.harness import atomic
from experiments.harness.checkpoint import (CheckpointError, fit_to_state_dict, load_checkpoint,
                                            model_from_checkpoint, save_checkpoint)
from experiments.harness.models import MODELS, BasicBlock, Bottleneck, build_model
from experiments.harness.training import Callback, TrainConfig, Trainer
from pruners import count_macs, mask_units, remove_units, trace
from zoo import randomize_bn


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# parameter counts computed by hand from each architecture's definition
HAND_COUNTS = {
    # conv 1->8 5x5, conv 8->16 5x5, FC 16*4*4->64->10 (thesis Sec. 2.2: 20,522)
    ("thesis_cnn", ()): (1 * 8 * 25 + 8) + (8 * 16 * 25 + 16) + (256 * 64 + 64) + (64 * 10 + 10),
    # CIFAR: conv 3->8, 8->16, FC 16*5*5=400 -> 64 -> 10
    ("thesis_cifar_cnn", ()): (3 * 8 * 25 + 8) + (8 * 16 * 25 + 16) + (400 * 64 + 64) + 650,
    ("lenet_300_100", ()): 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    # conv 1->20 5x5, 20->50 5x5, FC 50*4*4=800 -> 500 -> 10
    ("lenet5", ()): (20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + 5010,
    ("covertype_net", ()): 54 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 7 + 7,
    ("mlp", (("widths", (784, 256, 256, 10)),)): 784 * 256 + 256 + 256 * 256 + 256 + 2570,
    # vgg-small at width 0.25 on 1x28x28: 16,16,M,32,32,M,64,64,M,128,128,M; conv no bias + BN
    ("vgg", (("config", "vgg-small"), ("width", 0.25), ("in_channels", 1),
             ("image_size", 28))): (
        (1 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9
         + 64 * 128 * 9 + 128 * 128 * 9)
        + 2 * (16 + 16 + 32 + 32 + 64 + 64 + 128 + 128)
        + (128 * 1 * 1 * 128 + 128) + (128 * 10 + 10)),
}


@pytest.mark.parametrize("key", list(HAND_COUNTS), ids=[k[0] for k in HAND_COUNTS])
def test_model_parameter_counts(key):
    name, kwargs = key
    model = build_model(name, **dict(kwargs))
    assert n_params(model) == HAND_COUNTS[key]


def test_thesis_cnn_has_20522_parameters():
    assert n_params(build_model("thesis_cnn")) == 20_522


@pytest.mark.parametrize("name,kwargs,shape", [
    ("thesis_cnn", {}, (1, 28, 28)),
    ("thesis_cifar_cnn", {"activation": "tanh", "batchnorm": True}, (3, 32, 32)),
    ("lenet_300_100", {}, (1, 28, 28)),
    ("lenet5", {}, (1, 28, 28)),
    ("vgg", {"config": "vgg-small", "width": 0.25, "in_channels": 1, "image_size": 28},
     (1, 28, 28)),
    ("covertype_net", {"widths": (8, 6, 4)}, (54,)),
    ("small_cnn", {}, (1, 28, 28)),
])
def test_every_model_is_traceable_and_prunable(name, kwargs, shape):
    model = build_model(name, **kwargs)
    x = torch.randn((2,) + shape)
    graph = trace(model, x[:1])
    assert len(graph.prunable) >= 2
    assert not graph.producers[list(graph.producers)[-1]].prunable
    units = {n: [0] for n in graph.prunable}
    masked = copy.deepcopy(model)
    mask_units(masked, units, replacement="mean", data=[(x, None)])
    remove_units(model, units, replacement="mean", data=[(x, None)])
    model.eval(), masked.eval()
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() <= 1e-5


# ---------------------------------------------------------------------------
# checkpoints


def test_checkpoint_roundtrip_of_a_physically_shrunk_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("thesis_cnn", batchnorm=True)
    x = torch.randn(8, 1, 28, 28)
    remove_units(model, {"conv1": [0, 5], "conv2": [1, 2, 3], "fc1": list(range(0, 64, 3))},
                 replacement="mean", data=[(x, None)])
    mask_units(model, {"fc1": [0]}, example_input=x)  # a prune mask survives too
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"model": "thesis_cnn", "kwargs": {"batchnorm": True}},
                    epoch=3)
    ckpt = torch.load(path, weights_only=True)  # the safe loader accepts it
    assert ckpt["epoch"] == 3
    loaded = model_from_checkpoint(load_checkpoint(path))
    assert loaded.conv1.out_channels == 6 and loaded.conv2.in_channels == 6
    assert loaded.bn2.num_features == 13 and loaded.fc1.out_features == 64 - 22
    assert loaded.fc2.in_features == 42
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert n_params(loaded) == n_params(model)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    model = build_model("mlp", widths=[4, 3, 2])
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, {"model": "mlp", "kwargs": {"widths": [4, 3, 2]}})
    ckpt = load_checkpoint(path)
    ckpt["arch"]["kwargs"]["widths"] = [4, 3, 2, 2]  # an extra layer the weights lack
    with pytest.raises(CheckpointError, match="does not match"):
        model_from_checkpoint(ckpt)


# ---------------------------------------------------------------------------
# residual, depthwise and densely connected zoo models (resnet_cifar, resnet, mobilenet_v2,
# densenet): counts by hand, torch.fx tracing, checkpoints of full and shrunk copies


def _conv(c_in, c_out, k=3, groups=1):  # weights of a bias-free convolution
    return (c_in // groups) * c_out * k * k


def _bn(c):  # weight and bias of a BatchNorm (running statistics are buffers)
    return 2 * c


RESIDUAL_COUNTS = {
    # ResNet-20 (He et al. 2016 Sec. 4.2), 1 input channel, widths 16/32/64, projection
    # shortcuts (option B) at layer2.0 and layer3.0. With 3 input channels it is
    # 272,474 (+ 2 * 16 * 9); without the two projections (the paper's option A) 269,722:
    # the paper's "0.27M".
    ("resnet20", ()): (
        (_conv(1, 16) + _bn(16))                                        # stem
        + 3 * (2 * _conv(16, 16) + 2 * _bn(16))                         # stage 1, 28x28
        + (_conv(16, 32) + _conv(32, 32) + 2 * _bn(32) + _conv(16, 32, 1) + _bn(32))
        + 2 * (2 * _conv(32, 32) + 2 * _bn(32))                         # stage 2, 14x14
        + (_conv(32, 64) + _conv(64, 64) + 2 * _bn(64) + _conv(32, 64, 1) + _bn(64))
        + 2 * (2 * _conv(64, 64) + 2 * _bn(64))                         # stage 3, 7x7
        + (64 * 10 + 10)),                                              # fc
    ("resnet_cifar", (("in_channels", 3),)): 272_186 + 2 * 16 * 9,
    # ResNet-18 at width 0.25: stem 16, stages 16/32/64/128 of two basic blocks each
    ("resnet18", ()): (
        (_conv(1, 16) + _bn(16))
        + 2 * (2 * _conv(16, 16) + 2 * _bn(16))
        + (_conv(16, 32) + _conv(32, 32) + 2 * _bn(32) + _conv(16, 32, 1) + _bn(32))
        + (2 * _conv(32, 32) + 2 * _bn(32))
        + (_conv(32, 64) + _conv(64, 64) + 2 * _bn(64) + _conv(32, 64, 1) + _bn(64))
        + (2 * _conv(64, 64) + 2 * _bn(64))
        + (_conv(64, 128) + _conv(128, 128) + 2 * _bn(128) + _conv(64, 128, 1) + _bn(128))
        + (2 * _conv(128, 128) + 2 * _bn(128))
        + (128 * 10 + 10)),
    # two bottleneck stages at width 1/8: stem 8; 8 -> (8, 8, 32), projection; 32 -> (16, 16,
    # 64) with stride 2, projection
    ("resnet", (("blocks", (1, 1)), ("block", "bottleneck"), ("width", 0.125),
                ("widths", (64, 128)))): (
        (_conv(1, 8) + _bn(8))
        + (_conv(8, 8, 1) + _bn(8) + _conv(8, 8) + _bn(8) + _conv(8, 32, 1) + _bn(32)
           + _conv(8, 32, 1) + _bn(32))
        + (_conv(32, 16, 1) + _bn(16) + _conv(16, 16) + _bn(16) + _conv(16, 64, 1) + _bn(64)
           + _conv(32, 64, 1) + _bn(64))
        + (64 * 10 + 10)),
    # MobileNetV2 small: stem 32; (t, c, n, s) = (1,16,1,1), (6,24,2,2), (6,32,2,2),
    # (6,64,2,2); an inverted residual c_in -> t*c_in -> c_out is expand 1x1 (if t > 1),
    # depthwise 3x3 (groups = t*c_in), project 1x1, each with BN; last 1x1 conv 64 -> 256
    ("mobilenet_v2", ()): (
        (_conv(1, 32) + _bn(32))
        + (_conv(32, 32, 3, groups=32) + _bn(32) + _conv(32, 16, 1) + _bn(16))           # t=1
        + (_conv(16, 96, 1) + _bn(96) + _conv(96, 96, 3, 96) + _bn(96) + _conv(96, 24, 1) + _bn(24))
        + (_conv(24, 144, 1) + _bn(144) + _conv(144, 144, 3, 144) + _bn(144)
           + _conv(144, 24, 1) + _bn(24))
        + (_conv(24, 144, 1) + _bn(144) + _conv(144, 144, 3, 144) + _bn(144)
           + _conv(144, 32, 1) + _bn(32))
        + (_conv(32, 192, 1) + _bn(192) + _conv(192, 192, 3, 192) + _bn(192)
           + _conv(192, 32, 1) + _bn(32))
        + (_conv(32, 192, 1) + _bn(192) + _conv(192, 192, 3, 192) + _bn(192)
           + _conv(192, 64, 1) + _bn(64))
        + (_conv(64, 384, 1) + _bn(384) + _conv(384, 384, 3, 384) + _bn(384)
           + _conv(384, 64, 1) + _bn(64))
        + (_conv(64, 256, 1) + _bn(256))
        + (256 * 10 + 10)),
    # DenseNet-BC, k = 12, blocks (4, 4, 4), stem 2k = 24: a dense layer on c channels is
    # BN(c) conv1x1 c -> 48, BN(48), conv3x3 48 -> 12; channels 24 -> 72 | 36 -> 84 | 42 -> 90
    ("densenet", ()): (
        _conv(1, 24)
        + sum(_bn(c) + _conv(c, 48, 1) + _bn(48) + _conv(48, 12) for c in (24, 36, 48, 60))
        + _bn(72) + _conv(72, 36, 1)                                    # transition 1
        + sum(_bn(c) + _conv(c, 48, 1) + _bn(48) + _conv(48, 12) for c in (36, 48, 60, 72))
        + _bn(84) + _conv(84, 42, 1)                                    # transition 2
        + sum(_bn(c) + _conv(c, 48, 1) + _bn(48) + _conv(48, 12) for c in (42, 54, 66, 78))
        + _bn(90) + (90 * 10 + 10)),
}


@pytest.mark.parametrize("key", list(RESIDUAL_COUNTS), ids=[k[0] for k in RESIDUAL_COUNTS])
def test_residual_zoo_parameter_counts(key):
    name, kwargs = key
    assert n_params(build_model(name, **dict(kwargs))) == RESIDUAL_COUNTS[key]


def test_residual_zoo_sizes_quoted_in_the_docs():
    assert RESIDUAL_COUNTS[("resnet20", ())] == 272_186
    assert RESIDUAL_COUNTS[("resnet18", ())] == 701_178
    assert RESIDUAL_COUNTS[("mobilenet_v2", ())] == 134_858
    assert RESIDUAL_COUNTS[("densenet", ())] == 102_298
    assert n_params(build_model("resnet56")) == 855_482
    x = torch.zeros(1, 1, 28, 28)
    assert count_macs(build_model("resnet20"), x) == (
        28 * 28 * 16 * 9 + 6 * 28 * 28 * 16 * 16 * 9                   # stem, stage 1
        + 14 * 14 * 32 * (16 * 9 + 5 * 32 * 9 + 16)                     # stage 2 (+ projection)
        + 7 * 7 * 64 * (32 * 9 + 5 * 64 * 9 + 32) + 64 * 10)            # stage 3, fc
    # the depthwise 3x3 costs 9 per output: count_macs reads in_channels // groups
    assert count_macs(build_model("mobilenet_v2"), x) == 7_572_112
    assert count_macs(build_model("densenet"), x) == 33_149_988


# small configurations (each forward well under a second on one thread)
RESIDUAL_ZOO = [
    ("resnet20", {}),
    ("resnet_cifar", {"depth": 32, "widths": (4, 8, 16), "in_channels": 3}),
    ("resnet18", {"width": 0.125}),
    ("resnet", {"blocks": (1, 2), "block": "bottleneck", "width": 0.125, "widths": (64, 128)}),
    ("mobilenet_v2", {"width": 0.5, "dropout": 0.2}),
    ("densenet", {}),
    ("densenet", {"growth_rate": 4, "blocks": (2, 3), "bottleneck": False,
                  "compression": 1.0}),
]
ZOO_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(RESIDUAL_ZOO)]


def _input(kwargs, n=2, dtype=torch.float32):
    return torch.randn(n, kwargs.get("in_channels", 1), 28, 28,
                       generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name,kwargs", RESIDUAL_ZOO, ids=ZOO_IDS)
def test_residual_zoo_fx_traces_to_the_same_function(name, kwargs):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **kwargs), torch.Generator().manual_seed(0))
    model.double().eval()
    x = _input(kwargs, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), y)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    if name.startswith("resnet"):  # one residual add per block, the + operator
        n_blocks = sum(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules())
        assert calls.count(operator.add) == n_blocks and torch.cat not in calls
    if name == "mobilenet_v2":  # three inverted residuals with an identity add
        assert calls.count(operator.add) == 3
        assert all(m.groups == m.in_channels == m.out_channels
                   for n, m in model.named_modules() if n.endswith("dw_conv"))
    if name == "densenet":  # one concatenation per dense layer, no adds
        assert calls.count(torch.cat) == sum(kwargs.get("blocks", (4, 4, 4)))
        assert operator.add not in calls


@pytest.mark.parametrize("name,kwargs", RESIDUAL_ZOO, ids=ZOO_IDS)
def test_residual_zoo_checkpoint_roundtrip(name, kwargs, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **kwargs), torch.Generator().manual_seed(0)).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"model": name, "kwargs": kwargs})
    loaded = model_from_checkpoint(load_checkpoint(path)).eval()
    x = _input(kwargs)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    convs = {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d)}
    assert convs == {n: (m.in_channels, m.out_channels, m.groups)
                     for n, m in loaded.named_modules() if isinstance(m, nn.Conv2d)}
    assert count_macs(loaded, x[:1]) == count_macs(model, x[:1])


# per model: the units removed by hand: (producer conv, its BN, consumer conv) inside one
# block, plus the depthwise conv and its BN in between for MobileNetV2
SHRINK = {
    "resnet20": ("layer1.0.conv1", ["layer1.0.bn1"], "layer1.0.conv2"),
    "resnet": ("layer2.0.conv2", ["layer2.0.bn2"], "layer2.0.conv3"),
    "mobilenet_v2": ("blocks.2.expand_conv",
                     ["blocks.2.expand_bn", "blocks.2.dw_conv", "blocks.2.dw_bn"],
                     "blocks.2.project_conv"),
    "densenet": ("block2.1.conv1", ["block2.1.bn2"], "block2.1.conv2"),
}
SHRINK_ZOO = [("resnet20", {}), RESIDUAL_ZOO[3], ("mobilenet_v2", {}), ("densenet", {})]


@pytest.mark.parametrize("name,kwargs", SHRINK_ZOO, ids=[n for n, _ in SHRINK_ZOO])
def test_residual_zoo_shrunk_copy_reloads(name, kwargs, tmp_path):
    """A physically shrunk copy (hidden channels of one block removed by slicing the state
    dict) reloads through a checkpoint and computes what the full model computes with those
    channels' consumer weights zeroed; a depthwise conv stays depthwise."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **kwargs), torch.Generator().manual_seed(0)).eval()
    producer, middle, consumer = SHRINK[name]
    n = dict(model.named_modules())[producer].out_channels
    drop = [0, 3, n - 1]
    keep = torch.tensor([i for i in range(n) if i not in drop])
    sd = model.state_dict()
    for key in list(sd):
        mod = key.rpartition(".")[0]
        if (mod == producer or mod in middle) and sd[key].dim() >= 1:
            sd[key] = sd[key][keep]
        elif mod == consumer and key.endswith("weight"):
            sd[key] = sd[key][:, keep]
    shrunk = fit_to_state_dict(build_model(name, **kwargs), sd)
    shrunk.load_state_dict(sd)
    path = tmp_path / "shrunk.pt"
    save_checkpoint(path, shrunk, {"model": name, "kwargs": kwargs})
    loaded = model_from_checkpoint(load_checkpoint(path)).eval()
    mods = dict(loaded.named_modules())
    assert mods[producer].out_channels == n - 3 and mods[consumer].in_channels == n - 3
    if name == "mobilenet_v2":
        dw = mods["blocks.2.dw_conv"]
        assert (dw.in_channels, dw.out_channels, dw.groups) == (n - 3,) * 3
        assert mods["blocks.2.dw_bn"].num_features == n - 3
    reference = copy.deepcopy(model)
    with torch.no_grad():
        dict(reference.named_modules())[consumer].weight[:, drop] = 0
    x = _input(kwargs)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), shrunk.eval()(x))
        assert torch.allclose(copy.deepcopy(loaded).double()(x.double()),
                              reference.double()(x.double()), atol=1e-10, rtol=0)
    saved = count_macs(model, x[:1]) - count_macs(loaded, x[:1])
    if name == "mobilenet_v2":  # 14x14 block: expand 24 ->, depthwise 9, project -> 24 per channel
        assert saved == 3 * 14 * 14 * (24 + 9 + 24)
    assert saved > 0


def test_fit_to_state_dict_grouped_convolutions():
    # depthwise with multiplier 2 (groups = in_channels = 4, 8 outputs) shrunk to 3 groups
    dw = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4))
    small = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3))
    fit_to_state_dict(dw, small.state_dict()).load_state_dict(small.state_dict())
    assert (dw[0].in_channels, dw[0].out_channels, dw[0].groups) == (3, 6, 3)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(dw(x), small(x))
    # a grouped, not depthwise, convolution keeps its groups: in_channels = groups * shape[1]
    grouped = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2))
    fewer = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    fit_to_state_dict(grouped, fewer.state_dict())
    assert (grouped[0].in_channels, grouped[0].out_channels, grouped[0].groups) == (4, 4, 2)
    # ordinary convolutions are unchanged: in_channels = shape[1]
    plain = nn.Sequential(nn.Conv2d(4, 6, 3))
    fit_to_state_dict(plain, nn.Sequential(nn.Conv2d(2, 5, 3)).state_dict())
    assert (plain[0].in_channels, plain[0].out_channels, plain[0].groups) == (2, 5, 1)
    with pytest.raises(CheckpointError, match="depthwise"):
        fit_to_state_dict(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)),
                          nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)).state_dict())
    with pytest.raises(CheckpointError, match="do not divide"):
        fit_to_state_dict(nn.Sequential(nn.Conv2d(4, 6, 3, groups=2)),
                          {"0.weight": torch.zeros(5, 2, 3, 3), "0.bias": torch.zeros(5)})


@pytest.mark.parametrize("name,kwargs,argument", [
    ("resnet_cifar", {"depth": 21}, "depth"),
    ("resnet_cifar", {"depth": 20.0}, "depth"),
    ("resnet_cifar", {"widths": (16, 32)}, "widths"),
    ("resnet20", {"in_channels": 0}, "in_channels"),
    ("resnet56", {"image_size": -28}, "image_size"),
    ("resnet", {"block": "wide"}, "block"),
    ("resnet", {"blocks": ()}, "blocks"),
    ("resnet", {"blocks": (2, 0)}, "blocks"),
    ("resnet", {"widths": (64, 128)}, "widths"),
    ("resnet18", {"width": 0}, "width"),
    ("resnet18", {"num_classes": 0}, "num_classes"),
    ("mobilenet_v2", {"width": -1.0}, "width"),
    ("mobilenet_v2", {"config": [(1, 16, 1)]}, "config"),
    ("mobilenet_v2", {"config": []}, "config"),
    ("mobilenet_v2", {"dropout": 1.0}, "dropout"),
    ("mobilenet_v2", {"last_channels": 0}, "last_channels"),
    ("densenet", {"growth_rate": 0}, "growth_rate"),
    ("densenet", {"compression": 1.5}, "compression"),
    ("densenet", {"compression": 0}, "compression"),
    ("densenet", {"blocks": (4, -1)}, "blocks"),
    ("densenet", {"init_channels": 0}, "init_channels"),
    ("densenet", {"bottleneck": "yes"}, "bottleneck"),
    ("densenet", {"image_size": 3}, "image_size"),
])
def test_residual_zoo_rejects_bad_arguments(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        build_model(name, **kwargs)


# ---------------------------------------------------------------------------
# training loop


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    y = (x @ w).argmax(1)
    return TensorDataset(x[: n // 2], y[: n // 2]), TensorDataset(x[n // 2:], y[n // 2:])


def make_trainer(tmp_path=None, epochs=4, callbacks=(), **cfg):
    torch.manual_seed(0)
    train, val = toy_data()
    model = build_model("mlp", widths=[6, 16, 3], dropout=0.2)
    conf = TrainConfig(epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9,
                       **cfg)
    return Trainer(model, train, val_set=val, test_set=val, config=conf,
                   arch={"model": "mlp", "kwargs": {"widths": [6, 16, 3], "dropout": 0.2}},
                   callbacks=callbacks,
                   checkpoint=None if tmp_path is None else tmp_path / "ckpt.pt",
                   progress=False)


def strip_time(history):
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]


def test_training_is_deterministic():
    h1 = strip_time(make_trainer().fit())
    h2 = strip_time(make_trainer().fit())
    assert h1 == h2
    assert h1[-1]["val_acc"] > 0.6  # it learns the toy problem
    assert h1[0]["train_loss"] > h1[-1]["train_loss"]


class ShrinkAtEpoch(Callback):
    """Removes two units of fc1 after epoch 2 (physically, keeping the optimizer)."""

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == 2:
            remove_units(trainer.model, {"fc1": [0, 7]}, optimizer=trainer.optimizer)


def test_resume_continues_exactly(tmp_path):
    full = strip_time(make_trainer(callbacks=[ShrinkAtEpoch()]).fit())
    # a run killed after epoch 3: train 3 epochs with checkpoints, then a new
    # trainer (a new process would do the same) resumes from the file
    first = make_trainer(tmp_path, epochs=3, callbacks=[ShrinkAtEpoch()])
    first.fit()
    resumed = make_trainer(tmp_path, epochs=4, callbacks=[ShrinkAtEpoch()])
    assert resumed.epoch == 3 and resumed.model.fc1.out_features == 14
    assert strip_time(resumed.fit()) == full


def test_plateau_rule_divides_and_stops():
    class Flat(Callback):  # validation never improves after the first epoch
        def on_epoch_end(self, trainer, metrics):
            metrics["val_acc"] = 0.5

    t = make_trainer(epochs=50, callbacks=[Flat()], lr_rule="plateau", patience=2,
                     min_lr=1e-4)
    t.fit()
    lrs = [row["lr"] for row in t.history]
    # 0.1 for epochs 1-3 (best at 1, two bad epochs), then /10 every 2 epochs
    assert lrs[:3] == [0.1] * 3
    assert lrs[3] == pytest.approx(0.01) and lrs[5] == pytest.approx(1e-3)
    assert t.stopped_reason == "min_lr"
    assert len(t.history) == 9  # after epoch 9 the lr would be 1e-5 < 1e-4


def test_regularizer_callback_changes_the_loss():
    class L1(Callback):
        def loss(self, trainer, loss):
            return loss + 0.5 * trainer.model.fc1.weight.abs().sum()

    plain = make_trainer(epochs=2).fit()
    reg = make_trainer(epochs=2, callbacks=[L1()])
    reg.fit()
    assert reg.model.fc1.weight.abs().sum() < make_trainer(epochs=2).model.fc1.weight.abs().sum()
    assert plain[-1]["train_loss"] != reg.history[-1]["train_loss"]


# ---------------------------------------------------------------------------
# atomic writes


def test_atomic_write_survives_a_crash_mid_write(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path, "w") as fh:
            fh.write('{"v": 2, "partial')
            raise RuntimeError("killed")
    assert atomic.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_atomic_write_survives_a_killed_process(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"v": 1})
    code = textwrap.dedent(f"""
        import os
        from experiments.harness import atomic
        with atomic.atomic_open({str(path)!r}, "w") as fh:
            fh.write('{{"v": 2, "partial')
            fh.flush()
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    assert atomic.read_json(path) == {"v": 1}


def test_csv_and_json_values(tmp_path):
    atomic.write_csv(tmp_path / "t.csv", [{"a": 1, "b": torch.tensor(0.5)}, {"a": 2, "c": "x"}])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b,c", "1,0.5,", "2,,x"]
    atomic.write_json(tmp_path / "t.json", {"nan": float("nan"), "t": torch.tensor([1, 2])})
    assert atomic.read_json(tmp_path / "t.json") == {"nan": None, "t": [1, 2]}
