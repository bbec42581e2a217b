"""Scores of attention heads (:mod:`saliency.attention`), one value per query head.

What each unit scorer means for a head ``h`` of an attention module, whose output
``c_h`` (``head_dim`` values per token: what the output projection reads for it, Vaswani
et al. 2017, https://arxiv.org/abs/1706.03762) plays the part of a unit's output, its
``head_dim`` dimensions summed as the members of a group are:

* ``mean``: ``mu_{h,d}``, the mean of dimension ``d`` of the head's output over the batch
  and every token position (what mean replacement holds it at);
* ``mrs``: ``sum_k | sum_{t,d} (mu_{h,d} - c_{k,t,h,d}) dL_k/dc_{k,t,h,d} |`` (Evci 2018,
  Def. 3.1.2, over the head's dimensions ``d`` and tokens ``t``);
* ``taylor``: ``| (1/N) sum_k (1/T) sum_{t,d} c dL_k/dc |`` (Molchanov et al. 2017, and
  the head importance of P. Michel, O. Levy, G. Neubig, *Are Sixteen Heads Really Better
  than One?*, NeurIPS 2019, https://arxiv.org/abs/1905.10650, eq. 2, which is this
  first-order term for a head mask);
* ``dormancy``: ReDo's ``E|c_h| / ((1/H) sum_j E|c_j|)`` (mean absolute output of the head
  over its dimensions, tokens and samples); ``apoz``: the fraction of the head's output
  entries that are exactly 0;
* ``mrp``: the exact loss change of holding the head's output at its mean
  (:func:`head_mrp`), which :func:`pruners.remove_units` with ``replacement="mean"``
  realises;
* ``norm``: the head's query rows, its key and value rows (shared by the ``G`` query heads
  of a key/value group: each counts ``1/G`` of them) and its output-projection columns
  (``||.||_1`` or ``||.||_2^2``, biases excluded); ``group_norm``: the L2 norm of the same
  entries with the biases of its rows.

Samples' losses are :func:`saliency.base.per_sample_loss`: the mean over a sample's token
losses when ``loss_fn`` returns them per token (padding targets left out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .attention import Heads, context_hooks, head_means
from .base import loss_sum, per_sample_loss
from .layers import effective_tensor, eval_mode
from .replacement import iter_batches

__all__ = ["head_entries", "head_mrp", "head_norms", "head_statistics"]


def head_statistics(model: nn.Module, heads: Mapping[str, Heads], names: Iterable[str], data,
                    loss_fn: Callable) -> dict[str, dict[str, torch.Tensor]]:
    """``mrs``, ``taylor``, ``dormancy`` and ``apoz`` of every head of ``names`` (see the
    module docstring), from one forward and backward pass per batch, after a pass for the
    means. Returns ``{statistic: {attention module: (H,) float64}}``."""
    names = list(names)
    means = {n: m.to(torch.float64) for n, m in head_means(model, heads, data, names).items()}
    acc = {n: {k: torch.zeros(heads[n].num_heads, dtype=torch.float64)
               for k in ("mrs", "taylor", "absa", "zero")} for n in names}
    entries = {n: 0 for n in names}
    samples = 0
    for x, y in iter_batches(data):
        ctxs: dict[str, torch.Tensor] = {}

        def make(n, ctxs=ctxs):
            def fn(ctx):
                if not ctx.requires_grad:
                    ctx = ctx.detach().requires_grad_()
                ctxs[n] = ctx
                return ctx
            return fn

        with eval_mode(model), torch.enable_grad(), \
                context_hooks(model, heads, {n: make(n) for n in names}):
            loss = loss_sum(loss_fn, model(x), y)
            grads = torch.autograd.grad(loss, [ctxs[n] for n in names], allow_unused=True)
        samples += x.shape[0]
        for n, g in zip(names, grads):
            h = heads[n]
            c = ctxs[n].detach()
            b = c.shape[0]
            c = c.reshape(b, -1, h.num_heads, h.head_dim).to(torch.float64)
            g = torch.zeros_like(c) if g is None else \
                g.reshape(c.shape).to(torch.float64)
            positions = c.shape[1]
            s_hg = (c * g).sum((1, 3))                           # (B, H)
            s_g = g.sum(1)                                         # (B, H, d)
            acc[n]["mrs"] += ((means[n][None] * s_g).sum(-1) - s_hg).abs().sum(0)
            acc[n]["taylor"] += s_hg.sum(0) / positions
            acc[n]["absa"] += c.abs().sum((0, 1, 3))
            acc[n]["zero"] += (c == 0).to(torch.float64).sum((0, 1, 3))
            entries[n] += b * positions * h.head_dim
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ("mrs", "taylor", "dormancy",
                                                              "apoz")}
    for n in names:
        out["mrs"][n] = acc[n]["mrs"]
        out["taylor"][n] = (acc[n]["taylor"] / samples).abs()
        absa = acc[n]["absa"] / entries[n]
        out["dormancy"][n] = absa / absa.mean().clamp_min(torch.finfo(torch.float64).tiny)
        out["apoz"][n] = acc[n]["zero"] / entries[n]
    return out


def head_mrp(model: nn.Module, heads: Mapping[str, Heads], names: Iterable[str], data,
             loss_fn: Callable, *, absolute: bool = True) -> dict[str, torch.Tensor]:
    """The exact mean replacement penalty of every head: ``sum_k |L_k(head held at its
    mean) - L_k|`` (the signed sum when ``absolute=False``), one forward pass per head and
    batch with the head's output replaced by its per-dimension mean (measured once on the
    unmodified model). Returns ``{attention module: (H,) float64}``."""
    names = list(names)
    means = head_means(model, heads, data, names)
    totals = {n: torch.zeros(heads[n].num_heads, dtype=torch.float64) for n in names}
    with eval_mode(model), torch.no_grad():
        for x, y in iter_batches(data):
            with context_hooks(model, heads, {}):
                base = per_sample_loss(loss_fn, model(x), y).to(torch.float64)
            for n in names:
                d = heads[n].head_dim
                for j in range(heads[n].num_heads):
                    def fn(ctx, j=j, n=n, d=d):
                        ctx = ctx.clone()
                        ctx[..., j * d:(j + 1) * d] = means[n][j].to(ctx)
                        return ctx
                    with context_hooks(model, heads, {n: fn}):
                        diff = per_sample_loss(loss_fn, model(x), y).to(torch.float64) - base
                    totals[n][j] += (diff.abs() if absolute else diff).sum()
    return totals


def head_entries(model: nn.Module, h: Heads, *, bias: bool = False, out: bool = True
                 ) -> list[tuple[torch.Tensor, float]]:
    """The weights of each head as ``(H, m)`` float64 matrices with a weight each: its
    query rows (1), its key/value head's key and value rows (``1/G`` for the ``G`` query
    heads sharing them), with their biases when ``bias``, and its output-projection
    columns (when ``out``)."""
    mats: list[tuple[torch.Tensor, float]] = []
    d = h.head_dim
    for mod, tensors, start, which in h.rows:
        m = model.get_submodule(mod)
        for tname in tensors:
            if "bias" in tname and not bias:
                continue
            t = effective_tensor(m, tname)
            if t is None:
                continue
            n = h.num_heads if which == "q" else h.num_kv_heads
            rows = t.detach()[start:start + n * d].to(torch.float64).reshape(n, -1)
            if which == "q":
                mats.append((rows, 1.0))
            else:
                mats.append((rows.repeat_interleave(h.group, 0), 1.0 / h.group))
    if out:
        w = effective_tensor(model.get_submodule(h.out), "weight").detach().to(torch.float64)
        cols = w[:, :h.num_heads * d].reshape(w.shape[0], h.num_heads, d).transpose(0, 1)
        mats.append((cols.reshape(h.num_heads, -1), 1.0))
    return mats


def head_norms(model: nn.Module, h: Heads, p: str) -> torch.Tensor:
    """``sum`` of ``||.||_1`` (``p="l1"``) or ``||.||_2^2`` (``p="l2"``) of each head's
    entries (:func:`head_entries`, biases excluded), weighted as there."""
    total = torch.zeros(h.num_heads, dtype=torch.float64)
    for mat, wt in head_entries(model, h):
        total += wt * (mat.abs().sum(1) if p == "l1" else (mat * mat).sum(1))
    return total
