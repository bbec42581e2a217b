"""The removal-aggressiveness reproduction (experiments.studies.shrinknets.gamma), run --quick.

One ``--quick`` run through the CLI (2 rows x (baseline + 3 gammas) x 2 seeds,
a few epochs on 400 synthetic samples), then a resumed run into the same
folder. The checks are on the numbers in the files: costs recomputed from
the per-step log and the per-epoch histories, gamma = 0 against the masked
baseline, each removal against the strategy's rule, the summary against
numpy, and the resume against the first run.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import experiments.studies.shrinknets.gamma as sg
from experiments.cli import main
from pruners import count_macs, remove_units
from pruners.shrinknets import input_neurons

# the slow tier: every test here runs the gamma reproduction
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = sg._QUICK
SETTINGS = [None] + [float(g) for g in QUICK["gammas"]]
SEEDS = list(range(QUICK["repetitions"]))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(out, *extra):
    return main(["--plugin", "experiments.studies.shrinknets.gamma", "run", "shrinknets-gamma",
                 "--quick", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("shrinknets_gamma")
    assert _run(out) == 0
    return out


@pytest.fixture(scope="module")
def runs(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "pairs").glob("*.json"))}


def test_outputs_and_one_run_per_row_gamma_seed(out, runs):
    for name in ("config.json", "results.json", "runs.csv", "history.csv", "summary.csv",
                 "fig2_gamma.png", "log.txt"):
        assert (out / name).exists(), name
    assert (out / "fig2_gamma.png").read_bytes()[:8] == PNG
    expected = {sg._key(d, lam, g, s) for d, lam in QUICK["rows"] for g in SETTINGS
                for s in SEEDS}
    assert set(runs) == expected
    res = json.loads((out / "results.json").read_text())
    assert (res["runs"], res["runs_computed"], res["runs_reused"]) == (16, 16, 0)
    assert len(_rows(out / "runs.csv")) == 16
    for r in runs.values():
        assert len(r["history"]) == QUICK["epochs"]
        assert r["settings"]["gamma"] == r["gamma"] and r["settings"]["seed"] == r["seed"]


def _width_at(changes, step):
    """The logged size ``[neurons, macs]`` that step ``step`` ran with."""
    cur = None
    for s, n, m in changes:
        if s <= step:
            cur = (n, m)
    return cur


def test_cost_equals_the_sums_recomputed_from_the_step_log_and_histories(runs):
    for key, r in runs.items():
        hist = r["history"]
        # the totals are the sums of the per-epoch histories
        assert r["cost_neurons"] == pytest.approx(sum(h["input_neurons"] for h in hist),
                                                  rel=1e-12), key
        assert r["cost_macs"] == sum(h["macs_steps"] for h in hist), key
        assert r["cost_neuron_steps"] == sum(h["input_neuron_steps"] for h in hist), key
        # each epoch's numbers from the per-step size log (step s runs with the last change <= s)
        first = 1
        for h in hist:
            steps = range(first, h["step"] + 1)
            widths = [_width_at(r["cost_changes"], s) for s in steps]
            assert h["steps_epoch"] == len(steps)
            assert h["input_neuron_steps"] == sum(w[0] for w in widths), key
            assert h["macs_steps"] == sum(w[1] for w in widths), key
            assert h["input_neurons"] == pytest.approx(h["input_neuron_steps"] / len(steps),
                                                       rel=1e-12)
            first = h["step"] + 1
        assert first - 1 == r["steps"]
        # a linear model: input neurons are the live inputs, MACs are inputs x outputs
        n_out = r["initial_macs"] // r["initial_neurons"]
        assert r["initial_neurons"] == r["n_features"]
        assert all(m == n * n_out for _, n, m in r["cost_changes"])
        if r["gamma"] is not None:  # the last collection may follow the last step
            assert r["final_neurons"] == r["features_kept"] <= r["cost_changes"][-1][1]


def test_the_baseline_pays_for_the_full_network_every_step(runs):
    for r in runs.values():
        if r["gamma"] is not None:
            continue
        assert r["cost_changes"] == [[1, r["initial_neurons"], r["initial_macs"]]]
        assert r["cost_neurons"] == QUICK["epochs"] * r["n_features"]
        assert r["cost_macs"] == r["steps"] * r["initial_macs"]
        assert r["removal_events"] > 0  # the masked twin did mask dead inputs


def test_removals_shrink_the_network_by_their_counts(runs):
    for key, r in runs.items():
        if r["gamma"] is None:
            continue
        removed = sum(e[2] for e in r["removals"])
        assert r["initial_neurons"] - r["final_neurons"] == removed, key
        assert r["features_kept"] == r["n_features"] - removed, key
        assert r["relevant_kept"] + r["irrelevant_kept"] == r["features_kept"]


def test_gamma_zero_removes_only_gates_at_zero_and_matches_the_masked_baseline(runs):
    checked = 0
    for r in runs.values():
        if r["gamma"] != 0.0:
            continue
        base = runs[sg._key(r["dataset"], r["lam"], None, r["seed"])]
        assert r["removal_events"] > 0
        assert all(e[3] == 0.0 for e in r["removals"])  # the largest gate removed is exactly 0
        assert r["max_removed_gate"] == 0.0
        # the same units are gone (removed here, masked there), the same function is trained
        assert r["kept"] == base["kept"]
        for split in ("train", "val", "test"):
            a, b = r[f"final_{split}_loss"], base[f"final_{split}_loss"]
            assert abs(a - b) <= 1e-6 * abs(b), (r["key"], split, a, b)
        assert r["cost_neurons"] < base["cost_neurons"]
        assert r["cost_macs"] < base["cost_macs"]
        checked += 1
    assert checked == len(QUICK["rows"]) * len(SEEDS)


def test_each_removal_follows_the_aggressiveness_rule(runs):
    for r in runs.values():
        g = r["gamma"]
        if g is None:
            g = 0.0
        for step, layer, n, max_gate, mean_live in r["removals"]:
            assert layer == sg.SELECTOR and n >= 1
            assert max_gate <= g * mean_live * (1 + 1e-6) + 0.0, (r["key"], step)
    # gamma = 1 removes at least half of the live inputs at its first collection
    for r in runs.values():
        if r["gamma"] == 1.0:
            assert r["removals"][0][2] >= r["n_features"] // 2 - 1
            assert r["features_kept"] <= r["n_features"] // 4


def test_summary_is_numpys_mean_and_sd_over_the_seed_rows(out):
    per_run = _rows(out / "runs.csv")
    summary = _rows(out / "summary.csv")
    assert len(summary) == len(QUICK["rows"]) * len(SETTINGS)
    res = json.loads((out / "results.json").read_text())
    assert len(res["summary"]) == len(summary)
    for s, js in zip(summary, res["summary"]):
        group = [r for r in per_run if r["row"] == s["row"]
                 and (r["gamma"] == "" if s["setting"] == "baseline"
                      else r["gamma"] != "" and float(r["gamma"]) == float(s["gamma"]))]
        assert int(s["n"]) == len(group) == len(SEEDS)
        for m in ("final_train_loss", "final_val_loss", "final_test_loss", "cost_neurons",
                  "cost_macs", "features_kept", "delta_val_loss", "cost_neurons_ratio"):
            vals = np.array([float(r[m]) for r in group])
            assert float(s[f"{m}_mean"]) == pytest.approx(vals.mean(), rel=1e-12, abs=1e-15)
            assert float(s[f"{m}_sd"]) == pytest.approx(vals.std(ddof=1), rel=1e-9, abs=1e-15)
            assert js[f"{m}_mean"] == pytest.approx(float(s[f"{m}_mean"]), rel=1e-12, abs=0)
    # paired differences: a run minus the baseline run of its row and seed
    by = {(r["row"], r["seed"], r["gamma"]): r for r in per_run}
    for r in per_run:
        b = by[(r["row"], r["seed"], "")]
        assert float(r["delta_val_loss"]) == pytest.approx(
            float(r["final_val_loss"]) - float(b["final_val_loss"]), abs=1e-12)
        assert float(r["cost_macs_ratio"]) == pytest.approx(
            float(r["cost_macs"]) / float(b["cost_macs"]), rel=1e-12)


def test_live_cost_matches_the_toolkit_counters_without_the_selector():
    torch.manual_seed(0)
    model = sg.build_model(6, 2, hidden=[5])
    x = torch.randn(3, 6)
    sel_macs = lambda m: m.get_submodule(sg.SELECTOR).in_features * \
        m.get_submodule(sg.SELECTOR).out_features  # noqa: E731
    assert sg.live_cost(model) == (6 + 5, 6 * 5 + 5 * 2)
    assert sg.live_cost(model) == (input_neurons(model) - 6, count_macs(model, x[:1])
                                   - sel_macs(model))
    before = model(x)
    with torch.no_grad():  # switch inputs 1 and 3 off, then remove them: same outputs
        model.switches.get_submodule("0").weight[[1, 3]] = -0.5
        before = model(x)
    remove_units(model, {"0": [1, 3]}, replacement="zero", example_input=x[:1])
    assert torch.allclose(model(x), before, atol=1e-6)
    assert sg.live_cost(model) == (4 + 5, 4 * 5 + 5 * 2)
    assert sg.live_cost(model)[1] == count_macs(model, x[:1]) - sel_macs(model)
    assert sg._kept_features(model) == [0, 2, 4, 5]


def test_resume_skips_finished_runs_and_recomputes_the_missing_one(out, runs):
    victim = sg._key("synthetic-regression", 0.03, 0.3, 1)
    keeper = out / "pairs" / f"{sg._key('synthetic-classification', 0.03, None, 0)}.json"
    mtime = keeper.stat().st_mtime_ns
    (out / "pairs" / f"{victim}.json").unlink()
    assert _run(out) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["runs_computed"], res["runs_reused"]) == (1, 15)
    assert keeper.stat().st_mtime_ns == mtime  # reused, not rewritten
    again = json.loads((out / "pairs" / f"{victim}.json").read_text())
    old = runs[victim]
    assert {k: v for k, v in again.items() if k != "time_s"} == \
        {k: v for k, v in old.items() if k != "time_s"}  # deterministic: the same numbers
    # a changed setting invalidates the saved runs it affects
    assert _run(out, "--set", "epochs=3", "--set",
                'rows=[["synthetic-classification", 0.03]]', "--set", "repetitions=1") == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["runs"], res["runs_computed"], res["runs_reused"]) == (4, 4, 0)
    assert not math.isnan(res["summary"][0]["final_val_loss_mean"])
