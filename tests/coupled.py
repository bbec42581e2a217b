"""Tiny coupled architectures for the tests: residual blocks, a ResNet stage, an inverted
residual with a depthwise convolution, a grouped convolution, dense concatenation, and
residual plus concatenation, each float64 on 2 x 8 x 8 inputs.

``kernel=1`` builds every convolution inside the blocks 1x1 (no padding anywhere: mean
replacement is exact); ``kernel=3`` pads them (exact in the interior only).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import randomize_bn


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class Basic(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), projection when the shape changes;
    ``inplace`` writes the sum as ``out += shortcut`` (as torchvision does)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, inplace: bool = False):
        super().__init__()
        self.branch1, self.branch2 = conv_bn(cin, cout, k, stride), conv_bn(cout, cout, k)
        self.shortcut = conv_bn(cin, cout, 1, stride) if (stride, cin) != (1, cout) \
            else nn.Identity()
        self.inplace = inplace

    def forward(self, x):
        out = self.branch2(F.relu(self.branch1(x)))
        if self.inplace:
            out += self.shortcut(x)
        else:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int):
        super().__init__()
        self.reduce, self.spatial = conv_bn(cin, mid, 1), conv_bn(mid, mid, k)
        self.expand = conv_bn(mid, cout, 1)
        self.shortcut = conv_bn(cin, cout, 1)

    def forward(self, x):
        out = self.expand(F.relu(self.spatial(F.relu(self.reduce(x)))))
        return F.relu(out + self.shortcut(x))


class InvertedResidual(nn.Module):
    """Expansion 1x1, depthwise (kernel ``k``), linear projection 1x1, residual add."""

    def __init__(self, c: int, t: int, k: int):
        super().__init__()
        self.expand = conv_bn(c, c * t, 1)
        self.depthwise = conv_bn(c * t, c * t, k, groups=c * t)
        self.project = conv_bn(c * t, c, 1)

    def forward(self, x):
        h = F.relu6(self.depthwise(F.relu6(self.expand(x))))
        return x + self.project(h)


class Head(nn.Module):
    """Global average pooling and a Linear (``flatten=True``: flatten the map instead)."""

    def __init__(self, c: int, side: int = 8, flatten: bool = False, classes: int = 3):
        super().__init__()
        self.flatten = flatten
        self.fc = nn.Linear(c * (side * side if flatten else 1), classes)

    def forward(self, x):
        return self.fc(x.flatten(1) if self.flatten else F.adaptive_avg_pool2d(x, 1).flatten(1))


class Net(nn.Module):
    def __init__(self, stem: int, body: nn.Module, head: Head):
        super().__init__()
        self.stem = conv_bn(2, stem, 1)
        self.body, self.head = body, head

    def forward(self, x):
        return self.head(self.body(F.relu(self.stem(x))))


class Dense(nn.Module):
    """Two dense layers (BN-ReLU-conv, concatenated to their input) and a transition."""

    def __init__(self, c: int, growth: int, k: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                    nn.Conv2d(c, growth, k, padding=k // 2))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(c + growth), nn.ReLU(),
                                    nn.Conv2d(c + growth, growth, k, padding=k // 2))
        self.transition = nn.Sequential(nn.BatchNorm2d(c + 2 * growth), nn.ReLU(),
                                        nn.Conv2d(c + 2 * growth, c, 1))

    def forward(self, x):
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        return self.transition(x)


class ResCat(nn.Module):
    """x + cat(a(x), b(x)): a's channels are coupled with the first ones of x, b's with the
    rest; then cat(y, c(y)) into the head (concatenation after the residual)."""

    def __init__(self, c: int, split: int, k: int):
        super().__init__()
        self.a, self.b = conv_bn(c, split, k), conv_bn(c, c - split, k)
        self.c = conv_bn(c, 2, k)

    def forward(self, x):
        y = F.relu(x + torch.cat([self.a(x), self.b(x)], dim=1))
        return torch.cat([y, F.relu(self.c(y))], dim=1)


class Grouped(nn.Module):
    """A grouped convolution (2 groups) between two dense ones."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.inner = conv_bn(c, 2 * c, 1)
        self.grouped = conv_bn(2 * c, 2 * c, k, groups=2)
        self.out = conv_bn(2 * c, c, 1)

    def forward(self, x):
        return F.relu(self.out(F.relu(self.grouped(F.relu(self.inner(x))))))


def build(name: str, kernel: int = 1, seed: int = 0) -> nn.Module:
    """One of :data:`COUPLED` in float64, BatchNorm statistics randomized, eval mode."""
    torch.manual_seed(seed)
    model = COUPLED[name](kernel).double()
    randomize_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


#: name -> factory(kernel size inside the blocks)
COUPLED = {
    "basic_identity": lambda k: Net(4, Basic(4, 4, k), Head(4)),
    "basic_projection": lambda k: Net(4, Basic(4, 6, k, stride=2), Head(6, 4, flatten=True)),
    "bottleneck": lambda k: Net(4, Bottleneck(4, 3, 8, k), Head(8)),
    "stage": lambda k: Net(4, nn.Sequential(Basic(4, 4, k), Basic(4, 4, k, inplace=True),
                                            Basic(4, 6, k, stride=2), Basic(6, 6, k)),
                           Head(6, 4, flatten=True)),
    "inverted_residual": lambda k: Net(4, nn.Sequential(InvertedResidual(4, 2, k),
                                                        InvertedResidual(4, 3, k)), Head(4)),
    "grouped": lambda k: Net(4, Grouped(4, k), Head(4)),
    "dense": lambda k: Net(4, Dense(4, 3, k), Head(4)),
    "residual_concat": lambda k: Net(6, ResCat(6, 2, k), Head(8)),
}

INPUT = (2, 8, 8)
