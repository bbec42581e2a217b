"""CIFAR-10: the python batches, read with a restricted unpickler, and the loader."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from experiments.harness.datasets.base import DatasetError, PathLike, Splits
from experiments.harness.datasets.sources import Fetcher, _locate
from experiments.harness.datasets.splitting import _image_splits

__all__ = ["cifar10", "read_cifar_batch"]


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
    (MD5-checked). Arguments as in
    :func:`~experiments.harness.datasets.fashion_mnist`.

    The data set of Sec. 5.1.1 of *ShrinkNets: Learning Network Size while
    Training* (2018 draft; public as G. Leclerc, M. Vartak, R. Castro
    Fernandez, T. Kraska, S. Madden, *Smallify: Learning Network Size while
    Training*, https://arxiv.org/abs/1806.03723).

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

