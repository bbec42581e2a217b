"""Checkpoints that record the architecture as it is now.

A checkpoint is a plain dict of tensors and Python values, loadable with
``torch.load(path, weights_only=True)`` (no code runs on load):

``{"format": "saliency-pruning-checkpoint/1", "arch": {"model": NAME, "kwargs": {...}},
"state_dict": ..., "optimizer": ..., "epoch": ..., ...}``

``arch`` names the factory in :data:`experiments.harness.models.MODELS` that built the
model. A model whose units were physically removed keeps the layer structure
of that factory with smaller widths; :func:`fit_to_state_dict` resizes a
freshly built model to the shapes in the state dict (including biases created
by bias propagation and ``torch.nn.utils.prune`` masks), so a shrunk model
reloads without knowing its history.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import prune

from experiments.harness import atomic
from experiments.harness.models import build_model
from saliency.attention import fit_attention
from saliency.layers import CHANNEL_MODULES

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "fit_to_state_dict", "model_from_checkpoint"]

FORMAT = "saliency-pruning-checkpoint/1"

#: module attributes that record a size, set from the weight shape on resize
_SIZE_ATTRS = {
    nn.Linear: (("out_features", "weight", 0), ("in_features", "weight", 1)),
    nn.Conv1d: (("out_channels", "weight", 0), ("in_channels", "weight", 1)),
    nn.Conv2d: (("out_channels", "weight", 0), ("in_channels", "weight", 1)),
    nn.BatchNorm1d: (("num_features", "running_mean", 0), ("num_features", "weight", 0)),
    nn.BatchNorm2d: (("num_features", "running_mean", 0), ("num_features", "weight", 0)),
    nn.PReLU: (("num_parameters", "weight", 0),),
}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match its model."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: Mapping[str, Any], *,
                    optimizer: torch.optim.Optimizer | None = None, **extra: Any) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout)."""
    payload = {"format": FORMAT, "arch": {"model": arch["model"],
                                          "kwargs": dict(arch.get("kwargs", {}))},
               "state_dict": model.state_dict()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    payload.update(extra)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic.write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one clear message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {str(path)!r}: {first}") from exc
    return obj


def _resize_param(module: nn.Module, name: str, shape: torch.Size) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        if old is None:  # a bias created by bias propagation: the dtype of the weight
            weight = module._parameters.get("weight_orig", module._parameters.get("weight"))
            dtype = weight.dtype if weight is not None else torch.float32
        else:
            dtype = old.dtype
        new = torch.empty(shape, dtype=dtype)
        module._parameters[name] = nn.Parameter(new, requires_grad=True if old is None
                                                else old.requires_grad)
    elif name in module._buffers:
        old = module._buffers[name]
        module._buffers[name] = torch.empty(shape, dtype=old.dtype if old is not None
                                            else torch.float32)


def _fit_conv_groups(name: str, mod: nn.Module, groups: int, old_in: int, old_out: int) -> None:
    """Set a grouped convolution's ``groups`` and ``in_channels`` from its resized weight.

    The weight is ``(out_channels, in_channels / groups, *kernel)``. A depthwise
    convolution (one input channel per group in the freshly built model) stays
    depthwise with the same depth multiplier ``out_channels / groups``: ``groups
    = in_channels = out_channels / multiplier``. Any other grouped convolution
    keeps its number of groups: ``in_channels = groups * weight.shape[1]``.
    """
    w = mod._parameters.get("weight_orig", mod._parameters.get("weight"))
    if w is None:
        return
    out, per_group = int(w.shape[0]), int(w.shape[1])
    if old_in == groups:  # depthwise
        multiplier = max(1, old_out // groups)
        if per_group != 1 or out % multiplier:
            raise CheckpointError(
                f"module {name!r} is a depthwise convolution ({groups} groups, {multiplier} "
                f"output(s) per group) but its saved weight has shape {tuple(w.shape)}")
        groups = out // multiplier
    elif out % groups:
        raise CheckpointError(f"module {name!r} has {groups} groups, which do not divide its "
                              f"{out} saved output channels")
    mod.groups = groups
    mod.in_channels = groups * per_group


def fit_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Resize ``model``'s parameters and buffers to the shapes in ``state_dict``.

    Handles physically removed units (smaller Linear/Conv/BatchNorm), biases
    created by bias propagation, and ``torch.nn.utils.prune`` reparametrized
    tensors (``weight_orig``/``weight_mask``). A depthwise convolution's
    ``groups`` follows its channel count (it stays depthwise); other grouped
    convolutions keep their groups, with ``in_channels = groups *
    weight.shape[1]``. Attention modules get the head counts of the saved shapes
    (:func:`saliency.attention.fit_attention`: an ``nn.MultiheadAttention`` with heads
    removed becomes a :class:`saliency.attention.PrunedMultiheadAttention`). Layer types and names must match; values are not
    loaded (call ``load_state_dict`` next).
    """
    fit_attention(model, state_dict)  # head counts (fewer heads after head removal)
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        mod_name, _, tname = key.rpartition(".")
        mod = modules.get(mod_name)
        if mod is None:
            raise CheckpointError(f"state dict entry {key!r}: the model has no module "
                                  f"{mod_name!r}")
        if tname.endswith("_orig") and (mod_name + "." + tname[:-5] + "_mask") in state_dict:
            base = tname[:-5]
            if base + "_orig" not in mod._parameters:
                if getattr(mod, base, None) is None:
                    raise CheckpointError(f"state dict entry {key!r}: module {mod_name!r} "
                                          f"has no tensor {base!r}")
                prune.identity(mod, base)
            if mod._parameters[tname].shape != value.shape:
                _resize_param(mod, tname, value.shape)
                _resize_param(mod, base + "_mask", value.shape)
            continue
        if tname.endswith("_mask") and (mod_name + "." + tname[:-5] + "_orig") in state_dict:
            continue
        current = mod._parameters.get(tname, mod._buffers.get(tname))
        if tname not in mod._parameters and tname not in mod._buffers:
            if tname == "bias" and isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                mod._parameters["bias"] = None  # created by bias propagation
            else:
                raise CheckpointError(f"state dict entry {key!r}: module {mod_name!r} "
                                      f"({type(mod).__name__}) has no tensor {tname!r}")
        if current is None or current.shape != value.shape:
            _resize_param(mod, tname, value.shape)
    for mod_name, mod in model.named_modules():
        groups = getattr(mod, "groups", 1) if isinstance(mod, (nn.Conv1d, nn.Conv2d)) else 1
        old = (getattr(mod, "in_channels", 0), getattr(mod, "out_channels", 0))
        for attr, tname, dim in _SIZE_ATTRS.get(type(mod), ()):
            t = mod._parameters.get(tname + "_orig", mod._parameters.get(
                tname, mod._buffers.get(tname)))
            if t is not None:
                setattr(mod, attr, int(t.shape[dim]))
        if groups != 1:
            _fit_conv_groups(mod_name, mod, groups, *old)
        spec = CHANNEL_MODULES.get(type(mod))  # registered per-channel layers (switches, ...)
        if type(mod) not in _SIZE_ATTRS and spec is not None and spec.count_attr:
            for tname in spec.tensors(mod):
                t = mod._parameters.get(tname + "_orig", mod._parameters.get(
                    tname, mod._buffers.get(tname)))
                if t is not None:
                    setattr(mod, spec.count_attr, int(t.shape[0]))
                    break
    return model


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """Build the model a checkpoint describes and load its weights."""
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} checkpoint (format={ckpt.get('format')!r})")
    arch = ckpt["arch"]
    try:
        model = build_model(arch["model"], **arch.get("kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build model {arch!r}: {exc}") from exc
    fit_to_state_dict(model, ckpt["state_dict"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise CheckpointError(f"state dict does not match {arch['model']}: {detail}") from exc
    with torch.no_grad():  # refresh the pruned tensors' plain attributes
        for mod in model.modules():
            for pname in list(mod._parameters):
                if pname.endswith("_orig") and pname[:-5] + "_mask" in mod._buffers:
                    setattr(mod, pname[:-5], mod._parameters[pname] * mod._buffers[pname[:-5] + "_mask"])
    return model
