"""The pruning methods compared: ours (MRS with mean replacement, in one shot or in rounds; the
exact MRP ranking with the units dropped), Torch-Pruning's ``MetaPruner``, and
``torch.nn.utils.prune.ln_structured`` with its physical twin.

Each takes a network and the kept counts of
:func:`~experiments.bench.peers.widths.widths_for_reduction` (one per prunable group: a layer
on a chain, or the layers whose channels a residual add sums) and prunes it in place to exactly
those widths. The penalty methods (ShrinkNets, group sparsity),
which train while they prune, are in :mod:`experiments.bench.peers.accuracy`.

Removal with a replacement folds constants into the consumers' biases, and gives a bias to a
consumer that has none (the convolutions of ResNet-20 and MobileNetV2). Every such consumer
there feeds a BatchNorm, so :func:`fold_created_biases` moves the new bias into that
BatchNorm's running mean (``BN(y + b)`` with mean ``mu`` is ``BN(y)`` with mean ``mu - b`` in
eval mode; in train mode the batch mean cancels ``b`` either way): the function is unchanged,
and the pruned network has exactly the layer shapes and parameter count of Torch-Pruning's.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

import pruners
from experiments.bench.peers.setting import Setting
from experiments.bench.peers.widths import geometric_ratios, layer_widths, lowest_units, \
    prunable_units, round_widths, shapes, tp_ratio, widths_for_reduction
from pruners import remove_units
from saliency import SCORERS
from saliency.graph import UnitGraph, module_on_path

__all__ = ["Context", "make_context", "common_widths", "mrs_prune", "mrs_rounds", "mrp_drop_prune",
           "mrp_drop_rounds", "ln_structured_prune", "physical_twin", "physical_params",
           "tp_gradients", "tp_hessian_gradients", "tp_prune", "is_attention_layer", "tp_head_ratio", "tp_head_options",
           "head_rows", "removed_heads", "batchnorm_of", "group_batchnorms", "bias_free",
           "fold_created_biases"]


@dataclass
class Context:
    """What every method needs about one trained network.

    ``example``: one input; ``scoring``: the scoring batches; ``prunable``: the units of each
    prunable group of the unpruned network (by group name: its first member's; a layer on a
    chain); ``output_layers``: the layers that are not pruned; ``tp``: the ``torch_pruning``
    module, or None without it; ``members``: each prunable group's layers; ``graph``: the
    unpruned network's graph of units; ``cache``: scores of the unpruned network, computed
    once per network (:func:`mrp_drop_rounds`).
    """

    example: torch.Tensor
    scoring: list
    prunable: dict[str, int]
    output_layers: list[str]
    tp: Any
    setting: Setting
    model_name: str
    members: dict[str, list[str]] = field(default_factory=dict)
    graph: UnitGraph | None = None
    cache: dict = field(default_factory=dict)


def make_context(base: nn.Module, example: torch.Tensor, scoring: list, tp: Any, s: Setting,
                 model_name: str) -> Context:
    """What every method needs about one trained network (its graph's prunable groups)."""
    graph = pruners.trace(base, example)
    open_ = set(graph.prunable)
    modules = dict(base.named_modules())
    members = {n: list(graph.groups[n].members) for n in graph.prunable}
    members.update({n: [n] for n in graph.prunable_heads})
    # the producers whose group is not pruned (an attention module's output is a producer of
    # the residual stream, named "<module> (output)": its output projection is not a layer to
    # leave alone, its input columns go with the heads)
    return Context(example=example, scoring=scoring, prunable=prunable_units(graph),
                   output_layers=[n for n, p in graph.producers.items()
                                  if p.group not in open_ and n in modules],
                   tp=tp, setting=s, model_name=model_name, members=members, graph=graph)


def common_widths(base: nn.Module, ctx: Context, target: float) -> dict[str, int]:
    """The kept counts for ``target`` times fewer parameters or MACs (the setting's
    ``reduce_by``) of the unpruned network ``base``
    (:func:`~experiments.bench.peers.widths.widths_for_reduction`), computed once per network
    and target."""
    key = ("widths", float(target), ctx.setting.reduce_by)
    if key not in ctx.cache:
        ctx.cache[key] = widths_for_reduction(base, ctx.example, target,
                                              ctx.setting.reduce_by)[0]
    return dict(ctx.cache[key])


# ---------------------------------------------------------------------------
# new biases into the BatchNorm that follows


def bias_free(model: nn.Module) -> set[str]:
    """The names of the layers (Linear, convolutions) without a bias."""
    return {n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is None}


def _batchnorm_after(model: nn.Module, graph: UnitGraph, layer: str):
    """The BatchNorm that reads ``layer``'s output directly (nothing in between), or None."""
    group = graph.group_of(layer)
    for i, node in enumerate(group.nodes):
        if node.kind == "member" and node.member == layer:
            for nxt in group.nodes[i + 1:]:
                if nxt.kind == "op" and nxt.inputs == (i,) and nxt.op.kind == "module":
                    mod = model.get_submodule(nxt.op.target)
                    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                        return mod
            return None
    return None


def fold_created_biases(model: nn.Module, example: torch.Tensor, without: set[str],
                        optimizer=None) -> list[str]:
    """Move the bias of every layer of ``without`` (layers that had none) that now has one into
    the running mean of the BatchNorm reading it directly; returns the layers done.

    Exact in eval mode: ``BN(y + b)`` with running mean ``mu`` equals ``BN(y)`` with running
    mean ``mu - b``. In train mode the batch mean cancels ``b`` either way. A layer without
    such a BatchNorm (or one without running statistics) keeps its bias. ``optimizer``: the
    removed biases leave its parameter groups and state.
    """
    created = [n for n in sorted(without) if model.get_submodule(n).bias is not None]
    if not created:
        return []
    graph = pruners.trace(model, example.to(next(model.parameters()).dtype))
    done = []
    for name in created:
        bn = _batchnorm_after(model, graph, name)
        if bn is None or bn.running_mean is None:
            continue
        layer = model.get_submodule(name)
        bias = layer.bias
        with torch.no_grad():
            bn.running_mean.sub_(bias.detach().to(bn.running_mean))
        layer.bias = None
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not bias]
            optimizer.state.pop(bias, None)
        done.append(name)
    return done


# ---------------------------------------------------------------------------
# ours


def mrs_prune(model, kept, ctx: Context, opt=None) -> dict[str, list[int]]:
    """MRS scores on the scoring data, then removal with mean replacement; the units removed.

    MRS is the first-order estimate of the loss change of replacing a unit by its mean
    output (U. Evci, "Detecting Dead Weights and Units in Neural Networks", MS thesis, NYU
    2018, https://arxiv.org/abs/1806.06068, Def. 3.1.2). ``opt``: an optimizer whose state
    :func:`pruners.remove_units` slices along.
    """
    scores = SCORERS["mrs"]().score(model, ctx.scoring)
    units = lowest_units(scores, kept)
    without = bias_free(model)
    remove_units(model, units, replacement="mean", data=ctx.scoring, optimizer=opt)
    fold_created_biases(model, ctx.example, without, opt)
    return units


def mrs_rounds(model, kept, ctx: Context, rounds: int) -> list[dict[str, list[int]]]:
    """MRS pruning to ``kept`` in ``rounds`` rounds (:func:`round_widths`), rescoring each one.

    Each round scores the network as the previous rounds left it, with the
    mean replacement of the units already removed folded into the biases,
    and removes its lowest-scoring units with mean replacement (:func:`mrs_prune`).
    Returns every round's removed units, in the numbering of that round.
    """
    start = layer_widths(model, list(kept))
    return [mrs_prune(model, k, ctx) for k in round_widths(start, kept, rounds)]


def mrp_drop_prune(model, kept, ctx: Context, scores=None) -> dict[str, list[int]]:
    """Exact MRP scores on the scoring data (``scores`` if given), then the lowest-scoring units
    dropped (no replacement: the consumers see 0); the units removed.

    MRP is each unit's loss change, summed over samples in absolute value, when it alone is
    replaced by its mean output (Evci 2018, Def. 3.1.1; ``SCORERS["mrp"]``), the quantity MRS
    estimates to first order.
    """
    if scores is None:
        scores = SCORERS["mrp"]().score(model, ctx.scoring)
    units = lowest_units(scores, kept)
    remove_units(model, units, example_input=ctx.example)
    return units


def mrp_drop_rounds(model, kept, ctx: Context, rounds: int) -> list[dict[str, list[int]]]:
    """:func:`mrp_drop_prune` to ``kept`` in ``rounds`` rounds (:func:`round_widths`), rescoring
    each one. ``model`` must be a copy of the unpruned network: the first round's scores are
    computed once per network and kept in ``ctx.cache``."""
    start = layer_widths(model, list(kept))
    out = []
    for r, k in enumerate(round_widths(start, kept, rounds)):
        scores = None
        if r == 0:
            if "mrp" not in ctx.cache:
                ctx.cache["mrp"] = SCORERS["mrp"]().score(model, ctx.scoring)
            scores = ctx.cache["mrp"]
        out.append(mrp_drop_prune(model, k, ctx, scores))
    return out


# ---------------------------------------------------------------------------
# torch.nn.utils.prune.ln_structured and its physical twin


def ln_structured_prune(model, kept, ctx: Context):
    """``ln_structured`` (L2 over output rows) masking ``n - kept`` units of every group.

    On a chain, every layer by its own rows' L2 norms. The members of a residual group must
    lose the same channels (their outputs are summed), which the norms of each member's own
    rows do not give; there every member is masked by the group's joint L2 norm (over the
    rows of all members for that channel), passed to ``ln_structured`` as its
    ``importance_scores``.
    """
    for group, k in kept.items():
        n = ctx.prunable[group]
        members = ctx.members.get(group, [group])
        if len(members) == 1:
            tprune.ln_structured(model.get_submodule(group), "weight", amount=n - k, n=2,
                                 dim=0)
            continue
        chans = ctx.graph.groups[group].channels
        joint = torch.zeros(n, dtype=torch.float64)
        for m in members:
            w = model.get_submodule(m).weight.detach()
            if w.shape[0] != n:
                raise NotImplementedError(f"ln_structured on group {group!r}: member {m!r} "
                                          f"has {w.shape[0]} of the group's {n} channels")
            joint.index_add_(0, chans[m], w.flatten(1).double().pow(2).sum(1))
        joint = joint.sqrt()
        for m in members:
            w = model.get_submodule(m).weight
            imp = joint[chans[m]].to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1))
            tprune.ln_structured(model.get_submodule(m), "weight", amount=n - k, n=2, dim=0,
                                 importance_scores=imp.expand_as(w).contiguous())
    return model


def _masked_rows(name: str, mod: nn.Module) -> torch.Tensor:
    """The output rows of ``mod`` whose whole weight row is masked; RuntimeError if a row is
    only partly masked (then the unit is not structurally pruned)."""
    zero = mod.weight_mask.flatten(1).eq(0)
    rows = zero.all(1)
    if bool((zero.any(1) & ~rows).any()):
        raise RuntimeError(f"{name}: ln_structured masked rows only in part")
    return rows.nonzero().flatten()


def _physical_twin(model: nn.Module, layers: Sequence[str], example: torch.Tensor):
    """:func:`physical_twin`, and whether the fold is exact everywhere (no zero-padded
    consumer of a non-zero constant)."""
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "weight_orig") and hasattr(mod, "weight_mask"):
                mod.weight = mod.weight_orig * mod.weight_mask
    twin = copy.deepcopy(model)
    rows = {}
    for name, mod in twin.named_modules():
        if hasattr(mod, "weight_mask"):
            rows[name] = _masked_rows(name, mod)
            tprune.remove(mod, "weight")
    graph = pruners.trace(twin, example)
    units, consts = {}, {}
    for layer in layers:
        group = graph.group_of(layer)
        chans = None
        for m in group.members:
            if m not in rows:
                raise RuntimeError(f"{m} has no weight_mask: ln_structured did not prune it")
            mine = sorted(set(group.channels[m][rows[m]].tolist()))
            if chans is not None and mine != chans:
                raise RuntimeError(f"ln_structured masked channels {mine} of {m} but {chans} "
                                   f"of the other members of its group {group.name}")
            chans = mine
        units[layer] = chans
        for m in group.members:
            idx = torch.isin(group.channels[m], torch.tensor(chans, dtype=torch.long))
            mod = twin.get_submodule(m)
            consts[m] = (mod.bias.detach()[idx].clone() if mod.bias is not None
                         else torch.zeros(int(idx.sum()), dtype=mod.weight.dtype))
    todo = {l: i for l, i in units.items() if i}
    exact = True
    if todo:
        without = bias_free(twin)
        held = {m: consts[m] for l in todo for m in graph.group_of(l).members}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pruners.InexactReplacementWarning)
            report = remove_units(twin, todo, replacement=held, example_input=example)
        for w in caught:
            if not issubclass(w.category, pruners.InexactReplacementWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        exact = not report.inexact
        fold_created_biases(twin, example, without)
    return twin.eval(), units, exact


def physical_twin(model: nn.Module, layers: Sequence[str], example: torch.Tensor
                  ) -> tuple[nn.Module, dict[str, list[int]]]:
    """The ``ln_structured``-masked ``model`` with its masked units physically removed.

    ``layers``: the pruned groups (by group name). A masked unit's weight row is zero, so it
    outputs its bias (0 without one), a constant: removing it with that constant folded into
    its consumers (:func:`pruners.remove_units`, replacement = the bias; a created bias moved
    into the next BatchNorm, :func:`fold_created_biases`) computes the same function, except
    where a zero-padded convolution reads a non-zero constant (the border pixels: ResNet-20's
    3x3 convolutions, after a BatchNorm's shift). This gives the masked model's parameter count
    and shapes. ``model``'s function is not changed (its masked weights are only recomputed
    without autograd history, as its next forward pass would, so that it can be copied).
    Returns the twin and the removed units (group channels) per group.
    """
    twin, units, _ = _physical_twin(model, layers, example)
    return twin, units


def physical_params(model: nn.Module, method: str, kept: Mapping[str, int], ctx: Context,
                    check: torch.Tensor, reference: Mapping[str, tuple] | None = None) -> int:
    """The parameter count of ``model`` once physically pruned, checked.

    Physically pruned methods: their count, after checking the kept widths.
    ``ln_structured``: the count of :func:`physical_twin`, after checking that
    it masked ``n - kept`` units per group and, where the twin's fold is exact (no zero-padded
    consumer), that the twin's outputs on ``check`` match the masked model's. ``reference``:
    every parameter's shape (:func:`~experiments.bench.peers.widths.shapes`) that the
    (physical) model must have. RuntimeError on any difference.
    """
    if method != "ln_structured":
        widths = layer_widths(model, list(kept))
        if widths != dict(kept):
            raise RuntimeError(f"{method} kept {widths}, not {dict(kept)}")
        _check_shapes(method, model, reference)
        return pruners.count_params(model)
    twin, units, exact = _physical_twin(model, list(kept), ctx.example)
    counts = {l: ctx.prunable[l] - len(i) for l, i in units.items()}
    if counts != dict(kept):
        raise RuntimeError(f"ln_structured kept {counts}, not {dict(kept)}")
    _check_shapes(method, twin, reference)
    if exact:
        was = model.training
        model.eval()
        with torch.no_grad():
            ref, out = model(check), twin(check)
        model.train(was)
        dev = float((out - ref).abs().max())
        if dev > 1e-4 * max(1.0, float(ref.abs().max())):
            raise RuntimeError(f"ln_structured's physical twin deviates by {dev:.3g}")
    return pruners.count_params(twin)


def _check_shapes(method: str, model: nn.Module, reference: Mapping[str, tuple] | None) -> None:
    if reference is None:
        return
    got = shapes(model)
    diff = sorted(k for k in got.keys() | reference.keys() if got.get(k) != reference.get(k))
    if diff:
        raise RuntimeError(f"{method} ends at other shapes than the common widths': "
                           + "; ".join(f"{k} {got.get(k)} against {reference.get(k)}"
                                       for k in diff[:6]))


# ---------------------------------------------------------------------------
# Torch-Pruning


def _tp_importance(tp, name: str):
    if name in ("magnitude", "l2"):
        return tp.importance.MagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "hessian":
        return tp.importance.HessianImportance()
    if name == "taylor":
        return tp.importance.TaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"unknown Torch-Pruning importance {name!r}")


def tp_gradients(model, data) -> None:
    """Accumulate the cross-entropy gradients of ``data`` in ``model`` (for Torch-Pruning's
    ``TaylorImportance``)."""
    model.zero_grad(set_to_none=True)
    for x, y in data:
        F.cross_entropy(model(x), y).backward()


def tp_hessian_gradients(model, data, scorer) -> None:
    """Prepare Torch-Pruning's ``HessianImportance`` ``scorer``: every parameter's ``.grad``
    becomes the mean over the samples of ``data`` of the squared per-sample cross-entropy
    gradient (the diagonal Fisher estimate of the Hessian it scores with, Optimal Brain Damage).

    Its own ``accumulate_grad`` (1.6.1) looks parameter *names* up in a dict keyed by the
    parameters, so it keeps only the last sample's squared gradient; with nothing accumulated,
    its ``__call__`` reads ``.grad`` as given, so the mean is computed here instead.
    """
    scorer.zero_grad()
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    count = 0
    for x, y in data:
        losses = F.cross_entropy(model(x), y, reduction="none")
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(losses),
                                        allow_unused=True)
            for acc, g in zip(sums, grads):
                if g is not None:
                    acc.add_(g.detach().pow(2))
            count += 1
    for p, acc in zip(params, sums):
        p.grad = acc / max(count, 1)


def is_attention_layer(model: nn.Module, name: str) -> bool:
    """Whether ``name`` addresses an attention module's heads (a module with ``q_proj``,
    ``k_proj``, ``v_proj`` and ``head_dim``: the zoo's :class:`SelfAttention`) rather than a
    layer's channels."""
    mod = model.get_submodule(name)
    return all(hasattr(mod, a) for a in ("q_proj", "k_proj", "v_proj", "head_dim"))


def tp_head_ratio(n: int, k: int) -> float:
    """The head pruning ratio that makes Torch-Pruning's ``MetaPruner`` keep ``k`` of ``n``
    heads of one attention module: it removes ``ceil(ratio n)`` heads (local pruning), so the
    ratio aims at ``n - k - 1/2``."""
    return (n - k - 0.5) / n


def tp_head_options(model: nn.Module, heads: Mapping[str, int]
                    ) -> tuple[dict[str, Any], dict[nn.Module, float]]:
    """``MetaPruner``'s head-pruning options that remove whole heads down to ``heads`` (kept
    heads by attention module name), and the channel ratios its ``pruning_ratio_dict`` needs.

    Options: ``num_heads`` for each query, key and value projection, ``prune_num_heads=True``,
    ``prune_head_dims=False`` (the head dimension is kept, as ours keeps it) and
    ``head_pruning_ratio_dict`` per attention module. Channel ratios: the same ratio for the
    query, key and value projections. ``MetaPruner`` (1.6) prunes heads only inside a scope
    whose channel ratio removes at least one channel: with the projections' channel ratio left
    at 0 it removes no head at all, silently; with ``prune_head_dims=False`` the channel ratio
    only opens that branch (no channel inside a head is removed), so any positive value does.
    """
    num_heads, ratios, channel = {}, {}, {}
    for name, k in heads.items():
        attn = model.get_submodule(name)
        n = layer_widths(model, [name])[name]
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        for proj in projs:
            num_heads[proj] = int(proj.out_features // attn.head_dim)
        if k < n:
            ratios[attn] = tp_head_ratio(n, k)
            channel.update({proj: tp_head_ratio(n, k) for proj in projs})
    return ({"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False,
             "head_pruning_ratio_dict": ratios}, channel)


def head_rows(model: nn.Module, name: str) -> torch.Tensor:
    """Each head's query, key and value rows (weights and biases) of the attention module
    ``name``, one row per head: what identifies a head after pruning."""
    attn = model.get_submodule(name)
    d = attn.head_dim
    parts = []
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        w = proj.weight.detach().reshape(-1, d * proj.in_features)
        parts.append(w)
        if proj.bias is not None:
            parts.append(proj.bias.detach().reshape(-1, d))
    return torch.cat(parts, 1)


def removed_heads(before: torch.Tensor, after: torch.Tensor, name: str = "") -> list[int]:
    """The heads of ``before`` (:func:`head_rows` of the unpruned module) that are missing from
    ``after`` (of the pruned one), checked: every kept head must be exactly one of the original
    heads, in order (RuntimeError otherwise: the pruner cut inside heads)."""
    kept = []
    for row in after:
        hit = [h for h in range(before.shape[0]) if torch.equal(before[h], row)]
        if len(hit) != 1:
            raise RuntimeError(f"{name}: a kept head is not one of the original heads "
                               f"(the pruner removed channels inside heads)")
        kept.append(hit[0])
    if kept != sorted(kept):
        raise RuntimeError(f"{name}: the kept heads were reordered: {kept}")
    return sorted(set(range(before.shape[0])) - set(kept))


def tp_prune(model, kept, ctx: Context, importance: str, rounds: int = 1,
             trace: list | None = None):
    """Torch-Pruning's ``MetaPruner`` to the kept counts, in ``rounds`` iterative steps.

    ``importance``: ``"magnitude"`` or ``"l2"`` (L2), ``"l1"``, ``"hessian"`` (the diagonal
    Hessian of per-sample squared gradients, :func:`tp_hessian_gradients`), ``"taylor"`` (gradients of the scoring data,
    recomputed before every step) or ``"bn_scale"`` (the groups with a BatchNorm; the others by
    magnitude). Its dependency graph couples the channels of a residual group as ours does;
    every member gets the group's ratio, so it keeps the same count. The steps follow
    :func:`geometric_ratios`, the schedule of our rounds; the output layers are left alone.
    ``trace``: if given, the widths of the kept layers after every step are appended to it.

    Attention heads (``kept`` entries that name an attention module, :func:`is_attention_layer`)
    are pruned by ``MetaPruner``'s own head pruning (:func:`tp_head_options`: whole heads,
    head dimension kept, the head's importance the mean of its query/key/value channels'; the
    projections also get a channel ratio, without which it prunes no head), in
    one step only; afterwards each module's ``num_heads`` is set from the pruner's count, as
    Torch-Pruning's own ViT examples do by hand (``MetaPruner`` does not touch the attribute),
    and every kept head is checked to be a whole original head (:func:`removed_heads`).
    """
    tp = ctx.tp
    heads = {l: k for l, k in kept.items() if is_attention_layer(model, l)}
    channels = {l: k for l, k in kept.items() if l not in heads}
    if heads and rounds != 1:
        raise NotImplementedError("Torch-Pruning's head pruning is run in one step here "
                                  f"(rounds=1), not {rounds}")
    if importance == "bn_scale":
        graph = pruners.trace(model, ctx.example)
        bn_layers = [l for l in channels if group_batchnorms(model, graph, l)]
        if not bn_layers:
            raise ValueError("BNScaleImportance needs BatchNorm'd layers")
        parts = [("bn_scale", {l: channels[l] for l in bn_layers}, {}),
                 ("magnitude", {l: channels[l] for l in channels if l not in bn_layers},
                  heads)]
    else:
        parts = [(importance, channels, heads)]
    for imp_name, sub, sub_heads in parts:
        if not sub and not sub_heads:
            continue
        # every member of a group gets the group's ratio: whichever member Torch-Pruning's
        # dependency graph takes as the group's root, the group keeps ``k`` channels
        ratios = {model.get_submodule(m): tp_ratio(ctx.prunable[l], k)
                  for l, k in sub.items() for m in ctx.members.get(l, [l])}
        extra, channel = tp_head_options(model, sub_heads) if sub_heads else ({}, {})
        ratios.update(channel)
        before = {l: head_rows(model, l).clone() for l in sub_heads}
        scorer = _tp_importance(tp, imp_name)
        pruner = tp.pruner.MetaPruner(
            model, ctx.example, importance=scorer, pruning_ratio=0.0,
            pruning_ratio_dict=ratios, iterative_steps=rounds,
            iterative_pruning_ratio_scheduler=geometric_ratios,
            ignored_layers=[model.get_submodule(l) for l in ctx.output_layers], **extra)
        for _ in range(rounds):
            if imp_name == "taylor":
                tp_gradients(model, ctx.scoring)
            elif imp_name == "hessian":
                tp_hessian_gradients(model, ctx.scoring, scorer)
            pruner.step()
            model.zero_grad(set_to_none=True)
            if trace is not None:
                trace.append(layer_widths(model, list(sub) + list(sub_heads)))
        if pruner.current_step != rounds:
            raise RuntimeError(f"Torch-Pruning ran {pruner.current_step} of {rounds} steps")
        for l in sub_heads:
            attn = model.get_submodule(l)
            attn.num_heads = int(pruner.num_heads[attn.q_proj])
            if hasattr(attn, "num_kv_heads"):
                attn.num_kv_heads = int(pruner.num_heads[attn.k_proj])
            removed_heads(before[l], head_rows(model, l), l)
    return model


def batchnorm_of(model: nn.Module, layer: str, example: torch.Tensor):
    """The BatchNorm on ``layer``'s per-channel path, or None (ValueError if there are several:
    :func:`group_batchnorms` lists them)."""
    found = module_on_path(model, pruners.trace(model, example), layer,
                           nn.modules.batchnorm._BatchNorm, "BatchNorms")
    return None if found is None else found[1]


def group_batchnorms(model: nn.Module, graph: UnitGraph, group: str) -> list[str]:
    """The BatchNorms that carry ``group``'s channels (its region), in forward order."""
    out = []
    for node in graph.group_of(group).nodes:
        if node.kind == "op" and node.op.kind == "module" and node.op.target not in out \
                and isinstance(model.get_submodule(node.op.target),
                               nn.modules.batchnorm._BatchNorm):
            out.append(node.op.target)
    return out
