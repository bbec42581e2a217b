"""A second way to build the graph of units: from ``torch.export`` where ``torch.fx`` cannot go.

``torch.fx`` symbolic tracing fails on models whose forward branches on tensor values or
sizes (the models of the ``transformers`` package among them: "symbolically traced variables
cannot be used as inputs to control flow"). ``torch.export`` traces them into an ATen-level
graph and records, on every node, the stack of modules it was called from
(``nn_module_stack``). :func:`exported_graph` turns that graph into the graph
:func:`saliency.trace` reads, with the same leaves as the ``torch.fx`` route:

* every call of a leaf module (a layer of :data:`saliency.layers.PRODUCERS` or
  :data:`saliency.layers.CHANNEL_MODULES`, an attention module, a module ``torch.fx`` keeps
  whole) becomes one ``call_module`` node on the model's own module, with the arguments and
  outputs the export recorded for it (``preserve_module_call_signature``), so the graph runs
  the model's modules and a pruned module is what the graph calls;
* every other ATen operation becomes the ``torch`` function or tensor method it implements
  (``aten.add.Tensor`` is ``torch.add``, ``aten.view`` the method ``view``, ``aten.slice``
  and ``aten.select`` an index), which the tracing reads as it reads the ``torch.fx`` route's;
  an operation without a counterpart stays an ATen call, refused with its node named if it
  touches units;
* parameters and buffers read outside a leaf are ``get_attr`` nodes on the model's tensors.

Every dimension of the input is exported as dynamic where the model allows it
(``torch.export.Dim.AUTO``: the batch, a sequence length), so the graph runs on batches of any
size and sequences of any length; a size the model fixes stays literal. Reshapes that carry
the batch and token sizes keep channels whole and are read as the layout changes they are.

A model whose forward takes keyword arguments or returns a structure (a ``transformers``
model's ``ModelOutput``) is exported through a wrapper that takes one tensor and returns one
tensor, for example::

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits
"""

from __future__ import annotations

import copy
import operator
import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

__all__ = ["exported_graph", "leaf_modules", "ATEN_EQUIVALENTS"]

aten = torch.ops.aten


def _same(target: Callable) -> Callable:
    return lambda args, kwargs: ("call_function", target, args, kwargs)


def _method(name: str) -> Callable:
    return lambda args, kwargs: ("call_method", name, args, kwargs)


def _index(args, kwargs):
    """``aten.select(x, dim, i)`` as ``x[:, ..., i]`` (``dim`` full slices before ``i``)."""
    x, dim = args[0], args[1]
    return ("call_function", operator.getitem, (x, (slice(None),) * dim + (args[2],)), {})


def _slice(args, kwargs):
    """``aten.slice(x, dim, start, end, step)`` as ``x[:, ..., start:end:step]`` (an ``end``
    of 2**63 - 1 is the end of the dimension)."""
    x, dim = args[0], args[1] if len(args) > 1 else 0
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = args[4] if len(args) > 4 else 1
    end = None if isinstance(end, int) and end >= 2 ** 62 else end
    return ("call_function", operator.getitem,
            (x, (slice(None),) * dim + (slice(start, end, step),)), {})


def _layer_norm(args, kwargs):
    return ("call_function", F.layer_norm, tuple(args[:5]), {})


def _dropout(args, kwargs):
    return ("call_function", F.dropout, (args[0], args[1], args[2]), {})


def _elu(args, kwargs):
    """``aten.elu(x, alpha, scale, input_scale)``: ``F.elu(x, alpha)`` when both scales are 1
    (else the ATen call, refused if it touches units)."""
    if tuple(args[2:]) in ((), (1,), (1, 1)):
        return ("call_function", F.elu, tuple(args[:2]), {})
    return ("call_function", aten.elu.default, args, kwargs)


def _to_copy(args, kwargs):
    """``aten._to_copy(x, dtype=...)``: ``x.to(dtype)``."""
    return ("call_method", "to", (args[0],), {k: v for k, v in kwargs.items()
                                               if k == "dtype"})


def _gelu(args, kwargs):
    return ("call_function", F.gelu, args, kwargs)


#: ATen operations and what each becomes in the graph :func:`saliency.trace` reads:
#: ``(args, kwargs) -> (node op, target, args, kwargs)``
ATEN_EQUIVALENTS: dict[Any, Callable] = {
    aten.add.Tensor: _same(torch.add), aten.sub.Tensor: _same(torch.sub),
    aten.mul.Tensor: _same(torch.mul), aten.div.Tensor: _same(torch.div),
    aten.relu.default: _same(torch.relu), aten.gelu.default: _gelu,
    aten.silu.default: _same(F.silu), aten.sigmoid.default: _same(torch.sigmoid),
    aten.tanh.default: _same(torch.tanh), aten.abs.default: _same(torch.abs),
    aten.clamp.default: _same(torch.clamp), aten.hardtanh.default: _same(F.hardtanh),
    aten.leaky_relu.default: _same(F.leaky_relu), aten.softplus.default: _same(F.softplus),
    aten.elu.default: _elu, aten.celu.default: _same(F.celu), aten.selu.default: _same(F.selu),
    aten.mish.default: _same(F.mish), aten.hardswish.default: _same(F.hardswish),
    aten.hardsigmoid.default: _same(F.hardsigmoid), aten.exp.default: _method("exp"),
    aten.neg.default: _method("neg"), aten.pow.Tensor_Scalar: _method("pow"),
    aten.to.dtype: _method("to"), aten._to_copy.default: _to_copy,
    aten.view.default: _method("view"), aten._unsafe_view.default: _method("view"),
    aten.reshape.default: _method("reshape"), aten.permute.default: _method("permute"),
    aten.transpose.int: _method("transpose"), aten.flatten.using_ints: _same(torch.flatten),
    aten.clone.default: _method("contiguous"),
    aten.cat.default: _same(torch.cat), aten.dropout.default: _dropout,
    aten.max_pool2d.default: _same(F.max_pool2d), aten.avg_pool2d.default: _same(F.avg_pool2d),
    aten.max_pool1d.default: _same(F.max_pool1d), aten.avg_pool1d.default: _same(F.avg_pool1d),
    aten.adaptive_avg_pool2d.default: _same(F.adaptive_avg_pool2d),
    aten.adaptive_avg_pool1d.default: _same(F.adaptive_avg_pool1d),
    aten.mean.dim: _method("mean"), aten.layer_norm.default: _layer_norm,
    aten.sym_size.int: _method("size"), aten.unsqueeze.default: _method("unsqueeze"),
    aten.select.int: _index, aten.slice.Tensor: _slice,
}


#: checks export inserts, which return nothing: left out
_DROPPED = {aten._assert_tensor_metadata.default}


def leaf_modules(model: nn.Module) -> list[str]:
    """The outermost modules the ``torch.fx`` route keeps as one call (its tracer's leaves;
    containers, which are never called, aside), in the order of ``named_modules``."""
    from .graph import _Tracer
    tracer = _Tracer()
    leaves: list[str] = []
    containers = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
    for name, mod in model.named_modules():
        if name and not isinstance(mod, containers) and \
                not any(name.startswith(p + ".") for p in leaves) and \
                tracer.is_leaf_module(mod, name):
            leaves.append(name)
    return leaves


def _export(model: nn.Module, example_input: torch.Tensor, leaves: list[str]):
    """``torch.export.export`` of ``model`` on ``example_input`` with dynamic sizes and the
    leaves' call signatures kept, the checked transformer layers run through their
    written-out forward (as the ``torch.fx`` route traces them)."""
    from .attention import layer_forward
    patched = []
    for mod in model.modules():
        fn = layer_forward(mod)
        if fn is not None and not any(mod is model.get_submodule(n) for n in leaves):
            mod.forward = (lambda m, f: (lambda *a, **k: f(m, *a, **k)))(mod, fn)
            patched.append(mod)
    try:
        dims = ({d: torch.export.Dim.AUTO for d in range(example_input.dim())
                 if example_input.shape[d] > 1},)  # a size of 1 would specialise anyway
        return torch.export.export(model, (example_input,), dynamic_shapes=dims, strict=False,
                                   preserve_module_call_signature=tuple(leaves))
    finally:
        for mod in patched:
            del mod.forward


def _call_of(node: fx.Node, leaves: set[str]) -> tuple[str, str] | None:
    """``(stack key, module name)`` of the outermost leaf module ``node`` was called from."""
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        name = re.sub(r"@\d+$", "", path)
        if name in leaves:
            return key, name
    return None


class _Builder:
    """Builds the graph: ``env`` maps the exported graph's nodes to the new graph's."""

    def __init__(self, model: nn.Module, ep, leaves: list[str]):
        self.model, self.ep, self.leaves = model, ep, set(leaves)
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.attrs: dict[str, str] = {}   # placeholder name -> parameter or buffer FQN
        self.signatures = {e.fqn: e.signature for e in ep.module_call_graph if e.fqn}
        self.calls: dict[str, int] = {}
        self.inside: dict[str, fx.Node] = {}   # exported nodes computed inside a leaf's call
        self.users = {n.name: len(n.users) for n in ep.graph.nodes}
        # leaves that compute nothing in eval mode (a Dropout): export records their call
        # with the output named as the input; the graph calls them where that value is made
        self.identity: dict[str, list[str]] = {}
        for key, sig in self.signatures.items():
            fqn = re.sub(r"@\d+$", "", key)
            if fqn in self.leaves and len(sig.inputs) == 1 and len(sig.outputs) == 1 and \
                    getattr(sig.inputs[0], "name", None) == getattr(sig.outputs[0], "name", 0):
                self.identity.setdefault(sig.inputs[0].name, []).append(fqn)

    def build(self) -> fx.GraphModule:
        from torch.export.graph_signature import InputKind
        for spec in self.ep.graph_signature.input_specs:
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                self.attrs[spec.arg.name] = spec.target
        current: str | None = None
        for node in self.ep.graph.nodes:
            call = _call_of(node, self.leaves) if node.op == "call_function" else None
            if call is not None:
                if call[0] != current:
                    current = call[0]
                    self.module_call(call[1])
                self.inside[node.name] = node
                continue
            current = None
            self.visit(node)
        gm = fx.GraphModule(self.model, self.graph, type(self.model).__name__)
        return gm

    def arg(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.lookup(n.name))

    def lookup(self, name: str) -> fx.Node:
        """The new node of the exported node ``name`` (a parameter or buffer: a ``get_attr``
        node, made on first use; a value computed inside a leaf's call but read outside it,
        such as an alias the functionalised graph keeps (``x.to(dtype)`` of a tensor already
        of that dtype, inside a norm, read by the residual add): computed again outside)."""
        if name not in self.env:
            if name in self.inside:  # computed inside a leaf and read outside (an alias)
                self.visit(self.inside.pop(name))
            else:
                self.env[name] = self.graph.get_attr(self.attrs[name])
        return self.env[name]

    def made(self, name: str, node: fx.Node) -> None:
        """Record ``node`` as the value of the exported node ``name``, through the leaves
        that pass it on unchanged."""
        for fqn in self.identity.get(name, ()):
            node = self.graph.call_module(fqn, (node,))
        self.env[name] = node

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if node.name not in self.attrs:
                self.made(node.name, self.graph.placeholder(node.name))
            return
        if node.op == "output":
            self.graph.output(self.arg(node.args[0][0] if len(node.args[0]) == 1
                                       else node.args[0]))
            return
        if node.target in _DROPPED:
            return
        args, kwargs = self.arg(node.args), self.arg(node.kwargs)
        translate = ATEN_EQUIVALENTS.get(node.target)
        op, target, args, kwargs = (translate(args, kwargs) if translate is not None
                                    else ("call_function", node.target, args, kwargs))
        self.made(node.name, self.graph.create_node(op, target, tuple(args), dict(kwargs),
                                                    name=node.name))

    def module_call(self, name: str) -> None:
        """One ``call_module`` node for a call of leaf ``name``, its inputs and outputs as
        export recorded them."""
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        sig = self.signatures.get(name if k == 0 else f"{name}@{k}")
        if sig is None:
            raise RuntimeError(f"torch.export did not record the call signature of {name!r}")
        flat = [self.lookup_argument(a) for a in sig.inputs]
        args, kwargs = pytree.tree_unflatten(flat, sig.in_spec)
        call = self.graph.call_module(name, tuple(args), dict(kwargs))
        outs = [a.name if type(a).__name__ == "TensorArgument" else None
                for a in sig.outputs]
        if len(outs) == 1 and sig.out_spec.num_children == 0:
            self.made(outs[0], call)
            return
        if any(c.num_children for c in sig.out_spec.children()):
            raise RuntimeError(f"module {name!r} returns a nested structure")
        for i, out in enumerate(outs):
            if out is not None and self.users.get(out):  # what is read later, as fx has it
                self.made(out, self.graph.call_function(operator.getitem, (call, i)))

    def lookup_argument(self, a: Any) -> Any:
        """A recorded input of a module call: a graph value's node, or the constant."""
        if type(a).__name__ in ("TensorArgument", "SymIntArgument", "SymFloatArgument",
                                "SymBoolArgument"):
            return self.lookup(a.name)
        return getattr(a, "value", None)


def exported_graph(model: nn.Module, example_input: torch.Tensor, *, train: bool = False
                   ) -> fx.GraphModule:
    """The graph :func:`saliency.trace` reads, built from ``torch.export`` (see the module
    docstring); its root is ``model``, so it calls the model's own modules. The export runs
    on a copy of the model (it leaves weak references on what it traced), in eval mode, or in
    training mode with ``train=True``: what the forward reads of ``self.training`` outside the
    leaves is fixed in the graph, as ``torch.fx`` tracing fixes it.

    Raises:
        RuntimeError: when ``torch.export`` cannot trace the model (its message).
    """
    leaves = leaf_modules(model)
    # export leaves weak references on the tensors it traced, which would stop a later
    # removal from swapping them (torch.utils.swap_tensors): trace a copy of the model
    twin = copy.deepcopy(model).train(train)
    with torch.no_grad():
        ep = _export(twin, example_input, leaves)
    return _Builder(model, ep, leaves).build()
