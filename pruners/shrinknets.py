"""ShrinkNets: learn the network's size while it trains.

*ShrinkNets: Learning Network Size while Training* (2018 draft; public as G.
Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify:
Learning Network Size while Training*, https://arxiv.org/abs/1806.03723; "the
ShrinkNets paper", whose sections and equations are cited below) and its
earlier draft *Learning Network Size while Training with ShrinkNets* (2018;
"the ShrinkNets draft", or "draft" below): every unit of an over-sized
network gets a learnable switch (:class:`saliency.switch.Switch`, eq. 1), the
loss gets a sparsity term on the switches (eq. 2 / 9),

    L_SN = L + lambda ||beta||_1 + lambda_2 ||theta||_p^p,

units whose switch dies are removed while training goes on ("neural garbage
collection", Sec. 4.2) with the optimizer state kept, and before inference
the switches are folded into the layers (Sec. 4.2, "Preparing for
Inference").

* :func:`insert_switches` -- a switch after each BatchNorm, or after each
  Linear/Conv without one, except the output layer (Sec. 5.1.1); one switch
  per residual group, called after every member;
* :func:`shrinknets_penalty` -- ``lambda ||g||_1 + lambda_2 ||theta||_p^p``;
* removal strategies (Sec. 4.1; draft Sec. 5.2): :class:`Threshold`,
  :class:`SignChange`, :class:`SignVariance`, :class:`Aggressiveness`;
* :class:`GarbageCollector` -- a pruner that removes (or masks) dead units on
  the fly and accounts for the running cost (input neurons and MACs);
* :func:`fold_switches` -- a plain network with identical outputs.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from saliency.attention import PrunedMultiheadAttention
from saliency.graph import default_example_input, symbolic_trace
from saliency.tracing import trace
from saliency.layers import PRODUCERS, effective_tensor, eval_mode
from saliency.switch import HeadGate, HeadSwitch, Switch, head_switch_of, switch_of

from .metrics import count_macs, count_params
from .pruning import RoundReport, data_list, example_of, head_items, mean_loss, removal_items
from .surgery import mask_units, remove_units

__all__ = ["Switch", "HeadSwitch", "insert_switches", "fold_switches", "shrinknets_penalty",
           "switches",
           "RemovalStrategy", "Threshold", "SignChange", "SignVariance", "Aggressiveness",
           "GarbageCollector", "input_neurons"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def switches(model: nn.Module) -> dict[str, Switch]:
    """Every switch layer of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Switch)}


# ---------------------------------------------------------------------------
# placing and folding switches


def insert_switches(model: nn.Module, example_input: torch.Tensor | None = None, *,
                    parametrization: str = "signed", init: str = "normal", value: float = 1.0,
                    layers: Iterable[str] | None = None, exclude: Iterable[str] = ()
                    ) -> fx.GraphModule:
    """A copy of ``model`` with a switch on every prunable group's units.

    The switch goes after the layer's BatchNorm when one follows it directly,
    else right after the layer; the layers producing the model's output get
    none (ShrinkNets Sec. 5.1.1: "after each BatchNorm layer and each fully
    connected layer (except the last)"). Switches live in the ModuleDict
    ``switches`` of the returned :class:`torch.fx.GraphModule`, keyed by the
    group's name (on a chain: the layer's) with dots as underscores; the
    original model is not changed and shares nothing with the copy.

    An attention module whose heads are units (:attr:`saliency.UnitGraph.heads`) gets
    **one switch per head** (:class:`saliency.switch.HeadSwitch`, keyed by the module's name
    with dots as underscores and ``_heads`` appended): a forward pre-hook on its output
    projection (:class:`saliency.switch.HeadGate`) multiplies head ``h``'s output (its
    ``head_dim`` features of what the projection reads) by ``g_h``. An
    ``nn.MultiheadAttention``, which applies its output projection without calling it,
    becomes a :class:`saliency.PrunedMultiheadAttention` (the same parameters and
    function). A module whose output projection is not called exactly once per call cannot
    host it and is refused, named.

    A residual group (layers whose outputs a residual add sums, see
    :func:`pruners.trace`) gets **one** switch with one gate per group
    channel, called after every member's output (after its BatchNorm when one
    follows), so channel ``i`` of every member is multiplied by the same gate
    ``g_i`` and a gate at 0 turns the whole stream channel off. A member that
    outputs only some of the group's channels (a concatenation summed into the
    stream) is switched where its channels are complete: after the
    concatenation.

    Args:
        model: a model :func:`pruners.trace` accepts.
        example_input: an input batch (needed for convolutional models).
        parametrization: ``"signed"`` or ``"relu"``, of each
            :class:`~saliency.switch.Switch`.
        init: the gates' initialization, of each switch.
        value: the constant of ``init="constant"``.
        layers: the groups to switch, by group name or any member's name, and attention
            modules to switch per head (default: every prunable group and every attention
            module with prunable heads).
        exclude: layers left out (see :func:`pruners.trace`).

    Raises:
        ValueError: an unknown or non-prunable layer, a group that already
            has a switch, or a residual group whose members' channels are
            summed before they form the whole group (no place sees every
            channel once per member).
    """
    model = copy.deepcopy(model)
    graph = trace(model, example_input, exclude=exclude)
    layers = None if layers is None else list(layers)
    head_targets = _head_targets(graph, layers)
    if layers is None:
        targets = graph.prunable
    else:
        rest = [n for n in layers if n not in graph.heads]
        targets = _group_targets(graph, rest) if rest else []
    for name in targets:
        if switch_of(model, graph, name) is not None:
            raise ValueError(f"layer {name!r} already has a switch")
    for name in head_targets:
        if head_switch_of(model, graph.heads[name]) is not None:
            raise ValueError(f"attention {name!r} already has a head switch")
    _check_head_hosts(model, graph, head_targets, example_input)
    gm = model if isinstance(model, fx.GraphModule) else _traced_copy(model, example_input)
    if hasattr(gm, "switches") and not isinstance(getattr(gm, "switches"), nn.ModuleDict):
        raise ValueError("the model has an attribute 'switches' already")
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    sites = {name: _switch_sites(gm, nodes, graph.groups[name]) for name in targets}
    if not hasattr(gm, "switches"):
        gm.add_submodule("switches", nn.ModuleDict())
    for name in targets:
        key = name.replace(".", "_")
        w = effective_tensor(gm.get_submodule(name), "weight")
        last = any(graph.producers[m].channel_last for m in graph.groups[name].members)
        gm.switches[key] = Switch(graph.groups[name].size, parametrization, init, value,
                                  channels_last=last).to(device=w.device, dtype=w.dtype)
        for anchor in sites[name]:
            with gm.graph.inserting_after(anchor):
                new = gm.graph.call_module(f"switches.{key}", (anchor,))
            anchor.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
    gm.graph.lint()
    gm.recompile()
    for name in head_targets:  # a gate per head on the heads' output (a hook: inside a leaf)
        h = graph.heads[name]
        if h.kind == "mha":  # nn.MultiheadAttention does not call its output projection
            PrunedMultiheadAttention.convert(gm.get_submodule(name))
        key = name.replace(".", "_") + "_heads"
        w = effective_tensor(gm.get_submodule(h.out), "weight")
        gm.switches[key] = HeadSwitch(h.num_heads, h.head_dim, parametrization, init,
                                      value).to(device=w.device, dtype=w.dtype)
        gm.get_submodule(h.out).register_forward_pre_hook(HeadGate(gm.switches[key]))
    joined = [n for n in targets if len(sites[n]) > 1 or len(graph.groups[n].members) > 1]
    if joined:  # the switched graph must see one switch on each group's channels
        check = trace(gm, example_input, exclude=exclude)
        for name in joined:
            hit = switch_of(gm, check, name)
            if hit is None or hit[0] != f"switches.{name.replace('.', '_')}":
                raise ValueError(f"group {name!r}: the switch could not be placed on its "
                                 "channels")
    return gm


def _head_targets(graph, layers: list[str] | None) -> list[str]:
    """The attention modules whose heads get a switch: every one with prunable heads when
    ``layers`` is None, else those ``layers`` names (refused, named, when not prunable)."""
    if layers is None:
        return graph.prunable_heads
    out = []
    for n in dict.fromkeys(layers):
        if n in graph.heads:
            if not graph.heads[n].prunable:
                raise ValueError(f"attention {n!r} cannot host a switch per head: its heads "
                                 f"are not units ({graph.heads[n].reason})")
            out.append(n)
    return out


def _check_head_hosts(model: nn.Module, graph, names: list[str], example_input) -> None:
    """Each attention module of ``names`` must call its output projection once per call
    (the head switch gates that call's input), checked on ``example_input``."""
    if not names:
        return
    from saliency.attention import fastpath_disabled
    calls = {n: [0, 0] for n in names}
    handles = []
    for n in names:
        h = graph.heads[n]
        if h.kind == "mha":
            continue  # it becomes a PrunedMultiheadAttention, which calls out_proj once

        def own(m, args, n=n):
            calls[n][0] += 1

        def out(m, args, n=n):
            calls[n][1] += 1
        handles.append(model.get_submodule(n).register_forward_pre_hook(own))
        handles.append(model.get_submodule(h.out).register_forward_pre_hook(out))
    if example_input is None:
        example_input = default_example_input(model)
    try:
        if handles:
            with eval_mode(model), torch.no_grad(), fastpath_disabled():
                model(example_input)
    finally:
        for hd in handles:
            hd.remove()
    for n, (own_calls, out_calls) in calls.items():
        if own_calls and out_calls != own_calls:
            raise ValueError(f"attention {n!r} cannot host a switch per head: its output "
                             f"projection {graph.heads[n].out!r} is called {out_calls} times "
                             f"in {own_calls} calls of the module (a head switch gates the "
                             "output projection's input, once per call)")


def _group_targets(graph, layers: Iterable[str]) -> list[str]:
    """The prunable groups ``layers`` name (groups or members), each once, in order."""
    names, bad = [], []
    for n in layers:
        known = n in graph.groups or n in graph.producers
        if known and graph.group_of(n).prunable:
            names.append(graph.group_of(n).name)
        else:
            bad.append(n)
    if bad:
        raise ValueError(f"unknown or non-prunable layers {bad}; prunable: {graph.prunable}")
    return list(dict.fromkeys(names))


def _switch_sites(gm: fx.GraphModule, nodes: dict, group) -> list[fx.Node]:
    """The nodes after which the group's switch is called: each member's output, or its
    BatchNorm when one directly follows; for a member that outputs only some of the group's
    channels, the first node after it that holds all of them, in order (a concatenation)."""
    sites: list[fx.Node] = []
    region = {n.name: n for n in group.nodes}
    full = torch.arange(group.size)
    for member in group.members:
        anchor = nodes[member]
        users = list(anchor.users)
        if len(users) == 1 and users[0].op == "call_module" and \
                isinstance(gm.get_submodule(users[0].target), _BN):
            anchor = users[0]
        if len(group.members) == 1:  # a chain: its layer (or BatchNorm) carries every unit
            return [anchor]
        while True:
            here = region.get(anchor.name)
            if here is None or here.kind in ("join", "flatten"):
                raise ValueError(
                    f"group {group.name!r} ({', '.join(group.members)}): layer {member!r} "
                    f"outputs channels {group.channels[member].tolist()} of the group's "
                    f"{group.size}, and they are summed or read before one tensor holds all of "
                    "them; one switch per group cannot be placed")
            if torch.equal(here.labels, full):
                break
            users = list(anchor.users)
            if len(users) != 1:
                raise ValueError(f"group {group.name!r}: the output of layer {member!r} is used "
                                 "in several places before the group's channels are complete; "
                                 "one switch per group cannot be placed")
            anchor = users[0]
        if anchor not in sites:
            sites.append(anchor)
    return sites


def _traced_copy(model: nn.Module, example_input: torch.Tensor | None) -> fx.GraphModule:
    """``model`` as a graph module to insert switches into: its ``torch.fx`` trace, or, when
    ``torch.fx`` cannot trace it, the graph built through ``torch.export``
    (:func:`saliency.export.exported_graph`), checked to read no ``self.training`` outside its
    leaf modules (:func:`_check_mode_free`)."""
    try:
        gm = symbolic_trace(model)
        trace_as = None
    except Exception:  # noqa: BLE001 - trace() succeeded, so the export route works
        from saliency.export import exported_graph
        x = example_input if example_input is not None else default_example_input(model)
        if x.dim() > 0 and x.shape[0] == 1:
            x = x.expand(2, *x.shape[1:]).clone()

        def trace_as(m: nn.Module) -> fx.GraphModule:
            return exported_graph(m, x, train=m.training)
        gm = trace_as(model)
    _check_mode_free(model, gm, trace_as or symbolic_trace)
    return gm


def _check_mode_free(model: nn.Module, gm: fx.GraphModule,
                     trace_as: Callable[[nn.Module], fx.GraphModule] = symbolic_trace) -> None:
    """Refuse a forward that reads ``self.training`` outside leaf modules.

    Tracing freezes such reads (``F.dropout(x, training=self.training)``
    becomes ``training=True``): the traced copy would drop out in eval mode
    too. Traced in the other mode (by ``trace_as``), such a model gives different code.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train(not model.training)
        other = trace_as(model)
    finally:
        for m, flag in flags:
            m.training = flag
    if other.code != gm.code:
        raise ValueError("the model's forward reads self.training outside its submodules "
                         "(e.g. F.dropout(x, training=self.training)); a traced copy with "
                         "switches would freeze the current mode. Use module layers "
                         "(nn.Dropout) for mode-dependent steps")


_LINEAR_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
                   nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_POSITIVE_MODULES = _LINEAR_MODULES + (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d,
                                       nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_LINEAR_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout,
                     F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_POSITIVE_FUNCTIONS = _LINEAR_FUNCTIONS | {
    F.relu, torch.relu, F.leaky_relu, F.max_pool1d, F.max_pool2d, torch.max_pool1d,
    torch.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}


def _commutes(model, ops, positive: bool) -> bool:
    """Whether every op satisfies ``f(g x) = g f(x)`` per channel (g >= 0 if ``positive``)."""
    mods = _POSITIVE_MODULES if positive else _LINEAR_MODULES
    funcs = _POSITIVE_FUNCTIONS if positive else _LINEAR_FUNCTIONS
    for op in ops:
        if op.kind == "module":
            if not isinstance(model.get_submodule(op.target), mods):
                return False
        elif op.kind == "function":
            if op.target not in funcs:
                return False
        elif op.target not in ("relu", "contiguous") or (op.target == "relu" and not positive):
            return False
    return True


def _scale_rows(mod: nn.Module, attr: str, g: torch.Tensor) -> None:
    t = mod._parameters.get(attr + "_orig")
    t = getattr(mod, attr) if t is None else t
    if t is not None:
        t.mul_(g.view((-1,) + (1,) * (t.dim() - 1)).to(t))


def fold_switches(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` without switch layers and with the same outputs (eval mode).

    Each switch's gate ``g`` is multiplied into a neighbouring layer, on the
    side where the ops between commute with a per-channel scale:

    1. backwards, when only linear per-channel ops (dropout, average pooling,
       identity) separate it from the producer or from an eval-mode
       BatchNorm: into that BatchNorm's weight and bias, else into the
       producer's weight rows and bias;
    2. forwards, into every consumer's input columns (input channels, or
       H*W column blocks after a flatten), when only such ops follow it --
       e.g. a switch placed after an activation;
    3. with ``g >= 0`` also through positively homogeneous ops (ReLU, leaky
       ReLU, max pooling).

    The switch of a residual group is called after every member: each call
    folds backwards (1, 3) into that member's BatchNorm or weight rows (a call
    after a concatenation: each piece into its own member), so every member's
    channel ``i`` is scaled by ``g_i`` as the switched model does; forwards it
    cannot go, since the consumers read the sum.

    A switch per attention head (:class:`saliency.switch.HeadSwitch`) gates the heads'
    output right before the output projection, which is linear in it: gate ``g_h`` is
    multiplied into the projection's columns of head ``h``, exact for any sign.

    Anything else (a negative gate before a ReLU and a BatchNorm after it)
    cannot be folded exactly and raises ValueError naming the switch.
    """
    model = copy.deepcopy(model)
    found = switches(model)
    if not found:
        return model
    graph = trace(model, example_input)
    done: set[str] = set()
    with torch.no_grad():
        for h in graph.heads.values():  # a switch per head: into the output columns
            hit = head_switch_of(model, h)
            if hit is None:
                continue
            sname, sw = hit
            out = model.get_submodule(h.out)
            g = sw.effective_gate().detach().repeat_interleave(h.head_dim)
            w = out._parameters.get("weight_orig")
            w = out.weight if w is None else w
            w[:, :g.numel()].mul_(g.to(w))
            for key, hook in list(out._forward_pre_hooks.items()):
                if isinstance(hook, HeadGate):
                    del out._forward_pre_hooks[key]
            done.add(sname)
        for gname, group in graph.groups.items():
            hit = switch_of(model, graph, gname)
            if hit is None:
                continue
            sname, sw = hit
            g = sw.effective_gate().detach()
            if group.joined:
                _fold_group(model, group, sname, g)
            else:
                _fold_one(model, graph.producers[group.members[0]], sname, g)
            done.add(sname)
    left = [n for n in found if n not in done]
    if left:
        raise ValueError(f"switches {left} are not on the path of any layer's units")
    return _drop_switches(model, done)


def _fold_group(model, group, sname: str, g: torch.Tensor) -> None:
    """Fold the switch of a residual group backwards at every place it is called."""
    positive = bool((g >= 0).all())
    targets: list[tuple[nn.Module, torch.Tensor]] = []
    for node in group.nodes:
        if node.kind == "op" and node.op.kind == "module" and node.op.target == sname:
            _fold_back(model, group, node.inputs[0], g, positive, targets, sname)
    for mod, gate in targets:
        _scale_rows(mod, "weight", gate)
        _scale_rows(mod, "bias", gate)


def _fold_back(model, group, index: int, gate: torch.Tensor, positive: bool,
               targets: list, sname: str) -> None:
    """Walk back from region node ``index`` to the BatchNorm or member that ``gate`` (one
    value per channel of the node's tensor) folds into; split it at a concatenation."""
    tail: list = []
    while True:
        node = group.nodes[index] if index >= 0 else None
        if node is None or node.kind in ("join", "flatten") or not _commutes(model, tail,
                                                                              positive):
            raise ValueError(
                f"switch {sname!r} of the residual group {group.name!r} "
                f"({', '.join(group.members)}) cannot be folded exactly: on a residual group a "
                "switch folds backwards only, into each member's BatchNorm or weight rows, "
                "through per-channel ops that commute with a per-channel scale"
                + ("" if positive else " (some gates are negative)"))
        if node.kind == "member":
            targets.append((model.get_submodule(node.member), gate))
            return
        if node.kind == "cat":
            start = 0
            for piece, n in zip(node.inputs, node.sizes):
                _fold_back(model, group, piece, gate[start:start + n], positive, targets, sname)
                start += n
            return
        mod = model.get_submodule(node.op.target) if node.op.kind == "module" else None
        if isinstance(mod, _BN) and mod.affine and mod.track_running_stats:
            targets.append((mod, gate))
            return
        tail.insert(0, node.op)
        index = node.inputs[0]


def _fold_one(model, prod, sname, g) -> None:
    path = prod.edges[0].path
    k = next(i for i, op in enumerate(path) if op.kind == "module" and op.target == sname)
    pre = path[:k]
    posts = [e.path[next(i for i, op in enumerate(e.path) if op.target == sname) + 1:]
             for e in prod.edges]
    nonneg = bool((g >= 0).all())
    for positive in ((False, True) if nonneg else (False,)):
        # backwards: into the last BatchNorm before the switch, or the producer
        bn_at = max((i for i, op in enumerate(pre) if op.kind == "module"
                     and isinstance(model.get_submodule(op.target), _BN)), default=None)
        tail = pre if bn_at is None else pre[bn_at + 1:]
        head = [] if bn_at is None else pre[:bn_at]
        if _commutes(model, tail, positive):
            if bn_at is None:
                mod = model.get_submodule(prod.name)
                _scale_rows(mod, "weight", g)
                _scale_rows(mod, "bias", g)
                return
            bn = model.get_submodule(pre[bn_at].target)
            if bn.affine and bn.track_running_stats and not head:
                _scale_rows(bn, "weight", g)
                _scale_rows(bn, "bias", g)
                return
        # forwards: into every consumer's input columns
        if all(_commutes(model, post, positive) for post in posts):
            for edge in prod.edges:
                _scale_columns(model.get_submodule(edge.consumer), edge, g)
            return
    raise ValueError(f"switch {sname!r} of layer {prod.name!r} cannot be folded exactly: the "
                     "ops on either side of it do not commute with a per-channel scale"
                     + ("" if nonneg else " (some gates are negative)"))


def _scale_columns(cmod: nn.Module, edge, g: torch.Tensor) -> None:
    """Multiply the consumer's input columns of ``edge``'s channels by the gates ``g`` (its
    other columns by 1; a grouped convolution's entries in each row's own conv group)."""
    w = cmod._parameters.get("weight_orig")
    w = cmod.weight if w is None else w
    groups = getattr(cmod, "groups", 1)
    full = torch.ones(w.shape[1] * groups, dtype=w.dtype, device=w.device)
    cols = edge.columns(torch.arange(g.numel(), device=w.device))
    full[cols] = g.repeat_interleave(edge.block).to(w)
    per_in, rows = w.shape[1], w.shape[0] // groups
    factor = full.view(groups, 1, per_in).expand(groups, rows, per_in).reshape(w.shape[0], per_in)
    w.mul_(factor.view(factor.shape + (1,) * (w.dim() - 2)))


def _drop_switches(model: nn.Module, names: set[str]) -> nn.Module:
    if isinstance(model, fx.GraphModule):
        for node in list(model.graph.nodes):
            if node.op == "call_module" and node.target in names:
                node.replace_all_uses_with(node.args[0])
                model.graph.erase_node(node)
        model.graph.lint()
        model.recompile()
    for name in sorted(names, key=len, reverse=True):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(model, fx.GraphModule):
            delattr(parent, child)
        else:
            setattr(parent, child, nn.Identity())
    if isinstance(model, fx.GraphModule) and hasattr(model, "switches") \
            and len(model.switches) == 0:
        delattr(model, "switches")
    return model


# ---------------------------------------------------------------------------
# the penalty


def shrinknets_penalty(model: nn.Module, lam: float, lam2: float = 0.0, p: int = 2
                       ) -> torch.Tensor:
    """``lambda ||g||_1 + lambda_2 ||theta||_p^p`` (ShrinkNets eq. 2 and 9).

    ``g`` are the gates of every switch (``beta``, or ``max(0, theta)`` for
    the draft's parametrization, whose penalty ``lambda |max(0, theta)|`` is
    draft eq. 2); ``theta`` are all other parameters (effective values of
    pruned tensors), ``p`` is 1 or 2. Add it to the training loss.
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    for name, v in (("lam", lam), ("lam2", lam2)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    sw = switches(model)
    if lam and not sw:
        raise ValueError("the model has no switch layers (pruners.shrinknets.insert_switches)")
    total = None
    for m in sw.values():
        term = m.effective_gate().abs().sum()
        total = term if total is None else total + term
    pen = lam * total if total is not None else None
    if lam2:
        owned = {id(q) for m in sw.values() for q in m.parameters()}
        reg = None
        for mod in model.modules():
            for pname, q in mod._parameters.items():
                if q is None or id(q) in owned:
                    continue
                owned.add(id(q))  # a shared parameter counts once
                mask = (mod._buffers.get(pname[:-5] + "_mask") if pname.endswith("_orig")
                        else None)
                t = q if mask is None else q * mask  # pruned: the effective tensor
                term = t.abs().sum() if p == 1 else (t * t).sum()
                reg = term if reg is None else reg + term
        if reg is not None:
            pen = lam2 * reg if pen is None else pen + lam2 * reg
    if pen is None:
        q = next(model.parameters())
        return q.new_zeros(())
    return pen


# ---------------------------------------------------------------------------
# removal strategies


class RemovalStrategy:
    """Decides, step by step, which units' switches are dead.

    ``strategy(layer, gate) -> BoolTensor``: called with the current gates of
    a layer's switch, returns which units to remove. Strategies with memory
    keep it per layer; :meth:`keep` is told which units survived a removal,
    to slice that memory the same way.
    """

    def __call__(self, layer: str, gate: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def keep(self, layer: str, kept: torch.Tensor) -> None:
        """Units ``kept`` (indices into the old width) survived a removal."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Threshold(RemovalStrategy):
    """Dead when ``|g_i| <= threshold`` (Sec. 4.1 "threshold strategy", as deep compression)."""

    def __init__(self, threshold: float = 1e-3):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) \
                or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        self.threshold = float(threshold)

    def __call__(self, layer, gate):
        return gate.detach().abs() <= self.threshold


class _PerLayer(RemovalStrategy):
    """A strategy with a tensor of memory per layer and unit."""

    _fields: tuple[str, ...] = ()

    def __init__(self):
        self._state: dict[str, dict[str, torch.Tensor]] = {}

    def keep(self, layer, kept):
        st = self._state.get(layer)
        if st is not None:
            self._state[layer] = {k: v[kept] for k, v in st.items()}

    def state_dict(self):
        return {"state": {k: {f: t.clone() for f, t in v.items()} for k, v in self._state.items()}}

    def load_state_dict(self, state):
        self._state = {k: {f: t.clone() for f, t in v.items()}
                       for k, v in state.get("state", {}).items()}


class SignChange(_PerLayer):
    """Dead at the first change of sign of ``g_i`` (Sec. 4.1 "sign change strategy").

    A gate of exactly 0 (the draft's permanent off state) is dead too.
    """

    def __call__(self, layer, gate):
        s = torch.sign(gate.detach())
        st = self._state.get(layer)
        if st is None or st["sign"].shape != s.shape:
            self._state[layer] = {"sign": s}
            return s == 0
        prev = st["sign"]
        dead = (s == 0) | ((prev != 0) & (s != prev))
        st["sign"] = torch.where(s == 0, prev, s)
        return dead


class SignVariance(_PerLayer):
    """Dead when an exponential moving variance of ``sign(g_i)`` exceeds ``threshold``.

    Sec. 4.1 "sign variance strategy", the one the paper uses throughout. A
    switch that the L1 penalty has pushed to 0 jitters around it, so its sign
    keeps flipping; a switch that crossed 0 once and stayed is alive (a
    signed ``beta`` works either way). The paper gives no formula; we use the
    successive-difference (von Neumann) estimate of the variance, averaged
    exponentially with ``a = inertia``::

        s_t = sign(g_i) in {-1, 1} (0 counts as -1);  v <- a v + (1 - a) (s_t - s_{t-1})^2 / 2

    It is insensitive to a level shift: one crossing adds a single term,
    ``v`` peaks at ``2 (1 - a)`` (0.2 for ``a = 0.9``) and decays; a sign
    flipping at every step drives ``v`` to 2. The default threshold, 1.0,
    needs about 7 flips in a row at ``a = 0.9``. (A plain exponential moving
    variance cannot tell the two apart: after one crossing it peaks at
    0.998, above the 0.997 it reaches when flipping, for ``a = 0.9``.)
    """

    def __init__(self, inertia: float = 0.9, threshold: float = 1.0):
        super().__init__()
        if isinstance(inertia, bool) or not isinstance(inertia, (int, float)) \
                or not 0.0 < inertia < 1.0:
            raise ValueError(f"inertia must be in (0, 1), got {inertia!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.inertia, self.threshold = float(inertia), float(threshold)

    def __call__(self, layer, gate):
        s = torch.where(gate.detach() > 0, 1.0, -1.0).to(torch.float64)
        st = self._state.get(layer)
        if st is None or st["sign"].shape != s.shape:
            self._state[layer] = {"sign": s, "var": torch.zeros_like(s)}
            return torch.zeros_like(s, dtype=torch.bool)
        a = self.inertia
        d = s - st["sign"]
        st["var"] = a * st["var"] + (1 - a) * d * d / 2
        st["sign"] = s
        return st["var"] > self.threshold


class Aggressiveness(RemovalStrategy):
    """The ShrinkNets draft's removal aggressiveness ``gamma`` (Sec. 5.2).

    The draft names ``gamma`` but does not define it; we read it as the
    fraction of the layer's mean live gate under which a unit is removed:
    dead when ``|g_i| <= gamma * mean_j |g_j|``. ``gamma = 0`` removes only
    units already off (``g_i = 0``, exact); larger ``gamma`` removes sooner,
    trading some final loss for a cheaper run (draft Fig. 2).
    """

    def __init__(self, gamma: float = 0.0):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, layer, gate):
        a = gate.detach().abs()
        return a <= self.gamma * a.mean()


# ---------------------------------------------------------------------------
# garbage collection


def input_neurons(model: nn.Module) -> int:
    """Sum over Linear/Conv layers of their input features or channels (the draft's cost)."""
    total = 0
    for m in model.modules():
        spec = PRODUCERS.get(type(m))
        if spec is not None:
            total += int(getattr(m, spec.in_attr))
    return total


class GarbageCollector:
    """Neural garbage collection (ShrinkNets Sec. 4.2): remove dead units on the fly.

    ``step(t, model, optimizer=None, data=None)`` asks ``strategy`` which
    switched units are dead and removes them with :func:`pruners.remove_units`
    (the optimizer's state is sliced, so training goes on with it), or masks
    them (``remove=False``, the masked twin). The removed units' outputs are
    replaced by a constant pushed through their path, switch included, and
    folded into the next layer's bias (``replacement="zero"``: the producer
    held at 0, exact when the gate is 0; ``"mean"`` needs ``data``). No
    layer is left with fewer than ``min_units`` units: the live units with
    the largest ``|g|`` are kept. On a residual group the one switch's dead
    gates remove group channels (every member's channel ``i``); every member
    keeps a channel, and a grouped convolution loses the same number of
    channels from each conv group (the weakest dead ones, in whole steps). A
    switch per attention head removes the heads whose gates are dead, an
    attention module keeping ``min_units`` heads; with grouped-query attention
    in even steps over the key/value groups (:func:`pruners.pruning.head_items`).
    The strategy sees the live units only (masked ones left out, its memory
    kept by position), so the masked twin decides exactly as the physically
    shrunk network.

    It records the running cost after every call in :attr:`cost`: ``[t,
    input neurons, MACs per sample, parameters]`` (the draft's "sum of input
    neurons per epoch" is the sum of the column over an epoch's steps).
    """

    def __init__(self, strategy: RemovalStrategy, *, remove: bool = True,
                 replacement: str | None = "zero", min_units: int = 1,
                 example_input: torch.Tensor | None = None, loss_fn=F.cross_entropy):
        if not isinstance(strategy, RemovalStrategy):
            raise TypeError(f"strategy must be a RemovalStrategy, got {strategy!r}")
        if replacement not in ("zero", "mean", None):
            raise ValueError(f"replacement must be 'zero', 'mean' or None, got {replacement!r}")
        if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
            raise ValueError(f"min_units must be an int >= 1, got {min_units!r}")
        self.strategy, self.remove, self.replacement = strategy, bool(remove), replacement
        self.min_units, self.example_input, self.loss_fn = min_units, example_input, loss_fn
        self.masked: dict[str, list[int]] = {}
        self.history: list[RoundReport] = []
        self.cost: list[list[float]] = []
        self._cost_key: tuple | None = None
        self._sizes: list[int] = []

    def step(self, t: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             data: Iterable | None = None) -> RoundReport | None:
        data = data_list(data)
        example = example_of(self.example_input, data)
        if self.replacement == "mean" and data is None:
            raise ValueError("replacement='mean' needs data=")
        graph = trace(model, example)
        units: dict[str, list[int]] = {}
        lives: dict[str, torch.Tensor] = {}
        for name in graph.prunable:
            hit = switch_of(model, graph, name)
            if hit is None:
                continue
            gate = hit[1].effective_gate().detach()
            alive = torch.ones(gate.numel(), dtype=torch.bool)
            alive[self.masked.get(name, [])] = False
            live = torch.nonzero(alive).flatten()
            # the strategy sees the live units only, as after a physical removal, so
            # a masked twin decides exactly as its shrunk counterpart (a mean over
            # the layer, memory by position)
            dead = torch.zeros_like(alive)
            dead[live] = self.strategy(name, gate[live.to(gate.device)]).cpu().to(torch.bool)
            room = live.numel() - self.min_units
            idx = torch.nonzero(dead).flatten()
            group = graph.groups[name]
            if len(group.members) > 1 or group.partitions:  # what the graph accepts, weakest first
                items = removal_items(group, idx, gate.abs().cpu(), gone=self.masked.get(name, []),
                                      limit=max(room, 0))
                idx = torch.tensor(sorted(c for chans, _ in items for c in chans),
                                   dtype=torch.long)
            elif idx.numel() > room:  # keep the strongest switches
                strength = gate.abs().cpu()[idx]
                idx = idx[torch.argsort(strength, stable=True)[:max(room, 0)]]
            if idx.numel():
                units[name] = sorted(idx.tolist())
                lives[name] = live
        for name in graph.prunable_heads:  # a switch per head
            heads = graph.heads[name]
            hit = head_switch_of(model, heads)
            if hit is None:
                continue
            gate = hit[1].effective_gate().detach()
            alive = torch.ones(gate.numel(), dtype=torch.bool)
            alive[self.masked.get(name, [])] = False
            live = torch.nonzero(alive).flatten()
            dead = torch.zeros_like(alive)
            dead[live] = self.strategy(name, gate[live.to(gate.device)]).cpu().to(torch.bool)
            items = head_items(heads, torch.nonzero(dead).flatten(), gate.abs().cpu(),
                               gone=self.masked.get(name, []),
                               limit=max(live.numel() - self.min_units, 0))
            idx = sorted(c for chans, _ in items for c in chans)
            if idx:
                units[name] = idx
                lives[name] = live
        new = {n: list(v) for n, v in units.items()}
        if not self.remove:  # masked heads again with the new (see UnitPruner)
            units.update({n: sorted(set(v) | set(self.masked.get(n, ())))
                          for n, v in units.items() if n in graph.heads})
        report = None
        if units:
            loss_before = mean_loss(model, data, self.loss_fn) if data is not None else None
            params_before = count_params(model)
            macs_before = count_macs(model, example) if example is not None else None
            act = remove_units if self.remove else mask_units
            removal = act(model, units, replacement=self.replacement, data=data,
                          optimizer=optimizer, example_input=example, min_units=self.min_units)
            for n, idx in new.items():
                live = lives[n]
                self.strategy.keep(n, torch.nonzero(~torch.isin(live, torch.tensor(idx)))
                                   .flatten())  # positions among the live units
                if not self.remove:
                    self.masked[n] = sorted(set(self.masked.get(n, [])) | set(idx))
            report = RoundReport(
                step=int(t), target=0.0, kind="unit", pruned={n: len(v) for n, v in new.items()},
                fraction={},
                remaining={n: lives[n].numel() - len(v) for n, v in new.items()},
                params_before=params_before,
                params_after=count_params(model), macs_before=macs_before,
                macs_after=count_macs(model, example) if example is not None else None,
                loss_before=loss_before,
                loss_after=mean_loss(model, data, self.loss_fn) if data is not None else None,
                removal=removal)
            self.history.append(report)
        key = (id(model), tuple(tuple(p.shape) for p in model.parameters()))
        if report is not None or self._cost_key != key:  # sizes change only with the shapes
            self._cost_key = key
            self._sizes = [input_neurons(model),
                           count_macs(model, example) if example is not None else 0,
                           count_params(model)]
        self.cost.append([int(t), *self._sizes])
        return report
