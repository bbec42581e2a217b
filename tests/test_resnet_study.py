"""The ResNet-20 unit-pruning study (experiments.studies.resnet.pruning), run --quick.

On the installed Fashion-MNIST when it is there, else on generated IDX files: 384 images per
split, a ResNet-20 of widths 4, 8, 8, five short epochs with the rounds after epochs 1-4. Every
figure the study reports is checked against what its saved checkpoints give (parameters and
MACs counted, accuracies evaluated again); the MAC reductions against the targets, with the
next smaller fraction measured here independently; the per-group correlations against
``scipy.stats.spearmanr`` of the scores the study saved; and a rerun, or a rerun after a kill,
against the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from data_files import quick_run
from scipy.stats import spearmanr

import experiments.studies.resnet.pruning as rp
from experiments.harness.callbacks import CosineLR
from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.harness.models import build_model
from experiments.harness.run import load_data
from experiments.harness.training import Trainer, evaluate
from pruners import count_macs, count_params, remove_units, trace

# the slow tier: every test here runs the study
pytestmark = pytest.mark.slow

NAME = "resnet20-unit-pruning"
PNG = b"\x89PNG\r\n\x1a\n"
RUNS = ("unpruned", "macs2x", "macs5x")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quick_run(NAME, tmp_path_factory)


@pytest.fixture(scope="module")
def data(run):
    return load_data(run[1])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _args(out, cfg, *extra):
    sets = ["--set", f"data_dir={cfg['data_dir']}"]
    if cfg["val_size"] != 5000:
        sets += ["--set", f"val_size={cfg['val_size']}"]
    return ["run", NAME, "--quick", "--out", str(out), *sets, *extra]


def _model(out, sub):
    return model_from_checkpoint(load_checkpoint(out / sub / "checkpoint.pt")).eval()


def _groups(model, x):
    graph = trace(model, x)
    return {g: graph.groups[g].size for g in graph.prunable}


def test_the_quick_run_writes_every_output(run):
    out, cfg, res = run
    for name in ("config.json", "results.json", "summary.csv", "rounds.csv", "mrs_vs_mrp.csv",
                 "unit_scores.csv", "accuracy_macs.png", "mrs_vs_mrp.png", "log.txt"):
        assert (out / name).exists(), name
    for sub in RUNS:
        for name in ("checkpoint.pt", "history.csv", "settings.json"):
            assert (out / sub / name).exists(), f"{sub}/{name}"
        hist = _rows(out / sub / "history.csv")
        assert [int(r["epoch"]) for r in hist] == list(range(1, cfg["epochs"] + 1))
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    assert cfg["quick"] is True and cfg["widths"] == [4, 8, 8]
    assert res["figures"] == ["accuracy_macs.png", "mrs_vs_mrp.png"]
    assert [r["target"] for r in _rows(out / "summary.csv")] == ["2x", "5x"]
    assert set(res["runs"]) == {"macs2x", "macs5x"}


def test_every_reported_figure_is_what_the_saved_models_give(run, data):
    out, cfg, res = run
    x = data.train.tensors[0][:1]
    got = {}
    for sub in RUNS:
        m = _model(out, sub)
        test = evaluate(m, data.test, batch_size=cfg["eval_batch_size"])
        val = evaluate(m, data.val, batch_size=cfg["eval_batch_size"])
        got[sub] = {"params": count_params(m), "macs": count_macs(m, x), "test_acc": test["acc"],
                    "val_acc": val["acc"]}
        last = _rows(out / sub / "history.csv")[-1]
        assert int(last["params"]) == got[sub]["params"]
        assert int(last["macs"]) == got[sub]["macs"]
        assert float(last["test_acc"]) == got[sub]["test_acc"]
        assert float(last["val_acc"]) == got[sub]["val_acc"]
    dense = got["unpruned"]
    assert res["model"]["params"] == dense["params"]
    assert res["model"]["macs"] == dense["macs"]
    assert res["baseline"]["test_acc"] == dense["test_acc"]
    assert res["baseline"]["val_acc"] == dense["val_acc"]
    # the fresh network of these widths: the MACs every reduction is measured against
    fresh = build_model(cfg["model"], widths=cfg["widths"])
    assert count_macs(fresh, x) == dense["macs"] and count_params(fresh) == dense["params"]
    for row in _rows(out / "summary.csv"):
        sub = row["run"]
        assert int(row["params_before"]) == dense["params"]
        assert int(row["macs_before"]) == dense["macs"]
        assert int(row["params_after"]) == got[sub]["params"]
        assert int(row["macs_after"]) == got[sub]["macs"]
        assert float(row["macs_reduction"]) == dense["macs"] / got[sub]["macs"]
        assert float(row["params_reduction"]) == dense["params"] / got[sub]["params"]
        assert float(row["test_acc_before"]) == dense["test_acc"]
        assert float(row["test_acc_after"]) == got[sub]["test_acc"]
        assert float(row["val_acc_before"]) == dense["val_acc"]
        assert float(row["val_acc_after"]) == got[sub]["val_acc"]
        assert float(row["test_acc_change_points"]) == pytest.approx(
            100 * (got[sub]["test_acc"] - dense["test_acc"]), abs=1e-9)
        t = res["timing"]["models"]
        assert float(row["time_ms_before"]) == t["unpruned"]["median_ms"]
        assert float(row["time_ms_after"]) == t[sub]["median_ms"]
        assert float(row["speedup"]) == pytest.approx(t["unpruned"]["median_ms"]
                                                      / t[sub]["median_ms"])
        final = res["runs"][sub]["final"]
        assert (final["params"], final["macs"], final["test_acc"]) == (
            got[sub]["params"], got[sub]["macs"], got[sub]["test_acc"])
        rounds = [r for r in _rows(out / "rounds.csv") if r["run"] == sub]
        assert int(rounds[-1]["params_after"]) == got[sub]["params"]
        assert int(rounds[-1]["macs_after"]) == got[sub]["macs"]
    assert res["timing"]["batch"] == 256 and res["timing"]["repeats"] == cfg["time_repeats"]


def test_mac_reductions_equal_the_targets_within_the_rounding_of_widths(run, data):
    """Each run reaches at least its target; one width step less (the next smaller fraction at
    which a width changes, measured here on a fresh network) does not."""
    out, cfg, res = run
    x = data.train.tensors[0][:1]
    fresh = build_model(cfg["model"], widths=cfg["widths"])
    macs0 = count_macs(fresh, x)
    initial = _groups(fresh, x)
    assert len(initial) == 12                        # three stage streams, nine inner convs

    def macs_at(fraction):
        m = build_model(cfg["model"], widths=cfg["widths"])
        cut = {g: n - max(1, n - math.floor(fraction * n + 1e-9)) for g, n in initial.items()}
        remove_units(m, {g: list(range(k)) for g, k in cut.items() if k}, example_input=x)
        return count_macs(m, x)

    for target in cfg["targets"]:
        sub = rp.run_name(target)
        info = res["targets"][sub]
        f = info["fraction"]
        model = _model(out, sub)
        widths = _groups(model, x)
        assert widths == info["widths"] == res["runs"][sub]["widths"]
        assert widths == {g: max(1, n - math.floor(f * n + 1e-9)) for g, n in initial.items()}
        achieved = macs0 / count_macs(model, x)
        assert achieved >= target and achieved == info["reduction"]
        below = max(k / n for n in initial.values() for k in range(1, n) if k / n < f)
        assert below == info["previous_fraction"]
        assert macs0 / macs_at(below) < target
        assert macs_at(f) == count_macs(model, x)
        # the schedule: the thesis's shape over epochs 1-4, the last round at f exactly
        sched = res["runs"][sub]["schedule"]
        assert list(sched) == ["1", "2", "3", "4"] and sched["4"] == f
        assert [sched[k] / f for k in sched] == pytest.approx([1 / 6, 1 / 3, 2 / 3, 1])


def test_the_runs_start_alike_and_the_pruned_ones_keep_their_optimizer(run):
    out, _, res = run
    first = {sub: _rows(out / sub / "history.csv")[0] for sub in RUNS}
    assert len({(r["train_loss"], r["test_acc"]) for r in first.values()}) == 1
    for sub in ("macs2x", "macs5x"):
        assert res["runs"][sub]["identical_before_first_round"] is True
        ckpt = load_checkpoint(out / sub / "checkpoint.pt")
        names = [n for group in ckpt["param_names"] for n in group]
        state = ckpt["optimizer"]["state"]
        # one momentum buffer per parameter, shaped like the pruned parameter it belongs to
        assert len(state) == len(names)
        shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
        for i, name in enumerate(names):
            assert tuple(state[i]["momentum_buffer"].shape) == shapes[name], name
    # the cosine schedule: the last epoch's rate is the rate after the last step (0)
    last = _rows(out / "unpruned" / "history.csv")[-1]
    assert float(last["lr"]) == pytest.approx(0.0, abs=1e-12)


def test_mrs_vs_mrp_table_is_spearmanr_of_the_saved_scores(run):
    out, _, res = run
    scores = _rows(out / "unit_scores.csv")
    table = _rows(out / "mrs_vs_mrp.csv")
    assert [r["group"] for r in table] == [r["group"] for r in res["mrs_vs_mrp"]["table"]]
    for row in table:
        mine = [r for r in scores if r["group"] == row["group"]]
        assert [int(r["channel"]) for r in mine] == list(range(int(row["size"])))
        rho, p = spearmanr([float(r["mrs"]) for r in mine], [float(r["mrp"]) for r in mine])
        if math.isnan(rho):
            assert row["spearman"] == ""
        else:
            assert float(row["spearman"]) == float(rho)
            assert float(row["p_value"]) == float(p)
        assert int(row["members"]) == len(row["member_layers"].split())
        assert row["kind"] == ("residual stream" if int(row["members"]) > 1 else "chain")
    streams = [r for r in table if r["kind"] == "residual stream"]
    assert [int(r["members"]) for r in streams] == [4, 4, 4]  # stem + 3 blocks; 3 + shortcut


def test_a_rerun_resumes_instead_of_retraining(run):
    out, cfg, res = run
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert len(ckpts) == 3
    assert main(_args(out, cfg)) == 0
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts  # nothing was trained again
    log = (out / "log.txt").read_text()
    for sub in RUNS:
        assert f"{sub}: already trained ({cfg['epochs']} epochs" in log
    assert "MRS and MRP: found in unit_scores.json" in log
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == res["runs"] and again["mrs_vs_mrp"] == res["mrs_vs_mrp"]
    assert again["baseline"] == res["baseline"] and again["targets"] == res["targets"]


def test_a_killed_run_resumes_where_it_stopped(run, tmp_path, monkeypatch):
    """Killed after epoch 3 of the 5x run and rerun: the same network as uninterrupted."""
    out, cfg, res = run
    killed = tmp_path / "killed"
    save = Trainer.save

    def save_then_die(self, path=None):
        save(self, path)
        if self.epoch == 3 and self.checkpoint.parent.name == "macs5x":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(_args(killed, cfg))
    assert not (killed / "results.json").exists()
    assert load_checkpoint(killed / "macs5x/checkpoint.pt")["epoch"] == 3
    monkeypatch.setattr(Trainer, "save", save)
    assert main(_args(killed, cfg)) == 0
    assert f"macs5x: resuming after epoch 3 of {cfg['epochs']}" in (killed / "log.txt").read_text()
    again = json.loads((killed / "results.json").read_text())
    assert again["runs"]["macs5x"]["rounds"] == res["runs"]["macs5x"]["rounds"]
    ka = load_checkpoint(killed / "macs5x/checkpoint.pt")["state_dict"]
    kb = load_checkpoint(out / "macs5x/checkpoint.pt")["state_dict"]
    assert ka.keys() == kb.keys() and all(torch.equal(ka[k], kb[k]) for k in kb)
    # a rerun with other training settings into the same folder is refused
    assert main(_args(killed, cfg, "--set", "lr=0.02")) == 2


def test_the_schedule_and_widths_helpers():
    assert rp.schedule_for(0.5625, [1, 2, 3, 4], rp.THESIS_SHAPE) == {
        1: 0.09375, 2: 0.1875, 3: 0.375, 4: 0.5625}
    assert rp.widths_after({"a": 16, "b": 64}, 0.3125) == {"a": 11, "b": 44}
    assert rp.widths_after({"a": 4}, 0.99) == {"a": 1}
    lr = CosineLR(0.05, 100)
    assert (lr.at(0), lr.at(50), lr.at(100), lr.at(150)) == pytest.approx((0.05, 0.025, 0, 0))
    with pytest.raises(ValueError, match="cannot be reached"):
        rp.fraction_for(build_model("resnet20", widths=[2, 2, 2]), torch.zeros(1, 1, 28, 28),
                        100.0)


@pytest.mark.parametrize("bad,match", [
    ({"targets": [1]}, "targets"), ({"targets": [2, 2.0]}, "targets"),
    ({"round_epochs": [1, 2, 3, 9]}, "past the last epoch"),
    ({"shape": [0.1, 0.2]}, "shape"), ({"lr_schedule": "step"}, "lr_schedule"),
    ({"model": "resnet18"}, "model"), ({"widths": [4, 8]}, "widths")])
def test_bad_settings_are_refused_before_anything_is_written(bad, match, tmp_path):
    from experiments.harness.registry import get_experiment, resolve_config

    exp = get_experiment(NAME)
    cfg = resolve_config(exp, bad, quick=True)
    with pytest.raises(ValueError, match=match):
        exp.validate(cfg)
