"""Optimizer-state surgery: keep an optimizer working after parameters shrink.

Parameters are shrunk in place (``p.data`` is replaced), so they keep their
identity and the optimizer's ``param_groups`` still hold them. Every
per-parameter state tensor shaped like the parameter (SGD ``momentum_buffer``;
Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; RMSprop
``square_avg``, ``grad_avg``; Adagrad ``sum``; ...) is sliced the same way;
scalar state such as ``step`` is kept. This is the "neural garbage
collection ... updating optimizer state" of ShrinkNets
(``shared/seeds/001_...``, Sec. 4.2).
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["check_optimizer_state", "slice_param"]


def check_optimizer_state(optimizer, params: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError if the optimizer's state cannot follow a shrink.

    Every state entry of every parameter the optimizer holds must be a scalar
    or a tensor shaped like its parameter: an optimizer whose state couples
    parameters (L-BFGS keeps flat vectors over all of them on the first one)
    is refused whichever parameters change. Called before any change, so a
    refusal leaves model and optimizer untouched. ``params`` names the
    parameters that will change (for the messages).
    """
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    names = {id(p): n for n, p in params.items()}
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names.get(id(p), f"param_groups[{gi}]['params'][{pi}]")
            for key, val in state.items():
                scalar = isinstance(val, (int, float, bool)) or (
                    isinstance(val, torch.Tensor) and val.dim() == 0)
                if scalar or (isinstance(val, torch.Tensor) and val.shape == p.shape):
                    continue
                what = (f"has shape {tuple(val.shape)}" if isinstance(val, torch.Tensor)
                        else f"is a {type(val).__name__}")
                raise ValueError(
                    f"optimizer state {key!r} of parameter {name!r} {what}, neither a "
                    f"scalar nor shaped like the parameter {tuple(p.shape)}: "
                    f"{type(optimizer).__name__} state cannot be sliced")


def slice_param(p: torch.Tensor, dim: int, keep: torch.Tensor, optimizer=None) -> None:
    """Keep entries ``keep`` of ``p`` along ``dim``, in place, with its state.

    The parameter object stays the same (its ``.data`` is replaced); ``.grad``
    and the optimizer's per-parameter state tensors of the same shape are
    sliced alike.
    """
    old_shape = p.shape
    p.data = p.data.index_select(dim, keep)
    if p.grad is not None:
        p.grad = p.grad.index_select(dim, keep)
    if optimizer is None:
        return
    state = optimizer.state.get(p)
    if not state:
        return
    for key, val in list(state.items()):
        if isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape == old_shape:
            state[key] = val.index_select(dim, keep.to(val.device))
