"""The saliency reproductions of the thesis (experiments.studies.evci2018.saliency), on generated data.

Each experiment runs ``--quick`` end to end through the CLI into a temporary
folder (once per module); the tests then check the files and that the numbers
in them agree with each other, and that the probes do not change training.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from data_files import write_idx_dir
from torch.utils.data import TensorDataset

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint
from experiments.harness.models import build_model
from experiments.harness.training import Trainer
from experiments.studies.evci2018.saliency import (NEGATIVE_SCORERS, PARAM_SCORER_NAMES,
                                                   PARAM_SIGNED, UNIT_SCORER_NAMES, ParameterProbe,
                                                   UnitProbe)
from saliency.loss_change import LossChange
from saliency.taylor import Hessian, Taylor1, Taylor2

# the slow tier: every test here runs the saliency reproductions
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
PARAM_FRACTIONS = [0.01, 0.05, 0.8]
FC1_FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each experiment's ``--quick`` run on generated Fashion-MNIST files: name -> folder."""
    root = tmp_path_factory.mktemp("saliency_repro")
    write_idx_dir(root / "fmnist", n_train=600, n_test=100, seed=1, gz=True)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
        for name in ("thesis-param-saliency", "thesis-unit-saliency", "scorer-runtimes"):
            out[name] = root / name
            args = ["run", name, "--quick", "--out", str(out[name]), "--set", "val_size=100"]
            assert main(args) == 0, name
    return out


def test_param_saliency_writes_consistent_results(runs):
    out = runs["thesis-param-saliency"]
    for name in ("config.json", "results.json", "history.csv", "curves.png", "probes.csv",
                 "penalty.csv", "fig2_1_negative_fraction.png",
                 *(f"fig2_penalty_f{f:g}.png" for f in PARAM_FRACTIONS)):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["lr"] == 0.01 and cfg["batch_size"] == 32 and cfg["optimizer"] == "sgd"
    res = json.loads((out / "results.json").read_text())
    probes, penalty = _rows(out / "probes.csv"), _rows(out / "penalty.csv")
    # probes at step 0 and every probe_every steps of the 12 quick steps
    steps = [int(r["step"]) for r in probes]
    assert steps == list(range(0, cfg["max_batches"] + 1, cfg["probe_every"]))
    assert res["n_probes"] == len(probes) and res["probe_samples"] == cfg["probe_size"]
    assert len(penalty) == len(probes) * len(PARAM_SCORER_NAMES) * len(PARAM_FRACTIONS)
    assert {r["scorer"] for r in penalty} == set(PARAM_SCORER_NAMES)
    for r in penalty:  # conv1 has 200 weights; floor(f * 200)
        assert int(r["n_pruned"]) == math.floor(float(r["fraction"]) * 200 + 1e-9)
        assert float(r["delta"]) == pytest.approx(float(r["loss_after"]) - float(r["loss_before"]))
    loss_at = {int(r["step"]): float(r["loss"]) for r in probes}
    assert all(float(r["loss_before"]) == pytest.approx(loss_at[int(r["step"])]) for r in penalty)
    s = res["summary"]
    for name in NEGATIVE_SCORERS:
        fr = [float(r[f"neg_frac_{name}"]) for r in probes]
        assert all(0.0 <= v <= 1.0 for v in fr)
        assert all(abs(v * 200 - round(v * 200)) < 1e-9 for v in fr)  # a count out of 200
        assert s["negative_fraction_mean"][name] == pytest.approx(np.mean(fr))
    for f in PARAM_FRACTIONS:
        per = s["penalty"][f"{f:g}"]
        assert per["n_pruned"] == math.floor(f * 200 + 1e-9)
        deltas = {n: [float(r["delta"]) for r in penalty
                      if r["scorer"] == n and float(r["fraction"]) == f]
                  for n in PARAM_SCORER_NAMES}
        assert all(len(v) == len(probes) for v in deltas.values())
        for n, v in deltas.items():
            assert per["mean_delta"][n] == pytest.approx(np.mean(v))
        assert per["lowest_mean"] == min(per["mean_delta"], key=per["mean_delta"].get)
        assert per["lowest_mean"] in per["tied_lowest_mean"]
        for key in ("lowest_share", "lowest_share_abs_and_magnitude"):
            assert all(0.0 <= v <= 1.0 for v in per[key].values())
            assert 1.0 <= sum(per[key].values()) <= len(per[key])
        for n in PARAM_SIGNED:
            assert per["abs_beats_signed"][n] == (per["mean_delta"][f"{n}_abs"]
                                                 < per["mean_delta"][n])
        assert s["abs_beats_signed_all"][f"{f:g}"] == all(per["abs_beats_signed"].values())
        stds = {k: v for k, v in per["std_delta_second_half"].items() if k != "random"}
        assert per["most_stable"] == min(stds, key=stds.get)
        assert s["magnitude_most_stable"][f"{f:g}"] == (per["most_stable"] == "magnitude")
    assert res["final"]["params"] == 20522


def test_unit_saliency_writes_consistent_results(runs):
    out = runs["thesis-unit-saliency"]
    for name in ("results.json", "probes.csv", "penalty.csv", "fig4_1_conv1.png",
                 "fig4_3_fc1.png", "history.csv"):
        assert (out / name).exists(), name
    assert (out / "fig4_3_fc1.png").read_bytes()[:8] == PNG
    res = json.loads((out / "results.json").read_text())
    probes, penalty = _rows(out / "probes.csv"), _rows(out / "penalty.csv")
    n_fractions = 1 + len(FC1_FRACTIONS)
    assert len(penalty) == len(probes) * len(UNIT_SCORER_NAMES) * n_fractions
    units = {"conv1": 8, "fc1": 64}
    for r in penalty:
        assert int(r["n_units"]) == units[r["layer"]]
        assert int(r["n_pruned"]) == math.floor(float(r["fraction"]) * units[r["layer"]] + 1e-9)
    s = res["summary"]
    assert set(s) == {"conv1", "fc1"} and list(s["fc1"]) == [f"{f:g}" for f in FC1_FRACTIONS]
    assert s["conv1"]["0.5"]["n_pruned"] == 4
    assert [s["fc1"][f"{f:g}"]["n_pruned"] for f in FC1_FRACTIONS] == [6, 12, 19, 25, 32]
    for layer, per_f in s.items():
        for f, per in per_f.items():
            means = per["mean_delta"]
            # competition ranks: 1 + the number of scorers with a (strictly) lower mean
            assert set(per["rank"]) == set(UNIT_SCORER_NAMES)
            assert set(per["rank_thesis_set"]) == {"mrp", "mrs", "norm_l1", "norm_l2"}
            for key, names in (("rank", UNIT_SCORER_NAMES), ("rank_thesis_set",
                                                            per["rank_thesis_set"])):
                for n in names:
                    lower = sum(1 for o in names if means[o] < means[n]
                                and not math.isclose(means[o], means[n], rel_tol=1e-9,
                                                     abs_tol=1e-15))
                    assert per[key][n] == 1 + lower, (layer, f, key, n)
            shares = per["lowest_share_thesis_set"]
            assert all(0.0 <= v <= 1.0 for v in shares.values()) and sum(shares.values()) >= 1.0
            for n in UNIT_SCORER_NAMES:
                v = [float(r["delta"]) for r in penalty if r["layer"] == layer
                     and r["scorer"] == n and f"{float(r['fraction']):g}" == f]
                assert len(v) == len(probes) and means[n] == pytest.approx(np.mean(v))
            assert per["rank"][per["lowest_mean"]] == 1
            r = per["rank_thesis_set"]
            assert per["mrp_then_mrs"] == (r["mrp"] == 1 and r["mrs"] == 2
                                           and r["norm_l1"] > 2 and r["norm_l2"] > 2)


def test_runtimes_cover_every_registered_scorer(runs):
    from saliency import SCORERS

    out = runs["scorer-runtimes"]
    res = json.loads((out / "results.json").read_text())
    rows = _rows(out / "runtimes.csv")
    names = [r["scorer"] for r in rows]
    assert names[:len(SCORERS)] == list(SCORERS)
    assert set(names) == set(SCORERS) | {"magnitude", "taylor1", "taylor2", "hessian",
                                         "loss_change", "random", "random_unit"}
    assert res["not_in_registry"] == [n for n in names if n not in SCORERS]
    assert (out / "runtimes.png").read_bytes()[:8] == PNG
    assert res["fwd_bwd_s"] > 0 and res["samples"] == 64
    for r in rows:
        assert r["error"] == "", r
        t = res["runtimes"][r["scorer"]]
        assert t["seconds"] > 0 and t["calls_timed"] >= 1
        assert t["x_fwd_bwd"] == pytest.approx(t["seconds"] / res["fwd_bwd_s"])


def test_resumed_run_keeps_the_probes(runs, tmp_path, monkeypatch):
    """The probe rows live in the checkpoint: a rerun into the same folder (nothing left
    to train) writes the same probes."""
    out = runs["thesis-param-saliency"]
    before = (out / "penalty.csv").read_text()
    state = load_checkpoint(out / "checkpoint.pt")["callbacks"][0]
    assert len(state["penalty"]) == len(_rows(out / "penalty.csv"))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(out.parent / "fmnist"))
    assert main(["run", "thesis-param-saliency", "--quick", "--out", str(out),
                 "--set", "val_size=100"]) == 0
    assert (out / "penalty.csv").read_text() == before


# --------------------------------------------------------------------------- no side effects

def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(96, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])


def _train(callbacks, batchnorm):
    train, val = _data()
    torch.manual_seed(0)
    model = build_model("thesis_cnn", batchnorm=batchnorm)
    trainer = Trainer(model, train, val_set=val, callbacks=callbacks,
                      config={"epochs": 2, "batch_size": 16, "lr": 0.05, "seed": 0})
    trainer.fit()
    return model.state_dict(), trainer.history, torch.get_rng_state()


@pytest.mark.parametrize("batchnorm", [False, True], ids=["thesis_cnn", "with_batchnorm"])
@pytest.mark.parametrize("kind", ["parameter", "unit"])
def test_probes_leave_training_unchanged(kind, batchnorm):
    """Training with probes gives bit-identical weights (and BatchNorm statistics) to
    training without: scorers restore the model and use private random generators (the
    global RNG, which dropout would draw from, ends in the same state)."""
    if kind == "parameter":
        probe = ParameterProbe("conv1.weight", [0.05, 0.5], every=3, size=16)
    else:
        probe = UnitProbe({"conv1": [0.5], "fc1": [0.25]}, every=3, size=16)
    rng = torch.get_rng_state()
    plain, hist_plain, rng_plain = _train([], batchnorm)
    torch.set_rng_state(rng)
    probed, hist_probed, rng_probed = _train([probe], batchnorm)
    assert len(probe.probes) == 3 and probe.penalty  # steps 0, 3, 6 of 8
    assert plain.keys() == probed.keys()
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
    assert [r["train_loss"] for r in hist_plain] == [r["train_loss"] for r in hist_probed]
    assert torch.equal(rng_plain, rng_probed)


def test_abs_variants_equal_the_absolute_scorers():
    """The probe takes |signed scores| once; that is what ``absolute=True`` returns."""
    torch.manual_seed(0)
    model = build_model("thesis_cnn")
    _, val = _data(1)
    probe = ParameterProbe("conv1.weight", [0.5], every=1, size=32)
    probe.data = [val.tensors]
    scores = probe.scores(model, step=0)
    assert list(scores) == list(PARAM_SCORER_NAMES)
    p = ["conv1.weight"]
    for name, cls in (("loss_change", lambda: LossChange(absolute=True, params=p)),
                      ("taylor1", lambda: Taylor1(absolute=True, params=p)),
                      ("taylor2", lambda: Taylor2(lam=1.0, absolute=True, params=p)),
                      ("hessian", lambda: Hessian(absolute=True, params=p))):
        want = cls().score(model, probe.data)["conv1.weight"]
        assert torch.equal(scores[f"{name}_abs"]["conv1.weight"], want), name
    # fresh random scores at every probe, reproducible
    assert not torch.equal(probe.scores(model, 1)["random"]["conv1.weight"],
                           scores["random"]["conv1.weight"])
    assert torch.equal(probe.scores(model, 0)["random"]["conv1.weight"],
                       scores["random"]["conv1.weight"])
