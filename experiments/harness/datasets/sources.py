"""Where the data sets live, how they are downloaded, and the search for them.

The settings here are read at call time, so a program (or a test) may change
them: :data:`SYSTEM_DIRS`, :data:`CACHE_ROOT`, :data:`ENV_VARS`,
:data:`DOWNLOAD_TIMEOUT`, :data:`MIRRORS`, :data:`CHECKSUMS`, and the default
fetcher :func:`urllib_fetch`. Assigning one of them on the package
(``experiments.harness.datasets.CACHE_ROOT = ...``) assigns it here.

:func:`_locate` is the search every loader runs: the ``data_dir`` argument,
the environment variable, the system directories, the user cache, then a
download into the cache (:func:`download_files`), verified against the
published checksum; it raises :class:`~.base.DatasetNotFoundError` listing
every place looked at and how to get the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol

from experiments.harness.datasets.base import DatasetError, DatasetNotFoundError, PathLike

__all__ = ["Fetcher", "SYSTEM_DIRS", "CACHE_ROOT", "ENV_VARS", "DOWNLOAD_TIMEOUT", "MIRRORS",
           "CHECKSUMS", "SETTINGS", "cache_dir", "urllib_fetch", "download_files"]


class Fetcher(Protocol):
    """``fetch(url, dest, timeout)``: write the bytes at ``url`` to the file ``dest``.

    Pass one as ``download=`` to a loader to replace :func:`urllib_fetch` (a
    proxy, a test double). It may raise any exception on failure; the caller
    catches it, removes ``dest`` and tries the next mirror.
    """

    def __call__(self, url: str, dest: Path, timeout: float) -> None: ...



# --------------------------------------------------------------------------- where data lives

SYSTEM_DIRS: dict[str, list[Path]] = {
    # Debian/Ubuntu package dataset-fashion-mnist.
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [],
    "cifar10": [],
    "covertype": [],
    # Debian/Ubuntu package fortunes (quotations, one file per topic).
    "fortunes": [Path("/usr/share/games/fortunes")],
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
    "fortunes": "FORTUNES_DIR",
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
    "fortunes": "Fortunes",
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
    "fortunes": (
        "Install Debian's package (`sudo apt-get install fortunes`, files in "
        "/usr/share/games/fortunes), or put text files (quotations separated by lines holding "
        "only %, or one document per file with documents='file') in a directory and set "
        "FORTUNES_DIR=that directory or pass data_dir=..."),
}


SETTINGS = ("SYSTEM_DIRS", "CACHE_ROOT", "ENV_VARS", "DOWNLOAD_TIMEOUT", "MIRRORS", "CHECKSUMS",
            "urllib_fetch")
"""The names above that the search reads at call time (assignable on the package too)."""


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

