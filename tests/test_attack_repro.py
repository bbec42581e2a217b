"""The learning-rate attack reproductions (experiments.studies.evci2018.attacks), quick, on generated data.

``thesis-attacks --quick`` runs the three variants once per module; the tests recompute the
summaries from tracking.csv, check that the attacked runs branch exactly from the original
(an attacked run trained from scratch ends bit-identical), and test the summary arithmetic on
hand-made records.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import load_checkpoint
from experiments.harness.registry import get_experiment, resolve_config
from experiments.harness.run import RunContext, load_data
from experiments.studies.evci2018 import attacks as attack_repro

# the slow tier: every test here runs the attack reproductions
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack_repro")
    write_idx_dir(root / "fmnist", n_train=600, n_test=400, seed=1, gz=True)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
        assert main(["run", "thesis-attacks", "--quick", "--out", str(out)]) == 0
        yield root, out, json.loads((out / "results.json").read_text())


def test_every_variant_writes_its_outputs(run):
    _, out, res = run
    assert set(res["variants"]) == {"relu-bn", "tanh", "relu"}
    for name, layer in (("relu-bn", "conv1"), ("tanh", "conv1"), ("relu", "conv2")):
        folder = out / name
        for f in ("fig3_metrics.png", "fig3_histograms.png", "mrs_vs_mrp.png"):
            assert (folder / f).read_bytes()[:8] == PNG, (name, f)
        for f in ("tracking.csv", "summary.csv", "history.csv", "settings.json", "branch.pt",
                  "original/checkpoint.pt", "unit1/checkpoint.pt"):
            assert (folder / f).exists(), (name, f)
        summary = res["variants"][name]["summary"]
        assert summary["layer"] == layer and summary["attacked"] == 1
        assert res["variants"][name]["attacked_steps"] == [14, 16, 18]
        assert res["variants"][name]["branch_step"] == 13   # 400 samples / 32 = 13 steps
    cmp = res["comparison"]
    assert set(cmp["killed_fraction"]) == {"relu-bn", "tanh", "relu"}
    assert isinstance(cmp["relu_harder_to_kill"], bool)
    assert len(_rows(out / "comparison.csv")) == 3


def test_summaries_recomputed_from_the_tracking_table(run):
    _, out, res = run
    for name, vres in res["variants"].items():
        rows = _rows(out / name / "tracking.csv")
        mrp = {(r["run"], int(r["step"]), int(r["unit"])): float(r["mrp"]) for r in rows}
        mrs = {(r["run"], int(r["step"]), int(r["unit"])): float(r["mrs"]) for r in rows}
        steps = sorted({int(r["step"]) for r in rows if r["run"] == "unit1"})
        n_units = len({int(r["unit"]) for r in rows})
        assert steps == list(range(0, 27, 2))   # step 0 and every 2 steps of 26
        post = [t for t in steps if t > 18]
        ratio = {t: mrp[("unit1", t, 1)] / mrp[("original", t, 1)] for t in post}
        s = vres["summary"]["units"][0]
        assert s["unit"] == 1 and s["post_probes"] == len(post) == 4
        assert s["ratio_first"] == pytest.approx(ratio[post[0]], rel=1e-9)
        assert s["ratio_min"] == pytest.approx(min(ratio.values()), rel=1e-9)
        late = [t for t in post if t >= (post[0] + post[-1]) / 2]
        assert s["killed_strict"] == all(ratio[t] < 0.5 for t in late)
        mean_ratio = (sum(mrp[("unit1", t, 1)] for t in late)
                      / sum(mrp[("original", t, 1)] for t in late))
        share = sum(ratio[t] < 0.5 for t in late) / len(late)
        assert s["ratio_second_half"] == pytest.approx(mean_ratio, rel=1e-9)
        assert s["killed"] == (mean_ratio < 0.5 and share >= 0.9)

        def argmin(table, t):
            return min(range(n_units), key=lambda u: table[("unit1", t, u)])

        strict = [argmin(mrs, t) == argmin(mrp, t) for t in post]
        assert s["mrs_argmin_is_mrp_argmin"] == pytest.approx(sum(strict) / len(strict))
        layer_mrp = {t: [mrp[("unit1", t, u)] for u in range(n_units)] for t in post}
        picks = [layer_mrp[t][argmin(mrs, t)] <= min(layer_mrp[t]) + 1e-3 * sum(layer_mrp[t])
                 / n_units for t in post]
        assert s["mrs_picks_min_mrp"] == pytest.approx(sum(picks) / len(picks))
        # before the first attack the attacked run is the original, bit for bit
        for t in (t for t in steps if t <= 14):
            for u in range(n_units):
                assert mrp[("unit1", t, u)] == mrp[("original", t, u)]


def test_branching_is_the_run_from_scratch(run, tmp_path, monkeypatch):
    root, out, _ = run
    monkeypatch.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
    cfg = resolve_config(get_experiment("thesis-attack-tanh"), quick=True)
    data = load_data(cfg)
    probe = attack_repro._probe(data.val, cfg["probe_size"])
    trainer = attack_repro._trainer(cfg, data, probe, tmp_path, epochs=cfg["epochs"], units=[1],
                                    multiplier=cfg["multiplier"], progress=False)
    trainer.fit()
    branched = load_checkpoint(out / "tanh" / "unit1" / "checkpoint.pt")
    scratch = load_checkpoint(tmp_path / "checkpoint.pt")
    for k, v in branched["state_dict"].items():
        assert torch.equal(v, scratch["state_dict"][k]), k
    assert branched["callbacks"][1]["records"] == scratch["callbacks"][1]["records"]
    assert branched["callbacks"][0]["applied"] == [14, 16, 18]


def test_rerun_resumes_and_other_settings_are_refused(run, tmp_path, monkeypatch, capsys):
    root, out, res = run
    monkeypatch.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
    assert main(["run", "thesis-attack-relu", "--quick", "--out", str(out / "relu")]) == 0
    again = json.loads((out / "relu" / "results.json").read_text())
    assert again["summary"] == res["variants"]["relu"]["summary"]
    capsys.readouterr()
    assert main(["run", "thesis-attack-relu", "--quick", "--out", str(out / "relu"),
                 "--set", "multiplier=10"]) == 2
    assert "holds runs with other settings (multiplier: 100.0 -> 10)" in capsys.readouterr().err


def _records(mrp_by_step, mrs_by_step):
    return [{"step": t, "loss": 0.0,
             "layers": {"conv1": {"units": [0, 1, 2], "mrp": mrp_by_step[t],
                                  "mrs": mrs_by_step[t], "w_in_l1": [1.0, 1.0, 1.0]}}}
            for t in sorted(mrp_by_step)]


def test_attack_summary_arithmetic():
    steps = [0, 10, 20, 30, 40, 50]
    orig = {t: [1.0, 2.0, 3.0] for t in steps}
    # unit 1 is attacked at step 10: its MRP falls to 0.4, then 0.3 of the original's
    att = {0: [1.0, 2.0, 3.0], 10: [1.0, 2.0, 3.0], 20: [1.0, 0.8, 3.0], 30: [1.0, 0.6, 3.0],
           40: [1.0, 0.6, 3.0], 50: [1.0, 0.6, 3.0]}
    mrs = {t: [0.5, 0.1, 2.0] for t in steps}   # MRS ranks unit 1 lowest, as MRP after step 10
    mrs_orig = {t: [0.5, 1.0, 2.0] for t in steps}
    s = attack_repro.attack_summary({"original": _records(orig, mrs_orig),
                                     "unit1": _records(att, mrs)}, "conv1", [1], [10])
    row = s["units"][0]
    assert row["ratio_first"] == pytest.approx(0.4) and row["ratio_min"] == pytest.approx(0.3)
    assert row["ratio_end"] == pytest.approx((0.8 + 0.6 * 3) / 4 / 2.0)
    assert row["killed"] and s["killed"] == 1 and s["killed_fraction"] == 1.0
    assert row["killed_strict"] and row["ratio_second_half"] == pytest.approx(0.3)
    # post probes 20..50: unit 1 has the lowest MRP (0.8, 0.6) and the lowest MRS
    assert row["mrs_picks_min_mrp"] == 1.0 and row["attacked_is_min_mrp"] == 1.0
    assert row["mrs_argmin_is_mrp_argmin"] == 1.0
    assert row["mrs_picks_min_mrp_original"] == 1.0
    # one probe of the second half (40, 50) above 0.5: not strictly killed, and 1 of 2 probes
    # is under the 90% share: not killed either
    att[50] = [1.0, 1.5, 3.0]
    s = attack_repro.attack_summary({"original": _records(orig, mrs_orig),
                                     "unit1": _records(att, mrs)}, "conv1", [1], [10])
    assert not s["units"][0]["killed"] and not s["units"][0]["killed_strict"]
    assert s["units"][0]["below_ratio_share"] == pytest.approx(0.75)
    assert s["units"][0]["below_ratio_share_second_half"] == pytest.approx(0.5)
    # with many probes, one noisy probe above 0.5 leaves the unit killed, not strictly killed
    steps = list(range(0, 210, 10))
    orig = {t: [1.0, 2.0, 3.0] for t in steps}
    att = {t: ([1.0, 2.0, 3.0] if t <= 10 else [1.0, 0.6, 3.0]) for t in steps}
    att[200] = [1.0, 1.2, 3.0]
    mrs = {t: [0.5, 0.1, 2.0] for t in steps}
    s = attack_repro.attack_summary({"original": _records(orig, mrs), "unit1": _records(att, mrs)},
                                    "conv1", [1], [10])
    row = s["units"][0]
    assert row["killed"] and not row["killed_strict"]
    assert row["below_ratio_share_second_half"] == pytest.approx(9 / 10)  # probes 110..200
    with pytest.raises(ValueError, match="no probe after"):
        attack_repro.attack_summary({"original": _records(orig, mrs), "unit1": _records(att, mrs)},
                                    "conv1", [1], [200])


def test_mrs_picks_tolerates_ties_among_dead_units():
    # units 1 and 2 are both (all but) dead; MRS ranks unit 2 lowest, MRP unit 1
    assert attack_repro._picks([5.0, 0.01, 0.0], [100.0, 0.0, 0.02])  # tol 1e-3 * 33.34
    assert not attack_repro._picks([5.0, 0.01, 0.0], [100.0, 0.0, 1.0])
    assert attack_repro._picks([0.3, 0.2, 0.1], [3.0, 2.0, 1.0])


def test_rebin_keeps_counts():
    import numpy as np

    grid = np.linspace(-1, 3, 9)
    out = attack_repro.rebin([0.0, 1.0, 2.0], [4, 6], grid)
    assert out.sum() == pytest.approx(10)
    assert out[2] == pytest.approx(2) and out[5] == pytest.approx(3)
    assert math.isclose(attack_repro.rebin([0, 1], [5], np.array([-2.0, 5.0]))[0], 5)
