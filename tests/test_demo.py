"""The main job, ``python -m experiments demo``, in its quick version.

On the installed Fashion-MNIST (Debian's ``dataset-fashion-mnist``) when it is
there, else on generated IDX files. The numbers it reports are checked against
the checkpoints it leaves, and a rerun (after it finished, and after it was
killed) resumes instead of retraining.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.harness.datasets import get_dataset
from experiments.harness.registry import EXPERIMENTS, load_plugins
from experiments.harness.training import Trainer
from pruners import count_macs, count_params

# the slow tier: every test here runs the demo
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    """``--data-dir`` (and settings) of the data the demo runs on."""
    if all(any(SYSTEM.glob(f"{base}*")) for base in
           ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte")):
        return ["--data-dir", str(SYSTEM)]
    d = tmp_path_factory.mktemp("fmnist")
    write_idx_dir(d, n_train=600, n_test=100, seed=1, gz=True)
    return ["--data-dir", str(d), "--set", "val_size=100"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_args):
    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--quick", "--out", str(out), *data_args]
    assert main(args) == 0
    return out, args, json.loads((out / "results.json").read_text())


def _without_times(history):
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]


def test_demo_is_a_registered_experiment():
    load_plugins()
    exp = EXPERIMENTS["demo"]
    assert exp.defaults["epochs"] == 10 and exp.defaults["lr"] == 0.01
    assert exp.defaults["batch_size"] == 32 and exp.defaults["optimizer"] == "sgd"
    assert exp.defaults["schedule"] == "thesis" and exp.defaults["scorer"] == "mrs"


def test_reported_numbers_match_the_saved_models(quick_run, capsys):
    out, _, res = quick_run
    before, after = res["before"], res["after"]
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["quick"] is True and cfg["epochs"] == 2
    data = get_dataset("fashion-mnist", data_dir=cfg["data_dir"], limit=cfg["limit"],
                       seed=cfg["data_seed"], val_size=cfg["val_size"])
    x, y = data.test.tensors
    models = {}
    for side, numbers in (("unpruned", before), ("pruned", after)):
        model = model_from_checkpoint(load_checkpoint(out / side / "checkpoint.pt")).eval()
        models[side] = model
        assert numbers["params"] == count_params(model)
        assert numbers["macs"] == count_macs(model, x[:1])
        with torch.no_grad():
            correct = int((model(x).argmax(dim=1) == y).sum())
        assert numbers["test_acc"] == correct / len(y)
    # the unpruned network is the thesis CNN; the pruned one is smaller, layer by layer
    assert before["params"] == 20522
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert before["widths"] == {"conv1": 8, "conv2": 16, "fc1": 64, "fc2": 10}
    # the quick schedule takes 60% of each layer's units: floor(0.6 n) gone
    assert after["widths"] == {"conv1": 4, "conv2": 7, "fc1": 26, "fc2": 10}
    assert after["params"] == 4019  # the thesis's Table 4.2 count
    last = res["rounds"][-1]
    assert {k: last[f"remaining/{k}"] for k in ("conv1", "conv2", "fc1")} == \
        {"conv1": 4, "conv2": 7, "fc1": 26}
    assert last["params_after"] == after["params"]
    # ratios and the table
    assert res["ratios"]["params"] == pytest.approx(after["params"] / before["params"])
    assert res["ratios"]["speedup"] == pytest.approx(before["infer_ms"] / after["infer_ms"])
    assert res["timing"]["batch"] == 256
    assert len(res["timing"]["ms"]["pruned"]) == len(res["timing"]["ms"]["unpruned"]) == \
        cfg["timing_repeats"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["metric"] for r in rows][:3] == ["parameters", "MACs per sample", "test accuracy"]
    assert int(rows[0]["before"]) == 20522 and int(rows[0]["after"]) == after["params"]
    assert "20,522" in res["table"] and f"{after['params']:,}" in res["table"]
    # both runs start from the same weights and data order: equal until the first round
    h_dense, h_pruned = res["history"]["unpruned"], res["history"]["pruned"]
    assert h_dense[0]["train_loss"] == h_pruned[0]["train_loss"]
    assert [r["params"] for r in h_pruned] == [r["params_after"] for r in res["rounds"]]
    # plots and per-run files
    for name in ("pruning.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG
    for side in ("unpruned", "pruned"):
        steps = list(csv.DictReader((out / side / "steps.csv").open()))
        assert len(steps) == h_dense[-1]["step"]
        assert (out / side / "history.csv").exists()
    assert (out / "pruned" / "rounds.csv").exists()


def test_rerun_resumes_instead_of_retraining(quick_run, capsys):
    out, args, res = quick_run
    stamps = {s: (out / s / "checkpoint.pt").stat().st_mtime_ns for s in ("unpruned", "pruned")}
    threads = torch.get_num_threads()
    assert main([*args, "--threads", str(threads + 1)]) == 0  # threads: free to change
    assert torch.get_num_threads() == threads  # restored
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["threads"] == threads + 1
    assert again["history"] == res["history"] and again["rounds"] == res["rounds"]
    assert again["after"]["params"] == res["after"]["params"]
    assert again["after"]["test_acc"] == res["after"]["test_acc"]
    assert {s: (out / s / "checkpoint.pt").stat().st_mtime_ns for s in stamps} == stamps
    assert "already trained" in capsys.readouterr().out
    # other settings into the same folder are refused, naming the difference
    assert main([*args, "--set", "lr=0.5"]) == 2
    assert "lr: 0.01 -> 0.5" in capsys.readouterr().err


class Killed(Exception):
    pass


def test_killed_run_continues_where_it_stopped(quick_run, tmp_path, monkeypatch, capsys):
    first, args, res = quick_run
    out = tmp_path / "killed"
    args = [a if a != args[args.index("--out") + 1] else str(out) for a in args]
    save = Trainer.save

    def save_then_die(self, path=None):
        save(self, path)
        if self.checkpoint.parent.name == "pruned" and self.epoch == 1:
            raise Killed

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Killed):
        main(args)
    assert not (out / "results.json").exists()
    monkeypatch.setattr(Trainer, "save", save)
    assert main(args) == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    for side in ("unpruned", "pruned"):
        assert _without_times(again["history"][side]) == _without_times(res["history"][side])
    assert again["rounds"] == res["rounds"]
    assert again["after"]["test_acc"] == res["after"]["test_acc"]
    for side in ("unpruned", "pruned"):
        assert (out / side / "steps.csv").read_text() == \
            (first / side / "steps.csv").read_text()
