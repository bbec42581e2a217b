"""Model size: parameter counts and multiply-accumulates (MACs)."""

from __future__ import annotations

import torch
import torch.nn as nn

from saliency.attention import attention_macs, attention_spec, fastpath_disabled, head_count
from saliency.layers import PRODUCERS, eval_mode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module, *, count_masked: bool = False) -> int:
    """Number of parameters of ``model``.

    Entries masked by :mod:`torch.nn.utils.prune` (mask 0) are not counted
    unless ``count_masked=True``, so a masked model and its physically shrunk
    twin report the same number. A parameter shared by several modules counts
    once.
    """
    total = 0
    seen: set[int] = set()
    for mod in model.modules():
        for pname, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if not count_masked and pname.endswith("_orig"):
                mask = mod._buffers.get(pname[: -len("_orig")] + "_mask")
                if mask is not None:
                    total += int(mask.count_nonzero())
                    continue
            total += p.numel()
    return total


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, per sample of ``example_input``.

    Counts the Linear and Conv layers of :data:`saliency.layers.PRODUCERS`
    (dense cost: masking does not make a layer cheaper) and attention
    (:mod:`saliency.attention`): the two attention products ``Q K^T`` and ``A V``,
    ``2 H L S head_dim`` per sample for ``H`` heads, ``L`` queries and ``S`` keys, and, for
    ``nn.MultiheadAttention`` (whose projections are not module calls), the q, k, v and
    output projections; PyTorch's attention fast paths are off while counting. The model runs once in
    eval mode without gradients; its mode is restored.
    """
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += PRODUCERS[type(mod)].macs(mod, inp[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m) in PRODUCERS]

    def mha_hook(mod, args, kwargs):
        nonlocal total
        total += attention_macs(mod, args, kwargs)

    def tokens(t: torch.Tensor) -> int:
        return t.numel() // t.shape[-1]

    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(mha_hook, with_kwargs=True))
            continue
        spec = attention_spec(m)
        if spec is None:
            continue
        seen: dict[str, int] = {}

        def kv_hook(mod, inp, out, seen=seen):  # key tokens of every sample, together
            seen["keys"] = tokens(out)

        def out_hook(mod, inp, out, m=m, spec=spec, seen=seen):
            nonlocal total
            heads = head_count(m, spec.num_heads)
            d = mod.in_features // heads
            queries = tokens(inp[0])
            keys = seen.get("keys", queries)
            batch = inp[0].shape[0] if inp[0].dim() > 2 else 1
            total += 2 * heads * d * queries * keys // max(1, batch)

        handles.append(m.get_submodule(spec.k or spec.qkv).register_forward_hook(kv_hook))
        handles.append(m.get_submodule(spec.out).register_forward_hook(out_hook))
    try:
        with eval_mode(model), torch.no_grad(), fastpath_disabled():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return total // max(1, int(example_input.shape[0]))
