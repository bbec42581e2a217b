"""Benchmarks: each ``python -m experiments.bench.<name>`` prints tables, then one JSON line
last (the tables through :func:`experiments.harness.tables.format_table`)."""
