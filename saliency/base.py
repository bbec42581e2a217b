"""The scorer contract shared by every saliency.

A scorer holds hyperparameters and has one method::

    scorer.score(model, data=None, loss_fn=F.cross_entropy) -> dict[str, Tensor]

* Parameter-wise scorers (``granularity = "parameter"``) return
  ``{parameter name: tensor shaped like the parameter}`` -- the
  ``importance_scores`` contract of :mod:`torch.nn.utils.prune`.
* Unit-wise scorers (``granularity = "unit"``) return ``{group name: 1-D
  tensor over its units}`` for the prunable groups of :func:`saliency.trace`.
  A producer on a chain is a group of one named after itself (its units are
  its output channels); channels that must be removed together (the
  producers a residual add sums, say) form one group, named after its first
  member, with one score per *group channel*, so a global ranking counts
  each once (:func:`to_group` maps the members' channels to the group's).

Lower score = less important. ``data`` is an iterable of ``(inputs,
targets)`` batches; losses are summed per sample and divided by the number of
samples, so results do not depend on how the samples are batched. A loss returned per
token (``(B, T)``) is averaged over the sample's tokens, padding targets excluded
(:func:`sample_losses`). Scoring
runs the model in eval mode (BatchNorm running statistics, no dropout), and
never changes it: parameters, ``.grad``, ``requires_grad``, the training
flags and hooks are restored, also when an error is raised.

A scorer that reads a layer of its method (a ShrinkNets switch, a tri-state
ReLU) says so in ``requires_layer``: a :class:`LayerRequirement` naming the
layer class and the function that inserts it, which
:func:`pruners.prepare_for` calls. A new scorer, with or without such a
layer, is one class and one entry in :data:`saliency.SCORERS`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .graph import Group, UnitGraph, default_example_input
from .tracing import trace
from .replacement import iter_batches, iter_inputs

__all__ = ["Scorer", "ParameterScorer", "UnitScorer", "LayerRequirement", "iter_batches",
           "loss_sum", "per_sample_loss", "sample_losses", "ignore_index", "IGNORE_INDEX",
           "summing_loss", "preserved", "default_parameters", "unknown_parameter",
           "check_materialized", "check_dtype", "select_layers", "select_heads", "to_group"]

LossFn = Callable[..., torch.Tensor]


#: the ``ignore_index`` of ``F.cross_entropy`` and ``F.nll_loss``: targets equal to it are
#: padding unless ``loss_fn`` says otherwise (see :func:`per_sample_loss`)
IGNORE_INDEX = -100


def ignore_index(loss_fn: LossFn) -> int:
    """The target value ``loss_fn`` ignores: its ``ignore_index`` keyword when it is a
    ``functools.partial``, or its ``ignore_index`` attribute, else :data:`IGNORE_INDEX`
    (``F.cross_entropy``'s default)."""
    keywords = getattr(loss_fn, "keywords", None)
    if isinstance(keywords, dict) and isinstance(keywords.get("ignore_index"), int):
        return keywords["ignore_index"]
    value = getattr(loss_fn, "ignore_index", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else IGNORE_INDEX


def sample_losses(loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor,
                  ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-sample losses from what ``loss_fn(out, y, reduction="none")`` returned.

    * one loss per sample, ``(B,)``: as it is;
    * **per position** (tokens of a language model, pixels), a loss of ``(B, T, ...)`` not
      shaped like the output (the class dimension reduced: ``F.cross_entropy`` of
      ``(B, C, T)`` logits and ``(B, T)`` targets): the **mean over the sample's
      positions**, positions whose integer target equals ``ignore`` (padding, as
      ``F.cross_entropy``'s ``ignore_index`` excludes them) left out; a sample with every
      position ignored has loss 0;
    * elementwise, shaped like the output (``F.mse_loss``, ``F.binary_cross_entropy``):
      the sum over the sample's elements.

    So a sample's loss does not grow with its length, and a per-token loss averaged over
    tokens is the usual language-model loss of a sequence.
    """
    if loss.dim() == 0 or loss.shape[0] != out.shape[0]:
        raise ValueError(f"loss_fn(reduction='none') returned shape {tuple(loss.shape)}; "
                         f"expected one loss per sample ({out.shape[0]})")
    if loss.dim() == 1:
        return loss
    if loss.shape == out.shape:  # elementwise
        return loss.reshape(loss.shape[0], -1).sum(1)
    flat = loss.reshape(loss.shape[0], -1)
    if isinstance(y, torch.Tensor) and not y.is_floating_point() and y.shape == loss.shape:
        keep = (y != ignore).reshape(loss.shape[0], -1)
        total = torch.where(keep, flat, torch.zeros_like(flat)).sum(1)
        return total / keep.sum(1).clamp_min(1).to(flat.dtype)
    return flat.mean(1)


def per_sample_loss(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss of each sample: ``loss_fn(out, y, reduction="none")`` reduced per sample by
    :func:`sample_losses` (per-token losses: their mean over the sample's tokens, padding
    targets equal to :func:`ignore_index` left out; elementwise losses: their sum)."""
    try:
        loss = loss_fn(out, y, reduction="none")
    except TypeError as exc:
        raise TypeError("loss_fn must accept reduction='none' (like the functions of "
                        "torch.nn.functional)") from exc
    return sample_losses(loss, out, y, ignore_index(loss_fn))


def loss_sum(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of the per-sample losses, checked to be finite."""
    loss = per_sample_loss(loss_fn, out, y).sum()
    if not torch.isfinite(loss):
        raise FloatingPointError("the loss on data is not finite")
    return loss


def summing_loss(loss_fn: LossFn, total: dict) -> LossFn:
    """``loss_fn``, also adding every per-sample (``reduction="none"``) loss it computes to
    ``total["loss"]`` (reduced by :func:`sample_losses`): the summed loss of a pass that a
    statistics pass computes anyway."""
    ignore = ignore_index(loss_fn)

    def counting(out, y, reduction="mean"):
        loss = loss_fn(out, y, reduction=reduction)
        if reduction == "none":
            total["loss"] += float(sample_losses(loss.detach(), out, y, ignore).sum())
        return loss
    counting.ignore_index = ignore  # type: ignore[attr-defined]
    return counting


@contextlib.contextmanager
def preserved(model: nn.Module, *, eval_mode: bool = True):
    """Restore ``.grad``, ``requires_grad``, training flags, hooks and values after.

    Parameter values are compared by reference: scorers never write them, but
    a snapshot of ``.data`` references is restored in case a scorer swapped
    one temporarily.
    """
    params = list(model.named_parameters())
    grads = {id(p): p.grad for _, p in params}
    req = {id(p): p.requires_grad for _, p in params}
    data = {id(p): p.data for _, p in params}
    flags = [(m, m.training) for m in model.modules()]
    hook_dicts = [(m, {k: dict(getattr(m, k)) for k in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
        "_backward_pre_hooks")}) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for _, p in params:
            p.grad = grads[id(p)]
            p.requires_grad_(req[id(p)])
            if p.data is not data[id(p)]:
                p.data = data[id(p)]
        for m, flag in flags:
            m.training = flag
        for m, dicts in hook_dicts:
            for k, saved in dicts.items():
                d = getattr(m, k)
                d.clear()
                d.update(saved)


def default_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every trainable parameter by name (``prune``'d tensors under their base name)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        out[name[: -len("_orig")] if name.endswith("_orig") else name] = p
    return out


def unknown_parameter(model: nn.Module, name: str, known: Iterable[str] | None = None) -> str:
    """Why ``name`` is not a parameter name of ``model``, and which names are.

    A module's name (``"fc1"``) gets the names of its tensors as the suggestion
    (``"fc1.weight"``); any other name the closest parameter names, then a few valid ones.

    Args:
        model: the model.
        name: the name that was given.
        known: the valid parameter names (default: :func:`default_parameters`).

    Returns:
        The text of the error, starting ``unknown parameter 'name'``.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> print(unknown_parameter(net, "0"))  # doctest: +NORMALIZE_WHITESPACE
        unknown parameter '0': '0' is a module, not a parameter; name its tensors, e.g.
        '0.weight' (its parameters: ['0.weight', '0.bias'])
    """
    known = list(default_parameters(model) if known is None else known)
    modules = dict(model.named_modules())
    if name in modules:
        prefix = f"{name}." if name else ""
        own = [k for k in known if k.startswith(prefix) and "." not in k[len(prefix):]]
        if own:
            return (f"unknown parameter {name!r}: {name!r} is a module, not a parameter; name its "
                    f"tensors, e.g. {own[0]!r} (its parameters: {own})")
        return (f"unknown parameter {name!r}: {name!r} is a module with no parameters of its "
                f"own; parameters are named 'module.tensor', e.g. {known[:5]}")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    few = known[:8] + (["..."] if len(known) > 8 else [])
    return f"unknown parameter {name!r}{hint} (the model's parameters: {few})"


def check_materialized(model: nn.Module) -> None:
    """Raise ValueError if ``model`` has tensors on the ``meta`` device (shapes, no values).

    Args:
        model: the model about to be scored or pruned.

    Raises:
        ValueError: naming the first such tensor and how to give the model values.
    """
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_meta:
            raise ValueError(
                f"{type(model).__name__} is on the meta device ({name!r} has a shape but no "
                "values), so there is nothing to score or prune: load or materialize its "
                "weights first, e.g. model.to_empty(device=\"cpu\") then "
                "model.load_state_dict(state_dict)")


_DTYPE_METHODS = {torch.float64: "double", torch.float32: "float", torch.float16: "half",
                  torch.bfloat16: "bfloat16"}


def check_dtype(model: nn.Module, x, what: str = "the data") -> None:
    """Raise TypeError if the floating input ``x`` has another dtype than ``model``'s parameters.

    Nothing is checked for integer inputs (token ids), models whose floating parameters have
    several dtypes, or under autocast.

    Args:
        model: the model about to be run on ``x``.
        x: an input batch.
        what: how the message names ``x`` (``"the data"``, ``"example_input"``).

    Raises:
        TypeError: ``the model's parameters are float32 but the data is float64: convert
            one, e.g. model.double() or x.float()``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return
    if torch.is_autocast_enabled():
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or x.dtype in dtypes:
        return
    (dtype,) = dtypes
    name = lambda d: str(d).replace("torch.", "")  # noqa: E731
    to_x = _DTYPE_METHODS.get(x.dtype)
    to_model = _DTYPE_METHODS.get(dtype)
    how = " or ".join(h for h in (f"model.{to_x}()" if to_x else "",
                                  f"x.{to_model}()" if to_model else "") if h) or \
        f"x.to({dtype})"
    raise TypeError(f"the model's parameters are {name(dtype)} but {what} is {name(x.dtype)}: "
                    f"convert one, e.g. {how}")


def constructor_options(cls: type) -> list[str]:
    """The keyword options of ``cls``'s constructor, following ``**kwargs`` up the classes.

    Examples:
        >>> from saliency import Norm
        >>> constructor_options(Norm)
        ['p', 'layers', 'exclude', 'example_input']
    """
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        forwards = False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind is not p.VAR_POSITIONAL and p.name != "self" and p.name not in names:
                names.append(p.name)
        if not forwards:
            break
    return names


def registry_call(scorer_cls: type, option: str) -> str:
    """How to build ``scorer_cls`` with ``option``: ``SCORERS["norm"](example_input=x)``."""
    from . import SCORERS  # the registry imports this module
    key = next((k for k, c in SCORERS.items() if c is scorer_cls), None)
    value = "x" if option == "example_input" else "..."
    ctor = f'SCORERS["{key}"]' if key is not None else scorer_cls.__name__
    return f"{ctor}({option}={value})"


@dataclass(frozen=True)
class LayerRequirement:
    """A layer a scorer reads, and the function that inserts it into a model.

    Attributes:
        layer: the module class whose presence satisfies the requirement: a
            model containing at least one instance of it is scored as it is.
        inserter: ``insert(model, example_input) -> model with such layers``,
            named by its import path ``"package.module:function"`` (the
            inserters of saliency's own scorers live in :mod:`pruners`, which
            :mod:`saliency` does not import) or given as the function itself.
            :func:`pruners.prepare_for` imports and calls it with its default
            arguments.

    Examples:
        >>> from saliency import SCORERS
        >>> req = SCORERS["switch"].requires_layer
        >>> req.layer.__name__, req.inserter
        ('Switch', 'pruners.shrinknets:insert_switches')
        >>> req.satisfied_by(nn.Linear(2, 2))
        False
    """

    layer: type[nn.Module]
    inserter: str | Callable[[nn.Module, torch.Tensor | None], nn.Module]

    def __post_init__(self) -> None:
        if not (isinstance(self.layer, type) and issubclass(self.layer, nn.Module)):
            raise TypeError(f"layer must be an nn.Module subclass, got {self.layer!r}")
        if isinstance(self.inserter, str):
            module, sep, name = self.inserter.partition(":")
            if not (sep and module and name.isidentifier()):
                raise ValueError(f"inserter must be an import path 'package.module:function', "
                                 f"got {self.inserter!r}")
        elif not callable(self.inserter):
            raise TypeError(f"inserter must be an import path or a function, got "
                            f"{self.inserter!r}")

    def satisfied_by(self, model: nn.Module) -> bool:
        """Whether ``model`` contains a ``layer`` module already."""
        return any(isinstance(m, self.layer) for m in model.modules())


class Scorer:
    """Base class: hyperparameters in ``__init__``, work in :meth:`_score`.

    Subclasses set ``granularity`` ("parameter" or "unit"), ``needs_data``,
    ``approximates`` (the registry name of the exact quantity an
    approximation stands for, or None), ``requires_layer`` (a
    :class:`LayerRequirement`, or None) and implement ``_score(model, data,
    loss_fn)``.
    """

    granularity: str = "parameter"
    needs_data: bool = True
    #: the layer the model must contain to be scored (a switch, a tri-state
    #: ReLU) and how to insert it (:func:`pruners.prepare_for`), or None
    requires_layer: LayerRequirement | None = None
    #: registry name of the exact quantity this scorer approximates, if any
    approximates: str | None = None

    def score(self, model: nn.Module, data: Iterable | None = None,
              loss_fn: LossFn = F.cross_entropy, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Score ``model`` on ``data``; see the module docstring for the contract.

        Args:
            model: the model (not changed).
            data: an iterable of ``(inputs, targets)`` batches (needed when
                ``needs_data``).
            loss_fn: the loss, called with ``reduction="none"``.
            **kwargs: none are accepted; a scorer's options (``example_input``,
                ``layers``, ``params``...) go to its constructor.

        Returns:
            ``{name: scores}`` (see the module docstring).

        Raises:
            TypeError: ``model`` is not a module; a keyword argument is given (for one of
                the constructor's options the message shows the call, e.g.
                ``SCORERS["norm"](example_input=x).score(model)``); the data's floating
                dtype is not the parameters'.
            ValueError: the model is on the ``meta`` device (no values); data is
                needed and missing, empty or malformed.
        """
        if kwargs:
            raise TypeError(self._keyword_error(kwargs))
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_materialized(model)
        if self.needs_data and data is None:
            raise ValueError(f"{type(self).__name__} needs data: an iterable of "
                             "(inputs, targets) batches")
        if data is not None and iter(data) is data:  # a one-pass iterator: read it once
            data = list(data)
        if self.needs_data:
            x, _ = next(iter_batches(data))  # fail early on empty or malformed data
            check_dtype(model, x, "the data")
        with preserved(model):
            scores = self._score_all(model, data, loss_fn)
        return {k: v.detach() for k, v in scores.items()}

    def _keyword_error(self, kwargs: Mapping) -> str:
        name = type(self).__name__
        options = constructor_options(type(self))
        for key in kwargs:
            if key in options:
                return (f"{name}.score() takes no {key!r}: {key} is an option of the "
                        f"constructor, e.g. {registry_call(type(self), key)}.score(model, "
                        "...)")
        key = next(iter(kwargs))
        return (f"{name}.score() got an unexpected keyword argument {key!r} (it takes model, "
                f"data and loss_fn; the constructor's options are {options})")

    def _score_all(self, model, data, loss_fn) -> dict[str, torch.Tensor]:
        return self._score(model, data, loss_fn)

    def _score(self, model, data, loss_fn) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ParameterScorer(Scorer):
    """A parameter-wise scorer; ``params`` selects parameter names (None = all)."""

    granularity = "parameter"

    def __init__(self, params: Iterable[str] | None = None):
        self.params = None if params is None else list(params)

    def selected(self, model: nn.Module) -> dict[str, nn.Parameter]:
        allp = default_parameters(model)
        if self.params is None:
            return allp
        unknown = [n for n in self.params if n not in allp]
        if unknown:
            raise ValueError(unknown_parameter(model, unknown[0], allp) + (
                f" (unknown: {unknown})" if len(unknown) > 1 else ""))
        return {n: allp[n] for n in self.params}


def select_layers(model: nn.Module, graph: UnitGraph, layers: Iterable[str] | None) -> list[str]:
    """The prunable groups ``layers`` names (None = all of them), in the order given.

    A group is named after its first member, and any member's name addresses it (scores come
    back under the group's name); a producer on a chain is its own group.
    """
    prunable = graph.prunable
    if not prunable and not graph.prunable_heads:
        raise ValueError(f"{type(model).__name__} has no prunable units (no Linear/Conv "
                         "layer whose output feeds another layer)")
    if layers is None:
        return prunable
    names, bad = [], []
    for n in layers:
        if n in graph.heads and graph.heads[n].prunable:
            continue  # attention heads: select_heads
        group = graph.producers[n].group if n in graph.producers else n
        (names if group in prunable else bad).append(group if group in prunable else n)
    if bad:
        why = [f"{n!r} is not prunable: {graph.producers[n].reason}" for n in bad
               if n in graph.producers and graph.producers[n].reason]
        raise ValueError(f"unknown or non-prunable layers {bad}; prunable layers are "
                         f"{prunable}" + "".join(f"; {w}" for w in why))
    return list(dict.fromkeys(names))


def select_heads(graph: UnitGraph, layers: Iterable[str] | None) -> list[str]:
    """The attention modules among ``layers`` (None: every one with prunable heads)."""
    if layers is None:
        return graph.prunable_heads
    return [n for n in dict.fromkeys(layers) if n in graph.prunable_heads]


def to_group(group: Group, per_member: Mapping[str, torch.Tensor], how: str = "sum"
             ) -> torch.Tensor:
    """Per-member values over the members' output channels (last dimension) as values over
    the group's channels.

    ``per_member[m]`` has the member's channels along its last dimension (its other
    dimensions are the same for every member); channel ``c`` of member ``m`` is group channel
    ``group.channels[m][c]``. ``how`` combines the members that share a group channel:
    ``"sum"``, ``"max"``, or ``"first"`` (the value of the first member, in forward order,
    that has the channel). On a chain (one member) the member's tensor is returned as it is.
    """
    if how not in ("sum", "max", "first"):
        raise ValueError(f"how must be 'sum', 'max' or 'first', got {how!r}")
    members = [m for m in group.members if m in per_member]
    if not members:
        raise ValueError(f"no values for the members of group {group.name!r}")
    first = per_member[members[0]]
    if len(group.members) == 1:
        return first
    out = first.new_zeros(first.shape[:-1] + (group.size,))
    if how == "max":
        out.fill_(-math.inf)
    for m in (reversed(members) if how == "first" else members):
        v, idx = per_member[m], group.channels[m].to(first.device)
        if how == "sum":
            out.index_add_(-1, idx, v.to(out.dtype))
        elif how == "max":
            out.scatter_reduce_(-1, idx.expand(v.shape), v.to(out.dtype), "amax")
        else:
            out.index_copy_(-1, idx, v.to(out.dtype))
    return out


class UnitScorer(Scorer):
    """A unit-wise scorer; ``layers`` selects groups by name (None = all prunable).

    ``example_input`` (optional) is used to trace convolutional models when
    there is no data; ``exclude`` is passed to :func:`trace`. Both are options of the
    constructor (``SCORERS["norm"](example_input=x).score(model)``), not of :meth:`score`.

    Args:
        layers: groups (or any member's name) and attention modules to score.
        exclude: producers left out of the graph.
        example_input: an input batch to trace the model with (default: the first batch of
            the data, or an input inferred from a first Linear / Embedding layer).
    """

    granularity = "unit"

    def __init__(self, layers: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
                 example_input: torch.Tensor | None = None):
        self.layers = None if layers is None else list(layers)
        self.exclude = tuple(exclude)
        self.example_input = example_input

    def _score_all(self, model, data, loss_fn) -> dict[str, torch.Tensor]:
        """Scores of the selected groups (:meth:`_score`) and of the selected attention
        modules' heads (:meth:`_head_scores`, one value per head under the module's name)."""
        graph, layers = self.graph(model, data)
        heads = select_heads(graph, self.layers)
        scores = self._score(model, data, loss_fn) if layers else {}
        if heads:
            head_scores = getattr(self, "_head_scores", None)
            if head_scores is not None:
                scores.update(head_scores(model, graph, heads, data, loss_fn))
            elif self.layers is not None:
                raise ValueError(f"{type(self).__name__} does not score attention heads "
                                 f"({heads})")
        return scores

    def graph(self, model: nn.Module, data) -> tuple[UnitGraph, list[str]]:
        """The graph of units of ``model`` and the selected groups.

        Traced on ``example_input`` (the constructor's), else on the first batch of
        ``data``, else on :func:`~saliency.graph.default_example_input`.

        Raises:
            ValueError: no input to trace with and none can be inferred (a convolutional
                model): the message says to give ``example_input`` to the constructor.
            TypeError: ``example_input``'s floating dtype is not the parameters'.
        """
        example = self.example_input
        if example is not None:
            check_dtype(model, example, "example_input")
        elif data is not None:
            example = next(iter_inputs(data))
            check_dtype(model, example, "the data")
        else:
            try:
                default_example_input(model)
            except ValueError:
                name = type(self).__name__
                raise ValueError(
                    f"{name} cannot infer the input shape of {type(model).__name__} (its "
                    "first layer is not a Linear or an Embedding): give an input batch to the "
                    f"constructor, e.g. {registry_call(type(self), 'example_input')}"
                    ".score(model), or pass data= to score()") from None
        graph = trace(model, example, exclude=self.exclude)
        return graph, select_layers(model, graph, self.layers)
