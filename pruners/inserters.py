"""Insert the layers a scorer reads: switch layers, tri-state ReLUs.

Some unit scorers only make sense on models that carry a method's own
layers: ``"switch"`` (ShrinkNets' :class:`saliency.switch.Switch`) and
``"gate"`` (the width gates of :class:`saliency.tristate.TriStateReLU`). Such a
scorer class names the layer kind in ``requires_layer``; :data:`INSERTERS`
maps each kind to the function that adds it, so a new kind is one entry.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .shrinknets import insert_switches
from .tristate import insert_tristate

__all__ = ["INSERTERS", "prepare_for"]

#: layer kind -> ``insert(model, example_input) -> model with those layers``
INSERTERS: dict[str, Callable[[nn.Module, torch.Tensor | None], nn.Module]] = {
    "switch": insert_switches,
    "tristate": insert_tristate,
}


def prepare_for(scorer, model: nn.Module, example_input: torch.Tensor | None = None
                ) -> nn.Module:
    """``model`` itself, or a copy with the layers ``scorer`` needs inserted.

    ``scorer`` is a scorer instance or class; its ``requires_layer`` (None,
    ``"switch"``, ``"tristate"``) picks the inserter from :data:`INSERTERS`,
    called with its default arguments. A model that already has such
    layers is returned as it is.

    Examples:
        >>> import torch.nn as nn
        >>> from saliency import SCORERS
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> gated = prepare_for(SCORERS["gate"], net)
        >>> sorted(SCORERS["gate"]().score(gated))
        ['0']
    """
    kind = getattr(scorer, "requires_layer", None)
    if kind is None:
        return model
    if kind not in INSERTERS:
        raise ValueError(f"no inserter for layer kind {kind!r}; known: {sorted(INSERTERS)}")
    from saliency.switch import Switch
    from saliency.tristate import TriStateReLU

    present = {"switch": Switch, "tristate": TriStateReLU}.get(kind)
    if present is not None and any(isinstance(m, present) for m in model.modules()):
        return model
    return INSERTERS[kind](model, example_input)
