"""Baselines: networks of the source documents trained without pruning.

* ``fmnist-mlp`` -- MLP 784-256-256-10 on Fashion-MNIST (Adam). The
  Fashion-MNIST benchmark lists 88.3-90.0% test accuracy for MLPs of this
  size.
* ``fmnist-thesis-cnn`` -- the small CNN (App. C.1, 20,522 parameters) of U.
  Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
  NYU, 2018 (https://arxiv.org/abs/1806.06068; below: Evci 2018 or the
  thesis), in the thesis's setting (Sec. 2.1: SGD, learning rate 0.01, batch
  32, 10 epochs, no momentum or weight decay), on Fashion-MNIST instead of
  MNIST.
"""

from __future__ import annotations

from experiments.harness.registry import register
from experiments.harness.run import train_run

_DATA = {"dataset": "fashion-mnist", "data_dir": "", "val_size": 5000, "limit": None,
         "data_seed": 0, "seed": 0}
_QUICK = {"limit": 512, "epochs": 1, "eval_batch_size": 256}
_SPACE = {"lr": ("loguniform", 1e-4, 1e-2), "batch_size": ("choice", [32, 64, 128, 256]),
          "weight_decay": ("loguniform", 1e-7, 1e-3)}


@register("fmnist-mlp", "Fashion-MNIST MLP 784-256-256-10 without pruning (Adam, 15 epochs)",
          defaults={**_DATA, "widths": [784, 256, 256, 10], "optimizer": "adam", "lr": 1e-3,
                    "batch_size": 128, "epochs": 15, "weight_decay": 0.0, "momentum": 0.0,
                    "lr_rule": "constant", "eval_batch_size": 2000, "max_batches": None},
          quick=_QUICK, space=_SPACE, source="baseline (Fashion-MNIST benchmark MLPs)")
def fmnist_mlp(cfg, ctx):
    _, results = train_run(cfg, ctx, "mlp", {"widths": list(cfg["widths"])},
                           title="MLP 784-256-256-10 on Fashion-MNIST")
    return results


@register("fmnist-thesis-cnn",
          "Fashion-MNIST thesis CNN (20,522 params) without pruning (SGD 0.01, batch 32)",
          defaults={**_DATA, "optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 10,
                    "weight_decay": 0.0, "momentum": 0.0, "lr_rule": "constant",
                    "eval_batch_size": 2000, "max_batches": None},
          quick=_QUICK, space=_SPACE, source="Evci 2018, Sec. 2.1, App. C.1")
def fmnist_thesis_cnn(cfg, ctx):
    _, results = train_run(cfg, ctx, "thesis_cnn", {},
                           title="thesis CNN on Fashion-MNIST (SGD 0.01, batch 32)")
    return results
