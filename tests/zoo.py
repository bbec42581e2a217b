"""Tiny architectures for the tests, each built from a dict of layer widths.

Building the same architecture with smaller widths gives an independent
reference for physically shrunk models: the shrunk model's state dict must
load into it strictly, and the parameter counts must agree.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize_bn(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen))
    return model


class MLP(nn.Module):
    def __init__(self, w, bias=True, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(6, w["fc1"], bias=bias)
        self.fc2 = nn.Linear(w["fc1"], w["fc2"], bias=bias)
        self.fc3 = nn.Linear(w["fc2"], 3, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        x = self.drop(torch.relu(self.fc1(x)))
        x = self.drop(torch.tanh(self.fc2(x)))
        return self.fc3(x)


class MLPBatchNorm(nn.Module):
    """Linear-BN-PReLU(per channel) and a consumer without bias."""

    def __init__(self, w):
        super().__init__()
        self.fc1 = nn.Linear(6, w["fc1"])
        self.bn1 = nn.BatchNorm1d(w["fc1"])
        self.act1 = nn.PReLU(w["fc1"], init=0.2)
        self.fc2 = nn.Linear(w["fc1"], w["fc2"], bias=False)
        self.act2 = nn.Sigmoid()
        self.fc3 = nn.Linear(w["fc2"], 3)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.bn1(self.fc1(x))))))


class CNN(nn.Module):
    """Conv-BN-ReLU-MaxPool-Flatten-Linear (12x12 input)."""

    def __init__(self, w):
        super().__init__()
        self.conv1 = nn.Conv2d(1, w["conv1"], 3)
        self.bn1 = nn.BatchNorm2d(w["conv1"])
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(w["conv1"], w["conv2"], 3)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(w["conv2"] * 9, w["fc1"])
        self.fc2 = nn.Linear(w["fc1"], 4)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # 12 -> 10 -> 5
        x = F.relu(self.conv2(x))  # 5 -> 3
        return self.fc2(F.relu(self.fc1(self.flat(x))))


class Conv1dNet(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.c1 = nn.Conv1d(2, w["c1"], 3)
        self.bn = nn.BatchNorm1d(w["c1"])
        self.c2 = nn.Conv1d(w["c1"], w["c2"], 3)
        self.pool = nn.AdaptiveAvgPool1d(2)
        self.fc = nn.Linear(w["c2"] * 2, 3)

    def forward(self, x):
        x = F.max_pool1d(F.elu(self.bn(self.c1(x))), 2)  # 16 -> 14 -> 7
        x = self.pool(F.gelu(self.c2(x)))  # 7 -> 5 -> 2
        return self.fc(torch.flatten(x, 1))


class VGG(nn.Module):
    """VGG-style: two conv-BN-ReLU blocks with pooling, then two Linear layers."""

    def __init__(self, w):
        super().__init__()

        def block(cin, name):
            return [nn.Conv2d(cin, w[name], 3, padding=1), nn.BatchNorm2d(w[name]), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, "features.0"), *block(w["features.0"], "features.3"), nn.MaxPool2d(2),
            *block(w["features.3"], "features.7"), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(w["features.7"] * 4, w["classifier.1"]), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(w["classifier.1"], 5))

    def forward(self, x):  # 8x8 input
        return self.classifier(self.features(x))


class NoBiasConsumers(nn.Module):
    """Convolutions and Linear layers without bias (BN-folded style)."""

    def __init__(self, w):
        super().__init__()
        self.conv1 = nn.Conv2d(1, w["conv1"], 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w["conv1"])
        self.conv2 = nn.Conv2d(w["conv1"], w["conv2"], 3, bias=False)
        self.fc1 = nn.Linear(w["conv2"] * 4, w["fc1"], bias=False)
        self.fc2 = nn.Linear(w["fc1"], 3, bias=False)

    def forward(self, x):  # 6x6 input
        x = F.relu(self.bn1(self.conv1(x)))  # 4x4
        x = torch.sigmoid(self.conv2(x))  # 2x2
        return self.fc2(F.softplus(self.fc1(x.view(x.size(0), -1))))


class Functional(nn.Module):
    """Activations written as functions and tensor methods in forward."""

    def __init__(self, w):
        super().__init__()
        self.a = nn.Linear(5, w["a"])
        self.b = nn.Linear(w["a"], w["b"])
        self.c = nn.Linear(w["b"], w["c"])
        self.d = nn.Linear(w["c"], 2)

    def forward(self, x):
        x = F.leaky_relu(self.a(x), 0.1) * 2.0
        x = self.b(x).sigmoid() + 0.5
        x = F.dropout(torch.tanh(self.c(x)), 0.3, training=self.training)
        return self.d(x)


def thesis_cnn(batchnorm: bool = False, in_channels: int = 1, image_size: int = 28,
               widths=(8, 16), hidden: int = 64, num_classes: int = 10) -> nn.Sequential:
    """The small CNN of Evci's thesis (App. C), as a Sequential with the thesis's layer names:
    conv1 5x5 - [bn1] - ReLU - pool - conv2 5x5 - [bn2] - ReLU - pool - fc1 - ReLU - fc2.
    With 1x28x28 inputs, widths 8 and 16 and 64 hidden units: 20,522 parameters."""
    side = ((image_size - 4) // 2 - 4) // 2
    norm = nn.BatchNorm2d if batchnorm else (lambda n: nn.Identity())
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_channels, widths[0], 5), bn1=norm(widths[0]), act1=nn.ReLU(),
        pool1=nn.MaxPool2d(2), conv2=nn.Conv2d(widths[0], widths[1], 5), bn2=norm(widths[1]),
        act2=nn.ReLU(), pool2=nn.MaxPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(widths[1] * side * side, hidden), act3=nn.ReLU(),
        fc2=nn.Linear(hidden, num_classes)))


#: name -> (factory, default widths, input shape without batch)
ARCHS = {
    "mlp": (lambda w: MLP(w), {"fc1": 7, "fc2": 5}, (6,)),
    "mlp_nobias": (lambda w: MLP(w, bias=False), {"fc1": 7, "fc2": 5}, (6,)),
    "mlp_dropout": (lambda w: MLP(w, dropout=0.3), {"fc1": 7, "fc2": 5}, (6,)),
    "mlp_bn": (lambda w: MLPBatchNorm(w), {"fc1": 7, "fc2": 5}, (6,)),
    "cnn": (lambda w: CNN(w), {"conv1": 4, "conv2": 5, "fc1": 6}, (1, 12, 12)),
    "conv1d": (lambda w: Conv1dNet(w), {"c1": 5, "c2": 4}, (2, 16)),
    "vgg": (lambda w: VGG(w), {"features.0": 4, "features.3": 5, "features.7": 6,
                               "classifier.1": 7}, (1, 8, 8)),
    "nobias": (lambda w: NoBiasConsumers(w), {"conv1": 4, "conv2": 3, "fc1": 5}, (1, 6, 6)),
    "functional": (lambda w: Functional(w), {"a": 6, "b": 5, "c": 4}, (5,)),
}

#: architectures whose consumers are all exact for constant folds (no zero padding)
EXACT_FOLD = [n for n in ARCHS if n != "vgg"]


def build(name: str, widths: dict | None = None, dtype=torch.float64, seed: int = 0):
    factory, default, shape = ARCHS[name]
    w = dict(default, **(widths or {}))
    torch.manual_seed(seed)
    model = factory(w).to(dtype)
    randomize_bn(model)
    return model, shape
