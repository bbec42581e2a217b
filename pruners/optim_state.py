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
    """Raise ValueError if some state of ``params`` cannot be sliced.

    Called before any change, so an unsupported optimizer (e.g. L-BFGS, whose
    state is one flat vector) leaves model and optimizer untouched.
    """
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, val in state.items():
            if isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape != p.shape:
                raise ValueError(
                    f"optimizer state {key!r} of parameter {name!r} has shape "
                    f"{tuple(val.shape)}, neither a scalar nor the parameter's shape "
                    f"{tuple(p.shape)}: {type(optimizer).__name__} state cannot be sliced")


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
