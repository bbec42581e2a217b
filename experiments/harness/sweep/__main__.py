"""``python -m experiments.harness.sweep NAME ...``: the same as ``python -m experiments sweep``."""

import sys

from experiments.harness.sweep.cli import main

sys.exit(main())
