"""The harness: what every experiment, benchmark and tool of ``experiments`` is built on.

Reusable pieces, each in its own module (import them from there):

* :mod:`~experiments.harness.datasets` -- Fashion-MNIST, MNIST, CIFAR-10, COVERTYPE and
  synthetic problems as seeded train/validation/test splits;
* :mod:`~experiments.harness.models` -- the model zoo (``build_model(name, **kwargs)``);
* :mod:`~experiments.harness.training` -- the training loop with callbacks and resumable
  checkpoints; :mod:`~experiments.harness.callbacks` -- the library's pruners, ShrinkNets,
  group sparsity, tri-state ReLUs, attacks and trackers as callbacks of that loop;
* :mod:`~experiments.harness.checkpoint` -- checkpoints that reload shrunk models;
* :mod:`~experiments.harness.registry` and :mod:`~experiments.harness.run` -- registered
  experiments and how one runs into its output folder;
  :mod:`~experiments.harness.sweep` -- random and grid searches over them;
  :mod:`~experiments.harness.subruns` -- grids of sub-runs against one baseline;
* :mod:`~experiments.harness.atomic` -- atomic writes of JSON, CSV, text and figures;
* :mod:`~experiments.harness.plots`, :mod:`~experiments.harness.tables`,
  :mod:`~experiments.harness.stats`, :mod:`~experiments.harness.timing` -- figures, printed
  tables, seed statistics and timing on a shared machine.

The harness imports the library (``saliency``, ``pruners``) and nothing of the studies,
tools or benchmarks above it.
"""
