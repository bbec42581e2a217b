"""ShrinkNets against static networks (experiments.studies.shrinknets.vs_static), on generated data.

The MLP driver runs ``--quick`` end to end through the CLI into a temporary
folder, twice (the second run must resume without training anything); the
VGG trials run ``--quick`` once each. The tests then recompute every
reported number from the files: the second-half epoch from the histories,
the sizes from the saved folded networks loaded on their own, the Pareto
fronts by brute force and the size ratios from ``results.csv``.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from data_files import write_idx_dir

from experiments.cli import main
from experiments.harness.checkpoint import fit_to_state_dict, load_checkpoint, model_from_checkpoint
from experiments.harness.models import build_model
from experiments.studies.shrinknets.vs_static import best_second_half, size_ratios, smallest_at
from pruners import count_params, trace
from pruners.shrinknets import insert_switches, switches

# the slow tier: every test here runs ShrinkNets trials and sweeps
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
METHODS = ("shrinknets", "static")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrinknets_data")
    write_idx_dir(root / "fmnist", n_train=600, n_test=100, seed=1, gz=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(root / "fmnist"))
        yield root


@pytest.fixture(scope="module")
def driver(fmnist, tmp_path_factory):
    """The quick MLP driver, run twice into the same folder: (folder, results, mtimes)."""
    out = tmp_path_factory.mktemp("shrinknets_repro") / "mlp"
    args = ["run", "shrinknets-vs-static-mlp", "--quick", "--out", str(out),
            "--set", "val_size=100"]
    assert main(args) == 0
    first = _json(out / "results.json")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/trials/*/results.json")}
    assert main(args) == 0
    return out, first, _json(out / "results.json"), stamps


def _trial_dirs(out, method):
    return sorted(p.parent for p in (out / method / "trials").glob("*/results.json"))


def _check_trial(folder, method):
    """Every number a trial reports, recomputed from its files."""
    res = _json(folder / "results.json")
    final, hist = res["final"], res["history"]
    n = len(hist)
    assert final["epochs_run"] == n
    # best validation epoch among epochs > n/2, earliest on ties, by brute force
    second = [r for r in hist if r["epoch"] > n / 2]
    top = max(r["val_acc"] for r in second)
    best = next(r for r in second if r["val_acc"] == top)
    assert final["best_epoch"] == best["epoch"] > n / 2
    assert final["test_acc"] == best["test_acc"] and final["val_acc"] == best["val_acc"]
    csv_hist = _rows(folder / "history.csv")
    assert float(csv_hist[best["epoch"] - 1]["test_acc"]) == final["test_acc"]
    # the folded network saved for that epoch, loaded on its own
    ckpt = torch.load(folder / "folded.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == best["epoch"]
    folded = model_from_checkpoint(ckpt)
    assert not switches(folded)
    assert final["params"] == count_params(folded) == best["folded_params"]
    ex = torch.zeros((1, 1, 28, 28))
    graph = trace(folded, ex)
    assert {f"width/{k}": graph.producers[k].num_units for k in graph.prunable} == \
        {k: v for k, v in final.items() if k.startswith("width/")}
    assert final["initial_params"] == count_params(build_model(**_arch(res["model"])))
    assert final["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in hist))
    assert not list((folder / "snapshots").glob("*.pt"))  # only the picked epoch is kept
    if method == "shrinknets":
        assert final["params"] < final["switched_params"] == best["params"]
        # the switched network has one gate per live unit more, nothing else
        assert final["switched_params"] - final["params"] == \
            sum(graph.producers[k].num_units for k in graph.prunable)
        assert final["params"] <= final["initial_params"]
        if best["epoch"] == n:  # the folded network computes what the switched one did
            tr = load_checkpoint(folder / "checkpoint.pt")
            net = insert_switches(build_model(**_arch(res["model"])), ex)
            fit_to_state_dict(net, tr["state_dict"])
            net.load_state_dict(tr["state_dict"])
            x = torch.rand(16, 1, 28, 28)
            with torch.no_grad():
                torch.testing.assert_close(folded.eval()(x), net.eval()(x), rtol=1e-4,
                                           atol=1e-5)
    else:
        assert final["params"] == final["switched_params"] == final["initial_params"]
    return res


def _arch(model):
    return {"name": model["model"], **model["kwargs"]}


def test_mlp_trials_report_second_half_epoch_and_folded_sizes(driver):
    out, first, _, _ = driver
    cfg = _json(out / "config.json")["config"]
    assert cfg["trials"] == 3
    for method in METHODS:
        dirs = _trial_dirs(out, method)
        assert len(dirs) == cfg["trials"]
        for d in dirs:
            res = _check_trial(d, method)
            tcfg = _json(d / "config.json")["config"]
            assert tcfg["optimizer"] == "adam" and tcfg["lr_rule"] == "plateau"
            assert tcfg["patience"] == 5 and tcfg["factor"] == 0.1 and tcfg["min_lr"] == 1e-7
            if method == "static":
                widths = res["model"]["kwargs"]["widths"]
                assert widths[1:3] == [tcfg["width1"], tcfg["width2"]]
            else:
                assert tcfg["switch"] == "relu" and tcfg["lam"] > 0
    # same trial budget and sweep seed for both methods
    for method in METHODS:
        sweep = _json(out / method / "sweep.json")
        assert sweep["random"] == cfg["trials"] and sweep["seed"] == cfg["seed"]


def test_fronts_are_pareto_optimal_by_brute_force(driver):
    out, _, res, _ = driver
    table = _rows(out / "fronts.csv")
    for method in METHODS:
        rows = _rows(out / method / "results.csv")
        pts = [(r["id"], float(r["params"]), float(r["test_acc"])) for r in rows]
        brute = {i for i, s, a in pts
                 if not any((s2 <= s and a2 >= a) and (s2 < s or a2 > a) for _, s2, a2 in pts)}
        assert {r["id"] for r in res["fronts"][method]} == brute
        assert {r["id"] for r in table if r["method"] == method and r["on_front"] == "True"} \
            == brute
        front = sorted(res["fronts"][method], key=lambda r: r["params"])
        assert all(a["test_acc"] < b["test_acc"] for a, b in zip(front, front[1:]))
    assert (out / "pareto.png").read_bytes()[:8] == PNG


def test_size_ratios_recomputed_from_results_csv(driver):
    out, _, res, _ = driver
    st = _rows(out / "static" / "results.csv")
    sn = _rows(out / "shrinknets" / "results.csv")
    best = max(float(r["test_acc"]) for r in st)
    assert res["best_static_acc"] == best
    assert res["best_shrinknets_acc"] == max(float(r["test_acc"]) for r in sn)
    reported = {r["drop_points"]: r for r in res["size_ratios"]}
    assert sorted(reported) == [0.0, 0.5, 1.0]
    for drop, r in reported.items():
        level = best - drop / 100
        s1 = [x for x in st if float(x["test_acc"]) >= level - 1e-12]
        s2 = [x for x in sn if float(x["test_acc"]) >= level - 1e-12]
        assert s1  # the best static network reaches every level
        p1 = min(float(x["params"]) for x in s1)
        assert r["static_params"] == p1
        if s2:
            p2 = min(float(x["params"]) for x in s2)
            assert r["shrinknets_params"] == p2 and r["ratio"] == pytest.approx(p1 / p2)
        else:
            assert r["shrinknets_params"] is None and r["ratio"] is None
    csv_ratios = _rows(out / "size_ratios.csv")
    assert [float(r["drop_points"]) for r in csv_ratios] == [0.0, 0.5, 1.0]
    gap = 100 * (best - res["best_shrinknets_acc"])
    t = res["targets"]["front_within_0.3_points"]
    assert t["value"] == pytest.approx(gap) and t["met"] == (gap <= 0.3)


def test_speed_pairs_the_smallest_models_per_level(driver):
    out, _, res, _ = driver
    st = _rows(out / "static" / "results.csv")
    sn = _rows(out / "shrinknets" / "results.csv")
    speed = res["speed"]
    levels = sorted({float(r["test_acc"]) for r in st + sn})
    both = [lv for lv in levels if smallest_at(st, lv) and smallest_at(sn, lv)]
    assert [r["level"] for r in speed] == both and speed
    for r in speed:
        assert r["static_id"] == smallest_at(st, r["level"])["id"]
        assert r["shrinknets_id"] == smallest_at(sn, r["level"])["id"]
        assert r["size_ratio"] == pytest.approx(r["static_params"] / r["shrinknets_params"])
        for b in (1, 256):
            assert r[f"static_ms_b{b}"] > 0 and r[f"shrinknets_ms_b{b}"] > 0
            assert r[f"speedup_b{b}"] == pytest.approx(r[f"static_ms_b{b}"]
                                                       / r[f"shrinknets_ms_b{b}"])
    for name in ("speed.png", "widths.png"):
        assert (out / name).read_bytes()[:8] == PNG
    widths = _rows(out / "widths.csv")
    picked = res["widths"]["most accurate"]
    hist = _json(out / "shrinknets" / "trials" / picked / "results.json")["history"]
    mine = [r for r in widths if r["id"] == picked and r["trial"] == "most accurate"]
    assert [int(r["width/fc1"]) for r in mine] == [h["width/fc1"] for h in hist]
    assert all(int(a["width/fc1"]) >= int(b["width/fc1"]) for a, b in zip(mine, mine[1:]))


def test_driver_resumes_without_rerunning_trials(driver):
    out, first, second, stamps = driver
    assert all(len(first["ran_now"][m]) == 3 for m in METHODS)
    assert second["ran_now"] == {"shrinknets": [], "static": []}
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    for key in ("fronts", "size_ratios", "best_static_acc", "best_shrinknets_acc"):
        assert second[key] == first[key]


@pytest.mark.parametrize("name", ["shrinknets-vgg", "static-vgg"])
def test_vgg_trial(fmnist, tmp_path, name):
    out = tmp_path / name  # two epochs: the second half is the last epoch
    assert main(["run", name, "--quick", "--out", str(out), "--set", "val_size=100",
                 "--set", "epochs=2"]) == 0
    res = _check_trial(out, name.split("-")[0])
    assert res["final"]["best_epoch"] == 2  # so the folded network was checked against the
    # switched one (BatchNorm folding)
    kw = res["model"]["kwargs"]
    assert res["model"]["model"] == "vgg" and kw["config"] == "vgg-small"
    cfg = _json(out / "config.json")["config"]
    assert kw["width"] == pytest.approx((2.0 if name.startswith("shrink") else cfg["width_mult"])
                                        * cfg["base_width"])
    # a finished trial with other settings in the same folder is refused
    assert main(["run", name, "--quick", "--out", str(out), "--set", "val_size=100",
                 "--set", "epochs=2", "--set", "lam2=0.5"]) != 0


def test_best_second_half_and_ratio_helpers():
    h = [{"epoch": e, "val_acc": v} for e, v in enumerate([0.9, 0.5, 0.6, 0.6, 0.4], 1)]
    assert best_second_half(h)["epoch"] == 3  # epochs 3-5 of 5; tie -> earlier; epoch 1 ignored
    assert best_second_half(h[:4])["epoch"] == 3  # epochs 3-4 of 4
    assert best_second_half(h[:1])["epoch"] == 1
    with pytest.raises(ValueError):
        best_second_half([])
    st = [{"id": "a", "params": 100, "test_acc": 0.90}, {"id": "b", "params": 40,
                                                        "test_acc": 0.895},
          {"id": "c", "params": 10, "test_acc": 0.891}]
    sn = [{"id": "x", "params": 20, "test_acc": 0.901}, {"id": "y", "params": 4,
                                                        "test_acc": 0.889}]
    r = {x["drop_points"]: x for x in size_ratios(st, sn)}
    assert (r[0.0]["static_id"], r[0.0]["shrinknets_id"], r[0.0]["ratio"]) == ("a", "x", 5.0)
    assert (r[0.5]["static_id"], r[0.5]["shrinknets_id"], r[0.5]["ratio"]) == ("b", "x", 2.0)
    assert (r[1.0]["static_id"], r[1.0]["shrinknets_id"], r[1.0]["ratio"]) == ("c", "x", 0.5)
    assert math.isclose(r[1.0]["level"], 0.89)
