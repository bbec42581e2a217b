"""(b) Time to score every prunable unit with the Taylor criterion and to remove the selection
physically: ours against Torch-Pruning's, each case on a fresh copy of the trained network,
alternated within every repeat. Our MRS (every unit, mean replacement's first-order loss change)
is timed too, against the same Torch-Pruning Taylor scoring.

Ours: ``SCORERS["taylor"]`` (P. Molchanov, S. Tyree, T. Karras, T. Aila, J. Kautz, "Pruning
Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017,
https://arxiv.org/abs/1611.06440, on unit outputs) and :func:`pruners.remove_units`, which
traces the model itself on every call. Torch-Pruning's: building its ``MetaPruner`` and
dependency graph, one forward and backward pass over the same data, ``TaylorImportance`` of every
group (P. Molchanov, A. Mallya, S. Tyree, I. Frosio, J. Kautz, "Importance Estimation for Neural
Network Pruning", CVPR 2019, https://arxiv.org/abs/1906.10771, on weights), then
``group.prune()``; and one whole pruning step of each.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from experiments.bench.peers.methods import Context, common_widths, is_attention_layer, \
    tp_gradients, tp_head_options
from experiments.bench.peers.widths import layer_widths, lowest_units, tp_ratio
from experiments.harness.timing import cpu_mark, others_busy
from pruners import remove_units
from saliency import SCORERS

__all__ = ["OURS_SCORE", "OURS_SCORE_MRS", "OURS_REMOVE", "OURS_REMOVE_MEAN", "OURS_STEP",
           "TP_GRAPH",
           "TP_SCORE", "TP_REMOVE", "TP_SCORE_WITH_GRAPH", "TP_REMOVE_WITH_GRAPH", "TP_STEP",
           "run_timing"]

# the timed cases, as the rows and the ratios name them
OURS_SCORE = "ours: score (SCORERS['taylor'])"
OURS_SCORE_MRS = "ours: score (SCORERS['mrs'])"
OURS_REMOVE = "ours: remove (remove_units, drop)"
OURS_STEP = "ours: prune step (score + remove)"
OURS_REMOVE_MEAN = "ours: remove (remove_units, mean replacement)"
TP_GRAPH = "Torch-Pruning: build graph (MetaPruner)"
TP_SCORE = "Torch-Pruning: score (fwd/bwd + TaylorImportance)"
TP_REMOVE = "Torch-Pruning: remove (group.prune)"
TP_SCORE_WITH_GRAPH = "Torch-Pruning: score incl. graph"
TP_REMOVE_WITH_GRAPH = "Torch-Pruning: remove incl. graph"
TP_STEP = "Torch-Pruning: prune step (graph + fwd/bwd + pruner.step)"

#: ``record(case, seconds)``: adds one measurement of a case
Record = Callable[[str, float], None]


def _check_widths(model: nn.Module, kept: Mapping[str, int]) -> None:
    got = layer_widths(model, list(kept))
    if got != dict(kept):
        raise RuntimeError(f"the timed removal left widths {got}, not {dict(kept)}")


def _ours(model, kept, ctx: Context, record: Record) -> None:
    """Score, select and drop (no replacement): each part and the whole step."""
    t0 = time.perf_counter()
    scores = SCORERS["taylor"]().score(model, ctx.scoring)
    t1 = time.perf_counter()
    units = lowest_units(scores, kept)
    t2 = time.perf_counter()
    remove_units(model, units, example_input=ctx.example)
    t3 = time.perf_counter()
    record(OURS_SCORE, t1 - t0)
    record(OURS_REMOVE, t3 - t2)
    record(OURS_STEP, t3 - t0)
    _check_widths(model, kept)


def _ours_mrs(model, kept, ctx: Context, record: Record) -> None:
    """MRS scores of every unit (one pass for the means, one forward and backward pass)."""
    t0 = time.perf_counter()
    SCORERS["mrs"]().score(model, ctx.scoring)
    record(OURS_SCORE_MRS, time.perf_counter() - t0)


def _ours_mean(model, kept, ctx: Context, record: Record) -> None:
    """The removal with mean replacement (which measures the means on the scoring data)."""
    units = lowest_units(SCORERS["taylor"]().score(model, ctx.scoring), kept)
    t0 = time.perf_counter()
    remove_units(model, units, replacement="mean", data=ctx.scoring, example_input=ctx.example)
    record(OURS_REMOVE_MEAN, time.perf_counter() - t0)


def _tp_layers(model, kept, ctx: Context) -> dict[str, Any]:
    """The per-layer ratios (every member of a group: the group's) and ignored layers of
    Torch-Pruning's pruner to ``kept`` (looked up before its clock starts); with attention
    heads among ``kept``, its head-pruning options (:func:`tp_head_options`)."""
    heads = {l: k for l, k in kept.items() if is_attention_layer(model, l)}
    out = {"pruning_ratio_dict": {model.get_submodule(m): tp_ratio(ctx.prunable[l], k)
                                  for l, k in kept.items() if l not in heads
                                  for m in ctx.members.get(l, [l])},
           "ignored_layers": [model.get_submodule(l) for l in ctx.output_layers]}
    if heads:
        options, channel = tp_head_options(model, heads)
        out.update(options)
        out["pruning_ratio_dict"].update(channel)
    return out


def _tp_pruner(model, ctx: Context, layers: Mapping[str, Any]):
    """Torch-Pruning's Taylor ``MetaPruner`` (this builds its dependency graph)."""
    tp = ctx.tp
    return tp.pruner.MetaPruner(model, ctx.example, importance=tp.importance.TaylorImportance(),
                                pruning_ratio=0.0, **layers)


def _tp_importances(pruner) -> list[tuple[Any, torch.Tensor | None]]:
    """Every group of the pruner's dependency graph with its importance (gradients already
    accumulated, for ``TaylorImportance``)."""
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types)
    return [(g, pruner.estimate_importance(g)) for g in groups]


def _tp_selection(pruner, imps, kept, group_of: Mapping[str, str]
                  ) -> list[tuple[nn.Module, Callable, list[int]]]:
    """Each kept group's Torch-Pruning group to prune: its root module, pruning function and
    lowest units. ``group_of`` maps every member layer to its group (the root Torch-Pruning
    picks may be any member, or a depthwise convolution inside the group; they all share the
    group's channel numbering here, which :func:`run_timing` checks).

    An attention module's group (its query, key and value projections' output channels, in
    ``pruner.num_heads``) is ranked by head, as ``MetaPruner`` ranks heads: the mean importance
    of each head's channels; the lowest heads' channels are pruned whole."""
    out = []
    for g, imp in imps:
        dep = g[0].dep
        names = [pruner.DG._module2name.get(d.target.module) for d, _ in g
                 if pruner.DG.is_out_channel_pruning_fn(d.handler)]
        qkv = [n for d, _ in g if pruner.DG.is_out_channel_pruning_fn(d.handler)
               and d.target.module in pruner.num_heads
               for n in [pruner.DG._module2name.get(d.target.module)]]
        if qkv:
            attn = qkv[0].rsplit(".", 1)[0]
            if attn not in kept or imp is None:
                continue
            n_heads = pruner.num_heads[dep.target.module]
            head_imp = imp.view(n_heads, -1).mean(1)
            drop = lowest_units({attn: head_imp}, {attn: kept[attn]}).get(attn, [])
            dim = len(imp) // n_heads
            chans = [h * dim + i for h in drop for i in range(dim)]
            out.append((dep.target.module, dep.handler, chans))
            continue
        # the layers whose output channels the group prunes: one of them is a member of ours
        # (the root may be a depthwise convolution, which ours carry inside the group)
        lname = next((group_of[n] for n in names if n in group_of), None)
        if lname not in kept or imp is None:
            continue
        drop = lowest_units({lname: imp}, {lname: kept[lname]}).get(lname, [])
        out.append((dep.target.module, dep.handler, drop))
    return out


def _set_num_heads(model, kept) -> None:
    """Each pruned attention module's ``num_heads`` from its query projection (Torch-Pruning
    leaves the attribute as it was; its examples set it by hand)."""
    for l in kept:
        if is_attention_layer(model, l):
            attn = model.get_submodule(l)
            attn.num_heads = layer_widths(model, [l])[l]
            if hasattr(attn, "num_kv_heads"):
                attn.num_kv_heads = int(attn.k_proj.out_features // attn.head_dim)


def _theirs(model, kept, ctx: Context, record: Record) -> None:
    """Graph, score (gradients and importance) and removal of Torch-Pruning, each timed."""
    layers = _tp_layers(model, kept, ctx)
    t0 = time.perf_counter()
    pruner = _tp_pruner(model, ctx, layers)
    t1 = time.perf_counter()
    tp_gradients(model, ctx.scoring)
    imps = _tp_importances(pruner)
    t2 = time.perf_counter()
    groups = _tp_selection(pruner, imps, kept,
                           {m: l for l in kept for m in ctx.members.get(l, [l])})
    t3 = time.perf_counter()
    for module, handler, drop in groups:
        pruner.DG.get_pruning_group(module, handler, drop).prune()
    t4 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    _set_num_heads(model, kept)
    record(TP_GRAPH, t1 - t0)
    record(TP_SCORE, t2 - t1)
    record(TP_REMOVE, t4 - t3)
    record(TP_SCORE_WITH_GRAPH, t2 - t0)
    record(TP_REMOVE_WITH_GRAPH, (t1 - t0) + (t4 - t3))
    _check_widths(model, kept)


def _theirs_step(model, kept, ctx: Context, record: Record) -> None:
    """One whole Torch-Pruning step: graph, gradients and ``pruner.step()``."""
    layers = _tp_layers(model, kept, ctx)
    t0 = time.perf_counter()
    pruner = _tp_pruner(model, ctx, layers)
    tp_gradients(model, ctx.scoring)
    pruner.step()
    record(TP_STEP, time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    _set_num_heads(model, kept)
    _check_widths(model, kept)


def _alternate(cases, base: nn.Module, repeats: int, times: dict[str, list[float]]):
    """One warm-up of every case, then ``repeats`` rounds of all of them, rotating the order
    from round to round, each on a fresh copy of ``base``. Returns the CPUs other processes
    kept busy meanwhile."""
    for fn in cases:  # warm-up
        fn(copy.deepcopy(base))
    times.clear()
    mark = cpu_mark()
    for r in range(repeats):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for fn in order:
            model = copy.deepcopy(base)
            fn(model)
            del model
    return others_busy(mark)


def run_timing(name: str, base: nn.Module, ctx: Context, log) -> list[dict]:
    """The timing rows of the network ``base`` at ``ctx.setting.timing_reduction`` (fewer
    parameters or MACs, as the setting's ``reduce_by``): per case its median and best
    milliseconds over ``ctx.setting.repeats`` alternated repeats."""
    s = ctx.setting
    for g in ctx.prunable:
        if g not in ctx.graph.groups:  # an attention module's heads
            continue
        for m in ctx.members.get(g, [g]):
            if not torch.equal(ctx.graph.groups[g].channels[m], torch.arange(ctx.prunable[g])):
                raise NotImplementedError(f"timing: member {m!r} of group {g!r} numbers the "
                                          f"group's channels in another order")
    kept = common_widths(base, ctx, s.timing_reduction)
    times: dict[str, list[float]] = {}

    def record(case: str, seconds: float) -> None:
        times.setdefault(case, []).append(seconds)

    kinds = [_ours, _ours_mrs, _ours_mean] + ([_theirs, _theirs_step] if ctx.tp is not None
                                               else [])
    cases = [lambda model, fn=fn: fn(model, kept, ctx, record) for fn in kinds]
    others = _alternate(cases, base, s.repeats, times)
    removed = sum(ctx.prunable[l] - k for l, k in kept.items())
    return [{"model": name, "case": case, "median_ms": statistics.median(v) * 1e3,
             "best_ms": min(v) * 1e3, "repeats": len(v), "units_removed": removed,
             "timing_reduction": float(s.timing_reduction),
             "threads": torch.get_num_threads(), "other_cpus_busy": others}
            for case, v in times.items()]
