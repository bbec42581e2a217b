"""Reproductions of the source documents, one package per document or method.

* :mod:`~experiments.studies.evci2018` -- U. Evci, *Detecting Dead Weights and Units in
  Neural Networks*, NYU 2018: baselines, parameter and unit saliencies, scheduled pruning,
  learning-rate attacks;
* :mod:`~experiments.studies.shrinknets` -- *ShrinkNets: Learning Network Size while
  Training* and its earlier draft: ShrinkNets against static networks, the removal
  aggressiveness, the regression comparison with group sparsity;
* :mod:`~experiments.studies.group_sparsity` -- Alvarez & Salzmann, *Learning the Number
  of Neurons in Deep Networks*, NeurIPS 2016;
* :mod:`~experiments.studies.tristate` -- Srinivas & Babu, *Learning Neural Network
  Architectures using Backpropagation*, 2016;
* :mod:`~experiments.studies.width_methods` -- the four ways to learn a width compared on
  one network;
* :mod:`~experiments.studies.resnet` -- the thesis's unit pruning (MRS, mean replacement,
  removal during training) on ResNet-20 (K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual
  Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385), by groups of
  coupled units.

A study imports the library and the harness, never another study. Each registers its
experiments when imported; :mod:`experiments.catalog` imports them all.
"""
