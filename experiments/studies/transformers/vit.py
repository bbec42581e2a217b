"""ViT-tiny on Fashion-MNIST: one-shot pruning of attention heads and FFN neurons.

The network: the zoo's ``vit_tiny`` (A. Dosovitskiy et al., *An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale*, ICLR 2021, https://arxiv.org/abs/2010.11929):
7x7 patches (16 tokens), 4 pre-norm blocks of width 64, **8 heads of 8 channels** (the zoo's
default is 4 of 16; 8 heads give the five fractions distinct head counts and the per-layer
correlations 8 points), an FFN of 256 GELU neurons, mean pooling; 204,938 parameters, as
with 4 heads. The units: the 8 heads of every ``blocks.{i}.attn`` and the 256 neurons of
every ``blocks.{i}.fc1`` (the residual stream is not prunable: LayerNorm mixes its
channels).

``vit-head-ffn-pruning`` (design fixed before the run; :mod:`.oneshot` holds the machinery):

* **Baseline**: Adam, learning rate 1e-3 decayed to 0 by a cosine over every optimizer step
  (:class:`~experiments.harness.callbacks.CosineLR`), no weight decay, batch 128,
  15 epochs, seed 0; 55,000 training images, 5,000 held out for validation, the 10,000 test
  images. (A constant 1e-3 reached 86.3% test accuracy after 12 epochs in a measurement
  beforehand; one epoch took 18-26 s with one thread on the shared 2-core machine.)
* **Scores**: ``mrs``, ``norm`` (L1 of the head's q/k/v rows and output columns, of the
  neuron's fc1 row and fc2 column), ``taylor`` (Molchanov et al. 2017; for a head, Michel et
  al. 2019's importance), ``random_unit`` (seed 0) and exact ``mrp`` (the oracle) on one
  fixed sample of 1,000 training images, the same sample giving the means of the
  replacement.
* **Grid**: fractions 0.1, 0.2, 0.3, 0.5, 0.7 of every layer's units, ``round(f n)`` at most
  ``n - 1`` per layer: 1, 2, 2, 4, 6 of 8 heads and 26, 51, 77, 128, 179 of 256 neurons in
  every block; the lowest-scored units removed with ``replacement="mean"``.
* **Recovery**: the same for every cell: one epoch over a fixed subset of 10,000 training
  images (79 steps of 128), a fresh Adam at 3e-4 (constant), the data order of seed 0.
* **Reported**: test (and validation) accuracy and loss right after pruning and after the
  recovery, parameters and MACs per sample (:func:`pruners.count_macs`: projections and both
  attention products), the removal's time; Spearman's correlation of each ranking with exact
  MRP per layer, heads and FFN neurons separately. One seed: no claim is made, the figures are
  reported.

Outputs: ``baseline/`` (``checkpoint.pt`` every epoch, ``history.csv``, ``settings.json``),
``scores.json`` (the scores, reused by a rerun on the same trained network), ``unit_scores.csv``,
``spearman.csv``, ``pruning.csv`` (one row per cell), ``pruning.png``, every cell's folder
``cells/{scorer}-f{fraction}/`` (``pruned.pt``, ``pruned.json``, ``checkpoint.pt``,
``history.csv``, ``settings.json``) and ``results.json``. ``--quick``: 384 images per split, a
2-block ViT of width 16 (4 heads, FFN 32), four epochs at 3e-3, in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from experiments.harness.registry import register
from experiments.harness.run import RunContext, load_data
from experiments.studies.transformers import oneshot

__all__ = ["model_kwargs"]

_DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
    "data_seed": 0, "seed": 0,
    "patch_size": 7, "depth": 4, "width": 64, "heads": 8, "ffn": 256,
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "epochs": 15,
    "lr_schedule": "cosine", "eval_batch_size": 1000, "max_batches": None,
    "scorers": ["mrs", "norm", "taylor", "random_unit", "mrp"],
    "fractions": [0.1, 0.2, 0.3, 0.5, 0.7],
    "score_samples": 1000, "score_batch": 250,
    "recover_samples": 10000, "recover_epochs": 1, "recover_lr": 3e-4,
}
#: seconds: 384 images per split, a 2-block ViT of width 16
_QUICK: dict[str, Any] = {
    "limit": 384, "depth": 2, "width": 16, "heads": 4, "ffn": 32, "epochs": 4, "lr": 3e-3,
    "batch_size": 32,
    "eval_batch_size": 384, "score_samples": 64, "score_batch": 32, "recover_samples": 96,
}


def model_kwargs(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The ``vit_tiny`` arguments a config names."""
    return {k: int(cfg[k]) for k in ("patch_size", "depth", "width", "heads", "ffn")}


def _validate(cfg: Mapping[str, Any]) -> None:
    oneshot.validate(cfg)
    for k in ("patch_size", "depth", "width", "heads", "ffn"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
    if cfg["width"] % cfg["heads"]:
        raise ValueError(f"width ({cfg['width']}) must be a multiple of heads ({cfg['heads']})")
    if 28 % cfg["patch_size"]:
        raise ValueError(f"patch_size must divide 28, got {cfg['patch_size']}")


@register("vit-head-ffn-pruning",
          "ViT-tiny on Fashion-MNIST: one-shot pruning of heads and FFN neurons at five "
          "fractions (mean replacement), ranked by MRS, norm, Taylor, random and exact MRP; "
          "accuracy before/after a short recovery; Spearman with MRP per layer",
          defaults=_DEFAULTS, quick=_QUICK, validate=_validate,
          source="Dosovitskiy et al. 2021 (ViT); Michel et al. 2019 (heads); Evci 2018 "
                 "(MRS, MRP, mean replacement)")
def vit_head_ffn_pruning(cfg: dict, ctx: RunContext) -> dict:
    """ViT-tiny pruned once per scorer and fraction (see the module)."""
    data = load_data(cfg)
    kw = model_kwargs(cfg)
    res = oneshot.run_study(
        cfg, ctx, data, model="vit_tiny", model_kwargs=kw, loss_fn=F.cross_entropy,
        report=("test", "acc"),
        title=(f"vit_tiny (depth {kw['depth']}, width {kw['width']}, {kw['heads']} heads, FFN "
               f"{kw['ffn']}) on {cfg['dataset']}: one-shot pruning with mean replacement"))
    base = res["baseline"]
    ctx.log(f"baseline: test accuracy {100 * base['test_acc']:.2f}%, validation "
            f"{100 * base['val_acc']:.2f}%, {res['model']['params']:,} parameters, "
            f"{res['model']['macs']:,} MACs per image")
    return res
