"""Character-level text for language models: quotation files split by document into windows.

The default corpus is Debian's package ``fortunes`` (about 2.5 MB of English quotations,
jokes and verse in ``/usr/share/games/fortunes``, one file per topic). The files are in the
format of ``fortune``/``strfile``: quotations ("documents") separated by lines holding only
``%``. A folder (or a single file) of the user's own text in the same format, or holding one
document per file (``documents="file"``), loads the same way.

The split is by document: the documents are shuffled with the seed and dealt into train,
validation and test, so no quotation of the validation or test text is ever in training (a
split by position in one long stream would cut quotations in two). Each split is the
concatenation of its documents, each followed by :data:`DOCUMENT_END` (``"\\n%\\n"``, the
separator of the files, so the model learns where a quotation ends); the vocabulary is the
characters of the training split (those seen at least ``min_count`` times) plus the unknown
symbol :data:`UNKNOWN` at index 0, which every other character maps to. Samples are windows
of ``context + 1`` characters cut from a split's stream: the input is the first ``context``
characters and the target the last ``context`` (the next character at every position), both
int64 ``(context,)``; a batch is ``(B, T)`` inputs and ``(B, T)`` targets for
:func:`experiments.harness.training.token_cross_entropy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.harness.datasets.base import DatasetError, PathLike, Splits
from experiments.harness.datasets.sources import _locate
from experiments.harness.datasets.splitting import _check_seed_limit, _shuffled_limit

__all__ = [
    "DOCUMENT_END",
    "SKIPPED_SUFFIXES",
    "UNKNOWN",
    "decode",
    "encode",
    "fortunes",
    "read_documents",
    "text_files",
]

UNKNOWN = "\ufffd"
"""The unknown symbol, index 0 of every vocabulary (U+FFFD, the replacement character)."""

DOCUMENT_END = "\n%\n"
"""Appended to every document in a split's stream: the separator line of the files."""

SKIPPED_SUFFIXES = (".dat", ".u8")
"""File name endings never read: ``strfile``'s binary indexes (``.dat``) and Debian's
``.u8`` links to the same quotations in UTF-8."""


# --------------------------------------------------------------------------- reading


def text_files(path: PathLike) -> list[Path]:
    """The files :func:`read_documents` reads: ``path`` itself if it is a file, else the
    regular files directly in the folder ``path``, sorted by name, without hidden files,
    :data:`SKIPPED_SUFFIXES` and subfolders (the offensive quotations of Debian's
    ``fortunes-off`` live in the subfolder ``off/`` and are never read)."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(SKIPPED_SUFFIXES))


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if b"\x00" in raw:
        raise DatasetError(f"{path}: not a text file (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte one character
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_documents(path: PathLike, *, documents: str = "percent") -> list[str]:
    """The documents of a text file, or of the files of a folder (:func:`text_files`).

    Args:
        path: a file or a folder.
        documents: ``"percent"``: documents are separated by lines holding only ``%`` (the
            ``fortune`` format); ``"file"``: each file is one document.

    Returns:
        The documents in file order, then order in the file; leading and trailing empty
        lines removed, and documents holding only white space dropped. Files are decoded
        as UTF-8, or as Latin-1 (one character per byte) when they are not valid UTF-8;
        line ends become ``"\\n"``.

    Raises:
        DatasetError: a file cannot be read or holds NUL bytes (not text); the message
            names it.
    """
    if documents not in ("percent", "file"):
        raise ValueError(f"documents must be 'percent' or 'file', got {documents!r}")
    out: list[str] = []
    for f in text_files(path):
        text = _decode(f)
        if documents == "file":
            parts = [text]
        else:
            parts, lines = [], []
            for line in text.split("\n"):
                if line.rstrip() == "%":
                    parts.append("\n".join(lines))
                    lines = []
                else:
                    lines.append(line)
            parts.append("\n".join(lines))
        out.extend(p.strip("\n") for p in parts if p.strip())
    return out


# --------------------------------------------------------------------------- symbols


def encode(text: str, vocab: Sequence[str]) -> torch.Tensor:
    """int64 indices of the characters of ``text`` in ``vocab``; unknown ones give 0."""
    index = {c: i for i, c in enumerate(vocab) if i > 0}
    return torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)


def decode(tokens: torch.Tensor | Sequence[int], vocab: Sequence[str]) -> str:
    """The characters of token indices (index 0 gives :data:`UNKNOWN`)."""
    return "".join(vocab[int(t)] for t in tokens)


def _windows(stream: torch.Tensor, context: int, stride: int) -> tuple[torch.Tensor, ...]:
    if stream.numel() < context + 1:
        empty = torch.empty(0, context, dtype=torch.long)
        return empty, empty.clone()
    w = stream.unfold(0, context + 1, stride)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _split_count(size: float, n: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1), got {size}")
        return round(size * n)
    if not 0 <= size < n:
        raise ValueError(f"{what} must be in [0, {n}) for {n} documents, got {size}")
    return size


# --------------------------------------------------------------------------- the loader


def _find_text(p: Path) -> tuple[list[Path] | None, str]:
    if not p.exists():
        return None, "does not exist"
    files = text_files(p)
    if not files:
        return None, "no text files"
    return files, ""


def fortunes(data_dir: PathLike | None = None, *, context: int = 128, stride: int | None = None,
             val_size: float = 0.1, test_size: float = 0.1, seed: int = 0,
             limit: int | None = None, documents: str = "percent",
             min_count: int = 1) -> Splits:
    """Character-level language modelling on quotations, split by document.

    Reads the documents (:func:`read_documents`) of the first of: ``data_dir`` (a folder or
    one file), ``$FORTUNES_DIR``, Debian's ``/usr/share/games/fortunes`` (package
    ``fortunes``; about 15,000 quotations, 2.5 MB), the cache
    :func:`~experiments.harness.datasets.cache_dir` ``("fortunes")``. There is no download.
    See the module docstring for the split, the vocabulary and the windows.

    Args:
        data_dir: a folder of text files (or one file), searched first.
        context: characters per input (the model's ``T``); windows hold ``context + 1``.
        stride: characters between the starts of consecutive training windows (default
            ``context``: every character is a target once per epoch; smaller values give
            overlapping windows). Validation and test windows always use ``context``.
        val_size, test_size: documents in the validation and test splits (int counts, or
            float fractions of all documents).
        seed: seeds the shuffle of the documents (``torch.Generator().manual_seed``) and
            the one ``limit`` does.
        limit: keep ``limit`` windows of each split, drawn with the seed (quick runs).
        documents: ``"percent"`` (``%`` lines separate documents) or ``"file"`` (one
            document per file).
        min_count: characters seen fewer times in training map to the unknown symbol.

    Returns:
        :class:`Splits` named ``"fortunes"`` whose ``train``, ``val`` and ``test`` are
        ``TensorDataset(inputs, targets)``, both int64 ``N x context``, targets the inputs
        shifted by one character; ``num_classes`` is the vocabulary size (index 0 the
        unknown symbol); ``input_shape`` is ``(context,)``; ``indices`` holds each split's
        document indices (into the documents in file order); ``info`` holds ``vocab``
        (the list of characters, ``vocab[0] == UNKNOWN``), ``source``, ``files``,
        ``documents`` and ``characters`` per split, ``unknown`` (the fraction of each
        split's characters outside the vocabulary), ``context`` and ``stride``.

    Raises:
        DatasetNotFoundError: no place holds text files; the message lists every place
            looked at and how to get the data.
        DatasetError: a file is not text, or too few documents for the split.

    Example:
        >>> data = fortunes(limit=100)                   # doctest: +SKIP
        >>> data.train.tensors[0].shape                  # doctest: +SKIP
        torch.Size([100, 128])
    """
    for name, value in (("context", context), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    stride = context if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if documents not in ("percent", "file"):
        raise ValueError(f"documents must be 'percent' or 'file', got {documents!r}")
    _check_seed_limit(seed, limit)
    files, where = _locate("fortunes", data_dir, _find_text, True)
    docs: list[str] = []
    for f in files:
        docs.extend(read_documents(f, documents=documents))
    n = len(docs)
    n_val = _split_count(val_size, n, "val_size")
    n_test = _split_count(test_size, n, "test_size")
    if n - n_val - n_test < 1:
        raise DatasetError(f"{where}: {n} documents leave none for training with "
                           f"val_size={val_size!r} and test_size={test_size!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    order = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test],
             "train": perm[n_val + n_test:]}
    order = {k: v.sort().values for k, v in order.items()}  # file order within a split
    streams = {k: "".join(docs[i] + DOCUMENT_END for i in idx.tolist())
               for k, idx in order.items()}
    chars, counts = np.unique(np.array(list(streams["train"])), return_counts=True)
    vocab = [UNKNOWN] + [str(c) for c, k in zip(chars, counts) if k >= min_count and c != UNKNOWN]
    parts, unknown = {}, {}
    for k in ("train", "val", "test"):
        enc = encode(streams[k], vocab)
        unknown[k] = float((enc == 0).double().mean()) if enc.numel() else 0.0
        x, y = _windows(enc, context, stride if k == "train" else context)
        keep = _shuffled_limit(len(x), seed, limit)
        parts[k] = TensorDataset(x[keep], y[keep])
    info = {"source": str(where), "files": [str(f) for f in files], "vocab": vocab,
            "documents": {k: len(v) for k, v in order.items()},
            "characters": {k: len(v) for k, v in streams.items()},
            "unknown": unknown, "context": context, "stride": stride,
            "format": documents}
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"],
                  num_classes=len(vocab), input_shape=(context,), name="fortunes",
                  indices=MappingProxyType(order), info=MappingProxyType(info))
