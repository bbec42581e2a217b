"""The ShrinkNets benchmark (experiments.bench.shrinknets) in its quick setting: what it reports
is what it measured, and the two runs it compares train the same function."""

from __future__ import annotations

import io
import json

import pytest
from data_files import fmnist_args

from experiments.bench import shrinknets as bench

# the slow tier: every test here runs the ShrinkNets benchmark
pytestmark = pytest.mark.slow


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


def _table(text: str) -> list[list[str]]:
    """The per-epoch rows of the printed table (lines that start with an epoch number)."""
    lines = text.strip().splitlines()[:-1]
    return [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()]


def test_printed_table_matches_the_measurements(quick):
    result, text = quick
    col = [r for r in result["rows"] if r["run"] == "collected"]
    msk = [r for r in result["rows"] if r["run"] == "masked"]
    rows = _table(text)
    assert len(rows) == len(col) == len(msk) == result["epochs"]
    macs0 = result["initial_macs"]
    for row, c, m in zip(rows, col, msk):
        epoch, live, mean, sec_c, sec_m, t_ratio, m_ratio, losses = row
        assert int(epoch) == c["epoch"] == m["epoch"]
        assert int(live.replace(",", "")) == c["live_macs"]
        assert int(mean.replace(",", "")) == round(c["mean_live_macs"])
        assert float(sec_c) == pytest.approx(c["seconds"], abs=0.006)
        assert float(sec_m) == pytest.approx(m["seconds"], abs=0.006)
        # the time ratio is of the two epochs' seconds, the MAC ratio of the mean over the start
        assert float(t_ratio) == pytest.approx(c["seconds"] / m["seconds"], abs=6e-4)
        assert float(m_ratio) == pytest.approx(c["mean_live_macs"] / macs0, abs=6e-4)
        lc, lm = losses.split("/")
        assert float(lc) == pytest.approx(c["train_loss"], abs=6e-5)
        assert float(lm) == pytest.approx(m["train_loss"], abs=6e-5)
    # the last line before the JSON states the same two ratios
    summary = text.strip().splitlines()[-2]
    assert f"time ratio {result['last_epoch_time_ratio']:.3f}" in summary
    assert f"MAC ratio {result['last_epoch_mac_ratio']:.3f}" in summary


def test_ratios_and_targets_follow_from_the_rows(quick):
    result, _ = quick
    col = [r for r in result["rows"] if r["run"] == "collected"]
    msk = [r for r in result["rows"] if r["run"] == "masked"]
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
