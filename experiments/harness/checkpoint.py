"""Checkpoints that record the architecture as it is now.

A checkpoint is a plain dict of tensors and Python values, loadable with
``torch.load(path, weights_only=True)`` (no code runs on load):

``{"format": "saliency-pruning-checkpoint/1", "arch": {"model": NAME, "kwargs": {...}},
"state_dict": ..., "optimizer": ..., "epoch": ..., ...}``

``arch`` names the factory in :data:`experiments.harness.models.MODELS` that built the
model. A model whose units were physically removed keeps the layer structure
of that factory with smaller widths; the library's
:func:`pruners.checkpoint.fit_to_state_dict` resizes a freshly built model to the shapes in the
state dict (including biases created by bias propagation and ``torch.nn.utils.prune`` masks),
so a shrunk model reloads without knowing its history.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from experiments.harness import atomic
from experiments.harness.models import build_model
from pruners.checkpoint import FORMAT, StateDictError, load_pruned
from pruners.checkpoint import fit_to_state_dict as _fit

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "fit_to_state_dict", "model_from_checkpoint"]


class CheckpointError(StateDictError):
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


def fit_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """:func:`pruners.checkpoint.fit_to_state_dict` (the library's), its errors as
    :class:`CheckpointError`."""
    try:
        return _fit(model, state_dict)
    except StateDictError as exc:
        raise CheckpointError(str(exc)) from exc


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """Build the model a checkpoint describes and load its weights."""
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} checkpoint (format={ckpt.get('format')!r})")
    arch = ckpt["arch"]
    try:
        model = build_model(arch["model"], **arch.get("kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build model {arch!r}: {exc}") from exc
    try:
        load_pruned(model, ckpt["state_dict"])
    except StateDictError as exc:
        raise CheckpointError(f"{arch['model']}: {exc}") from exc
    return model
