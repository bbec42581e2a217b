"""Imports every module that registers experiments (see :mod:`experiments.registry`)."""

from . import baselines  # noqa: F401
from . import saliency_repro  # noqa: F401
from . import pruning_repro  # noqa: F401
from . import shrinknets_repro  # noqa: F401
from . import shrinknets_gamma  # noqa: F401
from . import tristate_repro  # noqa: F401
from . import shrinknets_regression  # noqa: F401
from . import group_sparsity_repro  # noqa: F401
from . import width_methods  # noqa: F401
from . import attack_repro  # noqa: F401
