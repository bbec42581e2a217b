"""Harness: model zoo, checkpoints, training loop, atomic writes."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.harness import atomic
from experiments.harness.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint,
                                            save_checkpoint)
from experiments.harness.models import MODELS, build_model
from experiments.harness.training import Callback, TrainConfig, Trainer
from pruners import mask_units, remove_units, trace


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# parameter counts computed by hand from each architecture's definition
HAND_COUNTS = {
    # conv 1->8 5x5, conv 8->16 5x5, FC 16*4*4->64->10 (thesis Sec. 2.2: 20,522)
    ("thesis_cnn", ()): (1 * 8 * 25 + 8) + (8 * 16 * 25 + 16) + (256 * 64 + 64) + (64 * 10 + 10),
    # CIFAR: conv 3->8, 8->16, FC 16*5*5=400 -> 64 -> 10
    ("thesis_cifar_cnn", ()): (3 * 8 * 25 + 8) + (8 * 16 * 25 + 16) + (400 * 64 + 64) + 650,
    ("lenet_300_100", ()): 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    # conv 1->20 5x5, 20->50 5x5, FC 50*4*4=800 -> 500 -> 10
    ("lenet5", ()): (20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + 5010,
    ("covertype_net", ()): 54 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 7 + 7,
    ("mlp", (("widths", (784, 256, 256, 10)),)): 784 * 256 + 256 + 256 * 256 + 256 + 2570,
    # vgg-small at width 0.25 on 1x28x28: 16,16,M,32,32,M,64,64,M,128,128,M; conv no bias + BN
    ("vgg", (("config", "vgg-small"), ("width", 0.25), ("in_channels", 1),
             ("image_size", 28))): (
        (1 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9
         + 64 * 128 * 9 + 128 * 128 * 9)
        + 2 * (16 + 16 + 32 + 32 + 64 + 64 + 128 + 128)
        + (128 * 1 * 1 * 128 + 128) + (128 * 10 + 10)),
}


@pytest.mark.parametrize("key", list(HAND_COUNTS), ids=[k[0] for k in HAND_COUNTS])
def test_model_parameter_counts(key):
    name, kwargs = key
    model = build_model(name, **dict(kwargs))
    assert n_params(model) == HAND_COUNTS[key]


def test_thesis_cnn_has_20522_parameters():
    assert n_params(build_model("thesis_cnn")) == 20_522


@pytest.mark.parametrize("name,kwargs,shape", [
    ("thesis_cnn", {}, (1, 28, 28)),
    ("thesis_cifar_cnn", {"activation": "tanh", "batchnorm": True}, (3, 32, 32)),
    ("lenet_300_100", {}, (1, 28, 28)),
    ("lenet5", {}, (1, 28, 28)),
    ("vgg", {"config": "vgg-small", "width": 0.25, "in_channels": 1, "image_size": 28},
     (1, 28, 28)),
    ("covertype_net", {"widths": (8, 6, 4)}, (54,)),
    ("small_cnn", {}, (1, 28, 28)),
])
def test_every_model_is_traceable_and_prunable(name, kwargs, shape):
    model = build_model(name, **kwargs)
    x = torch.randn((2,) + shape)
    graph = trace(model, x[:1])
    assert len(graph.prunable) >= 2
    assert not graph.producers[list(graph.producers)[-1]].prunable
    units = {n: [0] for n in graph.prunable}
    masked = copy.deepcopy(model)
    mask_units(masked, units, replacement="mean", data=[(x, None)])
    remove_units(model, units, replacement="mean", data=[(x, None)])
    model.eval(), masked.eval()
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() <= 1e-5


# ---------------------------------------------------------------------------
# checkpoints


def test_checkpoint_roundtrip_of_a_physically_shrunk_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("thesis_cnn", batchnorm=True)
    x = torch.randn(8, 1, 28, 28)
    remove_units(model, {"conv1": [0, 5], "conv2": [1, 2, 3], "fc1": list(range(0, 64, 3))},
                 replacement="mean", data=[(x, None)])
    mask_units(model, {"fc1": [0]}, example_input=x)  # a prune mask survives too
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"model": "thesis_cnn", "kwargs": {"batchnorm": True}},
                    epoch=3)
    ckpt = torch.load(path, weights_only=True)  # the safe loader accepts it
    assert ckpt["epoch"] == 3
    loaded = model_from_checkpoint(load_checkpoint(path))
    assert loaded.conv1.out_channels == 6 and loaded.conv2.in_channels == 6
    assert loaded.bn2.num_features == 13 and loaded.fc1.out_features == 64 - 22
    assert loaded.fc2.in_features == 42
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert n_params(loaded) == n_params(model)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    model = build_model("mlp", widths=[4, 3, 2])
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, {"model": "mlp", "kwargs": {"widths": [4, 3, 2]}})
    ckpt = load_checkpoint(path)
    ckpt["arch"]["kwargs"]["widths"] = [4, 3, 2, 2]  # an extra layer the weights lack
    with pytest.raises(CheckpointError, match="does not match"):
        model_from_checkpoint(ckpt)


# ---------------------------------------------------------------------------
# training loop


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    y = (x @ w).argmax(1)
    return TensorDataset(x[: n // 2], y[: n // 2]), TensorDataset(x[n // 2:], y[n // 2:])


def make_trainer(tmp_path=None, epochs=4, callbacks=(), **cfg):
    torch.manual_seed(0)
    train, val = toy_data()
    model = build_model("mlp", widths=[6, 16, 3], dropout=0.2)
    conf = TrainConfig(epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9,
                       **cfg)
    return Trainer(model, train, val_set=val, test_set=val, config=conf,
                   arch={"model": "mlp", "kwargs": {"widths": [6, 16, 3], "dropout": 0.2}},
                   callbacks=callbacks,
                   checkpoint=None if tmp_path is None else tmp_path / "ckpt.pt",
                   progress=False)


def strip_time(history):
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]


def test_training_is_deterministic():
    h1 = strip_time(make_trainer().fit())
    h2 = strip_time(make_trainer().fit())
    assert h1 == h2
    assert h1[-1]["val_acc"] > 0.6  # it learns the toy problem
    assert h1[0]["train_loss"] > h1[-1]["train_loss"]


class ShrinkAtEpoch(Callback):
    """Removes two units of fc1 after epoch 2 (physically, keeping the optimizer)."""

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == 2:
            remove_units(trainer.model, {"fc1": [0, 7]}, optimizer=trainer.optimizer)


def test_resume_continues_exactly(tmp_path):
    full = strip_time(make_trainer(callbacks=[ShrinkAtEpoch()]).fit())
    # a run killed after epoch 3: train 3 epochs with checkpoints, then a new
    # trainer (a new process would do the same) resumes from the file
    first = make_trainer(tmp_path, epochs=3, callbacks=[ShrinkAtEpoch()])
    first.fit()
    resumed = make_trainer(tmp_path, epochs=4, callbacks=[ShrinkAtEpoch()])
    assert resumed.epoch == 3 and resumed.model.fc1.out_features == 14
    assert strip_time(resumed.fit()) == full


def test_plateau_rule_divides_and_stops():
    class Flat(Callback):  # validation never improves after the first epoch
        def on_epoch_end(self, trainer, metrics):
            metrics["val_acc"] = 0.5

    t = make_trainer(epochs=50, callbacks=[Flat()], lr_rule="plateau", patience=2,
                     min_lr=1e-4)
    t.fit()
    lrs = [row["lr"] for row in t.history]
    # 0.1 for epochs 1-3 (best at 1, two bad epochs), then /10 every 2 epochs
    assert lrs[:3] == [0.1] * 3
    assert lrs[3] == pytest.approx(0.01) and lrs[5] == pytest.approx(1e-3)
    assert t.stopped_reason == "min_lr"
    assert len(t.history) == 9  # after epoch 9 the lr would be 1e-5 < 1e-4


def test_regularizer_callback_changes_the_loss():
    class L1(Callback):
        def loss(self, trainer, loss):
            return loss + 0.5 * trainer.model.fc1.weight.abs().sum()

    plain = make_trainer(epochs=2).fit()
    reg = make_trainer(epochs=2, callbacks=[L1()])
    reg.fit()
    assert reg.model.fc1.weight.abs().sum() < make_trainer(epochs=2).model.fc1.weight.abs().sum()
    assert plain[-1]["train_loss"] != reg.history[-1]["train_loss"]


# ---------------------------------------------------------------------------
# atomic writes


def test_atomic_write_survives_a_crash_mid_write(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path, "w") as fh:
            fh.write('{"v": 2, "partial')
            raise RuntimeError("killed")
    assert atomic.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_atomic_write_survives_a_killed_process(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"v": 1})
    code = textwrap.dedent(f"""
        import os
        from experiments.harness import atomic
        with atomic.atomic_open({str(path)!r}, "w") as fh:
            fh.write('{{"v": 2, "partial')
            fh.flush()
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    assert atomic.read_json(path) == {"v": 1}


def test_csv_and_json_values(tmp_path):
    atomic.write_csv(tmp_path / "t.csv", [{"a": 1, "b": torch.tensor(0.5)}, {"a": 2, "c": "x"}])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b,c", "1,0.5,", "2,,x"]
    atomic.write_json(tmp_path / "t.json", {"nan": float("nan"), "t": torch.tensor([1, 2])})
    assert atomic.read_json(tmp_path / "t.json") == {"nan": None, "t": [1, 2]}
