"""The data set loaders on small files in the real formats; never touches the network."""

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import data_files as df
import numpy as np
import pytest
import torch

from experiments.harness import datasets as ds
from experiments.harness.datasets import DatasetError, DatasetNotFoundError, sources

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no environment variables, no system dirs, an empty private cache (patched
    in ``sources``, where the loaders read them)."""
    def no_network(url, dest, timeout):
        """Fails the test."""
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(sources, "urllib_fetch", no_network)
    for var in sources.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {k: [] for k in sources.SYSTEM_DIRS})
    monkeypatch.setattr(sources, "CACHE_ROOT", tmp_path / "cache")


# --------------------------------------------------------------------------- IDX


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    x, y = df.make_images(7, seed=3)
    # gzip data under a plain name, plain data under a .gz name
    a = df.write_bytes(tmp_path / "images-plain-name", df.idx_bytes(x), gz=True)
    b = df.write_bytes(tmp_path / "images.gz", df.idx_bytes(x), gz=False)
    c = df.write_bytes(tmp_path / "labels", df.idx_bytes(y), gz=True)
    for p in (a, b):
        got = ds.read_idx(p, magic=0x803)
        assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
        np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(ds.read_idx(c, magic=0x801), y)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("corrupt, message", [
    ("magic", "bad IDX magic number 0x00000804, expected 0x00000803 (unsigned-byte images"),
    ("not_idx", "not an IDX file"),
    ("truncated", "truncated IDX payload: header says (5, 28, 28) (3920 bytes), file has 3910"),
    ("trailing", "3 bytes after the 3920-byte payload"),
    ("header", "truncated IDX header"),
])
def test_read_idx_errors_name_the_file(tmp_path, gz, corrupt, message):
    x, _ = df.make_images(5, seed=0)
    raw = df.idx_bytes(x)
    raw = {"magic": df.idx_bytes(x, magic=0x804),
           "not_idx": b"\x01\x02" + raw[2:],
           "truncated": raw[:-10],
           "trailing": raw + b"abc",
           "header": raw[:10]}[corrupt]
    p = df.write_bytes(tmp_path / "train-images-idx3-ubyte", raw, gz=gz)
    with pytest.raises(DatasetError) as err:
        ds.read_idx(p, magic=None if corrupt == "not_idx" else 0x803)
    assert str(err.value).startswith(f"{p}: ") and message in str(err.value)


def test_read_idx_truncated_gzip_stream(tmp_path):
    x, _ = df.make_images(50, seed=0)
    full = gzip.compress(df.idx_bytes(x))
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip") as err:
        ds.read_idx(p)
    assert str(p) in str(err.value)


def test_image_label_count_mismatch_names_both_files(tmp_path):
    arrays = df.write_idx_dir(tmp_path / "d", 30, 10, gz=False)
    labels = tmp_path / "d" / "train-labels-idx1-ubyte"
    df.write_bytes(labels, df.idx_bytes(arrays["train-labels-idx1-ubyte"][:29]))
    with pytest.raises(DatasetError) as err:
        ds.fashion_mnist(tmp_path / "d", val_size=5, download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte has 30 images" in msg and f"{labels} has 29 labels" in msg


def test_label_out_of_range(tmp_path):
    arrays = df.write_idx_dir(tmp_path / "d", 30, 10, gz=False)
    y = arrays["t10k-labels-idx1-ubyte"].copy()
    y[4] = 10
    df.write_bytes(tmp_path / "d" / "t10k-labels-idx1-ubyte", df.idx_bytes(y))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 10 at index 4"):
        ds.fashion_mnist(tmp_path / "d", val_size=5, download=False)


# --------------------------------------------------------------------------- Fashion-MNIST / MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_shapes_values_and_splits(tmp_path, gz):
    arrays = df.write_idx_dir(tmp_path, 60, 20, seed=1, gz=gz)
    data = ds.fashion_mnist(tmp_path, val_size=12, seed=0, download=False)
    assert data.sizes() == {"train": 48, "val": 12, "test": 20}
    assert (data.name, data.num_classes, data.input_shape) == ("fashion-mnist", 10, (1, 28, 28))
    assert data.task == "classification" and data.num_outputs == 10
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (48, 1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xtr, ytr = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    for split in ("train", "val"):
        i = data.indices[split].numpy()
        xs, ys = getattr(data, split).tensors
        np.testing.assert_array_equal(xs.numpy()[:, 0], xtr[i].astype(np.float32) / 255)
        np.testing.assert_array_equal(ys.numpy(), ytr[i])
    # without a limit the test set keeps the file's order
    assert data.indices["test"].tolist() == list(range(20))
    np.testing.assert_array_equal(data.test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert data.info["source"] == str(tmp_path)


def test_validation_split_is_seeded_disjoint_and_complete(tmp_path):
    df.write_idx_dir(tmp_path, 60, 20)
    a = ds.fashion_mnist(tmp_path, val_size=15, seed=7, download=False)
    b = ds.fashion_mnist(tmp_path, val_size=15, seed=7, download=False)
    c = ds.fashion_mnist(tmp_path, val_size=15, seed=8, download=False)
    assert torch.equal(a.indices["val"], b.indices["val"])
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert not torch.equal(a.indices["val"], c.indices["val"])
    tr, va = set(a.indices["train"].tolist()), set(a.indices["val"].tolist())
    assert not tr & va and tr | va == set(range(60))
    # the same permutation torch gives for this seed: val is its first 15
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(7))
    assert a.indices["val"].tolist() == perm[:15].tolist()
    # union of the tensors is the original training set
    both = torch.cat([a.train.tensors[0], a.val.tensors[0]]).flatten(1)
    orig = torch.cat([c.train.tensors[0], c.val.tensors[0]]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, orig.tolist()))


def test_limit_and_fraction(tmp_path):
    df.write_idx_dir(tmp_path, 60, 20)
    full = ds.fashion_mnist(tmp_path, val_size=0.25, seed=3, download=False)
    assert full.sizes() == {"train": 45, "val": 15, "test": 20}
    small = ds.fashion_mnist(tmp_path, val_size=0.25, seed=3, limit=6, download=False)
    assert small.sizes() == {"train": 6, "val": 6, "test": 6}
    # limit keeps the first N after the seeded shuffle: a prefix of the full splits
    assert small.indices["train"].tolist() == full.indices["train"][:6].tolist()
    assert small.indices["val"].tolist() == full.indices["val"][:6].tolist()
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    assert small.indices["test"].tolist() == perm[:6].tolist()
    for bad in (60, -1, 1.5):
        with pytest.raises(ValueError):
            ds.fashion_mnist(tmp_path, val_size=bad, download=False)
    with pytest.raises(ValueError, match="limit"):
        ds.fashion_mnist(tmp_path, val_size=5, limit=0, download=False)


def test_normalize_uses_training_statistics(tmp_path):
    df.write_idx_dir(tmp_path, 60, 20)
    raw = ds.fashion_mnist(tmp_path, val_size=10, download=False)
    norm = ds.fashion_mnist(tmp_path, val_size=10, download=False, normalize=True)
    mean = raw.train.tensors[0].double().mean()
    std = raw.train.tensors[0].double().std(unbiased=False)
    assert norm.info["mean"] == pytest.approx([float(mean)], rel=1e-6)
    assert norm.info["std"] == pytest.approx([float(std)], rel=1e-6)
    xt = norm.train.tensors[0].double()
    assert float(xt.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(xt.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    expected = (raw.test.tensors[0] - norm.info["mean"][0]) / norm.info["std"][0]
    torch.testing.assert_close(norm.test.tensors[0], expected)
    assert abs(float(norm.test.tensors[0].mean())) > 1e-4  # test stats were not used


def test_mnist_plain_files_from_env(tmp_path, monkeypatch):
    df.write_idx_dir(tmp_path / "mnist", 40, 10, gz=False)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "mnist"))
    data = ds.mnist(val_size=8, download=False)
    assert data.name == "mnist" and data.sizes() == {"train": 32, "val": 8, "test": 10}
    assert data.info["source"] == str(tmp_path / "mnist")


def test_lookup_order(tmp_path, monkeypatch):
    # each place holds a different number of training images, so the sizes tell them apart
    places = {"arg": 40, "env": 41, "system": 42, "cache": 43}
    for name, n in places.items():
        df.write_idx_dir(tmp_path / name, n, 10)
    df.write_idx_dir(ds.cache_dir("fashion-mnist"), 43, 10)
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "nowhere",
                                                          tmp_path / "system"])
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env"))

    def n_train(**kw):
        data = ds.fashion_mnist(val_size=5, download=False, **kw)
        return len(data.train) + len(data.val)

    assert n_train(data_dir=tmp_path / "arg") == 40
    assert n_train() == 41
    monkeypatch.delenv("FASHION_MNIST_DIR")
    assert n_train() == 42
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion-mnist", [])
    assert n_train() == 43
    assert ds.cache_dir("fashion-mnist") == tmp_path / "cache" / "fashion-mnist"
    # a named place without the data is reported, then the search goes on
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env"))
    with pytest.warns(UserWarning, match="missing t10k-images"):
        (tmp_path / "arg" / "t10k-images-idx3-ubyte.gz").unlink()
        assert n_train(data_dir=tmp_path / "arg") == 41


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "CACHE_ROOT", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.cache_dir("mnist") == tmp_path / "xdg" / "saliency-pruning" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ds.cache_dir("mnist") == Path.home() / ".cache" / "saliency-pruning" / "mnist"


def test_settings_assigned_on_the_package_reach_the_search(monkeypatch, tmp_path):
    """The settings live in ``sources``; the package reads and assigns them there."""
    monkeypatch.setattr(ds, "CACHE_ROOT", tmp_path / "elsewhere")
    assert sources.CACHE_ROOT == ds.CACHE_ROOT == tmp_path / "elsewhere"
    assert ds.cache_dir("mnist") == tmp_path / "elsewhere" / "mnist"
    from experiments.harness.datasets import urllib_fetch
    assert urllib_fetch is sources.urllib_fetch  # the fixture's stand-in
    assert set(sources.SETTINGS) <= set(ds.__all__) and set(sources.SETTINGS) <= set(dir(ds))


def test_not_found_message_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "debian"])
    (tmp_path / "partial").mkdir()
    df.write_bytes(tmp_path / "partial" / "train-images-idx3-ubyte", b"")
    with pytest.raises(DatasetNotFoundError) as err:
        ds.fashion_mnist(tmp_path / "partial", download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DatasetError)
    assert msg.startswith("Fashion-MNIST not found. Looked in:")
    for piece in (f"argument: {tmp_path / 'partial'} (missing train-labels-idx1-ubyte[.gz], "
                  "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
                  "$FASHION_MNIST_DIR: not set",
                  f"system directory: {tmp_path / 'debian'} (does not exist)",
                  f"cache: {tmp_path / 'cache' / 'fashion-mnist'} (does not exist)",
                  "download: disabled (download=False)",
                  "sudo apt-get install dataset-fashion-mnist",
                  "set FASHION_MNIST_DIR="):
        assert piece in msg, piece


def _fake_server(files: dict[str, bytes], fail_hosts=()):
    calls = []

    def fetch(url, dest, timeout):
        calls.append(url)
        assert timeout == sources.DOWNLOAD_TIMEOUT
        if any(h in url for h in fail_hosts):
            raise OSError("Network is unreachable")
        dest.write_bytes(files[url.rsplit("/", 1)[1]])

    return fetch, calls


def _served_idx(seed=0):
    xtr, ytr = df.make_images(30, seed)
    xte, yte = df.make_images(10, seed + 1)
    return {b + ".gz": gzip.compress(df.idx_bytes(a), mtime=0)
            for b, a in zip(df.IDX_NAMES, (xtr, ytr, xte, yte))}


def test_download_with_fake_fetcher_verifies_and_renames(monkeypatch):
    files = _served_idx()
    for name, data in files.items():
        monkeypatch.setitem(sources.CHECKSUMS["fashion-mnist"], name,
                            "md5:" + hashlib.md5(data).hexdigest())
    fetch, calls = _fake_server(files, fail_hosts=("s3-website",))
    data = ds.fashion_mnist(val_size=5, download=fetch)
    cache = ds.cache_dir("fashion-mnist")
    assert data.info["source"] == str(cache) and data.sizes() == {"train": 25, "val": 5,
                                                                  "test": 10}
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)  # no temporary left
    # the official S3 endpoint first, then the GitHub mirror, for each of the 4 files
    assert len(calls) == 8 and calls[0].startswith(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    # a second call finds the cache and fetches nothing
    ds.fashion_mnist(val_size=5, download=fetch)
    assert len(calls) == 8


def test_download_checksum_mismatch_keeps_nothing():
    fetch, calls = _fake_server(_served_idx())
    with pytest.raises(DatasetNotFoundError) as err:
        ds.fashion_mnist(val_size=5, download=fetch)
    msg = str(err.value)
    assert "checksum mismatch: md5" in msg and "expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    cache = ds.cache_dir("fashion-mnist")
    assert list(cache.iterdir()) == []
    assert len(calls) == 8  # two mirrors tried for each file


def test_download_network_down_message():
    fetch, _ = _fake_server({}, fail_hosts=("http",))
    with pytest.raises(DatasetNotFoundError) as err:
        ds.mnist(download=fetch)
    msg = str(err.value)
    assert "MNIST not found" in msg
    assert "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz: OSError: Network is " \
           "unreachable" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in msg
    assert "MNIST_DIR" in msg


# --------------------------------------------------------------------------- CIFAR-10


def _check_cifar(data, batches):
    assert (data.name, data.num_classes, data.input_shape) == ("cifar10", 10, (3, 32, 32))
    xtr = np.concatenate([batches[b][0] for b in df.CIFAR_BATCHES[:5]])
    ytr = np.concatenate([batches[b][1] for b in df.CIFAR_BATCHES[:5]])
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 32, 32)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    i = data.indices["train"].numpy()
    np.testing.assert_array_equal(x.numpy(), xtr[i].astype(np.float32) / 255)
    np.testing.assert_array_equal(y.numpy(), ytr[i])
    np.testing.assert_array_equal(data.test.tensors[1].numpy(), batches["test_batch"][1])
    np.testing.assert_array_equal(data.test.tensors[0].numpy(),
                                  batches["test_batch"][0].astype(np.float32) / 255)


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_directory(tmp_path, style):
    batches = df.make_cifar(8)
    df.write_cifar_dir(tmp_path / "c", batches, style=style)
    data = ds.cifar10(tmp_path / "c", val_size=10, download=False)
    assert data.sizes() == {"train": 30, "val": 10, "test": 8}
    _check_cifar(data, batches)
    # the red plane of image 0 is the first 1024 values of its row
    i0 = int(data.indices["train"][0])
    b, r = divmod(i0, 8)
    row = batches[df.CIFAR_BATCHES[b]][0][r].reshape(3072)
    np.testing.assert_array_equal(data.train.tensors[0][0, 0].flatten().numpy() * 255,
                                  row[:1024])


def test_cifar10_subfolder_archive_and_archive_path(tmp_path, monkeypatch):
    batches = df.make_cifar(6, seed=5)
    df.write_cifar_dir(tmp_path / "a" / "cifar-10-batches-py", batches)
    archive = df.write_cifar_targz(tmp_path / "b" / "cifar-10-python.tar.gz", batches)
    from_dir = ds.cifar10(tmp_path / "a", val_size=6, seed=2, download=False)
    assert from_dir.info["source"] == str(tmp_path / "a" / "cifar-10-batches-py")
    from_tar = ds.cifar10(tmp_path / "b", val_size=6, seed=2, download=False)
    assert from_tar.info["source"] == str(archive)
    monkeypatch.setenv("CIFAR10_DIR", str(archive))
    from_env = ds.cifar10(val_size=6, seed=2, download=False)
    for d in (from_tar, from_env):
        _check_cifar(d, batches)
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(d, split).tensors[0], getattr(from_dir, split).tensors[0])


@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, nested):
    marker = tmp_path / "pwned"
    batches = df.make_cifar(4)
    d = df.write_cifar_dir(tmp_path / "c", batches)
    (d / "data_batch_3").write_bytes(df.evil_batch_bytes(marker, nested=nested))
    with pytest.raises(DatasetError) as err:
        ds.cifar10(d, val_size=2, download=False)
    msg = str(err.value)
    assert str(d / "data_batch_3") in msg
    assert f"refused to load global {os.system.__module__}.system" in msg
    assert not marker.exists()


def test_malicious_pickle_inside_archive(tmp_path):
    marker = tmp_path / "pwned"
    archive = df.write_cifar_targz(tmp_path / "cifar-10-python.tar.gz", df.make_cifar(4),
                                   skip=("test_batch",))
    evil = df.evil_batch_bytes(marker)
    with tarfile.open(archive, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    with tarfile.open(archive, "w:gz") as t:
        for m, data in members:
            t.addfile(m, io.BytesIO(data))
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(evil)
        t.addfile(info, io.BytesIO(evil))
    with pytest.raises(DatasetError, match="refused to load global") as err:
        ds.cifar10(archive, val_size=2, download=False)
    assert f"{archive}:cifar-10-batches-py/test_batch" in str(err.value)
    assert not marker.exists()


def test_cifar_corrupt_files(tmp_path):
    batches = df.make_cifar(4)
    d = df.write_cifar_dir(tmp_path / "c", batches)
    good = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated pickle") as err:
        ds.cifar10(d, val_size=2, download=False)
    assert str(d / "data_batch_2") in str(err.value)
    # the right container with the wrong contents
    (d / "data_batch_2").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 1536), np.uint8), b"labels": [0] * 4}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_2: b'data' must be a uint8 array N x "
                                           r"3072, found uint8 array of shape \(4, 1536\)"):
        ds.cifar10(d, val_size=2, download=False)
    (d / "data_batch_2").write_bytes(df.cifar_batch_bytes(batches["data_batch_2"][0], [0, 1, 2]))
    with pytest.raises(DatasetError, match="4 images but labels of shape"):
        ds.cifar10(d, val_size=2, download=False)
    # archives: a member missing, and a truncated archive
    archive = df.write_cifar_targz(tmp_path / "x" / "cifar-10-python.tar.gz", batches,
                                   skip=("data_batch_4",))
    with pytest.raises(DatasetError, match="archive lacks cifar-10-batches-py/data_batch_4"):
        ds.cifar10(archive, val_size=2, download=False)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated") as err:
        ds.cifar10(archive, val_size=2, download=False)
    assert str(archive) in str(err.value)


def test_cifar_not_found(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as err:
        ds.cifar10(d, download=False)
    msg = str(err.value)
    assert f"{d} lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in msg
    assert "$CIFAR10_DIR: not set" in msg and "cifar-10-python.tar.gz" in msg


# --------------------------------------------------------------------------- COVERTYPE


def test_covertype_random_split_and_standardization(tmp_path):
    table = df.covtype_table(1000, seed=1)
    path = df.write_covtype(tmp_path / "covtype.data", table)
    data = ds.covertype(tmp_path, seed=4, download=False)
    assert data.sizes() == {"train": 720, "val": 80, "test": 200}
    assert (data.num_classes, data.input_shape, data.info["split"]) == (7, (54,), "random")
    idx = {k: set(v.tolist()) for k, v in data.indices.items()}
    assert not (idx["train"] & idx["val"] or idx["train"] & idx["test"]
                or idx["val"] & idx["test"])
    assert idx["train"] | idx["val"] | idx["test"] == set(range(1000))
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (720, 54)
    i = data.indices["train"].numpy()
    np.testing.assert_array_equal(y.numpy(), table[i, -1] - 1)
    assert sorted(torch.unique(y).tolist()) == list(range(7))
    # standardized with training statistics only
    raw_train = table[i, :54].astype(np.float64)
    np.testing.assert_allclose(data.info["mean"], raw_train.mean(0), rtol=1e-6)
    varying = raw_train.std(0) > 0
    assert varying.sum() < 54  # soil type 40 never occurs: that column is only centred
    xd = x.double().numpy()
    np.testing.assert_allclose(xd.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xd.std(0)[varying], 1, atol=1e-5)
    np.testing.assert_allclose(xd.std(0)[~varying], 0, atol=1e-6)
    te = data.test.tensors[0].double().numpy()
    assert np.abs(te.mean(0)[:10]).max() > 1e-3  # not re-standardized on the test set
    expected = (table[data.indices["test"].numpy(), :54] - raw_train.mean(0)) / np.where(
        varying, raw_train.std(0), 1)
    np.testing.assert_allclose(te, expected, rtol=1e-5, atol=1e-5)
    # seeded: identical across calls, different for another seed
    again = ds.covertype(path, seed=4, download=False)
    other = ds.covertype(path, seed=5, download=False)
    assert torch.equal(again.indices["val"], data.indices["val"])
    assert not torch.equal(other.indices["val"], data.indices["val"])


def test_covertype_original_split_and_gzip(tmp_path):
    table = df.covtype_table(15_200, seed=2)
    plain = df.write_covtype(tmp_path / "covtype.data", table)
    packed = df.write_covtype(tmp_path / "gz" / "covtype.data.gz", table, gz=True)
    a = ds.covertype(plain, split="original", download=False)
    assert a.sizes() == {"train": 11_340, "val": 3_780, "test": 80}
    assert a.indices["train"].tolist() == list(range(11_340))
    assert a.indices["val"].tolist() == list(range(11_340, 15_120))
    assert a.indices["test"].tolist() == list(range(15_120, 15_200))
    b = ds.covertype(tmp_path / "gz", split="original", download=False)
    assert b.info["source"] == str(packed)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
        assert torch.equal(getattr(a, split).tensors[1], getattr(b, split).tensors[1])
    small = ds.covertype(plain, split="original", limit=10, seed=1, download=False)
    assert small.sizes() == {"train": 10, "val": 10, "test": 10}
    assert max(small.indices["train"].tolist()) < 11_340
    assert min(small.indices["test"].tolist()) >= 15_120
    with pytest.raises(ValueError, match="fixed validation set"):
        ds.covertype(plain, split="original", val_size=100, download=False)
    with pytest.raises(DatasetError, match="the original split needs more than 15120"):
        ds.covertype(df.write_covtype(tmp_path / "few.data", table[:500]), split="original",
                     download=False)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.__setitem__(6, lines[6].rsplit(",", 1)[0]),
     "line 7: expected 55 comma-separated integers, found 54 fields"),
    (lambda lines: lines.__setitem__(2, lines[2].replace(",", ",x", 1)),
     "line 3: column 2 is 'x"),
    (lambda lines: lines.__setitem__(4, lines[4].rsplit(",", 1)[0] + ",8"),
     "line 5: cover type 8 is outside 1..7"),
])
def test_covertype_malformed_row_names_file_and_line(tmp_path, gz, edit, message):
    lines = df.covtype_text(df.covtype_table(20)).splitlines()
    edit(lines)
    p = df.write_bytes(tmp_path / "covtype.data", ("\n".join(lines) + "\n").encode(), gz=gz)
    with pytest.raises(DatasetError) as err:
        ds.covertype(p, download=False)
    assert str(err.value).startswith(f"{p}: ") and message in str(err.value)


def test_covertype_truncated_gzip_and_not_found(tmp_path):
    packed = gzip.compress(df.covtype_text(df.covtype_table(300)).encode())
    p = tmp_path / "covtype.data.gz"
    p.write_bytes(packed[:-40])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip") as err:
        ds.covertype(p, download=False)
    assert str(p) in str(err.value)
    with pytest.raises(DatasetNotFoundError, match=r"COVERTYPE not found(.|\n)*COVERTYPE_DIR"):
        ds.covertype(tmp_path / "missing", download=False)


# --------------------------------------------------------------------------- synthetic


def _all(data):
    """Inputs and targets of all splits, in generation order."""
    n = sum(data.sizes().values())
    x = torch.empty(n, *data.input_shape)
    y = torch.empty((n, *data.train.tensors[1].shape[1:]), dtype=data.train.tensors[1].dtype)
    for split in ("train", "val", "test"):
        i = data.indices[split]
        x[i], y[i] = getattr(data, split).tensors
    return x, y


def test_synthetic_regression_relevant_features(tmp_path):
    data = ds.synthetic_regression(n_samples=1000, n_features=40, n_relevant=5, n_targets=6,
                                   noise=0.1, seed=3)
    assert data.sizes() == {"train": 640, "val": 160, "test": 200}
    assert (data.task, data.num_classes, data.num_outputs, data.input_shape) == \
        ("regression", 0, 6, (40,))
    rel = data.relevant.tolist()
    assert len(rel) == 5 == len(set(rel)) and rel == sorted(rel)
    irrelevant = [j for j in range(40) if j not in rel]
    assert data.coef.shape == (6, 40)
    assert bool((data.coef[:, irrelevant] == 0).all())  # exactly zero
    assert bool((data.coef[:, rel] != 0).all())
    x, y = _all(data)
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (1000, 6)
    resid = y.double() - x.double() @ data.coef.double().T
    assert float(resid.std()) == pytest.approx(0.1, rel=0.05)
    # least squares on train recovers the weights: the irrelevant columns are ~0
    xt, yt = data.train.tensors
    w = torch.linalg.lstsq(xt.double(), yt.double()).solution.T
    assert float((w - data.coef.double()).abs().max()) < 0.05
    norms = w.norm(dim=0)
    assert float(norms[irrelevant].max()) < 0.05
    # every relevant column has norm sqrt(n_targets)
    torch.testing.assert_close(data.coef[:, rel].norm(dim=0), torch.full((5,), 6 ** 0.5))
    assert float(norms[rel].min()) > 2.3
    # irrelevant features alone explain nothing
    w_irr = torch.linalg.lstsq(xt[:, irrelevant].double(), yt.double()).solution
    r2 = 1 - (yt.double() - xt[:, irrelevant].double() @ w_irr).var() / yt.double().var()
    assert float(r2) < 0.1
    # reproducible per seed
    again = ds.synthetic_regression(n_samples=1000, n_features=40, n_relevant=5, n_targets=6,
                                    noise=0.1, seed=3)
    other = ds.synthetic_regression(n_samples=1000, n_features=40, n_relevant=5, n_targets=6,
                                    noise=0.1, seed=4)
    assert torch.equal(_all(again)[1], y) and torch.equal(again.relevant, data.relevant)
    assert not torch.equal(_all(other)[1], y)


def test_synthetic_classification_relevant_features():
    data = ds.synthetic_classification(n_samples=3000, n_features=30, n_relevant=4,
                                       n_classes=5, seed=1)
    x, y = _all(data)
    assert y.dtype == torch.int64 and sorted(torch.unique(y).tolist()) == list(range(5))
    assert (data.num_classes, data.num_outputs, data.task) == (5, 5, "classification")
    rel = data.relevant.tolist()
    irrelevant = [j for j in range(30) if j not in rel]
    assert bool((data.coef[:, irrelevant] == 0).all()) and bool((data.coef[:, rel] != 0).all())
    # labels follow softmax(A x): the most probable class is right far above chance (0.2)
    oracle = (x @ data.coef.T).argmax(1)
    agree = float((oracle == y).double().mean())
    assert agree == pytest.approx(data.info["bayes_labels_agree"], abs=1e-12)
    assert agree > 0.6
    # changing irrelevant inputs changes nothing; the label depends on the relevant ones
    x2 = x.clone()
    x2[:, irrelevant] = torch.randn(3000, 26, generator=torch.Generator().manual_seed(0))
    assert torch.equal((x2 @ data.coef.T).argmax(1), oracle)
    again = ds.synthetic_classification(n_samples=3000, n_features=30, n_relevant=4,
                                        n_classes=5, seed=1)
    assert torch.equal(_all(again)[1], y)
    with pytest.raises(ValueError, match="n_relevant"):
        ds.synthetic_classification(n_features=3, n_relevant=4)


# --------------------------------------------------------------------------- registry


def test_registry_and_get_dataset(tmp_path):
    assert list(ds.DATASETS) == ["fashion-mnist", "mnist", "cifar10", "covertype",
                                 "synthetic-regression", "synthetic-classification", "fortunes"]
    for name, fn in ds.DATASETS.items():
        assert fn.__doc__ and callable(fn), name
    # the call experiments.harness.run.load_data makes
    data = ds.get_dataset("synthetic-classification", data_dir=None, limit=50, seed=2)
    assert data.sizes() == {"train": 50, "val": 50, "test": 50}
    assert ds.get_dataset("SYNTHETIC_regression", seed=2).name == "synthetic-regression"
    with pytest.raises(ValueError, match="reads no files"):
        ds.get_dataset("synthetic-regression", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose from fashion-mnist"):
        ds.get_dataset("imagenet")
    df.write_covtype(tmp_path / "covtype.data", df.covtype_table(100))
    assert ds.get_dataset("covertype", data_dir=tmp_path, download=False).sizes() == \
        {"train": 72, "val": 8, "test": 20}
    df.write_idx_dir(tmp_path / "f", 20, 5)
    assert len(ds.get_dataset("fashion-mnist", data_dir=tmp_path / "f", val_size=4,
                              download=False).val) == 4


def test_splits_is_frozen():
    data = ds.synthetic_regression(n_samples=100, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "x"
    assert repr(data) == ("Splits(name='synthetic-regression', train=64, val=16, test=20, "
                          "num_classes=0, input_shape=(280,))")
    for name in ds.__all__:
        assert getattr(ds, name).__doc__ or name.isupper(), name


# --------------------------------------------------------------------------- the real data


@pytest.mark.skipif(not (FMNIST_DEBIAN / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    """Debian's files load; sizes and class balance are the published ones (6,000 / 1,000 each)."""
    data = ds.fashion_mnist(FMNIST_DEBIAN, download=False)
    assert data.sizes() == {"train": 55_000, "val": 5_000, "test": 10_000}
    x, y = data.test.tensors
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [1000] * 10
    y_all = torch.cat([data.train.tensors[1], data.val.tensors[1]])
    assert torch.bincount(y_all).tolist() == [6000] * 10
