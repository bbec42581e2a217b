"""One network, four ways to learn its width (ShrinkNets, group sparsity, tri-state ReLU, MRS
unit pruning), compared at matched accuracy (:mod:`~experiments.studies.width_methods.comparison`).
"""
