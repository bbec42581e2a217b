"""Experiments: the harness, the reproductions, the benchmarks and the command line.

Not part of the library API (``saliency`` and ``pruners`` are). Split by role:

* :mod:`experiments.harness` -- datasets, model zoo, training loop, checkpoints, results
  files, the registry of experiments and how they run, sweeps; reusable;
* :mod:`experiments.studies` -- one package per source document or method, registering
  its reproductions;
* :mod:`experiments.tools` -- the demo and the dead-unit diagnosis;
* :mod:`experiments.bench` -- benchmarks, ``python -m experiments.bench.<name>``;
* :mod:`experiments.cli` and :mod:`experiments.catalog` -- ``python -m experiments
  list | run NAME | sweep NAME | demo | diagnose`` and the one list of experiments.

Imports go one way: library <- harness <- studies, tools, benchmarks, command line; no
study imports another (checked by the test suite).
"""
