"""The ShrinkNets switch layer and its saliency.

*ShrinkNets: Learning Network Size while Training* (2018 draft; public as
G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify:
Learning Network Size while Training*, https://arxiv.org/abs/1806.03723;
"the ShrinkNets paper" below), Sec. 3.2, eq. 1, multiplies each output channel
``i`` of a layer by a learnable switch ``beta_i``::

    S_beta(L(x))_{i, ...} = beta_i * L(x)_{i, ...}

for inputs of shape ``B x C x D_1 ... D_n``. A channel whose switch is 0 no
longer reaches the rest of the network: its unit can be removed. Two
parametrizations of the gate ``g`` are offered:

* ``"signed"`` (the ShrinkNets paper): ``g = beta``, a real number
  initialized from ``N(0, 1)`` (Sec. 4.1);
* ``"relu"`` (the *Filter layer* of the paper's earlier draft, *Learning
  Network Size while Training with ShrinkNets*, 2018 -- "the ShrinkNets
  draft" -- eq. 1-2): ``g = max(0, theta)``, initialized from ``U[0, 1]``.
  A unit whose ``theta`` reaches 0 or below gets no gradient through ``g``
  and stays off for good under gradient descent (the penalty
  ``lambda max(0, theta)`` pushes it there).

The layer is a per-channel module of the graph of units
(:func:`saliency.trace` passes units through it; :func:`pruners.remove_units`
slices it with its producer) and :class:`SwitchScorer` (``"switch"`` in
:data:`saliency.SCORERS`) scores each unit by ``|g_i|``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import LayerRequirement, UnitScorer
from .graph import module_on_path
from .layers import ChannelSpec, effective_tensor, register_channel_module

__all__ = ["Switch", "HeadSwitch", "HeadGate", "SwitchScorer", "switch_of", "head_switch_of",
           "PARAMETRIZATIONS", "INITS"]

PARAMETRIZATIONS = ("signed", "relu")
INITS = ("normal", "uniform", "constant")


class Switch(nn.Module):
    """Multiply channel ``i`` (dimension 1) of the input by its gate ``g_i``.

    Args:
        num_channels: ``C``.
        parametrization: ``"signed"`` (``g = weight``) or ``"relu"``
            (``g = max(0, weight)``, with a permanent off state).
        init: ``"normal"`` (N(0, 1), the paper), ``"uniform"`` (U[0, 1], the
            draft) or ``"constant"`` (every gate ``value``; 1 is the identity).
        value: the constant of ``init="constant"``.
        channels_last: the channels are the input's last dimension (token-shaped inputs
            ``(batch, ..., channels)``: FFN neurons of a transformer) instead of dimension 1.

    The parameter is ``weight`` (``beta`` or ``theta`` of the papers), so the
    switch is sliced, masked and counted like any per-channel tensor.

    Examples:
        >>> s = Switch(3, init="constant")
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.equal(s(x), x)
        True
    """

    def __init__(self, num_channels: int, parametrization: str = "signed",
                 init: str = "normal", value: float = 1.0, channels_last: bool = False):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) \
                or num_channels < 1:
            raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, "
                             f"got {parametrization!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.num_channels = num_channels
        self.parametrization = parametrization
        self.init = init
        self.value = float(value)
        self.channels_last = bool(channels_last)
        self.weight = nn.Parameter(torch.empty(num_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "normal":
                self.weight.normal_(0.0, 1.0)
            elif self.init == "uniform":
                self.weight.uniform_(0.0, 1.0)
            else:
                self.weight.fill_(self.value)

    def gate(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The multipliers ``g`` (``beta``, or ``max(0, theta)``) of ``weight``
        (default: the ``weight`` attribute)."""
        w = self.weight if weight is None else weight
        return w if self.parametrization == "signed" else torch.relu(w)

    def effective_gate(self, channels: torch.Tensor | None = None) -> torch.Tensor:
        """The multipliers ``g`` the forward pass applies now, of every channel or of ``channels``.

        The gate of the effective weight: ``weight_orig * weight_mask`` when
        the switch is masked with :mod:`torch.nn.utils.prune` (whose
        ``weight`` attribute is refreshed only by the next forward pass),
        else ``weight``. Differentiable; what :class:`SwitchScorer` scores
        and the ShrinkNets penalty sums.

        Examples:
            >>> s = Switch(3, parametrization="relu", init="constant", value=-0.5)
            >>> s.effective_gate()
            tensor([0., 0., 0.], grad_fn=<ReluBackward0>)
            >>> import torch.nn.utils.prune as prune
            >>> s = prune.custom_from_mask(Switch(3, init="constant"), "weight",
            ...                            torch.tensor([1.0, 0.0, 1.0]))
            >>> s.effective_gate(torch.tensor([1, 2]))
            tensor([0., 1.], grad_fn=<IndexBackward0>)
        """
        w = effective_tensor(self, "weight")
        w = w if channels is None else w[channels.to(w.device)]
        return self.gate(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "channels_last", False):
            if x.dim() < 2 or x.shape[-1] != self.num_channels:
                raise ValueError(f"Switch({self.num_channels}, channels_last=True) got an "
                                 f"input of shape {tuple(x.shape)}; expected "
                                 f"B x ... x {self.num_channels}")
            return x * self.gate()
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"Switch({self.num_channels}) got an input of shape "
                             f"{tuple(x.shape)}; expected B x {self.num_channels} x ...")
        return x * self.gate().view((1, -1) + (1,) * (x.dim() - 2))

    def extra_repr(self) -> str:
        last = ", channels_last=True" if getattr(self, "channels_last", False) else ""
        return f"{self.num_channels}, parametrization={self.parametrization!r}{last}"


def _switch_push(m: Switch, x: torch.Tensor, channels: torch.Tensor | None = None
                 ) -> torch.Tensor:
    g = m.effective_gate(channels)
    return x * g.view((1, -1) + (1,) * (x.dim() - 2))


register_channel_module(Switch, ChannelSpec(
    tensors=lambda m: ("weight",), push=_switch_push, masks=lambda m: ("weight",),
    count_attr="num_channels", ndims=None))


class HeadSwitch(Switch):
    """One switch per attention head: multiply head ``h``'s output by its gate ``g_h``.

    Gates the heads' output ``c`` (``(..., num_heads * head_dim)``, what the output
    projection reads; head ``h`` owns features ``h*head_dim .. (h+1)*head_dim - 1``)::

        S_beta(c)_{..., h*d + i} = g_h * c_{..., h*d + i}

    the ShrinkNets switch (Leclerc et al. 2018, https://arxiv.org/abs/1806.03723, eq. 1)
    with a head as the unit, as the head gates of P. Michel, O. Levy, G. Neubig, *Are
    Sixteen Heads Really Better than One?*, NeurIPS 2019, https://arxiv.org/abs/1905.10650.
    :func:`pruners.shrinknets.insert_switches` calls it from a forward pre-hook
    (:class:`HeadGate`) on the attention module's output projection; ``num_channels`` is the
    number of heads (sliced with them by :func:`pruners.remove_units`).

    Args:
        num_heads: the number of heads (gates).
        head_dim: features per head.
        parametrization: as :class:`Switch`.
        init: as :class:`Switch`.
        value: as :class:`Switch`.

    Examples:
        >>> s = HeadSwitch(2, 3, init="constant", value=0.5)
        >>> s(torch.ones(1, 6)).tolist()
        [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]
    """

    def __init__(self, num_heads: int, head_dim: int, parametrization: str = "signed",
                 init: str = "normal", value: float = 1.0):
        super().__init__(num_heads, parametrization, init, value)
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be an int >= 1, got {head_dim!r}")
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.num_channels * self.head_dim
        if x.dim() < 1 or x.shape[-1] != width:
            raise ValueError(f"HeadSwitch({self.num_channels} heads of {self.head_dim}) got an "
                             f"input of shape {tuple(x.shape)}; expected (..., {width})")
        return x * self.gate().repeat_interleave(self.head_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_channels} heads, head_dim={self.head_dim}, "
                f"parametrization={self.parametrization!r}")


class HeadGate:
    """A forward pre-hook of an output projection that passes its input (the heads' output)
    through a :class:`HeadSwitch` first. Copied with the model (``copy.deepcopy`` keeps it
    pointing at the copy's switch)."""

    head_gate = True  # what saliency.attention looks for (it cannot import this module)

    def __init__(self, switch: HeadSwitch):
        self.switch = switch

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.switch(args[0]),) + tuple(args[1:])


def head_switch_of(model: nn.Module, heads) -> tuple[str, HeadSwitch] | None:
    """The head switch of an attention module (name, module), or None.

    ``heads`` is the module's :class:`saliency.attention.Heads`; the switch is the one a
    :class:`HeadGate` on its output projection calls. Raises ValueError when there are
    several.
    """
    out = model.get_submodule(heads.out)
    gates = [h for h in out._forward_pre_hooks.values() if isinstance(h, HeadGate)]
    if not gates:
        return None
    if len(gates) > 1:
        raise ValueError(f"attention {heads.name!r} has {len(gates)} head switches on its "
                         f"output projection {heads.out!r}; it may have one")
    sw = gates[0].switch
    name = next((n for n, m in model.named_modules() if m is sw), None)
    if name is None:
        raise ValueError(f"the head switch of attention {heads.name!r} is not a module of the "
                         "model")
    return name, sw


def switch_of(model: nn.Module, graph, producer: str) -> tuple[str, Switch] | None:
    """The switch on ``producer``'s per-channel path (name, module), or None.

    Raises ValueError if its consumers' paths pass through different switches.
    """
    return module_on_path(model, graph, producer, Switch, "switches")


class SwitchScorer(UnitScorer):
    """ShrinkNets' saliency of a unit: the magnitude ``|g_i|`` of its switch.

    A unit with ``g_i = 0`` is off (the ShrinkNets paper, eq. 1); the
    penalty ``lambda ||beta||_1`` (eq. 2) drives unimportant switches to 0.
    A group of coupled channels (a residual group) has one switch; group
    channel ``i`` scores ``|g|`` at its position in the tensor the switch
    multiplies. An attention head scores ``|g_h|``, its gate in the module's
    :class:`HeadSwitch` (one per head, on the heads' output before the output projection).
    Needs no data. Every scored layer must have a switch on its path
    (:func:`pruners.shrinknets.insert_switches` puts one after each prunable
    layer; :func:`pruners.prepare_for` calls it for this scorer).
    """

    needs_data = False
    requires_layer = LayerRequirement(Switch, "pruners.shrinknets:insert_switches")

    def _head_scores(self, model, graph, names, data, loss_fn):
        """``|g_h|`` of each head's gate in its attention module's :class:`HeadSwitch`."""
        out = {}
        for name in names:
            found = head_switch_of(model, graph.heads[name])
            if found is None:
                raise ValueError(f"attention {name!r} has no head switch; insert switches "
                                 "first (pruners.shrinknets.insert_switches)")
            out[name] = found[1].effective_gate().detach().abs().to(torch.float64)
        return out

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            found = switch_of(model, graph, name)
            if found is None:
                raise ValueError(f"layer {name!r} has no switch on its path; insert switches "
                                 "first (pruners.shrinknets.insert_switches)")
            gate = found[1].effective_gate().detach().abs().to(torch.float64)
            out[name] = _group_gates(graph.groups[name], found[0], gate)
        return out


def _group_gates(group, switch: str, gate: torch.Tensor) -> torch.Tensor:
    """The gate of each group channel: the switch's entry at the channel's position in the
    tensor it multiplies (the first place it is called on the group's region)."""
    out = torch.zeros(group.size, dtype=gate.dtype, device=gate.device)
    covered = torch.zeros(group.size, dtype=torch.bool)
    for node in reversed(group.nodes):  # the first call wins
        if node.kind == "op" and node.op.kind == "module" and node.op.target == switch:
            pos = (node.labels >= 0).nonzero().reshape(-1)
            out[node.labels[pos].to(gate.device)] = gate[pos.to(gate.device)]
            covered[node.labels[pos]] = True
    if not bool(covered.all()):
        missing = (~covered).nonzero().reshape(-1).tolist()
        raise ValueError(f"the switch {switch!r} of group {group.name!r} does not multiply "
                         f"its channels {missing}; give the group one switch on all its "
                         "channels")
    return out
