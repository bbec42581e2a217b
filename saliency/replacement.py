"""Replacement (bias propagation): feed consumers a constant in place of a unit.

Removing unit ``i`` of layer ``l`` while its consumers receive a constant
``c_i`` instead of the unit's output is exact once the constant is folded into
the consumers' biases (U. Evci, *Detecting Dead Weights and Units in Neural
Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068 -- Evci 2018
-- Sec. 1.2.4, eq. 1.5-1.6):

    b_j^{l+1} <- b_j^{l+1} + sum_i W_{j,i}^{l+1} g(c_i)

where ``g`` is the per-channel path between the layers (BatchNorm in eval
mode, activation; pooling maps a constant map to itself). ``c = 0`` is plain
removal of a unit whose output is zero; ``c = E[y_i]`` over data is *mean
replacement*, the operation whose loss change is the mean replacement penalty
(MRP, Def. 3.1.1). The scorers and :func:`pruners.remove_units` share these
functions, so a score and a removal measure the same thing.

The functions here only compute; they never change the model.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .graph import ChannelOp, Edge, UnitGraph
from .kernels import call_function, call_module
from .layers import CHANNEL_MODULES, DROPOUT_FUNCTIONS, PRODUCERS, eval_mode

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_CHANNEL_DROPOUT = {F.dropout1d, F.dropout2d}

__all__ = ["iter_batches", "iter_inputs", "unit_means", "push_constants", "run_path", "fold_deltas",
           "replacement_hooks"]


def iter_batches(data: Iterable) -> Iterator[tuple[torch.Tensor, Any]]:
    """Yield ``(inputs, targets)`` from ``data``; clear errors for bad data.

    ``data`` is an iterable of ``(inputs, targets)`` batches (a list, a
    DataLoader); inputs must be tensors. Empty data is an error.
    """
    if data is None:
        raise ValueError("this operation needs data: an iterable of (inputs, targets) batches")
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be an iterable of (inputs, targets) batches, got a Tensor; "
                        "wrap it as [(x, y)]")
    n = 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(f"batch {n} of data is a {type(batch).__name__}, expected an "
                            "(inputs, targets) pair")
        if not isinstance(batch[0], torch.Tensor):
            raise TypeError(f"batch {n}: inputs are a {type(batch[0]).__name__}, expected a "
                            "Tensor")
        n += 1
        yield batch[0], batch[1]
    if n == 0:
        raise ValueError("data is empty: it yielded no batch")


def iter_inputs(data: Iterable) -> Iterator[torch.Tensor]:
    """Yield the inputs of an iterable of ``(inputs, targets)`` batches."""
    for x, _ in iter_batches(data):
        yield x


def unit_means(model: nn.Module, data: Iterable, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Mean output of every unit of ``layers`` over ``data``, in eval mode.

    The mean of unit ``i`` is taken over samples and, for convolutions, over
    positions: ``E[y_i]`` of eq. 1.5. All layers are measured in one pass on
    the unmodified model. Accumulation is in float64.

    Returns:
        ``{layer name: 1-D tensor of means}`` in the layer's dtype.
    """
    layers = list(layers)
    mods = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {n: 0 for n in layers}
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            dims = [d for d in range(out.dim()) if d != 1]
            s = out.detach().to(torch.float64).sum(dim=dims)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] += out.numel() // out.shape[1]
        return hook

    try:
        for n in layers:
            handles.append(mods[n].register_forward_hook(make_hook(n)))
        with eval_mode(model), torch.no_grad():
            for x in iter_inputs(data):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).to(mods[n].weight.dtype) for n in layers}


def _apply_op(model: nn.Module, op: ChannelOp, x: torch.Tensor,
              channels: torch.Tensor | None = None, maps: bool = False) -> torch.Tensor:
    """One per-channel op on ``x`` (channels ``channels`` along dim 1), eval mode.

    With ``maps=False`` (constants), pooling is skipped: a constant map pools
    to itself (times the op's scale). With ``maps=True`` pooling runs.
    Dropout is the identity (eval mode).
    """
    if op.kind == "module":
        mod = model.get_submodule(op.target)
        spec = CHANNEL_MODULES[type(mod)]
        if maps and not spec.tensors(mod) and not isinstance(mod, _DROPOUTS):
            return call_module(mod, (x,))
        return spec.push(mod, x, channels)
    if op.shape_only:
        if maps and op.target not in DROPOUT_FUNCTIONS and op.target not in _CHANNEL_DROPOUT:
            return call_function(op.target, (x, *op.args), dict(op.kwargs))
        return x * op.scale if (op.scale != 1.0 and not maps) else x
    if op.kind == "function":
        return op.target(x, *op.args, **dict(op.kwargs))
    return getattr(x, op.target)(*op.args, **dict(op.kwargs))


def run_path(model: nn.Module, path: Iterable[ChannelOp], x: torch.Tensor,
             channels: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a per-channel path to real maps ``x`` (eval mode, pooling included).

    ``x`` holds, along dimension 1, the producer channels ``channels`` (all
    channels in order when None): any subset can be pushed on its own,
    because every op on the path acts channel by channel.
    """
    for op in path:
        x = _apply_op(model, op, x, channels, maps=True)
    return x


def push_constants(model: nn.Module, path: Iterable[ChannelOp], values: torch.Tensor,
                   out_ndim: int) -> torch.Tensor:
    """Pass one constant per channel through a per-channel path (eval mode).

    Args:
        values: a full-length vector over the producer's channels (entries of
            units not replaced are ignored by the caller).
        out_ndim: dimensions of the producer's output (2, 3 or 4).

    Returns:
        The per-channel values the consumer receives, 1-D.
    """
    x = values.reshape((1, -1) + (1,) * (out_ndim - 2)).clone()
    with torch.no_grad():
        for op in path:
            x = _apply_op(model, op, x)
    return x.reshape(-1)


def fold_deltas(model: nn.Module, graph: UnitGraph, removed: Mapping[str, torch.Tensor],
                constants: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Bias changes of every consumer when removed units are held constant.

    Args:
        removed: ``{producer: sorted unit indices}``.
        constants: ``{producer: values}``, one value per removed index, the
            value the producer module outputs for that unit.

    Returns:
        ``({consumer: bias delta}, inexact)`` where ``inexact`` lists the
        consumers whose fold is not exact everywhere (zero-padded convolution,
        average pooling over zero padding) for a non-zero constant.
    """
    deltas: dict[str, torch.Tensor] = {}
    inexact: list[str] = []
    for name, idx in removed.items():
        if name not in constants or idx.numel() == 0:
            continue
        prod = graph.producers[name]
        pmod = model.get_submodule(name)
        full = torch.zeros(prod.num_units, dtype=pmod.weight.dtype, device=pmod.weight.device)
        full[idx.to(full.device)] = constants[name].to(full)
        for edge in prod.edges:
            delta, exact = _edge_delta(model, prod.out_ndim, edge, idx, full)
            deltas[edge.consumer] = deltas.get(edge.consumer, 0) + delta
            if not exact and edge.consumer not in inexact:
                inexact.append(edge.consumer)
    return deltas, inexact


def _edge_delta(model: nn.Module, out_ndim: int, edge: Edge, idx: torch.Tensor,
                full: torch.Tensor) -> tuple[torch.Tensor, bool]:
    cmod = model.get_submodule(edge.consumer)
    spec = PRODUCERS[type(cmod)]
    v = push_constants(model, edge.path, full, out_ndim)[idx.to(full.device)]
    nonzero = bool((v != 0).any())
    exact = not nonzero or (spec.fold_exact(cmod) and all(op.keeps_constant for op in edge.path))
    cols = edge.columns(idx.to(full.device))
    vals = v.repeat_interleave(edge.block) if edge.block > 1 else v
    with torch.no_grad():
        delta = spec.fold(cmod, cols, vals)
    return delta, exact


def replacement_hooks(model: nn.Module, constants: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
    """Forward hooks that overwrite chosen units' outputs with constants.

    ``constants`` maps a layer name to ``(indices, values)``. Returns the hook
    handles; the caller removes them (in a ``finally``).
    """
    handles = []
    for name, (idx, vals) in constants.items():
        def hook(_m, _inp, out, idx=idx, vals=vals):
            out = out.clone()
            shape = (1, -1) + (1,) * (out.dim() - 2)
            out[:, idx.to(out.device)] = vals.to(out).reshape(shape)
            return out
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return handles
