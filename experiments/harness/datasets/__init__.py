"""Datasets for the experiments: standard train/test splits plus a seeded validation split.

Every loader returns a :class:`Splits` whose ``train``, ``val`` and ``test`` are
:class:`torch.utils.data.TensorDataset` of ``(float32 inputs, int64 labels)``
(float targets for regression; int64 token windows for the text of ``fortunes``). The
validation split is carved from the
training set with ``torch.Generator().manual_seed(seed)``, so it is the same in
every run with the same seed, and train and validation are disjoint and
together are exactly the original training set.

Loaders (:data:`DATASETS`; input shape of one sample in brackets):

* ``fashion-mnist`` ``(1, 28, 28)``: IDX files ``train-images-idx3-ubyte`` etc.,
  gzip or not;
* ``mnist`` ``(1, 28, 28)``: the same four IDX files;
* ``cifar10`` ``(3, 32, 32)``: the python pickle batches ``data_batch_1..5`` and
  ``test_batch``, in a directory or in ``cifar-10-python.tar.gz``;
* ``covertype`` ``(54,)``: ``covtype.data`` or ``covtype.data.gz``;
* ``fortunes`` ``(context,)``: character-level language modelling (int64 token windows,
  targets shifted by one) on Debian's ``fortunes`` quotations or a folder of the user's
  text files, split by document (:mod:`~experiments.harness.datasets.text`);
* ``synthetic-regression`` and ``synthetic-classification`` ``(n_features,)``:
  generated, with a known set of relevant features (Sec. 5.1 of *Learning
  Network Size while Training with ShrinkNets*, 2018, the earlier draft of
  *ShrinkNets: Learning Network Size while Training*, public as G. Leclerc, M.
  Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify: Learning
  Network Size while Training*, https://arxiv.org/abs/1806.03723).

Where the files are looked for, in this order (the first place holding every
file wins):

1. the ``data_dir`` argument (``path_or_dir`` for COVERTYPE);
2. an environment variable: ``FASHION_MNIST_DIR``, ``MNIST_DIR``, ``CIFAR10_DIR``,
   ``COVERTYPE_DIR``, ``FORTUNES_DIR`` (a directory, or for COVERTYPE and fortunes also the
   file itself);
3. system directories, :data:`SYSTEM_DIRS` (Debian's package
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``, ``fortunes``
   installs ``/usr/share/games/fortunes``);
4. the user cache, :func:`cache_dir` (``$XDG_CACHE_HOME/saliency-pruning/<name>``,
   default ``~/.cache/saliency-pruning/<name>``);
5. a download into that cache from the official source, verified against the
   published checksum, when ``download`` allows it and the network answers.

A place the user named (argument or environment variable) that lacks some
file is reported with a warning, and the search goes on. When none of these
works, :class:`DatasetNotFoundError` lists every place
looked at and says how to get the data. Files that are found but malformed
(bad magic number, truncated payload, corrupt gzip, a pickle holding anything
but the official batch contents, a malformed CSV row) raise
:class:`DatasetError` naming the file and what is wrong; they are never
skipped in favour of the next place.

CIFAR-10 batches are pickles; they are read with a restricted unpickler that
only builds what the official batches contain (dicts, lists, strings, ints and
uint8 numpy arrays), so a malicious file cannot run code.

The package's modules, every public name re-exported here:

* :mod:`~experiments.harness.datasets.base` -- the errors and :class:`Splits`;
* :mod:`~experiments.harness.datasets.sources` -- where data lives, downloading and the
  search above; its settings (:data:`SYSTEM_DIRS`, :data:`CACHE_ROOT`, :data:`ENV_VARS`,
  :data:`DOWNLOAD_TIMEOUT`, :data:`MIRRORS`, :data:`CHECKSUMS`, :func:`urllib_fetch`) are
  read from there at call time; assigning one on this package assigns it there;
* :mod:`~experiments.harness.datasets.idx` -- the IDX format, Fashion-MNIST and MNIST;
* :mod:`~experiments.harness.datasets.cifar` -- CIFAR-10;
* :mod:`~experiments.harness.datasets.covtype` -- COVERTYPE;
* :mod:`~experiments.harness.datasets.synthetic` -- the synthetic problems;
* :mod:`~experiments.harness.datasets.text` -- character-level text split by document;
* :mod:`~experiments.harness.datasets.splitting` -- the seeded splits shared by the loaders;
* :mod:`~experiments.harness.datasets.registry` -- :data:`DATASETS` and :func:`get_dataset`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from experiments.harness.datasets import sources
from experiments.harness.datasets.base import DatasetError, DatasetNotFoundError, Splits
from experiments.harness.datasets.cifar import cifar10, read_cifar_batch
from experiments.harness.datasets.covtype import COVERTYPE_ORIGINAL_SPLIT, covertype, read_covertype
from experiments.harness.datasets.idx import fashion_mnist, mnist, read_idx
from experiments.harness.datasets.registry import DATASETS, get_dataset
from experiments.harness.datasets.sources import Fetcher, cache_dir, download_files
from experiments.harness.datasets.synthetic import synthetic_classification, synthetic_regression
from experiments.harness.datasets.text import decode, encode, fortunes, read_documents

__all__ = [
    "Splits",
    "DatasetError",
    "DatasetNotFoundError",
    "Fetcher",
    "fashion_mnist",
    "mnist",
    "cifar10",
    "covertype",
    "synthetic_regression",
    "synthetic_classification",
    "fortunes",
    "read_documents",
    "encode",
    "decode",
    "get_dataset",
    "DATASETS",
    "read_idx",
    "read_cifar_batch",
    "read_covertype",
    "cache_dir",
    "download_files",
    "urllib_fetch",
    "SYSTEM_DIRS",
    "CACHE_ROOT",
    "CHECKSUMS",
    "MIRRORS",
    "ENV_VARS",
    "DOWNLOAD_TIMEOUT",
    "COVERTYPE_ORIGINAL_SPLIT",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(sources.SETTINGS))


class _Package(types.ModuleType):
    """This package's module type: each setting of ``sources`` is a property reading and
    assigning it there, where the search reads it."""


def _setting(name: str) -> property:
    def get(module: types.ModuleType) -> Any:
        return getattr(sources, name)

    def set_(module: types.ModuleType, value: Any) -> None:
        setattr(sources, name, value)

    return property(get, set_, doc=f"``sources.{name}``")


for _name in sources.SETTINGS:
    setattr(_Package, _name, _setting(_name))
del _name

sys.modules[__name__].__class__ = _Package
