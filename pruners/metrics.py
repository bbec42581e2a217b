"""Model size: parameter counts and multiply-accumulates (MACs)."""

from __future__ import annotations

import torch
import torch.nn as nn

from saliency.layers import PRODUCERS, eval_mode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module, *, count_masked: bool = False) -> int:
    """Number of parameters of ``model``.

    Entries masked by :mod:`torch.nn.utils.prune` (mask 0) are not counted
    unless ``count_masked=True``, so a masked model and its physically shrunk
    twin report the same number. A parameter shared by several modules counts
    once.
    """
    total = 0
    seen: set[int] = set()
    for mod in model.modules():
        for pname, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if not count_masked and pname.endswith("_orig"):
                mask = mod._buffers.get(pname[: -len("_orig")] + "_mask")
                if mask is not None:
                    total += int(mask.count_nonzero())
                    continue
            total += p.numel()
    return total


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, per sample of ``example_input``.

    Counts the Linear and Conv layers of :data:`saliency.layers.PRODUCERS`
    (dense cost: masking does not make a layer cheaper). The model runs once in
    eval mode without gradients; its mode is restored.
    """
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += PRODUCERS[type(mod)].macs(mod, inp[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m) in PRODUCERS]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return total // max(1, int(example_input.shape[0]))
