"""Learning widths and depths with tri-state ReLUs.

S. Srinivas and R. V. Babu, *Learning Neural Network Architectures using
Backpropagation*, BMVC 2016, https://arxiv.org/abs/1511.05497 (Srinivas &
Babu 2016) replace every hidden ReLU by a tri-state ReLU
(:class:`saliency.tristate.TriStateReLU`): per channel ``w_i x`` for ``x >= 0``
and ``w_i d x`` for ``x < 0``, with a width gate ``w_i`` per unit and one
depth gate ``d`` per layer. Training minimizes

    L + lam_b R_b + lam_m R_m

with the gates clipped to ``[0, 1]`` after each step, and:

* the *binarizing regularizer* ``R_b = sum_i w_i (1 - w_i) + sum_l d_l (1 - d_l)``,
  a downward parabola whose minima are 0 and 1 (:func:`binarizing_regularizer`);
* the *model-complexity term* ``R_m`` (:func:`complexity_term`): the first part
  limits the widths -- the fraction of the network's weights that remain,
  counted as the network will be after finalization, ``sum_i w_i`` standing
  for the number of live units of a gated layer and a layer whose depth gate
  selects the identity merged into the next one; the indicator "the layer is
  linear" is taken on the binarized depth gate and treated as a constant --
  and the second part limits the depth by encouraging linearity,
  ``sum_l (1 - d_l)``.

After training the gates are binarized (:func:`binarize_gates`) and
:func:`finalize_tristate` returns a plain network: units with ``w_i = 0``
are removed exactly (they always output 0) with the foundation's
:func:`pruners.remove_units`, layers with ``d = 1`` become the identity, and a
Linear layer whose identity activation feeds a Linear layer is merged with it
into one Linear layer (``W = W_2 W_1``, ``b = W_2 b_1 + b_2``): the outputs are
unchanged.

The formulas of ``R_m`` above are our reading of the paper's description
("first term limits complexity of the layer's width, second term limits the
network's depth encouraging linearity; the first term becomes zero when the
non-linearity is absent; the indicator function in the first term is
non-differentiable, so it is treated as a constant") with the gate function
defined above. The weight count
in ``R_m`` is divided by the full network's (``normalize=True``), so one
``lam_m`` suits networks of any size (the paper's appendix sets its strength
from the initial widths).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from saliency.graph import UnitGraph, symbolic_trace
from saliency.tracing import trace
from saliency.layers import effective_tensor
from saliency.tristate import TriStateReLU, tristate_of

from .metrics import count_params
from .surgery import remove_units

__all__ = ["TriStateReLU", "tristates", "insert_tristate", "clip_gates",
           "binarizing_regularizer", "complexity_term", "tristate_penalty", "binarize_gates",
           "finalize_tristate", "FinalizeReport"]

#: per-channel modules that are the identity at inference (may sit around an
#: identity-gated activation without blocking a merge)
_PASS = (nn.Identity, nn.Dropout, nn.AlphaDropout)


def tristates(model: nn.Module) -> dict[str, TriStateReLU]:
    """Every tri-state ReLU of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TriStateReLU)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}


def insert_tristate(model: nn.Module, example_input: torch.Tensor | None = None, *,
                    width_init: float = 1.0, depth_init: float = 0.0,
                    straight_through: bool = False,
                    layers: Iterable[str] | None = None) -> nn.Module:
    """A copy of ``model`` with each hidden ReLU replaced by a :class:`TriStateReLU`.

    For every prunable producer (Linear/Conv whose units are not the model's
    output) the ReLU on its path to its consumers is replaced by a tri-state
    ReLU with one width gate per unit. With the defaults (``w = 1, d = 0``) the
    copy computes exactly what ``model`` computes.

    When every such ReLU is an ``nn.ReLU`` module, the copy is the same class
    with those modules swapped (state-dict names ``<relu name>.width``).
    When some are functions or tensor methods (``F.relu``, ``x.relu()``), the
    copy is a :class:`torch.fx.GraphModule` whose tri-state ReLUs live in the
    ModuleDict ``tristate``, keyed by the producer's name with dots as
    underscores.

    Args:
        model: the network (left unchanged).
        example_input: a batch to trace convolutional models.
        width_init: initial width gates ``w`` of each :class:`TriStateReLU`.
        depth_init: initial depth gate ``d`` of each tri-state ReLU.
        straight_through: straight-through gates (see :class:`TriStateReLU`).
        layers: producer names to gate (default: every prunable producer with
            a ReLU on its path).

    Residual groups (layers whose outputs a residual add sums, see
    :func:`pruners.trace`) are chain-only territory for this method: by default
    they get no gate (the layers inside residual blocks, chains, do), and
    naming one of their members in ``layers`` raises ValueError naming the
    group.

    An ``nn.ReLU`` module that is also called elsewhere (one ReLU module for
    a whole block, after its first layer and after the residual add) is
    replaced at the call on the gated layer's path only, in a traced copy.

    Raises:
        ValueError: a selected layer has no ReLU on its path, several, or one
            shared with another gated layer; a member of a residual group;
            unknown layer names; no ReLU at all.
    """
    graph = trace(model, example_input)
    wanted = None if layers is None else list(layers)
    if wanted is not None:
        unknown = [n for n in wanted if n not in graph.producers]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; producers are {list(graph.producers)}")
        closed = [n for n in wanted if not graph.producers[n].prunable]
        if closed:
            raise ValueError(f"layers {closed} are not prunable (they produce the output or "
                             "were excluded)")
    plan = _relu_plan(model, graph, wanted)

    def make(name: str, units: int) -> TriStateReLU:
        p = next(model.get_submodule(name).parameters())
        return TriStateReLU(units, width_init, depth_init, straight_through).to(
            device=p.device, dtype=p.dtype)

    if all(relu != "function" for relu, _ in plan.values()):
        out = copy.deepcopy(model)
        for name, (relu, units) in plan.items():
            _set_module(out, relu, make(name, units))
        return out
    return _insert_traced(copy.deepcopy(model), plan, make)


def _relu_plan(model: nn.Module, graph: UnitGraph, wanted: list[str] | None
               ) -> dict[str, tuple[str, int]]:
    """``{producer: (its ReLU module's name or "function", units)}``, the ReLUs to replace.

    Every prunable producer in ``wanted`` (None: all, skipping those with no
    ReLU on their path) must have exactly one ReLU on its paths, a module of
    its own or a function or tensor method.
    """
    plan: dict[str, tuple[str, int]] = {}
    owner: dict[str, str] = {}
    calls: dict[str, int] = {}
    for node in (graph.gm.graph.nodes if graph.gm is not None else ()):
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for name, prod in graph.producers.items():
        if not prod.prunable or (wanted is not None and name not in wanted):
            continue
        group = graph.groups[prod.group]
        if group.joined:
            if wanted is not None:
                raise ValueError(_joined_refusal(name, group))
            continue  # residual groups get no gate (see insert_tristate)
        found = set()
        for e in prod.edges:
            for op in e.path:
                if op.kind == "module" and type(model.get_submodule(op.target)) is nn.ReLU:
                    found.add(op.target)
                elif (op.kind == "function" and op.target in _RELU_FUNCTIONS) or \
                        (op.kind == "method" and op.target in _RELU_METHODS):
                    found.add("function")
        if not found:
            if wanted is not None:
                raise ValueError(f"layer {name!r} has no ReLU on its path")
            continue
        if len(found) > 1:
            raise ValueError(f"layer {name!r} passes through several ReLUs on its paths")
        relu = found.pop()
        if relu != "function":
            if relu in owner:
                raise ValueError(f"ReLU module {relu!r} is shared by layers {owner[relu]!r} "
                                 f"and {name!r}; give each layer its own nn.ReLU")
            owner[relu] = name
        plan[name] = (relu, prod.num_units)
    if not plan:
        raise ValueError("no hidden ReLU to replace")
    for relu, name in owner.items():
        if calls.get(relu, 1) > 1:  # also called elsewhere: replace this call, not the module
            plan[name] = ("function", plan[name][1])
    return plan


def _joined_refusal(name: str, group) -> str:
    return (f"layer {name!r} belongs to the residual group {group.name!r} "
            f"({', '.join(group.members)}): its channels are summed with the other members' and "
            "go through the activations after the residual adds, which other layers' channels "
            "share; tri-state ReLUs gate the units of chains only")


def _insert_traced(model: nn.Module, plan, make) -> fx.GraphModule:
    """Replace the ReLU node after each planned producer in a traced copy."""
    gm = model if isinstance(model, fx.GraphModule) else symbolic_trace(model)
    if hasattr(gm, "tristate"):
        raise ValueError("the model has an attribute 'tristate' already")
    gm.add_submodule("tristate", nn.ModuleDict())
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}

    def is_relu(n: fx.Node) -> bool:
        return ((n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.ReLU)
                or (n.op == "call_function" and n.target in _RELU_FUNCTIONS)
                or (n.op == "call_method" and n.target in _RELU_METHODS))

    for name, (_, units) in plan.items():
        node, hit = nodes[name], None
        while hit is None:  # the per-channel chain: one user at a time (the graph checked it)
            users = list(node.users)
            if len(users) != 1:
                raise ValueError(f"layer {name!r}: its ReLU is not on a single path")
            node = users[0]
            if is_relu(node):
                hit = node
        key = name.replace(".", "_")
        gm.tristate[key] = make(name, units)
        with gm.graph.inserting_after(hit):
            new = gm.graph.call_module(f"tristate.{key}", (hit.args[0],))
        hit.replace_all_uses_with(new)
        gm.graph.erase_node(hit)
    gm.graph.lint()
    gm.recompile()
    return gm


def clip_gates(model: nn.Module) -> None:
    """Clip every gate of every tri-state ReLU to ``[0, 1]`` in place (after ``optimizer.step()``)."""
    with torch.no_grad():
        for m in tristates(model).values():
            for t in (m._parameters.get("width_orig", m.width), m.depth):
                t.clamp_(0.0, 1.0)


def _require(model: nn.Module) -> dict[str, TriStateReLU]:
    found = tristates(model)
    if not found:
        raise ValueError("the model has no tri-state ReLU (pruners.tristate.insert_tristate)")
    return found


def binarizing_regularizer(model: nn.Module) -> torch.Tensor:
    """``R_b = sum_i w_i (1 - w_i) + sum_l d_l (1 - d_l)`` over every tri-state ReLU.

    Zero exactly when every gate is 0 or 1; largest at 1/2 (Srinivas & Babu
    2016, the binarizing regularizer).
    """
    total = None
    for m in _require(model).values():
        w, d = effective_tensor(m, "width"), m.depth
        term = (w * (1 - w)).sum() + (d * (1 - d)).sum()
        total = term if total is None else total + term
    return total


def _is_linear(gate: TriStateReLU) -> bool:
    """The binarized depth gate selects the identity (the indicator of ``R_m``)."""
    return bool(gate.depth.detach().reshape(()) >= 0.5)


def _weights(model: nn.Module, example_input: torch.Tensor | None):
    """The weights of the network once its linear layers are merged, as soft counts.

    Returns ``(terms, full, gates)``: one term ``in x out x kernel`` per
    producer that survives merging (a producer whose depth gate selects the
    identity is merged into its consumers, which take its inputs), with the
    widths of gated non-linear layers replaced by ``sum_i w_i``; ``full`` is
    the same count with every gate 1 and every layer non-linear.
    """
    graph = trace(model, example_input)
    gated: dict[str, TriStateReLU] = {}
    for name, prod in graph.producers.items():
        if prod.prunable:
            hit = _gate_of(model, graph, name)
            if hit is not None:
                gated[name] = hit[1]
    feeders: dict[str, list[tuple[str, int]]] = {}
    for name, prod in graph.producers.items():
        group = graph.groups[prod.group]
        if group.joined:  # the summed stream: each reader reads its channels once
            if name == group.name:
                for c in group.consumers:
                    n = int((group.nodes[c.node].labels >= 0).sum())
                    feeders.setdefault(c.name, []).append((name, n * c.block))
            continue
        for e in prod.edges:
            feeders.setdefault(e.consumer, []).append((name, e.block))

    def soft(name: str):
        if name in gated:
            return effective_tensor(gated[name], "width").sum()
        return graph.producers[name].num_units

    def width_in(name: str, full: bool, seen: frozenset):
        mod = model.get_submodule(name)
        if name not in feeders:  # fed by the model's input
            return mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
        total = 0
        for f, block in feeders[name]:
            if not full and f in gated and _is_linear(gated[f]) and f not in seen:
                total = total + width_in(f, full, seen | {f})  # merged: its inputs
            elif graph.groups[graph.producers[f].group].joined:
                total = total + block  # the columns of the stream's channels it reads
            else:
                n = graph.producers[f].num_units if full else soft(f)
                total = total + n * block
        return total

    terms, fulls = [], []
    for name, prod in graph.producers.items():
        mod = model.get_submodule(name)
        kernel = 1
        for k in getattr(mod, "kernel_size", ()):
            kernel *= k
        fulls.append(width_in(name, True, frozenset()) * prod.num_units * kernel)
        if name in gated and _is_linear(gated[name]):
            continue
        out = soft(name) if name in gated else prod.num_units
        terms.append(width_in(name, False, frozenset({name})) * out * kernel)
    return terms, sum(fulls), gated


def _gate_of(model: nn.Module, graph, name: str):
    """The tri-state ReLU on ``name``'s channels (None if none); refused on a residual group."""
    hit = tristate_of(model, graph, name)
    group = graph.group_of(name)
    if hit is not None and group.joined:
        raise ValueError(f"tri-state ReLU {hit[0]!r}: " + _joined_refusal(name, group))
    return hit


def complexity_term(model: nn.Module, example_input: torch.Tensor | None = None, *,
                    normalize: bool = True, depth_weight: float = 1.0) -> torch.Tensor:
    """The model-complexity term ``R_m`` (Srinivas & Babu 2016).

    ``R_m = W / W_full + depth_weight sum_l (1 - d_l)`` (``W`` alone without
    ``normalize``): ``W`` counts the weights of the network as it would be
    after finalization -- each layer's inputs times outputs (times the kernel
    area of a convolution), a gated layer's width being ``sum_i w_i``, and a
    layer whose binarized depth gate selects the identity merged into the
    layers it feeds (they take its inputs, and its width costs nothing);
    ``W_full`` is that count for the network with every gate 1 and every
    layer non-linear, so ``W / W_full`` is the fraction of the weights that
    remain. The first part limits the widths, the second the depth (it
    encourages linearity). The indicator "layer ``l`` is linear" reads the
    binarized depth gate and carries no gradient. ``depth_weight`` scales
    the second part (1: the paper's one strength for both; smaller lets the
    widths shrink before the layers turn linear).
    """
    if isinstance(depth_weight, bool) or not isinstance(depth_weight, (int, float)) \
            or depth_weight < 0:
        raise ValueError(f"depth_weight must be a number >= 0, got {depth_weight!r}")
    _require(model)
    terms, full, gated = _weights(model, example_input)
    if not gated:
        raise ValueError("the model has no tri-state ReLU on a prunable layer "
                         "(pruners.tristate.insert_tristate)")
    width = sum(terms[1:], terms[0]) if terms else 0.0
    if normalize:
        width = width / full
    depth = sum((1 - g.depth).sum() for g in gated.values())
    return width + depth_weight * depth


def tristate_penalty(model: nn.Module, lam_b: float, lam_m: float,
                     example_input: torch.Tensor | None = None, *,
                     normalize: bool = True, depth_weight: float = 1.0) -> torch.Tensor:
    """``lam_b R_b + lam_m R_m``: add it to the training loss.

    ``normalize`` and ``depth_weight`` are passed to :func:`complexity_term`.
    """
    for name, v in (("lam_b", lam_b), ("lam_m", lam_m)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    pen = lam_b * binarizing_regularizer(model)
    if lam_m:
        pen = pen + lam_m * complexity_term(model, example_input, normalize=normalize,
                                            depth_weight=depth_weight)
    return pen


def binarize_gates(model: nn.Module, threshold: float = 0.5) -> None:
    """Set every gate to 1 where it is ``>= threshold``, else 0 (in place)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    _require(model)
    with torch.no_grad():
        for m in tristates(model).values():
            for t in (m._parameters.get("width_orig", m.width), m.depth):
                t.copy_((t >= threshold).to(t.dtype))


@dataclass
class FinalizeReport:
    """What :func:`finalize_tristate` did.

    Attributes:
        removed: units removed per layer (width gate 0).
        widths: units left per gated layer.
        depth: the binarized depth gate of each gated layer (1 = identity).
        merged: ``(first, second)`` Linear pairs merged into one layer (the
            merged layer takes the first one's name).
        params_before, params_after: parameter counts (gates included before).
    """

    removed: dict[str, int] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    merged: list[tuple[str, str]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"removed": dict(self.removed), "widths": dict(self.widths),
                "depth": dict(self.depth), "merged": [list(p) for p in self.merged],
                "params_before": self.params_before, "params_after": self.params_after}


def finalize_tristate(model: nn.Module, example_input: torch.Tensor | None = None, *,
                      threshold: float = 0.5, merge: bool = True
                      ) -> tuple[nn.Module, FinalizeReport]:
    """A plain network from a trained one with tri-state ReLUs.

    On a copy: the gates are binarized at ``threshold``; units with ``w_i =
    0`` are removed (exact: they output 0, so ``replacement="zero"`` folds
    nothing but the path's value at 0); each tri-state ReLU becomes
    ``nn.ReLU`` (``d = 0``) or ``nn.Identity`` (``d = 1``); and, with
    ``merge``, a Linear layer whose identity activation (and nothing else
    but identities/dropout) feeds exactly one Linear layer is merged with it
    into one Linear layer. The result computes exactly what the binarized
    network computes (up to float rounding of the matrix product).

    Returns:
        ``(plain model, FinalizeReport)``. The input model is not changed.
    """
    _require(model)
    report = FinalizeReport(params_before=count_params(model))
    out = copy.deepcopy(model)
    binarize_gates(out, threshold)
    graph = trace(out, example_input)
    units: dict[str, list[int]] = {}
    gate_of: dict[str, str] = {}
    for name, prod in graph.producers.items():
        if not prod.prunable:
            continue
        hit = _gate_of(out, graph, name)
        if hit is None:
            continue
        gate_of[name] = hit[0]
        off = torch.nonzero(effective_tensor(hit[1], "width") == 0).flatten().tolist()
        if len(off) == prod.num_units:  # every unit off: keep one, zeroed below
            off = off[1:]
        if off:
            units[name] = off
    if units:
        report.removed = {n: len(v) for n, v in units.items()}
        remove_units(out, units, replacement="zero", example_input=example_input, min_units=1)
    graph = trace(out, example_input)
    with torch.no_grad():
        for name, gname in gate_of.items():
            gate = out.get_submodule(gname)
            w = effective_tensor(gate, "width")
            if bool((w == 0).any()):  # the one unit kept of an all-off layer: output 0
                prod = out.get_submodule(name)
                rows = w == 0
                prod.weight[rows] = 0
                if prod.bias is not None:
                    prod.bias[rows] = 0
            report.widths[name] = int((w != 0).sum())
            report.depth[name] = int(gate.depth.reshape(()).item())
    for gname, gate in tristates(out).items():
        _set_module(out, gname, nn.Identity() if gate.depth.reshape(()).item() == 1
                    else nn.ReLU())
    if merge:
        identity = {g for p, g in gate_of.items() if report.depth.get(p) == 1}
        while True:  # merge pairs until none is left (a chain merges step by step)
            pair = next(((a, c) for a in graph.producers
                         if (c := _mergeable(out, graph, a, identity)) is not None), None)
            if pair is None:
                break
            _merge(out, *pair)
            report.merged.append(pair)
            graph = trace(out, example_input)
    report.params_after = count_params(out)
    return out, report


def _mergeable(model: nn.Module, graph, first: str, identity: set[str]) -> str | None:
    """The Linear consumer that ``first`` (a Linear) can be merged with, or None.

    The path between them must hold only identities (or dropout) and pass
    through one of the ``identity`` activations (former tri-state ReLUs with
    ``d = 1``): pairs the model had without such a gate are left as they are.
    """
    if not isinstance(model.get_submodule(first), nn.Linear) or graph.group_of(first).joined:
        return None
    edges = graph.producers[first].edges
    if len(edges) != 1 or edges[0].block != 1:
        return None
    edge = edges[0]
    if not all(op.kind == "module" and isinstance(model.get_submodule(op.target), _PASS)
               for op in edge.path):
        return None
    if not any(op.target in identity for op in edge.path):
        return None
    second = model.get_submodule(edge.consumer)
    if not isinstance(second, nn.Linear):
        return None
    return edge.consumer


def _merge(model: nn.Module, first: str, second: str) -> None:
    """Replace ``first`` by ``second . first`` (one Linear) and ``second`` by the identity."""
    a, b = model.get_submodule(first), model.get_submodule(second)
    wa, wb = effective_tensor(a, "weight"), effective_tensor(b, "weight")
    merged = nn.Linear(a.in_features, b.out_features,
                       bias=a.bias is not None or b.bias is not None)
    merged = merged.to(device=wa.device, dtype=wa.dtype)
    with torch.no_grad():
        merged.weight.copy_(wb @ wa)
        bias = torch.zeros(b.out_features, dtype=wa.dtype, device=wa.device)
        if a.bias is not None:
            bias = bias + wb @ effective_tensor(a, "bias")
        if b.bias is not None:
            bias = bias + effective_tensor(b, "bias")
        merged.bias.copy_(bias)
    _set_module(model, first, merged)
    _set_module(model, second, nn.Identity())
