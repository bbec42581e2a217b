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
  ``cpus // workers`` torch threads; a worker is a fresh interpreter, which
  imports the ``--plugin`` modules and the module that registered the
  experiment before it runs a trial. A trial that raises is recorded
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

The package's modules, every public name re-exported here:

* :mod:`~experiments.harness.sweep.space` -- search spaces and the trials drawn from them;
* :mod:`~experiments.harness.sweep.executors` -- running a trial in a worker; the
  sequential, process-pool and SLURM executors;
* :mod:`~experiments.harness.sweep.fronts` -- Pareto fronts and their plot;
* :mod:`~experiments.harness.sweep.driver` -- :func:`run_sweep`, step by step;
* :mod:`~experiments.harness.sweep.cli` -- the ``sweep`` command's arguments.
"""

from __future__ import annotations

from experiments.harness.sweep.cli import add_arguments, main, run_from_args
from experiments.harness.sweep.driver import SweepMismatchError, run_sweep
from experiments.harness.sweep.executors import (SLURM_DEFAULTS, SlurmSpec, SubmititMissingError,
                                                 build_slurm_spec, worker_plugins)
from experiments.harness.sweep.fronts import pareto_front, plot_pareto
from experiments.harness.sweep.space import DISTRIBUTIONS, grid_trials, sample_trials

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
    "worker_plugins",
    "run_sweep",
    "add_arguments",
    "run_from_args",
    "main",
]
