"""Running trials: one trial in a worker, and the executors that run a sweep's trials.

* :func:`_run_sequential` -- one after the other in this process;
* :func:`_run_pool` -- a process pool of ``spawn``-started workers, which isolates a trial
  that kills its worker;
* :func:`_run_slurm` -- one SLURM job per trial in one job array through ``submitit``,
  described by :func:`build_slurm_spec`.

Every executor calls :func:`_trial_task`. A worker (a spawned process or a SLURM job)
starts from a fresh interpreter that has imported nothing of the experiments, and the
registry imports no module that registers one; so the worker first imports the
modules :func:`worker_plugins` lists: the sweep's plugins and the module that
registered the experiment.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments.harness import atomic
from experiments.harness.registry import EXPERIMENTS, load_plugins
from experiments.harness.run import run_experiment

__all__ = ["SLURM_DEFAULTS", "SubmititMissingError", "SlurmSpec", "build_slurm_spec",
           "worker_plugins"]

#: SLURM parameters used unless ``slurm={...}`` sets them (submitit names).
SLURM_DEFAULTS: dict[str, Any] = {"timeout_min": 60, "cpus_per_task": 1}


class SubmititMissingError(ImportError):
    """The SLURM executor needs the optional dependency ``submitit``."""


# --------------------------------------------------------------------------- running one trial


def worker_plugins(name: str, plugins: Sequence[str] | None = None) -> list[str]:
    """The modules a worker imports before it runs a trial of experiment ``name``.

    ``plugins`` (``--plugin``), then the module that registered ``name`` here
    (``Experiment.fn.__module__``), unless it is already listed, is the main
    script (which a spawned worker runs again itself) or ``name`` is not
    registered in this process.
    """
    modules = list(plugins or [])
    exp = EXPERIMENTS.get(name)
    module = getattr(getattr(exp, "fn", None), "__module__", None)
    if module and module not in ("__main__", "__mp_main__") and module not in modules:
        modules.append(module)
    return modules


def _trial_task(name: str, trial: Mapping[str, Any], quick: bool, trial_dir: str,
                plugins: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run one trial into ``trial_dir``; never raises (the status says what happened).

    This is the function the process pool and the SLURM jobs call; it first
    imports ``plugins`` (:func:`worker_plugins`), so that a fresh process knows
    the experiment. A ``.running`` marker (host, pid) exists while the trial
    runs; a process that dies mid-trial leaves it behind.
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

    The workers are started with ``spawn`` (not ``fork``, unsafe once torch
    runs threads): each is a fresh interpreter that knows no experiment until
    :func:`_trial_task` imports ``plugins``.
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
                          "error": f"job {job.job_id}: {type(exc).__name__}",
                          "time_s": float("nan")}
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
    count with ``cluster="debug"``, which runs jobs in-process), after
    importing ``plugins`` and the module that registered ``name``
    (:func:`worker_plugins`).
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
    plugin_list = worker_plugins(name, plugins)
    trial_dirs = {t["id"]: out / "trials" / t["id"] for t in trials}
    jobs = [(dict(t), _trial_task, (name, dict(t), bool(quick), str(trial_dirs[t["id"]]),
                                    plugin_list, threads)) for t in trials]
    return SlurmSpec(out / "slurm", cluster, params, jobs, trial_dirs)

