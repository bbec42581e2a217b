"""The scorer benchmark: JSON contract with the ResNet-20 and ViT cases, and MRP against removal.

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
from experiments.harness.tables import format_table
from saliency import trace
from saliency.unit_stats import is_chain

# the slow tier: every test here runs (part of) the scorer benchmark
pytestmark = pytest.mark.slow

RESNET_CASES = ("forward+backward", "mrs_pass_resnet20", "stats_pass_resnet20",
                "mrp_all_units_resnet20", "naive_per_unit_resnet20", "mrp_speedup_resnet20")
VIT_CASES = ("forward+backward", "mrs_pass_vit_tiny", "mrs_ffn_neurons_vit_tiny",
             "mrs_heads_vit_tiny", "mrp_all_units_vit_tiny", "mrp_heads_vit_tiny",
             "naive_per_head_vit_tiny", "naive_per_neuron_vit_tiny", "mrp_speedup_vit_tiny",
             "mrp_speedup_heads_vit_tiny")


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
    assert "agreement_vit_tiny" in parsed and "agreement_hf_llama" in parsed
    assert isinstance(parsed["targets_met"], bool)
    assert parsed["targets_met"] == all(t["met"] for t in parsed["targets"].values())


def test_every_target_is_reported_and_the_thesis_targets_are_unchanged(run):
    result, text = run
    assert {c: t["target"] for c, t in result["targets"].items()} == {
        "mrs_pass": "<= 1.3", "mrp_all_units": "<= 50.0", "hvp": "<= 3.0",
        "loss_change_conv1_speedup": ">= 20.0",
        "mrs_pass_resnet20": "<= 1.3", "mrp_speedup_resnet20": ">= 2.0",
        "mrs_pass_vit_tiny": "<= 1.3", "mrp_speedup_vit_tiny": ">= 2.0",
        "mrs_pass_hf_llama": "<= 1.3", "mrp_speedup_hf_llama": ">= 2.0"}
    assert len(result["targets"]["mrs_pass"]["values"]) == 2       # the MLP and the CNN
    assert len(result["targets"]["mrs_pass_resnet20"]["values"]) == 1
    assert len(result["targets"]["mrs_pass_vit_tiny"]["values"]) == 1
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


def test_the_vit_cases(run):
    result, text = run
    rows = {r["case"]: r for r in result["rows"] if r["model"] == "vit_tiny"}
    assert set(rows) == set(VIT_CASES)
    for r in rows.values():
        assert r["seconds"] > 0 and r["ratio"] > 0
    # the quick ViT: 2 blocks of 4 heads and 64 FFN neurons; every head timed, every 4th neuron
    per_head = rows["naive_per_head_vit_tiny"]["seconds"]
    per_neuron = rows["naive_per_neuron_vit_tiny"]["seconds"]
    mrp, mrp_heads = (rows[c]["seconds"] for c in ("mrp_all_units_vit_tiny",
                                                   "mrp_heads_vit_tiny"))
    speedup = rows["mrp_speedup_vit_tiny"]
    assert speedup["seconds"] == pytest.approx(per_head * 8 + per_neuron * 128, rel=1e-12)
    assert speedup["ratio"] == pytest.approx((per_head * 8 + per_neuron * 128) / mrp, rel=1e-12)
    heads = rows["mrp_speedup_heads_vit_tiny"]
    assert heads["seconds"] == pytest.approx(per_head * 8, rel=1e-12)
    assert heads["ratio"] == pytest.approx(per_head * 8 / mrp_heads, rel=1e-12)
    assert result["targets"]["mrp_speedup_vit_tiny"]["values"] == [speedup["ratio"]]
    assert result["targets"]["mrs_pass_vit_tiny"]["values"] == [rows["mrs_pass_vit_tiny"]["ratio"]]
    assert "8 heads in 2 modules, 128 FFN neurons in 2" in rows["mrp_all_units_vit_tiny"]["note"]
    assert "all 8 heads" in rows["naive_per_head_vit_tiny"]["note"]
    assert "32 FFN neurons (one in 4 of every block)" in rows["naive_per_neuron_vit_tiny"]["note"]
    # every head and neuron removal is exact: mrp and the loop agree on all timed units
    agree = result["agreement_vit_tiny"]
    assert agree["units"] == agree["exact_units"] == 40 and agree["inexact_units"] == 0
    assert agree["max_abs_diff"] < 1e-5   # float32
    kinds = agree["by_kind"]
    assert (kinds["heads"]["units"], kinds["ffn_neurons"]["units"]) == (8, 32)
    assert kinds["heads"]["exact_groups"] == ["blocks.0.attn", "blocks.1.attn"]
    assert kinds["ffn_neurons"]["exact_groups"] == ["blocks.0.fc1", "blocks.1.fc1"]
    assert max(kinds["heads"]["max_abs_diff"], kinds["ffn_neurons"]["max_abs_diff"]) == \
        agree["max_abs_diff"]
    assert "vit_tiny: mrp against the naive loop (float32) on 8 heads and 32 FFN neurons" in text
    assert "CPUs busy (vit_tiny)" in text


def test_the_vit_table_is_the_json_rows(run):
    result, text = run
    vit = [r for r in result["rows"] if r["model"] == "vit_tiny"]
    # the ms and x fwd+bwd columns print the JSON's seconds and ratios
    table = format_table(vit, {"model": "model", "case": "case", "seconds": "ms",
                               "ratio": "x fwd+bwd"},
                         formats={"seconds": lambda v: f"{v * 1e3:.2f}", "ratio": ".2f"})
    printed = [line.split() for line in text.split("\n") if line.startswith("vit_tiny ")]
    assert [p[:4] for p in printed] == [line.split() for line in table.split("\n")[2:]]
    for p, r in zip(printed, vit):
        assert float(p[2]) == pytest.approx(r["seconds"] * 1e3, abs=0.0051)
        assert float(p[3]) == pytest.approx(r["ratio"], abs=0.0051)
    # the speedups are the printed naive-loop times over the printed mrp times
    ms = {p[1]: float(p[2]) for p in printed}
    ratio = {p[1]: float(p[3]) for p in printed}
    assert ratio["mrp_speedup_vit_tiny"] == pytest.approx(
        ms["mrp_speedup_vit_tiny"] / ms["mrp_all_units_vit_tiny"], rel=0.02, abs=0.01)
    assert ratio["mrp_speedup_heads_vit_tiny"] == pytest.approx(
        ms["mrp_speedup_heads_vit_tiny"] / ms["mrp_heads_vit_tiny"], rel=0.02, abs=0.01)


def test_the_vit_subset_covers_every_head_and_block():
    model, data = scorers.vit_setup(scorers.VIT_FULL["vit"], samples=2)
    graph = trace(model, data[0][0][:1])
    assert graph.prunable == [f"blocks.{i}.fc1" for i in range(4)]
    assert graph.prunable_heads == [f"blocks.{i}.attn" for i in range(4)]
    assert sum(graph.groups[n].size for n in graph.prunable) == 1024
    assert sum(graph.heads[n].num_heads for n in graph.prunable_heads) == 16
    units = scorers.unit_subset(graph, scorers.VIT_FULL["stride"])
    neurons = [u for u in units if u[0].endswith("fc1")]
    heads = [u for u in units if u[0].endswith("attn")]
    assert len(neurons) == 64 and {g for g, _ in neurons} == set(graph.prunable)
    assert heads == [(f"blocks.{i}.attn", h) for i in range(4) for h in range(4)]


def test_mrp_equals_the_naive_loop_on_the_vit(one_thread):
    model, data = scorers.vit_setup(scorers.VIT_QUICK["vit"], samples=12, dtype=torch.float64)
    got = scorers.mrp_vs_naive(model, data)  # every head and every FFN neuron
    assert len(got["units"]) == 2 * 64 + 2 * 4 and all(got["exact"])
    assert {g for g, _ in got["units"]} == {"blocks.0.fc1", "blocks.1.fc1", "blocks.0.attn",
                                           "blocks.1.attn"}
    for unit, m, n in zip(got["units"], got["mrp"], got["naive"]):
        assert abs(m - n) <= 1e-8, unit
    assert got["agreement"]["max_abs_diff"] <= 1e-8
    # the heads change the loss: the check is not of zeros
    assert max(abs(m) for (g, _), m in zip(got["units"], got["mrp"]) if g.endswith("attn")) > 1e-6


def test_the_llama_of_transformers_rows_and_agreement(run):
    pytest.importorskip("transformers")
    result, text = run
    rows = {r["case"]: r for r in result["rows"] if r["model"] == "hf_llama"}
    assert set(rows) == {c.replace("vit_tiny", "hf_llama") for c in VIT_CASES}
    per_head = rows["naive_per_head_hf_llama"]["seconds"]
    per_neuron = rows["naive_per_neuron_hf_llama"]["seconds"]
    speedup = rows["mrp_speedup_hf_llama"]
    # the quick Llama: 2 layers of 4 heads and 24 SwiGLU neurons
    assert speedup["seconds"] == pytest.approx(per_head * 8 + per_neuron * 48, rel=1e-12)
    assert "one in 4 of the 8 heads (2)" in rows["naive_per_head_hf_llama"]["note"]
    agree = result["agreement_hf_llama"]
    assert agree["units"] == agree["exact_units"] == 6 and agree["dtype"] == "float32"
    assert agree["max_abs_diff"] < 1e-5
    assert agree["by_kind"]["ffn_neurons"]["exact_groups"] == [
        "model.model.layers.0.mlp.gate_proj", "model.model.layers.1.mlp.gate_proj"]
    assert "hf_llama: mrp against the naive loop (float32) on 2 heads and 4 FFN neurons" in text
