"""The scorer benchmark: JSON contract with the ResNet-20 cases, and MRP against removal.

Timings on small models are noise; only their structure is checked. What is checked
exactly is the benchmark's agreement check: MRP's signed scores equal the loss changes
of removing each unit with mean replacement, where the removal's bias fold is exact.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from experiments.bench import scorers
from saliency import trace
from saliency.unit_stats import is_chain

# the slow tier: every test here runs (part of) the scorer benchmark
pytestmark = pytest.mark.slow

RESNET_CASES = ("forward+backward", "mrs_pass_resnet20", "stats_pass_resnet20",
                "mrp_all_units_resnet20", "naive_per_unit_resnet20", "mrp_speedup_resnet20")


@pytest.fixture
def one_thread():
    # on a busy machine, small multi-threaded ops can stall for a scheduler tick each; the
    # numbers checked here do not depend on threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run():
    buf = io.StringIO()
    result = scorers.main(["--quick", "--threads", "1"], file=buf)
    return result, buf.getvalue()


def test_last_line_is_the_json_object(run):
    result, text = run
    lines = text.rstrip("\n").split("\n")
    parsed = json.loads(lines[-1])
    assert parsed == json.loads(json.dumps(result))
    assert set(parsed) >= {"benchmark", "rows", "targets", "targets_met", "others_busy",
                           "agreement"}
    assert parsed["benchmark"] == "scorers"
    assert isinstance(parsed["targets_met"], bool)
    assert parsed["targets_met"] == all(t["met"] for t in parsed["targets"].values())


def test_every_target_is_reported_and_the_thesis_targets_are_unchanged(run):
    result, text = run
    assert {c: t["target"] for c, t in result["targets"].items()} == {
        "mrs_pass": "<= 1.3", "mrp_all_units": "<= 50.0", "hvp": "<= 3.0",
        "loss_change_conv1_speedup": ">= 20.0",
        "mrs_pass_resnet20": "<= 1.3", "mrp_speedup_resnet20": ">= 2.0"}
    assert len(result["targets"]["mrs_pass"]["values"]) == 2       # the MLP and the CNN
    assert len(result["targets"]["mrs_pass_resnet20"]["values"]) == 1
    for target in result["targets"].values():
        assert f"{target['target']} ({'met' if target['met'] else 'not met'})" in text


def test_the_resnet_cases(run):
    result, text = run
    rows = {r["case"]: r for r in result["rows"] if r["model"] == "resnet20"}
    assert set(rows) == set(RESNET_CASES)
    for r in rows.values():
        assert r["seconds"] > 0 and r["ratio"] > 0
    # the speedup is the extrapolated loop over mrp, all units of the quick ResNet-20 (80)
    speedup = rows["mrp_speedup_resnet20"]
    per_unit = rows["naive_per_unit_resnet20"]["seconds"]
    assert speedup["ratio"] == pytest.approx(per_unit * 80 / rows["mrp_all_units_resnet20"]["seconds"])
    assert "80 units in 12 groups (3 coupled, 20 units)" in rows["mrp_all_units_resnet20"]["note"]
    assert "timed on 20 units" in rows["naive_per_unit_resnet20"]["note"]
    assert "extrapolated" in speedup["note"]
    agree = result["agreement"]
    assert agree["units"] == 20 and agree["exact_units"] + agree["inexact_units"] == 20
    assert agree["exact_units"] > 0 and agree["max_abs_diff"] < 1e-5   # float32
    assert "mrp against the naive loop" in text and "CPUs busy (resnet20)" in text


def test_the_subset_covers_every_group():
    model, data = scorers.resnet_setup()
    graph = trace(model, data[0][0][:1])
    groups = [graph.groups[n] for n in graph.prunable]
    assert len(groups) == 12 and sum(not is_chain(g) for g in groups) == 3
    assert sum(g.size for g in groups) == 448
    units = scorers.unit_subset(graph, scorers.RESNET_FULL["stride"])
    assert len(units) >= 20 and {g for g, _ in units} == set(graph.prunable)


def test_mrp_equals_the_naive_loop_where_removal_is_exact(one_thread):
    model, data = scorers.resnet_setup(scorers.RESNET_QUICK["widths"], samples=16,
                                       dtype=torch.float64)
    got = scorers.mrp_vs_naive(model, data)  # every unit
    graph = trace(model, data[0][0][:1])
    coupled = {n for n in graph.prunable if not is_chain(graph.groups[n])}
    exact = [(u, m, n) for u, m, n, ok in zip(got["units"], got["mrp"], got["naive"],
                                              got["exact"]) if ok]
    assert len(got["units"]) == 80 and len(exact) > 0
    assert {g for (g, _), _, _ in exact} & coupled  # groups of coupled channels among them
    for unit, m, n in exact:
        assert abs(m - n) <= 1e-8, unit
    agree = got["agreement"]
    assert agree["exact_units"] == len(exact) and agree["max_abs_diff"] <= 1e-8
    # where the fold is inexact, removal is not the hold-at-mean MRP measures
    assert agree["max_abs_diff_inexact"] > 1e-8
