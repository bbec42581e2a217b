"""The command line end to end, on generated Fashion-MNIST files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.harness.registry import EXPERIMENTS, load_plugins


@pytest.fixture
def fmnist_dir(tmp_path, monkeypatch):
    d = tmp_path / "fmnist"
    write_idx_dir(d, n_train=600, n_test=100, seed=1, gz=True)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(d))
    return d


def test_list_names_every_public_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    load_plugins()
    public = sorted(n for n in EXPERIMENTS if not n.startswith("_"))
    assert [line.split()[0] for line in out] == public
    assert {"fmnist-mlp", "fmnist-thesis-cnn"} <= set(public)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fmnist-mlp", "fmnist-thesis-cnn"])
def test_quick_run_writes_every_output(name, fmnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", name, "--quick", "--out", str(out), "--set", "seed=3", "--set", "val_size=100"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"] == name and cfg["config"]["seed"] == 3
    assert cfg["config"]["quick"] is True
    res = json.loads((out / "results.json").read_text())
    hist = res["history"]
    assert len(hist) == 1 and hist[0]["epoch"] == 1
    assert 0.0 <= res["final"]["test_acc"] <= 1.0
    # the checkpoint reloads into a model with the recorded parameter count
    model = model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))
    assert sum(p.numel() for p in model.parameters()) == res["final"]["params"]
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run into the same folder resumes (nothing left to train) and agrees
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["history"] == hist


def test_bad_input_is_one_clear_error(fmnist_dir, tmp_path, capsys):
    assert main(["run", "no-such-experiment", "--out", str(tmp_path / "x")]) == 2
    assert "unknown experiment 'no-such-experiment'" in capsys.readouterr().err
    assert main(["run", "fmnist-mlp", "--quick", "--set", "nope=1",
                 "--out", str(tmp_path / "y")]) == 2
    assert "has no setting ['nope']" in capsys.readouterr().err
    assert main(["run", "fmnist-mlp", "--quick", "--set", "lr",
                 "--out", str(tmp_path / "z")]) == 2
    assert "--set expects key=value" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments", "list"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "fmnist-mlp" in proc.stdout
