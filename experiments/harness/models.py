"""Model factories for experiments and benchmarks.

Every factory returns a plain ``nn.Module`` built only from layers the graph of units
understands, so :func:`pruners.trace`, :func:`pruners.remove_units` and
:func:`pruners.mask_units` work on every one without ``exclude=``. The MLPs and plain CNNs
are chains (every producer its own group); the residual, depthwise and densely connected
networks (:func:`resnet_cifar`, :func:`resnet`, :func:`mobilenet_v2`, :func:`densenet`) use
residual adds (``+``: the summed producers form one group), depthwise convolutions
(``groups`` = channels: a channel passes through with its filter) and concatenation
(``torch.cat``: each input's channels at an offset of the consumer's). Layers have stable,
readable names (``fc1``, ``conv2``, ``bn2``, ``layer1.0.conv1``, ...) so unit selections such
as ``{"fc1": [3, 7]}`` read the same across models.

Example:
    >>> net = mlp([784, 1024, 1024, 10])
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> cnn = small_cnn()
    >>> cnn(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "mlp",
    "small_cnn",
    "SmallCNN",
    "ThesisCNN",
    "thesis_cnn",
    "thesis_cifar_cnn",
    "lenet_300_100",
    "LeNet5",
    "lenet5",
    "VGG",
    "vgg",
    "VGG_CONFIGS",
    "covertype_net",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "RESNET_CIFAR_DEPTHS",
    "resnet_cifar",
    "resnet20",
    "resnet56",
    "resnet",
    "resnet18",
    "InvertedResidual",
    "MobileNetV2",
    "MOBILENET_V2_SMALL",
    "mobilenet_v2",
    "DenseLayer",
    "Transition",
    "DenseNet",
    "densenet",
    "SelfAttention",
    "PatchEmbedding",
    "ViTBlock",
    "ViT",
    "vit_tiny",
    "DecoderBlock",
    "DecoderLM",
    "decoder_lm",
    "hf_llama",
    "MODELS",
    "build_model",
]


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


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def _activation(name: str) -> Callable[[], nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class ThesisCNN(nn.Module):
    """The small CNN of Evci's thesis (App. C).

    U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
    NYU, 2018 (https://arxiv.org/abs/1806.06068; below: Evci 2018 or the
    thesis).

    ``conv1`` (5x5) - [BN] - act - MaxPool2 - ``conv2`` (5x5) - [BN] - act -
    MaxPool2 - Flatten - ``fc1`` - act - ``fc2``. With 1x28x28 inputs, widths
    8 and 16 and ``hidden=64`` it has 20,522 parameters (the thesis's MNIST
    network, Sec. 2.2); with 3x32x32 inputs it is the CIFAR network of App.
    C.2 (``fc1`` 400 -> 64).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (8, 16),
                 hidden: int = 64, num_classes: int = 10, activation: str = "relu",
                 batchnorm: bool = False) -> None:
        super().__init__()
        _check_positive("in_channels, image_size, widths, hidden, num_classes",
                        [in_channels, image_size, *widths, hidden, num_classes])
        if len(widths) != 2:
            raise ValueError(f"ThesisCNN has two convolutions, got widths={list(widths)!r}")
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small (needs >= 16)")
        act = _activation(activation)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 5)
        self.bn1 = nn.BatchNorm2d(widths[0]) if batchnorm else nn.Identity()
        self.act1 = act()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 5)
        self.bn2 = nn.BatchNorm2d(widths[1]) if batchnorm else nn.Identity()
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(widths[1] * side * side, hidden)
        self.act3 = act()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc2(self.act3(self.fc1(self.flatten(x))))


def thesis_cnn(in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (8, 16),
               hidden: int = 64, num_classes: int = 10, activation: str = "relu",
               batchnorm: bool = False) -> ThesisCNN:
    """The thesis's small MNIST CNN (App. C.1, Sec. 2.2): 20,522 parameters.

    conv 1->8 5x5, max-pool, conv 8->16 5x5, max-pool, FC 256->64->10, ReLU.

    Example:
        >>> sum(p.numel() for p in thesis_cnn().parameters())
        20522
    """
    return ThesisCNN(in_channels, image_size, widths, hidden, num_classes, activation, batchnorm)


def thesis_cifar_cnn(in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = (8, 16),
                     hidden: int = 64, num_classes: int = 10, activation: str = "relu",
                     batchnorm: bool = False) -> ThesisCNN:
    """The thesis's CIFAR CNN (App. C.2), used for the attacks of Ch. 3.

    conv 3->8 5x5, max-pool, conv 8->16 5x5, max-pool, FC 400->64->10. For
    Fashion-MNIST pass ``in_channels=1, image_size=28`` (FC 256->64->10).
    ``activation`` ("relu", "tanh") and ``batchnorm`` give the Ch. 3 variants.

    Example:
        >>> sum(p.numel() for p in thesis_cifar_cnn().parameters())
        30138
    """
    return ThesisCNN(in_channels, image_size, widths, hidden, num_classes, activation, batchnorm)


def lenet_300_100(in_features: int = 784, num_classes: int = 10,
                  widths: Sequence[int] = (300, 100), activation: str = "relu") -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): an MLP 784-300-100-10, 266,610 parameters.

    Example:
        >>> sum(p.numel() for p in lenet_300_100().parameters())
        266610
    """
    return mlp([in_features, *widths, num_classes], activation=_activation(activation))


class LeNet5(nn.Module):
    """LeNet-5 as used in the pruning literature (Caffe's variant, Han et al. 2015).

    ``conv1`` 5x5 (20) - MaxPool2 - ``conv2`` 5x5 (50) - MaxPool2 - Flatten -
    ``fc1`` (500) - ReLU - ``fc2``. The original has no activation after the
    convolutions; ``conv_activation=True`` adds ReLUs there.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28,
                 widths: Sequence[int] = (20, 50), hidden: int = 500, num_classes: int = 10,
                 conv_activation: bool = False) -> None:
        super().__init__()
        _check_positive("in_channels, image_size, widths, hidden, num_classes",
                        [in_channels, image_size, *widths, hidden, num_classes])
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small (needs >= 16)")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 5)
        self.act1 = nn.ReLU() if conv_activation else nn.Identity()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 5)
        self.act2 = nn.ReLU() if conv_activation else nn.Identity()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(widths[1] * side * side, hidden)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc2(self.act3(self.fc1(self.flatten(x))))


def lenet5(in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (20, 50),
           hidden: int = 500, num_classes: int = 10, conv_activation: bool = False) -> LeNet5:
    """LeNet-5 (20-50-500-10), 431,080 parameters on 28x28 inputs.

    Example:
        >>> sum(p.numel() for p in lenet5().parameters())
        431080
    """
    return LeNet5(in_channels, image_size, widths, hidden, num_classes, conv_activation)


#: VGG layer configurations: channel counts, "M" for 2x2 max pooling.
VGG_CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    # four poolings for 28x28 inputs (Fashion-MNIST standing in for CIFAR-10)
    "vgg-small": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-style CNN with BatchNorm and a width multiplier (the ShrinkNets paper, Sec. 5.1.1).

    The ShrinkNets paper: *ShrinkNets: Learning Network Size while Training*
    (2018 draft; public as G. Leclerc, M. Vartak, R. Castro Fernandez, T.
    Kraska, S. Madden, *Smallify: Learning Network Size while Training*,
    https://arxiv.org/abs/1806.03723).

    ``features`` holds Conv3x3(padding 1)-BatchNorm-ReLU blocks and max
    pooling as the configuration says, every channel count multiplied by
    ``width`` (rounded, at least 1): the channel-doubling heuristic of VGG
    with one size parameter. ``classifier`` is Flatten - Linear(``hidden``) -
    ReLU - Linear(``num_classes``): "the two last layers are fully connected
    layers separated by a ReLU".
    """

    def __init__(self, config: str | Sequence = "vgg16", width: float = 1.0,
                 in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 hidden: int = 512, batchnorm: bool = True) -> None:
        super().__init__()
        cfg = VGG_CONFIGS[config] if isinstance(config, str) else list(config)
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        layers: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
                continue
            c_out = max(1, int(round(item * width)))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c_in = c_out
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {cfg.count('M')} "
                             "poolings")
        hidden = max(1, int(round(hidden * width)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden),
                                        nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg(config: str | Sequence = "vgg16", width: float = 1.0, in_channels: int = 3,
        image_size: int = 32, num_classes: int = 10, hidden: int = 512,
        batchnorm: bool = True) -> VGG:
    """A VGG network; ``width=2`` is ShrinkNets' over-sized start (Sec. 5.1.1).

    Example:
        >>> net = vgg("vgg-small", width=0.25, in_channels=1, image_size=28)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return VGG(config, width, in_channels, image_size, num_classes, hidden, batchnorm)


def covertype_net(widths: Sequence[int] = (256, 256, 256), in_features: int = 54,
                  num_classes: int = 7) -> nn.Sequential:
    """The COVERTYPE network of ShrinkNets Sec. 5.1.2 (after Scardapane et al. 2017).

    Three fully connected hidden layers with ReLU, no Dropout, no BatchNorm;
    each hidden size is a parameter (static networks sample them independently).
    """
    if len(widths) != 3:
        raise ValueError(f"covertype_net has three hidden layers, got {list(widths)!r}")
    return mlp([in_features, *widths, num_classes])


# ---------------------------------------------------------------------------
# residual, depthwise and densely connected networks (28x28 inputs)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_ints(name: str, values: object, length: int | None = None) -> tuple[int, ...]:
    try:
        items = tuple(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive integers, "
                         f"got {values!r}") from None
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, "
                         f"got {values!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} needs {length} entries, got {len(items)}: {values!r}")
    return items


def _check_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) \
            or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    return float(width)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1,
             groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                     bias=False)  # the BatchNorm shift replaces the bias
    return conv, nn.BatchNorm2d(c_out)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity where the shape stays, else a projection: 1x1 conv (with stride) + BN."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """The two-convolution residual block of He et al. 2016 (Fig. 2 left).

    ``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``: ``conv1`` 3x3 with
    ``stride``, ``conv2`` 3x3, both without bias; ``shortcut`` is ``nn.Identity``
    or ``nn.Sequential(conv 1x1 with stride, BN)`` (option B) where the shape
    changes. The residual add is the ``+`` operator.
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, planes, 3, stride)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(planes, c_out, 3)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """The bottleneck residual block of He et al. 2016 (Fig. 5 right, ResNet-50/101/152).

    ``act3(bn3(conv3(act2(bn2(conv2(act1(bn1(conv1(x)))))))) + shortcut(x))``:
    ``conv1`` 1x1 reduces to ``planes``, ``conv2`` 3x3 (carrying the stride),
    ``conv3`` 1x1 expands to ``4 * planes``; all without bias. ``shortcut`` is
    ``nn.Identity`` or a projection ``nn.Sequential(conv 1x1 with stride, BN)``
    where the shape changes. The paper's Caffe models put the stride on
    ``conv1``; here, as in most later implementations, it is on the 3x3
    convolution, so no input pixel is skipped. The residual add is ``+``.
    """

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, planes, 1)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.act2 = nn.ReLU()
        self.conv3, self.bn3 = _conv_bn(planes, c_out, 1)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A residual network (He et al. 2016) with a 3x3 stem for small images.

    K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385.

    Submodules: the stem ``conv1`` (3x3, stride 1, no bias), ``bn1``, ``act1``;
    stages ``layer1 .. layerS`` (``nn.Sequential`` of :class:`BasicBlock` or
    :class:`Bottleneck`, indexed from 0, the first block of each stage carrying
    the stage's stride); ``pool`` (``nn.AdaptiveAvgPool2d(1)``), ``flatten``,
    ``fc``. Build it with :func:`resnet_cifar`, :func:`resnet` or the named
    conveniences.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        blocks: residual blocks per stage.
        planes: each stage's inner width (a bottleneck stage outputs 4 times it).
        strides: each stage's stride.
        stem: output channels of the stem convolution.
        in_channels, num_classes: input channels and logits.
    """

    def __init__(self, block: str, blocks: Sequence[int], planes: Sequence[int],
                 strides: Sequence[int], stem: int, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        blocks = _check_ints("blocks", blocks)
        planes = _check_ints("widths", planes, len(blocks))
        strides = _check_ints("strides", strides, len(blocks))
        _check_int("in_channels", in_channels)
        _check_int("num_classes", num_classes)
        _check_int("stem width", stem)
        cls = _BLOCKS[block]
        self.conv1, self.bn1 = _conv_bn(in_channels, stem, 3)
        self.act1 = nn.ReLU()
        self.num_stages = len(blocks)
        c_in = stem
        for s, (n, p, stride) in enumerate(zip(blocks, planes, strides), start=1):
            stage = []
            for i in range(n):
                stage.append(cls(c_in, p, stride if i == 0 else 1))
                c_in = p * cls.expansion  # type: ignore[attr-defined]
            self.add_module(f"layer{s}", nn.Sequential(*stage))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(self.flatten(self.pool(x)))


#: depths of the CIFAR ResNets of He et al. 2016, Sec. 4.2 (6n + 2 layers)
RESNET_CIFAR_DEPTHS = (20, 32, 44, 56)


def resnet_cifar(depth: int = 20, widths: Sequence[int] = (16, 32, 64), in_channels: int = 1,
                 image_size: int = 28, num_classes: int = 10) -> ResNet:
    """The CIFAR ResNets of He et al. 2016, Sec. 4.2 (ResNet-20/32/44/56).

    K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385.

    A 3x3 stem convolution with ``widths[0]`` filters, BN and ReLU; three
    stages of ``n = (depth - 2) / 6`` :class:`BasicBlock` s at ``widths``
    (16, 32, 64), stride 2 at the first block of stages 2 and 3; global
    average pooling; one Linear. Each block is
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is the
    identity where the shape stays and a projection (1x1 convolution with
    stride, then BN: the paper's option B) where it changes (the paper's CIFAR
    networks use option A, zero padding, which has no parameters). Convolutions
    have no bias. On 1x28x28 inputs the stages see 28x28, 14x14 and 7x7.

    ResNet-20 (the default) on 1x28x28: 272,186 parameters (272,474 with 3
    input channels; the paper's option-A ResNet-20 has 0.27M) and 31,021,952
    multiply-accumulates (``pruners.count_macs``). ResNet-56: 855,482
    parameters, 96,050,048 MACs.

    Submodules: ``conv1, bn1, act1``; ``layer{1,2,3}.{i}.{conv1, bn1, act1,
    conv2, bn2, shortcut, act2}`` with ``shortcut.0`` (conv) and ``shortcut.1``
    (BN) at ``layer2.0`` and ``layer3.0``; ``pool, flatten, fc``.

    Args:
        depth: 20, 32, 44 or 56.
        widths: the three stages' widths.
        in_channels: input image channels.
        image_size: input height and width; the network pools globally, so any
            positive size works (it is checked, and recorded in checkpoints).
        num_classes: number of logits.

    Example:
        >>> net = resnet_cifar(depth=20)
        >>> sum(p.numel() for p in net.parameters())
        272186
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in RESNET_CIFAR_DEPTHS:
        raise ValueError(f"depth must be one of {RESNET_CIFAR_DEPTHS} (6n + 2 layers, He et al. "
                         f"2016 Sec. 4.2), got {depth!r}")
    widths = _check_ints("widths", widths, 3)
    _check_int("image_size", image_size)
    n = (depth - 2) // 6
    return ResNet("basic", (n, n, n), widths, (1, 2, 2), widths[0], in_channels, num_classes)


def resnet20(widths: Sequence[int] = (16, 32, 64), in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> ResNet:
    """ResNet-20: :func:`resnet_cifar` with ``depth=20`` (272,186 parameters on 1x28x28)."""
    return resnet_cifar(20, widths, in_channels, image_size, num_classes)


def resnet56(widths: Sequence[int] = (16, 32, 64), in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> ResNet:
    """ResNet-56: :func:`resnet_cifar` with ``depth=56`` (855,482 parameters on 1x28x28)."""
    return resnet_cifar(56, widths, in_channels, image_size, num_classes)


def resnet(blocks: Sequence[int] = (2, 2, 2, 2), block: str = "basic", width: float = 0.25,
           widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 1,
           image_size: int = 28, num_classes: int = 10) -> ResNet:
    """An ImageNet-style ResNet (He et al. 2016, Table 1) adapted to 28x28 inputs.

    K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385.

    Stages of ``blocks`` residual blocks at ``widths`` times ``width`` (each
    rounded, at least 1), stride 1 in the first stage and 2 at the first block
    of the others; the stem is a 3x3 convolution (stride 1, ``widths[0] *
    width`` filters) with BN and ReLU and no max pooling, since the inputs are
    28x28 rather than 224x224 (stages see 28, 14, 7 and 4 pixels). ``block``
    is ``"basic"`` (:class:`BasicBlock`, ResNet-18/34) or ``"bottleneck"``
    (:class:`Bottleneck`: 1x1 reduce, 3x3, 1x1 expand by 4, as in ResNet-50;
    ``blocks=(3, 4, 6, 3)`` is ResNet-50's layout). Shortcuts are the identity
    where the shape stays and projections (1x1 conv with stride + BN) where it
    changes; global average pooling and one Linear follow.

    ResNet-18 (the default, ``width=0.25``: widths 16, 32, 64, 128) on 1x28x28:
    701,178 parameters and 28,573,184 multiply-accumulates
    (``pruners.count_macs``). With ``block="bottleneck"`` at ``width=0.25``
    (stages output 64, 128, 256, 512): 882,106 parameters and 37,174,528 MACs.

    Submodules: ``conv1, bn1, act1``; ``layer{1..S}.{i}`` blocks with ``conv1,
    bn1, act1, conv2, bn2, [act2, conv3, bn3,] shortcut, act2|act3`` (see the
    block classes; ``shortcut.0`` conv and ``shortcut.1`` BN where it
    projects); ``pool, flatten, fc``.

    Args:
        blocks: residual blocks per stage (one stage per entry).
        block: ``"basic"`` or ``"bottleneck"``.
        width: multiplier of ``widths`` (> 0).
        widths: each stage's inner width at ``width=1`` (one per stage); the
            stem has ``widths[0]`` (scaled).
        in_channels: input image channels.
        image_size: input height and width (any positive size: global pooling).
        num_classes: number of logits.

    Example:
        >>> net = resnet(block="bottleneck", width=0.125)
        >>> net.layer1[0].conv3.out_channels
        32
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    blocks = _check_ints("blocks", blocks)
    widths = _check_ints("widths", widths)
    if len(widths) != len(blocks):
        raise ValueError(f"widths needs one entry per stage of blocks={blocks!r}, "
                         f"got {widths!r}")
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
    width = _check_width(width)
    _check_int("image_size", image_size)
    planes = [_scaled(w, width) for w in widths]
    strides = [1] + [2] * (len(blocks) - 1)
    return ResNet(block, blocks, planes, strides, planes[0], in_channels, num_classes)


def resnet18(width: float = 0.25, in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> ResNet:
    """ResNet-18: :func:`resnet` with basic blocks (2, 2, 2, 2) (701,178 parameters at 0.25).

    Example:
        >>> sum(p.numel() for p in resnet18().parameters())
        701178
    """
    return resnet((2, 2, 2, 2), "basic", width, (64, 128, 256, 512), in_channels, image_size,
                  num_classes)


class InvertedResidual(nn.Module):
    """The inverted residual block of MobileNetV2 (Sandler et al. 2018, Table 1).

    ``expand_conv`` (1x1, ``c_in -> t * c_in``), ``expand_bn``, ``expand_act``
    (ReLU6), present only when the expansion factor ``t > 1``; ``dw_conv``
    (3x3 depthwise: ``groups`` = channels, carrying the stride), ``dw_bn``,
    ``dw_act`` (ReLU6); ``project_conv`` (1x1 to ``c_out``), ``project_bn``, no
    activation (the linear bottleneck). The input is added (``+``) to the output
    when ``stride == 1`` and ``c_in == c_out`` (``use_residual``). Convolutions
    have no bias.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = c_in * t
        self.expand = t > 1
        if self.expand:
            self.expand_conv, self.expand_bn = _conv_bn(c_in, hidden, 1)
            self.expand_act = nn.ReLU6()
        self.dw_conv, self.dw_bn = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.dw_act = nn.ReLU6()
        self.project_conv, self.project_bn = _conv_bn(hidden, c_out, 1)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand:
            out = self.expand_act(self.expand_bn(self.expand_conv(out)))
        out = self.dw_act(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if self.use_residual:
            out = x + out
        return out


#: the small MobileNetV2 block table for 28x28 inputs: (t, c, n, s) rows as in
#: Sandler et al. 2018 Table 2 (expansion, output channels, repeats, first stride)
MOBILENET_V2_SMALL = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))


class MobileNetV2(nn.Module):
    """A MobileNetV2 (Sandler et al. 2018) for small images; see :func:`mobilenet_v2`."""

    def __init__(self, config: Sequence[Sequence[int]] = MOBILENET_V2_SMALL, width: float = 1.0,
                 stem: int = 32, last_channels: int = 256, dropout: float = 0.0,
                 in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        rows = []
        try:
            rows = [tuple(r) for r in config]
        except TypeError:
            rows = []
        if not rows or any(len(r) != 4 or any(isinstance(v, bool) or not isinstance(v, int)
                                              or v < 1 for v in r) for r in rows):
            raise ValueError("config must be a non-empty sequence of (t, c, n, s) rows of "
                             f"positive integers, got {config!r}")
        width = _check_width(width)
        _check_int("stem", stem)
        _check_int("last_channels", last_channels)
        _check_dropout(dropout)
        _check_int("in_channels", in_channels)
        _check_int("image_size", image_size)
        _check_int("num_classes", num_classes)
        c_in = _scaled(stem, width)
        self.conv1, self.bn1 = _conv_bn(in_channels, c_in, 3)  # stride 1 for 28x28
        self.act1 = nn.ReLU6()
        blocks = []
        for t, c, n, s in rows:
            c_out = _scaled(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        c_last = _scaled(last_channels, width)
        self.conv2, self.bn2 = _conv_bn(c_in, c_last, 1)
        self.act2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = self.act2(self.bn2(self.conv2(x)))
        return self.fc(self.drop(self.flatten(self.pool(x))))


def mobilenet_v2(config: Sequence[Sequence[int]] = MOBILENET_V2_SMALL, width: float = 1.0,
                 stem: int = 32, last_channels: int = 256, dropout: float = 0.0,
                 in_channels: int = 1, image_size: int = 28,
                 num_classes: int = 10) -> MobileNetV2:
    """A small MobileNetV2 for 28x28 inputs.

    M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2:
    Inverted Residuals and Linear Bottlenecks", CVPR 2018,
    https://arxiv.org/abs/1801.04381.

    A 3x3 stem convolution (stride 1, not the paper's 2, for 28x28 inputs;
    ``stem`` filters) with BN and ReLU6; :class:`InvertedResidual` blocks from
    the ``(t, c, n, s)`` rows of ``config`` (expansion factor ``t``, output
    channels ``c``, ``n`` repeats, stride ``s`` at the first repeat; default
    :data:`MOBILENET_V2_SMALL`: (1,16,1,1), (6,24,2,2), (6,32,2,2), (6,64,2,2),
    so the blocks see 28, 14, 7 and 4 pixels); a final 1x1 convolution to
    ``last_channels`` with BN and ReLU6; global average pooling; dropout if
    ``dropout > 0``; one Linear. ``width`` multiplies every channel count
    (rounded, at least 1; the paper rounds to multiples of 8 and keeps the
    last convolution at 1280 below width 1; here it scales too). Expanded
    widths are ``t`` times the (scaled) block input.

    Defaults on 1x28x28: 134,858 parameters and 7,572,112 multiply-accumulates
    (``pruners.count_macs``, counting a depthwise 3x3 as 9 per output).

    Submodules: ``conv1, bn1, act1``; ``blocks.{i}`` (``i = 0 .. 6``) with
    ``[expand_conv, expand_bn, expand_act,] dw_conv, dw_bn, dw_act,
    project_conv, project_bn`` (``blocks.0`` has no expansion); ``conv2, bn2,
    act2, pool, flatten, drop`` (``nn.Identity`` without dropout), ``fc``.
    Residual adds at ``blocks.2``, ``blocks.4`` and ``blocks.6``.

    Args:
        config: ``(t, c, n, s)`` rows.
        width: channel multiplier (> 0).
        stem: stem convolution filters at ``width=1``.
        last_channels: filters of the final 1x1 convolution at ``width=1``.
        dropout: dropout before the classifier, in [0, 1).
        in_channels: input image channels.
        image_size: input height and width (any positive size: global pooling).
        num_classes: number of logits.

    Example:
        >>> net = mobilenet_v2(width=0.5)
        >>> net.blocks[1].dw_conv.groups, net.blocks[1].dw_conv.out_channels
        (48, 48)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return MobileNetV2(config, width, stem, last_channels, dropout, in_channels, image_size,
                       num_classes)


class DenseLayer(nn.Module):
    """One layer of a dense block (Huang et al. 2017): its input, concatenated with new features.

    With a bottleneck (DenseNet-B): ``bn1, act1, conv1`` (1x1 to ``bottleneck *
    growth`` channels), ``bn2, act2, conv2`` (3x3 to ``growth``); without:
    ``bn1, act1, conv1`` (3x3 to ``growth``). Pre-activation (BN-ReLU-Conv),
    convolutions without bias. Returns ``torch.cat([x, new], 1)``: the input
    channels first, then the ``growth`` new ones.
    """

    def __init__(self, c_in: int, growth: int, bottleneck: int | None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = nn.ReLU()
        self.has_bottleneck = bottleneck is not None
        if bottleneck is not None:
            self.conv1 = nn.Conv2d(c_in, bottleneck * growth, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(bottleneck * growth)
            self.act2 = nn.ReLU()
            self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        if self.has_bottleneck:
            out = self.conv2(self.act2(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """A DenseNet transition: ``bn``, ``act`` (ReLU), ``conv`` (1x1), ``pool`` (2x2 average)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.act(self.bn(x))))


class DenseNet(nn.Module):
    """A DenseNet (Huang et al. 2017) for small images; see :func:`densenet`."""

    def __init__(self, growth_rate: int = 12, blocks: Sequence[int] = (4, 4, 4),
                 bottleneck: bool = True, compression: float = 0.5,
                 init_channels: int | None = None, bottleneck_width: int = 4,
                 in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        _check_int("growth_rate", growth_rate)
        blocks = _check_ints("blocks", blocks)
        if not isinstance(bottleneck, bool):
            raise ValueError(f"bottleneck must be True or False, got {bottleneck!r}")
        if isinstance(compression, bool) or not isinstance(compression, (int, float)) \
                or not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if init_channels is None:
            init_channels = 2 * growth_rate
        _check_int("init_channels", init_channels)
        _check_int("bottleneck_width", bottleneck_width)
        _check_int("in_channels", in_channels)
        _check_int("image_size", image_size)
        _check_int("num_classes", num_classes)
        if image_size >> (len(blocks) - 1) < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(blocks) - 1} "
                             "transitions (2x2 average pooling each)")
        self.num_blocks = len(blocks)
        self.conv1 = nn.Conv2d(in_channels, init_channels, 3, padding=1, bias=False)
        c = init_channels
        for b, n in enumerate(blocks, start=1):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate, bottleneck_width if bottleneck else None))
                c += growth_rate
            self.add_module(f"block{b}", nn.Sequential(*layers))
            if b < len(blocks):
                c_out = max(1, int(math.floor(compression * c)))
                self.add_module(f"trans{b}", Transition(c, c_out))
                c = c_out
        self.bn_final = nn.BatchNorm2d(c)
        self.act_final = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for b in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{b}")(x)
            if b < self.num_blocks:
                x = getattr(self, f"trans{b}")(x)
        x = self.act_final(self.bn_final(x))
        return self.fc(self.flatten(self.pool(x)))


def densenet(growth_rate: int = 12, blocks: Sequence[int] = (4, 4, 4), bottleneck: bool = True,
             compression: float = 0.5, init_channels: int | None = None,
             bottleneck_width: int = 4, in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> DenseNet:
    """A small DenseNet-BC for 28x28 inputs.

    G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected
    Convolutional Networks", CVPR 2017, https://arxiv.org/abs/1608.06993.

    A 3x3 stem convolution with ``init_channels`` filters (default ``2 *
    growth_rate``, the paper's DenseNet-BC choice); dense blocks of
    :class:`DenseLayer` s, each adding ``growth_rate`` channels (BN-ReLU-Conv3x3,
    preceded by a BN-ReLU-Conv1x1 bottleneck to ``bottleneck_width *
    growth_rate`` channels when ``bottleneck``: DenseNet-B) and concatenating
    them to its input with ``torch.cat([x, new], 1)``; between blocks a
    :class:`Transition` (BN-ReLU-Conv1x1 to ``floor(compression * m)`` of its
    ``m`` channels, then 2x2 average pooling; ``compression < 1`` is the "-C");
    after the last block BN, ReLU, global average pooling and one Linear.
    Convolutions have no bias. With the default three blocks the blocks see
    28, 14 and 7 pixels.

    Defaults (growth 12, blocks (4, 4, 4), bottleneck, compression 0.5, stem
    24) on 1x28x28: 102,298 parameters and 33,149,988 multiply-accumulates
    (``pruners.count_macs``); the channel counts are 24 -> 72 -> 36 -> 84 ->
    42 -> 90.

    Submodules: ``conv1``; ``block{b}.{i}.{bn1, act1, conv1, bn2, act2,
    conv2}`` (``bn1, act1, conv1`` only without bottleneck);
    ``trans{b}.{bn, act, conv, pool}`` between blocks; ``bn_final, act_final,
    pool, flatten, fc``.

    Args:
        growth_rate: channels each dense layer adds (k).
        blocks: dense layers per block (one block per entry).
        bottleneck: whether dense layers start with the 1x1 bottleneck.
        compression: transition output fraction theta, in (0, 1].
        init_channels: stem filters (default ``2 * growth_rate``).
        bottleneck_width: bottleneck channels per unit of growth (4 in the paper).
        in_channels: input image channels.
        image_size: input height and width; each transition halves it (floor),
            which must leave at least one pixel.
        num_classes: number of logits.

    Example:
        >>> net = densenet(growth_rate=4, blocks=(2, 2))
        >>> net.trans1.conv.in_channels, net.fc.in_features
        (16, 16)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return DenseNet(growth_rate, blocks, bottleneck, compression, init_channels, bottleneck_width,
                    in_channels, image_size, num_classes)


# ---------------------------------------------------------------------------
# transformers: a ViT for 28x28 images and a decoder-only language model


def _check_heads(width: int, heads: int, kv_heads: int, head_dim: int | None) -> int:
    _check_int("width", width)
    _check_int("heads", heads)
    _check_int("kv_heads", kv_heads)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads}): each "
                         "key/value head serves an equal group of query heads")
    if head_dim is None:
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads}), or pass "
                             "head_dim")
        return width // heads
    return _check_int("head_dim", head_dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query, key, value and output projections.

    A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017,
    https://arxiv.org/abs/1706.03762; grouped-query attention: J. Ainslie et al., "GQA:
    Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints", EMNLP
    2023, https://arxiv.org/abs/2305.13245.

    On ``x`` of shape ``(B, T, width)``: ``q_proj``, ``k_proj`` and ``v_proj`` (``nn.Linear``)
    give ``(B, T, heads * head_dim)`` and ``(B, T, kv_heads * head_dim)``; each is viewed as
    ``(B, T, -1, head_dim)`` and transposed to ``(B, heads, T, head_dim)``;
    ``F.scaled_dot_product_attention`` computes ``softmax(q k^T / sqrt(head_dim)) v`` per head
    (with the causal mask when ``causal``: position ``t`` attends to positions ``<= t``); the
    result is transposed back, reshaped to ``(B, T, -1)`` and projected by ``out_proj`` to
    ``width``. With ``kv_heads < heads`` (grouped-query attention) query head ``h`` reads
    key/value head ``h // (heads // kv_heads)`` (``enable_gqa=True``, the same as repeating
    each key/value head ``heads // kv_heads`` times with ``repeat_interleave``).

    The views use ``-1`` for the number of heads and the output reshape ``-1`` for its width,
    so the forward pass follows the projections' sizes. ``num_heads`` and ``num_kv_heads`` are
    plain attributes, as in most attention modules: the toolkit's head removal updates them,
    and :func:`experiments.harness.checkpoint.fit_to_state_dict` sets them from a shrunk
    checkpoint's shapes.

    Args:
        width: input and output channels.
        heads: query heads.
        kv_heads: key/value heads (default ``heads``: ordinary multi-head attention); a
            divisor of ``heads``.
        head_dim: channels per head (default ``width // heads``).
        bias: whether the four projections have biases.
        causal: apply the causal mask.
    """

    def __init__(self, width: int, heads: int, kv_heads: int | None = None, *,
                 head_dim: int | None = None, bias: bool = True, causal: bool = False) -> None:
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        self.head_dim = _check_heads(width, heads, kv_heads, head_dim)
        self.num_heads, self.num_kv_heads = heads, kv_heads
        self.causal = bool(causal)
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(heads * self.head_dim, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if self.k_proj.out_features != self.q_proj.out_features:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                 enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class PatchEmbedding(nn.Module):
    """Cut images into non-overlapping square patches and embed each with one ``nn.Linear``.

    ``patches(x)`` reshapes ``(B, C, H, W)`` into ``(B, N, C * p * p)``: patch ``n = i * (W /
    p) + j`` (row-major over the grid) holds ``x[:, :, i*p:(i+1)*p, j*p:(j+1)*p]`` flattened
    channel first, then rows, then columns (the order of ``F.unfold(x, p, stride=p)``). The
    projection ``proj`` reads each patch followed by the one-hot vector of its position, so
    ``proj([patch_n, e_n]) = W_pix patch_n + b + E[n]``: the patch embedding plus a learned
    position embedding ``E`` (:attr:`pos_embed`, the last ``N`` columns of ``proj.weight``),
    exactly ViT's sum, written as one Linear. The toolkit's graph of units refuses a tensor
    added to a layer's output (a learned position embedding added after the projection),
    and a Conv2d patch embedding followed by ``flatten(2).transpose(1, 2)``; the raw image
    and the one-hot positions carry no units, so this form traces.
    """

    def __init__(self, in_channels: int, image_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size),
                            ("patch_size", patch_size), ("width", width)):
            _check_int(name, value)
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        self.in_channels, self.patch_size = in_channels, patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.register_buffer("positions", torch.eye(self.num_patches)[None], persistent=False)
        self.proj = nn.Linear(in_channels * patch_size * patch_size + self.num_patches, width)

    @property
    def pos_embed(self) -> torch.Tensor:
        """The learned position embedding, ``(N, width)`` (a view of ``proj.weight``)."""
        return self.proj.weight[:, -self.num_patches:].t()

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, N, C * p * p)``, see the class docstring."""
        b, c, g, p = x.shape[0], self.in_channels, self.grid, self.patch_size
        x = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        onehot = torch.broadcast_to(self.positions,
                                    (x.shape[0], self.num_patches, self.num_patches))
        return self.proj(torch.cat([self.patches(x), onehot], -1))


class ViTBlock(nn.Module):
    """A pre-norm transformer encoder block: ``x + attn(norm1(x))``, then ``x +
    fc2(act(fc1(norm2(x))))`` with ``nn.LayerNorm`` and GELU."""

    def __init__(self, width: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def _init_transformer(model: nn.Module, depth: int) -> None:
    """Weights ~ N(0, 0.02) truncated at 2 std (Linear, Embedding, position embeddings),
    biases 0, norms 1 and 0; the projections that write into the residual stream
    (``out_proj``, ``fc2``, ``down``) scaled by ``1 / sqrt(2 depth)`` (GPT-2)."""
    scale = 1.0 / math.sqrt(2.0 * depth)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(mod.weight, std=0.02, a=-0.04, b=0.04)
                if name.rpartition(".")[2] in ("out_proj", "fc2", "down"):
                    mod.weight.mul_(scale)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
        for p in model.parameters(recurse=False):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)


class ViT(nn.Module):
    """A Vision Transformer for small images; see :func:`vit_tiny`."""

    def __init__(self, patch_size: int = 7, depth: int = 4, width: int = 64, heads: int = 4,
                 ffn: int | None = None, in_channels: int = 1, image_size: int = 28,
                 num_classes: int = 10) -> None:
        super().__init__()
        _check_int("depth", depth)
        _check_heads(width, heads, heads, None)
        ffn = 4 * width if ffn is None else _check_int("ffn", ffn)
        _check_int("num_classes", num_classes)
        self.patch_embed = PatchEmbedding(in_channels, image_size, patch_size, width)
        self.blocks = nn.Sequential(*[ViTBlock(width, heads, ffn) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        _init_transformer(self, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x))
        return self.head(self.norm(x).mean(1))


def vit_tiny(patch_size: int = 7, depth: int = 4, width: int = 64, heads: int = 4,
             ffn: int | None = None, in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> ViT:
    """A tiny Vision Transformer for 1x28x28 images (Fashion-MNIST).

    A. Dosovitskiy, L. Beyer, A. Kolesnikov, D. Weissenborn, X. Zhai, T. Unterthiner, M.
    Dehghani, M. Minderer, G. Heigold, S. Gelly, J. Uszkoreit, N. Houlsby, "An Image is
    Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021,
    https://arxiv.org/abs/2010.11929.

    A :class:`PatchEmbedding` (non-overlapping ``patch_size`` patches, one Linear with a
    learned position embedding), ``depth`` pre-norm :class:`ViTBlock` s (LayerNorm,
    :class:`SelfAttention` with ``heads`` heads of ``width // heads`` channels, LayerNorm, a
    GELU FFN ``fc1`` -> ``fc2`` of ``ffn`` neurons, default ``4 * width`` as in the paper),
    a final LayerNorm, the mean over the tokens (instead of the paper's class token: it
    classifies as well on small images and needs no concatenation along the tokens) and one
    Linear ``head``. The default patch size 7 gives a 4x4 grid of 16 tokens: attention then
    costs little beside the projections, and a CPU epoch of Fashion-MNIST takes seconds to
    tens of seconds; patch 4 (49 tokens) costs about 3x the MACs.

    Defaults (patch 7, depth 4, width 64, 4 heads, FFN 256) on 1x28x28: 204,938 parameters.

    Graph of units (:func:`pruners.trace`): each block's ``fc1`` (its FFN neurons) is a
    prunable group consumed by ``fc2``; the residual stream (``patch_embed.proj``, every
    ``attn.out_proj`` and ``fc2``) is one group, not prunable because LayerNorm mixes its
    channels. Pruned FFN widths (and heads) per block are read back from the weights by
    :func:`experiments.harness.checkpoint.fit_to_state_dict`.

    Submodules: ``patch_embed.proj``; ``blocks.{i}`` (``i = 0 .. depth-1``) with ``norm1``,
    ``attn.{q_proj, k_proj, v_proj, out_proj}``, ``norm2``, ``fc1``, ``act``, ``fc2``;
    ``norm``, ``head``.

    Args:
        patch_size: patch side; must divide ``image_size`` (4 or 7 for 28x28).
        depth: number of blocks.
        width: residual-stream channels (a multiple of ``heads``).
        heads: attention heads per block.
        ffn: FFN neurons per block (default ``4 * width``).
        in_channels: input image channels.
        image_size: input height and width (square images).
        num_classes: number of logits.

    Example:
        >>> net = vit_tiny()
        >>> net.patch_embed.num_patches, net.blocks[0].attn.num_heads
        (16, 4)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return ViT(patch_size, depth, width, heads, ffn, in_channels, image_size, num_classes)


class DecoderBlock(nn.Module):
    """A pre-norm decoder block: ``x + attn(norm1(x))`` (causal, grouped-query), then ``x +
    down(silu(gate(h)) * up(h))`` with ``h = norm2(x)``; RMSNorm, Linear layers without
    bias."""

    def __init__(self, width: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=1e-5)
        self.attn = SelfAttention(width, heads, kv_heads, bias=False, causal=True)
        self.norm2 = nn.RMSNorm(width, eps=1e-5)
        self.gate = nn.Linear(width, ffn, bias=False)
        self.up = nn.Linear(width, ffn, bias=False)
        self.down = nn.Linear(ffn, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class DecoderLM(nn.Module):
    """A decoder-only character-level language model; see :func:`decoder_lm`."""

    def __init__(self, vocab_size: int = 128, context: int = 128, depth: int = 4,
                 width: int = 128, heads: int = 4, kv_heads: int = 2, ffn: int = 344,
                 tie_embeddings: bool = False) -> None:
        super().__init__()
        _check_int("vocab_size", vocab_size)
        _check_int("context", context)
        _check_int("depth", depth)
        _check_heads(width, heads, kv_heads, None)
        _check_int("ffn", ffn)
        if not isinstance(tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be True or False, got {tie_embeddings!r}")
        self.context = context
        self.embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.Sequential(*[DecoderBlock(width, heads, kv_heads, ffn)
                                      for _ in range(depth)])
        self.norm = nn.RMSNorm(width, eps=1e-5)
        self.head = nn.Linear(width, vocab_size, bias=False)
        _init_transformer(self, depth)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed[:tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def decoder_lm(vocab_size: int = 128, context: int = 128, depth: int = 4, width: int = 128,
               heads: int = 4, kv_heads: int = 2, ffn: int = 344,
               tie_embeddings: bool = False) -> DecoderLM:
    """A small decoder-only (GPT-style) language model with the parts of current ones.

    Pre-norm decoder blocks (A. Radford, J. Wu, R. Child, D. Luan, D. Amodei, I. Sutskever,
    "Language Models are Unsupervised Multitask Learners", OpenAI 2019,
    https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf)
    with RMSNorm (B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS
    2019, https://arxiv.org/abs/1910.07467), a SwiGLU FFN (N. Shazeer, "GLU Variants Improve
    Transformer", 2020, https://arxiv.org/abs/2002.05202) and grouped-query causal attention
    (J. Ainslie et al., "GQA", EMNLP 2023, https://arxiv.org/abs/2305.13245), as in LLaMA
    (H. Touvron et al., 2023, https://arxiv.org/abs/2302.13971), but with learned absolute
    positions instead of rotary ones.

    ``embed`` (``nn.Embedding``) plus the learned position embedding ``pos_embed`` (``context
    x width``; inputs may be shorter than ``context``, not longer); ``depth``
    :class:`DecoderBlock` s (RMSNorm, causal :class:`SelfAttention` with ``heads`` query and
    ``kv_heads`` key/value heads of ``width // heads`` channels, RMSNorm, ``down(silu(gate(h))
    * up(h))`` with ``ffn`` neurons; no biases); a final RMSNorm and ``head`` (Linear without
    bias), whose weight is the embedding's when ``tie_embeddings`` (O. Press, L. Wolf, "Using
    the Output Embedding to Improve Language Models", EACL 2017,
    https://arxiv.org/abs/1608.05859). Input ``(B, T)`` token indices, ``T <= context``;
    output ``(B, T, vocab_size)`` next-token logits. The default FFN width 344 is 8/3 of the
    width rounded up to a multiple of 8 (the SwiGLU paper's rule for matching a 4x GELU FFN's
    parameters).

    Defaults (vocabulary 128, context 128, depth 4, width 128, 4 heads, 2 key/value heads,
    FFN 344): 775,296 parameters (758,912 with tied embeddings).

    Graph of units (:func:`pruners.trace`): each block's ``gate`` and ``up`` form one group
    (named ``blocks.{i}.gate``, held at their product) consumed by ``down``: the SwiGLU
    neurons. The residual stream (every ``attn.out_proj`` and ``down``) is not prunable:
    RMSNorm mixes its channels. ``head`` is the output layer, never prunable (tied to
    ``embed`` or not). Pruned widths per block are read back from the weights by
    :func:`experiments.harness.checkpoint.fit_to_state_dict`.

    Submodules: ``embed``; ``blocks.{i}`` with ``norm1``, ``attn.{q_proj, k_proj, v_proj,
    out_proj}``, ``norm2``, ``gate``, ``up``, ``down``; ``norm``, ``head``; parameter
    ``pos_embed``.

    Args:
        vocab_size: number of symbols (the data set's ``num_classes``).
        context: longest input (positions learned).
        depth: number of blocks.
        width: residual-stream channels (a multiple of ``heads``).
        heads: query heads per block.
        kv_heads: key/value heads per block (a divisor of ``heads``).
        ffn: SwiGLU neurons per block.
        tie_embeddings: share ``head.weight`` with ``embed.weight``.

    Example:
        >>> net = decoder_lm(vocab_size=40, context=32)
        >>> net.blocks[0].attn.num_heads, net.blocks[0].attn.num_kv_heads
        (4, 2)
        >>> net(torch.zeros(2, 32, dtype=torch.long)).shape
        torch.Size([2, 32, 40])
    """
    return DecoderLM(vocab_size, context, depth, width, heads, kv_heads, ffn, tie_embeddings)


def hf_llama(vocab_size: int = 128, context: int = 128, depth: int = 4, width: int = 64,
             heads: int = 8, kv_heads: int = 2, ffn: int = 176,
             tie_embeddings: bool = False) -> nn.Module:
    """A Llama-family language model of the ``transformers`` package, built from a config
    with random weights (nothing is downloaded), mapping token ids to next-token logits.

    ``transformers.LlamaForCausalLM`` (H. Touvron et al., *LLaMA*, 2023,
    https://arxiv.org/abs/2302.13971: pre-norm RMSNorm blocks, a SwiGLU FFN, grouped-query
    causal attention with rotary position embeddings, no biases) of ``depth`` layers of
    ``width`` channels, ``heads`` query and ``kv_heads`` key/value heads, ``ffn`` SwiGLU
    neurons, at most ``context`` positions, wrapped by :class:`saliency.hf.Logits` (input
    ``(B, T)`` token ids, output ``(B, T, vocab_size)``; the ``transformers`` model is
    ``.model``). The same shape as :func:`decoder_lm` but for the rotary positions: the
    library's code instead of the zoo's. The graph of units is built through ``torch.export``
    (``torch.fx`` cannot trace it): each layer's ``mlp.gate_proj``/``mlp.up_proj`` group and
    ``self_attn`` heads are units. Requires the ``hf`` extra (``pip install
    "saliency-pruning[hf]"``).
    """
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError('hf_llama needs the transformers package: pip install '
                          '"saliency-pruning[hf]"') from exc
    from saliency.hf import Logits
    _check_int("vocab_size", vocab_size)
    _check_int("context", context)
    _check_int("depth", depth)
    _check_heads(width, heads, kv_heads, None)
    _check_int("ffn", ffn)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=ffn,
        num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=context, tie_word_embeddings=bool(tie_embeddings),
        attention_bias=False, mlp_bias=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    return Logits(transformers.LlamaForCausalLM(config))


#: name -> factory, for checkpoints (the architecture is recorded by name and
#: keyword arguments) and the CLI.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "thesis_cnn": thesis_cnn,
    "thesis_cifar_cnn": thesis_cifar_cnn,
    "lenet_300_100": lenet_300_100,
    "lenet5": lenet5,
    "vgg": vgg,
    "covertype_net": covertype_net,
    "resnet_cifar": resnet_cifar,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet": resnet,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "densenet": densenet,
    "vit_tiny": vit_tiny,
    "decoder_lm": decoder_lm,
    "hf_llama": hf_llama,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build model ``name`` of :data:`MODELS` with keyword arguments.

    String activations are accepted for :func:`mlp` (``activation="tanh"``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    if name == "mlp" and isinstance(kwargs.get("activation"), str):
        kwargs["activation"] = _activation(kwargs["activation"])
    return MODELS[name](**kwargs)
