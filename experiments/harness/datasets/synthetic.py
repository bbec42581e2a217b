"""Synthetic regression and classification with a known set of relevant input features.

The setting of Sec. 5.1 of *Learning Network Size while Training with
ShrinkNets* (2018; below: the ShrinkNets draft), the earlier draft of
*ShrinkNets: Learning Network Size while Training* (2018; public as G. Leclerc,
M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify: Learning
Network Size while Training*, https://arxiv.org/abs/1806.03723): one-layer
models whose inputs are filtered by group sparsity or by switches. The draft
runs it on real data; here the data are generated, so which inputs matter is
known.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.harness.datasets.base import Splits
from experiments.harness.datasets.splitting import _carve, _check_seed_limit, _cut

__all__ = ["synthetic_regression", "synthetic_classification"]


def _synthetic_splits(name: str, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor,
                      relevant: torch.Tensor, num_classes: int, *, val_size: int | float,
                      test_size: float, seed: int, limit: int | None,
                      info: dict[str, Any]) -> Splits:
    n = len(x)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_te = int(round(test_size * n))
    te, pool = perm[:n_te], perm[n_te:]
    t, v = _carve(len(pool), val_size, seed)
    idx = {"train": _cut(pool[t], limit), "val": _cut(pool[v], limit), "test": _cut(te, limit)}
    ds = {k: TensorDataset(x[i], y[i]) for k, i in idx.items()}
    return Splits(train=ds["train"], val=ds["val"], test=ds["test"], num_classes=num_classes,
                  input_shape=(int(x.shape[1]),), name=name, relevant=relevant, coef=coef,
                  indices=MappingProxyType(idx), info=MappingProxyType(info))


def _check_sizes(**kw: int) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")


def _design(n_samples: int, n_features: int, n_relevant: int, n_out: int,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs N(0, 1); the relevant features; weights whose other columns are exactly 0.

    Each relevant column is a random direction of norm ``sqrt(n_out)`` (entries
    of root-mean-square 1), so every relevant feature carries the same weight
    in the group norm ``||A_{:,j}||_2`` the draft's penalties act on.
    """
    relevant = torch.randperm(n_features, generator=gen)[:n_relevant].sort().values
    coef = torch.zeros(n_out, n_features, dtype=torch.float64)
    g = torch.randn(n_out, n_relevant, generator=gen, dtype=torch.float64)
    coef[:, relevant] = g / g.norm(dim=0, keepdim=True) * n_out ** 0.5
    x = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    return x, relevant, coef


def synthetic_regression(n_samples: int = 2000, n_features: int = 280, n_relevant: int = 28,
                         n_targets: int = 16, noise: float = 1.0, seed: int = 0, *,
                         val_size: int | float = 0.2, test_size: float = 0.2,
                         limit: int | None = None) -> Splits:
    """Multi-target linear regression with a known set of relevant input features.

    The setting of the ShrinkNets draft, Sec. 5.1: a one-layer model ``y =
    A x`` whose inputs are filtered by group sparsity (groups = the columns
    ``A_{:,j}`` of input ``j``, eq. 6) or by ShrinkNets' switches ``A
    diag(beta) x`` (eq. 7), with several targets so that each group has more
    than one weight. The draft evaluates on real data
    (scm1d, oes97; details left to an empty appendix) and states no generating
    process; here, with everything else unstated, we generate::

        x ~ N(0, I_p),   A[:, j] = sqrt(t) g_j / ||g_j||, g_j ~ N(0, I_t) for j in relevant,
        A[:, j] = 0 otherwise,   y = A x + noise * eps,   eps ~ N(0, I_t)

    so the ground truth of which columns group sparsity should zero is known,
    and all relevant columns have the same norm (the draft's Prop. A.1 relates
    the two penalties under a fixed column norm).
    The default shape is scm1d's (280 inputs, 16 targets; oes97 has 263 and
    16); 10% of the inputs are relevant (the draft does not say).

    Args:
        n_samples: samples before splitting.
        n_features: input dimension ``p``.
        n_relevant: number of inputs with non-zero weights.
        n_targets: output dimension ``t``.
        noise: standard deviation of the additive Gaussian noise.
        seed: seeds generation and splits; the same seed gives the same data.
        val_size: validation count or fraction of the non-test samples.
        test_size: test fraction of all samples.
        limit: keep the first ``limit`` of each split.

    Returns:
        :class:`Splits` (``num_classes=0``, float32 targets ``N x t``) with
        ``relevant`` (sorted int64 indices) and ``coef`` (``A``, float32
        ``t x p``, irrelevant columns exactly zero).
    """
    _check_sizes(n_samples=n_samples, n_features=n_features, n_relevant=n_relevant,
                 n_targets=n_targets)
    _check_seed_limit(seed, limit)
    if n_relevant > n_features:
        raise ValueError(f"n_relevant ({n_relevant}) exceeds n_features ({n_features})")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    gen = torch.Generator().manual_seed(int(seed))
    x, relevant, coef = _design(n_samples, n_features, n_relevant, n_targets, gen)
    y = x @ coef.T + noise * torch.randn(n_samples, n_targets, generator=gen,
                                         dtype=torch.float64)
    info = {"noise": float(noise), "generator": "y = A x + noise * N(0, I)"}
    return _synthetic_splits("synthetic-regression", x.float(), y.float(), coef.float(),
                             relevant, 0, val_size=val_size, test_size=test_size, seed=seed,
                             limit=limit, info=info)


def synthetic_classification(n_samples: int = 2000, n_features: int = 128,
                             n_relevant: int = 13, n_classes: int = 6, seed: int = 0, *,
                             val_size: int | float = 0.2, test_size: float = 0.2,
                             limit: int | None = None) -> Splits:
    """Multi-class logistic regression data with a known set of relevant input features.

    The classification half of the ShrinkNets draft's Sec. 5.1 (there on
    gina_prior2 and the Gas Sensor Array Drift data, whose generating process
    is unknown). Here the labels follow the multinomial logistic model that a
    logistic regression fits::

        x ~ N(0, I_p),   A[:, j] = sqrt(k) g_j / ||g_j||, g_j ~ N(0, I_k) for j in relevant,
        A[:, j] = 0 otherwise,   P(label = c | x) = softmax(A x)_c

    (sampled with Gumbel noise from the seeded generator). Inputs outside
    ``relevant`` carry no information about the label. The default shape is
    the gas-sensor data's (128 inputs, 6 classes), with 10% relevant inputs.

    Args:
        n_samples, n_features, n_relevant, seed, val_size, test_size, limit:
            as in :func:`synthetic_regression`.
        n_classes: number of classes ``k`` (>= 2).

    Returns:
        :class:`Splits` with int64 labels, ``relevant`` and ``coef``
        (``k x p``), and ``info["bayes_labels_agree"]``: the fraction of
        samples whose label is the most probable class (an upper bound of
        attainable accuracy, estimated on the generated set).
    """
    _check_sizes(n_samples=n_samples, n_features=n_features, n_relevant=n_relevant,
                 n_classes=n_classes)
    _check_seed_limit(seed, limit)
    if n_relevant > n_features:
        raise ValueError(f"n_relevant ({n_relevant}) exceeds n_features ({n_features})")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    gen = torch.Generator().manual_seed(int(seed))
    x, relevant, coef = _design(n_samples, n_features, n_relevant, n_classes, gen)
    logits = x @ coef.T
    u = torch.rand(n_samples, n_classes, generator=gen, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    y = (logits + gumbel).argmax(dim=1)
    info = {"generator": "label ~ softmax(A x)",
            "bayes_labels_agree": float((logits.argmax(dim=1) == y).double().mean())}
    return _synthetic_splits("synthetic-classification", x.float(), y, coef.float(), relevant,
                             n_classes, val_size=val_size, test_size=test_size, seed=seed,
                             limit=limit, info=info)

