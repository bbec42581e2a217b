"""Sweeps: sampling, grids, resuming after a kill, failures, executors, results table, Pareto front."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sweep_plugin

from experiments.harness import sweep as sw
from experiments.harness.registry import get_experiment, load_plugins

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["sweep_plugin"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    load_plugins(PLUGINS)
    return get_experiment("_tiny")


@pytest.fixture(scope="module")
def kinds():
    load_plugins(PLUGINS)
    return get_experiment("_kinds")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def markers(d):
    return sorted(p.name.split(".")[0] for p in Path(d).iterdir()) if Path(d).exists() else []


def finished(out):
    return sorted(p.parent.name for p in Path(out, "trials").glob("*/results.json"))


# --------------------------------------------------------------------------- sampling


def test_random_trials_reproducible_in_bounds_and_pinned(tiny):
    a = sw.sample_trials(tiny, 40, seed=3)
    assert a == sw.sample_trials(tiny, 40, seed=3)
    assert a != sw.sample_trials(tiny, 40, seed=4)
    assert sw.sample_trials(tiny, 10, seed=3) == a[:10]  # growing N keeps the first trials
    assert len({t["id"] for t in a}) == 40
    for i, t in enumerate(a):
        assert t["index"] == i and t["id"].startswith(f"{i:04d}-") and len(t["id"]) == 13
        assert set(t["sampled"]) == {"lr", "width"}
        assert 1e-3 <= t["sampled"]["lr"] <= 1e-1
        assert isinstance(t["sampled"]["width"], int) and 2 <= t["sampled"]["width"] <= 64
        # overrides = sampled + the per-trial seed (the experiment has a "seed" setting)
        assert t["overrides"] == {**t["sampled"], "seed": t["seed"]}
        assert 0 <= t["seed"] < 2**31
    assert len({t["seed"] for t in a}) == 40
    # the values are random.Random(seed).random() draws, keys in sorted order
    rng = random.Random(3)
    u_lr, u_w = rng.random(), rng.random()
    assert a[0]["sampled"]["lr"] == pytest.approx(1e-3 * 100 ** u_lr, rel=1e-12)
    assert a[0]["sampled"]["width"] == 2 + math.floor(u_w * 63)
    # log-uniform: about half of the draws below the geometric midpoint 1e-2
    below = sum(t["sampled"]["lr"] < 1e-2 for t in a) / len(a)
    assert 0.3 < below < 0.7


def test_every_distribution_kind(kinds):
    trials = sw.sample_trials(kinds, 300, seed=0)
    vals = {k: [t["sampled"][k] for t in trials] for k in "abcde"}
    assert all(0.0 <= v <= 1.0 for v in vals["a"])
    assert all(1e-4 <= v <= 1.0 for v in vals["b"])
    assert set(vals["c"]) == {1, 2}
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in vals["d"])
    # log-int: about a third of the draws in each decade [1,10), [10,100), [100,1000]
    decade = [sum(lo <= v < lo * 10 for v in vals["d"]) / 300 for lo in (1, 10, 100)]
    assert all(0.22 < f < 0.45 for f in decade), decade
    assert {json.dumps(v) for v in vals["e"]} == {'"x"', '"y"', "[1, 2]"}
    assert all("seed" not in t["overrides"] for t in trials)  # no seed setting


def test_grid_size_and_values(tiny, kinds):
    g = sw.grid_trials(tiny, 3)
    assert len(g) == 9
    assert sorted({t["sampled"]["lr"] for t in g}) == [1e-3, 1e-2, 1e-1]
    assert sorted({t["sampled"]["width"] for t in g}) == [2, 33, 64]
    assert len({tuple(t["sampled"].values()) for t in g}) == 9
    assert len(sw.grid_trials(tiny, 4)) == 16
    assert sorted({t["sampled"]["lr"] for t in sw.grid_trials(tiny, 5)}) == pytest.approx(
        [1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5, 1e-1], rel=1e-9)
    gk = sw.grid_trials(kinds, 3)
    # a: 3, b: 3, c: int 1..2 -> 2, d: logint 1..1000 -> 1, 32, 1000, e: 3 choices
    assert len(gk) == 3 * 3 * 2 * 3 * 3
    assert sorted({t["sampled"]["d"] for t in gk}) == [1, 32, 1000]
    assert sorted({t["sampled"]["b"] for t in gk}) == [1e-4, 1e-2, 1.0]
    assert sorted({t["sampled"]["a"] for t in gk}) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="points"):
        sw.grid_trials(tiny, 1)


def test_fixed_settings_pin_the_search(tiny):
    t = sw.sample_trials(tiny, 3, seed=0, overrides={"lr": 0.05, "seed": 7})
    assert all(set(x["sampled"]) == {"width"} for x in t)
    assert all(x["overrides"]["lr"] == 0.05 and x["overrides"]["seed"] == 7 for x in t)
    assert len(sw.grid_trials(tiny, 3, overrides={"width": 8})) == 3
    with pytest.raises(ValueError, match="no setting"):
        sw.run_sweep("_tiny", random=2, overrides={"nope": 1}, plugins=PLUGINS,
                     out_dir="/nonexistent/never-written", progress=False)


def test_bad_space_is_rejected(tiny):
    bad = type(tiny)("_bad", "", tiny.fn, {"lr": 0.1}, {}, {"lr": ("loguniform", 0.0, 1.0)})
    with pytest.raises(ValueError, match="lo > 0"):
        sw.sample_trials(bad, 2)
    bad = type(tiny)("_bad", "", tiny.fn, {"lr": 0.1}, {}, {"lr": ("normal", 0.0, 1.0)})
    with pytest.raises(ValueError, match="kind one of"):
        sw.grid_trials(bad)


# --------------------------------------------------------------------------- resuming


@pytest.mark.slow
def test_killed_sweep_resumes_exactly_the_missing_trials(tiny, tmp_path):
    out, mdir = tmp_path / "sweep", tmp_path / "markers"
    env = {**os.environ, "SWEEP_TINY_CRASH_AT": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "experiments.harness.sweep", "_tiny", "--random", "4", "--workers", "1",
           "--out", str(out), "--plugin", "sweep_plugin", "--set", f"marker_dir={mdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # os._exit(1) in the third trial: a real kill
    trials = sw.sample_trials(tiny, 4, seed=0, overrides={"marker_dir": str(mdir)})
    ids = [t["id"] for t in trials]
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["trials"] == trials and stored["random"] == 4 and stored["seed"] == 0
    assert finished(out) == ids[:2]
    assert [r["id"] for r in read_csv(out / "results.csv")] == ids[:2]  # no result lost
    assert markers(mdir) == sorted(ids[:3])
    assert proc.stdout.count(" done in ") == 2

    rows = sw.run_sweep("_tiny", random=4, out_dir=out, workers=1, plugins=PLUGINS,
                        overrides={"marker_dir": str(mdir)}, progress=False)
    assert markers(mdir) == sorted(ids[:3] + ids[2:])  # exactly trials 2 and 3 ran again
    assert [r["id"] for r in rows] == ids
    assert [r["id"] for r in read_csv(out / "results.csv")] == ids
    for r, t in zip(rows, trials):
        assert r["test_acc"] == sweep_plugin.tiny_acc(t["sampled"]["lr"], t["sampled"]["width"])
        assert r["params"] == 10 * t["sampled"]["width"]
        assert r["seed_seen"] == r["seed"] == t["seed"]

    again = sw.run_sweep("_tiny", random=4, out_dir=out, workers=1, plugins=PLUGINS,
                         overrides={"marker_dir": str(mdir)}, progress=False)
    assert len(markers(mdir)) == 5  # the third run runs nothing
    assert again == rows


def test_rerun_with_other_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    kw = dict(out_dir=out, workers=1, plugins=PLUGINS, progress=False, quick=True)
    sw.run_sweep("_tiny", random=2, **kw)
    before = (out / "sweep.json").read_bytes()
    with pytest.raises(sw.SweepMismatchError, match=r"random: 2 in sweep.json, 3 now"):
        sw.run_sweep("_tiny", random=3, **kw)
    with pytest.raises(sw.SweepMismatchError, match=r"seed: 0 in sweep.json, 1 now"):
        sw.run_sweep("_tiny", random=2, seed=1, **kw)
    with pytest.raises(sw.SweepMismatchError, match=r"mode: 'random' in sweep.json, 'grid' now"):
        sw.run_sweep("_tiny", grid=True, **kw)
    with pytest.raises(sw.SweepMismatchError, match=r"overrides: \{\} in sweep.json"):
        sw.run_sweep("_tiny", random=2, overrides={"width": 5}, **kw)
    assert (out / "sweep.json").read_bytes() == before
    assert len(finished(out)) == 2
    # through the command line: a message and exit status 2
    code = sw.main(["_tiny", "--random", "5", "--out", str(out), "--workers", "1", "--quick",
                    "--plugin", "sweep_plugin"])
    assert code == 2
    assert "random: 2 in sweep.json, 5 now" in capsys.readouterr().err


def test_failing_trial_is_recorded_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "s"
    code = sw.main(["_tiny", "--random", "3", "--out", str(out), "--workers", "1",
                    "--plugin", "sweep_plugin", "--set", "fail_at=1"])
    assert code == 1
    text = capsys.readouterr()
    assert "FAILED: RuntimeError: trial 1 fails on purpose" in text.out
    assert "2/3 trials finished" in text.out
    trials = sw.sample_trials(get_experiment("_tiny"), 3, overrides={"fail_at": 1})
    ids = [t["id"] for t in trials]
    assert finished(out) == [ids[0], ids[2]]
    error = (out / "trials" / ids[1] / "error.txt").read_text()
    assert "Traceback" in error and "trial 1 fails on purpose" in error
    assert not (out / "trials" / ids[1] / ".running").exists()
    assert [r["id"] for r in read_csv(out / "results.csv")] == [ids[0], ids[2]]


# --------------------------------------------------------------------------- process pool


@pytest.mark.slow
def test_process_pool_runs_trials_and_isolates_a_crashing_one(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_TINY_CRASH_AT", "2")  # inherited by the spawned workers
    out, mdir = tmp_path / "s", tmp_path / "m"
    rows = sw.run_sweep("_tiny", random=3, out_dir=out, workers=2, plugins=PLUGINS,
                        overrides={"marker_dir": str(mdir)}, progress=False)
    trials = sw.sample_trials(tiny, 3, overrides={"marker_dir": str(mdir)})
    ids = [t["id"] for t in trials]
    assert [r["id"] for r in rows] == ids[:2]
    for r, t in zip(rows, trials):
        assert r["test_acc"] == sweep_plugin.tiny_acc(t["sampled"]["lr"], t["sampled"]["width"])
    assert finished(out) == ids[:2]
    # the crashing trial died in the pool; when it was not the only trial running at
    # that moment, it ran again alone (and died again) to tell it from the innocent one
    assert markers(mdir).count(ids[2]) in (1, 2)
    assert set(markers(mdir)) == set(ids)
    assert "worker process" in (out / "trials" / ids[2] / "error.txt").read_text()


@pytest.mark.slow
def test_pool_workers_import_the_module_that_registered_the_experiment(tmp_path, monkeypatch):
    """A spawned worker is a fresh interpreter: it has imported neither experiments.catalog
    nor the plugin, and is told nothing but the experiment's name. It imports the module
    that registered the experiment in the sweeping process."""
    monkeypatch.delenv("EXPERIMENTS_PLUGINS", raising=False)
    load_plugins(PLUGINS)  # registers _where here, in this process only
    assert sw.worker_plugins("_where") == ["sweep_plugin"]
    assert sw.worker_plugins("_where", ["x", "sweep_plugin"]) == ["x", "sweep_plugin"]
    assert sw.worker_plugins("_not_registered", ["x"]) == ["x"]
    out = tmp_path / "w"
    rows = sw.run_sweep("_where", random=2, out_dir=out, workers=2, progress=False)
    assert len(rows) == 2 and not (out / "trials" / rows[0]["id"] / "error.txt").exists()
    for row in rows:
        assert row["pid"] != os.getpid()
        assert row["catalog_imported"] is False


@pytest.mark.slow
def test_pool_sweep_of_a_built_in_experiment(tmp_path, monkeypatch):
    """A built-in experiment, registered by importing experiments.catalog here, runs in two
    spawned workers, which import only its study module."""
    import data_files

    import experiments.catalog  # noqa: F401 - registers the built-in experiments here
    data_files.write_idx_dir(tmp_path / "fmnist", n_train=300, n_test=60, seed=0, gz=True)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "fmnist"))  # inherited by workers
    monkeypatch.delenv("EXPERIMENTS_PLUGINS", raising=False)
    out = tmp_path / "s"
    rows = sw.run_sweep("static-mlp", random=2, out_dir=out, workers=2, quick=True,
                        overrides={"val_size": 50}, progress=False)
    errors = [p.read_text() for p in out.glob("trials/*/error.txt")]
    assert len(rows) == 2, errors
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["params"] > 0 for r in rows)


# --------------------------------------------------------------------------- outputs


def test_results_table_and_pareto_plot(tiny, tmp_path):
    out = tmp_path / "g"
    rows = sw.run_sweep("_tiny", grid=2, out_dir=out, workers=1, plugins=PLUGINS, progress=False)
    table = read_csv(out / "results.csv")
    assert list(table[0]) == ["id", "seed", "lr", "width", "test_acc", "params", "seed_seen",
                              "wall_time_s"]
    assert len(table) == len(rows) == 4
    assert [(float(r["lr"]), int(r["width"]), int(r["params"])) for r in table] == [
        (1e-3, 2, 20), (1e-3, 64, 640), (1e-1, 2, 20), (1e-1, 64, 640)]
    assert [float(r["test_acc"]) for r in table] == [
        pytest.approx(sweep_plugin.tiny_acc(float(r["lr"]), int(r["width"]))) for r in table]
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_results_without_final_section(tmp_path, capsys):
    out = tmp_path / "k"
    rows = sw.run_sweep("_kinds", random=3, out_dir=out, workers=1, plugins=PLUGINS)
    assert list(read_csv(out / "results.csv")[0]) == ["id", "a", "b", "c", "d", "e", "score",
                                                       "label", "wall_time_s"]
    assert [r["score"] for r in rows] == [pytest.approx(r["a"] + r["c"]) for r in rows]
    assert not (out / "pareto.png").exists()
    assert "no pareto.png" in capsys.readouterr().out


def brute_force_front(sizes, accs):
    n = len(sizes)
    return {i for i in range(n)
            if not any(sizes[j] <= sizes[i] and accs[j] >= accs[i]
                       and (sizes[j] < sizes[i] or accs[j] > accs[i]) for j in range(n))}


def test_pareto_front_matches_brute_force():
    assert sw.pareto_front([10, 20, 30, 5, 20], [0.5, 0.7, 0.6, 0.1, 0.7]) == [3, 0, 1, 4]
    assert sw.pareto_front([], []) == []
    rng = random.Random(0)
    for n in list(range(1, 8)) * 30 + [60] * 20:
        sizes = [rng.randint(1, 6) for _ in range(n)]  # small ranges: many ties
        accs = [rng.randint(0, 5) / 5 for _ in range(n)]
        front = sw.pareto_front(sizes, accs)
        assert set(front) == brute_force_front(sizes, accs)
        assert [sizes[i] for i in front] == sorted(sizes[i] for i in front)
    assert sw.pareto_front([1, 2, 3], [0.5, float("nan"), 0.9]) == [0, 2]


def test_plot_pareto_writes_png(tmp_path):
    rows = [{"params": 10 * k, "test_acc": 1 - 1 / k} for k in range(1, 6)]
    assert sw.plot_pareto(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert not sw.plot_pareto([{"params": 1}], tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


# --------------------------------------------------------------------------- SLURM


def test_slurm_job_spec(tiny, tmp_path):
    trials = sw.sample_trials(tiny, 3, seed=5)
    slurm = {"cluster": "slurm", "slurm_partition": "gpu", "timeout_min": "30",
             "cpus_per_task": 4, "mem_gb": 16, "gpus_per_node": 1,
             "slurm_array_parallelism": 2, "slurm_account": "lab"}
    spec = sw.build_slurm_spec("_tiny", trials, out_dir=tmp_path, quick=True,
                               plugins=PLUGINS, slurm=slurm)
    assert spec.cluster == "slurm"
    assert spec.folder == tmp_path.absolute() / "slurm"
    assert spec.parameters == {"name": "sweep-_tiny", "timeout_min": 30, "cpus_per_task": 4,
                               "mem_gb": 16, "gpus_per_node": 1, "slurm_partition": "gpu",
                               "slurm_array_parallelism": 2, "slurm_account": "lab"}
    assert [t["id"] for t, _, _ in spec.jobs] == [t["id"] for t in trials]
    for (trial, fn, args), t in zip(spec.jobs, trials):
        assert fn is sw.executors._trial_task
        assert args == ("_tiny", t, True, str(tmp_path.absolute() / "trials" / t["id"]),
                        PLUGINS, 4)
    assert slurm["cluster"] == "slurm"  # the caller's dict is left alone
    default = sw.build_slurm_spec("_tiny", trials[:1], out_dir=tmp_path)
    assert default.cluster is None
    assert default.parameters == {"name": "sweep-_tiny", "timeout_min": 60, "cpus_per_task": 1}
    # no plugins given: the jobs still import the module that registered the experiment
    assert default.jobs[0][2][-2:] == (["sweep_plugin"], 1)


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(ImportError, match="pip install submitit"):
        sw.run_sweep("_tiny", random=1, out_dir=tmp_path, executor="slurm", plugins=PLUGINS,
                     progress=False)
    assert sw.main(["_tiny", "--random", "1", "--out", str(tmp_path), "--executor", "slurm",
                    "--plugin", "sweep_plugin"]) == 2
    assert "pip install submitit" in capsys.readouterr().err


def test_slurm_executor_end_to_end_with_submitit_debug(tiny, tmp_path):
    pytest.importorskip("submitit")
    out, mdir = tmp_path / "s", tmp_path / "m"
    slurm = {"cluster": "debug", "slurm_partition": "any", "timeout_min": 5}
    rows = sw.run_sweep("_tiny", random=2, out_dir=out, executor="slurm", slurm=slurm,
                        plugins=PLUGINS, overrides={"marker_dir": str(mdir)}, progress=False)
    trials = sw.sample_trials(tiny, 2, overrides={"marker_dir": str(mdir)})
    assert [r["id"] for r in rows] == [t["id"] for t in trials]
    assert markers(mdir) == sorted(t["id"] for t in trials)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == sorted(t["id"] for t in trials)
    assert len(read_csv(out / "results.csv")) == 2
    # resumed with the local executor: nothing left to run
    sw.run_sweep("_tiny", random=2, out_dir=out, workers=1, plugins=PLUGINS,
                 overrides={"marker_dir": str(mdir)}, progress=False)
    assert len(markers(mdir)) == 2


# --------------------------------------------------------------------------- command line


def test_cli_sweep_subcommand(tmp_path, capsys):
    from experiments import cli

    out = tmp_path / "c"
    code = cli.main(["--plugin", "sweep_plugin", "sweep", "_tiny", "--grid", "--points", "2",
                     "--quick", "--out", str(out), "--workers", "1", "--set", "seed=3"])
    assert code == 0
    text = capsys.readouterr().out
    assert "4/4 trials finished (4 run now, 0 failed)" in text
    assert text.count(" done in ") == 4
    table = read_csv(out / "results.csv")
    assert len(table) == 4 and "seed" not in table[0]  # seed fixed by --set: not searched
    assert {r["seed_seen"] for r in table} == {"3"}
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["mode"] == "grid" and stored["points"] == 2 and stored["quick"] is True
    assert cli.main(["sweep", "_tiny", "--random", "2", "--points", "3", "--out",
                     str(tmp_path / "x"), "--plugin", "sweep_plugin"]) == 2
    assert "--points goes with --grid" in capsys.readouterr().err
