"""The regression comparison (experiments.studies.shrinknets.regression), run --quick.

One ``--quick`` run through the CLI (synthetic linear regression and
Fashion-MNIST logistic regression, three methods, a few strengths each),
then a rerun into the same folder. The numbers written are checked against
what they claim to be: sparsities and losses recomputed from the saved
weights and freshly loaded data, the constant predictor and lambda_max
recomputed independently (autograd), the normalized losses, envelopes and
their areas recomputed, and the proximal gradient descent of group sparsity
(one batch = the whole training set, a step under 1/L) never increasing its
objective, as the theory of proximal gradient descent guarantees.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_files import write_idx_dir

import experiments.studies.shrinknets.regression as sr
from experiments.cli import main
from experiments.harness.datasets import get_dataset, synthetic_regression

# the slow tier: every test here runs the regression reproduction
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    if all(any(SYSTEM.glob(f"{b}*")) for b in ("train-images-idx3-ubyte",
                                               "train-labels-idx1-ubyte",
                                               "t10k-images-idx3-ubyte",
                                               "t10k-labels-idx1-ubyte")):
        return ["--set", f"data_dir={json.dumps(str(SYSTEM))}"]
    d = tmp_path_factory.mktemp("fmnist")
    write_idx_dir(d, n_train=600, n_test=300, seed=1, gz=True)
    return ["--set", f"data_dir={json.dumps(str(d))}"]


def _run(out, data_args):
    return main(["run", "shrinknets-regression", "--quick", "--out", str(out), *data_args])


@pytest.fixture(scope="module")
def out(tmp_path_factory, data_args):
    out = tmp_path_factory.mktemp("shrinknets_regression")
    assert _run(out, data_args) == 0
    return out


@pytest.fixture(scope="module")
def results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def points(out):
    return {r["key"]: r for r in _rows(out / "points.csv")}


@pytest.fixture(scope="module")
def cfg(out):
    return json.loads((out / "config.json").read_text())["config"]


def _grid(cfg):
    keys = []
    for problem, pc in cfg["problems"].items():
        for m in cfg["methods"]:
            vals = pc["gs_ratios"] if m == "group-sparsity" else pc["sn_lams"]
            keys += [sr._key(problem, m, float(v), seed) for v in vals
                     for seed in range(pc["repetitions"])]
    return keys


def test_outputs_one_point_per_grid_value_and_resume(out, results, points, cfg, data_args):
    for name in ("config.json", "results.json", "points.csv", "means.csv", "fronts.csv",
                 "fig1_regression.png", "log.txt"):
        assert (out / name).exists(), name
    assert (out / "fig1_regression.png").read_bytes()[:8] == PNG
    keys = _grid(cfg)
    assert sorted(points) == sorted(keys)
    assert {p.stem for p in (out / "points").glob("*.json")} == set(keys)
    assert {p.stem for p in (out / "points").glob("*.pt")} == set(keys)
    assert (results["points"], results["points_computed"], results["points_reused"]) == \
        (len(keys), len(keys), 0)
    before = (out / "points.csv").read_text()
    assert _run(out, data_args) == 0  # finished points are not trained again
    again = json.loads((out / "results.json").read_text())
    assert (again["points_computed"], again["points_reused"]) == (0, len(keys))
    assert again["problems"] == results["problems"]
    assert (out / "points.csv").read_text() == before


def _problem_data(problem, cfg):
    """The problem's splits, rebuilt here from the loaders (float64, inputs flattened)."""
    if problem == "synthetic-regression":
        d = synthetic_regression(n_samples=cfg["n_samples"], noise=cfg["noise"],
                                 seed=cfg["data_seed"])
        return [tuple(t.double() for t in ds.tensors) for ds in (d.train, d.test)], True
    d = get_dataset("fashion-mnist", data_dir=cfg["data_dir"], limit=cfg["limit"],
                    seed=cfg["data_seed"], val_size=cfg["val_size"])
    xtr, ytr = d.train.tensors
    xte, yte = d.test.tensors
    xtr = xtr.reshape(len(xtr), -1).double()
    mu = xtr.mean(0)
    return [(xtr - mu, ytr), (xte.reshape(len(xte), -1).double() - mu, yte)], False


def _loss(x, y, a, b, regression):
    out = x @ a.T + b
    if regression:
        return float(((out - y) ** 2).mean(1).mean())
    return float(F.cross_entropy(out, y))


def test_sparsity_and_losses_are_those_of_the_saved_weights(out, points, cfg):
    assert cfg["threshold"] == 1e-3 and cfg["dtype"] == "float64"
    for problem in cfg["problems"]:
        ((xtr, ytr), (xte, yte)), regression = _problem_data(problem, cfg)
        for key, p in points.items():
            if p["problem"] != problem:
                continue
            w = torch.load(out / "points" / f"{key}.pt", weights_only=True)
            a, b = w["a_eff"], w["bias"]
            assert a.shape == (ytr.shape[1] if regression else 10, xtr.shape[1])
            cols = (a.abs() < 1e-3).all(dim=0)
            assert int(p["zero_columns"]) == int(cols.sum()), key
            assert float(p["sparsity"]) == int(cols.sum()) / a.shape[1], key
            assert int(p["exact_zero_columns"]) == int((a == 0).all(dim=0).sum()), key
            assert abs(float(p["test_loss"]) - _loss(xte, yte, a, b, regression)) <= \
                1e-9 * max(1.0, float(p["test_loss"])), key
            assert abs(float(p["train_loss"]) - _loss(xtr, ytr, a, b, regression)) <= \
                1e-9 * max(1.0, float(p["train_loss"])), key
            if not regression:
                acc = float((((xte @ a.T) + b).argmax(1) == yte).double().mean())
                assert float(p["test_acc"]) == acc


def test_reference_losses_and_lambda_max_recomputed(results, cfg):
    for problem in cfg["problems"]:
        ((xtr, ytr), (xte, yte)), regression = _problem_data(problem, cfg)
        ref = results["reference"][problem]
        k = ytr.shape[1] if regression else 10
        # the constant predictor, by numpy
        if regression:
            const = float(np.mean((yte.numpy() - ytr.numpy().mean(0)) ** 2))
        else:
            freq = np.bincount(ytr.numpy(), minlength=10) / len(ytr)
            const = float(-np.log(freq[yte.numpy()]).mean())
        assert abs(ref["constant_loss"] - const) <= 1e-12 * const
        assert results["problems"][problem]["loss_hi"] == ref["constant_loss"]
        # lambda_max by autograd at A = 0 and the best bias
        a = torch.zeros(k, xtr.shape[1], dtype=torch.float64, requires_grad=True)
        if regression:
            bias, loss = ytr.mean(0), None
            loss = ((xtr @ a.T + bias - ytr) ** 2).mean(1).mean()
        else:
            bias = torch.log(torch.bincount(ytr, minlength=10).double() / len(ytr))
            loss = F.cross_entropy(xtr @ a.T + bias, ytr)
        (grad,) = torch.autograd.grad(loss, a)
        lmax = float(grad.norm(dim=0).max()) / math.sqrt(k)
        assert abs(ref["lambda_max"] - lmax) <= 1e-10 * lmax


def _envelope_fn(pairs):
    """E(s) straight from its definition: the best loss at sparsity >= s, or None."""
    def e(level):
        ok = [v for sp, v in pairs if sp >= level]
        return min(ok) if ok else None
    return e


def _midpoint_area(e, upto, n=20000):
    grid = (np.arange(n) + 0.5) * upto / n
    return sum(e(g) for g in grid) * upto / n


def test_normalized_losses_means_envelopes_and_areas(out, results, points, cfg):
    fronts = _rows(out / "fronts.csv")
    means_csv = _rows(out / "means.csv")
    assert cfg["problems"]["synthetic-regression"]["repetitions"] == 2  # means over 2 seeds
    for problem, s in results["problems"].items():
        pts = [p for p in points.values() if p["problem"] == problem]
        lo = min(float(p["test_loss"]) for p in pts)
        hi = results["reference"][problem]["constant_loss"]
        assert s["loss_lo"] == lo and lo < hi
        for p in pts:
            norm = (float(p["test_loss"]) - lo) / (hi - lo)
            assert abs(float(p["normalized_test_loss"]) - norm) <= 1e-12
            assert norm >= 0.0  # (> 1 for a point that fits worse than the constant predictor)
        means = {}
        for p in pts:
            means.setdefault((p["method"], float(p["value"])), []).append(p)
        rows = [r for r in means_csv if r["problem"] == problem]
        assert len(rows) == len(means)
        for r in rows:
            grp = means[(r["method"], float(r["value"]))]
            assert int(r["n"]) == len(grp) == cfg["problems"][problem]["repetitions"]
            for col in ("sparsity", "normalized_test_loss", "test_loss"):
                assert abs(float(r[col]) - np.mean([float(p[col]) for p in grp])) <= 1e-12
        common = min(s["max_sparsity"].values())
        assert s["common_sparsity"] == common
        level_rows = [r for r in fronts if r["problem"] == problem]
        for m in cfg["methods"]:
            pairs = [(float(r["sparsity"]), float(r["normalized_test_loss"])) for r in rows
                     if r["method"] == m]
            assert s["max_sparsity"][m] == max(v for v, _ in pairs)
            e = _envelope_fn(pairs)
            values = []
            for r in level_rows:
                want = e(float(r["sparsity_at_least"]))
                assert (r[m] == "" and want is None) or abs(float(r[m]) - want) <= 1e-15
                if want is not None:
                    values.append(want)
            assert values == sorted(values)  # non-decreasing in the sparsity asked for
            assert abs(s["area"][m] - _midpoint_area(e, common)) <= 2e-3
        assert s["ranking"] == sorted(s["area"], key=s["area"].get)
        for r in level_rows:  # "best" names the lowest envelope where every method has one
            vals = {m: float(r[m]) for m in cfg["methods"] if r[m] != ""}
            assert r["best"] == (min(vals, key=vals.get) if len(vals) == 3 else "")
        for ps in s["per_seed"]:
            sp = [p for p in pts if int(p["seed"]) == ps["seed"]]
            fns = {m: [(float(p["sparsity"]), float(p["normalized_test_loss"])) for p in sp
                       if p["method"] == m] for m in cfg["methods"]}
            c = min(max(v for v, _ in f) for f in fns.values())
            assert ps["common_sparsity"] == c
            for m, f in fns.items():
                assert abs(ps["area"][m] - _midpoint_area(_envelope_fn(f), c)) <= 2e-3


def test_proximal_gradient_descent_never_increases_its_objective(out, points, cfg):
    """Full-batch prox-GD with step t <= 1/L: F(x_{k+1}) <= F(x_k) (Beck & Teboulle 2009).

    L is the Lipschitz constant of the gradient of the mean squared error per
    target, 2 lambda_max(X~^T X~) / (n T) with X~ = [X, 1]; the grid point at
    lambda = 2 lambda_max must end at A = 0 (its unique minimizer), lambda = 0
    is plain gradient descent and keeps every column.
    """
    pc = cfg["problems"]["synthetic-regression"]
    ((xtr, ytr), _), _ = _problem_data("synthetic-regression", cfg)
    n, t_out = xtr.shape[0], ytr.shape[1]
    assert pc["batch_size"] >= n  # one batch: deterministic gradients
    xt = torch.cat([xtr, torch.ones(n, 1, dtype=torch.float64)], 1)
    lip = 2 * float(torch.linalg.eigvalsh(xt.T @ xt).max()) / (n * t_out)
    assert pc["gs_lr"] <= 1 / lip
    seen = 0
    for key, p in points.items():
        if p["problem"] != "synthetic-regression" or p["method"] != "group-sparsity":
            continue
        rec = json.loads((out / "points" / f"{key}.json").read_text())
        obj = rec["objective"]
        assert len(obj) == pc["epochs"]
        for k in range(1, len(obj)):
            assert obj[k] <= obj[k - 1] * (1 + 1e-12), (key, k)
        lrs = [r[1] for r in rec["objective_log"]]
        assert lrs == sorted(lrs, reverse=True) and lrs[0] == pc["gs_lr"]
        if rec["ratio"] == 0:
            assert rec["zero_columns"] == 0
        if rec["ratio"] >= 1:
            assert rec["exact_zero_columns"] == rec["columns"]
        seen += 1
    assert seen == len(pc["gs_ratios"]) * pc["repetitions"]


def test_envelope_helpers_on_hand_examples():
    env = sr.envelope([(0.0, 0.5), (0.2, 0.1), (0.2, 0.3), (0.6, 0.4), (0.9, 0.35)])
    assert env == [(0.0, 0.1), (0.2, 0.1), (0.6, 0.35), (0.9, 0.35)]
    assert sr.envelope_at(env, 0.3) == 0.35 and sr.envelope_at(env, 0.95) is None
    # 0.2 * 0.1 + 0.4 * 0.35 + 0.2 * 0.35
    assert abs(sr.envelope_area(env, 0.8) - (0.02 + 0.14 + 0.07)) <= 1e-15
    with pytest.raises(ValueError):
        sr.envelope_area(env, 0.95)
    decay = sr.LRDecay(0.1, 10, start=0.5, final=0.01)
    assert [decay.rate(e) for e in (1, 4)] == [0.1, 0.1]
    assert abs(decay.rate(10) - 0.001) <= 1e-15 and abs(decay.rate(7) - 0.1 * 0.01 ** 0.4) \
        <= 1e-15
