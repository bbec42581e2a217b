"""Insert the layers a scorer reads: switch layers, tri-state ReLUs.

Some unit scorers only make sense on models that carry a method's own
layers: ``"switch"`` (the ShrinkNets switch, :class:`saliency.switch.Switch`)
and ``"gate"`` (the width gates of :class:`saliency.tristate.TriStateReLU`).
Such a scorer class says so in ``requires_layer``, a
:class:`saliency.LayerRequirement` naming the layer class and the function
that inserts it; :func:`prepare_for` reads it. A new scorer with a layer of
its own is one class and one registry entry: nothing here changes.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn as nn

from saliency.base import LayerRequirement

__all__ = ["prepare_for"]


def prepare_for(scorer, model: nn.Module, example_input: torch.Tensor | None = None
                ) -> nn.Module:
    """``model`` itself, or a copy with the layers ``scorer`` needs inserted.

    ``scorer`` is a scorer instance or class. Its ``requires_layer`` (a
    :class:`saliency.LayerRequirement`, or None for a scorer that reads no
    special layer) names the layer class and the inserter, which is imported
    and called as ``inserter(model, example_input)`` with its default
    arguments. A model that already has such a layer is returned as it is.

    Raises:
        TypeError: ``requires_layer`` is neither None nor a ``LayerRequirement``.
        ValueError: the inserter cannot be imported, and the inserter's own
            errors (e.g. no hidden ReLU to replace by a tri-state ReLU).

    Examples:
        >>> import torch.nn as nn
        >>> from saliency import SCORERS
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> prepare_for(SCORERS["mrp"], net) is net        # reads no special layer
        True
        >>> gated = prepare_for(SCORERS["gate"], net)      # a copy with tri-state ReLUs
        >>> type(gated[1]).__name__, type(net[1]).__name__
        ('TriStateReLU', 'ReLU')
        >>> sorted(SCORERS["gate"]().score(gated))
        ['0']
        >>> prepare_for(SCORERS["gate"], gated) is gated  # already there
        True
    """
    requirement = getattr(scorer, "requires_layer", None)
    if requirement is None:
        return model
    name = scorer.__name__ if isinstance(scorer, type) else type(scorer).__name__
    if not isinstance(requirement, LayerRequirement):
        raise TypeError(f"{name}.requires_layer must be a saliency.LayerRequirement or None, "
                        f"got {requirement!r}")
    if requirement.satisfied_by(model):
        return model
    return _inserter(requirement, name)(model, example_input)


def _inserter(requirement: LayerRequirement, scorer: str
              ) -> Callable[[nn.Module, torch.Tensor | None], nn.Module]:
    """The inserter of ``requirement``: the function itself, or imported from its path."""
    if not isinstance(requirement.inserter, str):
        return requirement.inserter
    module, _, attr = requirement.inserter.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{scorer}: cannot import the inserter {requirement.inserter!r} "
                         f"({exc})") from exc
    if not callable(fn):
        raise ValueError(f"{scorer}: the inserter {requirement.inserter!r} is not a function "
                         f"of {module!r}")
    return fn
