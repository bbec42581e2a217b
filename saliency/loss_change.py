"""The exact loss change of zeroing each parameter entry (the thesis's ``lossChangeScorer``).

U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 2.1:
"``lossChangeScorer`` calculates the empirical saliency for each parameter by
setting them zero one by one and calculating the change in the loss"::

    S_i = L(w with w_i = 0) - L(w),     L = (1/N) sum_k loss_k  (mean over the data)

the quantity :class:`~saliency.taylor.Taylor1` approximates to first order.

One forward pass per entry would cost ``numel`` passes over the data. Here,
for the weight and bias of a Linear / Conv1d / Conv2d layer, zeroing entry
``(o, ...)`` changes only output channel ``o`` of that layer, by minus the
entry times what it multiplies: the input column (Linear), the input patch
under the kernel tap (convolution; the columns of ``F.unfold``, read as a
zero-copy strided view), or 1 (bias). All entries go through
:meth:`saliency.engine.Downstream.channel_losses` in batches: from one cached
forward pass, only the channel's path, its consumers' linear change and what
lies after them are recomputed, for many entries stacked along the batch.

Parameters of other modules (BatchNorm, PReLU, ...), shared (tied) weights
and layers called more than once fall back to a plain loop: one forward pass
per entry and batch, with the entry zeroed in a private copy of the parameter
(:func:`torch.func.functional_call`), so the model itself is never written.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .base import ParameterScorer, iter_batches, per_sample_loss
from .engine import Downstream
from .graph import UnitGraph, UnsupportedArchitecture, symbolic_trace
from .tracing import trace
from .progress import progress
from .replacement import iter_inputs
from .taylor import parameter_values

__all__ = ["LossChange"]

_FAST = (nn.Linear, nn.Conv1d, nn.Conv2d)
_OUT_DIMS = {nn.Linear: 2, nn.Conv1d: 3, nn.Conv2d: 4}


def _finite(losses: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(losses).all():
        raise FloatingPointError("the loss on data is not finite")
    return losses


def _patches(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The convolution's input patches as a view ``(B, C, *kernel, *out)``.

    Entry ``[b, c, k..., p...]`` is the input value that kernel tap ``k`` of
    input channel ``c`` multiplies at output position ``p`` (the columns of
    ``F.unfold``, without copying them).
    """
    pad = mod._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        x = F.pad(x, pad, mode=mode)
    x = x.contiguous()
    nd = x.dim() - 2
    ks, st, dl = mod.kernel_size, mod.stride, mod.dilation
    out = [(x.shape[2 + d] - dl[d] * (ks[d] - 1) - 1) // st[d] + 1 for d in range(nd)]
    s = x.stride()
    return x.as_strided(
        (x.shape[0], x.shape[1], *ks, *out),
        (s[0], s[1], *(s[2 + d] * dl[d] for d in range(nd)), *(s[2 + d] * st[d] for d in range(nd))))


def _dense_chunks(h: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None, kind: str,
                  budget: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunks ``(entries, their output channels, values)`` of a bias or a Linear weight.

    Zeroing bias entry ``o`` turns output channel ``o`` into ``h_o - b_o``;
    zeroing weight entry ``(o, i)`` into ``h_o - W_oi a_i``. ``values`` is
    ``(B, k, *spatial)`` for the chunk's ``k`` entries, at most ``budget``
    elements (at least one entry).
    """
    bsz, spatial = h.shape[0], tuple(h.shape[2:])
    ones = (1,) * len(spatial)
    flat_w = w.reshape(-1)
    numel = flat_w.numel()
    cols = w.shape[1] if kind == "weight" else 1
    step = max(1, budget // (bsz * math.prod(spatial)))
    for lo in range(0, numel, step):
        idx = torch.arange(lo, min(lo + step, numel), device=h.device)
        o = idx // cols
        if kind == "bias":  # h_o - b_o
            vals = h.index_select(1, o) - flat_w[idx].view((1, -1) + ones)
        else:  # h_o - W_oi a_i
            vals = torch.addcmul(h.index_select(1, o), a.index_select(1, idx % cols),
                                 flat_w[idx], value=-1)
        yield idx, o, vals


def _conv_chunks(mod: nn.Module, h: torch.Tensor, w: torch.Tensor, pt: torch.Tensor,
                 budget: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunks ``(entries, their output channels, values)`` of a convolution's weight.

    Zeroing entry ``(o, c, t)`` turns output channel ``o`` into ``h_o - W[o,
    c, t] * patch(c, t)`` (``pt``: the input patches of :func:`_patches`). A
    chunk is a block of output channels of one group times a block of taps
    of one input channel, at most ``budget`` elements of values where it can.
    """
    bsz, out_ch, spatial = h.shape[0], h.shape[1], tuple(h.shape[2:])
    ones = (1,) * len(spatial)
    per_map = bsz * math.prod(spatial)
    kernel = tuple(w.shape[2:])
    taps = math.prod(kernel)
    cin_g = w.shape[1]  # input channels per group
    out_g = out_ch // mod.groups
    t_blk = max(1, min(taps, budget // per_map))
    n_o = max(1, min(out_g, budget // (per_map * t_blk)))
    tap_index = [tuple(int(i) for i in t) for t in
                 torch.cartesian_prod(*(torch.arange(k) for k in kernel)).reshape(taps, -1)]
    # values of entry (o, c, t), written tap by tap (contiguous rows; the patches are views
    # of the input)
    for grp in range(mod.groups):
        for lo in range(grp * out_g, (grp + 1) * out_g, n_o):
            o = torch.arange(lo, min(lo + n_o, (grp + 1) * out_g), device=h.device)
            n = o.numel()
            h_o = h.index_select(1, o)  # (B, n, *spatial)
            for c_local in range(cin_g):
                c = grp * cin_g + c_local
                w_oc = w[o, c_local].reshape(n, taps)
                for t0 in range(0, taps, t_blk):
                    tb = min(t_blk, taps - t0)
                    vals = torch.empty((bsz, n, tb) + spatial, dtype=h.dtype, device=h.device)
                    for j in range(tb):
                        patch = pt[(slice(None), c, *tap_index[t0 + j])]
                        torch.addcmul(h_o, patch.unsqueeze(1),
                                      w_oc[:, t0 + j].reshape((1, n) + ones),
                                      value=-1, out=vals[:, :, j])
                    idx = (o[:, None] * (cin_g * taps) + c_local * taps + t0
                           + torch.arange(tb, device=h.device)[None]).reshape(-1)
                    yield idx, o.repeat_interleave(tb), vals.reshape((bsz, n * tb) + spatial)


class LossChange(ParameterScorer):
    """Exact change of the mean loss when each parameter entry alone is zeroed.

    ``S_i = L(w with w_i = 0) - L(w)``, ``L`` the mean per-sample loss over
    ``data`` (in eval mode). Negative scores mark entries whose removal
    lowers the loss (about 35% of the thesis CNN's ``conv1`` weights,
    Sec. 2.1.1). Entries already zero score exactly 0.

    Cost: for Linear/Conv weights and biases, one cached forward pass per
    batch plus, per entry, the work downstream of the changed channel (see
    the module docstring); other parameters take one forward pass per entry.

    Args:
        absolute: return ``|S_i|`` (``lossChangeScorerAbs``, Sec. 2.1.6).
        params: parameter names to score (None = all trainable).
        budget: elements of stacked activations per chunk of entries (a
            memory bound; passed to :class:`~saliency.engine.Downstream`).
            The default, 2**21, was fastest on CPU for the thesis CNN: larger
            chunks fall out of cache.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
        >>> x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
        >>> s = LossChange(params=["0.weight"]).score(net, [(x, y)])["0.weight"]
        >>> with torch.no_grad():
        ...     base = F.cross_entropy(net(x), y)
        ...     w = net[0].weight[2, 1].item()
        ...     _ = net[0].weight[2, 1].zero_()
        ...     after = F.cross_entropy(net(x), y)
        ...     _ = net[0].weight[2, 1].fill_(w)
        >>> abs(float(s[2, 1]) - float(after - base)) < 1e-12
        True

    Reference: Evci 2018, Sec. 2.1 (``lossChangeScorer``).
    """

    approximates = None

    def __init__(self, absolute: bool = False, *, params: Iterable[str] | None = None,
                 budget: int = 2 ** 21):
        super().__init__(params)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive int, got {budget!r}")
        self.absolute = bool(absolute)
        self.budget = budget

    # -- planning -----------------------------------------------------------

    def _plan(self, model: nn.Module, params: dict[str, nn.Parameter], example: torch.Tensor):
        """Split the selected parameters into the fast path and the loop.

        Returns ``(graph, fast, loop)``: ``fast`` maps a key to ``(module
        name, "weight" | "bias")``, ``loop`` maps a key to the name to pass to
        ``functional_call``.
        """
        owners: dict[int, list[tuple[str, str]]] = {}
        for mname, mod in model.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((mname, pname))
        real = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            real.setdefault(id(p), name)
        candidates = {}
        for key, p in params.items():
            places = owners[id(p)]
            if len(places) != 1:  # tied weights change several layers at once
                continue
            mname, pname = places[0]
            base = pname[: -len("_orig")] if pname.endswith("_orig") else pname
            mod = model.get_submodule(mname)
            if type(mod) in _FAST and base in ("weight", "bias"):
                candidates[key] = (mname, base)
        graph = None
        if candidates:
            try:
                graph = trace(model, example)
            except UnsupportedArchitecture:
                # Downstream only needs torch.fx: without a graph of units every
                # channel takes the batched path that recomputes from the layer on.
                try:
                    graph = UnitGraph({}, None, symbolic_trace(model))
                except Exception:  # noqa: BLE001 - untraceable model: loop over entries
                    graph = None
        if graph is not None:
            gm = graph.gm if graph.gm is not None else symbolic_trace(model)
            calls: dict[str, int] = {}
            for node in gm.graph.nodes:
                if node.op == "call_module":
                    ok = bool(node.args) and isinstance(node.args[0], fx.Node)
                    calls[node.target] = calls.get(node.target, 0) + (1 if ok else 2)
            # a layer called twice, or not on a positional input, is left to the loop
            candidates = {k: v for k, v in candidates.items() if calls.get(v[0], 0) == 1}
        else:
            candidates = {}
        loop = {k: real[id(p)] for k, p in params.items() if k not in candidates}
        return graph, candidates, loop

    # -- scoring ------------------------------------------------------------

    def _score(self, model, data, loss_fn):
        params = self.selected(model)
        values = parameter_values(model, params)
        graph, fast, loop = self._plan(model, params, next(iter_inputs(data))[:1])
        totals = {k: torch.zeros(p.numel(), dtype=torch.float64, device=p.device)
                  for k, p in params.items()}
        count = 0
        batches = list(iter_batches(data))
        with torch.no_grad():
            for x, y in progress(batches, "loss_change", unit="batch"):
                if fast:
                    ds = Downstream(model, graph, x, budget=self.budget)
                    base = _finite(per_sample_loss(loss_fn, ds.out, y))
                else:
                    base = _finite(per_sample_loss(loss_fn, model(x), y))
                base = base.to(torch.float64)
                count += base.shape[0]
                for key, (mname, kind) in fast.items():
                    res = self._fast(model, ds, mname, kind, values[key], y, loss_fn, base)
                    if res is None:  # unexpected layout: measure it the plain way
                        res = self._loop(model, self._real_name(model, params[key]),
                                         params[key], x, y, loss_fn, base)
                    totals[key] += res
                for key, real in loop.items():
                    totals[key] += self._loop(model, real, params[key], x, y, loss_fn, base)
        out = {}
        for key, p in params.items():
            s = (totals[key] / count).reshape(p.shape)
            s[values[key] == 0] = 0.0  # zeroing a zero changes nothing (exactly)
            out[key] = (s.abs() if self.absolute else s).to(
                p.dtype if p.is_floating_point() else torch.float64)
        return out

    @staticmethod
    def _real_name(model, p):
        return next(n for n, q in model.named_parameters(remove_duplicate=False) if q is p)

    def _fast(self, model, ds: Downstream, mname: str, kind: str, w: torch.Tensor,
              y, loss_fn, base) -> torch.Tensor | None:
        """Summed loss changes of every entry of ``mname``'s ``kind`` over this batch."""
        mod = model.get_submodule(mname)
        h = ds.output_of(mname)
        if not isinstance(h, torch.Tensor) or h.dim() != _OUT_DIMS[type(mod)]:
            return None
        w = w.to(h)
        if kind == "bias" or isinstance(mod, nn.Linear):
            a = ds.input_of(mname) if kind == "weight" else None
            if kind == "weight" and (not isinstance(a, torch.Tensor) or a.dim() != 2):
                return None
            chunks = _dense_chunks(h, w, a, kind, self.budget)
        else:
            x = ds.input_of(mname)
            if not isinstance(x, torch.Tensor) or x.dim() != h.dim():
                return None
            pt = _patches(mod, x)  # (B, C, *kernel, *spatial), a view
            if tuple(pt.shape[h.dim():]) != tuple(h.shape[2:]):
                return None
            chunks = _conv_chunks(mod, h, w, pt, self.budget)

        def reduce(losses):
            return (losses.to(torch.float64) - base).sum(1)

        res = torch.zeros(w.numel(), dtype=torch.float64, device=h.device)
        for idx, ch, vals in chunks:  # vals: (B, k, *spatial), contiguous
            # the engine takes (k, B, *spatial): hand it a transposed view
            res[idx] = ds.channel_losses(mname, ch, vals.transpose(0, 1), y, loss_fn,
                                         reduce=reduce)
        return res

    @staticmethod
    def _loop(model, real_name: str, p: torch.Tensor, x, y, loss_fn, base) -> torch.Tensor:
        """One forward pass per entry, zeroed in a private copy of the parameter."""
        copy = p.detach().clone()
        flat = copy.view(-1)
        res = torch.zeros(flat.numel(), dtype=torch.float64, device=p.device)
        for e in progress(range(flat.numel()), f"loss_change of {real_name}", unit="weight"):
            old = flat[e].clone()
            if old == 0:
                continue
            flat[e] = 0
            try:
                out = functional_call(model, {real_name: copy}, (x,))
                res[e] = (per_sample_loss(loss_fn, out, y).to(torch.float64) - base).sum()
            finally:
                flat[e] = old
        return res
