"""A character-level decoder language model on ``fortunes``: one-shot pruning of heads and
SwiGLU neurons.

The network: the zoo's ``decoder_lm`` (pre-norm, RMSNorm, SwiGLU FFN, grouped-query causal
attention, learned positions), smaller than its defaults so that training fits in about ten
minutes of one CPU thread on a shared machine (the defaults took about 4.7 minutes per epoch):
context 64 characters, 4 blocks of width 64, **8 query heads of 8 channels sharing 2
key/value heads** (4 query heads per group), 176 SwiGLU neurons (8/3 of the width rounded up
to a multiple of 8), untied embeddings; 195,392 parameters with the 114-symbol vocabulary
of the training text. The data: Debian's ``fortunes`` quotations split by quotation (80% /
10% / 10%), windows of 65 characters, no overlap; only the validation split is evaluated.

``decoder-lm-pruning`` (design fixed before the run; :mod:`.oneshot` holds the machinery):

* **Baseline**: Adam, 1e-3 decayed to 0 by a cosine, batch 64, 3 epochs, seed 0.
* **Scores**: ``mrs``, ``norm``, ``taylor``, ``random_unit`` and exact ``mrp`` on 256 fixed
  training windows (16,384 characters; a window's loss is the sum of its characters'), the
  same windows giving the means of the replacement.
* **Grid**: fractions 0.1, 0.2, 0.3, 0.5, 0.7; heads per key/value group (``round(f 4)`` of
  the group's 4 query heads, at most 3: 0, 1, 1, 2, 3 per group, so 0, 2, 2, 4, 6 of every
  block's 8 heads; every group keeps as many query heads as the others, which grouped-query
  attention needs), neurons ``round(f 176)`` per block (18, 35, 53, 88, 123), the lowest
  scored removed with ``replacement="mean"``.
* **Recovery**: the same for every cell: one epoch over 2,048 fixed training windows (32 steps
  of 64), a fresh Adam at 3e-4.
* **Reported**: validation loss per character (nats; and next-character accuracy) right after
  pruning and after the recovery, parameters, MACs per window; Spearman with exact MRP per
  layer. One seed: the figures are reported, nothing is claimed.

Outputs as :mod:`~experiments.studies.transformers.vit`. ``--quick``: 256 windows of 32
characters per split, a 2-block model of width 16, in seconds.

``hf-llama-pruning``: the same design, data, widths, training, grid and recovery on the
``transformers`` package's ``LlamaForCausalLM`` (the zoo's ``hf_llama``: rotary positions
instead of learned ones, the library's code instead of the zoo's), whose graph of units is
built through ``torch.export``. Needs the ``hf`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from experiments.harness.datasets import get_dataset
from experiments.harness.registry import register
from experiments.harness.run import RunContext
from experiments.harness.training import token_cross_entropy
from experiments.studies.transformers import oneshot

__all__ = ["load_text", "model_kwargs"]

_DEFAULTS: dict[str, Any] = {
    "dataset": "fortunes", "data_dir": "", "context": 64, "val_size": 0.1, "test_size": 0.1,
    "limit": None, "data_seed": 0, "seed": 0,
    "depth": 4, "width": 64, "heads": 8, "kv_heads": 2, "ffn": 176,
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "epochs": 3,
    "lr_schedule": "cosine", "eval_batch_size": 500, "max_batches": None,
    "scorers": ["mrs", "norm", "taylor", "random_unit", "mrp"],
    "fractions": [0.1, 0.2, 0.3, 0.5, 0.7],
    "score_samples": 256, "score_batch": 64,
    "recover_samples": 2048, "recover_epochs": 1, "recover_lr": 3e-4,
}
#: seconds: 256 windows of 32 characters per split, a 2-block model of width 16
_QUICK: dict[str, Any] = {
    "limit": 256, "context": 32, "depth": 2, "width": 16, "heads": 4, "kv_heads": 2, "ffn": 24,
    "epochs": 3, "lr": 3e-3, "batch_size": 32, "eval_batch_size": 256, "score_samples": 32,
    "score_batch": 16, "recover_samples": 64,
}


def load_text(cfg: Mapping[str, Any]):
    """The ``fortunes`` windows a config names: train and validation (no test split is
    evaluated), ``num_classes`` the vocabulary."""
    d = get_dataset(cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                    context=int(cfg["context"]), val_size=cfg["val_size"],
                    test_size=cfg["test_size"], limit=cfg.get("limit"),
                    seed=int(cfg["data_seed"]))
    return SimpleNamespace(train=d.train, val=d.val, test=None, info=d.info,
                           num_classes=d.num_classes)


def model_kwargs(cfg: Mapping[str, Any], vocab_size: int) -> dict[str, int]:
    """The ``decoder_lm`` arguments a config names."""
    return {"vocab_size": int(vocab_size), "context": int(cfg["context"]),
            **{k: int(cfg[k]) for k in ("depth", "width", "heads", "kv_heads", "ffn")}}


def _validate(cfg: Mapping[str, Any]) -> None:
    oneshot.validate(cfg)
    for k in ("context", "depth", "width", "heads", "kv_heads", "ffn"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
    if cfg["width"] % cfg["heads"] or cfg["heads"] % cfg["kv_heads"]:
        raise ValueError(f"width ({cfg['width']}) must be a multiple of heads ({cfg['heads']}), "
                         f"heads a multiple of kv_heads ({cfg['kv_heads']})")
    if cfg["dataset"] != "fortunes":
        raise ValueError(f"dataset must be 'fortunes' (character windows), got "
                         f"{cfg['dataset']!r}")


@register("decoder-lm-pruning",
          "Character-level decoder LM (RMSNorm, SwiGLU, grouped-query attention) on fortunes: "
          "one-shot pruning of heads and SwiGLU neurons at five fractions (mean replacement), "
          "ranked by MRS, norm, Taylor, random and exact MRP; validation loss per character "
          "before/after a short recovery; Spearman with MRP per layer",
          defaults=_DEFAULTS, quick=_QUICK, validate=_validate,
          source="Michel et al. 2019 (heads); Evci 2018 (MRS, MRP, mean replacement)")
def decoder_lm_pruning(cfg: dict, ctx: RunContext) -> dict:
    """The decoder LM pruned once per scorer and fraction (see the module)."""
    return _study(cfg, ctx, "decoder_lm", "decoder_lm")


def _study(cfg: dict, ctx: RunContext, model: str, what: str) -> dict:
    """The study on zoo model ``model`` (``what`` names it in the figure's title)."""
    data = load_text(cfg)
    kw = model_kwargs(cfg, data.num_classes)
    res = oneshot.run_study(
        cfg, ctx, data, model=model, model_kwargs=kw, loss_fn=token_cross_entropy,
        report=("val", "loss"),
        title=(f"{what} (depth {kw['depth']}, width {kw['width']}, {kw['heads']} heads / "
               f"{kw['kv_heads']} kv, SwiGLU {kw['ffn']}) on fortunes: one-shot pruning with "
               "mean replacement"))
    base = res["baseline"]
    ctx.log(f"baseline: validation loss {base['val_loss']:.4f} nats per character "
            f"(next-character accuracy {100 * base['val_acc']:.2f}%), "
            f"{res['model']['params']:,} parameters, {res['model']['macs']:,} MACs per window")
    return res


@register("hf-llama-pruning",
          "Llama model of the transformers package (RMSNorm, SwiGLU, grouped-query attention, "
          "rotary positions) on fortunes, character level: one-shot pruning of heads and "
          "SwiGLU neurons at five fractions (mean replacement), ranked by MRS, norm, Taylor, "
          "random and exact MRP; validation loss per character before/after a short recovery; "
          "Spearman with MRP per layer (needs the hf extra)",
          defaults=_DEFAULTS, quick=_QUICK, validate=_validate,
          source="Touvron et al. 2023 (LLaMA); Michel et al. 2019 (heads); Evci 2018 (MRS, "
                 "MRP, mean replacement)")
def hf_llama_pruning(cfg: dict, ctx: RunContext) -> dict:
    """``transformers``' Llama pruned once per scorer and fraction (see the module)."""
    return _study(cfg, ctx, "hf_llama", "transformers LlamaForCausalLM")
