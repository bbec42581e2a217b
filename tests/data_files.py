"""Small files in the real formats of the data sets, for testing the loaders offline.

* IDX (MNIST / Fashion-MNIST): big-endian magic ``0x00000803`` / ``0x00000801``,
  uint32 sizes, uint8 payload; optionally gzip-compressed.
* CIFAR-10 python batches: protocol-2 pickles of a dict with ``b'data'`` (uint8
  ``N x 3072``), ``b'labels'``, ``b'batch_label'``, ``b'filenames'``. The
  official files were written by Python 2's cPickle; :func:`cifar_batch_bytes`
  emits that exact opcode stream (``numpy.core.multiarray._reconstruct``, byte
  strings as ``BINSTRING``), or with ``style="py3"`` what Python 3's
  ``pickle.dumps(..., protocol=2)`` writes (bytes via ``_codecs.encode``).
* COVERTYPE ``covtype.data``: 55 comma-separated integers per line.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array (magic ``0x000008<ndim>`` unless given)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.tobytes()


def write_bytes(path: Path, data: bytes, *, gz: bool = False) -> Path:
    """Write ``data`` (gzip-compressed if ``gz``) to ``path``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_images(n: int, seed: int, *, shape=(28, 28), num_classes: int = 10):
    """Random uint8 images ``n x H x W`` (using 0 and 255) and labels covering all classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = 0
    x.reshape(n, -1)[:, 1] = 255
    y = (np.arange(n) % num_classes).astype(np.uint8)
    rng.shuffle(y)
    return x, y


def write_idx_dir(d: Path, n_train: int = 60, n_test: int = 20, *, seed: int = 0,
                  gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four MNIST-style IDX files into ``d``; return the arrays by base name."""
    xtr, ytr = make_images(n_train, seed)
    xte, yte = make_images(n_test, seed + 1)
    arrays = dict(zip(IDX_NAMES, (xtr, ytr, xte, yte)))
    for base, arr in arrays.items():
        write_bytes(d / (base + (".gz" if gz else "")), idx_bytes(arr), gz=gz)
    return arrays


# --------------------------------------------------------------------------- CIFAR


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _py2_array(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8
    shape = b"(" + b"".join(_py2_int(s) for s in a.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2
             + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0)
            + b"\x85" + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def _py2(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, (int, np.integer)):
        return _py2_int(int(v))
    if isinstance(v, list):
        return b"](" + b"".join(_py2(x) for x in v) + b"e"
    if isinstance(v, np.ndarray):
        return _py2_array(v)
    raise TypeError(type(v))


def cifar_batch_bytes(images: np.ndarray, labels, *, batch_label: bytes = b"training batch 1 of 5",
                      style: str = "py2") -> bytes:
    """A CIFAR-10 python batch: ``images`` uint8 ``N x 3 x 32 x 32``, ``labels`` N ints."""
    n = len(images)
    d = {b"batch_label": batch_label,
         b"labels": [int(v) for v in labels],
         b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(n, 3072),
         b"filenames": [b"img_%05d.png" % i for i in range(n)]}
    if style == "py3":
        return pickle.dumps(d, protocol=2)
    if style != "py2":
        raise ValueError(style)
    body = b"".join(_py2(k) + _py2(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch")


def make_cifar(n_per_batch: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images and labels for the six batches."""
    out = {}
    for i, b in enumerate(CIFAR_BATCHES):
        x, y = make_images(n_per_batch, seed + i, shape=(3, 32, 32))
        out[b] = (x, y.astype(np.int64))
    return out


def write_cifar_dir(d: Path, batches, *, style: str = "py2") -> Path:
    """Write the six batches (and batches.meta) into ``d``; return ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    for b, (x, y) in batches.items():
        (d / b).write_bytes(cifar_batch_bytes(x, y, batch_label=b.encode(), style=style))
    (d / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                          b"frog", b"horse", b"ship", b"truck"],
         b"num_cases_per_batch": len(next(iter(batches.values()))[0]), b"num_vis": 3072},
        protocol=2))
    return d


def write_cifar_targz(path: Path, batches, *, style: str = "py2", skip: tuple = ()) -> Path:
    """The official archive layout: ``cifar-10-batches-py/<batch>`` in a tar.gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for b, (x, y) in batches.items():
            if b in skip:
                continue
            data = cifar_batch_bytes(x, y, batch_label=b.encode(), style=style)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{b}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class Evil:
    """Pickles to a call of ``os.system`` that would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_batch_bytes(marker: Path, *, nested: bool = False) -> bytes:
    """A malicious "batch": the whole pickle, or one label inside a real-looking dict."""
    if not nested:
        return pickle.dumps(Evil(marker), protocol=2)
    return pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [Evil(marker)],
                         b"batch_label": b"x", b"filenames": [b"a.png"]}, protocol=2)


# --------------------------------------------------------------------------- COVERTYPE


def covtype_table(n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of 55 ints shaped like covtype.data (10 quantities, 4 + 40 one-hot, type 1..7)."""
    rng = np.random.default_rng(seed)
    lo = np.array([1859, 0, 0, 0, -173, 0, 0, 0, 0, 0])
    hi = np.array([3858, 360, 66, 1397, 601, 7117, 254, 254, 254, 7173])
    quant = rng.integers(lo, hi + 1, size=(n, 10))
    wild = np.eye(4, dtype=np.int64)[rng.integers(0, 4, n)]
    soil = np.eye(40, dtype=np.int64)[rng.integers(0, 39, n)]  # soil type 40 never occurs
    label = (np.arange(n) % 7 + 1)[rng.permutation(n)]
    return np.concatenate([quant, wild, soil, label[:, None]], axis=1).astype(np.int64)


def covtype_text(table: np.ndarray) -> str:
    """The CSV text of ``table`` (no header, ``\\n`` line ends)."""
    return "".join(",".join(map(str, row)) + "\n" for row in table.tolist())


def write_covtype(path: Path, table: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``table`` as covtype.data (gzip-compressed if ``gz``)."""
    return write_bytes(path, covtype_text(table).encode("ascii"), gz=gz)


# --------------------------------------------------------------------------- quick runs

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fmnist_args(tmp_path_factory) -> list[str]:
    """``--set`` arguments pointing an experiment at Fashion-MNIST: Debian's files when
    installed, else a small IDX folder written here (600 training, 100 test images)."""
    if all(any(SYSTEM_FMNIST.glob(f"{b}*")) for b in ("train-images-idx3-ubyte",
                                                        "t10k-images-idx3-ubyte")):
        return ["--set", f"data_dir={SYSTEM_FMNIST}"]
    d = tmp_path_factory.mktemp("fmnist")
    write_idx_dir(d, n_train=600, n_test=100, seed=1, gz=True)
    return ["--set", f"data_dir={d}", "--set", "val_size=100"]


def quick_run(name: str, tmp_path_factory):
    """Run experiment ``name`` with ``--quick`` on Fashion-MNIST into a fresh folder; return
    ``(folder, its config, its results.json)``."""
    import json

    from experiments.cli import main

    out = tmp_path_factory.mktemp(name.replace("-", "_"))
    assert main(["run", name, "--quick", "--out", str(out), *fmnist_args(tmp_path_factory)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    return out, cfg, json.loads((out / "results.json").read_text())
