"""What every loader shares: the errors it raises and the :class:`Splits` it returns.

:func:`_read_maybe_gzip` reads a data file, decompressing it when its first
bytes are the gzip magic (IDX files and ``covtype.data`` come both ways).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch.utils.data import TensorDataset

__all__ = ["DatasetError", "DatasetNotFoundError", "Splits"]

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- errors


class DatasetError(ValueError):
    """A data file is missing, malformed or refused; the message names the file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No place holds the data set; the message lists every place and how to get it."""


# --------------------------------------------------------------------------- Splits


@dataclass(frozen=True, eq=False, repr=False)
class Splits:
    """A data set split into train, validation and test sets.

    Attributes:
        train: ``TensorDataset(inputs, targets)`` to fit on.
        val: validation set, carved from the official training set with the seed.
        test: the official test set (or the seeded test part where there is none).
        num_classes: number of classes; 0 for regression.
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(54,)``.
        name: the data set's name in :data:`~experiments.harness.datasets.DATASETS`.
        relevant: synthetic data only: sorted indices (int64) of the input
            features the targets depend on; None otherwise.
        coef: synthetic data only: the generating weight matrix
            ``A`` (``n_outputs x n_features``), whose columns of irrelevant
            features are exactly zero; None otherwise.
        indices: for each split, the int64 indices of its samples in the
            source: rows of the official training file for ``train`` and
            ``val``, of the official test file for ``test`` (COVERTYPE: rows of
            ``covtype.data``; synthetic: generated samples).
        info: provenance and preprocessing: ``source`` (where the data was
            read), ``mean``/``std`` when inputs were standardized, and so on.

    Inputs are float32; images are ``N x C x H x W`` scaled to ``[0, 1]``.
    Targets are int64 class indices, or float32 ``N x n_targets`` for
    regression.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    relevant: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    indices: Mapping[str, torch.Tensor] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """``"regression"`` for float targets, else ``"classification"``."""
        return "regression" if self.train.tensors[1].is_floating_point() else "classification"

    @property
    def num_outputs(self) -> int:
        """Width of a model's last layer: ``num_classes``, or the number of regression targets."""
        if self.task == "classification":
            return self.num_classes
        y = self.train.tensors[1]
        return 1 if y.dim() == 1 else int(y.shape[1])

    def sizes(self) -> dict[str, int]:
        """Number of samples in each split, ``{"train": ..., "val": ..., "test": ...}``."""
        return {k: len(getattr(self, k)) for k in ("train", "val", "test")}

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"Splits(name={self.name!r}, train={s['train']}, val={s['val']}, "
                f"test={s['test']}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape})")


# --------------------------------------------------------------------------- reading files


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, decompressed if it starts with the gzip magic (not by extension)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw

