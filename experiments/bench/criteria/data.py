"""The data of a benchmark cell and the trained baseline it prunes (cached once per seed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from experiments.bench.criteria.setting import Network, Setting
from experiments.bench.peers.data import synthetic_images, trained_model
from experiments.bench.peers.setting import ModelSpec
from experiments.harness.datasets import Splits, get_dataset

__all__ = ["Data", "load_data", "baseline"]

_SPLITS: dict[tuple[str, int], Splits] = {}


class Data:
    """One (network, seed)'s data: the splits, the fine-tuning subset, the scoring batches and
    the evaluation set of a phase (validation on development seeds, test on held-out ones)."""

    def __init__(self, splits: Splits, net: Network, s: Setting, seed: int, phase: str):
        self.splits = splits
        g = torch.Generator().manual_seed(seed + 1)
        n_ft = min(net.finetune_images, len(splits.train))
        sub = torch.randperm(len(splits.train), generator=g)[:n_ft]
        xs, ys = splits.train.tensors
        self.finetune = TensorDataset(xs[sub], ys[sub])
        n_sc = min(net.scoring_images, n_ft)
        self.scoring = [(xs[sub][i:min(i + s.scoring_batch, n_sc)],
                         ys[sub][i:min(i + s.scoring_batch, n_sc)])
                        for i in range(0, n_sc, s.scoring_batch)]
        held = splits.val if phase.startswith("screen") else splits.test
        n_ev = len(held) if net.eval_images is None else min(net.eval_images, len(held))
        self.eval = TensorDataset(*(t[:n_ev] for t in held.tensors))
        self.example = xs[:1]
        self.seed = seed


def _splits(s: Setting, seed: int) -> Splits:
    key = (s.data, seed)
    if key not in _SPLITS:
        _SPLITS.clear()  # one seed's data at a time per process
        _SPLITS[key] = synthetic_images(seed) if s.data == "synthetic" \
            else get_dataset(s.data, seed=seed)
    return _SPLITS[key]


def load_data(net: Network, s: Setting, seed: int, phase: str) -> Data:
    """The data of ``net`` on ``seed`` for ``phase``: validation images to evaluate on in the
    screen phases (``"screen-..."``), test images otherwise."""
    return Data(_splits(s, seed), net, s, seed, phase)


def _train_splits(net: Network, splits: Splits, seed: int) -> Splits:
    if net.train_images is None or net.train_images >= len(splits.train):
        return splits
    g = torch.Generator().manual_seed(seed + 2)
    sub = torch.randperm(len(splits.train), generator=g)[:net.train_images]
    return replace(splits, train=TensorDataset(*(t[sub] for t in splits.train.tensors)))


def _spec(net: Network) -> ModelSpec:
    return ModelSpec(net.name, net.factory, dict(net.kwargs))


def baseline(net: Network, s: Setting, seed: int, cache: Path, log) -> tuple[nn.Module,
                                                                              dict[str, Any]]:
    """``net`` trained on ``seed``'s training images (Adam, ``net.train_epochs``), checkpointed
    after every epoch under ``cache`` and reused by every method and phase of that seed."""
    splits = _train_splits(net, _splits(s, seed), seed)
    cache.mkdir(parents=True, exist_ok=True)
    return trained_model(_spec(net), splits, net, cache, seed, log)
