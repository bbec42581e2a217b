"""The inference benchmark on tiny models: JSON contract, MAC reductions, dense twins, targets.

Timings on tiny models are noise; only their structure is checked. That unit
removal is exact is tested with the surgery itself.
"""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
import torch.nn as nn

import pruners
from experiments.bench import inference
from experiments.harness.models import (
    mlp,
    mobilenet_v2,
    resnet20,
    resnet56,
    small_cnn,
    vit_tiny,
)

# the slow tier: every test here runs the inference benchmark
pytestmark = pytest.mark.slow

TINY_RESNET = dict(widths=(4, 8, 16), image_size=12)
TINY_MOBILENET = dict(width=0.25, image_size=12)
# 9 tokens of 4x4 patches, 2 blocks of width 32, 4 heads of 8, FFN 64
TINY_VIT = dict(patch_size=4, depth=2, width=32, heads=4, ffn=64, image_size=12)
TINY = dict(mlp_widths=(64, 96, 96, 10),
            cnn=dict(widths=(8, 16), hidden=32, image_size=12),
            resnet=TINY_RESNET, mobilenet=TINY_MOBILENET, vit=TINY_VIT,
            batches=(16, 1), reductions=(2, 3, 5, 10), conv_reductions=(1.5, 2, 3),
            vit_reductions=(1.5, 2, 3), mask_reduction=5)
MODELS = ("mlp", "small_cnn", "resnet20", "mobilenet_v2", "vit_tiny")
TWINNED = ("resnet20", "mobilenet_v2", "vit_tiny")   # timed beside a dense twin
VIT_HEADS = ("blocks.0.attn", "blocks.1.attn")
VIT_FFNS = ("blocks.0.fc1", "blocks.1.fc1")


def vit_size(heads, ffns, patch_size=4, width=32, head_dim=8, image_size=12, in_channels=1,
             classes=10):
    """Closed-form parameters and MACs per sample of a ViT-tiny whose blocks keep ``heads[i]``
    heads (of ``head_dim``) and ``ffns[i]`` FFN neurons: the patch embedding (pixels and
    one-hot positions), per block the q/k/v/out projections, ``Q K^T`` and ``A V`` (``2 H T^2
    head_dim``), fc1 and fc2, then the classifier; LayerNorms have parameters, no MACs."""
    tokens = (image_size // patch_size) ** 2
    pixels = in_channels * patch_size ** 2
    params = (pixels + tokens) * width + width + 2 * width + width * classes + classes
    macs = tokens * (pixels + tokens) * width + width * classes
    for h, f in zip(heads, ffns):
        inner = h * head_dim
        params += 4 * width                                   # two LayerNorms
        params += 3 * (width * inner + inner) + inner * width + width
        params += width * f + f + f * width + width
        macs += tokens * 4 * width * inner + 2 * tokens * tokens * inner + tokens * 2 * width * f
    return params, macs


@pytest.fixture(scope="module")
def run():
    # one thread: on a busy machine, tiny multi-threaded ops can stall for a
    # scheduler tick each; the numbers checked here do not depend on threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        buf = io.StringIO()
        result = inference.main(["--quick", "--repeats", "2"], file=buf, **TINY)
    finally:
        torch.set_num_threads(threads)
    return result, buf.getvalue()


def test_last_line_is_the_json_object(run):
    result, text = run
    lines = text.rstrip("\n").split("\n")
    parsed = json.loads(lines[-1])
    assert parsed == json.loads(json.dumps(result))
    assert set(parsed) >= {"benchmark", "cases", "targets", "targets_met"}
    assert parsed["benchmark"] == "inference"
    assert isinstance(parsed["targets_met"], bool)
    assert parsed["targets"] == {
        "mlp": {"batch": 256, "max_reduction": 5.0, "min_ratio": 0.8},
        "small_cnn": {"batch": 256, "max_reduction": 3.0, "min_ratio": 0.5},
        "resnet20": {"batch": 256, "max_reduction": 2.0, "min_ratio": 0.6,
                     "max_vs_dense_twin": 1.1},
        "mobilenet_v2": {"batch": 256, "max_vs_dense_twin": 1.1},
        "vit_tiny": {"batch": 256, "max_reduction": 2.0, "min_ratio": 0.6,
                     "max_vs_dense_twin": 1.1},
    }
    assert parsed["config"]["resnet20"] == {"widths": [4, 8, 16], "image_size": 12}
    assert parsed["config"]["mobilenet_v2"] == TINY_MOBILENET
    assert parsed["config"]["vit_tiny"] == TINY_VIT
    assert parsed["config"]["conv_reductions"] == [1.5, 2.0, 3.0]
    assert parsed["config"]["vit_reductions"] == [1.5, 2.0, 3.0]
    # one JSON object only, and it is last: no other line parses as one
    for line in lines[:-1]:
        assert not line.startswith("{")
    # the table names every case
    assert sum(1 for line in lines if line.startswith(("mlp ", "small_cnn "))) == 20
    assert sum(1 for line in lines if line.startswith(("resnet20 ", "mobilenet_v2 "))) == 12
    assert sum(1 for line in lines if line.startswith("vit_tiny ")) == 6


def test_cases_cover_models_batches_reductions(run):
    cases = run[0]["cases"]
    assert len(cases) == 2 * 2 * (4 + 1) + 3 * 2 * 3
    got = {(c["model"], c["batch"], c["method"], c["target_reduction"]) for c in cases}
    want = {(m, b, "remove", float(r)) for m in ("mlp", "small_cnn") for b in (16, 1)
            for r in (2, 3, 5, 10)}
    want |= {(m, b, "mask", 5.0) for m in ("mlp", "small_cnn") for b in (16, 1)}
    want |= {(m, b, "remove", r) for m in TWINNED for b in (16, 1) for r in (1.5, 2.0, 3.0)}
    assert got == want


def test_mac_reductions_hit_their_targets(run):
    for c in run[0]["cases"]:
        assert abs(c["mac_reduction"] / c["target_reduction"] - 1) <= 0.10, c
        assert c["mac_reduction"] == c["macs_base"] / c["macs"]
        if c["method"] == "remove":
            assert c["dense_mac_reduction"] == c["mac_reduction"]
            assert c["params"] < c["params_base"]
        else:  # masking keeps the dense cost, and computes what removal computes
            assert c["dense_mac_reduction"] == 1.0
            assert c["max_abs_diff_vs_removed"] < 1e-5


def test_macs_and_uniform_keep_fraction(run):
    full = {"mlp": {"fc1": 96, "fc2": 96},
            "small_cnn": {"conv1": 8, "conv2": 16, "fc1": 32}}
    base_macs = {"mlp": 64 * 96 + 96 * 96 + 96 * 10,
                 "small_cnn": 144 * 8 * 9 + 36 * 16 * 8 * 9 + 16 * 9 * 32 + 32 * 10}
    images = torch.zeros(1, 1, 12, 12)
    for name, net in (("resnet20", resnet20(**TINY_RESNET)),
                      ("mobilenet_v2", mobilenet_v2(**TINY_MOBILENET))):
        graph = pruners.trace(net, images)
        full[name] = {g: graph.groups[g].size for g in graph.prunable}  # groups, not layers
        base_macs[name] = pruners.count_macs(net, images)
    assert full["resnet20"]["conv1"] == 4 and len(full["resnet20"]) == 12
    assert full["mobilenet_v2"]["blocks.6.expand_conv"] == 96
    # the ViT: every FFN's neurons and every attention module's heads, the same fraction
    full["vit_tiny"] = {**{f: 64 for f in VIT_FFNS}, **{h: 4 for h in VIT_HEADS}}
    base_macs["vit_tiny"] = vit_size((4, 4), (64, 64))[1]
    assert base_macs["vit_tiny"] == pruners.count_macs(vit_tiny(**TINY_VIT),
                                                       torch.zeros(1, 1, 12, 12))
    for c in run[0]["cases"]:
        assert c["macs_base"] == base_macs[c["model"]]
        assert set(c["units"]) == set(full[c["model"]])
        for layer, n in full[c["model"]].items():
            assert c["units"][layer] == max(1, math.floor(c["keep_fraction"] * n + 0.5)), c


def test_timing_fields_are_consistent(run):
    result = run[0]
    for c in result["cases"]:
        assert c["ms_base"] > 0 and c["ms"] > 0
        assert c["calls_base"] >= 2 and c["calls"] >= 2
        assert c["spread_base"] >= 0 and c["spread"] >= 0
        assert c["other_cpus_busy"] is None or c["other_cpus_busy"] >= 0
        assert c["speedup"] == pytest.approx(c["ms_base"] / c["ms"], rel=1e-12)
        assert c["ratio"] == pytest.approx(c["speedup"] / c["mac_reduction"], rel=1e-12)
        if c["model"] in TWINNED:  # timed beside its dense twin, in the same rounds
            assert c["ms_dense_twin"] > 0 and c["calls_dense_twin"] >= 2
            assert c["spread_dense_twin"] >= 0
            assert c["vs_dense_twin"] == pytest.approx(c["ms"] / c["ms_dense_twin"], rel=1e-12)
            assert c["dense_twin_speedup"] == pytest.approx(c["ms_base"] / c["ms_dense_twin"],
                                                            rel=1e-12)
        else:
            assert c["ms_dense_twin"] is None and c["vs_dense_twin"] is None
            assert c["dense_twin_params"] is None and c["dense_twin_macs"] is None
        # targets are set at batch 256 only
        assert c["in_target"] is False and c["meets_target"] is None
        assert c["target_checks"] == {}
    assert result["targets_met"] is False  # nothing in scope: not demonstrated
    # the same unpruned timing serves every case of one model and batch
    for model in MODELS:
        for batch in (16, 1):
            base = {c["ms_base"] for c in result["cases"]
                    if c["model"] == model and c["batch"] == batch}
            assert len(base) == 1


def test_prune_to_reduction_leaves_the_model_alone():
    torch.manual_seed(0)
    net = mlp([20, 40, 40, 3])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.zeros(1, 20)
    p = inference.prune_to_reduction(net, x, 4.0, seed=1)
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in before.items()}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert p.macs == pruners.count_macs(p.model, x)
    assert p.macs_base == 20 * 40 + 40 * 40 + 40 * 3
    assert abs(p.reduction / 4.0 - 1) <= 0.10
    assert p.model.fc1.out_features == p.kept["fc1"] == p.kept["fc2"] == 40 - len(
        p.units["fc1"])
    # same seed, same units
    assert inference.prune_to_reduction(net, x, 4.0, seed=1).units == p.units


def test_prune_to_reduction_rejects_unreachable_targets():
    net = mlp([20, 4, 3])
    x = torch.zeros(1, 20)
    with pytest.raises(ValueError, match="out of reach"):
        inference.prune_to_reduction(net, x, 100.0)
    with pytest.raises(ValueError, match="> 1"):
        inference.prune_to_reduction(net, x, 1.0)


def test_uniform_units_nested_and_at_least_one():
    order = {"a": torch.tensor([3, 0, 2, 1]), "b": torch.arange(10)}
    assert inference.uniform_units({"a": 4, "b": 10}, 1.0, order) == {}
    assert inference.uniform_units({"a": 4, "b": 10}, 0.5, order) == {
        "a": [3, 0], "b": [0, 1, 2, 3, 4]}
    assert inference.uniform_units({"a": 4, "b": 10}, 0.0, order) == {
        "a": [3, 0, 2], "b": list(range(9))}


def test_bad_repeats_is_a_usage_error():
    with pytest.raises(SystemExit):
        inference.main(["--repeats", "0"], file=io.StringIO(), **TINY)


def test_model_factories():
    net = mlp([784, 1024, 1024, 10])
    assert [n for n, _ in net.named_children()] == ["flatten", "fc1", "act1", "fc2", "act2",
                                                    "fc3"]
    images = torch.zeros(1, 1, 28, 28)
    assert net(images).shape == (1, 10) and net(torch.zeros(1, 784)).shape == (1, 10)
    assert pruners.count_macs(net, images) == 784 * 1024 + 1024 * 1024 + 1024 * 10
    drop = mlp([8, 6, 4, 2], activation=nn.Tanh, bias=False, dropout=0.5)
    assert [type(m) for m in drop] == [nn.Flatten, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear,
                                       nn.Tanh, nn.Dropout, nn.Linear]
    assert drop.fc1.bias is None
    assert pruners.trace(drop).prunable == ["fc1", "fc2"]

    cnn = small_cnn()
    assert {"conv1", "bn1", "conv2", "bn2", "fc1", "fc2"} <= dict(cnn.named_modules()).keys()
    assert cnn(images).shape == (1, 10)
    assert pruners.trace(cnn, images).prunable == ["conv1", "conv2", "fc1"]
    assert pruners.count_macs(cnn, images) == (28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9
                                               + 64 * 7 * 7 * 256 + 256 * 10)
    rgb = small_cnn(in_channels=3, num_classes=5, widths=(4, 8, 8), hidden=16, image_size=17)
    assert rgb(torch.zeros(2, 3, 17, 17)).shape == (2, 5)
    assert rgb.fc1.in_features == 8 * 2 * 2

    for bad in (lambda: mlp([10]), lambda: mlp([10, 0, 2]), lambda: mlp([4, 2], dropout=1.0),
                lambda: small_cnn(widths=()), lambda: small_cnn(image_size=3, widths=(4, 4))):
        with pytest.raises(ValueError):
            bad()


def test_nearest_reduction_and_keep_fractions_by_hand():
    from experiments.bench.inference import keep_fractions, nearest_reduction

    # layers of 2 and 4 units: the kept counts step up at k = 1/8, 1/4, 3/8, 5/8, 3/4, 7/8
    assert keep_fractions({"a": 2, "b": 4}) == [0.0, 3 / 16, 5 / 16, 1 / 2, 11 / 16, 13 / 16, 1.0]
    sizes = [10, 20, 40, 80, 100]          # increasing with the index; base 100
    calls = []

    def size(i):
        calls.append(i)
        return sizes[i]

    # 100/20 = 5 and 100/40 = 2.5 bracket 3; log-nearest to 3 is 2.5 (|log 1.2| < |log 5/3|)
    assert nearest_reduction(size, len(sizes), 100, 3.0, "MACs") == 2
    assert nearest_reduction(size, len(sizes), 100, 4.9, "MACs") == 1
    assert nearest_reduction(size, len(sizes), 100, 10.0, "MACs") == 0
    assert len(set(calls)) <= len(sizes)
    with pytest.raises(ValueError, match=r"11.0x fewer MACs is out of reach.*gives 10x"):
        nearest_reduction(size, len(sizes), 100, 11.0, "MACs")


def test_dense_twins_have_the_pruned_size(run):
    for c in run[0]["cases"]:
        if c["model"] in TWINNED:
            assert c["dense_twin_params"] == c["params"] < c["params_base"]
            assert c["dense_twin_macs"] == c["macs"] < c["macs_base"]


def test_vit_cases_by_closed_form(run):
    cases = [c for c in run[0]["cases"] if c["model"] == "vit_tiny"]
    assert len(cases) == 6
    assert {c["params_base"] for c in cases} == {vit_size((4, 4), (64, 64))[0]}
    assert {c["params_base"] for c in cases} == {pruners.count_params(vit_tiny(**TINY_VIT))}
    for c in cases:
        heads = [c["units"][h] for h in VIT_HEADS]
        ffns = [c["units"][f] for f in VIT_FFNS]
        assert len(set(heads)) == 1 and len(set(ffns)) == 1   # uniform: every block alike
        assert 1 <= heads[0] < 4 or ffns[0] < 64
        params, macs = vit_size(heads, ffns)
        assert c["params"] == c["dense_twin_params"] == params
        assert c["macs"] == c["dense_twin_macs"] == macs
        assert c["mac_reduction"] == vit_size((4, 4), (64, 64))[1] / macs
    # whole heads: the 2x case keeps half of them
    halves = [c for c in cases if c["target_reduction"] == 2.0]
    assert {c["units"]["blocks.0.attn"] for c in halves} == {2}

def test_vit_table_rows_are_the_json_figures(run):
    result, text = run
    rows = [line.split() for line in text.split("\n") if line.startswith("vit_tiny ")]
    cases = [c for c in result["cases"] if c["model"] == "vit_tiny"]
    assert len(rows) == len(cases) == 6
    for row, c in zip(rows, cases):   # the table lists the cases in order
        (model, batch, method, target, red, _keep, params, base, ms, speedup, ratio, twin,
         vs_twin) = row
        assert (model, int(batch), method, target) == \
            ("vit_tiny", c["batch"], "remove", f"{c['target_reduction']:g}x")
        assert red == f"{c['mac_reduction']:.2f}x" and params == f"{c['params']:,}"
        assert (base, ms, twin) == (f"{c['ms_base']:.3f}", f"{c['ms']:.3f}",
                                    f"{c['ms_dense_twin']:.3f}")
        # the printed ratios are the printed times divided, up to their rounding
        b, m, t = float(base), float(ms), float(twin)
        assert float(speedup[:-1]) == pytest.approx(b / m, abs=0.006 + 0.001 * b / m ** 2)
        assert float(ratio) == pytest.approx(b / m / float(red[:-1]),
                                             abs=0.006 + 0.002 * b / m ** 2)
        assert float(vs_twin) == pytest.approx(m / t, abs=0.006 + 0.001 * m / t ** 2)


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_vit_dense_twin_is_built_at_the_pruned_widths(target):
    torch.manual_seed(0)
    net = vit_tiny(**TINY_VIT).eval()
    x = torch.randn(1, 1, 12, 12)
    p = inference.prune_to_reduction(net, x, target, seed=3)
    twin = inference.vit_dense_twin(p.model, TINY_VIT, x)
    assert not twin.training
    heads = [b.attn.num_heads for b in p.model.blocks]
    ffns = [b.fc1.out_features for b in p.model.blocks]
    assert heads == [p.kept[h] for h in VIT_HEADS] and ffns == [p.kept[f] for f in VIT_FFNS]
    # a fresh build at those widths: the same closed-form size as the pruned model
    params, macs = vit_size(heads, ffns)
    assert pruners.count_params(twin) == pruners.count_params(p.model) == params
    assert pruners.count_macs(twin, x) == pruners.count_macs(p.model, x) == p.macs == macs
    for a, b in zip(twin.blocks, p.model.blocks):
        assert (a.attn.num_heads, a.attn.num_kv_heads, a.attn.head_dim) == \
            (b.attn.num_heads, b.attn.num_kv_heads, 8)
        assert a.attn.q_proj.out_features == a.attn.out_proj.in_features == 8 * b.attn.num_heads
        assert (a.fc1.out_features, a.fc2.in_features) == (b.fc1.out_features,) * 2
    # freshly initialised, and with the pruned weights it computes what the pruned model does
    assert not torch.equal(twin.blocks[0].fc1.weight, p.model.blocks[0].fc1.weight)
    twin.load_state_dict(p.model.state_dict())
    twin, pruned = twin.double(), copy.deepcopy(p.model).double()
    probe = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(twin(probe), pruned(probe), rtol=0, atol=1e-12)


def test_vit_dense_twin_rejects_other_widths():
    x = torch.zeros(1, 1, 12, 12)
    p = inference.prune_to_reduction(vit_tiny(**TINY_VIT), x, 2.0)
    with pytest.raises(ValueError, match="differ from the pruned model"):
        inference.vit_dense_twin(p.model, {**TINY_VIT, "patch_size": 6}, x)


@pytest.mark.parametrize("build", [lambda: resnet20(**TINY_RESNET),
                                   lambda: mobilenet_v2(**TINY_MOBILENET)],
                         ids=["resnet20", "mobilenet_v2"])
@pytest.mark.parametrize("target", [1.5, 3.0])
def test_dense_twin_is_the_pruned_architecture(build, target):
    torch.manual_seed(0)
    net = build()
    with torch.no_grad():  # BatchNorm statistics that matter: the twin must take them over too
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    net.eval()
    x = torch.randn(1, 1, 12, 12)
    p = inference.prune_to_reduction(net, x, target, seed=3)
    twin = inference.dense_twin(p.model, build, x)
    assert not twin.training
    assert pruners.count_params(twin) == pruners.count_params(p.model) == \
        sum(t.numel() for t in p.model.parameters())
    assert pruners.count_macs(twin, x) == pruners.count_macs(p.model, x) == p.macs
    assert {k: v.shape for k, v in twin.state_dict().items()} == \
        {k: v.shape for k, v in p.model.state_dict().items()}
    for (name, a), b in zip(twin.named_modules(), p.model.modules()):
        assert type(a) is type(b), name
        if isinstance(a, nn.Conv2d):
            assert (a.in_channels, a.out_channels, a.groups) == \
                (b.in_channels, b.out_channels, b.groups), name
    # freshly initialised: not the pruned model's weights
    assert not all(torch.equal(a, b) for a, b in zip(twin.parameters(), p.model.parameters()))
    # with the pruned model's weights it computes what the pruned model computes
    twin.load_state_dict(p.model.state_dict())
    twin, pruned = twin.double(), copy.deepcopy(p.model).double()
    probe = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(twin(probe), pruned(probe), rtol=0, atol=1e-12)


def test_dense_twin_rejects_another_architecture():
    x = torch.zeros(1, 1, 12, 12)
    p = inference.prune_to_reduction(resnet20(**TINY_RESNET), x, 2.0)
    with pytest.raises(ValueError, match="differ from the pruned model"):
        inference.dense_twin(p.model, lambda: resnet56(**TINY_RESNET), x)


def test_target_checks_by_hand():
    checks = inference.target_checks
    # ResNet-20: the ratio up to 2x, the dense twin at every reduction, batch 256 only
    assert checks("resnet20", 256, "remove", 2.0, 0.61, 1.09) == {
        "ratio": {"value": 0.61, "min": 0.6, "met": True},
        "vs_dense_twin": {"value": 1.09, "max": 1.1, "met": True}}
    got = checks("resnet20", 256, "remove", 1.5, 0.59, 1.2)
    assert not got["ratio"]["met"] and not got["vs_dense_twin"]["met"]
    assert checks("resnet20", 256, "remove", 3.0, 0.1, 1.0) == {
        "vs_dense_twin": {"value": 1.0, "max": 1.1, "met": True}}
    assert checks("resnet20", 1, "remove", 2.0, 0.1, 2.0) == {}
    # MobileNetV2: only the dense twin
    assert checks("mobilenet_v2", 256, "remove", 1.5, 0.01, 1.11) == {
        "vs_dense_twin": {"value": 1.11, "max": 1.1, "met": False}}
    # the MLP and the CNN: only the ratio, unchanged
    assert checks("mlp", 256, "remove", 5.0, 0.8) == {
        "ratio": {"value": 0.8, "min": 0.8, "met": True}}
    assert checks("mlp", 256, "remove", 10.0, 0.1) == {}
    assert checks("small_cnn", 256, "remove", 3.0, 0.49) == {
        "ratio": {"value": 0.49, "min": 0.5, "met": False}}
    assert checks("small_cnn", 256, "mask", 3.0, 0.9) == {}
    assert checks("vgg", 256, "remove", 2.0, 1.0, 1.0) == {}
    # ViT-tiny: as ResNet-20
    assert checks("vit_tiny", 256, "remove", 2.0, 0.59, 1.11) == {
        "ratio": {"value": 0.59, "min": 0.6, "met": False},
        "vs_dense_twin": {"value": 1.11, "max": 1.1, "met": False}}
    assert checks("vit_tiny", 256, "remove", 3.0, 0.1, 1.0) == {
        "vs_dense_twin": {"value": 1.0, "max": 1.1, "met": True}}
    assert checks("vit_tiny", 1, "remove", 2.0, 0.1, 2.0) == {}


@pytest.fixture(scope="module")
def run256():
    """Tiny models at batch 256, where the targets apply (the numbers are noise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = {**TINY, "batches": (256,), "reductions": (2, 5, 10), "mask_reduction": None,
                "vit_reductions": (2, 3)}
        return inference.main(["--quick", "--repeats", "2"], file=io.StringIO(), **tiny)
    finally:
        torch.set_num_threads(threads)


def test_targets_follow_from_the_case_numbers(run256):
    result = run256
    cases = result["cases"]
    assert {c["model"] for c in cases} == set(MODELS)
    for c in cases:
        t = inference.TARGETS[c["model"]]
        want = {}
        if "min_ratio" in t and c["target_reduction"] <= t["max_reduction"]:
            want["ratio"] = {"value": c["ratio"], "min": t["min_ratio"],
                             "met": c["ratio"] >= t["min_ratio"]}
        if "max_vs_dense_twin" in t:
            want["vs_dense_twin"] = {"value": c["vs_dense_twin"], "max": t["max_vs_dense_twin"],
                                     "met": c["ms"] / c["ms_dense_twin"]
                                     <= t["max_vs_dense_twin"]}
        assert c["target_checks"] == want, c
        assert c["in_target"] is bool(want)
        assert c["meets_target"] == (all(w["met"] for w in want.values()) if want else None)
    # in scope: the MLP up to 5x, the CNN up to 3x, the twinned models at every size
    scoped = {(c["model"], c["target_reduction"]) for c in cases if c["in_target"]}
    assert scoped == {("mlp", 2.0), ("mlp", 5.0), ("small_cnn", 2.0), ("vit_tiny", 2.0),
                      ("vit_tiny", 3.0)} | {
        (m, r) for m in ("resnet20", "mobilenet_v2") for r in (1.5, 2.0, 3.0)}
    vit = {c["target_reduction"]: c["target_checks"] for c in cases if c["model"] == "vit_tiny"}
    assert set(vit[2.0]) == {"ratio", "vs_dense_twin"} and set(vit[3.0]) == {"vs_dense_twin"}
    assert result["targets_met"] == all(c["meets_target"] for c in cases if c["in_target"])
