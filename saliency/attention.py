"""Attention heads as units.

A *head* of an attention module is a unit addressed by the module's name and a head index
``0..H-1``. Its coupled weights are the ``head_dim`` rows of the query, key and value
projections that compute it and the ``head_dim`` columns of the output projection that read
its output (A. Vaswani, N. Shazeer, N. Parmar, J. Uszkoreit, L. Jones, A. N. Gomez,
L. Kaiser, I. Polosukhin, *Attention Is All You Need*, NeurIPS 2017,
https://arxiv.org/abs/1706.03762, Sec. 3.2.2)::

    head_h = softmax(Q_h K_h^T / sqrt(d)) V_h,      out = sum_h head_h W_O[:, cols(h)]^T + b_O

so removing head ``h`` while the output projection receives a constant ``c_h`` (one value
per dimension of the head) in its place is exact once ``W_O[:, cols(h)] c_h`` is folded into
the output projection's bias: mean replacement of a head holds its output at its mean over
the batch and every token position (P. Michel, O. Levy, G. Neubig, *Are Sixteen Heads Really
Better than One?*, NeurIPS 2019, https://arxiv.org/abs/1905.10650, prune heads by masking
them; U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068, Sec. 1.2.4, the mean replacement folded here).

Grouped-query attention (J. Ainslie, J. Lee-Thorp, M. de Jong, Y. Zemlyanskiy, F. Lebron,
S. Sanghai, *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints*, EMNLP 2023, https://arxiv.org/abs/2305.13245) shares key/value head ``j``
between the ``G = H / H_kv`` query heads ``j*G .. (j+1)*G - 1``: removing all of them removes
the key/value head too, and a selection must leave every key/value head with the same number
of query heads.

Modules whose heads are known:

* ``nn.MultiheadAttention`` (fused ``in_proj_weight`` or separate ``q/k/v_proj_weight``; both
  ``batch_first``), also inside ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
  (``self_attn``, ``multihead_attn``). Its head count is tied to ``embed_dim``, so after
  heads are removed it becomes a :class:`PrunedMultiheadAttention` (same parameters, same
  state-dict keys, fewer heads);
* a module of the common pattern, recognised automatically: ``nn.Linear`` children for
  q, k, v and the output (names in :data:`SEPARATE_NAMES`) or a fused qkv projection
  (:data:`FUSED_NAMES`), a head-count attribute (:data:`HEAD_ATTRS`, optionally a key/value
  head count in :data:`KV_HEAD_ATTRS`), heads laid out as ``.view(B, T, H, head_dim)`` in
  the projections' rows, and the output projection reading ``(B, T, H * head_dim)``;
* any other module described once with :func:`describe_attention`.

A recognised or described module is checked numerically when the model is traced: in a
float64 copy, removing a head (its rows and columns) must give exactly what zeroing its
output columns gives; otherwise its heads are refused, naming the module.

``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer`` (exactly those classes)
are traced through a written-out copy of their forward (:data:`KNOWN_LAYERS`), checked
numerically against their own forward at trace time (:func:`check_transformer_layers`), so
that their FFN neurons (``linear1``'s outputs, read by ``linear2`` through ``activation``
and ``dropout``) are units of the graph like a hand-written block's.
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FUSED_NAMES",
    "HEAD_ATTRS",
    "KNOWN_LAYERS",
    "KV_HEAD_ATTRS",
    "SEPARATE_NAMES",
    "AttentionSpec",
    "Heads",
    "PrunedMultiheadAttention",
    "attention_macs",
    "attention_spec",
    "check_layout",
    "check_transformer_layers",
    "context_hooks",
    "describe_attention",
    "fastpath_disabled",
    "find_heads",
    "fit_attention",
    "head_count",
    "is_attention",
    "layer_forward",
    "mha_forward",
    "set_head_counts",
    "transformer_layer_reason",
]

#: attribute names read as the number of (query) heads
HEAD_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads", "nhead", "heads")
#: attribute names read as the number of key/value heads (grouped-query attention)
KV_HEAD_ATTRS = ("num_kv_heads", "n_kv_heads", "num_key_value_heads", "n_kv_head",
                 "kv_heads")
#: child names of separate q, k, v and output projections
SEPARATE_NAMES = (("q", "k", "v", "o"), ("q", "k", "v", "out"), ("q_proj", "k_proj", "v_proj", "o_proj"),
                  ("q_proj", "k_proj", "v_proj", "out_proj"), ("query", "key", "value", "out"),
                  ("wq", "wk", "wv", "wo"), ("to_q", "to_k", "to_v", "to_out"))
#: child names of a fused qkv projection and the output projection
FUSED_NAMES = (("qkv", "out"), ("qkv", "proj"), ("qkv", "o"), ("qkv_proj", "out_proj"),
               ("qkv_proj", "o_proj"), ("c_attn", "c_proj"), ("to_qkv", "to_out"),
               ("wqkv", "wo"))


@dataclass(frozen=True)
class AttentionSpec:
    """How the heads of an attention module class are laid out.

    Attributes:
        out: the child name of the output projection (an ``nn.Linear`` reading
            ``(..., num_heads * head_dim)``).
        q, k, v: child names of separate ``nn.Linear`` query, key and value projections
            (head ``h`` owns rows ``h*head_dim .. (h+1)*head_dim - 1``).
        qkv: instead, the child name of one fused ``nn.Linear`` whose rows are the query,
            key and value rows one after the other.
        num_heads: the attribute holding the number of query heads (the module must read it
            in ``forward``: it is updated when heads are removed).
        num_kv_heads: the attribute holding the number of key/value heads, or None
            (as many as query heads).
        dims: attributes holding ``num_heads * head_dim`` (updated with it).
        groups: the attribute holding ``num_heads // num_kv_heads`` (the query heads per
            key/value head, ``num_key_value_groups`` of the ``transformers`` models), or None.

    A head count the module does not hold itself is read from its ``config`` (the
    ``transformers`` convention: ``config.num_attention_heads``,
    ``config.num_key_value_heads``; :func:`head_count`); removal then writes the module's own
    count, so layers of one config may differ.
    """

    out: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    num_heads: str = "num_heads"
    num_kv_heads: str | None = None
    dims: tuple[str, ...] = ()
    groups: str | None = None


#: where a ``transformers`` config holds the head count an attribute name stands for
_CONFIG_COUNTS = {"num_heads": ("num_attention_heads", "n_head"),
                  "num_key_value_heads": ("num_key_value_heads", "num_attention_heads", "n_head")}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def head_count(module: nn.Module, attr: str) -> int:
    """The head count ``module`` holds in attribute ``attr``, or, when it holds none, the one
    of its ``config`` (``transformers`` modules read theirs there: ``num_heads`` is
    ``config.num_attention_heads``, ``num_key_value_heads`` is
    ``config.num_key_value_heads``)."""
    v = getattr(module, attr, None)
    if _int(v):
        return v
    config = getattr(module, "config", None)
    for name in _CONFIG_COUNTS.get(attr, (attr,)):
        v = getattr(config, name, None)
        if _int(v):
            return v
    raise AttributeError(f"{type(module).__name__} holds no head count {attr!r} (nor does "
                         "its config)")


def set_head_counts(module: nn.Module, spec: AttentionSpec, num_heads: int, num_kv_heads: int,
                    head_dim: int, setter: Callable[[nn.Module, str, Any], None] = setattr
                    ) -> None:
    """Write an attention module's head counts after its heads change: ``spec``'s head-count
    attributes, its ``dims`` (``num_heads * head_dim``) and its ``groups`` (query heads per
    key/value head), on the module itself (``setter``: how to set an attribute)."""
    setter(module, spec.num_heads, num_heads)
    if spec.num_kv_heads:
        setter(module, spec.num_kv_heads, num_kv_heads)
    for a in spec.dims:
        setter(module, a, num_heads * head_dim)
    if spec.groups:
        setter(module, spec.groups, num_heads // num_kv_heads)


def _transformers_spec(module: nn.Module, children: dict[str, nn.Module]
                       ) -> AttentionSpec | None:
    """The layout of an attention module of the ``transformers`` package: GPT-2's fused
    ``c_attn`` (once its ``Conv1D`` layers are ``nn.Linear``,
    :func:`saliency.hf.linear_from_conv1d`; ``split_size`` is ``num_heads * head_dim``) and
    the q/k/v/o projections of the Llama family (head counts in the config, the key/value
    groups in ``num_key_value_groups``)."""
    if not type(module).__module__.startswith("transformers."):
        return None
    groups = "num_key_value_groups" if _int(getattr(module, "num_key_value_groups", None)) \
        else None
    if isinstance(children.get("c_attn"), nn.Linear) and isinstance(children.get("c_proj"),
                                                                      nn.Linear) \
            and _int(getattr(module, "num_heads", None)) and "q_attn" not in children:
        return AttentionSpec("c_proj", qkv="c_attn", num_heads="num_heads", dims=("split_size",))
    if all(isinstance(children.get(n), nn.Linear) for n in ("q_proj", "k_proj", "v_proj",
                                                              "o_proj")):
        try:
            head_count(module, "num_heads")
        except AttributeError:
            return None
        return AttentionSpec("o_proj", "q_proj", "k_proj", "v_proj", None, "num_heads",
                             "num_key_value_heads", (), groups)
    return None


_DESCRIBED: dict[type, AttentionSpec] = {}


def describe_attention(cls: type, *, out: str, q: str | None = None, k: str | None = None,
                       v: str | None = None, qkv: str | None = None,
                       num_heads: str = "num_heads", num_kv_heads: str | None = None,
                       dims: Iterable[str] = ()) -> AttentionSpec:
    """Tell the graph of units where the heads of an attention module class are.

    Give either ``q``, ``k`` and ``v`` (child ``nn.Linear`` names) or ``qkv`` (one fused
    ``nn.Linear``, query rows then key rows then value rows), the output projection ``out``
    and the attributes holding the head counts (read by the module's ``forward``; they are
    updated on removal, with the attributes ``dims`` holding ``num_heads * head_dim``).
    Head ``h`` owns rows ``h*head_dim .. (h+1)*head_dim - 1`` of the query projection and
    the same columns of ``out``; key/value head ``j`` serves query heads
    ``j*G .. (j+1)*G - 1`` (``G = num_heads / num_kv_heads``). The description is checked
    numerically when a model is traced.

    Returns:
        The registered :class:`AttentionSpec`.

    Examples:
        >>> class MyAttention(nn.Module):
        ...     pass
        >>> describe_attention(MyAttention, q="wq", k="wk", v="wv", out="proj",
        ...                    num_heads="h").out
        'proj'
    """
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"describe_attention takes an nn.Module class, got {cls!r}")
    if (qkv is None) == (q is None or k is None or v is None):
        raise ValueError("give either q=, k= and v= or qkv= (the child names of the "
                         "projections)")
    spec = AttentionSpec(out, q, k, v, qkv, num_heads, num_kv_heads, tuple(dims))
    _DESCRIBED[cls] = spec
    return spec


def _mha_types() -> tuple[type, ...]:
    return (nn.MultiheadAttention,)


def attention_spec(module: nn.Module) -> AttentionSpec | None:
    """The :class:`AttentionSpec` of a described or recognised module, else None
    (``nn.MultiheadAttention`` is handled on its own and gives None)."""
    if isinstance(module, nn.MultiheadAttention):
        return None
    for cls in type(module).__mro__:
        if cls in _DESCRIBED:
            return _DESCRIBED[cls]
    if type(module).__module__.startswith("torch."):
        return None
    children = dict(module.named_children())
    known = _transformers_spec(module, children)
    if known is not None:
        return known
    heads = next((a for a in HEAD_ATTRS if isinstance(getattr(module, a, None), int)
                  and not isinstance(getattr(module, a), bool)), None)
    if heads is None:
        return None
    kv = next((a for a in KV_HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)

    def lin(n):
        return isinstance(children.get(n), nn.Linear)

    for q, k, v, o in SEPARATE_NAMES:
        if all(lin(n) for n in (q, k, v, o)):
            return AttentionSpec(o, q, k, v, None, heads, kv)
    for qkv, o in FUSED_NAMES:
        if lin(qkv) and lin(o):
            return AttentionSpec(o, qkv=qkv, num_heads=heads, num_kv_heads=kv)
    return None


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention module whose heads are known (kept as one call
    when tracing)."""
    return isinstance(module, nn.MultiheadAttention) or attention_spec(module) is not None


@dataclass
class Heads:
    """The heads of one attention module: a group of units of the graph.

    Attributes:
        name: the attention module's name (heads are addressed by it, indices ``0..H-1``).
        kind: ``"mha"`` (``nn.MultiheadAttention``) or ``"linear"`` (q/k/v/out ``nn.Linear``
            children, separate or fused).
        num_heads, num_kv_heads, head_dim: the head counts and size.
        out: the output projection's module name.
        rows: per projection ``(module name, tensor names, first row, "q"/"k"/"v")``: where
            each projection's rows start in those tensors (a fused projection has three
            entries; ``nn.MultiheadAttention`` with separate weights has one per weight and
            three for ``in_proj_bias``).
        prunable: whether its heads may be removed; ``reason`` why not.
        spec: the :class:`AttentionSpec` (``"linear"``), else None.
        batch_first: whether the context's dimension 0 is the batch (``nn.MultiheadAttention``
            gives the context batch first in the toolkit's recomputation).
    """

    name: str
    kind: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    out: str
    rows: list[tuple[str, tuple[str, ...], int, str]] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    spec: AttentionSpec | None = None

    @property
    def size(self) -> int:
        """Number of units (query heads)."""
        return self.num_heads

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def members(self) -> list[str]:
        """The modules holding the head's weights (projections; the module itself for
        ``nn.MultiheadAttention``'s fused rows)."""
        return list(dict.fromkeys([r[0] for r in self.rows] + [self.out]))

    def describe(self) -> str:
        """One line: the module, its heads and key/value heads."""
        kv = "" if self.num_kv_heads == self.num_heads else f", {self.num_kv_heads} key/value heads"
        return f"{self.name} ({self.num_heads} heads of {self.head_dim}{kv})"

    def removed_kv(self, heads: torch.Tensor) -> torch.Tensor:
        """The key/value heads whose every query head is in ``heads``."""
        chosen = torch.zeros(self.num_heads, dtype=torch.bool)
        chosen[heads] = True
        return chosen.reshape(self.num_kv_heads, self.group).all(1).nonzero().reshape(-1)

    def positions(self, heads: torch.Tensor) -> dict[Any, list[int]]:
        """Rows removed with the query heads ``heads`` (and the key/value heads they empty),
        keyed by ``(module name, tensor names)``, and the output projection's columns,
        under the key ``" out"``."""
        d = self.head_dim
        kv = self.removed_kv(heads)
        out: dict[Any, list[int]] = {}
        for mod, tensors, start, which in self.rows:
            sel = heads if which == "q" else kv
            out.setdefault((mod, tensors), []).extend(start + h * d + i for h in sel.tolist()
                                                      for i in range(d))
        out[" out"] = [h * d + i for h in heads.tolist() for i in range(d)]
        return out

    def check(self, heads: torch.Tensor, min_units: int = 1) -> None:
        """Check a selection of query heads (sorted, unique, in range): it must leave
        ``min_units`` heads and, with grouped-query attention, every remaining key/value
        head with the same number of query heads."""
        left = self.num_heads - heads.numel()
        if left < max(1, min_units):
            raise ValueError(
                f"attention {self.name!r}: removing heads {heads.tolist()} of {self.num_heads} "
                f"would leave {left} (at least {max(1, min_units)} must stay); keep at least "
                "one head or remove the whole block yourself")
        if self.num_kv_heads == self.num_heads:
            return
        chosen = torch.zeros(self.num_heads, dtype=torch.bool)
        chosen[heads] = True
        kept = (~chosen).reshape(self.num_kv_heads, self.group).sum(1)
        counts = sorted({int(c) for c in kept if c > 0})
        if len(counts) > 1:
            raise ValueError(
                f"attention {self.name!r} has grouped-query attention ({self.num_heads} query "
                f"heads in {self.num_kv_heads} key/value groups of {self.group}: group j is "
                f"query heads j*{self.group}..j*{self.group}+{self.group - 1}); removing heads "
                f"{heads.tolist()} leaves {kept.tolist()} query heads per group, but every "
                "remaining key/value head must keep the same number. Remove the same number "
                "of query heads from each group, or whole groups (which removes their "
                "key/value head)")


# ---------------------------------------------------------------------------
# nn.MultiheadAttention, recomputed; the pruned replacement


def _mha_weights(m: nn.Module):
    inner = m.num_heads * m.head_dim
    kv_inner = inner
    w = getattr(m, "in_proj_weight", None)
    b = getattr(m, "in_proj_bias", None)
    if w is not None:
        wq, wk, wv = w[:inner], w[inner:inner + kv_inner], w[inner + kv_inner:]
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    if b is not None:
        bq, bk, bv = b[:inner], b[inner:inner + kv_inner], b[inner + kv_inner:]
    else:
        bq = bk = bv = None
    return (wq, wk, wv), (bq, bk, bv)


def mha_forward(m: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention``'s computation, written out, for any number of heads.

    The module's arguments and return values (``F.multi_head_attention_forward``'s
    definition: scaled dot-product attention per head, masks added as ``-inf`` where a
    boolean mask is True, dropout on the attention weights in training), with
    ``num_heads * head_dim`` free of ``embed_dim``. The heads' output, batch first
    ``(B, L, H * head_dim)``, is passed to ``m.out_proj`` as a call (hooks on it see each
    head's output). ``is_causal`` without ``attn_mask`` applies the causal mask.
    """
    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError("bias_k/bias_v and add_zero_attn are not supported")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = (t.unsqueeze(0 if m.batch_first else 1) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    bsz, tgt, _ = query.shape
    src = key.shape[1]
    h, d = m.num_heads, m.head_dim
    (wq, wk, wv), (bq, bk, bv) = _mha_weights(m)
    q = F.linear(query, wq, bq).reshape(bsz, tgt, h, d).transpose(1, 2)
    k = F.linear(key, wk, bk).reshape(bsz, src, h, d).transpose(1, 2)
    v = F.linear(value, wv, bv).reshape(bsz, src, h, d).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
    if attn_mask is not None:
        mask = _additive(attn_mask, scores)
        if mask.dim() == 3:  # (B * H, L, S)
            mask = mask.reshape(bsz, h, tgt, src)
        scores = scores + mask
    if key_padding_mask is not None:
        scores = scores + _additive(key_padding_mask, scores).reshape(bsz, 1, 1, src)
    attn = torch.softmax(scores, dim=-1)
    if m.training and m.dropout > 0:
        attn = F.dropout(attn, p=m.dropout)
    ctx = (attn @ v).transpose(1, 2).reshape(bsz, tgt, h * d)
    out = m.out_proj(ctx)
    if not m.batch_first:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(0 if m.batch_first else 1)
    weights = None
    if need_weights:
        weights = attn.mean(1) if average_attn_weights else attn
        if unbatched:
            weights = weights.squeeze(0)
    return out, weights


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            mask, float("-inf"))
    return mask.to(like.dtype)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with any number of heads of a fixed ``head_dim``.

    ``nn.MultiheadAttention`` ties ``num_heads * head_dim`` to ``embed_dim``; once heads are
    removed (:func:`pruners.remove_units`) the module becomes this subclass, in place (the
    same parameters, hooks and optimizer state; the same state-dict keys, with
    ``in_proj_weight`` of ``3 * num_heads * head_dim`` rows and ``out_proj.weight`` of
    ``num_heads * head_dim`` columns). Its ``forward`` takes and returns what
    ``nn.MultiheadAttention``'s does (:func:`mha_forward`); PyTorch's fused fast paths, which
    assume ``embed_dim = num_heads * head_dim``, are off (``_qkv_same_embed_dim`` is False,
    which ``nn.TransformerEncoderLayer`` reads). Averaged attention weights average over
    the remaining heads.

    Args:
        embed_dim: input and output channels.
        num_heads: heads.
        head_dim: channels per head (default ``embed_dim // num_heads``).
        **kwargs: ``dropout``, ``bias``, ``kdim``, ``vdim``, ``batch_first``, ``device``,
            ``dtype`` as for ``nn.MultiheadAttention``.

    Examples:
        >>> m = PrunedMultiheadAttention(8, 3, head_dim=2, batch_first=True)
        >>> x = torch.randn(1, 5, 8)
        >>> m(x, x, x)[0].shape, m.in_proj_weight.shape
        (torch.Size([1, 5, 8]), torch.Size([18, 8]))
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None,
                 **kwargs: Any):
        head_dim = head_dim or embed_dim // num_heads
        super().__init__(embed_dim, 1, **kwargs)
        _resize_mha(self, num_heads, head_dim)

    @classmethod
    def convert(cls, m: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """Make ``m`` a :class:`PrunedMultiheadAttention`, in place (its class changes;
        parameters, hooks and references stay). Returns ``m``."""
        if not isinstance(m, cls):
            m.__class__ = cls
        m._qkv_same_embed_dim = False
        return m

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        return mha_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                           average_attn_weights, is_causal)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


def _resize_mha(m: nn.MultiheadAttention, num_heads: int, head_dim: int) -> None:
    """Fresh parameters for ``num_heads`` heads of ``head_dim`` (initialised as
    ``nn.MultiheadAttention`` initialises its own)."""
    inner = num_heads * head_dim
    ref = m.out_proj.weight
    kw = {"dtype": ref.dtype, "device": ref.device}
    if getattr(m, "in_proj_weight", None) is not None:
        m.in_proj_weight = nn.Parameter(torch.empty(3 * inner, m.embed_dim, **kw))
    else:
        m.q_proj_weight = nn.Parameter(torch.empty(inner, m.embed_dim, **kw))
        m.k_proj_weight = nn.Parameter(torch.empty(inner, m.kdim, **kw))
        m.v_proj_weight = nn.Parameter(torch.empty(inner, m.vdim, **kw))
    if m.in_proj_bias is not None:
        m.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, **kw))
    m.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(
        inner, m.embed_dim, bias=m.out_proj.bias is not None, **kw)
    m.num_heads, m.head_dim = num_heads, head_dim
    m._qkv_same_embed_dim = False
    for p in (m.in_proj_weight, getattr(m, "q_proj_weight", None),
              getattr(m, "k_proj_weight", None), getattr(m, "v_proj_weight", None)):
        if p is not None:
            nn.init.xavier_uniform_(p)
    if m.out_proj.bias is not None:
        nn.init.zeros_(m.out_proj.bias)


def fit_attention(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give every attention module of ``model`` the head count of ``state_dict``.

    For a freshly built architecture about to load a pruned model's weights: an
    ``nn.MultiheadAttention`` whose saved ``out_proj.weight`` has fewer than ``embed_dim``
    columns becomes a :class:`PrunedMultiheadAttention` of that many heads; a recognised or
    described module gets its head-count attributes from its saved projection shapes.
    Tensors are resized, not loaded (``load_state_dict`` next).
    """
    for name, mod in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(mod, nn.MultiheadAttention):
            w = state_dict.get(prefix + "out_proj.weight")
            if w is None:
                continue
            inner = int(w.shape[1])
            if inner != mod.num_heads * mod.head_dim or isinstance(mod, PrunedMultiheadAttention):
                PrunedMultiheadAttention.convert(mod)
                _resize_mha(mod, inner // mod.head_dim, mod.head_dim)
            continue
        spec = attention_spec(mod)
        if spec is None:
            continue
        w = state_dict.get(prefix + spec.out + ".weight",
                           state_dict.get(prefix + spec.out + ".weight_orig"))
        if w is None:
            continue
        h0 = head_count(mod, spec.num_heads)
        d = mod.get_submodule(spec.out).in_features // h0
        h = int(w.shape[1]) // d
        hkv = h
        if spec.num_kv_heads:
            kvname = spec.k if spec.k else spec.qkv
            kw = state_dict.get(prefix + kvname + ".weight",
                                state_dict.get(prefix + kvname + ".weight_orig"))
            rows = int(kw.shape[0]) if spec.k else (int(kw.shape[0]) - h * d) // 2
            hkv = rows // d
        set_head_counts(mod, spec, h, hkv, d)
    return model


# ---------------------------------------------------------------------------
# finding the heads of a model


@contextlib.contextmanager
def fastpath_disabled():
    """PyTorch's fused attention fast paths off (they bypass ``nn.MultiheadAttention``'s
    ``forward`` and its hooks inside ``nn.TransformerEncoderLayer``)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


def _linear_heads(name: str, mod: nn.Module, spec: AttentionSpec) -> Heads:
    prefix = f"{name}." if name else ""
    h = head_count(mod, spec.num_heads)
    hkv = head_count(mod, spec.num_kv_heads) if spec.num_kv_heads else h
    out = mod.get_submodule(spec.out)
    if not isinstance(out, nn.Linear):
        raise TypeError(f"its output projection {spec.out!r} is not an nn.Linear")
    if h < 1 or out.in_features % h:
        raise ValueError(f"its {h} heads do not divide the {out.in_features} input features "
                         f"of {spec.out!r}")
    d = out.in_features // h
    if hkv < 1 or h % hkv:
        raise ValueError(f"its {hkv} key/value heads do not divide its {h} query heads")
    rows = []
    if spec.qkv:
        fused = mod.get_submodule(spec.qkv)
        if not isinstance(fused, nn.Linear) or fused.out_features != (h + 2 * hkv) * d:
            raise ValueError(f"its fused projection {spec.qkv!r} does not have "
                             f"(num_heads + 2 num_kv_heads) * head_dim = {(h + 2 * hkv) * d} "
                             "output features")
        rows = [(prefix + spec.qkv, ("weight", "bias"), 0, "q"),
                (prefix + spec.qkv, ("weight", "bias"), h * d, "k"),
                (prefix + spec.qkv, ("weight", "bias"), (h + hkv) * d, "v")]
    else:
        for which, child, n in (("q", spec.q, h), ("k", spec.k, hkv), ("v", spec.v, hkv)):
            lin = mod.get_submodule(child)
            if not isinstance(lin, nn.Linear) or lin.out_features != n * d:
                raise ValueError(f"its {which} projection {child!r} does not have {n} x "
                                 f"{d} = {n * d} output features")
            rows.append((prefix + child, ("weight", "bias"), 0, which))
    return Heads(name, "linear", h, hkv, d, prefix + spec.out, rows, spec=spec)


def _mha_heads(name: str, mod: nn.MultiheadAttention) -> Heads:
    h, d = mod.num_heads, mod.head_dim
    inner = h * d
    if getattr(mod, "in_proj_weight", None) is not None or "in_proj_weight_orig" in \
            mod._parameters:
        tensors = ("in_proj_weight", "in_proj_bias")
        rows = [(name, tensors, 0, "q"), (name, tensors, inner, "k"),
                (name, tensors, 2 * inner, "v")]
    else:
        rows = [(name, ("q_proj_weight",), 0, "q"), (name, ("k_proj_weight",), 0, "k"),
                (name, ("v_proj_weight",), 0, "v")]
        if mod.in_proj_bias is not None or "in_proj_bias_orig" in mod._parameters:
            rows += [(name, ("in_proj_bias",), 0, "q"), (name, ("in_proj_bias",), inner, "k"),
                     (name, ("in_proj_bias",), 2 * inner, "v")]
    out = f"{name}.out_proj" if name else "out_proj"
    heads = Heads(name, "mha", h, h, d, out, rows)
    if mod.bias_k is not None or mod.add_zero_attn:
        heads.prunable = False
        heads.reason = ("it has bias_k/bias_v or add_zero_attn (a learned key/value "
                        "appended to every head), which the toolkit does not slice")
    return heads


def find_heads(model: nn.Module, example_input: torch.Tensor,
               exclude: Iterable[str] = ()) -> dict[str, Heads]:
    """The attention modules of ``model`` whose heads are units, by module name.

    Runs the model once on ``example_input`` (eval mode, no gradient, fast paths off) to
    check each module is called exactly once, and checks every recognised or described
    module numerically (:func:`check_layout`). A module that fails is kept with
    ``prunable=False`` and the reason.
    """
    exclude = set(exclude)
    found: dict[str, Heads] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            found[name] = _mha_heads(name, mod)
            continue
        spec = attention_spec(mod)
        if spec is None:
            continue
        try:
            found[name] = _linear_heads(name, mod, spec)
        except (TypeError, ValueError) as exc:
            found[name] = Heads(name, "linear", 1, 1, 1, f"{name}.{spec.out}", [],
                                prunable=False, reason=str(exc), spec=spec)
    if not found:
        return found
    calls: dict[str, list] = {n: [] for n in found}
    handles = []
    for n in found:
        def hook(m, args, kwargs, n=n):
            calls[n].append((args, kwargs))
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook, with_kwargs=True))
    from .layers import eval_mode
    try:
        with eval_mode(model), torch.no_grad(), fastpath_disabled():
            model(example_input)
    finally:
        for hd in handles:
            hd.remove()
    for n, heads in found.items():
        if not heads.prunable:
            continue
        if n in exclude:
            heads.prunable, heads.reason = False, "excluded by the caller"
        elif len(calls[n]) != 1:
            heads.prunable = False
            heads.reason = (f"it is called {len(calls[n])} times in forward (its heads must "
                            "be computed once)")
        elif heads.num_heads < 2:
            heads.prunable, heads.reason = False, "it has a single head"
        elif heads.kind == "linear":
            why = check_layout(model.get_submodule(n), heads, *calls[n][0])
            if why:
                heads.prunable, heads.reason = False, why
    return found


def check_layout(mod: nn.Module, heads: Heads, args: tuple, kwargs: dict) -> str | None:
    """Check numerically that ``mod`` computes heads as :class:`Heads` says.

    In a float64 copy: removing the first key/value group's heads (or, with a single
    key/value head, the first query head) by slicing its rows and columns and updating the
    head counts must give what zeroing the same output-projection columns gives. Returns
    None when it does, else why not.
    """
    removed = torch.arange(heads.group) if heads.num_kv_heads > 1 else torch.tensor([0])
    if heads.num_kv_heads == 1 and heads.group < 2:
        return None

    def f64(t):
        return t.to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    args = tuple(f64(a) for a in args)
    kwargs = {k: f64(v) for k, v in kwargs.items()}
    try:
        masked = _unpruned(copy.deepcopy(mod).to(torch.float64).eval())
        cut = copy.deepcopy(masked)
        prefix = f"{heads.name}." if heads.name else ""

        def local(n):
            return n.removeprefix(prefix)

        pos = heads.positions(removed)
        with torch.no_grad():
            out = masked.get_submodule(local(heads.out))
            out.weight[:, pos.pop(" out")] = 0
            expect = masked(*args, **kwargs)
            _cut_linear(cut, local(heads.out), heads.positions(removed)[" out"], dim=1)
            for (modname, _tensors), rows in pos.items():
                _cut_linear(cut, local(modname), rows, dim=0)
            set_head_counts(cut, heads.spec, heads.num_heads - removed.numel(),
                            heads.num_kv_heads - heads.removed_kv(removed).numel(),
                            heads.head_dim)
            got = cut(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason
        return (f"removing a head from a copy of it fails ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); describe it with "
                "saliency.describe_attention or exclude it")
    a, b = _first_tensor(expect), _first_tensor(got)
    if a is None or b is None or a.shape != b.shape or \
            not torch.allclose(a, b, atol=1e-9 * (1 + float(a.abs().max())), rtol=0):
        return ("removing a head's rows and columns from a copy of it does not give what "
                "zeroing its output columns gives: its heads are not laid out as "
                ".view(B, T, num_heads, head_dim) of its projections (query head h using "
                "key/value head h // (num_heads / num_kv_heads)); describe it with "
                "saliency.describe_attention or exclude it")
    return None


def _unpruned(mod: nn.Module) -> nn.Module:
    """``mod`` (a copy) with every ``torch.nn.utils.prune`` mask made permanent (plain
    parameters holding the effective values), so its tensors can be sliced, and without its
    head switches (:class:`saliency.switch.HeadSwitch`, which gate heads elementwise)."""
    from torch.nn.utils import prune
    for m in mod.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
            elif getattr(hook, "head_gate", False):  # a head switch gates heads, not layout
                del m._forward_pre_hooks[key]
    return mod


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _cut_linear(root: nn.Module, name: str, positions: list[int], dim: int) -> None:
    lin = root.get_submodule(name)
    keep = torch.ones(lin.weight.shape[dim], dtype=torch.bool)
    keep[positions] = False
    idx = keep.nonzero().reshape(-1)
    lin.weight = nn.Parameter(lin.weight.index_select(dim, idx))
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias[idx])
        lin.out_features = idx.numel()
    else:
        lin.in_features = idx.numel()


# ---------------------------------------------------------------------------
# the heads' output: hooks, means


@contextlib.contextmanager
def context_hooks(model: nn.Module, heads: Mapping[str, Heads],
                  fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor | None]]):
    """Call ``fns[name](ctx)`` on the heads' output ``ctx`` of each attention module (what
    its output projection reads: ``(B, ..., H * head_dim)``, batch first), and use its
    return value instead when not None. An ``nn.MultiheadAttention`` is recomputed by
    :func:`mha_forward` (which calls its output projection) while the hooks are on; fast
    paths are off. Hooks are removed on exit."""
    handles = []
    try:
        for name, fn in fns.items():
            h = heads[name]
            mod = model.get_submodule(name)
            if h.kind == "mha" and not isinstance(mod, PrunedMultiheadAttention):
                def route(m, args, kwargs, out):
                    return mha_forward(m, *args, **kwargs)
                handles.append(mod.register_forward_hook(route, with_kwargs=True))

            def pre(m, args, fn=fn):
                new = fn(args[0])
                return None if new is None else (new,) + tuple(args[1:])
            handles.append(model.get_submodule(h.out).register_forward_pre_hook(pre))
        with fastpath_disabled():
            yield
    finally:
        for hd in handles:
            hd.remove()


def attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """Multiply-accumulates of an attention module's own arithmetic on one call (all
    samples): the two attention products ``Q K^T`` and ``A V`` (``2 H L S head_dim`` per
    sample) and, for ``nn.MultiheadAttention`` (whose projections are not module calls), the
    q, k, v and output projections. Projections that are ``nn.Linear`` calls are counted
    by their own hooks."""
    if isinstance(module, nn.MultiheadAttention):
        q = args[0] if args else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        if q.dim() == 2:
            bsz, tgt, src = 1, q.shape[0], k.shape[0]
        elif module.batch_first:
            bsz, tgt, src = q.shape[0], q.shape[1], k.shape[1]
        else:
            bsz, tgt, src = q.shape[1], q.shape[0], k.shape[0]
        inner = module.num_heads * module.head_dim
        proj = tgt * module.embed_dim * inner + src * (module.kdim + module.vdim) * inner
        proj += tgt * inner * module.embed_dim
        return bsz * (proj + 2 * module.num_heads * tgt * src * module.head_dim)
    return 0


# ---------------------------------------------------------------------------
# nn.TransformerEncoderLayer / nn.TransformerDecoderLayer, traced through


def _encoder_layer(m: nn.Module, src, src_mask=None, src_key_padding_mask=None,
                   is_causal=False):
    """``nn.TransformerEncoderLayer.forward`` without its fused fast path: the masks go to
    ``self_attn``, which makes them additive itself."""
    x = src
    if m.norm_first:
        x = x + m._sa_block(m.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        x = x + m._ff_block(m.norm2(x))
    else:
        x = m.norm1(x + m._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        x = m.norm2(x + m._ff_block(x))
    return x


def _decoder_layer(m: nn.Module, tgt, memory, tgt_mask=None, memory_mask=None,
                   tgt_key_padding_mask=None, memory_key_padding_mask=None,
                   tgt_is_causal=False, memory_is_causal=False):
    """``nn.TransformerDecoderLayer.forward``."""
    x = tgt
    if m.norm_first:
        x = x + m._sa_block(m.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        x = x + m._mha_block(m.norm2(x), memory, memory_mask, memory_key_padding_mask,
                             memory_is_causal)
        x = x + m._ff_block(m.norm3(x))
    else:
        x = m.norm1(x + m._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = m.norm2(x + m._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                     memory_is_causal))
        x = m.norm3(x + m._ff_block(x))
    return x


#: layer types whose forward the graph of units traces through (their FFN neurons are
#: units), as the toolkit's written-out forward of each
KNOWN_LAYERS: dict[type, Callable[..., Any]] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerDecoderLayer: _decoder_layer,
}

_LAYER_CHECKS: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()


def layer_forward(m: nn.Module) -> Callable[..., Any] | None:
    """The written-out forward of a known transformer layer that passed
    :func:`check_transformer_layers` (the graph of units traces through it), else None
    (the layer stays one call: its attention heads are units, its FFN neurons are not)."""
    fn = KNOWN_LAYERS.get(type(m))
    if fn is None or _LAYER_CHECKS.get(m, "not checked") is not None:
        return None
    return fn


def transformer_layer_reason(m: nn.Module) -> str | None:
    """Why a known transformer layer is kept as one call (None: it is traced through)."""
    if type(m) not in KNOWN_LAYERS:
        return None
    return _LAYER_CHECKS.get(m, "not checked")


def check_transformer_layers(model: nn.Module, example_input: torch.Tensor) -> None:
    """Check each ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` of
    ``model`` (exactly those classes: a subclass may change ``forward``) for tracing
    through.

    Their forward is fixed PyTorch code (pre- or post-norm; ``_sa_block``, ``_mha_block``,
    ``_ff_block``: ``linear2(dropout(activation(linear1(x))))``), written out here without
    the fused fast path so that ``torch.fx`` can trace it and the FFN's hidden features,
    ``linear1``'s outputs, are units. Each layer must be called exactly once on
    ``example_input``, and in a float64 copy (eval mode, fast paths off) the written-out
    forward must give what the layer's own ``forward`` gives on the arguments it was called
    with (``<= 1e-12`` relative); a layer that fails stays one call, its reason kept
    (:func:`transformer_layer_reason`).
    """
    layers = {n: m for n, m in model.named_modules() if type(m) in KNOWN_LAYERS}
    if not layers:
        return
    calls: dict[str, list] = {n: [] for n in layers}
    handles = []
    for n, m in layers.items():
        def hook(mod, args, kwargs, n=n):
            calls[n].append((args, kwargs))
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    from .layers import eval_mode
    try:
        with eval_mode(model), torch.no_grad(), fastpath_disabled():
            model(example_input)
    finally:
        for hd in handles:
            hd.remove()
    for n, m in layers.items():
        if len(calls[n]) != 1:
            _LAYER_CHECKS[m] = f"it is called {len(calls[n])} times in forward"
            continue
        _LAYER_CHECKS[m] = _check_layer(m, *calls[n][0])


def _check_layer(m: nn.Module, args: tuple, kwargs: dict) -> str | None:
    def f64(t):
        return t.to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    try:
        twin = _unpruned(copy.deepcopy(m)).to(torch.float64).eval()
        args = tuple(f64(a) for a in args)
        kwargs = {k: f64(v) for k, v in kwargs.items()}
        with torch.no_grad(), fastpath_disabled():
            expect = twin(*args, **kwargs)
            got = KNOWN_LAYERS[type(m)](twin, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason
        return (f"its forward written out fails ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})")
    if not isinstance(expect, torch.Tensor) or not isinstance(got, torch.Tensor) or \
            expect.shape != got.shape or not torch.allclose(
                expect, got, atol=1e-12 * (1 + float(expect.abs().max())), rtol=0):
        return "its forward written out does not give what its own forward gives"
    return None
