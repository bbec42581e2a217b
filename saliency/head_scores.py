"""Scores of attention heads (:mod:`saliency.attention`), one value per query head.

What each unit scorer means for a head ``h`` of an attention module, whose output
``c_h`` (``head_dim`` values per token: what the output projection reads for it, Vaswani
et al. 2017, https://arxiv.org/abs/1706.03762) plays the part of a unit's output, its
``head_dim`` dimensions summed as the members of a group are:

* ``mean``: ``mu_{h,d}``, the mean of dimension ``d`` of the head's output over the batch
  and every token position (what mean replacement holds it at; positions a batch's token
  mask marks as padding are left out of this and every other average here:
  :func:`saliency.replacement.iter_masked_batches`);
* ``mrs``: ``sum_k | sum_{t,d} (mu_{h,d} - c_{k,t,h,d}) dL_k/dc_{k,t,h,d} |`` (Evci 2018,
  Def. 3.1.2, over the head's dimensions ``d`` and tokens ``t``);
* ``taylor``: ``| (1/M) sum_{k,t,d} c dL_k/dc |`` over the ``M`` token positions of the
  ``N`` samples (``M = N T`` without padding) (Molchanov et al. 2017, and
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
losses when ``loss_fn`` returns them per token (padding targets left out). Under a token
mask, the means and averages leave padding out, while MRS and Taylor sum their gradient
terms over every position: holding a head at its mean holds it at padded positions too, and
``dL/dc`` there is non-zero only where a real token reads the position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .attention import Heads, context_hooks
from .base import loss_sum, per_sample_loss
from .layers import effective_tensor, eval_mode
from .progress import progress
from .replacement import (batch_token_mask, current_token_mask, iter_batches,
                          iter_masked_batches, masked_sums)

__all__ = ["HEAD_STATISTICS", "HeadSums", "context_sums", "head_entries", "head_means",
           "head_mrp", "head_norms", "head_statistics"]


#: the statistics :func:`head_statistics` and :class:`HeadSums` give
HEAD_STATISTICS = ("mrs", "taylor", "dormancy", "apoz")


class HeadSums:
    """What one forward and backward pass accumulates for the heads of attention modules,
    batch by batch, and the statistics of :data:`HEAD_STATISTICS` from it at the end.

    A pass installs :meth:`hooks` with :func:`saliency.attention.context_hooks` (they keep
    each module's heads' output ``c``, what its output projection reads), differentiates the
    loss with respect to :meth:`outputs` (with any other tensors of the pass: a unit
    statistics pass adds its layers' outputs) and hands the gradients to :meth:`add`.

    MRS needs the heads' means, known only after the last batch: per sample ``k``, head ``h``
    and dimension ``d``, ``sum_t g`` and ``sum_{t,d} c g`` are kept, and ``sum_k | sum_d
    mu_{h,d} sum_t g - sum_{t,d} c g |`` is formed by :meth:`finish`, batch by batch in the
    order of the pass -- the same arithmetic as holding the means from a pass of their own.
    The mean ``mu`` is accumulated in float64 and rounded to the model's dtype, as
    :func:`head_means` gives it.
    """

    def __init__(self, model: nn.Module, heads: Mapping[str, Heads], names: Iterable[str]):
        self.heads = heads
        self.names = list(names)
        self.dtypes = {n: model.get_submodule(heads[n].out).weight.dtype for n in self.names}
        self.ctxs: dict[str, torch.Tensor] = {}
        f64 = torch.float64
        self.acc = {n: {k: torch.zeros(heads[n].num_heads, dtype=f64)
                        for k in ("taylor", "absa", "zero")} for n in self.names}
        self.sum_c: dict[str, torch.Tensor] = {}
        self.count = {n: 0 for n in self.names}
        self.entries = {n: 0 for n in self.names}
        self.s_g: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.s_hg: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.samples = 0

    def hooks(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """``{module: fn}`` for :func:`~saliency.attention.context_hooks`: each keeps the
        heads' output of the current batch (a leaf that requires grad when nothing before it
        does, so its gradient exists)."""
        self.ctxs = {}

        def make(n):
            def fn(ctx):
                if not ctx.requires_grad:
                    ctx = ctx.detach().requires_grad_()
                self.ctxs[n] = ctx
                return ctx
            return fn
        return {n: make(n) for n in self.names}

    def outputs(self) -> list[torch.Tensor]:
        """The heads' outputs of the current batch, in the order of ``names``."""
        missing = [n for n in self.names if n not in self.ctxs]
        if missing:
            raise ValueError(f"attention {missing[0]!r} was not called on data")
        return [self.ctxs[n] for n in self.names]

    @torch.no_grad()
    def add(self, grads: Iterable[torch.Tensor | None], samples: int,
            mask: torch.Tensor | None = None) -> None:
        """Accumulate the current batch of ``samples`` samples, given ``dL/dc`` of
        :meth:`outputs` (None: zero) and the batch's token mask (None: every position is a
        token; :func:`saliency.replacement.iter_masked_batches`)."""
        f64 = torch.float64
        for n, g in zip(self.names, grads):
            h = self.heads[n]
            c = self.ctxs[n].detach()
            s, kept = context_sums(c, mask, n)
            self.sum_c[n] = self.sum_c[n] + s if n in self.sum_c else s
            self.count[n] += kept
            b = c.shape[0]
            keep = (None if mask is None or c.dim() == 2
                    else mask.reshape(b, -1, 1, 1).to(c.device))
            c = c.reshape(b, -1, h.num_heads, h.head_dim).to(f64)
            g = torch.zeros_like(c) if g is None else g.reshape(c.shape).to(f64)
            s_hg = (c * g).sum((1, 3))                             # (B, H)
            self.s_hg[n].append(s_hg)
            self.s_g[n].append(g.sum(1))                           # (B, H, d)
            acc = self.acc[n]
            acc["taylor"] += s_hg.sum(0)
            absc, zero = c.abs(), c == 0
            if keep is not None:  # padding: no magnitude, not a zero
                absc, zero = absc * keep, zero & keep
            acc["absa"] += absc.sum((0, 1, 3))
            acc["zero"] += zero.to(f64).sum((0, 1, 3))
            self.entries[n] += kept * h.head_dim
        self.samples += samples
        self.ctxs = {}

    def means(self) -> dict[str, torch.Tensor]:
        """Every head's mean output per dimension, ``(H, head_dim)`` in the model's dtype
        (what :func:`head_means` gives)."""
        out = {}
        for n in self.names:
            if n not in self.sum_c:
                raise ValueError(f"attention {n!r} was not called on data")
            h = self.heads[n]
            out[n] = (self.sum_c[n] / self.count[n]).to(self.dtypes[n]).reshape(
                h.num_heads, h.head_dim)
        return out

    def finish(self, stats: Iterable[str] = HEAD_STATISTICS
               ) -> dict[str, dict[str, torch.Tensor]]:
        """``{statistic: {attention module: (H,) float64}}`` for ``stats`` (of
        :data:`HEAD_STATISTICS`)."""
        stats = list(stats)
        unknown = set(stats) - set(HEAD_STATISTICS)
        if unknown:
            raise ValueError(f"unknown head statistics {sorted(unknown)}; known: "
                             f"{HEAD_STATISTICS}")
        means = self.means()
        out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in stats}
        for n in self.names:
            acc = self.acc[n]
            if "mrs" in stats:
                mu = means[n].to(torch.float64)[None]
                mrs = torch.zeros(self.heads[n].num_heads, dtype=torch.float64)
                for s_g, s_hg in zip(self.s_g[n], self.s_hg[n]):
                    mrs += ((mu * s_g).sum(-1) - s_hg).abs().sum(0)
                out["mrs"][n] = mrs
            if "taylor" in stats:
                out["taylor"][n] = (acc["taylor"] / self.count[n]).abs()
            if "dormancy" in stats:
                absa = acc["absa"] / self.entries[n]
                out["dormancy"][n] = absa / absa.mean().clamp_min(
                    torch.finfo(torch.float64).tiny)
            if "apoz" in stats:
                out["apoz"][n] = acc["zero"] / self.entries[n]
        return out


def head_means(model: nn.Module, heads: Mapping[str, Heads], data: Iterable,
               names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Mean of every head's output, per dimension, over the batch and every token position
    (padding left out where a batch has a token mask:
    :func:`saliency.replacement.iter_masked_batches`), on the unmodified model in eval mode
    (accumulated in float64).

    Returns:
        ``{attention module: (H, head_dim) tensor}`` in the model's dtype.
    """
    names = list(names)
    sums: dict[str, torch.Tensor] = {}
    counts = {n: 0 for n in names}

    def make(n):
        def fn(ctx):
            s, k = context_sums(ctx.detach(), current_token_mask(), n)
            sums[n] = sums[n] + s if n in sums else s
            counts[n] += k
        return fn

    with eval_mode(model), torch.no_grad(), context_hooks(model, heads,
                                                          {n: make(n) for n in names}):
        for x, _, mask in iter_masked_batches(data):
            with batch_token_mask(mask):
                model(x)
    out = {}
    for n in names:
        if n not in sums:
            raise ValueError(f"attention {n!r} was not called on data")
        dtype = model.get_submodule(heads[n].out).weight.dtype
        out[n] = (sums[n] / counts[n]).to(dtype).reshape(heads[n].num_heads, heads[n].head_dim)
    return out


def context_sums(ctx: torch.Tensor, mask: torch.Tensor | None, name: str
                 ) -> tuple[torch.Tensor, int]:
    """``(sum over samples and token positions of the heads' output ``ctx`` (``(B, ...,
    H * head_dim)``) per dimension in float64, number of positions summed)``, positions a
    token mask marks as padding left out (:func:`saliency.replacement.masked_sums`)."""
    t = ctx.movedim(-1, 1) if ctx.dim() > 2 else ctx
    return masked_sums(t, mask, f"the heads' output of attention {name!r}")


def head_statistics(model: nn.Module, heads: Mapping[str, Heads], names: Iterable[str], data,
                    loss_fn: Callable) -> dict[str, dict[str, torch.Tensor]]:
    """``mrs``, ``taylor``, ``dormancy`` and ``apoz`` of every head of ``names`` (see the
    module docstring), from one forward and one backward pass per batch (:class:`HeadSums`;
    the means MRS holds the heads at are accumulated in the same pass).
    :func:`saliency.unit_stats.unit_statistics` gives them from the pass of the ordinary
    units' statistics. Returns ``{statistic: {attention module: (H,) float64}}``."""
    sums = HeadSums(model, heads, names)
    with eval_mode(model):
        for x, y, mask in iter_masked_batches(data):
            with torch.enable_grad(), context_hooks(model, heads, sums.hooks()):
                loss = loss_sum(loss_fn, model(x), y)
                grads = torch.autograd.grad(loss, sums.outputs(), allow_unused=True)
            sums.add(grads, x.shape[0], mask)
    return sums.finish()


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
            for n in progress(names, "exact MRP of heads", unit="module"):
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
