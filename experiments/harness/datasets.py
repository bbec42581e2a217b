"""Datasets for the experiments: standard train/test splits plus a seeded validation split.

Every loader returns a :class:`Splits` whose ``train``, ``val`` and ``test`` are
:class:`torch.utils.data.TensorDataset` of ``(float32 inputs, int64 labels)``
(float targets for regression). The validation split is carved from the
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
* ``synthetic-regression`` and ``synthetic-classification`` ``(n_features,)``:
  generated, with a known set of relevant features (ShrinkNets draft
  ``shared/seeds/000_...``, Sec. 5.1).

Where the files are looked for, in this order (the first place holding every
file wins):

1. the ``data_dir`` argument (``path_or_dir`` for COVERTYPE);
2. an environment variable: ``FASHION_MNIST_DIR``, ``MNIST_DIR``, ``CIFAR10_DIR``,
   ``COVERTYPE_DIR`` (a directory, or for COVERTYPE also the file itself);
3. system directories, :data:`SYSTEM_DIRS` (Debian's package
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``);
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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

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

PathLike = Union[str, "os.PathLike[str]"]

class Fetcher(Protocol):
    """``fetch(url, dest, timeout)``: write the bytes at ``url`` to the file ``dest``.

    Pass one as ``download=`` to a loader to replace :func:`urllib_fetch` (a
    proxy, a test double). It may raise any exception on failure; the caller
    catches it, removes ``dest`` and tries the next mirror.
    """

    def __call__(self, url: str, dest: Path, timeout: float) -> None: ...


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
        name: the data set's name in :data:`DATASETS`.
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


# --------------------------------------------------------------------------- where data lives

SYSTEM_DIRS: dict[str, list[Path]] = {
    # Debian/Ubuntu package dataset-fashion-mnist.
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [],
    "cifar10": [],
    "covertype": [],
}
"""Read-only system-wide directories searched after the environment variable."""

CACHE_ROOT: Path | None = None
"""Root of the download cache; None means ``$XDG_CACHE_HOME/saliency-pruning``
(``~/.cache/saliency-pruning`` when the variable is unset)."""

ENV_VARS: dict[str, str] = {
    "fashion-mnist": "FASHION_MNIST_DIR",
    "mnist": "MNIST_DIR",
    "cifar10": "CIFAR10_DIR",
    "covertype": "COVERTYPE_DIR",
}
"""Environment variable naming each data set's directory."""

DOWNLOAD_TIMEOUT: float = 15.0
"""Seconds a download may wait on the network (per socket operation)."""

# Official download locations, official first. The checksums are the MD5s the
# projects publish (Fashion-MNIST README, torchvision's tables for MNIST and
# CIFAR-10) and SHA-256 for COVERTYPE (scikit-learn's copy). They were written
# from knowledge, as the hosts cannot be reached from the machine this was
# written on, and cross-checked against public source code that uses the same
# values. Debian's dataset-fashion-mnist ships the same IDX payloads
# re-gzipped (no file name in the gzip header, a 2020 mtime), so its .gz MD5s
# differ from the published ones while the decompressed files match in size
# and format; files found locally are checked for format, not checksum.
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "mnist": (
        "http://yann.lecun.com/exdb/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "covertype": (),  # see _COVERTYPE_URLS: the file names differ per mirror
}
"""Base URLs, tried in order, for each downloadable data set."""

_COVERTYPE_URLS = {
    "covtype.data.gz": (
        "https://ndownloader.figshare.com/files/5976039",
    ),
}

CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    "cifar10": {
        "cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a",
    },
    "covertype": {
        "covtype.data.gz":
            "sha256:614360d0257557dd1792834a85a1cdebfadc3c4f30b011d56afee7ffb5b15771",
    },
}
"""``algorithm:hexdigest`` of every downloadable file, per data set."""

_TITLES = {
    "fashion-mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "covertype": "COVERTYPE",
}

_HOW_TO = {
    "fashion-mnist": (
        "Install Debian's package (`sudo apt-get install dataset-fashion-mnist`, files in "
        "/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        "from https://github.com/zalandoresearch/fashion-mnist (README, 'Get the Data') into a "
        "directory and set FASHION_MNIST_DIR=that directory or pass data_dir=..."),
    "mnist": (
        "Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/"
        " or the mirror https://ossci-datasets.s3.amazonaws.com/mnist/) into a directory and set "
        "MNIST_DIR=that directory or pass data_dir=..."),
    "cifar10": (
        "Download cifar-10-python.tar.gz (the 'CIFAR-10 python version' of "
        "https://www.cs.toronto.edu/~kriz/cifar.html) into a directory, extracted or not, and "
        "set CIFAR10_DIR=that directory or pass data_dir=..."),
    "covertype": (
        "Download covtype.data.gz from the UCI Machine Learning Repository "
        "(https://archive.ics.uci.edu/dataset/31/covertype) into a directory and set "
        "COVERTYPE_DIR=that directory (or the file) or pass path_or_dir=..."),
}


def cache_dir(name: str) -> Path:
    """The user cache directory of data set ``name``.

    ``CACHE_ROOT / name`` when :data:`CACHE_ROOT` is set, else
    ``$XDG_CACHE_HOME/saliency-pruning/<name>`` (``~/.cache/...`` by default).
    The directory is not created.
    """
    if CACHE_ROOT is not None:
        return Path(CACHE_ROOT) / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "saliency-pruning" / name


# --------------------------------------------------------------------------- downloading


def urllib_fetch(url: str, dest: Path, timeout: float) -> None:
    """Default :data:`Fetcher`: stream ``url`` into ``dest`` with ``urllib``."""
    req = urllib.request.Request(url, headers={"User-Agent": "saliency-pruning"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as fh:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            fh.write(chunk)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _urls(name: str, filename: str) -> tuple[str, ...]:
    if name == "covertype":
        return _COVERTYPE_URLS.get(filename, ())
    return tuple(base + filename for base in MIRRORS.get(name, ()))


def download_files(name: str, dest_dir: PathLike, fetch: Fetcher | None = None, *,
                   timeout: float | None = None) -> list[str]:
    """Download the files of data set ``name`` into ``dest_dir``; return the failures.

    Every file of ``CHECKSUMS[name]`` that is not yet in ``dest_dir`` is
    fetched from each mirror in turn into a temporary file in ``dest_dir``,
    its checksum verified, and only then renamed to its final name (so an
    interrupted or corrupt download never leaves a file that looks complete).
    Any exception of the fetcher (network down, timeout, HTTP error) is caught.

    Args:
        name: a key of :data:`CHECKSUMS`.
        dest_dir: directory to download into (created).
        fetch: the :data:`Fetcher`; default :func:`urllib_fetch`.
        timeout: seconds; default :data:`DOWNLOAD_TIMEOUT`.

    Returns:
        One line per file that could not be obtained (empty on success).
    """
    fetch = urllib_fetch if fetch is None else fetch
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    dest_dir = Path(dest_dir)
    failures: list[str] = []
    for filename, checksum in CHECKSUMS[name].items():
        final = dest_dir / filename
        if final.is_file():
            continue
        algorithm, expected = checksum.split(":", 1)
        errors = []
        urls = _urls(name, filename)
        if not urls:
            errors.append("no download location known")
        for url in urls:
            try:
                dest_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part",
                                                dir=dest_dir)
                os.close(fd)
            except OSError as exc:
                errors.append(f"cannot write to {dest_dir}: {exc}")
                break
            tmp = Path(tmp_name)
            try:
                fetch(url, tmp, timeout)
                got = _digest(tmp, algorithm)
                if got != expected:
                    raise DatasetError(f"checksum mismatch: {algorithm} {got}, expected {expected}")
                os.replace(tmp, final)
                break
            except Exception as exc:  # network errors come in many types; all end here
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        if not final.is_file():
            failures.append(f"{filename}: " + "; ".join(errors))
    return failures


# --------------------------------------------------------------------------- locating


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


def _locate(name: str, explicit: PathLike | None, finder: Callable[[Path], tuple[Any, str]],
            download: bool | Fetcher) -> tuple[Any, Path]:
    """Search the places in order; return (what finder found, the place)."""
    places: list[tuple[str, Path | None]] = []
    if explicit is not None:
        places.append(("argument", Path(explicit).expanduser()))
    env = ENV_VARS[name]
    env_value = os.environ.get(env)
    places.append((f"${env}", Path(env_value).expanduser() if env_value else None))
    places.extend(("system directory", Path(d)) for d in SYSTEM_DIRS.get(name, ()))
    cache = cache_dir(name)
    places.append(("cache", cache))

    tried: list[str] = []
    passed_over: list[str] = []  # places the user named that did not hold the data
    for label, where in places:
        if where is None:
            tried.append(f"{label}: not set")
            continue
        found, why = finder(where)
        if found is not None:
            if passed_over:
                warnings.warn(f"{_TITLES[name]}: not in {'; '.join(passed_over)}; "
                              f"using {where}", stacklevel=4)
            return found, where
        tried.append(f"{label}: {where} ({why})")
        if label == "argument" or label.startswith("$"):
            passed_over.append(f"{where} ({why})")

    if download is False or download is None:
        tried.append("download: disabled (download=False)")
    elif name not in CHECKSUMS:
        tried.append("download: not available for this data set")
    else:
        fetch = None if download is True else download
        failures = download_files(name, cache, fetch)
        found, why = finder(cache)
        if found is not None:
            return found, cache
        detail = "; ".join(failures) if failures else why
        tried.append(f"download into {cache}: failed ({detail})")
    raise DatasetNotFoundError(
        f"{_TITLES[name]} not found. Looked in:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + f"\nTo get the data: {_HOW_TO[name]}")


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


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


_IDX_BASES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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
    the cache :func:`cache_dir` ``("fashion-mnist")``; else downloads them into
    the cache from the project's S3 website endpoint and verifies their MD5s.

    Args:
        data_dir: directory holding the four files (searched first).
        val_size: validation samples carved from the 60,000 training images
            (int count, or float fraction of the training set).
        seed: seeds the validation split (``torch.Generator().manual_seed``) and
            the shuffling that ``limit`` does.
        limit: keep only the first ``limit`` samples of each split after
            shuffling with the seed (quick runs); None keeps all.
        download: True to download when the files are nowhere; False never;
            or a :data:`Fetcher` used instead of :func:`urllib_fetch`.
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
    in ``data_dir``, ``$MNIST_DIR``, the cache :func:`cache_dir` ``("mnist")``,
    then downloaded (``yann.lecun.com``, then the ``ossci-datasets`` mirror) and
    checked against the published MD5s.

    Returns:
        :class:`Splits` with inputs ``N x 1 x 28 x 28`` float32 in ``[0, 1]``.
    """
    return _idx_dataset("mnist", data_dir, val_size=val_size, seed=seed, limit=limit,
                        download=download, normalize=normalize)


# --------------------------------------------------------------------------- CIFAR-10


def _reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR batch never contains."""


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"refused _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding, errors)


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what the official CIFAR batches contain; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"refused to load global {module}.{name}: CIFAR batches contain only dicts, "
                f"lists, strings, ints and numpy arrays") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"refused persistent id {pid!r}")


def _get(d: Mapping, key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_cifar_batch(source: PathLike | bytes, *, name: str | None = None,
                     num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``) safely.

    The official batches are protocol-2 pickles of a dict with ``b'data'``
    (uint8 ``N x 3072``: 1024 red, 1024 green, 1024 blue values, each a 32x32
    image in row-major order), ``b'labels'`` (N ints in 0..9),
    ``b'batch_label'`` and ``b'filenames'``. The unpickler only allows the
    globals such a file needs (numpy's ``_reconstruct``, ``ndarray``, ``dtype``
    and ``_codecs.encode`` for latin-1 bytes); anything else, e.g. ``os.system``
    in a crafted ``__reduce__``, is refused before it can run.

    Args:
        source: path to the batch, or its bytes.
        name: what to call the file in error messages (default: the path).
        num_classes: labels must lie in ``0..num_classes-1``.

    Returns:
        ``(images, labels)``: uint8 ``N x 3 x 32 x 32`` and int64 ``N``.

    Raises:
        DatasetError: naming the file: refused global, truncated or corrupt
            pickle, or contents not shaped like a CIFAR batch.
    """
    if isinstance(source, (bytes, bytearray)):
        raw, label = bytes(source), name or "<bytes>"
    else:
        label = name or str(source)
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise DatasetError(f"{label}: cannot read: {exc}") from exc
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise DatasetError(f"{label}: not a valid CIFAR batch: {exc}") from exc
    except Exception as exc:  # truncated/corrupt pickles raise many types
        raise DatasetError(f"{label}: corrupt or truncated pickle "
                           f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{label}: expected a dict, the pickle holds {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise DatasetError(f"{label}: a CIFAR batch needs keys b'data' and b'labels', found "
                           f"{sorted(map(repr, obj))}")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(f"{label}: b'data' must be a uint8 array N x 3072, found {desc}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{label}: b'labels' must be a list of ints ({exc})") from exc
    if y.shape != (data.shape[0],):
        raise DatasetError(f"{label}: {data.shape[0]} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.argmax((y < 0) | (y >= num_classes)))
        raise DatasetError(f"{label}: label {int(y[bad])} at index {bad} is outside "
                           f"0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                  "data_batch_5", "test_batch")


def _find_cifar(d: Path) -> tuple[tuple[str, Path] | None, str]:
    if not d.exists():
        return None, "does not exist"
    if d.is_file():
        return ("archive", d), ""
    reasons = []
    for folder in (d, d / _CIFAR_FOLDER):
        missing = [b for b in _CIFAR_BATCHES if not (folder / b).is_file()]
        if not missing:
            return ("dir", folder), ""
        if len(missing) < len(_CIFAR_BATCHES):
            reasons.append(f"{folder} lacks {', '.join(missing)}")
    if (d / _CIFAR_ARCHIVE).is_file():
        return ("archive", d / _CIFAR_ARCHIVE), ""
    return None, "; ".join(reasons) or (f"no {', '.join(_CIFAR_BATCHES)}, no {_CIFAR_FOLDER}/, "
                                        f"no {_CIFAR_ARCHIVE}")


def _read_cifar_archive(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the batches from the tar.gz without extracting anything to disk."""
    wanted = {f"{_CIFAR_FOLDER}/{b}": b for b in _CIFAR_BATCHES}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = member.name[2:] if member.name.startswith("./") else member.name
                if key in wanted and member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    out[wanted[key]] = read_cifar_batch(fh.read(), name=f"{archive}:{key}")
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive "
                           f"({type(exc).__name__}: {exc})") from exc
    missing = [f"{_CIFAR_FOLDER}/{b}" for b in _CIFAR_BATCHES if b not in out]
    if missing:
        raise DatasetError(f"{archive}: archive lacks {', '.join(missing)}")
    return out


def cifar10(data_dir: PathLike | None = None, *, val_size: int | float = 5000, seed: int = 0,
            limit: int | None = None, download: bool | Fetcher = True,
            normalize: bool = False) -> Splits:
    """CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test 32x32 colour images, 10 classes.

    Reads the official python batches ``data_batch_1`` ... ``data_batch_5`` and
    ``test_batch`` with :func:`read_cifar_batch` (a restricted unpickler: a
    pickle holding anything else is refused, never executed), from a directory
    holding them, its ``cifar-10-batches-py/`` folder, or the archive
    ``cifar-10-python.tar.gz`` (read in memory, nothing extracted); ``data_dir``
    may also be the archive itself. Looked for in ``data_dir``,
    ``$CIFAR10_DIR``, the cache, then downloaded from the official page
    (MD5-checked). Arguments as in :func:`fashion_mnist`; this is the data set
    of ShrinkNets (``001_...``, Sec. 5.1.1).

    Returns:
        :class:`Splits` with inputs ``N x 3 x 32 x 32`` float32 in ``[0, 1]``
        (or standardized per channel with ``normalize=True``).
    """
    (kind, where), place = _locate("cifar10", data_dir, _find_cifar, download)
    if kind == "archive":
        batches = _read_cifar_archive(where)
    else:
        batches = {b: read_cifar_batch(where / b) for b in _CIFAR_BATCHES}
    x_tr = np.concatenate([batches[b][0] for b in _CIFAR_BATCHES[:5]])
    y_tr = np.concatenate([batches[b][1] for b in _CIFAR_BATCHES[:5]])
    x_te, y_te = batches["test_batch"]
    info = {"source": str(where)}
    return _image_splits("cifar10", x_tr, y_tr, x_te, y_te, 10, val_size=val_size, seed=seed,
                         limit=limit, normalize=normalize, info=info)


# --------------------------------------------------------------------------- splitting


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


# --------------------------------------------------------------------------- COVERTYPE

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

    Used by ShrinkNets (``shared/seeds/001_...``, Sec. 5.1.2) after Scardapane
    et al. (2017). **That paper leaves the split unspecified** (no
    train/validation/test sizes, no preprocessing); both options here are
    therefore choices, recorded in ``info``:

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
        download: as in :func:`fashion_mnist`.

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


# --------------------------------------------------------------------------- synthetic


def _synthetic_splits(name: str, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor,
                      relevant: torch.Tensor, num_classes: int, *, val_size: int | float,
                      test_size: float, seed: int, limit: int | None,
                      info: dict[str, Any]) -> Splits:
    n = len(x)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_te = int(round(test_size * n))
    te, pool = perm[:n_te], perm[n_te:]
    t, v = _carve(len(pool), val_size, seed)
    idx = {"train": _cut(pool[t], limit), "val": _cut(pool[v], limit), "test": _cut(te, limit)}
    ds = {k: TensorDataset(x[i], y[i]) for k, i in idx.items()}
    return Splits(train=ds["train"], val=ds["val"], test=ds["test"], num_classes=num_classes,
                  input_shape=(int(x.shape[1]),), name=name, relevant=relevant, coef=coef,
                  indices=MappingProxyType(idx), info=MappingProxyType(info))


def _check_sizes(**kw: int) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")


def _design(n_samples: int, n_features: int, n_relevant: int, n_out: int,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs N(0, 1); the relevant features; weights whose other columns are exactly 0.

    Each relevant column is a random direction of norm ``sqrt(n_out)`` (entries
    of root-mean-square 1), so every relevant feature carries the same weight
    in the group norm ``||A_{:,j}||_2`` the draft's penalties act on.
    """
    relevant = torch.randperm(n_features, generator=gen)[:n_relevant].sort().values
    coef = torch.zeros(n_out, n_features, dtype=torch.float64)
    g = torch.randn(n_out, n_relevant, generator=gen, dtype=torch.float64)
    coef[:, relevant] = g / g.norm(dim=0, keepdim=True) * n_out ** 0.5
    x = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    return x, relevant, coef


def synthetic_regression(n_samples: int = 2000, n_features: int = 280, n_relevant: int = 28,
                         n_targets: int = 16, noise: float = 1.0, seed: int = 0, *,
                         val_size: int | float = 0.2, test_size: float = 0.2,
                         limit: int | None = None) -> Splits:
    """Multi-target linear regression with a known set of relevant input features.

    The setting of the earlier ShrinkNets draft (``shared/seeds/000_...``,
    Sec. 5.1): a one-layer model ``y = A x`` whose inputs are filtered by
    group sparsity (groups = the columns ``A_{:,j}`` of input ``j``, eq. 6) or
    by ShrinkNets' switches ``A diag(beta) x`` (eq. 7), with several targets so
    that each group has more than one weight. The draft evaluates on real data
    (scm1d, oes97; details left to an empty appendix) and states no generating
    process; here, with everything else unstated, we generate::

        x ~ N(0, I_p),   A[:, j] = sqrt(t) g_j / ||g_j||, g_j ~ N(0, I_t) for j in relevant,
        A[:, j] = 0 otherwise,   y = A x + noise * eps,   eps ~ N(0, I_t)

    so the ground truth of which columns group sparsity should zero is known,
    and all relevant columns have the same norm (the draft's Prop. A.1 relates
    the two penalties under a fixed column norm).
    The default shape is scm1d's (280 inputs, 16 targets; oes97 has 263 and
    16); 10% of the inputs are relevant (the draft does not say).

    Args:
        n_samples: samples before splitting.
        n_features: input dimension ``p``.
        n_relevant: number of inputs with non-zero weights.
        n_targets: output dimension ``t``.
        noise: standard deviation of the additive Gaussian noise.
        seed: seeds generation and splits; the same seed gives the same data.
        val_size: validation count or fraction of the non-test samples.
        test_size: test fraction of all samples.
        limit: keep the first ``limit`` of each split.

    Returns:
        :class:`Splits` (``num_classes=0``, float32 targets ``N x t``) with
        ``relevant`` (sorted int64 indices) and ``coef`` (``A``, float32
        ``t x p``, irrelevant columns exactly zero).
    """
    _check_sizes(n_samples=n_samples, n_features=n_features, n_relevant=n_relevant,
                 n_targets=n_targets)
    _check_seed_limit(seed, limit)
    if n_relevant > n_features:
        raise ValueError(f"n_relevant ({n_relevant}) exceeds n_features ({n_features})")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    gen = torch.Generator().manual_seed(int(seed))
    x, relevant, coef = _design(n_samples, n_features, n_relevant, n_targets, gen)
    y = x @ coef.T + noise * torch.randn(n_samples, n_targets, generator=gen,
                                         dtype=torch.float64)
    info = {"noise": float(noise), "generator": "y = A x + noise * N(0, I)"}
    return _synthetic_splits("synthetic-regression", x.float(), y.float(), coef.float(),
                             relevant, 0, val_size=val_size, test_size=test_size, seed=seed,
                             limit=limit, info=info)


def synthetic_classification(n_samples: int = 2000, n_features: int = 128,
                             n_relevant: int = 13, n_classes: int = 6, seed: int = 0, *,
                             val_size: int | float = 0.2, test_size: float = 0.2,
                             limit: int | None = None) -> Splits:
    """Multi-class logistic regression data with a known set of relevant input features.

    The classification half of the ShrinkNets draft's Sec. 5.1 (there on
    gina_prior2 and the Gas Sensor Array Drift data, whose generating process
    is unknown). Here the labels follow the multinomial logistic model that a
    logistic regression fits::

        x ~ N(0, I_p),   A[:, j] = sqrt(k) g_j / ||g_j||, g_j ~ N(0, I_k) for j in relevant,
        A[:, j] = 0 otherwise,   P(label = c | x) = softmax(A x)_c

    (sampled with Gumbel noise from the seeded generator). Inputs outside
    ``relevant`` carry no information about the label. The default shape is
    the gas-sensor data's (128 inputs, 6 classes), with 10% relevant inputs.

    Args:
        n_samples, n_features, n_relevant, seed, val_size, test_size, limit:
            as in :func:`synthetic_regression`.
        n_classes: number of classes ``k`` (>= 2).

    Returns:
        :class:`Splits` with int64 labels, ``relevant`` and ``coef``
        (``k x p``), and ``info["bayes_labels_agree"]``: the fraction of
        samples whose label is the most probable class (an upper bound of
        attainable accuracy, estimated on the generated set).
    """
    _check_sizes(n_samples=n_samples, n_features=n_features, n_relevant=n_relevant,
                 n_classes=n_classes)
    _check_seed_limit(seed, limit)
    if n_relevant > n_features:
        raise ValueError(f"n_relevant ({n_relevant}) exceeds n_features ({n_features})")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    gen = torch.Generator().manual_seed(int(seed))
    x, relevant, coef = _design(n_samples, n_features, n_relevant, n_classes, gen)
    logits = x @ coef.T
    u = torch.rand(n_samples, n_classes, generator=gen, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    y = (logits + gumbel).argmax(dim=1)
    info = {"generator": "label ~ softmax(A x)",
            "bayes_labels_agree": float((logits.argmax(dim=1) == y).double().mean())}
    return _synthetic_splits("synthetic-classification", x.float(), y, coef.float(), relevant,
                             n_classes, val_size=val_size, test_size=test_size, seed=seed,
                             limit=limit, info=info)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Splits]] = {
    "fashion-mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "covertype": covertype,
    "synthetic-regression": synthetic_regression,
    "synthetic-classification": synthetic_classification,
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
                raise ValueError(f"{key} is generated and reads no files; got data_dir={data_dir!r}")
        else:
            kw["data_dir"] = data_dir
    return DATASETS[key](**kw)
