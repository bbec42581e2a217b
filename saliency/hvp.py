"""Gradients and Hessian-vector products of the mean loss over data.

The loss is the mean over all ``N`` samples of the per-sample losses::

    L(w) = (1/N) sum_k loss_fn(f(x_k; w), y_k)

accumulated batch by batch (the sum of each batch's per-sample losses,
divided by ``N`` at the end), so the way the samples are batched does not
change the result. ``H v`` is computed without ever forming the Hessian
(Pearlmutter 1994, "Fast exact multiplication by the Hessian"; the thesis's
reference [30] for eq. 2.3), in ``O(n)`` for ``n`` parameters.

Implementation: double backward (reverse-over-reverse), the faster of the
two exact methods on CPU. Per batch, ``g = dL/dw`` is taken with
``create_graph=True`` and ``H v = d(g . v)/dw`` is a second reverse sweep
over the same saved activations, with PyTorch's ordinary backward kernels.
The alternative, ``method="forward_over_reverse"``, is torch.func's
``jvp(grad(f), (w,), (v,))`` with :func:`torch.func.functional_call`: it
carries a forward-mode tangent through every op of the backward pass and
pays functorch's per-op dispatch, which costs more than the second reverse
sweep on matmul-bound models. Measured on CPU (torch 2.13, one intra-op
thread, a shared 2-core machine; ratio to one forward+backward pass of the
same batch):

=================================  ===============  ====================
model                              double backward  forward-over-reverse
=================================  ===============  ====================
MLP 784-512-512-10, batch 256      2.6-2.7x         3.4-3.6x
thesis CNN (20,522), batch 1000    2.4-3.2x         2.5-3.3x (a tie)
=================================  ===============  ====================

Both also return the gradient at no extra cost (:func:`grad_and_hvp`, used
by the Taylor-type scorers).

The functions evaluate ``model`` through
:func:`torch.func.functional_call` on detached copies of the chosen
parameters, so ``p.grad`` is never touched and the model is not changed;
the model runs in eval mode (BatchNorm running statistics, no dropout), as
in every scorer (:func:`saliency.base.preserved`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .base import iter_batches, loss_sum, per_sample_loss, preserved

__all__ = ["hvp", "grad_and_hvp", "gradient", "METHODS"]

LossFn = Callable[..., torch.Tensor]


def _resolve(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Map each key of ``params`` to the name ``functional_call`` must replace.

    Keys are usually ``model.named_parameters()`` names; a tensor pruned with
    :mod:`torch.nn.utils.prune` may be given under its base name
    (``"fc.weight"`` for the parameter ``fc.weight_orig``, as
    :func:`saliency.base.default_parameters` does), so parameters are matched
    by identity first.
    """
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict {name: parameter of the model}")
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), name)
    out = {}
    for key, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{key!r}] is a {type(p).__name__}, not a tensor")
        if id(p) not in by_id:
            raise ValueError(f"params[{key!r}] is not a parameter of the model")
        out[key] = by_id[id(p)]
    return out


def _check_vector(params: Mapping[str, torch.Tensor],
                  vector: Mapping[str, torch.Tensor]) -> None:
    if set(vector) != set(params):
        raise ValueError(f"vector must have the keys of params: missing "
                         f"{sorted(set(params) - set(vector))}, unknown "
                         f"{sorted(set(vector) - set(params))}")
    for k, p in params.items():
        if tuple(vector[k].shape) != tuple(p.shape):
            raise ValueError(f"vector[{k!r}] has shape {tuple(vector[k].shape)}; the parameter "
                             f"has shape {tuple(p.shape)}")


def _accumulate(acc: list | None, new) -> list:
    """Sum per-batch results in place (the first batch's tensors are reused)."""
    if acc is None:  # own the memory (autograd may hand out expanded views)
        return [None if t is None else (t.detach() if t.is_contiguous() else t.detach().clone(
            memory_format=torch.contiguous_format)) for t in new]
    for i, t in enumerate(new):
        if t is not None:
            t = t.detach()
            acc[i] = t if acc[i] is None else acc[i].add_(t)
    return acc


def _finish(acc: list | None, params: Mapping[str, torch.Tensor], keys: list[str],
            count: int) -> dict[str, torch.Tensor]:
    out = {}
    for i, k in enumerate(keys):
        t = None if acc is None else acc[i]
        # parameters that do not reach the loss (or enter it linearly) get zeros
        out[k] = torch.zeros_like(params[k]) if t is None else t.div_(count)
    return out


METHODS = ("double_backward", "forward_over_reverse")


def _run(model, params, vector, data, loss_fn, want_grad: bool, want_hvp: bool,
         method: str = "double_backward"):
    real = _resolve(model, params)
    keys = list(params)
    if want_hvp:
        _check_vector(params, vector)
        vecs = [vector[k].detach().to(params[k]) for k in keys]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    grads = hvps = None
    count = 0
    with preserved(model), torch.enable_grad():
        for x, y in iter_batches(data):
            if want_hvp and method == "forward_over_reverse":
                g, hv, n = _forward_over_reverse(model, real, keys, params, vecs, x, y, loss_fn)
                count += n
                grads = _accumulate(grads, g) if want_grad else None
                hvps = _accumulate(hvps, hv)
                continue
            leaves = [params[k].detach().requires_grad_(True) for k in keys]
            out = functional_call(model, {real[k]: t for k, t in zip(keys, leaves)}, (x,))
            loss = loss_sum(loss_fn, out, y)  # a sum: divided by N at the end
            count += out.shape[0]
            if not loss.requires_grad:  # the chosen parameters do not reach the loss
                continue
            g = torch.autograd.grad(loss, leaves, create_graph=want_hvp, allow_unused=True)
            if want_grad:
                grads = _accumulate(grads, g)
            if not want_hvp:
                continue
            terms = [(gi * v).sum() for gi, v in zip(g, vecs)
                     if gi is not None and gi.requires_grad]
            if not terms:  # the loss is linear in the chosen parameters: H = 0
                continue
            hv = torch.autograd.grad(torch.stack(terms).sum(), leaves, allow_unused=True)
            hvps = _accumulate(hvps, hv)
    return (_finish(grads, params, keys, count) if want_grad else None,
            _finish(hvps, params, keys, count) if want_hvp else None)


def _forward_over_reverse(model, real, keys, params, vecs, x, y, loss_fn):
    """``(g, H v, batch size)`` of one batch's summed loss, by ``jvp`` of ``grad``."""

    def f(*ps):
        out = functional_call(model, {real[k]: t for k, t in zip(keys, ps)}, (x,))
        losses = per_sample_loss(loss_fn, out, y)
        return losses.sum(), losses.detach()

    argnums = tuple(range(len(keys)))
    prims = tuple(params[k].detach() for k in keys)
    g, hv, losses = torch.func.jvp(torch.func.grad(f, argnums=argnums, has_aux=True),
                                   prims, tuple(vecs), has_aux=True)
    if not torch.isfinite(losses).all():
        raise FloatingPointError("the loss on data is not finite")
    return g, hv, losses.shape[0]


def grad_and_hvp(model: nn.Module, params: Mapping[str, torch.Tensor],
                 vector: Mapping[str, torch.Tensor], data: Iterable,
                 loss_fn: LossFn = F.cross_entropy, *, method: str = "double_backward"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The gradient ``g = dL/dw`` and ``H v`` of the mean loss, from one HVP's work.

    Args and returns as :func:`hvp`, plus the gradient (first item).
    """
    return _run(model, params, vector, data, loss_fn, want_grad=True, want_hvp=True,
                method=method)


def hvp(model: nn.Module, params: Mapping[str, torch.Tensor],
        vector: Mapping[str, torch.Tensor], data: Iterable,
        loss_fn: LossFn = F.cross_entropy, *, method: str = "double_backward") -> dict[str, torch.Tensor]:
    """Hessian-vector product ``H v`` of the mean loss over ``data``.

    ``H`` is the Hessian of ``L(w) = (1/N) sum_k loss_k(w)`` with respect to
    the parameters in ``params`` jointly (the other parameters held fixed);
    it is never materialized. Cost: under 3 forward+backward passes per
    batch (see the module docstring for the two methods and their costs).

    Args:
        model: the model (run in eval mode; not changed).
        params: ``{name: parameter of model}``, e.g. from
            :func:`saliency.base.default_parameters`.
        vector: ``{name: tensor}`` with the same keys and shapes as ``params``.
        data: iterable of ``(inputs, targets)`` batches.
        loss_fn: ``loss_fn(output, target, reduction="none")``, e.g.
            ``F.cross_entropy``; per-sample losses are summed over any extra
            dimensions.
        method: ``"double_backward"`` (faster on CPU, see the module
            docstring) or ``"forward_over_reverse"`` (torch.func); both exact.

    Returns:
        ``{name: (H v)[name]}``, shaped like the parameters.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> net = nn.Linear(3, 2).double()
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
        >>> p = dict(net.named_parameters())
        >>> v = {k: torch.ones_like(t) for k, t in p.items()}
        >>> hv = hvp(net, p, v, [(x, y)], F.mse_loss)
        >>> torch.allclose(hv["bias"], 2 * (x.sum(1).mean() + 1) * torch.ones(2, dtype=torch.float64))
        True
    """
    return _run(model, params, vector, data, loss_fn, want_grad=False, want_hvp=True,
                method=method)[1]


def gradient(model: nn.Module, params: Mapping[str, torch.Tensor], data: Iterable,
             loss_fn: LossFn = F.cross_entropy) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss over ``data`` (one forward+backward pass per batch).

    Args as :func:`hvp`; ``p.grad`` is not touched.
    """
    return _run(model, params, None, data, loss_fn, want_grad=True, want_hvp=False)[0]
