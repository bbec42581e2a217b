"""ShrinkNets against group sparsity on linear and logistic regression (draft Sec. 5.1, Fig. 1).

``python -m experiments run shrinknets-regression [--quick]``

The ShrinkNets draft, *Learning Network Size while Training with ShrinkNets*
(2018; the earlier draft of *ShrinkNets: Learning Network Size while
Training*, public as G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska,
S. Madden, *Smallify: Learning Network Size while Training*,
https://arxiv.org/abs/1806.03723), Sec. 4.2 eq. 5-10, Sec. 5.1 and Fig. 1,
compares two ways of selecting the *inputs* of a
one-layer model ``y = A x + b``:

* **group sparsity** (eq. 5-6, 8): ``min_A L(A) + lambda sum_j sqrt(#theta_j)
  ||(A^T)_j||_2``, the groups being the columns of ``A`` (one per input);
* **ShrinkNets** (eq. 7, 9-10): a switch ``beta_j`` on each input feature,
  ``min_{A, beta} L(A diag(beta)) + lambda ||beta||_1 + lambda_2 ||A||_p^p``,

fits each "with different regularization parameters" chosen "to obtain the
widest sparsity spectrum", and plots the loss after convergence against the
sparsity, "the ratio of columns that have all their weight under 1e-3 in
absolute value", with the loss "normalized depending on the problem to be in
the [0, 1] range". Its finding: "ShrinkNets can fit the data closer than Group
Sparsity for the same amount of sparsity".

What runs here, for each problem, method, strength and seed (a *grid point*):

* **Problems.** (i) multi-target linear regression on the harness's seeded
  ``synthetic-regression`` (280 inputs, 28 relevant, 16 targets, noise
  variance 1; loss: MSE per target, :func:`experiments.studies.shrinknets.gamma.mse_per_target`),
  standing in for scm1d / oes97; (ii) multi-class logistic regression on
  Fashion-MNIST pixels (784 inputs, 10 classes, cross-entropy), standing in
  for the draft's gina_prior2 / gas-sensor data. The pixels are centred with
  the training mean of each pixel: ``A (x - mu) + b = A x + (b - A mu)``, the
  same models and the same penalty on ``A`` (only better conditioned for SGD).
* **Models** (:func:`experiments.studies.shrinknets.gamma.build_model` without its
  identity selector, so a 784-input problem does not pay a 784 x 784 product
  per sample): ``Linear(p, t)`` for group sparsity; ``Switch(p)`` then
  ``Linear(p, t)`` for ShrinkNets. Seed ``s`` gives every method the same
  initial ``A`` and ``b``.
* **Group sparsity** is trained by proximal stochastic gradient descent:
  plain SGD, then :class:`pruners.ProximalGroupSparsity` with the
  ``"columns"`` grouping (``P = t`` targets, so the penalty is eq. 5 with
  ``sqrt(#theta_j) = sqrt(t)``), through
  :class:`experiments.harness.callbacks.GroupSparsityCallback`, whose step size is the
  current learning rate. Its strength is given as a multiple ``r`` of
  ``lambda_max = max_j ||grad_{A_j} L(0, b*)||_2 / sqrt(P)`` (``b*`` the best
  bias without inputs), computed from the training data: for
  ``lambda >= lambda_max``, ``A = 0`` is the minimizer (convexity; unique for
  ``lambda > lambda_max``), so a grid from ``r = 0`` (no penalty) to ``r = 2``
  covers the whole path of solutions.
* **ShrinkNets** adds ``lambda ||g||_1 + lambda_2 ||theta||_2^2``
  (:func:`pruners.shrinknets.shrinknets_penalty`, eq. 9-10 with ``p = 2``)
  to the loss and trains with Adam (the ShrinkNets paper's optimizer), in two
  variants: ``shrinknets``, the draft's filter ``g = max(0, theta)``, ``theta
  ~ U[0, 1]`` (draft eq. 1-2: a gate that reaches 0 is off for good), and
  ``shrinknets-signed``, the paper's ``g = beta ~ N(0, 1)``. Its effective
  weights are ``A diag(g)``; sparsity is measured on their columns.
* **Schedule.** Every run takes the same number of epochs per problem; the
  learning rate is constant for the first ``decay_start`` of them, then falls
  geometrically to ``decay_final`` times its initial value at the last
  epoch (stochastic gradients need a decreasing step to converge; the
  proximal step follows the rate).

Measured per grid point (``points.csv``; weights in ``points/<key>.pt``):
held-out (test) loss, training loss, test accuracy for classification, the
number of columns whose every effective weight is under ``threshold`` (1e-3)
in absolute value and the sparsity (their fraction), the penalized training
objective after every epoch. The loss is normalized per problem as
``(L - L_lo) / (L_hi - L_lo)``: ``L_hi`` is the held-out loss of the best
constant predictor fitted on the training set (what sparsity 1 allows),
``L_lo`` the lowest held-out loss of any grid point of that problem.

Seeds: seed ``s`` sets the initialization and the data order of every
method's run (the data set itself is fixed by ``data_seed``); each problem
has its own number of ``repetitions``. ``means.csv``: per problem, method
and strength, the mean and sample standard deviation over seeds of the
sparsity and the (normalized) loss.

Fronts (``fronts.csv``, ``results.json``): for each problem and method the
lower envelope of the mean points, ``E(s) = min {normalized loss of a
strength whose mean sparsity is >= s}``, a non-decreasing step function (the
best fit that method found at sparsity ``s`` or more); its values at
standard sparsity levels with the lowest method at each, its area over the
sparsity range every method reaches (lower: closer fits at equal sparsity),
and the same areas seed by seed. ``fig1_regression.png``: the draft's Fig. 1,
the points and envelopes per problem (linear and log loss axes).

Resumable: each finished grid point is written to ``points/<key>.json``
(after its weights), with the settings it ran with; a rerun reuses every
point whose settings match and trains only the others.

Reproduces the ShrinkNets draft, Sec. 5.1 / Fig. 1.
"""

from __future__ import annotations

import io as _pyio
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from experiments.harness import atomic
from experiments.harness.callbacks import GroupSparsityCallback
from experiments.harness.datasets import get_dataset
from experiments.harness.registry import register
from experiments.harness.run import RunContext
from experiments.harness.training import Callback, TrainConfig, Trainer, evaluate
from experiments.studies.shrinknets.gamma import build_model, load_synthetic, mse_per_target
from pruners import ProximalGroupSparsity
from pruners.shrinknets import shrinknets_penalty, switches

__all__ = ["METHODS", "PROBLEMS", "LRDecay", "ObjectiveLog", "load_problem",
           "constant_loss", "lambda_max", "effective_weights", "sparsity", "envelope",
           "envelope_at", "envelope_area", "run_point", "summarize", "plot_fronts"]

METHODS = ("group-sparsity", "shrinknets", "shrinknets-signed")
PROBLEMS = ("synthetic-regression", "fashion-mnist")
#: the switch parametrization and initialization of each ShrinkNets variant
_SWITCH = {"shrinknets": ("relu", "uniform"), "shrinknets-signed": ("signed", "normal")}
#: sparsity levels at which the envelopes are tabulated
LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)

_PROBLEM_KEYS = ("epochs", "batch_size", "gs_lr", "sn_lr", "repetitions", "gs_ratios", "sn_lams")
_RUN_KEYS = ("n_samples", "noise", "data_seed", "limit", "val_size", "lam2", "decay_start",
             "decay_final", "dtype")

_DEFAULTS: dict[str, Any] = {
    "problems": {
        "synthetic-regression": {
            "epochs": 60, "batch_size": 64, "gs_lr": 0.5, "sn_lr": 0.01, "repetitions": 3,
            "gs_ratios": [0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.07,
                          0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0],
            "sn_lams": [0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.01,
                        0.015, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 5.0, 20.0],
        },
        "fashion-mnist": {
            "epochs": 15, "batch_size": 128, "gs_lr": 0.2, "sn_lr": 0.01, "repetitions": 1,
            "gs_ratios": [0.0, 0.001, 0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
                          0.6, 0.7, 0.8, 1.0, 2.0],
            "sn_lams": [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 0.01, 0.02, 0.03,
                        0.05, 0.1, 0.3, 1.0],
        },
    },
    "methods": list(METHODS),
    "lam2": 1e-4,
    "threshold": 1e-3,
    "decay_start": 0.5,
    "decay_final": 0.01,
    "n_samples": 2000,
    "noise": 1.0,
    "data_seed": 0,
    "data_dir": None,
    "limit": None,
    "val_size": 5000,
    "threads": 1,
    "dtype": "float32",
}
_QUICK: dict[str, Any] = {
    "problems": {
        "synthetic-regression": {   # one batch holding the whole training set: prox-GD
            "epochs": 40, "batch_size": 256, "gs_lr": 0.5, "sn_lr": 0.01, "repetitions": 2,
            "gs_ratios": [0.0, 0.05, 0.3, 2.0], "sn_lams": [0.0, 0.01, 0.1, 3.0]},
        "fashion-mnist": {
            "epochs": 3, "batch_size": 100, "gs_lr": 0.2, "sn_lr": 3e-3, "repetitions": 1,
            "gs_ratios": [0.0, 0.1, 2.0], "sn_lams": [0.0, 0.01, 1.0]},
    },
    "n_samples": 400,
    "limit": 300,
    "val_size": 100,
    "dtype": "float64",
}


# --------------------------------------------------------------------------- data


def load_problem(problem: str, cfg: Mapping[str, Any]):
    """``(train, val, test, n_outputs, loss_fn, info)`` of a problem, inputs flattened.

    ``synthetic-regression`` comes from :func:`experiments.studies.shrinknets.gamma.load_synthetic`
    (``n_samples``, ``noise``, ``data_seed``); ``fashion-mnist`` from
    :func:`experiments.harness.datasets.get_dataset` (``data_dir``, ``limit``,
    ``val_size``, ``data_seed``) with each pixel centred by its training mean.
    """
    dtype = getattr(torch, cfg["dtype"])
    if problem == "synthetic-regression":
        data, train, val, test = load_synthetic(problem, {**cfg, "dtype": cfg["dtype"]})
        info = {"relevant": data.relevant.tolist(), "n_relevant": int(data.relevant.numel())}
        return train, val, test, int(train.tensors[1].shape[1]), mse_per_target, info
    if problem == "fashion-mnist":
        data = get_dataset("fashion-mnist", data_dir=cfg.get("data_dir") or None,
                           limit=cfg.get("limit"), seed=int(cfg["data_seed"]),
                           val_size=cfg["val_size"])
        parts = []
        for ds in (data.train, data.val, data.test):
            x, y = ds.tensors
            parts.append((x.reshape(len(x), -1).to(torch.float64), y))
        mu = parts[0][0].mean(dim=0)
        sets = [TensorDataset((x - mu).to(dtype), y) for x, y in parts]
        return (*sets, int(data.num_classes), F.cross_entropy,
                {"source": data.info.get("source"), "pixel_mean_range":
                 [float(mu.min()), float(mu.max())]})
    raise ValueError(f"unknown problem {problem!r}; choose from {PROBLEMS}")


def _is_regression(loss_fn) -> bool:
    return loss_fn is mse_per_target


def constant_loss(train: TensorDataset, test: TensorDataset, loss_fn) -> float:
    """Held-out loss of the best constant predictor fitted on ``train`` (float64).

    Regression: the training mean of each target (the minimizer of the mean
    squared error); classification: the logits ``log`` of the training class
    frequencies (the minimizer of the cross-entropy). It is what a model
    whose input columns are all zero can reach at best, sparsity 1.
    """
    y_tr, y_te = train.tensors[1], test.tensors[1]
    if _is_regression(loss_fn):
        mean = y_tr.to(torch.float64).mean(dim=0)
        return float(((y_te.to(torch.float64) - mean) ** 2).mean(dim=1).mean())
    k = int(max(int(y_tr.max()), int(y_te.max())) + 1)
    freq = torch.bincount(y_tr, minlength=k).to(torch.float64) / len(y_tr)
    logp = torch.log(freq.clamp_min(1e-300))
    return float(-logp[y_te].mean())


def lambda_max(train: TensorDataset, loss_fn) -> float:
    """``max_j ||d L / d A_j||_2 / sqrt(P)`` at ``A = 0`` and the best bias ``b*``.

    For the group-sparsity problem ``L(A, b) + lambda sqrt(P) sum_j ||A_j||``
    (convex), ``A = 0`` with ``b = b*`` is a minimizer exactly when ``lambda``
    is at least this value (its optimality condition ``||grad_j|| <= lambda
    sqrt(P)`` for every column ``j``). ``P`` is the number of outputs.
    """
    x, y = (t.to(torch.float64) if t.is_floating_point() else t for t in train.tensors)
    n = x.shape[0]
    if _is_regression(loss_fn):
        resid = y.mean(dim=0, keepdim=True) - y          # prediction b* - y
        grad = 2.0 / (n * y.shape[1]) * resid.T @ x       # t x p
    else:
        k = int(y.max()) + 1
        freq = torch.bincount(y, minlength=k).to(torch.float64) / n
        grad = (freq[None, :] - F.one_hot(y, k).to(torch.float64)).T @ x / n
    return float(torch.linalg.vector_norm(grad, dim=0).max() / math.sqrt(grad.shape[0]))


# --------------------------------------------------------------------------- training pieces


class LRDecay(Callback):
    """Constant learning rate, then a geometric decay to ``final x lr`` at the last epoch.

    After epoch ``e`` (of ``E``) the rate becomes ``lr`` while ``e < start E``
    and ``lr final^((e - start E) / ((1 - start) E))`` after, so the last
    epochs run at small steps. The proximal step of group sparsity reads the
    rate from the optimizer, so it decays alike.
    """

    def __init__(self, lr: float, epochs: int, start: float = 0.5, final: float = 0.01):
        if not 0.0 <= start < 1.0 or not 0.0 < final <= 1.0:
            raise ValueError(f"need 0 <= start < 1 and 0 < final <= 1, got {start}, {final}")
        self.lr, self.epochs, self.start, self.final = float(lr), int(epochs), start, final

    def rate(self, epoch: int) -> float:
        """The learning rate of the epoch after ``epoch`` epochs are done."""
        begin = self.start * self.epochs
        if epoch < begin:
            return self.lr
        return self.lr * self.final ** min(1.0, (epoch - begin) / ((1 - self.start) * self.epochs))

    def on_epoch_end(self, trainer, metrics):
        trainer.set_lr(self.rate(trainer.epoch))


class ObjectiveLog(Callback):
    """After every epoch: the penalized objective on the whole training set.

    ``objective = mean training loss (eval mode) + penalty()`` with the
    parameters at the end of the epoch; recorded in :attr:`rows` as
    ``[epoch, lr used in the epoch, loss, penalty]``.
    """

    def __init__(self, penalty):
        self.penalty = penalty
        self.rows: list[list[float]] = []

    def on_epoch_end(self, trainer, metrics):
        loss = evaluate(trainer.model, trainer.train_set, batch_size=100_000,
                        loss_fn=trainer.loss_fn)["loss"]
        with torch.no_grad():
            pen = float(self.penalty())
        self.rows.append([trainer.epoch, trainer.lr, loss, pen])


class _Penalty(Callback):
    """Adds ShrinkNets' ``lambda ||g||_1 + lambda_2 ||theta||_2^2`` to the loss (eq. 9-10)."""

    def __init__(self, lam: float, lam2: float):
        self.lam, self.lam2 = lam, lam2

    def loss(self, trainer, loss):
        return loss + shrinknets_penalty(trainer.model, self.lam, self.lam2, 2)


def effective_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_eff, b)`` of a one-layer model: ``A`` (group sparsity) or ``A diag(g)`` (ShrinkNets)."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(lin) != 1:
        raise ValueError("effective_weights expects a model with one Linear layer")
    w = lin[0].weight.detach()
    sw = list(switches(model).values())
    if sw:
        w = w * sw[0].gate().detach()[None, :]
    return w.clone(), lin[0].bias.detach().clone()


def sparsity(a_eff: torch.Tensor, threshold: float = 1e-3) -> tuple[int, float]:
    """``(columns, fraction)`` of columns of ``a_eff`` whose every entry is under ``threshold``."""
    small = (a_eff.abs() < threshold).all(dim=0)
    return int(small.sum()), float(small.sum()) / a_eff.shape[1]


def _key(problem: str, method: str, value: float, seed: int) -> str:
    return f"{problem}_{method}_{value:g}_s{seed}"


def _settings(cfg, problem, method, value, seed) -> dict[str, Any]:
    pcfg = cfg["problems"][problem]
    out = {k: cfg[k] for k in _RUN_KEYS}
    out.update({"problem": problem, "method": method, "value": float(value), "seed": int(seed),
                "epochs": pcfg["epochs"], "batch_size": pcfg["batch_size"],
                "lr": pcfg["gs_lr"] if method == "group-sparsity" else pcfg["sn_lr"]})
    return atomic.to_jsonable(out)


def run_point(cfg: Mapping[str, Any], problem: str, loaded, method: str, value: float,
              seed: int, lmax: float) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train one grid point; return its record and its effective weights.

    ``value`` is ``r = lambda / lambda_max`` for group sparsity and ``lambda``
    for ShrinkNets.
    """
    train, val, test, n_out, loss_fn, _ = loaded
    pcfg = cfg["problems"][problem]
    dtype = getattr(torch, cfg["dtype"])
    n_in = train.tensors[0].shape[1]
    epochs = int(pcfg["epochs"])
    torch.manual_seed(int(seed))
    if method == "group-sparsity":
        model = build_model(n_in, n_out, dtype=dtype, selector=False, switched=False)
        lam = float(value) * lmax
        prox = ProximalGroupSparsity(model, lam, groups={"0": "columns"})
        lr, opt = float(pcfg["gs_lr"]), "sgd"
        callbacks: list[Callback] = [GroupSparsityCallback(prox, log_every=10 ** 9)]
        penalty = prox.penalty
    else:
        par, init = _SWITCH[method]
        model = build_model(n_in, n_out, dtype=dtype, selector=False, parametrization=par,
                            init=init)
        lam = float(value)
        lr, opt = float(pcfg["sn_lr"]), "adam"
        callbacks = [_Penalty(lam, float(cfg["lam2"]))]

        def penalty(model=model, lam=lam):
            return shrinknets_penalty(model, lam, float(cfg["lam2"]), 2)
    log = ObjectiveLog(penalty)  # before the decay, so it records the rate the epoch ran with
    callbacks += [log, LRDecay(lr, epochs, float(cfg["decay_start"]), float(cfg["decay_final"]))]
    tcfg = TrainConfig(epochs=epochs, batch_size=int(pcfg["batch_size"]), optimizer=opt, lr=lr,
                       seed=int(seed), lr_rule="constant")
    trainer = Trainer(model, train, config=tcfg, callbacks=callbacks, loss_fn=loss_fn,
                      progress=False)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    a_eff, bias = effective_weights(model)
    zero_cols, frac = sparsity(a_eff, float(cfg["threshold"]))
    rec: dict[str, Any] = {
        "key": _key(problem, method, value, seed),
        "settings": _settings(cfg, problem, method, value, seed),
        "problem": problem, "method": method, "value": float(value), "lam": lam,
        "ratio": float(value) if method == "group-sparsity" else None, "seed": int(seed),
        "zero_columns": zero_cols, "columns": int(a_eff.shape[1]), "sparsity": frac,
        "exact_zero_columns": int((a_eff == 0).all(dim=0).sum()),
        "lr": lr, "optimizer": opt, "epochs": epochs, "steps": trainer.step,
        "objective": [r[2] + r[3] for r in log.rows], "objective_log": log.rows,
        "time_s": seconds,
    }
    for split, ds in (("train", train), ("val", val), ("test", test)):
        for k, v in evaluate(model, ds, batch_size=100_000, loss_fn=loss_fn).items():
            rec[f"{split}_{k}"] = v
    if "relevant" in loaded[5]:
        rel = set(loaded[5]["relevant"])
        kept = [int(j) for j in (~(a_eff.abs() < float(cfg["threshold"])).all(dim=0)).nonzero()
                .reshape(-1)]
        rec["relevant_kept"] = len(rel & set(kept))
        rec["irrelevant_kept"] = len(set(kept) - rel)
    return rec, {"a_eff": a_eff.cpu(), "bias": bias.cpu()}


# --------------------------------------------------------------------------- fronts


def envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower envelope ``E(s) = min {loss : (sparsity, loss) with sparsity >= s}``.

    Returned as ``[(u_k, M_k)]`` for the distinct sparsities ``u_1 < u_2 <
    ...``: ``E(s) = M_k`` for ``s in (u_{k-1}, u_k]`` (``M_1`` on ``[0, u_1]``),
    undefined above the largest ``u``. ``M_k`` is non-decreasing in ``k``.
    """
    pts = sorted((float(s), float(v)) for s, v in points)
    out: list[tuple[float, float]] = []
    best = math.inf
    for s, v in reversed(pts):
        best = min(best, v)
        if out and out[-1][0] == s:
            out[-1] = (s, best)
        else:
            out.append((s, best))
    return out[::-1]


def envelope_at(env: Sequence[tuple[float, float]], s: float) -> float | None:
    """``E(s)``, or None when no point has sparsity ``>= s``."""
    for u, m in env:
        if u >= s:
            return m
    return None


def envelope_area(env: Sequence[tuple[float, float]], upto: float) -> float:
    """``integral_0^upto E(s) ds`` of the step function (``upto`` <= the largest sparsity)."""
    if not env or upto > env[-1][0] + 1e-15:
        raise ValueError(f"the envelope is not defined up to {upto}")
    area, prev = 0.0, 0.0
    for u, m in env:
        hi = min(u, upto)
        if hi > prev:
            area += (hi - prev) * m
            prev = hi
        if u >= upto:
            break
    return area


def _mean_sd(vals: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else math.nan)


def _compare(envs: Mapping[str, list], common: float) -> tuple[dict[str, float], list]:
    areas = {m: envelope_area(e, common) for m, e in envs.items()}
    return areas, sorted(areas, key=areas.get)


def summarize(points: Sequence[Mapping[str, Any]], ref: Mapping[str, Mapping[str, float]],
              methods: Sequence[str]) -> dict[str, Any]:
    """Normalize losses, build envelopes and compare the methods, per problem.

    Adds ``normalized_test_loss`` to every point (in place). Per problem:

    * ``means``: per method and strength, the mean (and sample sd over seeds)
      of sparsity and normalized loss; the envelopes are those of these mean
      points;
    * ``envelopes``, ``levels`` (the envelopes at :data:`LEVELS`, and which
      method is lowest), ``max_sparsity`` and ``common_sparsity`` (the
      largest sparsity every method reaches), ``area`` (of each envelope up
      to ``common_sparsity``);
    * ``per_seed``: the same areas seed by seed (each seed's own envelopes and
      common range), with the ranking of the methods in each seed.
    """
    out: dict[str, Any] = {}
    for problem in dict.fromkeys(p["problem"] for p in points):
        pts = [p for p in points if p["problem"] == problem]
        lo = min(p["test_loss"] for p in pts)
        hi = ref[problem]["constant_loss"]
        for p in pts:
            p["normalized_test_loss"] = (p["test_loss"] - lo) / (hi - lo)
        present = [m for m in methods if any(p["method"] == m for p in pts)]
        means = []
        for m in present:
            for v in dict.fromkeys(p["value"] for p in pts if p["method"] == m):
                grp = [p for p in pts if p["method"] == m and p["value"] == v]
                sp, sp_sd = _mean_sd([p["sparsity"] for p in grp])
                nl, nl_sd = _mean_sd([p["normalized_test_loss"] for p in grp])
                tl, tl_sd = _mean_sd([p["test_loss"] for p in grp])
                means.append({"problem": problem, "method": m, "value": v, "n": len(grp),
                              "sparsity": sp, "sparsity_sd": sp_sd,
                              "normalized_test_loss": nl, "normalized_test_loss_sd": nl_sd,
                              "test_loss": tl, "test_loss_sd": tl_sd})
        envs = {m: envelope([(r["sparsity"], r["normalized_test_loss"]) for r in means
                             if r["method"] == m]) for m in present}
        common = min(e[-1][0] for e in envs.values())
        areas, ranking = _compare(envs, common)
        table = []
        for level in LEVELS:
            row: dict[str, Any] = {"problem": problem, "sparsity_at_least": level}
            for m, e in envs.items():
                row[m] = envelope_at(e, level)
            known = {m: row[m] for m in envs if row[m] is not None}
            row["best"] = min(known, key=known.get) if len(known) == len(envs) > 1 else None
            table.append(row)
        per_seed = []
        for seed in sorted({p["seed"] for p in pts}):
            sp = [p for p in pts if p["seed"] == seed]
            e_s = {m: envelope([(p["sparsity"], p["normalized_test_loss"]) for p in sp
                                if p["method"] == m]) for m in present}
            c_s = min(e[-1][0] for e in e_s.values())
            a_s, r_s = _compare(e_s, c_s)
            per_seed.append({"seed": seed, "common_sparsity": c_s, "area": a_s, "ranking": r_s})
        out[problem] = {
            "loss_lo": lo, "loss_hi": hi, "lambda_max": ref[problem]["lambda_max"],
            "max_sparsity": {m: e[-1][0] for m, e in envs.items()},
            "common_sparsity": common, "area": areas, "ranking": ranking,
            "envelopes": {m: [list(x) for x in e] for m, e in envs.items()},
            "levels": table, "means": means, "per_seed": per_seed,
        }
    return out


# --------------------------------------------------------------------------- figure

_LABELS = {"group-sparsity": "group sparsity (prox-SGD)",
           "shrinknets": "ShrinkNets, max(0, θ) (draft)",
           "shrinknets-signed": "ShrinkNets, signed β (paper)"}


def plot_fronts(points, summary, ctx: RunContext, name: str = "fig1_regression.png") -> None:
    """Draft Fig. 1: normalized held-out loss against sparsity, per problem (linear, log).

    Dots: the mean over seeds of each strength (every seed's point faint
    when there are several); lines: the lower envelopes of the means.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    problems = list(summary)
    fig, axes = plt.subplots(len(problems), 2, figsize=(12, 4.2 * len(problems)), squeeze=False)
    colors = dict(zip(METHODS, sns.color_palette(n_colors=len(METHODS))))
    floor = 1e-4
    for i, problem in enumerate(problems):
        s = summary[problem]
        for j, log in enumerate((False, True)):
            ax = axes[i][j]

            def y(v):
                return max(v, floor) if log else v

            for m, env in s["envelopes"].items():
                raw = [p for p in points if p["problem"] == problem and p["method"] == m]
                if len({p["seed"] for p in raw}) > 1:
                    ax.scatter([p["sparsity"] for p in raw],
                               [y(p["normalized_test_loss"]) for p in raw],
                               color=colors[m], s=8, alpha=0.25)
                mean = [r for r in s["means"] if r["method"] == m]
                ax.scatter([r["sparsity"] for r in mean],
                           [y(r["normalized_test_loss"]) for r in mean], color=colors[m], s=24,
                           alpha=0.85, label=_LABELS.get(m, m))
                ax.step([0.0] + [u for u, _ in env], [y(env[0][1])] + [y(v) for _, v in env],
                        where="pre", color=colors[m], linewidth=1.4)
            ax.set(xlabel="sparsity (fraction of input columns with all |w| < 1e-3)",
                   ylabel="normalized held-out loss", xlim=(-0.02, 1.02),
                   title=problem + (f" (log scale, floored at {floor:g})" if log else ""))
            if log:
                ax.set_yscale("log")
            ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Loss / sparsity trade-off: ShrinkNets against group sparsity (draft Fig. 1); "
                 "lines: lower envelopes")
    fig.tight_layout()
    ctx.save_figure(fig, name)


# --------------------------------------------------------------------------- the experiment


def _validate(cfg: Mapping[str, Any]) -> list[str]:
    probs = cfg["problems"]
    if not isinstance(probs, Mapping) or not probs:
        raise ValueError("problems must map problem names to their settings")
    for name, pc in probs.items():
        if name not in PROBLEMS:
            raise ValueError(f"unknown problem {name!r}; choose from {PROBLEMS}")
        missing = [k for k in _PROBLEM_KEYS if k not in pc]
        if missing:
            raise ValueError(f"problem {name!r} misses settings {missing}")
        for k in ("gs_ratios", "sn_lams"):
            vals = [float(v) for v in pc[k]]
            if any(not (v >= 0 and math.isfinite(v)) for v in vals) or len(set(vals)) != len(vals):
                raise ValueError(f"problem {name!r}: {k} must be distinct numbers >= 0")
    methods = list(cfg["methods"])
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods}")
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg['dtype']!r}")
        if int(pc["repetitions"]) < 1:
            raise ValueError(f"problem {name!r}: repetitions must be >= 1")
    return methods


def _save_weights(ctx: RunContext, key: str, weights: Mapping[str, torch.Tensor]) -> None:
    buf = _pyio.BytesIO()
    torch.save(dict(weights), buf)
    atomic.write_bytes(ctx.path(f"points/{key}.pt"), buf.getvalue())


@register("shrinknets-regression",
          "ShrinkNets draft Sec. 5.1, Fig. 1: loss / sparsity fronts of ShrinkNets (input "
          "switches) against group sparsity (prox-SGD on input columns), linear regression on "
          "synthetic data and logistic regression on Fashion-MNIST pixels",
          defaults=_DEFAULTS, quick=_QUICK,
          source="the ShrinkNets draft, Sec. 4.2 eq. 5-10, Sec. 5.1, Fig. 1")
def shrinknets_regression(cfg: dict, ctx: RunContext) -> dict:
    """The loss / sparsity fronts of both methods on both problems (module doc)."""
    methods = _validate(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"]))
    points: list[dict[str, Any]] = []
    ref: dict[str, dict[str, Any]] = {}
    computed = reused = 0
    try:
        for problem, pcfg in cfg["problems"].items():
            loaded = load_problem(problem, cfg)
            train, val, test, n_out, loss_fn, info = loaded
            lmax = lambda_max(train, loss_fn)
            ref[problem] = {"constant_loss": constant_loss(train, test, loss_fn),
                            "lambda_max": lmax, "n_train": len(train), "n_test": len(test),
                            "inputs": int(train.tensors[0].shape[1]), "outputs": n_out,
                            **{k: v for k, v in info.items() if k != "relevant"}}
            ctx.log(f"{problem}: {len(train)} training / {len(test)} test samples, "
                    f"{ref[problem]['inputs']} inputs, lambda_max {lmax:.4g}, constant "
                    f"predictor's test loss {ref[problem]['constant_loss']:.4f}")
            grid = [(m, float(v)) for m in methods
                    for v in (pcfg["gs_ratios"] if m == "group-sparsity" else pcfg["sn_lams"])]
            for seed in range(int(pcfg["repetitions"])):
                for method, value in grid:
                    key = _key(problem, method, value, seed)
                    path = ctx.path(f"points/{key}.json")
                    want = _settings(cfg, problem, method, value, seed)
                    rec = atomic.read_json(path) if path.exists() else None
                    if rec is not None and rec.get("settings") == want and \
                            ctx.path(f"points/{key}.pt").exists():
                        reused += 1
                    else:
                        if rec is not None:
                            ctx.log(f"{key}: saved with other settings, run again")
                        rec, weights = run_point(cfg, problem, loaded, method, value, seed, lmax)
                        rec = atomic.to_jsonable(rec)
                        _save_weights(ctx, key, weights)
                        ctx.write_json(f"points/{key}.json", rec)
                        computed += 1
                        ctx.log(f"{key}: test loss {rec['test_loss']:.4f}, sparsity "
                                f"{rec['sparsity']:.3f} ({rec['zero_columns']}/{rec['columns']}"
                                f" columns), {rec['time_s']:.1f}s")
                    points.append(rec)
    finally:
        torch.set_num_threads(threads)
    if reused:
        ctx.log(f"reused {reused} finished grid points from {ctx.path('points')}")
    summary = summarize(points, ref, methods)
    flat = [{k: v for k, v in p.items() if k not in ("settings", "objective", "objective_log")}
            for p in points]
    ctx.write_csv("points.csv", flat)
    ctx.write_csv("means.csv", [row for s in summary.values() for row in s["means"]])
    ctx.write_csv("fronts.csv", [row for s in summary.values() for row in s["levels"]])
    plot_fronts(points, summary, ctx)
    for problem, s in summary.items():
        ctx.log(f"{problem}: area under the envelope up to sparsity {s['common_sparsity']:.3f} "
                + ", ".join(f"{m} {a:.4f}" for m, a in s["area"].items()))
    return {"problems": summary, "reference": ref, "methods": methods,
            "points": len(points), "points_computed": computed, "points_reused": reused,
            "threads": int(cfg["threads"]), "figures": ["fig1_regression.png"]}
