"""Benchmarks: each ``python -m experiments.bench.<name>`` prints a table, then one JSON line last."""
