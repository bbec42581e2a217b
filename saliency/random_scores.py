"""Random saliencies, the baseline every score must beat (the thesis's ``randomScorer``).

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 2.1: scores
drawn uniformly from ``(0, 1)``, "so that we can compare our saliency
functions with random scoring". :class:`RandomParameter` scores every
parameter entry, :class:`RandomUnit` every unit.

Both are deterministic for a given ``seed``: each tensor gets its own
generator, seeded from ``seed`` and the tensor's name, so a tensor's scores do
not depend on which other tensors or layers are selected.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import torch

from .base import ParameterScorer, UnitScorer

__all__ = ["RandomParameter", "RandomUnit"]


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return seed


def _uniform(shape, seed: int | None, name: str, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers of ``shape`` (in ``like``'s dtype and device)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    if seed is None:  # torch's global generator
        return torch.rand(shape, dtype=dtype).to(like.device)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2 ** 63)
    return torch.rand(shape, generator=gen, dtype=dtype).to(like.device)


class RandomParameter(ParameterScorer):
    """Uniform random score in ``[0, 1)`` for every parameter entry.

    Args:
        seed: int for reproducible scores (the default, 0), or None to draw
            from torch's global generator (new scores on every call).
        params: parameter names to score (None = all trainable).

    Examples:
        >>> import torch.nn as nn
        >>> net = nn.Linear(3, 2)
        >>> s = RandomParameter(seed=1).score(net)
        >>> s["weight"].shape, bool(((s["weight"] >= 0) & (s["weight"] < 1)).all())
        (torch.Size([2, 3]), True)
        >>> bool((RandomParameter(seed=1).score(net)["weight"] == s["weight"]).all())
        True

    Reference: Evci 2018, Sec. 2.1 (``randomScorer``).
    """

    needs_data = False
    approximates = None

    def __init__(self, seed: int | None = 0, params: Iterable[str] | None = None):
        super().__init__(params)
        self.seed = _check_seed(seed)

    def _score(self, model, data, loss_fn):
        return {k: _uniform(p.shape, self.seed, k, p) for k, p in self.selected(model).items()}


class RandomUnit(UnitScorer):
    """Uniform random score in ``[0, 1)`` for every prunable unit.

    One draw per unit of each group: per group channel for channels removed
    together (a residual group), so a group counts once in a global ranking.

    Needs no data, but the graph of units does: convolutional models need
    ``example_input`` (or ``data``) to be traced; models whose first layer is
    a Linear are traced with a default input.

    Args:
        seed: int for reproducible scores (the default, 0), or None for
            torch's global generator.
        layers: see :class:`~saliency.base.UnitScorer`.
        exclude: see :class:`~saliency.base.UnitScorer`.
        example_input: see :class:`~saliency.base.UnitScorer`.

    Examples:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> RandomUnit(seed=0).score(net)["0"].shape
        torch.Size([6])

    An attention module's heads get one score each, under the module's name.

    Reference: Evci 2018, Sec. 2.1 (``randomScorer``), applied to units.
    """

    needs_data = False
    approximates = None

    def __init__(self, seed: int | None = 0, layers: Iterable[str] | None = None, *,
                 exclude: Iterable[str] = (), example_input: torch.Tensor | None = None):
        super().__init__(layers, exclude=exclude, example_input=example_input)
        self.seed = _check_seed(seed)

    def _score(self, model, data, loss_fn):
        graph, layers = self.graph(model, data)
        out = {}
        for name in layers:
            w = next(model.get_submodule(name).parameters(), torch.empty(0))
            out[name] = _uniform((graph.groups[name].size,), self.seed, name, w)
        return out

    def _head_scores(self, model, graph, names, data, loss_fn):
        """One uniform score per head of each attention module (seeded by its name)."""
        out = {}
        for name in names:
            w = next(model.get_submodule(name).parameters(), torch.empty(0))
            out[name] = _uniform((graph.heads[name].num_heads,), self.seed, name, w)
        return out
