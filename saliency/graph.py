"""The graph of units: which producer channels feed which consumer inputs.

:func:`trace` follows every producer's output through the ``torch.fx`` graph of
a model, across per-channel modules, to the layers that consume its channels.
Anything it cannot represent exactly raises :class:`UnsupportedArchitecture`
naming the node; it never returns a guess.

Reference: U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS
thesis, NYU 2018, https://arxiv.org/abs/1806.06068 (Evci 2018), Sec. 1.2.3: a
unit is one output channel of a layer, ``h_i = W_i . a + b_i``,
``a_i = g(h_i)``.
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .layers import (
    CHANNEL_MODULES,
    DROPOUT_FUNCTIONS,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    POOL_FUNCTIONS,
    PRODUCERS,
    avg_pool_scale,
    eval_mode,
)

__all__ = ["UnsupportedArchitecture", "ChannelOp", "Edge", "Producer", "UnitGraph", "trace",
           "module_on_path", "as_index_tensor"]


class UnsupportedArchitecture(ValueError):
    """The model holds a pattern the graph of units cannot represent exactly.

    The message names the ``torch.fx`` node and the producer whose channels
    reach it. Pass that producer in ``exclude=`` to leave it untouched.
    """


@dataclass(frozen=True)
class ChannelOp:
    """One per-channel step on the path from a producer to a consumer.

    ``kind`` is ``"module"`` (``target`` is the module name; its
    :class:`~saliency.layers.ChannelSpec` says how constants pass through),
    ``"function"`` (``target`` is the callable) or ``"method"`` (``target`` is
    the method name). ``args``/``kwargs`` are the call's other arguments, with
    the data argument removed (it is always the first). ``keeps_constant`` is
    False when a spatially constant input does not give a constant output
    (average pooling over zero padding). ``shape_only`` functions (pooling,
    channel dropout) map a constant ``c`` to ``scale * c`` (``scale`` is 1
    but for average pooling with a ``divisor_override``).
    """

    kind: str
    target: Any
    args: tuple = ()
    kwargs: tuple = ()
    keeps_constant: bool = True
    shape_only: bool = False
    scale: float = 1.0

    def describe(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(
            self.target, "__name__", repr(self.target))
        return f"{self.kind}:{name}"


@dataclass(frozen=True)
class Edge:
    """A consumer of a producer's channels.

    Attributes:
        consumer: module name of the consuming Linear/Conv layer.
        path: per-channel ops between the producer and the consumer.
        block: consumer input columns per producer channel: 1, or H*W for a
            Linear after a Flatten of a C x H x W map (channel ``i`` owns
            columns ``i*block ... (i+1)*block - 1``).
    """

    consumer: str
    path: tuple[ChannelOp, ...]
    block: int = 1

    def columns(self, channels: torch.Tensor) -> torch.Tensor:
        """Consumer input columns (or channels) owned by the given units."""
        if self.block == 1:
            return channels
        offs = torch.arange(self.block, device=channels.device)
        return (channels[:, None] * self.block + offs[None, :]).reshape(-1)


@dataclass
class Producer:
    """A layer whose output channels are units.

    Attributes:
        name: module name (as in ``model.named_modules()``).
        num_units: number of output channels.
        edges: the consumers of its channels.
        channel_modules: names of per-channel modules with per-channel tensors
            on its paths (sliced together with its units).
        prunable: False for the layers that produce the model's output, and
            for excluded layers.
        reason: why it is not prunable.
        out_ndim: number of dimensions of its output (2 for Linear, 3 or 4 for
            convolutions).
    """

    name: str
    num_units: int
    edges: list[Edge] = field(default_factory=list)
    channel_modules: list[str] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    out_ndim: int = 2


@dataclass
class UnitGraph:
    """Result of :func:`trace`: producers by name, in forward order.

    ``producers`` maps each Linear/Conv layer name to its :class:`Producer`.
    Only producers with ``prunable=True`` have units that can be scored or
    removed. Residual connections would add coupled groups of producers that
    share one index space; the per-producer structure stays as it is.
    """

    producers: dict[str, Producer]
    example_shape: tuple[int, ...] | None = None
    gm: fx.GraphModule | None = field(default=None, repr=False, compare=False)

    @property
    def prunable(self) -> list[str]:
        """Names of producers whose units may be removed, in forward order."""
        return [n for n, p in self.producers.items() if p.prunable]

    def consumers_of(self, name: str) -> list[Edge]:
        return self.producers[name].edges

    def validate_units(self, units: Mapping[str, Iterable[int]], *, min_units: int = 1
                       ) -> dict[str, torch.Tensor]:
        """Check a ``{layer: indices}`` selection; return sorted index tensors.

        Raises ValueError naming the layer and index for an unknown or
        non-prunable layer, a non-integer, out-of-range or duplicate index, or
        a selection that leaves fewer than ``min_units`` units.
        """
        if not isinstance(units, Mapping):
            raise TypeError(f"units must map layer names to indices, got {type(units).__name__}")
        if min_units < 1:
            raise ValueError(f"min_units must be >= 1, got {min_units}")
        out: dict[str, torch.Tensor] = {}
        for name, idx in units.items():
            if name not in self.producers:
                raise ValueError(
                    f"unknown layer {name!r}: prunable layers are {self.prunable}")
            prod = self.producers[name]
            if not prod.prunable:
                raise ValueError(f"layer {name!r} is not prunable: {prod.reason}")
            t = as_index_tensor(name, idx)
            bad = t[(t < 0) | (t >= prod.num_units)]
            if bad.numel():
                raise ValueError(
                    f"layer {name!r}: index {int(bad[0])} is out of range "
                    f"(the layer has {prod.num_units} units, indices 0..{prod.num_units - 1})")
            uniq, counts = torch.unique(t, return_counts=True)
            if (counts > 1).any():
                raise ValueError(
                    f"layer {name!r}: index {int(uniq[counts > 1][0])} is given more than once")
            left = prod.num_units - uniq.numel()
            if left < min_units:
                raise ValueError(
                    f"layer {name!r}: removing {uniq.numel()} of {prod.num_units} units "
                    f"would leave {left}, fewer than min_units={min_units}")
            out[name] = uniq
        return out


def as_index_tensor(name: str, idx: Any) -> torch.Tensor:
    """The unit indices ``idx`` of layer ``name`` as a 1-D int64 tensor on the CPU.

    ``idx`` is an int, a sequence of ints (Python or NumPy integers) or an
    integer tensor; the order and any repetitions are kept. Bounds are not
    checked (:meth:`UnitGraph.validate_units` does, with the layer's size).

    Raises:
        ValueError: naming the layer and the offending entry, for a bool,
            float or complex entry or tensor, or nested (not 1-D) indices.

    Examples:
        >>> as_index_tensor("fc1", [3, 1])
        tensor([3, 1])
        >>> as_index_tensor("fc1", 2)
        tensor([2])
        >>> as_index_tensor("fc1", [1.0])
        Traceback (most recent call last):
        ...
        ValueError: layer 'fc1': index 1.0 at position 0 is not an integer
    """
    if isinstance(idx, torch.Tensor):
        t = idx.detach().cpu()
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(f"layer {name!r}: indices must be integers, got dtype {t.dtype}")
    else:
        items = [idx] if isinstance(idx, int) else idx
        try:
            items = list(items)
        except TypeError as exc:
            raise ValueError(f"layer {name!r}: indices must be integers, got {idx!r}") from exc
        for pos, v in enumerate(items):
            if isinstance(v, (list, tuple)):
                raise ValueError(f"layer {name!r}: indices must be 1-D, got a nested {v!r}")
            ok = isinstance(v, int) and not isinstance(v, bool)
            ok = ok or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0
                        and "int" in str(v.dtype))
            if not ok:
                raise ValueError(f"layer {name!r}: index {v!r} at position {pos} is not an "
                                 "integer")
        t = torch.tensor([int(v) for v in items], dtype=torch.long)
    if t.dim() > 1:
        raise ValueError(f"layer {name!r}: indices must be 1-D, got shape {tuple(t.shape)}")
    return t.reshape(-1).long()


# ---------------------------------------------------------------------------
# tracing

_META_METHODS = {"size", "dim"}
_SCALAR_OPS = {operator.add, operator.sub, operator.mul, operator.truediv,
               torch.add, torch.sub, torch.mul, torch.div}
_AVG_POOL_FUNCS = {F.avg_pool1d: 3, F.avg_pool2d: 4}


def _is_node(x: Any) -> bool:
    return isinstance(x, fx.Node)


def _has_node(args: Any) -> bool:
    found = False

    def visit(a):
        nonlocal found
        if isinstance(a, fx.Node):
            found = True
        return a

    fx.node.map_arg(args, visit)
    return found


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    return node.meta.get("unit_graph_shape")


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced model once and records every tensor's shape on its node."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["unit_graph_shape"] = tuple(result.shape)
        return result


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


@dataclass
class _Ctx:
    gm: fx.GraphModule
    calls: dict[str, int]
    tainted: dict[str, str]


def _describe(node: fx.Node) -> str:
    tgt = node.target
    if callable(tgt):
        tgt = getattr(tgt, "__name__", repr(tgt))
    return f"node '{node.name}' ({node.op} {tgt})"


def _flatten_block(node: fx.Node, src: fx.Node) -> int | None:
    """Columns per channel if ``node`` flattens ``src`` (B, C, *S) -> (B, C*prod S)."""
    ins, outs = _shape(src), _shape(node)
    if ins is None or outs is None or len(ins) < 2:
        return None
    if len(outs) == 2 and outs[0] == ins[0] and outs[1] == math.prod(ins[1:]):
        return math.prod(ins[2:])
    return None


#: model -> {signature: UnitGraph}. A graph is reused while the model's
#: structure (module types, tensor shapes), the input's per-sample shape and
#: ``exclude`` are the same; any surgery changes a shape and so the key.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example: torch.Tensor, exclude: set) -> tuple:
    parts = []
    for name, mod in model.named_modules():
        tensors = tuple((k, tuple(v.shape)) for k, v in
                        list(mod._parameters.items()) + list(mod._buffers.items())
                        if v is not None)
        parts.append((name, type(mod), id(mod), tensors))
    return (tuple(parts), tuple(example.shape[1:]), example.dtype, tuple(sorted(exclude)))


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A one-sample input for a model whose first layer is a Linear.

    Convolutional models need an explicit ``example_input`` (the spatial size
    cannot be inferred from the weights).
    """
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            return torch.zeros(1, mod.in_features, dtype=mod.weight.dtype,
                               device=mod.weight.device)
        if isinstance(mod, tuple(PRODUCERS)):
            break
    raise ValueError(
        "cannot infer an input shape for this model: pass example_input= "
        "(a batch of one input) or data=")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every registered layer type kept as one call.

    Layer types registered outside ``torch.nn`` (switch layers, say) would
    otherwise be traced through, and their parameters read directly.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in CHANNEL_MODULES or type(m) in PRODUCERS or \
            super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` keeping registered layer types as leaf calls."""
    graph = _Tracer().trace(model)
    name = model.__class__.__name__ if isinstance(model, nn.Module) else model.__name__
    return fx.GraphModule(model, graph, name)


def trace(model: nn.Module, example_input: torch.Tensor | None = None, *,
          exclude: Iterable[str] = ()) -> UnitGraph:
    """Build the graph of units of ``model``.

    Every output channel of an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` is
    a unit. For each such producer the graph records the per-channel modules
    between it and its consumers (BatchNorm, activations also as functions or
    tensor methods, dropout, pooling, identity) and every consumer with its
    channel map: Linear input columns, Conv input channels, or blocks of H*W
    Linear columns after a flatten of a C x H x W map. Producers that reach the
    model's output are not prunable.

    Args:
        model: any ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace.
        example_input: a batch (e.g. of one sample) used to learn tensor
            shapes. Optional for models whose first layer is a Linear.
        exclude: producer names to leave out: their units are not prunable
            and patterns downstream of them are not checked.

    Returns:
        A :class:`UnitGraph`.

    Raises:
        UnsupportedArchitecture: for residual adds, concatenation, grouped or
            depthwise convolution, reshapes other than flatten, attention,
            shared (reused) layers, or anything else whose channel map is not
            one-to-one, naming the node and the producer.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> g = trace(net)
        >>> g.prunable, g.producers["0"].edges[0].consumer
        (['0'], '2')
    """
    exclude = set(exclude)
    if example_input is None:
        example_input = default_example_input(model)
    key = _signature(model, example_input, exclude)
    cached = _CACHE.get(model, {}).get(key)
    if cached is not None:
        return cached
    names = {m: n for n, m in model.named_modules()}
    unknown = exclude - set(names.values())
    if unknown:
        raise ValueError(f"exclude names unknown modules: {sorted(unknown)}")
    try:
        with eval_mode(model):  # flags such as F.dropout(training=self.training) bake as eval
            gm = symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedArchitecture(
            f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
    try:
        with eval_mode(model), torch.no_grad():
            _ShapeRecorder(gm).run(example_input)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()
        raise ValueError(f"the model does not run on example_input of shape "
                         f"{tuple(example_input.shape)}: {msg[0] if msg else type(exc).__name__}"
                         ) from exc

    producers: dict[str, Producer] = {}
    seen_calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            seen_calls[node.target] = seen_calls.get(node.target, 0) + 1
    ctx = _Ctx(gm, seen_calls, _tainted_modules(model, gm))

    owner: dict[str, str] = {}  # channel module / consumer -> producer
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        spec = PRODUCERS.get(type(mod))
        if spec is None:
            continue
        name = node.target
        shape = _shape(node)
        prod = Producer(name, getattr(mod, spec.out_attr), out_ndim=len(shape) if shape else 2)
        producers[name] = prod
        if name in exclude:
            prod.prunable, prod.reason = False, "excluded by the caller"
            continue
        try:
            if seen_calls[name] > 1:
                raise UnsupportedArchitecture(
                    f"{_describe(node)}: layer {name!r} is called {seen_calls[name]} times "
                    "(shared weights)")
            if name in ctx.tainted:
                raise UnsupportedArchitecture(f"{_describe(node)}: {ctx.tainted[name]}")
            why = spec.check(mod)
            if why:
                raise UnsupportedArchitecture(f"{_describe(node)}: {why}")
            if shape is not None and len(shape) != spec.ndim:
                raise UnsupportedArchitecture(
                    f"{_describe(node)}: {type(mod).__name__} output of shape {shape}; expected "
                    f"{spec.ndim} dimensions (batch, channels, ...)")
            _walk(ctx, node, prod, owner)
        except UnsupportedArchitecture as exc:
            raise UnsupportedArchitecture(
                f"{exc} [reached from producer {name!r}; pass exclude=[{name!r}] to leave "
                "its units alone]") from None
    graph = UnitGraph(producers, tuple(example_input.shape), gm)
    _CACHE.setdefault(model, {})[key] = graph
    return graph


def _walk(ctx: _Ctx, start: fx.Node, prod: Producer, owner: dict[str, str]) -> None:
    """Depth-first walk from a producer's output to its consumers."""
    gm = ctx.gm
    stack: list[tuple[fx.Node, tuple[ChannelOp, ...], int | None]] = [(start, (), None)]
    while stack:
        node, path, block = stack.pop()
        for user in list(node.users):
            _check_inplace(ctx, user, node)
            step = _classify(ctx, user, node, block)
            kind = step[0]
            if kind == "meta":
                continue
            if kind == "output":
                prod.prunable = False
                prod.reason = "its output is the model's output"
                continue
            if kind == "consumer":
                _claim(owner, user.target, prod.name, user)
                prod.edges.append(Edge(user.target, path, block or 1))
                continue
            if kind == "flatten":
                stack.append((user, path, step[1]))
                continue
            op = step[1]
            if op.kind == "module":
                spec = CHANNEL_MODULES[type(gm.get_submodule(op.target))]
                if spec.tensors(gm.get_submodule(op.target)):
                    if ctx.calls.get(op.target, 1) > 1:
                        raise UnsupportedArchitecture(
                            f"{_describe(user)}: module {op.target!r} is called "
                            f"{ctx.calls[op.target]} times (its per-channel tensors are shared)")
                    if op.target in ctx.tainted:
                        raise UnsupportedArchitecture(
                            f"{_describe(user)}: {ctx.tainted[op.target]}")
                    _claim(owner, op.target, prod.name, user)
                    if op.target not in prod.channel_modules:
                        prod.channel_modules.append(op.target)
            stack.append((user, path + (op,), block))


def _claim(owner: dict[str, str], module: str, producer: str, node: fx.Node) -> None:
    prev = owner.setdefault(module, producer)
    if prev != producer:
        raise UnsupportedArchitecture(
            f"{_describe(node)}: module {module!r} receives channels from both {prev!r} "
            f"and {producer!r}")


_INPLACE_FUNCTIONS = {torch.relu_, F.relu_}


def _is_inplace(ctx: _Ctx, node: fx.Node) -> bool:
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_") \
            and not node.target.startswith("__")
    if node.op == "call_module":
        return bool(getattr(ctx.gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        if node.target in _INPLACE_FUNCTIONS:
            return True
        if node.kwargs.get("inplace", False):
            return True
        try:
            import inspect

            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return False
        return bool(bound.arguments.get("inplace", False))
    return False


def _check_inplace(ctx: _Ctx, user: fx.Node, src: fx.Node) -> None:
    """An in-place op changes its input for every other user: refuse that case."""
    if _is_inplace(ctx, user) and (len(src.users) > 1 or not user.users):
        raise UnsupportedArchitecture(
            f"{_describe(user)} modifies its input in place while the unmodified name is used "
            "elsewhere (write the result to a new name, or use inplace=False)")


def _check_channelwise(user: fx.Node, src: fx.Node, ndims, what: str) -> None:
    """A per-channel op must keep batch and channel dimensions where they are."""
    ins, outs = _shape(src), _shape(user)
    if ins is None or outs is None:
        return
    if ndims is not None and len(ins) not in ndims:
        raise UnsupportedArchitecture(
            f"{_describe(user)}: {what} expects {' or '.join(map(str, ndims))}-D input "
            f"(batch, channels, ...) here, got shape {ins}: it would not act per channel")
    if len(outs) != len(ins) or outs[:2] != ins[:2]:
        raise UnsupportedArchitecture(
            f"{_describe(user)}: {what} maps shape {ins} to {outs}; batch and channel "
            "dimensions must stay")


def _fixed_size_reshape(user: fx.Node) -> int | None:
    """A literal size (other than -1) in a view/reshape call, if any."""
    sizes = user.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    for v in sizes:
        if isinstance(v, int) and v != -1:
            return v
    return None


def _classify(ctx: _Ctx, user: fx.Node, src: fx.Node, block: int | None):
    """Decide what ``user`` does with the channels of ``src``."""
    gm, calls = ctx.gm, ctx.calls
    flat = block is not None
    if user.op == "output":
        return ("output",)
    first = user.args[0] if user.args else None
    if user.op == "call_module":
        mod = gm.get_submodule(user.target)
        if first is not src or _has_node((user.args[1:], user.kwargs)):
            raise UnsupportedArchitecture(f"{_describe(user)} takes more than one tensor input")
        spec = PRODUCERS.get(type(mod))
        if spec is not None:
            why = spec.check(mod)
            if why:
                raise UnsupportedArchitecture(f"{_describe(user)}: {why}")
            ins = _shape(src)
            if isinstance(mod, nn.Linear) and ins is not None and len(ins) != 2:
                raise UnsupportedArchitecture(
                    f"{_describe(user)}: Linear applied to a {len(ins)}-D tensor {ins} would mix "
                    "positions, not channels (flatten it first)")
            if flat and not isinstance(mod, nn.Linear):
                raise UnsupportedArchitecture(f"{_describe(user)} consumes a flattened map")
            if calls.get(user.target, 1) > 1:
                raise UnsupportedArchitecture(
                    f"{_describe(user)}: layer {user.target!r} is called "
                    f"{calls[user.target]} times (shared weights)")
            if user.target in ctx.tainted:
                raise UnsupportedArchitecture(f"{_describe(user)}: {ctx.tainted[user.target]}")
            if ins is not None and len(ins) != spec.ndim:
                raise UnsupportedArchitecture(
                    f"{_describe(user)}: {type(mod).__name__} gets a {len(ins)}-D input {ins}; "
                    f"its channels are dimension 1 of a {spec.ndim}-D input")
            return ("consumer",)
        if isinstance(mod, nn.Flatten):
            if flat:
                return ("flatten", block)
            b = _flatten_block(user, src)
            if b is None:
                raise UnsupportedArchitecture(f"{_describe(user)} does not flatten (B, C, ...)"
                                              " into (B, C*...)")
            return ("flatten", b)
        cspec = CHANNEL_MODULES.get(type(mod))
        if cspec is None:
            raise UnsupportedArchitecture(
                f"{_describe(user)}: {type(mod).__name__} is not a known per-channel module")
        if flat and (cspec.tensors(mod) or _shape(user) != _shape(src)):
            raise UnsupportedArchitecture(
                f"{_describe(user)}: {type(mod).__name__} after a flatten is not per-channel")
        _check_channelwise(user, src, cspec.ndims, type(mod).__name__)
        return ("op", ChannelOp("module", user.target, keeps_constant=cspec.keeps_constant(mod)))

    if user.op == "call_function":
        tgt = user.target
        if tgt is getattr and len(user.args) > 1 and user.args[1] == "shape":
            return ("meta",)
        if tgt is torch.flatten:
            if first is not src:
                raise UnsupportedArchitecture(f"{_describe(user)}: unexpected argument order")
            b = block if flat else _flatten_block(user, src)
            if b is None:
                raise UnsupportedArchitecture(f"{_describe(user)} is not a flatten from dim 1")
            return ("flatten", b)
        if tgt in _SCALAR_OPS:
            others = [a for a in user.args if a is not src]
            if len(others) != 1 or _has_node((others, user.kwargs)) or \
                    not isinstance(others[0], (int, float)):
                raise UnsupportedArchitecture(
                    f"{_describe(user)} combines the channels with another tensor "
                    "(residual connection or elementwise product)")
            if tgt in (operator.truediv, torch.div, operator.sub, torch.sub) and first is not src:
                raise UnsupportedArchitecture(f"{_describe(user)}: scalar on the left")
            return ("op", ChannelOp("function", tgt, tuple(a for a in user.args if a is not src),
                                    tuple(user.kwargs.items())))
        if tgt in ELEMENTWISE_FUNCTIONS or tgt in POOL_FUNCTIONS or tgt in _AVG_POOL_FUNCS \
                or tgt in DROPOUT_FUNCTIONS:
            if first is not src or _has_node((user.args[1:], user.kwargs)):
                raise UnsupportedArchitecture(f"{_describe(user)}: unexpected tensor argument")
            if flat and tgt not in ELEMENTWISE_FUNCTIONS and tgt not in DROPOUT_FUNCTIONS:
                raise UnsupportedArchitecture(f"{_describe(user)} after a flatten")
            keeps, scale = True, 1.0
            if tgt in _AVG_POOL_FUNCS:
                keeps, scale = _avg_func_keeps(tgt, user)
            ndims = POOL_FUNCTIONS.get(tgt) or _AVG_POOL_FUNCS.get(tgt)
            _check_channelwise(user, src, (ndims,) if ndims else None,
                               getattr(tgt, "__name__", "function"))
            return ("op", ChannelOp("function", tgt, tuple(user.args[1:]),
                                    tuple(user.kwargs.items()), keeps_constant=keeps,
                                    shape_only=tgt not in ELEMENTWISE_FUNCTIONS, scale=scale))
        raise UnsupportedArchitecture(f"{_describe(user)} is not a per-channel operation")

    if user.op == "call_method":
        meth = user.target
        if first is not src:
            raise UnsupportedArchitecture(f"{_describe(user)}: unexpected argument order")
        if meth in _META_METHODS:
            return ("meta",)
        if meth in ("view", "reshape", "flatten"):
            fixed = _fixed_size_reshape(user) if meth != "flatten" else None
            if fixed is not None:
                raise UnsupportedArchitecture(
                    f"{_describe(user)} reshapes to a fixed size {fixed}, which breaks when "
                    "units are removed; use x.flatten(1) or x.view(x.size(0), -1)")
            b = _flatten_block(user, src)
            if b is None:
                raise UnsupportedArchitecture(
                    f"{_describe(user)} is a reshape other than flatten (B, C, ...) -> "
                    "(B, C*...)")
            return ("flatten", block if flat else b)
        if meth in ELEMENTWISE_METHODS:
            if _has_node((user.args[1:], user.kwargs)):
                raise UnsupportedArchitecture(f"{_describe(user)}: unexpected tensor argument")
            _check_channelwise(user, src, None, meth)
            return ("op", ChannelOp("method", meth, tuple(user.args[1:]),
                                    tuple(user.kwargs.items())))
        raise UnsupportedArchitecture(f"{_describe(user)} is not a per-channel operation")
    raise UnsupportedArchitecture(f"{_describe(user)} is not supported")


_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override")


def _avg_func_keeps(tgt, node: fx.Node) -> tuple[bool, float]:
    """(keeps a constant map constant, scale of the constant) of F.avg_pool1d/2d."""
    args = dict(zip(_AVG_ARGS, node.args[1:]))
    args.update(node.kwargs)
    pad = args.get("padding", 0)
    pads = pad if isinstance(pad, (tuple, list)) else (pad,)
    keeps = not (args.get("count_include_pad", True) and any(p > 0 for p in pads))
    dims = 2 if tgt is F.avg_pool2d else 1
    return keeps, avg_pool_scale(args.get("kernel_size", 1), args.get("divisor_override"), dims)


def module_on_path(model: nn.Module, graph: "UnitGraph", producer: str, cls: type,
                   what: str = "modules") -> tuple[str, nn.Module] | None:
    """The one ``cls`` module on ``producer``'s per-channel paths, as ``(name, module)``.

    None if no path passes through one. Raises ValueError, naming them, if
    the paths to its consumers pass through different ``cls`` modules
    (``what`` names them in the message: "switches", "tri-state ReLUs").
    """
    found = {op.target for edge in graph.producers[producer].edges for op in edge.path
             if op.kind == "module" and isinstance(model.get_submodule(op.target), cls)}
    if len(found) > 1:
        raise ValueError(f"layer {producer!r} passes through several {what} {sorted(found)}")
    if not found:
        return None
    name = found.pop()
    return name, model.get_submodule(name)

