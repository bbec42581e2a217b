"""Tri-state ReLU: trainable width and depth gates, and the ``gate`` saliency.

S. Srinivas and R. V. Babu, *Learning Neural Network Architectures using
Backpropagation*, BMVC 2016, https://arxiv.org/abs/1511.05497 (Srinivas &
Babu 2016) replace each ReLU by a
*tri-state ReLU* with two kinds of trainable gates: a width gate ``w_i`` per
channel (neuron or feature map) and one depth gate ``d`` per layer, tied
across its channels::

    tsReLU(x)_i = w_i * x_i        if x_i >= 0
                  w_i * d * x_i    if x_i <  0

With binary gates the function has three states per channel:

* ``w_i = 0`` -- always zero: the neuron is off and can be removed;
* ``w_i = 1, d = 0`` -- ReLU;
* ``w_i = 1, d = 1`` -- the identity: the layer is linear, and it can be
  merged with the next one (the product of two weight matrices), so the
  network's depth is learned as well as its widths.

The gates are trained as real numbers kept in ``[0, 1]`` (clipped after each
step) and pushed towards ``{0, 1}`` by the binarizing regularizer
``w (1 - w)`` (see :mod:`pruners.tristate`).

The layer is a per-channel module of the graph of units: :func:`saliency.trace`
passes units through it, :func:`pruners.remove_units` slices its width gates
with the producer's units (the depth gate is shared and kept), and constants
pass through it for bias propagation. :class:`GateScorer` (``"gate"`` in
:data:`saliency.SCORERS`) scores each unit by its width gate ``w_i``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import LayerRequirement, UnitScorer
from .graph import module_on_path
from .layers import ChannelSpec, effective_tensor, register_channel_module

__all__ = ["TriStateReLU", "GateScorer", "tristate_of"]


class TriStateReLU(nn.Module):
    """``w_i x_i`` for ``x_i >= 0`` and ``w_i d x_i`` for ``x_i < 0`` (channels on dim 1).

    Srinivas & Babu 2016, the tri-state ReLU.

    Args:
        num_channels: ``C``, the number of width gates.
        width_init: initial value of every width gate ``w_i`` (1: every unit on).
        depth_init: initial value of the depth gate ``d`` (0: a ReLU; 1: the
            identity).
        straight_through: compute the forward pass with the binarized gates
            (``w_i >= 1/2`` -> 1, else 0; the same for ``d``) and pass the
            gradient to the real-valued gates unchanged (a straight-through
            estimator). The network then computes during training exactly what
            it will compute after binarization, so a gate cannot shrink while
            the next layer's weights grow to make up for it. Off by default
            (the real-valued gates of the paper).

    Parameters: ``width`` (shape ``(C,)``, the ``w_i``) and ``depth`` (shape
    ``(1,)``, ``d``).

    Examples:
        >>> act = TriStateReLU(3)
        >>> x = torch.tensor([[-1.0, 0.5, 2.0]])
        >>> torch.equal(act(x), torch.relu(x))      # w = 1, d = 0: a ReLU
        True
        >>> with torch.no_grad():
        ...     _ = act.depth.fill_(1.0)            # d = 1: the identity
        >>> act(x)
        tensor([[-1.0000,  0.5000,  2.0000]], grad_fn=<MulBackward0>)
        >>> with torch.no_grad():
        ...     _ = act.width.copy_(torch.tensor([1.0, 0.0, 0.5]))  # unit 1 off
        >>> act(x)
        tensor([[-1.,  0.,  1.]], grad_fn=<MulBackward0>)
    """

    def __init__(self, num_channels: int, width_init: float = 1.0, depth_init: float = 0.0,
                 straight_through: bool = False):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) \
                or num_channels < 1:
            raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
        for name, v in (("width_init", width_init), ("depth_init", depth_init)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        self.num_channels = num_channels
        self.straight_through = bool(straight_through)
        self.width = nn.Parameter(torch.full((num_channels,), float(width_init)))
        self.depth = nn.Parameter(torch.full((1,), float(depth_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"TriStateReLU({self.num_channels}) got an input of shape "
                             f"{tuple(x.shape)}; expected B x {self.num_channels} x ...")
        w, d = self.width, self.depth
        if self.straight_through:
            w, d = _binarized(w), _binarized(d)
        return _apply(x, w, d)

    def extra_repr(self) -> str:
        return f"{self.num_channels}" + (", straight_through=True" if self.straight_through
                                         else "")


def _binarized(g: torch.Tensor) -> torch.Tensor:
    """``1[g >= 1/2]`` in the forward pass, the identity in the backward pass."""
    return g + ((g >= 0.5).to(g.dtype) - g).detach()


def _apply(x: torch.Tensor, w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    # slope 1 on the positive side, d on the negative side, times the width gate
    slope = torch.where(x >= 0, torch.ones_like(x), d.to(x.dtype).reshape(()).expand_as(x))
    return x * slope * w.to(x.dtype).view(shape)


def _push(m: TriStateReLU, x: torch.Tensor, channels: torch.Tensor | None = None
          ) -> torch.Tensor:
    w, d = effective_tensor(m, "width"), effective_tensor(m, "depth")
    if m.straight_through:
        w, d = _binarized(w), _binarized(d)
    if channels is not None:
        w = w[channels.to(w.device)]
    return _apply(x, w, d)


register_channel_module(TriStateReLU, ChannelSpec(
    tensors=lambda m: ("width",), push=_push, masks=lambda m: ("width",),
    count_attr="num_channels", ndims=None))


def tristate_of(model: nn.Module, graph, producer: str) -> tuple[str, TriStateReLU] | None:
    """The tri-state ReLU on ``producer``'s per-channel path (name, module), or None.

    Raises ValueError if its consumers' paths pass through different ones.
    """
    return module_on_path(model, graph, producer, TriStateReLU, "tri-state ReLUs")


class GateScorer(UnitScorer):
    """The tri-state ReLU's saliency of a unit: its width gate ``w_i``.

    A unit with ``w_i = 0`` always outputs zero (Srinivas & Babu 2016): it
    is removed after training. Needs no data. Every scored layer must have a
    :class:`TriStateReLU` on its path (:func:`pruners.tristate.insert_tristate`
    puts one in place of each hidden ReLU; :func:`pruners.prepare_for` calls
    it for this scorer).
    """

    needs_data = False
    requires_layer = LayerRequirement(TriStateReLU, "pruners.tristate:insert_tristate")

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            found = tristate_of(model, graph, name)
            if found is None:
                raise ValueError(f"layer {name!r} has no tri-state ReLU on its path; insert "
                                 "them first (pruners.tristate.insert_tristate)")
            out[name] = effective_tensor(found[1], "width").detach().to(torch.float64).clone()
        return out
