"""``python -m experiments.bench.criteria``."""

import sys

from experiments.bench.criteria.cli import run

sys.exit(run())
