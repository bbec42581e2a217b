"""Search spaces and the trials a sweep draws from them, reproducibly.

An experiment declares its space (:attr:`experiments.harness.registry.Experiment.space`),
``{key: distribution}``; :func:`sample_trials` draws random trials from it and
:func:`grid_trials` lays a grid over it. Each trial is a dict ``{"id", "index",
"seed", "sampled", "overrides"}``; the same arguments always give the same trials.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random as _random
from typing import Any, Mapping, Sequence

from experiments.harness import atomic
from experiments.harness.registry import Experiment

__all__ = ["DISTRIBUTIONS", "sample_trials", "grid_trials"]

#: The distribution kinds a search space may use.
DISTRIBUTIONS = ("loguniform", "uniform", "int", "logint", "choice")


def _check_space(space: Mapping[str, Any]) -> None:
    for key, dist in space.items():
        if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in DISTRIBUTIONS:
            raise ValueError(f"search space of {key!r}: expected (kind, ...) with kind one of "
                             f"{', '.join(DISTRIBUTIONS)}, got {dist!r}")
        kind = dist[0]
        if kind == "choice":
            if len(dist) != 2 or not isinstance(dist[1], (list, tuple)) or not dist[1]:
                raise ValueError(f"search space of {key!r}: expected ('choice', [values...]), "
                                 f"got {dist!r}")
            continue
        if len(dist) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in dist[1:]):
            raise ValueError(f"search space of {key!r}: expected ({kind!r}, lo, hi), got {dist!r}")
        lo, hi = dist[1], dist[2]
        if not lo <= hi:
            raise ValueError(f"search space of {key!r}: lo {lo} > hi {hi}")
        if kind in ("loguniform", "logint") and lo <= 0:
            raise ValueError(f"search space of {key!r}: {kind} needs lo > 0, got {lo}")
        if kind in ("int", "logint") and not (float(lo).is_integer() and float(hi).is_integer()):
            raise ValueError(f"search space of {key!r}: {kind} bounds must be integers, "
                             f"got {lo}, {hi}")


def _draw(dist: Sequence[Any], u: float) -> Any:
    """Map ``u`` uniform in [0, 1) to a value of ``dist``."""
    kind = dist[0]
    if kind == "choice":
        values = list(dist[1])
        return values[min(int(u * len(values)), len(values) - 1)]
    lo, hi = dist[1], dist[2]
    if kind == "uniform":
        return float(lo + u * (hi - lo))
    if kind == "loguniform":
        return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
    lo, hi = int(lo), int(hi)
    if kind == "int":
        return min(lo + int(u * (hi - lo + 1)), hi)
    # logint: log-uniform on [lo, hi + 1), floored, so every integer has mass
    value = math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo)))
    return max(lo, min(int(value), hi))


def _grid_values(dist: Sequence[Any], points: int) -> list[Any]:
    """The values a grid takes along one axis (choice values as given)."""
    kind = dist[0]
    if kind == "choice":
        return list(dist[1])
    lo, hi = dist[1], dist[2]
    fracs = [k / (points - 1) for k in range(points)]
    if kind in ("uniform", "int"):
        raw = [lo + f * (hi - lo) for f in fracs]
    else:
        raw = [lo * (hi / lo) ** f for f in fracs]
    raw[0], raw[-1] = lo, hi
    if kind in ("int", "logint"):
        return sorted({int(round(v)) for v in raw})
    out: list[float] = []
    for v in raw:  # 12 significant digits: 0.010000000000000002 -> 0.01
        v = float(f"{v:.12g}")
        if v not in out:
            out.append(v)
    return out


def _trial_seed(seed: int, index: int) -> int:
    """A per-trial seed in [0, 2**31) that depends only on (sweep seed, index)."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()
    return int(digest[:8], 16) % 2**31


def _jsonable(obj: Any) -> Any:
    """Plain JSON values, as they read back from sweep.json (tuples -> lists)."""
    return json.loads(json.dumps(atomic.to_jsonable(obj)))


def _active_space(exp: Experiment, fixed: Mapping[str, Any]) -> dict[str, tuple]:
    """The experiment's space minus the keys the user fixed with ``--set``."""
    space = {k: v for k, v in exp.space.items() if k not in fixed}
    _check_space(space)
    return space


def _make_trials(exp: Experiment, combos: list[dict[str, Any]], seed: int,
                 fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    trials = []
    for index, sampled in enumerate(combos):
        overrides = {**fixed, **sampled}
        trial_seed = _trial_seed(seed, index)
        if "seed" in exp.defaults and "seed" not in overrides:
            overrides["seed"] = trial_seed
        overrides = _jsonable(overrides)
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        trials.append({"id": f"{index:04d}-{digest}", "index": index, "seed": trial_seed,
                       "sampled": _jsonable(sampled), "overrides": overrides})
    return trials


def sample_trials(exp: Experiment, n: int, seed: int = 0, *,
                  overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """``n`` trials drawn at random from ``exp.space``, reproducibly.

    Each value is drawn from its distribution with one ``random.Random(seed)``
    uniform draw (whose sequence Python guarantees across versions), keys in
    sorted order, trial after trial -- so the first ``k`` trials of
    ``sample_trials(exp, n, s)`` are those of ``sample_trials(exp, k, s)``.

    Distributions: ``("loguniform", lo, hi)`` and ``("uniform", lo, hi)``
    (floats), ``("int", lo, hi)`` (uniform integers, ``hi`` inclusive),
    ``("logint", lo, hi)`` (integers, log-uniform, ``hi`` inclusive),
    ``("choice", [values...])`` (one of the values, uniformly).

    Args:
        exp: the experiment (its ``space`` and ``defaults``).
        n: number of trials (>= 1).
        seed: sweep seed.
        overrides: fixed settings for every trial (``--set``); a fixed key is
            removed from the search.

    Returns:
        ``[{"id", "index", "seed", "sampled", "overrides"}, ...]``: ``id`` is
        ``"<index:04d>-<8 hex of the overrides' hash>"``; ``sampled`` holds the
        searched values; ``overrides`` (what :func:`run_experiment` gets) is
        ``overrides`` + ``sampled`` + ``{"seed": seed}`` when the experiment
        has a ``"seed"`` setting the user did not fix, where ``seed`` is a
        per-trial seed derived from (sweep seed, index).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--random needs a number of trials >= 1, got {n!r}")
    fixed = dict(overrides or {})
    space = _active_space(exp, fixed)
    rng = _random.Random(int(seed))
    combos = [{key: _draw(space[key], rng.random()) for key in sorted(space)} for _ in range(n)]
    return _make_trials(exp, combos, int(seed), fixed)


def grid_trials(exp: Experiment, points: int = 3, *, seed: int = 0,
                overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The cartesian product of ``exp.space``, one trial per grid point.

    ``choice`` axes take their values as given; continuous ranges take
    ``points`` values from ``lo`` to ``hi``, evenly spaced (``uniform``,
    ``int``) or log-spaced (``loguniform``, ``logint``); integer axes are
    rounded and deduplicated, so ``("int", 1, 2)`` has 2 values at any
    ``points``. Keys vary in sorted order, the last fastest.

    Args and returns as for :func:`sample_trials` (``seed`` only derives the
    per-trial seeds).
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"--points needs an integer >= 2, got {points!r}")
    fixed = dict(overrides or {})
    space = _active_space(exp, fixed)
    keys = sorted(space)
    axes = [_grid_values(space[key], points) for key in keys]
    combos = [dict(zip(keys, values)) for values in itertools.product(*axes)]
    return _make_trials(exp, combos, int(seed), fixed)

