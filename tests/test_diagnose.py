"""``python -m experiments diagnose``: end to end on a checkpoint the test trains, JSON equal
to the library's report, exact removal of planted constant units, and one clear error with
its exit code for every bad checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from experiments.harness.models import build_model
from experiments.harness.training import TrainConfig, Trainer
from experiments.tools.diagnose import EXIT_CODES, load_data
from saliency import find_dead_units

# the slow tier: every test here diagnoses a checkpoint trained for it
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
DATA = ["--data", "fashion-mnist", "--val-size", "100", "--samples", "80", "--batch-size", "40"]


class Evil:
    """Unpickling this runs a shell command (what weights_only loading must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A thesis CNN trained a few steps on generated Fashion-MNIST, with planted dead units."""
    root = tmp_path_factory.mktemp("diagnose")
    write_idx_dir(root / "fmnist", n_train=300, n_test=40, seed=2, gz=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
        from experiments.harness.datasets import get_dataset
        splits = get_dataset("fashion-mnist", val_size=100)
    torch.manual_seed(0)
    model = build_model("thesis_cnn")
    Trainer(model, splits.train, config=TrainConfig(epochs=1, batch_size=32, lr=0.05)).fit()
    with torch.no_grad():
        model.conv1.weight[2] = 0.0          # constant filter: outputs 0.3 everywhere
        model.conv1.bias[2] = 0.3
        model.fc1.weight[:, 5 * 16:6 * 16] = 0.0   # conv2 unit 5: no outgoing weight
        model.fc1.bias[9] = -1e3             # fc1 unit 9: never active
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model, {"model": "thesis_cnn", "kwargs": {}}, epoch=1)
    plain = root / "plain.pt"
    torch.save(model.state_dict(), plain)
    return root, ckpt, plain


@pytest.fixture
def env(trained, monkeypatch):
    root = trained[0]
    monkeypatch.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
    return trained


def _run(args, capsys):
    code = main(["diagnose", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_end_to_end_json_matches_the_library_and_removal_is_exact(env, tmp_path, capsys):
    root, ckpt, _ = env
    out, smaller = tmp_path / "diag", tmp_path / "smaller.pt"
    code, stdout, err = _run([str(ckpt), *DATA, "--out", str(out), "--remove-dead",
                              str(smaller)], capsys)
    assert code == 0, err
    for name in ("report.json", "units.csv", "layers.csv", "statistics.png", "criteria.png"):
        assert (out / name).exists(), name
    assert (out / "statistics.png").read_bytes()[:8] == PNG
    assert (out / "criteria.png").read_bytes()[:8] == PNG
    rep = json.loads((out / "report.json").read_text())
    # the library function on the same model and data gives the same report
    model = model_from_checkpoint(load_checkpoint(ckpt))
    data, _ = load_data("fashion-mnist", val_size=100, samples=80, batch_size=40)
    lib = find_dead_units(model, data).to_dict()
    assert rep["criteria"] == lib["criteria"] and rep["thresholds"] == lib["thresholds"]
    assert len(rep["units"]) == len(lib["units"]) == 8 + 16 + 64
    for a, b in zip(rep["units"], lib["units"]):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-15), (a["layer"], a["unit"], k)
            else:
                assert a[k] == b[k], (a["layer"], a["unit"], k)
    for a, b in zip(rep["layers"], lib["layers"]):
        assert {k: a[k] for k in b} == b
    assert rep["samples"] == 80 and rep["loss"] == pytest.approx(lib["loss"], rel=1e-12)
    # the planted units are found and removed, exactly
    flagged = {(r["layer"], r["unit"]) for r in rep["units"]
               if {"constant", "never_active", "zero_outgoing"} & set(r["dead_by"])}
    assert {("conv1", 2), ("conv2", 5), ("fc1", 9)} <= flagged
    removal = rep["removal"]
    assert removal["removed"] == len(flagged)
    assert removal["max_output_deviation"] <= 1e-6
    assert abs(removal["loss_change"]) <= 1e-6
    small = model_from_checkpoint(load_checkpoint(smaller))
    assert sum(p.numel() for p in small.parameters()) == removal["params_after"]
    assert small.conv1.out_channels == 8 - sum(1 for l, _ in flagged if l == "conv1")
    model.eval(), small.eval()
    with torch.no_grad():
        for x, _ in data:
            assert float((small(x) - model(x)).abs().max()) <= 1e-6
    # savings per layer: removing a layer's units alone (the producer's rows, its consumer's columns)
    conv1 = next(r for r in rep["layers"] if r["layer"] == "conv1")
    n1 = conv1["removed"]
    assert conv1["params_saved"] == n1 * (25 + 1) + n1 * 16 * 25
    assert "max output deviation" in stdout and "total" in stdout
    with open(out / "units.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 88 and rows[2]["dead_by"].split(";")[:1] == ["low_mrs"]


def test_plain_state_dict_with_a_factory(env, tmp_path, capsys):
    root, ckpt, plain = env
    out, smaller = tmp_path / "d", tmp_path / "s.pt"
    code, _, err = _run([str(plain), *DATA, "--out", str(out), "--model",
                         "experiments.harness.models:thesis_cnn", "--remove-dead", str(smaller),
                         "--no-plots"], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["checkpoint_kind"] == "state_dict"
    assert not (out / "statistics.png").exists() and "statistics.png" not in rep["files"]
    harness = json.loads  # the same numbers as for the harness checkpoint of the same model
    code, _, _ = _run([str(ckpt), *DATA, "--out", str(tmp_path / "h"), "--no-plots"], capsys)
    assert code == 0
    other = harness((tmp_path / "h" / "report.json").read_text())
    assert rep["units"] == other["units"]
    # the smaller file is a plain state dict again, reloadable with --resize
    state = torch.load(smaller, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    code, _, err = _run([str(smaller), *DATA, "--out", str(tmp_path / "again"), "--model",
                         "thesis_cnn", "--resize", "--no-plots"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["removal"]["removed"] == 0  # nothing exactly removable is left


def _bad(env, tmp_path, capsys, args, kind, needle):
    code, _, err = _run(args + DATA + ["--out", str(tmp_path / "x")], capsys)
    assert code == EXIT_CODES[kind], err
    assert err.startswith("error: ") and err.endswith("\n"), err
    assert "Traceback" not in err
    assert needle in err, err
    assert not (tmp_path / "x" / "report.json").exists()
    return err


def test_every_bad_checkpoint_is_one_clear_error(env, tmp_path, capsys):
    root, ckpt, plain = env
    _bad(env, tmp_path, capsys, [str(tmp_path / "nope.pt")], "missing", "does not exist")
    data = ckpt.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    _bad(env, tmp_path, capsys, [str(trunc)], "unreadable", "truncated, corrupt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _bad(env, tmp_path, capsys, [str(empty)], "unreadable", "(empty file)")
    notckpt = tmp_path / "list.pt"
    torch.save([1, 2, 3], notckpt)
    _bad(env, tmp_path, capsys, [str(notckpt)], "unreadable", "holds a list, not a state dict")
    # a plain state dict needs a factory, and the factory must match it
    _bad(env, tmp_path, capsys, [str(plain)], "usage", "pass --model (a zoo name, "
         "package.module:Class or path/to/file.py:Class)")
    _bad(env, tmp_path, capsys, [str(plain), "--model", "thesis_cnn", "--model-kwargs",
                                 '{"hidden": 32}'], "mismatch",
         "fc1.weight: (64, 256) saved, (32, 256) built")
    _bad(env, tmp_path, capsys, [str(plain), "--model", "experiments.harness.models:mlp",
                                 "--model-kwargs", '{"widths": [784, 10]}'], "mismatch",
         "unexpected ['conv1.bias', 'conv1.weight'")
    _bad(env, tmp_path, capsys, [str(plain), "--model", "no_such_module:f"], "usage",
         "cannot import module 'no_such_module'")
    err = _bad(env, tmp_path, capsys, [str(plain), "--model", "thesis_cnn", "--model-kwargs",
                                       '{"nope": 1}'], "usage",
               "--model 'thesis_cnn' does not accept --model-kwargs {'nope': 1}")
    assert "unexpected keyword argument 'nope'" in err
    # a harness checkpoint whose architecture does not match its weights
    ck = load_checkpoint(ckpt)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, model_from_checkpoint(ck), {"model": "mlp",
                                                       "kwargs": {"widths": [784, 10]}})
    _bad(env, tmp_path, capsys, [str(wrong)], "mismatch", "the model has no module")
    # a model that does not take the data set's inputs
    cifar = tmp_path / "cifar.pt"
    save_checkpoint(cifar, build_model("thesis_cifar_cnn"), {"model": "thesis_cifar_cnn",
                                                              "kwargs": {}})
    _bad(env, tmp_path, capsys, [str(cifar)], "mismatch", "does not run on fashion-mnist")
    # bad options
    _bad(env, tmp_path, capsys, [str(ckpt), "--remove-by", "nope"], "usage",
         "unknown criteria ['nope']")
    _bad(env, tmp_path, capsys, [str(ckpt), "--threshold", "nope=1"], "usage",
         "unknown thresholds")
    _bad(env, tmp_path, capsys, [str(ckpt), "--remove-dead", str(ckpt)], "usage",
         "must not overwrite")
    assert load_checkpoint(ckpt)["format"]  # untouched


def test_a_pickle_that_would_run_code_is_refused(env, tmp_path, capsys):
    marker = tmp_path / "hacked"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Evil(marker)}, evil)
    err = _bad(env, tmp_path, capsys, [str(evil)], "refused", "posix.system")
    assert "would run code" in err and "torch.save(model.state_dict()" in err
    assert not marker.exists()
    # the same in a fresh process: exit code 5, one line, nothing ran
    proc = subprocess.run([sys.executable, "-m", "experiments", "diagnose", str(evil), *DATA],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FASHION_MNIST_DIR": str(env[0] / "fmnist")})
    assert proc.returncode == EXIT_CODES["refused"]
    assert proc.stderr.startswith("error: refused") and "Traceback" not in proc.stderr
    assert not marker.exists()


def _plant_constant_stream_channel(model, graph, group: str, channel: int) -> None:
    """Every member's filter of ``channel`` zero, and the BatchNorms of the group's region
    output 0 there: the summed stream's channel is 0 everywhere."""
    import torch.nn as nn

    with torch.no_grad():
        for m in graph.groups[group].members:
            model.get_submodule(m).weight[channel] = 0.0
        for node in graph.groups[group].nodes:
            if node.kind == "op" and node.op.kind == "module":
                bn = model.get_submodule(node.op.target)
                if isinstance(bn, nn.BatchNorm2d):
                    pos = (node.labels == channel).nonzero().reshape(-1)
                    bn.running_mean[pos] = 0.0
                    bn.bias[pos] = 0.0


def test_a_residual_network_is_diagnosed_per_group(tmp_path, monkeypatch, capsys):
    """A zoo ResNet-20 trained a few steps with a planted constant channel of its first
    residual stream: reported per group with its members, and removed from every member
    exactly; MobileNetV2 and DenseNet through the Python route."""
    from pruners import diagnose
    from saliency import trace

    write_idx_dir(tmp_path / "fmnist", n_train=200, n_test=20, seed=3, gz=True)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "fmnist"))
    from experiments.harness.datasets import get_dataset
    splits = get_dataset("fashion-mnist", val_size=100)
    torch.manual_seed(0)
    model = build_model("resnet20", widths=[8, 16, 32])
    Trainer(model, splits.train, config=TrainConfig(epochs=1, batch_size=50, lr=0.05)).fit()
    model.eval()
    graph = trace(model, splits.train.tensors[0][:1])
    group = graph.groups["conv1"]
    assert group.joined and len(group.members) == 4
    _plant_constant_stream_channel(model, graph, "conv1", 3)
    ckpt, out, smaller = tmp_path / "resnet.pt", tmp_path / "diag", tmp_path / "small.pt"
    save_checkpoint(ckpt, model, {"model": "resnet20", "kwargs": {"widths": [8, 16, 32]}},
                    epoch=1)
    code, stdout, err = _run([str(ckpt), *DATA, "--out", str(out), "--remove-dead",
                              str(smaller), "--no-plots"], capsys)
    assert code == 0, err
    assert f"group conv1: 4 layers whose channels are removed together ({', '.join(group.members)})" \
        in stdout
    rep = json.loads((out / "report.json").read_text())
    layers = {r["layer"]: r for r in rep["layers"]}
    assert list(layers) == graph.prunable
    assert layers["conv1"]["members"] == group.members and layers["conv1"]["units"] == 8
    flagged = {r["unit"] for r in rep["units"] if r["layer"] == "conv1"
               and {"constant", "never_active"} & set(r["dead_by"])}
    assert 3 in flagged
    # the same report from the library
    data, _ = load_data("fashion-mnist", val_size=100, samples=80, batch_size=40)
    lib = find_dead_units(model, data).to_dict()
    assert [(u["layer"], u["unit"], u["dead_by"]) for u in rep["units"]] == \
        [(u["layer"], u["unit"], u["dead_by"]) for u in lib["units"]]
    # removed from every member, exactly
    removal = rep["removal"]
    assert 3 in removal["units"]["conv1"]
    assert removal["max_output_deviation"] <= 1e-5
    small = model_from_checkpoint(load_checkpoint(smaller)).eval()
    lost = len(removal["units"]["conv1"])
    for m in group.members:
        assert small.get_submodule(m).out_channels == 8 - lost, m
    with torch.no_grad():
        for x, _ in data:
            assert float((small(x) - model(x)).abs().max()) <= 1e-5

    for name, gname in (("mobilenet_v2", "blocks.1.project_conv"), ("densenet", "conv1")):
        torch.manual_seed(1)
        net = build_model(name).eval()
        g = trace(net, data[0][0][:1])
        _plant_constant_stream_channel(net, g, gname, 2)
        result = diagnose(net, data)
        report = result.report
        assert report.layers == g.prunable
        assert report.members == {n: g.groups[n].members for n in g.prunable}
        assert bool(report.flags["constant"][gname][2]), name
        assert 2 in result.removal["units"][gname]
        assert result.removal["max_output_deviation"] <= 1e-5, name
        assert result.per_layer[gname]["members"] == g.groups[gname].members


# --------------------------------------------------------------------------- your own files

USER_NET = '''
import torch.nn as nn


class Net(nn.Module):
    """A user's own CNN (the thesis CNN's layers under other names)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 5), nn.Conv2d(8, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.f1, self.f2 = nn.Linear(256, hidden), nn.Linear(hidden, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.act(self.c1(x)))
        x = self.pool(self.act(self.c2(x)))
        return self.f2(self.act(self.f1(x.flatten(1))))


def samples():
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(30, 1, 28, 28, generator=g),
                                          torch.randint(0, 10, (30,), generator=g))
'''


@pytest.fixture
def user_files(env, tmp_path):
    """A user's folder with net.py, a training-style checkpoint of Net in the common
    {"model": ..., "optimizer": ..., "epoch": ...} layout, and a folder to run from."""
    root, ckpt, _ = env
    user = tmp_path / "user"
    user.mkdir()
    (user / "net.py").write_text(USER_NET)
    spec = __import__("importlib.util").util.spec_from_file_location("user_net", user / "net.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.Net()
    src = model_from_checkpoint(load_checkpoint(ckpt))
    names = {"conv1": "c1", "conv2": "c2", "fc1": "f1", "fc2": "f2"}
    net.load_state_dict({f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v
                         for k, v in src.state_dict().items()})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
               user / "train_state.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return user, elsewhere, net


def test_a_training_checkpoint_of_your_own_model_from_another_folder(user_files, tmp_path,
                                                                     capsys, monkeypatch):
    user, elsewhere, net = user_files
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "d"
    code, stdout, err = _run([str(user / "train_state.pt"), *DATA, "--model",
                              "../user/net.py:Net", "--out", str(out), "--no-plots"], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["checkpoint_layout"] == "dict['model']" and rep["checkpoint_kind"] == "state_dict"
    # the planted units, found under the user's layer names
    flagged = {(r["layer"], r["unit"]) for r in rep["units"]
               if {"constant", "never_active", "zero_outgoing"} & set(r["dead_by"])}
    assert {("c1", 2), ("c2", 5), ("f1", 9)} <= flagged
    # the module route: not importable from here, and the message says where it looked
    code, _, err = _run([str(user / "train_state.pt"), *DATA, "--model", "net:Net", "--out",
                         str(tmp_path / "x"), "--no-plots"], capsys)
    assert code == EXIT_CODES["usage"]
    assert "cannot import module 'net'" in err and "Searched:" in err and "PYTHONPATH" in err
    assert "path/to/file.py:Net" in err
    # with the folder on the path it works
    monkeypatch.syspath_prepend(str(user))
    code, _, err = _run([str(user / "train_state.pt"), *DATA, "--model", "net:Net", "--out",
                         str(tmp_path / "y"), "--no-plots"], capsys)
    assert code == 0, err


def test_wrapped_keys_a_named_key_and_resizing_only_when_asked(user_files, tmp_path, capsys):
    user, _, net = user_files
    model = f"{user / 'net.py'}:Net"
    wrapped = tmp_path / "ddp.pt"
    torch.save({"ema": {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}},
               wrapped)
    code, stdout, err = _run([str(wrapped), *DATA, "--model", model, "--key", "ema", "--out",
                              str(tmp_path / "d"), "--no-plots"], capsys)
    assert code == 0, err
    assert "removed the key prefixes ['module.', '_orig_mod.']" in stdout
    # a smaller checkpoint: refused without --resize (every differing tensor listed), resized
    from pruners import remove_units
    remove_units(net, {"f1": [0, 1, 2]}, example_input=torch.zeros(1, 1, 28, 28))
    small = tmp_path / "small.pt"
    torch.save(net.state_dict(), small)
    code, _, err = _run([str(small), *DATA, "--model", model, "--out", str(tmp_path / "e"),
                         "--no-plots"], capsys)
    assert code == EXIT_CODES["mismatch"]
    assert "3 tensor(s) differ in shape" in err and "f1.weight: (61, 256) saved, (64, 256) " \
        "built" in err and "f2.weight: (10, 61) saved, (10, 64) built" in err
    assert "pass --resize" in err
    code, stdout, err = _run([str(small), *DATA, "--model", model, "--resize", "--out",
                              str(tmp_path / "f"), "--no-plots"], capsys)
    assert code == 0, err
    assert "--resize: resized 2 layer(s) to the saved shapes: f1, f2" in stdout


def test_a_whole_pickled_model_is_refused_with_the_steps_and_loads_when_allowed(
        user_files, tmp_path, capsys, monkeypatch):
    user, _, net = user_files
    monkeypatch.syspath_prepend(str(user))
    import importlib
    mod = importlib.import_module("net")
    whole = mod.Net()
    whole.load_state_dict(net.state_dict())
    torch.save(whole, tmp_path / "whole.pt")
    err = _bad(None, tmp_path, capsys, [str(tmp_path / "whole.pt")], "refused",
               "it contains a reference to net.Net")
    assert "torch.save(model.state_dict(), 'model_state.pt')" in err and "--allow-pickle" in err
    code, _, err = _run([str(tmp_path / "whole.pt"), *DATA, "--allow-pickle", "--out",
                         str(tmp_path / "d"), "--no-plots"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    assert rep["checkpoint_kind"] == "pickled model"


def test_data_from_a_tensor_file_and_from_a_function(user_files, tmp_path, capsys):
    user, _, net = user_files
    model = f"{user / 'net.py'}:Net"
    ckpt = str(user / "train_state.pt")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    import numpy as np
    np.savez(tmp_path / "data.npz", x=x.double().numpy(), y=y.numpy())   # float64, as numpy
    torch.save({"inputs": x}, tmp_path / "inputs.pt")       # no targets
    code, stdout, err = _run([ckpt, "--data", str(tmp_path / "data.npz"), "--model", model,
                              "--out", str(tmp_path / "a"), "--no-plots"], capsys)
    assert code == 0, err
    assert "note: the data's inputs are float64, the model's parameters float32" in stdout
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    assert a["samples"] == 40 and "low_mrs" in a["criteria"] and a["skipped"] == []
    # the library on the same model and data gives the same report
    from saliency import find_dead_units as fdu
    lib = fdu(net, [(x[:20], y[:20]), (x[20:], y[20:])]).to_dict()
    assert [(u["layer"], u["unit"], u["dead_by"]) for u in a["units"]] == \
        [(u["layer"], u["unit"], u["dead_by"]) for u in lib["units"]]
    code, stdout, err = _run([ckpt, "--data", str(tmp_path / "inputs.pt"), "--model", model,
                              "--out", str(tmp_path / "b"), "--no-plots", "--remove-by",
                              "constant,never_active,zero_outgoing,dormant@0"], capsys)
    assert code == 0, err
    assert "nan" not in stdout                                 # no loss without targets
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert b["skipped"] == ["low_mrs", "frozen"] and "low_mrs" not in b["criteria"]
    assert "not computed (the data has no targets): low_mrs, frozen" in stdout
    code, _, err = _run([ckpt, "--data", str(tmp_path / "inputs.pt"), "--model", model,
                         "--exact-mrp", "--out", str(tmp_path / "c"), "--no-plots"], capsys)
    assert code == EXIT_CODES["usage"] and "exact MRP (low_mrp) needs targets" in err
    code, _, err = _run([ckpt, "--data", f"{user / 'net.py'}:samples", "--model", model,
                         "--out", str(tmp_path / "d"), "--no-plots"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "report.json").read_text())["samples"] == 30


def test_a_missing_data_set_prints_the_whole_message(env, tmp_path, capsys, monkeypatch):
    _, ckpt, _ = env
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nowhere"))
    code, _, err = _run([str(ckpt), "--data", "mnist", "--data-dir", str(tmp_path / "none"),
                         "--out", str(tmp_path / "x")], capsys)
    assert code == EXIT_CODES["usage"]
    assert "MNIST not found. Looked in:" in err
    assert err.count("\n") > 2 and str(tmp_path / "none") in err   # the places searched


def test_progress_on_a_terminal_and_not_when_piped(env, tmp_path):
    import pty
    _, ckpt, _ = env
    args = [sys.executable, "-m", "experiments", "diagnose", str(ckpt), *DATA, "--no-plots",
            "--exact-mrp"]
    environ = {**os.environ, "FASHION_MNIST_DIR": str(env[0] / "fmnist")}
    environ.pop("SALIENCY_PROGRESS", None)
    piped = subprocess.run(args + ["--out", str(tmp_path / "p")], capture_output=True,
                           text=True, timeout=300, env=environ)
    assert piped.returncode == 0, piped.stderr
    assert "it/s" not in piped.stderr and "%|" not in piped.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the pseudo-terminal, 24 x 100
        import fcntl
        import struct
        import termios
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.chdir(str(tmp_path))
        os.execve(sys.executable, args + ["--out", str(tmp_path / "t")], environ)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "exact MRP" in text and "%|" in text                 # a tqdm bar with a count
