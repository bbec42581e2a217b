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
