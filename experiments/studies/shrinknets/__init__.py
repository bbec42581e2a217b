"""Reproductions of ShrinkNets: *ShrinkNets: Learning Network Size while Training* (2018; public
as G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, *Smallify: Learning Network
Size while Training*, https://arxiv.org/abs/1806.03723) and its earlier draft, *Learning Network
Size while Training with ShrinkNets* (2018).

* :mod:`~experiments.studies.shrinknets.vs_static` -- ShrinkNets against static networks of the
  same search budget: Pareto fronts, sizes, inference speed (Sec. 5);
* :mod:`~experiments.studies.shrinknets.gamma` -- the removal aggressiveness gamma and its cost
  (draft, Sec. 5.2);
* :mod:`~experiments.studies.shrinknets.regression` -- ShrinkNets against group sparsity on
  linear and logistic regression (draft, Sec. 5.1).
"""
