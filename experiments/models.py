"""Model factories for experiments and benchmarks.

Every factory returns a plain ``nn.Module`` built only from layers the graph of
units understands (Linear/Conv producers, BatchNorm, elementwise activations,
pooling, dropout, flatten), so :func:`pruners.trace`, :func:`pruners.remove_units`
and :func:`pruners.mask_units` work on it without ``exclude=``. Layers have
stable, readable names (``fc1``, ``conv2``, ``bn2``, ...) so unit selections
such as ``{"fc1": [3, 7]}`` read the same across models.

Example:
    >>> net = mlp([784, 1024, 1024, 10])
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> cnn = small_cnn()
    >>> cnn(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["mlp", "small_cnn", "SmallCNN"]


def _check_positive(name: str, values: Sequence[int]) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be positive integers, got {list(values)!r}")


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")


def mlp(widths: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU,
        bias: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """A multilayer perceptron: Flatten, then Linear-activation[-Dropout] blocks.

    ``widths = [d_0, d_1, ..., d_L]`` gives ``L`` Linear layers ``fc1 .. fcL``
    with ``fc_l: R^{d_{l-1}} -> R^{d_l}``; every layer but the last is followed
    by ``activation()`` (named ``act<l>``) and, if ``dropout > 0``, by
    ``nn.Dropout(dropout)`` (``drop<l>``). The last layer outputs logits. A
    leading ``nn.Flatten`` (``flatten``) lets the model take images
    ``(B, C, H, W)`` with ``C*H*W = d_0`` as well as vectors ``(B, d_0)``.

    The hidden layers ``fc1 .. fc{L-1}`` are prunable units; ``fcL`` produces
    the output and is not.

    Args:
        widths: layer widths, input first, output last (at least two).
        activation: a module class (or any zero-argument callable returning a
            module), instantiated once per hidden layer.
        bias: whether the Linear layers have biases.
        dropout: dropout probability after each hidden activation (0 = none).

    Returns:
        An ``nn.Sequential`` with named children
        ``flatten, fc1, act1, [drop1,] fc2, ..., fcL``.

    Example:
        >>> net = mlp([784, 1024, 1024, 10])
        >>> [n for n, _ in net.named_children()]
        ['flatten', 'fc1', 'act1', 'fc2', 'act2', 'fc3']
    """
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths needs an input and an output size, got {widths!r}")
    _check_positive("widths", widths)
    _check_dropout(dropout)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    last = len(widths) - 1
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers[f"fc{i}"] = nn.Linear(d_in, d_out, bias=bias)
        if i < last:
            layers[f"act{i}"] = activation()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


class SmallCNN(nn.Module):
    """A small VGG-style CNN; see :func:`small_cnn`.

    Submodules, for block ``i = 1 .. len(widths)``: ``conv<i>`` (3x3, padding
    1, no bias: the BatchNorm shift replaces it), ``bn<i>``, ``act<i>``,
    ``pool<i>`` (2x2 max pooling); then ``flatten``, ``fc1``, ``act_fc``,
    ``fc2``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64), hidden: int = 256,
                 image_size: int = 28) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("widths needs at least one convolutional block")
        _check_positive("widths", widths)
        _check_positive("in_channels, num_classes, hidden and image_size",
                        [in_channels, num_classes, hidden, image_size])
        side = image_size
        for _ in widths:
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(widths)} "
                             "2x2 poolings")
        self.num_blocks = len(widths)
        c_in = in_channels
        for i, c_out in enumerate(widths, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c_out))
            self.add_module(f"act{i}", nn.ReLU())
            self.add_module(f"pool{i}", nn.MaxPool2d(2))
            c_in = c_out
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.act_fc = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_blocks + 1):
            for part in ("conv", "bn", "act", "pool"):
                x = getattr(self, f"{part}{i}")(x)
        return self.fc2(self.act_fc(self.fc1(self.flatten(x))))


def small_cnn(in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64),
              hidden: int = 256, image_size: int = 28) -> SmallCNN:
    """A small CNN for MNIST-sized images.

    Per entry ``w`` of ``widths``: Conv3x3(padding 1, ``w`` filters) - BatchNorm
    - ReLU - MaxPool2; then Flatten, Linear(``hidden``), ReLU,
    Linear(``num_classes``). With the defaults (28x28 inputs, widths 32 and 64,
    hidden 256) this is about 4.6M multiply-accumulates per image.

    The convolutions and ``fc1`` are prunable units; ``fc2`` produces the
    output and is not.

    Args:
        in_channels: input image channels.
        num_classes: number of logits.
        widths: filters per convolutional block (one block per entry).
        hidden: units of the hidden Linear layer ``fc1``.
        image_size: input height and width (square images); each block halves
            it (floor), which sets the input width of ``fc1``.

    Returns:
        A :class:`SmallCNN` with submodules ``conv1, bn1, act1, pool1, conv2,
        ..., flatten, fc1, act_fc, fc2``.

    Example:
        >>> net = small_cnn(in_channels=3, image_size=32)
        >>> net(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return SmallCNN(in_channels, num_classes, widths, hidden, image_size)
