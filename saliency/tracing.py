"""Building the graph of units: :func:`trace` labels every channel of every tensor.

The model is traced with ``torch.fx`` and run once on an example input to learn every
tensor's shape. One pass over the nodes, in forward order, then gives every channel of every
tensor a *label*: the producer channel it is (``("conv1", 3)``), or none. A producer's output
channels get fresh labels; a per-channel op (BatchNorm, activations, pooling, dropout,
identity, scalar arithmetic, a depthwise convolution) keeps its input's labels; a
concatenation along channels concatenates them; a residual add or subtraction of two tensors
of the same shape *couples* the labels at each position (union-find), and so does an
elementwise product of two such tensors (a gated FFN's ``act(gate(x)) * up(x)``: the group is
then held at the product). A consumer (Linear,
convolution) reads the labels of its input. Anything else that receives labeled channels is
refused, naming the node: the labels reaching it are marked unsupported.

Token-shaped tensors: a Linear applied to ``(batch, ..., channels)`` produces channels in the
last dimension; elementwise ops, dropout, scalar arithmetic, joins, products, concatenations
along the last dimension, and reshapes or permutes that keep the batch dimension first and the
channels whole and last carry them, into the Linear layers that consume them. A normalization
over the channels (LayerNorm, RMSNorm, GroupNorm) mixes them: the channels reaching it are not
prunable (with that reason), and its output carries no units.

After the pass, coupled producers form a :class:`~saliency.graph.Group`; its channels are the
classes of coupled producer channels, numbered member by member in forward order (so a
group's channel ``i`` is its first member's channel ``i``); its region is the set of nodes
that carry any of them. A group is prunable unless its channels reach the model's output, an
excluded layer, an input that is not a unit (the model's input added to a unit), or an
unsupported node.

Reference: U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU
2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 1.2.3 (units) and Sec. 1.2.4 (the
replacement these groups generalize).
"""

from __future__ import annotations

import inspect
import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .attention import KNOWN_LAYERS, check_transformer_layers, find_heads, is_attention
from .graph import (ChannelOp, Edge, Group, GroupConsumer, Producer, RegionNode, UnitGraph,
                    Unsupported, UnsupportedArchitecture, clause, default_example_input,
                    symbolic_trace)
from .layers import (CHANNEL_MODULES, DROPOUT_FUNCTIONS, ELEMENTWISE_FUNCTIONS,
                     ELEMENTWISE_METHODS, POOL_FUNCTIONS, PRODUCERS, avg_pool_scale,
                     conv_kind, eval_mode, is_channel_norm)

__all__ = ["trace", "ON_UNSUPPORTED"]

#: what :func:`trace` does with nodes it cannot represent
ON_UNSUPPORTED = ("raise", "exclude")

_META_METHODS = {"size", "dim"}
_SCALAR_OPS = {operator.add, operator.sub, operator.mul, operator.truediv,
               torch.add, torch.sub, torch.mul, torch.div}
_JOIN_FUNCTIONS = {operator.add: 1.0, operator.iadd: 1.0, torch.add: 1.0,
                   operator.sub: -1.0, operator.isub: -1.0, torch.sub: -1.0}
_JOIN_METHODS = {"add": 1.0, "sub": -1.0}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_PRODUCT_FUNCTIONS = {operator.mul, torch.mul}
_PRODUCT_METHODS = {"mul"}
_LAYOUT_METHODS = {"view", "reshape", "flatten", "permute", "transpose"}
_LAYOUT_FUNCTIONS = {torch.reshape, torch.permute, torch.transpose, torch.flatten}
_MIXING_FUNCTIONS = {f for f in (F.layer_norm, getattr(F, "rms_norm", None), F.group_norm,
                                 F.local_response_norm) if f is not None}
_AVG_POOL_FUNCS = {F.avg_pool1d: 3, F.avg_pool2d: 4}
_INPLACE_FUNCTIONS = {torch.relu_, F.relu_}
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override")


def trace(model: nn.Module, example_input: torch.Tensor | None = None, *,
          exclude: Iterable[str] = (), on_unsupported: str = "raise",
          route: str = "auto") -> UnitGraph:
    """Build the graph of units of ``model``.

    Every output channel of an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` is a unit.
    Channels coupled by residual adds form one group with every layer that consumes them; a
    depthwise convolution passes each channel through (its weight row goes with the
    channel); a grouped convolution's channels are units that must be removed in equal
    numbers from each of its groups; a concatenation along channels maps each input's
    channels to an offset range of its consumers' inputs. Producers whose channels reach the
    model's output are not prunable.

    Args:
        model: any ``nn.Module`` that ``torch.fx.symbolic_trace`` or ``torch.export`` can
            trace.
        example_input: a batch (e.g. of one sample) used to learn tensor
            shapes. Optional for models whose first layer is a Linear.
        exclude: producer names to leave out: their groups are not prunable.
        on_unsupported: ``"raise"`` (default): raise :class:`UnsupportedArchitecture` listing
            every node the graph cannot represent exactly; ``"exclude"``: leave the
            producers whose channels reach such a node out of the prunable groups and list
            them in :attr:`UnitGraph.unsupported`.
        route: how the graph is built: ``"auto"`` (default) traces with ``torch.fx`` and,
            when that fails, with ``torch.export`` (:mod:`saliency.export`: the models of
            the ``transformers`` package, forwards that branch on sizes); ``"fx"`` or
            ``"export"`` only that way. Both give the same units, groups and consumers on
            models both can trace.

    Returns:
        A :class:`~saliency.graph.UnitGraph`.

    Raises:
        UnsupportedArchitecture: (with ``on_unsupported="raise"``) for elementwise products
            of two tensors, attention, reshapes other than flatten, channel mixing, shared
            (reused) layers, a Linear over positions, and anything else whose channel map is
            not one-to-one, naming every such node and the producers that reach it; and in
            every case when ``torch.fx`` cannot trace the model.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> g = trace(net)
        >>> g.prunable, g.producers["0"].edges[0].consumer
        (['0'], '2')
    """
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported must be one of {ON_UNSUPPORTED}, got "
                         f"{on_unsupported!r}")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if isinstance(exclude, str):
        exclude = [exclude]
    exclude = set(exclude)
    if example_input is None:
        example_input = default_example_input(model)
    key = _signature(model, example_input, exclude, on_unsupported) + (route,)
    cached = _CACHE.get(model, {}).get(key)
    if cached is not None:
        return cached
    modules = dict(model.named_modules())
    unknown = exclude - set(modules)
    if unknown:
        raise ValueError(f"exclude names unknown modules: {sorted(unknown)}")
    not_layers = sorted(n for n in exclude if type(modules[n]) not in PRODUCERS
                        and not is_attention(modules[n]))
    if not_layers:
        raise ValueError(f"exclude names modules that are not Linear or convolution layers: "
                         f"{not_layers} (exclude the layers whose units to leave alone)")
    check_transformer_layers(model, example_input)  # their FFN neurons: traced through
    gm = _traced(model, example_input, route)
    labels = _LabelPass(model, gm, exclude)
    labels.run()
    graph = _assemble(labels, gm)
    graph.heads = find_heads(model, example_input, exclude)
    for h in graph.heads.values():
        if h.kind == "linear" and not h.prunable and h.reason != "excluded by the caller" \
                and not h.reason.startswith("it is called") and h.reason != "it has a single head":
            graph.unsupported.append(Unsupported(f"attention module {h.name!r}", h.reason,
                                                 (h.name,)))
    if on_unsupported == "raise" and graph.unsupported:
        raise UnsupportedArchitecture(_refusal(graph))
    _CACHE.setdefault(model, {})[key] = graph
    return graph


def _refusal(graph: UnitGraph) -> str:
    layers = sorted({n for u in graph.unsupported for n in u.layers})
    lines = [f"{clause(u.node, u.reason)} [reached from producer"
             f"{'s' if len(u.layers) > 1 else ''} {', '.join(repr(n) for n in u.layers)}]"
             for u in graph.unsupported]
    head = (f"{len(lines)} node{'s' if len(lines) > 1 else ''} cannot be represented per "
            "channel:" if len(lines) > 1 else "")
    hint = (f"pass exclude={layers!r} (or trace(..., on_unsupported=\"exclude\")) to leave "
            "their units alone")
    return "\n".join(([head] if head else []) + lines + [hint])


# ---------------------------------------------------------------------------
# tracing and shapes


#: model -> {signature: UnitGraph}. A graph is reused while the model's structure (module
#: types, tensor shapes), the input's per-sample shape and the options are the same; any
#: surgery changes a shape and so the key.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example: torch.Tensor, exclude: set, mode: str) -> tuple:
    parts = []
    for name, mod in model.named_modules():
        tensors = tuple((k, tuple(v.shape)) for k, v in
                        list(mod._parameters.items()) + list(mod._buffers.items())
                        if v is not None)
        parts.append((name, type(mod), id(mod), tensors))
    return (tuple(parts), tuple(example.shape[1:]), example.dtype, tuple(sorted(exclude)), mode)


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced model once and records every tensor's shape on its node."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["unit_graph_shape"] = tuple(result.shape)
        return result


#: how :func:`trace` builds its graph: ``torch.fx`` symbolic tracing, falling back to
#: ``torch.export`` when it fails (``"auto"``), or only one of them
ROUTES = ("auto", "fx", "export")


def _traced(model: nn.Module, example_input: torch.Tensor, route: str = "auto"
            ) -> fx.GraphModule:
    fx_error = None
    gm = None
    if route in ("auto", "fx"):
        try:
            with eval_mode(model):  # flags such as F.dropout(training=self.training) bake
                gm = symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001
            fx_error = exc
            if route == "fx":
                raise UnsupportedArchitecture(
                    f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
    if gm is None:
        gm = _exported(model, example_input, fx_error)
    try:
        with eval_mode(model), torch.no_grad():
            _ShapeRecorder(gm).run(example_input)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()
        raise ValueError(f"the model does not run on example_input of shape "
                         f"{tuple(example_input.shape)}: {msg[0] if msg else type(exc).__name__}"
                         ) from exc
    return gm


def _exported(model: nn.Module, example_input: torch.Tensor,
              fx_error: Exception | None) -> fx.GraphModule:
    """The graph from ``torch.export`` (:func:`saliency.export.exported_graph`), exported on
    a batch of at least two samples (a batch of one would be specialised to one)."""
    from .export import exported_graph
    x = example_input
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
        x = x.expand(2, *x.shape[1:]).clone()
    try:
        return exported_graph(model, x)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()
        why = first[0] if first else type(exc).__name__
        name = type(model).__name__
        what = (f"torch.fx cannot trace {name}: {fx_error}; torch.export cannot trace it "
                f"either: {why}" if fx_error is not None
                else f"torch.export cannot trace {name}: {why}")
        raise UnsupportedArchitecture(
            f"{what} (a model whose forward takes keyword arguments or returns a structure is "
            "traced through a wrapper taking one tensor and returning one: see "
            "saliency.export)") from exc


def _shape(node: Any) -> tuple[int, ...] | None:
    return node.meta.get("unit_graph_shape") if isinstance(node, fx.Node) else None


def _describe(node: fx.Node) -> str:
    tgt = node.target
    if callable(tgt):
        tgt = getattr(tgt, "__name__", repr(tgt))
    return f"node '{node.name}' ({node.op} {tgt})"


def _tensor_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda a: found.append(a) or a)
    return found


def _tainted_modules(model: nn.Module, gm: fx.GraphModule) -> dict[str, str]:
    """Modules whose tensors are shared with another module or read directly."""
    owners: dict[int, set[int]] = {}
    names: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        names.setdefault(id(mod), []).append(name)
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if t is not None:
                owners.setdefault(id(t), set()).add(id(mod))
    tainted: dict[str, str] = {}
    by_id = {id(m): m for _, m in model.named_modules(remove_duplicate=False)}
    for mod_ids in owners.values():
        if len(mod_ids) > 1:
            all_names = sorted(n for i in mod_ids for n in names[i])
            for i in mod_ids:
                for n in names[i]:
                    tainted[n] = f"it shares a parameter or buffer with {all_names}"
    for mid, ns in names.items():
        if len(ns) > 1 and any(by_id[mid]._parameters.values()):
            for n in ns:
                tainted[n] = f"the same module is registered as {sorted(ns)}"
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            mod_name = node.target.rpartition(".")[0]
            tainted.setdefault(mod_name, f"its tensor {node.target!r} is read directly in "
                                         "forward")
    return tainted


# ---------------------------------------------------------------------------
# labels


class _Refused(Exception):
    """What a node does with labeled channels cannot be represented (the message says why)."""


@dataclass
class _Info:
    """What the pass knows of one node's tensor: the label of each channel (-1: none), and
    the columns per channel once it is flattened."""

    labels: np.ndarray
    block: int | None = None
    last: bool = False      # channels are the last dimension of a tensor of > 2 dimensions

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).any())


@dataclass
class _Event:
    """One node of a region, recorded in forward order."""

    kind: str               # member | op | join | cat | flatten
    node: fx.Node
    inputs: tuple[fx.Node | None, ...]
    out: _Info
    op: ChannelOp | None = None
    member: str | None = None
    sizes: tuple[int, ...] = ()
    coefs: tuple[float, ...] = ()


@dataclass
class _Use:
    """A consumer reading labeled channels."""

    consumer: str
    node: fx.Node           # the node it reads
    info: _Info
    groups: int = 1         # a grouped convolution's groups


class _LabelPass:
    """The forward pass over the ``torch.fx`` nodes that labels every channel (see the
    module docstring); it records the events :func:`_assemble` turns into groups."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, exclude: set[str]):
        self.model, self.gm, self.exclude = model, gm, exclude
        self.calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        self.tainted = _tainted_modules(model, gm)
        self.info: dict[fx.Node, _Info] = {}
        self.owner: list[tuple[str, int]] = []     # label -> (producer, channel)
        self.parent: list[int] = []                # union-find over labels
        self.spaces: dict[str, tuple[int, int]] = {}  # producer -> (first label, count)
        self.out_ndim: dict[str, int] = {}
        self.channel_last: dict[str, bool] = {}
        self.events: list[_Event] = []
        self.uses: list[_Use] = []
        self.problems: list[tuple[str, str, np.ndarray, str]] = []  # (node, reason, labels, kind)
        self.carriers: dict[str, list[tuple[fx.Node, np.ndarray]]] = {}  # module -> its calls
        self.partitions: dict[str, list[np.ndarray]] = {}
        self.attn_calls: set[fx.Node] = set()  # attention calls that return a tuple

    # -- union-find ------------------------------------------------------------

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # -- the pass --------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            try:
                self.visit(node)
            except _Refused as exc:
                self.refuse(node, str(exc))
                self.carry_or_drop(node)
        self.check_carriers()

    def carry_or_drop(self, node: fx.Node) -> None:
        """After refusing ``node``: what follows does not see the channels, unless ``node``
        keeps its one labeled input's channels as the last dimension of a token-shaped
        output (a class token concatenated along the tokens, a position embedding added).
        Then the refused channels are carried on, so a normalization that mixes them later
        closes their group as not prunable for that reason (the residual stream of a
        transformer) instead of the node being reported as unsupported."""
        ins = [n for n in self.inputs(node) if self.info[n].labeled]
        shape = _shape(node)
        if len(ins) == 1 and self.info[ins[0]].last and shape is not None and len(shape) > 2 \
                and shape[-1] == self.info[ins[0]].labels.size:
            self.info[node] = _Info(self.info[ins[0]].labels.copy(), None, True)
        else:
            self.unlabeled(node)

    def check_carriers(self) -> None:
        """A module with per-channel tensors may be called several times (one switch after
        every member of a residual group) only on the same channels, as coupled in the end."""
        for module, calls in self.carriers.items():
            first = calls[0][1]
            for node, labels in calls[1:]:
                if labels.shape != first.shape or not self.same(first, labels):
                    self.refuse(node, f"module {module!r} is called {len(calls)} times on "
                                "different channels (its per-channel tensors are shared)",
                                np.concatenate([first, labels]))

    def refuse(self, node: fx.Node, reason: str, labels: np.ndarray | None = None,
               kind: str = "unsupported") -> None:
        """Record that the channels ``labels`` (default: every input's) cannot be pruned:
        ``kind`` is ``"unsupported"`` (a node the graph cannot represent), ``"output"`` or
        ``"excluded"``."""
        if labels is None:
            labels = np.concatenate([self.info[n].labels for n in _tensor_nodes(
                (node.args, node.kwargs)) if n in self.info] or [np.empty(0, dtype=np.int64)])
        labels = labels[labels >= 0]
        if labels.size:
            self.problems.append((_describe(node), reason, labels, kind))

    def unlabeled(self, node: fx.Node) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.info[node] = _Info(np.full(shape[1], -1, dtype=np.int64))

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in _tensor_nodes((node.args, node.kwargs)) if n in self.info]

    def visit(self, node: fx.Node) -> None:
        if node.op == "output":
            for n in self.inputs(node):
                if self.info[n].labeled:
                    self.refuse(node, "its output is the model's output", self.info[n].labels,
                                "output")
            return
        if node.op in ("placeholder", "get_attr"):
            self.unlabeled(node)
            return
        if node.op == "call_function" and node.target is operator.getitem and \
                node.args[0] in self.attn_calls and node.args[1] == 0:
            self.attention_output(node, node.args[0])
            return
        ins = self.inputs(node)
        if not any(self.info[n].labeled for n in ins):
            if node.op == "call_module":
                self.visit_unlabeled_module(node, ins)
            else:
                self.unlabeled(node)
            return
        self.check_inplace(node)
        if node.op == "call_module":
            self.visit_module(node)
        elif node.op == "call_function":
            self.visit_function(node)
        elif node.op == "call_method":
            self.visit_method(node)
        else:  # pragma: no cover - no other node kinds take tensors
            raise _Refused("is not supported")

    # -- modules ---------------------------------------------------------------

    def attention_output(self, node: fx.Node, call: fx.Node) -> None:
        """The output of an attention module (or of a layer holding one): its channels are
        the output projection's rows, in the residual width: fresh labels that are not
        prunable (its heads are units instead, :attr:`UnitGraph.heads`)."""
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            self.attn_calls.add(node)
            return
        name = f"{call.target} (output)"
        count = shape[-1]
        start = len(self.owner)
        self.owner += [(name, i) for i in range(count)]
        self.parent += list(range(start, start + count))
        labels = np.arange(start, start + count, dtype=np.int64)
        self.spaces.setdefault(name, (start, count))
        self.out_ndim.setdefault(name, len(shape))
        self.channel_last.setdefault(name, len(shape) > 2)
        self.info[node] = _Info(labels, last=len(shape) > 2)
        self.events.append(_Event("member", node, (), self.info[node], member=name))
        self.refuse(node, "is an attention module's output: its channels (the output "
                    "projection's rows, the residual width) are not units; its heads are",
                    labels, "mixed")

    def visit_unlabeled_module(self, node: fx.Node, ins: list[fx.Node]) -> None:
        """A module that receives no units: a producer still creates its own, and a module
        with per-channel tensors records the call (it may not also carry units elsewhere)."""
        mod = self.gm.get_submodule(node.target)
        if any(is_attention(m) for m in mod.modules()):
            self.attention_output(node, node)
            return
        if type(mod) in PRODUCERS and conv_kind(mod) != "depthwise":
            self.visit_module(node)
            return
        self.unlabeled(node)
        spec = CHANNEL_MODULES.get(type(mod))
        carries = (type(mod) in PRODUCERS) or (spec is not None and spec.tensors(mod))
        if carries and ins and node in self.info:
            self.carriers.setdefault(node.target, []).append((node, self.info[node].labels))

    def visit_module(self, node: fx.Node) -> None:
        mod = self.gm.get_submodule(node.target)
        if any(is_attention(m) for m in mod.modules()):
            parent = self.model.get_submodule(node.target.rpartition(".")[0]) \
                if "." in node.target else None
            if is_attention(mod) and type(parent) in KNOWN_LAYERS:  # as the whole layer
                self.refuse(node, f"reads the channels in attention ({type(parent).__name__}: "
                            "its normalizations and every head's query, key and value mix "
                            "them), so they are not units", kind="mixed")
            elif is_attention(mod):  # the q/k/v projections' columns are not sliced
                self.refuse(node, "reads the channels in attention (the query, key and value "
                            "projections' input columns are not sliced): the channels feeding "
                            "an attention module are not units")
            else:  # a transformer layer: normalizations and attention mix them
                self.refuse(node, f"reads the channels in attention ({type(mod).__name__}: "
                            "its normalizations and every head's query, key and value mix "
                            "them), so they are not units", kind="mixed")
            self.attention_output(node, node)
            return
        if type(mod) in PRODUCERS:
            kind = conv_kind(mod)
            if kind == "depthwise":
                self.visit_depthwise(node, mod)
            else:
                self.visit_producer(node, mod, kind)
            return
        src = self.single_input(node)
        if isinstance(mod, nn.Flatten):
            self.flatten(node, src)
            return
        if is_channel_norm(mod):
            self.mixing(node, type(mod).__name__)
            return
        spec = CHANNEL_MODULES.get(type(mod))
        if spec is None:
            raise _Refused(f"{type(mod).__name__} is not a known per-channel module")
        info = self.info[src]
        if info.last and spec.ndims is not None:
            raise _Refused(f"{type(mod).__name__} acts on dimension 1 of its input, but the "
                           f"channels of this {_shape(src)} tensor are its last dimension")
        if info.last and spec.tensors(mod) and not getattr(mod, "channels_last", False):
            raise _Refused(f"{type(mod).__name__} applies its per-channel tensors along "
                           f"dimension 1, but the channels of this {_shape(src)} tensor are its "
                           "last dimension")
        if info.block is not None and (spec.tensors(mod) or _shape(node) != _shape(src)):
            raise _Refused(f"{type(mod).__name__} after a flatten is not per-channel")
        self.check_channelwise(node, src, spec.ndims, type(mod).__name__)
        if spec.tensors(mod):
            self.claim_carrier(node, node.target, info.labels)
        self.op(node, src, ChannelOp("module", node.target, keeps_constant=spec.keeps_constant(mod)))

    def mixing(self, node: fx.Node, what: str) -> None:
        """A normalization over the channels: the channels reaching it are not units (kind
        ``"mixed"``: their groups are not prunable, with this reason), its output carries
        none."""
        self.refuse(node, f"normalizes over the channels ({what} mixes them: every output "
                    "depends on every channel), so they are not units", kind="mixed")
        self.unlabeled(node)

    def single_input(self, node: fx.Node) -> fx.Node:
        first = node.args[0] if node.args else None
        if not isinstance(first, fx.Node) or _tensor_nodes((node.args[1:], node.kwargs)):
            raise _Refused("takes more than one tensor input")
        return first

    def claim_carrier(self, node: fx.Node, module: str, labels: np.ndarray) -> None:
        """A module with per-channel tensors (checked once the pass has coupled the channels,
        :meth:`check_carriers`)."""
        if module in self.tainted:
            raise _Refused(self.tainted[module])
        self.carriers.setdefault(module, []).append((node, labels))

    def same(self, a: np.ndarray, b: np.ndarray) -> bool:
        return all((x < 0 and y < 0) or (x >= 0 and y >= 0 and self.find(x) == self.find(y))
                   for x, y in zip(a.tolist(), b.tolist()))

    def visit_producer(self, node: fx.Node, mod: nn.Module, kind: str) -> None:
        """A Linear or convolution: it consumes its input's labels and creates its own."""
        name = node.target
        spec = PRODUCERS[type(mod)]
        shape = _shape(node)
        problem = self.producer_problem(name, mod, kind)
        src = node.args[0] if node.args else None
        if isinstance(src, fx.Node) and src in self.info and self.info[src].labeled:
            try:
                self.consume(node, src, mod, spec, problem)
            except _Refused as exc:
                self.refuse(node, str(exc), self.info[src].labels)
        elif _tensor_nodes((node.args[1:], node.kwargs)):
            problem = problem or "takes more than one tensor input"
        count = getattr(mod, spec.out_attr)
        start = len(self.owner)
        self.owner += [(name, i) for i in range(count)]
        self.parent += list(range(start, start + count))
        labels = np.arange(start, start + count, dtype=np.int64)
        last = isinstance(mod, nn.Linear) and shape is not None and len(shape) > 2
        if name not in self.spaces:
            self.spaces[name] = (start, count)
            self.out_ndim[name] = len(shape) if shape else 2
            self.channel_last[name] = last
        else:  # a shared layer: its second call's channels are coupled with the first's
            first = self.spaces[name][0]
            for i in range(count):
                self.union(first + i, start + i)
        self.info[node] = _Info(labels, last=last)
        self.events.append(_Event("member", node, (), self.info[node], member=name))
        if kind == "grouped":
            self.partitions[name] = list(labels.reshape(mod.groups, -1))
        if name in self.exclude:
            self.refuse(node, "excluded by the caller", labels, "excluded")
        elif problem:
            self.refuse(node, problem, labels)

    def producer_problem(self, name: str, mod: nn.Module, kind: str) -> str | None:
        if self.calls.get(name, 1) > 1:
            return f"layer {name!r} is called {self.calls[name]} times (shared weights)"
        if name in self.tainted:
            return self.tainted[name]
        why = PRODUCERS[type(mod)].check(mod)
        return f"{why} is not supported" if why else None

    def consume(self, node: fx.Node, src: fx.Node, mod: nn.Module, spec, problem) -> None:
        if problem:
            raise _Refused(problem)
        if _tensor_nodes((node.args[1:], node.kwargs)):
            raise _Refused("takes more than one tensor input")
        info, ins = self.info[src], _shape(src)
        if isinstance(mod, nn.Linear) and ins is not None and len(ins) != 2 and not info.last:
            raise _Refused(f"Linear applied to a {len(ins)}-D tensor {ins} would mix positions, "
                           "not channels (flatten it first)")
        if info.last and not isinstance(mod, nn.Linear):
            raise _Refused(f"{type(mod).__name__} reads its channels from dimension 1, but the "
                           f"channels of its input {ins} are its last dimension")
        if info.block is not None and not isinstance(mod, nn.Linear):
            raise _Refused("consumes a flattened map")
        if ins is not None and len(ins) != spec.ndim and not info.last:
            raise _Refused(f"{type(mod).__name__} gets a {len(ins)}-D input {ins}; its channels "
                           f"are dimension 1 of a {spec.ndim}-D input")
        groups = getattr(mod, "groups", 1)
        if groups > 1:
            self.partitions[f"{node.target} (input)"] = list(info.labels.reshape(groups, -1))
        self.uses.append(_Use(node.target, src, info, groups))

    def visit_depthwise(self, node: fx.Node, mod: nn.Module) -> None:
        """A depthwise convolution: channel ``c`` out from channel ``c`` in, weight row with it."""
        src = self.single_input(node)
        name = node.target
        if self.calls.get(name, 1) > 1:
            raise _Refused(f"layer {name!r} is called {self.calls[name]} times (shared weights)")
        if self.info[src].block is not None:
            raise _Refused("consumes a flattened map")
        if self.info[src].last:
            raise _Refused("reads its channels from dimension 1, but the channels of its input "
                           f"{_shape(src)} are its last dimension")
        self.check_channelwise(node, src, (PRODUCERS[type(mod)].ndim,), "depthwise convolution")
        self.claim_carrier(node, name, self.info[src].labels)
        keeps = PRODUCERS[type(mod)].fold_exact(mod)
        self.op(node, src, ChannelOp("depthwise", name, keeps_constant=keeps))

    # -- functions and methods ---------------------------------------------------

    def visit_function(self, node: fx.Node) -> None:
        tgt = node.target
        if tgt is getattr and len(node.args) > 1 and node.args[1] == "shape":
            return
        if tgt in _MIXING_FUNCTIONS:
            self.mixing(node, getattr(tgt, "__name__", "the function"))
            return
        if tgt is torch.flatten and not self.info[self.first_input(node)].last:
            src = self.first_input(node)
            self.flatten(node, src)
            return
        if tgt in _LAYOUT_FUNCTIONS:
            src = self.first_input(node)
            if tgt is torch.reshape and not self.info[src].last:
                self.flatten(node, src, "is a reshape other than flatten (B, C, ...) -> "
                             "(B, C*...)")
            else:
                self.layout(node, src)
            return
        if tgt in _CAT_FUNCTIONS:
            self.cat(node)
            return
        tensors = self.inputs(node)
        if tgt in _JOIN_FUNCTIONS and len(tensors) == 2:
            self.join(node, tensors, _JOIN_FUNCTIONS[tgt])
            return
        if tgt in _PRODUCT_FUNCTIONS and len(tensors) == 2 and _same_shape(tensors):
            self.product(node, tensors)
            return
        if tgt in _SCALAR_OPS:
            self.scalar(node, node.args[0] if node.args else None)
            return
        src = self.first_input(node)
        if tgt in ELEMENTWISE_FUNCTIONS or tgt in POOL_FUNCTIONS or tgt in _AVG_POOL_FUNCS \
                or tgt in DROPOUT_FUNCTIONS:
            self.function(node, src)
            return
        raise _Refused("is not a per-channel operation")

    def first_input(self, node: fx.Node) -> fx.Node:
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src not in self.info:
            raise _Refused("takes its arguments in an unexpected order")
        if [n for n in self.inputs(node) if n is not src]:
            raise _Refused("takes an unexpected tensor argument")
        return src

    def scalar(self, node: fx.Node, first: Any) -> None:
        labeled = [n for n in self.inputs(node) if self.info[n].labeled]
        src = labeled[0] if labeled else first
        others = [a for a in node.args if a is not src]
        if len(others) != 1 or _tensor_nodes((others, node.kwargs)) or \
                not isinstance(others[0], (int, float)):
            raise _Refused("combines the channels with another tensor (an elementwise "
                           "product of two tensors, or a sum with a tensor of another shape)")
        if node.target in (operator.truediv, torch.div, operator.sub, torch.sub) and \
                node.args[0] is not src:
            raise _Refused("has the scalar on the left")
        self.op(node, src, ChannelOp("function", node.target, tuple(others),
                                     tuple(node.kwargs.items())))

    def function(self, node: fx.Node, src: fx.Node) -> None:
        tgt = node.target
        if self.info[src].block is not None and tgt not in ELEMENTWISE_FUNCTIONS \
                and tgt not in DROPOUT_FUNCTIONS:
            raise _Refused("is not per-channel after a flatten")
        if self.info[src].last and tgt not in ELEMENTWISE_FUNCTIONS \
                and tgt not in DROPOUT_FUNCTIONS:
            raise _Refused(f"acts on dimension 1 of its input, but the channels of this "
                           f"{_shape(src)} tensor are its last dimension")
        keeps, scale = True, 1.0
        if tgt in _AVG_POOL_FUNCS:
            keeps, scale = _avg_func_keeps(tgt, node)
        ndims = POOL_FUNCTIONS.get(tgt) or _AVG_POOL_FUNCS.get(tgt)
        self.check_channelwise(node, src, (ndims,) if ndims else None,
                               getattr(tgt, "__name__", "function"))
        self.op(node, src, ChannelOp("function", tgt, tuple(node.args[1:]),
                                     tuple(node.kwargs.items()), keeps_constant=keeps,
                                     shape_only=tgt not in ELEMENTWISE_FUNCTIONS, scale=scale))

    def visit_method(self, node: fx.Node) -> None:
        meth = node.target
        if meth in _META_METHODS:
            return
        tensors = self.inputs(node)
        if meth in _JOIN_METHODS and len(tensors) == 2:
            self.join(node, tensors, _JOIN_METHODS[meth])
            return
        if meth in _PRODUCT_METHODS and len(tensors) == 2 and _same_shape(tensors):
            self.product(node, tensors)
            return
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src not in self.info:
            raise _Refused("takes its arguments in an unexpected order")
        if meth in ("permute", "transpose") or (meth in _LAYOUT_METHODS and self.info[src].last):
            if [n for n in tensors if n is not src]:
                raise _Refused("takes an unexpected tensor argument")
            self.layout(node, src)
            return
        if meth in ("view", "reshape", "flatten"):
            fixed = _fixed_size_reshape(node) if meth != "flatten" else None
            if fixed is not None:
                raise _Refused(f"reshapes to a fixed size {fixed}, which breaks when units "
                               "are removed; use x.flatten(1) or x.view(x.size(0), -1)")
            self.flatten(node, src, "is a reshape other than flatten (B, C, ...) -> (B, C*...)")
            return
        if meth == "mean" and self.info[src].last:
            self.token_mean(node, src)
            return
        if meth in ELEMENTWISE_METHODS:
            if [n for n in tensors if n is not src]:
                raise _Refused("takes an unexpected tensor argument")
            self.check_channelwise(node, src, None, meth)
            self.op(node, src, ChannelOp("method", meth, tuple(node.args[1:]),
                                         tuple(node.kwargs.items())))
            return
        raise _Refused("is not a per-channel operation")

    # -- structure -----------------------------------------------------------------

    def op(self, node: fx.Node, src: fx.Node, op: ChannelOp) -> None:
        info = self.info[src]
        out = _Info(info.labels, info.block, info.last)
        self.info[node] = out
        self.events.append(_Event("op", node, (src,), out, op=op))

    def flatten(self, node: fx.Node, src: fx.Node,
                not_flat: str = "does not flatten (B, C, ...) into (B, C*...)") -> None:
        info = self.info[src]
        block = info.block if info.block is not None else _flatten_block(node, src)
        if block is None:
            raise _Refused(not_flat)
        out = _Info(info.labels, block)
        self.info[node] = out
        self.events.append(_Event("flatten", node, (src,), out))

    def layout(self, node: fx.Node, src: fx.Node) -> None:
        """A reshape or permute that keeps every channel whole: the batch dimension stays
        first and the channels stay in dimension 1 or become (or stay) the last dimension.
        Anything else is refused, saying where the channels would go."""
        info = self.info[src]
        ins, outs = _shape(src), _shape(node)
        if ins is None or outs is None:
            raise _Refused("has a shape that was not recorded")
        if info.block is not None:
            raise _Refused("reshapes a flattened map")
        name = node.target if isinstance(node.target, str) else node.target.__name__
        cdim = len(ins) - 1 if info.last else 1
        if name in ("permute", "transpose"):
            perm = _permutation(node, len(ins))
            if perm is None:
                raise _Refused("permutes the dimensions with arguments that cannot be read")
            if perm[0] != 0:
                raise _Refused("is not a per-channel operation: it moves the batch dimension")
            new = perm.index(cdim)
            if new == len(outs) - 1 and len(outs) > 2:
                last = True
            elif new == 1:
                last = False
            else:
                raise _Refused(f"is not a per-channel operation: it moves the channels to "
                               f"dimension {new} of {outs}")
        else:  # view / reshape / flatten of a tensor whose channels are its last dimension
            if outs[0] != ins[0] or outs[-1] != ins[-1]:
                raise _Refused(f"reshapes a {ins} tensor whose channels are its last dimension "
                               f"into {outs}, which does not keep the batch dimension first "
                               "and every channel whole in the last dimension")
            fixed = _fixed_size_reshape(node, last=True)
            if fixed is not None:
                raise _Refused(f"reshapes to a fixed number of channels {fixed}, which breaks "
                               "when units are removed; use -1 or x.size(-1)")
            last = len(outs) > 2
        out = _Info(info.labels, None, last)
        self.info[node] = out
        self.events.append(_Event("op", node, (src,), out,
                                  op=ChannelOp("layout", name, shape_only=True)))

    def token_mean(self, node: fx.Node, src: fx.Node) -> None:
        """``x.mean(dim)`` of a token-shaped tensor over token dimensions only (neither the
        batch nor the channels): pooling, each channel's mean over positions."""
        ins, outs = _shape(src), _shape(node)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if ins is None or outs is None or not dims or not all(isinstance(d, int) for d in dims):
            raise _Refused("is not a per-channel operation (a mean over all dimensions)")
        dims = {d % len(ins) for d in dims}
        if 0 in dims or len(ins) - 1 in dims:
            raise _Refused("is not a per-channel operation: it averages over the batch or the "
                           "channels")
        if outs[0] != ins[0] or outs[-1] != ins[-1]:
            raise _Refused("is not a per-channel operation")
        info = self.info[src]
        out = _Info(info.labels, None, len(outs) > 2)
        self.info[node] = out
        self.events.append(_Event("op", node, (src,), out,
                                  op=ChannelOp("layout", "mean", shape_only=True)))

    def product(self, node: fx.Node, tensors: list[fx.Node]) -> None:
        """``a * b`` of two tensors of one shape whose every channel is a unit: channel ``i``
        of the product depends on channel ``i`` of each factor only, so the factors' channels
        are coupled and the group is held at the product."""
        a, b = tensors
        if node.args[:2] not in ((a, b), (b, a)) or len(node.args) > 2 or node.kwargs:
            raise _Refused("takes its arguments in an unexpected order")
        sa, sb = _shape(a), _shape(b)
        if sa != sb:
            raise _Refused(f"multiplies tensors of shapes {sa} and {sb} (broadcasting across "
                           "channels or positions)")
        ia, ib = self.info[a], self.info[b]
        if not (ia.labeled and ib.labeled) or ia.labels.shape != ib.labels.shape or \
                bool(((ia.labels < 0) != (ib.labels < 0)).any()):
            raise _Refused("multiplies the channels by a tensor that is not units (the model's "
                           "input, a parameter, or a layer outside the graph): only an "
                           "elementwise product of two layers' same-index channels is "
                           "per-channel")
        if ia.block is not None or ib.block is not None:
            raise _Refused("multiplies flattened maps")
        if ia.last != ib.last:
            raise _Refused("multiplies tensors whose channels are in different dimensions")
        for x, y in zip(ia.labels.tolist(), ib.labels.tolist()):
            if x >= 0 and y >= 0:
                self.union(x, y)
        out = _Info(ia.labels, None, ia.last)
        self.info[node] = out
        self.events.append(_Event("product", node, (a, b), out))

    def join(self, node: fx.Node, tensors: list[fx.Node], sign: float) -> None:
        """``a + b``, ``a - b`` or ``a +/- alpha b`` (``torch.add``/``torch.sub`` or the
        methods, ``alpha`` a number) of two tensors of one shape: the channels are coupled."""
        a, b = tensors
        if node.args[:2] != (a, b) and node.args[:2] != (a, b)[::-1]:
            raise _Refused("takes its arguments in an unexpected order")
        sa, sb = _shape(a), _shape(b)
        if sa != sb:
            raise _Refused(f"adds tensors of shapes {sa} and {sb} (broadcasting across "
                           "channels or positions)")
        ia, ib = self.info[a], self.info[b]
        if not ia.labeled:  # the other tensor's layout: channels where its channels are
            ia = _Info(np.full(ib.labels.size, -1, dtype=np.int64), ib.block, ib.last)
        if not ib.labeled:
            ib = _Info(np.full(ia.labels.size, -1, dtype=np.int64), ia.block, ia.last)
        if ia.last != ib.last:
            raise _Refused("adds tensors whose channels are in different dimensions")
        if ia.block != ib.block:
            raise _Refused("adds a flattened map to another tensor")
        alpha = node.kwargs.get("alpha", 1.0)  # torch.add/sub(a, b, alpha=), a.add/sub(b, alpha=)
        if len(node.args) > 2:
            raise _Refused("takes its arguments in an unexpected order")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise _Refused("takes an alpha that is not a number")
        if node.args[0] is not a:
            a, b, ia, ib = b, a, ib, ia
        lone = (ia.labels < 0) != (ib.labels < 0)
        if lone.any():
            self.refuse(node, "adds the channels to channels that are not units (the model's "
                        "input, or a layer outside the graph)",
                        np.concatenate([ia.labels[lone], ib.labels[lone]]))
        for x, y in zip(ia.labels.tolist(), ib.labels.tolist()):
            if x >= 0 and y >= 0:
                self.union(x, y)
        out = _Info(np.where(ia.labels >= 0, ia.labels, ib.labels), ia.block, ia.last)
        self.info[node] = out
        self.events.append(_Event("join", node, (a, b), out, coefs=(1.0, sign * float(alpha))))

    def cat(self, node: fx.Node) -> None:
        pieces = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(pieces, (list, tuple)) or not all(
                isinstance(p, fx.Node) and p in self.info for p in pieces):
            raise _Refused("concatenates something other than tensors")
        lasts = {self.info[p].last for p in pieces if self.info[p].labeled}
        if lasts == {True}:
            self.cat_last(node, pieces, dim, out_shape)
            return
        if out_shape is None or dim not in (1, 1 - len(out_shape)):
            raise _Refused(f"concatenates along dimension {dim}, not the channels")
        blocks = {self.info[p].block for p in pieces}
        if blocks - {None, 1} or (1 in blocks and len(out_shape) != 2):
            raise _Refused("concatenates flattened maps of more than one position per channel")
        labels = np.concatenate([self.info[p].labels for p in pieces])
        out = _Info(labels, 1 if 1 in blocks else None)
        self.info[node] = out
        self.events.append(_Event("cat", node, tuple(pieces), out,
                                  sizes=tuple(int(self.info[p].labels.size) for p in pieces)))

    def cat_last(self, node: fx.Node, pieces, dim, out_shape) -> None:
        """A concatenation of token-shaped tensors along their last dimension (channels)."""
        if out_shape is None or dim not in (-1, len(out_shape) - 1):
            raise _Refused(f"concatenates along dimension {dim}, not the channels (the last "
                           "dimension)")
        labels = [self.info[p].labels if self.info[p].labeled
                  else np.full(_shape(p)[-1], -1, dtype=np.int64) for p in pieces]
        out = _Info(np.concatenate(labels), None, True)
        self.info[node] = out
        self.events.append(_Event("cat", node, tuple(pieces), out,
                                  sizes=tuple(int(lab.size) for lab in labels)))

    # -- checks ----------------------------------------------------------------------

    def check_inplace(self, node: fx.Node) -> None:
        """An in-place op changes its input for every other user: refuse that case."""
        src = node.args[0] if node.args else None
        if isinstance(src, fx.Node) and self.is_inplace(node) and (
                len(src.users) > 1 or not node.users):
            raise _Refused("modifies its input in place while the unmodified name is used "
                           "elsewhere (write the result to a new name, or use inplace=False)")

    def is_inplace(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return isinstance(node.target, str) and node.target.endswith("_") \
                and not node.target.startswith("__")
        if node.op == "call_module":
            return bool(getattr(self.gm.get_submodule(node.target), "inplace", False))
        if node.op == "call_function":
            if node.target in _INPLACE_FUNCTIONS or node.target in (operator.iadd,
                                                                    operator.isub):
                return True
            if node.kwargs.get("inplace", False):
                return True
            try:
                bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
            except (TypeError, ValueError):
                return False
            return bool(bound.arguments.get("inplace", False))
        return False

    def check_channelwise(self, node: fx.Node, src: fx.Node, ndims, what: str) -> None:
        """A per-channel op must keep batch and channel dimensions where they are."""
        ins, outs = _shape(src), _shape(node)
        if ins is None or outs is None:
            return
        if ndims is not None and len(ins) not in ndims:
            raise _Refused(f"{what} expects {' or '.join(map(str, ndims))}-D input (batch, "
                           f"channels, ...) here, got shape {ins}: it would not act per channel")
        if len(outs) != len(ins) or outs[:2] != ins[:2]:
            raise _Refused(f"{what} maps shape {ins} to {outs}; batch and channel dimensions "
                           "must stay")


def _flatten_block(node: fx.Node, src: fx.Node) -> int | None:
    """Columns per channel if ``node`` flattens ``src`` (B, C, *S) -> (B, C*prod S)."""
    ins, outs = _shape(src), _shape(node)
    if ins is None or outs is None or len(ins) < 2:
        return None
    if len(outs) == 2 and outs[0] == ins[0] and outs[1] == math.prod(ins[1:]):
        return math.prod(ins[2:])
    return None


def _fixed_size_reshape(user: fx.Node, last: bool = False) -> int | None:
    """A literal size (other than -1) in a view/reshape call, if any (``last``: in the last
    position, the channels of a token-shaped tensor, only)."""
    sizes = user.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if last:
        if user.target == "flatten" or not sizes:
            return None
        sizes = sizes[-1:]
    for v in sizes:
        if isinstance(v, int) and v != -1:
            return v
    return None


def _same_shape(tensors: list[fx.Node]) -> bool:
    return _shape(tensors[0]) is not None and _shape(tensors[0]) == _shape(tensors[1])


def _permutation(node: fx.Node, ndim: int) -> list[int] | None:
    """The permutation of a permute/transpose call: output dimension ``i`` is input dimension
    ``perm[i]``; None when the arguments are not literal integers."""
    args = list(node.args[1:])
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if "dims" in node.kwargs:
        args = [node.kwargs["dims"]]
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        if len(dims) != ndim or not all(isinstance(d, int) for d in dims):
            return None
        return [d % ndim for d in dims]
    pair = args + [node.kwargs[k] for k in ("dim0", "dim1") if k in node.kwargs]
    if len(pair) != 2 or not all(isinstance(d, int) for d in pair):
        return None
    i, j = pair[0] % ndim, pair[1] % ndim
    perm = list(range(ndim))
    perm[i], perm[j] = perm[j], perm[i]
    return perm


def _avg_func_keeps(tgt, node: fx.Node) -> tuple[bool, float]:
    """(keeps a constant map constant, scale of the constant) of F.avg_pool1d/2d."""
    args = dict(zip(_AVG_ARGS, node.args[1:]))
    args.update(node.kwargs)
    pad = args.get("padding", 0)
    pads = pad if isinstance(pad, (tuple, list)) else (pad,)
    keeps = not (args.get("count_include_pad", True) and any(p > 0 for p in pads))
    dims = 2 if tgt is F.avg_pool2d else 1
    return keeps, avg_pool_scale(args.get("kernel_size", 1), args.get("divisor_override"), dims)


# ---------------------------------------------------------------------------
# groups


@dataclass
class _Groups:
    """Producers and labels sorted into groups after the pass."""

    of_producer: dict[str, str] = field(default_factory=dict)     # producer -> group name
    members: dict[str, list[str]] = field(default_factory=dict)   # group -> producers
    channel: dict[int, tuple[str, int]] = field(default_factory=dict)  # root -> (group, chan)
    size: dict[str, int] = field(default_factory=dict)


def _group_producers(lp: _LabelPass) -> _Groups:
    """Producers coupled through any channel share a group, named after its first member."""
    comp: dict[str, str] = {p: p for p in lp.spaces}

    def root(p):
        while comp[p] != p:
            comp[p] = comp[comp[p]]
            p = comp[p]
        return p

    for lab in range(len(lp.owner)):
        a, b = lp.owner[lab][0], lp.owner[lp.find(lab)][0]
        ra, rb = root(a), root(b)
        if ra != rb:
            comp[rb] = ra
    order = list(lp.spaces)  # forward order of first calls
    out = _Groups()
    for p in order:
        r = root(p)
        gname = next(q for q in order if root(q) == r)
        out.of_producer[p] = gname
        out.members.setdefault(gname, []).append(p)
    for gname, members in out.members.items():
        n = 0
        for p in members:
            start, count = lp.spaces[p]
            for lab in range(start, start + count):
                r = lp.find(lab)
                if r not in out.channel:
                    out.channel[r] = (gname, n)
                    n += 1
        out.size[gname] = n
    return out


def _assemble(lp: _LabelPass, gm: fx.GraphModule) -> UnitGraph:
    groups = _group_producers(lp)
    names = list(groups.members)
    n = len(lp.owner)
    roots = [lp.find(lab) for lab in range(n)]
    group_id = np.array([names.index(groups.channel[r][0]) for r in roots] + [-1], dtype=np.int64)
    chan = np.array([groups.channel[r][1] for r in roots] + [-1], dtype=np.int64)

    def gchan(labels: np.ndarray, gname: str) -> torch.Tensor:
        """The group channel of each label that belongs to ``gname``, else -1."""
        idx = np.where(labels >= 0, labels, n)  # -1 -> the sentinel entry
        return torch.from_numpy(np.where(group_id[idx] == names.index(gname), chan[idx], -1))

    result: dict[str, Group] = {}
    for gname, members in groups.members.items():
        group = Group(gname, list(members), groups.size[gname],
                      {p: gchan(np.arange(*_span(lp.spaces[p])), gname) for p in members})
        _build_region(group, lp, gchan)
        _hold_product(group, lp)
        result[gname] = group
    unsupported = _close_groups(result, lp, groups)
    producers = {}
    for p, gname in groups.of_producer.items():
        group = result[gname]
        producers[p] = Producer(p, lp.spaces[p][1], gname, group.prunable, group.reason,
                                lp.out_ndim[p], channel_last=lp.channel_last[p],
                                _joined_group=gname if group.joined else "")
    for group in result.values():
        if not group.joined:
            _chain_edges(group, producers[group.members[0]], lp.model)
    grouped = {}
    for key, parts in lp.partitions.items():
        conv, side = (key[:-len(" (input)")], "input") if key.endswith(" (input)") \
            else (key, "output")
        grouped[(conv, side)] = [
            {g: c[c >= 0] for g in names if (c := gchan(part, g)).ge(0).any()}
            for part in parts]
    return UnitGraph(producers, result, unsupported, grouped=grouped, gm=gm)


def _span(space: tuple[int, int]) -> tuple[int, int]:
    return space[0], space[0] + space[1]


def _build_region(group: Group, lp: _LabelPass, gchan) -> None:
    """The nodes carrying the group's channels, its consumers and its grouped convolutions."""
    index: dict[fx.Node, int] = {}
    for ev in lp.events:
        labels = gchan(ev.out.labels, group.name)
        if not (labels >= 0).any():
            continue
        index[ev.node] = len(group.nodes)
        shape = _shape(ev.node)
        group.nodes.append(RegionNode(
            ev.node.name, ev.kind, tuple(index.get(n, -1) for n in ev.inputs), labels, ev.op,
            ev.member, ev.sizes, ev.coefs, len(shape) if shape else 2, ev.out.block,
            ev.out.last))
    for use in lp.uses:
        if use.node in index:
            group.consumers.append(GroupConsumer(use.consumer, index[use.node],
                                                 use.info.block or 1))
    for conv, parts in lp.partitions.items():
        mapped = [gchan(p, group.name) for p in parts]
        if any((m >= 0).any() for m in mapped):
            group.partitions[conv] = [m[m >= 0] for m in mapped]


def _hold_product(group: Group, lp: _LabelPass) -> None:
    """A group joined by an elementwise product is held at the product: check that it can be.

    The product must be the group's only one, hold every group channel, and be the only way
    its members' channels reach anything: every other node of the region leads to it or
    follows it, and every consumer reads it or what follows it. Otherwise the product's node
    is refused, naming what escapes it.
    """
    products = [i for i, n in enumerate(group.nodes) if n.kind == "product"]
    if not products:
        return
    labels = np.concatenate([np.arange(*_span(lp.spaces[m])) for m in group.members])
    node = group.nodes[products[0]]
    described = next(_describe(ev.node) for ev in lp.events if ev.node.name == node.name)
    if len(products) > 1:
        lp.problems.append((described, ("multiplies channels of a group that another "
                                        "elementwise product also multiplies (one product "
                                        "per group)"), labels, "unsupported"))
        return
    p = products[0]
    before, stack = set(), [p]
    while stack:
        for i in group.nodes[stack.pop()].inputs:
            if i >= 0 and i not in before:
                before.add(i)
                stack.append(i)
    after = {p}
    for j, n in enumerate(group.nodes):
        if j > p and any(i in after for i in n.inputs):
            after.add(j)
    stray = [group.nodes[j].name for j in range(len(group.nodes)) if j not in before | after]
    stray += [c.name for c in group.consumers if c.node not in after]
    covered = torch.zeros(group.size, dtype=torch.bool)
    covered[node.labels[node.labels >= 0]] = True
    if stray:
        lp.problems.append((described, (f"multiplies channels that also reach "
                                        f"{', '.join(repr(s) for s in stray)} without the "
                                        "product: a group joined by a product must reach its "
                                        "consumers through the product only"), labels,
                            "unsupported"))
    elif not bool(covered.all()):
        lp.problems.append((described, "multiplies only some of the channels of its group",
                            labels, "unsupported"))
    else:
        group.held = p


def _close_groups(groups: dict[str, Group], lp: _LabelPass, grouping: _Groups
                  ) -> list[Unsupported]:
    """Mark the groups reached by a problem non-prunable; describe each unsupported node once.

    An unsupported node reached only by excluded groups is not reported: excluding its
    producers is how it is left alone; nor is one reached only by groups whose channels a
    normalization mixes (LayerNorm, RMSNorm: the residual stream of a transformer) or that
    reach the model's output, which are not prunable anyway.
    """
    def reached(labels):
        return sorted({grouping.channel[lp.find(int(lab))][0] for lab in labels},
                      key=list(groups).index)

    for kind in ("excluded", "output", "mixed"):
        for node, reason, labels, k in lp.problems:
            if k == kind:
                for g in reached(labels):
                    if groups[g].prunable:
                        layer = lp.owner[int(labels[0])][0]
                        if kind == "excluded" and groups[g].members != [layer]:
                            reason = f"its member {layer!r} is excluded by the caller"
                        if kind == "mixed":
                            reason = clause(node, reason)
                        groups[g].prunable, groups[g].reason = False, reason
    # a group excluded, closed by a normalization that mixes its channels, or reaching the
    # model's output is not prunable whatever else its channels reach: what else they reach
    # is not reported (a tied output embedding, say)
    excluded = {g for node, reason, labels, k in lp.problems
                if k in ("excluded", "mixed", "output") for g in reached(labels)}
    found: list[Unsupported] = []
    for node, reason, labels, kind in lp.problems:
        names = reached(labels)
        if kind != "unsupported" or set(names) <= excluded:
            continue
        for g in names:
            if groups[g].prunable:
                groups[g].prunable, groups[g].reason = False, clause(node, reason)
        layers = [m for g in names for m in groups[g].members]
        same = next((i for i, u in enumerate(found) if (u.node, u.reason) == (node, reason)), None)
        if same is not None:  # one node refused for its input and its own channels
            layers = list(found[same].layers) + [m for m in layers if m not in found[same].layers]
            found[same] = Unsupported(node, reason, tuple(layers))
        else:
            found.append(Unsupported(node, reason, tuple(layers)))
    return found


def _chain_edges(group: Group, prod: Producer, model: nn.Module) -> None:
    """Per-producer paths for a group without residual joins: one edge per route from the
    member's output to a consumer, through per-channel ops, concatenations and flattens."""
    nodes = group.nodes
    users: dict[int, list[int]] = {}
    for j, node in enumerate(nodes):
        for i in sorted(set(node.inputs)):
            if i >= 0:
                users.setdefault(i, []).append(j)
    consumers: dict[int, list] = {}
    for c in group.consumers:
        consumers.setdefault(c.node, []).append(c)
    start = next(i for i, n in enumerate(nodes) if n.kind == "member")
    stack = [(start, (), 0)]
    mods: list[str] = []
    while stack:
        i, path, offset = stack.pop()
        for c in consumers.get(i, []):
            prod._edges.append(Edge(c.name, path, c.block, offset))
        for j in users.get(i, []):
            nxt = nodes[j]
            if nxt.kind == "op":
                op = nxt.op if offset == 0 else _with_offset(nxt.op, offset)
                if op.kind in ("module", "depthwise") and op.target not in mods and \
                        _has_tensors(model, op):
                    mods.append(op.target)
                stack.append((j, path + (op,), offset))
            elif nxt.kind == "cat":
                for k in (k for k, inp in enumerate(nxt.inputs) if inp == i):
                    stack.append((j, path, offset + sum(nxt.sizes[:k])))
            else:  # flatten
                stack.append((j, path, offset))
    prod.channel_modules.extend(mods)
    prod._edges.sort(key=lambda e: [c.name for c in group.consumers].index(e.consumer))


def _with_offset(op: ChannelOp, offset: int) -> ChannelOp:
    return ChannelOp(op.kind, op.target, op.args, op.kwargs, op.keeps_constant, op.shape_only,
                     op.scale, offset)


def _has_tensors(model: nn.Module, op: ChannelOp) -> bool:
    mod = model.get_submodule(op.target)
    if op.kind == "depthwise":
        return True
    return bool(CHANNEL_MODULES[type(mod)].tensors(mod))
