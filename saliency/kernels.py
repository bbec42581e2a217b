"""Faster CPU kernels for the ops the recomputation engine reruns most.

The engine (:mod:`saliency.engine`) and the per-channel paths
(:func:`saliency.replacement.run_path`) re-evaluate pooling layers on stacks
of many variants. PyTorch's CPU ``max_pool2d`` on contiguous NCHW maps is
slow for small windows (measured 20-25x slower than the equivalent
elementwise maxima on the thesis CNN's maps), so max pooling without
``ceil_mode`` or indices is computed here as the elementwise maximum of
strided views of the input, one dimension at a time. The result is the
same tensor, value for value: a maximum involves no rounding, implicit
padding counts as ``-inf`` as in PyTorch, and NaN propagates as in PyTorch.

Everything else is passed to the module or function unchanged. New fast
kernels are entries of :data:`FAST_MODULES` / :data:`FAST_FUNCTIONS`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["max_pool", "call_module", "call_function", "FAST_MODULES", "FAST_FUNCTIONS"]


def _tuple(v, nd: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    v = tuple(int(i) for i in v)
    return v * nd if len(v) == 1 else v


def max_pool(x: torch.Tensor, nd: int, kernel_size, stride=None, padding=0, dilation=1,
             ceil_mode: bool = False, return_indices: bool = False) -> torch.Tensor | None:
    """``max_pool{nd}d(x, ...)`` as maxima of strided views, or None if not covered.

    Covered: floating-point input with one or two leading (batch, channel)
    dimensions, any kernel, stride, padding and dilation, ``ceil_mode=False``
    and ``return_indices=False``. Anything else returns None (use PyTorch's).
    """
    if ceil_mode or return_indices or not x.is_floating_point() or x.dim() not in (nd + 1, nd + 2):
        return None
    k = _tuple(kernel_size, nd)
    s = _tuple(stride, nd) if stride not in (None, [], ()) else k
    p = _tuple(padding, nd)
    d = _tuple(dilation, nd)
    if len(k) != nd or len(s) != nd or len(p) != nd or len(d) != nd:
        return None
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        return None  # PyTorch refuses this; let it say so
    if any(p):
        pads = [q for pi in reversed(p) for q in (pi, pi)]
        x = F.pad(x, pads, value=-math.inf)
    sizes = x.shape[-nd:]
    out = [(n - di * (ki - 1) - 1) // si + 1 for n, ki, si, di in zip(sizes, k, s, d)]
    if any(o <= 0 for o in out):
        return None
    # a maximum over a box is a maximum along each dimension in turn: sum(k - 1)
    # elementwise maxima instead of prod(k) - 1
    for axis, (ki, si, di, m) in enumerate(zip(k, s, d, out)):
        dim = x.dim() - nd + axis
        views = [x.narrow(dim, o * di, (m - 1) * si + 1)[
            (slice(None),) * dim + (slice(None, None, si),)] for o in range(ki)]
        if len(views) == 1:
            x = views[0]
            continue
        res = torch.maximum(views[0], views[1])
        for view in views[2:]:
            torch.maximum(res, view, out=res)
        x = res
    return x.contiguous()


def _module_pool(nd: int):
    def run(mod: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return max_pool(x, nd, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                        mod.ceil_mode, mod.return_indices)
    return run


def _function_pool(nd: int):
    def run(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
            return_indices=False):
        if not isinstance(x, torch.Tensor):
            return None
        return max_pool(x, nd, kernel_size, stride, padding, dilation, ceil_mode,
                        return_indices)
    return run


#: module type -> fast kernel ``(module, input) -> Tensor | None``
FAST_MODULES: dict[type, Callable[..., torch.Tensor | None]] = {
    nn.MaxPool1d: _module_pool(1),
    nn.MaxPool2d: _module_pool(2),
}

#: function -> fast kernel with the function's signature, ``-> Tensor | None``
FAST_FUNCTIONS: dict[Callable, Callable[..., torch.Tensor | None]] = {
    F.max_pool1d: _function_pool(1),
    F.max_pool2d: _function_pool(2),
    torch.max_pool1d: _function_pool(1),
    torch.max_pool2d: _function_pool(2),
}


def call_module(mod: nn.Module, args: tuple, kwargs: dict[str, Any] | None = None) -> Any:
    """``mod(*args, **kwargs)``, through a fast kernel when one covers the call."""
    fast = FAST_MODULES.get(type(mod))
    if fast is not None and len(args) == 1 and not kwargs and not mod._forward_hooks \
            and not mod._forward_pre_hooks:
        res = fast(mod, args[0])
        if res is not None:
            return res
    return mod(*args, **(kwargs or {}))


def call_function(fn: Callable, args: tuple, kwargs: dict[str, Any] | None = None) -> Any:
    """``fn(*args, **kwargs)``, through a fast kernel when one covers the call."""
    fast = FAST_FUNCTIONS.get(fn)
    if fast is not None:
        try:
            res = fast(*args, **(kwargs or {}))
        except TypeError:  # an unexpected signature: let the function itself decide
            res = None
        if res is not None:
            return res
    return fn(*args, **(kwargs or {}))
