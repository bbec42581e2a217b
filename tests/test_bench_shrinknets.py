"""The ShrinkNets benchmark (experiments.bench.shrinknets) in its quick setting: what it reports
is what it measured, and the two runs it compares train the same function."""

from __future__ import annotations

import io
import json

import pytest

from data_files import fmnist_args
from experiments.bench import shrinknets as bench


def test_mean_live_macs_by_hand():
    # collections after steps 2 and 5; steps 1-2 run at the initial 100, 3-5 at 60, 6- at 30
    cost = [[2, 0, 60, 0], [5, 0, 30, 0]]
    assert bench.mean_live_macs(cost, 1, 6, 100) == (100 + 100 + 60 + 60 + 60 + 30) / 6
    assert bench.mean_live_macs(cost, 6, 8, 100) == 30
    assert bench.mean_live_macs([], 1, 3, 7) == 7
    with pytest.raises(ValueError, match="no steps"):
        bench.mean_live_macs(cost, 4, 3, 100)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    args = fmnist_args(tmp_path_factory)
    data_dir = args[1].split("=", 1)[1]
    buf = io.StringIO()
    result = bench.main(["--quick", "--data-dir", data_dir, "--lam", "3e-3"], file=buf)
    return result, buf.getvalue()


def test_json_line_is_last_and_equals_the_result(quick):
    result, text = quick
    assert json.loads(text.strip().splitlines()[-1]) == json.loads(json.dumps(result))


def test_ratios_are_the_table_figures_divided(quick):
    result, _ = quick
    col = [r for r in result["rows"] if r["run"] == "collected"]
    msk = [r for r in result["rows"] if r["run"] == "masked"]
    assert len(col) == len(msk) == result["epochs"]
    macs0 = result["initial_macs"]
    assert result["last_epoch_time_ratio"] == col[-1]["seconds"] / msk[-1]["seconds"]
    assert result["last_epoch_mac_ratio"] == col[-1]["mean_live_macs"] / macs0
    t = result["targets"]
    assert t["last_epoch_time_over_mac_ratio"]["value"] == pytest.approx(
        result["last_epoch_time_ratio"] / result["last_epoch_mac_ratio"], rel=1e-12)
    run = sum(r["seconds"] for r in col) / sum(r["seconds"] for r in msk)
    assert t["run_time_ratio"]["value"] == pytest.approx(run, rel=1e-12)
    assert t["run_time_ratio"]["applies"] == (result["final_mac_fraction"] <= 0.2)
    for k, v in t.items():
        assert v["met"] == (v["value"] <= bench.TARGETS[k][1])


def test_collected_run_shrank_and_trained_the_masked_function(quick):
    result, _ = quick
    col = [r for r in result["rows"] if r["run"] == "collected"]
    msk = [r for r in result["rows"] if r["run"] == "masked"]
    # the penalty killed units, so the collected network is smaller than it started ...
    assert col[-1]["live_macs"] < result["initial_macs"]
    assert col[-1]["mean_live_macs"] <= col[0]["mean_live_macs"] <= result["initial_macs"]
    # ... while the masked twin pays for the dense network at every step; removal (gate
    # exactly 0) changed nothing it computes: the same training losses, up to float32
    # summation order
    for c, m in zip(col, msk):
        assert m["live_macs"] == m["mean_live_macs"] == result["initial_macs"]
        assert c["train_loss"] == pytest.approx(m["train_loss"], rel=1e-4)
