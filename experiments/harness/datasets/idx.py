"""Fashion-MNIST and MNIST: the IDX file format and the two loaders that read it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.harness.datasets.base import DatasetError, PathLike, Splits, _read_maybe_gzip
from experiments.harness.datasets.sources import Fetcher, _locate
from experiments.harness.datasets.splitting import _image_splits

__all__ = ["fashion_mnist", "mnist", "read_idx", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC"]


# --------------------------------------------------------------------------- the format

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def read_idx(path: PathLike, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    The format: a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` the
    element type, 0x08 = unsigned byte; ``DD`` the number of dimensions), then
    ``DD`` big-endian uint32 sizes, then exactly ``prod(sizes)`` elements.
    Image files have magic ``0x00000803``, label files ``0x00000801``. Gzip is
    detected from the first two bytes, not from the file name.

    Args:
        path: the file.
        magic: if given, the exact magic number required (e.g. ``0x803``).

    Returns:
        A new (writable) numpy array shaped by the header's sizes, in native
        byte order.

    Raises:
        DatasetError: naming the file: unreadable, corrupt gzip, bad magic
            number, truncated header or payload, or trailing bytes.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file: {len(raw)} bytes, no complete header")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        what = {IDX_IMAGES_MAGIC: " (unsigned-byte images, 3 dimensions)",
                IDX_LABELS_MAGIC: " (unsigned-byte labels, 1 dimension)"}.get(magic, "")
        raise DatasetError(f"{path}: bad IDX magic number 0x{found:08x}, "
                           f"expected 0x{magic:08x}{what}")
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (magic number 0x{found:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header: {len(raw)} bytes, "
                           f"{ndim} dimensions need {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual < expected:
        raise DatasetError(f"{path}: truncated IDX payload: header says {dims} "
                           f"({expected} bytes), file has {actual} bytes")
    if actual > expected:
        raise DatasetError(f"{path}: corrupt IDX file: {actual - expected} bytes after the "
                           f"{expected}-byte payload of shape {dims}")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))  # a writable copy


# --------------------------------------------------------------------------- the loaders

_IDX_BASES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx_files(d: Path, bases: Sequence[str]) -> tuple[dict[str, Path] | None, str]:
    if not d.exists():
        return None, "does not exist"
    if not d.is_dir():
        return None, "is not a directory"
    found, missing = {}, []
    for base in bases:
        for cand in (d / base, d / (base + ".gz")):
            if cand.is_file():
                found[base] = cand
                break
        else:
            missing.append(base + "[.gz]")
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, ""


def _read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, magic=IDX_IMAGES_MAGIC)
    y = read_idx(labels, magic=IDX_LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{images} has {x.shape[0]} images but {labels} has "
                           f"{y.shape[0]} labels")
    if y.size and int(y.max()) >= num_classes:
        bad = int(np.argmax(y >= num_classes))
        raise DatasetError(f"{labels}: label {int(y[bad])} at index {bad} is outside "
                           f"0..{num_classes - 1}")
    return x[:, None], y


def _idx_dataset(name: str, data_dir: PathLike | None, *, val_size: int | float, seed: int,
                 limit: int | None, download: bool | Fetcher, normalize: bool) -> Splits:
    files, where = _locate(name, data_dir, lambda d: _find_idx_files(d, _IDX_BASES), download)
    x_tr, y_tr = _read_idx_pair(files[_IDX_BASES[0]], files[_IDX_BASES[1]], 10)
    x_te, y_te = _read_idx_pair(files[_IDX_BASES[2]], files[_IDX_BASES[3]], 10)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(f"{files[_IDX_BASES[0]]} has images of shape {x_tr.shape[2:]} but "
                           f"{files[_IDX_BASES[2]]} has {x_te.shape[2:]}")
    info = {"source": str(where), "files": {k: str(v) for k, v in files.items()}}
    return _image_splits(name, x_tr, y_tr, x_te, y_te, 10, val_size=val_size, seed=seed,
                         limit=limit, normalize=normalize, info=info)


def fashion_mnist(data_dir: PathLike | None = None, *, val_size: int | float = 5000,
                  seed: int = 0, limit: int | None = None, download: bool | Fetcher = True,
                  normalize: bool = False) -> Splits:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test 28x28 images, 10 classes.

    Reads the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``)
    from the first of: ``data_dir``, ``$FASHION_MNIST_DIR``, Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``),
    the cache :func:`~experiments.harness.datasets.cache_dir` ``("fashion-mnist")``;
    else downloads them into the cache from the project's S3 website endpoint
    and verifies their MD5s.

    Args:
        data_dir: directory holding the four files (searched first).
        val_size: validation samples carved from the 60,000 training images
            (int count, or float fraction of the training set).
        seed: seeds the validation split (``torch.Generator().manual_seed``) and
            the shuffling that ``limit`` does.
        limit: keep only the first ``limit`` samples of each split after
            shuffling with the seed (quick runs); None keeps all.
        download: True to download when the files are nowhere; False never;
            or a :data:`~experiments.harness.datasets.Fetcher` used instead of
            :func:`~experiments.harness.datasets.urllib_fetch`.
        normalize: standardize each channel with the mean and standard
            deviation of the training split as returned (after ``limit``),
            stored in ``info``; by default inputs are only scaled to ``[0, 1]``.

    Returns:
        :class:`Splits` with inputs ``N x 1 x 28 x 28`` float32 and int64 labels.

    Raises:
        DatasetNotFoundError: nothing found and no download possible; the
            message lists every place looked at and how to get the data.
        DatasetError: a file is malformed (the message names it).

    Example:
        >>> data = fashion_mnist(limit=1000)            # doctest: +SKIP
        >>> data.train.tensors[0].shape                 # doctest: +SKIP
        torch.Size([1000, 1, 28, 28])
    """
    return _idx_dataset("fashion-mnist", data_dir, val_size=val_size, seed=seed, limit=limit,
                        download=download, normalize=normalize)


def mnist(data_dir: PathLike | None = None, *, val_size: int | float = 5000, seed: int = 0,
          limit: int | None = None, download: bool | Fetcher = True,
          normalize: bool = False) -> Splits:
    """MNIST (LeCun et al.): 60,000 training and 10,000 test 28x28 digit images, 10 classes.

    The same four IDX files and arguments as :func:`fashion_mnist`, looked for
    in ``data_dir``, ``$MNIST_DIR``, the cache
    :func:`~experiments.harness.datasets.cache_dir` ``("mnist")``, then
    downloaded (``yann.lecun.com``, then the ``ossci-datasets`` mirror) and
    checked against the published MD5s.

    Returns:
        :class:`Splits` with inputs ``N x 1 x 28 x 28`` float32 in ``[0, 1]``.
    """
    return _idx_dataset("mnist", data_dir, val_size=val_size, seed=seed, limit=limit,
                        download=download, normalize=normalize)

