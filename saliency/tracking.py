"""Per-unit tracking during training: the quantities of the thesis's Fig. 3.1-3.10.

Sections 3.4-3.6 of U. Evci, *Detecting Dead Weights and Units in Neural
Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018)
follow attacked units through training on a fixed validation set of 1000
samples: their mean replacement penalty (MRP, Def. 3.1.1) and its
first-order approximation (MRS, Def. 3.1.2), the norms of their incoming
and outgoing weights and of the gradient they receive (eq. 3.4, the "output
gradient" of Def. 3.2.1), and histograms of their outputs and activations
over time (Fig. 3.2, 3.6, 3.8, 3.10). :class:`UnitTracker` records these
every ``every`` steps on a fixed probe batch, for chosen units or whole
layers.

Quantities (:data:`QUANTITIES`), per tracked unit ``i`` of a layer with output
``h`` (before the non-linearity), activation ``a`` (after the unit's
per-channel path -- BatchNorm, activation -- before pooling), over the probe
samples ``k`` (and positions ``p`` of a convolution's map):

* ``mrp``: ``sum_k |L(h~_{k,i}) - L(h_k)|``, the exact MRP (Def. 3.1.1), with
  ``h~`` replacing unit ``i`` by its mean over the probe data;
* ``mrs``: ``sum_k |(mu_i - h_{k,i})^T dL_k/dh_{k,i}|`` (Def. 3.1.2);
* ``grad_norm``: ``sqrt((1/N) sum_k ||dL_k/dh_{k,i}||^2)``, the output gradient;
* ``w_in_l1``: ``||W_i||_1``, the unit's incoming weights (its row or filter);
* ``w_out_l1``: the L1 norm of its outgoing weights (every consumer's columns);
* ``out_mean``, ``out_var``: mean and variance of ``h_i``;
* ``act_mean``, ``act_var``: mean and variance of ``a_i``;
* ``apoz``: the fraction of zero activations; ``dormancy``: ReDo's score;
* and, for every probe, the loss on the probe data (``loss``, mean per sample).

``histograms`` (``"activation"``, ``"output"``) add a histogram of ``a_i`` /
``h_i`` over samples and positions: ``bins`` bins over ``hist_range`` if
given (values outside are counted in ``below`` / ``above``), else over that
probe's ``[min, max]`` of the unit.

Cost per probe: one forward and backward pass on the probe data
(:func:`saliency.unit_statistics`, which gives every quantity but MRP,
histograms read from the same pass), plus, for ``mrp``, one cached forward
pass and the downstream work of the tracked units only
(:class:`saliency.engine.Downstream`).

Tracking does not change training: every probe runs in eval mode inside
:func:`saliency.base.preserved` (parameters, ``.grad``, ``requires_grad``,
training flags and hooks restored; BatchNorm running statistics are not
updated in eval mode) and draws no random numbers, so a run with tracking is
bit-identical to one without (``tests/test_tracking.py``).

It only measures, so it lives in :mod:`saliency`. Use it from any loop::

    tracker = UnitTracker(model, {"conv1": None}, probe_batches, every=50)
    for step, (x, y) in enumerate(batches):
        ...
        optimizer.step()
        tracker.maybe_record(step + 1)   # steps taken so far

or through :class:`experiments.harness.callbacks.TrackingCallback` in the harness.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import iter_batches, preserved, select_layers, summing_loss
from .engine import Downstream
from .graph import UnitGraph, as_index_tensor
from .tracing import trace
from .layers import channels_first, dense_weight, effective_tensor
from .replacement import current_token_mask, iter_inputs, masked_sums
from .unit_stats import is_chain, unit_statistics

__all__ = ["UnitTracker", "QUANTITIES", "HISTOGRAMS"]

QUANTITIES: tuple[str, ...] = ("mrp", "mrs", "grad_norm", "w_in_l1", "w_out_l1", "out_mean",
                               "out_var", "act_mean", "act_var", "apoz", "dormancy")
HISTOGRAMS: tuple[str, ...] = ("activation", "output")

#: the unit_statistics entries each quantity reads
_STAT = {"mrs": "mrs", "grad_norm": "grad_norm", "out_mean": "mean", "out_var": "out_var",
         "act_mean": "act_mean", "act_var": "act_var", "apoz": "apoz", "dormancy": "dormancy"}


def _histogram(values: torch.Tensor, bins: int, hist_range: tuple[float, float] | None
               ) -> dict[str, Any]:
    v = values.reshape(-1).to(torch.float64)
    if hist_range is None:
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        below = above = 0
    else:
        lo, hi = hist_range
        below, above = int((v < lo).sum()), int((v > hi).sum())
    counts, edges = torch.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()],
            "below": below, "above": above}


class UnitTracker:
    """Record per-unit quantities on a fixed probe batch every ``every`` steps.

    Args:
        model: the model being trained (probes never change it).
        units: ``{layer: indices or None}`` (None tracks every unit of the
            layer) or a list of layer names (whole layers). Layers are the
            prunable producers of :func:`saliency.trace` on chains; a group of
            coupled channels (a residual group) is refused with a clear error.
        data: the probe data, an iterable of ``(inputs, targets)`` batches
            (kept as a list); the thesis uses 1000 validation samples.
        every: probe when ``step % every == 0`` (see :meth:`maybe_record`).
        start: no probe before this step.
        quantities: which of :data:`QUANTITIES` (default: all).
        histograms: which of :data:`HISTOGRAMS` to record (default:
            ``("activation",)``; ``()`` for none).
        bins: histogram bins.
        hist_range: fixed ``(lo, hi)`` for every histogram, or None (each
            probe's own range per unit).
        loss_fn: ``loss_fn(output, target, reduction="none")``.
        example_input: for :func:`saliency.trace`.
        exclude: for :func:`saliency.trace`.

    Attributes:
        records: one dict per probe, ``{"step", "loss", "layers": {layer:
            {"units": [...], quantity: [one value per tracked unit]}},
            "histograms": {layer: {kind: [per unit {"edges", "counts",
            "below", "above"}]}}}`` (plain Python values, for JSON and
            checkpoints).
    """

    def __init__(self, model: nn.Module, units: Mapping[str, Iterable[int] | None] | Sequence[str],
                 data: Iterable, *, every: int = 50, start: int = 0,
                 quantities: Iterable[str] | None = None,
                 histograms: Iterable[str] = ("activation",), bins: int = 40,
                 hist_range: tuple[float, float] | None = None,
                 loss_fn: Callable = F.cross_entropy, example_input: torch.Tensor | None = None,
                 exclude: Iterable[str] = ()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, v, low in (("every", every, 1), ("start", start, 0), ("bins", bins, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        self.quantities = list(QUANTITIES if quantities is None else quantities)
        bad = [q for q in self.quantities if q not in QUANTITIES]
        if bad:
            raise ValueError(f"unknown quantities {bad}; known: {list(QUANTITIES)}")
        self.histograms = list(histograms)
        bad = [h for h in self.histograms if h not in HISTOGRAMS]
        if bad:
            raise ValueError(f"unknown histograms {bad}; known: {list(HISTOGRAMS)}")
        if hist_range is not None:
            lo, hi = (float(v) for v in hist_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"hist_range must be finite (lo, hi) with hi > lo, got "
                                 f"{hist_range!r}")
            hist_range = (lo, hi)
        self.hist_range = hist_range
        if data is None:
            raise ValueError("UnitTracker needs probe data: an iterable of (inputs, targets)")
        self.data = list(data)
        next(iter_batches(self.data))
        self.model, self.every, self.start, self.bins = model, every, start, bins
        self.loss_fn = loss_fn
        self.exclude = tuple(exclude)
        self.example_input = (example_input if example_input is not None
                              else next(iter_inputs(self.data))[:1])
        if isinstance(units, Mapping):
            spec = dict(units)
        else:
            if isinstance(units, str):
                raise TypeError("units must be a mapping {layer: indices or None} or a list of "
                                "layer names")
            spec = {name: None for name in units}
        if not spec:
            raise ValueError("units names no layer to track")
        self.units = spec
        self._selection(self._graph())  # validate now
        self.records: list[dict[str, Any]] = []

    # -- selection -------------------------------------------------------------

    def _graph(self) -> UnitGraph:
        return trace(self.model, self.example_input, exclude=self.exclude)

    def _selection(self, graph: UnitGraph) -> dict[str, torch.Tensor]:
        layers = select_layers(self.model, graph, list(self.units))
        out = {}
        for name in layers:
            group = graph.groups[name]
            if not is_chain(group):
                raise ValueError(
                    f"layer {name!r} heads a group of coupled channels ({group.describe()}): "
                    "UnitTracker follows the units of layers on chains only; score the group "
                    "with saliency.unit_statistics or saliency.MRP instead")
            n = graph.producers[name].num_units
            idx = self.units[name]
            if idx is None:
                out[name] = torch.arange(n)
                continue
            t = as_index_tensor(name, idx)
            bad = t[(t < 0) | (t >= n)]
            if bad.numel():
                raise ValueError(f"layer {name!r}: index {int(bad[0])} is out of range (the "
                                 f"layer has {n} units, indices 0..{n - 1})")
            if t.unique().numel() != t.numel():
                raise ValueError(f"layer {name!r}: a unit index is given more than once")
            out[name] = t
        return out

    # -- probing -------------------------------------------------------------

    def maybe_record(self, step: int) -> bool:
        """Probe if ``step >= start``, ``step % every == 0`` and not probed yet."""
        step = int(step)
        if step < self.start or step % self.every:
            return False
        if self.records and self.records[-1]["step"] == step:
            return False
        self.record(step)
        return True

    def record(self, step: int) -> dict[str, Any]:
        """Probe now and append the record (see the class docstring)."""
        rec = self.measure()
        rec = {"step": int(step), **rec}
        self.records.append(rec)
        return rec

    def measure(self) -> dict[str, Any]:
        """The quantities of the tracked units now, without recording them."""
        model = self.model
        graph = self._graph()
        sel = self._selection(graph)
        layers = list(sel)
        stat_keys = sorted({_STAT[q] for q in self.quantities if q in _STAT})
        captured: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {n: 0 for n in layers}
        want_h = bool(self.histograms)
        want_mean = "mrp" in self.quantities

        def hook_for(name: str):
            idx = sel[name]

            def hook(m, _inp, out):
                with torch.no_grad():
                    h = channels_first(m, out.detach())  # tokens: channels in dimension 1
                    if want_h:
                        captured[name].append(h.index_select(1, idx.to(h.device)).clone())
                    if want_mean:  # the arithmetic of saliency.unit_means, for exact MRP
                        s, k = masked_sums(h, current_token_mask(), f"layer {name!r}")
                        sums[name] = sums[name] + s if name in sums else s
                        counts[name] += k
            return hook

        total = {"loss": 0.0, "n": 0}
        loss_fn = self.loss_fn

        counting_loss = summing_loss(loss_fn, total)

        with preserved(model):
            handles = [model.get_submodule(n).register_forward_hook(hook_for(n))
                       for n in layers]
            try:
                st = unit_statistics(model, graph, layers, self.data, counting_loss,
                                     stats=stat_keys)
            finally:
                for hd in handles:
                    hd.remove()
            total["n"] = sum(int(x.shape[0]) for x in iter_inputs(self.data))
            mrp = self._mrp(graph, sel, sums, counts) if want_mean else {}
            out_layers: dict[str, dict[str, Any]] = {}
            hists: dict[str, dict[str, list]] = {}
            for name in layers:
                idx = sel[name]
                row: dict[str, Any] = {"units": idx.tolist()}
                w = effective_tensor(model.get_submodule(name), "weight").detach()
                for q in self.quantities:
                    if q in _STAT:
                        row[q] = st[_STAT[q]][name][idx].tolist()
                    elif q == "mrp":
                        row[q] = mrp[name].tolist()
                    elif q == "w_in_l1":
                        row[q] = w.index_select(0, idx).reshape(idx.numel(), -1).abs().sum(
                            1, dtype=torch.float64).tolist()
                    elif q == "w_out_l1":
                        row[q] = self._w_out(graph, name, idx).tolist()
                out_layers[name] = row
                if want_h:
                    h = torch.cat(captured[name])
                    hists[name] = {}
                    for kind in self.histograms:
                        x = h
                        if kind == "activation":
                            x = self._activation(graph, name, h, idx)
                        hists[name][kind] = [
                            _histogram(x[:, j], self.bins, self.hist_range)
                            for j in range(idx.numel())]
        rec = {"loss": total["loss"] / max(total["n"], 1), "layers": out_layers}
        if want_h:
            rec["histograms"] = hists
        return rec

    def _activation(self, graph: UnitGraph, name: str, h: torch.Tensor,
                    idx: torch.Tensor) -> torch.Tensor:
        """The activation of the selected channels ``h`` (their per-channel path)."""
        edges = graph.producers[name].edges
        if not edges:
            return h
        from .replacement import apply_op
        from .unit_stats import is_pool

        with torch.no_grad():
            for op in edges[0].path:
                if not is_pool(self.model, op):
                    h = apply_op(self.model, op, h, idx, maps=True)
        return h

    def _w_out(self, graph: UnitGraph, name: str, idx: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(idx.numel(), dtype=torch.float64)
        for edge in graph.producers[name].edges:
            cw = dense_weight(self.model.get_submodule(edge.consumer)).detach()
            for j, i in enumerate(idx.tolist()):
                cols = edge.columns(torch.tensor([i]))
                total[j] += cw.index_select(1, cols).abs().sum(dtype=torch.float64)
        return total

    def _mrp(self, graph: UnitGraph, sel: Mapping[str, torch.Tensor],
             sums: Mapping[str, torch.Tensor], counts: Mapping[str, int]
             ) -> dict[str, torch.Tensor]:
        """Exact MRP (Def. 3.1.1, summed over samples) of the selected units.

        The same computation as :class:`saliency.MRP` (means as
        :func:`saliency.unit_means` computes them, then
        :meth:`Downstream.channel_losses`), restricted to the tracked
        channels.
        """
        model = self.model
        totals = {n: torch.zeros(idx.numel(), dtype=torch.float64) for n, idx in sel.items()}
        means = {n: (sums[n] / counts[n]).to(model.get_submodule(n).weight.dtype) for n in sel}
        for x, y in iter_batches(self.data):
            ds = Downstream(model, graph, x)
            base = ds.base_losses(y, self.loss_fn).to(torch.float64)

            def reduce(losses, base=base):
                return (losses.to(torch.float64) - base).abs().sum(1)

            for name, idx in sel.items():
                h = channels_first(model.get_submodule(name), ds.output_of(name))
                vals = means[name][idx].to(h).reshape((idx.numel(), 1) + (1,) * (h.dim() - 2))
                totals[name] += ds.channel_losses(name, idx, vals, y, self.loss_fn,
                                                  reduce=reduce)
        return totals

    # -- reading records -----------------------------------------------------

    def series(self, layer: str, unit: int, quantity: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one quantity of one tracked unit (``"loss"`` too)."""
        steps, values = [], []
        for rec in self.records:
            if quantity == "loss":
                steps.append(rec["step"])
                values.append(rec["loss"])
                continue
            row = rec["layers"].get(layer)
            if row is None or unit not in row["units"]:
                continue
            steps.append(rec["step"])
            values.append(row[quantity][row["units"].index(unit)])
        return steps, values

    def rows(self) -> list[dict[str, Any]]:
        """A long table: one dict per probe and tracked unit."""
        out = []
        for rec in self.records:
            for layer, row in rec["layers"].items():
                for j, unit in enumerate(row["units"]):
                    out.append({"step": rec["step"], "loss": rec["loss"], "layer": layer,
                                "unit": unit, **{q: row[q][j] for q in self.quantities}})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = list(state.get("records", []))
