"""The pruning reproductions of the thesis (experiments.studies.evci2018.pruning), on generated data.

Each experiment runs ``--quick`` (384 samples, the thesis's schedules over 5
short epochs) end to end through the CLI into a temporary folder, once per
module; the tests check the numbers in the files against the schedules, the
saved checkpoints and each other. Generated images carry no signal, so the
accuracies are near chance: what is tested is the bookkeeping, not learning.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.harness.training import Trainer
from pruners import count_params

# the slow tier: every test here runs the pruning reproductions
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("thesis-magnitude-pruning", "thesis-unit-pruning", "thesis-unit-pruning-zero")
#: the thesis CNN: units per prunable layer, and its Linear/Conv weights (biases excluded)
UNITS = {"conv1": 8, "conv2": 16, "fc1": 64}
WEIGHTS = 8 * 25 + 16 * 8 * 25 + 64 * 256 + 10 * 64  # 20,424 of 20,522 parameters
TABLE_2_2 = {2: 0.2, 3: 0.5, 4: 0.8, 5: 0.9}
TABLE_4_2 = {2: 0.1, 3: 0.2, 4: 0.4, 5: 0.6}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _params(conv1: int, conv2: int, fc1: int) -> int:
    """Parameters of the thesis CNN with these widths (4x4 maps after conv2, 10 classes)."""
    return (conv1 * 25 + conv1) + (conv2 * conv1 * 25 + conv2) + (conv2 * 16 * fc1 + fc1) \
        + (fc1 * 10 + 10)


def _run(out, name, *extra):
    return main(["run", name, "--quick", "--out", str(out), "--set", "val_size=100", *extra])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruning_data")
    write_idx_dir(root / "fmnist", n_train=600, n_test=100, seed=1, gz=True)
    return root / "fmnist"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Each experiment's ``--quick`` run on generated Fashion-MNIST files: name -> folder."""
    root = tmp_path_factory.mktemp("pruning_repro")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(data_dir))
        for name in NAMES:
            out[name] = root / name
            assert _run(out[name], name) == 0, name
    return out


def test_magnitude_pruning_reaches_the_schedule_and_cleanup_is_exact(runs):
    out = runs["thesis-magnitude-pruning"]
    for name in ("config.json", "results.json", "rounds.csv", "steps.csv", "fnz_sweep.csv",
                 "fig2_8_pruning.png", "fig2_11_fnz.png", "pruned/checkpoint.pt",
                 "unpruned/checkpoint.pt", "pruned/history.csv", "unpruned/history.csv"):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["momentum"],
            cfg["weight_decay"], cfg["seed"]) == ("sgd", 0.01, 32, 0.0, 0.0, 0)
    assert {int(k): v for k, v in cfg["schedule"].items()} == TABLE_2_2
    res = json.loads((out / "results.json").read_text())

    # every round reaches round(f * N) zero weights over all layers together (global scope)
    rounds = _rows(out / "rounds.csv")
    assert [int(r["epoch"]) for r in rounds] == list(TABLE_2_2)
    cum = 0
    for r in rounds:
        cum += int(r["pruned_total"])
        f = TABLE_2_2[int(r["epoch"])]
        assert float(r["target"]) == f
        assert cum == round(f * WEIGHTS)
        assert int(r["params_after"]) == 20522 - round(f * WEIGHTS)
        assert float(r["penalty"]) == pytest.approx(float(r["loss_after"])
                                                    - float(r["loss_before"]))
    # ... and the saved masks agree: exactly round(0.9 * 20,424) = 18,382 entries masked
    sd = load_checkpoint(out / "pruned/checkpoint.pt")["state_dict"]
    masks = {k: v for k, v in sd.items() if k.endswith("weight_mask")}
    assert sorted(masks) == ["conv1.weight_mask", "conv2.weight_mask", "fc1.weight_mask",
                             "fc2.weight_mask"]
    assert sum(m.numel() for m in masks.values()) == WEIGHTS
    masked = sum(int((m == 0).sum()) for m in masks.values())
    assert masked == round(0.9 * WEIGHTS) == 18382
    s = res["sparsity"]
    assert s["masked_weights"] == s["expected_masked"] == masked and s["weights"] == WEIGHTS
    assert s["zero_weights"] == masked and s["params_dense"] == 20522
    assert res["final"]["params"] == 20522 - masked

    # the unpruned run and the pruned one are the same run until the first round
    assert res["identical_before_first_round"] is True
    first = int(rounds[0]["train_step"])
    steps = _rows(out / "steps.csv")
    before = [r for r in steps if int(r["step"]) <= first]
    assert before and all(r["loss_pruned"] == r["loss_unpruned"] for r in before)
    assert any(r["loss_pruned"] != r["loss_unpruned"] for r in steps if int(r["step"]) > first)

    # accuracies are the last epochs of the two runs
    hist = {k: _rows(out / f"{k}/history.csv") for k in ("pruned", "unpruned")}
    assert res["test_acc_pruned"] == pytest.approx(float(hist["pruned"][-1]["test_acc"]))
    assert res["test_acc_unpruned"] == pytest.approx(float(hist["unpruned"][-1]["test_acc"]))
    assert res["test_acc_change_points"] == pytest.approx(
        100 * (res["test_acc_pruned"] - res["test_acc_unpruned"]))

    # the f_nz sweep (Fig. 2.11)
    sweep = _rows(out / "fnz_sweep.csv")
    assert [float(r["f_nz"]) for r in sweep] == cfg["fnz"] and cfg["fnz"][0] == 0.0
    zero = sweep[0]
    # f_nz = 0 removes units without changing the function: the pruned model's accuracy exactly
    assert float(zero["test_acc"]) == res["test_acc_pruned"]
    assert float(zero["max_logit_change"]) < 1e-4
    dense = [int(r["params_dense"]) for r in sweep]
    assert all(a >= b for a, b in zip(dense, dense[1:]))  # non-increasing in f_nz
    assert dense[0] <= 20522
    removed = [int(r["units_removed"]) for r in sweep]
    assert all(a <= b for a, b in zip(removed, removed[1:]))
    for r in sweep:
        w = {k: int(r[f"width/{k}"]) for k in UNITS}
        assert int(r["width/fc2"]) == 10
        assert int(r["params_dense"]) == _params(w["conv1"], w["conv2"], w["fc1"])
        assert sum(UNITS[k] - w[k] for k in UNITS) == int(r["units_removed"])
        assert all(w[k] >= 1 for k in UNITS)
        assert int(r["params_nonzero"]) <= int(r["params_dense"])
        assert float(r["test_acc_change_points_vs_pruned"]) == pytest.approx(
            100 * (float(r["test_acc"]) - res["test_acc_pruned"]))
    # non-zero parameters before cleanup: the live weights plus the (unpruned) biases
    assert res["sparsity"]["params_nonzero"] <= res["final"]["params"]
    assert int(zero["params_nonzero"]) <= res["sparsity"]["params_nonzero"]


def _expected_width(n: int, f: float) -> int:
    return n - math.floor(f * n + 1e-9)


def test_unit_pruning_follows_the_floor_rule_to_4019(runs):
    out = runs["thesis-unit-pruning"]
    for name in ("results.json", "rounds.csv", "steps.csv", "fig4_6_pruning.png",
                 "penalties.png", "pruned/checkpoint.pt", "unpruned/history.csv"):
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    rounds = _rows(out / "rounds.csv")
    assert [int(r["epoch"]) for r in rounds] == list(TABLE_4_2)
    for r in rounds:
        f = TABLE_4_2[int(r["epoch"])]
        assert float(r["target"]) == f
        widths = {k: int(r[f"remaining/{k}"]) for k in UNITS}
        assert widths == {k: _expected_width(n, f) for k, n in UNITS.items()}
        assert int(r["params_after"]) == _params(**widths)
        assert float(r["penalty"]) == pytest.approx(float(r["loss_after"])
                                                    - float(r["loss_before"]))
        # the alternatives were applied to the same pre-round state: same loss before
        assert float(r["penalty_if_mean"]) == float(r["penalty"])
        for alt in ("zero", "activation_mean"):
            assert float(r[f"penalty_if_{alt}"]) == pytest.approx(
                float(r[f"loss_after_if_{alt}"]) - float(r["loss_before"]))
    # the saved model: 4, 7, 26 units and the thesis's 4,019 parameters
    model = model_from_checkpoint(load_checkpoint(out / "pruned/checkpoint.pt"))
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) \
        == (4, 7, 26)
    assert res["params_final"] == count_params(model) == _params(4, 7, 26) == 4019
    assert res["final"]["params"] == 4019 and res["params_initial"] == 20522
    assert res["widths"] == res["expected_widths"] == {"conv1": 4, "conv2": 7, "fc1": 26}
    assert res["widths_follow_floor_rule"] is True and res["at_least_5x"] is True
    assert res["reduction"] == pytest.approx(20522 / 4019)
    assert res["identical_before_first_round"] is True
    vs = res["mean_vs_zero_at_same_state"]
    assert sum(vs.values()) == 4
    assert vs["mean_lower"] == sum(float(r["penalty"]) < float(r["penalty_if_zero"])
                                   for r in rounds)
    assert vs["equal"] == sum(float(r["penalty"]) == float(r["penalty_if_zero"]) for r in rounds)
    assert res["within_half_point"] == (res["test_acc_change_points"] >= -0.5)


def test_zero_replacement_penalties_are_the_reported_loss_jumps(runs):
    out = runs["thesis-unit-pruning-zero"]
    for name in ("results.json", "penalties.csv", "rounds.csv", "penalties.png",
                 "pruning_mean.png", "pruning_zero.png", "mean/checkpoint.pt",
                 "zero/checkpoint.pt", "unpruned/checkpoint.pt"):
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    table = _rows(out / "penalties.csv")
    rounds = _rows(out / "rounds.csv")
    by_run = {run: [r for r in rounds if r["run"] == run] for run in ("mean", "zero")}
    assert [int(r["epoch"]) for r in table] == list(TABLE_4_2)
    alts = ("mean", "zero", "activation_mean")
    for t, m, z in zip(table, by_run["mean"], by_run["zero"]):
        for run, r in (("mean", m), ("zero", z)):
            # the reported penalty is the round's loss jump on its scoring data
            assert float(r["penalty"]) == pytest.approx(float(r["loss_after"])
                                                        - float(r["loss_before"]))
            assert float(r[f"penalty_if_{run}"]) == float(r["penalty"])
            for alt in alts:
                assert float(t[f"{run}_run_penalty_if_{alt}"]) == float(r[f"penalty_if_{alt}"])
                if alt != run:
                    assert float(r[f"penalty_if_{alt}"]) == pytest.approx(
                        float(r[f"loss_after_if_{alt}"]) - float(r["loss_before"]))
        assert float(t["mean_run_penalty"]) == float(m["penalty"])
        assert float(t["zero_run_penalty"]) == float(z["penalty"])
        # the same number of units leave both runs: the same widths and parameter counts
        assert m["params_after"] == z["params_after"]
    # the two runs share their state at the first round: each one's counterfactual is the
    # other's actual round (two code paths: the pruner, and remove_units on a copy)
    t0 = table[0]
    assert float(t0["mean_run_loss_before"]) == float(t0["zero_run_loss_before"])
    for alt in alts:
        assert float(t0[f"mean_run_penalty_if_{alt}"]) == pytest.approx(
            float(t0[f"zero_run_penalty_if_{alt}"]), rel=1e-9, abs=1e-12)
    # the mean run is thesis-unit-pruning's pruned run (same settings, same numbers)
    b = _rows(runs["thesis-unit-pruning"] / "rounds.csv")
    for alt in alts:
        assert [float(r[f"penalty_if_{alt}"]) for r in b] == pytest.approx(
            [float(r[f"mean_run_penalty_if_{alt}"]) for r in table], rel=1e-9, abs=1e-12)
    v = res["verdict"]
    assert v["rounds"] == 4
    a = v["across_runs"]
    assert a["mean_lower"] == sum(float(r["mean_run_penalty"]) < float(r["zero_run_penalty"])
                                  for r in table)
    assert a["zero_lower"] == sum(float(r["mean_run_penalty"]) > float(r["zero_run_penalty"])
                                  for r in table)
    assert sum(a.values()) == 4
    # the first round is at one state for both runs: counted once
    states = [(s_["run"], s_["epoch"]) for s_ in v["states"]]
    assert ("mean", 2) in states and ("zero", 2) not in states
    assert v["distinct_states"] == len(states) <= 7
    for key, (x, y) in (("mean_vs_zero", ("mean", "zero")),
                        ("activation_mean_vs_zero", ("activation_mean", "zero")),
                        ("activation_mean_vs_mean", ("activation_mean", "mean"))):
        assert sum(v[key].values()) == v["distinct_states"]
        rows = [by_run[run][[int(r["epoch"]) for r in by_run[run]].index(ep)]
                for run, ep in states]
        assert v[key][f"{x}_lower"] == sum(float(r[f"penalty_if_{x}"]) < float(r[f"penalty_if_{y}"])
                                           for r in rows)
    assert sum(v["lowest_penalty"].values()) >= v["distinct_states"]
    assert v["claim_supported"] == (v["mean_vs_zero"]["zero_lower"] == 0
                                    and v["mean_vs_zero"]["mean_lower"] > 0)
    assert res["size_zero"]["params_final"] == res["size_mean"]["params_final"] == 4019
    # the zero run's pruner state in its checkpoint holds the same penalties
    state = load_checkpoint(out / "zero/checkpoint.pt")["callbacks"][0]
    hist = state["pruner"]["history"]
    assert [h["loss_after"] - h["loss_before"] for h in hist] == pytest.approx(
        [float(r["zero_run_penalty"]) for r in table])
    assert [c["penalty_if_mean"] for c in state["pruner"]["counterfactual"]] == [
        float(r["zero_run_penalty_if_mean"]) for r in table]


def test_activation_means_feed_consumers_their_mean_input():
    """``activation_mean`` holds a unit at the mean of what its consumer received."""
    from experiments.harness.models import build_model
    from experiments.studies.evci2018.pruning import activation_means
    from pruners import remove_units

    torch.manual_seed(0)
    net = build_model("thesis_cnn").double()
    x = torch.rand(64, 1, 28, 28, dtype=torch.float64)
    y = torch.zeros(32, dtype=torch.long)
    data = [(x[:32], y), (x[32:], y)]
    units = {"conv2": [1, 5], "fc1": [0, 3, 7]}
    means = activation_means(net, data, units)
    with torch.no_grad():
        h2 = net.pool2(net.act2(net.conv2(net.pool1(net.act1(net.conv1(x))))))
        h3 = net.act3(net.fc1(net.flatten(h2)))
    assert torch.allclose(means["conv2"], h2.mean((0, 2, 3))[[1, 5]])
    assert torch.allclose(means["fc1"], h3.mean(0)[[0, 3, 7]])
    # the reference: the model with those units' inputs to the consumers held at the means
    with torch.no_grad():
        h2c = h2.clone()
        h2c[:, [1, 5]] = means["conv2"].view(1, -1, 1, 1)
        h3c = net.act3(net.fc1(net.flatten(h2c)))
        h3c[:, [0, 3, 7]] = means["fc1"]
        ref = net.fc2(h3c)
        remove_units(net, units, replacement=means, example_input=x[:1])
        assert torch.allclose(net(x), ref, atol=1e-10)


def test_unit_pruning_resumes_after_a_kill(runs, data_dir, tmp_path, monkeypatch):
    """Killed after epoch 3 of the pruned run and rerun: the same numbers as uninterrupted."""
    monkeypatch.setenv("FASHION_MNIST_DIR", str(data_dir))
    out = tmp_path / "killed"
    save = Trainer.save

    def save_then_die(self, path=None):
        save(self, path)
        if self.epoch == 3 and self.checkpoint.parent.name == "pruned":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(out, "thesis-unit-pruning")
    assert not (out / "results.json").exists()
    assert load_checkpoint(out / "pruned/checkpoint.pt")["epoch"] == 3
    monkeypatch.setattr(Trainer, "save", save)
    assert _run(out, "thesis-unit-pruning") == 0
    assert "pruned: resuming after epoch 3 of 5" in (out / "log.txt").read_text()
    a = json.loads((out / "results.json").read_text())
    b = json.loads((runs["thesis-unit-pruning"] / "results.json").read_text())
    assert a["rounds"] == b["rounds"]  # penalties, counterfactual penalties, widths
    assert (a["test_acc_pruned"], a["params_final"]) == (b["test_acc_pruned"], b["params_final"])
    ka = load_checkpoint(out / "pruned/checkpoint.pt")["state_dict"]
    kb = load_checkpoint(runs["thesis-unit-pruning"] / "pruned/checkpoint.pt")["state_dict"]
    assert all(torch.equal(ka[k], kb[k]) for k in kb)
    # a rerun with other training settings into the same folder is refused
    assert _run(out, "thesis-unit-pruning", "--set", "lr=0.02") == 2


def test_mnist_is_selected_by_dataset_and_data_dir(tmp_path):
    write_idx_dir(tmp_path / "mnist", n_train=600, n_test=100, seed=2, gz=False)
    out = tmp_path / "run"
    assert _run(out, "thesis-unit-pruning", "--set", "dataset=mnist", "--set",
                f"data_dir={tmp_path / 'mnist'}", "--set", "epochs=2",
                "--set", 'schedule={"1": 0.5, "2": 0.6}') == 0
    res = json.loads((out / "results.json").read_text())
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["dataset"] == "mnist" and res["params_final"] == 4019
    assert res["data"]["dataset"] == "mnist"
    assert res["data"]["source"].startswith(str(tmp_path / "mnist"))
