"""Reproduction of S. Srinivas and R. V. Babu, *Learning Neural Network Architectures using
Backpropagation*, BMVC 2016 (https://arxiv.org/abs/1511.05497): tri-state ReLUs learn widths and
depths (:mod:`~experiments.studies.tristate.repro`).
"""
