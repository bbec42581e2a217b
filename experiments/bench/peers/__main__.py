"""``python -m experiments.bench.peers``: runs :func:`experiments.bench.peers.cli.run`."""

import sys

from experiments.bench.peers.cli import run

sys.exit(run())
