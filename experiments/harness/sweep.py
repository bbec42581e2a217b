"""Sweeps: random or grid search over an experiment's declared search space.

``python -m experiments sweep NAME --random N`` (or ``--grid [--points K]``)
runs ``N`` trials of experiment ``NAME``. Each experiment declares its search
space (:attr:`experiments.harness.registry.Experiment.space`); a sweep samples it with
a seeded generator, so the same command always gives the same trials.

Output folder (``--out``, default ``runs/sweeps/NAME``)::

    sweep.json            the arguments and the trial list, written first
    trials/<id>/          one run_experiment folder per trial
        config.json, ..., results.json   (results.json last: its presence = done)
        error.txt         the traceback of a failed trial
    results.csv           one row per finished trial
    pareto.png            accuracy against parameter count, Pareto front as a step line
    slurm/                submitit's logs and pickles (``--executor slurm``)

A sweep is resumable: killed at any point and rerun with the same arguments,
it skips the trials whose ``results.json`` exists and runs the others. Rerun
into the same folder with different arguments, it refuses
(:class:`SweepMismatchError`) and says which argument differs.

Executors:

* ``local`` (default): ``workers`` processes (default: the CPUs this process
  may use). ``workers=1`` runs the trials one after the other in this process;
  ``workers>1`` uses a ``spawn`` process pool, each worker with
  ``cpus // workers`` torch threads. A trial that raises is recorded
  (``error.txt``) and the sweep goes on; so is a trial that kills its worker
  process (when several trials were running at that moment, they are rerun
  one at a time to find which one it was).
* ``slurm``: one job per pending trial in one job array through ``submitit``
  (``pip install submitit``); the parameters come from ``slurm={...}``
  (``--slurm key=value``), see :func:`build_slurm_spec`.

Example::

    python -m experiments sweep fmnist-mlp --random 20 --quick --workers 4
    python -m experiments sweep fmnist-mlp --grid --points 3 --executor slurm \\
        --slurm slurm_partition=gpu --slurm gpus_per_node=1 --slurm timeout_min=120
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import random as _random
import socket
import sys
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments.harness import atomic
from experiments.harness.registry import (Experiment, get_experiment, load_plugins, parse_overrides,
                                          resolve_config)
from experiments.harness.run import run_experiment

__all__ = [
    "DISTRIBUTIONS",
    "SweepMismatchError",
    "SubmititMissingError",
    "SlurmSpec",
    "SLURM_DEFAULTS",
    "sample_trials",
    "grid_trials",
    "pareto_front",
    "plot_pareto",
    "build_slurm_spec",
    "run_sweep",
    "add_arguments",
    "run_from_args",
    "main",
]

#: The distribution kinds a search space may use.
DISTRIBUTIONS = ("loguniform", "uniform", "int", "logint", "choice")

#: SLURM parameters used unless ``slurm={...}`` sets them (submitit names).
SLURM_DEFAULTS: dict[str, Any] = {"timeout_min": 60, "cpus_per_task": 1}

_PLOT_EVERY_S = 30.0


class SweepMismatchError(ValueError):
    """The output folder holds a sweep made with different arguments."""


class SubmititMissingError(ImportError):
    """The SLURM executor needs the optional dependency ``submitit``."""


# --------------------------------------------------------------------------- search spaces


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


# --------------------------------------------------------------------------- Pareto front


def pareto_front(sizes: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points: smallest size, highest accuracy.

    Point ``j`` dominates point ``i`` when ``sizes[j] <= sizes[i]`` and
    ``accs[j] >= accs[i]`` with one of the two strict; the front is the set of
    points no point dominates (identical points are all on it). Points with a
    non-finite coordinate are ignored. Returned sorted by size, then index;
    ``O(n log n)``.
    """
    if len(sizes) != len(accs):
        raise ValueError(f"{len(sizes)} sizes but {len(accs)} accuracies")
    pts = [(float(s), float(a), i) for i, (s, a) in enumerate(zip(sizes, accs))
           if math.isfinite(float(s)) and math.isfinite(float(a))]
    pts.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[int] = []
    best: tuple[float, float] | None = None  # (acc, size) of the last front point
    for size, acc, i in pts:
        if best is None or acc > best[0] or (acc == best[0] and size == best[1]):
            front.append(i)
            best = (acc, size)
    return front


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                acc_key: str = "test_acc", size_key: str = "params",
                title: str = "") -> bool:
    """Write ``path`` (PNG): ``acc_key`` against ``size_key`` (log x), Pareto front as a step line.

    Uses the rows holding numeric values for both keys; returns False (and
    writes nothing) when there are none.
    """
    pts = [(float(r[size_key]), float(r[acc_key])) for r in rows
           if _is_number(r.get(size_key)) and _is_number(r.get(acc_key))]
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return False
    from matplotlib.figure import Figure  # no pyplot: works without a display

    sizes, accs = zip(*pts)
    front = pareto_front(sizes, accs)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.scatter(sizes, accs, s=18, color="0.55", label=f"trials ({len(pts)})")
    fs, fa = [sizes[i] for i in front], [accs[i] for i in front]
    ax.step(fs, fa, where="post", color="C3", lw=1.5)
    ax.scatter(fs, fa, s=30, color="C3", zorder=3, label=f"Pareto front ({len(front)})")
    if min(sizes) > 0:
        from experiments.harness.plots import log_count_axis

        log_count_axis(ax)
    ax.set(xlabel=size_key, ylabel=acc_key, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    atomic.save_figure(fig, path)
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- running one trial


def _trial_task(name: str, trial: Mapping[str, Any], quick: bool, trial_dir: str,
                plugins: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run one trial into ``trial_dir``; never raises (the status says what happened).

    This is the function the process pool and the SLURM jobs call. A
    ``.running`` marker (host, pid) exists while the trial runs; a process
    that dies mid-trial leaves it behind.
    """
    out = Path(trial_dir)
    start = time.perf_counter()
    marker = out / ".running"
    try:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        load_plugins(plugins)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(marker, f"{socket.gethostname()} {os.getpid()}\n")
        run_experiment(name, trial["overrides"], quick=quick, out_dir=out, progress=False)
    except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the sweep
        _record_error(out, traceback.format_exc())
        return {"id": trial["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "time_s": time.perf_counter() - start}
    finally:
        marker.unlink(missing_ok=True)
    (out / "error.txt").unlink(missing_ok=True)  # a retried trial that now succeeded
    return {"id": trial["id"], "ok": True, "error": None, "time_s": time.perf_counter() - start}


def _record_error(trial_dir: Path, text: str) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(trial_dir / "error.txt", text if text.endswith("\n") else text + "\n")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- executors

_OnDone = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


def _run_sequential(name: str, trials: list[dict], trial_dirs: Mapping[str, Path], quick: bool,
                    plugins: list[str] | None, on_done: _OnDone) -> None:
    for trial in trials:
        on_done(trial, _trial_task(name, trial, quick, str(trial_dirs[trial["id"]]), plugins))


def _run_pool(name: str, trials: list[dict], trial_dirs: Mapping[str, Path], quick: bool,
              plugins: list[str] | None, workers: int, on_done: _OnDone) -> None:
    """Run ``trials`` in a spawn process pool of ``workers`` processes.

    A trial that kills its worker breaks the pool. If it was the only trial
    running (a ``.running`` marker exists), it is recorded as failed;
    otherwise the trials that were running are rerun one at a time, each in
    a pool of its own, so the one that dies again is identified. The trials
    that had not started go to a fresh pool.
    """
    threads = max(1, _available_cpus() // workers)
    ctx = multiprocessing.get_context("spawn")
    queue, suspects = list(trials), []
    while queue or suspects:
        if queue:
            batch, queue = queue, []
        else:
            batch = [suspects.pop(0)]
        for trial in batch:
            (trial_dirs[trial["id"]] / ".running").unlink(missing_ok=True)
        size = min(workers, len(batch))
        pool = cf.ProcessPoolExecutor(max_workers=size, mp_context=ctx)
        handled: set[str] = set()
        try:
            futures = {pool.submit(_trial_task, name, t, quick, str(trial_dirs[t["id"]]),
                                   plugins, threads): t for t in batch}
            try:
                for fut in cf.as_completed(futures):
                    status = fut.result()
                    handled.add(futures[fut]["id"])
                    on_done(futures[fut], status)
            except BrokenProcessPool:
                pass
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        unfinished = []
        for fut, trial in futures.items():
            if trial["id"] in handled:
                continue
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                status = fut.result()
            elif (trial_dirs[trial["id"]] / "results.json").exists():  # done, reply lost
                status = {"id": trial["id"], "ok": True, "error": None, "time_s": float("nan")}
            else:
                unfinished.append(trial)
                continue
            handled.add(trial["id"])
            on_done(trial, status)
        if not unfinished:
            continue
        running = [t for t in unfinished if (trial_dirs[t["id"]] / ".running").exists()]
        if not running:  # died before any trial started (e.g. at import): isolate them all
            running = unfinished
        if len(running) == 1:  # the one trial that was running killed its worker
            trial = running[0]
            _record_error(trial_dirs[trial["id"]],
                          "the worker process running this trial died (killed, out of memory, "
                          "os._exit or a crash in native code); rerun the sweep to retry it")
            on_done(trial, {"id": trial["id"], "ok": False, "error": "worker process died",
                            "time_s": float("nan")})
        else:  # several were running: rerun them one at a time to find the culprit
            suspects += running
        queue = [t for t in unfinished if t not in running]


def _run_slurm(spec: "SlurmSpec", on_done: _OnDone, poll_max_s: float = 30.0) -> None:
    """Submit ``spec`` through submitit as one job array and wait for every job."""
    submitit = _import_submitit()
    executor = submitit.AutoExecutor(folder=spec.folder, cluster=spec.cluster)
    executor.update_parameters(**spec.parameters)
    with executor.batch():
        jobs = [executor.submit(fn, *args) for _, fn, args in spec.jobs]
    trials = [trial for trial, _, _ in spec.jobs]
    atomic.write_json(spec.folder / "jobs.json",
                  {t["id"]: str(job.job_id) for t, job in zip(trials, jobs)})
    remaining = list(zip(trials, jobs))
    delay = 0.05
    while remaining:
        progressed = False
        for item in list(remaining):
            trial, job = item
            if not job.done():
                continue
            remaining.remove(item)
            progressed = True
            try:
                status = job.result()
            except Exception as exc:  # noqa: BLE001 - timeout, node failure, cancellation
                _record_error(Path(spec.trial_dirs[trial["id"]]),
                              f"SLURM job {job.job_id} failed:\n{exc}")
                status = {"id": trial["id"], "ok": False,
                          "error": f"job {job.job_id}: {type(exc).__name__}", "time_s": float("nan")}
            on_done(trial, status)
        if remaining and not progressed:
            time.sleep(delay)
            delay = min(delay * 2, poll_max_s)


def _import_submitit():
    try:
        import submitit
    except ImportError as exc:
        raise SubmititMissingError(
            "the slurm executor needs submitit, an optional dependency: pip install submitit"
        ) from exc
    return submitit


@dataclass
class SlurmSpec:
    """What the SLURM executor submits (built by :func:`build_slurm_spec`, no submitit needed).

    Attributes:
        folder: submitit's folder (logs, pickles), ``OUT/slurm``.
        cluster: ``submitit.AutoExecutor``'s ``cluster`` (None = detect;
            ``"local"`` or ``"debug"`` to test without SLURM).
        parameters: keyword arguments of ``executor.update_parameters``.
        jobs: one ``(trial, function, args)`` per job; the job runs
            ``function(*args)``.
        trial_dirs: trial id -> its output folder.
    """

    folder: Path
    cluster: str | None
    parameters: dict[str, Any]
    jobs: list[tuple[dict, Callable[..., dict], tuple]]
    trial_dirs: dict[str, Path] = field(default_factory=dict)


def build_slurm_spec(name: str, trials: Sequence[Mapping[str, Any]], *,
                     out_dir: str | os.PathLike, quick: bool = False,
                     plugins: Sequence[str] | None = None,
                     slurm: Mapping[str, Any] | None = None) -> SlurmSpec:
    """The job spec of a SLURM sweep: submitit parameters and one job per trial.

    ``slurm`` holds submitit ``AutoExecutor`` parameters: the generic
    ``timeout_min``, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``,
    ``nodes``, ``tasks_per_node``, ``name``, and SLURM-specific ones prefixed
    ``slurm_`` (``slurm_partition``, ``slurm_array_parallelism``,
    ``slurm_account``, ``slurm_qos``, ``slurm_constraint``, ...), all passed
    through; its ``"cluster"`` entry is the AutoExecutor ``cluster``.
    Unset: ``name="sweep-NAME"`` and :data:`SLURM_DEFAULTS`. Each job runs one
    trial with ``cpus_per_task`` torch threads (the current process's thread
    count with ``cluster="debug"``, which runs jobs in-process).
    """
    opts = dict(slurm or {})
    cluster = opts.pop("cluster", None)
    params: dict[str, Any] = {"name": f"sweep-{name}", **SLURM_DEFAULTS, **opts}
    for key in ("timeout_min", "cpus_per_task", "gpus_per_node", "nodes", "tasks_per_node"):
        if key in params and isinstance(params[key], (str, float)):
            params[key] = int(params[key])
    if isinstance(params.get("mem_gb"), str):
        params["mem_gb"] = float(params["mem_gb"])
    out = Path(out_dir).absolute()
    threads = None if cluster == "debug" else int(params.get("cpus_per_task") or 1)
    plugin_list = list(plugins or [])
    trial_dirs = {t["id"]: out / "trials" / t["id"] for t in trials}
    jobs = [(dict(t), _trial_task, (name, dict(t), bool(quick), str(trial_dirs[t["id"]]),
                                    plugin_list, threads)) for t in trials]
    return SlurmSpec(out / "slurm", cluster, params, jobs, trial_dirs)


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


# --------------------------------------------------------------------------- the sweep


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


def _sweep(name: str, *, random: int | None = None, grid: bool | int | None = None,
           points: int = 3, seed: int = 0, out_dir: str | os.PathLike | None = None,
           executor: str = "local", workers: int | None = None, quick: bool = False,
           overrides: Mapping[str, Any] | None = None, plugins: Sequence[str] | None = None,
           slurm: Mapping[str, Any] | None = None, progress: bool | None = None,
           acc_key: str = "test_acc", size_key: str = "params") -> _Outcome:
    if (random is None) == (grid is None or grid is False):
        raise ValueError("a sweep needs exactly one of random=N (--random N) and grid (--grid)")
    if grid is not None and grid is not False and not isinstance(grid, bool):
        points = grid
    if executor not in ("local", "slurm"):
        raise ValueError(f"executor must be 'local' or 'slurm', got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    plugins = list(plugins or [])
    load_plugins(plugins)
    exp = get_experiment(name)
    fixed = _jsonable(dict(overrides or {}))
    resolve_config(exp, fixed, quick)  # unknown --set keys fail before anything is written
    if random is not None:
        trials = sample_trials(exp, random, seed, overrides=fixed)
    else:
        trials = grid_trials(exp, points, seed=seed, overrides=fixed)
    for trial in trials:
        resolve_config(exp, trial["overrides"], quick)

    out = Path(out_dir) if out_dir is not None else Path("runs") / "sweeps" / name
    spec = {"experiment": name, "mode": "random" if random is not None else "grid",
            "random": random, "points": None if random is not None else points,
            "seed": int(seed), "quick": bool(quick), "overrides": fixed,
            "space": _jsonable(dict(exp.space)), "trials": trials}
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_spec(out / "sweep.json", spec)

    trial_dirs = {t["id"]: (out / "trials" / t["id"]).absolute() for t in trials}
    rows: dict[str, dict[str, Any]] = {}
    for trial in trials:
        path = trial_dirs[trial["id"]] / "results.json"
        if path.exists():
            rows[trial["id"]] = _row(trial, atomic.read_json(path), fixed)
    pending = [t for t in trials if t["id"] not in rows]
    mode = _progress_mode(progress)
    if mode != "off":
        what = executor + (f", workers={workers or _available_cpus()}"
                           if executor == "local" else "")
        print(f"sweep {name}: {len(trials)} trials, {len(rows)} finished, running {len(pending)} "
              f"({what}) into {out}", flush=True)

    ordered = lambda: [rows[t["id"]] for t in trials if t["id"] in rows]  # noqa: E731
    failed: list[str] = []
    last_plot = [time.monotonic()]
    bar = _Progress(mode, len(pending))

    def on_done(trial: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        row = None
        path = trial_dirs[trial["id"]] / "results.json"
        if status["ok"] and path.exists():
            row = rows[trial["id"]] = _row(trial, atomic.read_json(path), fixed)
            atomic.write_csv(out / "results.csv", ordered())
            if time.monotonic() - last_plot[0] > _PLOT_EVERY_S:
                plot_pareto(ordered(), out / "pareto.png", acc_key=acc_key, size_key=size_key,
                            title=f"{name}: {len(rows)} trials")
                last_plot[0] = time.monotonic()
        else:
            failed.append(trial["id"])
            status = {**status, "ok": False, "error": status.get("error") or "no results.json"}
        bar.update(trial, status, row)

    try:
        if pending:
            if executor == "slurm":
                spec_ = build_slurm_spec(name, pending, out_dir=out, quick=quick,
                                         plugins=plugins, slurm=slurm)
                _run_slurm(spec_, on_done)
            else:
                n_workers = workers or _available_cpus()
                if n_workers == 1:
                    _run_sequential(name, pending, trial_dirs, quick, plugins, on_done)
                else:
                    _run_pool(name, pending, trial_dirs, quick, plugins, n_workers, on_done)
    finally:
        bar.close()
    final_rows = ordered()
    atomic.write_csv(out / "results.csv", final_rows)
    plotted = plot_pareto(final_rows, out / "pareto.png", acc_key=acc_key, size_key=size_key,
                          title=f"{name}: {len(final_rows)} trials")
    if not plotted and mode != "off":
        print(f"note: no pareto.png: no finished trial reports both {acc_key!r} and "
              f"{size_key!r} (in results['final'] or at the top level of results.json)",
              flush=True)
    return _Outcome(final_rows, trials, [t["id"] for t in pending], failed, out, plotted)


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


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``sweep`` arguments to ``parser`` (the CLI's ``sweep`` subparser)."""
    parser.add_argument("name", help="experiment to sweep (python -m experiments list)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--random", type=int, metavar="N", help="N random trials")
    how.add_argument("--grid", action="store_true", help="the grid over the search space")
    parser.add_argument("--points", type=int, default=None, metavar="K",
                        help="grid values per continuous range (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default runs/sweeps/NAME)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--workers", type=int, default=None,
                        help="local processes (default: the CPUs available; 1 = in-process)")
    parser.add_argument("--quick", action="store_true", help="each trial's --quick version")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a setting for every trial (JSON values), repeatable")
    parser.add_argument("--plugin", dest="sweep_plugin", action="append", default=[],
                        metavar="MODULE", help="module registering experiments, repeatable")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="submitit parameter (timeout_min, slurm_partition, cpus_per_task, "
                             "mem_gb, gpus_per_node, slurm_array_parallelism, cluster, ...)")
    parser.add_argument("--acc-key", default="test_acc", help="Pareto plot y (default test_acc)")
    parser.add_argument("--size-key", default="params", help="Pareto plot x (default params)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the sweep ``args`` describes; 0 if every trial finished, 1 if some failed.

    Invalid arguments raise ValueError (the CLI prints it); a missing
    submitit prints how to install it and returns 2.
    """
    if args.points is not None and not args.grid:
        raise ValueError("--points goes with --grid")
    plugins = list(getattr(args, "plugin", None) or []) + list(args.sweep_plugin or [])
    try:
        outcome = _sweep(args.name, random=args.random,
                         grid=(args.points or 3) if args.grid else None, seed=args.seed,
                         out_dir=args.out, executor=args.executor, workers=args.workers,
                         quick=args.quick, overrides=parse_overrides(args.set), plugins=plugins,
                         slurm=parse_overrides(args.slurm), acc_key=args.acc_key,
                         size_key=args.size_key)
    except SubmititMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = len(outcome.rows)
    print(f"sweep {args.name}: {done}/{len(outcome.trials)} trials finished "
          f"({len(outcome.ran) - len(outcome.failed)} run now, {len(outcome.failed)} failed); "
          f"{outcome.out / 'results.csv'}" + (f", {outcome.out / 'pareto.png'}"
                                                 if outcome.plotted else ""), flush=True)
    if outcome.failed:
        print("failed trials (see trials/<id>/error.txt; rerun to retry): "
              + ", ".join(outcome.failed), file=sys.stderr)
    return 0 if done == len(outcome.trials) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.harness.sweep NAME ...`` (the arguments after ``sweep``)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m experiments sweep",
        description="Random or grid search over an experiment's search space; resumable."))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # run through the package module, so pickled functions are experiments.harness.sweep.*
    from experiments.harness.sweep import main as _main

    sys.exit(_main())
