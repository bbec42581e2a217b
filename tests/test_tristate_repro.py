"""The tri-state ReLU reproduction (experiments.studies.tristate.repro), run --quick.

On the installed Fashion-MNIST when it is there, else on generated IDX files.
The numbers in results.json are checked against the files the run leaves:
the finalized networks are rebuilt from their saved state dicts and
evaluated again, their sizes counted from the tensors, the widths and merges
read from the shapes, and the selection rule applied by hand.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from data_files import quick_run

import experiments.studies.tristate.repro as tr
from experiments.cli import main
from experiments.harness.run import load_data
from experiments.harness.training import evaluate

# the slow tier: every test here runs the tri-state reproduction
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quick_run("tristate-relu", tmp_path_factory)


def _rebuild(state: dict, widths: list[int], depth: dict) -> nn.Sequential:
    """The finalized MLP from its state dict: flatten, then per layer ``fc<i>`` a Linear
    where weights are saved (else the identity it was merged into) and ``act<i>`` a ReLU
    or, for a layer whose depth gate selected the identity, nn.Identity."""
    from collections import OrderedDict

    mods: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i in range(1, len(widths)):
        w = state.get(f"fc{i}.weight")
        mods[f"fc{i}"] = nn.Identity() if w is None else nn.Linear(w.shape[1], w.shape[0])
        if i < len(widths) - 1:
            mods[f"act{i}"] = nn.Identity() if depth.get(f"fc{i}") == 1 else nn.ReLU()
    net = nn.Sequential(mods)
    net.load_state_dict(state)
    return net


def test_every_point_is_what_its_saved_network_gives(run):
    out, cfg, res = run
    data = load_data(cfg)
    nets = res["networks"]
    assert sorted(nets) == sorted(tr._QUICK["networks"])
    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    assert len(rows) == len(nets) * len(tr._QUICK["lam_m"])
    for net, entry in nets.items():
        assert len(entry["points"]) == len(tr._QUICK["lam_m"])
        for p in entry["points"]:
            sub = out / net / f"tristate-lam_m={p['lam_m']:g}-ste"
            state = torch.load(sub / "finalized_state.pt", weights_only=True)
            fin = json.loads((sub / "finalized.json").read_text())
            plain = _rebuild(state, entry["widths"], fin["depth"])
            assert sum(t.numel() for t in state.values()) == p["params"] == fin["params_after"]
            test = evaluate(plain, data.test, batch_size=256)["acc"]
            val = evaluate(plain, data.val, batch_size=256)["acc"]
            assert abs(test - p["test_acc"]) < 1e-12 and abs(val - p["val_acc"]) < 1e-12
            # straight-through gates: the gated network computed what the finalized one does
            assert abs(p["gated_test_acc"] - p["test_acc"]) < 1e-12
            linears = [m for m in plain if isinstance(m, nn.Linear)]
            merged = {name for pair in p["merged"] for name in pair}
            for layer, width in fin["widths"].items():
                if layer in merged:  # merged layers take their consumers' output sizes
                    assert (f"{layer}.weight" in state) == any(a == layer for a, _ in p["merged"])
                    continue
                rows = state[f"{layer}.weight"]
                if width == 0:  # all units off: one zeroed unit is kept
                    assert rows.shape[0] == 1 and not rows.any()
                    assert not state[f"{layer}.bias"].any()
                else:
                    assert rows.shape[0] == width
            assert p["linear_layers"] == len(linears)
            assert len(linears) == len(entry["widths"]) - 1 - len(p["merged"])
            assert p["reduction"] == pytest.approx(entry["baseline"]["params"] / p["params"])
            assert p["acc_change_points"] == pytest.approx(
                100 * (p["test_acc"] - entry["baseline"]["test_acc"]))
        # the selection: smallest network within select_within of the baseline's validation
        tol = res["select_within"]
        ok = [p for p in entry["points"] if p["val_acc"] >= entry["baseline"]["val_acc"] - tol]
        want = (min(ok, key=lambda p: (p["params"], -p["val_acc"])) if ok
                else max(entry["points"], key=lambda p: p["val_acc"]))
        assert entry["selected"] == want
    big = [p for e in nets.values() for p in e["points"] if p["lam_m"] == max(tr._QUICK["lam_m"])]
    assert any(p["params"] < nets[p["network"]]["baseline"]["params"] for p in big)
    assert (out / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_resumes_instead_of_retraining(run):
    out, cfg, res = run
    ckpts = sorted(out.glob("*/*/checkpoint.pt"))
    assert len(ckpts) == len(res["networks"]) * (1 + len(tr._QUICK["lam_m"]))
    stamps = {p: p.stat().st_mtime_ns for p in ckpts}
    extra = ["--set", f"val_size={cfg['val_size']}"] if cfg["val_size"] != 5000 else []
    assert main(["run", "tristate-relu", "--quick", "--out", str(out),
                 "--set", f"data_dir={cfg['data_dir']}", *extra]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["networks"] == res["networks"]
    assert {p: p.stat().st_mtime_ns for p in ckpts} == stamps  # nothing was trained again
