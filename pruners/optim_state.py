"""Optimizer-state surgery: keep an optimizer working after parameters shrink.

Parameters are shrunk in place (``p.data`` is replaced), so they keep their
identity and the optimizer's ``param_groups`` still hold them. Every
per-parameter state tensor shaped like the parameter (SGD ``momentum_buffer``;
Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; RMSprop
``square_avg``, ``grad_avg``; Adagrad ``sum``; ...) is sliced the same way;
scalar state such as ``step`` is kept. This is the "neural garbage
collection ... updating optimizer state" of *ShrinkNets: Learning Network Size
while Training* (2018 draft; public as G. Leclerc, M. Vartak, R. Castro
Fernandez, T. Kraska, S. Madden, *Smallify: Learning Network Size while
Training*, https://arxiv.org/abs/1806.03723), Sec. 4.2.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["check_optimizer_state", "slice_param", "reshape_param", "Journal"]


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


def slice_param(p: torch.Tensor, dim: int, keep: torch.Tensor, optimizer=None,
                journal=None) -> None:
    """Keep entries ``keep`` of ``p`` along ``dim``, in place, with its state.

    The parameter keeps its Python identity, so optimizers, hooks and user
    references still hold it; its storage is swapped for the sliced one with
    :func:`torch.utils.swap_tensors`, which also gives it fresh autograd
    metadata (a graph built before the surgery cannot send it a gradient of
    the old shape). ``.grad`` and the optimizer's per-parameter state tensors
    of the old shape are sliced alike. ``journal`` (a :class:`Journal`)
    records how to undo the change.
    """
    reshape_param(p, lambda t: t.index_select(dim, keep.to(t.device)), optimizer, journal)


def reshape_param(p: torch.Tensor, fn, optimizer=None, journal=None) -> None:
    """Replace ``p`` by ``fn(p)``, in place, and every tensor shaped like it alike.

    :func:`slice_param` with any selection ``fn`` (a tensor to a smaller one, the same way
    for every tensor of ``p``'s shape): the parameter keeps its identity, ``.grad`` and the
    optimizer's per-parameter state tensors of the old shape become ``fn`` of themselves
    (a grouped convolution keeps different input columns in each conv group this way).
    """
    old_shape = p.shape
    old_grad = p.grad
    new = torch.nn.Parameter(fn(p.detach()), requires_grad=p.requires_grad)
    torch.utils.swap_tensors(p, new)  # `new` now holds the old tensor
    p.grad = None if old_grad is None else fn(old_grad)
    state = optimizer.state.get(p) if optimizer is not None else None
    old_state = dict(state) if state else None
    if journal is not None:
        def undo(p=p, old=new, grad=old_grad, state=state, old_state=old_state):
            torch.utils.swap_tensors(p, old)
            p.grad = grad
            if state is not None:
                state.clear()
                state.update(old_state)
        journal.add(undo)
    if not state:
        return
    for key, val in list(state.items()):
        if isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape == old_shape:
            state[key] = fn(val)


class Journal:
    """Undo log of an in-place model surgery: ``rollback()`` undoes in reverse."""

    def __init__(self) -> None:
        self._undo: list = []

    def add(self, undo) -> None:
        self._undo.append(undo)

    def snapshot_module(self, module: torch.nn.Module) -> None:
        """Record a module's parameter, buffer, hook and attribute dicts (shallow)."""
        params, buffers = dict(module._parameters), dict(module._buffers)
        hooks = dict(module._forward_pre_hooks)
        attrs = dict(module.__dict__)

        def undo():
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            module._forward_pre_hooks.clear()
            module._forward_pre_hooks.update(hooks)
            for k in list(module.__dict__):
                if k not in attrs:
                    del module.__dict__[k]
            module.__dict__.update({k: v for k, v in attrs.items()
                                    if not k.startswith("_parameters")
                                    and k not in ("_buffers", "_forward_pre_hooks")})
        self._undo.append(undo)

    def rollback(self) -> None:
        with torch.no_grad():
            while self._undo:
                self._undo.pop()()
