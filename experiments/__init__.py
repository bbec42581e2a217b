"""Experiments: model zoo, reproductions and benchmarks (not part of the library API).

Run a benchmark with ``python -m experiments.bench.<name>``.
"""
