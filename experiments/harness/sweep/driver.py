"""The sweep driver: :func:`run_sweep` plans the trials, runs the missing ones, tabulates.

A sweep goes in steps (:func:`_sweep`): check the arguments; draw the trials
(:mod:`~experiments.harness.sweep.space`) and check each against the experiment's
settings; write ``sweep.json`` or check it against these arguments (a resumed sweep
must be the same sweep); collect the trials that already finished; run the others
with an executor (:mod:`~experiments.harness.sweep.executors`), adding each finished
trial's row to ``results.csv`` as it arrives; write the final ``results.csv`` and
``pareto.png`` (:mod:`~experiments.harness.sweep.fronts`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.harness import atomic
from experiments.harness.registry import Experiment, get_experiment, load_plugins, resolve_config
from experiments.harness.sweep.executors import (_available_cpus, _run_pool, _run_sequential,
                                                 _run_slurm, build_slurm_spec, worker_plugins)
from experiments.harness.sweep.fronts import _is_number, plot_pareto
from experiments.harness.sweep.space import _jsonable, grid_trials, sample_trials

__all__ = ["SweepMismatchError", "run_sweep"]

_PLOT_EVERY_S = 30.0


class SweepMismatchError(ValueError):
    """The output folder holds a sweep made with different arguments."""


# --------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar (``mode="bar"``), a line per trial (``"lines"``) or nothing (``"off"``)."""

    def __init__(self, mode: str, total: int):
        self.mode, self.total, self.count = mode, total, 0
        self.bar = None
        if mode == "bar" and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="trial", file=sys.stdout, dynamic_ncols=True)

    def update(self, trial: Mapping[str, Any], status: Mapping[str, Any],
               row: Mapping[str, Any] | None) -> None:
        self.count += 1
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in trial["sampled"].items())
        if status["ok"]:
            res = "  ".join(f"{k}={_fmt(v)}" for k, v in (row or {}).items()
                            if k not in trial["sampled"] and k not in ("id", "seed", "wall_time_s")
                            and _is_number(v))
            secs = (row or {}).get("wall_time_s", status["time_s"])
            text = f"{trial['id']} done in {secs:.1f}s  {shown}  -> {res}"
        else:
            text = f"{trial['id']} FAILED: {status['error']}  {shown}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text[:60])
            if not status["ok"]:
                self.bar.write(text)
        elif self.mode != "off":
            print(f"[{self.count}/{self.total}] {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _progress_mode(progress: bool | None) -> str:
    if progress is None:
        isatty = getattr(sys.stdout, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return "bar" if progress else "off"


# --------------------------------------------------------------------------- sweep.json, rows


@dataclass
class _Outcome:
    rows: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    ran: list[str]
    failed: list[str]
    out: Path
    plotted: bool


_SPEC_KEYS = ("experiment", "mode", "random", "points", "seed", "quick", "overrides")


def _check_or_write_spec(path: Path, spec: dict[str, Any]) -> None:
    if not path.exists():
        atomic.write_json(path, spec)
        return
    stored = atomic.read_json(path)
    diffs = [f"{k}: {stored.get(k)!r} in sweep.json, {spec[k]!r} now"
             for k in _SPEC_KEYS if stored.get(k) != spec[k]]
    if diffs:
        raise SweepMismatchError(
            f"{path} belongs to a sweep with other arguments ({'; '.join(diffs)}). Rerun "
            f"with the original arguments to resume it, or pass another --out.")
    old, new = stored.get("trials", []), spec["trials"]
    if old != new:
        where = next((f"trial {i}: {o} in sweep.json, {n} now"
                      for i, (o, n) in enumerate(zip(old, new)) if o != n),
                     f"{len(old)} trials in sweep.json, {len(new)} now")
        raise SweepMismatchError(
            f"{path}: the same arguments now give other trials ({where}); the search space "
            f"of {spec['experiment']!r} changed since the sweep started. Pass another --out.")


def _row(trial: Mapping[str, Any], results: Mapping[str, Any],
         fixed: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": trial["id"]}
    if "seed" in trial["overrides"] and "seed" not in trial["sampled"] and "seed" not in fixed:
        row["seed"] = trial["overrides"]["seed"]
    row.update(trial["sampled"])
    final = results.get("final")
    source = final if isinstance(final, Mapping) else {
        k: v for k, v in results.items() if k not in ("experiment", "wall_time_s")}
    for key, value in source.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            row[f"result.{key}" if key in row else key] = value
    if _is_number(results.get("wall_time_s")):
        row["wall_time_s"] = results["wall_time_s"]
    return row


# --------------------------------------------------------------------------- the steps


def _check_arguments(random: int | None, grid: bool | int | None, points: int, executor: str,
                     workers: int | None) -> int:
    """Refuse inconsistent arguments; return the grid's points per continuous range."""
    if (random is None) == (grid is None or grid is False):
        raise ValueError("a sweep needs exactly one of random=N (--random N) and grid (--grid)")
    if grid is not None and grid is not False and not isinstance(grid, bool):
        points = grid
    if executor not in ("local", "slurm"):
        raise ValueError(f"executor must be 'local' or 'slurm', got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return points


def _plan(exp: Experiment, random: int | None, points: int, seed: int, quick: bool,
          fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trials, each a configuration the experiment accepts (checked before anything is
    written: an unknown ``--set`` key fails here)."""
    resolve_config(exp, fixed, quick)
    if random is not None:
        trials = sample_trials(exp, random, seed, overrides=fixed)
    else:
        trials = grid_trials(exp, points, seed=seed, overrides=fixed)
    for trial in trials:
        resolve_config(exp, trial["overrides"], quick)
    return trials


def _spec(name: str, exp: Experiment, random: int | None, points: int, seed: int, quick: bool,
          fixed: Mapping[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``sweep.json`` records: the arguments, the search space and the trials."""
    return {"experiment": name, "mode": "random" if random is not None else "grid",
            "random": random, "points": None if random is not None else points,
            "seed": int(seed), "quick": bool(quick), "overrides": fixed,
            "space": _jsonable(dict(exp.space)), "trials": trials}


class _Results:
    """The finished trials of a sweep: one row each, ``results.csv`` and ``pareto.png``.

    Starts with the trials whose ``results.json`` exists (a resumed sweep);
    :meth:`on_done` is what the executors report each trial to.
    """

    def __init__(self, name: str, trials: list[dict[str, Any]], out: Path,
                 fixed: Mapping[str, Any], acc_key: str, size_key: str):
        self.name, self.trials, self.out, self.fixed = name, trials, out, fixed
        self.acc_key, self.size_key = acc_key, size_key
        self.dirs = {t["id"]: (out / "trials" / t["id"]).absolute() for t in trials}
        self.rows: dict[str, dict[str, Any]] = {}
        self.failed: list[str] = []
        self.progress = _Progress("off", 0)
        self._last_plot = time.monotonic()
        for trial in trials:
            path = self.dirs[trial["id"]] / "results.json"
            if path.exists():
                self.rows[trial["id"]] = _row(trial, atomic.read_json(path), fixed)

    def pending(self) -> list[dict[str, Any]]:
        """The trials without a ``results.json``, in trial order."""
        return [t for t in self.trials if t["id"] not in self.rows]

    def ordered(self) -> list[dict[str, Any]]:
        """The rows of the finished trials, in trial order."""
        return [self.rows[t["id"]] for t in self.trials if t["id"] in self.rows]

    def on_done(self, trial: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Record one trial an executor ran: its row and ``results.csv`` (and, at most every
        30 s, ``pareto.png``), or its failure; then report it."""
        row = None
        path = self.dirs[trial["id"]] / "results.json"
        if status["ok"] and path.exists():
            row = self.rows[trial["id"]] = _row(trial, atomic.read_json(path), self.fixed)
            atomic.write_csv(self.out / "results.csv", self.ordered())
            if time.monotonic() - self._last_plot > _PLOT_EVERY_S:
                self.plot()
                self._last_plot = time.monotonic()
        else:
            self.failed.append(trial["id"])
            status = {**status, "ok": False, "error": status.get("error") or "no results.json"}
        self.progress.update(trial, status, row)

    def plot(self) -> bool:
        """Write ``pareto.png`` of the finished trials; False if none has both keys."""
        rows = self.ordered()
        return plot_pareto(rows, self.out / "pareto.png", acc_key=self.acc_key,
                           size_key=self.size_key, title=f"{self.name}: {len(rows)} trials")


def _execute(name: str, pending: list[dict[str, Any]], results: _Results, *, executor: str,
             workers: int | None, quick: bool, plugins: list[str],
             slurm: Mapping[str, Any] | None) -> None:
    """Run the pending trials with the executor; each is reported to ``results.on_done``."""
    if not pending:
        return
    if executor == "slurm":
        spec = build_slurm_spec(name, pending, out_dir=results.out, quick=quick,
                                plugins=plugins, slurm=slurm)
        _run_slurm(spec, results.on_done)
        return
    n_workers = workers or _available_cpus()
    if n_workers == 1:
        _run_sequential(name, pending, results.dirs, quick, plugins, results.on_done)
    else:
        _run_pool(name, pending, results.dirs, quick, plugins, n_workers, results.on_done)


def _finish(results: _Results, pending: list[dict[str, Any]], mode: str) -> _Outcome:
    """Write the final ``results.csv`` and ``pareto.png``; what the sweep did."""
    rows = results.ordered()
    atomic.write_csv(results.out / "results.csv", rows)
    plotted = results.plot()
    if not plotted and mode != "off":
        print(f"note: no pareto.png: no finished trial reports both {results.acc_key!r} and "
              f"{results.size_key!r} (in results['final'] or at the top level of results.json)",
              flush=True)
    return _Outcome(rows, results.trials, [t["id"] for t in pending], results.failed,
                    results.out, plotted)


# --------------------------------------------------------------------------- the sweep


def _sweep(name: str, *, random: int | None = None, grid: bool | int | None = None,
           points: int = 3, seed: int = 0, out_dir: str | os.PathLike | None = None,
           executor: str = "local", workers: int | None = None, quick: bool = False,
           overrides: Mapping[str, Any] | None = None, plugins: Sequence[str] | None = None,
           slurm: Mapping[str, Any] | None = None, progress: bool | None = None,
           acc_key: str = "test_acc", size_key: str = "params") -> _Outcome:
    """:func:`run_sweep`, returning everything the command line reports."""
    points = _check_arguments(random, grid, points, executor, workers)
    plugins = list(plugins or [])
    load_plugins(plugins)
    exp = get_experiment(name)
    fixed = _jsonable(dict(overrides or {}))
    trials = _plan(exp, random, points, seed, quick, fixed)

    out = Path(out_dir) if out_dir is not None else Path("runs") / "sweeps" / name
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_spec(out / "sweep.json", _spec(name, exp, random, points, seed, quick,
                                                   fixed, trials))
    results = _Results(name, trials, out, fixed, acc_key, size_key)
    pending = results.pending()
    mode = _progress_mode(progress)
    if mode != "off":
        what = executor + (f", workers={workers or _available_cpus()}"
                           if executor == "local" else "")
        print(f"sweep {name}: {len(trials)} trials, {len(results.rows)} finished, running "
              f"{len(pending)} ({what}) into {out}", flush=True)
    results.progress = _Progress(mode, len(pending))
    try:
        # the workers import the module that registered the experiment, besides the plugins
        _execute(name, pending, results, executor=executor, workers=workers, quick=quick,
                 plugins=worker_plugins(name, plugins), slurm=slurm)
    finally:
        results.progress.close()
    return _finish(results, pending, mode)


def run_sweep(name: str, *, random: int | None = None, grid: bool | int | None = None,
              seed: int = 0, out_dir: str | os.PathLike | None = None, executor: str = "local",
              workers: int | None = None, quick: bool = False,
              overrides: Mapping[str, Any] | None = None, plugins: Sequence[str] | None = None,
              slurm: Mapping[str, Any] | None = None, progress: bool | None = None,
              acc_key: str = "test_acc", size_key: str = "params") -> list[dict[str, Any]]:
    """Run (or resume) a sweep of experiment ``name``; return one row per finished trial.

    Args:
        name: a registered experiment (``plugins`` may register it).
        random: number of random trials (:func:`sample_trials`), or
        grid: ``True`` for a 3-point grid, or the number of points per
            continuous range (:func:`grid_trials`). Exactly one of the two.
        seed: sweep seed (trial values and per-trial seeds).
        out_dir: output folder, default ``runs/sweeps/NAME``.
        executor: ``"local"`` or ``"slurm"``.
        workers: local processes, default the CPUs available; 1 runs the
            trials in this process, one after the other.
        quick: run each trial's ``--quick`` version.
        overrides: settings fixed for every trial (``--set``); a fixed key
            is not searched.
        plugins: modules to import that register experiments (also imported
            in every worker and job).
        slurm: submitit parameters and ``"cluster"`` (:func:`build_slurm_spec`).
        progress: None: a tqdm bar if stdout is a terminal, else a line per
            trial; True: a bar; False: silent.
        acc_key, size_key: the Pareto plot's y and x (looked up in
            ``results["final"]``, else at the top level of the results).

    Writes ``OUT/sweep.json`` first (or checks it against these arguments,
    raising :class:`SweepMismatchError` when they differ), runs every trial
    without a ``results.json`` into ``OUT/trials/<id>``, writes
    ``OUT/results.csv`` after each finished trial and at the end, and
    ``OUT/pareto.png`` at the end (and at most every 30 s meanwhile). A
    failed trial leaves ``OUT/trials/<id>/error.txt``, has no row, and runs
    again on the next rerun.

    Returns:
        One dict per finished trial, in trial order: ``id``, ``seed`` (when
        the per-trial seed is a setting), the sampled settings, the scalar
        entries of ``results["final"]`` (else of the results' top level)
        and ``wall_time_s``: the rows of ``results.csv``.
    """
    return _sweep(name, random=random, grid=grid, seed=seed, out_dir=out_dir,
                  executor=executor, workers=workers, quick=quick, overrides=overrides,
                  plugins=plugins, slurm=slurm, progress=progress, acc_key=acc_key,
                  size_key=size_key).rows

