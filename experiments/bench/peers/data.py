"""The data of a peers run and the trained networks it prunes (cached, resumable)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.bench.peers.setting import ModelSpec, Setting
from experiments.harness.datasets import Splits, get_dataset
from experiments.harness.models import build_model
from experiments.harness.training import TrainConfig, Trainer

__all__ = ["SYNTHETIC_NAME", "synthetic_images", "prepare_data", "network_data",
           "trained_model"]

#: name of the generated data set; change it whenever :func:`synthetic_images` changes, since
#: it is part of the trained networks' cache key
SYNTHETIC_NAME = "synthetic-images-v2"


def synthetic_images(seed: int, n_train: int = 1600, n_test: int = 500,
                     noise: float = 1.0) -> Splits:
    """A small image-shaped 10-class problem for ``--quick``.

    Each class has a smooth random prototype (7x7 uniform noise upsampled
    bilinearly to 28x28); an image is its class's prototype plus Gaussian
    noise of standard deviation ``noise``, clipped to [0, 1]. With the quick
    setting the MLP reaches about 0.9 and the CNN about 0.85 test accuracy,
    so pruning visibly costs accuracy and fine-tuning recovers some.
    """
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test + 200
    protos = F.interpolate(torch.rand(10, 1, 7, 7, generator=g), size=(28, 28),
                           mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (protos[y] + noise * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    tr, va, te = (slice(0, n_train), slice(n_train, n_train + 200),
                  slice(n_train + 200, n))
    return Splits(TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]),
                  TensorDataset(x[te], y[te]), 10, (1, 28, 28), SYNTHETIC_NAME)


def _load_data(name: str, seed: int) -> Splits:
    if name == "synthetic":
        return synthetic_images(seed)
    return get_dataset(name, seed=seed)


def prepare_data(name: str, s: Setting, seed: int
                 ) -> tuple[Splits, TensorDataset, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The splits, the fine-tuning subset and the scoring batches of a run.

    The fine-tuning subset is ``s.finetune_samples`` training images drawn
    with ``seed + 1``; the scoring data are its first ``s.scoring_samples``
    images in batches of ``s.scoring_batch``.
    """
    splits = _load_data(name, seed)
    g = torch.Generator().manual_seed(seed + 1)
    n_ft = min(s.finetune_samples, len(splits.train))
    sub = torch.randperm(len(splits.train), generator=g)[:n_ft]
    xs, ys = splits.train.tensors
    finetune = TensorDataset(xs[sub], ys[sub])
    scoring = [(finetune.tensors[0][i:i + s.scoring_batch],
                finetune.tensors[1][i:i + s.scoring_batch])
               for i in range(0, min(s.scoring_samples, n_ft), s.scoring_batch)]
    return splits, finetune, scoring


def network_data(splits: Splits, scoring: list, s: Setting) -> tuple[Splits, list]:
    """The test set and scoring batches of one network's setting ``s``: the run's, cut to the
    first ``s.test_images`` test images (all when None) and the first ``s.scoring_samples``
    scoring images."""
    if s.test_images is not None and s.test_images < len(splits.test):
        xs, ys = splits.test.tensors
        splits = replace(splits, test=TensorDataset(xs[:s.test_images], ys[:s.test_images]))
    out, left = [], s.scoring_samples
    for x, y in scoring:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(y[:left])
    return splits, out


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_model(spec: ModelSpec, splits: Splits, s: Setting, cache: Path, seed: int,
                  log) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``spec`` trained on ``splits.train``; cached and resumable.

    The harness's :class:`~experiments.harness.training.Trainer` writes a checkpoint
    atomically after every epoch; a rerun resumes from it, and a finished
    one is loaded without training. The file name carries a hash of
    everything that decides the weights.
    """
    cfg = TrainConfig(epochs=s.train_epochs, batch_size=s.train_batch, optimizer="adam",
                      lr=s.train_lr, seed=seed, eval_batch_size=s.eval_batch)
    arch = {"model": spec.factory, "kwargs": dict(spec.kwargs)}
    key = _key({"arch": arch, "cfg": asdict(cfg), "data": splits.name,
                "n": len(splits.train), "torch_seed": seed})
    path = cache / f"{spec.name}-{key}.pt"
    torch.manual_seed(seed)
    model = build_model(spec.factory, **spec.kwargs)
    start = time.perf_counter()
    trainer = Trainer(model, splits.train, val_set=splits.val, config=cfg, arch=arch,
                      checkpoint=path, progress=False)
    resumed = trainer.epoch
    trainer.fit()
    model = trainer.model.eval()
    info = {"checkpoint": str(path), "epochs_loaded": resumed,
            "epochs_trained": trainer.epoch - resumed,
            "train_seconds": round(time.perf_counter() - start, 1)}
    log(f"  {spec.name}: {'trained' if info['epochs_trained'] else 'loaded'} "
        f"({resumed} epochs from the cache, {info['epochs_trained']} trained) -> {path}")
    return model, info
