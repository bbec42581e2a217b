"""The criteria benchmark's protocol on its quick version: seed statistics against scipy, the
curves' points against the logged cells, refusal of other settings, the selection rule reading
only development seeds, resumption, equal widths and budgets, and the peers' Hessian input."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from experiments.bench.criteria import cli, rule
from experiments.bench.criteria.data import baseline, load_data
from experiments.bench.criteria.methods import make_run, run_method
from experiments.bench.criteria.setting import QUICK, network, parse_ours
from experiments.bench.criteria.store import SettingMismatch, Store
from experiments.bench.criteria.summary import seed_stats
from experiments.bench.criteria.trial import run_trial
from experiments.harness import atomic

pytestmark = pytest.mark.slow
tp = pytest.importorskip("torch_pruning")

NETS = "mlp,cnn"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The whole quick benchmark on the MLP and the CNN, once: its folder and its printed log."""
    root = tmp_path_factory.mktemp("criteria") / "run"
    lines: list[str] = []
    import builtins
    real_print = builtins.print

    def capture(*args, **kwargs):
        lines.append(" ".join(str(a) for a in args))
        real_print(*args, **kwargs)

    builtins.print = capture
    try:
        assert cli.main(["--quick", "--root", str(root), "--networks", NETS]) == 0
    finally:
        builtins.print = real_print
    return root, "\n".join(lines)


def _cells(root: Path, phase: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "cells" / phase).rglob("*.json"))]


def test_seed_statistics_equal_scipy():
    vals = [0.81, 0.84, 0.79, 0.86, 0.83]
    st = seed_stats(vals)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    assert st["mean"] == pytest.approx(np.mean(vals), abs=1e-15)
    assert st["ci"] == pytest.approx((lo, hi), abs=1e-12)
    assert seed_stats([0.5])["ci"] is None


def test_differences_equal_scipy_on_the_cells(quick):
    root, _ = quick
    results = json.loads((root / "report" / "results.json").read_text())
    cells = {(c["network"], c["method"], c["point"], c["seed"]): c for c in _cells(root, "heldout")}
    seeds = QUICK.heldout_seeds
    assert results["differences"]
    for d in results["differences"]:
        ours = np.array([cells[(d["network"], d["method"], d["point"], s)][d["stage"]]
                         for s in seeds])
        peers = {m for (n, m, p, s) in cells if n == d["network"] and p == d["point"]
                 and parse_ours(m) is None}
        means = {m: np.mean([cells[(d["network"], m, d["point"], s)][d["stage"]]
                             for s in seeds]) for m in peers}
        assert means[d["best_peer"]] == pytest.approx(max(means.values()), abs=1e-15)
        diff = ours - np.array([cells[(d["network"], d["best_peer"], d["point"], s)][d["stage"]]
                                for s in seeds])
        assert d["mean"] == pytest.approx(diff.mean(), abs=1e-12)
        if np.ptp(diff) > 0:
            lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(),
                                      scale=stats.sem(diff))
            assert d["ci"] == pytest.approx([lo, hi], abs=1e-12)
        else:
            assert d["ci"] == pytest.approx([diff.mean(), diff.mean()])
    # one finalist per network at least, two networks x two points x two stages each
    assert len(results["differences"]) >= 2 * 2 * 2
    recommended = [d for d in results["differences"] if d["role"].startswith("recommended")]
    assert results["verdict"]["comparisons"] == len(recommended) == 2 * 2 * 2


def test_curve_points_equal_the_logged_cells(quick):
    root, log = quick
    results = json.loads((root / "report" / "results.json").read_text())
    cells = _cells(root, "heldout")
    logged = {}
    for m in re.finditer(r"heldout (\w+) seed (\d+) (\S+) ([\d.]+)x: right after pruning "
                         r"([\d.]+), after fine-tuning ([\d.]+)", log):
        logged[(m[1], int(m[2]), m[3], float(m[4]))] = (float(m[5]), float(m[6]))
    assert len(logged) == len(cells)
    for c in cells:
        got = logged[(c["network"], c["seed"], c["method"], c["point"])]
        assert got == pytest.approx((c["acc_pruned"], c["acc_finetuned"]), abs=5e-5)
    for net in NETS.split(","):
        drawn = results["drawn"][net]
        assert drawn and Path(root / "report" / f"criteria_{net}.png").stat().st_size > 10_000
        for p in drawn:
            mine = [c for c in cells if c["network"] == net and c["method"] == p["method"]
                    and c["mac_ratio"] == pytest.approx(p["x"])]
            assert len(mine) == len(QUICK.heldout_seeds)
            assert p["mean"] == pytest.approx(np.mean([c[p["stage"]] for c in mine]),
                                              abs=1e-12)


def test_every_method_has_the_same_widths_and_budget(quick):
    root, _ = quick
    for phase in ("screen-oneshot", "screen-modes", "heldout"):
        by_point = {}
        for c in _cells(root, phase):
            key = (c["network"], c["seed"], c["point"])
            ref = by_point.setdefault(key, c)
            assert c["kept"] == ref["kept"] and c["params"] == ref["params"], (phase, c["method"])
            assert c["finetune_steps"] == network(QUICK, c["network"]).finetune_steps
    # the held-out seeds ran the finalists and the peers, nothing else of ours
    selection = json.loads((root / "selection.json").read_text())
    for net in NETS.split(","):
        ours = {c["method"] for c in _cells(root, "heldout")
                if c["network"] == net and parse_ours(c["method"]) is not None}
        assert ours == set(rule.finalists(selection, net))


def test_selection_reads_only_development_seeds(quick, tmp_path, monkeypatch):
    root, _ = quick
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    store = Store(copy, QUICK)
    before = rule.select(store, NETS.split(","))
    # held-out cells planted in the screen's folders, where the rule would see them if it looked
    worst = before["networks"]["mlp"]["ranking"][-1]["method"]
    for phase in ("screen-oneshot", "screen-modes"):
        for c in _cells(copy, phase):
            if c["seed"] == QUICK.dev_seeds[0]:
                fake = {**c, "acc_pruned": 1.0 if c["method"] == worst else 0.0,
                        "acc_finetuned": 1.0 if c["method"] == worst else 0.0}
                for seed in QUICK.heldout_seeds:
                    store.put(phase, seed, fake)
    read = []
    real = atomic.read_json

    def spy(path):
        read.append(Path(path))
        return real(path)

    monkeypatch.setattr("experiments.bench.criteria.store.atomic.read_json", spy)
    after = rule.select(store, NETS.split(","))
    assert after["networks"] == before["networks"] and after["overall"] == before["overall"]
    cell_reads = [p for p in read if "cells" in p.parts]
    assert cell_reads and all(p.parent.name in {f"seed{s}" for s in QUICK.dev_seeds}
                              for p in cell_reads)


def test_a_folder_of_another_setting_is_refused(quick, tmp_path):
    root, _ = quick
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    files = {p: p.read_bytes() for p in copy.rglob("*.json")}
    with pytest.raises(SettingMismatch, match=r"rounds: 2 in the folder, 3 now"):
        Store(copy, replace(QUICK, rounds=3))
    other = replace(QUICK, networks=(replace(QUICK.networks[0], finetune_steps=9),)
                    + QUICK.networks[1:])
    with pytest.raises(SettingMismatch,
                       match=r"networks\[mlp\]\.finetune_steps: 8 in the folder, 9 now"):
        Store(copy, other)
    assert {p: p.read_bytes() for p in copy.rglob("*.json")} == files
    # a cell computed with another setting is refused where it is read
    cell = next((copy / "cells" / "heldout").rglob("*.json"))
    row = json.loads(cell.read_text())
    cell.write_text(json.dumps({**row, "setting": "0123456789ab"}))
    with pytest.raises(SettingMismatch, match="computed with setting 0123456789ab"):
        Store(copy, QUICK).rows("heldout", [row["seed"]], row["network"])
    with pytest.raises(ValueError, match="seed 0 is not a seed of phase 'heldout'"):
        run_trial(str(copy), "mlp", 0, "heldout", "quick")


def test_a_killed_run_resumes_with_the_missing_cells_only(quick, tmp_path, capsys):
    root, _ = quick
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    cells = sorted((copy / "cells" / "heldout" / "mlp").rglob("*.json"))
    gone = cells[3]
    kept = {p: p.read_bytes() for p in cells if p != gone}
    old = json.loads(gone.read_text())
    gone.unlink()
    assert cli.main(["--quick", "--root", str(copy), "--networks", "mlp", "--step",
                     "heldout"]) == 0
    out = capsys.readouterr().out
    assert "heldout: 1 cells run" in out
    assert {p: p.read_bytes() for p in kept} == kept
    new = json.loads(gone.read_text())
    # the same batches, seeds and widths: the rerun cell is the same cell
    for k in ("kept", "params", "acc_pruned", "acc_finetuned"):
        assert new[k] == old[k]


@pytest.mark.parametrize("name", ["vit", "resnet20"])
def test_modes_on_heads_and_residual_groups_end_at_the_common_widths(name, tmp_path):
    """The modes that prune in rounds, by a UnitPruner per group inside training, on attention
    heads and residual streams: the widths, shapes and parameter count of the common model."""
    torch.set_num_threads(1)
    net = network(QUICK, name)
    base, _ = baseline(net, QUICK, 0, tmp_path, lambda m: None)
    run = make_run(net, QUICK, load_data(net, QUICK, 0, "screen-oneshot"), base, tp)
    from experiments.bench.peers.widths import common_model, widths_for_reduction
    import pruners
    kept, _ = widths_for_reduction(base, run.data.example, net.points[-1], "macs")
    common = common_model(base, run.data.example, kept)
    for method in ("mrs-mean-during", "taylor-drop-rounds_ft", "norm-mean-rounds"):
        row = run_method(run, method, net.points[-1])
        assert row["kept"] == kept
        assert row["params"] == pruners.count_params(common)
        assert row["macs"] == pruners.count_macs(common, run.data.example)
        assert 0.0 <= row["acc_pruned"] <= 1.0 and 0.0 <= row["acc_finetuned"] <= 1.0


def test_hessian_input_is_the_mean_squared_per_sample_gradient():
    from experiments.bench.peers.methods import tp_hessian_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    data = [(torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 2, 1])),
            (torch.randn(2, 5, dtype=torch.float64), torch.tensor([1, 1]))]
    ref = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in data:
        for i in range(len(y)):
            model.zero_grad()
            F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            for r, p in zip(ref, model.parameters()):
                r += p.grad ** 2
    imp = tp.importance.HessianImportance()
    tp_hessian_gradients(model, data, imp)
    for r, p in zip(ref, model.parameters()):
        assert torch.allclose(p.grad, r / 5, rtol=1e-12, atol=1e-15)


def test_mean_rank_of_a_hand_example():
    figures = {"a": {(2.0, "acc_pruned"): 0.5, (2.0, "acc_finetuned"): 0.9},
               "b": {(2.0, "acc_pruned"): 0.7, (2.0, "acc_finetuned"): 0.9},
               "c": {(2.0, "acc_pruned"): 0.6, (2.0, "acc_finetuned"): 0.8}}
    # pruned: b 1, c 2, a 3; fine-tuned: a and b tie for 1-2 (1.5 each), c 3
    assert rule.mean_ranks(figures) == {"a": 2.25, "b": 1.25, "c": 2.5}


def test_the_registered_experiment_runs_one_trial(tmp_path):
    from experiments.harness.registry import get_experiment
    from experiments.harness.run import run_experiment
    import experiments.catalog  # noqa: F401

    assert get_experiment("pruning-benchmark").space["network"][1] == ["mlp", "cnn", "resnet20",
                                                                       "vit"]
    root = tmp_path / "bench"
    skipped = run_experiment("pruning-benchmark", {"seed": 2, "root": str(root)}, quick=True,
                             out_dir=tmp_path / "t1", progress=False)
    assert "not a seed of phase screen-oneshot" in skipped["skipped"]
    done = run_experiment("pruning-benchmark", {"seed": 0, "root": str(root)}, quick=True,
                          out_dir=tmp_path / "t2", progress=False)
    assert done["ran"] == done["cells"] == 12 * len(network(QUICK, "mlp").screened())
    assert len(list((root / "cells" / "screen-oneshot" / "mlp" / "seed0").glob("*.json"))) \
        == done["cells"]


def test_width_learners_are_compared_at_their_own_widths(quick):
    root, _ = quick
    rows = _cells(root, "width")
    learners = {(r["seed"], r["method"]): r for r in rows if "+" not in r["method"]}
    full = network(QUICK, "mlp").kwargs["widths"][1]
    lasso = [r for (s, m), r in learners.items() if m == "group_lasso"]
    assert lasso and all(min(r["kept"].values()) < full for r in lasso)  # it removed units
    matched = [r for r in rows if "+" in r["method"]]
    assert matched
    for r in matched:
        ref = learners[(r["seed"], r["learner"])]
        assert r["kept"] == ref["kept"] and r["params"] == ref["params"]
        assert r["macs"] == ref["macs"]


def test_a_verdict_without_every_network_is_incomplete(quick):
    root, _ = quick
    verdict = json.loads((root / "report" / "results.json").read_text())["verdict"]
    assert verdict["missing_networks"] == ["resnet20", "vit"]
    assert not verdict["acc_finetuned"]["met"] and not verdict["acc_pruned"]["met"]


def test_batchnorm_recalibration_equals_the_statistics_of_the_images():
    from experiments.bench.criteria.diagnostic import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4), nn.BatchNorm1d(4)).double().eval()
    x = torch.randn(50, 1, 8, 8, dtype=torch.float64)
    assert recalibrate_batchnorm(model, x, batch=20) == 2
    with torch.no_grad():
        conv = model[0](x)
    # the cumulative average of the batch means (sizes 20, 20, 10), as BatchNorm keeps it
    means = [conv[i:i + 20].mean(dim=(0, 2, 3)) for i in (0, 20, 40)]
    assert torch.allclose(model[1].running_mean, sum(means) / 3, atol=1e-13)
    assert model[1].momentum == 0.1 and not model.training


def test_the_diagnostic_reproduces_the_cells_right_after_pruning(quick, tmp_path):
    root, _ = quick
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    assert cli.main(["--quick", "--root", str(copy), "--networks", "mlp,cnn", "--step",
                     "diagnostic"]) == 0
    diag = json.loads((copy / "diagnostic.json").read_text())
    assert list(diag) == ["cnn"]  # the MLP has no BatchNorm
    cells = {(c["method"], c["point"], c["seed"]): c for c in _cells(root, "heldout")
             if c["network"] == "cnn"}
    assert sorted(diag["cnn"]["seeds"]) == sorted(str(s) for s in QUICK.heldout_seeds)
    for key, part in diag["cnn"]["summary"].items():
        method, point = key.rsplit("@", 1)
        want = [cells[(method, float(point[:-1]), s)]["acc_pruned"] for s in QUICK.heldout_seeds]
        assert part["as_pruned"]["values"] == want
        assert part["recalibrated"]["n"] == len(QUICK.heldout_seeds)
