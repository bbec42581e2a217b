"""Issue 9's accuracy targets over several seeds (experiments.bench.peers_seeds).

Small hand-made results with hand-computed means and gaps, scipy's t-interval as
the interval's reference, and every refusal; the check against a real
(``--quick``) run of the benchmark is in test_bench_peers.py, which owns that run.
"""

from __future__ import annotations

import json

import pytest
from scipy import stats

from experiments.bench import peers_seeds as PS
from experiments.stats import mean, t_interval

SETTING = {"reductions": [2.0], "finetune_epochs": 3, "rounds": 1}


def _result(seed, acc, *, setting=SETTING, tp="1.6.1"):
    """A peers result with one MLP point; ``acc`` maps a method to (pruned, fine-tuned)
    accuracies as fractions."""
    rows = [{"model": "mlp", "target": 2.0, "method": m, "label": f"label of {m}",
             "kept": {"fc1": 5}, "params": 100, "acc_pruned": p, "acc_finetuned": f}
            for m, (p, f) in acc.items()]
    return {"benchmark": "peers", "accuracy": rows,
            "config": {"seed": seed, "setting": dict(setting), "data": "fashion-mnist",
                       "quick": False, "torch_pruning": tp}}


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
    t = summary["targets"]
    assert t["accuracy_after_finetune"] == {"target": PS.TARGETS["accuracy_after_finetune"],
                                            "met": True, "points_met": 1, "points": 1}
    assert t["accuracy_after_pruning"]["met"] is False
    assert summary["best_of_ours"] == {"acc_pruned": False, "acc_finetuned": True}


def test_the_best_peer_is_chosen_on_the_means_not_per_seed():
    # ln_structured wins seed 0 by far and loses the others: on the means magnitude is best
    summary = PS.seed_summary([_result(s, a) for s, a in ACC.items()])
    fin = summary["points"][0]["stages"]["acc_finetuned"]
    assert ACC[0]["ln_structured"][1] > ACC[0]["tp_magnitude"][1]
    assert fin["best_peer"] == "tp_magnitude"


def test_a_tie_meets_the_fine_tuning_target_but_not_the_pruning_one():
    tie = {s: {"ours_mrs": (0.5, 0.88), "tp_magnitude": (0.5, 0.88)} for s in (0, 1)}
    summary = PS.seed_summary([_result(s, a) for s, a in tie.items()])
    st = summary["points"][0]["stages"]
    assert st["acc_finetuned"]["met"] is True and st["acc_pruned"]["met"] is False
    assert st["acc_finetuned"]["differences"]["ci95"] == (0.0, 0.0)


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
    with pytest.raises(ValueError, match="run 1 was run with another setting than run 0"):
        PS.seed_summary([old, _result(1, ACC[1], setting={**SETTING, "rounds": 5})])


@pytest.mark.parametrize("change, message", [
    (lambda rs: rs[1]["config"].update(torch_pruning="1.5.0"), "another setting"),
    (lambda rs: rs[1]["config"]["setting"].update(finetune_epochs=4), "another setting"),
    (lambda rs: rs[1]["config"].update(seed=0), r"seed\(s\) \[0\] given more than once"),
    (lambda rs: rs[1]["accuracy"].pop(), r"at mlp 2x lacks \['ln_structured'\]"),
    (lambda rs: rs[1]["accuracy"].append(dict(rs[1]["accuracy"][0])), "two rows"),
])
def test_mismatched_runs_are_refused(change, message):
    runs = [_result(s, a) for s, a in ACC.items()]
    change(runs)
    with pytest.raises(ValueError, match=message):
        PS.seed_summary(runs)
    with pytest.raises(ValueError, match="no runs"):
        PS.seed_summary([])


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
    text = "\n".join(out)
    assert "| MLP | 2x | after fine-tuning | 88.10 | label of tp_magnitude (87.93) | +0.17 |" in text
    assert "target accuracy_after_finetune" in text and "met (1 of 1 points)" in text
    assert "target accuracy_after_pruning" in text and "NOT MET (0 of 1 points)" in text
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
    assert "lacks the field 'config'" in capsys.readouterr().err


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
