"""Splitting helpers: seeded validation splits, ``limit``, standardization, image splits.

Every split is drawn with ``torch.Generator().manual_seed(seed)``, so the same
seed gives the same samples in every run.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.harness.datasets.base import Splits

__all__: list[str] = []


def _count(size: int | float, n: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer)):
        raise TypeError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1), got {size}")
        return int(round(size * n))
    if not 0 <= size < n:
        raise ValueError(f"{what} must be in [0, {n}) for a training set of {n}, got {size}")
    return int(size)


def _check_seed_limit(seed: int, limit: int | None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")


def _carve(n_train: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): a seeded permutation of range(n_train), val first."""
    n_val = _count(val_size, n_train, "val_size")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:], perm[:n_val]


def _shuffled_limit(n: int, seed: int, limit: int | None) -> torch.Tensor:
    """range(n), or with a limit the first ``limit`` of a seeded permutation."""
    if limit is None:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:limit]


def _cut(idx: torch.Tensor, limit: int | None) -> torch.Tensor:
    return idx if limit is None else idx[:limit]


def _standardize(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], dims: tuple[int, ...],
                 info: dict[str, Any]) -> None:
    """Standardize every split in place with the training split's mean and std over ``dims``.

    The std is the population one; a column constant in train gets std 1 (it
    is only centred). ``info`` receives ``mean`` and ``std`` as lists.
    """
    train = parts["train"][0]
    if train.shape[0] == 0:
        raise ValueError("cannot standardize with an empty training split")
    std, mean = torch.std_mean(train, dim=dims, keepdim=True, unbiased=False)
    std = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    for x, _ in parts.values():
        x.sub_(mean).div_(std)
    info.update(mean=mean.flatten().tolist(), std=std.flatten().tolist())


def _image_splits(name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray,
                  y_te: np.ndarray, num_classes: int, *, val_size: int | float, seed: int,
                  limit: int | None, normalize: bool, info: dict[str, Any]) -> Splits:
    _check_seed_limit(seed, limit)
    tr_idx, va_idx = _carve(len(x_tr), val_size, seed)
    tr_idx, va_idx = _cut(tr_idx, limit), _cut(va_idx, limit)
    te_idx = _shuffled_limit(len(x_te), seed, limit)

    def take(x: np.ndarray, y: np.ndarray, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = idx.numpy()
        # index the uint8 array first: one float copy per split, not of the whole set
        xs = torch.from_numpy(np.ascontiguousarray(x[i])).float().div_(255.0)
        return xs, torch.from_numpy(y[i].astype(np.int64))

    parts = {"train": take(x_tr, y_tr, tr_idx), "val": take(x_tr, y_tr, va_idx),
             "test": take(x_te, y_te, te_idx)}
    if normalize:
        info = dict(info)
        _standardize(parts, (0, 2, 3), info)
    return Splits(train=TensorDataset(*parts["train"]), val=TensorDataset(*parts["val"]),
                  test=TensorDataset(*parts["test"]), num_classes=num_classes,
                  input_shape=tuple(int(s) for s in x_tr.shape[1:]), name=name,
                  indices=MappingProxyType({"train": tr_idx, "val": va_idx, "test": te_idx}),
                  info=MappingProxyType(info))

