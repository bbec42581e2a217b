"""Models of the ``transformers`` package (Hugging Face), without importing it.

The graph of units reaches them through ``torch.export`` (:mod:`saliency.export`; ``torch.fx``
cannot trace them), their attention modules are recognised (GPT-2's fused ``c_attn``, the
Llama family's q/k/v/o projections with grouped-query attention; head counts read from the
config and written on the module once heads are removed: :func:`saliency.attention.head_count`),
and their RMSNorm modules mix the residual stream's channels as ``nn.RMSNorm`` does. Two
things remain for the user, and this module does them:

* :class:`Logits`: the model called with ``input_ids`` only, the key/value cache off, the
  logits returned: a forward of one tensor to one tensor, which ``torch.export`` traces and
  every scorer calls;
* :func:`linear_from_conv1d`: GPT-2 stores its projections as ``Conv1D`` layers, a Linear
  whose weight is transposed (``(in, out)``). They are turned into ``nn.Linear`` layers
  computing the same function, keeping each ``Parameter`` object (its values transposed in
  place) and transposing an optimizer's state with it, so an optimizer built before still
  updates the model. The model still runs as a ``transformers`` model (its code only calls
  the layers).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Logits", "linear_from_conv1d"]


class Logits(nn.Module):
    """``model(input_ids=ids, use_cache=False).logits``: a ``transformers`` causal language
    model as a module of one tensor to one tensor, for :func:`saliency.trace`, the scorers and
    the pruners. The wrapped model is ``self.model`` (its parameter names get the prefix
    ``model.``); prune through the wrapper and use ``wrapper.model`` as before (``generate``,
    the cache).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _is_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.") and \
        getattr(module, "weight", None) is not None and module.weight.dim() == 2


def linear_from_conv1d(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
                       ) -> list[str]:
    """Replace every ``transformers`` ``Conv1D`` of ``model`` by the ``nn.Linear`` computing
    the same function, in place.

    The Linear holds the same ``Parameter`` objects: the weight's values are transposed in
    place (``(in, out)`` to ``(out, in)``), the bias is kept. When ``optimizer`` is given,
    each of its per-parameter state tensors shaped like the old weight (Adam's moments, say)
    is transposed with it.

    Returns:
        The names of the replaced layers.
    """
    names = [n for n, m in model.named_modules() if _is_conv1d(m)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        w, b = old.weight, old.bias
        n_in, n_out = w.shape
        state = optimizer.state.get(w, {}) if optimizer is not None else {}
        with torch.no_grad():
            w.data = w.data.t().contiguous()
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and tuple(value.shape) == (n_in, n_out):
                    state[key] = value.t().contiguous()
        lin = nn.Linear(n_in, n_out, bias=b is not None, device=w.device, dtype=w.dtype)
        lin.weight = w
        if b is not None:
            lin.bias = b
        lin.train(old.training)
        setattr(parent, child, lin)
    return names
