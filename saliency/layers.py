"""What each layer type means for units: a registry, one entry per layer type.

A *unit* is one output channel of a producer layer (Linear, Conv1d, Conv2d).
Between a producer and the layers that consume its channels sit *per-channel*
modules (BatchNorm, elementwise activations, pooling, dropout, identity). Each
layer kind is described by a small spec object held in a dict, so a new layer
type is one new entry, never a rewrite of the tracer or the surgery
(the pattern of ``torch/ao/pruning``'s per-pattern surgery functions).

* :data:`PRODUCERS` -- layers whose output channels are units and whose input
  channels can be sliced when they consume units: how to slice rows and
  columns, how to fold a constant input into the bias, how many MACs they cost.
* :data:`CHANNEL_MODULES` -- per-channel modules: which of their tensors are
  per channel (sliced along dim 0 with the units), how a constant per channel
  passes through them, and whether they keep a constant map constant.

Reference: U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS
thesis, NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 1.2.3
(units, Table 1.1) and Sec. 1.2.4 (bias propagation, eq. 1.5-1.6).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ProducerSpec",
    "ChannelSpec",
    "PRODUCERS",
    "CHANNEL_MODULES",
    "ELEMENTWISE_FUNCTIONS",
    "ELEMENTWISE_METHODS",
    "DROPOUT_FUNCTIONS",
    "avg_pool_scale",
    "POOL_FUNCTIONS",
    "effective_tensor",
    "eval_mode",
    "register_channel_module",
    "conv_kind",
    "depthwise_push",
    "dense_weight",
    "input_mask",
    "channels_first",
]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag after.

    Restoring per module keeps mixed modes (e.g. a frozen BatchNorm in a
    training model) as the caller had them, also when an error is raised.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def channels_first(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t``, an output (or input) of ``module``, with the module's channels in dimension 1.

    A Linear's channels are the last dimension of its input and output: on token-shaped
    tensors ``(batch, ..., channels)`` they are moved to dimension 1 (a view,
    ``(batch, channels, ...)``), so every per-unit statistic reduces the batch and token
    dimensions as it reduces a convolution's batch and positions. Any other tensor (a
    Linear's 2-D output, a convolution's map) is returned as it is.

    Examples:
        >>> channels_first(nn.Linear(3, 5), torch.zeros(2, 7, 5)).shape
        torch.Size([2, 5, 7])
        >>> channels_first(nn.Linear(3, 5), torch.zeros(2, 5)).shape
        torch.Size([2, 5])
    """
    if isinstance(module, nn.Linear) and t.dim() > 2:
        return t.movedim(-1, 1)
    return t


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """Return ``module.<name>`` as the forward pass would see it now.

    For a tensor pruned with :mod:`torch.nn.utils.prune` the attribute is only
    refreshed by the forward pre-hook, so it is recomputed here from
    ``<name>_orig * <name>_mask``.
    """
    orig = module._parameters.get(name + "_orig")
    if orig is not None:
        return orig * getattr(module, name + "_mask")
    return getattr(module, name, None)


@dataclass(frozen=True)
class ProducerSpec:
    """How a producer/consumer layer type is treated.

    Attributes:
        out_attr: attribute holding the number of output channels.
        in_attr: attribute holding the number of input channels.
        fold: ``fold(module, channels, values) -> bias delta``: the change of
            the layer's output bias when input channels ``channels`` are fed
            the constants ``values`` instead of data.
        fold_exact: whether that fold is exact everywhere (False for a
            zero-padded convolution, which sees zeros at the borders).
        macs: ``macs(module, input, output) -> int`` multiply-accumulates of one
            forward call.
        check: returns an error message when this layer's channels cannot be
            units (a depthwise convolution with a channel multiplier), else None.
        ndim: dimensions of its (batched) input and output: 2 for Linear,
            3 for Conv1d, 4 for Conv2d; channels are dimension 1.
    """

    out_attr: str
    in_attr: str
    fold: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    fold_exact: Callable[[nn.Module], bool]
    macs: Callable[[nn.Module, torch.Tensor, torch.Tensor], int]
    check: Callable[[nn.Module], str | None]
    ndim: int = 2


def _linear_fold(module: nn.Linear, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    w = effective_tensor(module, "weight")
    return w[:, cols] @ values.to(w.dtype)


def _conv_fold(module: nn.Module, chans: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    w = dense_weight(module)
    return w.sum(dim=tuple(range(2, w.dim())))[:, chans] @ values.to(w.dtype)


def dense_weight(module: nn.Module, of: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as the forward pass sees it, one column per input channel.

    A grouped convolution's weight ``(out, in / groups, ...)`` is spread to ``(out, in,
    ...)``, with zeros where an output row does not read an input channel (outside its conv
    group): column ``p`` of the result is what input channel ``p`` reaches. Any other weight
    is returned as it is (:func:`effective_tensor`). ``of``: spread this tensor (shaped like
    the weight) instead; ``torch.ones_like`` of the weight marks the entries that exist.
    """
    w = effective_tensor(module, "weight") if of is None else of
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return w
    per_in, rows = w.shape[1], w.shape[0] // groups
    full = w.new_zeros((w.shape[0], per_in * groups) + tuple(w.shape[2:]))
    for k in range(groups):
        full[k * rows:(k + 1) * rows, k * per_in:(k + 1) * per_in] = w[k * rows:(k + 1) * rows]
    return full


def input_mask(module: nn.Module, channels: torch.Tensor) -> torch.Tensor:
    """The entries of ``module``'s own weight that read input channels (columns)
    ``channels``, as a bool tensor shaped like the weight: column ``p`` of every row, or, in a
    grouped convolution, column ``p mod (in / groups)`` of the rows of ``p``'s conv group."""
    w = effective_tensor(module, "weight")
    mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    groups = getattr(module, "groups", 1)
    channels = channels.to(w.device)
    if groups == 1:
        mask[:, channels] = True
        return mask
    per_in, rows = w.shape[1], w.shape[0] // groups
    for p in channels.tolist():
        k = p // per_in
        mask[k * rows:(k + 1) * rows, p - k * per_in] = True
    return mask


def _conv_fold_exact(module: nn.Module) -> bool:
    # Reflect, replicate and circular padding repeat the constant, so only zero
    # padding breaks the fold at the borders.
    if module.padding_mode != "zeros":
        return True
    if isinstance(module.padding, str):
        return module.padding == "valid" or all(k == 1 for k in module.kernel_size)
    return all(p == 0 for p in module.padding)


def _linear_macs(module: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return int(out.numel()) * module.in_features


def _conv_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    per_output = module.in_channels // module.groups
    for k in module.kernel_size:
        per_output *= k
    return int(out.numel()) * per_output


def _linear_check(module: nn.Module) -> str | None:
    return None


def conv_kind(module: nn.Module) -> str:
    """How a Linear or convolution treats channels: ``"dense"`` (every output reads every
    input), ``"depthwise"`` (``groups == in_channels == out_channels``: output channel ``c``
    reads input channel ``c`` only), ``"grouped"`` (``1 < groups``, each output reads the
    inputs of its conv group) or ``"multiplier"`` (depthwise with several outputs per input).
    """
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return "dense"
    if groups == module.in_channels:
        return "depthwise" if module.out_channels == module.in_channels else "multiplier"
    return "grouped"


def _conv_check(module: nn.Module) -> str | None:
    if conv_kind(module) == "multiplier":
        return (f"depthwise convolution with a channel multiplier ({module.out_channels} outputs "
                f"from {module.in_channels} inputs)")
    return None


def depthwise_push(module: nn.Module, x: torch.Tensor, channels: torch.Tensor | None = None,
                   maps: bool = False) -> torch.Tensor:
    """A depthwise convolution applied to channels ``channels`` of ``x`` alone (None: all).

    With ``maps=False`` ``x`` holds one constant per channel, ``(1, C, 1, ...)``, and the
    result is the interior value ``c_i sum(w_i) + b_i`` (a zero-padded border sees less);
    with ``maps=True`` it is the convolution of the chosen channels' maps.
    """
    w = effective_tensor(module, "weight")
    b = effective_tensor(module, "bias")
    if channels is not None:
        w = w[channels.to(w.device)]
        b = None if b is None else b[channels.to(b.device)]
    if not maps:
        out = x * w.sum(dim=tuple(range(1, w.dim()))).reshape((1, -1) + (1,) * (x.dim() - 2))
        return out if b is None else out + b.reshape((1, -1) + (1,) * (x.dim() - 2))
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    padding = module.padding
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    return conv(x, w, b, module.stride, padding, module.dilation, groups=w.shape[0])


_LINEAR = ProducerSpec("out_features", "in_features", _linear_fold, lambda m: True,
                       _linear_macs, _linear_check, ndim=2)
_CONV1D = ProducerSpec("out_channels", "in_channels", _conv_fold, _conv_fold_exact,
                       _conv_macs, _conv_check, ndim=3)
_CONV2D = ProducerSpec("out_channels", "in_channels", _conv_fold, _conv_fold_exact,
                       _conv_macs, _conv_check, ndim=4)

#: Producer (and consumer) layer types. Output channels of these are units.
PRODUCERS: dict[type, ProducerSpec] = {
    nn.Linear: _LINEAR,
    nn.Conv1d: _CONV1D,
    nn.Conv2d: _CONV2D,
}


@dataclass(frozen=True)
class ChannelSpec:
    """How a per-channel module type is treated.

    Attributes:
        tensors: names of the module's per-channel parameters and buffers
            (sliced along dim 0 when units are removed). A callable receives
            the module and returns the names (e.g. PReLU with one shared slope
            has none).
        push: ``push(module, x, channels) -> y``: the module applied, in eval
            mode, to ``x`` whose dimension 1 holds the channels ``channels``
            (a 1-D index tensor; None = all channels in order). For
            constants ``x`` is shaped ``(1, C, 1, ...)``; for real maps it is
            ``(N, k, ...)``. Shape-only modules (pooling) are not called on
            constants (a constant map pools to itself, up to ``push``'s
            scale) but are called on real maps by :func:`saliency.replacement.run_path`.
        keeps_constant: whether a spatially constant map stays constant (and
            equal) through the module; False, e.g., for average pooling that
            counts zero padding.
        masks: names of per-channel parameters to mask in :func:`mask_units`.
        count_attr: attribute holding the number of channels, if any.
        ndims: the input dimensions (batch and channel first) for which the
            module acts per channel; None for elementwise modules (any).
        pools: whether the module combines positions within a channel
            (pooling): unit activation statistics (ReDo, APoZ) are taken
            before it.
    """

    tensors: Callable[[nn.Module], tuple[str, ...]]
    push: Callable[..., torch.Tensor]
    keeps_constant: Callable[[nn.Module], bool] = lambda m: True
    masks: Callable[[nn.Module], tuple[str, ...]] = lambda m: ()
    count_attr: str | None = None
    ndims: tuple[int, ...] | None = None
    pools: bool = False


def _bn_tensors(m: nn.Module) -> tuple[str, ...]:
    return tuple(n for n in ("weight", "bias", "running_mean", "running_var")
                 if getattr(m, n, None) is not None)


def _pick(t: torch.Tensor | None, channels: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or channels is None else t[channels.to(t.device)]


def _bn_push(m: nn.Module, x: torch.Tensor, channels: torch.Tensor | None = None
             ) -> torch.Tensor:
    w = _pick(effective_tensor(m, "weight"), channels)
    b = _pick(effective_tensor(m, "bias"), channels)
    if m.running_mean is None:
        # Normalizing with batch statistics maps a constant channel to its bias.
        out = torch.zeros_like(x)
        if b is not None:
            out = out + b.view((1, -1) + (1,) * (x.dim() - 2))
        return out
    return F.batch_norm(x, _pick(m.running_mean, channels), _pick(m.running_var, channels),
                        w, b, False, 0.0, m.eps)


def _no_tensors(m: nn.Module) -> tuple[str, ...]:
    return ()


def _call(m: nn.Module, x: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
    return m(x)


def _identity(m: nn.Module, x: torch.Tensor, channels: torch.Tensor | None = None
              ) -> torch.Tensor:
    return x


def _prelu_tensors(m: nn.PReLU) -> tuple[str, ...]:
    return ("weight",) if m.num_parameters > 1 else ()


def _prelu_push(m: nn.PReLU, x: torch.Tensor, channels: torch.Tensor | None = None
                ) -> torch.Tensor:
    w = effective_tensor(m, "weight")
    return F.prelu(x, _pick(w, channels) if w.numel() > 1 else w)


def avg_pool_scale(kernel_size, divisor_override, spatial_dims: int) -> float:
    """Factor by which average pooling scales a constant map.

    A window sums ``area`` copies of the constant and divides by the area, or
    by ``divisor_override`` when given (then the constant is multiplied by
    ``area / divisor_override``).
    """
    if not divisor_override:
        return 1.0
    ks = (tuple(kernel_size) if isinstance(kernel_size, (tuple, list))
          else (int(kernel_size),) * spatial_dims)
    area = 1
    for k in ks:
        area *= int(k)
    return area / float(divisor_override)


def _avgpool_keeps(m: nn.Module) -> bool:
    pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
    return not (m.count_include_pad and any(p > 0 for p in pad))


def _avgpool_push(m: nn.Module, x: torch.Tensor, channels: torch.Tensor | None = None
                  ) -> torch.Tensor:
    dims = 2 if isinstance(m, nn.AvgPool2d) else 1
    return x * avg_pool_scale(m.kernel_size, getattr(m, "divisor_override", None), dims)


_BN_MASKS = lambda m: tuple(n for n in ("weight", "bias")  # noqa: E731
                            if getattr(m, n, None) is not None)
_ELEMENTWISE = ChannelSpec(_no_tensors, _call)


def _shape_only(ndims: tuple[int, ...] | None, pools: bool = False) -> ChannelSpec:
    return ChannelSpec(_no_tensors, _identity, ndims=ndims, pools=pools)


#: Per-channel module types that may sit between a producer and its consumers.
CHANNEL_MODULES: dict[type, ChannelSpec] = {
    nn.BatchNorm1d: ChannelSpec(_bn_tensors, _bn_push, masks=_BN_MASKS,
                                count_attr="num_features", ndims=(2, 3)),
    nn.BatchNorm2d: ChannelSpec(_bn_tensors, _bn_push, masks=_BN_MASKS,
                                count_attr="num_features", ndims=(4,)),
    nn.PReLU: ChannelSpec(_prelu_tensors, _prelu_push, masks=_prelu_tensors),
    **{cls: _ELEMENTWISE for cls in (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
        nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
        nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink,
        nn.Hardshrink, nn.Threshold)},
    **{cls: _shape_only(None) for cls in (nn.Identity, nn.Dropout, nn.AlphaDropout)},
    nn.Dropout1d: _shape_only((3,)),
    nn.Dropout2d: _shape_only((4,)),
    **{cls: _shape_only((3,), pools=True) for cls in (
        nn.MaxPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d)},
    **{cls: _shape_only((4,), pools=True) for cls in (
        nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)},
    nn.AvgPool1d: ChannelSpec(_no_tensors, _avgpool_push, keeps_constant=_avgpool_keeps,
                              ndims=(3,), pools=True),
    nn.AvgPool2d: ChannelSpec(_no_tensors, _avgpool_push, keeps_constant=_avgpool_keeps,
                              ndims=(4,), pools=True),
}


#: normalizations over the channels: they mix them (the channels reaching them are not units)
CHANNEL_NORMS = tuple(c for c in (nn.LayerNorm, getattr(nn, "RMSNorm", None), nn.GroupNorm,
                                  nn.LocalResponseNorm) if c is not None)
#: class-name endings of normalizations over the channels written outside ``torch``
#: (``LlamaRMSNorm`` and the other normalizations of the ``transformers`` package)
_NORM_NAMES = ("RMSNorm", "LayerNorm", "GroupNorm")


def is_channel_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalizes over its input's channels (every output reads every
    channel): a LayerNorm, RMSNorm, GroupNorm or LocalResponseNorm of ``torch``, or a module
    of another package whose class name ends in ``RMSNorm``, ``LayerNorm`` or ``GroupNorm``
    (``LlamaRMSNorm``), kept as one call when tracing."""
    if isinstance(module, CHANNEL_NORMS):
        return True
    cls = type(module)
    return not cls.__module__.startswith("torch.") and cls.__name__.endswith(_NORM_NAMES)


def register_channel_module(cls: type, spec: ChannelSpec) -> None:
    """Declare a new per-channel module type (e.g. a switch layer)."""
    CHANNEL_MODULES[cls] = spec


#: Functions (``torch.*``, ``F.*``) that act elementwise on their first argument.
ELEMENTWISE_FUNCTIONS: set = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.celu,
    F.selu, F.gelu, F.silu, F.mish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.hardtanh, F.hardsigmoid, F.hardswish, F.softplus, F.softsign, F.logsigmoid,
    F.tanhshrink, F.softshrink, F.hardshrink, F.threshold, torch.abs, torch.clamp,
}
#: Dropout functions: identity in eval mode, elementwise in training.
DROPOUT_FUNCTIONS: set = {F.dropout, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout}
#: Functions that keep a constant channel constant (pooling, channel dropout),
#: with the input dimensions they act per channel on.
POOL_FUNCTIONS: dict = {
    F.max_pool1d: 3, F.adaptive_max_pool1d: 3, F.adaptive_avg_pool1d: 3, F.dropout1d: 3,
    torch.max_pool1d: 3,
    F.max_pool2d: 4, F.adaptive_max_pool2d: 4, F.adaptive_avg_pool2d: 4, F.dropout2d: 4,
    torch.max_pool2d: 4,
}
#: Tensor methods that act elementwise.
ELEMENTWISE_METHODS: set = {
    "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "abs", "clamp", "clamp_",
    "contiguous", "float", "double", "exp", "neg", "pow", "to",
}
