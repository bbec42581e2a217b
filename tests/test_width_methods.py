"""The shared comparison of width-learning methods (experiments.studies.width_methods.comparison), run --quick.

On the installed Fashion-MNIST when it is there, else on generated IDX files.
Every number of results.json, table.csv and points.csv is checked against
the files the run leaves: each final network is rebuilt as a fresh MLP at
the recorded widths (strict loading), its parameters and MACs are counted by
hand from the widths, its accuracies evaluated again; the trained
checkpoints are read to check what each method removed (exactly-zero groups,
the schedule's unit counts, live switch gates); the selection rule is
applied by hand.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from data_files import quick_run

import experiments.studies.width_methods.comparison as wm
from experiments.cli import main
from experiments.harness.models import build_model
from experiments.harness.run import load_data
from experiments.harness.training import evaluate
from pruners import schedules

# the slow tier: every test here runs the width-methods comparison
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quick_run("width-methods", tmp_path_factory)


def _all_points(res):
    yield res["baseline"]
    for e in res["methods"].values():
        yield from e["points"]


def _params(widths):
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))


def _macs(widths):
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def test_every_point_is_what_its_saved_network_gives(run):
    out, cfg, res = run
    data = load_data(cfg)
    points = list(_all_points(res))
    assert len(points) == 1 + sum(len(cfg[k]) for k, _ in wm.METHODS.values())
    for p in points:
        state = torch.load(out / p["sub"] / "final.pt", weights_only=True)["state_dict"]
        w = p["widths"]
        assert w[0] == 784 and w[-1] == 10
        net = build_model("mlp", widths=w)
        net.load_state_dict(state)  # strict: the recorded widths are the tensors' shapes
        assert p["params"] == _params(w) == sum(t.numel() for t in state.values())
        assert p["macs"] == _macs(w)
        val = evaluate(net, data.val, batch_size=256)["acc"]
        test = evaluate(net, data.test, batch_size=256)["acc"]
        assert abs(val - p["val_acc"]) < 1e-12 and abs(test - p["test_acc"]) < 1e-12
        # the final plain network computes what the trained one did (removals, folds and
        # merges are exact; tri-state gates are straight-through, so already binary)
        assert abs(p["test_acc"] - p["trained_test_acc"]) < 1e-12
        assert abs(p["val_acc"] - p["trained_val_acc"]) < 1e-12
        history = list(csv.DictReader(open(out / p["sub"] / "history.csv", newline="")))
        assert len(history) == cfg["epochs"]
        assert p["reduction"] == pytest.approx(1 - p["params"] / res["baseline"]["params"])
        assert p["test_change_points"] == pytest.approx(
            100 * (p["test_acc"] - res["baseline"]["test_acc"]))
    base = res["baseline"]
    assert base["widths"] == cfg["widths"] and base["params"] == _params(cfg["widths"])


def _checkpoint(out, p):
    return torch.load(out / p["sub"] / "checkpoint.pt", weights_only=True)["state_dict"]


def test_what_each_method_removed(run):
    out, cfg, res = run
    hidden = cfg["widths"][1:-1]
    for p in res["methods"]["mrs"]["points"]:  # layer scope: floor(f * n_l) units gone
        assert p["widths"][1:-1] == [n - math.floor(p["value"] * n) for n in hidden]
    for p in res["methods"]["group-sparsity"]["points"]:
        full = _checkpoint(out, p)  # trained, not shrunk: the zero groups are still there
        assert p["strengths"]["fc1"] == pytest.approx(cfg["gs_first_ratio"] * p["value"])
        assert p["strengths"]["fc2"] == p["value"]
        for i, layer in enumerate(("fc1", "fc2"), start=1):
            rows = torch.cat([full[f"{layer}.weight"], full[f"{layer}.bias"][:, None]], 1)
            zero = int((rows == 0).all(1).sum())
            assert p["widths"][i] == max(1, hidden[i - 1] - zero)
    for p in res["methods"]["shrinknets"]["points"]:
        live = _checkpoint(out, p)  # collected during training: switches of live units
        for i, layer in enumerate(("fc1", "fc2"), start=1):
            gate = live[f"switches.{layer}.weight"].clamp(min=0)
            assert gate.numel() == p["widths"][i]
            assert bool((gate > 0).all()) or gate.numel() == 1  # Threshold(0): no dead gate
    for p in res["methods"]["tristate"]["points"]:
        linears = len(p["widths"]) - 1
        assert linears == len(cfg["widths"]) - 1 - len(p["merged"])
    sizes = [p["params"] for e in res["methods"].values() for p in e["points"]]
    assert min(sizes) < res["baseline"]["params"]


def test_matched_accuracy_selection_and_table(run):
    out, cfg, res = run
    tol = res["select_within"]
    assert tol == 0.005
    base = res["baseline"]
    table = list(csv.DictReader(open(out / "table.csv", newline="")))
    assert [r["method"] for r in table] == ["baseline", *wm.METHODS]
    assert int(table[0]["params"]) == base["params"]
    for row, (method, e) in zip(table[1:], res["methods"].items()):
        pts = e["points"]
        ok = [p for p in pts if p["val_acc"] >= base["val_acc"] - tol - 1e-9]
        want = (min(ok, key=lambda p: (p["params"], -p["val_acc"])) if ok
                else max(pts, key=lambda p: p["val_acc"]))
        assert e["selected"] == want
        assert row["setting"] == want["setting"] and int(row["params"]) == want["params"]
        assert int(row["macs"]) == want["macs"]
        assert float(row["test_acc"]) == pytest.approx(want["test_acc"])
        assert float(row["test_change_points"]) == pytest.approx(
            100 * (want["test_acc"] - base["test_acc"]))
        assert row["widths"] == "-".join(map(str, want["widths"]))
        assert (row["within_tolerance"] == "True") == bool(ok)
    rows = list(csv.DictReader(open(out / "points.csv", newline="")))
    assert len(rows) == 1 + sum(len(e["points"]) for e in res["methods"].values())
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mrs_schedule_is_the_thesis_shape():
    assert wm.mrs_schedule(0.6, [2, 3, 4, 5]).points == schedules.THESIS_UNITS.points
    s = wm.mrs_schedule(0.9, [2, 3, 4, 5])
    assert [s(t) for t in range(7)] == pytest.approx([0, 0, 0.15, 0.3, 0.6, 0.9, 0.9])
    with pytest.raises(ValueError):
        wm.mrs_schedule(0.9, [2, 3])


def test_as_mlp_refuses_what_is_not_a_relu_chain():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="Tanh"):
        wm.as_mlp(net, torch.randn(5, 4))
    torch.manual_seed(0)
    ok = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(),
                             torch.nn.Identity(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    plain = wm.as_mlp(ok, x)
    assert torch.equal(plain(x), ok(x))


def test_a_rerun_resumes_instead_of_retraining(run):
    out, cfg, res = run
    ckpts = sorted(out.glob("*/checkpoint.pt"))
    assert len(ckpts) == 1 + sum(len(cfg[k]) for k, _ in wm.METHODS.values())
    stamps = {p: p.stat().st_mtime_ns for p in ckpts}
    extra = ["--set", f"val_size={cfg['val_size']}"] if cfg["val_size"] != 5000 else []
    assert main(["run", "width-methods", "--quick", "--out", str(out),
                 "--set", f"data_dir={cfg['data_dir']}", *extra]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"] == res["methods"] and again["table"] == res["table"]
    assert {p: p.stat().st_mtime_ns for p in ckpts} == stamps  # nothing was trained again
