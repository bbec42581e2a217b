"""The one list of the built-in experiments: importing this module registers them all.

Each module below registers its experiments with
:func:`experiments.harness.registry.register` when it is imported; the command
line imports this catalog, and nothing in the harness does. A new experiment
is one module under ``experiments/studies/`` (or ``experiments/tools/``) and
one line here.
"""

from experiments.bench.criteria import experiment as criteria_benchmark  # noqa: F401
from experiments.studies.evci2018 import attacks, baselines, pruning, saliency  # noqa: F401
from experiments.studies.group_sparsity import repro as group_sparsity  # noqa: F401
from experiments.studies.resnet import pruning as resnet  # noqa: F401
from experiments.studies.shrinknets import gamma, regression, vs_static  # noqa: F401
from experiments.studies.transformers import decoder as transformers_decoder  # noqa: F401
from experiments.studies.transformers import vit as transformers_vit  # noqa: F401
from experiments.studies.tristate import repro as tristate  # noqa: F401
from experiments.studies.width_methods import comparison as width_methods  # noqa: F401
from experiments.tools import demo  # noqa: F401
