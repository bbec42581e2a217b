"""COVERTYPE: ``covtype.data`` and its loader with the original or a seeded random split."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.harness.datasets.base import DatasetError, PathLike, Splits, _read_maybe_gzip
from experiments.harness.datasets.sources import Fetcher, _locate
from experiments.harness.datasets.splitting import (_carve, _check_seed_limit, _cut,
                                                    _shuffled_limit, _standardize)

__all__ = ["covertype", "read_covertype", "COVERTYPE_ORIGINAL_SPLIT"]


COVERTYPE_ORIGINAL_SPLIT = (11_340, 3_780)
"""The UCI documentation's split: the first 11,340 rows train, the next 3,780
validate, the remaining (565,892 of 581,012) test."""

_COVTYPE_COLUMNS = 55
_COVTYPE_NAMES = ("covtype.data", "covtype.data.gz")


def _find_covertype(p: Path) -> tuple[Path | None, str]:
    if not p.exists():
        return None, "does not exist"
    if p.is_file():
        return p, ""
    for n in _COVTYPE_NAMES:
        if (p / n).is_file():
            return p / n, ""
    return None, f"no {' or '.join(_COVTYPE_NAMES)}"


def _first_bad_covtype_line(text: str) -> tuple[int, str]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.strip().split(",")
        if len(fields) != _COVTYPE_COLUMNS:
            return lineno, (f"expected {_COVTYPE_COLUMNS} comma-separated integers, "
                            f"found {len(fields)} fields")
        for col, f in enumerate(fields, start=1):
            try:
                int(f)
            except ValueError:
                return lineno, f"column {col} is {f.strip()!r}, not an integer"
    return 0, ""


def read_covertype(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``covtype.data`` (plain or gzip, detected by content) into features and labels.

    Each line holds 55 comma-separated integers: 10 quantitative features, 4
    binary wilderness-area and 40 binary soil-type columns, then the cover
    type 1..7.

    Args:
        path: the file.

    Returns:
        ``(features, labels)``: int64 ``N x 54`` and int64 ``N`` with the cover
        types mapped 1..7 -> 0..6.

    Raises:
        DatasetError: naming the file (and the line, for a malformed row or an
            out-of-range label), or a corrupt gzip stream.
    """
    path = Path(path)
    try:
        text = _read_maybe_gzip(path).decode("ascii")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a text file of comma-separated integers "
                           f"(non-ASCII byte at offset {exc.start})") from exc
    if not text.strip():
        raise DatasetError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
        if table.shape[1] != _COVTYPE_COLUMNS:
            raise ValueError(f"{table.shape[1]} columns")
    except ValueError as exc:
        lineno, why = _first_bad_covtype_line(text)
        if lineno:
            raise DatasetError(f"{path}: line {lineno}: {why}") from exc
        raise DatasetError(f"{path}: malformed ({exc})") from exc
    y = table[:, -1]
    bad = (y < 1) | (y > 7)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(f"{path}: line {i + 1}: cover type {int(y[i])} is outside 1..7")
    return table[:, :-1], y - 1


def covertype(path_or_dir: PathLike | None = None, *, split: str = "random",
              val_size: int | float | None = None, test_size: float = 0.2, seed: int = 0,
              limit: int | None = None, standardize: bool = True,
              download: bool | Fetcher = True) -> Splits:
    """COVERTYPE (Blackard, 1998; UCI): 581,012 cartographic samples, 54 features, 7 forest types.

    Used in Sec. 5.1.2 of *ShrinkNets: Learning Network Size while Training*
    (2018 draft; public as G. Leclerc, M. Vartak, R. Castro Fernandez, T.
    Kraska, S. Madden, *Smallify: Learning Network Size while Training*,
    https://arxiv.org/abs/1806.03723; below: the ShrinkNets paper), after
    Scardapane et al. (2017). **The ShrinkNets paper leaves the split
    unspecified** (no train/validation/test sizes, no preprocessing); both
    options here are therefore choices, recorded in ``info``:

    * ``split="original"``: the UCI documentation's split, the first 11,340
      rows train, the next 3,780 validate, the remaining 565,892 test
      (``val_size`` must be None).
    * ``split="random"`` (default): a seeded, stratification-free shuffle of
      all rows, ``test_size`` (20%) for test, and ``val_size`` (default 10% of
      the remaining 80%) carved from train with
      ``torch.Generator().manual_seed(seed)``.

    All 54 features are standardized with the training split's mean and
    standard deviation only (columns constant in train are only centred).

    Args:
        path_or_dir: ``covtype.data`` / ``covtype.data.gz`` or a directory
            holding one; then ``$COVERTYPE_DIR``, the cache, a download.
        split: ``"random"`` or ``"original"``.
        val_size: validation count or fraction of the training part
            (``"random"`` only).
        test_size: test fraction of all rows (``"random"`` only).
        seed: seeds the shuffles.
        limit: keep the first ``limit`` samples of each split after shuffling.
        standardize: False keeps the raw integer values (as float32).
        download: as in :func:`~experiments.harness.datasets.fashion_mnist`.

    Returns:
        :class:`Splits` with float32 ``N x 54`` inputs and int64 labels 0..6.
    """
    if split not in ("random", "original"):
        raise ValueError(f"split must be 'random' or 'original', got {split!r}")
    _check_seed_limit(seed, limit)
    path, _ = _locate("covertype", path_or_dir, _find_covertype, download)
    x, y = read_covertype(path)
    n = len(x)
    if split == "original":
        if val_size is not None:
            raise ValueError("split='original' has a fixed validation set (3,780 rows); "
                             "leave val_size=None")
        n_tr, n_va = COVERTYPE_ORIGINAL_SPLIT
        if n <= n_tr + n_va:
            raise DatasetError(f"{path}: {n} rows, the original split needs more than "
                               f"{n_tr + n_va}")
        # the file's order, or with a limit the first rows of a seeded shuffle of each part
        tr = _shuffled_limit(n_tr, seed, limit)
        va = n_tr + _shuffled_limit(n_va, seed, limit)
        te = n_tr + n_va + _shuffled_limit(n - n_tr - n_va, seed, limit)
    else:
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        n_te = int(round(test_size * n))
        te, pool = _cut(perm[:n_te], limit), perm[n_te:]
        t, v = _carve(len(pool), 0.1 if val_size is None else val_size, seed)
        tr, va = _cut(pool[t], limit), _cut(pool[v], limit)
    xt = torch.from_numpy(x).float()
    yt = torch.from_numpy(y)
    parts = {k: (xt[i], yt[i]) for k, i in (("train", tr), ("val", va), ("test", te))}
    info: dict[str, Any] = {"source": str(path), "split": split}
    if standardize:
        _standardize(parts, (0,), info)
    return Splits(train=TensorDataset(*parts["train"]), val=TensorDataset(*parts["val"]),
                  test=TensorDataset(*parts["test"]), num_classes=7, input_shape=(54,),
                  name="covertype",
                  indices=MappingProxyType({"train": tr, "val": va, "test": te}),
                  info=MappingProxyType(info))

