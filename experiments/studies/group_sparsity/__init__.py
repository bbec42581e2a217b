"""Reproduction of J. M. Alvarez and M. Salzmann, *Learning the Number of Neurons in Deep
Networks*, NeurIPS 2016 (https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks).

* :mod:`~experiments.studies.group_sparsity.repro` -- group lasso and sparse group lasso per
  neuron by proximal SGD, the zero neurons removed;
* :mod:`~experiments.studies.group_sparsity.fronts` -- several runs' fronts side by side and the
  target read on seed means (``python -m experiments.studies.group_sparsity.fronts``).
"""
