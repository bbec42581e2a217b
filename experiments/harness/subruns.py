"""Grids of sub-runs against one baseline: folders, parallel training, matched-accuracy selection.

The reproductions that compare a method over a grid of strengths with the
unregularized run from the same seed (``tristate-relu``, ``group-sparsity``,
``width-methods``) share three pieces:

* :func:`check_folder` -- each sub-run lives in a folder with its settings;
  a folder holding a run trained with other settings is refused rather than
  silently resumed;
* :func:`run_jobs` -- train independent sub-runs one after the other, or in
  ``workers`` spawned processes of one torch thread each (every sub-run
  checkpoints, so a killed grid resumes);
* :func:`select_matched` -- the "matched accuracy" rule: the smallest network
  whose validation accuracy is within ``tolerance`` of the baseline's,
  chosen on validation, never on test.

:func:`load_data_cached` keeps one copy of a dataset per process, so the
sub-runs a worker trains do not decode the data again.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
from typing import Any, Callable, Iterable, Mapping, Sequence

from experiments.harness import atomic
from experiments.harness.run import RunContext, changed_settings, load_data

__all__ = ["check_folder", "within_tolerance", "select_matched", "run_jobs", "load_data_cached"]

_DATA_KEYS = ("dataset", "data_dir", "val_size", "limit", "data_seed")
_CACHE: dict[str, Any] = {}


def check_folder(ctx: RunContext, sub: str, cfg: Mapping[str, Any],
                 free: Iterable[str] = ()) -> None:
    """Refuse to resume sub-run ``sub`` if it was trained with other settings; record ours.

    The settings are ``cfg`` without the keys in ``free`` (those that do not
    change what is trained, such as ``data_dir`` or ``eval_batch_size``),
    written to ``<sub>/settings.json``. When ``<sub>/checkpoint.pt`` exists
    and the recorded settings differ, a ValueError names every difference.
    """
    free = set(free)
    path = ctx.path(f"{sub}/settings.json")
    mine = atomic.to_jsonable({k: v for k, v in cfg.items() if k not in free})
    if ctx.path(f"{sub}/checkpoint.pt").exists() and path.exists():
        what = changed_settings(atomic.read_json(path), mine)
        if what:
            raise ValueError(f"{ctx.path(sub)} holds a run with other settings ({what}); rerun "
                             "it as it was, pass another --out, or delete the folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, mine)


def within_tolerance(val: float, base_val: float, tolerance: float) -> bool:
    """``val >= base_val - tolerance``, exactly at the tolerance counting as within: a margin
    of 1e-9 absorbs the rounding of ``base_val - tolerance`` (the test of
    :func:`select_matched`; accuracies as fractions, or changes in points with
    ``base_val = 0``)."""
    return bool(float(val) >= float(base_val) - float(tolerance) - 1e-9)


def select_matched(points: Sequence[Mapping[str, Any]], base_val: float, tolerance: float, *,
                   size_key: str = "params", val_key: str = "val_acc") -> Mapping[str, Any]:
    """The smallest network within ``tolerance`` of the baseline's validation accuracy.

        selected = argmin_{p : val_acc(p) >= base_val - tolerance} params(p)

    the "matched accuracy" network (as Sec. 5.2 of *ShrinkNets: Learning
    Network Size while Training*, 2018 draft, public as G. Leclerc, M.
    Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify: Learning
    Network Size while Training*, https://arxiv.org/abs/1806.03723,
    "select[s] the smallest model that achieves a given accuracy", here on
    validation). Among the points with ``val_acc >=
    base_val - tolerance`` (accuracies as
    fractions: 0.5 points is ``tolerance = 0.005``), the one with the fewest
    ``params``; ties go to the higher validation accuracy, then to the first.
    A point exactly at the tolerance is within (a margin of 1e-9 absorbs the
    rounding of ``base_val - tolerance``: 25 of 5,000 images are 0.5 points).
    If no point qualifies, the one with the highest validation accuracy.
    Test accuracy plays no part: it is reported for the selected point, never
    used to select it.

    Example:
        >>> pts = [{"params": 10, "val_acc": 0.80}, {"params": 20, "val_acc": 0.86},
        ...        {"params": 30, "val_acc": 0.87}]
        >>> select_matched(pts, base_val=0.87, tolerance=0.005)["params"]
        30
        >>> select_matched(pts, base_val=0.865, tolerance=0.005)["params"]
        20
    """
    if not points:
        raise ValueError("no points to select from")
    ok = [p for p in points if within_tolerance(p[val_key], base_val, tolerance)]
    if ok:
        return min(ok, key=lambda p: (float(p[size_key]), -float(p[val_key])))
    return max(points, key=lambda p: float(p[val_key]))


def load_data_cached(cfg: Mapping[str, Any]):
    """:func:`experiments.harness.run.load_data`, kept per process for the same data settings."""
    key = repr([(k, cfg.get(k)) for k in _DATA_KEYS])
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_data(cfg)
    return _CACHE[key]


def _call(target: str, kwargs: Mapping[str, Any], threads: int | None) -> Any:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    module, _, name = target.rpartition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[Mapping[str, Any]], workers: int = 1
             ) -> list[Any]:
    """Call ``fn(**job)`` for every job; return the results in the order of ``jobs``.

    ``workers <= 1`` (or a single job): one after the other in this process.
    Otherwise ``min(workers, len(jobs))`` spawned processes with one torch
    thread each; ``fn`` must then be a module-level function and the jobs
    and results picklable. The first job to raise re-raises here once the
    running ones have finished; the jobs not yet started are cancelled.
    """
    jobs = [dict(j) for j in jobs]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1 or len(jobs) <= 1:
        return [fn(**j) for j in jobs]
    target = f"{fn.__module__}:{fn.__qualname__}"
    if "." in fn.__qualname__ or fn.__qualname__.startswith("<"):
        raise ValueError(f"{target} is not a module-level function; workers need one")
    mp = multiprocessing.get_context("spawn")
    out: list[Any] = [None] * len(jobs)
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp) as pool:
        futures = {pool.submit(_call, target, j, 1): i for i, j in enumerate(jobs)}
        try:
            for fut in cf.as_completed(futures):
                out[futures[fut]] = fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out
