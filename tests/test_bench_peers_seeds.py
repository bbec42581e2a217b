"""The peers benchmark's accuracy targets over several seeds (experiments.bench.peers_seeds).

Small hand-made results with hand-computed means and gaps, scipy's t-interval as
the interval's reference, and every refusal; the check against a real
(``--quick``) run of the benchmark is in test_bench_peers.py, which owns that run.
"""

from __future__ import annotations

import json

import pytest
from scipy import stats

from experiments.bench import peers_seeds as PS
from experiments.harness.stats import mean, t_interval

SETTING = {"reductions": [2.0], "finetune_epochs": 3, "rounds": 1}


def _result(seed, acc, *, setting=SETTING, tp="1.6.1"):
    """A peers result with one MLP point; ``acc`` maps a method to (pruned, fine-tuned)
    accuracies as fractions."""
    rows = [{"model": "mlp", "target": 2.0, "method": m, "label": f"label of {m}",
             "kept": {"fc1": 5}, "params": 100, "acc_pruned": p, "acc_finetuned": f}
            for m, (p, f) in acc.items()]
    return {"benchmark": "peers", "accuracy": rows,
            "config": {"seed": seed, "setting": dict(setting), "data": "fashion-mnist",
                       "quick": False, "torch": "2.13.0+cpu", "torch_pruning": tp}}


# three seeds; MRS, Torch-Pruning magnitude, ln_structured (accuracies: k / 10,000)
ACC = {
    0: {"ours_mrs": (0.5012, 0.8810), "tp_magnitude": (0.6000, 0.8800),
        "ln_structured": (0.4000, 0.8850)},
    1: {"ours_mrs": (0.5500, 0.8790), "tp_magnitude": (0.5800, 0.8790),
        "ln_structured": (0.4400, 0.8710)},
    2: {"ours_mrs": (0.4800, 0.8830), "tp_magnitude": (0.6300, 0.8790),
        "ln_structured": (0.4200, 0.8800)},
}


def test_means_best_peer_gaps_and_intervals_by_hand():
    summary = PS.seed_summary([_result(s, a) for s, a in ACC.items()])
    assert summary["seeds"] == [0, 1, 2] and summary["rounds"] == 1
    (p,) = summary["points"]
    mrs = p["methods"]["ours_mrs"]
    assert mrs["acc_pruned"]["per_seed"] == pytest.approx([50.12, 55.0, 48.0], abs=1e-12)
    assert mrs["acc_pruned"]["mean"] == pytest.approx((50.12 + 55.0 + 48.0) / 3, abs=1e-12)
    # right after pruning: magnitude's mean 60.33 beats ln_structured's 42.0
    pru = p["stages"]["acc_pruned"]
    assert pru["best_peer"] == "tp_magnitude"
    assert pru["gap"] == pytest.approx((50.12 + 55 + 48) / 3 - (60 + 58 + 63) / 3, abs=1e-12)
    assert pru["met"] is False
    # after fine-tuning: magnitude 87.933.., ln_structured 87.866..; MRS 88.1 is ahead
    fin = p["stages"]["acc_finetuned"]
    assert fin["best_peer"] == "tp_magnitude"
    assert fin["gap"] == pytest.approx(88.1 - (88.0 + 87.9 + 87.9) / 3, abs=1e-12)
    assert fin["met"] is True
    d = [88.1 - 88.0, 87.9 - 87.9, 88.3 - 87.9]
    assert fin["differences"]["per_seed"] == pytest.approx(d, abs=1e-12)
    lo, hi = stats.t.interval(0.95, 2, loc=sum(d) / 3, scale=stats.sem(d))
    assert fin["differences"]["ci95"] == pytest.approx((lo, hi), abs=1e-12)
    # MRS is the best of ours here (the only one)
    assert fin["best_of_ours"] == {"method": "ours_mrs", "gap": fin["gap"], "met": True}
    # each seed alone against its own best peer: seed 0 loses to ln_structured (88.50),
    # seed 1 ties magnitude (met: no lower), seed 2 beats both
    assert fin["met_alone"] == [False, True, True]
    assert pru["met_alone"] == [False, False, False]
    t = summary["targets"]
    assert t["accuracy_after_finetune"] == {"target": PS.TARGETS["accuracy_after_finetune"],
                                            "met": True, "points_met": 1, "points": 1}
    assert t["accuracy_after_pruning"]["met"] is False
    assert summary["best_of_ours"] == {"acc_pruned": False, "acc_finetuned": True}


def test_the_best_peer_is_chosen_on_the_means_not_per_seed():
    # ln_structured wins seeds 0 and 2 after fine-tuning, magnitude wins on the means
    summary = PS.seed_summary([_result(s, a) for s, a in ACC.items()])
    fin = summary["points"][0]["stages"]["acc_finetuned"]
    assert all(ACC[s]["ln_structured"][1] > ACC[s]["tp_magnitude"][1] for s in (0, 2))
    assert fin["best_peer"] == "tp_magnitude"


def test_a_tie_meets_the_fine_tuning_target_but_not_the_pruning_one():
    tie = {s: {"ours_mrs": (0.5, 0.88), "tp_magnitude": (0.5, 0.88)} for s in (0, 1)}
    summary = PS.seed_summary([_result(s, a) for s, a in tie.items()])
    st = summary["points"][0]["stages"]
    assert st["acc_finetuned"]["met"] is True and st["acc_pruned"]["met"] is False
    assert st["acc_finetuned"]["differences"]["ci95"] == (0.0, 0.0)


def test_the_margin_absorbs_floating_point_in_the_means():
    # equal means in exact arithmetic (88.016..), but floating point puts MRS's 1.4e-14 lower
    acc = {0: {"ours_mrs": (0.1, 0.8888), "tp_magnitude": (0.1, 0.8812)},
           1: {"ours_mrs": (0.1, 0.8795), "tp_magnitude": (0.1, 0.8869)},
           2: {"ours_mrs": (0.1, 0.8722), "tp_magnitude": (0.1, 0.8724)}}
    summary = PS.seed_summary([_result(s, a) for s, a in acc.items()])
    fin = summary["points"][0]["stages"]["acc_finetuned"]
    assert -1e-9 < fin["gap"] < 0
    assert fin["met"] is True
    lower = {s: {**a, "tp_magnitude": (0.1, a["tp_magnitude"][1] + 0.0001)}
             for s, a in acc.items()}  # one image better on every seed
    fin = PS.seed_summary([_result(s, a) for s, a in lower.items()])["points"][0]["stages"]
    assert fin["acc_finetuned"]["met"] is False

def test_ours_other_methods_count_only_in_best_of_ours():
    acc = {0: {"ours_mrs": (0.40, 0.86), "ours_group_sparsity": (0.70, 0.90),
               "tp_magnitude": (0.60, 0.88)}}
    summary = PS.seed_summary([_result(0, acc[0])])
    st = summary["points"][0]["stages"]
    assert st["acc_finetuned"]["best_peer"] == "tp_magnitude"  # never one of ours
    assert st["acc_finetuned"]["met"] is False
    assert st["acc_finetuned"]["best_of_ours"]["method"] == "ours_group_sparsity"
    assert st["acc_finetuned"]["best_of_ours"]["met"] is True
    assert st["acc_finetuned"]["differences"]["ci95"] is None  # one seed: no interval


def test_runs_without_rounds_equal_runs_with_one_round():
    old = _result(0, ACC[0], setting={k: v for k, v in SETTING.items() if k != "rounds"})
    assert PS.seed_summary([old, _result(1, ACC[1])])["rounds"] == 1
    with pytest.raises(ValueError, match="run 1 was run with another setting than run 0: "
                                         "setting.rounds 5 against 1 "):
        PS.seed_summary([old, _result(1, ACC[1], setting={**SETTING, "rounds": 5})])


@pytest.mark.parametrize("change, message", [
    (lambda rs: rs[1]["config"].update(torch_pruning="1.5.0"),
     "torch_pruning '1.5.0' against '1.6.1'"),
    (lambda rs: rs[1]["config"].update(torch="2.12.0"), "torch '2.12.0' against '2.13.0"),
    (lambda rs: rs[2]["config"]["setting"].update(finetune_epochs=4),
     "run 2 was run with another setting than run 0: setting.finetune_epochs 4 against 3"),
    (lambda rs: rs[1]["config"].update(seed=0), r"seed\(s\) \[0\] given more than once"),
    (lambda rs: rs[1]["accuracy"].pop(), r"at mlp 2x lacks \['ln_structured'\]"),
    (lambda rs: rs[1]["accuracy"].append(dict(rs[1]["accuracy"][0])), "two rows"),
    (lambda rs: rs[2]["accuracy"].append({**rs[2]["accuracy"][0], "target": 5.0}),
     r"run 2 has points \[\('mlp', 5.0\)\] that run 0 lacks"),
    (lambda rs: rs[1]["accuracy"][0].update(acc_pruned=None),
     r"run 1's accuracy row 0 \(mlp 2.0x ours_mrs\): acc_pruned is None"),
    (lambda rs: rs[1]["accuracy"][0].update(acc_finetuned=88.1), "not an accuracy in"),
    (lambda rs: rs[0]["accuracy"][1].pop("label"), r"run 0's accuracy row 1 lacks \['label'\]"),
    (lambda rs: rs[1]["config"].pop("data"), r"run 1's config lacks \['data'\]"),
    (lambda rs: rs[0].pop("config"), "run 0 has no 'config'"),
])
def test_mismatched_runs_are_refused(change, message):
    runs = [_result(s, a) for s, a in ACC.items()]
    change(runs)
    with pytest.raises(ValueError, match=message):
        PS.seed_summary(runs)


def test_no_runs_or_no_points_decide_nothing():
    with pytest.raises(ValueError, match="no runs"):
        PS.seed_summary([])
    empty = {**_result(0, ACC[0]), "accuracy": []}
    with pytest.raises(ValueError, match="run 0 has no accuracy rows"):
        PS.seed_summary([empty])


def test_a_point_needs_mrs_and_a_peer():
    with pytest.raises(ValueError, match="needs MRS and a peer"):
        PS.seed_summary([_result(0, {"ours_mrs": (0.5, 0.8)})])


def test_load_result_takes_the_last_result_line(tmp_path):
    first, last = _result(0, ACC[0]), _result(1, ACC[1])
    log = tmp_path / "run.log"
    log.write_text("peers benchmark: ...\n" + json.dumps(first) + "\n{not json\n"
                   + json.dumps({"benchmark": "other"}) + "\n" + json.dumps(last)
                   + "\n\nreal\t5m35s\nuser\t5m12s\n")
    assert PS.load_result(log) == last
    unfinished = tmp_path / "unfinished.log"
    unfinished.write_text("peers benchmark: ...\n(a) accuracy at equal size\n")
    with pytest.raises(ValueError, match="unfinished.log: no result line"):
        PS.load_result(unfinished)


def test_cli_prints_the_table_verdicts_and_json_last_and_fails_cleanly(tmp_path, capsys):
    paths = []
    for s, a in ACC.items():
        paths.append(tmp_path / f"seed{s}.log")
        paths[-1].write_text(json.dumps(_result(s, a)) + "\n")
    png = tmp_path / "gaps.png"
    assert PS.main([*map(str, paths), "--out", str(png)]) == 0
    out = capsys.readouterr().out.rstrip("\n").split("\n")
    last = json.loads(out[-1])
    assert last["benchmark"] == "peers_seeds"
    assert last["targets"] == PS.seed_summary([_result(s, a) for s, a in ACC.items()])["targets"]
    lo, hi = last["points"][0]["stages"]["acc_finetuned"]["differences"]["ci95"]
    assert (f"| MLP | 2x | after fine-tuning | 88.10 | label of tp_magnitude (87.93) | +0.17 "
            f"| {lo:+.2f} to {hi:+.2f} | 2 of 3 | met |") in out
    assert ("| MLP | 2x | right after pruning | 51.04 | label of tp_magnitude (60.33) | -9.29 "
            in "\n".join(out))
    assert (f"target accuracy_after_finetune: {PS.TARGETS['accuracy_after_finetune']}, on the "
            f"seed means: met (1 of 1 points)") in out
    assert (f"target accuracy_after_pruning: {PS.TARGETS['accuracy_after_pruning']}, on the "
            f"seed means: NOT MET (0 of 1 points)") in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = png.read_bytes()
    assert PS.main([str(paths[0]), str(paths[0]), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert "given more than once" in err
    assert png.read_bytes() == before  # nothing written on error
    assert PS.main([str(tmp_path / "missing.log")]) == 2
    assert "missing.log" in capsys.readouterr().err
    broken = tmp_path / "broken.log"
    broken.write_text(json.dumps({"benchmark": "peers", "accuracy": []}) + "\n")
    assert PS.main([str(broken)]) == 2
    assert "broken.log has no 'config'" in capsys.readouterr().err
    assert PS.main([str(tmp_path)]) == 2  # a folder, not a log
    assert capsys.readouterr().err.startswith("error: ")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert PS.main([*map(str, paths), "--out", str(blocker / "gaps.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")


def test_t_interval_against_scipy_and_its_edges():
    xs = [0.3, -0.1, 0.25, 0.05, 0.4]
    want = stats.t.interval(0.9, len(xs) - 1, loc=sum(xs) / 5, scale=stats.sem(xs))
    assert t_interval(xs, 0.9) == pytest.approx(want, abs=1e-14)
    assert t_interval([1.0]) is None and t_interval([]) is None
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level must be in"):
        t_interval(xs, 1.0)
    with pytest.raises(ValueError, match="mean of no values"):
        mean([])


def test_means_table_bolds_the_best_mean_of_each_stage_and_escapes_pipes():
    acc = {s: {**a, "ours_shrinknets": (0.45, 0.8700)} for s, a in ACC.items()}
    summary = PS.seed_summary([_result(s, a) for s, a in acc.items()])
    summary["points"][0]["methods"]["ours_shrinknets"]["label"] = "ShrinkNets (cut by |g|)"
    lines = PS.means_table(summary, "mlp").split("\n")
    assert lines[0] == "| method | 2x (100) |"
    # pruned means: MRS 51.04, ShrinkNets 45, magnitude 60.33 (best), ln_structured 42
    # fine-tuned: MRS 88.10 (best), ShrinkNets 87, magnitude 87.93, ln_structured 87.87
    assert lines[2:] == ["| label of ours_mrs | 51.04 / **88.10** |",
                         "| ShrinkNets (cut by \\|g\\|) | 45.00 / 87.00 |",
                         "| label of tp_magnitude | **60.33** / 87.93 |",
                         "| label of ln_structured | 42.00 / 87.87 |"]
    with pytest.raises(ValueError, match="no points of network 'cnn'"):
        PS.means_table(summary, "cnn")
