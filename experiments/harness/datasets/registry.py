"""The data sets by name: :data:`DATASETS` and :func:`get_dataset`."""

from __future__ import annotations

from typing import Any, Callable

from experiments.harness.datasets.base import Splits
from experiments.harness.datasets.cifar import cifar10
from experiments.harness.datasets.covtype import covertype
from experiments.harness.datasets.idx import fashion_mnist, mnist
from experiments.harness.datasets.synthetic import synthetic_classification, synthetic_regression
from experiments.harness.datasets.text import fortunes

__all__ = ["DATASETS", "get_dataset"]


DATASETS: dict[str, Callable[..., Splits]] = {
    "fashion-mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "covertype": covertype,
    "synthetic-regression": synthetic_regression,
    "synthetic-classification": synthetic_classification,
    "fortunes": fortunes,
}
"""Data set name -> loader (the names the CLI and configs use)."""


def get_dataset(name: str, **kw: Any) -> Splits:
    """Load data set ``name`` of :data:`DATASETS` with loader keywords ``kw``.

    ``data_dir`` is accepted by every loader: COVERTYPE receives it as
    ``path_or_dir``; the synthetic generators, which read no files, accept
    only ``data_dir=None``. Names are case-insensitive and ``_`` may replace
    ``-``.

    Example:
        >>> get_dataset("synthetic-regression", seed=1, limit=100).sizes()
        {'train': 100, 'val': 100, 'test': 100}
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    kw = dict(kw)
    if "data_dir" in kw:
        data_dir = kw.pop("data_dir")
        if key == "covertype":
            if data_dir is not None:
                kw["path_or_dir"] = data_dir
        elif key.startswith("synthetic"):
            if data_dir is not None:
                raise ValueError(f"{key} is generated and reads no files; "
                                 f"got data_dir={data_dir!r}")
        else:
            kw["data_dir"] = data_dir
    return DATASETS[key](**kw)
